"""flo_core.resp: the RESP request parser (every split point, inline, errors, bounds) and reply encoders."""

from __future__ import annotations

from collections import deque

import pytest

from flo_core.resp import (
    MAX_INLINE,
    ErrorReply,
    RespParser,
    RespProtocolError,
    Simple,
    Verbatim,
    add_array,
    add_bool,
    add_bulk,
    add_bulks,
    add_double,
    add_error,
    add_int,
    add_map,
    add_null,
    add_null_array,
    add_ok,
    add_simple,
    add_value,
    encode_command,
    parse_int,
)

pytestmark = pytest.mark.unit

PIPELINE = (
    encode_command(b"SET", b"key", b"va\r\nlue")
    + b"PING\r\n"
    + encode_command(b"GET", b"key")
    + b'ECHO "a b\\x41"\n'
    + encode_command(b"MSET", b"", b"x" * 300, b"k2", b"")
)
EXPECTED = [
    [b"SET", b"key", b"va\r\nlue"],
    [b"PING"],
    [b"GET", b"key"],
    [b"ECHO", b"a bA"],
    [b"MSET", b"", b"x" * 300, b"k2", b""],
]


def test_whole_pipeline_in_one_feed() -> None:
    assert RespParser().feed(PIPELINE) == EXPECTED


@pytest.mark.parametrize("cut", range(1, len(PIPELINE)))
def test_every_split_point(cut: int) -> None:
    p = RespParser()
    got = p.feed(PIPELINE[:cut]) + p.feed(PIPELINE[cut:])
    assert got == EXPECTED
    assert p.buffered == 0 and not p.in_command


def test_byte_at_a_time() -> None:
    p = RespParser()
    got = []
    for i in range(len(PIPELINE)):
        got += p.feed(PIPELINE[i : i + 1])
    assert got == EXPECTED


def test_accepts_bytearray_and_memoryview() -> None:
    p = RespParser()
    assert p.feed(bytearray(b"PING\r\n")) == [[b"PING"]]
    assert p.feed(memoryview(encode_command(b"GET", b"k"))) == [[b"GET", b"k"]]


def test_large_bulk_in_chunks_keeps_state() -> None:
    value = bytes(range(256)) * 4096  # 1 MiB, binary safe
    data = encode_command(b"SET", b"k", value)
    p = RespParser()
    out = []
    for i in range(0, len(data), 7000):
        out += p.feed(data[i : i + 7000])
    assert out == [[b"SET", b"k", value]]


def test_empty_commands_are_skipped() -> None:
    assert RespParser().feed(b"*0\r\n*-1\r\n\r\n\n   \r\nPING\r\n") == [[b"PING"]]


@pytest.mark.parametrize(
    ("line", "args"),
    [
        (b"SET k v\r\n", [b"SET", b"k", b"v"]),
        (b"  SET   k\tv  \n", [b"SET", b"k", b"v"]),
        (b'SET k "hello world"\r\n', [b"SET", b"k", b"hello world"]),
        (b'SET k "a\\nb\\r\\t\\b\\a\\\\\\"c"\r\n', [b"SET", b"k", b'a\nb\r\t\x08\x07\\"c']),
        (b'SET k "\\x00\\xffZ"\r\n', [b"SET", b"k", b"\x00\xffZ"]),
        (b"SET k 'it\\'s \"x\"'\r\n", [b"SET", b"k", b"it's \"x\""]),
        (b'SET k ""\r\n', [b"SET", b"k", b""]),
    ],
)
def test_inline_quoting(line: bytes, args: list[bytes]) -> None:
    assert RespParser().feed(line) == [args]


@pytest.mark.parametrize("line", [b'SET k "abc\r\n', b"SET k 'abc\r\n", b'SET k "abc"x\r\n', b"SET k 'a'b\r\n"])
def test_inline_unbalanced_quotes(line: bytes) -> None:
    with pytest.raises(RespProtocolError, match="^Protocol error: unbalanced quotes in request$"):
        RespParser().feed(line)


def test_inline_too_big() -> None:
    p = RespParser()
    with pytest.raises(RespProtocolError, match="too big inline request"):
        p.feed(b"SET k " + b"v" * (MAX_INLINE + 10))
    # a complete but over-long line is refused as well
    with pytest.raises(RespProtocolError, match="too big inline request"):
        RespParser().feed(b"x" * (MAX_INLINE + 1) + b"\r\n")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"*abc\r\n", "invalid multibulk length"),
        (b"*1x\r\n", "invalid multibulk length"),
        (b"*01\r\n", "invalid multibulk length"),
        (b"*99999999999\r\n", "invalid multibulk length"),
        (b"*1\r\n$-1\r\n", "invalid bulk length"),
        (b"*1\r\n$x\r\n", "invalid bulk length"),
        (b"*1\r\n$99999999999\r\n", "invalid bulk length"),
        (b"*1\r\n+PING\r\n", "expected '$', got '+'"),
        (b"*2\r\n$4\r\nPING\r\n:1\r\n", "expected '$', got ':'"),
    ],
)
def test_protocol_errors_use_redis_wording(data: bytes, message: str) -> None:
    with pytest.raises(RespProtocolError) as info:
        RespParser().feed(data)
    assert str(info.value) == "Protocol error: " + message


def test_error_carries_commands_parsed_before_it() -> None:
    with pytest.raises(RespProtocolError) as info:
        RespParser().feed(b"PING\r\n" + encode_command(b"GET", b"k") + b"*1\r\n!oops\r\n")
    assert info.value.commands == [[b"PING"], [b"GET", b"k"]]


def test_header_line_too_long() -> None:
    with pytest.raises(RespProtocolError, match="too big mbulk count string"):
        RespParser().feed(b"*" + b"1" * (MAX_INLINE + 5))
    with pytest.raises(RespProtocolError, match="too big bulk count string"):
        RespParser().feed(b"*1\r\n$" + b"1" * (MAX_INLINE + 5))


def test_bounds_are_configurable() -> None:
    p = RespParser(max_bulk=10, max_args=3, max_command=15)
    assert p.feed(encode_command(b"A", b"x" * 10)) == [[b"A", b"x" * 10]]
    with pytest.raises(RespProtocolError, match="invalid bulk length"):
        RespParser(max_bulk=10).feed(encode_command(b"A", b"x" * 11))
    with pytest.raises(RespProtocolError, match="invalid multibulk length"):
        RespParser(max_args=3).feed(b"*4\r\n")
    with pytest.raises(RespProtocolError, match="invalid multibulk length"):
        RespParser(max_args=3).feed(b"a b c d\r\n")
    with pytest.raises(RespProtocolError, match="size limit"):
        RespParser(max_bulk=10, max_command=15).feed(encode_command(b"A", b"x" * 10, b"y" * 10))


def test_default_bounds() -> None:
    # 16 MiB bulk is accepted (announced; body not needed to check the header), one more byte is not
    p = RespParser()
    assert p.feed(b"*2\r\n$3\r\nSET\r\n$16777216\r\n") == []
    assert p.in_command
    with pytest.raises(RespProtocolError, match="invalid bulk length"):
        RespParser().feed(b"*2\r\n$3\r\nSET\r\n$16777217\r\n")
    assert RespParser().feed(b"*1048576\r\n") == []
    with pytest.raises(RespProtocolError, match="invalid multibulk length"):
        RespParser().feed(b"*1048577\r\n")


def test_parse_int_is_strict() -> None:
    assert parse_int(b"0") == 0
    assert parse_int(b"-9223372036854775808") == -(2**63)
    assert parse_int(b"9223372036854775807") == 2**63 - 1
    for bad in (b"", b"-", b"+1", b"01", b"-0", b" 1", b"1 ", b"1.0", b"9223372036854775808", b"abc"):
        assert parse_int(bad) is None, bad


def _enc(fn, *args) -> bytes:  # type: ignore[no-untyped-def]
    b = bytearray()
    fn(b, *args)
    return bytes(b)


def test_reply_encoders() -> None:
    assert _enc(add_bulk, b"") == b"$0\r\n\r\n"
    assert _enc(add_bulk, memoryview(b"ab")) == b"$2\r\nab\r\n"
    assert _enc(add_int, 0) == b":0\r\n"
    assert _enc(add_int, -(2**63)) == b":-9223372036854775808\r\n"
    assert _enc(add_int, 2**63 - 1) == b":9223372036854775807\r\n"
    assert _enc(add_simple, b"PONG") == b"+PONG\r\n"
    assert _enc(add_ok) == b"+OK\r\n"
    assert _enc(add_error, "ERR bad\r\nthing") == b"-ERR bad  thing\r\n"
    assert _enc(add_null, False) == b"$-1\r\n"
    assert _enc(add_null, True) == b"_\r\n"
    assert _enc(add_null_array, False) == b"*-1\r\n"
    assert _enc(add_null_array, True) == b"_\r\n"
    assert _enc(add_array, 3) == b"*3\r\n"
    assert _enc(add_map, 2, True) == b"%2\r\n"
    assert _enc(add_map, 2, False) == b"*4\r\n"
    assert _enc(add_double, 1.5, True) == b",1.5\r\n"
    assert _enc(add_double, 1.5, False) == b"$3\r\n1.5\r\n"
    assert _enc(add_bool, True, True) == b"#t\r\n"
    assert _enc(add_bool, False, False) == b":0\r\n"
    assert _enc(add_bulks, [b"a", None], False) == b"*2\r\n$1\r\na\r\n$-1\r\n"


def test_add_value_nested() -> None:
    value = [b"1-1", [b"f", b"v"], {b"k": 1}, None, Simple(b"OK"), ErrorReply("ERR x"), True, "é"]
    assert _enc(add_value, value, False) == (
        b"*8\r\n$3\r\n1-1\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n*2\r\n$1\r\nk\r\n:1\r\n$-1\r\n+OK\r\n-ERR x\r\n:1\r\n$2\r\n\xc3\xa9\r\n"
    )
    assert _enc(add_value, {b"k": None}, True) == b"%1\r\n$1\r\nk\r\n_\r\n"
    assert _enc(add_value, Verbatim(b"a"), True) == b"=5\r\ntxt:a\r\n"
    assert _enc(add_value, Verbatim(b"a"), False) == b"$1\r\na\r\n"
    with pytest.raises(TypeError):
        _enc(add_value, object(), False)


# --- RespCore: the C request loop (GET/SET/INCR in C, the rest through ``slow``) -------------------

import msgpack  # noqa: E402

from flo_core.kv import KVStore  # noqa: E402
from flo_core.log import LogReader, LogWriter  # noqa: E402
from flo_core.respcore import RespCore  # noqa: E402

NOW = 1_700_000_000_123


class _Waiters:
    def __init__(self) -> None:
        self._by_key: dict = {}
        self.notified: list = []

    def notify(self, key, n=1) -> None:
        self.notified.append(key)


class _Journal:
    """DiskJournal's raw-writer interface over a real LogWriter."""

    durable = True

    def __init__(self, directory) -> None:
        self.writer = LogWriter(directory)

    def raw_writer(self):
        return self.writer

    def flush_soon(self) -> None:
        pass  # no loop here: tests flush the writer themselves


class _Lists:
    def __init__(self) -> None:
        self.spaces: dict = {}


class _Streams:
    def __init__(self) -> None:
        self.by_ns: dict = {}


class _Srv:
    def __init__(self, directory) -> None:
        self.kv = KVStore()
        self.waiters = _Waiters()
        self.journal = _Journal(directory)
        self.streams = _Streams()


class _Session:
    """The attributes RespCore reads, and a ``slow`` that answers ``+SLOW <name>`` (or stops on BLOCK/QUIT)."""

    def __init__(self) -> None:
        self.ns = "default"
        self.resp3 = False
        self.lists = _Lists()
        self.ran: list = []

    def slow(self, argv: list, out: bytearray):
        self.ran.append(argv)
        name = argv[0].upper()
        if name == b"SELECT":
            self.ns = "default" if argv[1] == b"0" else "db" + argv[1].decode()
        elif name == b"HELLO":
            self.resp3 = argv[1] == b"3"
        add_simple(out, b"SLOW " + name)
        return "blocked" if name in (b"BLOCK", b"QUIT") else None


@pytest.fixture
def core(tmp_path):
    srv, session = _Srv(tmp_path), _Session()
    c = RespCore(srv, session, session.slow)
    c.srv, c.session = srv, session
    yield c
    srv.journal.writer.close()


def _run(core, *cmds, raw: bytes = b""):
    out = bytearray()
    rest = core.run(b"".join(encode_command(*c) for c in cmds) + raw, NOW, out)
    return bytes(out), rest


def test_core_serves_get_set_incr_in_c(core) -> None:
    out, rest = _run(core, [b"SET", b"k", b"v"], [b"get", b"k"], [b"GET", b"nope"], [b"INCR", b"n"], [b"incr", b"n"])
    assert out == b"+OK\r\n$1\r\nv\r\n$-1\r\n:1\r\n:2\r\n"
    assert rest == [] and core.session.ran == [] and core.fast_count == 5
    e = core.srv.kv.get("default", b"n", NOW)
    assert (e.value, e.version, e.expires_at) == (b"2", 3, 0)


def test_core_falls_back_in_order(core) -> None:
    core.srv.kv.set("default", b"bad", b"12a", 1, 0, NOW)
    core.srv.kv.set("default", b"max", b"9223372036854775807", 2, 0, NOW)
    core.srv.kv.set("default", b"zero", b"007", 3, 0, NOW)
    core.session.lists.spaces["default"] = {b"l": object()}
    core.srv.streams.by_ns["default"] = {"s": object()}
    cmds = [[b"SET", b"a", b"1"], [b"SET", b"a", b"1", b"NX"], [b"INCR", b"bad"], [b"INCR", b"max"],
            [b"INCR", b"zero"], [b"GET", b"l"], [b"SET", b"l", b"x"], [b"INCR", b"s"], [b"GET", b"s"],
            [b"GET", b"a"], [b"PING"], [b"SET", b"k" * 70000, b"v"]]
    out, _ = _run(core, *cmds)
    fallback = [c for c in cmds if c[0] != b"SET" or len(c) != 3 or c[1] == b"l" or len(c[1]) > 65535]
    fallback = [c for c in fallback if c != [b"GET", b"a"]]
    assert core.session.ran == fallback
    assert out == (b"+OK\r\n+SLOW SET\r\n+SLOW INCR\r\n+SLOW INCR\r\n+SLOW INCR\r\n+SLOW GET\r\n+SLOW SET\r\n"
                   b"+SLOW INCR\r\n+SLOW GET\r\n$1\r\n1\r\n+SLOW PING\r\n+SLOW SET\r\n")


def test_core_follows_namespace_and_protocol_changes(core) -> None:
    out, _ = _run(core, [b"SET", b"k", b"0"], [b"SELECT", b"3"], [b"SET", b"k", b"3"], [b"GET", b"k"],
                  [b"HELLO", b"3"], [b"GET", b"missing"], [b"SELECT", b"0"], [b"GET", b"k"])
    assert out == b"+OK\r\n+SLOW SELECT\r\n+OK\r\n$1\r\n3\r\n+SLOW HELLO\r\n_\r\n+SLOW SELECT\r\n$1\r\n0\r\n"
    assert core.srv.kv.get("db3", b"k", NOW).value == b"3"


def test_core_stops_at_a_blocking_command(core) -> None:
    out, rest = _run(core, [b"SET", b"a", b"1"], [b"BLOCK"], [b"SET", b"b", b"2"], [b"GET", b"a"],
                     raw=b"*2\r\n$3\r\nGET\r\n$1")
    assert out == b"+OK\r\n+SLOW BLOCK\r\n"
    assert core.stopped == "blocked" and rest == [[b"SET", b"b", b"2"], [b"GET", b"a"]]
    assert core.srv.kv.get("default", b"b", NOW) is None  # not run: the session queues it
    assert core.feed(b"\r\na\r\n") == [[b"GET", b"a"]]  # the partial command survived the stop


def test_core_protocol_error_keeps_earlier_replies(core) -> None:
    out = bytearray()
    with pytest.raises(RespProtocolError) as ei:
        core.run(encode_command(b"SET", b"a", b"1") + b"*1\r\n$x\r\n", NOW, out)
    assert bytes(out) == b"+OK\r\n" and ei.value.commands == []


def test_core_log_record_is_what_the_applier_replays(core, tmp_path) -> None:
    from flo_server.persistence import pack_record, unpack_record

    core.session.ns = "n" * 40  # str8 namespace
    big = bytes(range(256)) * 300  # bin32 value
    _run(core, [b"SET", b"k", big], [b"INCR", b"c"], [b"SET", b"e", b""])
    w = core.srv.journal.writer
    w.flush()
    records = [(lsn, kind, payload) for lsn, kind, payload in LogReader(tmp_path)]
    ns = "n" * 40
    expected = [(1, 1, pack_record("kv.set", (NOW, ns, b"k", big, 0))),
                (2, 1, pack_record("kv.set", (NOW, ns, b"c", b"1", 0))),
                (3, 1, pack_record("kv.set", (NOW, ns, b"e", b"", 0)))]
    assert records == expected
    assert unpack_record(records[0][2]) == ("kv.set", [NOW, ns, b"k", big, 0])
    assert w.bytes_appended == sum(len(p) + 17 for _, _, p in records)  # the snapshot trigger's count
    assert msgpack.unpackb(records[1][2]) == ["kv.set", [NOW, ns, b"c", b"1", 0]]


def test_core_incr_keeps_ttl_and_set_clears_it(core) -> None:
    core.srv.kv.set("default", b"c", b"41", 1, NOW + 5000, NOW)
    out, _ = _run(core, [b"INCR", b"c"])
    assert out == b":42\r\n" and core.srv.kv.get("default", b"c", NOW).expires_at == NOW + 5000
    _run(core, [b"SET", b"c", b"x"])
    assert core.srv.kv.get("default", b"c", NOW).expires_at == 0


def test_core_wakes_waiters_only_when_someone_waits(core) -> None:
    _run(core, [b"SET", b"a", b"1"])
    assert core.srv.waiters.notified == []
    core.srv.waiters._by_key[("kv", "default", b"b")] = {1: None}
    _run(core, [b"SET", b"b", b"1"], [b"INCR", b"c"])
    assert core.srv.waiters.notified == [("kv", "default", b"b"), ("kv", "default", b"c")]


def test_core_without_a_healthy_journal_falls_back(core) -> None:
    core.srv.journal.writer.accepting = False  # what a disk journal does when its writes stop
    out, _ = _run(core, [b"SET", b"a", b"1"], [b"INCR", b"a"], [b"GET", b"a"])
    assert out == b"+SLOW SET\r\n+SLOW INCR\r\n$-1\r\n"


def test_core_xadd_in_c_logs_and_stores_what_the_python_command_does(core, tmp_path) -> None:
    """XADD key * f v ...: the s.append record and blobs of cmd_xadd, ids by Stream.next_id."""
    from flo_core.stream import Streams
    from flo_server.persistence import pack_record

    core.srv.streams = Streams()
    twin = Streams()  # the same appends through the Python API (what the applier does)
    cmds = [[b"XADD", b"s", b"*", b"f", b"x" * 100],
            [b"xadd", b"s", b"*", b"payload", b"\xff\x00bin", b"k", b"v", b"k", b"w"],
            [b"XADD", b"s", b"*", b"payload", b"", b"payload", b"second", b"a", b"b"],
            [b"XADD", b"t\xc3\xa9", b"*", b"payload", b"p"]]
    records = [[b"", [["f", "x" * 100]]], [b"\xff\x00bin", [["k", "v"], ["k", "w"]]],
               [b"second", [["a", "b"]]], [b"p", None]]
    names = ["s", "s", "s", "té"]
    out, rest = _run(core, *cmds)
    assert core.session.ran == [] and rest == [] and core.fast_count == 4
    ids = []
    for name, rec in zip(names, records):
        st = twin.get_or_create("default", name, NOW)
        ts, seq = st.next_id(NOW)
        st.append(NOW, ts, seq, [rec])
        ids.append((ts, seq))
    assert ids == [(NOW, 0), (NOW, 1), (NOW, 2), (NOW, 0)]
    assert out == b"".join(b"$%d\r\n%d-%d\r\n" % (len(b"%d-%d" % i), i[0], i[1]) for i in ids)
    for name in ("s", "té"):
        a, b = core.srv.streams.get("default", name), twin.get("default", name)
        assert [a.record(o) for o in range(a.first_ord, a.end_ord)] == [b.record(o) for o in range(b.first_ord, b.end_ord)]
    core.srv.journal.writer.flush()
    logged = [payload for _, _, payload in LogReader(tmp_path)]
    assert logged == [pack_record("s.append", (NOW, "default", n, i[0], i[1], [r])) for n, i, r in zip(names, ids, records)]
    assert core.srv.waiters.notified == []


def test_core_xadd_leaves_the_rest_to_python(core) -> None:
    from flo_core.stream import Streams

    core.srv.streams = Streams()
    core.srv.kv.set("default", b"str", b"v", 1, 0, NOW)
    core.session.lists.spaces["default"] = {b"lst": object()}
    cmds = [[b"XADD", b"s", b"MAXLEN", b"10", b"*", b"f", b"v"],  # options
            [b"XADD", b"s", b"5-1", b"f", b"v"],                   # explicit id
            [b"XADD", b"s", b"*", b"f"],                            # odd fields
            [b"XADD", b"s", b"*", b"f", b"\xff"],                  # a header that is not UTF-8
            [b"XADD", b"\xff", b"*", b"f", b"v"],                  # a key that is not UTF-8
            [b"XADD", b"str", b"*", b"f", b"v"],                   # WRONGTYPE (a string)
            [b"XADD", b"lst", b"*", b"f", b"v"]]                   # WRONGTYPE (a list)
    out, _ = _run(core, *cmds)
    assert core.session.ran == cmds and core.fast_count == 0
    assert core.srv.streams.get("default", "s") is None


def test_core_list_push_pop_in_c_log_what_the_appliers_replay(core, tmp_path) -> None:
    from flo_server.handlers.list import ListStore
    from flo_server.persistence import pack_record

    cmds = [[b"LPUSH", b"l", b"a", b"b", b"c"], [b"rpush", b"l", b"d"], [b"RPOP", b"l"], [b"lpop", b"l"],
            [b"LPOP", b"l"], [b"LPOP", b"l"], [b"RPUSH", b"m", b"x" * 300]]
    out, rest = _run(core, *cmds)
    assert out == b":3\r\n:4\r\n$1\r\nd\r\n$1\r\nc\r\n$1\r\nb\r\n$1\r\na\r\n:1\r\n"
    assert core.session.ran == [] and core.fast_count == len(cmds)
    assert list(core.session.lists.spaces["default"]) == [b"m"]  # the emptied list is gone
    twin = ListStore()  # what replay does with the logged records
    core.srv.journal.writer.flush()
    logged = [payload for _, _, payload in LogReader(tmp_path)]
    assert logged == [pack_record("l.push", ("default", b"l", [b"a", b"b", b"c"], True)),
                      pack_record("l.push", ("default", b"l", [b"d"], False)),
                      pack_record("l.pop", ("default", b"l", 1, False)),
                      pack_record("l.pop", ("default", b"l", 1, True)),
                      pack_record("l.pop", ("default", b"l", 1, True)),
                      pack_record("l.pop", ("default", b"l", 1, True)),
                      pack_record("l.push", ("default", b"m", [b"x" * 300], False))]
    twin.push("default", b"l", [b"a", b"b", b"c"], True)
    twin.push("default", b"l", [b"d"], False)
    for left in (False, True, True, True):
        twin.pop("default", b"l", 1, left)
    twin.push("default", b"m", [b"x" * 300], False)
    assert twin.dump() == {"default": [[k, list(d)] for k, d in core.session.lists.spaces["default"].items()]}


def test_core_list_cases_left_to_python(core) -> None:
    from flo_core.stream import Streams

    core.srv.streams = Streams()
    core.srv.streams.get_or_create("default", "st", NOW)
    core.srv.kv.set("default", b"str", b"v", 1, 0, NOW)
    cmds = [[b"RPOP", b"missing"], [b"RPOP", b"l", b"2"], [b"LPUSH", b"str", b"x"], [b"LPUSH", b"st", b"x"],
            [b"LPUSH", b"k" * 70000, b"x"]]
    core.session.lists.spaces["default"] = {b"l": deque([b"1", b"2"])}
    out, _ = _run(core, *cmds)
    assert core.session.ran == cmds and core.fast_count == 0
    assert list(core.session.lists.spaces["default"][b"l"]) == [b"1", b"2"]


def test_core_quick_get_from_the_read_buffer(core) -> None:
    """A whole ``*2 $3 GET $n key`` is answered from the read buffer (RespCore._quick), in order with the
    commands around it, whatever the case of GET; a GET cut across reads, or one with a non-canonical
    length, takes the general path, which answers the same."""
    core.srv.kv.set("default", b"k", b"v" * 200, 1, 0, NOW)
    out, rest = _run(core, [b"get", b"k"], [b"GeT", b"nope"], [b"SET", b"k2", b"x"], [b"GET", b"k2"])
    assert out == b"$200\r\n" + b"v" * 200 + b"\r\n$-1\r\n+OK\r\n$1\r\nx\r\n"
    assert rest == [] and core.session.ran == [] and core.fast_count == 4
    whole = encode_command(b"GET", b"k2")
    for cut in range(1, len(whole)):  # every cut: the general parser completes it
        out = bytearray()
        assert core.run(whole[:cut], NOW, out) == [] and out == b""
        assert core.run(whole[cut:], NOW, out) == [] and bytes(out) == b"$1\r\nx\r\n"
    assert core.session.ran == []


def test_core_quick_get_leaves_the_rest_to_the_general_path(core) -> None:
    core.session.lists.spaces["default"] = {b"lst": deque([b"a"])}
    out, rest = _run(core, [b"GET", b"lst"], [b"GET", b"a", b"b"], [b"GETX", b"k"])
    assert [c[0] for c in core.session.ran] == [b"GET", b"GET", b"GETX"]  # WRONGTYPE, arity, another command
    assert core.fast_count == 0
    out = bytearray()
    with pytest.raises(RespProtocolError, match="invalid bulk length"):
        core.run(b"*2\r\n$3\r\nGET\r\n$01\r\nk\r\n", NOW, out)  # a length with a leading zero: as Redis
    assert core.fast_count == 0


def test_core_set_incr_without_a_raw_writer_journal_through_append(core) -> None:
    """A memory journal: SET/INCR in C journal through ``journal.append`` and store the same."""
    from flo_server.journal import MemoryJournal

    disk = core.srv.journal
    core.srv.journal = MemoryJournal()
    try:
        out, rest = _run(core, [b"SET", b"k", b"v" * 300], [b"GET", b"k"], [b"INCR", b"n"], [b"INCR", b"n"],
                         [b"SET", b"k", b"w"], [b"GET", b"k"])
        assert out == b"+OK\r\n$300\r\n" + b"v" * 300 + b"\r\n:1\r\n:2\r\n+OK\r\n$1\r\nw\r\n"
        assert rest == [] and core.session.ran == [] and core.srv.journal.last_lsn == 4
        assert [h[0] for h in core.srv.kv.history("default", b"k", 5, NOW)] == [4, 1]
        assert core.srv.kv.get("default", b"n", NOW).value == b"2"
    finally:
        core.srv.journal = disk  # the fixture closes its writer

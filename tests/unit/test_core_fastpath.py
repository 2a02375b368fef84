"""ServerCore's C fast paths (flo_core/core.pyx) against the Python handlers they stand in for.

Every scenario runs twice on fresh servers with the same clock: once through ServerCore with
the fast path on, once with it off (every request through ``flo_server.dispatch``). Answers,
stored state, versions, waiter wake-ups and the journal's records must be identical, byte for
byte. Covers STREAM_APPEND (records, headers, batches, retention, refusals), KV_INCR
(deltas, TTL kept, overflow / not-a-counter refusals, transactions) and QUEUE_ENQUEUE
(priorities, clock, wake-ups of parked dequeues, refusals) plus the records.pxd encoders
against ``flo_server.persistence.pack_record``.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest

pytest.importorskip("flo_core.core")

from flo_core import wire  # noqa: E402
from flo_core.body import Writer  # noqa: E402
from flo_core.core import ServerCore  # noqa: E402
from flo_core.log import LogReader, LogWriter  # noqa: E402
from flo_core.spec import Op, Tag  # noqa: E402
from flo_server.app import Server  # noqa: E402
from flo_server.dispatch import dispatch  # noqa: E402
from flo_server.persistence import pack_record, unpack_record  # noqa: E402

NOW = 1_700_000_000_123


class _Waiters:
    """Records wake-ups; ``_by_key`` non-empty so the fast path notifies like the handler."""

    def __init__(self, someone_waits: bool) -> None:
        self._by_key: dict = {("nobody",): {}} if someone_waits else {}
        self.notified: list = []

    def notify(self, key: Any, n: int = 1) -> None:
        self.notified.append(key)


class _Journal:
    """DiskJournal's write interface over a real LogWriter (no event loop, no flush timer)."""

    durable = True

    def __init__(self, directory: Any) -> None:
        self.writer = LogWriter(directory)

    @property
    def healthy(self) -> bool:
        return self.writer.accepting

    @healthy.setter
    def healthy(self, ok: bool) -> None:
        self.writer.accepting = ok  # what DiskJournal does when a write fails / it closes

    @property
    def last_lsn(self) -> int:
        return self.writer.last_lsn

    def append(self, kind: str, args: Any) -> int:
        from flo_core.errors import Refusal
        from flo_core.spec import Reason

        if not self.healthy:
            raise Refusal(Reason.WRITES_STOPPED, "writes stopped")
        return self.writer.append(1, pack_record(kind, args))

    def raw_writer(self) -> Any:
        return self.writer

    def flush_soon(self) -> None:
        pass  # no loop here: tests flush the writer themselves


class Twin:
    """One server + ServerCore; ``slow`` counts the requests the fast path handed over."""

    def __init__(self, directory: Any, fast: bool, someone_waits: bool = True) -> None:
        self.srv = Server()
        self.srv.journal = _Journal(directory)
        self.srv.waiters = _Waiters(someone_waits)
        self.slow_ops: list[int] = []
        self.core = ServerCore(self.srv, self._slow, fast=fast)
        self.now = NOW
        # The handlers' own clock reads (a queue's wake-up timer looks at srv.now()) see the scenario's
        # time too: the wall clock would move the queues' clocks by whatever ms the twins ran apart.
        self.srv.now = lambda: self.now

    def _slow(self, rid: int, op: int, payload: bytes) -> Any:
        self.slow_ops.append(op)
        return dispatch(self.srv, rid, op, payload, None, self.now)

    def run(self, frames: list[tuple[int, bytes]], now: int = NOW) -> list[tuple[int, int, bytes]]:
        self.now = now
        data = b"".join(wire.encode_request(rid, op, payload) for rid, (op, payload) in enumerate(frames, 1))
        self.core.run(data, now)
        assert not self.core.deferred
        out, self.core.out = bytes(self.core.out), bytearray()
        replies = list(wire.FrameReader(is_request=False).feed(out))
        return [(rid, status, bytes(body)) for rid, status, body in replies]

    def records(self) -> list[tuple[int, int, bytes]]:
        self.srv.journal.writer.flush()
        return [(lsn, kind, bytes(p)) for lsn, kind, p in LogReader(self.srv.journal.writer.directory)]

    def replayed(self) -> Server:
        """A fresh server that applied this one's journal records, as recovery does."""
        from flo_server.journal import APPLIERS, MemoryJournal

        srv = Server()
        srv.journal = MemoryJournal()
        for lsn, _kind, payload in self.records():
            kind, args = unpack_record(payload)
            APPLIERS[kind](srv, lsn, *args)
        return srv

    def state(self) -> Any:
        kv = {(ns, k): (e.value, e.version, e.expires_at)
              for ns, space in self.srv.kv.spaces.items() for k, e in space.keys.items()}
        return kv, self.srv.streams.dump(), self.srv.queues.dump()

    def close(self) -> None:
        self.srv.journal.writer.close()


@pytest.fixture
def twins(tmp_path):
    made: list[Twin] = []

    def make(**kw: Any) -> tuple[Twin, Twin]:
        n = len(made)
        fast, slow = Twin(tmp_path / f"fast{n}", True, **kw), Twin(tmp_path / f"slow{n}", False, **kw)
        made.extend((fast, slow))
        return fast, slow

    yield make
    for t in made:
        t.close()


def _same(fast: Twin, slow: Twin, frames: list, now: int = NOW) -> list:
    a, b = fast.run(frames, now), slow.run(frames, now)
    assert a == b
    assert fast.state() == slow.state()
    assert fast.records() == slow.records()
    assert fast.srv.waiters.notified == slow.srv.waiters.notified
    assert fast.srv.journal.last_lsn == slow.srv.journal.last_lsn
    return a


# --- request builders ------------------------------------------------------------------


def _head(ns: str | bytes, key: bytes) -> Writer:
    nsb = ns.encode() if isinstance(ns, str) else ns
    return Writer().u16(len(nsb)).raw(nsb).u16(len(key)).raw(key)


def append(name: bytes, records: list, ns: str | bytes = "", opts: dict | None = None,
           count: int | None = None, tail: bytes = b"", raw_headers: bool = False) -> tuple[int, bytes]:
    w = Writer().u32(len(records) if count is None else count)
    for payload, headers in records:
        w.bytes32(payload).u16(len(headers or ()))
        for k, v in headers or ():
            if raw_headers:
                w.u16(len(k)).raw(k).u16(len(v)).raw(v)
            else:
                w.str16(k).str16(v)
    return Op.STREAM_APPEND, _head(ns, name).bytes32(w.getvalue() + tail).options(opts or {}).getvalue()


def incr(key: bytes, delta: int | None = None, ns: str = "", txn: int | None = None,
         routing: str | None = None) -> tuple[int, bytes]:
    w = _head(ns, key)
    if delta is not None:
        w.u8(1).i64(delta)
    elif routing is not None or txn is not None:
        w.u8(0)
    if routing is not None:
        w.u8(1).str16(routing)
    elif txn is not None:
        w.u8(0)
    if txn is not None:
        w.u8(1).u64(txn)
    return Op.KV_INCR, w.getvalue()


def put(key: bytes, value: bytes, ns: str = "", ttl: int | None = None) -> tuple[int, bytes]:
    w = _head(ns, key).bytes32(value)
    if ttl is not None:
        w.u8(1).u64(ttl)
    return Op.KV_PUT, w.getvalue()


def _id(body: bytes) -> tuple[int, int]:
    seq, ts = struct.unpack("<Qq", body)
    return ts, seq


# --- STREAM_APPEND -----------------------------------------------------------------------


def test_append_common_cases_match_the_handler(twins) -> None:
    fast, slow = twins()
    frames = [
        append(b"events", [(b"hello", None)]),
        append(b"events", [(b"", None)]),
        append(b"events", [(b"x" * 300, {"k": "v", "trace": "\u00e9\u4e2d\U0001F600"}.items())]),
        append(b"events", [(bytes(range(256)) * 300, None), (b"b", [("k", "v" * 40), ("k", "dup")]), (b"c", None)]),
        append("str\u00e9am".encode(), [(b"p", None)], ns="tenant-\u00e9"),
        append(b"n" * 300, [(b"p", [("h" * 70, "w" * 700)])], ns="n" * 200),
        append(b"events", [(b"r%d" % i, [("i", str(i))]) for i in range(1000)]),
    ]
    replies = _same(fast, slow, frames)
    assert [s for _, s, _ in replies] == [0] * len(frames)
    assert fast.slow_ops == []  # every one of these ran in C
    assert _id(replies[0][2]) == (NOW, 0) and _id(replies[1][2]) == (NOW, 1)
    assert _id(replies[3][2]) == (NOW, 3) and _id(replies[6][2]) == (NOW, 6)
    # the stored records read back the same through the stream store
    s = fast.srv.streams.get("default", "events")
    assert s.record(s.first_ord + 2)[2:] == (b"x" * 300, {"k": "v", "trace": "\u00e9\u4e2d\U0001F600"})
    assert s.record(s.first_ord + 4)[3] == {"k": "dup"}


def test_append_ids_follow_the_clock_like_the_handler(twins) -> None:
    fast, slow = twins()
    _same(fast, slow, [append(b"s", [(b"a", None)])], NOW)
    _same(fast, slow, [append(b"s", [(b"b", None), (b"c", None)])], NOW + 5)
    r = _same(fast, slow, [append(b"s", [(b"d", None)])], NOW - 1000)  # clock went back: same ms, next seq
    assert _id(r[0][2]) == (NOW + 5, 2)
    r = _same(fast, slow, [append(b"z", [(b"d", None)])], 0)  # time 0: (0, 1), never (0, 0)
    assert _id(r[0][2]) == (0, 1)
    assert fast.slow_ops == []


def test_append_retention_applies_like_the_applier(twins) -> None:
    fast, slow = twins()
    create = (Op.STREAM_CREATE, _head("", b"capped").bytes32(b"").options(
        {Tag.LIMIT: (3).to_bytes(8, "little"), Tag.MAX_BYTES: (400).to_bytes(8, "little")}).getvalue())
    _same(fast, slow, [create] + [append(b"capped", [(b"p" * 90, None)] * 2) for _ in range(4)])
    s = fast.srv.streams.get("default", "capped")
    assert len(s) == 3 and s.first_ord == 5  # max_len kept the newest three
    _same(fast, slow, [append(b"capped", [(b"q" * 500, None)])])  # above max_bytes on its own: all go
    assert len(s) == 0 and s.last_id == (NOW, 8)
    assert fast.slow_ops == [Op.STREAM_CREATE]


def test_append_refusals_and_unusual_cases_go_to_python(twins) -> None:
    fast, slow = twins()
    frames = [
        append(b"", [(b"p", None)]),                                  # empty name
        append(b"\xff\xfe", [(b"p", None)]),                          # name not UTF-8
        append(b"s", []),                                             # zero records
        append(b"s", [(b"p", None)] * 1001),                          # too many records
        append(b"s", [(b"p", [("k", "v")] * 1025)]),                  # too many headers
        append(b"s", [(b"p", [(b"\xed\xa0\x80", b"v")])], raw_headers=True),  # surrogate: not UTF-8
        append(b"s", [(b"p", [(b"k", b"\xc0\xaf")])], raw_headers=True),      # overlong
        append(b"s", [(b"p", [(b"k", b"\xf4\x90\x80\x80")])], raw_headers=True),  # above U+10FFFF
        append(b"s", [(b"p", [(b"k", b"ab\xe2\x82")])], raw_headers=True),       # truncated
        append(b"s", [(b"p", None)], count=2),                        # count says more than there is
        append(b"s", [(b"p", None)], opts={Tag.COUNT: b"\x01\x00\x00\x00"}),  # options present
        append(b"s", [(b"p", None)], ns=b"\xff"),                     # namespace not UTF-8
        append(b"s", [(b"p", None)], ns="n" * 256),                   # namespace too long
    ]
    replies = _same(fast, slow, frames)
    assert fast.slow_ops == [Op.STREAM_APPEND] * len(frames)
    assert [s for _, s, _ in replies].count(0) == 1  # the options one: the handler ignores them
    # bytes after the records inside the value are ignored by both paths (and not logged)
    _same(fast, slow, [append(b"s", [(b"p", [("k", "v")])], tail=b"\x01\x02\x03")])
    assert fast.slow_ops == [Op.STREAM_APPEND] * len(frames)


def test_append_interleaves_with_python_ops_in_order(twins) -> None:
    fast, slow = twins()
    read = (Op.STREAM_READ, _head("", b"s").bytes32(b"").options({Tag.COUNT: (100).to_bytes(4, "little")}).getvalue())
    frames = [append(b"s", [(b"a", None)]), read, append(b"s", [(b"b", [("h", "1")])]), read,
              append(b"", [(b"p", None)]), append(b"s", [(b"c", None)]), read]
    replies = _same(fast, slow, frames)
    assert [rid for rid, _, _ in replies] == list(range(1, len(frames) + 1))
    assert fast.slow_ops == [Op.STREAM_READ, Op.STREAM_READ, Op.STREAM_APPEND, Op.STREAM_READ]


def test_append_wakes_only_when_someone_waits(twins) -> None:
    fast, slow = twins(someone_waits=False)
    fast.run([append(b"s", [(b"a", None)])])
    assert fast.srv.waiters.notified == []  # the handler notifies too, which is a no-op with no waiters
    fast.srv.waiters._by_key[("s", "default", "t")] = {1: None}
    fast.run([append(b"t", [(b"a", None)], ns="")])
    assert fast.srv.waiters.notified == [("s", "default", "t")]


def test_append_without_a_raw_writer_falls_back(twins) -> None:
    fast, slow = twins()
    fast.srv.journal.healthy = slow.srv.journal.healthy = False
    replies = _same(fast, slow, [append(b"s", [(b"a", None)]), incr(b"c"), put(b"k", b"v")])
    assert fast.slow_ops == [Op.STREAM_APPEND, Op.KV_INCR, Op.KV_PUT]
    assert all(status != 0 for _, status, _ in replies)


def test_append_record_replays_to_the_same_stream(twins) -> None:
    fast, _ = twins()
    fast.run([append(b"s", [(b"a", {"k": "v"}.items()), (b"b" * 70000, None)], ns="ns1"),
              append(b"s", [(b"c", None)], ns="ns1")])
    assert fast.replayed().streams.dump() == fast.srv.streams.dump()


# --- KV_INCR -------------------------------------------------------------------------------


def test_incr_matches_the_handler(twins) -> None:
    fast, slow = twins()
    frames = [
        incr(b"c"), incr(b"c"), incr(b"c", 41), incr(b"c", -100), incr(b"d", -5),
        incr(b"e", 0), incr("\u00e9".encode(), 7, ns="db\u00e9"),
        put(b"ttl", b"10", ttl=60_000), incr(b"ttl", 5),
        put(b"big", b"9223372036854775806"), incr(b"big"),
        put(b"small", b"-9223372036854775807"), incr(b"small", -1),
        incr(b"fresh", 9223372036854775807), incr(b"fresh2", -9223372036854775807 - 1),
    ]
    replies = _same(fast, slow, frames)
    assert all(status == 0 for _, status, _ in replies)
    assert fast.slow_ops == []
    assert replies[2][2] == b"\x01" + (3).to_bytes(8, "little") + b"\x01" + (43).to_bytes(8, "little", signed=True)
    assert fast.srv.kv.get("default", b"ttl", NOW).expires_at == NOW + 60_000
    assert fast.srv.kv.get("default", b"small", NOW).value == b"-9223372036854775808"


def test_incr_refusals_and_unusual_cases_go_to_python(twins) -> None:
    fast, slow = twins()
    setup = [put(b"max", b"9223372036854775807"), put(b"min", b"-9223372036854775808"), put(b"txt", b"abc"),
             put(b"zero", b"007"), put(b"sp", b" 1"), put(b"plus", b"+1"), put(b"neg0", b"-0"),
             put(b"long", b"1" * 21), put(b"empty", b"")]
    _same(fast, slow, setup)
    frames = [incr(b"max"), incr(b"min", -1), incr(b"max", -1), incr(b"txt"), incr(b"zero"), incr(b"sp"),
              incr(b"plus"), incr(b"neg0"), incr(b"long"), incr(b"empty"), incr(b"c", 1, ns="n" * 256),
              incr(b"c", 1, routing="r"), incr(b"c", 1, txn=12345)]
    replies = _same(fast, slow, frames)
    statuses = [s for _, s, _ in replies]
    assert statuses[2] == 0 and fast.slow_ops.count(Op.KV_INCR) == len(frames) - 1  # max - 1 ran in C
    assert all(s != 0 for i, s in enumerate(statuses) if i not in (2, 11))  # routing alone is ignored


def test_incr_expired_counter_restarts_without_ttl(twins) -> None:
    fast, slow = twins()
    _same(fast, slow, [put(b"c", b"5", ttl=10)], NOW)
    r = _same(fast, slow, [incr(b"c")], NOW + 100)
    assert r[0][2][-8:] == (1).to_bytes(8, "little")
    assert fast.srv.kv.get("default", b"c", NOW + 100).expires_at == 0


# --- the record encoders, byte for byte ------------------------------------------------------


@pytest.mark.parametrize("seq", [0, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1])
def test_append_record_bytes_for_every_int_width(twins, seq: int) -> None:
    fast, _ = twins()
    s = fast.srv.streams.get_or_create("default", "w", NOW)
    s.append(NOW, NOW, seq, [[b"x", None]]) if seq < 2**64 - 1 else s.append(NOW, NOW - 1, 0, [[b"x", None]])
    before = len(fast.records())
    r = fast.run([append(b"w", [(b"y", None)])])
    ts, sq = _id(r[0][2])
    rec = fast.records()[before:]
    assert rec == [(rec[0][0], 1, pack_record("s.append", (NOW, "default", "w", ts, sq, [[b"y", None]])))]


def test_kv_set_record_bytes_for_small_times(twins) -> None:
    fast, _ = twins()
    for now in (0, 5, 200, 70_000, 2**31):
        fast.run([put(b"k", b"v", ttl=1000)], now)
        assert fast.records()[-1][2] == pack_record("kv.set", (now, "default", b"k", b"v", now + 1000))


def test_core_bounds_are_the_handlers_bounds() -> None:
    # core.pyx repeats these as C constants; the refusal tests above probe them at +1
    from flo_core.stream import MAX_APPEND_BATCH
    from flo_server.handlers.stream import MAX_HEADERS

    assert (MAX_APPEND_BATCH, MAX_HEADERS) == (1000, 1024)


# --- QUEUE_ENQUEUE -----------------------------------------------------------------------------


def enqueue(name: bytes, payload: bytes = b"p", ns: str | bytes = "", opts: dict | None = None,
            raw_opts: bytes | None = None) -> tuple[int, bytes]:
    w = _head(ns, name).bytes32(payload)
    if raw_opts is not None:
        w.raw(raw_opts)
    elif opts is not None:
        w.options(opts)
    return Op.QUEUE_ENQUEUE, w.getvalue()


def dequeue(name: bytes, count: int = 100) -> tuple[int, bytes]:
    return Op.QUEUE_DEQUEUE, _head("", name).bytes32(b"").options({Tag.COUNT: count.to_bytes(4, "little")}).getvalue()


def _prio(value: int, width: int = 1) -> dict:
    return {Tag.PRIORITY: value.to_bytes(width, "little")}


def test_enqueue_common_cases_match_the_handler(twins) -> None:
    fast, slow = twins()
    frames = [
        enqueue(b"jobs", b"first"),                       # creates the queue: Python path
        enqueue(b"jobs", b"second"),                      # options absent
        enqueue(b"jobs", b"", opts={}),                   # empty options block
        enqueue(b"jobs", b"x" * 70_000, opts=_prio(3)),
        enqueue(b"jobs", b"w2", opts=_prio(255, 2)),      # every natural width of PRIORITY
        enqueue(b"jobs", b"w4", opts=_prio(7, 4)),
        enqueue(b"jobs", b"w8", opts=_prio(0, 8)),
        enqueue(b"jobs", b"last-wins", raw_opts=b"\x06\x00\x10\x01\x09\x10\x01\x02"),
        enqueue(b"jobs", b"tail", raw_opts=b"\x00"),       # one stray byte: options absent
        enqueue("t\u00e2ches".encode(), b"a", ns="tenant-\u00e9"),
        enqueue("t\u00e2ches".encode(), b"b", ns="tenant-\u00e9", opts=_prio(1)),
        enqueue(b"n" * 300, b"c", ns="n" * 200),
        enqueue(b"n" * 300, b"d", ns="n" * 200),
    ]
    replies = _same(fast, slow, frames)
    assert [s for _, s, _ in replies] == [0] * len(frames)
    assert [struct.unpack("<Q", b)[0] for _, _, b in replies] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2, 1, 2]
    assert fast.slow_ops == [Op.QUEUE_ENQUEUE] * 3  # only the first enqueue of each queue
    # dequeue order (Python path) sees the priorities the fast path stored
    r = _same(fast, slow, [dequeue(b"jobs")])
    assert r[0][1] == 0 and fast.srv.queues.get("default", "jobs").n_leased == 9


def test_enqueue_clock_never_goes_back_like_the_handler(twins) -> None:
    fast, slow = twins()
    _same(fast, slow, [enqueue(b"q"), enqueue(b"q")], NOW + 50)
    _same(fast, slow, [enqueue(b"q", b"late")], NOW)  # wall clock stepped back: logged at the queue's clock
    assert fast.records()[-1][2] == pack_record("q.enq", (NOW + 50, "default", "q", b"late", 0, 0, None, 300_000))
    _same(fast, slow, [enqueue(b"q", b"on")], NOW + 90)
    assert fast.srv.queues.get("default", "q").clock == NOW + 90
    assert fast.slow_ops == [Op.QUEUE_ENQUEUE]


def test_enqueue_refusals_and_unusual_cases_go_to_python(twins) -> None:
    fast, slow = twins()
    _same(fast, slow, [enqueue(b"q"), enqueue(b"\xff\xfe")])
    fast.slow_ops.clear()
    frames = [
        enqueue(b""),                                                   # empty name
        enqueue(b"\xff\xfe"),                                           # name not UTF-8
        enqueue(b"q", opts=_prio(256, 2)),                              # priority out of range
        enqueue(b"q", opts=_prio(1, 3)),                                # bad option width
        enqueue(b"q", opts={Tag.DELAY_MS: (10).to_bytes(8, "little")}),
        enqueue(b"q", opts={Tag.DEDUP_KEY: b"k"}),
        enqueue(b"q", opts={Tag.DEDUP_KEY: b"k"}),                     # a duplicate: nothing logged
        enqueue(b"q", opts={Tag.DEDUP_WINDOW_MS: (5).to_bytes(8, "little")}),
        enqueue(b"q", opts={Tag.COUNT: b"\x01\x00\x00\x00"}),           # any other option
        enqueue(b"q", raw_opts=b"\x03\x00\x10\x01"),                   # truncated option
        enqueue(b"q", raw_opts=b"\x09\x00\x10\x01\x01"),               # options overrun the payload
        enqueue(b"q", ns=b"\xff"),                                      # namespace not UTF-8
        enqueue(b"q", ns="n" * 256),                                    # namespace too long
        enqueue(b"other"),                                              # a new queue
    ]
    replies = _same(fast, slow, frames)
    assert fast.slow_ops == [Op.QUEUE_ENQUEUE] * len(frames)
    assert [s == 0 for _, s, _ in replies] == [False] * 4 + [True] * 5 + [False] * 4 + [True]


def test_enqueue_full_queue_and_bad_window_setting_go_to_python(twins) -> None:
    fast, slow = twins()
    _same(fast, slow, [enqueue(b"q")])
    for t in (fast, slow):
        t.srv.queues.get("default", "q").max_messages = 2
    r = _same(fast, slow, [enqueue(b"q"), enqueue(b"q")])
    assert [s for _, s, _ in r][0] == 0 and r[1][1] != 0  # the second one: queue full (Python refuses)
    assert fast.slow_ops == [Op.QUEUE_ENQUEUE] * 2
    for t in (fast, slow):
        t.srv.queues.get("default", "q").max_messages = 100
        t.srv.config.dedup_window_ms = 10**15  # outside the handler's bounds: every enqueue refused
    r = _same(fast, slow, [enqueue(b"q")])
    assert r[0][1] != 0 and fast.slow_ops[-1] == Op.QUEUE_ENQUEUE and len(fast.slow_ops) == 3
    for t in (fast, slow):
        t.srv.config.dedup_window_ms = 1234  # a setting the record carries
    _same(fast, slow, [enqueue(b"q", b"w")])
    assert len(fast.slow_ops) == 3
    assert fast.records()[-1][2] == pack_record("q.enq", (NOW, "default", "q", b"w", 0, 0, None, 1234))


def test_enqueue_wakes_the_line_like_the_applier(twins) -> None:
    from flo_server.handlers import queue as qh

    fast, slow = twins(someone_waits=True)
    _same(fast, slow, [enqueue(b"q")])
    for t in (fast, slow):  # two parked dequeues of "q", oldest first
        line = qh._line(t.srv, "default", "q")
        line[11] = False
        line[12] = False
    _same(fast, slow, [enqueue(b"q"), enqueue(b"q"), enqueue(b"q")])
    assert fast.srv.waiters.notified == [("q", "default", "q", 11), ("q", "default", "q", 12)]
    assert fast.slow_ops == [Op.QUEUE_ENQUEUE]
    # nobody parked in srv.waiters: the fast path does not even look at the line
    lonely, _ = twins(someone_waits=False)
    lonely.run([enqueue(b"q"), enqueue(b"q")])
    assert lonely.srv.waiters.notified == []


def test_enqueue_without_a_raw_writer_falls_back(twins) -> None:
    fast, slow = twins()
    _same(fast, slow, [enqueue(b"q")])
    fast.srv.journal.healthy = slow.srv.journal.healthy = False
    replies = _same(fast, slow, [enqueue(b"q")])
    assert fast.slow_ops == [Op.QUEUE_ENQUEUE] * 2 and replies[0][1] != 0


def test_enqueue_on_the_memory_journal_matches(twins) -> None:
    from flo_server.journal import MemoryJournal

    fast, slow = twins()
    disk = [fast.srv.journal, slow.srv.journal]
    for t in (fast, slow):
        t.srv.journal = MemoryJournal()
    a = fast.run([enqueue(b"q", b"a"), enqueue(b"q", b"b", opts=_prio(2)), dequeue(b"q")])
    b = slow.run([enqueue(b"q", b"a"), enqueue(b"q", b"b", opts=_prio(2)), dequeue(b"q")])
    assert a == b and fast.state() == slow.state()
    assert fast.srv.journal.last_lsn == slow.srv.journal.last_lsn == 3
    assert fast.slow_ops == [Op.QUEUE_ENQUEUE]  # the dequeue ran in C too (tests/unit/test_queue_fastpath.py)
    fast.srv.journal, slow.srv.journal = disk  # the fixture closes their writers


def test_enqueue_record_replays_to_the_same_queues(twins, tmp_path) -> None:
    fast, _ = twins()
    fast.run([enqueue(b"q", b"a", ns="ns1"), enqueue(b"q", b"b" * 70_000, ns="ns1", opts=_prio(9)),
              enqueue(b"q", b"c", ns="ns1"), dequeue(b"q", 1)])
    fast.run([enqueue(b"q", b"d", ns="ns1")], NOW + 7)
    replay = Server()
    replay.journal = _Journal(tmp_path / "replay")
    from flo_server.journal import APPLIERS

    for lsn, _kind, payload in fast.records():
        kind, args = unpack_record(payload)
        APPLIERS[kind](replay, lsn, *args)
    assert replay.queues.dump() == fast.srv.queues.dump()
    replay.journal.writer.close()


@pytest.mark.parametrize("now", [0, 5, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, NOW])
def test_enqueue_record_bytes_for_every_int_width(twins, now: int) -> None:
    fast, _ = twins()
    for t in (fast,):
        t.srv.queues.get_or_create("default", "w")
    for prio, size, window in ((0, 0, 0), (127, 31, 127), (128, 255, 128), (255, 256, 65535),
                               (200, 65535, 2**16), (1, 65536, 604_800_000)):
        fast.srv.config.dedup_window_ms = window
        r = fast.run([enqueue(b"w", b"z" * size, opts=_prio(prio))], now)
        assert r[0][1] == 0
        assert fast.records()[-1][2] == pack_record("q.enq", (now, "default", "w", b"z" * size, prio, 0, None, window))
    assert fast.slow_ops == []


def test_core_queue_bounds_are_the_handlers_bounds() -> None:
    # core.pyx repeats these as C constants
    from flo_core.pqueue import DEFAULT_DEDUP_WINDOW_MS
    from flo_core.spec import Op as _Op
    from flo_server.handlers.queue import MAX_DEDUP_WINDOW_MS, MAX_PAYLOAD

    assert (MAX_PAYLOAD, MAX_DEDUP_WINDOW_MS, DEFAULT_DEDUP_WINDOW_MS) == (16 * 1024 * 1024, 7 * 24 * 3600 * 1000,
                                                                         300_000)
    assert (_Op.QUEUE_ENQUEUE, Tag.PRIORITY) == (0x170, 0x10)


def test_kv_on_the_memory_journal_matches(twins) -> None:
    """No raw writer: the fast PUT/INCR journal through ``journal.append`` and store from copies of
    the read buffer (flo_core/core.pyx ``_kv_set``); GET answers from the stored version."""
    from flo_server.journal import MemoryJournal

    fast, slow = twins()
    disk = [fast.srv.journal, slow.srv.journal]
    for t in (fast, slow):
        t.srv.journal = MemoryJournal()
    get = (Op.KV_GET, _head("", b"k").getvalue())
    frames = [put(b"k", b"v1"), get, put(b"k", b"v2" * 500), get, put(b"t", b"5", ttl=1000), incr(b"t", 2),
              incr(b"n", ns="other"), put("\u00e9".encode(), b"", ns="db"), (Op.KV_GET, _head("db", "\u00e9".encode()).getvalue())]
    a = fast.run(frames)
    b = slow.run(frames)
    assert a == b and fast.state() == slow.state() and all(status == 0 for _, status, _ in a)
    assert fast.srv.journal.last_lsn == slow.srv.journal.last_lsn == 6
    assert fast.slow_ops == [] and fast.srv.waiters.notified == slow.srv.waiters.notified
    assert fast.srv.kv.history("default", b"k", 5, NOW) == slow.srv.kv.history("default", b"k", 5, NOW)
    assert fast.srv.kv.get("default", b"t", NOW).expires_at == NOW + 1000
    fast.srv.journal, slow.srv.journal = disk  # the fixture closes their writers

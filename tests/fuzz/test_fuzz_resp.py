"""Fuzz RESP: the request parser (flo_core/resp.pyx) and every command through the real connection edge.

Parser promises: any bytes in any reads give commands (lists of bytes) or
``RespProtocolError`` - nothing else; how the bytes are cut does not change the
commands or whether it fails; with small limits, no command exceeds them (arguments,
argument size, command size) and the parser never buffers much more than one limit.

Command promises (``Edge``: an in-memory server's ``FloProtocol`` with a fake transport,
so the bytes take the socket's path: sniffing, ``RespSession``, the C ``RespCore``):
generated commands - every command name the server knows, arguments drawn from keys,
numbers at their limits, stream ids, keywords, JSON texts and paths, random bytes -
always get well-formed RESP replies and never ``ERR internal error`` (what an
exception escaping a command handler becomes: a bug). A protocol error is answered
and closes only that connection.
"""

from __future__ import annotations

import asyncio
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flo_core.resp import RespParser, RespProtocolError, encode_command
from flo_server.app import Server
from flo_server.resp import COMMANDS
from tests.fuzz._fuzz import (RawJournal, apply_mutations, chunkings, corpus, examples, executed, json_path_texts,
                              json_texts, mutation_steps, replayed_state_matches, scratch_base, split)
from tests.fuzz._resp import Edge, errors_of, parse_replies, settle
from tests.fuzz.test_fuzz_dispatch import LIMITED

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]

SEEDS = [data for _, data in corpus("resp")]


def parse_all(chunks: list[bytes], **limits) -> tuple[list, str | None, RespParser]:
    p = RespParser(**limits)
    cmds: list = []
    for c in chunks:
        try:
            got = p.feed(c)
        except RespProtocolError as e:
            for cmd in e.commands:
                _check_command(cmd, limits)
            return cmds + e.commands, e.message, p
        for cmd in got:
            _check_command(cmd, limits)
        cmds += got
        if limits:
            # one unfinished header line or bulk at most (+2 for its CRLF, + the 64 KiB line limit)
            assert p.buffered <= limits.get("max_bulk", 1 << 24) + 2 + 65536 + len(c)
    return cmds, None, p


def _check_command(cmd, limits: dict) -> None:  # noqa: ANN001
    assert type(cmd) is list and cmd and all(type(a) is bytes for a in cmd)
    if "max_args" in limits:
        assert len(cmd) <= limits["max_args"]


def _same_whatever_the_cut(data: bytes, cuts: list[int], **limits) -> None:
    one = parse_all([data], **limits)
    many = parse_all(split(data, cuts), **limits)
    executed("resp_parser", 2)
    assert one[0] == many[0] and (one[1] is None) == (many[1] is None), (one[:2], many[:2])


# --- parser: corpus, arbitrary, mutated, limits ------------------------------------------------------


@pytest.mark.parametrize("name,data", corpus("resp"), ids=[n for n, _ in corpus("resp")])
def test_corpus_parses_the_same_in_every_cut(name: str, data: bytes) -> None:
    for cut in range(len(data) + 1):
        _same_whatever_the_cut(data, [cut * 1000 // max(1, len(data))])


@settings(max_examples=examples(200))
@given(data=st.binary(max_size=200), cuts=chunkings())
def test_parser_arbitrary_bytes(data: bytes, cuts: list[int]) -> None:
    _same_whatever_the_cut(data, cuts)


@settings(max_examples=examples(200))
@given(seeds=st.lists(st.sampled_from(SEEDS), min_size=1, max_size=3), steps=mutation_steps(), cuts=chunkings())
def test_parser_mutated_commands(seeds: list[bytes], steps: list, cuts: list[int]) -> None:
    _same_whatever_the_cut(apply_mutations(b"".join(seeds), steps), cuts)


@settings(max_examples=examples(150))
@given(seeds=st.lists(st.sampled_from(SEEDS), min_size=1, max_size=3), steps=mutation_steps(), cuts=chunkings())
def test_parser_small_limits(seeds: list[bytes], steps: list, cuts: list[int]) -> None:
    """Tiny limits: every emitted command respects them; violations are RespProtocolError."""
    data = apply_mutations(b"".join(seeds), steps)
    _same_whatever_the_cut(data, cuts, max_bulk=8, max_args=4, max_command=16)


@settings(max_examples=examples(100))
@given(cmds=st.lists(st.lists(st.binary(max_size=40), min_size=1, max_size=5), min_size=1, max_size=4),
       cuts=chunkings(12))
def test_parser_round_trip(cmds: list, cuts: list[int]) -> None:
    data = b"".join(encode_command(*c) for c in cmds)
    got, err, _ = parse_all(split(data, cuts))
    executed("resp_parser")
    assert err is None and got == cmds


# --- commands through the edge -----------------------------------------------------------------------

NAMES = sorted({c.name for c in COMMANDS.values()})
KEYS = [b"k", b"l", b"s", b"d", b"n", b"missing", b"\xff", b""]
NUMBERS = [b"0", b"1", b"-1", b"2", b"10", b"100000", b"9223372036854775807", b"9223372036854775808",
           b"-9223372036854775808", b"-9223372036854775809", b"18446744073709551615", b"1.5", b"-0", b"nan",
           b"inf", b"-inf", b"+inf", b"1e400", b"0x10", b" 1", b"", b"abc", b"00"]
IDS = [b"0", b"0-0", b"0-1", b"1-1", b"5-*", b"*", b"$", b">", b"-", b"+", b"(0-1", b"(18446744073709551615-0",
       b"18446744073709551615-18446744073709551615", b"18446744073709551615-*", b"18446744073709551614-*",
       b"18446744073709551616-0", b"1-18446744073709551616", b"1-", b"-1", b"1-2-3", b"99999999999999999999999"]
WORDS = [b"COUNT", b"BLOCK", b"STREAMS", b"MAXLEN", b"MINID", b"~", b"=", b"LIMIT", b"NX", b"XX", b"GT", b"LT",
         b"EX", b"PX", b"EXAT", b"PXAT", b"KEEPTTL", b"GET", b"PERSIST", b"MATCH", b"TYPE", b"GROUP", b"CREATE",
         b"SETID", b"DESTROY", b"CREATECONSUMER", b"DELCONSUMER", b"MKSTREAM", b"ENTRIESREAD", b"JUSTID", b"IDLE",
         b"TIME", b"RETRYCOUNT", b"FORCE", b"NOACK", b"LEFT", b"RIGHT", b"SETNAME", b"GETNAME", b"ID", b"LIST",
         b"INFO", b"KILL", b"REPLY", b"SET", b"RESETSTAT", b"HELP", b"LEN", b"RESET", b"DOCS", b"COUNTKEYS",
         b"NOMKSTREAM", b"SETINFO", b"LIB-NAME", b"USER", b"ADDR", b"SKIPME", b"WHOAMI", b"CAT", b"USERS",
         b"GETUSER", b"SECTIONS", b"ALL", b"default", b"everything", b"HISTOGRAM", b"LATEST", b"3", b"2", b"AUTH",
         b"INDENT", b"$", b"."]


@st.composite
def argument(draw) -> bytes:  # noqa: ANN001
    kind = draw(st.integers(0, 9))
    if kind <= 1:
        return draw(st.sampled_from(KEYS))
    if kind == 2:
        return draw(st.sampled_from(NUMBERS))
    if kind == 3:
        return draw(st.sampled_from(IDS))
    if kind <= 5:
        return draw(st.sampled_from(WORDS))
    if kind == 6:
        return draw(json_texts())[:200]
    if kind == 7:
        return draw(json_path_texts()).encode("utf-8", "surrogatepass")
    if kind == 8:
        return draw(st.sampled_from([b"*", b"k*", b"[a-", b"\\", b"*?*?*?*?*?*?*?*?*?*?b", b"[^]", b"[]]", b"?"]))
    return draw(st.binary(max_size=12))


@st.composite
def resp_command(draw) -> list[bytes]:  # noqa: ANN001
    name = draw(st.sampled_from(NAMES)).encode()
    if draw(st.booleans()):
        name = name.upper()
    if draw(st.integers(0, 30)) == 0:
        name = draw(st.sampled_from([b"NOPE", b"", b"\x00", b"CLIENT|LIST"]))
    return [name] + draw(st.lists(argument(), max_size=7))


#: shapes of real commands; ``@x`` slots are drawn from the pools (``@id`` stream ids, ``@n`` numbers...)
TEMPLATES = [t.split() for t in """
XADD s @id f v | XADD s @id payload @any | XADD s MAXLEN ~ @n @id f v | XADD s MINID @id @id f v
XADD s NOMKSTREAM @id f v | XADD new @id f v | XADD s LIMIT @n @id f v
XRANGE s @id @id | XRANGE s @id @id COUNT @n | XREVRANGE s @id @id COUNT @n
XREAD COUNT @n STREAMS s @id | XREAD BLOCK @n STREAMS s @id | XREAD STREAMS s new @id @id
XREADGROUP GROUP g c COUNT @n STREAMS s @id | XREADGROUP GROUP g c2 NOACK STREAMS s @id
XGROUP CREATE s @key @id | XGROUP CREATE s g2 @id MKSTREAM ENTRIESREAD @n | XGROUP SETID s g @id
XGROUP CREATECONSUMER s g @key | XGROUP DELCONSUMER s g c | XGROUP DESTROY s @key
XACK s g @id @id | XDEL s @id | XTRIM s MINID @id | XTRIM s MAXLEN @n | XTRIM s MAXLEN ~ @n LIMIT @n
XAUTOCLAIM s g c @n @id COUNT @n | XAUTOCLAIM s g c @n @id JUSTID | XCLAIM s g c @n @id @id
XCLAIM s g c @n @id IDLE @n RETRYCOUNT @n FORCE JUSTID | XPENDING s g | XPENDING s g @id @id @n
XPENDING s g IDLE @n @id @id @n c | XLEN s
SET @key @any | SET @key @any EX @n | SET @key @any PX @n NX | SET @key @any KEEPTTL GET | SET @key @any EXAT @n
GETEX @key EX @n | GETEX @key PERSIST | EXPIRE @key @n | EXPIRE @key @n NX | PEXPIREAT @key @n GT
INCRBY @key @n | DECRBY @key @n | INCR @key | APPEND @key @any | SETEX @key @n @any | PSETEX @key @n @any
MSET @key @any @key @any | MSETNX @key @any | MGET @key @key | GETSET @key @any | GETDEL @key | TTL @key
JSON.SET d @path @json | JSON.SET @key @path @json NX | JSON.GET d @path | JSON.DEL d @path | JSON.TYPE d @path
JSON.SET d $ @json | JSON.GET @key @path @path
LPUSH @key @any | RPUSH l @any @any | LRANGE l @n @n | LINDEX l @n | LPOP l @n | RPOP l | BLPOP l @n | BRPOP new @n
SCAN @n MATCH @pat COUNT @n | SCAN @n TYPE @word | KEYS @pat | SELECT @n | USE @any | DEL @key s l
CLIENT SETNAME @any | CLIENT KILL ID @n | CLIENT LIST | CLIENT INFO | CLIENT NO-EVICT @word
CONFIG GET @pat | CONFIG SET slowlog-max-len @n | SLOWLOG GET @n | LATENCY HISTOGRAM @word
HELLO @n | HELLO 3 AUTH @key @any | AUTH @any | AUTH @key @any | ACL WHOAMI | ACL GETUSER @key
INFO @word | COMMAND INFO @word | COMMAND COUNT | COMMAND DOCS @word | OBJECT ENCODING @key
""".replace("\n", " | ").split(" | ") if t.strip()]
SLOTS = {
    "@id": st.sampled_from(IDS), "@n": st.sampled_from(NUMBERS), "@key": st.sampled_from(KEYS),
    "@any": argument(), "@json": json_texts().map(lambda b: b[:300]),
    "@path": json_path_texts().map(lambda t: t.encode("utf-8", "surrogatepass")),
    "@pat": st.sampled_from([b"*", b"k*", b"[a-", b"\\", b"*?*?*?*?*?*?*?*?*?*?b", b"[^]", b"[]]", b"?", b"[!a]"]),
    "@word": st.sampled_from(WORDS),
}


@st.composite
def templated_command(draw) -> list[bytes]:  # noqa: ANN001
    tpl = draw(st.sampled_from(TEMPLATES))
    return [draw(SLOTS[t]) if t in SLOTS else t.encode() for t in tpl]


def _encode(cmd: list[bytes], inline: bool) -> bytes:
    if inline and all(a and not any(c in a for c in b" \t\r\n\"'\\\x00") for a in cmd):
        return b" ".join(cmd) + b"\r\n"
    return encode_command(*cmd)


SETUP = (b"SET k v\r\nSET n 10\r\nRPUSH l a b c\r\nXADD s 1-1 f v\r\nXADD s 2-0 payload p h w\r\n"
         b"XGROUP CREATE s g 0\r\nXREADGROUP GROUP g c COUNT 1 STREAMS s >\r\n"
         b"JSON.SET d $ '{\"a\":[1,2,{\"b\":null}],\"c\":\"x\"}'\r\n")

NOW = 1_700_000_000_000
_LOOP = asyncio.new_event_loop()


def teardown_module() -> None:
    _LOOP.close()


async def _session(data: bytes, cuts: list[int], limited: bool) -> tuple[list, bool]:
    with tempfile.TemporaryDirectory(dir=scratch_base()) as d:
        srv = Server()
        srv.journal = RawJournal(f"{d}/log")  # a real log writer: RespCore's C paths run (they need one)
        srv.now = lambda: NOW  # type: ignore[method-assign] - one clock for commands and wake-ups alike
        try:
            got = await _session_on(srv, data, cuts, limited)
            replayed_state_matches(srv, d)  # what was logged replays to what is live
            return got
        finally:
            srv.journal.close()


async def _session_on(srv: Server, data: bytes, cuts: list[int], limited: bool) -> tuple[list, bool]:
    e = Edge(srv)
    e.feed(SETUP)
    await settle()
    setup_replies = parse_replies(e.take())
    assert not errors_of(setup_replies), setup_replies
    if limited:
        e.proto.set_user(LIMITED)
    for chunk in split(data, cuts):
        e.feed(chunk)
        await settle(2)
    await settle()
    replies = parse_replies(e.take())
    closed = e.transport.closed
    e.close()  # cancels a blocked command, as a closed socket does
    await settle()
    return replies, closed


def run_session(data: bytes, cuts: list[int] = (), limited: bool = False) -> list:
    replies, _ = _LOOP.run_until_complete(_session(data, list(cuts), limited))
    executed("resp_commands")
    bad = [e for e in errors_of(replies) if "internal error" in e]
    assert not bad, f"{bad} for {data!r}"
    return replies


@pytest.mark.parametrize("name,data", corpus("resp"), ids=[n for n, _ in corpus("resp")])
def test_corpus_commands(name: str, data: bytes) -> None:
    run_session(data)
    run_session(data, limited=True)


@settings(max_examples=examples(160))
@given(cmds=st.lists(st.one_of(resp_command(), templated_command(), templated_command()), min_size=1, max_size=6),
       inline=st.booleans(), cuts=chunkings(4),
       limited=st.integers(0, 3), resp3=st.booleans())
def test_generated_commands(cmds: list, inline: bool, cuts: list[int], limited: int, resp3: bool) -> None:
    data = (b"HELLO 3\r\n" if resp3 else b"") + b"".join(_encode(c, inline) for c in cmds)
    run_session(data, cuts, limited == 0)


@settings(max_examples=examples(100))
@given(seeds=st.lists(st.sampled_from(SEEDS), min_size=1, max_size=3), steps=mutation_steps(), cuts=chunkings(4))
def test_mutated_command_streams(seeds: list[bytes], steps: list, cuts: list[int]) -> None:
    run_session(apply_mutations(b"".join(seeds), steps), cuts)


def test_protocol_error_answers_then_closes_only_that_connection() -> None:
    async def go() -> None:
        srv = Server()
        bad, good = Edge(srv), Edge(srv)
        bad.feed(b"PING\r\n*1\r\n$-3\r\n")
        good.feed(b"PING\r\n")
        await settle()
        assert parse_replies(bad.take()) == [b"PONG", ("ERR", "ERR Protocol error: invalid bulk length")]
        assert bad.transport.closed and not good.transport.closed
        assert parse_replies(good.take()) == [b"PONG"]

    _LOOP.run_until_complete(go())


# --- regressions -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,data", corpus("resp", "crash-*"), ids=[n for n, _ in corpus("resp", "crash-*")])
def test_regression_crash_inputs(name: str, data: bytes) -> None:
    """Each once answered ``ERR internal error`` (an exception out of the command): see docs/reliability.md."""
    replies = run_session(data)
    if name == "crash-lpush-without-value.resp":
        # RespCore's C LPUSH/RPUSH took a call without a value: ':0' and an empty list LPOP then crashed on
        assert replies[:2] == [("ERR", "ERR wrong number of arguments for 'lpush' command"),
                               ("ERR", "ERR wrong number of arguments for 'rpush' command")]
        assert replies[2:] == [None, None]
    if name == "crash-xadd-largest-id.resp":
        assert replies == [b"18446744073709551615-18446744073709551615",
                           ("ERR", "ERR The stream has exhausted the last possible ID, unable to add more items"),
                           ("ERR", "ERR The ID specified in XADD is equal or smaller than the target stream top item")]

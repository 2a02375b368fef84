"""Fuzz every op's body decoder through the real dispatcher and the C request loop, no sockets.

Each example starts a fresh in-memory :class:`flo_server.app.Server`, fills it with a
little state (the corpus' own requests: keys, a JSON document, queues with leased and
dead messages, a stream with a group and pending entries, an action, a worker, a run,
an open transaction), then sends 1-4 requests built from real ``flo_client`` encodings
(``corpus/dispatch``) and mutated: the ns/key head kept or mangled, the body or the
value / TLV options mutated field by field, an op swapped for another op's body, or
plain random bytes. The requests run through ``ServerCore`` (``flo_core/core.pyx``:
the C fast paths and, for everything else, ``flo_server.dispatch.dispatch``), as a
connection's reads do, or straight through ``dispatch`` (the pure build's path).

Every request must get exactly one answer, a well-formed ``(status, body)``: a known
status, and for a refusal a body ``[reason u16][ran u8][message UTF-8]`` with a known
reason. **INTERNAL_ERROR is never the answer to bad input**: that is what an uncaught
exception in a handler becomes, and each one found was a bug (see docs/reliability.md).
Blocking requests are given a few ms and then abandoned (the waiter is cancelled, as a
closed connection does).

Half of the examples run as a connection whose user is restricted (some namespaces,
some keys), so the permission check's key extraction (``auth.flo_keys``) sees the same
mangled bodies.
"""

from __future__ import annotations

import asyncio
import struct
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flo_core import _pyframe as pf
from flo_core.errors import parse_refusal_body
from flo_core.spec import TABLE_OPS, Ran, Reason, Status, Tag
from flo_server.app import Server
from flo_server.auth import Rule, User
from flo_server.dispatch import HANDLERS, dispatch
from flo_core.body import Writer
from flo_core.spec import Op
from tests.fuzz._fuzz import (RawJournal, apply_mutations, corpus, examples, executed, flo_seeds, head,
                              json_path_texts, json_texts, mutation_steps, replayed_state_matches, scratch_base,
                              split_head)

try:
    from flo_core.core import ServerCore  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - pure build
    ServerCore = None

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]

NOW = 1_700_000_000_000
SEEDS = flo_seeds()
BY_NAME = {name: (op, p) for name, op, p in SEEDS}
OPS = sorted(HANDLERS)
STATUSES = {int(s) for s in Status}
REASONS = {int(r) for r in Reason}
RANS = {int(r) for r in Ran}

#: the state every example starts from (corpus requests, in an order that makes them succeed)
SETUP = [
    "KV_PUT-0.bin", "KV_PUT-1.bin", "KV_PUT-2.bin", "KV_INCR-0.bin", "KV_JSON_SET-0.bin", "KV_MPUT-0.bin",
    "KV_BEGIN_TXN-0.bin",
    "QUEUE_ENQUEUE-0.bin", "QUEUE_ENQUEUE-1.bin", "QUEUE_ENQUEUE-2.bin", "QUEUE_DEQUEUE-0.bin", "QUEUE_ENQUEUE-0.bin",
    "STREAM_CREATE-0.bin", "STREAM_APPEND-0.bin", "STREAM_APPEND-1.bin", "STREAM_APPEND-2.bin",
    "STREAM_GROUP_CREATE-0.bin", "STREAM_GROUP_JOIN-0.bin", "STREAM_GROUP_READ-0.bin",
    "ACTION_REGISTER-0.bin", "WORKER_REGISTER-0.bin", "ACTION_INVOKE-0.bin", "ACTION_INVOKE-1.bin",
]

LIMITED = User("limited", nopass=True, rules=(
    Rule(namespaces=("fz",), rights=frozenset({"read", "write"}), keys=(b"k*", b"doc", b"jobs", b"ev", b"w1")),
    Rule(namespaces=("other",), rights=frozenset({"read"})),
))


class FakeTransport:
    def __init__(self) -> None:
        self.closed = False

    def get_extra_info(self, name: str, default=None):  # noqa: ANN001
        return ("127.0.0.1", 4242) if name == "peername" else default

    def close(self) -> None:
        self.closed = True

    def write(self, data) -> None:  # noqa: ANN001
        pass


class FakeConn:
    """What handlers use of a FloProtocol: user, trust, parked futures, AUTH's failure count."""

    def __init__(self, user) -> None:  # noqa: ANN001
        self.transport = FakeTransport()
        self.closed = False
        self.tasks: set = set()
        self.auth_failures = 0
        self.id = 1
        self.set_user(user)

    def set_user(self, user) -> None:  # noqa: ANN001
        self.user = user
        self.trusted = user is not None and user.superuser


_LOOP = asyncio.new_event_loop()


def teardown_module() -> None:
    _LOOP.close()


def _check_answer(op: int, payload: bytes, status: int, body: bytes) -> None:
    where = f"op 0x{op:03x} payload {payload!r}"
    assert status in STATUSES, f"unknown status {status} for {where}"
    assert type(body) in (bytes, bytearray), where
    if status != 0:
        assert len(body) >= 3, f"short refusal body {body!r} for {where}"
        reason, ran, message = parse_refusal_body(body)
        assert reason in REASONS, f"unknown reason {reason} for {where}"
        assert ran in RANS, where
        bytes(body[3:]).decode("utf-8")  # strict: the message is text
    assert status != Status.INTERNAL_ERROR, f"INTERNAL_ERROR on bad input: {where}: {parse_refusal_body(body)}"


async def _settle(coro) -> tuple[int, bytes] | None:  # noqa: ANN001
    """A blocking request gets a few ms; then it is abandoned like a closed connection's."""
    try:
        return await asyncio.wait_for(coro, 0.005)
    except asyncio.TimeoutError:
        return None


async def _populate(srv: Server) -> None:
    for name in SETUP:
        op, p = BY_NAME[name]
        r = dispatch(srv, 0, op, p, None, NOW)
        if not isinstance(r, tuple):
            r = await _settle(r)


async def _run(reqs: list[tuple[int, bytes]], via_core: bool, fast: bool, limited: bool) -> None:
    with tempfile.TemporaryDirectory(dir=scratch_base()) as d:
        srv = Server()
        srv.journal = RawJournal(f"{d}/log")  # a real log writer: the C fast paths run (they need one)
        srv.now = lambda: NOW  # type: ignore[method-assign] - one clock for requests and wake-ups alike
        try:
            await _run_on(srv, reqs, via_core, fast, limited)
            replayed_state_matches(srv, d)  # what was logged replays to what is live
        finally:
            srv.journal.close()


async def _run_on(srv: Server, reqs: list[tuple[int, bytes]], via_core: bool, fast: bool, limited: bool) -> None:
    await _populate(srv)
    conn = FakeConn(LIMITED if limited else srv.users.default)
    answers: dict[int, tuple[int, bytes]] = {}
    if via_core and ServerCore is not None:
        core = ServerCore(srv, lambda rid, op, p: dispatch(srv, rid, op, p, conn, core.now), fast=fast and not limited)
        data = b"".join(pf.encode_request(rid, op, p) for rid, (op, p) in enumerate(reqs, 1))
        core.run(data, NOW)
        for rid, status, body in pf.FrameReader(is_request=False, max_payload=1 << 26).feed(bytes(core.out)):
            assert rid not in answers, f"two answers for request {rid}"
            answers[rid] = (status, body)
        for rid, coro in core.deferred:
            got = await _settle(coro)
            if got is not None:
                assert rid not in answers
                answers[rid] = got
            else:
                answers[rid] = (0, b"")  # parked: no answer yet, and that is fine
    else:
        for rid, (op, p) in enumerate(reqs, 1):
            r = dispatch(srv, rid, op, p, conn, NOW)
            if not isinstance(r, tuple):
                r = await _settle(r) or (0, b"")
            answers[rid] = r
    assert sorted(answers) == list(range(1, len(reqs) + 1)), "a request without an answer"
    for rid, (op, p) in enumerate(reqs, 1):
        _check_answer(op, p, *answers[rid])
    executed("dispatch", len(reqs))


def run_requests(reqs: list[tuple[int, bytes]], via_core: bool = True, fast: bool = True,
                 limited: bool = False) -> None:
    _LOOP.run_until_complete(_run(reqs, via_core, fast, limited))


# --- request strategies ----------------------------------------------------------------------------

OPTION_TAGS = [int(t) for t in Tag] + [0x00, 0x01, 0x7F, 0xFF]
OPT_VALUE = st.one_of(
    st.binary(max_size=17),
    st.sampled_from([b"", b"\x00", b"\x01", b"\xff", b"\xff\xff", b"\xff\xff\xff\xff", b"\x00" * 8, b"\xff" * 8,
                     b"\x7f" + b"\xff" * 7, b"\xff" * 16, b"\x00" * 16]),
)


def _value_options(rest: bytes) -> tuple[bytes, dict[int, bytes]] | None:
    try:
        return pf.split_value_options(b"\x00\x00\x00\x00" + rest, 4)
    except pf.FrameError:
        return None


def _encode_vo(value: bytes, opts: dict[int, bytes]) -> bytes:
    block = b"".join(bytes([t, len(v)]) + v for t, v in opts.items())
    return struct.pack("<I", len(value)) + value + struct.pack("<H", len(block)) + block


@st.composite
def request(draw) -> tuple[int, bytes]:  # noqa: ANN001
    name, op, payload = draw(st.sampled_from(SEEDS))
    how = draw(st.sampled_from(["body", "body", "value", "options", "whole", "other-op", "random", "seed", "json"]))
    if how == "json":
        return draw(json_request())
    parts = split_head(payload)
    assert parts is not None
    ns, key, rest = parts
    if draw(st.integers(0, 9)) == 0:
        ns = draw(st.sampled_from([b"", b"other", b"default", b"\xff\xfe", b"n" * 255, b"n" * 256, b"fz"]))
    if draw(st.integers(0, 9)) == 0:
        key = draw(st.sampled_from([b"", b"k1", b"\xc3", b"jobs", b"ev", b"doc", b"x" * 300, b"w1", b"act-1"]))
    if how == "seed":
        return op, head(ns, key) + rest
    if how == "whole":
        return op, apply_mutations(payload, draw(mutation_steps()))
    if how == "random":
        body = draw(st.binary(max_size=64))
        return draw(st.sampled_from(OPS + [0x0FF, 0xFFFF])), head(ns, key) + body
    if how == "other-op":
        return draw(st.sampled_from(OPS)), head(ns, key) + rest
    vo = None if op in TABLE_OPS else _value_options(rest)
    if how == "body" or vo is None:
        return op, head(ns, key) + apply_mutations(rest, draw(mutation_steps()))
    value, opts = vo
    if how == "value":
        value = apply_mutations(value, draw(mutation_steps())) if value else draw(st.binary(max_size=32))
    else:
        opts = dict(opts)
        for tag, v in draw(st.lists(st.tuples(st.sampled_from(OPTION_TAGS), OPT_VALUE), min_size=1, max_size=3)):
            opts[tag] = v
        if opts and draw(st.booleans()):
            opts.pop(draw(st.sampled_from(sorted(opts))))
    return op, head(ns, key) + _encode_vo(value, opts)


JSON_OPS = [Op.KV_JSON_GET, Op.KV_JSON_SET, Op.KV_JSON_DEL]


@st.composite
def json_request(draw) -> tuple[int, bytes]:  # noqa: ANN001
    """KV_JSON_GET / SET / DEL with grammar-shaped paths and nasty documents (mutation alone rarely gets there)."""
    op = draw(st.sampled_from(JSON_OPS))
    key = draw(st.sampled_from([b"doc", b"doc", b"k1", b"n", b"j2"]))
    path = draw(st.one_of(st.none(), json_path_texts()))
    w = Writer().opt_bytes16(None if path is None else path.encode("utf-8", "surrogatepass"))
    if op == Op.KV_JSON_SET:
        w.bytes32(draw(json_texts()))
    return op, head(b"fz", key) + w.getvalue()


# --- the corpus first ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n, _ in corpus("dispatch")])
def test_corpus_requests(name: str) -> None:
    """Every seed as it was recorded, after the set-up state: through ServerCore, and as a restricted user."""
    op, p = BY_NAME[name]
    run_requests([(op, p)], via_core=True)
    run_requests([(op, p)], via_core=False, limited=True)


# --- generated -------------------------------------------------------------------------------------


@settings(max_examples=examples(200))
@given(reqs=st.lists(request(), min_size=1, max_size=4), via_core=st.booleans(), fast=st.booleans(),
       limited=st.integers(0, 3))
def test_mutated_requests(reqs: list, via_core: bool, fast: bool, limited: int) -> None:
    run_requests(reqs, via_core=via_core, fast=fast, limited=limited == 0)


# --- regressions -------------------------------------------------------------------------------------


@pytest.mark.parametrize("via_core", [True, False])
@pytest.mark.parametrize("name", ["crash-kv-put-huge-ttl.bin", "crash-kv-mput-huge-ttl.bin"])
def test_regression_huge_ttl_is_out_of_range(name: str, via_core: bool) -> None:
    """A TTL near 2**64 ms: now + ttl did not fit the log record's u64 (OverflowError: INTERNAL_ERROR)
    and the C fast path stored a wrapped, negative expiry. Now both refuse it, like KV_EXPIRE does."""
    op, p = BY_NAME[name]
    got: list = []

    async def go() -> None:
        with tempfile.TemporaryDirectory(dir=scratch_base()) as d:
            srv = Server()
            srv.journal = RawJournal(d)
            try:
                if via_core:
                    core = ServerCore(srv, lambda rid, o, b: dispatch(srv, rid, o, b, None, NOW))
                    core.run(pf.encode_request(1, op, p), NOW)
                    got.extend(pf.FrameReader(is_request=False).feed(bytes(core.out)))
                else:
                    got.append((1,) + tuple(dispatch(srv, 1, op, p, None, NOW)))
            finally:
                srv.journal.close()

    _LOOP.run_until_complete(go())
    ((rid, status, body),) = got
    assert status == Status.BAD_REQUEST and parse_refusal_body(body)[:2] == (Reason.OUT_OF_RANGE, Ran.NO)


@pytest.mark.parametrize("name", sorted(n for n, _ in corpus("dispatch", "crash-json-*")))
def test_regression_json_requests(name: str) -> None:
    """Deep nesting (RecursionError), bad path escapes and 5000-digit indexes (ValueError), lone
    surrogates (UnicodeEncodeError): each was INTERNAL_ERROR. Now refusals - or, for a lone
    surrogate, a document written with the escape kept."""
    op, p = BY_NAME[name]
    run_requests([(op, p)], via_core=False)
    if name == "crash-json-set-lone-surrogate-key.bin":
        get = head(b"fz", b"doc") + Writer().opt_str16('$["\\ud800"]').getvalue()
        run_requests([(op, p), (Op.KV_JSON_GET, get)], via_core=False)


@pytest.mark.parametrize("fastpath", [True, False])
def test_regression_blocking_request_before_a_bad_frame(fastpath: bool, monkeypatch) -> None:
    """A waiting KV_GET and then a broken frame in one read: the connection is answered id 0 and
    closed, and the GET's coroutine was dropped un-awaited (a RuntimeWarning in the server log per
    such request, found by the live fuzz test). Now it is closed (dispatch.discard)."""
    import gc
    import warnings

    from tests.fuzz._resp import Edge, settle

    if not fastpath:
        monkeypatch.setenv("FLO_NO_FASTPATH", "1")
    ((_, data),) = corpus("frame", "crash-blocking-then-bad-frame.frames")

    async def go() -> None:
        e = Edge()
        e.feed(data)
        await settle()
        answers = pf.FrameReader(is_request=False).feed(e.take())
        assert e.transport.closed and answers[-1][0] == 0 and answers[-1][1] == Status.BAD_REQUEST
        e.close()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _LOOP.run_until_complete(go())
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]

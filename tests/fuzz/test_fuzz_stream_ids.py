"""Fuzz stream ids wherever they are parsed or generated.

* ``flo_server.resp._parse_id`` (``ms-seq``, ``ms``, ``-``, ``+``) and the exclusive
  ``(ms-seq`` forms: a pair inside ``0..2**64-1`` exactly when the text is canonical
  digits, else ``RespError`` - checked against a reference regex;
* ``flo_client.stream.StreamID.parse`` (client side): a StreamID that encodes, or ValueError;
* ``flo_core.body.parse_id_be`` (the Flo 16-byte option form): a pair or Refusal;
* the generator: any mix of ``XADD`` with explicit ids, ``ms-*``, ``*`` (RESP) and
  Flo ``STREAM_APPEND`` batches, at any clock, near the largest id too, gives strictly
  rising ids, refuses what it must with a proper error (never ``internal error``, never a
  dropped connection), and ``XRANGE - +`` reads back exactly the ids that were accepted.
"""

from __future__ import annotations

import asyncio
import re
import struct
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flo_client.stream import StreamID
from flo_core import _pyframe as pf
from flo_core.body import parse_id_be
from flo_core.errors import Refusal
from flo_core.resp import encode_command
from flo_core.spec import Op
from flo_server.app import Server
from flo_server.resp import U64_MAX, RespError, _exclusive_end, _exclusive_start, _parse_id
from tests.fuzz._fuzz import RawJournal, corpus, examples, executed, head, replayed_state_matches, scratch_base
from tests.fuzz._resp import Edge, errors_of, parse_replies, settle

pytestmark = [pytest.mark.unit, pytest.mark.timeout(120)]

CANONICAL = re.compile(rb"(\d+)(?:-(\d+))?")
SEED_IDS = [data for _, data in corpus("stream_id")]

ID_TEXT = st.one_of(
    st.sampled_from(SEED_IDS),
    st.from_regex(rb"\A[0-9]{0,21}(-[0-9*]{0,21})?\Z"),
    st.builds(lambda a, b: b"%d-%d" % (a, b), st.integers(-2, (1 << 64) + 2), st.integers(-2, (1 << 64) + 2)),
    st.binary(max_size=24),
)


def _reference(arg: bytes, missing: int) -> tuple[int, int] | None:
    if arg == b"-":
        return 0, 0
    if arg == b"+":
        return U64_MAX, U64_MAX
    m = CANONICAL.fullmatch(arg)
    if m is None:
        return None
    ms, seq = int(m.group(1)), int(m.group(2)) if m.group(2) is not None else missing
    return (ms, seq) if ms <= U64_MAX and seq <= U64_MAX else None


@pytest.mark.parametrize("arg", SEED_IDS)
def test_corpus_ids(arg: bytes) -> None:
    check_parse_id(arg)


def check_parse_id(arg: bytes) -> None:
    executed("stream_id")
    for missing in (0, U64_MAX):
        try:
            got = _parse_id(arg, missing)
        except RespError:
            got = None
        assert got == _reference(arg, missing), arg
        for fn in (_exclusive_start, _exclusive_end):
            try:
                r = fn(arg)
            except RespError:
                continue
            assert r is None or (0 <= r[0] <= U64_MAX and 0 <= r[1] <= U64_MAX)


@settings(max_examples=examples(200))
@given(arg=ID_TEXT)
def test_resp_id_parsing(arg: bytes) -> None:
    check_parse_id(arg)
    check_parse_id(b"(" + arg)


@settings(max_examples=examples(150))
@given(text=st.one_of(ID_TEXT.map(lambda b: b.decode("latin-1")), st.text(max_size=24)))
def test_client_stream_id_parse(text: str) -> None:
    executed("stream_id")
    try:
        sid = StreamID.parse(text)
    except ValueError:
        return
    assert StreamID.from_bytes(sid.to_bytes()) == sid  # anything parse accepts can go on the wire


@settings(max_examples=examples(100))
@given(b=st.binary(max_size=20))
def test_flo_id_option(b: bytes) -> None:
    executed("stream_id")
    try:
        ts, seq = parse_id_be(b)
    except Refusal:
        assert len(b) != 16
        return
    assert len(b) == 16 and 0 <= ts <= U64_MAX and 0 <= seq <= U64_MAX


# --- the generator: XADD / STREAM_APPEND sequences ----------------------------------------------------

BIG = [0, 1, 2, 1_700_000_000_000, U64_MAX - 1, U64_MAX]
STEP = st.one_of(
    st.tuples(st.just("xadd"), st.sampled_from([b"*"] * 3 + [b"%d-*" % v for v in BIG])),
    st.tuples(st.just("xadd"), st.builds(lambda a, b: b"%d-%d" % (a, b), st.sampled_from(BIG), st.sampled_from(BIG))),
    st.tuples(st.just("flo"), st.integers(1, 3)),
    st.tuples(st.just("xread"), st.sampled_from([b"$", b"0", b"%d-%d" % (U64_MAX, U64_MAX), b"+"])),
)


def _append_frame(rid: int, n: int) -> bytes:
    value = struct.pack("<I", n) + b"".join(struct.pack("<I", 1) + b"x" + struct.pack("<H", 0) for _ in range(n))
    return pf.encode_request(rid, Op.STREAM_APPEND, head(b"default", b"s") + struct.pack("<I", len(value)) + value
                             + b"\x00\x00")


_LOOP = asyncio.new_event_loop()


def teardown_module() -> None:
    _LOOP.close()


async def _sequence(steps: list, clock: int) -> None:
    with tempfile.TemporaryDirectory(dir=scratch_base()) as d:
        srv = Server()
        srv.journal = RawJournal(f"{d}/log")  # a real log writer: STREAM_APPEND takes the C fast path
        srv.now = lambda: clock  # type: ignore[method-assign]
        try:
            await _sequence_on(srv, steps)
            # the log holds exactly what was applied: an append logged and then refused would not replay
            _, errors = replayed_state_matches(srv, d)
            assert errors == 0, f"{errors} logged record(s) did not apply: {steps}"
        finally:
            srv.journal.close()


async def _sequence_on(srv: Server, steps: list) -> None:
    resp, flo = Edge(srv), Edge(srv)
    accepted: list[tuple[int, int]] = []
    for i, (kind, arg) in enumerate(steps, 1):
        if kind == "xadd":
            resp.feed(encode_command(b"XADD", b"s", arg, b"f", b"v"))
            (r,) = parse_replies(resp.take())
            if isinstance(r, tuple):
                assert "internal error" not in r[1], (steps, r)
                continue
            ms, _, seq = r.partition(b"-")
            accepted.append((int(ms), int(seq)))
        elif kind == "flo":
            flo.feed(_append_frame(i, arg))
            await settle()
            assert not flo.transport.closed, f"the Flo connection was dropped: {steps}"
            ((rid, status, body),) = pf.FrameReader(is_request=False).feed(flo.take())
            assert rid == i and status != 9, (steps, body)
            if status == 0:
                seq, ts = struct.unpack("<Qq", body)
                accepted += [(ts & U64_MAX, seq + k) for k in range(arg)]
        else:
            resp.feed(encode_command(b"XREAD", b"STREAMS", b"s", arg))
            replies = parse_replies(resp.take())
            assert not [e for e in errors_of(replies) if "internal error" in e], (steps, replies)
    assert accepted == sorted(set(accepted)), f"ids did not rise: {accepted} from {steps}"
    resp.feed(b"XRANGE s - +\r\n")
    (rows,) = parse_replies(resp.take())
    assert [tuple(int(x) for x in row[0].split(b"-")) for row in rows or []] == accepted
    executed("stream_id", len(steps))


@pytest.mark.parametrize("steps", [
    [("xadd", b"%d-%d" % (U64_MAX, U64_MAX)), ("xadd", b"*"), ("flo", 1), ("xadd", b"%d-*" % U64_MAX)],
    [("xadd", b"%d-%d" % (U64_MAX - 1, U64_MAX)), ("xadd", b"%d-*" % (U64_MAX - 1)), ("flo", 3), ("xadd", b"*")],
    [("xadd", b"%d-%d" % (U64_MAX, U64_MAX)), ("xread", b"%d-%d" % (U64_MAX, U64_MAX))],
    [("xadd", b"%d-0" % (U64_MAX - 1)), ("flo", 1)],
])
@pytest.mark.parametrize("fastpath", [True, False])
def test_regression_largest_id(steps: list, fastpath: bool, monkeypatch) -> None:
    """At the largest id: XADD ``ms-*`` overflowed (2**64 to the store: internal error), XADD ``*`` and
    Flo STREAM_APPEND wrapped to 0-0 (internal error; the C fast path's ValueError escaped
    data_received and uvloop dropped the connection, after logging a record), and XREAD after it
    asked the store for 2**64; RespCore's C XADD logged the record before the store refused it.
    Now: refused before anything is logged (Redis's wording on RESP, OUT_OF_RANGE on Flo) / empty.
    And the Python STREAM_APPEND answered a timestamp >= 2**63 as an i64 (struct.error: INTERNAL_ERROR);
    it writes the u64 the C path writes."""
    if not fastpath:
        monkeypatch.setenv("FLO_NO_FASTPATH", "1")
    _LOOP.run_until_complete(_sequence(steps, 1_700_000_000_000))


@settings(max_examples=examples(100))
@given(steps=st.lists(STEP, min_size=1, max_size=8), clock=st.sampled_from(BIG[1:4]))
def test_id_sequences_rise(steps: list, clock: int) -> None:
    _LOOP.run_until_complete(_sequence(steps, clock))

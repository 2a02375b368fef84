"""The protocol table (flo_core.spec) and the one error map (flo_core.errors).

Checked against flo-wire-v2.md and, where it exposes them, the public SDK's
own enums (flo-python 0.1.2): a code that differs from the SDK's would break
every client built on it.
"""

from __future__ import annotations

import doctest

import pytest

import flo_core.errors as errors
import flo_core.spec as spec
from flo_core.errors import (
    BadRequestError,
    ConflictError,
    GenericServerError,
    InternalServerError,
    NotFoundError,
    OverloadedError,
    RateLimitedError,
    Refusal,
    ServerError,
    UnauthorizedError,
    UnavailableError,
    error_from_refusal,
    parse_refusal_body,
    refusal_body,
    refusal_of,
)
from flo_core.spec import REASON_STATUS, SPEC, TABLE_OPS, Flag, Op, Ran, Reason, Status, Tag

pytestmark = pytest.mark.unit

#: flo-wire-v2.md §1.3a, verbatim.
WIRE_V2_TABLE_OPS = {0x100, 0x101, 0x102, 0x103, 0x104, 0x105, 0x10B, 0x10C, 0x10D, 0x10E,
                     0x110, 0x111, 0x112, 0x113, 0x115, 0x302, 0x323}


@pytest.mark.parametrize("enum", [Op, Tag, Status, Reason, Ran], ids=lambda e: e.__name__)
def test_codes_are_unique(enum) -> None:
    # IntEnum turns a repeated value into a silent alias: count values, not members.
    values = [m.value for m in enum.__members__.values()]
    assert len(values) == len(set(values)), [n for n, m in enum.__members__.items() if m.name != n]


def test_op_codes_fit_u16_and_tags_fit_u8() -> None:
    assert all(0 <= op <= 0xFFFF for op in Op)
    assert all(0 <= t <= 0xFF for t in Tag)
    assert all(0 <= s <= 0xFF for s in Status)
    assert all(0 < r <= 0xFFFF for r in Reason)


def test_spec_entries_are_unique_and_named_by_op() -> None:
    assert len(SPEC) == len(spec._OPS)
    for op, s in SPEC.items():
        assert s.op == op and s.summary


def test_table_flag_matches_flo_wire_v2() -> None:
    assert {int(op) for op, s in SPEC.items() if s.flags & Flag.TABLE} == WIRE_V2_TABLE_OPS
    assert TABLE_OPS == WIRE_V2_TABLE_OPS
    assert len(TABLE_OPS) == 17
    assert SPEC[Op.KV_PUT].table and not SPEC[Op.QUEUE_ENQUEUE].table


def test_every_kv_op_is_in_the_spec_and_sdk_sends_them_as_table_ops() -> None:
    kv_body = pytest.importorskip("flo.kv_body")
    assert {int(op) for op in kv_body._TABLE_OPS} == WIRE_V2_TABLE_OPS
    for op in WIRE_V2_TABLE_OPS:
        assert op in SPEC


def test_flags_are_consistent() -> None:
    for op, s in SPEC.items():
        # an op is a read or a write (PING and the ext info op are reads)
        assert s.flags & (Flag.READ | Flag.WRITE), op
        if s.flags & Flag.EXT:
            assert op.name not in _sdk_names(), f"{op.name} is the SDK's, not an extension"


def _sdk_names() -> set[str]:
    try:
        from flo.types import OpCode
    except ImportError:  # pragma: no cover
        return set()
    return set(OpCode.__members__)


def test_op_codes_agree_with_the_sdk() -> None:
    types = pytest.importorskip("flo.types")
    for name, member in types.OpCode.__members__.items():
        assert name in Op.__members__, f"SDK op {name} missing from spec"
        assert int(Op[name]) == int(member), name
    # every op of ours that shares a value with an SDK op has its name
    sdk_by_value = {int(m): n for n, m in types.OpCode.__members__.items()}
    for op in Op:
        if int(op) in sdk_by_value:
            assert sdk_by_value[int(op)] == op.name


@pytest.mark.parametrize("name", ["Reason", "StatusCode", "OptionTag"])
def test_enums_agree_with_the_sdk(name: str) -> None:
    types = pytest.importorskip("flo.types")
    ours = {"Reason": Reason, "StatusCode": Status, "OptionTag": Tag}[name]
    theirs = getattr(types, name)
    for n, m in theirs.__members__.items():
        if name == "OptionTag" and n.startswith("TS_"):
            continue  # time series: no SDK API sends them, the server does not serve them
        assert n in ours.__members__, f"{name}.{n} missing"
        assert int(ours[n]) == int(m), n
    # never a new meaning for an existing byte: no value of theirs under another name of ours
    theirs_by_value = {int(m): n for n, m in theirs.__members__.items()}
    for m in ours:
        assert theirs_by_value.get(int(m), m.name) == m.name, m
    if name in ("Reason", "StatusCode"):
        assert len(ours) == len(theirs)  # no extras: the SDK refuses reasons it does not know


def test_framing_constants_agree_with_the_sdk() -> None:
    types = pytest.importorskip("flo.types")
    assert (spec.MAGIC, spec.VERSION, spec.TABLE_HASH, spec.HEADER_SIZE) == (
        types.MAGIC, types.VERSION, types.TABLE_HASH, types.HEADER_SIZE)
    assert spec.MAGIC_BYTES == spec.MAGIC.to_bytes(4, "little")


def test_server_limits_accept_what_the_sdk_sends() -> None:
    # flo-wire-v2.md §1.8: a compatible server accepts at least these.
    assert spec.DEFAULT_MAX_FRAME >= 256 * 1024
    assert spec.MAX_NAMESPACE >= 63 and spec.MAX_KEY >= 4096
    assert spec.MAX_KV_VALUE >= 253_817
    assert spec.MAX_MGET_KEYS == 256 and spec.MAX_SCAN_LIMIT == 1024 and spec.MAX_SCAN_CURSOR == 64
    assert spec.MAX_HISTORY >= 65 and spec.MAX_BLOCK_MS == 300_000
    assert (spec.TXN_MAX_OPS, spec.TXN_MAX_BYTES, spec.TXN_MAX_OPEN) == (256, 1 << 20, 1024)


# --- the error map -------------------------------------------------------------------------


def test_every_reason_has_a_status() -> None:
    assert set(REASON_STATUS) == set(Reason)
    for reason, status in REASON_STATUS.items():
        assert status != Status.OK, reason


def test_reason_status_follows_flo_wire_v2_section_7_7() -> None:
    S, R = Status, Reason
    assert REASON_STATUS[R.NOT_FOUND] == S.NOT_FOUND
    assert REASON_STATUS[R.NO_SUCH_TRANSACTION] == S.NOT_FOUND
    for r in (R.WRONG_TYPE, R.STALE_REPORT, R.CAS_MISMATCH, R.CONDITION_FAILED):
        assert REASON_STATUS[r] == S.CONFLICT, r
    for r in (R.MALFORMED, R.FIELD_TOO_LONG, R.OUT_OF_RANGE, R.CONFLICTING_FIELDS, R.WRONG_ROUTING_KEY,
              R.UNKNOWN_OP, R.TABLE_MISMATCH):
        assert REASON_STATUS[r] == S.BAD_REQUEST, r
    for r in (R.TOO_MANY_WAITERS, R.TOO_MANY_TRANSACTIONS, R.TOO_MANY_PROPOSALS, R.SHARD_BUSY):
        assert REASON_STATUS[r] == S.OVERLOADED, r
    for r in (R.LEADER_UNKNOWN, R.WRITES_STOPPED):
        assert REASON_STATUS[r] == S.UNAVAILABLE, r


EXPECTED_CLASS = {
    Status.ERROR_GENERIC: GenericServerError,
    Status.NOT_FOUND: NotFoundError,
    Status.BAD_REQUEST: BadRequestError,
    Status.UNAUTHORIZED: UnauthorizedError,
    Status.CONFLICT: ConflictError,
    Status.INTERNAL_ERROR: InternalServerError,
    Status.OVERLOADED: OverloadedError,
    Status.RATE_LIMITED: RateLimitedError,
    Status.UNAVAILABLE: UnavailableError,
}


@pytest.mark.parametrize("status", [s for s in Status if s != Status.OK], ids=lambda s: s.name)
def test_client_side_map(status: Status) -> None:
    e = error_from_refusal(status, Reason.UNCLASSIFIED, Ran.YES, "why")
    assert isinstance(e, EXPECTED_CLASS.get(status, GenericServerError))
    assert (e.status_code, e.reason, e.ran, str(e)) == (status, Reason.UNCLASSIFIED, Ran.YES, "why")


def test_unknown_status_and_reason_survive() -> None:
    e = error_from_refusal(200, 999, 1, "")
    assert isinstance(e, GenericServerError)
    assert int(e.status_code) == 200 and int(e.reason) == 999
    assert "Unknown status 200" in str(e)  # the stock message of a status nobody knows


@pytest.mark.parametrize("reason", list(Reason), ids=lambda r: r.name)
@pytest.mark.parametrize("ran", list(Ran), ids=lambda r: r.name)
def test_round_trip_server_to_client(reason: Reason, ran: Ran) -> None:
    """Refusal -> (status, reason, ran, msg) -> body bytes -> exception: nothing lost."""
    status, r, rn, msg = refusal_of(Refusal(reason, "the message", ran=ran))
    assert (status, r, rn, msg) == (REASON_STATUS[reason], reason, ran, "the message")
    body = refusal_body(r, rn, msg)
    assert body[:3] == bytes((reason & 0xFF, reason >> 8, ran))
    assert parse_refusal_body(body) == (reason, ran, "the message")
    e = error_from_refusal(status, *parse_refusal_body(body))
    assert isinstance(e, EXPECTED_CLASS.get(REASON_STATUS[reason], ServerError))
    assert (e.status_code, e.reason, e.ran, e.message) == (REASON_STATUS[reason], reason, ran, "the message")


@pytest.mark.parametrize("reason", list(Reason), ids=lambda r: r.name)
def test_sdk_decodes_every_refusal_we_send(reason: Reason) -> None:
    exc_mod = pytest.importorskip("flo.exceptions")
    from flo.types import StatusCode

    status, r, ran, msg = refusal_of(Refusal(reason, "über"))
    with pytest.raises(exc_mod.ServerError) as ei:
        exc_mod.raise_for_status(StatusCode(status), refusal_body(r, ran, msg))
    assert int(ei.value.reason) == reason and int(ei.value.ran) == ran and str(ei.value) == "über"


def test_refusal_status_override_and_plain_exceptions() -> None:
    assert refusal_of(Refusal(Reason.NOT_FOUND, "x", status=Status.BAD_REQUEST))[0] == Status.BAD_REQUEST
    status, reason, ran, msg = refusal_of(KeyError("boom"))
    assert (status, reason, ran) == (Status.INTERNAL_ERROR, Reason.INTERNAL, Ran.UNKNOWN)
    assert "KeyError" in msg and "boom" not in msg  # internals do not leak
    assert refusal_of(ConflictError("c", reason=Reason.CAS_MISMATCH))[:2] == (Status.CONFLICT, Reason.CAS_MISMATCH)


def test_refusal_body_edges() -> None:
    assert parse_refusal_body(b"") == (Reason.UNCLASSIFIED, Ran.UNKNOWN, "")
    assert parse_refusal_body(b"\x0d\x00") == (Reason.UNCLASSIFIED, Ran.UNKNOWN, "")
    assert parse_refusal_body(b"\x0d\x00\x00") == (13, 0, "")
    assert parse_refusal_body(b"\x01\x01\x02\xff") == (0x101, 2, "\ufffd")
    assert refusal_body(0x1234, 1, "") == b"\x34\x12\x01"


def test_stock_messages() -> None:
    assert str(NotFoundError()) == "Not found"
    assert str(error_from_refusal(Status.CONFLICT, Reason.CAS_MISMATCH, 0, "")) == "Conflict"


def test_status_registry_rejects_duplicates() -> None:
    with pytest.raises(TypeError):
        class Twice(ServerError):  # noqa: F841 - defining it is the test
            status = Status.NOT_FOUND


def test_exceptions_fit_python_hierarchies() -> None:
    assert issubclass(NotFoundError, LookupError) and issubclass(BadRequestError, ValueError)
    assert issubclass(errors.RequestTimeoutError, TimeoutError)
    assert issubclass(errors.ConnectionClosedError, ConnectionError)
    assert set(errors.__all__) <= set(dir(errors))


def test_doctests() -> None:
    assert doctest.testmod(spec).failed == 0
    assert doctest.testmod(errors).failed == 0

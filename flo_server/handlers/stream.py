"""Stream and consumer-group ops (flo-wire-v2 §3.4-3.5, §7; docs/protocol-stream.md).

Handlers validate and pick ids/time; every state change is a ``s.*`` record
applied by the functions below, live and at replay. Stream ids come from
``req.now`` in the handler and travel in the record, so replay is identical.

Reads never write. A group read that has something to hand out writes one
``s.gread`` record (its deliveries); an empty poll writes nothing. Ack-timeout
redelivery is lazy: an entry past its deadline is simply deliverable to the
next group read at that ``now``; a parked group read also wakes at the group's
next deadline.
"""

from __future__ import annotations

import asyncio
from typing import Any

from flo_core.body import Reader, Writer, opt_uint, parse_id_be
from flo_core.errors import Refusal
from flo_core.spec import MAX_BLOCK_MS, Op, Reason, Tag
from flo_core.stream import (
    DEFAULT_READ_COUNT,
    MAX_APPEND_BATCH,
    MAX_CONSUMERS,
    MAX_GROUPS,
    MAX_PENDING_LIST,
    MAX_READ_COUNT,
    U64_MAX,
    id_int,
    id_split,
    next_id_for,
)
from flo_server.dispatch import Request, handler
from flo_server.journal import applier

MAX_NAME = 255  # group and consumer names, bytes
MAX_HEADERS = 1024  # per record
MAX_IDS = 10_000  # ids per ack / nack / touch
MAX_LIST = 1000  # streams per STREAM_LIST page
DEFAULT_GROUP = "default"  # an empty group name means this one (the seed's default is "")
EMPTY_LIST = b"\x00\x00\x00\x00"
CLAIM_DONE = Writer().u64(U64_MAX).u64(U64_MAX).getvalue()


def _wkey(ns: str, name: str) -> tuple:
    return ("s", ns, name)


# --- appliers: the only code that changes streams ----------------------------------


@applier("s.append")
def apply_append(srv: Any, lsn: int, now: int, ns: str, name: str, ts: int, seq: int, records: list) -> int:
    return srv.streams.get_or_create(ns, name, now).append(now, ts, seq, records)


@applier("s.trim")
def apply_trim(srv: Any, lsn: int, ns: str, name: str, k: int) -> int:
    s = srv.streams.get(ns, name)
    return s.remove_oldest(k) if s is not None else 0


@applier("s.retention")
def apply_retention(srv: Any, lsn: int, now: int, ns: str, name: str, max_len: Any, max_age_ms: Any,
                    max_bytes: Any) -> list:
    """Create the stream if absent and set the given retention fields (None = unchanged)."""
    s = srv.streams.get_or_create(ns, name, now)
    if max_len is not None:
        s.max_len = max_len
    if max_age_ms is not None:
        s.max_age_ms = max_age_ms
    if max_bytes is not None:
        s.max_bytes = max_bytes
    s.enforce_retention(now)
    return [s.max_len, s.max_age_ms, s.max_bytes]


@applier("s.delete")
def apply_delete(srv: Any, lsn: int, ns: str, name: str) -> bool:
    return srv.streams.delete(ns, name)


def _group(srv: Any, now: int, ns: str, name: str, group: str) -> Any:
    s = srv.streams.get_or_create(ns, name, now)
    return s, s.group_create(group, now)


@applier("s.gcreate")
def apply_group_create(srv: Any, lsn: int, now: int, ns: str, name: str, group: str, start: Any,
                       ack_timeout_ms: Any, max_deliver: Any) -> bool:
    """``start``: None = beginning, "$" = the end, [ts, seq] = that id (inclusive)."""
    s = srv.streams.get_or_create(ns, name, now)
    if s.group(group) is not None:
        return False
    if start is None:
        start_ord = None
    elif start == "$":
        start_ord = s.end_ord
    else:
        start_ord = s.lower_bound(start[0], start[1])
    g = s.group_create(group, now, start_ord)
    if ack_timeout_ms is not None:
        g.ack_timeout_ms = ack_timeout_ms
    if max_deliver is not None:
        g.max_deliver = max_deliver
    return True


@applier("s.gconf")
def apply_group_configure(srv: Any, lsn: int, now: int, ns: str, name: str, group: str,
                          ack_timeout_ms: Any, max_deliver: Any) -> list:
    _, g = _group(srv, now, ns, name, group)
    if ack_timeout_ms is not None:
        g.ack_timeout_ms = ack_timeout_ms
    if max_deliver is not None:
        g.max_deliver = max_deliver
    return [g.ack_timeout_ms, g.max_deliver]


@applier("s.gdelete")
def apply_group_delete(srv: Any, lsn: int, ns: str, name: str, group: str) -> bool:
    s = srv.streams.get(ns, name)
    return s is not None and s.groups.pop(group, None) is not None


@applier("s.join")
def apply_join(srv: Any, lsn: int, now: int, ns: str, name: str, group: str, consumer: str) -> bool:
    _, g = _group(srv, now, ns, name, group)
    return g.join(consumer, now)


@applier("s.leave")
def apply_leave(srv: Any, lsn: int, ns: str, name: str, group: str, consumer: str) -> bool:
    g = _existing_group(srv, ns, name, group)
    return g is not None and g.leave(consumer)


@applier("s.gread")
def apply_group_read(srv: Any, lsn: int, now: int, ns: str, name: str, group: str, consumer: str,
                     count: int) -> list:
    s, g = _group(srv, now, ns, name, group)
    return g.deliver(s, consumer, count, now)


@applier("s.ack")
def apply_ack(srv: Any, lsn: int, ns: str, name: str, group: str, keys: list) -> int:
    g = _existing_group(srv, ns, name, group)
    return g.ack([id_int(ts, seq) for ts, seq in keys]) if g is not None else 0


@applier("s.nack")
def apply_nack(srv: Any, lsn: int, ns: str, name: str, group: str, keys: list, redeliver_at: int) -> int:
    g = _existing_group(srv, ns, name, group)
    return g.nack([id_int(ts, seq) for ts, seq in keys], redeliver_at) if g is not None else 0


@applier("s.touch")
def apply_touch(srv: Any, lsn: int, now: int, ns: str, name: str, group: str, keys: list) -> int:
    g = _existing_group(srv, ns, name, group)
    return g.touch([id_int(ts, seq) for ts, seq in keys], now) if g is not None else 0


@applier("s.claim")
def apply_claim(srv: Any, lsn: int, now: int, ns: str, name: str, group: str, consumer: str,
                min_idle_ms: int, start: list, count: int, others: bool | None = None) -> list:
    s, g = _group(srv, now, ns, name, group)
    ords, nxt = g.claim(s, consumer, min_idle_ms, id_int(start[0], start[1]), count, now, others)
    return [ords, nxt]


def _existing_group(srv: Any, ns: str, name: str, group: str) -> Any:
    s = srv.streams.get(ns, name)
    return s.group(group) if s is not None else None


# --- field helpers -------------------------------------------------------------------


def _stream_name(req: Request) -> str:
    name = req.name
    if not name:
        raise Refusal(Reason.MALFORMED, "stream name is empty")
    return name


def _name(r: Reader, what: str) -> str:
    v = r.str16()
    if len(v.encode("utf-8")) > MAX_NAME:
        raise Refusal(Reason.FIELD_TOO_LONG, f"{what} name longer than {MAX_NAME} bytes")
    return v


def _group_name(r: Reader) -> str:
    return _name(r, "group") or DEFAULT_GROUP


def _consumer_name(r: Reader) -> str:
    c = _name(r, "consumer")
    if not c:
        raise Refusal(Reason.MALFORMED, "consumer name is empty")
    return c


def _count(req: Request, default: int = DEFAULT_READ_COUNT, cap: int = MAX_READ_COUNT) -> int:
    n = opt_uint(req.opts, Tag.COUNT)
    if not n:
        return default
    return min(n, cap)


def _block_ms(req: Request) -> int:
    b = opt_uint(req.opts, Tag.BLOCK_MS, 0) or 0
    if b > MAX_BLOCK_MS:
        raise Refusal(Reason.OUT_OF_RANGE, f"block_ms above {MAX_BLOCK_MS}")
    return b


def _id_opt(req: Request, tag: int) -> tuple[int, int] | None:
    b = req.opts.get(tag)
    return parse_id_be(b) if b is not None else None


def _ids(r: Reader) -> list[list[int]]:
    n = r.u32()
    if n > MAX_IDS:
        raise Refusal(Reason.OUT_OF_RANGE, f"at most {MAX_IDS} ids per request")
    if r.remaining < 16 * n:
        raise Refusal(Reason.MALFORMED, "fewer ids than the count says")
    return [[r.u64(), r.u64()] for _ in range(n)]


def _check_new_group(srv: Any, ns: str, name: str, group: str) -> None:
    s = srv.streams.get(ns, name)
    if s is not None and s.group(group) is None and len(s.groups) >= MAX_GROUPS:
        raise Refusal(Reason.OUT_OF_RANGE, f"a stream has at most {MAX_GROUPS} groups")


def _check_new_consumer(srv: Any, ns: str, name: str, group: str, consumer: str) -> None:
    _check_new_group(srv, ns, name, group)
    g = _existing_group(srv, ns, name, group)
    if g is not None and consumer not in g.consumers and len(g.consumers) >= MAX_CONSUMERS:
        raise Refusal(Reason.OUT_OF_RANGE, f"a group has at most {MAX_CONSUMERS} consumers")


def _loop_due(srv: Any, due_ms: int | None) -> float | None:
    """A unix-ms time as event-loop seconds (for ``Waiters.poll``'s ``next_due``)."""
    if due_ms is None:
        return None
    return asyncio.get_running_loop().time() + (due_ms - srv.now()) / 1000.0


# --- streams -----------------------------------------------------------------------------


@handler(Op.STREAM_APPEND)
def stream_append(srv: Any, req: Request) -> bytes:
    """value ``[n u32]`` n x ``([payload bytes32][hc u16] hc x ([k str16][v str16]))`` -> ``[seq u64][ts i64]``.

    The answer is the first record's id; a batch gets ``(ts, seq), (ts, seq+1)...``.
    """
    name = _stream_name(req)
    r = Reader(req.value)
    n = r.u32()
    if not 1 <= n <= MAX_APPEND_BATCH:
        raise Refusal(Reason.OUT_OF_RANGE, f"an append carries 1..{MAX_APPEND_BATCH} records")
    records = []
    for _ in range(n):
        payload = r.bytes32()
        hc = r.u16()
        if hc > MAX_HEADERS:
            raise Refusal(Reason.OUT_OF_RANGE, f"at most {MAX_HEADERS} headers per record")
        headers = [[r.str16(), r.str16()] for _ in range(hc)] or None
        records.append([payload, headers])
    ns, now = req.ns, req.now
    st = srv.streams.get(ns, name)
    ts, seq = next_id_for(st, now, n)
    if st is not None and st.last_id != (0, 0) and (ts, seq) <= tuple(st.last_id):
        # the last id is the largest there is (RESP XADD can put it there): the generator wrapped around
        raise Refusal(Reason.OUT_OF_RANGE, "the stream has used up its ids: no id is larger than its last one")
    srv.write("s.append", now, ns, name, ts, seq, records)
    srv.waiters.notify(_wkey(ns, name), 0)
    return Writer().u64(seq).u64(ts).getvalue()  # the C path's bytes; ts >= 2**63 (an XADD id) is no i64


@handler(Op.STREAM_READ)
def stream_read(srv: Any, req: Request) -> Any:
    """options TAIL | START (BE id), END, PARTITION, COUNT, BLOCK_MS -> record list.

    start/end inclusive; no start = the beginning; tail = only records appended
    after the request (it wins over start). Unknown streams read empty.
    """
    name = _stream_name(req)
    ns = req.ns
    count = _count(req)
    block_ms = _block_ms(req)
    end = _id_opt(req, Tag.STREAM_END)
    start = _id_opt(req, Tag.STREAM_START)
    if opt_uint(req.opts, Tag.PARTITION, 0):
        return EMPTY_LIST  # one partition per stream: partition N > 0 is always empty
    s0 = srv.streams.get(ns, name)
    tail_ord = (s0.end_ord if s0 is not None else 0) if Tag.STREAM_TAIL in req.opts else None

    def attempt(now: int) -> bytes | None:
        s = srv.streams.get(ns, name)
        if s is None:
            return None
        if tail_ord is not None:
            first = tail_ord if s is s0 else 0
        elif start is not None:
            first = s.lower_bound(start[0], start[1])
        else:
            first = 0
        n, answer = s.read(first, now, count, end)
        return answer if n else None

    got = attempt(req.now)
    if got is not None or block_ms == 0:
        return got if got is not None else EMPTY_LIST
    return _park(srv, req, block_ms, lambda: attempt(srv.now()))


async def _park(srv: Any, req: Request, block_ms: int, attempt: Any, next_due: Any = None) -> bytes:
    got = await srv.waiters.poll([_wkey(req.ns, req.name)], req.conn, block_ms, attempt, next_due)
    return got if got is not None else EMPTY_LIST


@handler(Op.STREAM_TRIM)
def stream_trim(srv: Any, req: Request) -> bytes:
    """options exactly one of START (before, BE), LIMIT (max_len), MAX_AGE_SECONDS, MAX_BYTES;
    DRY_RUN -> ``[removed u64][first_seq u64]``."""
    name = _stream_name(req)
    before = _id_opt(req, Tag.STREAM_START)
    max_len = opt_uint(req.opts, Tag.LIMIT)
    max_age = opt_uint(req.opts, Tag.MAX_AGE_SECONDS)
    max_bytes = opt_uint(req.opts, Tag.MAX_BYTES)
    given = sum(x is not None for x in (before, max_len, max_age, max_bytes))
    if given != 1:
        raise Refusal(Reason.CONFLICTING_FIELDS, "trim takes exactly one of before, max_len, max_age_seconds, max_bytes")
    s = srv.streams.get(req.ns, name)
    if s is None:
        return Writer().u64(0).u64(0).getvalue()
    if before is not None:
        k = s.trim_count_before(before[0], before[1])
    elif max_len is not None:
        k = s.trim_count_max_len(max_len)
    elif max_age is not None:
        k = s.trim_count_age(req.now, min(max_age, U64_MAX // 1000) * 1000)
    else:
        k = s.trim_count_bytes(max_bytes)
    first_seq = s.first_seq_after(k)
    if k and Tag.DRY_RUN not in req.opts:
        srv.write("s.trim", req.ns, name, k)
    return Writer().u64(k).u64(first_seq).getvalue()


@handler(Op.STREAM_INFO)
def stream_info(srv: Any, req: Request) -> bytes:
    """-> ``[first_ts][first_seq][last_ts][last_seq][count][bytes]`` u64s ``[partitions u32]`` (52 bytes the SDK
    reads), then ext: ``[max_len u64][max_age_ms u64][max_bytes u64][groups u32]`` groups x str16."""
    name = _stream_name(req)
    s = srv.streams.get(req.ns, name)
    w = Writer()
    if s is None:
        return w.raw(bytes(48)).u32(1).u64(0).u64(0).u64(0).u32(0).getvalue()
    for v in s.info(req.now):
        w.u64(v)
    w.u32(1).u64(s.max_len).u64(s.max_age_ms).u64(s.max_bytes)
    groups = sorted(s.groups)
    w.u32(len(groups))
    for g in groups:
        w.str16(g)
    return w.getvalue()


@handler(Op.STREAM_LIST)
def stream_list(srv: Any, req: Request) -> bytes:
    """key = name prefix; options CURSOR (last name seen), COUNT ->
    ``[n u32]`` n x ``([name str16][count u64][bytes u64][last_ts u64][last_seq u64])`` ``opt(next str16)``."""
    prefix = req.name
    limit = _count(req, default=MAX_LIST, cap=MAX_LIST)
    cursor = req.opts.get(Tag.CURSOR, b"").decode("utf-8", "replace")
    names = [n for n in srv.streams.names(req.ns) if n.startswith(prefix) and n > cursor]
    page, more = names[:limit], len(names) > limit
    w = Writer().u32(len(page))
    for n in page:
        s = srv.streams.get(req.ns, n)
        info = s.info(req.now)
        w.str16(n).u64(info[4]).u64(info[5]).u64(info[2]).u64(info[3])
    return w.opt_str16(page[-1] if more else None).getvalue()


def _retention_opts(req: Request) -> tuple[Any, Any, Any]:
    max_len = opt_uint(req.opts, Tag.LIMIT)
    age_s = opt_uint(req.opts, Tag.MAX_AGE_SECONDS)
    max_bytes = opt_uint(req.opts, Tag.MAX_BYTES)
    return max_len, (min(age_s, U64_MAX // 1000) * 1000 if age_s is not None else None), max_bytes


@handler(Op.STREAM_CREATE)
def stream_create(srv: Any, req: Request) -> bytes:
    """options LIMIT (max_len), MAX_AGE_SECONDS, MAX_BYTES -> ``[created u8][max_len u64][max_age_ms u64][max_bytes u64]``.

    Creating an existing stream is OK (created = 0); retention options given are applied.
    """
    name = _stream_name(req)
    existed = srv.streams.get(req.ns, name) is not None
    settings = srv.write("s.retention", req.now, req.ns, name, *_retention_opts(req))
    w = Writer().flag(not existed)
    for v in settings:
        w.u64(v)
    return w.getvalue()


@handler(Op.STREAM_ALTER)
def stream_alter(srv: Any, req: Request) -> bytes:
    """options LIMIT, MAX_AGE_SECONDS, MAX_BYTES (0 = unlimited; absent = unchanged) ->
    ``[max_len u64][max_age_ms u64][max_bytes u64]``. Unknown stream -> NOT_FOUND."""
    name = _stream_name(req)
    if srv.streams.get(req.ns, name) is None:
        raise Refusal(Reason.NOT_FOUND, "no such stream")
    settings = srv.write("s.retention", req.now, req.ns, name, *_retention_opts(req))
    w = Writer()
    for v in settings:
        w.u64(v)
    return w.getvalue()


@handler(Op.STREAM_DELETE)
def stream_delete(srv: Any, req: Request) -> bytes:
    """value ``opt([force u8])`` -> ``[existed u8]``. A non-empty stream needs force (else CONFLICT)."""
    name = _stream_name(req)
    r = Reader(req.value)
    force = r.flag() if not r.at_end() else False
    s = srv.streams.get(req.ns, name)
    if s is None:
        return b"\x00"
    if len(s) and not force:
        raise Refusal(Reason.CONDITION_FAILED, f"stream has {len(s)} records; delete with force")
    srv.write("s.delete", req.ns, name)
    srv.waiters.notify(_wkey(req.ns, name), 0)
    return b"\x01"


# --- consumer groups -------------------------------------------------------------------


@handler(Op.STREAM_GROUP_CREATE)
def group_create(srv: Any, req: Request) -> bytes:
    """value ``[group str16]``; options START (BE id) | TAIL, ACK_TIMEOUT_MS, MAX_DELIVER -> ``[created u8]``."""
    name = _stream_name(req)
    group = _group_name(Reader(req.value))
    _check_new_group(srv, req.ns, name, group)
    start: Any = _id_opt(req, Tag.STREAM_START)
    if Tag.STREAM_TAIL in req.opts:
        start = "$"
    elif start is not None:
        start = list(start)
    created = srv.write("s.gcreate", req.now, req.ns, name, group, start,
                        opt_uint(req.opts, Tag.ACK_TIMEOUT_MS), opt_uint(req.opts, Tag.MAX_DELIVER))
    return b"\x01" if created else b"\x00"


@handler(Op.STREAM_GROUP_CONFIGURE_SWEEPER)
def group_configure(srv: Any, req: Request) -> bytes:
    """value ``[group str16]``; options ACK_TIMEOUT_MS (0 = never), MAX_DELIVER (0 = unlimited) ->
    ``[ack_timeout_ms u64][max_deliver u32]`` (creates the group if absent)."""
    name = _stream_name(req)
    group = _group_name(Reader(req.value))
    _check_new_group(srv, req.ns, name, group)
    ack, md = srv.write("s.gconf", req.now, req.ns, name, group,
                        opt_uint(req.opts, Tag.ACK_TIMEOUT_MS), opt_uint(req.opts, Tag.MAX_DELIVER))
    return Writer().u64(ack).u32(md).getvalue()


@handler(Op.STREAM_GROUP_DELETE)
def group_delete(srv: Any, req: Request) -> bytes:
    """value ``[group str16]`` -> ``[existed u8]``."""
    name = _stream_name(req)
    group = _group_name(Reader(req.value))
    if _existing_group(srv, req.ns, name, group) is None:
        return b"\x00"
    srv.write("s.gdelete", req.ns, name, group)
    return b"\x01"


@handler(Op.STREAM_GROUP_JOIN)
def group_join(srv: Any, req: Request) -> bytes:
    """value ``[group str16][consumer str16]`` -> empty. Creates stream and group if absent."""
    name = _stream_name(req)
    r = Reader(req.value)
    group, consumer = _group_name(r), _consumer_name(r)
    _check_new_consumer(srv, req.ns, name, group, consumer)
    srv.write("s.join", req.now, req.ns, name, group, consumer)
    return b""


@handler(Op.STREAM_GROUP_LEAVE)
def group_leave(srv: Any, req: Request) -> bytes:
    """value ``[group str16][consumer str16]`` -> empty. The consumer's pending entries stay."""
    name = _stream_name(req)
    r = Reader(req.value)
    group, consumer = _group_name(r), _consumer_name(r)
    g = _existing_group(srv, req.ns, name, group)
    if g is not None and consumer in g.consumers:
        srv.write("s.leave", req.ns, name, group, consumer)
    return b""


@handler(Op.STREAM_GROUP_READ)
def group_read(srv: Any, req: Request) -> Any:
    """value ``[group str16][consumer str16]``; options COUNT, BLOCK_MS -> record list.

    Redeliverable entries (nacked, past their ack deadline) first, then new records.
    """
    name = _stream_name(req)
    r = Reader(req.value)
    group, consumer = _group_name(r), _consumer_name(r)
    count = _count(req)
    block_ms = _block_ms(req)
    ns = req.ns
    _check_new_consumer(srv, ns, name, group, consumer)
    conn = req.conn

    def attempt(now: int) -> bytes | None:
        if conn is not None and conn.closed:
            return None  # never hand records to a closed connection
        s = srv.streams.get(ns, name)
        if s is None:
            return None
        g = s.group(group)
        if g is None:
            ready = s.visible_ord(now) < s.end_ord  # a new group starts at the beginning
        else:
            ready = g.has_deliverable(s, now)
        if not ready:
            return None
        ords = srv.write("s.gread", now, ns, name, group, consumer, count)
        return s.encode_ords(ords) if ords else None

    got = attempt(req.now)
    if got is not None or block_ms == 0:
        return got if got is not None else EMPTY_LIST

    def next_due() -> float | None:
        g = _existing_group(srv, ns, name, group)
        return _loop_due(srv, g.next_deadline()) if g is not None else None

    return _park(srv, req, block_ms, lambda: attempt(srv.now()), next_due)


def _ack_like(srv: Any, req: Request, kind: str) -> tuple[str, str, str, list, Any]:
    name = _stream_name(req)
    r = Reader(req.value)
    group = _group_name(r)
    _name(r, "consumer")  # any consumer may ack/nack an entry (the SDK sends "" by default)
    keys = _ids(r)
    g = _existing_group(srv, req.ns, name, group)
    if g is None:
        raise Refusal(Reason.NOT_FOUND, "no such stream or group")
    return name, group, kind, keys, g


@handler(Op.STREAM_GROUP_ACK)
def group_ack(srv: Any, req: Request) -> bytes:
    """value ``[group str16][consumer str16][n u32]`` n x ``[ts u64][seq u64]`` -> ``[acked u32]``.
    Unknown stream/group -> NOT_FOUND."""
    name, group, _, keys, g = _ack_like(srv, req, "s.ack")
    live = [k for k in keys if id_int(k[0], k[1]) in g.pel]
    n = srv.write("s.ack", req.ns, name, group, live) if live else 0
    return Writer().u32(n).getvalue()


@handler(Op.STREAM_GROUP_NACK)
def group_nack(srv: Any, req: Request) -> bytes:
    """Same value as ack; option DELAY_MS (ext) -> ``[nacked u32]``. The entries are redeliverable
    at once (or after the delay) to any consumer of the group."""
    name, group, _, keys, g = _ack_like(srv, req, "s.nack")
    delay = opt_uint(req.opts, Tag.DELAY_MS, 0) or 0
    if delay > MAX_BLOCK_MS * 12:
        raise Refusal(Reason.OUT_OF_RANGE, "nack delay above one hour")
    live = [k for k in keys if id_int(k[0], k[1]) in g.pel]
    n = srv.write("s.nack", req.ns, name, group, live, req.now + delay) if live else 0
    if n:
        srv.waiters.notify(_wkey(req.ns, name), 0)
    return Writer().u32(n).getvalue()


@handler(Op.STREAM_GROUP_TOUCH)
def group_touch(srv: Any, req: Request) -> bytes:
    """Same value as ack -> ``[touched u32]``: deadlines move to now + ack_timeout."""
    name, group, _, keys, g = _ack_like(srv, req, "s.touch")
    live = [k for k in keys if id_int(k[0], k[1]) in g.pel]
    n = srv.write("s.touch", req.now, req.ns, name, group, live) if live else 0
    return Writer().u32(n).getvalue()


@handler(Op.STREAM_GROUP_PENDING)
def group_pending(srv: Any, req: Request) -> bytes:
    """value ``[group str16]`` + optional ``[consumer str16]``; options START (BE), COUNT ->
    ``[n u32]`` n x ``([ts u64][seq u64][delivery_count u32][consumer str16])``, then (ext, ignored
    by the SDK) n x ``[idle_ms u64]``."""
    name = _stream_name(req)
    r = Reader(req.value)
    group = _group_name(r)
    consumer = _name(r, "consumer") if not r.at_end() else ""
    limit = _count(req, default=MAX_PENDING_LIST, cap=MAX_PENDING_LIST)
    start = _id_opt(req, Tag.STREAM_START) or (0, 0)
    g = _existing_group(srv, req.ns, name, group)
    if g is None:
        return EMPTY_LIST
    entries = g.pending(consumer or None, id_int(*start), limit, req.now)
    w = Writer().u32(len(entries))
    for ts, seq, cnt, owner, _idle, _due in entries:
        w.u64(ts).u64(seq).u32(cnt).str16(owner)
    for e in entries:
        w.u64(e[4])
    return w.getvalue()


@handler(Op.STREAM_GROUP_CLAIM)
def group_claim(srv: Any, req: Request) -> bytes:
    """value ``[group][consumer][min_idle_ms u32][start_ts u64][start_seq u64][count u32]`` ->
    record list + ``[next_ts u64][next_seq u64]`` (``(2^64-1, 2^64-1)`` = done).

    min_idle 0 = the caller's own entries only; > 0 = also others' idle that long.
    """
    name = _stream_name(req)
    r = Reader(req.value)
    group, consumer = _group_name(r), _consumer_name(r)
    min_idle = r.u32()
    start = [r.u64(), r.u64()]
    count = r.u32()
    count = min(count, MAX_READ_COUNT) if count else DEFAULT_READ_COUNT
    g = _existing_group(srv, req.ns, name, group)
    if g is None or not g.pel:
        return EMPTY_LIST + CLAIM_DONE
    _check_new_consumer(srv, req.ns, name, group, consumer)
    ords, nxt = srv.write("s.claim", req.now, req.ns, name, group, consumer, min_idle, start, count)
    s = srv.streams.get(req.ns, name)
    body = s.encode_ords(ords)
    if nxt is None:
        return body + CLAIM_DONE
    ts, seq = id_split(nxt)
    return body + Writer().u64(ts).u64(seq).getvalue()


@handler(Op.STREAM_GROUP_INFO)
def group_info(srv: Any, req: Request) -> bytes:
    """value ``[group str16]`` -> ``[name str16][pending u64][last_ts u64][last_seq u64][lag u64]
    [ack_timeout_ms u64][max_deliver u32][delivered u64][acked u64][dead u64][n u32]`` n x
    ``([consumer str16][pending u32][idle_ms u64])``. Unknown -> NOT_FOUND."""
    name = _stream_name(req)
    group = _group_name(Reader(req.value))
    s = srv.streams.get(req.ns, name)
    g = s.group(group) if s is not None else None
    if g is None:
        raise Refusal(Reason.NOT_FOUND, "no such stream or group")
    w = Writer().str16(g.name).u64(len(g.pel)).u64(g.last_ts).u64(g.last_seq).u64(g.lag(s, req.now))
    w.u64(g.ack_timeout_ms).u32(g.max_deliver).u64(g.delivered).u64(g.acked).u64(g.dead_count)
    per = g.pending_by_consumer()
    names = sorted(set(g.consumers) | set(per))
    w.u32(len(names))
    for c in names:
        seen = g.consumers.get(c)
        idle = max(0, req.now - seen[1]) if seen is not None else U64_MAX
        w.str16(c).u32(per.get(c, 0)).u64(idle)
    return w.getvalue()


__all__: list[str] = []

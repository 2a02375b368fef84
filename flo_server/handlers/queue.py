"""Queue ops (flo-wire-v2 §3.3 + our extensions, docs/protocol-queue.md), records ``q.*``.

Leased, at-least-once delivery (flo-wire-v2 §7.1): dequeue leases, ack
removes, nack makes ready again (or DLQ), a lapsed lease makes ready again,
``max_deliveries`` hand-outs then DLQ. The store is
:class:`flo_core.pqueue.PriorityQueue`, one per (namespace, queue) in
``srv.queues`` (a :class:`flo_core.pqueue.Queues`).

Every change goes through ``srv.write``: handlers validate and refuse, the
``q.*`` appliers below change the store (live and at replay). Lapsed leases
and due delays need no record: the store computes them from ``now``.

Blocking dequeue: parked requests wait on ``("q", ns, name)`` in
``srv.waiters``. A write that makes a message ready wakes **one** waiter
(the oldest); a waiter that took messages and left some ready wakes the
next, so the line is served in arrival order. Delays and leases fall due by
time alone, so one timer per queue with waiters (armed at the store's
``next_due``) wakes the line then. A waiter whose connection closed takes
nothing and passes its wake-up on.
"""

from __future__ import annotations

import asyncio
import itertools
import struct
import weakref
from typing import Any

from flo_core.body import Reader, Writer, opt_str, opt_uint
from flo_core.errors import Refusal
from flo_core.pqueue import (
    DEFAULT_DEDUP_WINDOW_MS,
    DEFAULT_LEASE_MS,
    DEFAULT_MAX_BATCH_BYTES,
    encode_messages,
)
from flo_core.spec import MAX_BLOCK_MS, MAX_SCAN_LIMIT, Op, Reason, Tag
from flo_server.dispatch import Request, handler
from flo_server.journal import applier

# --- limits (documented in docs/protocol-queue.md) ------------------------------

MAX_PAYLOAD = 16 * 1024 * 1024
MAX_DEQUEUE_COUNT = 1000  # larger COUNTs are clamped: "up to count" still holds
MAX_LEASE_MS = 12 * 3600 * 1000
MAX_DELAY_MS = 30 * 24 * 3600 * 1000
MAX_DEDUP_WINDOW_MS = 7 * 24 * 3600 * 1000
MAX_SEQS = 100_000  # seqs in one ack / nack / touch / requeue / delete
DEFAULT_DLQ_LIST_LIMIT = 10_000
ANSWER_BUDGET = DEFAULT_MAX_BATCH_BYTES  # payload bytes in one message-list answer

_U64 = struct.Struct("<Q")


def _key(ns: str, name: str) -> tuple:
    return ("q", ns, name)


def _setting(srv: Any, name: str, default: int) -> int:
    """A server setting (``srv.config.<name>``), or the built-in default."""
    value = getattr(getattr(srv, "config", None), name, None)
    return default if value is None else int(value)


# --- appliers: the only code that changes queues ----------------------------------


@applier("q.enq")
def apply_enqueue(
    srv: Any, lsn: int, now: int, ns: str, name: str, payload: bytes, priority: int,
    delay_ms: int, dedup_key: str | None, dedup_window_ms: int,
) -> int:
    q = srv.queues.get_or_create(ns, name)
    seq = q.enqueue(payload, priority, now, delay_ms, dedup_key, dedup_window_ms)
    if delay_ms == 0:
        wake_next_dequeue(srv, ns, name)
    return seq


@applier("q.deq")
def apply_dequeue(srv: Any, lsn: int, now: int, ns: str, name: str, count: int, lease_ms: int) -> list:
    q = srv.queues.get(ns, name)
    return [] if q is None else q.dequeue(count, now, lease_ms, ANSWER_BUDGET)


@applier("q.ack")
def apply_ack(srv: Any, lsn: int, now: int, ns: str, name: str, seqs: list) -> int:
    q = srv.queues.get(ns, name)
    return 0 if q is None else q.ack(seqs, now)


@applier("q.nack")
def apply_nack(srv: Any, lsn: int, now: int, ns: str, name: str, seqs: list, delay_ms: int, to_dlq: bool) -> int:
    q = srv.queues.get(ns, name)
    if q is None:
        return 0
    n = q.nack(seqs, now, delay_ms, to_dlq)
    if n and not to_dlq and delay_ms == 0:
        wake_next_dequeue(srv, ns, name)
    return n


@applier("q.touch")
def apply_touch(srv: Any, lsn: int, now: int, ns: str, name: str, seqs: list, lease_ms: int) -> list:
    q = srv.queues.get(ns, name)
    return [] if q is None else q.touch(seqs, now, lease_ms)


@applier("q.requeue")
def apply_requeue(srv: Any, lsn: int, now: int, ns: str, name: str, seqs: list) -> int:
    q = srv.queues.get(ns, name)
    if q is None:
        return 0
    n = q.dlq_requeue(seqs, now)
    if n:
        wake_next_dequeue(srv, ns, name)
    return n


@applier("q.dlqdel")
def apply_dlq_delete(srv: Any, lsn: int, now: int, ns: str, name: str, seqs: list) -> int:
    q = srv.queues.get(ns, name)
    return 0 if q is None else q.dlq_delete(seqs)


@applier("q.dlqpurge")
def apply_dlq_purge(srv: Any, lsn: int, now: int, ns: str, name: str) -> int:
    q = srv.queues.get(ns, name)
    return 0 if q is None else q.dlq_purge()


@applier("q.purge")
def apply_purge(srv: Any, lsn: int, now: int, ns: str, name: str) -> int:
    q = srv.queues.get(ns, name)
    return 0 if q is None else q.purge(now)


# --- request parsing ----------------------------------------------------------------


def _name(req: Request) -> str:
    name = req.name
    if not name:
        raise Refusal(Reason.MALFORMED, "queue name is empty")
    return name


def _bounded(opts: dict[int, bytes], tag: int, default: int, lo: int, hi: int, what: str) -> int:
    value = opt_uint(opts, tag, default)
    assert value is not None
    if not lo <= value <= hi:
        raise Refusal(Reason.OUT_OF_RANGE, f"{what} must be {lo}..{hi}, got {value}")
    return value


def _flag(opts: dict[int, bytes], tag: int) -> bool:
    """A flag option: present with length 0 (ours) or a non-zero byte (older SDKs)."""
    data = opts.get(tag)
    return data is not None and (len(data) == 0 or any(data))


def _seqs(value: bytes) -> list[int]:
    """``[n u32] n x [seq u64]``; an empty value is an empty list."""
    if not value:
        return []
    r = Reader(value)
    n = r.u32()
    if n > MAX_SEQS:
        raise Refusal(Reason.OUT_OF_RANGE, f"at most {MAX_SEQS} seqs per request, got {n}")
    if r.remaining < 8 * n:
        raise Refusal(Reason.MALFORMED, "seq list is shorter than its count")
    return list(struct.unpack_from(f"<{n}Q", value, 4))


def _lease_ms(srv: Any, req: Request) -> int:
    default = _setting(srv, "queue_lease_ms", DEFAULT_LEASE_MS)
    return _bounded(req.opts, Tag.LEASE_MS, default, 1, MAX_LEASE_MS, "lease_ms")


def _clock(q: Any, now: int) -> int:
    """The time a record carries: never behind the queue's clock, so the record
    replays at exactly the time it was applied live (reads may have advanced
    the queue past ``now`` if the wall clock stepped back)."""
    return now if q is None or q.clock <= now else q.clock


def _count_answer(n: int) -> bytes:
    return struct.pack("<I", n)


# --- enqueue ------------------------------------------------------------------------


@handler(Op.QUEUE_ENQUEUE)
def queue_enqueue(srv: Any, req: Request) -> bytes:
    """value = payload; PRIORITY u8, DELAY_MS u64, DEDUP_KEY str, DEDUP_WINDOW_MS u64 -> [seq u64]"""
    name = _name(req)
    payload = req.value
    if len(payload) > MAX_PAYLOAD:
        raise Refusal(Reason.FIELD_TOO_LONG, f"payload larger than {MAX_PAYLOAD} bytes")
    opts = req.opts
    priority = _bounded(opts, Tag.PRIORITY, 0, 0, 255, "priority")
    delay_ms = _bounded(opts, Tag.DELAY_MS, 0, 0, MAX_DELAY_MS, "delay_ms")
    dedup_key = opt_str(opts, Tag.DEDUP_KEY)
    window_default = _setting(srv, "dedup_window_ms", DEFAULT_DEDUP_WINDOW_MS)
    window = _bounded(opts, Tag.DEDUP_WINDOW_MS, window_default, 0, MAX_DEDUP_WINDOW_MS, "dedup_window_ms")
    if dedup_key == "":
        raise Refusal(Reason.MALFORMED, "dedup key is empty")
    q = srv.queues.get(req.ns, name)
    if q is None:
        if not srv.queues.can_create():
            raise Refusal(Reason.OUT_OF_RANGE, "too many queues on this server")
    else:
        if dedup_key is not None:
            first = q.dedup_lookup(dedup_key, req.now)
            if first is not None:
                return _U64.pack(first)  # a duplicate inside the window: nothing added, nothing logged
        if q.is_full():
            raise Refusal(Reason.SHARD_BUSY, f"queue {name!r} is full ({q.max_messages} messages)")
    seq = srv.write("q.enq", _clock(q, req.now), req.ns, name, payload, priority, delay_ms, dedup_key, window)
    if delay_ms:
        _kick(srv, req.ns, name)  # parked dequeuers must wake when it falls due
    return _U64.pack(seq)


# --- dequeue (optionally blocking) ------------------------------------------------------


def _take(srv: Any, ns: str, name: str, count: int, lease_ms: int, now: int) -> bytes | None:
    """Lease up to ``count`` messages now; the encoded list, or None if none is ready."""
    q = srv.queues.get(ns, name)
    if q is None or not q.has_ready(now):
        return None
    msgs = srv.write("q.deq", _clock(q, now), ns, name, count, lease_ms)
    data = encode_messages(msgs)  # encode at once: the Message objects are live views
    if q.has_ready(now):
        wake_next_dequeue(srv, ns, name)  # pass the rest on to the next in line
    _kick(srv, ns, name)  # new lease deadlines
    return data if msgs else None


@handler(Op.QUEUE_DEQUEUE)
def queue_dequeue(srv: Any, req: Request) -> Any:
    """COUNT u32, BLOCK_MS u32, LEASE_MS u32 -> message list (leased)."""
    name = _name(req)
    count = opt_uint(req.opts, Tag.COUNT, 1) or 0
    count = min(count, MAX_DEQUEUE_COUNT)
    block_ms = _bounded(req.opts, Tag.BLOCK_MS, 0, 0, MAX_BLOCK_MS, "block_ms")
    lease_ms = _lease_ms(srv, req)
    if count == 0:
        return encode_messages([])
    # A newcomer that may wait queues behind the parked ones (arrival order).
    if not (block_ms and _line(srv, req.ns, name, create=False)):
        data = _take(srv, req.ns, name, count, lease_ms, req.now)
        if data is not None:
            return data
        if not block_ms:
            return encode_messages([])
    return _wait_dequeue(srv, req, name, count, lease_ms, block_ms)


# The line of parked dequeues of one queue. Each waiter parks in srv.waiters
# under its own ticket key, and a wake-up goes to the oldest ticket not yet
# woken, so a waiter that wakes, finds nothing (someone else was quicker) and
# parks again keeps its place: the line is served strictly in arrival order.
# The lines live in srv.queues.lines, where the C dequeue (flo_core/core.pyx)
# looks: it serves only a queue without one.
_tickets = itertools.count(1)


def _line(srv: Any, ns: str, name: str, create: bool = True) -> dict[int, bool] | None:
    """ticket -> woken, oldest first (dicts keep insertion order)."""
    lines = srv.queues.lines
    line = lines.get(_key(ns, name))
    if line is None and create:
        line = lines[_key(ns, name)] = {}
    return line


def wake_next_dequeue(srv: Any, ns: str, name: str) -> None:
    """Wake the oldest parked dequeue of the queue that is not awake already."""
    line = _line(srv, ns, name, create=False)
    if not line:
        return
    for ticket, woken in line.items():
        if not woken:
            line[ticket] = True
            srv.waiters.notify(_key(ns, name) + (ticket,), 1)
            return


async def _wait_dequeue(srv: Any, req: Request, name: str, count: int, lease_ms: int, block_ms: int) -> bytes:
    ns, conn = req.ns, req.conn
    loop = asyncio.get_running_loop()
    deadline = loop.time() + block_ms / 1000.0
    line = _line(srv, ns, name)
    assert line is not None
    ticket = next(_tickets)
    line[ticket] = False
    try:
        q = srv.queues.get(ns, name)
        if q is not None and q.has_ready(srv.now()):
            wake_next_dequeue(srv, ns, name)  # messages wait for the line: make sure its head is awake
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return encode_messages([])
            line[ticket] = False
            _kick(srv, ns, name)
            woke = await srv.waiters.wait([_key(ns, name) + (ticket,)], conn, remaining)
            if conn is not None and getattr(conn, "closed", False):
                return encode_messages([])  # never hand anything to a closed connection
            if not woke and loop.time() < deadline:
                continue
            data = _take(srv, ns, name, count, lease_ms, srv.now())
            if data is not None:
                return data
    finally:
        del line[ticket]
        if not line:
            srv.queues.lines.pop(_key(ns, name), None)
        # Whatever wake-up this waiter held (closed, cancelled, timed out) goes on.
        q = srv.queues.get(ns, name)
        if line and q is not None and q.has_ready(srv.now()):
            wake_next_dequeue(srv, ns, name)


# --- timers: wake the line when a delay falls due or a lease lapses ---------------------

_timers: "weakref.WeakKeyDictionary[Any, dict[tuple, tuple[float, asyncio.TimerHandle]]]" = (
    weakref.WeakKeyDictionary()
)


def _kick(srv: Any, ns: str, name: str) -> None:
    """Arm (or pull earlier) the queue's wake-up timer while its line is not empty."""
    if not _line(srv, ns, name, create=False):
        return
    q = srv.queues.get(ns, name)
    if q is None:
        return
    now = srv.now()
    due = q.next_due(now)
    if due is None:
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # replay: nobody waits
        return
    key = _key(ns, name)
    at = loop.time() + max(0, due - now) / 1000.0 + 0.001
    timers = _timers.setdefault(srv, {})
    current = timers.get(key)
    if current is not None:
        if current[0] <= at:
            return
        current[1].cancel()
    timers[key] = (at, loop.call_at(at, _fire, srv, ns, name))


def _fire(srv: Any, ns: str, name: str) -> None:
    _timers.get(srv, {}).pop(_key(ns, name), None)
    q = srv.queues.get(ns, name)
    if q is None:
        return
    if q.has_ready(srv.now()):
        wake_next_dequeue(srv, ns, name)
    _kick(srv, ns, name)  # the next due time, if anyone still waits


# --- ack / nack / touch -------------------------------------------------------------------


def _known(srv: Any, req: Request) -> tuple[str, Any]:
    name = _name(req)
    return name, srv.queues.get(req.ns, name)


def _write_seqs(srv: Any, req: Request, kind: str) -> bytes:
    """The ops that name messages by seq (value = seqs): one record, answer [affected u32]."""
    name = _name(req)
    return _count_answer(write_seqs(srv, kind, req.ns, name, _seqs(req.value), req.now))


def write_seqs(srv: Any, kind: str, ns: str, name: str, seqs: list[int], now: int) -> int:
    """One ``kind`` record (``q.ack``, ``q.requeue``, ``q.dlqdel``) for ``seqs`` of a queue; how many it affected.

    The seq ops' write path, shared by their handlers and the console's DLQ requeue (flo_server.api)."""
    q = srv.queues.get(ns, name)
    if q is None or not seqs:
        return 0
    return srv.write(kind, _clock(q, now), ns, name, seqs)


@handler(Op.QUEUE_COMPLETE)
def queue_ack(srv: Any, req: Request) -> bytes:
    """value = seqs -> [removed u32] (SDK 0.1.2 ignores the answer)."""
    return _write_seqs(srv, req, "q.ack")


@handler(Op.QUEUE_FAIL)
def queue_nack(srv: Any, req: Request) -> bytes:
    """value = seqs; DELAY_MS u64, TO_DLQ flag -> [taken back u32]."""
    name, q = _known(srv, req)
    seqs = _seqs(req.value)
    delay_ms = _bounded(req.opts, Tag.DELAY_MS, 0, 0, MAX_DELAY_MS, "delay_ms")
    to_dlq = _flag(req.opts, Tag.TO_DLQ)
    if q is None or not seqs:
        return _count_answer(0)
    n = srv.write("q.nack", _clock(q, req.now), req.ns, name, seqs, delay_ms, to_dlq)
    _kick(srv, req.ns, name)
    return _count_answer(n)


@handler(Op.QUEUE_TOUCH)
def queue_touch(srv: Any, req: Request) -> bytes:
    """ext. value = seqs; LEASE_MS u32 (default: the dequeue's lease length)
    -> [n u32] n x [seq u64]: the leases extended."""
    name, q = _known(srv, req)
    seqs = _seqs(req.value)
    # absent: each lease is extended by the length it was dequeued with
    lease_ms = _bounded(req.opts, Tag.LEASE_MS, 0, 1, MAX_LEASE_MS, "lease_ms") if Tag.LEASE_MS in req.opts else 0
    touched: list[int] = []
    if q is not None and seqs:
        touched = srv.write("q.touch", _clock(q, req.now), req.ns, name, seqs, lease_ms)
    return struct.pack(f"<I{len(touched)}Q", len(touched), *touched)


# --- peek / DLQ --------------------------------------------------------------------------


@handler(Op.QUEUE_PEEK)
def queue_peek(srv: Any, req: Request) -> bytes:
    """COUNT u32 -> message list of the next ready messages, not leased."""
    name, q = _known(srv, req)
    count = min(opt_uint(req.opts, Tag.COUNT, 1) or 0, MAX_DEQUEUE_COUNT)
    if q is None or count == 0:
        return encode_messages([])
    return encode_messages(_within_budget(q.peek(count, req.now)))


def _within_budget(msgs: list) -> list:
    """The longest prefix whose payloads fit the answer budget (at least one)."""
    total = 0
    for i, m in enumerate(msgs):
        total += len(m.payload)
        if i and total > ANSWER_BUDGET:
            return msgs[:i]
    return msgs


@handler(Op.QUEUE_DLQ_LIST)
def queue_dlq_list(srv: Any, req: Request) -> bytes:
    """LIMIT u32 (default 10 000) -> message list, oldest first."""
    name, q = _known(srv, req)
    limit = _bounded(req.opts, Tag.LIMIT, DEFAULT_DLQ_LIST_LIMIT, 0, 1 << 32, "limit")
    if q is None or limit == 0:
        return encode_messages([])
    return encode_messages(_within_budget(q.dlq_list(min(limit, DEFAULT_DLQ_LIST_LIMIT * 10), req.now)))


@handler(Op.QUEUE_DLQ_REQUEUE)
def queue_dlq_requeue(srv: Any, req: Request) -> bytes:
    """value = seqs -> [requeued u32]; delivery_count restarts at 0."""
    return _write_seqs(srv, req, "q.requeue")


@handler(Op.QUEUE_DLQ_DELETE)
def queue_dlq_delete(srv: Any, req: Request) -> bytes:
    """value = seqs -> [deleted u32]."""
    return _write_seqs(srv, req, "q.dlqdel")


@handler(Op.QUEUE_DLQ_PURGE)
def queue_dlq_purge(srv: Any, req: Request) -> bytes:
    """ext. -> [deleted u32]."""
    name, q = _known(srv, req)
    if q is None or not q.stats(req.now)["dlq"]:
        return _count_answer(0)
    return _count_answer(srv.write("q.dlqpurge", _clock(q, req.now), req.ns, name))


@handler(Op.QUEUE_PURGE)
def queue_purge(srv: Any, req: Request) -> bytes:
    """-> [dropped u32]: every ready, delayed and leased message (not the DLQ)."""
    name, q = _known(srv, req)
    if q is None or len(q) == 0:
        return _count_answer(0)
    return _count_answer(srv.write("q.purge", _clock(q, req.now), req.ns, name))


# --- stats / list ----------------------------------------------------------------------------

#: QUEUE_STATS answer fields, in order, each u64 (new fields are only ever appended).
STATS_FIELDS = (
    "ready", "delayed", "leased", "dlq", "last_seq",
    "total_enqueued", "total_delivered", "total_acked", "total_dead", "total_expired",
)


@handler(Op.QUEUE_STATS)
def queue_stats(srv: Any, req: Request) -> bytes:
    """-> [n u8] n x u64 counters (STATS_FIELDS order); a never-used queue is all zeros."""
    name, q = _known(srv, req)
    st = q.stats(req.now) if q is not None else {}
    w = Writer().u8(len(STATS_FIELDS))
    for f in STATS_FIELDS:
        w.u64(st.get(f, 0))
    return w.getvalue()


@handler(Op.QUEUE_LIST)
def queue_list(srv: Any, req: Request) -> bytes:
    """key = cursor; PREFIX str, LIMIT u32 -> [count u32] count x str16 name, [next_cursor bytes16].

    Names are sorted. The cursor travels in the key (names may be longer than an
    option can carry): the page holds names after it; the answer's cursor is
    the last name of the page, empty when there is nothing more."""
    prefix = opt_str(req.opts, Tag.PREFIX, "") or ""
    cursor = req.name
    limit = _bounded(req.opts, Tag.LIMIT, MAX_SCAN_LIMIT, 1, MAX_SCAN_LIMIT, "limit")
    names = [n for n in srv.queues.names(req.ns) if n.startswith(prefix) and n > cursor]
    page = names[:limit]
    w = Writer().u32(len(page))
    for n in page:
        w.str16(n)
    w.bytes16(page[-1].encode("utf-8") if len(names) > limit else b"")
    return w.getvalue()


__all__ = ["STATS_FIELDS", "MAX_PAYLOAD", "MAX_DEQUEUE_COUNT", "MAX_LEASE_MS", "MAX_DELAY_MS"]

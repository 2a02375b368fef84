"""``client.queue``: leased priority queues (the Queue section of the Flo SDK page).

Delivery is at-least-once: :meth:`QueueAPI.dequeue` *leases* messages (30 s
by default); :meth:`~QueueAPI.ack` removes them, :meth:`~QueueAPI.nack` gives
them back (or to the DLQ), :meth:`~QueueAPI.touch` extends a lease, and a
lease that lapses makes the message ready for another consumer. After 5
deliveries (a server setting) a failing message moves to the DLQ.

The names and fields mirror flo-python 0.1.2 (``EnqueueOptions``,
``DequeueOptions``, ``Message``, ``DequeueResult`` ...), plus the seed page's
``delay_ms``, ``to_dlq``, ``dedup_key``, ``touch`` and our ``lease_ms``.

Example:
    >>> from flo_client import FloClient
    >>> from flo_client.queue import EnqueueOptions, DequeueOptions, NackOptions
    >>> async def main():                                          # doctest: +SKIP
    ...     async with FloClient("localhost:9000") as client:
    ...         seq = await client.queue.enqueue("tasks", b"job", EnqueueOptions(priority=10, delay_ms=0))
    ...         result = await client.queue.dequeue("tasks", 10, DequeueOptions(block_ms=30000))
    ...         for msg in result.messages:
    ...             try:
    ...                 process(msg.payload)
    ...                 await client.queue.ack("tasks", [msg.seq])
    ...             except Exception:
    ...                 await client.queue.nack("tasks", [msg.seq], NackOptions(to_dlq=True))
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable

from flo_core.errors import BadRequestError, ProtocolError
from flo_core.spec import MAX_BLOCK_MS, Op, Tag

if TYPE_CHECKING:
    from .client import FloClient

__all__ = [
    "QueueAPI",
    "Message",
    "DequeueResult",
    "QueueStats",
    "QueueListResult",
    "EnqueueOptions",
    "DequeueOptions",
    "AckOptions",
    "NackOptions",
    "TouchOptions",
    "PeekOptions",
    "DlqListOptions",
    "DlqRequeueOptions",
    "DlqDeleteOptions",
    "QueueOptions",
    "QueueListOptions",
    "parse_messages",
]

_U8 = struct.Struct("<B")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_MSG_HEAD = struct.Struct("<QI")
_MSG_TAIL = struct.Struct("<qIB")
_STATS_FIELDS = (
    "ready", "delayed", "leased", "dlq", "last_seq",
    "total_enqueued", "total_delivered", "total_acked", "total_dead", "total_expired",
)


# --- results ------------------------------------------------------------------------


@dataclass
class Message:
    """A queue message. ``delivery_count`` is 1 on the first delivery, +1 per redelivery."""

    seq: int
    payload: bytes
    enqueued_at_ms: int = 0
    delivery_count: int = 0
    priority: int = 0


@dataclass
class DequeueResult:
    """Messages of a dequeue, peek or dlq_list (possibly empty)."""

    messages: list[Message]


@dataclass
class QueueStats:
    """Counters of one queue (all zero for a queue never used)."""

    ready: int = 0
    delayed: int = 0
    leased: int = 0
    dlq: int = 0
    last_seq: int = 0
    total_enqueued: int = 0
    total_delivered: int = 0
    total_acked: int = 0
    total_dead: int = 0
    total_expired: int = 0


@dataclass
class QueueListResult:
    """A page of queue names; pass ``cursor`` back for the next page while ``has_more``."""

    names: list[str]
    cursor: str = ""

    @property
    def has_more(self) -> bool:
        return bool(self.cursor)


# --- options (namespace=None means the client's namespace) ------------------------------


@dataclass
class EnqueueOptions:
    """``priority`` 0-255, lower first; ``delay_ms``: invisible until then;
    ``dedup_key``: a second enqueue with the same key inside ``dedup_window_ms``
    (server default 5 min) returns the first seq and adds nothing."""

    namespace: str | None = None
    priority: int = 0
    delay_ms: int | None = None
    dedup_key: str | None = None
    dedup_window_ms: int | None = None


@dataclass
class DequeueOptions:
    """``block_ms``: long-poll up to this long (0/None: don't wait, max 300 000);
    ``lease_ms``: lease length (server default 30 s). ``visibility_timeout_ms`` is
    the older SDK spelling of ``lease_ms``."""

    namespace: str | None = None
    block_ms: int | None = None
    lease_ms: int | None = None
    visibility_timeout_ms: int | None = None


@dataclass
class AckOptions:
    namespace: str | None = None


@dataclass
class NackOptions:
    """``to_dlq``: straight to the DLQ; ``delay_ms``: ready again only after this long."""

    namespace: str | None = None
    to_dlq: bool = False
    delay_ms: int | None = None


@dataclass
class TouchOptions:
    """``lease_ms``: the new lease runs this long from now (default: as long as the
    lease the dequeue gave)."""

    namespace: str | None = None
    lease_ms: int | None = None


@dataclass
class PeekOptions:
    namespace: str | None = None


@dataclass
class DlqListOptions:
    """``limit``: at most this many entries, oldest first (server default 10 000)."""

    namespace: str | None = None
    limit: int | None = None


@dataclass
class DlqRequeueOptions:
    namespace: str | None = None


@dataclass
class DlqDeleteOptions:
    namespace: str | None = None


@dataclass
class QueueOptions:
    """Options of the calls that take nothing but a namespace (purge, stats)."""

    namespace: str | None = None


@dataclass
class QueueListOptions:
    namespace: str | None = None
    prefix: str = ""
    cursor: str = ""
    limit: int | None = None


# --- wire helpers --------------------------------------------------------------------------


def parse_messages(data: bytes) -> list[Message]:
    """``[count u32] count x ([seq u64][payload bytes32][enqueued_at_ms i64][delivery_count u32][priority u8])``"""
    try:
        (count,) = _U32.unpack_from(data, 0)
        pos = 4
        out = []
        mv = memoryview(data)
        for _ in range(count):
            seq, plen = _MSG_HEAD.unpack_from(data, pos)
            pos += 12
            if pos + plen > len(data):
                raise ProtocolError("message payload overruns the answer")
            payload = bytes(mv[pos : pos + plen])
            pos += plen
            enq, dc, prio = _MSG_TAIL.unpack_from(data, pos)
            pos += 13
            out.append(Message(seq, payload, enq, dc, prio))
        return out
    except struct.error:
        raise ProtocolError("message list answer is truncated") from None


def _seqs(seqs: Iterable[int]) -> tuple[list[int], bytes]:
    seqs = [int(s) for s in seqs]
    try:
        return seqs, _U32.pack(len(seqs)) + struct.pack(f"<{len(seqs)}Q", *seqs)
    except struct.error:
        raise BadRequestError("seqs must be integers 0..2**64-1") from None


def _u(value: int, lo: int, hi: int, what: str) -> int:
    if not isinstance(value, int) or not lo <= value <= hi:
        raise BadRequestError(f"{what} must be an integer {lo}..{hi}, got {value!r}")
    return value


def _count(data: bytes) -> int:
    return _U32.unpack_from(data, 0)[0] if len(data) >= 4 else 0


class QueueAPI:
    """Queue operations, reached as ``client.queue``."""

    def __init__(self, client: "FloClient") -> None:
        self._client = client

    async def enqueue(self, queue: str, payload: bytes, options: EnqueueOptions | None = None) -> int:
        """Add a message; returns its seq (rising per queue).

        Example:
            >>> opts = EnqueueOptions(priority=10, delay_ms=60000)
            >>> seq = await client.queue.enqueue("tasks", payload, opts)  # doctest: +SKIP
        """
        o = options or EnqueueOptions()
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        opts: dict[int, bytes] = {}
        if o.priority:
            opts[Tag.PRIORITY] = _U8.pack(_u(o.priority, 0, 255, "priority"))
        if o.delay_ms:
            opts[Tag.DELAY_MS] = _U64.pack(_u(o.delay_ms, 0, (1 << 64) - 1, "delay_ms"))
        if o.dedup_key is not None:
            key = o.dedup_key.encode("utf-8")
            if not 1 <= len(key) <= 255:
                raise BadRequestError("dedup_key must be 1..255 bytes")
            opts[Tag.DEDUP_KEY] = key
        if o.dedup_window_ms is not None:
            opts[Tag.DEDUP_WINDOW_MS] = _U64.pack(_u(o.dedup_window_ms, 0, (1 << 64) - 1, "dedup_window_ms"))
        data = await self._client._call_vo(Op.QUEUE_ENQUEUE, queue, bytes(payload), opts, ns=o.namespace)
        if len(data) < 8:
            raise ProtocolError("enqueue answer shorter than 8 bytes")
        return _U64.unpack_from(data, 0)[0]

    async def dequeue(self, queue: str, count: int = 1, options: DequeueOptions | None = None) -> DequeueResult:
        """Lease up to ``count`` messages, waiting up to ``block_ms`` for the first.

        Example:
            >>> result = await client.queue.dequeue("tasks", 10, DequeueOptions(block_ms=30000))  # doctest: +SKIP
        """
        o = options or DequeueOptions()
        opts: dict[int, bytes] = {Tag.COUNT: _U32.pack(_u(count, 0, (1 << 32) - 1, "count"))}
        block_ms = o.block_ms or 0
        _u(block_ms, 0, MAX_BLOCK_MS, "block_ms")
        if block_ms:
            opts[Tag.BLOCK_MS] = _U32.pack(block_ms)
        lease_ms = o.lease_ms if o.lease_ms is not None else o.visibility_timeout_ms
        if lease_ms is not None:
            opts[Tag.LEASE_MS] = _U32.pack(_u(lease_ms, 1, (1 << 32) - 1, "lease_ms"))
        data = await self._client._call_vo(Op.QUEUE_DEQUEUE, queue, b"", opts, ns=o.namespace, block_ms=block_ms)
        return DequeueResult(parse_messages(data))

    async def ack(self, queue: str, seqs: Iterable[int], options: AckOptions | None = None) -> int:
        """Remove processed messages; returns how many were removed (unknown seqs are skipped)."""
        seqs, value = _seqs(seqs)
        if not seqs:
            return 0
        o = options or AckOptions()
        return _count(await self._client._call_vo(Op.QUEUE_COMPLETE, queue, value, None, ns=o.namespace))

    async def nack(self, queue: str, seqs: Iterable[int], options: NackOptions | None = None) -> int:
        """Give leased messages back (ready again, after ``delay_ms``), or to the DLQ with
        ``to_dlq``; returns how many were leased and taken back."""
        seqs, value = _seqs(seqs)
        if not seqs:
            return 0
        o = options or NackOptions()
        opts: dict[int, bytes] = {}
        if o.to_dlq:
            opts[Tag.TO_DLQ] = b""
        if o.delay_ms:
            opts[Tag.DELAY_MS] = _U64.pack(_u(o.delay_ms, 0, (1 << 64) - 1, "delay_ms"))
        return _count(await self._client._call_vo(Op.QUEUE_FAIL, queue, value, opts, ns=o.namespace))

    async def touch(self, queue: str, seqs: Iterable[int], options: TouchOptions | None = None) -> list[int]:
        """Extend leases (to now + ``lease_ms``, default the dequeue's lease length);
        returns the seqs still leased and extended.
        A seq missing from the answer lost its lease (lapsed, acked or nacked)."""
        seqs, value = _seqs(seqs)
        if not seqs:
            return []
        o = options or TouchOptions()
        opts: dict[int, bytes] = {}
        if o.lease_ms is not None:
            opts[Tag.LEASE_MS] = _U32.pack(_u(o.lease_ms, 1, (1 << 32) - 1, "lease_ms"))
        data = await self._client._call_vo(Op.QUEUE_TOUCH, queue, value, opts, ns=o.namespace)
        n = _count(data)
        if len(data) < 4 + 8 * n:
            raise ProtocolError("touch answer is truncated")
        return list(struct.unpack_from(f"<{n}Q", data, 4))

    async def peek(self, queue: str, count: int = 1, options: PeekOptions | None = None) -> DequeueResult:
        """The next ``count`` ready messages, in dequeue order, without leasing them."""
        o = options or PeekOptions()
        opts = {Tag.COUNT: _U32.pack(_u(count, 0, (1 << 32) - 1, "count"))}
        return DequeueResult(parse_messages(await self._client._call_vo(Op.QUEUE_PEEK, queue, b"", opts,
                                                                        ns=o.namespace)))

    async def dlq_list(self, queue: str, options: DlqListOptions | None = None) -> DequeueResult:
        """Dead-lettered messages, oldest first (``limit``, server default 10 000)."""
        o = options or DlqListOptions()
        opts: dict[int, bytes] = {}
        if o.limit is not None:
            opts[Tag.LIMIT] = _U32.pack(_u(o.limit, 0, (1 << 32) - 1, "limit"))
        return DequeueResult(parse_messages(await self._client._call_vo(Op.QUEUE_DLQ_LIST, queue, b"", opts,
                                                                        ns=o.namespace)))

    async def dlq_requeue(self, queue: str, seqs: Iterable[int], options: DlqRequeueOptions | None = None) -> int:
        """DLQ -> ready (same seq, delivery count restarts); returns how many moved."""
        seqs, value = _seqs(seqs)
        if not seqs:
            return 0
        o = options or DlqRequeueOptions()
        return _count(await self._client._call_vo(Op.QUEUE_DLQ_REQUEUE, queue, value, None, ns=o.namespace))

    async def dlq_delete(self, queue: str, seqs: Iterable[int], options: DlqDeleteOptions | None = None) -> int:
        """Drop DLQ entries; returns how many existed."""
        seqs, value = _seqs(seqs)
        if not seqs:
            return 0
        o = options or DlqDeleteOptions()
        return _count(await self._client._call_vo(Op.QUEUE_DLQ_DELETE, queue, value, None, ns=o.namespace))

    async def dlq_purge(self, queue: str, options: QueueOptions | None = None) -> int:
        """Empty the DLQ; returns how many entries it held."""
        o = options or QueueOptions()
        return _count(await self._client._call_vo(Op.QUEUE_DLQ_PURGE, queue, b"", None, ns=o.namespace))

    async def purge(self, queue: str, options: QueueOptions | None = None) -> int:
        """Drop every ready, delayed and leased message (not the DLQ); returns how many."""
        o = options or QueueOptions()
        return _count(await self._client._call_vo(Op.QUEUE_PURGE, queue, b"", None, ns=o.namespace))

    async def stats(self, queue: str, options: QueueOptions | None = None) -> QueueStats:
        """Ready / delayed / leased / DLQ counts and lifetime totals."""
        o = options or QueueOptions()
        data = await self._client._call_vo(Op.QUEUE_STATS, queue, b"", None, ns=o.namespace)
        n = data[0] if data else 0
        if len(data) < 1 + 8 * n:
            raise ProtocolError("stats answer is truncated")
        values = struct.unpack_from(f"<{n}Q", data, 1)
        return QueueStats(**dict(zip(_STATS_FIELDS, values)))

    async def list(self, options: QueueListOptions | None = None) -> QueueListResult:
        """Queue names of the namespace, sorted, a page at a time (``limit`` up to 1024)."""
        o = options or QueueListOptions()
        opts: dict[int, bytes] = {}
        if o.prefix:
            opts[Tag.PREFIX] = o.prefix.encode("utf-8")
        if o.limit is not None:
            opts[Tag.LIMIT] = _U32.pack(_u(o.limit, 1, 1024, "limit"))
        data = await self._client._call_vo(Op.QUEUE_LIST, o.cursor, b"", opts, ns=o.namespace)
        try:
            (count,) = _U32.unpack_from(data, 0)
            pos, names = 4, []
            for _ in range(count):
                (ln,) = struct.unpack_from("<H", data, pos)
                names.append(bytes(data[pos + 2 : pos + 2 + ln]).decode("utf-8"))
                pos += 2 + ln
            (ln,) = struct.unpack_from("<H", data, pos)
            cursor = bytes(data[pos + 2 : pos + 2 + ln]).decode("utf-8")
        except (struct.error, UnicodeDecodeError):
            raise ProtocolError("queue list answer is malformed") from None
        return QueueListResult(names, cursor)

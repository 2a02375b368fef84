"""``client.stream``: append-only streams with ids, headers, tail/blocking reads, trim and
retention, and consumer groups (at-least-once: pending entries, ack/nack, claim).

Names and fields mirror flo-python 0.1.2 (``flo/streams.py``, ``flo/types.py``)
so code written for it runs unchanged; extensions are marked "ext" (see
docs/protocol-stream.md).

Example:
    >>> r = await client.stream.append("events", b'{"event": "click"}',
    ...                                StreamAppendOptions(headers={"source": "web"}))  # doctest: +SKIP
    >>> res = await client.stream.read("events", StreamReadOptions(start=r.id, count=10))  # doctest: +SKIP
    >>> [(rec.stream, rec.payload, rec.headers) for rec in res.records]                     # doctest: +SKIP
    [('events', b'{"event": "click"}', {'source': 'web'})]
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Iterable, Sequence

from flo_core.body import Reader, Writer
from flo_core.errors import BadRequestError
from flo_core.spec import MAX_BLOCK_MS, Op, StorageTier, Tag

if TYPE_CHECKING:
    from .client import FloClient

_U64_MAX = 0xFFFFFFFFFFFFFFFF
_BE_ID = struct.Struct(">QQ")


# --- ids and records ------------------------------------------------------------------------


@dataclass(frozen=True, order=True)
class StreamID:
    """A position in a stream: ``(timestamp_ms, sequence)``, ordered lexicographically.

    Example:
        >>> StreamID(5, 1) < StreamID(6, 0), str(StreamID(5, 1)), StreamID.parse("5-1")
        (True, '5-1', StreamID(timestamp_ms=5, sequence=1))
    """

    timestamp_ms: int = 0
    sequence: int = 0

    MIN: ClassVar["StreamID"]
    MAX: ClassVar["StreamID"]

    def to_bytes(self) -> bytes:
        """16 bytes big-endian (the STREAM_START / STREAM_END option form)."""
        return _BE_ID.pack(self.timestamp_ms, self.sequence)

    @classmethod
    def from_bytes(cls, data: bytes) -> "StreamID":
        if len(data) < 16:
            raise ValueError(f"Invalid StreamID: expected 16 bytes, got {len(data)}")
        ts, seq = _BE_ID.unpack(data[:16])
        return cls(ts, seq)

    @classmethod
    def parse(cls, text: str) -> "StreamID":
        """``"<ms>-<seq>"`` or ``"<ms>"`` (sequence 0)."""
        ms, _, seq = text.strip().partition("-")
        try:
            ts, sq = int(ms), int(seq or 0)
        except ValueError:
            raise ValueError(f"bad stream id {text!r}: use <ms>-<seq>") from None
        if not (0 <= ts <= _U64_MAX and 0 <= sq <= _U64_MAX):  # else to_bytes() fails later (struct.error)
            raise ValueError(f"bad stream id {text!r}: both parts are 0..{_U64_MAX}")
        return cls(ts, sq)

    def __str__(self) -> str:
        return f"{self.timestamp_ms}-{self.sequence}"


StreamID.MIN = StreamID(0, 0)
StreamID.MAX = StreamID(_U64_MAX, _U64_MAX)


@dataclass
class StreamRecord:
    """A record: ``id``, ``stream`` (its name), ``payload``, ``headers`` (None when it has none)."""

    id: StreamID = field(default_factory=StreamID)
    tier: StorageTier = StorageTier.HOT
    stream: str = ""
    payload: bytes = b""
    headers: dict[str, str] | None = None


@dataclass
class StreamAppendResult:
    id: StreamID = field(default_factory=StreamID)


@dataclass
class StreamReadResult:
    records: list[StreamRecord]

    def __iter__(self) -> Any:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)


@dataclass
class PendingEntry:
    """A delivered, not yet acknowledged record of a group."""

    id: StreamID = field(default_factory=StreamID)
    consumer: str = ""
    delivery_count: int = 0
    idle_ms: int = 0  # ext: time since the last delivery


@dataclass
class StreamClaimResult:
    """A page of :meth:`StreamAPI.group_claim`: pass ``next_cursor`` back until ``done``."""

    records: list[StreamRecord]
    next_cursor: StreamID = field(default_factory=StreamID)
    done: bool = False


@dataclass
class StreamInfo:
    count: int
    bytes_size: int
    first_id: StreamID = field(default_factory=StreamID)
    last_id: StreamID = field(default_factory=StreamID)
    partition_count: int = 1
    # ext
    max_len: int = 0
    max_age_ms: int = 0
    max_bytes: int = 0
    groups: list[str] = field(default_factory=list)


@dataclass
class StreamTrimResult:
    removed: int
    first_seq: int


@dataclass
class StreamRetention:
    """ext: per-stream retention; 0 = unlimited."""

    max_len: int = 0
    max_age_ms: int = 0
    max_bytes: int = 0


@dataclass
class StreamSummary:
    """ext: one entry of :meth:`StreamAPI.list`."""

    name: str
    count: int
    bytes_size: int
    last_id: StreamID


@dataclass
class StreamListResult:
    streams: list[StreamSummary]
    cursor: str | None = None  # pass back for the next page; None = last page


@dataclass
class ConsumerInfo:
    name: str
    pending: int
    idle_ms: int


@dataclass
class GroupInfo:
    """ext: a consumer group's state."""

    name: str
    pending: int
    last_delivered_id: StreamID
    lag: int
    ack_timeout_ms: int
    max_deliver: int
    delivered: int
    acked: int
    dead_lettered: int
    consumers: list[ConsumerInfo]


# --- options -------------------------------------------------------------------------------


@dataclass
class StreamAppendOptions:
    namespace: str | None = None
    headers: dict[str, str] | None = None


@dataclass
class StreamReadOptions:
    """``start`` (inclusive) / ``end`` (inclusive) / ``tail`` (only records appended after
    the request) / ``count`` (default 10, at most 1000) / ``block_ms`` (0 = don't wait)."""

    namespace: str | None = None
    start: StreamID | None = None
    end: StreamID | None = None
    tail: bool = False
    partition: int | None = None
    count: int | None = None
    block_ms: int | None = None


@dataclass
class StreamTrimOptions:
    """Exactly one of ``before`` (removes ids <= it), ``max_len``, ``max_age_seconds``, ``max_bytes`` (ext)."""

    namespace: str | None = None
    before: StreamID | None = None
    max_len: int | None = None
    max_age_seconds: int | None = None
    max_bytes: int | None = None
    dry_run: bool = False


@dataclass
class StreamInfoOptions:
    namespace: str | None = None


@dataclass
class StreamGroupJoinOptions:
    namespace: str | None = None


@dataclass
class StreamGroupReadOptions:
    namespace: str | None = None
    count: int | None = None
    block_ms: int | None = None


@dataclass
class StreamGroupAckOptions:
    namespace: str | None = None
    consumer: str = ""


@dataclass
class StreamGroupNackOptions:
    namespace: str | None = None
    consumer: str = ""
    delay_ms: int | None = None  # ext: redeliverable only after this long


# --- codecs ---------------------------------------------------------------------------------


def parse_records(data: bytes, r: Reader | None = None) -> list[StreamRecord]:
    """Decode a wire record list (flo-wire-v2 §3.4); an answer under 4 bytes is empty."""
    if r is None:
        if len(data) < 4:
            return []
        r = Reader(data)
    out: list[StreamRecord] = []
    for _ in range(r.u32()):
        seq = r.u64()
        ts = r.u64()
        tier = r.u8()
        r.u32()  # partition
        stream = r.str32() if r.u8() else ""
        payload = r.bytes32()
        hc = r.u32()
        headers = {r.str32(): r.str32() for _ in range(hc)} if hc else None
        out.append(StreamRecord(StreamID(ts, seq), StorageTier(tier), stream, payload, headers))
    return out


def _group_value(group: str, consumer: str) -> Writer:
    return Writer().str16(group).str16(consumer)


def _ids(w: Writer, ids: Iterable[StreamID]) -> Writer:
    ids = list(ids)
    w.u32(len(ids))
    for i in ids:
        w.u64(i.timestamp_ms).u64(i.sequence)
    return w


def _u32(v: int) -> bytes:
    return int(v).to_bytes(4, "little")


def _u64(v: int) -> bytes:
    return int(v).to_bytes(8, "little")


def _block(v: int | None) -> int:
    b = int(v or 0)
    if not 0 <= b <= MAX_BLOCK_MS:
        raise BadRequestError(f"block_ms must be 0..{MAX_BLOCK_MS}")
    return b


class StreamAPI:
    """``client.stream``."""

    def __init__(self, client: "FloClient") -> None:
        self._client = client

    async def _vo(self, op: int, stream: str, value: bytes = b"", opts: dict[int, bytes] | None = None,
                  ns: str | None = None, block_ms: int = 0) -> bytes:
        return await self._client._call_vo(op, stream, value, opts, ns=ns, block_ms=block_ms)

    # --- records ---------------------------------------------------------------------------

    async def append(self, stream: str, payload: bytes, options: StreamAppendOptions | None = None) -> StreamAppendResult:
        """Append one record; returns its id.

        Example:
            >>> await client.stream.append("events", b'{"event": "click"}')   # doctest: +SKIP
        """
        opts = options or StreamAppendOptions()
        ids = await self.append_batch(stream, [(payload, opts.headers)], namespace=opts.namespace)
        return StreamAppendResult(ids[0])

    async def append_batch(self, stream: str, records: Sequence[tuple[bytes, dict[str, str] | None] | bytes], *,
                           namespace: str | None = None) -> list[StreamID]:
        """ext: append up to 1000 records at once; they get consecutive ids in one ms."""
        if not 1 <= len(records) <= 1000:
            raise BadRequestError("append_batch takes 1..1000 records")
        w = Writer().u32(len(records))
        for rec in records:
            payload, headers = (rec, None) if isinstance(rec, (bytes, bytearray, memoryview)) else rec
            w.bytes32(bytes(payload))
            hdrs = headers or {}
            w.u16(len(hdrs))
            for k, v in hdrs.items():
                w.str16(k).str16(v)
        data = await self._vo(Op.STREAM_APPEND, stream, w.getvalue(), ns=namespace)
        r = Reader(data)
        seq, ts = r.u64(), r.u64()
        return [StreamID(ts, seq + i) for i in range(len(records))]

    async def read(self, stream: str, options: StreamReadOptions | None = None) -> StreamReadResult:
        """Read records: from ``start`` (inclusive, default the beginning) to ``end``,
        or ``tail`` (records appended after this call), waiting up to ``block_ms``.

        Example:
            >>> await client.stream.read("events", StreamReadOptions(tail=True, count=10, block_ms=30000))  # doctest: +SKIP
        """
        o = options or StreamReadOptions()
        opts: dict[int, bytes] = {}
        if o.tail:
            opts[Tag.STREAM_TAIL] = b""
        if o.start is not None:
            opts[Tag.STREAM_START] = o.start.to_bytes()
        if o.end is not None:
            opts[Tag.STREAM_END] = o.end.to_bytes()
        if o.partition is not None:
            opts[Tag.PARTITION] = _u32(o.partition)
        if o.count is not None:
            opts[Tag.COUNT] = _u32(o.count)
        block = _block(o.block_ms)
        if block:
            opts[Tag.BLOCK_MS] = _u32(block)
        data = await self._vo(Op.STREAM_READ, stream, b"", opts, ns=o.namespace, block_ms=block)
        return StreamReadResult(parse_records(data))

    async def info(self, stream: str, options: StreamInfoOptions | None = None) -> StreamInfo:
        """First/last id, record count, bytes (+ ext: retention, group names). Unknown streams: zeros."""
        o = options or StreamInfoOptions()
        r = Reader(await self._vo(Op.STREAM_INFO, stream, ns=o.namespace))
        fts, fseq, lts, lseq, count, size = (r.u64() for _ in range(6))
        info = StreamInfo(count, size, StreamID(fts, fseq), StreamID(lts, lseq), r.u32())
        if r.remaining >= 28:
            info.max_len, info.max_age_ms, info.max_bytes = r.u64(), r.u64(), r.u64()
            info.groups = [r.str16() for _ in range(r.u32())]
        return info

    async def trim(self, stream: str, options: StreamTrimOptions | None = None) -> StreamTrimResult:
        """Remove the oldest records by exactly one bound; ``dry_run`` only counts.

        Example:
            >>> await client.stream.trim("events", StreamTrimOptions(max_len=1000))   # doctest: +SKIP
        """
        o = options or StreamTrimOptions()
        opts: dict[int, bytes] = {}
        if o.before is not None:
            opts[Tag.STREAM_START] = o.before.to_bytes()
        if o.max_len is not None:
            opts[Tag.LIMIT] = _u64(o.max_len)
        if o.max_age_seconds is not None:
            opts[Tag.MAX_AGE_SECONDS] = _u64(o.max_age_seconds)
        if o.max_bytes is not None:
            opts[Tag.MAX_BYTES] = _u64(o.max_bytes)
        if o.dry_run:
            opts[Tag.DRY_RUN] = b""
        r = Reader(await self._vo(Op.STREAM_TRIM, stream, b"", opts, ns=o.namespace))
        return StreamTrimResult(r.u64(), r.u64())

    # --- stream admin (ext) --------------------------------------------------------------------

    @staticmethod
    def _retention_opts(max_len: int | None, max_age_seconds: int | None, max_bytes: int | None) -> dict[int, bytes]:
        opts: dict[int, bytes] = {}
        if max_len is not None:
            opts[Tag.LIMIT] = _u64(max_len)
        if max_age_seconds is not None:
            opts[Tag.MAX_AGE_SECONDS] = _u64(max_age_seconds)
        if max_bytes is not None:
            opts[Tag.MAX_BYTES] = _u64(max_bytes)
        return opts

    async def create(self, stream: str, *, max_len: int | None = None, max_age_seconds: int | None = None,
                     max_bytes: int | None = None, namespace: str | None = None) -> bool:
        """ext: create a stream (True if new) and set its retention (kept on every append)."""
        data = await self._vo(Op.STREAM_CREATE, stream, b"",
                              self._retention_opts(max_len, max_age_seconds, max_bytes), ns=namespace)
        return bool(data[0])

    async def set_retention(self, stream: str, *, max_len: int | None = None, max_age_seconds: int | None = None,
                            max_bytes: int | None = None, namespace: str | None = None) -> StreamRetention:
        """ext: change retention (0 = unlimited, None = unchanged); applied at once. NotFoundError if no stream."""
        r = Reader(await self._vo(Op.STREAM_ALTER, stream, b"",
                                  self._retention_opts(max_len, max_age_seconds, max_bytes), ns=namespace))
        return StreamRetention(r.u64(), r.u64(), r.u64())

    async def delete(self, stream: str, *, force: bool = False, namespace: str | None = None) -> bool:
        """ext: delete a stream and its groups (a non-empty one needs ``force``). True if it existed."""
        data = await self._vo(Op.STREAM_DELETE, stream, b"\x01" if force else b"\x00", ns=namespace)
        return bool(data[0])

    async def list(self, prefix: str = "", *, limit: int | None = None, cursor: str | None = None,
                   namespace: str | None = None) -> StreamListResult:
        """ext: streams of a namespace by name, paged."""
        opts: dict[int, bytes] = {}
        if limit is not None:
            opts[Tag.COUNT] = _u32(limit)
        if cursor:
            opts[Tag.CURSOR] = cursor.encode("utf-8")
        r = Reader(await self._vo(Op.STREAM_LIST, prefix, b"", opts, ns=namespace))
        items = []
        for _ in range(r.u32()):
            name = r.str16()
            count, size, lts, lseq = r.u64(), r.u64(), r.u64(), r.u64()
            items.append(StreamSummary(name, count, size, StreamID(lts, lseq)))
        return StreamListResult(items, r.opt_str16())

    # --- consumer groups -----------------------------------------------------------------------

    async def group_create(self, stream: str, group: str, *, start: StreamID | str | None = None,
                           ack_timeout_ms: int | None = None, max_deliver: int | None = None,
                           namespace: str | None = None) -> bool:
        """ext: create a group explicitly (join/read create one at the beginning of the stream).
        ``start``: a StreamID (inclusive) or ``"$"`` (only new records). True if new."""
        opts: dict[int, bytes] = {}
        if start == "$":
            opts[Tag.STREAM_TAIL] = b""
        elif isinstance(start, StreamID):
            opts[Tag.STREAM_START] = start.to_bytes()
        if ack_timeout_ms is not None:
            opts[Tag.ACK_TIMEOUT_MS] = _u32(ack_timeout_ms)
        if max_deliver is not None:
            opts[Tag.MAX_DELIVER] = bytes([max_deliver])
        data = await self._vo(Op.STREAM_GROUP_CREATE, stream, Writer().str16(group).getvalue(), opts, ns=namespace)
        return bool(data[0])

    async def group_configure(self, stream: str, group: str, *, ack_timeout_ms: int | None = None,
                              max_deliver: int | None = None, namespace: str | None = None) -> tuple[int, int]:
        """ext: ack timeout (0 = never redeliver by time) and max deliveries (0 = unlimited).
        Returns the group's ``(ack_timeout_ms, max_deliver)``."""
        opts: dict[int, bytes] = {}
        if ack_timeout_ms is not None:
            opts[Tag.ACK_TIMEOUT_MS] = _u32(ack_timeout_ms)
        if max_deliver is not None:
            opts[Tag.MAX_DELIVER] = bytes([max_deliver])
        r = Reader(await self._vo(Op.STREAM_GROUP_CONFIGURE_SWEEPER, stream, Writer().str16(group).getvalue(), opts,
                                  ns=namespace))
        return r.u64(), r.u32()

    async def group_info(self, stream: str, group: str, *, namespace: str | None = None) -> GroupInfo:
        """ext: a group's cursor, pending count, lag, settings and consumers. NotFoundError if unknown."""
        r = Reader(await self._vo(Op.STREAM_GROUP_INFO, stream, Writer().str16(group).getvalue(), ns=namespace))
        name = r.str16()
        pending, lts, lseq, lag, ack_t = r.u64(), r.u64(), r.u64(), r.u64(), r.u64()
        md = r.u32()
        delivered, acked, dead = r.u64(), r.u64(), r.u64()
        consumers = [ConsumerInfo(r.str16(), r.u32(), r.u64()) for _ in range(r.u32())]
        return GroupInfo(name, pending, StreamID(lts, lseq), lag, ack_t, md, delivered, acked, dead, consumers)

    async def group_delete(self, stream: str, group: str, *, namespace: str | None = None) -> bool:
        """ext: delete a group and its pending entries. True if it existed."""
        data = await self._vo(Op.STREAM_GROUP_DELETE, stream, Writer().str16(group).getvalue(), ns=namespace)
        return bool(data[0])

    async def group_join(self, stream: str, group: str, consumer: str,
                         options: StreamGroupJoinOptions | None = None) -> None:
        """Join ``consumer`` to ``group`` (both created if absent).

        Example:
            >>> await client.stream.group_join("events", "processors", "worker-1")   # doctest: +SKIP
        """
        o = options or StreamGroupJoinOptions()
        await self._vo(Op.STREAM_GROUP_JOIN, stream, _group_value(group, consumer).getvalue(), ns=o.namespace)

    async def group_leave(self, stream: str, group: str, consumer: str,
                          options: StreamGroupJoinOptions | None = None) -> None:
        """Remove ``consumer``; its pending entries stay (claim them or let them time out)."""
        o = options or StreamGroupJoinOptions()
        await self._vo(Op.STREAM_GROUP_LEAVE, stream, _group_value(group, consumer).getvalue(), ns=o.namespace)

    async def group_read(self, stream: str, group: str, consumer: str,
                         options: StreamGroupReadOptions | None = None) -> StreamReadResult:
        """Take records for ``consumer``: redeliverable ones first, then new ones; each goes
        to one consumer and stays pending until acked.

        Example:
            >>> res = await client.stream.group_read("events", "processors", "worker-1",
            ...                                      StreamGroupReadOptions(count=10, block_ms=30000))  # doctest: +SKIP
            >>> await client.stream.group_ack("events", "processors", [r.id for r in res.records])  # doctest: +SKIP
        """
        o = options or StreamGroupReadOptions()
        opts: dict[int, bytes] = {}
        if o.count is not None:
            opts[Tag.COUNT] = _u32(o.count)
        block = _block(o.block_ms)
        if block:
            opts[Tag.BLOCK_MS] = _u32(block)
        data = await self._vo(Op.STREAM_GROUP_READ, stream, _group_value(group, consumer).getvalue(), opts,
                              ns=o.namespace, block_ms=block)
        return StreamReadResult(parse_records(data))

    async def _ack_like(self, op: int, stream: str, group: str, ids: Iterable[StreamID], consumer: str,
                        namespace: str | None, opts: dict[int, bytes] | None = None) -> int:
        ids = list(ids)
        if not ids:
            return 0
        value = _ids(_group_value(group, consumer), ids).getvalue()
        data = await self._vo(op, stream, value, opts, ns=namespace)
        return int.from_bytes(data[:4], "little") if len(data) >= 4 else 0

    async def group_ack(self, stream: str, group: str, ids: Iterable[StreamID],
                        options: StreamGroupAckOptions | None = None, *, consumer: str | None = None) -> int:
        """Acknowledge records; returns how many were pending. NotFoundError for an unknown stream/group."""
        o = options or StreamGroupAckOptions()
        return await self._ack_like(Op.STREAM_GROUP_ACK, stream, group, ids, consumer or o.consumer, o.namespace)

    async def group_nack(self, stream: str, group: str, ids: Iterable[StreamID],
                         options: StreamGroupNackOptions | None = None, *, consumer: str | None = None,
                         delay_ms: int | None = None) -> int:
        """Make records redeliverable at once (or after ``delay_ms``, ext) to any consumer."""
        o = options or StreamGroupNackOptions()
        delay = delay_ms if delay_ms is not None else o.delay_ms
        opts = {Tag.DELAY_MS: _u64(delay)} if delay else None
        return await self._ack_like(Op.STREAM_GROUP_NACK, stream, group, ids, consumer or o.consumer, o.namespace, opts)

    async def group_touch(self, stream: str, group: str, ids: Iterable[StreamID], *, consumer: str = "",
                          namespace: str | None = None) -> int:
        """ext: push the ack deadline of pending records to now + the group's ack timeout."""
        return await self._ack_like(Op.STREAM_GROUP_TOUCH, stream, group, ids, consumer, namespace)

    async def group_pending(self, stream: str, group: str, consumer: str = "",
                            options: StreamGroupReadOptions | None = None, *, start: StreamID | None = None
                            ) -> list[PendingEntry]:
        """The group's pending entries in id order (only ``consumer``'s if given)."""
        o = options or StreamGroupReadOptions()
        w = Writer().str16(group)
        if consumer:
            w.str16(consumer)
        opts: dict[int, bytes] = {}
        if o.count is not None:
            opts[Tag.COUNT] = _u32(o.count)
        if start is not None:
            opts[Tag.STREAM_START] = start.to_bytes()
        data = await self._vo(Op.STREAM_GROUP_PENDING, stream, w.getvalue(), opts, ns=o.namespace)
        if len(data) < 4:
            return []
        r = Reader(data)
        out = [PendingEntry(StreamID(r.u64(), r.u64()), delivery_count=r.u32(), consumer=r.str16())
               for _ in range(r.u32())]
        if r.remaining >= 8 * len(out):
            for e in out:
                e.idle_ms = r.u64()
        return out

    async def group_claim(self, stream: str, group: str, consumer: str, min_idle_ms: int,
                          start_id: StreamID, count: int, options: StreamGroupReadOptions | None = None
                          ) -> StreamClaimResult:
        """Take over a page of pending entries from ``start_id``: ``min_idle_ms=0`` = only
        ``consumer``'s own (reconnect drain); > 0 = also others' idle that long."""
        o = options or StreamGroupReadOptions()
        value = (_group_value(group, consumer).u32(min_idle_ms).u64(start_id.timestamp_ms)
                 .u64(start_id.sequence).u32(count).getvalue())
        data = await self._vo(Op.STREAM_GROUP_CLAIM, stream, value, ns=o.namespace)
        if len(data) < 16:
            return StreamClaimResult([], StreamID(), True)
        nts, nseq = struct.unpack_from("<QQ", data, len(data) - 16)
        records = parse_records(data[:-16])
        done = nts == _U64_MAX and nseq == _U64_MAX
        return StreamClaimResult(records, StreamID(nts, nseq), done)


__all__ = [
    "StreamAPI",
    "StreamID",
    "StreamRecord",
    "StorageTier",
    "StreamAppendResult",
    "StreamReadResult",
    "PendingEntry",
    "StreamClaimResult",
    "StreamInfo",
    "StreamTrimResult",
    "StreamRetention",
    "StreamSummary",
    "StreamListResult",
    "ConsumerInfo",
    "GroupInfo",
    "StreamAppendOptions",
    "StreamReadOptions",
    "StreamTrimOptions",
    "StreamInfoOptions",
    "StreamGroupJoinOptions",
    "StreamGroupReadOptions",
    "StreamGroupAckOptions",
    "StreamGroupNackOptions",
    "parse_records",
]

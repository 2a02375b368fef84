"""Replication: a replica tails its shard leader's log over the Flo port and applies it with the same appliers.

The leader keeps the records of its last log writes in a bounded in-memory **backlog** (the log
writer's ``tap`` hands it each write's bytes, framed exactly as in the segment files); older
records come from the segment files. A replica asks with ``REPL_FETCH`` (an extension op)::

    value = msgpack {"shard", "epoch", "from", "synced", "max", "wait", "last_epoch"}
    answer = bytes32(msgpack {"epoch", "last", "snapshot"}) + bytes32(framed records from "from" on)

``from`` is also the replica's acknowledgement: it holds every record below it, and ``synced`` is
the last of them it has made durable by its own ``--fsync`` policy. With ``--sync-replicas K`` a
leader answers a write only once K replicas report it synced (the Output holds the answer, as it
does for the leader's own fsync). The replica appends the framed bytes to its own log unchanged —
its segments are the leader's, record for record, LSN for LSN — and applies each record.

Fencing: ``epoch`` is the leadership the replica follows (read from etcd); a leader whose own
epoch differs, or whose lease is no longer valid, refuses the fetch, so a replica never takes a
record from a deposed leader. ``last_epoch`` is the replica's newest ``cluster.epoch`` record
``[epoch, lsn]``: when the leader's history shows the replica holds records the new epoch does
not (a deposed leader's unreplicated tail), the answer says ``diverged`` and the replica
resynchronises from a snapshot.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections import deque
from typing import Any

import msgpack

from flo_core.body import Reader, Writer
from flo_core.errors import Refusal
from flo_core.spec import Op, Reason
from flo_server.dispatch import Request, handler
from flo_server.journal import applier

log = logging.getLogger("flo.cluster")

#: Bytes of recent records a leader keeps in memory for replicas (Redis's repl-backlog-size, larger).
DEFAULT_BACKLOG = 64 * 1024 * 1024
#: Largest answer to one fetch.
MAX_FETCH = 4 * 1024 * 1024
#: Longest a fetch may wait for new records.
MAX_WAIT_MS = 5_000

_HDR = struct.Struct("<IIQB")  # length, crc, lsn, kind: flo_core.log's record header
HDR = _HDR.size


class Backlog:
    """The leader's recent records, as the log writer wrote them: ``(first_lsn, last_lsn, bytes)`` chunks."""

    def __init__(self, limit: int = DEFAULT_BACKLOG) -> None:
        self.limit = limit
        self.chunks: deque[tuple[int, int, bytes]] = deque()
        self.size = 0
        self.last_lsn = 0
        self.changed = asyncio.Event()

    def __call__(self, first_lsn: int, last_lsn: int, data: bytes) -> None:
        """The log writer's tap: called after each successful write with what it wrote."""
        self.chunks.append((first_lsn, last_lsn, data))
        self.size += len(data)
        self.last_lsn = last_lsn
        while self.size > self.limit and len(self.chunks) > 1:
            self.size -= len(self.chunks.popleft()[2])
        self.changed.set()

    @property
    def first_lsn(self) -> int:
        return self.chunks[0][0] if self.chunks else self.last_lsn + 1

    def read(self, from_lsn: int, max_bytes: int) -> bytes | None:
        """Framed records from ``from_lsn`` on (at least one whole record), or None if they left the backlog."""
        if from_lsn > self.last_lsn:
            return b""
        if not self.chunks or from_lsn < self.chunks[0][0]:
            return None
        out: list[bytes] = []
        size = 0
        for first, last, data in self.chunks:
            if last < from_lsn:
                continue
            if first < from_lsn:
                data = data[_offset_of(data, first, from_lsn):]
            if out and size + len(data) > max_bytes:
                break
            out.append(data)
            size += len(data)
        return b"".join(out)


def _offset_of(data: bytes, first: int, lsn: int) -> int:
    """Offset of the first record at or above ``lsn`` in a chunk of framed records (LSNs rise, maybe
    with gaps: ``LogWriter.raise_floor``)."""
    pos = 0
    while pos < len(data):
        n, _crc, at, _kind = _HDR.unpack_from(data, pos)
        if at >= lsn:
            break
        pos += HDR + n
    return pos


def split_framed(data: bytes) -> list[tuple[int, int, bytes]]:
    """``[(lsn, kind, payload)]`` of a run of framed records (their CRCs are checked when they are logged)."""
    out = []
    pos, end = 0, len(data)
    while pos < end:
        n, _crc, lsn, kind = _HDR.unpack_from(data, pos)
        out.append((lsn, kind, data[pos + HDR:pos + HDR + n]))
        pos += HDR + n
    return out


# --- epochs: which leadership wrote which records -------------------------------------------------


class EpochHistory(list):
    """``[(epoch, first_lsn)]`` of the leaderships this log holds records of: a store (``srv.stores["cluster"]``)
    so that snapshots keep it."""

    def dump(self) -> list:
        return [list(e) for e in self]

    def load(self, state: list) -> None:
        self[:] = [(int(e), int(at)) for e, at in state]


@applier("cluster.epoch")
def apply_epoch(srv: Any, lsn: int, epoch: int, node: str) -> None:
    """A new leader's first record: the history of epochs (``srv.epochs``) that divergence checks use."""
    srv.epochs.append((epoch, lsn))


def diverged(history: list[tuple[int, int]], replica_last: tuple[int, int] | None, replica_next: int) -> bool:
    """Does a replica holding records below ``replica_next``, whose newest epoch record is
    ``replica_last``, hold any record this leader's history does not?

    >>> h = [(5, 1), (9, 40)]
    >>> diverged(h, (5, 1), 30), diverged(h, (5, 1), 41), diverged(h, (9, 40), 60), diverged(h, (7, 35), 36)
    (False, True, False, True)
    """
    if replica_last is None:
        # Nothing but records from before any epoch record (or nothing at all).
        return bool(history) and replica_next > history[0][1]
    epoch, lsn = replica_last
    for i, (e, at) in enumerate(history):
        if (e, at) == (epoch, lsn):
            nxt = history[i + 1][1] if i + 1 < len(history) else None
            return nxt is not None and replica_next > nxt
    return True


# --- the leader's side ------------------------------------------------------------------------------


@handler(Op.REPL_FETCH)
def repl_fetch(srv: Any, req: Request) -> Any:
    """REPL_FETCH key=replica node value=msgpack request -> header + framed records (ext; cluster only)."""
    node = getattr(srv, "cluster", None)
    if node is None:
        raise Refusal(Reason.MALFORMED, "REPL_FETCH: this server is not a cluster member")
    try:
        args = msgpack.unpackb(req.value, raw=False)
        epoch, from_lsn, synced = int(args["epoch"]), int(args["from"]), int(args["synced"])
        max_bytes = max(1, min(int(args.get("max", MAX_FETCH)), MAX_FETCH))
        wait_ms = max(0, min(int(args.get("wait", 0)), MAX_WAIT_MS))
        last_epoch = args.get("last_epoch")
        last_epoch = None if last_epoch is None else (int(last_epoch[0]), int(last_epoch[1]))
    except (ValueError, TypeError, KeyError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise Refusal(Reason.MALFORMED, f"REPL_FETCH: bad request ({e})") from None
    node.check_leader(epoch)
    _unheld(req)
    if from_lsn < 1:
        raise Refusal(Reason.MALFORMED, "REPL_FETCH: from must be >= 1")
    name = req.key.decode("utf-8", "replace")
    if diverged(srv.epochs, last_epoch, from_lsn):
        log.info("replica %s diverged: its newest epoch %s, next LSN %d; history %s", req.key, last_epoch, from_lsn,
                 list(srv.epochs)[-4:])
        return _answer(node, {"diverged": True}, b"")
    node.acked(name, from_lsn - 1, synced)
    data = node.backlog.read(from_lsn, max_bytes)
    if data is None:
        data = _from_segments(srv, from_lsn, max_bytes)
        if data is None:
            return _answer(node, {"snapshot": True}, b"")
    if data or wait_ms == 0:
        return _answer(node, {}, data)

    async def later() -> bytes:
        # Woken by the next log write (the backlog's event); a deposed leader answers nothing more.
        ev = node.backlog.changed
        ev.clear()
        try:
            await asyncio.wait_for(ev.wait(), wait_ms / 1000)
        except asyncio.TimeoutError:
            pass
        node.check_leader(epoch)
        more = node.backlog.read(from_lsn, max_bytes)
        return _answer(node, {}, more or b"")

    return later()


def _unheld(req: Request) -> None:
    # A replica's answers go out at once, not after the log (and the replicas) cover them: they
    # acknowledge nothing, and holding them until this replica acknowledges would never end.
    out = getattr(req.conn, "output", None)
    if out is not None:
        out.unheld = True


def _answer(node: Any, head: dict, data: bytes) -> bytes:
    head = {"epoch": node.epoch, "last": node.backlog.last_lsn, **head}
    return Writer().bytes32(msgpack.packb(head)).bytes32(data).getvalue()


def _from_segments(srv: Any, from_lsn: int, max_bytes: int) -> bytes | None:
    """Records no longer in the backlog, read back from the segment files; None below the oldest."""
    from flo_core.log import LogReader, frame_record
    from flo_server.persistence import log_dir

    if not srv.config.data_dir:
        return None
    reader = LogReader(log_dir(srv.config.data_dir), from_lsn)
    segs = reader.segments
    if not segs or segs[0][0] > from_lsn:
        return None
    limit = srv.journal.writer.flushed_lsn
    out = bytearray()
    try:
        for lsn, kind, payload in reader:
            if lsn > limit or (out and len(out) + HDR + len(payload) > max_bytes):
                break
            out += frame_record(lsn, kind, payload)
    except FileNotFoundError:  # the snapshot thread removed that segment meanwhile (DiskJournal)
        if not out:
            return None
    return bytes(out)


@handler(Op.REPL_SNAPSHOT)
def repl_snapshot(srv: Any, req: Request) -> bytes:
    """REPL_SNAPSHOT value=msgpack {"epoch", "offset", "max"} -> bytes32(msgpack {"lsn", "size"}) + bytes32(part).

    The first request (offset 0) dumps the stores at the current LSN (what a snapshot file
    holds); later ones page through that same dump, kept for a minute.
    """
    node = getattr(srv, "cluster", None)
    if node is None:
        raise Refusal(Reason.MALFORMED, "REPL_SNAPSHOT: this server is not a cluster member")
    try:
        args = msgpack.unpackb(req.value, raw=False)
        epoch, offset = int(args["epoch"]), int(args["offset"])
        max_bytes = max(1, min(int(args.get("max", MAX_FETCH)), MAX_FETCH))
    except (ValueError, TypeError, KeyError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as e:
        raise Refusal(Reason.MALFORMED, f"REPL_SNAPSHOT: bad request ({e})") from None
    node.check_leader(epoch)
    _unheld(req)
    import time

    cached = getattr(node, "_snapshot", None)
    if offset == 0 or cached is None or time.monotonic() - cached[2] > 60:
        lsn = srv.journal.last_lsn
        body = msgpack.packb({"lsn": lsn, "stores": {n: st.dump() for n, st in srv.stores.items()}},
                             use_bin_type=True)
        cached = node._snapshot = (lsn, body, time.monotonic())
    lsn, body, _ = cached
    if offset > len(body):
        raise Refusal(Reason.MALFORMED, "REPL_SNAPSHOT: offset past the end")
    head = msgpack.packb({"lsn": lsn, "size": len(body)})
    return Writer().bytes32(head).bytes32(body[offset:offset + max_bytes]).getvalue()


async def resync_from(srv: Any, client: Any, lead: tuple[str, str, int]) -> None:
    """Replace this replica's state and log with the leader's snapshot (a diverged or too-old replica)."""
    parts: list[bytes] = []
    offset, lsn, size = 0, 0, None
    while size is None or offset < size:
        data = await client._call_vo(Op.REPL_SNAPSHOT, srv.cluster.node,
                                     msgpack.packb({"epoch": lead[2], "offset": offset, "max": MAX_FETCH}))
        head, part = parse_answer(data)
        if size is not None and head["lsn"] != lsn:
            offset, parts, size = 0, [], None  # the leader made a new dump meanwhile: start over
            continue
        lsn, size = head["lsn"], head["size"]
        parts.append(part)
        offset += len(part)
    body = b"".join(parts)
    srv.reset_state(lsn, body)
    log.warning("resynchronised from %s: snapshot at LSN %d (%d bytes)", lead[1], lsn, len(body))


def parse_answer(data: bytes) -> tuple[dict, bytes]:
    r = Reader(data)
    head = msgpack.unpackb(r.bytes32(), raw=False)
    return head, r.bytes32()

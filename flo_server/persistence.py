"""Durability: the on-disk journal (group commit, fsync policy), snapshots, recovery, operator commands.

Data directory layout::

    DIR/LOCK                               flock'd by the running server
    DIR/log/NNNNNNNNNNNNNNNNNNNN.seg       the append-only log (flo_core.log), named by first LSN
    DIR/snap/NNNNNNNNNNNNNNNNNNNN.snap     snapshots, named by the LSN they include

A log record's payload is msgpack ``[kind, args]`` (the ``srv.write`` call);
replay calls the same applier with the same args (docs/architecture.md §3).

fsync policies:

* ``always``  — the writes of one loop iteration go to the file with one
  ``write``, then one ``fdatasync`` on the log's syncer thread; answers of those writes
  are held by the connection's ``flo_core.output.Output`` (listed in the
  writer's ``holders``) until it is done. An acknowledged write survives kill -9 and power loss.
* ``everysec`` — same single write per iteration, and answers leave after it
  (so kill -9 loses nothing acknowledged); ``fdatasync`` once a second on the
  syncer thread: a power loss risks about a second.
* ``no`` — as ``everysec`` without the fsync: the OS decides when to flush.

A failing disk (ENOSPC, EIO on a write, fdatasync or rotation) stops new writes with a
refusal (``StorageFailure.refusal``) while reads go on; the records already taken stay
pending and are retried with backoff (10 ms doubling to 1 s) until the disk takes them, then
their answers leave and writes resume (docs/reliability.md, "Disk full and I/O errors").

A snapshot (every store at one LSN, streamed in bounded checksummed frames: flo_server.snapshots) is taken after
``snapshot_bytes`` of log - and at least as many bytes as the last snapshot
has, so snapshot work stays proportional to what is written (Redis rewrites its
AOF on the same rule, auto-aof-rewrite-percentage 100) - and on clean shutdown:
temp file + fsync + rename,
the newest two are kept, segments wholly below the older one are deleted.
Start-up = newest valid snapshot (every frame's CRC and the trailer checked before any store is
touched) + replay of the log after it.

Example (inside a running loop):
    >>> from flo_server.persistence import open_journal    # doctest: +SKIP
    >>> srv.journal = open_journal(srv, srv.config)         # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import logging
import gc
import os
import io
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import click
import msgpack

from flo_core.core import now_ms
from flo_core.errors import FloError, Refusal
from flo_core.log import (
    DEFAULT_SEGMENT_BYTES,
    RECORD_HEADER,
    LogCorruption,
    LogReader,
    LogWriter,
    fsync_dir,
    list_segments,
    repair_log,
)
from flo_core.output import release_held
from flo_core.spec import Reason
from flo_server import faults
from flo_server.snapshots import SnapshotFile, load_store, write_stores, write_v1

__all__ = [
    "DiskJournal",
    "RecoveryError",
    "StorageFailure",
    "StorageRefusal",
    "Recovery",
    "open_journal",
    "recover",
    "check_log_cmd",
    "dump_log_cmd",
    "read_snapshot",
    "write_snapshot",
    "load_snapshot",
    "list_snapshots",
]

log = logging.getLogger("flo_server.persistence")

POLICIES = ("always", "everysec", "no")
RECORD_WRITE = 1  # log record kind: payload is msgpack [kind, args]
SNAPSHOTS_KEPT = 2
EVERYSEC_S = 1.0
RETRY_FIRST_S = 0.01  # a failing log is retried after 10 ms, then twice as long each time ...
RETRY_MAX_S = 1.0  # ... up to once a second
MIN_SEGMENT_BYTES = 64 * 1024


class RecoveryError(FloError):
    """Start-up cannot proceed (corrupt log, data dir in use, unknown record kind)."""


def log_dir(data_dir: str) -> str:
    return os.path.join(data_dir, "log")


def snap_dir(data_dir: str) -> str:
    return os.path.join(data_dir, "snap")


def segment_bytes_for(snapshot_bytes: int) -> int:
    """Segments about half the snapshot interval, so a snapshot frees whole segments."""
    return max(MIN_SEGMENT_BYTES, min(DEFAULT_SEGMENT_BYTES, snapshot_bytes // 2))


# One packer, reused: three times faster than msgpack.packb per record. Loop thread only.
_pack = msgpack.Packer(use_bin_type=True).pack


def pack_record(kind: str, args: tuple | list) -> bytes:
    return _pack((kind, args))


def unpack_record(payload: bytes) -> tuple[str, list]:
    kind, args = msgpack.unpackb(payload, raw=False, strict_map_key=False)
    return kind, args


# --- snapshots ---------------------------------------------------------------


def list_snapshots(data_dir: str) -> list[tuple[int, str]]:
    """``[(lsn, path)]`` of snapshot files, newest first."""
    d = snap_dir(data_dir)
    try:
        names = os.listdir(d)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        stem, ext = os.path.splitext(name)
        if ext == ".snap" and len(stem) == 20 and stem.isdigit():
            out.append((int(stem), os.path.join(d, name)))
    out.sort(reverse=True)
    return out


def _wait_snapshot_child(pid: int) -> None:
    """Reap the snapshot child (in a worker thread); raise if it failed."""
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if 0 < code < 126:  # the child exits with the errno of an OSError
        raise OSError(code, f"{os.strerror(code)} (in snapshot process {pid})")
    if code != 0:
        raise RuntimeError(f"snapshot process {pid} exited with {code}")


def _newest_snapshot_size(data_dir: str, snapshots: list[tuple[int, str]] | None = None) -> int:
    """Bytes of the newest snapshot file (0 when there is none)."""
    snapshots = list_snapshots(data_dir) if snapshots is None else snapshots
    if not snapshots:
        return 0
    try:
        return os.path.getsize(max(snapshots)[1])
    except OSError:
        return 0


def write_snapshot(data_dir: str, lsn: int, stores: dict[str, Any], keep: int = SNAPSHOTS_KEPT) -> str:
    """Stream ``stores`` (name -> store) durably as the snapshot at ``lsn``; prune to the newest ``keep``.

    Runs in a forked child (or in the loop at shutdown): the stores must not change meanwhile.
    Rows go to the file about 1 MiB at a time (flo_server.snapshots), so no second copy of the
    stores is built. See :func:`_install_snapshot` for what a crash or a failure leaves.
    """
    def fill(f: Any) -> None:
        write_stores(f, lsn, stores, after_store=_once(lambda: _halfway(f)))  # "half": after the first store

    return _install_snapshot(data_dir, lsn, fill, keep)


def _halfway(f: Any) -> None:
    """The fault points of a snapshot's temp file half written (flo_server.faults)."""
    if faults.ACTIVE:
        f.flush()
        faults.crash("snap.mid_file")
        faults.fault("snap.write")


def _once(fn: Callable[[], None]) -> Callable[[], None]:
    done = False

    def call() -> None:
        nonlocal done
        if not done:
            done = True
            fn()
    return call


def _write_bytes(f: Any, data: bytes) -> None:
    half = len(data) // 2
    f.write(memoryview(data)[:half])
    _halfway(f)
    f.write(memoryview(data)[half:])


class _WritebackAsWritten:
    """A snapshot's temp file that starts the kernel's writeback of every ``every`` bytes written.

    Why: written whole and then fsynced, a 400 MB snapshot's data went to disk in one burst, and
    ext4's journal commit waited for it (data=ordered); every metadata call of the serving loop -
    the log's fallocate of its zero room - waited behind that commit, up to 86-127 ms (4 KiB SETs
    under perf trace). Redis writes its RDB and AOF rewrites the same way, fsyncing as it goes.
    """

    def __init__(self, f: Any, every: int = 8 * 1024 * 1024) -> None:
        self._f, self._every, self._pending, self._done = f, every, 0, 0

    def write(self, data: Any) -> int:
        n = self._f.write(data)
        self._pending += len(data)
        if self._pending >= self._every:
            self._f.flush()
            # DONTNEED on dirty pages starts their writeback without waiting for it
            os.posix_fadvise(self._f.fileno(), self._done, self._pending, os.POSIX_FADV_DONTNEED)
            self._done += self._pending
            self._pending = 0
        return n

    def flush(self) -> None:
        self._f.flush()

    def fileno(self) -> int:
        return self._f.fileno()


def _install_snapshot(data_dir: str, lsn: int, fill: Callable[[Any], None], keep: int = SNAPSHOTS_KEPT) -> str:
    """``fill(file)`` writes the snapshot at ``lsn``: temp file + fsync + rename + directory fsync,
    so a crash leaves either the old set of snapshots or the new one, never half a file.
    A failure (disk full, I/O error) removes the temp file and raises: the log and the
    snapshots already in place are untouched (the log is cut only after a snapshot is in place).
    """
    d = snap_dir(data_dir)
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, f"{lsn:020d}.snap")
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb", buffering=1 << 20) as f:
            fill(_WritebackAsWritten(f))
            f.flush()
            if faults.ACTIVE:
                faults.crash("snap.before_fsync")
            os.fsync(f.fileno())
        if faults.ACTIVE:
            faults.crash("snap.before_rename")
            faults.fault("snap.rename")
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass  # not created, or already gone
        raise
    if faults.ACTIVE:
        faults.crash("snap.after_rename")
    fsync_dir(d)
    if faults.ACTIVE:
        faults.crash("snap.before_prune")
    for _, old in list_snapshots(data_dir)[keep:]:
        os.unlink(old)
    for name in os.listdir(d):
        if name.endswith(".tmp"):  # left by a crash mid-snapshot
            os.unlink(os.path.join(d, name))
    return path


def read_snapshot(path: str) -> tuple[int, dict]:
    """``(lsn, {store name: state})`` of a snapshot file, decoded whole (either format);
    ``ValueError`` if it is damaged. Start-up streams it instead (:func:`newest_valid_snapshot`)."""
    snap = SnapshotFile.open(path)
    try:
        return snap.lsn, snap.states()
    except (TypeError, KeyError, IndexError) as e:  # CRCs matched: written by another program or a bug
        raise ValueError(f"does not decode ({type(e).__name__}: {e})") from None


def newest_valid_snapshot(data_dir: str) -> tuple[int, SnapshotFile | None, str | None]:
    """``(lsn, snapshot, path)`` of the newest snapshot whose frames all check out; ``(0, None, None)`` if none."""
    for lsn, path in list_snapshots(data_dir):
        try:
            snap = SnapshotFile.open(path)
        except (OSError, ValueError, msgpack.UnpackException) as e:
            log.warning("snapshot %s is unusable (%s); trying an older one", path, e)
            continue
        return snap.lsn, snap, path
    return 0, None, None


def load_snapshot(srv: Any, snap: SnapshotFile) -> None:
    """Load a checked snapshot into ``srv.stores``, each store fed its rows as they are read."""
    name = None
    try:
        for name, state in snap.dumps():
            store = srv.stores.get(name) if isinstance(name, str) else None
            if store is None:
                raise RecoveryError(f"snapshot {snap.path} holds store {name!r} which this server does not have")
            load_store(store, state)
    except RecoveryError:
        raise
    except Exception as e:  # noqa: BLE001 - its CRCs matched: written by another version or a bug
        raise RecoveryError(f"snapshot {snap.path}: store {name!r} does not load "
                            f"({type(e).__name__}: {e})") from None


# --- recovery ----------------------------------------------------------------


@dataclass
class Recovery:
    """What start-up found and did."""

    snapshot_lsn: int = 0
    snapshot_path: str | None = None
    replayed: int = 0
    replay_bytes: int = 0
    last_lsn: int = 0
    torn: tuple | None = None
    repaired: tuple | None = None
    apply_errors: int = 0
    seconds: float = 0.0
    kinds: Counter = field(default_factory=Counter)


def _corruption_message(data_dir: str, e: LogCorruption) -> str:
    return (f"{e}. Start-up stopped so no record after it is silently dropped. To cut the log at that point "
            f"(losing every record from it on) run `flo-server check-log {data_dir} --repair`, "
            f"or start with --repair-log.")


def recover(srv: Any, data_dir: str, *, repair: bool = False) -> Recovery:
    """Load the newest valid snapshot into ``srv.stores`` and replay the log after it.

    Replays through the same appliers as live writes. Returns a :class:`Recovery`;
    raises :class:`RecoveryError` on mid-log corruption (unless ``repair``) or a
    record kind no applier knows.
    """
    from flo_server.journal import APPLIERS

    t0 = time.monotonic()
    rec = Recovery()
    lsn, snap, path = newest_valid_snapshot(data_dir)
    if snap is not None:
        load_snapshot(srv, snap)
        rec.snapshot_lsn, rec.snapshot_path = lsn, path
    reader = LogReader(log_dir(data_dir), lsn + 1)
    segs = reader.segments
    if lsn and segs and segs[0][0] > lsn + 1:
        log.error("log starts at LSN %d but the snapshot covers only up to %d: records in between are missing",
                  segs[0][0], lsn)
    appliers = APPLIERS
    kinds: dict[str, int] = {}
    replayed = replay_bytes = apply_errors = 0
    try:
        for rlsn, rkind, payload in reader:
            if rkind != RECORD_WRITE:
                raise RecoveryError(f"record {rlsn} in {reader.path} has unknown record type {rkind}")
            try:
                kind, args = msgpack.unpackb(payload, raw=False, strict_map_key=False)
                fn = appliers.get(kind)
            except Exception as e:  # noqa: BLE001 - its CRC matched: written by another program or a bug
                raise RecoveryError(f"record {rlsn} in {reader.path} at offset {reader.offset} does not decode "
                                    f"({type(e).__name__}: {e}); `flo-server check-log {data_dir}` lists it") from None
            if fn is None:
                raise RecoveryError(f"record {rlsn} in {reader.path} has kind {kind!r} which no applier handles "
                                    f"(written by a newer flo-server?)")
            try:
                fn(srv, rlsn, *args)
            except Exception as e:  # noqa: BLE001 - the same refusal happened live; state matches it
                apply_errors += 1
                log.debug("replay of record %d (%s) raised %r, as it did live", rlsn, kind, e)
            replayed += 1
            replay_bytes += len(payload)
            kinds[kind] = kinds.get(kind, 0) + 1
    except LogCorruption as e:
        if not repair:
            raise RecoveryError(_corruption_message(data_dir, e)) from e
        removed = repair_log(log_dir(data_dir), e.path, e.offset)
        log.warning("log repaired: cut %s at offset %d (%s); removed %d later segment(s)",
                    e.path, e.offset, e.reason, len(removed))
        rec.repaired = (e.path, e.offset, e.reason)
    rec.replayed, rec.apply_errors, rec.kinds = replayed, apply_errors, Counter(kinds)
    rec.replay_bytes = replay_bytes + RECORD_HEADER * replayed
    rec.torn = reader.torn
    rec.last_lsn = max(reader.last_lsn, lsn)
    rec.seconds = time.monotonic() - t0
    return rec


# --- the journal -------------------------------------------------------------


def _exit_process(exc: BaseException) -> None:
    """Default reaction when records the log took are gone (after a failed fdatasync the
    kernel dropped their pages, ``LogWriter.rewrite_unsynced``): stop at once.

    Acknowledging later writes would be a lie; start-up recovers what the log holds.
    """
    logging.shutdown()
    os._exit(70)


class DiskJournal:
    """The write path's log on disk: same interface as ``journal.MemoryJournal``.

    ``append(kind, args) -> lsn`` copies the record into the writer's pending
    buffer and, the first time in a loop iteration, schedules one flush with
    ``loop.call_soon``; under ``always`` that flush is followed by one
    ``fdatasync`` on the syncer thread (flo_core.log). Answers may leave once the
    writer's ``safe_lsn`` covers them (synced under ``always``, written otherwise:
    so a kill -9 never loses an acknowledged write); an Output holding answers lists
    itself in ``writer.holders`` and is released after each write / fsync
    (:func:`flo_core.output.release_held`).

    Example:
        >>> j = DiskJournal(srv, "./data", policy="always")    # doctest: +SKIP
        >>> lsn = j.append("kv.set", (now, "default", b"k", b"v", 0))  # doctest: +SKIP
    """

    durable = True

    def __init__(
        self,
        srv: Any,
        data_dir: str,
        *,
        policy: str = "everysec",
        snapshot_bytes: int = 64 * 1024 * 1024,
        segment_bytes: int | None = None,
        next_lsn: int = 1,
        snapshot_lsn: int = 0,
        bytes_since_snapshot: int = 0,
        repair: bool = False,
        loop: asyncio.AbstractEventLoop | None = None,
        on_fatal: Callable[[BaseException], None] = _exit_process,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"fsync policy must be one of {POLICIES}, not {policy!r}")
        self.srv = srv
        self.data_dir = data_dir
        self.policy = policy
        self._always = policy == "always"
        self.snapshot_bytes = snapshot_bytes
        self.loop = loop or asyncio.get_running_loop()
        self.on_fatal = on_fatal
        self.writer = LogWriter(log_dir(data_dir), next_lsn=next_lsn,
                                segment_bytes=segment_bytes or segment_bytes_for(snapshot_bytes), repair=repair)
        self.writer.ack_on_sync = self._always  # what Output and _run_after_sync wait for
        self.writer.zero_fill = self._always  # zeros on disk save fsync=always a device flush per sync
        if self.writer.truncated:
            p, off, n = self.writer.truncated
            log.warning("torn log tail: cut %d byte(s) from %s at offset %d (writes never acknowledged as durable)",
                        n, p, off)
        self.snapshot_lsn = snapshot_lsn
        self._snap_base = 0
        self.bytes_since_snapshot = bytes_since_snapshot
        self.last_snapshot_size = _newest_snapshot_size(data_dir)
        self._failed: StorageFailure | None = None
        self._closed = False
        self._fenced: str | None = None  # why writes are refused while this cluster member does not lead
        self._retry: asyncio.TimerHandle | None = None
        self._retry_syncing = False  # a retry's fdatasync is in flight
        self.storage_failures = 0  # times the log started failing
        self.storage_retries = 0
        self.snapshot_failures = 0
        self.last_snapshot_error: str | None = None
        self._snapshot_inflight: asyncio.Future | None = None
        # fdatasync runs on the log's own C thread (flo_core.log: the syncer), which
        # never takes the GIL and says it is done through an eventfd the loop watches.
        self._syncer_fd = self.writer.start_syncer()
        self.loop.add_reader(self._syncer_fd, self._synced)
        self._snap_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="flo-snapshot")
        self._tick: asyncio.TimerHandle | None = None
        if policy != "always":
            self._tick = self.loop.call_later(EVERYSEC_S, self._every_second)
        # counters for stats / bench
        self.flushes = 0
        self.syncs = 0
        self.snapshots = 0
        self.last_snapshot_seconds = 0.0
        self.last_snapshot_at = 0.0  # wall-clock time of the last snapshot in place (LASTSAVE)
        self._snapshot_again = False  # BGSAVE SCHEDULE during a snapshot: one more once it is done

    # --- the interface the write path uses -------------------------------------------

    @property
    def last_lsn(self) -> int:
        return self.writer.last_lsn

    # The request loops in C read these off the writer (``accepting``) instead of asking us.
    @property
    def failed(self) -> StorageFailure | None:
        return self._failed

    @failed.setter
    def failed(self, exc: StorageFailure | None) -> None:
        self._failed = exc
        self.writer.accepting = exc is None and not self._closed and self._fenced is None

    @property
    def closed(self) -> bool:
        return self._closed

    @closed.setter
    def closed(self, value: bool) -> None:
        self._closed = value
        self.writer.accepting = self._failed is None and not value and self._fenced is None

    # --- the cluster's write gate (flo_server.cluster.node) --------------------------------

    @property
    def fenced(self) -> str | None:
        """Why writes are refused while this cluster member may not take them, or None."""
        return self._fenced

    def fence(self, why: str) -> None:
        """Refuse writes (WRITES_STOPPED, ``why``) until :meth:`unfence`: this member does not lead its shard."""
        self._fenced = why
        self.writer.accepting = False
        self.writer.fence_at_ms = 0

    def unfence(self, deadline: float) -> None:
        """Take writes until ``deadline`` (monotonic), which :meth:`extend_fence` moves while the lease holds."""
        self._fenced = None
        self.writer.accepting = self._failed is None and not self._closed
        self.extend_fence(deadline)

    def extend_fence(self, deadline: float) -> None:
        # On the clock the request loops read, so writes stop at the lease's end by themselves, even
        # when this process was stopped past it and a request is served before any timer runs.
        self.writer.fence_at_ms = now_ms() + int((deadline - time.monotonic()) * 1000)

    def release_held(self) -> None:
        """Send the answers the log (and, with ``--sync-replicas``, the replicas) now cover."""
        release_held(self.writer)

    def flush_now(self) -> None:
        """Write (and under ``always`` fsync) what is appended now, not at the end of the loop iteration."""
        self._flush_now()

    @property
    def bytes_since_snapshot(self) -> int:
        """Log bytes appended since the last snapshot began (the writer counts every append)."""
        return self.writer.bytes_appended - self._snap_base

    @bytes_since_snapshot.setter
    def bytes_since_snapshot(self, n: int) -> None:
        self._snap_base = self.writer.bytes_appended - n

    def append(self, kind: str, args: tuple | list) -> int:
        """Log ``(kind, args)``; returns its LSN. Refuses (WRITES_STOPPED) while the log fails or is closed."""
        w = self.writer
        if not w.accepting or w.fence_at_ms:  # (accepting: not failed, closed or fenced; the setters keep it)
            self._refuse_if_stopped()
        payload = pack_record(kind, args)
        try:
            lsn = w.append(RECORD_WRITE, payload)
        except ValueError as e:
            raise Refusal(Reason.FIELD_TOO_LONG, str(e)) from None
        self.flush_soon()
        return lsn

    def _refuse_if_stopped(self) -> None:
        """Why a write is refused now (the log failed, this member is fenced, the log is closed, the
        leader's lease ran out), raised; nothing when it may go on."""
        if self.failed is not None:
            raise self.failed.refusal()
        if self._fenced is not None:
            raise Refusal(Reason.WRITES_STOPPED, f"writes stopped: {self._fenced}")
        if self.closed:
            raise Refusal(Reason.WRITES_STOPPED, "writes stopped: the log is closed (the server is stopping)")
        if self.writer.fence_at_ms and now_ms() >= self.writer.fence_at_ms:
            raise Refusal(Reason.WRITES_STOPPED, "writes stopped: this leader's lease has run out")

    def raw_writer(self) -> Any:
        """The LogWriter for the C request loops (ServerCore, RespCore), or None.

        A core appends RECORD_WRITE records (msgpack ``[kind, args]``, the same bytes
        :func:`pack_record` makes) with ``LogWriter.append_c`` while ``writer.accepting``
        holds, and calls :meth:`flush_soon` after a read batch that appended some when
        ``writer.flush_scheduled`` is not set yet. Answers waiting for the log list their
        Output in ``writer.holders`` (flo_core.output).
        """
        return self.writer

    def flush_soon(self) -> None:
        """Records were appended: queue the loop's one flush of this iteration (once)."""
        if not self.writer.flush_scheduled:
            self.writer.flush_scheduled = True
            self.loop.call_soon(self._flush_now)

    # --- group commit --------------------------------------------------------------------

    def _flush_now(self) -> None:
        self.writer.flush_scheduled = False
        if self.closed or self.failed is not None:
            return  # while the log fails, _retry_storage does the writing
        try:
            if self.writer.flush():
                self.flushes += 1
        except OSError as e:
            self._storage_failed("write", e)
            return
        if faults.ACTIVE:
            faults.crash("group.after_flush")
        if self._always:
            self._kick_sync()
        else:
            self._run_after_sync()
            if self.writer.rotation_due:
                self._kick_sync()  # a full segment: sync it off the loop before it rotates
        if (self.bytes_since_snapshot >= max(self.snapshot_bytes, self.last_snapshot_size)
                and self._snapshot_inflight is None):
            self._start_snapshot()

    def _kick_sync(self) -> None:
        if self.closed:
            return
        if not self.writer.request_sync():  # a request made while one fdatasync runs is served by the next
            self._run_after_sync()  # nothing left to sync

    def _synced(self) -> None:
        """The syncer's eventfd fired: one or more fdatasyncs finished."""
        err = self.writer.collect()
        if err:
            self._retry_syncing = False
            self._storage_failed("fsync", OSError(err, os.strerror(err), self.writer.segment_path))
            return
        self.syncs += 1
        if faults.ACTIVE:
            faults.crash("group.after_sync")
        if self._retry_syncing and self.writer.synced_lsn >= self.writer.flushed_lsn:
            self._retry_syncing = False
            self._storage_recovered()
        self._run_after_sync()

    def _run_after_sync(self) -> None:
        release_held(self.writer)

    def _every_second(self) -> None:
        self._tick = None
        if self.closed:
            return
        if self.failed is None and self.policy == "everysec":
            self._kick_sync()
        self._tick = self.loop.call_later(EVERYSEC_S, self._every_second)

    # --- a failing disk (ENOSPC, EIO): refuse new writes, keep and retry the records held ---

    def _storage_failed(self, what: str, exc: OSError) -> None:
        """A log write, fdatasync or rotation failed: stop taking writes and retry with backoff.

        Nothing is lost or acknowledged early: records that were appended (and applied) stay
        pending in the writer - or written but unsynced in the file - and their answers stay
        held (flo_core.output) until a retry gets them into the log. One warning line when
        the trouble starts; retries are counted, not logged.
        """
        if self.failed is None:
            self.failed = StorageFailure(what, exc)
            self.storage_failures += 1
            log.warning("%s; %d record(s) held for the retry", self.failed,
                        self.writer.last_lsn - self.writer.synced_lsn if self._always
                        else self.writer.last_lsn - self.writer.flushed_lsn)
        else:
            self.failed.again(what, exc)
        if self._retry is None and not self.closed:
            delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** min(self.failed.retries, 10))
            self._retry = self.loop.call_later(delay, self._retry_storage)

    def _retry_storage(self) -> None:
        self._retry = None
        if self.closed or self.failed is None:
            return
        self.failed.retries += 1
        self.storage_retries += 1
        w = self.writer
        try:
            w.rewrite_unsynced()  # after a failed fdatasync: dirty those pages again (no-op otherwise)
            w.flush()
        except LogCorruption as e:
            log.critical("%s; stopping the server (acknowledged writes must be durable)", e)
            self.on_fatal(e)
            return
        except OSError as e:
            self._storage_failed("write", e)
            return
        if w.flushed_lsn > w.synced_lsn and (self._always or self.failed.what == "fsync"):
            self._retry_syncing = True
            if w.request_sync():
                return  # _synced finishes the recovery (or fails again)
            self._retry_syncing = False
        self._storage_recovered()

    def _storage_recovered(self) -> None:
        f = self.failed
        self.failed = None
        if f is not None:
            log.warning("log %s works again after %.1fs and %d retr%s; writes accepted", f.what,
                        time.monotonic() - f.since, f.retries, "y" if f.retries == 1 else "ies")
        self._run_after_sync()  # answers held for the records the retry wrote

    # --- snapshots -----------------------------------------------------------------------

    def _snapshot_bytes(self) -> tuple[int, bytes]:
        # Called between requests: every appended record has been applied.
        lsn = self.writer.last_lsn
        out = io.BytesIO()
        write_stores(out, lsn, self.srv.stores)
        return lsn, out.getvalue()

    def _start_snapshot(self) -> None:
        """Snapshot in a forked child (as Redis's BGSAVE): copy-on-write freezes the stores at
        ``lsn`` and the loop goes on serving; dumping 1M keys in-loop would stall it for seconds."""
        t0 = time.monotonic()
        lsn = self.writer.last_lsn
        self.bytes_since_snapshot = 0
        try:
            pid = os.fork()
        except OSError as e:
            log.warning("cannot fork for a snapshot (%s); taking it in-loop", e)
            lsn, data = self._snapshot_bytes()  # packed in-loop (the stores change once it returns)
            fut = self.loop.run_in_executor(self._snap_pool, _install_snapshot, self.data_dir, lsn,
                                            lambda f: _write_bytes(f, data))
        else:
            if pid == 0:  # the child: write the snapshot, then leave without any cleanup of the parent's
                code = 1
                try:
                    # Not niced: the parent pays a copy-on-write fault for each page it touches while the
                    # child lives, so a child that ends soon costs it least. At nice 10 on the serving
                    # core, a 400 MB snapshot took 7.6 s instead of 0.8 s, and 4 KiB SETs cost 22 µs
                    # instead of 12 µs each meanwhile (bench, kv.set K=1 4 KiB).
                    gc.disable()  # fewer copied pages
                    write_snapshot(self.data_dir, lsn, self.srv.stores)
                    code = 0
                except BaseException as e:  # noqa: BLE001 - told to the parent through stderr and the exit code
                    os.write(2, f"flo-server snapshot process: {type(e).__name__}: {e}\n".encode())
                    code = min(e.errno, 125) if isinstance(e, OSError) and e.errno else 126
                finally:
                    os._exit(code)
            fut = self.loop.run_in_executor(self._snap_pool, _wait_snapshot_child, pid)
        self._snapshot_inflight = fut
        fut.add_done_callback(lambda f: self._snapshot_done(f, lsn, t0))

    def _snapshot_done(self, fut: asyncio.Future, lsn: int, t0: float) -> None:
        self._snapshot_inflight = None
        if fut.cancelled():
            return
        exc = fut.exception()
        if exc is not None:
            # Not fatal: the log still holds everything; try again after the next interval.
            self.snapshot_failures += 1
            self.last_snapshot_error = str(exc)
            log.error("snapshot at LSN %d failed: %s; the log and the older snapshots are untouched", lsn, exc)
            self._scheduled_snapshot()
            return
        self.last_snapshot_error = None
        floor = self._snapshot_installed(lsn)
        # The old segments go on the snapshot thread: on a disk mounted with discard, an unlink
        # waited up to 13 ms for the device, and the loop with it (4 KiB SETs, perf trace).
        # The snapshot counts as in progress until they are gone.
        drop = self.loop.run_in_executor(self._snap_pool, self._drop_segments, floor)
        self._snapshot_inflight = drop
        drop.add_done_callback(lambda f: self._segments_dropped(f, lsn, t0))

    def _segments_dropped(self, fut: asyncio.Future, lsn: int, t0: float) -> None:
        self._snapshot_inflight = None
        removed = [] if fut.cancelled() else fut.result()
        self._snapshot_finished(lsn, time.monotonic() - t0, removed)
        self._scheduled_snapshot()

    def _scheduled_snapshot(self) -> None:
        if self._snapshot_again and not self.closed:
            self._snapshot_again = False
            self.snapshot_in_background()

    def _after_snapshot(self, lsn: int, seconds: float) -> None:
        """The synchronous tail of a snapshot (snapshot_now): old segments dropped on this thread."""
        removed = self._drop_segments(self._snapshot_installed(lsn))
        self._snapshot_finished(lsn, seconds, removed)

    def _snapshot_installed(self, lsn: int) -> int:
        """Note the snapshot at ``lsn`` now in place; returns the LSN the log must reach back to."""
        self.snapshot_lsn = lsn
        kept = list_snapshots(self.data_dir)
        self.last_snapshot_size = _newest_snapshot_size(self.data_dir, kept)
        if faults.ACTIVE:
            faults.crash("snap.before_truncate")
        # Keep the log back to the oldest kept snapshot, so it can stand in if the newest is damaged.
        return min((s for s, _ in kept), default=lsn)

    def _drop_segments(self, floor: int) -> list:
        """Remove the log segments wholly below ``floor``; a failure is logged (the log stays longer)."""
        if self.closed:
            return []
        try:
            return self.writer.drop_segments_below(floor + 1)
        except OSError as e:
            log.warning("old log segments below LSN %d not removed (%s); the next snapshot tries again", floor, e)
            return []

    def _snapshot_finished(self, lsn: int, seconds: float, removed: list) -> None:
        self.snapshots += 1
        self.last_snapshot_seconds = seconds
        self.last_snapshot_at = time.time()
        log.info("snapshot at LSN %d in %.3fs; %d old segment(s) removed", lsn, seconds, len(removed))

    @property
    def snapshot_in_progress(self) -> bool:
        """A snapshot is being written, or the old segments behind it removed."""
        return self._snapshot_inflight is not None

    @property
    def last_save_time(self) -> float:
        """Unix time of the last snapshot put in place, the server's start until there is one (LASTSAVE)."""
        return self.last_snapshot_at or self.srv.started_at

    def snapshot_in_background(self, again: bool = False) -> str:
        """Start a snapshot now, as Redis's BGSAVE, instead of when the log has grown enough.

        Returns ``"started"``; ``"current"`` when nothing was written since the last snapshot;
        ``"running"`` when one is in progress (that one stands), or with ``again`` ``"scheduled"``:
        another starts once it is done (BGSAVE SCHEDULE). Called between requests, like the
        snapshot a flush starts: every appended record has been applied.

        Example:
            >>> srv.journal.snapshot_in_background()   # doctest: +SKIP
            'started'
        """
        if self.closed:
            raise RuntimeError("the log is closed")
        if self.snapshot_in_progress:
            if not again:
                return "running"
            self._snapshot_again = True
            return "scheduled"
        if self.snapshot_lsn == self.writer.last_lsn:
            return "current"
        self._start_snapshot()
        return "started"

    def snapshot_now(self) -> str | None:
        """Take a snapshot synchronously (clean shutdown, tests); returns its path or None if nothing changed."""
        if self.snapshot_lsn == self.writer.last_lsn:
            return None
        t0 = time.monotonic()
        lsn = self.writer.last_lsn  # between requests: every appended record has been applied
        path = write_snapshot(self.data_dir, lsn, self.srv.stores)
        self.bytes_since_snapshot = 0
        self._after_snapshot(lsn, time.monotonic() - t0)
        return path

    # --- lifecycle -----------------------------------------------------------------------

    def stats(self) -> dict:
        w = self.writer
        return {
            "policy": self.policy, "last_lsn": w.last_lsn, "flushed_lsn": w.flushed_lsn, "synced_lsn": w.synced_lsn,
            "bytes_appended": w.bytes_appended, "flushes": self.flushes, "syncs": self.syncs,
            "snapshots": self.snapshots, "snapshot_lsn": self.snapshot_lsn,
            "bytes_since_snapshot": self.bytes_since_snapshot, "last_snapshot_seconds": self.last_snapshot_seconds,
            "last_snapshot_size": self.last_snapshot_size,
            "segments": len(w.segments()), "failed": str(self.failed) if self.failed else None,
            "storage_error": str(self.failed) if self.failed else None,
            "storage_failing_seconds": round(time.monotonic() - self.failed.since, 3) if self.failed else 0,
            "storage_failures": self.storage_failures, "storage_retries": self.storage_retries,
            "snapshot_failures": self.snapshot_failures, "last_snapshot_error": self.last_snapshot_error,
            "snapshot_in_progress": self.snapshot_in_progress,
            "last_save_time": self.last_save_time,
            "snapshot_scheduled": self._snapshot_again,
        }

    def close(self, snapshot: bool = True) -> None:
        """Clean shutdown: flush, snapshot (unless told not to), fsync, close. Waits for a running fsync/snapshot."""
        if self.closed:
            return
        for handle in (self._tick, self._retry):
            if handle is not None:
                handle.cancel()
        self._tick = self._retry = None
        self._snap_pool.shutdown(wait=True)
        try:
            if self.failed is not None:
                self.writer.rewrite_unsynced()  # one last try at what the retries did not get through
            self.writer.flush()
            if faults.ACTIVE:
                faults.crash("stop.before_snapshot")
            if self.failed is None and snapshot:
                self.snapshot_now()
            if faults.ACTIVE:
                faults.crash("stop.before_close")
        except OSError as e:
            log.error("final flush/snapshot failed: %s", e)
        except Exception:  # noqa: BLE001 - still close the log below
            log.exception("final flush/snapshot failed")
        self.closed = True
        self.loop.remove_reader(self._syncer_fd)
        try:
            self.writer.close()  # stops the syncer (waits for an fdatasync in flight), flush + fdatasync
        except OSError as e:
            dropped = self.writer.last_lsn - self.writer.flushed_lsn
            log.error("the log could not be written at shutdown (%s): %d record(s), never acknowledged, dropped",
                      e, dropped)
            try:
                self.writer.close(sync=False, discard=True)
            except OSError as e2:
                log.error("closing the log failed: %s", e2)
        finally:
            self._run_after_sync()
            _unlock(self)


class StorageRefusal(Refusal):
    """WRITES_STOPPED (status UNAVAILABLE, ran NO: a status and reason the public SDK knows)
    while the log fails; ``resp_message`` is what RESP clients get, Redis's own words."""

    def __init__(self, message: str, resp_message: str) -> None:
        super().__init__(Reason.WRITES_STOPPED, message)
        self.resp_message = resp_message


class StorageFailure(OSError):
    """The log cannot be written (``what``: write or fsync) since ``since`` (monotonic).

    >>> str(StorageFailure("write", OSError(28, "No space left on device")))
    'STORAGE_ERROR: log write failed: No space left on device (writes refused until it succeeds)'
    """

    def __init__(self, what: str, exc: OSError) -> None:
        super().__init__(exc.errno, exc.strerror or str(exc))
        self.what = what
        self.since = time.monotonic()
        self.retries = 0

    def again(self, what: str, exc: OSError) -> None:
        self.what, self.errno, self.strerror = what, exc.errno, exc.strerror or str(exc)

    def __str__(self) -> str:
        return f"STORAGE_ERROR: log {self.what} failed: {self.strerror} (writes refused until it succeeds)"

    def refusal(self) -> StorageRefusal:
        return StorageRefusal(str(self), f"MISCONF Errors writing to the AOF file: {self.strerror}")


RESYNC_MARK = "RESYNC"  # a replica's resynchronisation in progress: its data dir holds nothing to trust


def replace_with_snapshot(data_dir: str, lsn: int, body: bytes) -> None:
    """Make ``data_dir`` hold exactly one snapshot (``body``, at ``lsn``) and no log: a cluster
    replica's full resynchronisation. Until it is done a mark says so, and a start that finds the
    mark wipes the directory (:func:`discard_unfinished_resync`) rather than recover half of it."""
    mark = os.path.join(data_dir, RESYNC_MARK)
    with open(mark, "wb") as f:
        os.fsync(f.fileno())
    fsync_dir(data_dir)
    for _, path in list_snapshots(data_dir):
        os.unlink(path)
    for _, path in list_segments(log_dir(data_dir)):
        os.unlink(path)
    # The leader's body is a first-format snapshot (flo_server.cluster.replication): written as it came.
    _install_snapshot(data_dir, lsn, lambda f: write_v1(f, lsn, body))
    fsync_dir(log_dir(data_dir))
    os.unlink(mark)
    fsync_dir(data_dir)


def discard_unfinished_resync(data_dir: str) -> bool:
    """A resynchronisation was cut short (a crash): empty the data dir; True if it did."""
    if not os.path.exists(os.path.join(data_dir, RESYNC_MARK)):
        return False
    for _, path in list_snapshots(data_dir):
        os.unlink(path)
    for _, path in list_segments(log_dir(data_dir)):
        os.unlink(path)
    os.unlink(os.path.join(data_dir, RESYNC_MARK))
    log.warning("%s: an unfinished cluster resynchronisation was found; starting empty (the leader resends)",
                data_dir)
    return True


# --- data dir lock and wiring --------------------------------------------------


def _lock_data_dir(data_dir: str) -> int:
    os.makedirs(data_dir, exist_ok=True)
    fd = os.open(os.path.join(data_dir, "LOCK"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise RecoveryError(f"data dir {data_dir} is in use by another flo-server") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _unlock(journal: DiskJournal) -> None:
    fd = getattr(journal, "_lock_fd", -1)
    if fd >= 0:
        journal._lock_fd = -1
        os.close(fd)


def open_journal(srv: Any, cfg: Any) -> DiskJournal:
    """Lock the data dir, recover ``srv`` from it and return the journal for new writes.

    Called by ``Server.start()`` inside the running loop. Reads ``cfg.data_dir``,
    ``cfg.fsync``, ``cfg.snapshot_bytes`` and ``cfg.repair_log``. Raises :class:`RecoveryError` when start-up must stop.
    """
    data_dir = cfg.data_dir
    repair = bool(cfg.repair_log)
    lock_fd = _lock_data_dir(data_dir)
    try:
        discard_unfinished_resync(data_dir)
        rec = recover(srv, data_dir, repair=repair)
        journal = DiskJournal(
            srv, data_dir, policy=cfg.fsync, snapshot_bytes=cfg.snapshot_bytes, next_lsn=rec.last_lsn + 1,
            snapshot_lsn=rec.snapshot_lsn, bytes_since_snapshot=rec.replay_bytes, repair=repair,
        )
    except BaseException:
        os.close(lock_fd)
        raise
    journal._lock_fd = lock_fd
    log.info("recovered from %s: snapshot at LSN %d, %d record(s) replayed in %.3fs, last LSN %d%s",
             data_dir, rec.snapshot_lsn, rec.replayed, rec.seconds, journal.last_lsn,
             f", {rec.apply_errors} replayed record(s) refused as they were live" if rec.apply_errors else "")
    return journal


# --- operator commands ---------------------------------------------------------


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@click.command("check-log")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--repair", is_flag=True, help="cut the log at a corrupt record (every record from it on is lost)")
def check_log_cmd(data_dir: str, repair: bool) -> None:
    """Verify the log and snapshots of DATA_DIR and summarise them.

    Exit status 0 when start-up would succeed (a torn tail is only a warning),
    1 when the log is corrupt in the middle or a record cannot be decoded.

    Example: ``flo-server check-log ./data``
    """
    ok = True
    segs = list_segments(log_dir(data_dir))
    total = sum(os.path.getsize(p) for _, p in segs)
    click.echo(f"log: {log_dir(data_dir)}")
    click.echo(f"  segments: {len(segs)}, {_fmt_bytes(total)}"
               + (f" ({os.path.basename(segs[0][1])} .. {os.path.basename(segs[-1][1])})" if segs else ""))
    reader = LogReader(log_dir(data_dir))
    kinds: Counter = Counter()
    bad_payloads = 0
    corruption: LogCorruption | None = None
    try:
        for lsn, rkind, payload in reader:
            try:
                kind, _ = unpack_record(payload) if rkind == RECORD_WRITE else (f"<type {rkind}>", None)
                if not isinstance(kind, str):  # (sorting the summary would mix types and raise)
                    raise ValueError(f"record kind {kind!r} is not a name")
                kinds[kind] += 1
            except Exception as e:  # noqa: BLE001 - reported, not raised
                bad_payloads += 1
                click.echo(f"  record {lsn} at {reader.path}:{reader.offset} does not decode: {e}")
    except LogCorruption as e:
        corruption = e
    click.echo(f"  records: {reader.records}" + (f" (LSN {reader.first_lsn} .. {reader.last_lsn})" if reader.records else ""))
    if kinds:
        click.echo("  kinds: " + ", ".join(f"{k}={n}" for k, n in sorted(kinds.items())))
    if reader.torn:
        p, off, why = reader.torn
        click.echo(f"  tail: torn at {p} offset {off} ({why}; {os.path.getsize(p) - off} byte(s)); "
                   "start-up truncates it")
    elif corruption is None:
        click.echo("  tail: clean")
    if bad_payloads:
        ok = False
    if corruption is not None:
        click.echo(f"  CORRUPT: {corruption}")
        if repair:
            removed = repair_log(log_dir(data_dir), corruption.path, corruption.offset)
            click.echo(f"  repaired: cut {corruption.path} at offset {corruption.offset}, "
                       f"removed {len(removed)} later segment(s)")
        else:
            ok = False
            click.echo("  run again with --repair to cut the log there (records from that point on are lost)")
    snaps = list_snapshots(data_dir)
    click.echo(f"snapshots: {snap_dir(data_dir)}")
    usable = None
    for lsn, path in snaps:
        try:
            names = SnapshotFile.open(path).names
            status = "ok (" + ", ".join(sorted(str(n) for n in names)) + ")"
            usable = usable if usable is not None else lsn
        except (OSError, ValueError, msgpack.UnpackException) as e:
            status = f"UNUSABLE: {e}"
        click.echo(f"  {os.path.basename(path)}  LSN {lsn}  {_fmt_bytes(os.path.getsize(path))}  {status}")
    if not snaps:
        click.echo("  none")
    if ok:
        base = usable or 0
        after = sum(1 for _ in _lsns_after(data_dir, base)) if corruption is None or repair else 0
        click.echo(f"start-up would load {'snapshot at LSN ' + str(base) if usable else 'no snapshot'} "
                   f"and replay {after} record(s)")
        click.echo("OK")
    else:
        click.echo("NOT OK")
    sys.exit(0 if ok else 1)


def _lsns_after(data_dir: str, lsn: int) -> Iterator[int]:
    try:
        for rlsn, _, _ in LogReader(log_dir(data_dir), lsn + 1):
            yield rlsn
    except LogCorruption:
        return


@click.command("dump-log")
@click.argument("data_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--from-lsn", "from_lsn", type=int, default=1, show_default=True, help="first LSN to print")
@click.option("--limit", type=int, default=0, help="print at most this many records (0 = all)")
@click.option("--offsets", is_flag=True, help="also print segment file and byte offset of each record")
def dump_log_cmd(data_dir: str, from_lsn: int, limit: int, offsets: bool) -> None:
    """Print the records of DATA_DIR's log, one per line: ``LSN KIND ARGS``.

    Example: ``flo-server dump-log ./data --from-lsn 1000 --limit 20``
    """
    reader = LogReader(log_dir(data_dir), max(1, from_lsn))
    n = 0
    try:
        for lsn, rkind, payload in reader:
            if limit and n >= limit:
                break
            where = f"\t{os.path.basename(reader.path)}:{reader.offset}" if offsets else ""
            if rkind == RECORD_WRITE:
                try:
                    kind, args = unpack_record(payload)
                    click.echo(f"{lsn}\t{kind}\t{args!r}{where}")
                except Exception as e:  # noqa: BLE001 - show it and go on
                    click.echo(f"{lsn}\t<undecodable: {e}>\t{payload[:64]!r}{where}")
            else:
                click.echo(f"{lsn}\t<type {rkind}>\t{payload[:64]!r}{where}")
            n += 1
    except LogCorruption as e:
        click.echo(f"CORRUPT: {e}", err=True)
        sys.exit(1)
    if reader.torn:
        click.echo(f"# torn tail at {reader.torn[0]} offset {reader.torn[1]} ({reader.torn[2]})", err=True)

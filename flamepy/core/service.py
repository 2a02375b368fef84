"""The bytes-level service base (``FlameService``) and the instance runtime.

An instance is a process the executor manager launched for exactly one
session. It learns where to go from its environment:

* ``FLAME_ENDPOINT``      flo-server ``host:port``
* ``FLAME_SESSION_ID``    the session it serves
* ``FLAME_INSTANCE_ID``   its own id (key ``ready/<id>``)
* ``FLAME_INSTANCE_STATE`` its local state file (set by the executor manager)
* ``FLAME_IDLE_TIMEOUT``  seconds without a task before it leaves (0 = stay warm)

Its main thread runs the user's code one task at a time; the flamepy I/O loop
talks to Flo meanwhile. How it stays fast without changing what clients see:

* it leases a few *chunks* (queue messages of up to 64 consecutive task ids) and
  reads their records with one ``mget`` per dequeue;
* a task is marked RUNNING only once it has run for ``RUNNING_MARK_S`` (a
  watchdog on the I/O loop does it); a fast task goes PENDING → terminal in one
  CAS write (its record still gets the Running event);
* results are recorded in batches (group commit: while one batch is being
  written the next accumulates; results of tasks that finish within
  ``RECORD_EVERY_S`` of their lease's start or the last batch wait for the next
  one, unless a slower task runs on behind them): the records in one KV_MPUT
  (``kv.put_many``, each CAS-guarded), then counters by summed deltas, notices
  several per reply message and the acks of the chunks whose every task is
  recorded, pipelined;
* before each task one ``pwrite`` to the local state file
  (``FLAME_INSTANCE_STATE``) says which task runs and which chunks are held, so
  the executor manager can fail exactly that task if the process dies and give
  the rest back (at-least-once: a result not yet recorded is run again);
* after a slow task (> ``SLOW_TASK_S``) the unstarted rest of its chunks is
  given back to the queue (ahead of later chunks), so slow tasks spread over
  every instance of the session, and the next dequeue takes one chunk only.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import mmap
import os
import signal
import struct
import sys
import threading
import time
from dataclasses import dataclass
from typing import Optional

from flo_core import gctune

from . import _runtime, ops
from . import records as R
from .types import FlameError, FlameErrorCode, TaskState

__all__ = ["FlameService", "FlameInstanceServer", "ApplicationContext", "SessionContext", "TaskContext", "run"]

log = logging.getLogger("flamepy.service")
LEASE_TOUCH_S = 10.0
RUNNING_MARK_S = 0.02      # a task running this long is marked RUNNING (visible in the record and counters)
WATCH_TICK_S = 0.01        # how often the watchdog looks
SLOW_TASK_S = 0.005        # a task this slow makes the instance give back the rest of its chunks
FAST_DEQUEUE_CHUNKS = 4    # chunks leased per dequeue while tasks are fast
MAX_UNRECORDED = 1024      # finished tasks waiting for the batch in flight before the runner waits for it
# A result that finished this soon after its lease began (or after the last batch) waits for the next batch:
# fast tasks go about one batch per lease, not a lone first task, then the rest. Never longer than that
# while a slower task runs on behind it: then the watchdog hands it over (within a tick).
RECORD_EVERY_S = 0.002


@dataclass
class ApplicationContext:
    name: str
    image: Optional[str] = None
    command: Optional[str] = None
    working_directory: Optional[str] = None
    url: Optional[str] = None


class SessionContext:
    def __init__(self, session_id: str, application: ApplicationContext, common_data: Optional[bytes]) -> None:
        self.session_id = session_id
        self.application = application
        self._common_data = common_data

    def common_data(self) -> Optional[bytes]:
        return self._common_data


@dataclass
class TaskContext:
    task_id: str
    session_id: str
    input: Optional[bytes]


class FlameService:
    """Subclass and pass to :func:`run` to serve a session at the bytes level."""

    def on_session_enter(self, context: SessionContext) -> None:
        pass

    def on_task_invoke(self, context: TaskContext) -> Optional[bytes]:
        return None

    def on_session_leave(self) -> None:
        pass


class FlameInstanceServer:
    """Flame's server object for a :class:`FlameService`: ``start()`` serves this process's session until the
    instance leaves (idle, closed or terminated) — what :func:`run` does; ``stop()`` (from another thread or a
    signal handler) makes it leave as SIGTERM does: the running task finishes, results are recorded.

    >>> FlameInstanceServer(MyService()).start()             # doctest: +SKIP
    """

    def __init__(self, service: FlameService) -> None:
        self._service = service

    def start(self) -> None:
        run(self._service)

    def stop(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)


class _Terminate(BaseException):
    """Raised in the main thread by SIGTERM: leave the session cleanly."""


def run(service: FlameService) -> None:
    """Serve ``service`` for the session named in the environment until idle, closed or terminated."""
    missing = [v for v in ("FLAME_ENDPOINT", "FLAME_SESSION_ID", "FLAME_INSTANCE_ID") if not os.environ.get(v)]
    if missing:
        raise FlameError(FlameErrorCode.INTERNAL,
                         f"Failed to start instance: {', '.join(missing)} not set (is it launched by flame-executor?)")
    _InstanceRunner(service).serve()


class _Entry:
    """One task an instance started: its record as read and what became of it."""

    __slots__ = ("tid", "rec", "version", "started", "started_ms", "finished", "mark", "marked", "lost")

    def __init__(self, tid: int, rec: dict, version: int) -> None:
        self.tid = tid
        self.rec = rec
        self.version = version
        self.started = 0.0
        self.started_ms = 0
        self.finished = False
        self.mark: Optional[asyncio.Future] = None  # the RUNNING write, once the watchdog started it
        self.marked = False
        self.lost = False  # the RUNNING write lost its CAS: cancelled meanwhile


class _StateFile:
    """The instance's mapped state file (layout in ``records``); a no-op without one."""

    def __init__(self, path: Optional[str]) -> None:
        self.map: Optional[mmap.mmap] = None
        self.slot = 0
        if path:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
                try:
                    os.ftruncate(fd, R.STATE_SIZE)
                    self.map = mmap.mmap(fd, R.STATE_SIZE)
                finally:
                    os.close(fd)
            except OSError:
                log.warning("cannot map the instance state file %s; crash attribution is off", path)

    def running(self, tid: Optional[int]) -> None:
        if self.map is not None:
            _I64.pack_into(self.map, 0, tid or 0)

    def chunks(self, sid: str, chunks: list) -> None:
        if self.map is not None:
            data = R.encode_state_chunks(sid, chunks)
            slot = self.slot ^ 1
            off = 16 + slot * R.STATE_SLOT
            self.map[off:off + len(data)] = data
            _U32.pack_into(self.map, 8, slot)
            self.slot = slot

    def close(self) -> None:
        if self.map is not None:
            self.map.close()
            self.map = None


_I64 = struct.Struct("<q")
_PENDING = int(TaskState.PENDING)
_RUNNING = int(TaskState.RUNNING)
_U32 = struct.Struct("<I")


class _InstanceRunner:
    def __init__(self, service: FlameService) -> None:
        from .client import connection
        self.service = service
        self.session_id = os.environ["FLAME_SESSION_ID"]
        self.instance_id = os.environ["FLAME_INSTANCE_ID"]
        self.idle_timeout = float(os.environ.get("FLAME_IDLE_TIMEOUT", "60") or 0)
        self.conn = connection()
        self.store = self.conn.store
        self.queue = R.q_tasks(self.session_id)
        self.state_file = _StateFile(os.environ.get("FLAME_INSTANCE_STATE"))
        self.current: Optional[_Entry] = None      # read by the watchdog on the I/O loop
        self.unacked: dict[int, list] = {}         # seq -> [seq, first, last]: chunks leased and not acked yet
        self.interrupted = False                   # SIGTERM arrived while a task ran
        self.unrecorded: list[tuple] = []          # finished tasks not handed to a batch yet
        self.settled: list[int] = []               # chunk seqs whose every task is in a batch
        # Batch writes handed to the I/O loop and not settled here yet, oldest first: (future, chunk seqs it
        # acks). One is written at a time: a new one is handed over only once the earlier ones are done.
        self.batches: collections.deque = collections.deque()
        self.gathering_since = 0.0                 # monotonic: the lease's start or the last hand-over
        # Guards the hand-over (unrecorded, batches, gathering_since) between this thread and the
        # watchdog, which only ever tries it (the I/O loop never waits for this thread).
        self.handover = threading.Lock()
        self.slow = False

    def _call(self, coro):
        return _runtime.run(coro)

    def serve(self) -> None:
        logging.basicConfig(level=os.environ.get("FLAME_LOG_LEVEL", "INFO").upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        watchdog = None
        try:
            ctx = self._enter()
            if ctx is None:
                return
            watchdog = _runtime.submit(self._watchdog())
            try:
                self._loop()
            finally:
                try:
                    self.service.on_session_leave()
                except Exception:
                    log.exception("on_session_leave failed")
        except (_Terminate, KeyboardInterrupt):
            log.info("instance %s terminated", self.instance_id)
        finally:
            self._drain_on_exit()
            if watchdog is not None:
                watchdog.cancel()
            self.state_file.close()

    def _on_sigterm(self, signum, frame) -> None:
        raise _Terminate()

    def _enter(self) -> Optional[SessionContext]:
        got = self._call(self.store.get(R.k_ssn(self.session_id)))
        if got is None:
            self._ready(["error", f"session <{self.session_id}> not found"])
            return None
        rec = R.unpack(got[0])
        app = self._call(ops.get_application(self.store, rec["app"])) or {}
        ctx = SessionContext(self.session_id, ApplicationContext(
            name=rec["app"], image=app.get("image"), command=app.get("command"),
            working_directory=app.get("working_directory"), url=app.get("url")), rec.get("common_data"))
        try:
            self.service.on_session_enter(ctx)
        except Exception as exc:
            log.exception("on_session_enter failed")
            self._ready(["error", f"on_session_enter failed: {exc}"])
            sys.exit(12)
        # What exists now (modules, the service and its session data) lives as long as the instance: out of
        # the cyclic collector's sight, so its full passes walk only what tasks allocate (flo_core.gctune).
        gctune.settle()
        self._ready(["ok", os.getpid()])
        log.info("instance %s serving session %s", self.instance_id, self.session_id)
        return ctx

    def _ready(self, value) -> None:
        self._call(self.store.put(R.k_ready(self.instance_id), R.pack(value)))

    # -- the work loop (main thread) ---------------------------------------------------------------------

    def _loop(self) -> None:
        last_work = time.monotonic()
        while True:
            wait_s = 5.0
            if self.idle_timeout > 0:
                left = self.idle_timeout - (time.monotonic() - last_work)
                if left <= 0:
                    log.info("instance %s idle for %ss, leaving", self.instance_id, self.idle_timeout)
                    return
                wait_s = min(wait_s, left)
            if self.slow:  # one chunk, and only its first task's record: the rest goes back after a slow task
                work = self._call(self._take(1, max(1, int(wait_s * 1000)), 1))
            else:
                work = self._call(self._take(FAST_DEQUEUE_CHUNKS, max(1, int(wait_s * 1000)), R.CHUNK_TASKS))
            if not work:
                continue
            self._run_chunks(work)
            last_work = time.monotonic()

    async def _take(self, count: int, block_ms: int, per_chunk: int) -> list[tuple]:
        """Lease up to ``count`` chunks and read the records of their first ``per_chunk`` tasks;
        [(seq, first, last, {tid: (rec, version) or None})] (a tid not in the dict was not read)."""
        msgs = await self.store.dequeue(self.queue, count, block_ms=block_ms)
        chunks, bad = [], []
        for seq, payload in msgs:
            try:
                first, last = R.parse_chunk(payload)
            except ValueError:
                log.warning("dropping malformed task message %s: %r", seq, payload[:40])
                bad.append(seq)
                continue
            chunks.append((seq, first, last))
        if bad:
            await self.store.ack(self.queue, bad)
        if not chunks:
            return []
        tids = [t for _, a, b in chunks for t in range(a, min(b, a + per_chunk - 1) + 1)]
        got = await self.store.mget([R.k_task(self.session_id, t) for t in tids])
        recs = {t: (None if g is None else (R.unpack(g[0]), g[1])) for t, g in zip(tids, got)}
        return [(seq, a, b, recs) for seq, a, b in chunks]

    def _run_chunks(self, work: list[tuple]) -> None:
        for seq, a, b, _ in work:
            self.unacked[seq] = [seq, a, b]
        self._write_chunks()
        self.slow = False
        self.gathering_since = time.monotonic()
        for index, (seq, first, last, recs) in enumerate(work):
            for tid in range(first, last + 1):
                if self.slow or tid not in recs:  # after a slow task: let other instances take the rest
                    self._give_back([[seq, tid, last]] + [[s, a, b] for s, a, b, _ in work[index + 1:]])
                    return
                got = recs[tid]
                if got is None or got[0].get("state") != _PENDING:
                    continue  # cancelled, or already done (a redelivery): nothing to run
                took = self._run_one(_Entry(tid, got[0], got[1]))
                if took >= SLOW_TASK_S:
                    self.slow = True
            self.settled.append(seq)
        self._record(wait=False)

    def _give_back(self, back: list[list]) -> None:
        self._record(wait=True)
        self._call(ops.requeue_chunks(self.store, self.session_id, back))
        for seq, _, _ in back:
            self.unacked.pop(seq, None)
        self._write_chunks()

    def _write_chunks(self) -> None:
        self.state_file.chunks(self.session_id, list(self.unacked.values()))

    def _run_one(self, entry: _Entry) -> float:
        """Run one task in this thread; the seconds it took."""
        self.state_file.running(entry.tid)
        entry.started_ms = ops.now_ms()
        entry.started = time.monotonic()
        self.current = entry
        try:
            data = entry.rec.get("input")
            if not data:  # no input: no trip to the I/O loop for it
                data = None
            elif data[0] == "i":
                data = data[1]
            else:
                data = self._call(self.store.read_blob(data))
            output = self.service.on_task_invoke(TaskContext(str(entry.tid), self.session_id, data))
            if output is not None and not isinstance(output, (bytes, bytearray)):
                raise TypeError(f"on_task_invoke must return bytes or None, not {type(output).__name__}")
            state, message = TaskState.SUCCEED, None
        except (_Terminate, KeyboardInterrupt):
            self.interrupted = True
            raise
        except BaseException as exc:  # SystemExit from user code fails the task too
            log.exception("task %s failed", entry.tid)
            output, state = None, TaskState.FAILED
            message = str(exc) or type(exc).__name__
        finally:
            entry.finished = True
            self.current = None
        if not self.interrupted:
            self.state_file.running(None)
        now = time.monotonic()
        took = now - entry.started
        with self.handover:
            self.unrecorded.append((entry, state, bytes(output) if output is not None else None, message))
        # A marked (long) task is recorded right away and waited for: its RUNNING state must not outlive it.
        if entry.mark is not None:
            self._record(wait=True)
        elif len(self.unrecorded) >= MAX_UNRECORDED or (
                now - self.gathering_since >= RECORD_EVERY_S and self._written()):
            self._record(wait=False)
        return took

    def _written(self) -> bool:
        """No batch write is still going on (they go one at a time: the newest done means all are)."""
        return not self.batches or self.batches[-1][0].done()

    def _record(self, wait: bool) -> None:
        """Hand the finished tasks (and the chunks they settle) to a batch write; one batch in flight."""
        while True:
            self._settle_batches()
            with self.handover:
                if self.batches:
                    continue  # the watchdog handed one over meanwhile: that one first
                if self.unrecorded or self.settled:
                    done, self.unrecorded = self.unrecorded, []
                    acks, self.settled = self.settled, []
                    self.gathering_since = time.monotonic()
                    self.batches.append((_runtime.submit(self._write_batch(done, acks)), acks))
                break
        if wait:
            self._settle_batches()

    def _settle_batches(self) -> None:
        """Wait for the batch writes handed over so far (the watchdog's too); forget the chunks they acked."""
        while self.batches:
            fut, acks = self.batches[0]
            try:
                fut.result()
                if acks:
                    for seq in acks:
                        self.unacked.pop(seq, None)
                    self._write_chunks()
            except (_Terminate, KeyboardInterrupt):
                raise
            except Exception:  # the leases lapse and the tasks run again elsewhere (at-least-once)
                log.exception("recording task results failed")
            with self.handover:
                self.batches.popleft()

    def _hand_over_held(self, entry: Optional[_Entry], now: float) -> None:
        """Watchdog (I/O loop): results held back for a batch while a slower task runs on behind them go
        now, without the chunk acks (those stay with the runner's next batch, behind every result)."""
        if (not self.unrecorded or entry is None or entry.finished or now - entry.started < RECORD_EVERY_S
                or not self.handover.acquire(blocking=False)):
            return
        try:
            if self.unrecorded and self._written():
                done, self.unrecorded = self.unrecorded, []
                self.gathering_since = now
                self.batches.append((asyncio.run_coroutine_threadsafe(self._write_batch(done, []), _runtime.loop()),
                                     []))
        finally:
            self.handover.release()

    async def _write_batch(self, done: list[tuple], acks: list[int]) -> None:
        marks = [e.mark for e, *_ in done if e.mark is not None]
        if marks:
            await asyncio.gather(*marks, return_exceptions=True)
        items = []
        for entry, state, output, message in done:
            if entry.lost:
                continue
            if entry.marked:
                items.append((entry.rec, _RUNNING, entry.version, state, output, message))
            else:  # ran unmarked: the one terminal copy of its record gets the Running event too
                items.append((entry.rec, _PENDING, entry.version, state, output, message,
                              (self.instance_id, entry.started_ms)))
        # One KV_MPUT for the records, then counters, notices and acks in one pipelined burst.
        await ops.finish_batch(self.store, self.session_id, items, acks)

    def _drain_on_exit(self) -> None:
        """Leaving (idle, closed or terminated): record what finished. What was held and not
        finished stays in the state file: the manager fails an interrupted task first, then gives
        the chunks back (the same path as a crash, so the order is right)."""
        try:
            self._record(wait=True)
        except BaseException:  # best effort: leases lapse and the tasks run again elsewhere
            log.warning("could not record finished tasks on exit", exc_info=True)

    # -- the watchdog (I/O loop) ----------------------------------------------------------------------------

    async def _watchdog(self) -> None:
        """Mark long tasks RUNNING and keep the leases of held chunks alive."""
        last_touch = time.monotonic()
        while True:
            await asyncio.sleep(WATCH_TICK_S)
            entry = self.current
            now = time.monotonic()
            if (entry is not None and entry.mark is None and not entry.finished
                    and now - entry.started >= RUNNING_MARK_S):
                entry.mark = asyncio.ensure_future(self._mark_running(entry))
            try:
                self._hand_over_held(entry, now)
            except Exception:  # never the end of the watchdog (leases, RUNNING marks)
                log.exception("could not hand over finished tasks")
            if now - last_touch >= LEASE_TOUCH_S:
                last_touch = now
                seqs = list(self.unacked)
                if seqs:
                    try:
                        await self.store.touch(self.queue, seqs)
                    except Exception:
                        log.warning("could not extend the leases of task messages %s", seqs)

    async def _mark_running(self, entry: _Entry) -> None:
        try:
            started = await ops.start_task(self.store, self.session_id, entry.tid, entry.rec, entry.version,
                                           self.instance_id, entry.started_ms)
        except Exception:
            log.warning("could not mark task %s running", entry.tid, exc_info=True)
            return
        if started is None:
            entry.lost = True
        else:
            entry.rec, entry.version = started
            entry.marked = True

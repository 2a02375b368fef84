"""The bytes-level service base (``FlameService``) and the instance runtime.

An instance is a process the executor manager launched for exactly one
session. It learns where to go from its environment:

* ``FLAME_ENDPOINT``      flo-server ``host:port``
* ``FLAME_SESSION_ID``    the session it serves
* ``FLAME_INSTANCE_ID``   its own id (keys ``ready/<id>``, ``cur/<id>``)
* ``FLAME_IDLE_TIMEOUT``  seconds without a task before it leaves (0 = stay warm)

Its main thread runs the user's code one task at a time; the flamepy I/O loop
talks to Flo meanwhile (and keeps the task's queue lease alive).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from typing import Optional

from . import _runtime, ops
from . import records as R
from .types import FlameError, FlameErrorCode, TaskState

__all__ = ["FlameService", "ApplicationContext", "SessionContext", "TaskContext", "run"]

log = logging.getLogger("flamepy.service")
LEASE_TOUCH_S = 10.0


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


class _Terminate(BaseException):
    """Raised in the main thread by SIGTERM: leave the session cleanly."""


def run(service: FlameService) -> None:
    """Serve ``service`` for the session named in the environment until idle, closed or terminated."""
    missing = [v for v in ("FLAME_ENDPOINT", "FLAME_SESSION_ID", "FLAME_INSTANCE_ID") if not os.environ.get(v)]
    if missing:
        raise FlameError(FlameErrorCode.INTERNAL,
                         f"Failed to start instance: {', '.join(missing)} not set (is it launched by flame-executor?)")
    _InstanceRunner(service).serve()


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

    def _call(self, coro):
        return _runtime.run(coro)

    def serve(self) -> None:
        logging.basicConfig(level=os.environ.get("FLAME_LOG_LEVEL", "INFO").upper(),
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        try:
            ctx = self._enter()
            if ctx is None:
                return
            try:
                self._loop()
            finally:
                try:
                    self.service.on_session_leave()
                except Exception:
                    log.exception("on_session_leave failed")
        except (_Terminate, KeyboardInterrupt):
            log.info("instance %s terminated", self.instance_id)

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
        self._ready(["ok", os.getpid()])
        log.info("instance %s serving session %s", self.instance_id, self.session_id)
        return ctx

    def _ready(self, value) -> None:
        self._call(self.store.put(R.k_ready(self.instance_id), R.pack(value)))

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
            msgs = self._call(self.store.dequeue(self.queue, 1, block_ms=max(1, int(wait_s * 1000))))
            if not msgs:
                continue
            seq, payload = msgs[0]
            self._handle(seq, int(payload))
            last_work = time.monotonic()

    def _handle(self, seq: int, tid: int) -> None:
        started = self._call(ops.start_task(self.store, self.session_id, tid, self.instance_id, seq))
        if started is None:  # cancelled / already handled (a redelivery): just settle the message
            self._call(self.store.ack(self.queue, [seq]))
            return
        rec, version = started
        keeper = _runtime.submit(self._keep_lease(seq))
        try:
            data = self._call(self.store.read_blob(rec.get("input")))
            try:
                output = self.service.on_task_invoke(TaskContext(str(tid), self.session_id, data))
                if output is not None and not isinstance(output, (bytes, bytearray)):
                    raise TypeError(f"on_task_invoke must return bytes or None, not {type(output).__name__}")
                state, message = TaskState.SUCCEED, None
            except (_Terminate, KeyboardInterrupt):
                raise
            except BaseException as exc:  # SystemExit from user code fails the task too
                log.exception("task %s failed", tid)
                output, state = None, TaskState.FAILED
                message = str(exc) or type(exc).__name__
        finally:
            keeper.cancel()
        self._call(self._finish(rec, version, state, output, message, seq))

    async def _finish(self, rec, version, state, output, message, seq) -> None:
        await ops.finish_task(self.store, self.session_id, rec, version, state,
                              bytes(output) if output is not None else None, message)
        await asyncio.gather(self.store.ack(self.queue, [seq]), self.store.delete(R.k_cur(self.instance_id)))

    async def _keep_lease(self, seq: int) -> None:
        while True:
            await asyncio.sleep(LEASE_TOUCH_S)
            try:
                await self.store.touch(self.queue, [seq])
            except Exception:
                log.warning("could not extend the lease of task message %s", seq)

"""``ActionWorker``: executes actions with Python handlers (the ActionWorker section of the Flo SDK page).

The worker registers its actions and itself, long-polls the server for runs
(at most ``concurrency`` handlers at once), runs each handler and reports the
outcome; it heartbeats, keeps long handlers' leases alive (``auto_touch``),
and reconnects after a lost connection. A run whose worker dies is taken back
by the server when its lease lapses and handed to another worker, so every
run completes at least once.

Handler outcome -> report:

* returns bytes / str / dict / list / other JSON value -> COMPLETE (outcome "success")
* returns ``ctx.result("approved", value)`` -> COMPLETE with that named outcome
* raises :class:`NonRetryableError` -> FAIL, no retry
* raises anything else -> FAIL, retried (after a short backoff) while attempts remain
* runs past ``action_timeout`` seconds -> FAIL "Action timed out", no retry

Example:
    >>> from flo_client import FloClient
    >>> from flo_client.action_worker import ActionContext
    >>> async def main():                                                     # doctest: +SKIP
    ...     async with FloClient("localhost:9000", namespace="myapp") as client:
    ...         worker = client.new_action_worker(concurrency=5)
    ...
    ...         @worker.action("process-image")
    ...         async def process_image(ctx: ActionContext) -> bytes:
    ...             data = ctx.json()
    ...             return ctx.to_bytes({"status": "done", "size": len(data)})
    ...
    ...         await worker.start()          # until worker.stop() (or use `async with worker:`)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import secrets
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from flo_core.errors import ClientError, FloError, NotFoundError, ServerError
from flo_core.spec import MAX_BLOCK_MS, Reason, Status

from .action import (
    MAX_OUTPUT,
    ActionRegisterOptions,
    ActionType,
    TaskAssignment,
    WorkerAPI,
    WorkerAwaitOptions,
    WorkerCompleteOptions,
    WorkerFailOptions,
    WorkerRegisterOptions,
    WorkerTouchOptions,
)

if TYPE_CHECKING:
    from .client import FloClient

__all__ = ["ActionWorker", "ActionContext", "ActionResult", "NonRetryableError", "ActionHandler"]

log = logging.getLogger("flo_client.action_worker")

DEFAULT_BLOCK_MS = 30_000
HEARTBEAT_INTERVAL_S = 30.0  # the server calls a worker unhealthy after 90 s of silence
MAX_TOUCH_EXTEND_MS = 3_600_000
MIN_TOUCH_INTERVAL_S = 0.1
RESULT_SENDS = 3  # a report lost to a dropped connection is resent this many times in all
_BACKOFF_FIRST_S, _BACKOFF_MAX_S = 0.1, 5.0
# Touch refusals that mean the run moved on (finished, cancelled, taken back).
_TOUCH_FINAL = (Status.CONFLICT, Status.NOT_FOUND, Status.BAD_REQUEST)


class NonRetryableError(FloError):
    """Raise from a handler to fail the run at once, without further attempts."""


class ActionResult:
    """A result with a named outcome (``ctx.result("approved", value)``)."""

    __slots__ = ("outcome", "data")

    def __init__(self, outcome: str, data: bytes) -> None:
        self.outcome = outcome
        self.data = data

    def __repr__(self) -> str:
        return f"ActionResult(outcome={self.outcome!r}, data={self.data[:32]!r})"


ActionHandler = Callable[["ActionContext"], Awaitable[Any]]


def _is_connection_error(e: BaseException) -> bool:
    return isinstance(e, (ConnectionError, OSError, asyncio.TimeoutError, ClientError)) and not isinstance(
        e, ServerError
    )


@dataclass
class ActionContext:
    """What a handler receives: the run (``task_id`` = run id), its input and helpers."""

    task_id: str
    action_name: str
    payload: bytes
    attempt: int
    created_at: int
    namespace: str
    _worker: "ActionWorker" = field(repr=False)
    _cancel_event: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def run_id(self) -> str:
        return self.task_id

    def input(self) -> bytes:
        """The raw input bytes."""
        return self.payload

    def json(self) -> Any:
        """The input parsed as JSON (ValueError when there is none)."""
        if not self.payload:
            raise ValueError("No input data")
        return json.loads(self.payload)

    def into(self, cls: type) -> Any:
        """The JSON input as ``cls(**obj)`` (an object) or ``cls(value)``."""
        data = self.json()
        return cls(**data) if isinstance(data, dict) else cls(data)

    @staticmethod
    def to_bytes(value: Any) -> bytes:
        """A value as JSON bytes."""
        return json.dumps(value).encode("utf-8")

    async def touch(self, extend_ms: int | None = None) -> None:
        """Extend this run's lease to now + ``extend_ms`` (default: the action's timeout).
        Raises ConflictError when the run moved on (cancelled, or taken back)."""
        try:
            await self._worker._touch(self.action_name, self.task_id, extend_ms or self._worker._timeout_of(self.action_name))
        except ServerError as e:
            if e.status_code == Status.CONFLICT:
                self._cancel_event.set()
            raise

    @property
    def cancelled(self) -> bool:
        """Set once the server refuses this run's touch: it was cancelled or taken back."""
        return self._cancel_event.is_set()

    async def check_cancelled(self) -> None:
        if self._cancel_event.is_set():
            raise asyncio.CancelledError("run was cancelled")

    def result(self, outcome: str, value: Any = None) -> ActionResult:
        """A named outcome: bytes as-is, None as empty, anything else as JSON."""
        if isinstance(value, (bytes, bytearray, memoryview)):
            data = bytes(value)
        elif value is None:
            data = b""
        else:
            data = json.dumps(value).encode("utf-8")
        return ActionResult(outcome, data)


@dataclass
class _Report:
    """One report to send: complete (outcome, data) or fail (message, retry)."""

    kind: str
    outcome: str = "success"
    data: bytes = b""
    message: str = ""
    retry: bool = True


def _output_of(value: Any) -> tuple[str, bytes]:
    if isinstance(value, ActionResult):
        return value.outcome, value.data
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "success", bytes(value)
    if value is None:
        return "success", b""
    if isinstance(value, str):
        return "success", value.encode("utf-8")
    return "success", json.dumps(value).encode("utf-8")


class ActionWorker:
    """Runs action handlers for one namespace (the parent client's).

    Args:
        client: a :class:`~flo_client.FloClient`; the worker opens its own
            connections to the same endpoint (one to poll, one for reports).
        worker_id: defaults to ``<hostname>-<8 hex>``.
        concurrency: handlers running at once.
        action_timeout: seconds a handler may run before it is failed (no retry).
        block_ms: long-poll wait per await (0 means the 30 000 default).
        auto_touch: extend each run's lease every third of its action's
            ``timeout_ms`` while the handler runs, so long handlers are not taken back.
        heartbeat_interval: seconds between heartbeats.
        labels: offered to runs invoked with labels (sent as registration metadata).

    Use ``worker.stop()`` (or ``async with worker:``) to end ``start()``:
    running handlers finish and report first.
    """

    def __init__(
        self,
        client: "FloClient",
        *,
        worker_id: str | None = None,
        concurrency: int = 10,
        action_timeout: float = 300.0,
        block_ms: int = DEFAULT_BLOCK_MS,
        auto_touch: bool = True,
        heartbeat_interval: float = HEARTBEAT_INTERVAL_S,
        labels: dict[str, Any] | None = None,
        machine_id: str | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if not 0 <= block_ms <= MAX_BLOCK_MS:
            raise ValueError(f"block_ms must be 0..{MAX_BLOCK_MS}")
        self._parent = client
        self.worker_id = worker_id or f"{_hostname()}-{secrets.token_hex(4)}"
        self.concurrency = concurrency
        self.action_timeout = action_timeout
        self.block_ms = block_ms or DEFAULT_BLOCK_MS
        self.auto_touch = auto_touch
        self.heartbeat_interval = heartbeat_interval
        self.labels = labels
        self.machine_id = machine_id or _hostname()
        self._handlers: dict[str, ActionHandler] = {}
        self._options: dict[str, ActionRegisterOptions] = {}
        self._poll: Any = None
        self._results: Any = None
        self._stop = asyncio.Event()
        self._done = asyncio.Event()
        self._started = False
        self._polling = False
        self._tasks: set[asyncio.Task] = set()
        self._slots: asyncio.Semaphore | None = None
        self.running_handlers = 0

    # --- handlers ---------------------------------------------------------------------------

    def action(
        self, name: str, options: ActionRegisterOptions | None = None, *, timeout_ms: int | None = None,
        max_retries: int | None = None,
    ) -> Callable[[ActionHandler], ActionHandler]:
        """Decorator: handle action ``name`` (registered with these options at start).

        Example:
            >>> @worker.action("send-email", timeout_ms=10000, max_retries=5)    # doctest: +SKIP
            ... async def send_email(ctx: ActionContext) -> bytes:
            ...     return b"sent"
        """

        def deco(fn: ActionHandler) -> ActionHandler:
            self.register_action(name, fn, options, timeout_ms=timeout_ms, max_retries=max_retries)
            return fn

        return deco

    def register_action(
        self, name: str, handler: ActionHandler, options: ActionRegisterOptions | None = None, *,
        timeout_ms: int | None = None, max_retries: int | None = None,
    ) -> None:
        """Handle action ``name`` with ``handler``. The action is registered (created
        or replaced, in the worker's namespace) when the worker starts."""
        if name in self._handlers:
            raise ValueError(f"action {name!r} already has a handler")
        o = dataclasses.replace(options or ActionRegisterOptions(), namespace=None)
        if timeout_ms is not None:
            o.timeout_ms = timeout_ms
        if max_retries is not None:
            o.max_retries = max_retries
        self._handlers[name] = handler
        self._options[name] = o

    def _timeout_of(self, name: str) -> int:
        o = self._options.get(name)
        return min(o.timeout_ms, MAX_TOUCH_EXTEND_MS) if o is not None and o.timeout_ms else 30_000

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Registered and taking work (False before ``start()`` has registered, and after ``stop()``)."""
        return self._polling and not self._stop.is_set()

    async def start(self) -> None:
        """Register, then take and run work until :meth:`stop`. Returns after the
        running handlers have finished and reported."""
        if not self._handlers:
            raise ValueError("No action handlers registered")
        if self._started:
            raise RuntimeError("worker already started")
        self._started = True
        self._stop.clear()
        self._done.clear()
        heartbeat: asyncio.Task | None = None
        try:
            self._poll = await self._parent._clone()
            self._results = await self._parent._clone()
            for name, o in self._options.items():
                await self._poll.action.register(name, ActionType.USER, o)
            await self._register()
            self._slots = asyncio.Semaphore(self.concurrency)
            heartbeat = asyncio.ensure_future(self._heartbeat_loop())
            log.info("action worker %s started: %s", self.worker_id, ", ".join(self._handlers))
            self._polling = True
            await self._poll_loop()
        finally:
            self._polling = False
            self._stop.set()
            if heartbeat is not None:
                heartbeat.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await heartbeat
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            for c in (self._poll, self._results):
                if c is not None:
                    await c.close()
            self._poll = self._results = None
            self._started = False
            self._done.set()
            log.info("action worker %s stopped", self.worker_id)

    def stop(self) -> None:
        """Stop taking work (a parked await is interrupted); running handlers finish and report."""
        self._stop.set()
        if self._poll is not None:
            # Closing the poll connection is what interrupts a parked await: the
            # server then hands nothing to it. A run that arrived just before is still run.
            asyncio.ensure_future(self._poll.close())

    async def close(self) -> None:
        """Stop and wait until ``start()`` has returned."""
        self.stop()
        if self._started:
            await self._done.wait()

    async def __aenter__(self) -> "ActionWorker":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # --- registration and heartbeats ----------------------------------------------------------------------

    async def _register(self) -> None:
        await WorkerAPI(self._results).register(
            self.worker_id,
            list(self._handlers),
            WorkerRegisterOptions(concurrency=self.concurrency, machine_id=self.machine_id, labels=self.labels),
        )

    async def _heartbeat(self) -> None:
        try:
            await WorkerAPI(self._results).heartbeat(self.worker_id, self.running_handlers)
        except NotFoundError:
            log.warning("worker %s was forgotten by the server; registering again", self.worker_id)
            await self._register()

    async def _heartbeat_loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), self.heartbeat_interval)
                return
            try:
                await self._heartbeat()
            except Exception as e:  # noqa: BLE001 - keep heartbeating
                log.warning("heartbeat failed: %s", e)

    # --- polling ----------------------------------------------------------------------------------------------

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _poll_loop(self) -> None:
        assert self._slots is not None
        api = WorkerAPI(self._poll)
        names = list(self._handlers)
        loop = asyncio.get_running_loop()
        backoff = _BACKOFF_FIRST_S
        quick_empties = 0
        while not self._stop.is_set():
            await self._slots.acquire()
            if self._stop.is_set():
                self._slots.release()
                break
            started = loop.time()
            try:
                task = await api.await_task(self.worker_id, names, WorkerAwaitOptions(block_ms=self.block_ms))
            except ServerError as e:
                self._slots.release()
                if e.reason == Reason.WORKER_DRAINING:
                    log.info("worker %s is drained: taking no more work", self.worker_id)
                    break
                if e.reason == Reason.WORKER_UNHEALTHY:
                    with contextlib.suppress(Exception):
                        await self._heartbeat()
                log.warning("await refused: %s; retrying in %.1fs", e, backoff)
                await self._pause(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                continue
            except Exception as e:  # noqa: BLE001 - a lost connection: reconnect and go on
                self._slots.release()
                if self._stop.is_set():
                    break
                log.warning("await lost (%s); reconnecting in %.1fs", e, backoff)
                await self._pause(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                with contextlib.suppress(Exception):
                    await self._register()  # the next call reconnects; the server may have restarted
                continue
            backoff = _BACKOFF_FIRST_S
            if task is None:
                self._slots.release()
                # Empty answers faster than the wait mean something else ends the
                # waits early: do not spin.
                if loop.time() - started < min(0.25, self.block_ms / 2000):
                    quick_empties += 1
                    if quick_empties > 1:
                        await self._pause(min(0.05 * 2 ** min(quick_empties - 2, 5), 1.0))
                else:
                    quick_empties = 0
                continue
            quick_empties = 0
            t = asyncio.ensure_future(self._execute(task))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    # --- running one run ------------------------------------------------------------------------------------------

    async def _execute(self, task: TaskAssignment) -> None:
        assert self._slots is not None
        try:
            self.running_handlers += 1
            try:
                report = await self._run_handler(task)
            finally:
                self.running_handlers -= 1
            await self._send(task, report)
        except Exception:  # noqa: BLE001 - one run never takes the worker down
            log.exception("reporting run %s failed", task.task_id)
        finally:
            self._slots.release()

    async def _run_handler(self, task: TaskAssignment) -> _Report:
        handler = self._handlers.get(task.task_type)
        if handler is None:
            return _Report("fail", message=f"No handler for: {task.task_type}")
        ctx = ActionContext(
            task_id=task.task_id,
            action_name=task.task_type,
            payload=task.payload,
            attempt=task.attempt,
            created_at=task.created_at,
            namespace=self._parent.namespace,
            _worker=self,
        )
        run = asyncio.ensure_future(handler(ctx))
        stop_touching = asyncio.Event()
        timeout_ms = self._options[task.task_type].timeout_ms
        toucher = (
            asyncio.ensure_future(self._keep_touching(ctx, timeout_ms, stop_touching))
            if self.auto_touch and timeout_ms > 0
            else None
        )
        try:
            await asyncio.wait({run}, timeout=self.action_timeout)
        finally:
            if toucher is not None:
                stop_touching.set()
                with contextlib.suppress(Exception):
                    await asyncio.shield(toucher)
        if not run.done():
            run.cancel()
            with contextlib.suppress(BaseException):
                await run
            log.error("action %s (run %s) timed out after %ss", task.task_type, task.task_id, self.action_timeout)
            return _Report("fail", message="Action timed out", retry=False)
        if run.cancelled():
            return _Report("fail", message="Action cancelled")
        exc = run.exception()
        if exc is not None:
            message = str(exc) or type(exc).__name__
            retry = not isinstance(exc, NonRetryableError)
            log.warning("action %s (run %s, attempt %d) failed: %r", task.task_type, task.task_id, task.attempt, exc)
            return _Report("fail", message=message, retry=retry)
        try:
            outcome, data = _output_of(run.result())
        except (TypeError, ValueError) as e:
            return _Report("fail", message=f"result is not bytes or JSON: {e}", retry=False)
        if len(data) > MAX_OUTPUT:
            return _Report("fail", message=f"output of {len(data)} bytes is over the {MAX_OUTPUT}-byte limit", retry=False)
        return _Report("complete", outcome=outcome, data=data)

    async def _send(self, task: TaskAssignment, report: _Report) -> None:
        api = WorkerAPI(self._results)
        for attempt in range(1, RESULT_SENDS + 1):
            try:
                if report.kind == "complete":
                    await api.complete(
                        self.worker_id, task.task_type, task.task_id, report.data,
                        WorkerCompleteOptions(outcome=report.outcome),
                    )
                else:
                    await api.fail(
                        self.worker_id, task.task_type, task.task_id, report.message,
                        WorkerFailOptions(retry=report.retry),
                    )
                return
            except ServerError as e:
                # Refused, not lost: STALE_REPORT means the run moved on (cancelled,
                # or taken back after its lease lapsed and given to another worker).
                level = logging.INFO if e.reason == Reason.STALE_REPORT else logging.ERROR
                log.log(level, "%s of run %s refused: %s", report.kind, task.task_id, e)
                return
            except Exception as e:  # noqa: BLE001
                if attempt == RESULT_SENDS or not _is_connection_error(e):
                    log.error("%s of run %s dropped after %d sends: %r", report.kind, task.task_id, attempt, e)
                    return
                await asyncio.sleep(_BACKOFF_FIRST_S * attempt)  # the next call reconnects

    async def _touch(self, action: str, task_id: str, extend_ms: int) -> None:
        await WorkerAPI(self._results).touch(self.worker_id, action, task_id, WorkerTouchOptions(extend_ms=extend_ms))

    async def _keep_touching(self, ctx: ActionContext, timeout_ms: int, stop: asyncio.Event) -> None:
        extend_ms = min(timeout_ms, MAX_TOUCH_EXTEND_MS)
        interval = max(extend_ms / 3000, MIN_TOUCH_INTERVAL_S)
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
                return
            try:
                await self._touch(ctx.action_name, ctx.task_id, extend_ms)
            except ServerError as e:
                if e.status_code in _TOUCH_FINAL:
                    if e.status_code == Status.CONFLICT:
                        ctx._cancel_event.set()
                    log.info("run %s moved on (%s); no more touches", ctx.task_id, e)
                    return
            except Exception as e:  # noqa: BLE001 - lost: try again next interval
                log.warning("touch of run %s lost: %r", ctx.task_id, e)


def _hostname() -> str:
    try:
        return socket.gethostname()
    except OSError:
        return "unknown"

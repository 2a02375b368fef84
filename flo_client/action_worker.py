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
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from flo_core.body import Writer
from flo_core.errors import ClientError, FloError, NotFoundError, ProtocolError, ServerError
from flo_core.spec import MAX_BLOCK_MS, Op, Reason, Status, Tag

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
    parse_task_assignment,
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
# Batches (flo-server extension, docs/protocol-action.md): an await asks for up to COUNT runs and
# gets them behind BATCH_MARK; the completions of one loop turn go in one COMPLETE with COUNT.
MAX_AWAIT_BATCH = 256
MAX_COMPLETE_BATCH = 1024
BATCH_MARK = b"\x00\x00"  # an empty task id: never the start of a single assignment
_COUNT_TAG = bytes((Tag.COUNT, 4))
_HEAD = struct.Struct("<H")
_TAIL = struct.Struct("<qIB")  # created_at i64, attempt u32, has_caller u8
_U32 = struct.Struct("<I")


def parse_assignments(data: bytes) -> list[TaskAssignment]:
    """A batch answer of ACTION_AWAIT: ``BATCH_MARK [n u16]`` then n x ``[task_id str16]
    [task_type str16][created_at i64][attempt u32][has_caller u8]([caller str16][workflow str16])?
    [payload bytes32]``.

    >>> data = bytes.fromhex("0000010005006163742d310100610500000000000000010000000002000000696e")
    >>> parse_assignments(data)[0]
    TaskAssignment(task_id='act-1', task_type='a', payload=b'in', created_at=5, attempt=1, caller_run_id='', caller_workflow_name='')
    """
    head, tail, u32 = _HEAD.unpack_from, _TAIL.unpack_from, _U32.unpack_from
    out = []
    try:
        (n,) = head(data, 2)
        pos = 4
        for _ in range(n):
            (ln,) = head(data, pos)
            task_id = data[pos + 2 : pos + 2 + ln].decode("utf-8")
            pos += 2 + ln
            (ln,) = head(data, pos)
            task_type = data[pos + 2 : pos + 2 + ln].decode("utf-8")
            pos += 2 + ln
            created, attempt, has_caller = tail(data, pos)
            pos += 13
            caller = ["", ""]
            if has_caller == 1:
                for i in (0, 1):
                    (ln,) = head(data, pos)
                    caller[i] = data[pos + 2 : pos + 2 + ln].decode("utf-8")
                    pos += 2 + ln
            (ln,) = u32(data, pos)
            payload = data[pos + 4 : pos + 4 + ln]
            if len(payload) != ln:
                raise ValueError("payload cut short")
            pos += 4 + ln
            out.append(TaskAssignment(task_id, task_type, payload, created, attempt, caller[0], caller[1]))
    except (struct.error, ValueError) as e:  # UnicodeDecodeError is a ValueError
        raise ProtocolError(f"bad batch of task assignments: {e}") from None
    return out


def _complete_entry(action: str, task_id: str, outcome: str, data: bytes) -> bytes:
    """One report of a batched ACTION_COMPLETE: ``[action str16][task_id str16][outcome str16][result bytes16]``."""
    a, t, o = action.encode("utf-8"), task_id.encode("utf-8"), outcome.encode("utf-8")
    return b"".join((_HEAD.pack(len(a)), a, _HEAD.pack(len(t)), t, _HEAD.pack(len(o)), o, _HEAD.pack(len(data)), data))


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
        self._free = concurrency  # slots not holding a run (a run holds its slot until reported)
        self._slot_freed = asyncio.Event()
        self._batches = False  # the server answered an await with a batch: it takes batched completes too
        self._outbox: list[bytes] = []  # completions of this loop turn, encoded
        self._outbox_ids: list[str] = []
        self._outbox_scheduled = False
        self._await_value = b""
        self._await_opts = b""
        self._loop: Any = None  # the running loop (start)
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
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        self._done.clear()
        heartbeat: asyncio.Task | None = None
        try:
            self._poll = await self._parent._clone()
            self._results = await self._parent._clone()
            for name, o in self._options.items():
                await self._poll.action.register(name, ActionType.USER, o)
            await self._register()
            self._free = self.concurrency
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
            # Running handlers finish and report: a run's task queues its completion, which the
            # batch send (a task of its own, started later) carries, so wait until both are gone.
            while self._tasks or self._outbox:
                if self._outbox:
                    self._send_outbox()
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
        self._slot_freed.set()
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

    def _release(self, n: int = 1) -> None:
        """``n`` runs are over (handled and reported): their slots take work again."""
        self._free += n
        self._slot_freed.set()

    async def _await_runs(self, want: int) -> list[TaskAssignment]:
        """One ACTION_AWAIT asking for up to ``want`` runs (option COUNT; a server without
        batches answers one assignment, which this reads too)."""
        opts = self._await_opts + _COUNT_TAG + want.to_bytes(4, "little")
        rest = self._await_value + (len(opts)).to_bytes(2, "little") + opts
        data = await self._poll._call(Op.ACTION_AWAIT, self.worker_id, rest, block_ms=self.block_ms)
        if not data:
            return []
        if data[:2] == BATCH_MARK:
            self._batches = True
            return parse_assignments(data)
        return [parse_task_assignment(data)]

    async def _poll_loop(self) -> None:
        names = list(self._handlers)
        w = Writer().u32(len(names))
        for name in names:
            w.str16(name)
        value = w.getvalue()
        self._await_value = len(value).to_bytes(4, "little") + value
        self._await_opts = bytes((Tag.BLOCK_MS, 4)) + self.block_ms.to_bytes(4, "little")
        loop = asyncio.get_running_loop()
        backoff = _BACKOFF_FIRST_S
        quick_empties = 0
        while not self._stop.is_set():
            while self._free <= 0 and not self._stop.is_set():
                self._slot_freed.clear()
                await self._slot_freed.wait()
            if self._stop.is_set():
                break
            started = loop.time()
            try:
                tasks = await self._await_runs(min(self._free, MAX_AWAIT_BATCH))
            except ServerError as e:
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
                if self._stop.is_set():
                    break
                log.warning("await lost (%s); reconnecting in %.1fs", e, backoff)
                await self._pause(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX_S)
                with contextlib.suppress(Exception):
                    await self._register()  # the next call reconnects; the server may have restarted
                continue
            backoff = _BACKOFF_FIRST_S
            if not tasks:
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
            self._free -= len(tasks)
            for task in tasks:
                t = self._loop.create_task(self._execute(task))
                self._tasks.add(t)
                t.add_done_callback(self._tasks.discard)

    # --- running one run ------------------------------------------------------------------------------------------

    async def _execute(self, task: TaskAssignment) -> None:
        """Run one handler in this task, then queue its report (the slot is released once it is sent)."""
        queued = False
        try:
            self.running_handlers += 1
            try:
                report = await self._run_handler(task)
            finally:
                self.running_handlers -= 1
            if report.kind == "complete" and self._batches:
                self._queue_complete(task, report)
                queued = True
            else:
                await self._send(task, report)
        except Exception:  # noqa: BLE001 - one run never takes the worker down
            log.exception("reporting run %s failed", task.task_id)
        finally:
            if not queued:
                self._release()

    async def _run_handler(self, task: TaskAssignment) -> _Report:
        """The handler runs in the caller's task (one task per run); a timer cancels it past
        ``action_timeout`` and, with ``auto_touch``, another starts touching its lease once a
        third of the action's timeout has gone by (most handlers are done long before either)."""
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
        # (the loop is passed, never looked up: each lookup is a getpid() call in CPython 3.11)
        loop = self._loop
        me = asyncio.current_task(loop)
        assert me is not None
        timed_out = False

        def time_out() -> None:
            nonlocal timed_out
            timed_out = True
            me.cancel()

        timer = loop.call_later(self.action_timeout, time_out)
        timeout_ms = self._options[task.task_type].timeout_ms
        toucher: list[Any] = []
        touch_timer = None
        if self.auto_touch and timeout_ms > 0:
            stop_touching = asyncio.Event()
            interval = max(min(timeout_ms, MAX_TOUCH_EXTEND_MS) / 3000, MIN_TOUCH_INTERVAL_S)
            touch_timer = loop.call_later(interval, lambda: toucher.append(
                asyncio.ensure_future(self._keep_touching(ctx, timeout_ms, stop_touching, first_now=True))))
        try:
            value = await handler(ctx)
        except asyncio.CancelledError:
            if not timed_out:
                if me.cancelling():
                    raise  # this run's task was cancelled from outside: the worker is going away
                return _Report("fail", message="Action cancelled")  # the handler raised it itself
            value = None
        except Exception as exc:  # noqa: BLE001 - the handler's failure is the run's
            message = str(exc) or type(exc).__name__
            retry = not isinstance(exc, NonRetryableError)
            log.warning("action %s (run %s, attempt %d) failed: %r", task.task_type, task.task_id, task.attempt, exc)
            return _Report("fail", message=message, retry=retry)
        finally:
            timer.cancel()
            if touch_timer is not None:
                touch_timer.cancel()
                if toucher:
                    stop_touching.set()
                    with contextlib.suppress(Exception):
                        await asyncio.shield(toucher[0])
        if timed_out:  # (even if the handler swallowed the cancellation and returned)
            me.uncancel()
            log.error("action %s (run %s) timed out after %ss", task.task_type, task.task_id, self.action_timeout)
            return _Report("fail", message="Action timed out", retry=False)
        try:
            outcome, data = _output_of(value)
        except (TypeError, ValueError) as e:
            return _Report("fail", message=f"result is not bytes or JSON: {e}", retry=False)
        if len(data) > MAX_OUTPUT:
            return _Report("fail", message=f"output of {len(data)} bytes is over the {MAX_OUTPUT}-byte limit", retry=False)
        return _Report("complete", outcome=outcome, data=data)

    # --- reports ----------------------------------------------------------------------------------------------------

    def _queue_complete(self, task: TaskAssignment, report: _Report) -> None:
        """Completions of one loop turn leave in one ACTION_COMPLETE (option COUNT)."""
        self._outbox.append(_complete_entry(task.task_type, task.task_id, report.outcome, report.data))
        self._outbox_ids.append(task.task_id)
        if not self._outbox_scheduled:
            self._outbox_scheduled = True
            self._loop.call_soon(self._send_outbox)

    def _send_outbox(self) -> None:
        self._outbox_scheduled = False
        while self._outbox:
            entries, ids = self._outbox[:MAX_COMPLETE_BATCH], self._outbox_ids[:MAX_COMPLETE_BATCH]
            del self._outbox[:MAX_COMPLETE_BATCH], self._outbox_ids[:MAX_COMPLETE_BATCH]
            t = self._loop.create_task(self._send_completes(entries, ids))
            self._tasks.add(t)
            t.add_done_callback(self._tasks.discard)

    async def _send_completes(self, entries: list[bytes], ids: list[str]) -> None:
        n = len(entries)
        value = b"".join(entries)
        rest = len(value).to_bytes(4, "little") + value + b"\x06\x00" + _COUNT_TAG + n.to_bytes(4, "little")
        try:
            for attempt in range(1, RESULT_SENDS + 1):
                try:
                    data = await self._results._call(Op.ACTION_COMPLETE, self.worker_id, rest)
                except ServerError as e:
                    log.error("completion of %d run(s) refused: %s", n, e)
                    return
                except Exception as e:  # noqa: BLE001
                    if attempt == RESULT_SENDS or not _is_connection_error(e):
                        log.error("completion of %d run(s) dropped after %d sends: %r", n, attempt, e)
                        return
                    await asyncio.sleep(_BACKOFF_FIRST_S * attempt)  # the next call reconnects
                    continue
                codes = data[2:]
                if any(codes):
                    for task_id, code in zip(ids, codes):
                        if code:
                            # STALE_REPORT: the run moved on (cancelled, or taken back and given to another worker).
                            level = logging.INFO if code == Reason.STALE_REPORT else logging.ERROR
                            log.log(level, "complete of run %s refused: reason %d", task_id, code)
                return
        finally:
            self._release(n)

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

    async def _keep_touching(self, ctx: ActionContext, timeout_ms: int, stop: asyncio.Event,
                             first_now: bool = False) -> None:
        extend_ms = min(timeout_ms, MAX_TOUCH_EXTEND_MS)
        interval = max(extend_ms / 3000, MIN_TOUCH_INTERVAL_S)
        while True:
            if first_now:  # started by the run's timer, one interval in: touch at once
                first_now = False
            else:
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

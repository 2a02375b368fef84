"""``client.action``: durable actions and their runs (the Action section of the Flo SDK page).

An action is a named piece of work that workers execute (see
:class:`flo_client.action_worker.ActionWorker`). ``invoke`` creates a *run*:
it waits PENDING until a worker takes it (RUNNING, under a lease of the
action's ``timeout_ms``), then ends COMPLETED with an output, FAILED with an
error, TIMED_OUT or CANCELLED. A failing attempt is retried after a short
backoff until ``max_retries`` attempts (the first included) are used up.

Names mirror flo-python 0.1.2 (``ActionType``, ``ActionRegisterOptions``,
``ActionInvokeOptions``, ``ActionRunStatus``, ``RunStatus`` ...), plus the seed
page's ``priority`` / ``idempotency_key`` and our :meth:`ActionAPI.result`
(wait for a run to finish without polling) and :meth:`ActionAPI.cancel`.

Example:
    >>> from flo_client import FloClient
    >>> from flo_client.action import ActionType, ActionRegisterOptions, ActionInvokeOptions
    >>> async def main():                                                    # doctest: +SKIP
    ...     async with FloClient("localhost:9000", namespace="myapp") as client:
    ...         await client.action.register("process-image", ActionType.USER,
    ...                                      ActionRegisterOptions(timeout_ms=60000, max_retries=3))
    ...         result = await client.action.invoke("process-image", b'{"id": 1}',
    ...                                             ActionInvokeOptions(priority=10, idempotency_key="order-123"))
    ...         status = await client.action.status(result.run_id)
    ...         done = await client.action.result(result.run_id, timeout_ms=60000)
    ...         print(status.status.name, done.status.name, done.output)
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING, Any

from flo_core.body import Reader, Writer
from flo_core.errors import BadRequestError, ProtocolError, RequestTimeoutError, ServerError
from flo_core.spec import MAX_BLOCK_MS, Op, RunStatus, Tag, WorkerStatus

if TYPE_CHECKING:
    from .client import FloClient

__all__ = [
    "ActionAPI",
    "WorkerAPI",
    "ActionType",
    "RunStatus",
    "WorkerStatus",
    "WorkerType",
    "ActionRegisterOptions",
    "ActionInvokeOptions",
    "ActionStatusOptions",
    "ActionResultOptions",
    "ActionListOptions",
    "ActionListRunsOptions",
    "ActionDeleteOptions",
    "ActionCancelOptions",
    "InvokeResult",
    "ActionInvokeResult",
    "ActionRunStatus",
    "ActionInfo",
    "ActionListResult",
    "RunListResult",
    "TaskAssignment",
    "WorkerInfo",
    "WorkerListResult",
    "WorkerRegisterOptions",
    "WorkerAwaitOptions",
    "WorkerTouchOptions",
    "WorkerCompleteOptions",
    "WorkerFailOptions",
    "WorkerListOptions",
    "parse_run_status",
    "parse_task_assignment",
]

#: Longest output a run can carry (the wire's bytes16).
MAX_OUTPUT = 65_535
_FINISHED = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.TIMED_OUT)


class ActionType(IntEnum):
    """What runs an action: USER = external workers (the only type served)."""

    USER = 0


class WorkerType(IntEnum):
    ACTION = 0
    STREAM = 1


# --- options ----------------------------------------------------------------------------------


@dataclass
class ActionRegisterOptions:
    """``timeout_ms``: the run lease - how long a run may go without its worker
    completing, failing or touching it before it is taken back (0 = never).
    ``max_retries``: attempts in all, the first included. Registering again
    replaces the settings (last wins)."""

    namespace: str | None = None
    timeout_ms: int = 30000
    max_retries: int = 3
    owner: str | None = None

    def __post_init__(self) -> None:
        for name in ("timeout_ms", "max_retries"):
            v = getattr(self, name)
            if not isinstance(v, int) or not 0 <= v < 2**32:
                raise BadRequestError(f"{name} must be in [0, 2**32), not {v!r}")


@dataclass
class ActionInvokeOptions:
    """``priority``: 0..255, **lower value is taken first** (like queues); the
    server default is 10. ``idempotency_key``: an invoke repeating a key of the
    same action within 24 h returns the first run's id and creates nothing.
    ``labels``: only workers registered with every key/value here take the run."""

    namespace: str | None = None
    labels: dict[str, Any] | None = None
    priority: int | None = None
    idempotency_key: str | None = None


@dataclass
class ActionStatusOptions:
    namespace: str | None = None


@dataclass
class ActionResultOptions:
    namespace: str | None = None


@dataclass
class ActionListOptions:
    namespace: str | None = None
    limit: int = 100
    prefix: str | None = None
    cursor: str | None = None


@dataclass
class ActionListRunsOptions:
    namespace: str | None = None
    limit: int = 100
    cursor: int | None = None


@dataclass
class ActionDeleteOptions:
    namespace: str | None = None


@dataclass
class ActionCancelOptions:
    namespace: str | None = None


# --- results -------------------------------------------------------------------------------------


@dataclass
class InvokeResult:
    """What ``invoke`` returns: the run's id (also the ``task_id`` its worker sees)."""

    run_id: str


ActionInvokeResult = InvokeResult  # flo-python 0.1.2's name


@dataclass
class ActionRunStatus:
    """A run's state. Times are unix ms; ``attempt`` is 0 until a worker first
    takes the run, then 1, 2, ...; ``output`` is a completed run's result,
    ``error_message`` the last failure's message, ``worker_id`` the current or
    last holder, ``outcome`` the named outcome (``"success"`` unless the
    handler returned ``ctx.result(...)``; only from :meth:`ActionAPI.result`
    and :meth:`ActionAPI.list_runs`)."""

    run_id: str
    status: RunStatus
    created_at_ms: int
    attempt: int
    started_at_ms: int | None = None
    completed_at_ms: int | None = None
    output: bytes | None = None
    error_message: str | None = None
    worker_id: str | None = None
    outcome: str | None = None
    action: str | None = None
    priority: int | None = None

    @property
    def done(self) -> bool:
        """Finished, one way or another."""
        return self.status in _FINISHED

    @property
    def error(self) -> str | None:
        return self.error_message

    def json(self) -> Any:
        """The output parsed as JSON."""
        if not self.output:
            raise ValueError("run has no output")
        return json.loads(self.output)


@dataclass
class ActionInfo:
    name: str
    action_type: ActionType
    timeout_ms: int
    max_retries: int
    owner: str | None = None
    created_at_ms: int = 0
    updated_at_ms: int = 0
    version: int = 1
    pending: int = 0
    running: int = 0


@dataclass
class ActionListResult:
    actions: list[ActionInfo]
    cursor: str | None = None

    @property
    def has_more(self) -> bool:
        return self.cursor is not None


@dataclass
class RunListResult:
    runs: list[ActionRunStatus]
    cursor: int | None = None

    @property
    def has_more(self) -> bool:
        return self.cursor is not None


# --- answers -------------------------------------------------------------------------------------


def _read_status(r: Reader, run_id: str) -> ActionRunStatus:
    code = r.u8()
    try:
        status = RunStatus(code)
    except ValueError:
        raise ProtocolError(f"unknown run status {code}") from None
    created = r.i64()
    started = r.opt_i64()
    completed = r.opt_i64()
    attempt = r.u32()
    output = r.opt_bytes16()
    error = r.opt_bytes16()
    worker = r.opt_bytes16()
    return ActionRunStatus(
        run_id=run_id,
        status=status,
        created_at_ms=created,
        attempt=attempt,
        started_at_ms=started,
        completed_at_ms=completed,
        output=output,
        error_message=error.decode("utf-8", "replace") if error is not None else None,
        worker_id=worker.decode("utf-8", "replace") if worker is not None else None,
    )


def parse_run_status(run_id: str, data: bytes, *, with_outcome: bool = False) -> ActionRunStatus:
    """Decode an ACTION_STATUS answer (or ACTION_RESULT's, which adds ``opt(outcome)``)."""
    try:
        r = Reader(data)
        st = _read_status(r, run_id)
        if with_outcome:
            st.outcome = r.opt_str16()
    except ServerError as e:  # the Reader's MALFORMED
        raise ProtocolError(f"bad run status answer: {e}") from None
    return st


def _invoke_request(input_data: Any, o: "ActionInvokeOptions") -> tuple[bytes, dict[int, bytes]]:
    """ACTION_INVOKE's value ``[has_labels u8][labels str16]?[input: rest]`` and its options."""
    w = Writer()
    if o.labels is not None:
        labels = json.dumps(o.labels, separators=(",", ":")).encode("utf-8")
        if len(labels) > 65535:
            raise BadRequestError("labels are longer than 65535 bytes of JSON")
        w.u8(1).bytes16(labels)
    else:
        w.u8(0)
    w.raw(_payload_bytes(input_data))
    opts: dict[int, bytes] = {}
    if o.priority is not None:
        if not 0 <= int(o.priority) <= 255:
            raise BadRequestError("priority must be 0..255")
        opts[Tag.RUN_PRIORITY] = bytes([int(o.priority)])
    if o.idempotency_key:
        key = o.idempotency_key.encode("utf-8")
        if len(key) > 255:
            raise BadRequestError("idempotency_key is longer than 255 bytes")
        opts[Tag.IDEMPOTENCY_KEY] = key
    return w.getvalue(), opts


def _split_invoke_answer(data: bytes) -> tuple[str, bytes]:
    """An ACTION_INVOKE answer: ``[run_id str16]`` and what follows it."""
    try:
        r = Reader(data)
        return r.str16(), r.rest()
    except ServerError as e:
        raise ProtocolError(f"bad invoke answer: {e}") from None


def _payload_bytes(data: Any) -> bytes:
    """Invoke input: bytes as-is, str as UTF-8, anything else as JSON."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    if data is None:
        return b""
    if isinstance(data, str):
        return data.encode("utf-8")
    return json.dumps(data).encode("utf-8")


# --- the API ---------------------------------------------------------------------------------------


class ActionAPI:
    """``client.action``: register, invoke, status, result, list, list_runs, delete, cancel."""

    def __init__(self, client: "FloClient") -> None:
        self._client = client

    async def register(
        self, name: str, action_type: ActionType | int = ActionType.USER, options: ActionRegisterOptions | None = None
    ) -> None:
        """Create or replace an action.

        Example:
            >>> await client.action.register("resize", ActionType.USER,
            ...                              ActionRegisterOptions(timeout_ms=60000, max_retries=3))  # doctest: +SKIP
        """
        o = options or ActionRegisterOptions()
        value = (
            Writer().u8(int(action_type)).u32(o.timeout_ms).u32(o.max_retries).str16(o.owner or "").getvalue()
        )
        await self._client._call_vo(Op.ACTION_REGISTER, name, value, None, ns=o.namespace)

    async def invoke(self, name: str, input_data: Any = b"", options: ActionInvokeOptions | None = None) -> InvokeResult:
        """Create a run of ``name`` (NotFoundError if the action is not registered).

        ``input_data`` is bytes (str is sent as UTF-8, other values as JSON).

        Example:
            >>> r = await client.action.invoke("resize", b"...", ActionInvokeOptions(priority=0))  # doctest: +SKIP
            >>> r.run_id                                                                           # doctest: +SKIP
            'act-2a'
        """
        o = options or ActionInvokeOptions()
        value, opts = _invoke_request(input_data, o)
        data = await self._client._call_vo(Op.ACTION_INVOKE, name, value, opts, ns=o.namespace)
        return InvokeResult(run_id=_split_invoke_answer(data)[0])

    async def call(
        self, name: str, input_data: Any = b"", timeout_ms: int | None = None, options: ActionInvokeOptions | None = None
    ) -> ActionRunStatus:
        """Invoke ``name`` and wait for the run to finish: :meth:`invoke` then :meth:`result`,
        in one request while the run finishes within ``MAX_BLOCK_MS`` (flo-server's extension:
        ACTION_INVOKE with WAIT_MS). ``timeout_ms`` None waits for good; when it passes first,
        raises :class:`RequestTimeoutError` (the run goes on; its id is in the message).

        Example:
            >>> done = await client.action.call("resize", b"...", timeout_ms=30000)  # doctest: +SKIP
            >>> done.status, done.output                                             # doctest: +SKIP
            (<RunStatus.COMPLETED: 2>, b'...')
        """
        o = options or ActionInvokeOptions()
        loop = asyncio.get_running_loop()
        deadline = None if timeout_ms is None else loop.time() + timeout_ms / 1000
        wait = MAX_BLOCK_MS if timeout_ms is None else max(0, min(int(timeout_ms), MAX_BLOCK_MS))
        value, opts = _invoke_request(input_data, o)
        opts[Tag.WAIT_MS] = wait.to_bytes(4, "little")
        data = await self._client._call_vo(Op.ACTION_INVOKE, name, value, opts, ns=o.namespace, block_ms=wait)
        run_id, rest = _split_invoke_answer(data)
        st = parse_run_status(run_id, rest, with_outcome=True)
        if st.done:
            return st
        left = None if deadline is None else int(max(0.0, deadline - loop.time()) * 1000)
        if left == 0:
            raise RequestTimeoutError(f"run {run_id} did not finish within {timeout_ms} ms (it is {st.status.name})")
        return await self.result(run_id, left, ActionResultOptions(namespace=o.namespace))

    async def status(self, run_id: str, options: ActionStatusOptions | None = None) -> ActionRunStatus:
        """The run's current state (NotFoundError for an unknown run)."""
        o = options or ActionStatusOptions()
        data = await self._client._call(Op.ACTION_STATUS, run_id, b"", ns=o.namespace)
        return parse_run_status(run_id, data)

    async def result(
        self, run_id: str, timeout_ms: int | None = None, options: ActionResultOptions | None = None
    ) -> ActionRunStatus:
        """Wait until the run has finished and return its final state (no polling:
        the server answers when the run finishes). ``timeout_ms`` None waits
        for good; when it passes first, raises :class:`RequestTimeoutError`.

        Example:
            >>> done = await client.action.result(run_id, timeout_ms=30000)  # doctest: +SKIP
            >>> done.status, done.output                                     # doctest: +SKIP
            (<RunStatus.COMPLETED: 2>, b'...')
        """
        o = options or ActionResultOptions()
        loop = asyncio.get_running_loop()
        deadline = None if timeout_ms is None else loop.time() + timeout_ms / 1000
        while True:
            wait = 60_000 if deadline is None else int(max(0.0, deadline - loop.time()) * 1000)
            wait = min(wait, MAX_BLOCK_MS)
            opts = {Tag.WAIT_MS: wait.to_bytes(4, "little")}
            data = await self._client._call_vo(Op.ACTION_RESULT, run_id, b"", opts, ns=o.namespace, block_ms=wait)
            st = parse_run_status(run_id, data, with_outcome=True)
            if st.done:
                return st
            if deadline is not None and loop.time() >= deadline:
                raise RequestTimeoutError(f"run {run_id} did not finish within {timeout_ms} ms (it is {st.status.name})")

    async def cancel(self, run_id: str, options: ActionCancelOptions | None = None) -> bool:
        """Cancel a pending or running run; False if it had already finished.
        A worker still running it finds its report refused (and ``ctx.cancelled`` set)."""
        o = options or ActionCancelOptions()
        data = await self._client._call_vo(Op.ACTION_CANCEL, run_id, b"", None, ns=o.namespace)
        return bool(data[:1] == b"\x01")

    async def list(self, options: ActionListOptions | None = None) -> ActionListResult:
        """Registered actions in name order, ``limit`` per page, filtered by ``prefix``."""
        o = options or ActionListOptions()
        value = Writer().u32(o.limit).raw((o.cursor or "").encode("utf-8")).getvalue()
        data = await self._client._call_vo(Op.ACTION_LIST, o.prefix or "", value, None, ns=o.namespace)
        try:
            r = Reader(data)
            out = []
            for _ in range(r.u16()):
                out.append(
                    ActionInfo(
                        name=r.str16(),
                        action_type=ActionType(r.u8()),
                        timeout_ms=r.u32(),
                        max_retries=r.u32(),
                        owner=r.str16() or None,
                        created_at_ms=r.i64(),
                        updated_at_ms=r.i64(),
                        version=r.u32(),
                        pending=r.u32(),
                        running=r.u32(),
                    )
                )
            cursor = r.opt_str16()
        except (ServerError, ValueError) as e:
            raise ProtocolError(f"bad action list answer: {e}") from None
        return ActionListResult(actions=out, cursor=cursor)

    async def list_runs(self, name: str | None = None, options: ActionListRunsOptions | None = None) -> RunListResult:
        """Runs newest first, of one action or (``name`` None) of the whole namespace.
        Outputs are left out (use :meth:`status`)."""
        o = options or ActionListRunsOptions()
        value = Writer().u32(o.limit)
        if o.cursor is not None:
            value.u64(o.cursor)
        data = await self._client._call_vo(Op.ACTION_LIST_RUNS, name or "", value.getvalue(), None, ns=o.namespace)
        try:
            r = Reader(data)
            runs = []
            for _ in range(r.u16()):
                run_id, action, priority = r.str16(), r.str16(), r.u8()
                st = _read_status(r, run_id)
                st.outcome, st.action, st.priority = r.opt_str16(), action, priority
                runs.append(st)
            cursor = r.opt_u64()
        except ServerError as e:
            raise ProtocolError(f"bad run list answer: {e}") from None
        return RunListResult(runs=runs, cursor=cursor)

    async def delete(self, name: str, options: ActionDeleteOptions | None = None) -> None:
        """Remove an action (its pending runs are cancelled). Idempotent."""
        o = options or ActionDeleteOptions()
        await self._client._call_vo(Op.ACTION_DELETE, name, b"", None, ns=o.namespace)


# --- the low-level worker protocol (what ActionWorker drives) ----------------------------------------------


@dataclass
class TaskAssignment:
    """A run handed to a worker: ``task_id`` is the run id, ``task_type`` the action name."""

    task_id: str
    task_type: str
    payload: bytes
    created_at: int
    attempt: int
    caller_run_id: str = ""
    caller_workflow_name: str = ""


def parse_task_assignment(data: bytes) -> TaskAssignment:
    try:
        r = Reader(data)
        task_id, task_type, created, attempt = r.str16(), r.str16(), r.i64(), r.u32()
        caller_run = caller_wf = ""
        if r.u8() == 1:
            caller_run, caller_wf = r.str16(), r.str16()
        return TaskAssignment(task_id, task_type, r.rest(), created, attempt, caller_run, caller_wf)
    except ServerError as e:
        raise ProtocolError(f"bad task assignment: {e}") from None


@dataclass
class WorkerInfo:
    worker_id: str
    worker_type: WorkerType
    status: WorkerStatus
    current_load: int
    max_concurrency: int
    tasks_completed: int
    tasks_failed: int
    registered_at_ms: int
    last_heartbeat_ms: int
    machine_id: str | None = None


@dataclass
class WorkerListResult:
    workers: list[WorkerInfo]
    cursor: bytes | None = None


@dataclass
class WorkerRegisterOptions:
    """``labels`` are sent as the registration metadata (a JSON object); a run
    invoked with labels only goes to workers offering all of them."""

    namespace: str | None = None
    concurrency: int = 10
    machine_id: str | None = None
    metadata: str | None = None
    labels: dict[str, Any] | None = None
    worker_type: WorkerType = WorkerType.ACTION


@dataclass
class WorkerAwaitOptions:
    namespace: str | None = None
    block_ms: int | None = None  # None = 30000 (the server's default), 0 = don't wait


@dataclass
class WorkerTouchOptions:
    namespace: str | None = None
    extend_ms: int = 30000


@dataclass
class WorkerCompleteOptions:
    namespace: str | None = None
    outcome: str = "success"


@dataclass
class WorkerFailOptions:
    namespace: str | None = None
    retry: bool = True


@dataclass
class WorkerListOptions:
    namespace: str | None = None
    limit: int = 100
    cursor: bytes | None = None


def _read_worker(r: Reader) -> WorkerInfo:
    wid = r.str16()
    wtype, status = WorkerType(r.u8()), WorkerStatus(r.u8())
    load, conc, done, failed, reg, hb = r.u32(), r.u32(), r.u64(), r.u64(), r.i64(), r.i64()
    machine = r.bytes8().decode("utf-8", "replace") if r.present() else None
    return WorkerInfo(wid, wtype, status, load, conc, done, failed, reg, hb, machine)


class WorkerAPI:
    """The worker side of the protocol: register, heartbeat, await_task, touch,
    complete, fail, list, drain, deregister. :class:`ActionWorker` uses it;
    most code never needs it directly."""

    def __init__(self, client: "FloClient") -> None:
        self._client = client

    async def register(self, worker_id: str, task_types: list[str], options: WorkerRegisterOptions | None = None) -> None:
        o = options or WorkerRegisterOptions()
        w = Writer().u8(int(o.worker_type)).u32(o.concurrency).u16(len(task_types))
        for name in task_types:
            w.str16(name).u8(int(o.worker_type))
        metadata = o.metadata
        if o.labels is not None:
            metadata = json.dumps(o.labels, separators=(",", ":"))
        w.opt_str16(metadata or None).opt_str16(o.machine_id or None)
        await self._client._call_vo(Op.WORKER_REGISTER, worker_id, w.getvalue(), None, ns=o.namespace)

    async def heartbeat(self, worker_id: str, current_load: int = 0, namespace: str | None = None) -> None:
        """NotFoundError when the server no longer knows the worker (register again)."""
        await self._client._call_vo(Op.WORKER_HEARTBEAT, worker_id, Writer().u32(current_load).getvalue(), None, ns=namespace)

    async def await_task(
        self, worker_id: str, task_types: list[str], options: WorkerAwaitOptions | None = None
    ) -> TaskAssignment | None:
        """Long-poll for a run of one of ``task_types``; None when the wait ends empty."""
        o = options or WorkerAwaitOptions()
        w = Writer().u32(len(task_types))
        for name in task_types:
            w.str16(name)
        block = 30_000 if o.block_ms is None else o.block_ms
        opts = {Tag.BLOCK_MS: block.to_bytes(4, "little")}
        data = await self._client._call_vo(Op.ACTION_AWAIT, worker_id, w.getvalue(), opts, ns=o.namespace, block_ms=block)
        return parse_task_assignment(data) if data else None

    async def touch(self, worker_id: str, action_name: str, task_id: str, options: WorkerTouchOptions | None = None) -> None:
        o = options or WorkerTouchOptions()
        value = Writer().str16(action_name).str16(task_id).u32(o.extend_ms).getvalue()
        await self._client._call_vo(Op.ACTION_TOUCH, worker_id, value, None, ns=o.namespace)

    async def complete(
        self, worker_id: str, action_name: str, task_id: str, result: bytes, options: WorkerCompleteOptions | None = None
    ) -> None:
        o = options or WorkerCompleteOptions()
        if len(result) > MAX_OUTPUT:
            raise BadRequestError(f"an output is at most {MAX_OUTPUT} bytes, not {len(result)}")
        value = Writer().str16(action_name).str16(task_id).str16(o.outcome).bytes16(result).getvalue()
        await self._client._call_vo(Op.ACTION_COMPLETE, worker_id, value, None, ns=o.namespace)

    async def fail(
        self, worker_id: str, action_name: str, task_id: str, error_message: str, options: WorkerFailOptions | None = None
    ) -> None:
        o = options or WorkerFailOptions()
        value = Writer().str16(action_name).str16(task_id).flag(o.retry).raw(error_message.encode("utf-8")).getvalue()
        await self._client._call_vo(Op.ACTION_FAIL, worker_id, value, None, ns=o.namespace)

    async def list(self, options: WorkerListOptions | None = None) -> WorkerListResult:
        o = options or WorkerListOptions()
        body = Writer().opt_u32(o.limit).bytes16(o.cursor or b"").getvalue()
        data = await self._client._call(Op.WORKER_LIST, b"", body, ns=o.namespace)
        try:
            r = Reader(data)
            workers = [_read_worker(r) for _ in range(r.u16())]
            cursor = r.opt_bytes16()
        except (ServerError, ValueError) as e:
            raise ProtocolError(f"bad worker list answer: {e}") from None
        return WorkerListResult(workers, cursor)

    async def drain(self, worker_id: str, namespace: str | None = None) -> None:
        """The worker gets no more runs (its awaits are refused WORKER_DRAINING); running ones finish."""
        await self._client._call_vo(Op.WORKER_DRAIN, worker_id, b"", None, ns=namespace)

    async def deregister(self, worker_id: str, namespace: str | None = None) -> None:
        await self._client._call_vo(Op.WORKER_DEREGISTER, worker_id, b"", None, ns=namespace)


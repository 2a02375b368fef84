"""flamepy.core's synchronous client API: connections, applications, sessions, tasks.

Every call hops onto the private I/O loop (:mod:`._runtime`) where one
pipelined flo_client connection per endpoint does the work. Task results come
back through a per-process reply queue (one blocking dequeue returns many
completion notices), so waiting costs no polling and scales with batches.

Example::

    import flamepy
    ssn = flamepy.create_session("echo-app")
    futures = [ssn.run(b"x") for _ in range(100)]
    print([f.result() for f in futures][:3])
    ssn.close()
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import concurrent.futures._base as _futures_base
import threading
import time
import uuid
from dataclasses import is_dataclass
from typing import Any, Optional, Sequence, Union

from . import _runtime, ops
from . import records as R
from ._store import Store
from .config import FlameContext, default_client_options, normalize_endpoint
from .types import (Application, ApplicationAttributes, Event, Executor, FlameError, FlameErrorCode, Node,
                    ResourceRequirement, SessionAttributes, SessionState, Task, TaskInformer, TaskState, utc_datetime)

__all__ = ["Connection", "ConnectionInstance", "Session", "TaskWatcher", "TaskIterator", "connect", "connection",
           "register_application", "unregister_application", "update_application", "get_application",
           "list_applications", "list_executors", "list_nodes", "create_session", "open_session", "get_session",
           "list_sessions", "close_session"]

_APP_KEYS = set(ApplicationAttributes.__dataclass_fields__)
# A fallback check of outstanding tasks when no notice came for this long (a lost notice must not hang a client).
_REPLY_IDLE_CHECK_MS = 5000


_SUCCEED = int(TaskState.SUCCEED)
_FINISHED = _futures_base.FINISHED
_PENDING = _futures_base.PENDING


class TaskFuture(concurrent.futures.Future):
    """The future of a submitted task: its output bytes (or None), or a FlameError.

    A real :class:`concurrent.futures.Future` (``wait``, ``as_completed``, ``asyncio.wrap_future`` and
    callbacks work as with any), built lighter because a burst makes thousands: the futures of one
    connection share one condition instead of one ``threading.Condition`` each (a lock, a deque and five
    bound methods the cyclic collector then walks again and again), their waiter and callback lists exist
    only once something is attached, a thread that blocks on one gets an event of its own (so it wakes
    for that future only), and the reply loop resolves a whole reply batch under one lock.
    A task runs once submitted, so ``cancel()`` is always False; close the session to cancel pending tasks.

    >>> fut = ssn.run(b"x"); fut.task_id, fut.result()            # doctest: +SKIP
    ('1', b'x')
    """

    __slots__ = ("_tid", "_w", "_cb", "_ev")

    def __init__(self, condition: threading.Condition, task_id: int) -> None:
        # Not Future.__init__ (its own Condition per future); the same attributes otherwise.
        self._condition = condition
        self._state = _PENDING
        self._result = None
        self._exception = None
        self._tid = task_id
        self._w: Optional[list] = None
        self._cb: Any = None
        self._ev: Optional[threading.Event] = None  # set when finished, made once a thread waits

    @property
    def task_id(self) -> str:
        return str(self._tid)

    # concurrent.futures.wait/as_completed append to ``_waiters``; Future's own code reads both lists.
    @property
    def _waiters(self) -> list:
        if self._w is None:
            self._w = []
        return self._w

    @property
    def _done_callbacks(self) -> list:
        # ``_cb`` is None, the one callback (the usual case: no list for it), or a list of them.
        if type(self._cb) is not list:
            self._cb = [] if self._cb is None else [self._cb]
        return self._cb

    def _invoke_callbacks(self) -> None:
        callbacks = self._cb
        for callback in (callbacks if type(callbacks) is list else () if callbacks is None else (callbacks,)):
            try:
                callback(self)
            except Exception:
                _futures_base.LOGGER.exception("exception calling callback for %r", self)

    def cancel(self) -> bool:
        return False

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def done(self) -> bool:
        return self._state == _FINISHED

    def add_done_callback(self, fn) -> None:
        with self._condition:
            if self._state != _FINISHED:
                if self._cb is None:
                    self._cb = fn
                else:
                    self._done_callbacks.append(fn)
                return
        try:
            fn(self)
        except Exception:
            _futures_base.LOGGER.exception("exception calling callback for %r", self)

    def result(self, timeout: Optional[float] = None):
        if self._state != _FINISHED:
            self._wait(timeout)
        if self._exception is not None:
            try:
                raise self._exception
            finally:
                self = None  # break the cycle through the traceback, as Future does
        return self._result

    def exception(self, timeout: Optional[float] = None) -> Optional[BaseException]:
        if self._state != _FINISHED:
            self._wait(timeout)
        return self._exception

    def _wait(self, timeout: Optional[float]) -> None:
        with self._condition:
            if self._state == _FINISHED:
                return
            if self._ev is None:
                self._ev = threading.Event()
            ev = self._ev
        if not ev.wait(timeout) and self._state != _FINISHED:
            raise concurrent.futures.TimeoutError()

    def set_result(self, result) -> None:
        _settle(self._condition, ((self, result, None),), strict=True)

    def set_exception(self, exception: BaseException) -> None:
        _settle(self._condition, ((self, None, exception),), strict=True)


def _settle(condition: threading.Condition, outcomes, strict: bool = False) -> None:
    """Finish many TaskFutures of one condition: ``outcomes`` = (future, result, exception); one lock for
    all, each waiting thread woken for its own future, then each future's callbacks (outside the lock, as
    Future does). A future that is
    already finished keeps its outcome (``strict``: InvalidStateError, as Future.set_result raises)."""
    called = []
    with condition:
        for fut, result, exc in outcomes:
            if fut._state == _FINISHED:
                if strict:
                    raise concurrent.futures.InvalidStateError(f"{fut._state}: {fut!r}")
                continue
            fut._result = result
            fut._exception = exc
            fut._state = _FINISHED
            if fut._w:
                for waiter in fut._w:
                    if exc is None:
                        waiter.add_result(fut)
                    else:
                        waiter.add_exception(fut)
            if fut._ev is not None:
                fut._ev.set()
            if fut._cb is not None:
                called.append(fut)
    for fut in called:
        fut._invoke_callbacks()


# How long one watch_task read waits for the record to change before it looks again.
_WATCH_WAIT_MS = 250
# Threads that follow tasks for TaskInformers (Flame's 10-thread watcher pool; only informer users pay for it).
_INFORMER_THREADS = 10


class Connection:
    """A connection to a flo-server serving flamepy.

    >>> conn = flamepy.connect("127.0.0.1:9000")                 # doctest: +SKIP
    >>> [a.name for a in conn.list_applications()]               # doctest: +SKIP
    ['flmrun', 'flmexec', 'flmping']
    >>> ssn = conn.create_session(flamepy.SessionAttributes(application="flmping"))  # doctest: +SKIP
    """

    def __init__(self, endpoint: str, timeout: float = 10.0, client_options: Optional[dict] = None) -> None:
        self.addr = endpoint
        self.endpoint = normalize_endpoint(endpoint)
        self._store = Store(self.endpoint, client_options=client_options)
        _runtime.run(self._store.connect(timeout))
        self.client_id = uuid.uuid4().hex
        self._reply_queue = R.q_reply(self.client_id)
        self._waiters: dict[tuple[str, int], TaskFuture] = {}
        self._settled = threading.Condition()  # the one condition all this connection's TaskFutures share
        self._early: dict[tuple[str, int], list] = {}
        self._reply_task: Optional[asyncio.Task] = None
        self._informer_pool: Optional[concurrent.futures.ThreadPoolExecutor] = None
        self._closed = False

    @classmethod
    def connect(cls, addr: str, tls_config: Any = None) -> "Connection":
        """Flame's spelling of :func:`connect`."""
        return connect(addr, tls_config)

    # -- plumbing ---------------------------------------------------------------------------------------------

    @property
    def store(self) -> Store:
        return self._store

    def _call(self, coro):
        if self._closed:
            coro.close()
            raise FlameError(FlameErrorCode.INVALID_STATE, "connection is closed")
        return _runtime.run(coro)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self._informer_pool is not None:
                self._informer_pool.shutdown(wait=False, cancel_futures=True)
            _runtime.run(self._store.close())

    def _informers(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._informer_pool is None:
            self._informer_pool = concurrent.futures.ThreadPoolExecutor(_INFORMER_THREADS,
                                                                        thread_name_prefix="flamepy-informer")
        return self._informer_pool

    # -- applications -----------------------------------------------------------------------------------------

    def register_application(self, name: str, attrs: Union[ApplicationAttributes, dict]) -> None:
        self._call(ops.register_application(self._store, name, _attrs_dict(attrs)))

    def update_application(self, name: str, attrs: Union[ApplicationAttributes, dict]) -> None:
        self._call(ops.update_application(self._store, name, _attrs_dict(attrs)))

    def unregister_application(self, name: str) -> None:
        self._call(ops.unregister_application(self._store, name))

    def get_application(self, name: str) -> Optional[Application]:
        rec = self._call(ops.get_application(self._store, name))
        return R.app_from_record(rec) if rec else None

    def list_applications(self) -> list[Application]:
        return [R.app_from_record(r) for r in self._call(ops.list_applications(self._store))]

    # -- cluster ----------------------------------------------------------------------------------------------

    def list_executors(self) -> list[Executor]:
        """Every executor (one per service instance) of every live node, Flame's ``.metadata/.spec/.status`` shape."""
        return [R.executor_from_record(iid, rec) for iid, rec in self._call(ops.list_executor_records(self._store))]

    def list_nodes(self) -> list[Node]:
        """Every node whose executor manager heartbeats, with capacity, allocatable resources and info."""
        return self._call(ops.list_nodes(self._store))

    def get_node(self, name: str) -> Node:
        """One node by name (Flame's Rust/flmctl ``get_node``); FlameError(NOT_FOUND) when it is not alive."""
        for node in self.list_nodes():
            if node.metadata.name == name:
                return node
        raise FlameError(FlameErrorCode.NOT_FOUND, f"node <{name}> not found")

    # -- sessions ---------------------------------------------------------------------------------------------

    def create_session(self, attrs: SessionAttributes, priority: int = 0) -> "Session":
        if not isinstance(attrs, SessionAttributes):
            raise TypeError("Connection.create_session takes SessionAttributes(application=...); "
                            "flamepy.create_session(application, ...) takes the fields themselves")
        rec = self._call(ops.create_session(self._store, attrs.application, attrs.common_data, attrs.id,
                                            attrs.min_instances, attrs.max_instances, attrs.batch_size, priority,
                                            ResourceRequirement.coerce(attrs.resreq)))
        return Session(self, rec, {c: 0 for c in R.COUNTERS})

    def open_session(self, session_id: str, spec: Optional[SessionAttributes] = None) -> "Session":
        spec_dict = None
        if spec is not None:
            spec_dict = {"application": spec.application, "common_data": spec.common_data,
                         "min_instances": spec.min_instances, "max_instances": spec.max_instances,
                         "batch_size": spec.batch_size, "resreq": ResourceRequirement.coerce(spec.resreq)}
        rec = self._call(ops.open_session(self._store, session_id, spec_dict))
        return Session(self, rec, None)

    def get_session(self, session_id: str) -> "Session":
        rec, counters = self._call(ops.get_session(self._store, session_id))
        return Session(self, rec, counters)

    def list_sessions(self) -> list["Session"]:
        return [Session(self, rec, c) for rec, c in self._call(ops.list_sessions(self._store))]

    def close_session(self, session_id: str) -> "Session":
        rec = self._call(ops.close_session(self._store, session_id))
        return Session(self, rec, None)

    # -- task results -----------------------------------------------------------------------------------------

    def _submit(self, session_id: str, inputs: Sequence[Optional[bytes]]) -> list[concurrent.futures.Future]:
        return self._call(self._submit_async(session_id, inputs))

    async def _submit_async(self, sid: str, inputs) -> list[concurrent.futures.Future]:
        ids = await ops.create_tasks(self._store, sid, inputs, self._reply_queue)
        settled = self._settled
        futures = [TaskFuture(settled, tid) for tid in ids]
        waiters, early = self._waiters, self._early
        if early:  # notices that came before this call returned (rare: a tiny batch on a fast instance)
            outcomes = []
            for fut in futures:
                notice = early.pop((sid, fut._tid), None)
                if notice is None:
                    waiters[(sid, fut._tid)] = fut
                elif notice[4]:  # output was chunked: fetch it from the task record
                    asyncio.get_running_loop().create_task(self._resolve_from_record(fut, (sid, fut._tid)))
                else:
                    outcomes.append(self._outcome(fut, notice))
            _settle(settled, outcomes)
        else:
            waiters.update(zip([(sid, tid) for tid in ids], futures))
        if self._waiters and (self._reply_task is None or self._reply_task.done()):
            self._reply_task = asyncio.get_running_loop().create_task(self._reply_loop())
        return futures

    async def _reply_loop(self) -> None:
        idle_since = time.monotonic()
        while self._waiters and not self._closed:
            try:
                msgs = await self._store.dequeue(self._reply_queue, 1024, block_ms=1000)
            except Exception as exc:  # the connection broke: fail what waits, loudly
                self._fail_all(FlameError(FlameErrorCode.INTERNAL, f"lost connection to flo-server: {exc}"))
                return
            if not msgs:
                if (time.monotonic() - idle_since) * 1000 >= _REPLY_IDLE_CHECK_MS:
                    await self._check_outstanding()
                    idle_since = time.monotonic()
                continue
            idle_since = time.monotonic()
            waiters, early, outcome = self._waiters, self._early, self._outcome
            outcomes = []
            for _, payload in msgs:
                for notice in R.notices_in(payload):
                    key = (notice[0], notice[1])
                    fut = waiters.pop(key, None)
                    if fut is None:
                        if len(early) < 100_000:
                            early[key] = notice
                    elif notice[4]:  # output was chunked: fetch it from the task record
                        asyncio.get_running_loop().create_task(self._resolve_from_record(fut, key))
                    else:
                        outcomes.append(outcome(fut, notice))
            _settle(self._settled, outcomes)  # the whole reply batch under one lock
            await self._store.ack(self._reply_queue, [seq for seq, _ in msgs])

    async def _check_outstanding(self) -> None:
        keys = list(self._waiters)[:4096]
        vals = await self._store.mget([R.k_task(s, t) for s, t in keys])
        for key, v in zip(keys, vals):
            if v is None:
                continue
            rec = R.unpack(v[0])
            if rec["state"] in (2, 3, 4) and key in self._waiters:
                await self._resolve_from_record(self._waiters.pop(key), key)

    async def _resolve_from_record(self, fut, key) -> None:
        try:
            task = await ops.load_task(self._store, *key)
            if task.state == TaskState.SUCCEED:
                fut.set_result(task.output)
            else:
                rec, _ = await ops.get_task_record(self._store, *key)
                fut.set_exception(FlameError(FlameErrorCode.INTERNAL, R.failure_message(rec)))
        except Exception as exc:
            if not fut.done():
                fut.set_exception(exc)

    @staticmethod
    def _outcome(fut: TaskFuture, notice: list) -> tuple:
        """(future, result, exception) of a completion notice, for :func:`_settle`."""
        _, _, state, out_ref, _, message = notice
        if state == _SUCCEED:
            return fut, (out_ref[1] if out_ref else None), None
        return fut, None, FlameError(FlameErrorCode.INTERNAL, message or "Task failed without error message")

    def _fail_all(self, exc: Exception) -> None:
        waiters, self._waiters = self._waiters, {}
        for fut in waiters.values():
            if not fut.done():
                fut.set_exception(exc)


def _attrs_dict(attrs: Union[ApplicationAttributes, dict]) -> dict:
    if is_dataclass(attrs):
        out = {f: getattr(attrs, f) for f in _APP_KEYS}
        return out
    if not isinstance(attrs, dict):
        raise TypeError("attrs must be ApplicationAttributes or dict")
    unknown = set(attrs) - _APP_KEYS
    if unknown:
        raise TypeError(f"unknown application attribute(s): {', '.join(sorted(unknown))}")
    return dict(attrs)


class Session:
    """A snapshot of a Flame session plus the task operations on it."""

    def __init__(self, connection: Connection, rec: dict, counters: Optional[dict]) -> None:
        self.connection = connection
        self.id: str = rec["id"]
        self.application: str = rec["app"]
        self.state = SessionState(rec["state"])
        self.creation_time = utc_datetime(rec["ctime"])
        self.completion_time = utc_datetime(rec.get("dtime"))
        counters = counters or {}
        self.pending = counters.get("pending", 0)
        self.running = counters.get("running", 0)
        self.succeed = counters.get("succeed", 0)
        self.failed = counters.get("failed", 0)
        self.cancelled = counters.get("cancelled", 0)
        self.events: list[Event] = R.events_of(rec)
        self.resreq = ResourceRequirement.from_list(rec.get("resreq"))
        self.priority: int = rec.get("priority", 0)
        self.min_instances: int = rec.get("min", 0)
        self.max_instances: Optional[int] = rec.get("max")
        self._common_data: Optional[bytes] = rec.get("common_data")

    def common_data(self) -> Optional[bytes]:
        return self._common_data

    def create_task(self, input: Optional[bytes]) -> Task:
        conn = self.connection
        tid = conn._call(ops.create_tasks(conn.store, self.id, [input], None))[0]
        return Task(id=str(tid), session_id=self.id, state=TaskState.PENDING,
                    creation_time=utc_datetime(int(time.time() * 1000)), input=input,
                    events=[Event(int(TaskState.PENDING), "Task was created with state <Pending>",
                                  utc_datetime(int(time.time() * 1000)))])

    def get_task(self, task_id) -> Task:
        return self.connection._call(ops.load_task(self.connection.store, self.id, task_id))

    def list_tasks(self) -> "TaskIterator":
        """Every task of the session in id order, read lazily a page (256 tasks, one ``mget``) at a time.

        >>> for task in ssn.list_tasks():                         # doctest: +SKIP
        ...     print(task.id, task.state.name)
        """
        return TaskIterator(self)

    def watch_task(self, task_id, timeout: Optional[float] = None) -> "TaskWatcher":
        return TaskWatcher(self, str(task_id), timeout)

    def run(self, input: Optional[bytes], informer: Optional[TaskInformer] = None) -> concurrent.futures.Future:
        """Create one task now; the Future gets its output bytes (or None) or a FlameError.

        With an ``informer`` (flamepy 0.5's argument, which Flame's own 0.6 examples still pass), a pooled
        thread follows the task and calls ``informer.on_update(task)`` at each state change.

        >>> fut = ssn.run(b"x"); fut.result()                     # doctest: +SKIP
        b'x'
        """
        future = self.connection._submit(self.id, [input])[0]
        if informer is not None:
            self.connection._informers().submit(self._inform, future.task_id, informer)
        return future

    def _inform(self, task_id: str, informer: TaskInformer) -> None:
        try:
            for task in self.watch_task(task_id):
                informer.on_update(task)
        except FlameError as exc:
            informer.on_error(exc)
        except Exception as exc:  # the informer's own bug must not vanish silently
            informer.on_error(FlameError(FlameErrorCode.INTERNAL, f"watch failed: {exc}"))

    def run_many(self, inputs: Sequence[Optional[bytes]]) -> list[concurrent.futures.Future]:
        """Create many tasks in one pipelined burst (the fast path for batches)."""
        return self.connection._submit(self.id, list(inputs)) if inputs else []

    def invoke(self, input: Optional[bytes], informer: Optional[TaskInformer] = None) -> Optional[bytes]:
        """Run one task and wait for its output (a FlameError if it failed); an ``informer`` is called in this
        thread, so every update has been delivered when ``invoke`` returns."""
        future = self.connection._submit(self.id, [input])[0]
        if informer is not None:
            self._inform(future.task_id, informer)
        return future.result()

    def close(self) -> None:
        self.connection.close_session(self.id)
        self.state = SessionState.CLOSED

    def __repr__(self) -> str:
        return f"Session(id={self.id!r}, application={self.application!r}, state={self.state.name})"


class TaskIterator:
    """The tasks of a session in id order, fetched a page at a time (``Session.list_tasks()``)."""

    PAGE = 256

    def __init__(self, session: Session) -> None:
        self._session = session
        self._ids: Optional[list[int]] = None
        self._page: list[Task] = []
        self._next = 0

    def __iter__(self) -> "TaskIterator":
        return self

    def __next__(self) -> Task:
        conn, sid = self._session.connection, self._session.id
        if self._ids is None:
            self._ids = conn._call(ops.task_ids(conn.store, sid))
        while not self._page:
            if self._next >= len(self._ids):
                raise StopIteration
            ids = self._ids[self._next:self._next + self.PAGE]
            self._next += len(ids)
            self._page = conn._call(ops.load_tasks(conn.store, sid, ids))[::-1]
        return self._page.pop()


class TaskWatcher:
    """Iterator over a task's state changes; ends after a terminal state (``Session.watch_task(id, timeout)``).

    The first item is the task as it is now; then one item per change of state. ``timeout`` (seconds) bounds
    the whole watch: TimeoutError when it passes, checked while waiting too (Flame checked only between updates).
    """

    def __init__(self, session: Session, task_id: str, timeout: Optional[float]) -> None:
        self._session = session
        self._task_id = task_id
        self._timeout = timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._last_state: Optional[int] = None
        self._done = False

    def __iter__(self) -> "TaskWatcher":
        return self

    def __next__(self) -> Task:
        if self._done:
            raise StopIteration
        conn = self._session.connection
        key = R.k_task(self._session.id, self._task_id)
        block_ms = 0  # the first read answers at once: the task as it is now
        while True:
            if self._deadline is not None:
                left_ms = int((self._deadline - time.monotonic()) * 1000)
                if left_ms <= 0:
                    raise TimeoutError(f"watch_task timed out after {self._timeout} seconds")
                block_ms = min(block_ms, left_ms) if block_ms else 0
            try:
                # A CHANGE read that times out answers the current value, so a change that landed between two
                # reads shows up after at most one wait (kept short for that reason).
                got = conn._call(conn.store.get(key, block_ms=block_ms, change=bool(block_ms)))
            except FlameError:
                raise
            except Exception as exc:
                raise FlameError(FlameErrorCode.INTERNAL, f"failed to watch task: {exc}") from None
            if got is None:
                raise FlameError(FlameErrorCode.NOT_FOUND, f"failed to watch task: task <{self._task_id}> of "
                                                            f"session <{self._session.id}> not found")
            state = R.unpack(got[0])["state"]
            if state != self._last_state:
                self._last_state = state
                task = self._session.get_task(self._task_id)
                if task.is_completed():
                    self._done = True
                return task
            block_ms = _WATCH_WAIT_MS


# -- the process-wide default connection ----------------------------------------------------------------------

class ConnectionInstance:
    """Flame's holder of the process-wide default connection: ``ConnectionInstance.instance()``."""

    @classmethod
    def instance(cls) -> "Connection":
        return connection()


_default: Optional[Connection] = None
_default_lock = threading.Lock()


def set_default_connection(conn: Connection) -> None:
    """Make ``conn`` the one the module-level functions (and the object cache) use, e.g. flmctl's ``--config``."""
    global _default
    with _default_lock:
        _default = conn


def connect(addr: str, tls_config: Any = None) -> Connection:
    """Open a new connection (the module-level functions use their own default one)."""
    if not addr:
        raise FlameError(FlameErrorCode.INVALID_CONFIG, "address is empty")
    opts = None
    if tls_config is not None:
        ca = getattr(tls_config, "ca_file", None) or (tls_config.get("ca_file") if isinstance(tls_config, dict)
                                                      else None)
        opts = {**default_client_options(), "tls": True, **({"ca_file": ca} if ca else {})}
    return Connection(addr, client_options=opts)


def connection() -> Connection:
    """The lazily created default connection, from ``~/.flame/flame.yaml`` and ``FLAME_ENDPOINT``."""
    global _default
    with _default_lock:
        if _default is None or _default._closed:
            ctx = FlameContext.load()
            _default = Connection(ctx.endpoint, client_options=ctx.client_options())
        return _default


def register_application(name: str, attrs: Union[ApplicationAttributes, dict]) -> None:
    connection().register_application(name, attrs)


def update_application(name: str, attrs: Union[ApplicationAttributes, dict]) -> None:
    connection().update_application(name, attrs)


def unregister_application(name: str) -> None:
    connection().unregister_application(name)


def get_application(name: str) -> Optional[Application]:
    return connection().get_application(name)


def list_executors() -> list[Executor]:
    return connection().list_executors()


def list_nodes() -> list[Node]:
    return connection().list_nodes()


def list_applications() -> list[Application]:
    return connection().list_applications()


def create_session(application: str, common_data: Optional[bytes] = None, session_id: Optional[str] = None,
                   min_instances: int = 0, max_instances: Optional[int] = None, batch_size: int = 1,
                   resreq: Union[ResourceRequirement, dict, str, None] = None) -> Session:
    return connection().create_session(SessionAttributes(application=application, id=session_id,
                                                         common_data=common_data, min_instances=min_instances,
                                                         max_instances=max_instances, batch_size=batch_size,
                                                         resreq=ResourceRequirement.coerce(resreq)))


def open_session(session_id: str, spec: Optional[SessionAttributes] = None) -> Session:
    return connection().open_session(session_id, spec)


def get_session(session_id: str) -> Session:
    return connection().get_session(session_id)


def list_sessions() -> list[Session]:
    return connection().list_sessions()


def close_session(session_id: str) -> Session:
    return connection().close_session(session_id)

"""``Runner``: run local functions, classes and objects on a Flame cluster without writing a service.

Example (Flame's Runner tutorial, verbatim)::

    from flamepy.runner import Runner

    def sum_fn(a: int, b: int) -> int:
        return a + b

    with Runner("sum-app") as runner:
        sum_service = runner.service(sum_fn)
        result = sum_service(1, 3)
        print(result.get())            # 4

What happens: the Runner packages the current directory (flamepy.runner.package),
stores the package (object cache or ``file://``, flamepy.runner.storage) and
registers application ``sum-app`` from the ``flmrun`` template; each
``service`` opens a session whose common data points at the execution object;
each call is one task whose result lands in the object cache. ``close`` (or
leaving the ``with``, also on an exception) closes the sessions — calls still
running are cancelled — waits for their instances to stop, unregisters the
application and deletes its objects.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import re
import shutil
import threading
import time
from typing import Any, Iterator, Optional, Sequence

import cloudpickle

from ..core import _runtime, cache, ops
from ..core import records as R
from ..core.cache import ObjectRef
from ..core.client import connection
from ..core.config import FlameContext
from ..core.types import (ApplicationAttributes, FlameError, FlameErrorCode, ResourceRequirement, SessionAttributes,
                          SessionState,
                          validate_application_name)
from .package import Package, build_package
from .storage import PackageStorage, create_storage
from .types import INLINE_RESULT_PREFIX, RunnerContext, RunnerRequest, SessionContext

__all__ = ["ObjectFuture", "ObjectFutureIterator", "RunnerService", "Runner"]

log = logging.getLogger("flamepy.runner")

CLOSE_WAIT_S = 15.0   # how long close waits for the sessions' instances to stop
GET_THREADS = 8       # Runner.get fetches this many results at once (pipelined on the one connection)
_PYTHON_VERSION = re.compile(r"^\d+(\.\d+){0,2}$")


class ObjectFuture:
    """The result of one remote call: ``get()`` the object, ``ref()`` its ObjectRef, ``wait()``.

    A failed call raises its FlameError from all three (message: ``"<ExceptionType>: <text>"``).
    Passing an ObjectFuture to another call sends its ObjectRef, not the object. A small result
    came inline with the task; ``ref()`` of it stores it in the object cache first (once).
    """

    def __init__(self, future: concurrent.futures.Future, key_prefix: Optional[str] = None) -> None:
        self._future = future
        self._key_prefix = key_prefix   # <app>/<session>: where ref() stores an inline result
        self._ref: Optional[ObjectRef] = None
        self._lock = threading.Lock()

    def _output(self) -> bytes:
        out = self._future.result()
        if not out:
            raise FlameError(FlameErrorCode.INTERNAL, "the call returned no result")
        return out

    def ref(self) -> ObjectRef:
        """The ObjectRef of the result (waits for the call)."""
        out = self._output()
        if not out.startswith(INLINE_RESULT_PREFIX):
            return ObjectRef.decode(out)
        with self._lock:
            if self._ref is None:
                if self._key_prefix is None:
                    raise FlameError(FlameErrorCode.INVALID_STATE, "this future does not know its session")
                self._ref = cache.put_object(self._key_prefix, cloudpickle.loads(out[len(INLINE_RESULT_PREFIX):]))
            return self._ref

    def _inline(self) -> bool:
        """Whether the result came with the task (waits for the call; a failed call counts as inline)."""
        try:
            return self._output().startswith(INLINE_RESULT_PREFIX)
        except Exception:
            return True

    def get(self) -> Any:
        """The result object (waits for the call; a big one is fetched from the object cache)."""
        out = self._output()
        if out.startswith(INLINE_RESULT_PREFIX):
            return cloudpickle.loads(out[len(INLINE_RESULT_PREFIX):])
        return cache.get_object(ObjectRef.decode(out))

    def wait(self) -> None:
        """Wait for the call to finish; raises its error if it failed."""
        self._future.result()

    def done(self) -> bool:
        return self._future.done()

    def __repr__(self) -> str:
        return f"ObjectFuture(done={self._future.done()})"


class ObjectFutureIterator:
    """Iterates ObjectFutures in completion order (``Runner.select``)."""

    def __init__(self, futures: Sequence[ObjectFuture]) -> None:
        self._by_future = {f._future: f for f in futures}

    def __iter__(self) -> Iterator[ObjectFuture]:
        for fut in concurrent.futures.as_completed(self._by_future):
            yield self._by_future[fut]


class _Submitter:
    """A service's calls go to its session in batches: a call returns at once, and the calls made
    while one batch is being written go together in the next (one id allocation, one KV_MPUT and
    one queue message per 64 tasks, instead of two round trips per call). Order is kept."""

    def __init__(self, conn, session_id: str) -> None:
        self._conn = conn
        self._sid = session_id
        self._lock = threading.Lock()
        self._pending: list[tuple[bytes, concurrent.futures.Future]] = []
        self._flushing = False

    def submit(self, data: bytes) -> concurrent.futures.Future:
        outer: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            self._pending.append((data, outer))
            start = not self._flushing
            self._flushing = True
        if start:
            _runtime.loop().call_soon_threadsafe(lambda: asyncio.ensure_future(self._flush()))
        return outer

    async def _flush(self) -> None:
        while True:
            with self._lock:
                batch, self._pending = self._pending, []
                if not batch:
                    self._flushing = False
                    return
            try:
                inner = await self._conn._submit_async(self._sid, [d for d, _ in batch])
            except Exception as exc:  # the session closed, the server went away: every call of the batch says so
                for _, outer in batch:
                    outer.set_exception(exc)
                continue
            for (_, outer), fut in zip(batch, inner):
                fut.add_done_callback(lambda f, o=outer: _copy_outcome(f, o))


def _copy_outcome(src: concurrent.futures.Future, dst: concurrent.futures.Future) -> None:
    exc = src.exception()
    if exc is not None:
        dst.set_exception(exc)
    else:
        dst.set_result(src.result())


class RunnerService:
    """One execution object served by one session of the Runner's application.

    A function service is called directly (``svc(1, 2)``); a class or object service has one
    method per public callable of the object (``svc.add(1)``). Every call returns an
    :class:`ObjectFuture`.
    """

    def __init__(self, app: str, execution_object: Any, autoscale: Optional[bool] = None, warmup: int = 0,
                 resreq: Any = None) -> None:
        self._app = app
        self._execution_object = execution_object
        self._closed = False
        context = RunnerContext(execution_object=execution_object, autoscale=autoscale, warmup=warmup)
        self._context = context
        custom = getattr(execution_object, "_session_context", None)
        if custom is not None and not isinstance(custom, SessionContext):
            log.warning("_session_context of %r is a %s, not a SessionContext: ignored", execution_object,
                        type(custom).__name__)
            custom = None
        session_id = custom.session_id if custom is not None and custom.session_id else ops.short_name(app)
        # A named session may be open already (a task that calls its own service, Flame's recursive
        # runner): then it is joined, and closing this service leaves it to the one that opened it.
        self.owns_session = not _session_open(session_id)
        ref = cache.put_object(f"{app}/{session_id}", context)
        spec = SessionAttributes(application=app, id=session_id, common_data=ref.encode(),
                                 min_instances=context.min_instances, max_instances=context.max_instances,
                                 resreq=ResourceRequirement.coerce(resreq))
        try:
            self._session = connection().open_session(session_id, spec)
        except Exception:
            _quietly(cache.delete_objects, ref.key)
            raise
        self._submitter = _Submitter(connection(), self._session.id)
        self._is_function = context.kind == "function"
        if not self._is_function:
            self._add_method_wrappers()

    @property
    def session_id(self) -> str:
        return self._session.id

    def _add_method_wrappers(self) -> None:
        for name in dir(self._execution_object):
            if name.startswith("_"):
                continue
            try:
                attr = getattr(self._execution_object, name)
            except Exception:  # a property that fails on access is no method
                continue
            if not callable(attr):
                continue
            if hasattr(RunnerService, name):
                log.warning("method %r of %r is not wrapped: it clashes with RunnerService.%s", name,
                            self._execution_object, name)
                continue
            setattr(self, name, self._wrapper(name))

    def _wrapper(self, method: str):
        def call(*args, **kwargs) -> ObjectFuture:
            return self._submit(method, args, kwargs)
        call.__name__ = method
        call.__qualname__ = f"RunnerService.{method}"
        return call

    def __call__(self, *args, **kwargs) -> ObjectFuture:
        if not self._is_function:
            raise TypeError(f"RunnerService for app '{self._app}' is not callable: its execution object is a "
                            f"{self._context.kind}; call its methods instead")
        return self._submit(None, args, kwargs)

    def _submit(self, method: Optional[str], args: tuple, kwargs: dict) -> ObjectFuture:
        if self._closed:
            raise FlameError(FlameErrorCode.INVALID_STATE, f"service session {self._session.id} is closed")
        # An ObjectFuture argument goes as its ObjectRef (waiting for that call first); the
        # service fetches the object itself, so the client never downloads it.
        args = tuple(a.ref() if isinstance(a, ObjectFuture) else a for a in args)
        kwargs = {k: v.ref() if isinstance(v, ObjectFuture) else v for k, v in kwargs.items()}
        request = RunnerRequest(method=method, args=args or None, kwargs=kwargs or None)
        return ObjectFuture(self._submitter.submit(cloudpickle.dumps(request)), f"{self._app}/{self._session.id}")

    def close(self) -> None:
        """Close the session (if this service opened it); calls still pending or running are
        cancelled (their futures raise)."""
        if self._closed:
            return
        self._closed = True
        if not self.owns_session:
            return
        conn = connection()
        conn._call(ops.close_session(conn.store, self._session.id, force=True))


def _session_open(session_id: str) -> bool:
    try:
        return connection().get_session(session_id).state == SessionState.OPEN
    except FlameError:
        return False


def _quietly(fn, *args) -> None:
    try:
        fn(*args)
    except Exception as exc:
        log.warning("cleanup step %s%r failed: %s", getattr(fn, "__name__", fn), args, exc)


def _package_settings(ctx: FlameContext) -> tuple[Optional[str], list, str]:
    """(package.storage, package.excludes, runner.template) of the client's context."""
    return ctx.package.storage, list(ctx.package.excludes or []), ctx.runner.template or "flmrun"


class Runner:
    """Package the current directory, register a temporary application, serve Python objects from it.

    ``Runner(name, fail_if_exists=False, dependencies=None, python_version=None)`` starts at
    once: when application ``name`` exists already it is reused (``fail_if_exists=True``:
    FlameError ALREADY_EXISTS) and close leaves it registered. ``dependencies`` (PyPI
    requirements) are installed with the package; ``python_version`` (e.g. ``"3.11"``) must
    match the executor's Python.

    >>> with Runner("sum-app") as runner:                      # doctest: +SKIP
    ...     print(runner.service(sum)([1, 2, 3]).get())
    6
    """

    def __init__(self, name: str, fail_if_exists: bool = False, dependencies: Optional[Sequence[str]] = None,
                 python_version: Optional[str] = None) -> None:
        validate_application_name(name)
        if dependencies is not None and (isinstance(dependencies, str)
                                         or not all(isinstance(d, str) for d in dependencies)):
            raise FlameError(FlameErrorCode.INVALID_ARGUMENT, "dependencies must be a list of requirement strings")
        if python_version is not None and not _PYTHON_VERSION.match(str(python_version)):
            raise FlameError(FlameErrorCode.INVALID_ARGUMENT,
                             f"invalid python_version {python_version!r}, expected e.g. '3.11'")
        self._name = name
        self._fail_if_exists = fail_if_exists
        self._dependencies = list(dependencies or [])
        self._python_version = str(python_version) if python_version is not None else None
        self._services: list[RunnerService] = []
        self._package: Optional[Package] = None
        self._storage: Optional[PackageStorage] = None
        self._owner = False     # registered the application (so close unregisters it)
        self._started = False
        self._closed = False
        self._start()

    @property
    def name(self) -> str:
        return self._name

    @property
    def _app_registered(self) -> bool:
        """Flame 0.6's name for "this Runner registered the application" (its e2e helpers read it)."""
        return self._owner

    # -- start and close ---------------------------------------------------------------------------------

    def _start(self) -> None:
        if self._started:
            return
        conn = connection()
        if conn.get_application(self._name) is not None:
            self._reuse()
            return
        storage_url, excludes, template_name = _package_settings(FlameContext.load())
        template = conn.get_application(template_name)
        if template is None:
            raise FlameError(FlameErrorCode.NOT_FOUND,
                             f"Runner template application '{template_name}' is not registered (a flo-server "
                             "with its executor registers flmrun; or set runner.template in flame.yaml)")
        self._storage = create_storage(storage_url, self._name)
        try:
            self._package = build_package(os.getcwd(), self._name, self._dependencies, excludes)
            url = self._storage.upload(self._package)
            environments = dict(template.environments or {})
            if self._python_version:
                environments["FLAME_PYTHON_VERSION"] = self._python_version
            attrs = ApplicationAttributes(
                shim=template.shim, image=template.image, description=f"Runner application: {self._name}",
                labels=list(template.labels or []), command=template.command,
                arguments=list(template.arguments or []), environments=environments,
                working_directory=f"{template.working_directory.rstrip('/')}/{self._name}"
                if template.working_directory else None,
                max_instances=template.max_instances, delay_release=template.delay_release,
                schema=template.schema, url=url, installer=template.installer)
            conn.register_application(self._name, attrs)
        except FlameError as exc:
            self._discard_package()
            if "already exists" in exc.message:  # another Runner of this name registered it meanwhile
                self._reuse()
                return
            raise
        except BaseException:
            self._discard_package()
            raise
        self._owner = True
        self._started = True
        log.info("runner %s: application registered with package %s (%d files, %d bytes)", self._name, url,
                 self._package.files, self._package.size)

    def _reuse(self) -> None:
        if self._fail_if_exists:
            raise FlameError(FlameErrorCode.ALREADY_EXISTS,
                             f"Application '{self._name}' already exists. Set fail_if_exists=False to reuse it.")
        log.info("runner %s: the application exists already; reusing it (close leaves it registered)", self._name)
        self._started = True

    def _discard_package(self) -> None:
        if self._package is not None:
            if self._storage is not None:
                _quietly(self._storage.delete, self._package)
            shutil.rmtree(os.path.dirname(self._package.path), ignore_errors=True)
            self._package = None

    def __enter__(self) -> "Runner":
        self._start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def close(self) -> None:
        """Close the services (cancelling calls still running), then unregister the application and
        delete its objects and package. Idempotent; errors are logged, not raised."""
        if self._closed or not self._started:
            return
        self._closed = True
        sessions = [s.session_id for s in self._services if s.owns_session]
        for svc in self._services:
            _quietly(svc.close)
        _quietly(self._wait_released, sessions)
        if self._owner:
            _quietly(connection().unregister_application, self._name)
            _quietly(cache.delete_objects, f"{self._name}/*")
            self._discard_package()
        else:  # a reused application stays, with everything but what our own sessions made
            for sid in sessions:
                _quietly(cache.delete_objects, f"{self._name}/{sid}")

    def _wait_released(self, session_ids: list[str], timeout: float = CLOSE_WAIT_S) -> None:
        """Until the executors have stopped every instance of these sessions (none left behind)."""
        if not session_ids:
            return
        conn = connection()
        store = conn.store

        async def instances_left() -> int:
            allocs = await store.mget([R.k_alloc(s) for s in session_ids])
            live = {k[len("node/"):] for k in await store.scan("node/")}
            return sum(n for a in allocs if a for node, n in R.unpack(a[0]).items() if node in live)

        deadline = time.monotonic() + timeout
        while conn._call(instances_left()) > 0:
            if time.monotonic() > deadline:
                log.warning("runner %s: instances of %s still running after %.0fs", self._name, session_ids, timeout)
                return
            time.sleep(0.05)

    # -- services and results ----------------------------------------------------------------------------

    def service(self, execution_object: Any, autoscale: Optional[bool] = None, warmup: int = 0,
                resreq: Any = None) -> RunnerService:
        """Serve a function, a class (stateless: one object per instance) or an object (stateful, one
        instance). ``warmup`` instances start at once; ``resreq`` per instance (default cpu=1, mem=1g)."""
        if self._closed:
            raise FlameError(FlameErrorCode.INVALID_STATE, f"runner {self._name} is closed")
        svc = RunnerService(self._name, execution_object, autoscale=autoscale, warmup=warmup, resreq=resreq)
        self._services.append(svc)
        return svc

    def get(self, futures: Sequence[ObjectFuture]) -> list:
        """The results of many calls, in their order (fetched several at a time)."""
        futures = list(futures)
        if len(futures) <= 1 or all(f._inline() for f in futures):
            return [f.get() for f in futures]
        with concurrent.futures.ThreadPoolExecutor(min(GET_THREADS, len(futures))) as pool:
            return list(pool.map(ObjectFuture.get, futures))

    def ref(self, futures: Sequence[ObjectFuture]) -> list[ObjectRef]:
        return [f.ref() for f in futures]

    def wait(self, futures: Sequence[ObjectFuture]) -> None:
        for f in futures:
            f.wait()

    def select(self, futures: Sequence[ObjectFuture]) -> ObjectFutureIterator:
        """Iterate the futures as they complete."""
        return ObjectFutureIterator(futures)

    def put_object(self, obj: Any) -> ObjectRef:
        """Store ``obj`` under ``<name>/shared``; pass the ObjectRef to calls (resolved service side)."""
        return cache.put_object(f"{self._name}/shared", obj)

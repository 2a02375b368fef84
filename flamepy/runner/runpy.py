"""The service side of the Runner: what the ``flmrun`` application runs (``python -m flamepy.runner.runpy``).

One process serves one session. On entering it loads the session's
:class:`RunnerContext` (its ObjectRef is the session's common data) and, for a
class, makes one object with no arguments. Each task is a cloudpickled
:class:`RunnerRequest`: top-level ObjectRef arguments are fetched (several in
parallel), the function or method is called, and the result becomes the
task's output: inline when it pickles to at most 64 KiB, else stored in the
object cache under ``<app>/<session>`` with its encoded ObjectRef as output. A stateful (object) service writes the object back after every
call, so a replacement instance continues from the last state. A failing
call fails its task with ``"<ExceptionType>: <message>"``; the traceback is in
the instance's ``.err`` file.

The executor has installed the Runner's package before this starts (its
dependencies and sources are on PYTHONPATH), so nothing is installed here.
"""

from __future__ import annotations

import concurrent.futures
import inspect
import logging
import os
import sys
import traceback
from typing import Any, Optional

import cloudpickle

from ..core import cache
from ..core.cache import ObjectRef
from ..core.service import FlameService, SessionContext, TaskContext, run
from .types import INLINE_RESULT_MAX, INLINE_RESULT_PREFIX, RunnerContext, RunnerRequest

__all__ = ["FlameRunpyService", "main"]

log = logging.getLogger("flamepy.runner.runpy")

MAX_PARALLEL_RESOLVE = 8


class FlameRunpyService(FlameService):
    """Runs a Runner session's execution object, one call per task."""

    def __init__(self) -> None:
        self._session: Optional[SessionContext] = None
        self._context_ref: Optional[ObjectRef] = None
        self._context: Optional[RunnerContext] = None
        self._target: Any = None

    def on_session_enter(self, context: SessionContext) -> None:
        data = context.common_data()
        if not data:
            raise ValueError("this session has no RunnerContext (was it opened by flamepy.runner.Runner?)")
        self._session = context
        self._context_ref = ObjectRef.decode(data)
        runner_context = cache.get_object(self._context_ref)
        if not isinstance(runner_context, RunnerContext):
            raise ValueError(f"the session's common data is a {type(runner_context).__name__}, not a RunnerContext")
        target = runner_context.execution_object
        if inspect.isclass(target):
            log.info("instantiating %s", target.__qualname__)
            try:
                target = target()
            except Exception as exc:  # a bind failure whose event says what broke
                traceback.print_exc(file=sys.stderr)
                raise RuntimeError(f"{target.__qualname__}() failed: {type(exc).__name__}: {exc}") from exc
        self._context = runner_context
        self._target = target
        log.info("serving a %s service (%s) for session %s", runner_context.kind, type(target).__name__,
                 context.session_id)

    def on_task_invoke(self, context: TaskContext) -> Optional[bytes]:
        if self._context is None or self._session is None:
            raise RuntimeError("the session was not entered")
        if context.input is None:
            raise ValueError("a Runner task needs a RunnerRequest input")
        request = cloudpickle.loads(context.input)
        if not isinstance(request, RunnerRequest):
            raise ValueError(f"task input is a {type(request).__name__}, not a RunnerRequest")
        RunnerRequest.__post_init__(request)  # the same checks as the client made
        args, kwargs = self._resolve(tuple(request.args or ()), dict(request.kwargs or {}))
        func = self._target if request.method is None else getattr(self._target, request.method, None)
        if func is None or not callable(func):
            raise AttributeError(f"{type(self._target).__name__} has no method {request.method!r}")
        try:
            result = func(*args, **kwargs)
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            # Flame 0.6 kept only str(exc); the type says what went wrong far more often.
            raise RuntimeError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            if self._context.stateful:  # what the next call sees, here or in a replacement instance
                self._context_ref = cache.update_object(self._context_ref, self._context)
        data = cloudpickle.dumps(result)
        if len(data) <= INLINE_RESULT_MAX:  # small: in the task output, no object-cache round trip
            return INLINE_RESULT_PREFIX + data
        session = self._session
        return cache.put_object(f"{session.application.name}/{session.session_id}", result).encode()

    def on_session_leave(self) -> None:
        self._session = None
        self._target = None

    def _resolve(self, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """Top-level ObjectRef arguments replaced by their objects (up to 8 fetched at once).

        Only ObjectRef values are resolved: 0.6.0 also tried every bytes argument as an encoded
        ref, so a bytes value that happened to decode as one was silently replaced."""
        slots = [(i, a) for i, a in enumerate(args) if isinstance(a, ObjectRef)]
        slots += [(k, v) for k, v in kwargs.items() if isinstance(v, ObjectRef)]
        if not slots:
            return args, kwargs
        if len(slots) == 1:
            values = [cache.get_object(slots[0][1])]
        else:
            with concurrent.futures.ThreadPoolExecutor(min(len(slots), MAX_PARALLEL_RESOLVE)) as pool:
                values = list(pool.map(lambda s: cache.get_object(s[1]), slots))
        args = list(args)
        for (where, _), value in zip(slots, values):
            if isinstance(where, int):
                args[where] = value
            else:
                kwargs[where] = value
        return tuple(args), kwargs


def main() -> None:
    """Entry point of ``python -m flamepy.runner.runpy`` (the flmrun application)."""
    logging.basicConfig(level=os.environ.get("FLAME_LOG", os.environ.get("FLAME_LOG_LEVEL", "INFO")).upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    run(FlameRunpyService())


if __name__ == "__main__":
    main()

"""The data a Runner sends: the session's execution object and each call's request.

``RunnerContext`` travels once per session (cloudpickled into the object
cache, its ObjectRef in the session's common data); ``RunnerRequest`` once
per call (the task input). ``SessionContext`` lets an execution object choose
its session id::

    class Model:
        _session_context = SessionContext(session_id="model-v1")
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from typing import Any, Optional

__all__ = ["SessionContext", "RunnerContext", "RunnerRequest", "MAX_CALL_ARGS", "INLINE_RESULT_MAX",
           "INLINE_RESULT_PREFIX"]

_SESSION_ID = re.compile(r"^[A-Za-z0-9._-]{1,128}$")
MAX_CALL_ARGS = 4096  # positional plus keyword arguments of one call
# A call's result up to this size (pickled) travels in the task output itself, after the prefix;
# a bigger one is stored in the object cache and the output is its encoded ObjectRef (a msgpack
# map, which never starts with this prefix).
INLINE_RESULT_MAX = 64 * 1024
INLINE_RESULT_PREFIX = b"FLRI1"


@dataclass
class SessionContext:
    """Per-object session settings for ``Runner.service`` (attach as ``_session_context``).

    ``session_id``: the session to open (get-or-create) instead of a generated ``<app>-<6 chars>``;
    1-128 characters of ``[A-Za-z0-9._-]`` (it becomes part of keys and queue names).
    ``application_name``: free text for logs.

    >>> SessionContext(session_id="bad id")
    Traceback (most recent call last):
    ...
    ValueError: session_id must be 1-128 characters of [A-Za-z0-9._-], got 'bad id'
    """

    session_id: Optional[str] = None
    application_name: Optional[str] = None

    def __post_init__(self) -> None:
        if self.session_id is not None:
            if not isinstance(self.session_id, str):
                raise ValueError(f"session_id must be a string, got {type(self.session_id).__name__}")
            # Flame's own wordings first ("cannot be empty", "too long"): its e2e tests match them.
            if not self.session_id:
                raise ValueError("session_id cannot be empty")
            if len(self.session_id) > 128:
                raise ValueError(f"session_id is too long ({len(self.session_id)} characters, at most 128)")
            if not _SESSION_ID.match(self.session_id) or ".." in self.session_id:
                raise ValueError(f"session_id must be 1-128 characters of [A-Za-z0-9._-], got {self.session_id!r}")
        if self.application_name is not None and not isinstance(self.application_name, str):
            raise ValueError(f"application_name must be a string, got {type(self.application_name).__name__}")


@dataclass
class RunnerContext:
    """What a service session runs, and how it scales.

    Functions, builtins and classes (anything callable) are stateless (each instance its own object; a class is
    instantiated without arguments on every instance) and autoscale by default: min_instances =
    warmup, no max. ``autoscale=False`` fixes them at max(warmup, 1). An object instance is
    stateful and fixed at one instance (warmup 0 or 1): its state is written back after every call.

    >>> ctx = RunnerContext(execution_object=len, warmup=2)
    >>> ctx.stateful, ctx.autoscale, ctx.min_instances, ctx.max_instances
    (False, True, 2, None)
    """

    execution_object: Any
    stateful: Optional[bool] = None
    autoscale: Optional[bool] = None
    warmup: int = 0
    min_instances: int = field(init=False, repr=False, default=0)
    max_instances: Optional[int] = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError("warmup must be a non-negative integer.")
        if self.warmup > 10_000:
            raise ValueError("warmup must be at most 10000 instances.")
        if self.execution_object is None:
            raise ValueError("execution_object must be a function, a class or an object, not None.")
        if callable(self.execution_object):  # a function, builtin, class (or callable object, as in Flame)
            if self.stateful is True:
                raise ValueError("Functions, builtins, and classes are always stateless. "
                                 "Omit stateful or pass stateful=False.")
            self.stateful = False
            self.autoscale = True if self.autoscale is None else bool(self.autoscale)
        else:
            if self.stateful is False:
                raise ValueError("Object instance services are always stateful. Omit stateful or pass stateful=True.")
            if self.autoscale is True:
                raise ValueError("Object instance services are always fixed. "
                                 "Omit autoscale or pass autoscale=False.")
            if self.warmup not in (0, 1):
                raise ValueError("Object instance services only support warmup=0 or warmup=1.")
            self.stateful = True
            self.autoscale = False
        if self.autoscale:
            self.min_instances, self.max_instances = self.warmup, None
        else:
            self.min_instances = max(self.warmup, 1)
            self.max_instances = self.min_instances

    @property
    def kind(self) -> str:
        """``function``, ``class`` or ``object``."""
        if inspect.isclass(self.execution_object):
            return "class"
        return "object" if self.stateful else "function"


@dataclass
class RunnerRequest:
    """One call: ``method`` (None calls the execution object itself), ``args``, ``kwargs``.

    Arguments may be ObjectRefs (an ObjectFuture passed in becomes its ObjectRef); the service
    resolves top-level ones to their objects before the call.
    """

    method: Optional[str] = None
    args: Optional[tuple] = None
    kwargs: Optional[dict] = None

    def __post_init__(self) -> None:
        if self.method is not None and (not isinstance(self.method, str) or not self.method.isidentifier()):
            raise ValueError(f"method must be None or a method name, got {self.method!r}")
        if self.args is not None and not isinstance(self.args, (tuple, list)):
            raise ValueError(f"args must be a tuple or list, got {type(self.args).__name__}")
        if self.kwargs is not None:
            if not isinstance(self.kwargs, dict) or not all(isinstance(k, str) for k in self.kwargs):
                raise ValueError("kwargs must be a dict with string keys")
        if len(self.args or ()) + len(self.kwargs or {}) > MAX_CALL_ARGS:
            raise ValueError(f"a call takes at most {MAX_CALL_ARGS} arguments")

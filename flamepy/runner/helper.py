"""Reading Runner tasks back: ``get_data(task.input | task.output)`` → a plain dict.

A Runner task's input is a cloudpickled :class:`RunnerRequest`; its output the
result itself (up to 64 KiB, after a prefix) or an encoded ObjectRef of it in
the object cache. ``get_data`` decodes
either, fetching what the refs point at::

    from flamepy.runner import get_data
    for task in flamepy.get_session(sid).list_tasks():
        print(get_data(task.input)["args"], get_data(task.output)["result"])
"""

from __future__ import annotations

import enum
from typing import Any, Optional

import cloudpickle

from ..core.cache import ObjectRef, get_object
from .types import INLINE_RESULT_PREFIX, RunnerRequest

__all__ = ["ErrorType", "RunnerError", "get_data", "resolve_refs"]

MAX_RESOLVE_DEPTH = 10


class ErrorType(enum.Enum):
    DECODE_ERROR = "decode_error"
    CACHE_RETRIEVAL_ERROR = "cache_retrieval_error"
    DATA_FORMAT_ERROR = "data_format_error"


class RunnerError(Exception):
    """A Runner task's data could not be read: ``error_type``, ``cause``, ``key``, ``data_type``.

    >>> str(RunnerError(ErrorType.DECODE_ERROR, "not Runner data"))
    '[decode_error] not Runner data'
    """

    def __init__(self, error_type: ErrorType, message: str, cause: Optional[BaseException] = None,
                 key: Optional[str] = None, data_type: Optional[str] = None) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message
        self.cause = cause
        self.key = key
        self.data_type = data_type

    def __str__(self) -> str:
        return f"[{self.error_type.value}] {self.message}"


def _looks_pickled(data: bytes) -> bool:
    return len(data) >= 2 and data[0] == 0x80 and 2 <= data[1] <= 5


def get_data(data: bytes) -> dict:
    """``{"type": "input", "method", "args", "kwargs", "metadata"}`` for a task input,
    ``{"type": "output", "result", "metadata"}`` for a task output (ObjectRefs resolved)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise RunnerError(ErrorType.DATA_FORMAT_ERROR, f"expected bytes, got {type(data).__name__}",
                          data_type=type(data).__name__)
    data = bytes(data)
    ref = None
    if data.startswith(INLINE_RESULT_PREFIX):  # a small result, inline in the task output
        try:
            value = cloudpickle.loads(data[len(INLINE_RESULT_PREFIX):])
        except Exception as exc:
            raise RunnerError(ErrorType.DECODE_ERROR, f"inline result that does not load: {exc}", cause=exc) from None
        return {"type": "output", "result": value, "metadata": {"inline": True}}
    if _looks_pickled(data):
        try:
            value = cloudpickle.loads(data)
        except Exception as exc:
            raise RunnerError(ErrorType.DECODE_ERROR, f"pickled data that does not load: {exc}", cause=exc) from None
    else:
        try:
            ref = ObjectRef.decode(data)
        except Exception as exc:
            raise RunnerError(ErrorType.DECODE_ERROR, f"neither an ObjectRef nor pickled data: {exc}",
                              cause=exc) from None
        try:
            value = get_object(ref)
        except Exception as exc:
            raise RunnerError(ErrorType.CACHE_RETRIEVAL_ERROR, f"failed to fetch {ref.key}: {exc}", cause=exc,
                              key=ref.key) from None
    metadata = {"object_ref_key": ref.key} if ref is not None else {}
    if isinstance(value, RunnerRequest):
        return {"type": "input", "method": value.method,
                "args": None if value.args is None else tuple(resolve_refs(a) for a in value.args),
                "kwargs": None if value.kwargs is None else {k: resolve_refs(v) for k, v in value.kwargs.items()},
                "metadata": metadata}
    return {"type": "output", "result": value, "metadata": metadata}


def resolve_refs(value: Any, depth: int = 0) -> Any:
    """``value`` with ObjectRefs replaced by their objects, inside lists, tuples and dicts too
    (to ``MAX_RESOLVE_DEPTH`` levels)."""
    if isinstance(value, ObjectRef):
        try:
            return get_object(value)
        except Exception as exc:
            raise RunnerError(ErrorType.CACHE_RETRIEVAL_ERROR, f"failed to fetch {value.key}: {exc}", cause=exc,
                              key=value.key) from None
    if depth >= MAX_RESOLVE_DEPTH:
        return value
    if isinstance(value, list):
        return [resolve_refs(v, depth + 1) for v in value]
    if isinstance(value, tuple):
        return tuple(resolve_refs(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return {k: resolve_refs(v, depth + 1) for k, v in value.items()}
    return value

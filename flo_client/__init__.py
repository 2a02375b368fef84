"""flo_client: the async Python client of Flo (the seed SDK page's API).

Example:
    >>> from flo_client import FloClient, PutOptions
    >>> async with FloClient("localhost:9000", namespace="myapp") as client:   # doctest: +SKIP
    ...     await client.kv.put("session:abc", b"data", PutOptions(ttl_seconds=3600))
"""

from importlib import import_module as _import
from typing import Any as _Any

from flo_core.errors import *  # noqa: F401,F403 - one exception hierarchy for every layer
from flo_core.errors import __all__ as _errors_all

from .client import FloClient, parse_endpoint
from .kv import *  # noqa: F401,F403
from .kv import __all__ as _kv_all

# Names of the other primitives' modules, loaded when first asked for
# (``from flo_client import EnqueueOptions`` works like any other import).
_LAZY_MODULES = ("queue", "stream", "stream_worker", "action", "action_worker")


def __getattr__(name: str) -> _Any:
    for mod in _LAZY_MODULES:
        m = _import(f"{__name__}.{mod}")
        if name in getattr(m, "__all__", ()):
            return getattr(m, name)
    raise AttributeError(f"module 'flo_client' has no attribute {name!r}")


__all__ = ["FloClient", "parse_endpoint", *_kv_all, *_errors_all]

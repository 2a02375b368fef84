"""flo_server: the uvloop edge of Flo for Python.

Example:
    >>> from flo_server import Server, ServerConfig, serve
    >>> serve(ServerConfig(port=9000, data_dir="./data"))       # doctest: +SKIP
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["EmbeddedServer", "Server", "ServerConfig", "serve"]

# Loaded on first use: importing the package (as pytest does for the `flo` plugin) stays cheap.
_WHERE = {"Server": "flo_server.app", "serve": "flo_server.app", "ServerConfig": "flo_server.config",
          "EmbeddedServer": "flo_server.embedded"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(import_module(_WHERE[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'flo_server' has no attribute {name!r}")

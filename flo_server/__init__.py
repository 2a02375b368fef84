"""flo_server: the uvloop edge of Flo for Python.

Example:
    >>> from flo_server import Server, ServerConfig, serve
    >>> serve(ServerConfig(port=9000, data_dir="./data"))       # doctest: +SKIP
"""

from flo_server.app import Server, serve
from flo_server.config import ServerConfig
from flo_server.embedded import EmbeddedServer

__all__ = ["EmbeddedServer", "Server", "ServerConfig", "serve"]

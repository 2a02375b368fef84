"""Server-level ops: PING and SERVER_INFO (ext)."""

from __future__ import annotations

from typing import Any

import msgpack

from flo_core.spec import Op
from flo_server.dispatch import Request, handler


@handler(Op.PING)
def ping(srv: Any, req: Request) -> bytes:
    """PING -> empty"""
    return b""


@handler(Op.SERVER_INFO)
def server_info(srv: Any, req: Request) -> bytes:
    """SERVER_INFO -> msgpack map of server facts and counters (ext)"""
    return msgpack.packb(srv.info(), use_bin_type=True)

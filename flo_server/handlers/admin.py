"""Server-level ops: PING, SERVER_INFO (ext) and AUTH (ext)."""

from __future__ import annotations

from typing import Any

import msgpack

from flo_core.errors import Refusal
from flo_core.spec import Op, Reason
from flo_server.auth import AUTH_FAILED, User, login, unauthorized
from flo_server.dispatch import Request, handler


@handler(Op.PING)
def ping(srv: Any, req: Request) -> bytes:
    """PING -> empty"""
    return b""


@handler(Op.SERVER_INFO)
def server_info(srv: Any, req: Request) -> bytes:
    """SERVER_INFO -> msgpack map of server facts and counters (ext)"""
    info = srv.info()
    user = getattr(req.conn, "user", None)
    info["user"] = user.name if user is not None else ""
    return msgpack.packb(info, use_bin_type=True)


@handler(Op.AUTH)
def auth(srv: Any, req: Request) -> Any:
    """AUTH key=user name (empty: ``default``) value=password -> the user name (ext).

    Wrong credentials are refused UNAUTHORIZED (message :data:`AUTH_FAILED`); each failure on a
    connection makes its next answer wait longer, and ten close it.
    """
    if req.conn is None:
        raise Refusal(Reason.MALFORMED, "AUTH needs a connection")
    name = req.key.decode("utf-8", "replace") or "default"
    r = login(srv, req.conn, name, req.value)
    if r is None or isinstance(r, User):
        return _answer(r)

    async def later() -> bytes:
        return _answer(await r)

    return later()


def _answer(user: Any) -> bytes:
    if user is None:
        raise unauthorized(AUTH_FAILED)
    return user.name.encode("utf-8")

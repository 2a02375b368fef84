"""flamepy.service: typed Flame services (``FlameInstance``) and their clients (``Session``).

Service process::

    from flamepy import service
    ins = service.FlameInstance()

    @ins.entrypoint
    def echo(req):
        history = ins.context() or []
        history.append(req)
        ins.update_context(history)
        return req.upper()

    if __name__ == "__main__":
        ins.run()

Client::

    from flamepy.service import Session
    with Session("echo-app", ctx=[]) as session:
        print(session.invoke("hello"), session.context())
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from typing import Any, Callable, Optional, Union

import cloudpickle

from ..core import cache, client as core_client
from ..core.cache import ObjectRef
from ..core.ops import short_name
from ..core.service import FlameService, SessionContext, TaskContext, run as _serve
from ..core.types import ResourceRequirement

__all__ = ["FlameInstance", "Session"]

log = logging.getLogger("flamepy.service")


class FlameInstance(FlameService):
    """One service process: register one entrypoint with ``@ins.entrypoint``, then ``ins.run()``."""

    def __init__(self) -> None:
        self._entrypoint: Optional[Callable] = None
        self._parameter: Optional[inspect.Parameter] = None
        self._context_ref: Optional[ObjectRef] = None
        self.session_id: Optional[str] = None
        self.task_id: Optional[str] = None

    def entrypoint(self, func: Callable) -> Callable:
        """Decorator: ``func`` takes zero or one positional-or-keyword parameter; sync or async."""
        params = list(inspect.signature(func).parameters.values())
        if len(params) > 1:
            raise AssertionError("Entrypoint must have exactly zero or one parameter")
        if params and params[0].kind is not inspect.Parameter.POSITIONAL_OR_KEYWORD:
            raise AssertionError("Parameter must be positional or keyword")
        self._entrypoint = func
        self._parameter = params[0] if params else None
        return func

    # -- session context --------------------------------------------------------------------------------------

    def context(self) -> Any:
        """The session's shared context (latest version), or None when the session has none."""
        if self._context_ref is None:
            return None
        return cache.get_object(self._context_ref)

    def update_context(self, data: Any) -> None:
        """Overwrite the session context (version + 1). A no-op when the session was created without ctx."""
        if self._context_ref is None:
            log.warning("update_context ignored: the session was created without ctx")
            return
        self._context_ref = cache.update_object(self._context_ref, data)

    # -- FlameService hooks -----------------------------------------------------------------------------------

    def on_session_enter(self, context: SessionContext) -> None:
        self.session_id = context.session_id
        data = context.common_data()
        self._context_ref = ObjectRef.decode(data) if data else None

    def on_task_invoke(self, context: TaskContext) -> Optional[bytes]:
        if self._entrypoint is None:
            log.warning("no entrypoint registered; task %s produces no output", context.task_id)
            return None
        self.task_id = context.task_id
        try:
            result = self._call(context.input)
        finally:
            self.task_id = None
        return None if result is None else cloudpickle.dumps(result)

    def _call(self, data: Optional[bytes]) -> Any:
        request = cloudpickle.loads(data) if data is not None else None
        args = (request,) if self._parameter is not None else ()
        result = self._entrypoint(*args)
        if inspect.isawaitable(result):  # async entrypoint: one fresh loop per task, as in Flame
            result = asyncio.run(_await(result))
        return result

    def on_session_leave(self) -> None:
        self._context_ref = None
        self.session_id = None

    def run(self) -> None:
        """Serve the session the executor manager launched us for; started by hand: a debug HTTP server."""
        if os.environ.get("FLAME_INSTANCE_ID"):
            _serve(self)
        else:
            self._debug_server(int(os.environ.get("FLAME_DEBUG_PORT", "5050")))

    def _debug_server(self, port: int) -> None:
        """``POST /<entrypoint name>`` with a cloudpickled request answers the cloudpickled response."""
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        instance = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server naming)
                name = getattr(instance._entrypoint, "__name__", None)
                if instance._entrypoint is None or self.path.split("?", 1)[0] != f"/{name}":
                    self._answer(404, b"no such entrypoint")
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    result = instance._call(body if body else None)
                except Exception as exc:
                    self._answer(500, str(exc).encode())
                    return
                self._answer(200, cloudpickle.dumps(result))

            def _answer(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
        log.warning("FLAME_INSTANCE_ID not set: debug mode, POST http://0.0.0.0:%s/%s", port,
                    getattr(self._entrypoint, "__name__", "<entrypoint>"))
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            log.info("debug server stopped")
        finally:
            server.server_close()


async def _await(awaitable):
    return await awaitable


class Session:
    """A client session of a registered service: ``Session(name, ctx=...)`` or ``Session(session_id=...)``.

    >>> with Session("echo-app", ctx=[]) as s:          # doctest: +SKIP
    ...     s.invoke("hello")
    """

    def __init__(self, name: Optional[str] = None, ctx: Any = None, session_id: Optional[str] = None,
                 resreq: Union[ResourceRequirement, dict, None] = None) -> None:
        if name is None and session_id is None:
            raise ValueError("Either 'name' or 'session_id' must be provided")
        if name is not None and session_id is not None:
            raise ValueError("Cannot provide both 'name' and 'session_id'. They are mutually exclusive.")
        self._session: Optional[core_client.Session] = None
        if name is not None:
            requirement = ResourceRequirement.coerce(resreq)
            sid, common_data = None, None
            if ctx is not None:
                sid = short_name(name)
                common_data = cache.put_object(f"{name}/{sid}", ctx).encode()
            self._session = core_client.create_session(name, common_data=common_data, session_id=sid,
                                                       resreq=requirement)
        else:
            self._session = core_client.open_session(session_id)
        data = self._session.common_data()
        self._context_ref = ObjectRef.decode(data) if data else None
        self._name = self._session.application

    def invoke(self, req: Any) -> Any:
        """Run one task with ``req`` and return the entrypoint's response (blocks)."""
        if self._session is None:
            raise RuntimeError("Service session is not initialized")
        out = self._session.invoke(cloudpickle.dumps(req))
        return None if out is None else cloudpickle.loads(out)

    def id(self) -> Optional[str]:
        return self._session.id if self._session is not None else None

    def context(self) -> Any:
        if self._session is None or self._context_ref is None:
            return None
        return cache.get_object(self._context_ref)

    def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            session.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

"""The HTTP side port (``--http-port``, default 9001): metrics, health, the console and its JSON API.

Served on the server's own event loop, beside the data port, by a small
``asyncio.Protocol`` around ``h11`` (a sans-IO HTTP/1.1 parser). Requests are
few and small (a scrape every few seconds, a console refreshing once a second),
so each one is answered whole from the stores as they are; nothing here runs on
the data port's request path.

=================  ===========================================================
path               what
=================  ===========================================================
/healthz           200 ``ok`` while the process serves (no auth)
/readyz            200 once recovery is done and the data port listens and the log takes writes, else 503 (no auth)
/metrics           Prometheus text format (flo_server.metrics)
/api/...           JSON for the console (flo_server.api)
/, /console/...    the web console (static files shipped in flo_server/console)
=================  ===========================================================

When the server has users (``--users`` / ``--requirepass``) everything but the two
health checks needs HTTP Basic credentials of a user (``default`` with
``--requirepass``); the API then shows only what that user may read, and its
actions need the ``admin`` right.

Example:
    $ curl -s 127.0.0.1:9001/metrics | grep flo_commands_total
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import mimetypes
import os
from typing import Any
from urllib.parse import parse_qs, urlsplit

import h11

from flo_server import auth

log = logging.getLogger("flo_server.http")

CONSOLE_DIR = os.path.join(os.path.dirname(__file__), "console")
MAX_BODY = 1 << 20  # bytes of a request body (the API's POSTs are tiny)
MAX_HEADER = 16 * 1024


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class HttpProtocol(asyncio.Protocol):
    """One HTTP/1.1 connection (keep-alive, one request at a time)."""

    def __init__(self, srv: Any) -> None:
        self.srv = srv
        self.transport: Any = None
        self.conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER)
        self.user: Any = srv.users.default
        self.trusted = False
        self.auth_failures = 0  # the login rate limit of flo_server.auth, per HTTP connection
        self._request: h11.Request | None = None
        self._body = bytearray()
        self._busy = False

    def set_user(self, user: Any) -> None:  # flo_server.auth.login's hook
        self.user = user

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            self.conn.receive_data(data)
        except h11.RemoteProtocolError:
            self.transport.close()
            return
        self._pump()

    def eof_received(self) -> None:
        self.conn.receive_data(b"")
        self._pump()

    def _pump(self) -> None:
        while not self._busy:
            try:
                event = self.conn.next_event()
            except h11.RemoteProtocolError as e:
                self._send(400, "text/plain", f"bad request: {e}\n".encode(), close=True)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._request, self._body = event, bytearray()
            elif isinstance(event, h11.Data):
                self._body += event.data
                if len(self._body) > MAX_BODY:
                    self._send(413, "text/plain", b"request body too large\n", close=True)
                    return
            elif isinstance(event, h11.EndOfMessage):
                self._busy = True
                asyncio.ensure_future(self._answer())
                return
            elif isinstance(event, h11.ConnectionClosed):
                self.transport.close()
                return

    async def _answer(self) -> None:
        req = self._request
        assert req is not None
        try:
            status, ctype, body, extra = await self._route(req)
        except HttpError as e:
            status, ctype, body, extra = e.status, "application/json", json.dumps({"error": e.message}).encode(), []
            if e.status == 401:
                extra = [("WWW-Authenticate", 'Basic realm="flo-server"')]
        except Exception:  # noqa: BLE001 - a bad page is a 500, never a dead server
            log.exception("HTTP %s failed", req.target)
            status, ctype, body, extra = 500, "text/plain", b"internal error\n", []
        if self.transport is None or self.transport.is_closing():
            return
        self._send(status, ctype, body, extra=extra, head=req.method == b"HEAD")
        self._busy = False
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
            self._pump()

    def _send(self, status: int, ctype: str, body: bytes, *, extra: list | None = None, close: bool = False,
              head: bool = False) -> None:
        headers = [("Content-Type", ctype), ("Content-Length", str(len(body))), ("Cache-Control", "no-store"),
                   ("X-Content-Type-Options", "nosniff"), *(extra or [])]
        if close:
            headers.append(("Connection", "close"))
        try:
            out = self.conn.send(h11.Response(status_code=status, headers=headers))
            if not head:
                out += self.conn.send(h11.Data(data=body))
            out += self.conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            self.transport.close()
            return
        self.transport.write(out)
        if close or self.conn.our_state is h11.MUST_CLOSE:
            self.transport.close()

    # --- routes -------------------------------------------------------------------------

    async def _route(self, req: h11.Request) -> tuple[int, str, bytes, list]:
        url = urlsplit(req.target.decode("latin-1"))
        path, method = url.path, req.method.decode("latin-1")
        if method not in ("GET", "HEAD", "POST"):
            raise HttpError(405, "method not allowed")
        srv = self.srv
        if path == "/healthz":
            return 200, "text/plain", b"ok\n", []
        if path == "/readyz":
            if not srv.ready:
                return 503, "text/plain", b"recovering\n", []
            failing = getattr(srv.journal, "failed", None)  # persistence.StorageFailure: writes refused
            if failing is not None:
                return 503, "text/plain", f"{failing}\n".encode(), []
            return 200, "text/plain", b"ready\n", []
        user = await self._authenticate(req)
        if path == "/metrics":
            from flo_server.metrics import CONTENT_TYPE, render

            return 200, CONTENT_TYPE, render(srv), []
        if path.startswith("/api/"):
            from flo_server import api

            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            try:
                body = json.loads(self._body or b"{}") if method == "POST" else {}
            except ValueError:
                raise HttpError(400, "the request body is not JSON") from None
            result = api.handle(srv, user, method, path[len("/api"):], query, body)
            if method == "POST":
                await self._durable()
            return 200, "application/json", json.dumps(result, default=str).encode(), []
        return self._static(path)

    async def _durable(self, timeout_s: float = 10.0) -> None:
        """Answer a write only once the log covers it as the server promises (``fsync=always``: synced),
        like the data port's answers."""
        journal = self.srv.journal
        writer = getattr(journal, "writer", None) if getattr(journal, "durable", False) else None
        if writer is None:
            return
        lsn = journal.last_lsn
        journal.flush_soon()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (writer.synced_lsn if writer.ack_on_sync else writer.flushed_lsn) < lsn:
            if loop.time() > deadline:
                raise HttpError(503, "the write is not durable yet (the log is not keeping up)")
            await asyncio.sleep(0.002)

    async def _authenticate(self, req: h11.Request) -> Any:
        """The request's user: HTTP Basic when the server has users, else the open default user."""
        users = self.srv.users
        if not users.required:
            return users.default
        for name, value in req.headers:
            if name == b"authorization" and value[:6].lower() == b"basic ":
                try:
                    user, _, password = base64.b64decode(value[6:]).decode("utf-8").partition(":")
                except (ValueError, UnicodeDecodeError):
                    raise HttpError(400, "malformed Authorization header") from None
                r = auth.login(self.srv, self, user or "default", password.encode("utf-8"))
                found = r if r is None or isinstance(r, auth.User) else await r
                if found is None:
                    raise HttpError(401, auth.AUTH_FAILED)
                return found
        if users.default is not None:
            return users.default
        raise HttpError(401, "authentication required")

    def _static(self, path: str) -> tuple[int, str, bytes, list]:
        rel = "index.html" if path in ("/", "/console", "/console/") else path.removeprefix("/console/").lstrip("/")
        full = os.path.realpath(os.path.join(CONSOLE_DIR, rel))
        if not full.startswith(os.path.realpath(CONSOLE_DIR) + os.sep) or not os.path.isfile(full):
            raise HttpError(404, "not found")
        with open(full, "rb") as f:
            data = f.read()
        ctype = mimetypes.guess_type(full)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype in ("application/javascript", "application/json"):
            ctype += "; charset=utf-8"
        return 200, ctype, data, []


async def start_http(srv: Any, host: str, port: int) -> tuple[asyncio.AbstractServer, int]:
    """Listen for HTTP on ``host:port`` (0: any free port); returns the server and its port."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: HttpProtocol(srv), host, port, reuse_address=True)
    return server, server.sockets[0].getsockname()[1]

"""``FloClient``: the async client of the Flo SDK page.

Example:
    >>> import asyncio
    >>> from flo_client import FloClient
    >>> async def main():
    ...     async with FloClient("localhost:9000") as client:
    ...         await client.kv.put("user:123", b"John Doe")
    ...         value = await client.kv.get("user:123")
    ...         print(f"Got: {value.decode()}")
    >>> asyncio.run(main())                                   # doctest: +SKIP
    Got: John Doe
"""

from __future__ import annotations

import asyncio
import random
import ssl
from functools import cached_property
from typing import Any
from urllib.parse import unquote

from flo_core.body import Writer
from flo_core.errors import (
    BadRequestError,
    ConnectionClosedError,
    NotConnectedError,
    error_from_refusal,
    parse_refusal_body,
)
from flo_core.spec import DEFAULT_NAMESPACE, MAX_BLOCK_MS, Ran, Status

from .connection import Connection

DEFAULT_TIMEOUT_MS = 5000
DEFAULT_RETRIES = 4  # attempts in all for OVERLOADED / UNAVAILABLE with ran = NO
_RETRY_STATUSES = (Status.OVERLOADED, Status.UNAVAILABLE)


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``host:port`` (optionally ``flo://`` / ``flos://``, credentials, IPv6 in brackets) -> (host, port)."""
    return parse_url(endpoint)[:2]


def parse_url(endpoint: str) -> tuple[str, int, str | None, str | None, bool]:
    """``[flo[s]://][user[:password]@]host[:port]`` -> (host, port, user, password, tls).

    ``flos://`` means TLS. User and password are percent-decoded.

    >>> parse_url("flo://alice:p%40ss@db.local:9100")
    ('db.local', 9100, 'alice', 'p@ss', False)
    >>> parse_url("[::1]:9000")
    ('::1', 9000, None, None, False)
    """
    ep = endpoint.strip()
    tls = False
    user = password = None
    if "://" in ep:
        scheme, ep = ep.split("://", 1)
        if scheme not in ("flo", "flos"):
            raise BadRequestError(f"unsupported scheme {scheme!r}: use host:port, flo://host:port or flos://host:port")
        tls = scheme == "flos"
        ep = ep.split("/", 1)[0]
    if "@" in ep:
        cred, ep = ep.rsplit("@", 1)
        name, sep, pw = cred.partition(":")
        user = unquote(name) or None
        password = unquote(pw) if sep else None
    if ep.startswith("["):
        host, _, rest = ep[1:].partition("]")
        port = rest.lstrip(":") or "9000"
    else:
        host, _, port = ep.rpartition(":")
        if not host:
            host, port = port, "9000"
    try:
        return host or "localhost", int(port), user, password, tls
    except ValueError:
        raise BadRequestError(f"bad endpoint {endpoint!r}") from None


def client_tls_context(tls: bool | ssl.SSLContext | None, ca_file: str | None = None) -> ssl.SSLContext | None:
    """``tls=True`` (or a CA file): the system's trust store plus ``ca_file``; an SSLContext is used as given."""
    if isinstance(tls, ssl.SSLContext):
        return tls
    if not tls and not ca_file:
        return None
    ctx = ssl.create_default_context(cafile=ca_file)
    if ca_file:
        # A certificate in ca_file is a trust anchor even when it is not a CA's: a pinned
        # server certificate works (Python 3.13's default; flo-server's executor relies on it).
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return ctx


class FloClient:
    """An async client: ``client.kv``, ``client.queue``, ``client.stream``, ``client.action``.

    Args:
        endpoint: ``"host:port"`` of a flo-server.
        namespace: default namespace of every call (each call can override it).
        timeout_ms: how long a request may take beyond its own wait (``block_ms``).
        max_retries: attempts in all when the server says OVERLOADED/UNAVAILABLE and nothing ran.
        username, password: sent with AUTH on every new connection (also from
            ``flo://user:password@host:port``); a wrong pair raises UnauthorizedError on connect.
        tls: ``True`` (verify against the system's CAs, or ``ca_file``), or an ``ssl.SSLContext``;
            ``flos://`` in the endpoint means ``tls=True``.
        ca_file: a CA bundle to verify the server's certificate with (implies TLS).

    One pipelined connection carries every ordinary request (many in flight at
    once, from any number of coroutines); long polls go on a second one. Both
    reconnect on the next call after a connection is lost.
    """

    def __init__(
        self,
        endpoint: str = "localhost:9000",
        *,
        namespace: str = DEFAULT_NAMESPACE,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
        max_retries: int = DEFAULT_RETRIES,
        debug: bool = False,
        username: str | None = None,
        password: str | None = None,
        tls: bool | ssl.SSLContext | None = None,
        ca_file: str | None = None,
    ) -> None:
        self.endpoint = endpoint
        self.host, self.port, url_user, url_password, url_tls = parse_url(endpoint)
        self.username = username if username is not None else url_user
        self.password = password if password is not None else url_password
        if self.username is not None and self.password is None:
            raise BadRequestError("a user name needs a password")
        self._tls_arg = tls if tls is not None else (url_tls or None)
        self._ca_file = ca_file
        self.ssl = client_tls_context(self._tls_arg, ca_file)
        self.namespace = namespace or DEFAULT_NAMESPACE
        self.timeout_ms = timeout_ms
        self.max_retries = max(1, max_retries)
        self._conn: Connection | None = None
        self._blocking: Connection | None = None
        self._connecting: asyncio.Lock | None = None
        self._closed = False
        from .kv import KVAPI

        self.kv = KVAPI(self)

    # The other primitives load on first use.
    @cached_property
    def queue(self) -> Any:
        """``client.queue``: leased priority queues."""
        from .queue import QueueAPI

        return QueueAPI(self)

    @cached_property
    def stream(self) -> Any:
        """``client.stream``: streams and consumer groups."""
        from .stream import StreamAPI

        return StreamAPI(self)

    @cached_property
    def worker(self) -> Any:
        """``client.worker``: the low-level worker ops (register, heartbeat, await, list)."""
        from .action import WorkerAPI

        return WorkerAPI(self)

    @cached_property
    def action(self) -> Any:
        """``client.action``: actions and runs."""
        from .action import ActionAPI

        return ActionAPI(self)

    # --- lifecycle -------------------------------------------------------------------

    async def connect(self) -> "FloClient":
        """Open the connection (done lazily by the first call too)."""
        self._closed = False
        await self._main()
        return self

    async def close(self) -> None:
        """Close both connections; outstanding requests fail with ConnectionClosedError."""
        self._closed = True
        for c in (self._conn, self._blocking):
            if c is not None:
                c.close()
        self._conn = self._blocking = None

    async def reconnect(self) -> None:
        await self.close()
        await self.connect()

    async def __aenter__(self) -> "FloClient":
        return await self.connect()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    @property
    def is_connected(self) -> bool:
        return self._conn is not None and not self._conn.closed

    async def _clone(self) -> "FloClient":
        """A new connected client with the same endpoint, namespace and timeouts (for workers)."""
        c = FloClient(self.endpoint, namespace=self.namespace, timeout_ms=self.timeout_ms, max_retries=self.max_retries,
                      username=self.username, password=self.password, tls=self.ssl)
        return await c.connect()

    async def _open(self, attr: str) -> Connection:
        conn = getattr(self, attr)
        if conn is not None and not conn.closed:
            return conn
        if self._closed:
            raise NotConnectedError("client is closed")
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            conn = getattr(self, attr)
            if conn is None or conn.closed:
                auth = None if self.password is None else (self.username or "default", self.password)
                conn = await Connection.open(self.host, self.port, self.timeout_ms / 1000, ssl=self.ssl, auth=auth)
                setattr(self, attr, conn)
        return conn

    async def _main(self) -> Connection:
        return await self._open("_conn")

    # --- the one request path ----------------------------------------------------------

    def _payload(self, ns: str | None, key: bytes | str, rest: bytes) -> bytes:
        nsb = (ns or self.namespace).encode("utf-8")
        kb = key.encode("utf-8") if isinstance(key, str) else key
        if len(nsb) > 255:
            raise BadRequestError("namespace longer than 255 bytes")
        if len(kb) > 65535:
            raise BadRequestError("key longer than 65535 bytes")
        return len(nsb).to_bytes(2, "little") + nsb + len(kb).to_bytes(2, "little") + kb + rest

    async def _call(self, op: int, key: bytes | str, rest: bytes = b"", *, ns: str | None = None,
                    block_ms: int = 0) -> bytes:
        """Send one request and return the OK data; a refusal raises its mapped exception."""
        if not 0 <= block_ms <= MAX_BLOCK_MS:
            raise BadRequestError(f"block_ms must be 0..{MAX_BLOCK_MS}")
        payload = self._payload(ns, key, rest)
        timeout = (self.timeout_ms + block_ms) / 1000
        delay = 0.05
        for attempt in range(self.max_retries):
            conn = self._conn
            if block_ms or conn is None or conn.closed:
                conn = await (self._open("_blocking") if block_ms else self._main())
            fut = conn.request(op, payload, timeout)
            try:
                status, data = await fut
            except asyncio.CancelledError:
                conn.forget(fut)
                raise
            if status == 0:
                return data
            reason, ran, msg = parse_refusal_body(data)
            if status in _RETRY_STATUSES and ran == Ran.NO and attempt + 1 < self.max_retries:
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 1.0)
                continue
            raise error_from_refusal(status, reason, ran, msg)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _call_vo(self, op: int, key: bytes | str, value: bytes = b"", opts: dict[int, bytes] | None = None,
                       *, ns: str | None = None, block_ms: int = 0) -> bytes:
        """A value+options op (flo-wire-v2 §1.3b)."""
        rest = Writer().bytes32(value).options(opts or {}).getvalue()
        return await self._call(op, key, rest, ns=ns, block_ms=block_ms)

    # --- workers -----------------------------------------------------------------------

    def new_stream_worker(self, **kw: Any) -> Any:
        """A :class:`~flo_client.stream_worker.StreamWorker` on its own connections."""
        from .stream_worker import StreamWorker

        return StreamWorker(self, **kw)

    def new_action_worker(self, **kw: Any) -> Any:
        """An :class:`~flo_client.action_worker.ActionWorker` on its own connections."""
        from .action_worker import ActionWorker

        return ActionWorker(self, **kw)

    async def ping(self) -> None:
        from flo_core.spec import Op

        await self._call_vo(Op.PING, b"")

    async def server_info(self) -> dict:
        import msgpack

        from flo_core.spec import Op

        return msgpack.unpackb(await self._call_vo(Op.SERVER_INFO, b""), raw=False)


    async def whoami(self) -> str:
        """The user this client's connection is (``SERVER_INFO``'s ``user``)."""
        return (await self.server_info()).get("user", "")


__all__ = ["FloClient", "parse_endpoint", "parse_url", "ConnectionClosedError"]

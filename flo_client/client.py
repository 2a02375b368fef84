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
MAX_SEEDS = 64
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


def parse_seeds(endpoint: str | list[str] | tuple[str, ...]) -> list[str]:
    """``"h1:p1,h2:p2"`` or ``["h1:p1", "h2:p2"]`` -> the seed endpoints, in order.

    >>> parse_seeds("10.0.0.1:9000, 10.0.0.2:9000"), parse_seeds(["a:1"])
    (['10.0.0.1:9000', '10.0.0.2:9000'], ['a:1'])
    """
    seeds = endpoint.split(",") if isinstance(endpoint, str) else list(endpoint)
    seeds = [s.strip() for s in seeds if isinstance(s, str) and s.strip()]
    if not seeds:
        raise BadRequestError("no endpoint given")
    if len(seeds) > MAX_SEEDS:
        raise BadRequestError(f"more than {MAX_SEEDS} seed endpoints")
    return seeds


class FloClient:
    """An async client: ``client.kv``, ``client.queue``, ``client.stream``, ``client.action``.

    Args:
        endpoint: ``"host:port"`` of a flo-server, or several seeds of a cluster:
            ``"h1:p1,h2:p2"`` or ``["h1:p1", "h2:p2"]`` (tried in order until one answers;
            user, password and TLS come from the first).
        namespace: default namespace of every call (each call can override it).
        timeout_ms: how long a request may take beyond its own wait (``block_ms``).
        max_retries: attempts in all when the server says OVERLOADED/UNAVAILABLE and nothing ran.
        username, password: sent with AUTH on every new connection (also from
            ``flo://user:password@host:port``); a wrong pair raises UnauthorizedError on connect.
        tls: ``True`` (verify against the system's CAs, or ``ca_file``), or an ``ssl.SSLContext``;
            ``flos://`` in the endpoint means ``tls=True``.
        ca_file: a CA bundle to verify the server's certificate with (implies TLS).
        routing: ``None`` (default) routes by the slot map when the server is a cluster member;
            ``False`` talks only to the endpoint it reached (the member forwards what it does not
            serve), with no ``CLUSTER_SLOTS`` asked on connect; ``True`` refuses a non-cluster server.

    One pipelined connection carries every ordinary request (many in flight at
    once, from any number of coroutines); long polls go on a second one. Both
    reconnect on the next call after a connection is lost.

    Cluster routing: the first connection asks ``CLUSTER_SLOTS``. A single server refuses it
    and nothing else changes. A cluster member answers with the slot map and each shard's
    leader; from then on each request goes straight to the leader of its key's slot
    (:func:`flo_core.slots.key_slot`: the KV key, or the queue / stream / action name, in its
    namespace) over a connection of its own to that member (plus one for long polls), opened on
    first use. Blocking reads and long-poll dequeues go to the owner too. Server-level ops
    (``ping``, ``server_info``, namespaces) stay on the member first reached; scans, lists,
    commits, action runs and workers go to it as well on a cluster of several shards (the members
    route those among themselves). A ``MOVED`` answer (the map is stale) resends the request to
    the member it names (at most 5 times) and refreshes the map; a lost member, WRITES_STOPPED
    or CLUSTERDOWN refreshes the map from any member or seed that answers and retries within
    ``max_retries`` — only when nothing ran, or for a read. :meth:`cluster_slots` shows the map.

    Example:
        >>> async with FloClient("10.0.0.1:9000,10.0.0.2:9000") as client:   # doctest: +SKIP
        ...     await client.kv.put("user:1", b"x")   # straight to the leader that owns the key
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
        routing: bool | None = None,
    ) -> None:
        seeds = parse_seeds(endpoint)
        self.endpoint = ",".join(seeds)
        self.host, self.port, url_user, url_password, url_tls = parse_url(seeds[0])
        self._seeds = [(self.host, self.port)] + [parse_url(s)[:2] for s in seeds[1:]]
        self._routing = routing
        self._cluster: Any = None  # a flo_client.cluster.ClusterRouter once a cluster answered
        self._detected = False  # whether a first connection reached a seed (and asked it CLUSTER_SLOTS)
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
        if self._cluster is not None:
            await self._cluster.connection(self._cluster.home)
        else:
            await self._main()
        return self

    async def close(self) -> None:
        """Close every connection; outstanding requests fail with ConnectionClosedError."""
        self._closed = True
        for c in (self._conn, self._blocking):
            if c is not None:
                c.close()
        self._conn = self._blocking = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster, self._detected = None, False  # the next connect asks again

    async def reconnect(self) -> None:
        await self.close()
        await self.connect()

    async def __aenter__(self) -> "FloClient":
        return await self.connect()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    @property
    def is_connected(self) -> bool:
        if self._cluster is not None:
            return self._cluster.is_connected
        return self._conn is not None and not self._conn.closed

    async def _clone(self) -> "FloClient":
        """A new connected client with the same endpoint, namespace and timeouts (for workers)."""
        c = FloClient(self.endpoint, namespace=self.namespace, timeout_ms=self.timeout_ms, max_retries=self.max_retries,
                      username=self.username, password=self.password, tls=self.ssl, routing=self._routing)
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
            if self._cluster is not None:  # found by another coroutine's first connection: _call routes
                return await self._cluster.connection(self._cluster.home, attr == "_blocking")
            conn = getattr(self, attr)
            if conn is None or conn.closed:
                if not self._detected:
                    return await self._first_connection(attr)
                conn = await self._connect_to(self.host, self.port)
                setattr(self, attr, conn)
        return conn

    async def _connect_to(self, host: str, port: int) -> Connection:
        """A new authenticated connection to ``host:port`` (the cluster router opens its members' with it)."""
        auth = None if self.password is None else (self.username or "default", self.password)
        return await Connection.open(host, port, self.timeout_ms / 1000, ssl=self.ssl, auth=auth)

    async def _first_connection(self, attr: str) -> Connection:
        """Reach the first seed that answers, and ask it whether it is a cluster member (unless routing=False)."""
        error: Exception | None = None
        for host, port in self._seeds:
            try:
                conn = await self._connect_to(host, port)
            except ConnectionClosedError as e:
                error = e
                continue
            self.host, self.port = host, port
            info = None
            if self._routing is not False:
                from .cluster import probe

                try:
                    info = await probe(conn, self.timeout_ms / 1000)
                except ConnectionClosedError:
                    # A server that hangs up on an op it does not know is not a cluster member either.
                    conn = await self._connect_to(host, port)
                except BaseException:
                    conn.close()
                    raise
            self._detected = True
            if info is None:
                if self._routing:
                    conn.close()
                    raise BadRequestError(f"{host}:{port} is not a cluster member (routing=True)")
                setattr(self, attr, conn)
                return conn
            from .cluster import ClusterRouter

            self._cluster = ClusterRouter(self, f"{host}:{port}", info)
            self._cluster.adopt(conn, attr == "_blocking")
            return conn
        assert error is not None
        raise error

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
        if self._cluster is not None:
            return await self._cluster.call(op, key, rest, ns or self.namespace, payload, block_ms, timeout)
        delay = 0.05
        for attempt in range(self.max_retries):
            conn = self._conn
            if block_ms or conn is None or conn.closed:
                conn = await (self._open("_blocking") if block_ms else self._main())
                if self._cluster is not None:  # the first connection found a cluster: route from now on
                    return await self._cluster.call(op, key, rest, ns or self.namespace, payload, block_ms, timeout)
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

    async def cluster_slots(self) -> dict:
        """The cluster's slot map as this client routes by it (refreshed first).

        ``{"cluster", "shards", "ranges": [[first, last, shard]], "leaders": {shard: "host:port"},
        "members": {shard: [...]}}``; a single server refuses it (BadRequestError).

        Example:
            >>> (await client.cluster_slots())["ranges"]   # doctest: +SKIP
            [[0, 8191, 0], [8192, 16383, 1]]
        """
        import msgpack

        from flo_core.spec import Op

        if self._cluster is None:
            await self.connect()
        if self._cluster is not None:
            return await self._cluster.slots()
        return msgpack.unpackb(await self._call_vo(Op.CLUSTER_SLOTS, b""), raw=False, strict_map_key=False)

    async def whoami(self) -> str:
        """The user this client's connection is (``SERVER_INFO``'s ``user``)."""
        return (await self.server_info()).get("user", "")


__all__ = ["FloClient", "parse_endpoint", "parse_url", "ConnectionClosedError"]

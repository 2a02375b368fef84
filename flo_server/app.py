"""The server: stores, the write path, listeners, timers and lifecycle.

Example:
    >>> import asyncio
    >>> from flo_server import Server, ServerConfig
    >>> async def main():                                          # doctest: +SKIP
    ...     srv = Server(ServerConfig(port=9000, data_dir="./data"))
    ...     await srv.start()
    ...     await srv.wait_closed()
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import signal
import ssl
import sys
import time
from typing import Any

from flo_core import gctune
from flo_core.core import now_ms
from flo_core.errors import FloError
from flo_core.kv import KVStore
from flo_core.pqueue import Queues
from flo_core.stream import Streams
from flo_server import handlers  # noqa: F401 - registers every handler and applier
from flo_server import persistence
from flo_server.actions import Actions
from flo_server.auth import Rule, Users
from flo_server.cluster import migrate, resp_cluster, router  # noqa: F401 - register their handlers and appliers
from flo_server.cluster.replication import EpochHistory  # also registers the REPL_* handlers
from flo_server.metrics import SlowLog, new_metrics
from flo_server.config import ServerConfig
from flo_server.dispatch import HANDLERS
from flo_server.handlers.kv import ScanCursors, Txns
from flo_server.handlers.list import ListStore
from flo_server.handlers.queue import wake_next_dequeue
from flo_server.journal import APPLIERS, MemoryJournal
from flo_server.protocol import FloProtocol
from flo_server.waiters import Waiters

log = logging.getLogger("flo_server")

TICK_S = 0.05  # timers: active TTL expiry, idle transactions


class Server:
    """One flo-server: every store, the journal, the listener."""

    def __init__(self, config: ServerConfig | None = None) -> None:
        self.config = config or ServerConfig()
        cfg = self.config
        # One store per primitive; snapshots dump ``self.stores`` and load it back by name.
        self.kv = KVStore(history_budget=cfg.history_bytes)
        self.queues = Queues(max_deliveries=cfg.queue_max_deliveries)
        self.streams = Streams()
        self.actions = Actions()
        self.lists = ListStore()
        self.epochs = EpochHistory()  # the cluster leaderships this log holds records of (flo_server.cluster)
        self.stores: dict[str, Any] = {
            "kv": self.kv, "queues": self.queues, "streams": self.streams, "actions": self.actions, "lists": self.lists,
            "cluster": self.epochs,
        }
        self._empty_states = {name: store.dump() for name, store in self.stores.items()}
        self.loop: Any = None  # the serving loop, once start() runs (None during replay)
        self.cluster: Any = None  # a ClusterNode with --etcd (flo_server.cluster.node)
        self.router: Any = None  # its Router: where each request is served (flo_server.cluster.router)
        self.txns = Txns()
        self.scan_cursors = ScanCursors()
        self.waiters = Waiters()
        self.journal: Any = MemoryJournal()
        self.connections: set[FloProtocol] = set()
        self.started_at = time.time()
        self.ready = False  # recovery done and listening (/readyz)
        self._server: asyncio.AbstractServer | None = None
        self._tls_server: asyncio.AbstractServer | None = None
        self._tasks: list[asyncio.Task] = []
        self._executor_stop: asyncio.Event | None = None
        self._executor_task: asyncio.Task | None = None
        self._closed = asyncio.Event()
        self.port = self.config.port
        self.tls_port: int | None = None  # the TLS listener's port, when there is one
        self.http_port: int | None = None  # the HTTP side port's, when it is served
        self._http_server: asyncio.AbstractServer | None = None
        self.users = Users.from_config(cfg)
        # Counted by the request loops, read by /metrics and INFO (flo_server.metrics); FLO_NO_METRICS=1
        # turns counting off, for the bench's measure of what it costs.
        self.metrics = None if os.environ.get("FLO_NO_METRICS") else new_metrics()
        self.slowlog = SlowLog()  # SLOWLOG / LATENCY: commands of the Python paths slower than 10 ms
        self.connections_received = 0
        self.connections_rejected = 0
        self.clients_dropped_output_limit = 0  # clients that did not read their answers (--client-output-limit)

    # --- the write path -------------------------------------------------------------

    def write(self, kind: str, *args: Any) -> Any:
        """Log a record and apply it; returns what the applier returns (docs/architecture.md §3)."""
        lsn = self.journal.append(kind, args)
        return APPLIERS[kind](self, lsn, *args)

    def wake_queue(self, ns: str, name: str) -> None:
        """Wake the next parked dequeue of a queue (the C enqueue path calls this)."""
        wake_next_dequeue(self, ns, name)

    #: Unix time in ms: the only clock the stores see, passed in as ``now``. The C request
    #: loops read the same clock without a call when ``srv.now`` is this function.
    now = staticmethod(now_ms)

    def uptime(self) -> float:
        return time.time() - self.started_at

    def info(self) -> dict:
        return {
            "version": "0.1.0",
            "uptime_s": int(time.time() - self.started_at),
            "connections": len(self.connections),
            "connections_rejected": self.connections_rejected,
            "clients_dropped_output_limit": self.clients_dropped_output_limit,
            "waiters": len(self.waiters),
            "last_lsn": self.journal.last_lsn,
            "fsync": self.config.fsync,
            "data_dir": self.config.data_dir,
            "ops": len(HANDLERS),
            "auth_required": self.users.required,
            "auth_failures": self.users.failures,
            "tls_port": self.tls_port,
            "http_port": self.http_port,
            "commands": sum(self.metrics.snapshot()["calls"].values()) if self.metrics is not None else 0,
            "bytes_in": self.metrics.bytes_in if self.metrics is not None else 0,
            "bytes_out": self.metrics.bytes_out if self.metrics is not None else 0,
            "journal": self.journal.stats() if hasattr(self.journal, "stats") else {},
            "cluster": self.cluster.info() if self.cluster is not None else None,
        }

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover from the data dir, then listen."""
        cfg = self.config
        if cfg.data_dir:
            os.makedirs(cfg.data_dir, exist_ok=True)
            self.journal = persistence.open_journal(self, cfg)  # recovers the stores first
        check_protected_mode(cfg, self.users)
        if cfg.etcd and not cfg.data_dir:
            raise ConfigError("a cluster member needs a data dir (its log is what replicas copy)")
        if cfg.etcd:
            from flo_server.cluster.node import ClusterNode

            # Made before the listener, so that no connection is ever served as if this were a lone
            # server: writes are fenced and the fast paths serve no slot until the member knows its role.
            self.cluster = ClusterNode(self, etcd=cfg.etcd, cluster=cfg.cluster, shard=cfg.shard,
                                       advertise=cfg.advertise or "", node=cfg.node, lease_ms=cfg.lease_ms,
                                       sync_replicas=cfg.sync_replicas)
        tls = server_tls_context(cfg)
        loop = self.loop = asyncio.get_running_loop()  # for hot paths: each lookup is a getpid() call
        main_tls = tls if tls is not None and cfg.tls_port is None else None
        self._server = await loop.create_server(
            lambda: FloProtocol(self), cfg.host, cfg.port, reuse_address=True, backlog=1024, ssl=main_tls
        )
        self.port = self._server.sockets[0].getsockname()[1]
        if main_tls is not None:
            self.tls_port = self.port
        elif tls is not None:
            self._tls_server = await loop.create_server(
                lambda: FloProtocol(self), cfg.host, cfg.tls_port, reuse_address=True, backlog=1024, ssl=tls
            )
            self.tls_port = self._tls_server.sockets[0].getsockname()[1]
        await self._start_http()
        if self.cluster is not None:
            if not cfg.advertise:
                self.cluster.advertise = f"{cfg.host}:{self.port}"
                self.cluster.node = cfg.node or self.cluster.advertise
            await self.cluster.start()
        self.ready = True
        self._tasks.append(asyncio.ensure_future(self._ticker()))
        if cfg.executor:
            self._start_executor()
        log.info("flo-server listening on %s:%d%s (data %s, fsync %s, %s)", cfg.host, self.port,
                 "" if self.tls_port is None else (" TLS" if self.tls_port == self.port else f", TLS on {self.tls_port}"),
                 cfg.data_dir, cfg.fsync, "auth required" if self.users.required else "no auth")

    async def _start_http(self) -> None:
        """The HTTP side port (flo_server.http). flo-server's default port being taken is a warning, not a failure."""
        from flo_server.config import DEFAULT_HTTP_PORT
        from flo_server.http import start_http

        port = self.config.http_port
        if port == 0:
            return
        try:
            self._http_server, self.http_port = await start_http(self, self.config.host, max(port, 0))
        except OSError as e:
            if port != DEFAULT_HTTP_PORT:
                raise
            log.warning("HTTP side port %d not served: %s (choose one with --http-port)", port, e.strerror)

    def _start_executor(self) -> None:
        """The flamepy executor manager, in-process, as a client of this server (``--no-executor`` disables)."""
        from flamepy.executor import run_embedded_executor

        from flamepy.core.records import NAMESPACE

        cfg = self.config
        host = cfg.host if cfg.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        opts: dict = {}
        builtin_opts = None
        if self.users.required:
            # Its own user: the flamepy namespace without flame:register (its service processes
            # get the same credentials: they read and finish tasks, they cannot register commands).
            rule = Rule(namespaces=(NAMESPACE,), rights=frozenset({"read", "flame:invoke"}))
            opts.update(username="flo:executor", password=self.users.add_internal("executor", (rule,)))
            # Registering the built-in applications (flmrun, ...) needs flame:register on just those
            # records: a user of its own that the service processes never see.
            from flamepy.apps import BUILTIN_APPLICATIONS
            builtin = Rule(namespaces=(NAMESPACE,), primitives=frozenset({"kv"}),
                           rights=frozenset({"read", "flame:register"}),
                           keys=tuple(f"app/{name}".encode() for name in BUILTIN_APPLICATIONS))
            builtin_opts = {"username": "flo:builtins", "password": self.users.add_internal("builtins", (builtin,))}
        if self.tls_port == self.port:
            # TLS only: it connects to itself and trusts this server's CA (or its self-signed certificate)
            opts.update(tls=True, ca_file=cfg.tls_ca or cfg.tls_cert)
            if builtin_opts is not None:
                builtin_opts.update(tls=True, ca_file=cfg.tls_ca or cfg.tls_cert)
        self._executor_stop = asyncio.Event()
        self._executor_task = asyncio.ensure_future(run_embedded_executor(
            f"{host}:{self.port}", self._executor_stop, client_options=opts, allow_dirs=tuple(cfg.executor_allow),
            builtin_client_options=builtin_opts,
            # a cluster member is a Flame node of its own (several may share a machine): its member name
            node_name=os.environ.get("FLAME_EXECUTOR_NODE") or (self.cluster.node if self.cluster else None)))

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            now = self.now()
            self.kv.expire_some(now)
            self.txns.expire(now)

    def drop_clients(self, why: str) -> None:
        """Close every client connection (a deposed leader: their in-flight writes have an unknown outcome)."""
        log.warning("closing %d client connection(s): %s", len(self.connections), why)
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()

    def reset_state(self, lsn: int, snapshot_body: bytes) -> None:
        """Replace every store and the log with a leader's snapshot at ``lsn`` (a replica's full resync)."""
        cfg = self.config
        tap = self.journal.writer.tap
        self.journal.close(snapshot=False)
        persistence.replace_with_snapshot(cfg.data_dir, lsn, snapshot_body)
        for name, store in self.stores.items():
            store.load(self._empty_states[name])
        self.txns = Txns()
        self.drop_clients("state replaced by the leader's snapshot")
        self.journal = persistence.open_journal(self, cfg)
        self.journal.writer.tap = tap

    async def stop(self) -> None:
        """Stop listening, close connections, flush the journal."""
        if self.cluster is not None:
            try:
                await asyncio.wait_for(self.cluster.stop(), 5)
            except Exception as e:  # noqa: BLE001 - shutdown goes on regardless
                log.warning("cluster member did not stop cleanly: %s", e)
        if self._server is not None:
            self._server.close()
        if self._tls_server is not None:
            self._tls_server.close()
        if self._http_server is not None:
            self._http_server.close()
        if self._executor_task is not None:
            assert self._executor_stop is not None
            self._executor_stop.set()  # stops its service instances (SIGTERM, then a grace period)
            try:
                await asyncio.wait_for(self._executor_task, 10)
            except Exception as e:  # noqa: BLE001 - shutdown goes on regardless
                log.warning("executor manager did not stop cleanly: %s", e)
        for t in self._tasks:
            t.cancel()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
        self.journal.close()
        self._closed.set()

    async def wait_closed(self) -> None:
        await self._closed.wait()


class ConfigError(FloError):
    """The options cannot make a safe server (flo-server says why and exits)."""


def is_loopback(host: str) -> bool:
    """``127.0.0.1``, ``::1``, ``localhost``: only this machine can connect."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name or "" (every interface): assume reachable from elsewhere


def check_protected_mode(cfg: ServerConfig, users: Users) -> None:
    """Refuse to listen beyond loopback with no users and no password (Redis's protected mode)."""
    if not is_loopback(cfg.host) and not users.required and not cfg.insecure_bind:
        raise ConfigError(
            f"refusing to listen on {cfg.host or 'every interface'} with no authentication: anyone who reaches "
            "the port could read and delete every key and run commands through flamepy. Give --users FILE "
            "or --requirepass, bind 127.0.0.1, or pass --insecure-bind if a firewall already guards the port.")


def server_tls_context(cfg: ServerConfig) -> ssl.SSLContext | None:
    """The listeners' TLS context from --tls-cert/--tls-key/--tls-ca/--tls-auth-clients, or None."""
    if not cfg.tls_cert and not cfg.tls_key:
        if cfg.tls_port is not None:
            raise ConfigError("--tls-port needs --tls-cert and --tls-key")
        return None
    if not (cfg.tls_cert and cfg.tls_key):
        raise ConfigError("TLS needs both --tls-cert and --tls-key")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
        if cfg.tls_ca:
            ctx.load_verify_locations(cfg.tls_ca)
    except (OSError, ssl.SSLError) as e:
        raise ConfigError(f"cannot load the TLS certificate, key or CA: {e}") from None
    modes = {"no": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "yes": ssl.CERT_REQUIRED}
    if cfg.tls_auth_clients not in modes:
        raise ConfigError("--tls-auth-clients is no, optional or yes")
    if cfg.tls_auth_clients != "no" and not cfg.tls_ca:
        raise ConfigError("--tls-auth-clients needs --tls-ca to verify client certificates with")
    ctx.verify_mode = modes[cfg.tls_auth_clients]
    return ctx


def serve(config: ServerConfig) -> None:
    """Run a server until SIGINT/SIGTERM (the ``flo-server`` command)."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass

    async def main() -> None:
        try:
            srv = Server(config)
            await srv.start()
        except (FloError, OSError) as e:  # a corrupt log, an unsafe bind, a port in use: say why, no traceback
            print(f"flo-server: cannot start: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        # Everything recovered is long-lived: keep it out of the collector's scans (flo_core.gctune).
        gctune.settle()
        tls = "" if srv.tls_port is None else (" (TLS)" if srv.tls_port == srv.port else f", TLS on {srv.tls_port}")
        http = "" if srv.http_port is None else f", http on {srv.http_port}"
        print(f"flo-server ready on {config.host}:{srv.port}{tls}{http}", flush=True)
        await stop.wait()
        log.info("shutting down")
        await srv.stop()

    asyncio.run(main())

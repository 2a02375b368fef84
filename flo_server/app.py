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
import gc
import logging
import os
import signal
import sys
import time
from typing import Any

from flo_core.core import now_ms
from flo_core.errors import FloError
from flo_core.kv import KVStore
from flo_core.pqueue import Queues
from flo_core.stream import Streams
from flo_server import handlers  # noqa: F401 - registers every handler and applier
from flo_server import persistence
from flo_server.actions import Actions
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
        self.stores: dict[str, Any] = {
            "kv": self.kv, "queues": self.queues, "streams": self.streams, "actions": self.actions, "lists": self.lists,
        }
        self.txns = Txns()
        self.scan_cursors = ScanCursors()
        self.waiters = Waiters()
        self.journal: Any = MemoryJournal()
        self.connections: set[FloProtocol] = set()
        self.started_at = time.time()
        self._server: asyncio.AbstractServer | None = None
        self._tasks: list[asyncio.Task] = []
        self._executor_stop: asyncio.Event | None = None
        self._executor_task: asyncio.Task | None = None
        self._closed = asyncio.Event()
        self.port = self.config.port

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

    def info(self) -> dict:
        return {
            "version": "0.1.0",
            "uptime_s": int(time.time() - self.started_at),
            "connections": len(self.connections),
            "waiters": len(self.waiters),
            "last_lsn": self.journal.last_lsn,
            "fsync": self.config.fsync,
            "data_dir": self.config.data_dir,
            "ops": len(HANDLERS),
            "journal": self.journal.stats() if hasattr(self.journal, "stats") else {},
        }

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Recover from the data dir, then listen."""
        cfg = self.config
        if cfg.data_dir:
            os.makedirs(cfg.data_dir, exist_ok=True)
            self.journal = persistence.open_journal(self, cfg)  # recovers the stores first
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: FloProtocol(self), cfg.host, cfg.port, reuse_address=True, backlog=1024
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._tasks.append(asyncio.ensure_future(self._ticker()))
        if cfg.executor:
            self._start_executor()
        log.info("flo-server listening on %s:%d (data %s, fsync %s)", cfg.host, self.port, cfg.data_dir, cfg.fsync)

    def _start_executor(self) -> None:
        """The flamepy executor manager, in-process, as a client of this server (``--no-executor`` disables)."""
        from flamepy.executor import run_embedded_executor

        host = self.config.host if self.config.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        self._executor_stop = asyncio.Event()
        self._executor_task = asyncio.ensure_future(run_embedded_executor(f"{host}:{self.port}", self._executor_stop))

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            now = self.now()
            self.kv.expire_some(now)
            self.txns.expire(now)

    async def stop(self) -> None:
        """Stop listening, close connections, flush the journal."""
        if self._server is not None:
            self._server.close()
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


def serve(config: ServerConfig) -> None:
    """Run a server until SIGINT/SIGTERM (the ``flo-server`` command)."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:  # pragma: no cover
        pass

    async def main() -> None:
        srv = Server(config)
        try:
            await srv.start()
        except FloError as e:  # e.g. a corrupt log: say why, no traceback
            print(f"flo-server: cannot start: {e}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        # Everything recovered is long-lived: keep it out of the collector's scans.
        gc.collect()
        gc.freeze()
        print(f"flo-server ready on {config.host}:{srv.port}", flush=True)
        await stop.wait()
        log.info("shutting down")
        await srv.stop()

    asyncio.run(main())

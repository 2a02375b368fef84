"""``EmbeddedServer``: a real flo-server inside your process, for tests, scripts and notebooks.

What fakeredis or testcontainers give Redis users, but the real server: the same
``Server`` the ``flo-server`` command runs, on its own event loop (uvloop when it
is installed) in a background daemon thread. It never touches the caller's loop,
so it works the same from plain sync code and from inside a running asyncio loop
(pytest-asyncio tests, Jupyter).

From sync code (a script, a notebook cell)::

    >>> import asyncio
    >>> from flo_server import EmbeddedServer
    >>> with EmbeddedServer() as srv:                      # memory only, a free port
    ...     async def main():
    ...         async with srv.client() as client:
    ...             await client.kv.put("user:1", b"Ada")
    ...             return (await client.kv.get("user:1")).value
    ...     print(asyncio.run(main()))
    b'Ada'

From an async test::

    async def test_orders():
        async with EmbeddedServer() as srv, srv.client(namespace="shop") as client:
            await client.queue.enqueue("orders", b"o-1")
            assert (await client.queue.dequeue("orders")).messages[0].payload == b"o-1"

Durability, with a data dir (the journal is flushed and snapshotted on ``stop()``)::

    srv = EmbeddedServer(tmp_path / "data", fsync="always").start()
    ...                                     # write through srv.client()
    srv.restart()                           # stop + start: same port, same data dir
    ...                                     # the data is back; clients reconnect by themselves
    srv.stop()

Options beyond the named ones go to :class:`~flo_server.config.ServerConfig`::

    EmbeddedServer(requirepass="s3cret")    # srv.client() and srv.url carry the password
    EmbeddedServer(executor=True)           # the flamepy executor manager, in-process

For pytest there are fixtures, ``flo_server`` and ``flo_client``
(``flo_server.pytest_plugin``, loaded by itself once the package is installed);
see docs/testing.md.
"""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import os
import threading
import weakref
from typing import Any
from urllib.parse import quote

from flo_server.config import ServerConfig

DEFAULT_TIMEOUT_S = 60.0  # a start (recovery of a big data dir) or a stop (executor services) at most

_running: "weakref.WeakSet[EmbeddedServer]" = weakref.WeakSet()
_atexit_registered = False


def _stop_all_at_exit() -> None:
    """Interpreter exit: stop servers still running so their journals are flushed (daemon threads die unflushed)."""
    for srv in list(_running):
        try:
            srv.stop()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass


def _loop_factory() -> Any:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        return None
    return uvloop.new_event_loop


class EmbeddedServer:
    """A flo-server on a background thread of this process.

    Args:
        data_dir: where the journal and snapshots go; ``None`` keeps everything in memory.
        port: ``0`` (default) picks a free port; :attr:`port` says which once started.
        host: the address to listen on (``127.0.0.1``: only this machine).
        fsync: ``always`` | ``everysec`` | ``no``, as ``flo-server --fsync``.
        executor: run the flamepy executor manager in-process (off by default here).
        **config: any other :class:`~flo_server.config.ServerConfig` field
            (``requirepass``, ``users_file``, ``tls_cert``/``tls_key``, ``queue_lease_ms``, ...).

    ``start()`` returns once the server listens and raises its start-up error
    (port in use, data dir locked or corrupt, unsafe bind...) in the caller's
    thread; ``stop()`` closes connections, flushes the journal and joins the
    thread (calling it again does nothing). ``with`` and ``async with`` do both.
    """

    def __init__(self, data_dir: str | os.PathLike | None = None, *, port: int = 0, host: str = "127.0.0.1",
                 fsync: str = "everysec", executor: bool = False, **config: Any) -> None:
        self.config = ServerConfig(host=host, port=port, fsync=fsync, executor=executor,
                                   data_dir=None if data_dir is None else os.fspath(data_dir), **config)
        self._port = port  # the configured port until the first start, then the one it got (restart reuses it)
        self._tls_port: int | None = None
        self._lock = threading.RLock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._server: Any = None
        self._state: dict[str, Any] = {}

    # --- where it is ------------------------------------------------------------------

    @property
    def running(self) -> bool:
        t = self._thread
        return t is not None and t.is_alive()

    @property
    def port(self) -> int:
        """The port it listens on (the configured one, maybe ``0``, before the first start)."""
        return self._port

    @property
    def tls_port(self) -> int | None:
        """The TLS listener's port (the main port itself when only ``tls_cert``/``tls_key`` are given)."""
        return self._tls_port

    @property
    def host(self) -> str:
        """The host clients connect to: ``config.host``, or ``127.0.0.1`` when it listens on every interface."""
        h = self.config.host
        return "127.0.0.1" if h in ("", "0.0.0.0") else "::1" if h == "::" else h

    @property
    def address(self) -> str:
        """``"127.0.0.1:PORT"``, what ``FloClient`` takes."""
        if not self._port:
            raise RuntimeError("EmbeddedServer has no port yet: start() it first")
        h = self.host
        return f"[{h}]:{self._port}" if ":" in h else f"{h}:{self._port}"

    @property
    def url(self) -> str:
        """``flo://127.0.0.1:PORT``; ``flo://:PASSWORD@...`` with ``requirepass``; ``flos://`` when the port is TLS."""
        scheme = "flos" if self._main_port_tls else "flo"
        pw = self.config.requirepass
        cred = f":{quote(pw, safe='')}@" if pw else ""
        return f"{scheme}://{cred}{self.address}"

    @property
    def server(self) -> Any:
        """The running :class:`~flo_server.app.Server` (it lives on :attr:`loop`: read it, do not drive it)."""
        return self._server

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The server's own event loop (``asyncio.run_coroutine_threadsafe(coro, srv.loop)`` runs code there)."""
        return self._loop

    @property
    def _main_port_tls(self) -> bool:
        return bool(self.config.tls_cert) and self.config.tls_port is None

    def client(self, **kw: Any) -> Any:
        """A :class:`flo_client.FloClient` for this server (not connected yet: it connects on first call).

        It gets the ``requirepass`` password and, when the port is TLS, trusts
        ``tls_ca`` (or the pinned ``tls_cert``); keyword arguments (``namespace``,
        ``timeout_ms``, ``username``/``password``, ...) go to ``FloClient`` and win.
        Close it with ``await client.close()`` or use ``async with srv.client() as c``.
        """
        from flo_client import FloClient

        opts: dict[str, Any] = {}
        if self.config.requirepass and "username" not in kw and "password" not in kw:
            opts["password"] = self.config.requirepass
        if self._main_port_tls and "tls" not in kw and "ca_file" not in kw:
            opts.update(tls=True, ca_file=self.config.tls_ca or self.config.tls_cert)
        opts.update(kw)
        return FloClient(self.address, **opts)

    # --- lifecycle --------------------------------------------------------------------

    def start(self, timeout: float = DEFAULT_TIMEOUT_S) -> "EmbeddedServer":
        """Start the server thread; return once it listens (``self``, so ``srv = EmbeddedServer().start()``).

        Raises what the server raised while starting (``OSError`` for a port in
        use, ``RecoveryError`` for a locked or corrupt data dir, ``ConfigError``...);
        nothing is left running then. Does nothing when it already runs. After a
        first start the port is fixed: a later ``start()`` (or ``restart()``) reuses it.
        """
        global _atexit_registered
        with self._lock:
            if self.running:
                return self
            self._thread = None
            state: dict[str, Any] = {}
            ready = threading.Event()
            thread = threading.Thread(target=self._run, args=(ready, state), daemon=True,
                                      name=f"flo-server-embedded:{self._port or 'any'}")
            thread.start()
            if not ready.wait(timeout):
                self._thread, self._state = thread, state
                try:
                    self.stop(timeout)
                finally:
                    raise TimeoutError(f"embedded flo-server did not start within {timeout:g}s")
            if "start_error" in state:
                thread.join(timeout)
                err = state["start_error"]
                if isinstance(err, BaseException) and hasattr(err, "add_note"):
                    err.add_note(f"(embedded flo-server on {self.config.host}:{self._port} could not start)")
                raise err
            self._thread, self._state = thread, state
            _running.add(self)
            if not _atexit_registered:
                atexit.register(_stop_all_at_exit)
                _atexit_registered = True
            return self

    def stop(self, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        """Stop listening, close connections, flush (and snapshot) the journal, join the thread. Idempotent."""
        with self._lock:
            thread = self._thread
            if thread is None:
                return
            if thread is threading.current_thread():
                raise RuntimeError("EmbeddedServer.stop() called from the server's own loop")
            loop, ev = self._loop, self._stop_event
            if loop is not None and ev is not None:
                try:
                    loop.call_soon_threadsafe(ev.set)
                except RuntimeError:  # its loop is closed already: the thread is ending
                    pass
            thread.join(timeout)
            if thread.is_alive():
                raise TimeoutError(f"embedded flo-server did not stop within {timeout:g}s")
            self._thread = None
            self._loop = self._stop_event = self._server = None
            _running.discard(self)
            err = self._state.pop("stop_error", None)
            if err is not None:
                raise err

    def restart(self, timeout: float = DEFAULT_TIMEOUT_S) -> "EmbeddedServer":
        """``stop()`` then ``start()`` on the same port and data dir (memory-only servers come back empty).

        Clients notice the lost connection and reconnect on their next call.
        """
        with self._lock:
            self.stop(timeout)
            return self.start(timeout)

    # --- the server thread ------------------------------------------------------------

    def _run(self, ready: threading.Event, state: dict[str, Any]) -> None:
        try:
            # asyncio.Runner: at the end it cancels what is left, shuts down async
            # generators and the default executor, then closes the loop.
            with asyncio.Runner(loop_factory=_loop_factory()) as runner:
                runner.run(self._main(ready, state))
        except BaseException as e:  # noqa: BLE001 - reported to the caller's thread
            state["start_error" if not ready.is_set() else "stop_error"] = e
        finally:
            ready.set()

    async def _main(self, ready: threading.Event, state: dict[str, Any]) -> None:
        from flo_server.app import Server

        srv = Server(dataclasses.replace(self.config, port=self._port))
        try:
            await srv.start()
        except BaseException as e:  # noqa: BLE001
            state["start_error"] = e
            try:
                await srv.stop()  # a journal opened before the bind failed: unlock the data dir
            except Exception:  # noqa: BLE001 - the start error is what matters
                pass
            ready.set()
            return
        self._server, self._loop, self._stop_event = srv, asyncio.get_running_loop(), asyncio.Event()
        self._port, self._tls_port = srv.port, srv.tls_port
        ready.set()
        try:
            await self._stop_event.wait()
        finally:
            await srv.stop()

    # --- with / async with ------------------------------------------------------------

    def __enter__(self) -> "EmbeddedServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    async def __aenter__(self) -> "EmbeddedServer":
        # Start-up (recovery) happens off the caller's loop, so that loop keeps running meanwhile.
        return await asyncio.to_thread(self.start)

    async def __aexit__(self, *exc: Any) -> None:
        await asyncio.to_thread(self.stop)

    def __repr__(self) -> str:
        where = self.address if self._port else "no port yet"
        return (f"<EmbeddedServer {where} {'running' if self.running else 'stopped'} "
                f"data_dir={self.config.data_dir!r}>")


__all__ = ["EmbeddedServer"]

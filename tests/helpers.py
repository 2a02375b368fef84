"""Plain helpers shared by the test modules (fixtures live in ``tests/conftest.py``).

``ServerProc`` runs a real ``flo-server`` subprocess; ``wait_for`` (async) and
``wait_until`` (sync) wait on a condition with a deadline instead of sleeping;
``waiters``/``parked`` ask the server how many requests it holds blocked.

Example::

    from tests.helpers import parked, wait_for

    await parked(client, 2)  # both blocking reads are now parked on the server
    await wait_for(lambda: client.kv.get("k"), timeout=5)
"""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

from flo_server.testing import make_test_ca  # noqa: F401 - re-exported for the test modules

if TYPE_CHECKING:
    from flo_client import FloClient

ROOT = Path(__file__).resolve().parent.parent
READY = re.compile(r"flo-server ready on ([\d.]+):(\d+)(?: \(TLS\)|, TLS on (\d+))?(?:, http on (\d+))?")


class ServerProc:
    """A flo-server subprocess we started (and stop, by pid)."""

    def __init__(self, data_dir: Path, *args: str, fsync: str = "everysec", executor: bool = False,
                 env: dict | None = None) -> None:
        self.data_dir = data_dir
        self.args = list(args)
        self.fsync = fsync
        self.executor = executor  # run the in-process flamepy executor manager
        self.env = env or {}
        self.port = 0
        self.tls_port: int | None = None
        self.http_port: int | None = None  # with "--http-port", "-1" (tests default to no HTTP port)
        self.proc: subprocess.Popen | None = None
        self.output: deque[str] = deque(maxlen=400)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, *extra: str, timeout: float = 20.0) -> "ServerProc":
        if extra:
            self.args = list(extra)
        # Reuse the same port across restarts so clients can reconnect to one endpoint.
        cmd = [sys.executable, "-m", "flo_server", "--host", "127.0.0.1", "--port", str(self.port),
               "--data-dir", str(self.data_dir), "--fsync", self.fsync, *([] if self.executor else ["--no-executor"]),
               *([] if "--http-port" in self.args else ["--http-port", "0"]), *self.args]
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.env)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
        ready = threading.Event()
        matched: list[bool] = []

        def pump(proc: subprocess.Popen = self.proc) -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.output.append(line.rstrip())
                m = READY.search(line)
                if m:
                    self.port = int(m.group(2))
                    self.tls_port = int(m.group(3)) if m.group(3) else (self.port if "(TLS)" in line else None)
                    self.http_port = int(m.group(4)) if m.group(4) else None
                    matched.append(True)
                    ready.set()
            ready.set()  # end of output: it exited

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(timeout) or not matched or self.proc.poll() is not None:
            out = "\n".join(self.output)
            self.stop()
            raise RuntimeError(f"flo-server did not start:\n{out}")
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        p = self.proc
        if p is None or p.poll() is not None:
            return p.returncode if p else None
        p.send_signal(signal.SIGTERM)
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            return p.wait(timeout)

    def kill(self) -> None:
        """kill -9: no shutdown work at all."""
        p = self.proc
        if p is not None and p.poll() is None:
            p.kill()
            p.wait(10)

    def restart(self, kill: bool = False) -> "ServerProc":
        self.kill() if kill else self.stop()
        return self.start()

    def log(self) -> str:
        return "\n".join(self.output)


def recv_until(sock, suffix: bytes) -> bytes:
    """Read a socket until what came ends with ``suffix`` (or the peer closes); returns it all."""
    data = b""
    while not data.endswith(suffix):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def wait_until(pred, timeout: float = 5.0, interval: float = 0.01):
    """Poll ``pred`` until truthy (returns it) or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        time.sleep(interval)


async def wait_for(
    pred: Callable[[], Any | Awaitable[Any]], timeout: float = 10.0, interval: float = 0.01, what: str = "condition"
) -> Any:
    """Call ``pred`` (sync or async) until truthy and return that value; fail after ``timeout`` seconds.

    >>> await wait_for(lambda: client.kv.get("k"), timeout=5)   # the GetResult, once "k" exists
    """
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if inspect.isawaitable(v):
            v = await v
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


async def waiters(endpoint: str) -> int:
    """How many requests the server holds parked (our client's SERVER_INFO extension op; the SDK has none)."""
    from flo_client import FloClient

    async with FloClient(endpoint) as c:
        return (await c.server_info())["waiters"]


async def parked(client: "FloClient | str", n: int, timeout: float = 10.0) -> None:
    """Wait until the server holds exactly ``n`` blocked requests; ``client`` is our client or an endpoint."""
    if isinstance(client, str):
        from flo_client import FloClient

        async with FloClient(client) as ours:
            return await parked(ours, n, timeout)

    async def check() -> bool:
        return (await client.server_info())["waiters"] == n

    await wait_for(check, timeout)


"""The fault the reliability tests and the soak inject: ``kill -9`` of the server, then a restart on the same data dir.

Clients share one :class:`Nemesis`: they wait on ``up`` before each operation, and
an operation that fails tells, by the ``epoch`` it was called in, whether a kill
explains the failure (expected) or not (a bug, or a server too slow to answer).

Example::

    nemesis = Nemesis(ServerProc(tmp / "data", fsync="always").start())
    epoch = nemesis.epoch
    try:
        await client.kv.put("k", b"v")
    except LOST:
        assert nemesis.in_kill_window(epoch)   # else: unexpected
        await nemesis.up.wait()
    await nemesis.kill_and_restart()           # from the controller task
    print(nemesis.recoveries)                  # seconds from kill -9 to "ready", per kill
"""

from __future__ import annotations

import asyncio
import time

from flo_core.errors import ConnectionClosedError, RequestTimeoutError
from tests.helpers import ServerProc

# What flo_client raises when the server dies under a request (ConnectionClosedError is a ConnectionError).
LOST = (ConnectionClosedError, RequestTimeoutError, OSError)


class Nemesis:
    """kill -9 of one flo-server at the moments the caller picks, and its restart on the same port and data dir."""

    def __init__(self, server: ServerProc, *, start_timeout: float = 60.0) -> None:
        self.server = server
        self.start_timeout = start_timeout
        self.up = asyncio.Event()
        self.up.set()
        self.epoch = 0  # +1 at every kill
        self.recoveries: list[float] = []  # seconds from the kill to the restarted server's "ready" line

    async def kill_and_restart(self) -> float:
        """Kill -9 now, start again (on a thread: the clients' loop keeps running), and return the recovery time."""
        self.up.clear()
        self.epoch += 1
        t0 = time.monotonic()
        self.server.kill()
        await asyncio.to_thread(self.server.start, timeout=self.start_timeout)
        took = time.monotonic() - t0
        self.recoveries.append(took)
        self.up.set()
        return took

    def in_kill_window(self, epoch_at_call: int) -> bool:
        """Is a failure of an operation called in ``epoch_at_call`` explained by a kill?"""
        return epoch_at_call != self.epoch or not self.up.is_set()

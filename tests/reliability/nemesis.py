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
import os
import time
from pathlib import Path
from typing import Awaitable, Callable

from flo_core.errors import ConnectionClosedError, RequestTimeoutError
from flo_core.log import LogReader, list_segments
from flo_server.persistence import list_snapshots
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

    async def kill_and_restart(self, before_up: Callable[[], Awaitable[None]] | None = None,
                               while_down: Callable[[], object] | None = None) -> float:
        """Kill -9 now, start again (on a thread: the clients' loop keeps running), and return the recovery time.

        ``while_down`` runs between the kill and the start (a harness self-test damages the data dir
        there); ``before_up`` once the server is ready, before the clients go on (the soak's checks).
        """
        self.up.clear()
        self.epoch += 1
        t0 = time.monotonic()
        self.server.kill()
        try:
            if while_down is not None:
                while_down()
            await asyncio.to_thread(self.server.start, timeout=self.start_timeout)
            took = time.monotonic() - t0
            self.recoveries.append(took)
            if before_up is not None:
                await before_up()
        finally:
            self.up.set()
        return took

    def in_kill_window(self, epoch_at_call: int) -> bool:
        """Is a failure of an operation called in ``epoch_at_call`` explained by a kill?"""
        return epoch_at_call != self.epoch or not self.up.is_set()


def cut_log_tail(data_dir: Path, records: int) -> int:
    """Drop the last ``records`` records of the newest log segment (at most all of it), as if acknowledged
    writes had never reached the disk: the harness self-tests' stand-in for a server that loses data.
    Returns how many were dropped; refuses when a snapshot already covers them (it would bring them back)."""
    reader = LogReader(str(data_dir / "log"))
    (_, newest), *_ = reversed(list_segments(data_dir / "log"))
    starts = [(lsn, reader.offset) for lsn, _, _ in reader if os.fspath(reader.path) == os.fspath(newest)]
    cut = starts[-records:]
    if not cut:
        return 0
    covered = [lsn for lsn, _ in list_snapshots(str(data_dir)) if lsn >= cut[0][0]]
    if covered:
        raise RuntimeError(f"snapshot at LSN {covered[0]} holds the records to cut: nothing would be lost")
    with open(newest, "r+b") as f:
        f.truncate(cut[0][1])
    return len(cut)

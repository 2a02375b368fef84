"""Waiters alone (no sockets): a wake-up is never lost between a check and a park."""

from __future__ import annotations

import asyncio

import pytest

from flo_server.waiters import Waiters

pytestmark = pytest.mark.timeout(10)
KEY = ("a", "default", "job")


class Conn:
    def __init__(self) -> None:
        self.closed = False


async def test_write_between_check_and_park_is_seen():
    # A handler checks (nothing), returns its parking coroutine, and the loop runs a
    # write (notify finds no waiter) before that coroutine starts: it must still see it.
    w, ready = Waiters(), []
    parked = asyncio.ensure_future(w.poll([KEY], Conn(), 5000, lambda: ready.pop() if ready else None))
    ready.append("run-1")
    w.notify(KEY)  # nobody is parked yet
    assert await asyncio.wait_for(parked, 1) == "run-1"


async def _parked(w: Waiters, n: int) -> None:
    while len(w) < n:  # bounded by the test timeout
        await asyncio.sleep(0)


async def test_woken_then_cancelled_passes_the_wake_up_on():
    w, ready, gone = Waiters(), [], Conn()
    first = asyncio.ensure_future(w.poll([KEY], gone, 5000, lambda: ready.pop() if ready else None))
    await _parked(w, 1)
    second = asyncio.ensure_future(w.poll([KEY], Conn(), 5000, lambda: ready.pop() if ready else None))
    await _parked(w, 2)
    ready.append("run-1")
    w.notify(KEY, 1)  # wakes `first` only...
    gone.closed = True  # ...whose connection drops before it could look (as connection_lost does)
    first.cancel()
    assert await asyncio.wait_for(second, 1) == "run-1"
    assert (await asyncio.gather(first, return_exceptions=True))[0] is None or first.cancelled()


async def test_woken_then_refused_passes_the_wake_up_on():
    w, ready, drained = Waiters(), [], []

    def refusing_attempt() -> None:
        if drained:  # e.g. the worker was drained while it was parked
            raise RuntimeError("draining")
        return None

    refusing = asyncio.ensure_future(w.poll([KEY], Conn(), 5000, refusing_attempt))
    await _parked(w, 1)
    other = asyncio.ensure_future(w.poll([KEY], Conn(), 5000, lambda: ready.pop() if ready else None))
    await _parked(w, 2)
    drained.append(True)
    ready.append("run-1")
    w.notify(KEY, 1)  # wakes `refusing`, the oldest, which cannot take the run
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(refusing, 1)
    assert await asyncio.wait_for(other, 1) == "run-1"


async def test_closed_connection_takes_nothing_and_passes_on():
    w, ready = Waiters(), []
    gone, alive = Conn(), Conn()
    first = asyncio.ensure_future(w.poll([KEY], gone, 5000, lambda: ready.pop() if ready else None))
    await _parked(w, 1)
    second = asyncio.ensure_future(w.poll([KEY], alive, 5000, lambda: ready.pop() if ready else None))
    await _parked(w, 2)
    gone.closed = True
    ready.append("run-1")
    w.notify(KEY, 1)
    assert await asyncio.wait_for(first, 1) is None
    assert await asyncio.wait_for(second, 1) == "run-1"

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


# --- Parked: a request parked with no task of its own (the action round trip) -----------------


class AnswerConn(Conn):
    """What Parked needs of a connection: its tasks, and a way to send one late answer."""

    def __init__(self) -> None:
        super().__init__()
        self.tasks: set = set()
        self.answers: asyncio.Queue = asyncio.Queue()

    def answer(self, rid: int, status: int, data: bytes) -> None:
        self.answers.put_nowait((rid, status, data))


def _taking(ready: list):
    """A step that takes the next ready item; empty once the wait is over."""
    return lambda final: ready.pop(0) if ready else (b"" if final else None)


async def test_parked_answers_its_connection_on_a_wake_up():
    w, ready, conn = Waiters(), [], AnswerConn()
    p = w.park([KEY], conn, 5.0, _taking(ready))
    p.start(conn, 7)
    assert len(w) == 1 and p in conn.tasks
    w.notify(KEY)  # a wake-up with nothing ready: it looks, finds nothing, parks again
    assert len(w) == 0
    await _parked(w, 1)
    assert conn.answers.empty()
    ready.append(b"run-1")
    w.notify(KEY)
    assert await asyncio.wait_for(conn.answers.get(), 1) == (7, 0, b"run-1")
    assert len(w) == 0 and not conn.tasks


async def test_parked_wait_runs_out_with_the_final_step():
    w, conn = Waiters(), AnswerConn()
    w.park([KEY], conn, 0.05, _taking([])).start(conn, 1)
    assert await asyncio.wait_for(conn.answers.get(), 1) == (1, 0, b"")
    assert len(w) == 0


async def test_parked_refusal_is_answered_and_passes_the_wake_up_on():
    w, ready = Waiters(), []
    refused_conn, other_conn = AnswerConn(), AnswerConn()

    def refusing(final: bool) -> bytes:
        raise RuntimeError("draining")

    w.park([KEY], refused_conn, 5.0, refusing).start(refused_conn, 1)
    w.park([KEY], other_conn, 5.0, _taking(ready)).start(other_conn, 2)
    ready.append(b"run-1")
    w.notify(KEY, 1)  # wakes the oldest, which refuses: the other one must get the run
    rid, status, _ = await asyncio.wait_for(refused_conn.answers.get(), 1)
    assert rid == 1 and status != 0
    assert await asyncio.wait_for(other_conn.answers.get(), 1) == (2, 0, b"run-1")


async def test_parked_dropped_after_its_wake_up_passes_it_on():
    # woken, then its connection goes away (connection_lost cancels it) before its step ran
    w, ready = Waiters(), []
    gone, alive = AnswerConn(), AnswerConn()
    first = w.park([KEY], gone, 5.0, _taking(ready))
    first.start(gone, 1)
    w.park([KEY], alive, 5.0, _taking(ready)).start(alive, 2)
    ready.append(b"run-1")
    w.notify(KEY, 1)
    first.cancel()
    assert await asyncio.wait_for(alive.answers.get(), 1) == (2, 0, b"run-1")
    assert gone.answers.empty()


async def test_parked_closed_connection_takes_nothing():
    w, ready = Waiters(), []
    gone, alive = AnswerConn(), AnswerConn()
    w.park([KEY], gone, 5.0, _taking(ready)).start(gone, 1)
    w.park([KEY], alive, 5.0, _taking(ready)).start(alive, 2)
    gone.closed = True
    ready.append(b"run-1")
    w.notify(KEY, 1)
    assert await asyncio.wait_for(alive.answers.get(), 1) == (2, 0, b"run-1")
    assert gone.answers.empty() and ready == []


async def test_parked_can_be_awaited_by_a_caller_that_is_not_a_connection():
    w, ready = Waiters(), []
    p = w.park([KEY], None, 5.0, _taking(ready))
    ready.append(b"run-1")
    w.notify(KEY)
    assert await asyncio.wait_for(p, 1) == (0, b"run-1")


async def test_parked_counts_against_the_waiter_limit():
    w, conn = Waiters(limit=1), AnswerConn()
    w.park([KEY], conn, 5.0, _taking([]))
    with pytest.raises(Exception, match="too many blocked requests"):
        w.park([KEY], conn, 5.0, _taking([]))

"""Parked blocking requests (long polls), woken by writes in arrival order.

A waiter is a future keyed by what it waits on (``("q", ns, name)``,
``("kv", ns, key)``, ...), or a :class:`Parked` request, which needs no task of
its own (the action round trip's invokes, result waits and worker awaits). A
write calls :meth:`Waiters.notify`; the woken coroutine (or step) then retries
its own op, so nothing is ever handed to a waiter whose connection closed: it
checks ``conn.closed`` before it takes anything.

A wake-up is never lost: a handler checks synchronously, but its parking
coroutine only starts on a later loop turn, and a notify in between finds no
waiter - so :meth:`Waiters.poll` tries once more before it parks. A waiter that
was woken but cannot use the wake-up (its connection closed, its task was
cancelled, its attempt refused) hands it to the next waiter.

Example:
    >>> w = Waiters()                                   # doctest: +SKIP
    >>> woke = await w.wait([("q", "default", "tasks")], conn, timeout_s=1.0)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import heapq
from typing import Any, Hashable, Iterable

from flo_core.errors import Refusal
from flo_core.spec import MAX_WAITERS, Reason


def loop_of(holder: Any) -> asyncio.AbstractEventLoop:
    """``holder.loop`` (a connection's or the server's, looked up once), else the running loop: each
    ``asyncio.get_running_loop()`` costs a getpid() system call."""
    loop = getattr(holder, "loop", None)
    return loop if loop is not None else asyncio.get_running_loop()


#: A Parked request's states (module constants: the compiled module types them, waiters.pxd).
_PARKED, _WOKEN, _ANSWERED, _DROPPED_WOKEN = 0, 1, 2, 3


class Parked:
    """A blocking request parked with no task, coroutine or future of its own.

    The action round trip's answer path: a run's invoker and its workers park here, so the
    write that wakes them costs one loop callback each, not a future, a task step and the
    coroutines around the handler. :meth:`Waiters.notify` wakes it as it wakes a future.

    ``step(final)`` is the request's own retry. On the loop turn after each wake-up (and when
    the wait is over, with ``final`` True) it returns the answer's bytes, or None to park again
    for what is left of the wait (never None when ``final``). What it raises is answered as a
    refusal. A woken request whose connection closed, or whose step raised, passes the wake-up
    on to the next waiter of its keys.

    The answer goes to the connection given to :meth:`start` (``conn.answer(rid, status,
    data)``); a caller that is not a connection awaits the object instead:
    ``status, data = await parked``.
    """

    __slots__ = ("_waiters", "_keys", "_wid", "_step", "_deadline", "_loop", "_state",
                 "_answer", "_rid", "_fut", "conn", "metrics", "op")

    def __init__(self, waiters: "Waiters", keys: list, conn: Any, timeout_s: float, step: Any) -> None:
        self._waiters, self._keys, self._step = waiters, keys, step
        self.conn, self.metrics, self.op = conn, None, 0  # (dispatch sets metrics and op)
        self._loop = loop_of(conn)
        self._deadline = self._loop.time() + timeout_s
        self._answer: tuple[int, bytes] | None = None
        self._rid: int | None = None
        self._fut: asyncio.Future | None = None
        self._wid = 0
        self._park()

    # --- what Waiters.notify / fail_where see: a future's face ---------------------------------

    def done(self) -> bool:
        return self._state != _PARKED

    def cancelled(self) -> bool:
        return False

    def set_result(self, woken: bool) -> None:
        """A wake-up (True) or the timer (False): the step runs on the next loop turn."""
        if self._state == _PARKED:
            self._unpark()
            self._state = _WOKEN
            self._loop.call_soon(self._run, woken)

    def set_exception(self, exc: BaseException) -> None:
        """The request must end with this refusal (a slot moved: ask again elsewhere)."""
        if self._state == _PARKED:
            self._unpark()
            self._end(_refused(exc))

    def cancel(self) -> None:
        """Its connection went away: leave without an answer (a wake-up it got and has not
        used yet is passed on, by the step's turn)."""
        if self._state == _PARKED:
            self._unpark()
            self._state = _ANSWERED
        elif self._state == _WOKEN:
            self._state = _DROPPED_WOKEN

    close = cancel  # a deferred request dropped unstarted (flo_server.dispatch.discard)

    # --- the answer ---------------------------------------------------------------------------

    def start(self, conn: Any, rid: int) -> None:
        """Answer request ``rid`` on ``conn`` (now, if the answer came already)."""
        self.conn, self._rid = conn, rid
        if self._answer is not None:
            self._deliver()
        elif self._state != _ANSWERED:
            conn.tasks.add(self)

    def __await__(self) -> Any:
        if self._answer is None and self._state != _ANSWERED:
            self._fut = self._loop.create_future()
            yield from self._fut.__await__()
        return self._answer

    # --- inside ---------------------------------------------------------------------------------

    def _park(self) -> None:
        """Wait (again, after a wake-up it could not use) until a notify or ``_deadline``."""
        self._wid = self._waiters._add(self._keys, self)
        self._state = _PARKED
        self._waiters._time_out_at(self)

    def _unpark(self) -> None:
        self._waiters._remove(self._keys, self._wid)

    def _run(self, woken: bool) -> None:
        if self._state != _WOKEN:
            if self._state == _DROPPED_WOKEN and woken:
                self._pass_on()  # dropped after its wake-up: the wake-up is someone else's now
            self._state = _ANSWERED
            return
        conn = self.conn
        if conn is not None and getattr(conn, "closed", False):
            self._state = _ANSWERED
            if woken:
                self._pass_on()
            return
        remaining = self._deadline - self._loop.time()
        try:
            out = self._step(not woken or remaining <= 0)
            if out is None:
                if remaining > 0:
                    self._park()
                    return
                out = self._step(True)
        except Exception as e:  # noqa: BLE001 - every failure becomes a refusal
            if woken:
                self._pass_on()  # refused (e.g. a draining worker): the wake-up is not ours to keep
            self._end(_refused(e))
            return
        self._end((0, out))

    def _pass_on(self) -> None:
        self._waiters._pass_on(self._keys, self._wid)

    def _end(self, answer: tuple[int, bytes]) -> None:
        self._state = _ANSWERED
        self._answer = answer
        m = self.metrics
        if m is not None:
            m.record(m.slot_of_op(self.op), answer[0], -1)  # a blocking request's wait is not its service time
        if self._rid is not None:
            self._deliver()
        elif self._fut is not None and not self._fut.done():
            self._fut.set_result(None)

    def _deliver(self) -> None:
        conn = self.conn
        conn.tasks.discard(self)
        conn.answer(self._rid, *self._answer)


def _refused(exc: BaseException) -> tuple[int, bytes]:
    from flo_server.dispatch import refused  # (dispatch imports the handlers, which import this)

    return refused(exc)


def _waits(entry: tuple[float, int, Parked]) -> bool:
    """A deadline entry (deadline, id, parked) still stands: that park has been neither woken nor renewed."""
    parked = entry[2]
    return parked._wid == entry[1] and parked._state == _PARKED


def _lapse(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(False)


class Waiters:
    def __init__(self, limit: int = MAX_WAITERS) -> None:
        # key -> {waiter id: future or Parked}, oldest first (a dict keeps insertion order)
        self._by_key: dict[Hashable, dict[int, Any]] = {}
        self._count = 0
        self._limit = limit
        self._ids = 0
        # Parked requests' deadlines, (deadline, id, parked), under one loop timer armed for the
        # earliest: a park costs a heap push, not a loop timer made and cancelled. A woken request's
        # entry stays behind (skipped when it comes up, pruned when they outnumber the parked).
        self._deadlines: list[tuple[float, int, Parked]] = []
        self._timer: Any = None
        self._timer_at = 0.0
        self._timer_loop: Any = None

    def __len__(self) -> int:
        return self._count

    async def wait(self, keys: Iterable[Hashable], conn: Any, timeout_s: float) -> bool:
        """Park until one of ``keys`` is notified (True) or ``timeout_s`` passes (False)."""
        if timeout_s <= 0:
            return False
        if conn is not None and getattr(conn, "closed", False):
            return False
        if self._count >= self._limit:
            raise Refusal(Reason.TOO_MANY_WAITERS, "too many blocked requests; retry later")
        loop = loop_of(conn)
        fut = loop.create_future()
        keys = list(keys)
        wid = self._add(keys, fut)
        # A timer, not asyncio.wait_for(shield(fut)): that costs three more futures, two callbacks
        # and a running-loop lookup (a getpid() system call) per park. A wake-up sets True, the
        # timer False; whichever comes first is the answer. A cancelled task cancels ``fut``, unless
        # it was woken first (then the wake-up is passed on below).
        timer = loop.call_later(timeout_s, _lapse, fut)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None and fut.result():
                self._pass_on(keys, wid)  # woken, then cancelled: the wake-up is someone else's now
            raise
        finally:
            timer.cancel()
            self._remove(keys, wid)

    def _time_out_at(self, parked: Parked) -> None:
        """End ``parked``'s wait (``set_result(False)``) at its deadline, unless woken before."""
        heap, at = self._deadlines, parked._deadline
        if len(heap) > 2 * self._count + 256:
            heap[:] = [e for e in heap if _waits(e)]
            heapq.heapify(heap)
        heapq.heappush(heap, (at, parked._wid, parked))
        loop = parked._loop
        if self._timer is None or at < self._timer_at or loop is not self._timer_loop:
            if self._timer is not None:
                self._timer.cancel()
            self._timer, self._timer_at, self._timer_loop = loop.call_at(at, self._expire), at, loop

    def _expire(self) -> None:
        """The timer: end every wait whose deadline has come, then arm for the next one."""
        self._timer = None
        heap, loop = self._deadlines, self._timer_loop
        now = loop.time()
        while heap:
            at, _, parked = heap[0]
            if not _waits(heap[0]):
                heapq.heappop(heap)  # woken (or parked again, with an entry of its own) since
            elif at <= now:
                heapq.heappop(heap)
                parked.set_result(False)
            else:
                self._timer, self._timer_at = loop.call_at(at, self._expire), at
                return

    def _add(self, keys: list, waiter: Any) -> int:
        """File ``waiter`` (a future or a :class:`Parked`) under each of ``keys``; its id."""
        self._ids += 1
        wid = self._ids
        by_key = self._by_key
        for k in keys:
            d = by_key.get(k)
            if d is None:
                d = by_key[k] = {}
            d[wid] = waiter
        self._count += 1
        return wid

    def _remove(self, keys: list, wid: int) -> None:
        self._count -= 1
        by_key = self._by_key
        for k in keys:
            d = by_key.get(k)
            if d is not None:
                d.pop(wid, None)
                if not d:
                    del by_key[k]

    def park(self, keys: Iterable[Hashable], conn: Any, timeout_s: float, step: Any) -> Parked:
        """Park a request until one of ``keys`` is notified or ``timeout_s`` passes, without a task:
        ``step`` makes its answer (:class:`Parked`). The handler returns what this returns.

        Example (a handler):
            >>> def step(final):                               # doctest: +SKIP
            ...     run = store.run(ns, run_id)
            ...     return answer(run) if run.finished or final else None
            >>> return srv.waiters.park([("ar", ns, run_id)], req.conn, 30.0, step)  # doctest: +SKIP
        """
        if self._count >= self._limit:
            raise Refusal(Reason.TOO_MANY_WAITERS, "too many blocked requests; retry later")
        return Parked(self, list(keys), conn, timeout_s, step)

    def notify(self, key: Hashable, n: int = 1) -> None:
        """Wake up to ``n`` waiters of ``key``, oldest first (n <= 0: all)."""
        d = self._by_key.get(key)
        if not d:
            return
        woken = 0
        for fut in list(d.values()):
            if not fut.done():
                fut.set_result(True)
                woken += 1
                if 0 < n <= woken:
                    break

    def _pass_on(self, keys: list, skip: int) -> None:
        """Hand one wake-up per key to the oldest other waiter not woken yet."""
        for k in keys:
            d = self._by_key.get(k)
            if not d:
                continue
            for wid, fut in d.items():
                if wid != skip and not fut.done():
                    fut.set_result(True)
                    break

    def fail_where(self, match: Any, error: Any) -> int:
        """End every parked request waiting on a key ``match(key)`` accepts with ``error(key)`` (a slot
        moved to another shard: the request must be asked again there); how many."""
        ended = 0
        for key in [k for k in self._by_key if match(k)]:
            for fut in list(self._by_key.get(key, {}).values()):
                if not fut.done():
                    fut.set_exception(error(key))
                    ended += 1
        return ended

    def has_waiters(self, key: Hashable) -> bool:
        return bool(self._by_key.get(key))

    async def poll(
        self,
        keys: Iterable[Hashable],
        conn: Any,
        timeout_ms: int,
        attempt: Any,
        next_due: Any = None,
    ) -> Any:
        """Retry ``attempt()`` until it returns non-None or ``timeout_ms`` passes.

        ``attempt`` is called after every wake-up (and at ``next_due()`` - an
        absolute time in loop seconds or None - for items that fall due by
        time, like delayed messages or lapsing leases). A waiter whose
        connection closed takes nothing and passes its wake-up on.

        ``attempt()`` is also called once before the first park: the caller's
        own check ran on an earlier loop turn, and a write since then woke
        nobody (this waiter was not parked yet).
        """
        loop = loop_of(conn)
        keys = list(keys)
        deadline = loop.time() + timeout_ms / 1000.0
        woken = False
        while True:
            if conn is not None and getattr(conn, "closed", False):
                if woken:
                    for k in keys:  # hand the wake-up to the next waiter
                        self.notify(k)
                return None
            try:
                res = attempt()
            except BaseException:
                if woken:  # refused (e.g. a draining worker): the wake-up is not ours to keep
                    for k in keys:
                        self.notify(k)
                raise
            if res is not None:
                return res
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            wait = remaining
            if next_due is not None:
                due = next_due()
                if due is not None:
                    wait = max(0.0, min(wait, due - loop.time()) + 0.001)
            woken = await self.wait(keys, conn, wait)

"""Parked blocking requests (long polls), woken by writes in arrival order.

A waiter is a future keyed by what it waits on (``("q", ns, name)``,
``("kv", ns, key)``, ...). A write calls :meth:`Waiters.notify`; the woken
coroutine then retries its own op, so nothing is ever handed to a waiter whose
connection closed: it checks ``conn.closed`` before it takes anything.

A wake-up is never lost: a handler checks synchronously, but its parking
coroutine only starts on a later loop turn, and a notify in between finds no
waiter - so :meth:`Waiters.poll` tries once more before it parks. A waiter that
was woken but cannot use the wake-up (its connection closed, its task was
cancelled, its attempt refused) hands it to the next waiter.

Example:
    >>> w = Waiters()                                   # doctest: +SKIP
    >>> woke = await w.wait([("q", "default", "tasks")], conn, timeout_s=1.0)
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from typing import Any, Hashable, Iterable

from flo_core.errors import Refusal
from flo_core.spec import MAX_WAITERS, Reason


def loop_of(holder: Any) -> asyncio.AbstractEventLoop:
    """``holder.loop`` (a connection's or the server's, looked up once), else the running loop: each
    ``asyncio.get_running_loop()`` costs a getpid() system call."""
    loop = getattr(holder, "loop", None)
    return loop if loop is not None else asyncio.get_running_loop()


def _lapse(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(False)


class Waiters:
    def __init__(self, limit: int = MAX_WAITERS) -> None:
        self._by_key: dict[Hashable, OrderedDict[int, asyncio.Future]] = {}
        self._count = 0
        self._limit = limit
        self._ids = 0

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
        self._ids += 1
        wid = self._ids
        keys = list(keys)
        for k in keys:
            self._by_key.setdefault(k, OrderedDict())[wid] = fut
        self._count += 1
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
            self._count -= 1
            for k in keys:
                d = self._by_key.get(k)
                if d is not None:
                    d.pop(wid, None)
                    if not d:
                        del self._by_key[k]

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

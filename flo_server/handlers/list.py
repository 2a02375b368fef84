"""Redis lists (LPUSH/RPUSH/LPOP/RPOP/LRANGE/BLPOP...): a deque per key, records ``l.*``.

Why not Flo queues: a Flo queue is a leased priority queue (a dequeue leases a
message that comes back unless it is completed), while a Redis list is a plain
double-ended sequence where a pop removes the element for good and LRANGE reads
by index. Mapping one onto the other would break either Redis's semantics or the
queue's, so lists are their own small store, reachable over RESP only. Like every
other store it changes only through the journal (``srv.write("l.push", ...)``),
so lists survive restarts and replay identically.

Example:
    >>> s = ListStore()
    >>> s.push("default", b"jobs", [b"a", b"b"], left=False)
    2
    >>> s.pop("default", b"jobs", 1, left=True)
    [b'a']
"""

from __future__ import annotations

from collections import deque
from typing import Any

from flo_server.journal import applier

__all__ = ["ListStore", "lists_of", "MAX_LIST_LEN"]

#: Most elements one list may hold (bounds the memory a client can pin).
MAX_LIST_LEN = 50_000_000


class ListStore:
    """Every namespace's lists: ``{ns: {key: deque[bytes]}}``; empty lists do not exist (Redis)."""

    def __init__(self) -> None:
        self.spaces: dict[str, dict[bytes, deque]] = {}

    def get(self, ns: str, key: bytes) -> deque | None:
        sp = self.spaces.get(ns)
        return sp.get(key) if sp is not None else None

    def length(self, ns: str, key: bytes) -> int:
        d = self.get(ns, key)
        return len(d) if d is not None else 0

    def push(self, ns: str, key: bytes, values: list[bytes], left: bool) -> int:
        sp = self.spaces.setdefault(ns, {})
        d = sp.get(key)
        if d is None:
            d = sp[key] = deque()
        if left:
            d.extendleft(values)  # LPUSH a b c -> c b a, as in Redis
        else:
            d.extend(values)
        return len(d)

    def pop(self, ns: str, key: bytes, count: int, left: bool) -> list[bytes]:
        sp = self.spaces.get(ns)
        d = sp.get(key) if sp is not None else None
        if d is None:
            return []
        take = d.popleft if left else d.pop
        out = [take() for _ in range(min(count, len(d)))]
        if not d:
            del sp[key]  # type: ignore[union-attr]
        return out

    def range(self, ns: str, key: bytes, start: int, stop: int) -> list[bytes]:
        """LRANGE semantics: inclusive ``stop``, negative indexes count from the end."""
        d = self.get(ns, key)
        if d is None:
            return []
        n = len(d)
        if start < 0:
            start = max(n + start, 0)
        if stop < 0:
            stop = n + stop
        stop = min(stop, n - 1)
        if start > stop or start >= n:
            return []
        if start == 0 and stop == n - 1:
            return list(d)
        if start > n // 2:
            d.rotate(-start)  # O(k) slice from the middle without copying the whole deque
            try:
                return [d[i] for i in range(stop - start + 1)]
            finally:
                d.rotate(start)
        return [d[i] for i in range(start, stop + 1)]

    def delete(self, ns: str, key: bytes) -> bool:
        sp = self.spaces.get(ns)
        return sp is not None and sp.pop(key, None) is not None

    def keys(self, ns: str) -> list[bytes]:
        sp = self.spaces.get(ns)
        return sorted(sp) if sp else []

    def count(self, ns: str) -> int:
        sp = self.spaces.get(ns)
        return len(sp) if sp else 0

    def flush(self, ns: str) -> None:
        self.spaces.pop(ns, None)

    def dump(self) -> dict:
        return {ns: [[k, list(d)] for k, d in sp.items()] for ns, sp in self.spaces.items()}

    def load(self, state: dict) -> None:
        self.spaces = {ns: {k: deque(v) for k, v in rows} for ns, rows in state.items()}


def lists_of(srv: Any) -> ListStore:
    """The server's list store (attached on first use when the server did not create one)."""
    store = getattr(srv, "lists", None)
    if store is None:
        store = srv.lists = ListStore()
        stores = getattr(srv, "stores", None)
        if stores is not None:
            stores["lists"] = store
    return store


# --- appliers: the only code that changes lists -----------------------------------------


@applier("l.push")
def apply_push(srv: Any, lsn: int, ns: str, key: bytes, values: list, left: bool) -> int:
    n = lists_of(srv).push(ns, key, values, left)
    srv.waiters.notify(("l", ns, key), len(values))
    return n


@applier("l.pop")
def apply_pop(srv: Any, lsn: int, ns: str, key: bytes, count: int, left: bool) -> list:
    return lists_of(srv).pop(ns, key, count, left)


@applier("l.del")
def apply_del(srv: Any, lsn: int, ns: str, keys: list) -> int:
    store = lists_of(srv)
    return sum(1 for k in keys if store.delete(ns, k))


@applier("l.flush")
def apply_flush(srv: Any, lsn: int, ns: str) -> None:
    lists_of(srv).flush(ns)

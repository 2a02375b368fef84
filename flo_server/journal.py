"""The write path: every state change is a record, applied by one function live and at replay.

A handler validates, then calls ``srv.write(kind, *args)``: the journal gives
the record the next LSN and keeps it (in memory only here; on disk with
:class:`flo_server.persistence.DiskJournal`), then the applier registered for
``kind`` changes the stores and its return value goes back to the handler.
Replay after a restart calls the same appliers with the same arguments.

Example:
    >>> @applier("demo.set")                      # doctest: +SKIP
    ... def _apply_demo(srv, lsn, ns, key, value):
    ...     srv.kv.set(ns, key, value, lsn, 0, 0)
"""

from __future__ import annotations

from typing import Any, Callable

Applier = Callable[..., Any]

#: kind -> applier(srv, lsn, *args)
APPLIERS: dict[str, Applier] = {}


def applier(kind: str) -> Callable[[Applier], Applier]:
    """Register the function that applies records of ``kind`` (one per kind)."""

    def deco(fn: Applier) -> Applier:
        if kind in APPLIERS and APPLIERS[kind] is not fn:
            raise RuntimeError(f"two appliers for record kind {kind!r}")
        APPLIERS[kind] = fn
        return fn

    return deco


class MemoryJournal:
    """No persistence: LSNs only. Used with ``--fsync none`` / ``--no-persist``."""

    durable = False

    def __init__(self, last_lsn: int = 0) -> None:
        self.last_lsn = last_lsn

    def append(self, kind: str, args: tuple) -> int:
        self.last_lsn += 1
        return self.last_lsn

    def raw_writer(self) -> None:
        """No log file: the C fast path calls :meth:`append` instead."""
        return None

    def close(self) -> None:
        pass

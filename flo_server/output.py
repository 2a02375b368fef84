"""A connection's answers on their way out, in order, never before the journal allows.

Under ``fsync=always`` (and until the loop's one ``write()`` of the log under the
other policies) answers of writes wait for the journal; answers produced later on
the same connection queue behind them, so a connection's answers keep their order.
Both protocols (Flo wire v2 and RESP) send through this one class.

Example:
    >>> out = Output(srv, transport)             # doctest: +SKIP
    >>> out.send(bytearray(b"..."))              # written now, or once the fsync covers it
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable


class Output:
    def __init__(self, srv: Any, transport: Any, on_drained: Callable[[], None] | None = None) -> None:
        self.srv = srv
        self.transport = transport
        self.closed = False
        self._held: deque = deque()  # [chunk, ready]
        self._on_drained = on_drained

    @property
    def holding(self) -> bool:
        """Some answers still wait for the journal."""
        return bool(self._held)

    def send(self, data: bytes | bytearray) -> None:
        """Queue ``data`` (the caller hands it over and must not change it afterwards)."""
        if not data:
            return
        journal = self.srv.journal
        if not journal.pending_sync and not self._held:
            self.transport.write(data)
            return
        entry = [data, not journal.pending_sync]
        self._held.append(entry)
        if entry[1]:
            self._drain()
        else:
            def ready(entry: list = entry) -> None:
                entry[1] = True
                self._drain()

            journal.call_after_sync(ready)

    def _drain(self) -> None:
        held = self._held
        while held and held[0][1]:
            chunk = held.popleft()[0]
            if not self.closed:
                self.transport.write(chunk)
        if not held and self._on_drained is not None:
            self._on_drained()

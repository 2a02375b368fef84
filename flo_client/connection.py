"""A pipelined Flo wire v2 connection: many requests in flight, answers matched by request id.

Requests written in the same loop iteration leave in one ``transport.write``.
A lost connection fails every outstanding request with
:class:`~flo_core.errors.ConnectionClosedError`.

Example:
    >>> conn = await Connection.open("127.0.0.1", 9000, timeout=5.0)   # doctest: +SKIP
    >>> status, data = await conn.request(Op.PING, payload)              # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
from typing import Any

from flo_core import wire
from flo_core.errors import (
    ConnectionClosedError,
    ProtocolError,
    RequestTimeoutError,
    error_from_refusal,
    parse_refusal_body,
)

SWEEP_S = 0.1  # how often a connection checks its requests' deadlines


class Connection(asyncio.Protocol):
    """One TCP connection to a flo-server."""

    def __init__(self) -> None:
        self.transport: Any = None
        self._reader = wire.FrameReader(is_request=False, max_payload=1 << 31)
        self._pending: dict[int, asyncio.Future] = {}
        self._deadlines: dict[int, float] = {}  # request id -> loop time it times out at
        self._sweeper: asyncio.TimerHandle | None = None
        self._next_id = 0
        self._wbuf = bytearray()
        self._flush_scheduled = False
        self._loop = asyncio.get_event_loop()
        self._closed_exc: Exception | None = None
        self._can_write = asyncio.Event()
        self._can_write.set()

    @classmethod
    async def open(cls, host: str, port: int, timeout: float, *, ssl: Any = None,
                   auth: tuple[str, str] | None = None) -> "Connection":
        """Connect (over TLS with an ``ssl`` context), then AUTH as ``auth = (user, password)``."""
        loop = asyncio.get_running_loop()
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(cls, host, port, ssl=ssl, server_hostname=host if ssl else None), timeout)
        except (OSError, asyncio.TimeoutError) as e:
            raise ConnectionClosedError(f"cannot connect to {host}:{port}: {e or type(e).__name__}") from e
        if auth is not None:
            await conn.authenticate(auth[0], auth[1], timeout)
        return conn

    async def authenticate(self, user: str, password: str, timeout: float) -> None:
        """Send AUTH; a refusal closes this connection and raises (UnauthorizedError)."""
        from flo_core.body import Writer
        from flo_core.spec import Op

        nb, pw = user.encode("utf-8"), password.encode("utf-8")
        payload = b"\x00\x00" + len(nb).to_bytes(2, "little") + nb + Writer().bytes32(pw).options({}).getvalue()
        status, data = await self.request(Op.AUTH, payload, timeout)
        if status != 0:
            reason, ran, msg = parse_refusal_body(data)
            self.close()
            raise error_from_refusal(status, reason, ran, msg)

    @property
    def closed(self) -> bool:
        return self._closed_exc is not None or self.transport is None

    # --- asyncio.Protocol -------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self._loop = asyncio.get_running_loop()

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed_exc = ConnectionClosedError(f"connection lost: {exc}" if exc else "connection closed")
        self._fail_all(self._closed_exc)
        self._can_write.set()

    def pause_writing(self) -> None:
        self._can_write.clear()

    def resume_writing(self) -> None:
        self._can_write.set()

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._reader.feed(data)
        except wire.FrameError as e:
            self._abort(ProtocolError(f"bad answer frame: {e.message}"))
            return
        pending = self._pending
        deadlines = self._deadlines
        for rid, status, body in frames:
            fut = pending.pop(rid, None)
            deadlines.pop(rid, None)
            if fut is None:
                if rid == 0:
                    # The server could not parse something we sent: it closes the connection.
                    reason, ran, msg = parse_refusal_body(body)
                    self._abort(error_from_refusal(status, reason, ran, msg))
                continue  # an answer nobody waits for any more (timed out)
            if not fut.done():
                fut.set_result((status, body))

    # --- requests ------------------------------------------------------------------------

    def request(self, op: int, payload: bytes, timeout: float = 0.0) -> asyncio.Future:
        """Queue one request; the future resolves to ``(status, data)``.

        With ``timeout`` (seconds) it fails with RequestTimeoutError when no answer came
        in time (checked by one sweep every 100 ms, not a timer per request).
        """
        if self._closed_exc is not None or self.transport is None:
            raise self._closed_exc or ConnectionClosedError("not connected")
        self._next_id += 1
        rid = self._next_id
        fut = self._loop.create_future()
        self._pending[rid] = fut
        fut.rid = rid  # type: ignore[attr-defined]
        if timeout:
            self._deadlines[rid] = self._loop.time() + timeout
            if self._sweeper is None:
                self._sweeper = self._loop.call_later(SWEEP_S, self._sweep)
        self._wbuf += wire.encode_request(rid, op, payload)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)
        return fut

    def forget(self, fut: asyncio.Future) -> None:
        """Stop waiting for an answer (cancelled); a late answer is dropped."""
        rid = getattr(fut, "rid", -1)
        self._pending.pop(rid, None)
        self._deadlines.pop(rid, None)

    def _sweep(self) -> None:
        self._sweeper = None
        now = self._loop.time()
        expired = [rid for rid, at in self._deadlines.items() if at <= now]
        for rid in expired:
            del self._deadlines[rid]
            fut = self._pending.pop(rid, None)
            if fut is not None and not fut.done():
                fut.set_exception(RequestTimeoutError("no answer from the server in time"))
        if self._deadlines and self._closed_exc is None:
            self._sweeper = self._loop.call_later(SWEEP_S, self._sweep)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._wbuf and self.transport is not None and not self.transport.is_closing():
            self.transport.write(self._wbuf)
        self._wbuf = bytearray()

    async def drain(self) -> None:
        """Wait while the kernel buffer is full (back-pressure for bulk senders)."""
        await self._can_write.wait()

    def _fail_all(self, exc: Exception) -> None:
        pending, self._pending = self._pending, {}
        self._deadlines.clear()
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(exc)

    def _abort(self, exc: Exception) -> None:
        self._closed_exc = exc
        self._fail_all(exc)
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self._flush()
            self.transport.close()
        if self._closed_exc is None:
            self._closed_exc = ConnectionClosedError("connection closed")
        self._fail_all(self._closed_exc)


"""The connection edge: one ``feed()`` per read, one ``transport.write`` per read cycle.

The first bytes of a connection pick the protocol: ``FLO\\0`` is Flo wire v2,
anything else is RESP (handed to :class:`flo_server.resp.RespSession`). A Flo
connection's reads then go straight to its compiled request loop (``_read_in_c``),
so uvloop calls C for every read; this class keeps the connection's lifetime,
blocking requests and back-pressure.

Answers of a batch that wrote are held until the journal's fsync covers them
when the server runs with ``fsync=always`` (group commit); a connection's
answers always leave in the order they were produced. A client that does not
read its answers is back-pressured: reading pauses at the transport's high-water
mark and resumes when it drains.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from typing import Any

from flo_core import wire
from flo_core.errors import refusal_body
from flo_core.spec import MAGIC_BYTES, Ran, Status
from flo_server.dispatch import dispatch
from flo_core.output import Output  # type: ignore[import-not-found]

log = logging.getLogger("flo_server.protocol")

_append_reply = wire.append_reply
_ids = itertools.count(1)  # connection ids (CLIENT ID / LIST / KILL), both protocols


class FloProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, srv: Any) -> None:
        self.srv = srv
        self.transport: Any = None
        self.closed = False
        self.parked: set = set()  # futures of this connection's parked requests
        self.tasks: set = set()  # coroutines of blocking requests
        self.out = bytearray()
        self.output: Any = None
        self.reader: Any = None
        self.resp: Any = None
        self._sniff = b""
        self._paused = False
        self.core = False
        # Who this connection is (flo_server.auth): None until AUTH when the server requires it.
        # ``trusted`` (every right on everything) lets requests skip the permission check and
        # run on the C fast paths.
        self.user = srv.users.default
        self.trusted = self.user is not None and self.user.superuser
        self.auth_failures = 0
        self.created_ms = srv.now()
        self.id = next(_ids)

    def set_user(self, user: Any) -> None:
        """AUTH succeeded (or RESP RESET): the connection's rights are ``user``'s (None: none) from now on."""
        self.user = user
        self.trusted = user is not None and user.superuser
        if self.resp is not None:
            self.resp.set_user(user)
        elif self.core:
            self.reader.fast = self.trusted

    # --- asyncio.Protocol ---------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        srv = self.srv
        srv.connections_received += 1
        if len(srv.connections) >= srv.config.max_connections:
            srv.connections_rejected += 1
            log.warning("refusing a connection: %d open", len(srv.connections))
            self.closed = True
            transport.close()
            return
        srv.connections.add(self)
        transport.set_write_buffer_limits(high=srv.config.high_water)
        self.output = Output(srv, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.output is not None:
            self.output.closed = True
        self.srv.connections.discard(self)
        for t in list(self.tasks):
            t.cancel()
        if self.resp is not None:
            self.resp.connection_lost()

    def pause_writing(self) -> None:
        # The peer is not reading its answers: stop reading its requests.
        self._paused = True
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self._paused = False
        if not self.closed:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        # (the compiled loops count their own reads: flo_core.metrics)
        if self.reader is not None:
            self._count_in(data)
            self._flo(data)
        elif self.resp is not None:
            self._count_in(data)
            self.resp.feed(data)
        else:
            self._choose(data)

    def _count_in(self, data: bytes) -> None:
        if self.srv.metrics is not None:
            self.srv.metrics.bytes_in += len(data)

    # --- protocol choice --------------------------------------------------------------

    def _choose(self, data: bytes) -> None:
        head = self._sniff + data
        n = min(len(head), 4)
        if head[:n] == MAGIC_BYTES[:n]:
            if n < 4:
                self._sniff = head  # wait for all four bytes
                return
            self._sniff = b""
            self.reader = make_reader(self)
            if self.core:
                self.reader.proto = self
                self.reader.output = self.output
                self._read_in_c(self.reader)
                self.reader.data_received(head)
            else:
                self._count_in(head)
                self._flo(head)
            return
        from flo_server.resp import RespSession

        self._sniff = b""
        self.resp = RespSession(self.srv, self.transport, self)
        core = self.resp._core
        if core is not None:
            core.output = self.resp._output
            self._read_in_c(core)
            core.data_received(head)
        else:
            self._count_in(head)
            self.resp.feed(head)

    def _read_in_c(self, core: Any) -> None:
        """From now on the transport hands each read to ``core.data_received`` (C) directly.

        uvloop keeps ``protocol.data_received`` from ``set_protocol``: shadowing it on this
        instance and setting the protocol again routes reads to the compiled loop, while
        this object keeps every other callback (lifetime, back-pressure).
        """
        self.data_received = core.data_received  # type: ignore[method-assign]
        self.transport.set_protocol(self)

    # --- Flo wire v2 ------------------------------------------------------------------

    def _flo(self, data: bytes) -> None:
        """The Python request loop (no compiled core, or ``FLO_NO_FASTPATH``)."""
        now = self.srv.now()
        try:
            for rid, op, payload in self.reader.feed(data):
                r = dispatch(self.srv, rid, op, payload, self, now)
                if type(r) is tuple:
                    _append_reply(self.out, rid, r[0], r[1])
                else:
                    self._start(rid, r)
        except wire.FrameError as e:
            for rid, op, payload in e.frames:
                r = dispatch(self.srv, rid, op, payload, self, now)
                if type(r) is tuple:
                    _append_reply(self.out, rid, r[0], r[1])
            self._broken(e)
            return
        if self.out:
            self._flush()

    def _broken(self, e: Any) -> None:
        """The stream cannot be resynchronised: answer what came before, then a refusal with id 0, then close."""
        if self.core:
            self.out += self.reader.out
            self.reader.out = bytearray()
        _append_reply(self.out, 0, Status.BAD_REQUEST, refusal_body(e.reason, Ran.NO, e.message))
        self._flush()
        self.closed = True
        self.transport.close()

    def _slow(self, rid: int, op: int, payload: bytes) -> Any:
        """Every request the C fast path does not finish: the Python dispatcher."""
        return dispatch(self.srv, rid, op, payload, self, self.reader.now)

    def _start(self, rid: int, coro: Any) -> None:
        task = asyncio.ensure_future(self._later(rid, coro))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _later(self, rid: int, coro: Any) -> None:
        try:
            status, data = await coro
        except asyncio.CancelledError:
            return  # the connection went away
        if self.closed:
            return
        _append_reply(self.out, rid, status, data)
        self._flush()

    # --- output -------------------------------------------------------------------------

    def _flush(self) -> None:
        """Send ``self.out``, or hold it until the pending fsync when the server promised one."""
        self.output.send(self.out)
        self.out = bytearray()


def make_reader(proto: FloProtocol) -> Any:
    """The compiled request loop (C fast path for plain GET/PUT) or, without it, the plain frame reader."""
    cfg = proto.srv.config
    if wire.COMPILED and not os.environ.get("FLO_NO_FASTPATH"):
        from flo_core.core import ServerCore  # type: ignore[import-not-found]

        proto.core = True
        return ServerCore(proto.srv, proto._slow, cfg.max_frame, proto.trusted)
    return wire.FrameReader(is_request=True, max_payload=cfg.max_frame)

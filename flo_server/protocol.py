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
mark and resumes when it drains; once the answers it has not read (the
transport's buffer plus what the Output holds for an fsync) pass
``client_output_limit`` it is dropped. That is checked where the buffer can grow
past the high-water mark, not per request: in ``pause_writing``, when a blocking
request answers a paused connection, when the Output holds answers, and in the
compiled loops as one size compare per request (a single read of pipelined GETs
of big values must not build gigabytes before anything is written).

Past ``max_connections`` a connection gets one refusal it can understand: the
edge waits (at most ``REFUSE_WAIT_S``) for its first bytes, then answers a Flo
refusal frame (request id 0, OVERLOADED / SHARD_BUSY) to ``FLO\\0`` and Redis's
``-ERR max number of clients reached`` to anything else, and closes.
See docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from typing import Any

from flo_core import wire
from flo_core.errors import refusal_body
from flo_core.spec import MAGIC_BYTES, Ran, Reason, Status
from flo_server.dispatch import discard, dispatch
from flo_server.waiters import Parked
from flo_core.output import Output  # type: ignore[import-not-found]

log = logging.getLogger("flo_server.protocol")

_append_reply = wire.append_reply
_ids = itertools.count(1)  # connection ids (CLIENT ID / LIST / KILL), both protocols

REFUSE_WAIT_S = 1.0  # a connection over max_connections has this long to show its protocol
MAX_REFUSING = 1024  # refusals waiting for first bytes at once; past it, further ones are closed at once
RESP_REFUSAL = b"-ERR max number of clients reached\r\n"  # Redis's wording
FLO_REFUSAL = wire.encode_reply(0, Status.OVERLOADED, refusal_body(
    Reason.SHARD_BUSY, Ran.NO, "max number of clients reached"))
_refusing = 0  # refusals now waiting for first bytes (all servers of this process)
TRIM_FROM = 1000  # after this many connections were open, half of them closing gives memory back
TRIM_QUIET_S = 1.0  # ... once no connection has closed for this long
TRIM_WAIT_MAX_S = 10.0  # ... or this long after the first of them, if closes go on


class FloProtocol(asyncio.Protocol):
    """One client connection."""

    def __init__(self, srv: Any) -> None:
        self.srv = srv
        self.transport: Any = None
        self.loop: Any = None  # the running loop, looked up once (connection_made)
        self.closed = False
        self.tasks: set = set()  # blocking requests: their tasks, and Parked ones (cancelled on close)
        self.out = bytearray()
        self.output: Any = None
        self.reader: Any = None
        self.resp: Any = None
        self._sniff = b""
        self._paused = False
        self._refusal: Any = None  # the timer of a connection being refused (over max_connections)
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
        try:
            self.loop = asyncio.get_running_loop()
        except RuntimeError:  # an edge driven without a loop (tests): _start looks it up then
            self.loop = None
        srv = self.srv
        srv.connections_received += 1
        if len(srv.connections) >= srv.config.max_connections:
            srv.connections_rejected += 1
            log.warning("refusing a connection from %s: %d open (--max-connections)", _peer(transport),
                        len(srv.connections))
            self.closed = True
            self._refuse_later()
            return
        srv.connections.add(self)
        _open_peak.note(srv)
        transport.set_write_buffer_limits(high=srv.config.high_water)
        self.output = Output(srv, transport)
        if srv.config.client_output_limit:
            self.output.limit = srv.config.client_output_limit
            self.output.on_full = self._output_full

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refusal is not None:
            self._refused()
        self.closed = True
        if self.output is not None:
            self.output.closed = True
        self.srv.connections.discard(self)
        _open_peak.closed(self.srv)
        for t in list(self.tasks):
            t.cancel()
        if self.resp is not None:
            self.resp.connection_lost()
        self._unlink()

    def _unlink(self) -> None:
        """Break the references this connection's objects hold to each other (the edge, its request
        loop, the Output's callback) so a closed connection is freed at once, not by a full pass of
        the cyclic collector."""
        self.__dict__.pop("data_received", None)  # the compiled loop's bound method (_read_in_c)
        if self.output is not None:
            self.output.on_full = None
        if self.core:
            self.reader.proto = self.reader.slow = None

    def pause_writing(self) -> None:
        # The peer is not reading its answers: stop reading its requests (and drop it past its limit).
        self._paused = True
        self.transport.pause_reading()
        self._check_output()

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
        if self._refusal is not None:
            self._sniff = head
            if head[:n] != MAGIC_BYTES[:n] or n == 4:
                self._refuse()
            return
        if head[:n] == MAGIC_BYTES[:n]:
            if n < 4:
                self._sniff = head  # wait for all four bytes
                return
            self._sniff = b""
            self.reader = make_reader(self)
            if self.core:
                self.reader.proto = self
                self.reader.output = self.output
                self.reader.out_cap = self.srv.config.client_output_limit
                self._read_in_c(self.reader)
                self.reader.data_received(head)
            else:
                self._count_in(head)
                self._flo(head)
            return
        from flo_server.resp import RespSession

        self._sniff = b""
        self.resp = RespSession(self.srv, self.transport, self)
        limit = self.srv.config.client_output_limit
        if limit:
            self.resp.out_cap = self.resp._output.limit = limit
            self.resp._output.on_full = self._output_full
        core = self.resp._core
        if core is not None:
            core.out_cap = limit
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
        cap = self.srv.config.client_output_limit
        try:
            for rid, op, payload in self.reader.feed(data):
                if cap and len(self.out) > cap:
                    n, self.out = len(self.out), bytearray()
                    self._output_full(n)
                    return
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
                else:
                    discard(r)  # a blocking request: the connection closes now, it never runs
            self._broken(e)
            return
        if self.out:
            self._flush()

    def _broken(self, e: Any) -> None:
        """The stream cannot be resynchronised: answer what came before, then a refusal with id 0, then close."""
        if self.core:
            self.out += self.reader.out
            self.reader.out = bytearray()
            for _, coro in self.reader.deferred:  # blocking requests before the bad frame never run
                discard(coro)
            self.reader.deferred = []
        _append_reply(self.out, 0, Status.BAD_REQUEST, refusal_body(e.reason, Ran.NO, e.message))
        self._flush()
        self.closed = True
        self.transport.close()

    def _slow(self, rid: int, op: int, payload: bytes) -> Any:
        """Every request the C fast path does not finish: the Python dispatcher."""
        return dispatch(self.srv, rid, op, payload, self, self.reader.now)

    def _start(self, rid: int, coro: Any) -> None:
        if type(coro) is Parked:
            coro.start(self, rid)
            return
        # The loop's create_task, not asyncio.ensure_future: that looks the loop up, and the lookup
        # is a getpid() system call per blocking request (CPython 3.11's running-loop check).
        task = (self.loop or asyncio.get_event_loop()).create_task(self._later(rid, coro))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _later(self, rid: int, coro: Any) -> None:
        try:
            status, data = await coro
        except asyncio.CancelledError:
            return  # the connection went away
        self.answer(rid, status, data)

    def answer(self, rid: int, status: int, data: bytes) -> None:
        """Send the answer of a request that waited (a task's, or a :class:`Parked` one's)."""
        if self.closed:
            return
        _append_reply(self.out, rid, status, data)
        self._flush()
        if self._paused:
            self._check_output()  # an answer to a client that does not read

    # --- limits -------------------------------------------------------------------------

    def _check_output(self) -> None:
        """Drop the client if the answers it has not read pass its output limit (not per request:
        when the transport's buffer passes the high-water mark, and on answers while paused)."""
        limit = self.srv.config.client_output_limit
        if not limit or self.closed:
            return
        out = self.resp._output if self.resp is not None else self.output
        size = self.transport.get_write_buffer_size() + out.held_bytes
        if size > limit:
            self._output_full(size)

    def _output_full(self, size: int, deferred: Any = ()) -> None:
        """The client's unread answers passed ``client_output_limit``: count it, say so once, drop it.

        ``size`` is what was pending (buffered, held, or one read's answers); ``deferred`` the
        blocking requests of that read, not started. The connection is aborted: its buffered answers
        are discarded, not flushed to a peer that does not read them.
        """
        for _, coro in deferred:
            coro.close()
        if self.closed:
            return
        srv = self.srv
        srv.clients_dropped_output_limit += 1
        log.warning("closing connection %d from %s: %d bytes of answers not read pass the client output limit "
                    "of %d bytes (--client-output-limit)", self.id, _peer(self.transport), size,
                    srv.config.client_output_limit)
        self.closed = True
        for out in (self.output, self.resp._output if self.resp is not None else None):
            if out is not None:
                out.closed = True
        if self.resp is not None:
            self.resp.closed = True
        self.transport.abort()

    def _refuse_later(self) -> None:
        """Over max_connections: wait (bounded) for the first bytes, to refuse in the client's protocol."""
        global _refusing
        if _refusing >= MAX_REFUSING:
            self.transport.abort()  # a flood of connections: no time to be polite to each
            return
        _refusing += 1
        self._refusal = asyncio.get_running_loop().call_later(REFUSE_WAIT_S, self._refuse)

    def _refused(self) -> None:
        global _refusing
        self._refusal.cancel()
        self._refusal = None
        _refusing -= 1

    def _refuse(self) -> None:
        """Answer the refusal (Flo frame after ``FLO\\0`` or part of it, else RESP's -ERR) and close."""
        if self._refusal is None:
            return
        self._refused()
        flo = bool(self._sniff) and MAGIC_BYTES.startswith(self._sniff[:4])
        self._sniff = b""
        self.transport.write(FLO_REFUSAL if flo else RESP_REFUSAL)
        self.transport.close()

    # --- output -------------------------------------------------------------------------

    def _flush(self) -> None:
        """Send ``self.out``, or hold it until the pending fsync when the server promised one."""
        self.output.send(self.out)
        self.out = bytearray()


class _OpenPeak:
    """Gives the memory of many closed connections back to the system.

    A closed connection's objects are freed as it closes (``_unlink`` breaks their cycles), but
    the C allocator keeps the holes they leave in its heap: RSS would stay near the peak. Once the
    open connections fall to half of a peak of at least TRIM_FROM, one ``malloc_trim(0)`` (glibc; a
    few ms, once) returns those pages a second after the closes stop (at most TRIM_WAIT_MAX_S after
    the first): a mass close that a busy server takes seconds to see through is trimmed once, at its
    end, not half-way. Per connection this is one comparison when it opens and one when it closes.
    """

    def __init__(self) -> None:
        self.peak: dict[int, int] = {}  # id(server) -> most connections open since the last trim
        self.pending = False
        self._trim: Any = None
        self._loop: Any = None
        self._srv: Any = None  # the server whose connections closed
        self._armed_at = 0.0  # loop time the trim was armed
        self._last_close = 0.0  # loop time of the latest close while it is armed

    def note(self, srv: Any) -> None:
        n = len(srv.connections)
        if n > self.peak.get(id(srv), 0):
            self.peak[id(srv)] = n

    def closed(self, srv: Any) -> None:
        if self.pending:
            self._last_close = self._loop.time()
            return
        peak = self.peak.get(id(srv), 0)
        if peak >= TRIM_FROM and len(srv.connections) <= peak // 2:
            self.peak[id(srv)] = len(srv.connections)
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a server being torn down)
                return
            self.pending, self._srv = True, srv
            self._armed_at = self._last_close = self._loop.time()
            self._loop.call_later(TRIM_QUIET_S, self.trim)

    def trim(self) -> None:
        now = self._loop.time()
        quiet_at = self._last_close + TRIM_QUIET_S
        if now < quiet_at and now < self._armed_at + TRIM_WAIT_MAX_S:
            self._loop.call_later(min(quiet_at, self._armed_at + TRIM_WAIT_MAX_S) - now, self.trim)
            return  # connections are still closing: trim once they stop
        self.pending = False
        self.peak[id(self._srv)] = len(self._srv.connections)  # the next halving counts from here
        t0 = time.perf_counter()
        if self._trim is None:
            self._trim = False
            try:
                import ctypes

                self._trim = ctypes.CDLL(None).malloc_trim
            except (OSError, AttributeError):  # not glibc
                pass
        if self._trim:
            self._trim(0)
        log.info("many connections closed: memory given back in %.1f ms", (time.perf_counter() - t0) * 1e3)


_open_peak = _OpenPeak()


def _peer(transport: Any) -> str:
    peer = transport.get_extra_info("peername") if transport is not None else None
    return f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer or "?")


def make_reader(proto: FloProtocol) -> Any:
    """The compiled request loop (C fast path for plain GET/PUT) or, without it, the plain frame reader."""
    cfg = proto.srv.config
    if wire.COMPILED and not os.environ.get("FLO_NO_FASTPATH"):
        from flo_core.core import ServerCore  # type: ignore[import-not-found]

        proto.core = True
        core = ServerCore(proto.srv, proto._slow, cfg.max_frame, proto.trusted)
        if proto.srv.cluster is not None:
            core.served = proto.srv.cluster.served  # the fast paths take only the slots this member serves
        return core
    return wire.FrameReader(is_request=True, max_payload=cfg.max_frame)

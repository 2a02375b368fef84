# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
"""A connection's answers on their way out, in order, never before the journal allows.

Under ``fsync=always`` answers of writes wait for the fsync that covers them;
under ``everysec``/``no`` they wait for the loop's one ``write()`` of the log
(so a kill -9 never loses an acknowledged write). Answers produced later on the
same connection queue behind held ones, so a connection's answers keep their
order. Both protocols (Flo wire v2 and RESP) and both paths (the C request
loop and the Python dispatcher) send through this one class.

How a held answer gets out: the Output lists itself once in the log writer's
``holders``; after each log write / fsync the journal calls :func:`release_held`,
which writes, for every listed Output, the chunks the log now covers and keeps
listed those that still hold some. All of it in C: at one request per read,
these are per-request costs.

Example:
    >>> out = Output(srv, transport)             # doctest: +SKIP
    >>> out.send(bytearray(b"..."))              # written now, or once the log covers it
"""

from libc.stdint cimport uint64_t

import logging

from flo_core.log cimport safe_lsn_of

log = logging.getLogger("flo.server")


cdef class Output:
    def __init__(self, srv, transport):
        journal = srv.journal
        self.transport = transport
        self._write = transport.write
        self.closed = False
        # The journal's writer when answers may have to wait for it (a disk journal).
        self._log = getattr(journal, "writer", None) if getattr(journal, "durable", False) else None
        self._held = []
        self._head = 0
        self._registered = False
        self.on_drained = None
        self._metrics = getattr(srv, "metrics", None)
        self._held_bytes = 0
        self.limit = 0
        self.on_full = None

    @property
    def holding(self):
        """Some answers still wait for the journal."""
        return self._head < len(self._held)

    @property
    def held_bytes(self):
        """Bytes of answers still waiting for the journal (not handed to the transport yet)."""
        return self._held_bytes

    def send(self, data):
        """Queue ``data`` (the caller hands it over and must not change it afterwards)."""
        self.send_c(data)

    cdef int send_c(self, object data) except -1:
        cdef uint64_t last, safe
        cdef list chunk
        if not data:
            return 0
        if self._metrics is not None:
            self._metrics.bytes_out += len(data)
        if self._log is None or self.unheld:
            if not self.closed:
                self._write(data)
            return 0
        last = self._log.last_lsn
        safe = safe_lsn_of(self._log)
        # While the log fails (not accepting) writes are refused, so an answer that finds nothing
        # of this connection held acknowledges no write: reads and refusals go out (persistence).
        if safe >= last or (not self._log.accepting and self._head >= len(self._held)):
            if self._head < len(self._held):
                self._drain(safe)  # everything held is covered too: keep the order
            if not self.closed:
                self._write(data)
            return 0
        self._held_bytes += len(data)
        if self.limit and self._held_bytes > self.limit - self.limit // 4:
            self._check_full()  # (only near the limit: asks the transport how much it buffers)
        if self._head < len(self._held):
            chunk = self._held[len(self._held) - 1]
            if <uint64_t>chunk[0] == last:
                chunk[1] += data  # same wait: one chunk, one write later
                return 0
        self._held.append([last, bytearray(data) if type(data) is not bytearray else data])
        if not self._registered:
            self._registered = True
            self._log.holders.append(self)
        return 0

    cdef int _check_full(self) except -1:
        cdef Py_ssize_t total
        if self.closed or self.on_full is None:
            return 0
        total = self._held_bytes + self.transport.get_write_buffer_size()
        if total > self.limit:
            self.on_full(total)
        return 0

    cdef bint release_c(self, uint64_t safe) except -1:
        """The log covers every LSN up to ``safe``: write what waited for it. True while some
        answer still waits (release_held keeps this Output listed)."""
        self._drain(safe)
        if self._head < len(self._held):
            return True
        self._registered = False
        return False

    cdef int _drain(self, uint64_t safe) except -1:
        cdef list held = self._held
        cdef list chunk
        cdef Py_ssize_t n = len(held)
        while self._head < n:
            chunk = held[self._head]
            if <uint64_t>chunk[0] > safe:
                return 0
            held[self._head] = None
            self._head += 1
            self._held_bytes -= len(chunk[1])
            if not self.closed:
                self._write(chunk[1])
        del held[:]
        self._head = 0
        self._held_bytes = 0
        if self.on_drained is not None:
            self.on_drained()
        return 0


def release_held(LogWriter w):
    """After a log write / fsync: every Output listed in ``w.holders`` writes what the log now
    covers; those still holding answers stay listed."""
    cdef list holders = w.holders
    cdef list still
    cdef uint64_t safe
    if not holders:
        return
    safe = safe_lsn_of(w)
    w.holders = still = []
    for out in holders:
        try:
            if (<Output>out).release_c(safe):
                still.append(out)
        except Exception:  # one connection's bug must not stall the others
            log.exception("releasing held answers failed")


# cython: language_level=3, boundscheck=False, wraparound=False
"""The queue cycle's client side in C: the load generator's engine for ``queue.cycle``.

A cycle is three dependent requests (Flo: QUEUE_ENQUEUE -> QUEUE_DEQUEUE of one -> QUEUE_COMPLETE of
the seq it returned; Redis: LPUSH -> RPOPLPUSH -> LREM of the value it returned), so each reply must
be read before the next request can be built. In Python that costs the load generator more CPU per
cycle than it costs either server, and the generator, not the server, was the limit of the cell.
Here each reply is read and the cycle's next request written in C, into one output buffer per
connection; the Python protocol of bench/loadgen.py (``FastChainLoad``) only moves bytes between
the socket and this engine.

Every reply is still checked: a Flo reply's request id and status, a Redis error or nil, an
unexpected reply type. A failed cycle is counted as an error and another cycle takes its place.

Example (what ``FastChainLoad`` does with each read)::

    >>> eng = FloCycle(16, 1000, [], *flo_queue_cycle(b"queue:cycle", b"x" * 100))  # doctest: +SKIP
    >>> transport.write(eng.start())                                                # doctest: +SKIP
    >>> transport.write(eng.feed_replies(data))  # replies in, the next requests out         # doctest: +SKIP
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memchr

from flo_core.frame cimport FrameReader
from flo_core.wirefmt cimport HEADER, VERSION, MAGIC, frame_crc, ld32, st32, st64, table_hash

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec *ts)
    int CLOCK_MONOTONIC

cdef inline int64_t _now_ns() noexcept nogil:
    # time.perf_counter_ns() (CLOCK_MONOTONIC on Linux): the Python side starts the clock with it
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef class _Cycles:
    """The cycles of one connection: a ring of (start ns, request id, step), one request in flight each."""

    cdef int64_t *t0
    cdef uint64_t *rid
    cdef uint8_t *step
    cdef Py_ssize_t cap, head, n
    cdef public Py_ssize_t budget      # cycles this connection may still start
    cdef public bint stop              # the timed phase is over: start no new cycles
    cdef public Py_ssize_t completed   # since the caller last took them
    cdef public Py_ssize_t errors
    cdef public object error_sample    # the first error, as text
    cdef public dict statuses          # Flo refusals by status
    cdef public object describe        # (status, body) -> text of a Flo refusal (the loadgen's wording)
    cdef list lat
    cdef bytearray out

    def __cinit__(self, Py_ssize_t window, Py_ssize_t budget, list lat):
        self.cap = window if window > 0 else 1
        self.t0 = <int64_t *>malloc(self.cap * sizeof(int64_t))
        self.rid = <uint64_t *>malloc(self.cap * sizeof(uint64_t))
        self.step = <uint8_t *>malloc(self.cap * sizeof(uint8_t))
        if self.t0 == NULL or self.rid == NULL or self.step == NULL:
            raise MemoryError()
        self.head = self.n = 0
        self.budget = budget
        self.stop = False
        self.completed = self.errors = 0
        self.error_sample = None
        self.statuses = {}
        self.describe = None
        self.lat = lat
        self.out = bytearray()

    def __dealloc__(self):
        free(self.t0)
        free(self.rid)
        free(self.step)

    @property
    def inflight(self):
        return self.n

    cdef inline void push(self, int64_t t0, uint64_t rid, uint8_t step) noexcept:
        cdef Py_ssize_t at = (self.head + self.n) % self.cap
        self.t0[at] = t0
        self.rid[at] = rid
        self.step[at] = step
        self.n += 1

    cdef inline Py_ssize_t pop(self) noexcept:
        cdef Py_ssize_t at = self.head
        self.head = (self.head + 1) % self.cap
        self.n -= 1
        return at

    cdef int error(self, str what) except -1:
        self.errors += 1
        if self.error_sample is None:
            self.error_sample = what[:300]
        return 0

    cdef int refused(self, uint8_t step, uint32_t status, const uint8_t *body, uint32_t n) except -1:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if self.error_sample is not None or self.describe is None:
            return self.error(f"step {step}: status {status}")
        return self.error(f"step {step}: {self.describe(status, (<const char *>body)[:n])}")

    cdef uint8_t *room(self, Py_ssize_t n) except NULL:
        """``n`` more bytes at the end of the output buffer."""
        cdef Py_ssize_t size = PyByteArray_GET_SIZE(self.out)
        PyByteArray_Resize(self.out, size + n)
        return <uint8_t *>PyByteArray_AS_STRING(self.out) + size

    cdef bytes take_out(self):
        cdef bytes b = PyBytes_FromStringAndSize(PyByteArray_AS_STRING(self.out), PyByteArray_GET_SIZE(self.out))
        PyByteArray_Resize(self.out, 0)
        return b


cdef class FloCycle(FrameReader):
    """The Flo queue cycle: replies parsed by ``FrameReader``, each one answered by the next request."""

    cdef public _Cycles cycles
    cdef bytes _enqueue, _dequeue, _ack_head
    cdef uint32_t _enqueue_op, _dequeue_op, _ack_op
    cdef uint64_t _next_rid

    def __init__(self, Py_ssize_t window, Py_ssize_t budget, list lat, tuple enqueue, tuple dequeue, tuple ack_head):
        """``enqueue`` / ``dequeue``: ``(op, payload)`` of the first two requests; ``ack_head``:
        ``(op, the payload's start)`` of the ack (its namespace and key), as bench.workloads builds them."""
        FrameReader.__init__(self, False, 16 * 1024 * 1024 + 65536, False)
        self.cycles = _Cycles(window, budget, lat)
        self._enqueue_op, self._enqueue = enqueue
        self._dequeue_op, self._dequeue = dequeue
        self._ack_op, self._ack_head = ack_head
        self._next_rid = 0

    cdef int _request(self, int64_t t0, uint8_t step, uint32_t op, const uint8_t *a, Py_ssize_t an,
                      const uint8_t *b, Py_ssize_t bn) except -1:
        # one request frame (payload a + b) into the output; its reply is expected in this order
        cdef Py_ssize_t n = an + bn
        cdef uint8_t *h = self.cycles.room(HEADER + n)
        self._next_rid += 1
        st32(h, MAGIC)
        st32(h + 4, <uint32_t>n)
        st64(h + 8, self._next_rid)
        st64(h + 24, table_hash())
        h[20] = op & 0xFF
        h[21] = op >> 8
        h[22] = VERSION
        h[23] = 0
        memcpy(h + HEADER, a, an)
        if bn:
            memcpy(h + HEADER + an, b, bn)
        st32(h + 16, frame_crc(h, h + HEADER, n))
        self.cycles.push(t0, self._next_rid, step)
        return 0

    cdef int _start_cycles(self, Py_ssize_t k, int64_t now) except -1:
        cdef _Cycles c = self.cycles
        if c.stop:
            return 0
        if k > c.budget:
            k = c.budget
        c.budget -= k
        for _ in range(k):
            self._request(now, 0, self._enqueue_op, <const uint8_t *>PyBytes_AS_STRING(self._enqueue),
                          PyBytes_GET_SIZE(self._enqueue), NULL, 0)
        return 0

    def start(self):
        """The first cycles' requests (window of them, or the budget)."""
        self._start_cycles(self.cycles.cap, _now_ns())
        return self.cycles.take_out()

    def feed_replies(self, data):
        """Read replies; the requests they lead to (bytes, maybe empty)."""
        self.feed(data)
        return self.cycles.take_out()

    cdef int _on_frame(self, uint64_t rid, uint32_t code, const uint8_t *payload, uint32_t n, list out) except -1:
        cdef _Cycles c = self.cycles
        cdef Py_ssize_t at
        cdef uint8_t step
        cdef int64_t now
        cdef uint8_t ack[18]
        if c.n == 0:
            return c.error("reply without a request")
        at = c.pop()
        step = c.step[at]
        if rid != c.rid[at] or code != 0:
            if rid != c.rid[at]:
                c.error(f"step {step}: reply id {rid}, expected {c.rid[at]}")
            else:
                c.refused(step, code, payload, n)
            return self._start_cycles(1, _now_ns())  # the cycle is abandoned; start another one
        if step == 0:
            return self._request(c.t0[at], 1, self._dequeue_op, <const uint8_t *>PyBytes_AS_STRING(self._dequeue),
                                 PyBytes_GET_SIZE(self._dequeue), NULL, 0)
        if step == 1:
            # [count u32] then [seq u64][payload bytes32]...: ack that seq, as bytes32 [count 1][seq] and no options
            if n < 12 or ld32(payload) == 0:
                c.error("step 1: dequeue returned no message")
                return self._start_cycles(1, _now_ns())
            st32(ack, 12)
            st32(ack + 4, 1)
            memcpy(ack + 8, payload + 4, 8)
            ack[16] = 0
            ack[17] = 0
            return self._request(c.t0[at], 2, self._ack_op, <const uint8_t *>PyBytes_AS_STRING(self._ack_head),
                                 PyBytes_GET_SIZE(self._ack_head), ack, 18)
        now = _now_ns()
        c.lat.append(now - c.t0[at])
        c.completed += 1
        return self._start_cycles(1, now)


cdef class RespCycle:
    """The Redis queue cycle (LPUSH -> RPOPLPUSH -> LREM), RESP2 replies read in C."""

    cdef public _Cycles cycles
    cdef bytes _push, _move, _lrem_head
    cdef bytearray _buf

    def __init__(self, Py_ssize_t window, Py_ssize_t budget, list lat, bytes push, bytes move, bytes lrem_head):
        """``push`` / ``move``: the first two commands, encoded; ``lrem_head``: LREM without its last
        argument (the value RPOPLPUSH returned), as bench.workloads builds them."""
        self.cycles = _Cycles(window, budget, lat)
        self._push, self._move, self._lrem_head = push, move, lrem_head
        self._buf = bytearray()

    cdef int _send(self, int64_t t0, uint8_t step, bytes cmd) except -1:
        cdef Py_ssize_t n = PyBytes_GET_SIZE(cmd)
        memcpy(self.cycles.room(n), PyBytes_AS_STRING(cmd), n)
        self.cycles.push(t0, 0, step)
        return 0

    cdef int _start_cycles(self, Py_ssize_t k, int64_t now) except -1:
        cdef _Cycles c = self.cycles
        if c.stop:
            return 0
        if k > c.budget:
            k = c.budget
        c.budget -= k
        for _ in range(k):
            self._send(now, 0, self._push)
        return 0

    def start(self):
        self._start_cycles(self.cycles.cap, _now_ns())
        return self.cycles.take_out()

    def feed_replies(self, data):
        """Read replies; the commands they lead to (bytes, maybe empty)."""
        cdef bytes chunk = bytes(data) if PyByteArray_GET_SIZE(self._buf) == 0 else bytes(self._buf) + data
        cdef const uint8_t *p = <const uint8_t *>PyBytes_AS_STRING(chunk)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(chunk), pos = 0, used
        while pos < n:
            used = self._reply(p + pos, n - pos)
            if used == 0:
                break
            pos += used
        self._buf = bytearray(chunk[pos:]) if pos < n else bytearray()
        return self.cycles.take_out()

    cdef Py_ssize_t _reply(self, const uint8_t *p, Py_ssize_t n) except -1:
        # one reply at p: the bytes it took, 0 if it is not complete yet
        cdef const uint8_t *eol = <const uint8_t *>memchr(p, 13, n)
        cdef Py_ssize_t line, length = 0, used, i
        cdef _Cycles c = self.cycles
        cdef Py_ssize_t at
        cdef uint8_t step
        cdef int64_t now
        cdef bint neg = False
        if eol == NULL or eol - p + 2 > n:
            return 0
        line = eol - p
        used = line + 2
        if p[0] == 36:  # '$' bulk: its bytes must have arrived too
            i = 1
            if i < line and p[i] == 45:
                neg = True
                i += 1
            while i < line:
                length = length * 10 + (p[i] - 48)
                i += 1
            if not neg:
                if n < used + length + 2:
                    return 0
                used += length + 2
        if c.n == 0:
            c.error("reply without a request")
            return used
        at = c.pop()
        step = c.step[at]
        if p[0] == 45:  # '-' error
            c.error(f"step {step}: {(<const char *>p)[1:line].decode('utf-8', 'replace')}")
            self._start_cycles(1, _now_ns())
        elif step == 0 or step == 2:
            if p[0] != 58:  # ':' LPUSH / LREM answer an integer
                c.error(f"step {step}: unexpected reply {(<const char *>p)[:line]!r}")
                self._start_cycles(1, _now_ns())
            elif step == 0:
                self._send(c.t0[at], 1, self._move)
            else:
                now = _now_ns()
                c.lat.append(now - c.t0[at])
                c.completed += 1
                self._start_cycles(1, now)
        elif p[0] != 36 or neg:
            c.error("step 1: RPOPLPUSH returned nil")
            self._start_cycles(1, _now_ns())
        else:
            self._send(c.t0[at], 2, self._lrem_head + (<const char *>p)[:used])
        return used

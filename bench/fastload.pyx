# cython: language_level=3, boundscheck=False, wraparound=False
"""The load generator's client side in C (bench/loadgen.py runs each connection through one engine).

The load generator must never be the limit of a cell. In Python, reading a reply and writing the
next request cost it more CPU than the reply cost the server on the cells with one request in
flight per connection and on the queue cycle, so those cells measured the generator. Here each
reply is read, checked and answered by the next request in C, into one output buffer per
connection; the Python protocol (``loadgen.FastLoad``) only moves bytes between the socket and
an engine:

- ``FloPool`` / ``RespPool``: single requests sent from a pool of pre-encoded frames, K in flight,
  replies matched in order (Flo: every reply's request id and status checked; RESP: errors counted,
  nested arrays skipped whole).
- ``FloCycle`` / ``RespCycle``: the queue cycle, three dependent requests (Flo QUEUE_ENQUEUE ->
  QUEUE_DEQUEUE of one -> QUEUE_COMPLETE of the seq it returned; Redis LPUSH -> RPOPLPUSH -> LREM
  of the value it returned): a failed cycle is counted as an error and another takes its place.

Example (what ``FastLoad`` does)::

    >>> eng = FloPool(16, 100_000, lat, frames, 0)    # doctest: +SKIP
    >>> transport.write(eng.start())                  # doctest: +SKIP
    >>> transport.write(eng.feed_replies(data))       # replies in, the next requests out  # doctest: +SKIP
"""

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy, memchr

from flo_core.frame cimport FrameReader
from flo_core.metrics cimport mono_ns  # time.perf_counter_ns()'s clock: the Python side starts it
from flo_core.wirefmt cimport HEADER, frame_crc, grow_by, ld16, ld32, ld64, request_header, st32

cdef class _Flight:
    """One connection's requests in flight: a ring of (start ns, request id, step), and its counts."""

    cdef int64_t *t0
    cdef uint64_t *rid
    cdef uint8_t *step
    cdef Py_ssize_t cap, head, n
    cdef public Py_ssize_t budget      # requests (cycles) this connection may still start
    cdef public bint stop              # the timed phase is over: start nothing new
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

    cdef inline Py_ssize_t start_n(self, Py_ssize_t k) noexcept:
        # how many of k more requests (cycles) start now, taken from the budget: none once the phase
        # is over, never past the window (a stray reply never makes a connection send more)
        if self.stop:
            return 0
        if k > self.budget:
            k = self.budget
        if k > self.cap - self.n:
            k = self.cap - self.n
        if k <= 0:
            return 0
        self.budget -= k
        return k

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

    cdef int refused(self, str prefix, uint32_t status, const uint8_t *body, uint32_t n) except -1:
        # a Flo refusal, counted by status; the first one described as the loadgen describes it
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if self.error_sample is not None or self.describe is None:
            return self.error(f"{prefix}status {status}")
        return self.error(prefix + self.describe(status, (<const char *>body)[:n]))

    cdef uint8_t *room(self, Py_ssize_t n) except NULL:
        """``n`` more bytes at the end of the output buffer."""
        return grow_by(self.out, n)

    cdef bytes take_out(self):
        cdef bytes b = PyBytes_FromStringAndSize(PyByteArray_AS_STRING(self.out), PyByteArray_GET_SIZE(self.out))
        PyByteArray_Resize(self.out, 0)
        return b


cdef class FloCycle(FrameReader):
    """The Flo queue cycle: replies parsed by ``FrameReader``, each one answered by the next request."""

    cdef public _Flight flight
    cdef bytes _enqueue, _dequeue, _ack_head
    cdef uint32_t _enqueue_op, _dequeue_op, _ack_op
    cdef uint64_t _next_rid

    def __init__(self, Py_ssize_t window, Py_ssize_t budget, list lat, tuple enqueue, tuple dequeue, tuple ack_head):
        """``enqueue`` / ``dequeue``: ``(op, payload)`` of the first two requests; ``ack_head``:
        ``(op, the payload's start)`` of the ack (its namespace and key), as bench.workloads builds them."""
        FrameReader.__init__(self, False, 16 * 1024 * 1024 + 65536, False)
        self.flight = _Flight(window, budget, lat)
        self._enqueue_op, self._enqueue = enqueue
        self._dequeue_op, self._dequeue = dequeue
        self._ack_op, self._ack_head = ack_head
        self._next_rid = 0

    cdef int _request(self, int64_t t0, uint8_t step, uint32_t op, const uint8_t *a, Py_ssize_t an,
                      const uint8_t *b, Py_ssize_t bn) except -1:
        # one request frame (payload a + b) into the output; its reply is expected in this order
        cdef Py_ssize_t n = an + bn
        cdef uint8_t *h = self.flight.room(HEADER + n)
        self._next_rid += 1
        request_header(h, self._next_rid, op, 0, <uint32_t>n)
        memcpy(h + HEADER, a, an)
        if bn:
            memcpy(h + HEADER + an, b, bn)
        st32(h + 16, frame_crc(h, h + HEADER, n))
        self.flight.push(t0, self._next_rid, step)
        return 0

    cdef int _start_cycles(self, Py_ssize_t k, int64_t now) except -1:
        for _ in range(self.flight.start_n(k)):
            self._request(now, 0, self._enqueue_op, <const uint8_t *>PyBytes_AS_STRING(self._enqueue),
                          PyBytes_GET_SIZE(self._enqueue), NULL, 0)
        return 0

    def start(self):
        """The first cycles' requests (window of them, or the budget)."""
        self._start_cycles(self.flight.cap, mono_ns())
        return self.flight.take_out()

    def feed_replies(self, data):
        """Read replies; the requests they lead to (bytes, maybe empty)."""
        self.feed(data)
        return self.flight.take_out()

    cdef int _on_frame(self, uint64_t rid, uint32_t code, const uint8_t *payload, uint32_t n, list out) except -1:
        cdef _Flight c = self.flight
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
                c.refused(f"step {step}: ", code, payload, n)
            return self._start_cycles(1, mono_ns())  # the cycle is abandoned; start another one
        if step == 0:
            return self._request(c.t0[at], 1, self._dequeue_op, <const uint8_t *>PyBytes_AS_STRING(self._dequeue),
                                 PyBytes_GET_SIZE(self._dequeue), NULL, 0)
        if step == 1:
            # [count u32] then [seq u64][payload bytes32]...: ack that seq, as bytes32 [count 1][seq] and no options
            if n < 12 or ld32(payload) == 0:
                c.error("step 1: dequeue returned no message")
                return self._start_cycles(1, mono_ns())
            st32(ack, 12)
            st32(ack + 4, 1)
            memcpy(ack + 8, payload + 4, 8)
            ack[16] = 0
            ack[17] = 0
            return self._request(c.t0[at], 2, self._ack_op, <const uint8_t *>PyBytes_AS_STRING(self._ack_head),
                                 PyBytes_GET_SIZE(self._ack_head), ack, 18)
        now = mono_ns()
        c.lat.append(now - c.t0[at])
        c.completed += 1
        return self._start_cycles(1, now)


cdef class RespCycle:
    """The Redis queue cycle (LPUSH -> RPOPLPUSH -> LREM), RESP2 replies read in C."""

    cdef public _Flight flight
    cdef bytes _push, _move, _lrem_head
    cdef bytearray _buf

    def __init__(self, Py_ssize_t window, Py_ssize_t budget, list lat, bytes push, bytes move, bytes lrem_head):
        """``push`` / ``move``: the first two commands, encoded; ``lrem_head``: LREM without its last
        argument (the value RPOPLPUSH returned), as bench.workloads builds them."""
        self.flight = _Flight(window, budget, lat)
        self._push, self._move, self._lrem_head = push, move, lrem_head
        self._buf = bytearray()

    cdef int _send(self, int64_t t0, uint8_t step, bytes cmd) except -1:
        cdef Py_ssize_t n = PyBytes_GET_SIZE(cmd)
        memcpy(self.flight.room(n), PyBytes_AS_STRING(cmd), n)
        self.flight.push(t0, 0, step)
        return 0

    cdef int _start_cycles(self, Py_ssize_t k, int64_t now) except -1:
        for _ in range(self.flight.start_n(k)):
            self._send(now, 0, self._push)
        return 0

    def start(self):
        self._start_cycles(self.flight.cap, mono_ns())
        return self.flight.take_out()

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
        return self.flight.take_out()

    cdef Py_ssize_t _reply(self, const uint8_t *p, Py_ssize_t n) except -1:
        # one reply at p: the bytes it took, 0 if it is not complete yet
        cdef Py_ssize_t used = _resp_skip(p, n, 0)
        cdef Py_ssize_t line
        cdef _Flight c = self.flight
        cdef Py_ssize_t at
        cdef uint8_t step
        cdef int64_t now
        cdef bint nil
        if used == 0:
            return 0
        line = <const uint8_t *>memchr(p, 13, used) - p
        nil = p[0] == 36 and line > 1 and p[1] == 45  # "$-1"
        if c.n == 0:
            c.error("reply without a request")
            return used
        at = c.pop()
        step = c.step[at]
        if p[0] == 45:  # '-' error
            c.error(f"step {step}: {(<const char *>p)[1:line].decode('utf-8', 'replace')}")
            self._start_cycles(1, mono_ns())
        elif step == 0 or step == 2:
            if p[0] != 58:  # ':' LPUSH / LREM answer an integer
                c.error(f"step {step}: unexpected reply {(<const char *>p)[:line]!r}")
                self._start_cycles(1, mono_ns())
            elif step == 0:
                self._send(c.t0[at], 1, self._move)
            else:
                now = mono_ns()
                c.lat.append(now - c.t0[at])
                c.completed += 1
                self._start_cycles(1, now)
        elif p[0] != 36 or nil:
            c.error("step 1: RPOPLPUSH returned nil")
            self._start_cycles(1, mono_ns())
        else:
            self._send(c.t0[at], 2, self._lrem_head + (<const char *>p)[:used])
        return used


cdef class _Pool:
    """A pool of encoded requests sent in turn from an offset (and, for Flo, each one's request id)."""

    cdef list frames
    cdef uint64_t *rids  # NULL: no ids (RESP)
    cdef Py_ssize_t np, idx

    def __cinit__(self, list frames, Py_ssize_t offset, bint with_ids):
        cdef Py_ssize_t i
        cdef bytes f
        if not frames:
            raise ValueError("an empty pool")
        self.frames = frames
        self.np = len(frames)
        self.idx = offset % self.np
        self.rids = NULL
        if with_ids:
            self.rids = <uint64_t *>malloc(self.np * sizeof(uint64_t))
            if self.rids == NULL:
                raise MemoryError()
            for i in range(self.np):
                f = frames[i]
                if PyBytes_GET_SIZE(f) < HEADER:
                    raise ValueError("a pool frame shorter than a header")
                self.rids[i] = ld64(<const uint8_t *>PyBytes_AS_STRING(f) + 8)

    def __dealloc__(self):
        free(self.rids)

    cdef int send(self, _Flight c, Py_ssize_t k) except -1:
        # up to k more requests, in turn (fewer when the budget or the phase ends, or the window is full)
        cdef Py_ssize_t i = self.idx, j, size = 0, n
        cdef int64_t now
        cdef uint8_t *out
        cdef bytes f
        k = c.start_n(k)
        if k == 0:
            return 0
        for j in range(k):
            size += PyBytes_GET_SIZE(<bytes>self.frames[(i + j) % self.np])
        out = c.room(size)
        now = mono_ns()
        for j in range(k):
            f = <bytes>self.frames[i]
            n = PyBytes_GET_SIZE(f)
            memcpy(out, PyBytes_AS_STRING(f), n)
            out += n
            c.push(now, self.rids[i] if self.rids != NULL else 0, 0)
            i += 1
            if i == self.np:
                i = 0
        self.idx = i
        return 0


cdef class FloPool(FrameReader):
    """Single Flo requests from a pool of encoded frames, sent in turn; each reply's id and status checked."""

    cdef public _Flight flight
    cdef _Pool _pool
    cdef Py_ssize_t _replies
    cdef int _after_id

    def __init__(self, Py_ssize_t window, Py_ssize_t budget, list lat, list frames, Py_ssize_t offset,
                 int after_id=-1):
        """``frames``: encoded request frames (their ids are read from them); this connection sends
        ``budget`` of them in turn from ``offset``, ``window`` in flight. ``after_id`` >= 0: each answer
        starts with an id (str16) and the byte after it must be this (a run's status: an invoke that
        waits for its run answers ``[run_id str16][status u8]...``)."""
        FrameReader.__init__(self, False, 16 * 1024 * 1024 + 65536, False)
        self._pool = _Pool(frames, offset, True)
        self.flight = _Flight(window, budget, lat)
        self._after_id = after_id

    def start(self):
        self._pool.send(self.flight, self.flight.cap)
        return self.flight.take_out()

    def feed_replies(self, data):
        """Read replies; the requests that replace them (bytes, maybe empty)."""
        self._replies = 0
        self.feed(data)
        self.flight.completed += self._replies
        self._pool.send(self.flight, self._replies)
        return self.flight.take_out()

    cdef int _on_frame(self, uint64_t rid, uint32_t code, const uint8_t *payload, uint32_t n, list out) except -1:
        cdef _Flight c = self.flight
        cdef Py_ssize_t at, skip
        self._replies += 1
        if c.n == 0:
            return c.error("reply without a request")
        at = c.pop()
        if rid != c.rid[at]:
            c.error(f"reply id {rid}, expected {c.rid[at]}")
        elif code != 0:
            c.refused("", code, payload, n)
        elif self._after_id >= 0:
            skip = 2 + ld16(payload) if n >= 2 else n
            if skip >= n or payload[skip] != self._after_id:
                # (ChainLoad's wording: workloads._completed)
                c.error(f"step 1: run not completed: status {(<const char *>payload)[skip:skip + 1].hex() or 'empty'}")
        c.lat.append(mono_ns() - c.t0[at])
        return 0


cdef class RespPool:
    """Single RESP commands from a pool of encoded commands; errors counted, any reply skipped whole."""

    cdef public _Flight flight
    cdef _Pool _pool
    cdef bytearray _buf

    def __init__(self, Py_ssize_t window, Py_ssize_t budget, list lat, list frames, Py_ssize_t offset):
        self._pool = _Pool(frames, offset, False)
        self.flight = _Flight(window, budget, lat)
        self._buf = bytearray()

    def start(self):
        self._pool.send(self.flight, self.flight.cap)
        return self.flight.take_out()

    def feed_replies(self, data):
        """Read replies; the commands that replace them (bytes, maybe empty)."""
        cdef bytes chunk = bytes(data) if PyByteArray_GET_SIZE(self._buf) == 0 else bytes(self._buf) + data
        cdef const uint8_t *p = <const uint8_t *>PyBytes_AS_STRING(chunk)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(chunk), pos = 0, used, got = 0
        cdef _Flight c = self.flight
        cdef int64_t now
        while pos < n:
            used = _resp_skip(p + pos, n - pos, 0)
            if used == 0:
                break
            if p[pos] == 45:  # '-' an error reply
                c.error((<const char *>p)[pos + 1:pos + used - 2].decode("utf-8", "replace"))
            pos += used
            got += 1
        self._buf = bytearray(chunk[pos:]) if pos < n else bytearray()
        if got:
            now = mono_ns()
            for _ in range(got):
                if c.n == 0:
                    c.error("reply without a request")
                    break
                c.lat.append(now - c.t0[c.pop()])
            c.completed += got
            self._pool.send(c, got)
        return c.take_out()


cdef Py_ssize_t _resp_skip(const uint8_t *p, Py_ssize_t n, int depth) except -1:
    # the bytes of one complete RESP2 reply at p (arrays with everything in them), 0 if incomplete
    cdef const uint8_t *eol
    cdef Py_ssize_t line, used, count, i, u
    cdef bint neg = False
    if depth > 32:
        raise ValueError("a RESP reply nested more than 32 deep")
    if n < 3:
        return 0
    eol = <const uint8_t *>memchr(p, 13, n)
    if eol == NULL or eol - p + 2 > n:
        return 0
    line = eol - p
    used = line + 2
    if p[0] != 36 and p[0] != 42:  # + - : one line
        return used
    count = 0
    i = 1
    if i < line and p[i] == 45:
        neg = True
        i += 1
    while i < line:
        count = count * 10 + (p[i] - 48)
        i += 1
    if neg:  # nil bulk / nil array
        return used
    if p[0] == 36:  # '$' bulk: its bytes and CRLF
        return used + count + 2 if n >= used + count + 2 else 0
    for i in range(count):  # '*' array
        u = _resp_skip(p + used, n - used, depth + 1)
        if u == 0:
            return 0
        used += u
    return used

# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Leased priority queues, sans-IO.

One :class:`PriorityQueue` holds the messages of one (namespace, queue):

* **ready** messages in a min-heap on ``(priority, seq)``: lower priority value
  first, FIFO by seq within a priority;
* **delayed** messages (``delay_ms`` on enqueue, or a nack with a delay) in a
  min-heap on ``visible_at``;
* **leased** messages in a min-heap on ``lease_until``;
* the **DLQ**, oldest first, bounded (oldest evicted).

Every heap uses lazy deletion: an entry carries the message's generation, and
an entry whose message moved on since (acked, leased again, ...) is skipped
when it reaches the top. Each operation is O(log n) amortised (heaps are
compacted when stale entries outnumber live ones).

Time is never read here: every call takes ``now`` (unix ms) and first
*advances* the queue to it (due delays become ready, lapsed leases become
ready, or go to the DLQ after ``max_deliveries`` deliveries). That is a pure
function of the state and ``now``, so replaying the log gives the same
state. ``now`` never goes backwards inside a queue (a high-water mark).

Example:
    >>> from flo_core.pqueue import PriorityQueue
    >>> q = PriorityQueue()
    >>> q.enqueue(b"low", 10, now=1000)
    1
    >>> q.enqueue(b"high", 0, now=1000)
    2
    >>> [m.payload for m in q.dequeue(10, now=1000, lease_ms=30000)]
    [b'high', b'low']
    >>> q.ack([1, 2], now=1001)
    2
"""

from collections import OrderedDict
import heapq
import struct

from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.long cimport PyLong_FromUnsignedLongLong
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

from flo_core.wirefmt cimport grow_by, ld64, st32, st64

# --- defaults (server settings override them through Queues(...)) ----------

DEFAULT_LEASE_MS = 30_000
DEFAULT_MAX_DELIVERIES = 5
DEFAULT_DLQ_MAX = 10_000
DEFAULT_MAX_MESSAGES = 1_000_000
DEFAULT_DEDUP_WINDOW_MS = 300_000
#: A dequeue stops adding messages once this many payload bytes are in the
#: answer (it always returns at least one message if one is ready).
DEFAULT_MAX_BATCH_BYTES = 64 * 1024 * 1024

#: Message states (``Message.state``).
READY = 0
DELAYED = 1
LEASED = 2
DLQ = 3
STATE_NAMES = ("ready", "delayed", "leased", "dlq")

cdef enum:
    S_READY = 0
    S_DELAYED = 1
    S_LEASED = 2
    S_DLQ = 3
    S_GONE = 4

_LIST_HEAD = struct.Struct("<I")
_MSG_HEAD = struct.Struct("<QI")
_MSG_TAIL = struct.Struct("<qIB")


# --- a binary min-heap of (k1, seq, gen) in C memory -------------------------

cdef inline bint _less(Entry* a, Entry* b) nogil:
    return a.k1 < b.k1 or (a.k1 == b.k1 and a.seq < b.seq)


cdef class _Heap:
    """Min-heap on ``(k1, seq)``; ``gen`` tells a live entry from a stale one."""

    def __cinit__(self):
        self.cap = 16
        self.n = 0
        self.data = <Entry*>malloc(self.cap * sizeof(Entry))
        if self.data is NULL:
            raise MemoryError()

    def __dealloc__(self):
        if self.data is not NULL:
            free(self.data)

    def __len__(self):
        return self.n

    cdef int push(self, int64_t k1, uint64_t seq, uint32_t gen) except -1:
        cdef Entry* grown
        if self.n == self.cap:
            grown = <Entry*>realloc(self.data, 2 * self.cap * sizeof(Entry))
            if grown is NULL:
                raise MemoryError()
            self.data = grown
            self.cap *= 2
        self.data[self.n].k1 = k1
        self.data[self.n].seq = seq
        self.data[self.n].gen = gen
        self.n += 1
        self._up(self.n - 1)
        return 0

    cdef Entry pop(self):
        # Caller checks n > 0.
        cdef Entry top = self.data[0]
        self.n -= 1
        if self.n > 0:
            self.data[0] = self.data[self.n]
            self._down(0)
        return top

    cdef void clear(self):
        self.n = 0

    cdef void _up(self, Py_ssize_t i) nogil:
        cdef Entry item = self.data[i]
        cdef Py_ssize_t parent
        while i > 0:
            parent = (i - 1) >> 1
            if _less(&item, &self.data[parent]):
                self.data[i] = self.data[parent]
                i = parent
            else:
                break
        self.data[i] = item

    cdef void _down(self, Py_ssize_t i) nogil:
        cdef Entry item = self.data[i]
        cdef Py_ssize_t child
        cdef Py_ssize_t n = self.n
        while True:
            child = 2 * i + 1
            if child >= n:
                break
            if child + 1 < n and _less(&self.data[child + 1], &self.data[child]):
                child += 1
            if _less(&self.data[child], &item):
                self.data[i] = self.data[child]
                i = child
            else:
                break
        self.data[i] = item

    cdef void heapify(self):
        cdef Py_ssize_t i = self.n // 2 - 1
        while i >= 0:
            self._down(i)
            i -= 1


# --- messages ----------------------------------------------------------------

cdef class Message:
    """One queued message. The attributes are read-only views of the store.

    ``delivery_count`` counts hand-outs: 0 while never dequeued, 1 on the
    first delivery, +1 on every redelivery (after a nack or a lapsed lease).
    ``due`` is ``visible_at`` (delayed), ``lease_until`` (leased) or the time
    it entered the DLQ (dlq); 0 when ready. ``lease_ms`` is the lease length
    of its latest dequeue (what a touch without a length extends by).
    """

    def __repr__(self):
        return (f"Message(seq={self.seq}, state={STATE_NAMES[self.state] if self.state < 4 else 'gone'}, "
                f"priority={self.priority}, delivery_count={self.delivery_count}, due={self.due}, "
                f"payload={self.payload[:32]!r})")


cdef Message _new_message(uint64_t seq, bytes payload, int priority, int64_t enqueued_at, uint32_t delivery_count):
    cdef Message m = Message.__new__(Message)
    m.seq = seq
    m.payload = payload
    m.priority = priority
    m.enqueued_at_ms = enqueued_at
    m.delivery_count = delivery_count
    m.state = S_GONE
    m.due = 0
    m.lease_ms = 0
    m.gen = 0
    return m


def encode_messages(msgs) -> bytes:
    """The wire message list (flo-wire-v2 §3.3)::

        [count u32] count x ([seq u64][payload bytes32][enqueued_at_ms i64][delivery_count u32][priority u8])

    >>> encode_messages([])
    b'\\x00\\x00\\x00\\x00'
    """
    cdef Message m
    parts = [_LIST_HEAD.pack(len(msgs))]
    for m in msgs:
        parts.append(_MSG_HEAD.pack(m.seq, len(m.payload)))
        parts.append(m.payload)
        parts.append(_MSG_TAIL.pack(m.enqueued_at_ms, m.delivery_count, m.priority))
    return b"".join(parts)


# --- one queue -----------------------------------------------------------------

cdef class PriorityQueue:
    """A leased priority queue with a delayed set and a DLQ (see module doc).

    Args:
        max_deliveries: hand-outs before a failed message goes to the DLQ
            (checked on nack and on lease expiry); 0 = never.
        dlq_max: DLQ capacity; the oldest entry is evicted beyond it.
        max_messages: capacity outside the DLQ (:meth:`is_full`; the caller
            refuses the enqueue).
    """


    def __init__(self, int max_deliveries=DEFAULT_MAX_DELIVERIES, Py_ssize_t dlq_max=DEFAULT_DLQ_MAX,
                 Py_ssize_t max_messages=DEFAULT_MAX_MESSAGES):
        if max_deliveries < 0 or dlq_max < 0 or max_messages < 1:
            raise ValueError("max_deliveries/dlq_max must be >= 0 and max_messages >= 1")
        self.max_deliveries = max_deliveries
        self.dlq_max = dlq_max
        self.max_messages = max_messages
        self.msgs = {}
        self.dlq = OrderedDict()
        self.ready_heap = _Heap()
        self.delayed_heap = _Heap()
        self.lease_heap = _Heap()
        self.dedup = {}
        self.dedup_heap = []
        self.n_ready = self.n_delayed = self.n_leased = 0
        self.last_seq = 0
        self.clock = 0
        self.total_enqueued = self.total_delivered = self.total_acked = 0
        self.total_dead = self.total_expired = 0

    # -- state transitions (the only places that touch counters and heaps) --

    cdef void _leave(self, Message m):
        if m.state == S_READY:
            self.n_ready -= 1
        elif m.state == S_DELAYED:
            self.n_delayed -= 1
        elif m.state == S_LEASED:
            self.n_leased -= 1
        m.gen += 1  # every heap entry of the old state is stale from now on

    cdef int _to_ready(self, Message m) except -1:
        self._leave(m)
        m.state = S_READY
        m.due = 0
        self.n_ready += 1
        self.ready_heap.push(m.priority, m.seq, m.gen)
        return 0

    cdef int _to_delayed(self, Message m, int64_t visible_at) except -1:
        self._leave(m)
        m.state = S_DELAYED
        m.due = visible_at
        self.n_delayed += 1
        self.delayed_heap.push(visible_at, m.seq, m.gen)
        return 0

    cdef int _to_leased(self, Message m, int64_t lease_until) except -1:
        self._leave(m)
        m.state = S_LEASED
        m.due = lease_until
        self.n_leased += 1
        self.lease_heap.push(lease_until, m.seq, m.gen)
        return 0

    cdef int _to_dlq(self, Message m, int64_t now) except -1:
        self._leave(m)
        del self.msgs[m.seq]
        m.state = S_DLQ
        m.due = now
        self.total_dead += 1
        if self.dlq_max == 0:
            m.state = S_GONE
            return 0
        self.dlq[m.seq] = m
        while len(self.dlq) > self.dlq_max:
            evicted = <Message>self.dlq.popitem(last=False)[1]
            evicted.state = S_GONE
        return 0

    cdef int _remove(self, Message m) except -1:
        self._leave(m)
        del self.msgs[m.seq]
        m.state = S_GONE
        return 0

    cdef Message _live(self, Entry* e, int state):
        """The message an entry stands for, or None when the entry is stale."""
        cdef Message m = self.msgs.get(e.seq)
        if m is None or m.gen != e.gen or m.state != state:
            return None
        return m

    # -- time --

    cpdef int64_t advance(self, int64_t now) except? -1:
        """Apply everything that became due by ``now``; returns the clock used."""
        cdef Entry e
        cdef Message m
        if now < self.clock:
            now = self.clock  # never go back: the state already reflects the later time
        else:
            self.clock = now
        while self.delayed_heap.n and self.delayed_heap.data[0].k1 <= now:
            e = self.delayed_heap.pop()
            m = self._live(&e, S_DELAYED)
            if m is not None:
                self._to_ready(m)
        while self.lease_heap.n and self.lease_heap.data[0].k1 <= now:
            e = self.lease_heap.pop()
            m = self._live(&e, S_LEASED)
            if m is not None:
                self.total_expired += 1
                if self.max_deliveries and <int64_t>m.delivery_count >= self.max_deliveries:
                    self._to_dlq(m, e.k1)
                else:
                    self._to_ready(m)
        while self.dedup_heap and self.dedup_heap[0][0] <= now:
            expires_at, key = heapq.heappop(self.dedup_heap)
            entry = self.dedup.get(key)
            if entry is not None and entry[1] == expires_at:
                del self.dedup[key]
        return now

    def next_due(self, int64_t now):
        """The earliest time after ``now`` at which a delayed message becomes
        ready or a lease lapses, or None. A blocked dequeue sleeps until then.
        (May be early when a stale heap entry is on top: a harmless extra wake.)"""
        now = self.advance(now)
        best = None
        if self.delayed_heap.n:
            best = self.delayed_heap.data[0].k1
        if self.lease_heap.n and (best is None or self.lease_heap.data[0].k1 < best):
            best = self.lease_heap.data[0].k1
        return best

    # -- writes --

    def enqueue(self, bytes payload, int priority, int64_t now, int64_t delay_ms=0,
                dedup_key=None, int64_t dedup_window_ms=DEFAULT_DEDUP_WINDOW_MS):
        """Add a message; returns its seq (or the first seq for a live dedup key).

        >>> q = PriorityQueue()
        >>> q.enqueue(b"a", 0, now=0, dedup_key="k"), q.enqueue(b"b", 0, now=5, dedup_key="k")
        (1, 1)
        """
        cdef Message m
        if priority < 0 or priority > 255:
            raise ValueError("priority must be 0..255")
        if delay_ms < 0 or dedup_window_ms < 0:
            raise ValueError("delay_ms and dedup_window_ms must be >= 0")
        if dedup_key is None and delay_ms == 0:
            return self.enqueue_ready(payload, priority, now)
        now = self.advance(now)
        if dedup_key is not None:
            entry = self.dedup.get(dedup_key)
            if entry is not None:
                return entry[0]
        self.last_seq += 1
        m = _new_message(self.last_seq, payload, priority, now, 0)
        self.msgs[m.seq] = m
        if delay_ms > 0:
            self._to_delayed(m, now + delay_ms)
        else:
            self._to_ready(m)
        self.total_enqueued += 1
        if dedup_key is not None and dedup_window_ms > 0:
            self.dedup[dedup_key] = (m.seq, now + dedup_window_ms)
            heapq.heappush(self.dedup_heap, (now + dedup_window_ms, dedup_key))
        return m.seq

    cdef uint64_t enqueue_ready(self, bytes payload, int priority, int64_t now) except 0:
        """``enqueue`` without delay or dedup key (priority already 0..255): the common case,
        shared with the C fast path of QUEUE_ENQUEUE (flo_core/core.pyx). Returns the seq."""
        cdef Message m
        now = self.advance(now)
        self.last_seq += 1
        m = _new_message(self.last_seq, payload, priority, now, 0)
        self.msgs[m.seq] = m
        self._to_ready(m)
        self.total_enqueued += 1
        return m.seq

    def dequeue(self, Py_ssize_t count, int64_t now, int64_t lease_ms=DEFAULT_LEASE_MS,
                Py_ssize_t max_bytes=DEFAULT_MAX_BATCH_BYTES):
        """Lease up to ``count`` ready messages until ``now + lease_ms``.

        Returns the leased :class:`Message` objects in delivery order (their
        ``delivery_count`` already includes this delivery). Encode them
        before the next call: they are live views.
        """
        cdef Message m
        cdef list out = []
        cdef Py_ssize_t total = 0
        if lease_ms <= 0:
            raise ValueError("lease_ms must be > 0")
        now = self.advance(now)
        while len(out) < count:
            m = self._lease_next(len(out), total, max_bytes, now, lease_ms)
            if m is None:
                break
            total += len(m.payload)
            out.append(m)
        self.total_delivered += len(out)
        self._maybe_compact()
        return out

    cdef Message _lease_next(self, Py_ssize_t taken, Py_ssize_t total, Py_ssize_t max_bytes, int64_t now,
                             int64_t lease_ms):
        """One step of a dequeue (already advanced to ``now``): lease the next ready message, or None
        when none is ready or it would take the answer past ``max_bytes`` (``total`` bytes in
        ``taken`` messages so far; the first one always goes)."""
        cdef Entry e
        cdef Message m
        while self.ready_heap.n:
            e = self.ready_heap.data[0]
            m = self._live(&e, S_READY)
            if m is None:
                self.ready_heap.pop()
                continue
            if taken and total + len(m.payload) > max_bytes:
                return None
            self.ready_heap.pop()
            m.delivery_count += 1
            m.lease_ms = lease_ms
            self._to_leased(m, now + lease_ms)
            return m
        return None

    cdef Py_ssize_t dequeue_wire(self, Py_ssize_t count, int64_t now, int64_t lease_ms, Py_ssize_t max_bytes,
                                 bytearray out) except -1:
        """:meth:`dequeue` for the C fast path of QUEUE_DEQUEUE (flo_core/core.pyx): appends the
        answer, :func:`encode_messages` of what it leased, to ``out``; returns how many.
        ``lease_ms`` > 0 (the caller checked)."""
        cdef Message m
        cdef Py_ssize_t taken = 0, total = 0, plen
        cdef Py_ssize_t head = PyByteArray_GET_SIZE(out)
        cdef uint8_t *b
        grow_by(out, 4)
        now = self.advance(now)
        while taken < count:
            m = self._lease_next(taken, total, max_bytes, now, lease_ms)
            if m is None:
                break
            plen = PyBytes_GET_SIZE(m.payload)
            total += plen
            taken += 1
            # [seq u64][payload bytes32][enqueued_at_ms i64][delivery_count u32][priority u8]
            b = grow_by(out, 25 + plen)
            st64(b, m.seq)
            st32(b + 8, <uint32_t>plen)
            memcpy(b + 12, PyBytes_AS_STRING(m.payload), plen)
            st64(b + 12 + plen, <uint64_t>m.enqueued_at_ms)
            st32(b + 20 + plen, m.delivery_count)
            b[24 + plen] = <uint8_t>m.priority
        st32(<uint8_t *>PyByteArray_AS_STRING(out) + head, <uint32_t>taken)
        self.total_delivered += taken
        self._maybe_compact()
        return taken

    def ack(self, seqs, int64_t now):
        """Remove delivered messages (leased, or lapsed/nacked but not yet
        redelivered: the work was done). Unknown seqs are ignored. Returns
        how many were removed."""
        cdef Py_ssize_t n = 0
        self.advance(now)
        for seq in seqs:
            n += self._ack_one(seq)
        self.total_acked += n
        self._maybe_compact()
        return n

    cdef bint _ack_one(self, seq) except -1:
        cdef Message m = self.msgs.get(seq)
        if m is not None and m.delivery_count > 0:
            self._remove(m)
            return True
        return False

    cdef Py_ssize_t ack_wire(self, const uint8_t *seqs, Py_ssize_t n, int64_t now) except -1:
        """:meth:`ack` of ``n`` little-endian u64 seqs (the wire's seq list), for the C fast path."""
        cdef Py_ssize_t i, acked = 0
        self.advance(now)
        for i in range(n):
            acked += self._ack_one(PyLong_FromUnsignedLongLong(ld64(seqs + 8 * i)))
        self.total_acked += acked
        self._maybe_compact()
        return acked

    def nack(self, seqs, int64_t now, int64_t delay_ms=0, bint to_dlq=False):
        """Give leased messages back: ready again (after ``delay_ms``), or
        to the DLQ when ``to_dlq`` or after ``max_deliveries`` deliveries.
        Seqs that are not leased are ignored. Returns how many were taken back."""
        cdef Py_ssize_t n = 0
        if delay_ms < 0:
            raise ValueError("delay_ms must be >= 0")
        now = self.advance(now)
        for seq in seqs:
            n += self._nack_one(seq, now, delay_ms, to_dlq)
        self._maybe_compact()
        return n

    cdef bint _nack_one(self, seq, int64_t now, int64_t delay_ms, bint to_dlq) except -1:
        cdef Message m = self.msgs.get(seq)
        if m is None or m.state != S_LEASED:
            return False
        if to_dlq or (self.max_deliveries and <int64_t>m.delivery_count >= self.max_deliveries):
            self._to_dlq(m, now)
        elif delay_ms > 0:
            self._to_delayed(m, now + delay_ms)
        else:
            self._to_ready(m)
        return True

    cdef Py_ssize_t nack_wire(self, const uint8_t *seqs, Py_ssize_t n, int64_t now) except -1:
        """:meth:`nack` without delay or DLQ flag of ``n`` little-endian u64 seqs, for the C fast path."""
        cdef Py_ssize_t i, taken = 0
        now = self.advance(now)
        for i in range(n):
            taken += self._nack_one(PyLong_FromUnsignedLongLong(ld64(seqs + 8 * i)), now, 0, False)
        self._maybe_compact()
        return taken

    def touch(self, seqs, int64_t now, int64_t lease_ms=0):
        """Extend the leases of messages still leased to ``now + lease_ms``
        (0: the length each was dequeued with; never shortens one). Returns
        the seqs whose lease was extended; a missing seq lost its lease
        (acked, lapsed, nacked)."""
        cdef Message m
        cdef list touched = []
        cdef int64_t length
        if lease_ms < 0:
            raise ValueError("lease_ms must be >= 0")
        now = self.advance(now)
        for seq in seqs:
            m = self.msgs.get(seq)
            if m is None or m.state != S_LEASED:
                continue
            length = lease_ms if lease_ms > 0 else m.lease_ms
            if now + length > m.due:
                self._to_leased(m, now + length)
            touched.append(m.seq)
        self._maybe_compact()
        return touched

    def dlq_requeue(self, seqs, int64_t now):
        """DLQ -> ready, keeping seq and priority, delivery_count reset to 0."""
        cdef Message m
        cdef Py_ssize_t n = 0
        self.advance(now)
        for seq in seqs:
            m = self.dlq.pop(seq, None)
            if m is None:
                continue
            m.state = S_GONE
            m.delivery_count = 0
            self.msgs[m.seq] = m
            self._to_ready(m)
            n += 1
        return n

    def dlq_delete(self, seqs):
        """Drop DLQ entries by seq; returns how many existed."""
        cdef Py_ssize_t n = 0
        for seq in seqs:
            m = self.dlq.pop(seq, None)
            if m is not None:
                (<Message>m).state = S_GONE
                n += 1
        return n

    def dlq_purge(self):
        """Empty the DLQ; returns how many entries it held."""
        cdef Message m
        n = len(self.dlq)
        for m in self.dlq.values():
            m.state = S_GONE
        self.dlq.clear()
        return n

    def purge(self, int64_t now):
        """Drop every message outside the DLQ (ready, delayed and leased: a
        later ack of a purged lease is a no-op). Seqs keep rising. Returns
        how many were dropped."""
        cdef Message m
        self.advance(now)
        n = len(self.msgs)
        for m in self.msgs.values():
            m.state = S_GONE
            m.gen += 1
        self.msgs.clear()
        self.ready_heap.clear()
        self.delayed_heap.clear()
        self.lease_heap.clear()
        self.n_ready = self.n_delayed = self.n_leased = 0
        return n

    # -- reads --

    def dedup_lookup(self, key, int64_t now):
        """The seq a live dedup key points at, or None."""
        self.advance(now)
        entry = self.dedup.get(key)
        return None if entry is None else entry[0]

    def has_ready(self, int64_t now):
        self.advance(now)
        return self.n_ready > 0

    def is_full(self):
        return len(self.msgs) >= self.max_messages

    def peek(self, Py_ssize_t count, int64_t now):
        """The next ``count`` ready messages in dequeue order, not leased."""
        cdef Entry e
        cdef Message m
        cdef list out = []
        cdef list taken = []
        self.advance(now)
        # Pop the first live entries, then push them back: O(count log n).
        while len(out) < count and self.ready_heap.n:
            e = self.ready_heap.pop()
            m = self._live(&e, S_READY)
            if m is not None:
                out.append(m)
                taken.append(e)
        for e in taken:
            self.ready_heap.push(e.k1, e.seq, e.gen)
        return out

    def dlq_list(self, Py_ssize_t limit, int64_t now):
        """The oldest ``limit`` DLQ entries, oldest first."""
        self.advance(now)
        out = []
        for m in self.dlq.values():
            if len(out) >= limit:
                break
            out.append(m)
        return out

    def get(self, uint64_t seq):
        """The message with that seq (any state) or None."""
        m = self.msgs.get(seq)
        return m if m is not None else self.dlq.get(seq)

    def stats(self, int64_t now):
        """Counters after advancing to ``now``."""
        self.advance(now)
        return {
            "ready": self.n_ready,
            "delayed": self.n_delayed,
            "leased": self.n_leased,
            "dlq": len(self.dlq),
            "last_seq": self.last_seq,
            "total_enqueued": self.total_enqueued,
            "total_delivered": self.total_delivered,
            "total_acked": self.total_acked,
            "total_dead": self.total_dead,
            "total_expired": self.total_expired,
            "dedup_keys": len(self.dedup),
        }

    def __len__(self):
        return len(self.msgs)

    # -- housekeeping --

    cdef int _maybe_compact(self) except -1:
        # Stale entries pile up when messages leave a heap other than by its
        # top (ack, nack, touch); rebuild a heap when they outnumber the live.
        if self.ready_heap.n > 2 * self.n_ready + 64:
            self._compact(self.ready_heap, S_READY)
        if self.lease_heap.n > 2 * self.n_leased + 64:
            self._compact(self.lease_heap, S_LEASED)
        if self.delayed_heap.n > 2 * self.n_delayed + 64:
            self._compact(self.delayed_heap, S_DELAYED)
        return 0

    cdef int _compact(self, _Heap h, int state) except -1:
        cdef Py_ssize_t i, j = 0
        for i in range(h.n):
            if self._live(&h.data[i], state) is not None:
                h.data[j] = h.data[i]
                j += 1
        h.n = j
        h.heapify()
        return 0

    # -- snapshots --

    def dump(self):
        """A msgpack-able picture of the whole queue (see :meth:`load`)."""
        cdef Message m
        rows = []
        for m in self.msgs.values():
            rows.append([m.seq, m.payload, m.priority, m.enqueued_at_ms, m.delivery_count, m.state, m.due,
                         m.lease_ms])
        dead = []
        for m in self.dlq.values():
            dead.append([m.seq, m.payload, m.priority, m.enqueued_at_ms, m.delivery_count, m.state, m.due])
        return {
            "config": [self.max_deliveries, self.dlq_max, self.max_messages],
            "last_seq": self.last_seq,
            "clock": self.clock,
            "totals": [self.total_enqueued, self.total_delivered, self.total_acked, self.total_dead,
                       self.total_expired],
            "msgs": rows,
            "dlq": dead,
            "dedup": [[k, v[0], v[1]] for k, v in self.dedup.items()],
        }

    @classmethod
    def load(cls, state):
        """Rebuild a queue from :meth:`dump` output."""
        cdef PriorityQueue q
        cdef Message m
        md, dlq_max, max_messages = state["config"]
        q = cls(md, dlq_max, max_messages)
        q.last_seq = state["last_seq"]
        q.clock = state["clock"]
        (q.total_enqueued, q.total_delivered, q.total_acked, q.total_dead,
         q.total_expired) = state["totals"]
        for seq, payload, prio, enq, dc, st, due, lease_ms in state["msgs"]:
            m = _new_message(seq, payload, prio, enq, dc)
            m.lease_ms = lease_ms
            q.msgs[seq] = m
            if st == S_READY:
                q._to_ready(m)
            elif st == S_DELAYED:
                q._to_delayed(m, due)
            else:
                q._to_leased(m, due)
        for seq, payload, prio, enq, dc, st, due in state["dlq"]:
            m = _new_message(seq, payload, prio, enq, dc)
            m.state = S_DLQ
            m.due = due
            q.dlq[seq] = m
        for key, seq, expires_at in state["dedup"]:
            q.dedup[key] = (seq, expires_at)
            q.dedup_heap.append((expires_at, key))
        heapq.heapify(q.dedup_heap)
        return q

    def message_rows(self):
        """The "msgs" rows of :meth:`dump`, one at a time: a snapshot streams them instead of listing them all.

        Nothing may change the queue while they are read (the forked snapshot child, or the loop thread)."""
        cdef Message m
        for m in self.msgs.values():
            yield [m.seq, m.payload, m.priority, m.enqueued_at_ms, m.delivery_count, m.state, m.due, m.lease_ms]

    def dump_without_messages(self):
        """:meth:`dump` with "msgs" empty; :meth:`message_rows` has them (:meth:`load` takes any iterable there)."""
        msgs, self.msgs = self.msgs, {}
        try:
            return self.dump()
        finally:
            self.msgs = msgs


# --- the registry: every queue of every namespace ------------------------------

cdef class Queues:
    """All queues, by (namespace, name). Attach as ``srv.queues``.

    Queues come into being on their first enqueue (:meth:`get_or_create`);
    reads of a never-used queue see nothing (:meth:`get` returns None).
    ``lines`` holds each queue's line of parked dequeues (flo_server.handlers.queue
    keeps it; the C dequeue of flo_core/core.pyx serves only a queue without one).

    >>> qs = Queues()
    >>> qs.get_or_create("default", "tasks").enqueue(b"x", 0, now=0)
    1
    >>> qs.names("default"), qs.get("default", "other")
    (['tasks'], None)
    """

    def __init__(self, int max_deliveries=DEFAULT_MAX_DELIVERIES, Py_ssize_t dlq_max=DEFAULT_DLQ_MAX,
                 Py_ssize_t max_messages=DEFAULT_MAX_MESSAGES, Py_ssize_t max_queues=100_000):
        self.by_ns = {}
        self.lines = {}
        self.max_deliveries = max_deliveries
        self.dlq_max = dlq_max
        self.max_messages = max_messages
        self.max_queues = max_queues

    def get(self, str ns, str name):
        d = self.by_ns.get(ns)
        return None if d is None else d.get(name)

    def get_or_create(self, str ns, str name):
        d = self.by_ns.get(ns)
        if d is None:
            d = self.by_ns[ns] = {}
        q = d.get(name)
        if q is None:
            q = d[name] = PriorityQueue(self.max_deliveries, self.dlq_max, self.max_messages)
        return q

    def can_create(self):
        """False once ``max_queues`` queues exist (the caller refuses)."""
        return self.count() < self.max_queues

    def count(self):
        return sum(len(d) for d in self.by_ns.values())

    def all_names(self):
        """Every ``(ns, name)`` (a slot move picks its queues from them)."""
        return [(ns, name) for ns, d in self.by_ns.items() for name in d]

    def adopt(self, str ns, str name, PriorityQueue q):
        """Put ``q`` under ``name``, replacing any queue there (a slot moved here)."""
        self.by_ns.setdefault(ns, {})[name] = q

    def names(self, str ns):
        """Queue names of a namespace, sorted."""
        d = self.by_ns.get(ns)
        return sorted(d) if d else []

    def drop(self, str ns, str name):
        d = self.by_ns.get(ns)
        if d is not None and d.pop(name, None) is not None:
            if not d:
                del self.by_ns[ns]
            return True
        return False

    def drop_namespace(self, str ns):
        return len(self.by_ns.pop(ns, {}))

    def namespaces(self):
        return sorted(self.by_ns)

    def dump(self):
        cdef PriorityQueue q
        return [[ns, name, q.dump()] for ns, d in self.by_ns.items() for name, q in d.items()]

    def load(self, state):
        self.by_ns = {}
        for ns, name, qstate in state or ():
            self.by_ns.setdefault(ns, {})[name] = PriorityQueue.load(qstate)

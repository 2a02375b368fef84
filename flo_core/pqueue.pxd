# C-level view of flo_core/pqueue.pyx (the leased priority queues), for the C fast paths of
# QUEUE_ENQUEUE, QUEUE_DEQUEUE, QUEUE_COMPLETE and QUEUE_FAIL in flo_core/core.pyx. The Python API is
# documented in the .pyx.
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t


cdef struct Entry:
    int64_t k1
    uint64_t seq
    uint32_t gen


cdef class _Heap:
    cdef Entry* data
    cdef Py_ssize_t n
    cdef Py_ssize_t cap

    cdef int push(self, int64_t k1, uint64_t seq, uint32_t gen) except -1
    cdef Entry pop(self)
    cdef void clear(self)
    cdef void _up(self, Py_ssize_t i) nogil
    cdef void _down(self, Py_ssize_t i) nogil
    cdef void heapify(self)


cdef class Message:
    cdef readonly uint64_t seq
    cdef readonly bytes payload
    cdef readonly int priority
    cdef readonly int64_t enqueued_at_ms
    cdef readonly uint32_t delivery_count
    cdef readonly int state
    cdef readonly int64_t due
    cdef readonly int64_t lease_ms
    cdef uint32_t gen


cdef class PriorityQueue:
    cdef dict msgs              # seq -> Message, every state but DLQ
    cdef object dlq             # OrderedDict seq -> Message, oldest first
    cdef _Heap ready_heap
    cdef _Heap delayed_heap
    cdef _Heap lease_heap
    cdef dict dedup             # key -> (seq, expires_at)
    cdef list dedup_heap        # (expires_at, key)
    cdef readonly Py_ssize_t n_ready
    cdef readonly Py_ssize_t n_delayed
    cdef readonly Py_ssize_t n_leased
    cdef readonly uint64_t last_seq
    cdef readonly int64_t clock
    cdef readonly uint64_t total_enqueued
    cdef readonly uint64_t total_delivered
    cdef readonly uint64_t total_acked
    cdef readonly uint64_t total_dead
    cdef readonly uint64_t total_expired
    cdef public int max_deliveries
    cdef public Py_ssize_t dlq_max
    cdef public Py_ssize_t max_messages

    cdef void _leave(self, Message m)
    cdef int _to_ready(self, Message m) except -1
    cdef int _to_delayed(self, Message m, int64_t visible_at) except -1
    cdef int _to_leased(self, Message m, int64_t lease_until) except -1
    cdef int _to_dlq(self, Message m, int64_t now) except -1
    cdef int _remove(self, Message m) except -1
    cdef Message _live(self, Entry* e, int state)
    cpdef int64_t advance(self, int64_t now) except? -1
    cdef uint64_t enqueue_ready(self, bytes payload, int priority, int64_t now) except 0
    cdef Message _lease_next(self, Py_ssize_t taken, Py_ssize_t total, Py_ssize_t max_bytes, int64_t now,
                             int64_t lease_ms)
    cdef Py_ssize_t dequeue_wire(self, Py_ssize_t count, int64_t now, int64_t lease_ms, Py_ssize_t max_bytes,
                                 bytearray out) except -1
    cdef bint _ack_one(self, seq) except -1
    cdef Py_ssize_t ack_wire(self, const uint8_t *seqs, Py_ssize_t n, int64_t now) except -1
    cdef bint _nack_one(self, seq, int64_t now, int64_t delay_ms, bint to_dlq) except -1
    cdef Py_ssize_t nack_wire(self, const uint8_t *seqs, Py_ssize_t n, int64_t now) except -1
    cdef int _maybe_compact(self) except -1
    cdef int _compact(self, _Heap h, int state) except -1


cdef class Queues:
    cdef dict by_ns                 # ns -> {name -> PriorityQueue}
    cdef public int max_deliveries
    cdef public Py_ssize_t dlq_max
    cdef public Py_ssize_t max_messages
    cdef public Py_ssize_t max_queues
    # ("q", ns, name) -> that queue's line of parked dequeues, {ticket: woken} oldest first
    # (flo_server.handlers.queue keeps them; the C dequeue takes only from a queue without one)
    cdef readonly dict lines

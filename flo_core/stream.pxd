# Stream's C-level declaration, so ServerCore (flo_core/core.pyx) and RespCore can append records
# straight from the request bytes (append_wire) with the id the handler would pick (next_id_of).
from libc.stdint cimport uint8_t, uint32_t, uint64_t


cdef struct Meta:
    uint64_t ts
    uint64_t seq
    uint64_t off     # where this record's blob starts in the data buffer
    uint32_t blen    # blob length: [payload bytes32][header_count u32][k bytes32][v bytes32]...
    uint32_t plen    # payload length (the blob's first field)


cdef class Stream:
    cdef Meta *meta
    cdef Py_ssize_t head, n, cap          # live records are meta[head:n]
    cdef uint8_t *data
    cdef uint64_t dlen, dcap              # data buffer used / allocated
    cdef readonly uint64_t first_ord      # ordinal of meta[head]
    cdef readonly uint64_t last_ts, last_seq  # the last id ever given (survives trims)
    cdef readonly uint64_t total_bytes    # payload + header bytes of live records
    cdef readonly str name
    cdef bytes key_prefix                 # [tier 0][partition 0][key_present 1][key bytes32]
    cdef public uint64_t max_len, max_age_ms, max_bytes  # retention; 0 = unlimited
    cdef public dict groups               # name -> Group
    cdef public uint64_t created_ms

    cdef void next_id_c(self, uint64_t now, uint64_t count, uint64_t *ts, uint64_t *seq) noexcept
    cdef uint64_t append_wire(self, uint64_t now, uint64_t ts, uint64_t seq, uint32_t count,
                              const uint8_t *recs, Py_ssize_t n) except? 0xFFFFFFFFFFFFFFFF
    cdef int _reserve(self, Py_ssize_t nrec, uint64_t nbytes) except -1
    cdef void _compact(self) noexcept
    cdef Py_ssize_t _lower(self, uint64_t ts, uint64_t seq) noexcept
    cdef Py_ssize_t _age_pos(self, uint64_t now) noexcept
    cdef bint _has(self, uint64_t ordinal) noexcept
    cdef bytes _encode_range(self, Py_ssize_t p0, Py_ssize_t p1)
    cdef bytes _encode_positions(self, list positions)


cdef inline void first_id(uint64_t now, uint64_t *ts, uint64_t *seq) noexcept:
    """A new stream's first id: ``(now, 0)``, or ``(0, 1)`` at a clock of 0 ((0, 0) is never an
    id: it means "the beginning" to readers)."""
    if now > 0:
        ts[0] = now
        seq[0] = 0
    else:
        ts[0] = 0
        seq[0] = 1


cdef inline void next_id_of(Stream s, uint64_t now, uint64_t count, uint64_t *ts, uint64_t *seq) noexcept:
    """The id the next append of ``count`` records gets; ``s`` None is a stream not created yet."""
    if s is None:
        first_id(now, ts, seq)
    else:
        s.next_id_c(now, count, ts, seq)


# The wire form of one STREAM_APPEND record, as the handler reads it:
# [payload bytes32][header_count u16] header_count x ([key str16][value str16]).
# Streams' registry stays a Python class: ServerCore looks streams up in ``Streams.by_ns``.

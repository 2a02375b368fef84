# Stream's C-level declaration, so ServerCore (flo_core/core.pyx) can append a STREAM_APPEND's
# records straight from the request bytes (append_wire) with the id the handler would pick (next_id_c).
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


# The wire form of one STREAM_APPEND record, as the handler reads it:
# [payload bytes32][header_count u16] header_count x ([key str16][value str16]).
# Streams' registry stays a Python class: ServerCore looks streams up in ``Streams.by_ns``.

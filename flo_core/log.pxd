from libc.stdint cimport uint8_t, uint32_t, uint64_t


cdef class LogReader:
    cdef readonly object directory
    cdef list _segments          # [(first_lsn, path)], sorted
    cdef Py_ssize_t _seg_index
    cdef bytes _buf
    cdef Py_ssize_t _pos
    cdef uint64_t _prev_lsn
    cdef uint64_t _from_lsn
    cdef uint64_t _seg_base
    cdef uint64_t _seg_limit     # first LSN of the next segment (0 = none)
    cdef readonly object path     # segment of the record just yielded
    cdef readonly Py_ssize_t offset
    cdef readonly uint64_t last_lsn
    cdef readonly uint64_t first_lsn
    cdef readonly Py_ssize_t records
    cdef readonly Py_ssize_t bytes_read
    cdef readonly object torn      # None or (path, offset, reason)
    cdef readonly bint done

    cdef bint _open_next(self) except -1


cdef class LogWriter:
    cdef readonly object directory
    cdef readonly object segment_path
    cdef readonly uint64_t segment_bytes
    cdef readonly uint64_t segment_first_lsn
    cdef readonly uint64_t segment_size
    cdef readonly uint64_t synced_size   # bytes of the open segment covered by the last fdatasync
    cdef readonly uint64_t last_lsn
    cdef readonly uint64_t flushed_lsn
    cdef readonly uint64_t synced_lsn
    cdef readonly uint64_t bytes_appended
    cdef readonly object truncated   # None or (path, offset, dropped_bytes) of a torn tail cut at open
    cdef int _fd
    cdef object _fd_lock
    cdef uint8_t *_buf
    cdef Py_ssize_t _len
    cdef Py_ssize_t _cap
    cdef uint64_t _pending_first_lsn
    cdef bint _closed

    cdef int _reserve(self, Py_ssize_t extra) except -1
    # one record from C (ServerCore's fast path); same checks as append()
    cdef uint64_t append_c(self, uint8_t kind, const uint8_t *payload, Py_ssize_t n) except 0
    cdef int _open_segment(self, uint64_t first_lsn, bint create) except -1
    cdef int _rotate(self, uint64_t first_lsn) except -1

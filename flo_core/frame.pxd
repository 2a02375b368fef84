from libc.stdint cimport uint8_t, uint32_t, uint64_t


cdef class FrameReader:
    cdef bytearray _buf
    cdef Py_ssize_t _start
    cdef bint _is_request
    cdef bint _check_crc
    cdef uint32_t _max

    cpdef list feed(self, data)
    cdef Py_ssize_t _parse(self, const uint8_t *p, Py_ssize_t n, list out) except -1
    # one complete, checked frame; the base class appends (id, code, payload) to ``out``
    cdef int _on_frame(self, uint64_t rid, uint32_t code, const uint8_t *payload, uint32_t n, list out) except -1


cpdef append_reply(bytearray buf, uint64_t request_id, uint32_t status, data)

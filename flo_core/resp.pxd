# RespParser's declaration and the RESP helpers shared (inline) by flo_core/resp.pyx and
# flo_core/respcore.pyx: Redis's integer parsing/formatting and the reply primitives.
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from libc.string cimport memcpy
from libc.stdint cimport uint8_t

from flo_core.wirefmt cimport grow_by


cdef class RespParser:
    cdef bytearray _buf
    cdef Py_ssize_t _start
    cdef Py_ssize_t _max_bulk
    cdef Py_ssize_t _max_args
    cdef Py_ssize_t _max_command
    # state of a multibulk command that is not complete yet
    cdef list _args          # arguments parsed so far, None when between commands
    cdef Py_ssize_t _left    # arguments still expected
    cdef Py_ssize_t _bulk    # length of the bulk being awaited, -1 = expecting a '$' line
    cdef Py_ssize_t _size    # argument bytes so far

    cdef _fail(self, str message, list out)
    cdef Py_ssize_t _parse(self, const uint8_t *p, Py_ssize_t n, list out) except -1
    # one complete command: the parser appends it to ``out``; RespCore runs it instead
    cdef int _emit(self, list args, list out) except -1
    # a whole command at ``p`` served without parsing it into a list: the bytes it took, 0 = none
    cdef Py_ssize_t _quick(self, const uint8_t *p, Py_ssize_t n) except -1


cdef inline bint _parse_ll(const uint8_t *p, Py_ssize_t n, long long *out) noexcept nogil:
    """Redis's string2ll: optional '-', digits, no leading zeros, no spaces, fits in 63 bits."""
    cdef Py_ssize_t i = 0
    cdef bint neg = False
    cdef unsigned long long v = 0
    if n <= 0 or n > 20:
        return False
    if n == 1 and p[0] == b'0':
        out[0] = 0
        return True
    if p[0] == b'-':
        neg = True
        i = 1
        if n == 1:
            return False
    if p[i] < b'1' or p[i] > b'9':
        return False
    while i < n:
        if p[i] < b'0' or p[i] > b'9':
            return False
        if v > 922337203685477580ULL:
            return False
        v = v * 10 + (p[i] - 48)
        if v > 9223372036854775808ULL:
            return False
        i += 1
    if neg:
        out[0] = -<long long>(v - 1) - 1
        return True
    if v > 9223372036854775807ULL:
        return False
    out[0] = <long long>v
    return True




cdef inline Py_ssize_t _fmt_ll(char *b, long long v) noexcept nogil:
    """Decimal text of v into b (>= 21 bytes); returns its length."""
    cdef char tmp[24]
    cdef Py_ssize_t i = 0, j = 0
    cdef unsigned long long u
    if v < 0:
        u = <unsigned long long>(-(v + 1)) + 1
        b[0] = b'-'
        j = 1
    else:
        u = <unsigned long long>v
    while True:
        tmp[i] = <char>(48 + u % 10)
        u //= 10
        i += 1
        if u == 0:
            break
    while i > 0:
        i -= 1
        b[j] = tmp[i]
        j += 1
    return j


cdef inline char *_grow(bytearray buf, Py_ssize_t extra) except NULL:
    return <char *>grow_by(buf, extra)


cdef inline void _shrink(bytearray buf, Py_ssize_t unused):
    if unused:
        PyByteArray_Resize(buf, PyByteArray_GET_SIZE(buf) - unused)


cdef inline int _header(bytearray buf, char kind, long long n) except -1:
    cdef char *w = _grow(buf, 24)
    cdef Py_ssize_t k
    w[0] = kind
    k = _fmt_ll(w + 1, n)
    w[1 + k] = b'\r'
    w[2 + k] = b'\n'
    _shrink(buf, 24 - (k + 3))
    return 0


cdef inline int _line(bytearray buf, char kind, const char *s, Py_ssize_t n) except -1:
    cdef char *w = _grow(buf, n + 3)
    w[0] = kind
    memcpy(w + 1, s, n)
    w[n + 1] = b'\r'
    w[n + 2] = b'\n'
    return 0


cdef inline int _bulk(bytearray buf, const char *s, Py_ssize_t n) except -1:
    cdef char *w = _grow(buf, n + 26)
    cdef Py_ssize_t k
    w[0] = b'$'
    k = _fmt_ll(w + 1, n)
    w[1 + k] = b'\r'
    w[2 + k] = b'\n'
    memcpy(w + 3 + k, s, n)
    w[3 + k + n] = b'\r'
    w[4 + k + n] = b'\n'
    _shrink(buf, 26 - (k + 5))
    return 0



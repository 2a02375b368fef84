# Little-endian loads/stores and the frame CRC, shared by the .pyx modules of flo_core (inline, no symbols).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize

cdef extern from "Python.h":
    ctypedef struct PyByteArrayObject:
        Py_ssize_t ob_alloc  # bytes allocated (the size plus the trailing NUL, and any slack)

cdef extern from "fastcrc.h" nogil:
    # zlib's crc32, folded with PCLMULQDQ for spans >= 64 bytes (flo_core/fastcrc.h)
    unsigned long crc32 "flo_crc32"(unsigned long crc, const unsigned char *buf, size_t len)

cdef extern from "slotcrc.h" nogil:
    # the cluster slot of [ns][key] (flo_core/slotcrc.h, the rule of flo_core/slots.py); -1: too long
    int key_slot "flo_key_slot"(const uint8_t *ns, size_t nslen, const uint8_t *key, size_t klen)

cdef enum:
    HEADER = 32
    VERSION = 2
    MAGIC = 0x004F4C46

cdef inline uint64_t table_hash() noexcept nogil:
    return 0x2FBA7DD9AE941830ULL

cdef inline uint16_t ld16(const uint8_t *p) noexcept nogil:
    return <uint16_t>p[0] | (<uint16_t>p[1] << 8)

cdef inline uint32_t ld32(const uint8_t *p) noexcept nogil:
    return <uint32_t>p[0] | (<uint32_t>p[1] << 8) | (<uint32_t>p[2] << 16) | (<uint32_t>p[3] << 24)

cdef inline uint64_t ld64(const uint8_t *p) noexcept nogil:
    return <uint64_t>ld32(p) | (<uint64_t>ld32(p + 4) << 32)

cdef inline void st32(uint8_t *p, uint32_t v) noexcept nogil:
    p[0] = <uint8_t>(v & 0xFF)
    p[1] = <uint8_t>((v >> 8) & 0xFF)
    p[2] = <uint8_t>((v >> 16) & 0xFF)
    p[3] = <uint8_t>(v >> 24)

cdef inline void st16(uint8_t *p, uint16_t v) noexcept nogil:
    p[0] = v & 0xFF
    p[1] = (v >> 8) & 0xFF

cdef inline void st64(uint8_t *p, uint64_t v) noexcept nogil:
    st32(p, <uint32_t>(v & 0xFFFFFFFFU))
    st32(p + 4, <uint32_t>(v >> 32))

cdef inline void request_header(uint8_t *h, uint64_t rid, uint32_t op, uint8_t flags, uint32_t n) noexcept nogil:
    # a request frame's 32-byte header for an ``n``-byte payload, all but its CRC (bytes 16-19: frame_crc)
    st32(h, MAGIC)
    st32(h + 4, n)
    st64(h + 8, rid)
    h[20] = op & 0xFF
    h[21] = op >> 8
    h[22] = VERSION
    h[23] = flags
    st64(h + 24, table_hash())


cdef inline uint32_t frame_crc(const uint8_t *hdr, const uint8_t *data, size_t n) noexcept nogil:
    # CRC-32 over header bytes 0-15, 20-31 and the payload (flo-wire-v2 §1.5)
    cdef unsigned long c = crc32(0, hdr, 16)
    c = crc32(c, hdr + 20, 12)
    if n:
        c = crc32(c, data, n)
    return <uint32_t>c


cdef inline bint utf8_ok(const uint8_t *p, Py_ssize_t n) noexcept nogil:
    """Strict UTF-8, as Python's ``bytes.decode("utf-8")`` accepts it (no surrogates, overlongs, > U+10FFFF)."""
    cdef Py_ssize_t i = 0
    cdef uint8_t c, lo, hi
    cdef int k
    while i < n:
        c = p[i]
        if c < 0x80:
            i += 1
            continue
        lo = 0x80
        hi = 0xBF
        if 0xC2 <= c <= 0xDF:
            k = 1
        elif c == 0xE0:
            k = 2
            lo = 0xA0
        elif 0xE1 <= c <= 0xEC or c == 0xEE or c == 0xEF:
            k = 2
        elif c == 0xED:
            k = 2
            hi = 0x9F
        elif c == 0xF0:
            k = 3
            lo = 0x90
        elif 0xF1 <= c <= 0xF3:
            k = 3
        elif c == 0xF4:
            k = 3
            hi = 0x8F
        else:
            return False
        if i + k >= n:  # truncated sequence
            return False
        if p[i + 1] < lo or p[i + 1] > hi:
            return False
        if k >= 2 and (p[i + 2] & 0xC0) != 0x80:
            return False
        if k == 3 and (p[i + 3] & 0xC0) != 0x80:
            return False
        i += k + 1
    return True


cdef inline uint8_t *grow_by(bytearray buf, Py_ssize_t extra) except NULL:
    """Lengthen ``buf`` by ``extra`` bytes; a pointer to the first new byte.

    Why not ``PyByteArray_Resize(buf, size + extra)`` alone: CPython grows a bytearray by
    1/8 at most, and to the exact size when asked for more, so a read's answers of 4 KiB
    values reallocated (and copied) the whole buffer once per answer. Here the allocation
    at least doubles; the resize back to the wanted size keeps it (a shrink to more than
    half of the allocation only moves the size)."""
    cdef Py_ssize_t old = PyByteArray_GET_SIZE(buf)
    cdef Py_ssize_t size = old + extra
    cdef Py_ssize_t alloc = (<PyByteArrayObject *>buf).ob_alloc
    if size >= alloc and alloc > 0:
        PyByteArray_Resize(buf, size if size > 2 * alloc else 2 * alloc)
    PyByteArray_Resize(buf, size)
    return <uint8_t *>PyByteArray_AS_STRING(buf) + old

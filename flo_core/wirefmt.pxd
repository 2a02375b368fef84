# Little-endian loads/stores and the frame CRC, shared by the .pyx modules of flo_core (inline, no symbols).
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t

cdef extern from "zlib.h" nogil:
    unsigned long crc32(unsigned long crc, const unsigned char *buf, unsigned int len)

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

cdef inline void st64(uint8_t *p, uint64_t v) noexcept nogil:
    st32(p, <uint32_t>(v & 0xFFFFFFFFU))
    st32(p + 4, <uint32_t>(v >> 32))

cdef inline uint32_t frame_crc(const uint8_t *hdr, const uint8_t *data, size_t n) noexcept nogil:
    # CRC-32 over header bytes 0-15, 20-31 and the payload (flo-wire-v2 §1.5)
    cdef unsigned long c = crc32(0, hdr, 16)
    c = crc32(c, hdr + 20, 12)
    if n:
        c = crc32(c, data, <unsigned int>n)
    return <uint32_t>c

# msgpack encoders in C, in the smallest forms msgpack-python's Packer(use_bin_type=True) writes: the
# journal's records (flo_core/records.pxd) and the KV snapshot rows (flo_core.kv.KVStore.packed_rows)
# are byte for byte what Python would pack. Each writes at ``b`` (room is the caller's) and returns
# how many bytes it wrote. Inline: no symbols, no C-API import.
from libc.string cimport memcpy
from libc.stdint cimport uint8_t, uint64_t, int64_t


cdef inline Py_ssize_t _mp_tagged(uint8_t *b, uint8_t tag, uint64_t v, int w) noexcept:
    # ``tag`` then the low ``w`` bytes of ``v``, big endian (msgpack's fixed-width ints)
    cdef int i
    b[0] = tag
    for i in range(w):
        b[1 + i] = <uint8_t>(v >> (8 * (w - 1 - i)))
    return 1 + w


cdef inline Py_ssize_t _mp_uint(uint8_t *b, uint64_t v) noexcept:
    # msgpack unsigned int in the smallest form, as msgpack-python's Packer writes a non-negative int
    if v < 128:
        b[0] = <uint8_t>v
        return 1
    if v < 0x100:
        return _mp_tagged(b, 0xcc, v, 1)
    if v < 0x10000:
        return _mp_tagged(b, 0xcd, v, 2)
    if v < 0x100000000ULL:
        return _mp_tagged(b, 0xce, v, 4)
    return _mp_tagged(b, 0xcf, v, 8)


cdef inline Py_ssize_t _mp_len(uint8_t *b, Py_ssize_t n, uint8_t fix, uint8_t fix_limit, uint8_t c8,
                               uint8_t c16, uint8_t c32) noexcept:
    # a str/array header: fix form below fix_limit, then 8 (c8 != 0) / 16 / 32-bit lengths
    if n < fix_limit:
        b[0] = <uint8_t>(fix | n)
        return 1
    if c8 and n < 256:
        b[0] = c8
        b[1] = <uint8_t>n
        return 2
    if n < 65536:
        b[0] = c16
        b[1] = <uint8_t>(n >> 8)
        b[2] = <uint8_t>n
        return 3
    b[0] = c32
    b[1] = <uint8_t>(n >> 24)
    b[2] = <uint8_t>(n >> 16)
    b[3] = <uint8_t>(n >> 8)
    b[4] = <uint8_t>n
    return 5


cdef inline Py_ssize_t _mp_str(uint8_t *b, const uint8_t *p, Py_ssize_t n) noexcept:
    # msgpack str (fixstr / str8 / str16 / str32) of UTF-8 bytes
    cdef Py_ssize_t h = _mp_len(b, n, 0xa0, 32, 0xd9, 0xda, 0xdb)
    memcpy(b + h, p, n)
    return h + n


cdef inline Py_ssize_t _mp_array(uint8_t *b, Py_ssize_t n) noexcept:
    # msgpack array header (fixarray / array16 / array32)
    return _mp_len(b, n, 0x90, 16, 0, 0xdc, 0xdd)


cdef inline Py_ssize_t _mp_bin(uint8_t *b, const uint8_t *p, Py_ssize_t n) noexcept:
    # msgpack bin 8/16/32 (use_bin_type=True packs bytes this way)
    cdef Py_ssize_t h
    if n < 256:
        b[0] = 0xc4
        b[1] = <uint8_t>n
        h = 2
    elif n < 65536:
        b[0] = 0xc5
        b[1] = <uint8_t>(n >> 8)
        b[2] = <uint8_t>n
        h = 3
    else:
        b[0] = 0xc6
        b[1] = <uint8_t>(n >> 24)
        b[2] = <uint8_t>(n >> 16)
        b[3] = <uint8_t>(n >> 8)
        b[4] = <uint8_t>n
        h = 5
    memcpy(b + h, p, n)
    return h + n


cdef inline Py_ssize_t _mp_int(uint8_t *b, int64_t v) noexcept:
    # a signed int: non-negative ones as _mp_uint, negative ones as fixint / int8 / 16 / 32 / 64
    if v >= 0:
        return _mp_uint(b, <uint64_t>v)
    if v >= -32:
        b[0] = <uint8_t>(v & 0xff)
        return 1
    if v >= -128:
        return _mp_tagged(b, 0xd0, <uint64_t>v, 1)
    if v >= -32768:
        return _mp_tagged(b, 0xd1, <uint64_t>v, 2)
    if v >= -2147483648LL:
        return _mp_tagged(b, 0xd2, <uint64_t>v, 4)
    return _mp_tagged(b, 0xd3, <uint64_t>v, 8)


cdef inline Py_ssize_t _mp_int_size(int64_t v) noexcept:
    # the bytes _mp_int writes for v
    if -32 <= v < 128:
        return 1
    if -128 <= v < 256:
        return 2
    if -32768 <= v < 65536:
        return 3
    if -2147483648LL <= v < 4294967296LL:
        return 5
    return 9

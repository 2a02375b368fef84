# The one C encoder of the journal's ``kv.set`` record, shared by the two C fast paths
# (flo_core.core.ServerCore for Flo KV_PUT, flo_core.respcore.RespCore for RESP SET/INCR).
#
# The bytes are exactly what flo_server.persistence.pack_record("kv.set", (now, ns, key, value,
# expires_at)) makes (msgpack, use_bin_type=True), so the ``kv.set`` applier of
# flo_server/handlers/kv.py replays them like any other record. Inline: no symbols, no C-API import.
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from libc.string cimport memcpy
from libc.stdint cimport uint8_t, uint64_t, int64_t

from flo_core.log cimport LogWriter

cdef enum:
    RECORD_WRITE = 1      # log record kind of flo_server.persistence: msgpack [kind, args]
    RECORD_HEADER = 17    # LogWriter's per-record header (flo_core/log.pyx HDR)
    SCRATCH_KEEP = 65536  # a scratch buffer grown past this for one big value is given back


cdef inline Py_ssize_t _mp_uint(uint8_t *b, uint64_t v) noexcept:
    # msgpack unsigned int: positive fixint or uint64 (any width decodes the same)
    if v < 128:
        b[0] = <uint8_t>v
        return 1
    b[0] = 0xcf
    cdef int i
    for i in range(8):
        b[1 + i] = <uint8_t>(v >> (56 - 8 * i))
    return 9


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


cdef inline Py_ssize_t kv_set_record_max(Py_ssize_t nslen, Py_ssize_t klen, Py_ssize_t vlen) noexcept:
    """Upper bound of the encoded record's size."""
    return 9 + 9 + 2 + (nslen if nslen > 7 else 7) + 1 + 5 + klen + 5 + vlen + 9


cdef inline Py_ssize_t encode_kv_set(uint8_t *b, int64_t now, const uint8_t *nsb, Py_ssize_t nslen,
                                     const uint8_t *key, Py_ssize_t klen, const uint8_t *value,
                                     Py_ssize_t vlen, int64_t expires_at) noexcept:
    """``["kv.set", [now, ns, key, value, expires_at]]`` into ``b`` (>= kv_set_record_max bytes).

    ``nsb`` is the namespace's UTF-8 (nslen <= 255); "" is logged as "default", the name the store uses.
    """
    cdef Py_ssize_t n
    b[0] = 0x92  # [kind, args]
    b[1] = 0xa6  # "kv.set"
    memcpy(b + 2, b"kv.set", 6)
    b[8] = 0x95  # args: 5 items
    n = 9
    n += _mp_uint(b + n, <uint64_t>now)
    if nslen == 0:
        memcpy(b + n, b"\xa7default", 8)
        n += 8
    else:
        if nslen < 32:
            b[n] = <uint8_t>(0xa0 | nslen)
            n += 1
        else:
            b[n] = 0xd9
            b[n + 1] = <uint8_t>nslen
            n += 2
        memcpy(b + n, nsb, nslen)
        n += nslen
    n += _mp_bin(b + n, key, klen)
    n += _mp_bin(b + n, value, vlen)
    n += _mp_uint(b + n, <uint64_t>expires_at)
    return n


cdef inline uint64_t log_kv_set(LogWriter log, bytearray scratch, int64_t now, const uint8_t *nsb,
                                Py_ssize_t nslen, const uint8_t *key, Py_ssize_t klen,
                                const uint8_t *value, Py_ssize_t vlen, int64_t expires_at,
                                Py_ssize_t *logged) except 0:
    """Encode the record in ``scratch`` and append it with ``LogWriter.append_c``; returns its LSN.

    Adds the bytes appended (record + header) to ``logged[0]`` for ``journal.appended_raw``.
    """
    cdef Py_ssize_t need = kv_set_record_max(nslen, klen, vlen)
    cdef Py_ssize_t have = PyByteArray_GET_SIZE(scratch)
    if have < need:
        PyByteArray_Resize(scratch, need)
    cdef Py_ssize_t n = encode_kv_set(<uint8_t *>PyByteArray_AS_STRING(scratch), now, nsb, nslen,
                                      key, klen, value, vlen, expires_at)
    cdef uint64_t lsn = log.append_c(RECORD_WRITE, <const uint8_t *>PyByteArray_AS_STRING(scratch), n)
    logged[0] += n + RECORD_HEADER
    if need > SCRATCH_KEEP:
        PyByteArray_Resize(scratch, 256)
    return lsn

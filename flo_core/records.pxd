# The C encoders of the journal's ``kv.set``, ``s.append``, ``q.enq``, ``q.deq``, ``q.ack``, ``q.nack``, ``l.push`` and
# ``l.pop`` records, shared by the C fast paths (flo_core.core.ServerCore for Flo KV_PUT / KV_INCR / STREAM_APPEND /
# QUEUE_ENQUEUE / QUEUE_DEQUEUE / QUEUE_COMPLETE / QUEUE_FAIL, flo_core.respcore.RespCore for
# RESP SET/INCR/XADD/LPUSH/RPUSH/LPOP/RPOP).
#
# The bytes are exactly what flo_server.persistence.pack_record(kind, args) makes (msgpack,
# use_bin_type=True, ints in their smallest form), so the appliers of flo_server/handlers/ replay
# them like any other record. Inline: no symbols, no C-API import.
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from cpython.bytes cimport PyBytes_AS_STRING
from libc.string cimport memcpy
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t

from flo_core.log cimport LogWriter
from flo_core.wirefmt cimport ld64
from flo_core.mpack cimport _mp_uint, _mp_len, _mp_str, _mp_array, _mp_bin

cdef enum:
    RECORD_WRITE = 1      # log record kind of flo_server.persistence: msgpack [kind, args]
    RECORD_HEADER = 17    # LogWriter's per-record header (flo_core/log.pyx HDR)
    SCRATCH_KEEP = 65536  # a scratch buffer grown past this for one big value is given back


cdef inline Py_ssize_t _mp_ns(uint8_t *b, const uint8_t *nsb, Py_ssize_t nslen) noexcept:
    # the namespace as the store names it: "" is "default"
    if nslen == 0:
        memcpy(b, b"\xa7default", 8)
        return 8
    return _mp_str(b, nsb, nslen)


cdef inline Py_ssize_t kv_set_record_max(Py_ssize_t nslen, Py_ssize_t klen, Py_ssize_t vlen) noexcept:
    """Upper bound of the encoded record's size."""
    return 9 + 9 + 5 + (nslen if nslen > 7 else 7) + 1 + 5 + klen + 5 + vlen + 9


cdef inline Py_ssize_t _mp_record_head(uint8_t *b, const char *kind, Py_ssize_t klen, int nargs) noexcept:
    # a record is [kind, args]: fixarray(2), fixstr kind (< 32 bytes), fixarray(nargs) (< 16)
    b[0] = 0x92
    b[1] = <uint8_t>(0xa0 | klen)
    memcpy(b + 2, kind, klen)
    b[2 + klen] = <uint8_t>(0x90 | nargs)
    return 3 + klen


cdef inline Py_ssize_t encode_kv_set(uint8_t *b, int64_t now, const uint8_t *nsb, Py_ssize_t nslen,
                                     const uint8_t *key, Py_ssize_t klen, const uint8_t *value,
                                     Py_ssize_t vlen, int64_t expires_at) noexcept:
    """``["kv.set", [now, ns, key, value, expires_at]]`` into ``b`` (>= kv_set_record_max bytes).

    ``nsb`` is the namespace's UTF-8 (nslen <= 255); "" is logged as "default", the name the store uses.
    """
    cdef Py_ssize_t n
    n = _mp_record_head(b, b"kv.set", 6, 5)
    n += _mp_uint(b + n, <uint64_t>now)
    n += _mp_ns(b + n, nsb, nslen)
    n += _mp_bin(b + n, key, klen)
    n += _mp_bin(b + n, value, vlen)
    n += _mp_uint(b + n, <uint64_t>expires_at)
    return n


cdef inline uint8_t *_scratch(bytearray scratch, Py_ssize_t need) except NULL:
    if PyByteArray_GET_SIZE(scratch) < need:
        PyByteArray_Resize(scratch, need)
    return <uint8_t *>PyByteArray_AS_STRING(scratch)


cdef inline uint64_t _log_scratch(LogWriter log, bytearray scratch, Py_ssize_t n, Py_ssize_t need,
                                  Py_ssize_t *logged) except 0:
    """Append the record encoded in ``scratch[:n]``; give back a scratch grown past SCRATCH_KEEP."""
    cdef uint64_t lsn = log.append_c(RECORD_WRITE, <const uint8_t *>PyByteArray_AS_STRING(scratch), n)
    logged[0] += n + RECORD_HEADER
    if need > SCRATCH_KEEP:
        PyByteArray_Resize(scratch, 256)
    return lsn


cdef inline uint64_t log_kv_set(LogWriter log, bytearray scratch, int64_t now, const uint8_t *nsb,
                                Py_ssize_t nslen, const uint8_t *key, Py_ssize_t klen,
                                const uint8_t *value, Py_ssize_t vlen, int64_t expires_at,
                                Py_ssize_t *logged) except 0:
    """Encode the record in ``scratch`` and append it with ``LogWriter.append_c``; returns its LSN.

    Adds the bytes appended (record + header) to ``logged[0]``: the core asks the journal
    for its flush (``journal.flush_soon``) after a read batch that appended some.
    """
    cdef Py_ssize_t need = kv_set_record_max(nslen, klen, vlen)
    cdef Py_ssize_t n = encode_kv_set(_scratch(scratch, need), now, nsb, nslen, key, klen, value, vlen, expires_at)
    return _log_scratch(log, scratch, n, need, logged)


# --- s.append ----------------------------------------------------------------------------------
# Records arrive in STREAM_APPEND's wire form: [payload bytes32][hc u16] hc x ([k str16][v str16]).
# The Python handler logs them as [[payload, [[k, v], ...] or None], ...]: the same bytes, re-framed.


cdef inline Py_ssize_t stream_append_record_max(Py_ssize_t nslen, Py_ssize_t namelen, uint32_t count,
                                                Py_ssize_t recs_len) noexcept:
    """Upper bound of the encoded ``s.append`` record's size for ``recs_len`` bytes of wire records.

    Per record msgpack adds at most 3 bytes over the wire form (array + bin header vs the two
    length fields), per header pair at most 3 (array + two str headers vs two u16s), plus a
    record's headers-array header (3); a header pair is at least 4 wire bytes.
    """
    return 11 + 9 + 5 + (nslen if nslen > 7 else 7) + 5 + namelen + 9 + 9 + 5 + 9 * <Py_ssize_t>count + 2 * recs_len


cdef inline Py_ssize_t encode_stream_append(uint8_t *b, int64_t now, const uint8_t *nsb, Py_ssize_t nslen,
                                            const uint8_t *name, Py_ssize_t namelen, uint64_t ts,
                                            uint64_t seq, uint32_t count, const uint8_t *recs) noexcept:
    """``["s.append", [now, ns, name, ts, seq, [[payload, headers or None], ...]]]`` into ``b``
    (>= stream_append_record_max bytes). ``recs`` holds ``count`` checked wire records."""
    cdef Py_ssize_t n, pos = 0
    cdef uint32_t i, j, plen, hc, kl, vl
    n = _mp_record_head(b, b"s.append", 8, 6)
    n += _mp_uint(b + n, <uint64_t>now)
    n += _mp_ns(b + n, nsb, nslen)
    n += _mp_str(b + n, name, namelen)
    n += _mp_uint(b + n, ts)
    n += _mp_uint(b + n, seq)
    n += _mp_array(b + n, count)
    for i in range(count):
        plen = <uint32_t>recs[pos] | (<uint32_t>recs[pos + 1] << 8) | (<uint32_t>recs[pos + 2] << 16) | (<uint32_t>recs[pos + 3] << 24)
        b[n] = 0x92  # [payload, headers]
        n += 1
        n += _mp_bin(b + n, recs + pos + 4, plen)
        pos += 4 + plen
        hc = <uint32_t>recs[pos] | (<uint32_t>recs[pos + 1] << 8)
        pos += 2
        if hc == 0:
            b[n] = 0xc0  # None
            n += 1
            continue
        n += _mp_array(b + n, hc)
        for j in range(hc):
            b[n] = 0x92  # [k, v]
            n += 1
            kl = <uint32_t>recs[pos] | (<uint32_t>recs[pos + 1] << 8)
            n += _mp_str(b + n, recs + pos + 2, kl)
            pos += 2 + kl
            vl = <uint32_t>recs[pos] | (<uint32_t>recs[pos + 1] << 8)
            n += _mp_str(b + n, recs + pos + 2, vl)
            pos += 2 + vl
    return n


cdef inline uint64_t log_stream_append(LogWriter log, bytearray scratch, int64_t now, const uint8_t *nsb,
                                       Py_ssize_t nslen, const uint8_t *name, Py_ssize_t namelen,
                                       uint64_t ts, uint64_t seq, uint32_t count, const uint8_t *recs,
                                       Py_ssize_t recs_len, Py_ssize_t *logged) except 0:
    """Encode the ``s.append`` record in ``scratch`` and append it; returns its LSN (see log_kv_set)."""
    cdef Py_ssize_t need = stream_append_record_max(nslen, namelen, count, recs_len)
    cdef Py_ssize_t n = encode_stream_append(_scratch(scratch, need), now, nsb, nslen, name, namelen, ts, seq,
                                             count, recs)
    return _log_scratch(log, scratch, n, need, logged)


# --- q.enq -------------------------------------------------------------------------------------
# The common QUEUE_ENQUEUE (no delay, no dedup key): the handler logs
# srv.write("q.enq", now, ns, name, payload, priority, 0, None, dedup_window_ms).


cdef inline Py_ssize_t queue_enqueue_record_max(Py_ssize_t nslen, Py_ssize_t namelen, Py_ssize_t plen) noexcept:
    """Upper bound of the encoded ``q.enq`` record's size."""
    return 8 + 9 + 5 + (nslen if nslen > 7 else 7) + 5 + namelen + 5 + plen + 9 + 1 + 1 + 9


cdef inline Py_ssize_t encode_queue_enqueue(uint8_t *b, int64_t now, const uint8_t *nsb, Py_ssize_t nslen,
                                            const uint8_t *name, Py_ssize_t namelen, const uint8_t *payload,
                                            Py_ssize_t plen, uint64_t priority, uint64_t window) noexcept:
    """``["q.enq", [now, ns, name, payload, priority, 0, None, window]]`` into ``b``
    (>= queue_enqueue_record_max bytes)."""
    cdef Py_ssize_t n
    n = _mp_record_head(b, b"q.enq", 5, 8)
    n += _mp_uint(b + n, <uint64_t>now)
    n += _mp_ns(b + n, nsb, nslen)
    n += _mp_str(b + n, name, namelen)
    n += _mp_bin(b + n, payload, plen)
    n += _mp_uint(b + n, priority)
    b[n] = 0x00  # delay_ms 0
    b[n + 1] = 0xc0  # dedup_key None
    n += 2
    n += _mp_uint(b + n, window)
    return n


cdef inline uint64_t log_queue_enqueue(LogWriter log, bytearray scratch, int64_t now, const uint8_t *nsb,
                                       Py_ssize_t nslen, const uint8_t *name, Py_ssize_t namelen,
                                       const uint8_t *payload, Py_ssize_t plen, uint64_t priority,
                                       uint64_t window, Py_ssize_t *logged) except 0:
    """Encode the ``q.enq`` record in ``scratch`` and append it; returns its LSN (see log_kv_set)."""
    cdef Py_ssize_t need = queue_enqueue_record_max(nslen, namelen, plen)
    cdef Py_ssize_t n = encode_queue_enqueue(_scratch(scratch, need), now, nsb, nslen, name, namelen, payload,
                                             plen, priority, window)
    return _log_scratch(log, scratch, n, need, logged)


# --- q.deq / q.ack / q.nack -----------------------------------------------------------------
# The C QUEUE_DEQUEUE / QUEUE_COMPLETE / QUEUE_FAIL (flo_core/core.pyx) log what the handlers log:
# srv.write("q.deq", clock, ns, name, count, lease_ms), srv.write("q.ack", clock, ns, name, seqs) and
# srv.write("q.nack", clock, ns, name, seqs, 0, False); seqs arrive as the wire's little-endian u64s.


cdef inline Py_ssize_t _mp_queue_head(uint8_t *b, const char *kind, Py_ssize_t kindlen, int nargs, int64_t now,
                                      const uint8_t *nsb, Py_ssize_t nslen, const uint8_t *name,
                                      Py_ssize_t namelen) noexcept:
    # [kind, [now, ns, name, ...]]: what every q.* record starts with
    cdef Py_ssize_t n = _mp_record_head(b, kind, kindlen, nargs)
    n += _mp_uint(b + n, <uint64_t>now)
    n += _mp_ns(b + n, nsb, nslen)
    n += _mp_str(b + n, name, namelen)
    return n


cdef inline Py_ssize_t _queue_head_max(Py_ssize_t nslen, Py_ssize_t namelen) noexcept:
    return 10 + 9 + 5 + (nslen if nslen > 7 else 7) + 5 + namelen


cdef inline uint64_t log_queue_dequeue(LogWriter log, bytearray scratch, int64_t now, const uint8_t *nsb,
                                       Py_ssize_t nslen, const uint8_t *name, Py_ssize_t namelen,
                                       uint64_t count, uint64_t lease_ms, Py_ssize_t *logged) except 0:
    """``["q.deq", [now, ns, name, count, lease_ms]]``; returns its LSN (see log_kv_set)."""
    cdef Py_ssize_t need = _queue_head_max(nslen, namelen) + 18
    cdef uint8_t *b = _scratch(scratch, need)
    cdef Py_ssize_t n = _mp_queue_head(b, b"q.deq", 5, 5, now, nsb, nslen, name, namelen)
    n += _mp_uint(b + n, count)
    n += _mp_uint(b + n, lease_ms)
    return _log_scratch(log, scratch, n, need, logged)


cdef inline uint64_t log_queue_seqs(LogWriter log, bytearray scratch, bint nack, int64_t now, const uint8_t *nsb,
                                    Py_ssize_t nslen, const uint8_t *name, Py_ssize_t namelen,
                                    const uint8_t *seqs, Py_ssize_t count, Py_ssize_t *logged) except 0:
    """``["q.ack", [now, ns, name, seqs]]``, or with ``nack`` ``["q.nack", [now, ns, name, seqs, 0, False]]``
    (no delay, not to the DLQ); ``seqs`` holds ``count`` little-endian u64s. Returns its LSN (see log_kv_set)."""
    cdef Py_ssize_t i, need = _queue_head_max(nslen, namelen) + 5 + 9 * count + 2
    cdef uint8_t *b = _scratch(scratch, need)
    cdef Py_ssize_t n
    if nack:
        n = _mp_queue_head(b, b"q.nack", 6, 6, now, nsb, nslen, name, namelen)
    else:
        n = _mp_queue_head(b, b"q.ack", 5, 4, now, nsb, nslen, name, namelen)
    n += _mp_array(b + n, count)
    for i in range(count):
        n += _mp_uint(b + n, ld64(seqs + 8 * i))
    if nack:
        b[n] = 0x00  # delay_ms 0
        b[n + 1] = 0xc2  # to_dlq False
        n += 2
    return _log_scratch(log, scratch, n, need, logged)


# --- l.push / l.pop -------------------------------------------------------------------------
# RESP LPUSH/RPUSH log srv.write("l.push", ns, key, values, left); LPOP/RPOP without a count
# log srv.write("l.pop", ns, key, 1, left) (flo_server.handlers.list appliers).


cdef inline uint64_t log_list_push(LogWriter log, bytearray scratch, const uint8_t *nsb, Py_ssize_t nslen,
                                   bytes key, list values, bint left, Py_ssize_t *logged) except 0:
    """``["l.push", [ns, key, values, left]]``; returns its LSN (see log_kv_set)."""
    cdef Py_ssize_t i, count = len(values), need = 9 + 3 + (nslen if nslen > 7 else 7) + 5 + 5 + len(key) + 5 + 1
    cdef bytes v
    for i in range(count):
        need += 5 + len(<bytes>values[i])
    cdef uint8_t *b = _scratch(scratch, need)
    cdef Py_ssize_t n = _mp_record_head(b, b"l.push", 6, 4)
    n += _mp_ns(b + n, nsb, nslen)
    n += _mp_bin(b + n, <const uint8_t *>PyBytes_AS_STRING(key), len(key))
    n += _mp_array(b + n, count)
    for i in range(count):
        v = <bytes>values[i]
        n += _mp_bin(b + n, <const uint8_t *>PyBytes_AS_STRING(v), len(v))
    b[n] = 0xc3 if left else 0xc2
    return _log_scratch(log, scratch, n + 1, need, logged)


cdef inline uint64_t log_list_pop(LogWriter log, bytearray scratch, const uint8_t *nsb, Py_ssize_t nslen,
                                  bytes key, uint64_t count, bint left, Py_ssize_t *logged) except 0:
    """``["l.pop", [ns, key, count, left]]``; returns its LSN (see log_kv_set)."""
    cdef Py_ssize_t need = 9 + 3 + (nslen if nslen > 7 else 7) + 5 + 5 + len(key) + 9 + 1
    cdef uint8_t *b = _scratch(scratch, need)
    cdef Py_ssize_t n = _mp_record_head(b, b"l.pop", 5, 4)
    n += _mp_ns(b + n, nsb, nslen)
    n += _mp_bin(b + n, <const uint8_t *>PyBytes_AS_STRING(key), len(key))
    n += _mp_uint(b + n, count)
    b[n] = 0xc3 if left else 0xc2
    return _log_scratch(log, scratch, n + 1, need, logged)

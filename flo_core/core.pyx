# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
# distutils: libraries = z
"""ServerCore: the per-connection request loop in C, sans-IO.

``feed(data, now)`` reassembles frames and runs each one, appending every
answer to ``out`` in request order. Plain KV_GET and KV_PUT (no transaction,
no wait that has to park, no guard that fails) run here against the KV store
- the hot path. Everything else, and any case the fast path does not cover,
goes to the Python dispatcher ``slow(rid, op, payload)``, which returns
``(status, data)`` or a coroutine; coroutines are collected in ``deferred``
as ``(rid, coro)`` for the edge to schedule.

The fast KV_PUT does what the ``kv.set`` applier does (journal append, store
write, wake waiters), so live writes and replay stay identical.
"""

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from libc.string cimport memcpy
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t

from flo_core.frame cimport FrameReader, append_reply
from flo_core.kv cimport KVStore, Entry
from flo_core.log cimport LogWriter
from flo_core.wirefmt cimport HEADER, VERSION, MAGIC, table_hash, ld16, ld32, ld64, st32, st64, frame_crc
from flo_core.records cimport log_kv_set

cdef enum:
    OP_KV_PUT = 0x100
    OP_KV_GET = 0x101
    MAX_KV_VALUE = 16 * 1024 * 1024

# NOT_FOUND + reason 13 (the one kv.get turns into None), ran 0
cdef bytes NOT_FOUND_BODY = b"\x0d\x00\x00key not found"
cdef str KIND_SET = "kv.set"


cdef class ServerCore(FrameReader):
    """One connection's request loop. ``out`` holds answers not yet written."""

    cdef public bytearray out
    cdef public list deferred
    cdef public object slow
    cdef public object srv
    cdef public bint fast
    cdef KVStore kv
    cdef object waiting  # the waiters' key dict: notify only when someone waits
    cdef dict _ns_cache
    cdef int64_t _now
    cdef LogWriter _log  # set for one run() when the journal is on disk and healthy
    cdef Py_ssize_t _logged  # bytes appended through _log in this run()
    cdef bytearray _rec  # scratch buffer for one log record

    def __init__(self, srv, slow, max_payload=16 * 1024 * 1024 + 65536, bint fast=True):
        FrameReader.__init__(self, True, max_payload, True)
        self.srv = srv
        self.slow = slow
        self.kv = srv.kv
        self.waiting = srv.waiters._by_key
        self.out = bytearray()
        self.deferred = []
        self.fast = fast
        self._ns_cache = {}
        self._rec = bytearray(256)

    def run(self, data, int64_t now):
        """Feed bytes; run every complete request. Raises FrameError on a broken stream."""
        self._now = now
        journal = self.srv.journal
        self._log = journal.raw_writer()
        self._logged = 0
        try:
            self.feed(data)
        finally:
            self._log = None
            if self._logged:
                journal.appended_raw(self._logged)

    cdef int _on_frame(self, uint64_t rid, uint32_t op, const uint8_t *p, uint32_t n, list out) except -1:
        if self.fast and (op == OP_KV_GET or op == OP_KV_PUT):
            if self._fast_kv(rid, op, p, n):
                return 0
        r = self.slow(rid, op, PyBytes_FromStringAndSize(<const char *>p, n))
        if type(r) is tuple:
            append_reply(self.out, rid, r[0], r[1])
        else:
            self.deferred.append((rid, r))
        return 0

    cdef str _ns(self, const uint8_t *p, uint16_t n):
        key = PyBytes_FromStringAndSize(<const char *>p, n)
        ns = self._ns_cache.get(key)
        if ns is None:
            try:
                ns = key.decode("utf-8") or "default"
            except UnicodeDecodeError:
                return None
            if len(self._ns_cache) < 64:
                self._ns_cache[key] = ns
        return ns

    cdef bint _fast_kv(self, uint64_t rid, uint32_t op, const uint8_t *p, uint32_t n) except -1:
        """Serve a plain GET/PUT; False hands the request to the Python path unchanged."""
        cdef uint32_t pos, nslen, klen, vlen
        cdef uint64_t wait_ms = 0, ttl = 0
        cdef uint8_t condition = 0
        cdef int64_t expires_at = 0
        cdef Entry e
        if n < 4:
            return False
        nslen = ld16(p)
        pos = 2 + nslen
        if pos + 2 > n or nslen > 255:
            return False
        klen = ld16(p + pos)
        pos += 2
        if pos + klen > n:
            return False
        ns = self._ns(p + 2, <uint16_t>nslen)
        if ns is None:
            return False
        key = PyBytes_FromStringAndSize(<const char *>p + pos, klen)
        pos += klen
        if op == OP_KV_GET:
            # opt(u64 wait_ms) opt(u8 wait_for) opt(routing) opt(txn)
            if pos < n and p[pos] == 1:
                if pos + 9 > n:
                    return False
                wait_ms = ld64(p + pos + 1)
                pos += 9
            elif pos < n:
                if p[pos] != 0:
                    return False
                pos += 1
            if pos < n:
                if p[pos] == 1:
                    if pos + 2 > n or p[pos + 1] != 0:  # only EXISTS waits finish here
                        return False
                    pos += 2
                elif p[pos] == 0:
                    pos += 1
                else:
                    return False
            if pos < n and p[pos] != 0:  # routing key or txn: Python path
                return False
            if pos + 1 < n and p[pos + 1] != 0:
                return False
            e = self.kv.get(ns, key, self._now)
            if e is None:
                if wait_ms:
                    return False  # parks: Python path
                append_reply(self.out, rid, 2, NOT_FOUND_BODY)
                return True
            self._append_value(rid, e)
            return True
        # KV_PUT: [value bytes32] opt(ttl u64) opt(condition u8) opt(cas u64) opt(routing) opt(txn)
        if pos + 4 > n:
            return False
        vlen = ld32(p + pos)
        pos += 4
        if vlen > n - pos or vlen > MAX_KV_VALUE:
            return False
        value = PyBytes_FromStringAndSize(<const char *>p + pos, vlen)
        pos += vlen
        if pos < n and p[pos] == 1:
            if pos + 9 > n:
                return False
            ttl = ld64(p + pos + 1)
            pos += 9
        elif pos < n:
            if p[pos] != 0:
                return False
            pos += 1
        if pos < n and p[pos] == 1:
            if pos + 2 > n:
                return False
            condition = p[pos + 1]
            pos += 2
        elif pos < n:
            if p[pos] != 0:
                return False
            pos += 1
        # cas, routing, txn must all be absent here
        while pos < n:
            if p[pos] != 0:
                return False
            pos += 1
        if condition:
            e = self.kv.get(ns, key, self._now)
            if (condition == 1 and e is not None) or (condition == 2 and e is None) or condition > 2:
                return False  # the Python path refuses with the right reason
        if ttl:
            expires_at = self._now + <int64_t>ttl
        # == the kv.set applier: log, store, wake
        if self._log is not None:
            lsn = self._log_set(ns, p + 2, nslen, key, value, expires_at)
        else:
            lsn = self.srv.journal.append(KIND_SET, (self._now, ns, key, value, expires_at))
        self.kv.set(ns, key, value, lsn, expires_at, self._now)
        if self.waiting:
            self.srv.waiters.notify(("kv", ns, key), 0)
        self._append_version(rid, lsn)
        return True

    cdef uint64_t _log_set(self, str ns, const uint8_t *nsb, uint32_t nslen, bytes key, bytes value,
                           int64_t expires_at) except 0:
        """Append ``["kv.set", [now, ns, key, value, expires_at]]`` (flo_core/records.pxd) to the log."""
        return log_kv_set(self._log, self._rec, self._now, nsb, nslen,
                          <const uint8_t *>PyBytes_AS_STRING(key), len(key),
                          <const uint8_t *>PyBytes_AS_STRING(value), len(value), expires_at, &self._logged)

    cdef void _append_value(self, uint64_t rid, Entry e) except *:
        cdef bytes v = e.value
        cdef Py_ssize_t vlen = len(v)
        cdef Py_ssize_t old = PyByteArray_GET_SIZE(self.out)
        cdef uint32_t dlen = <uint32_t>(12 + vlen)
        PyByteArray_Resize(self.out, old + HEADER + dlen)
        cdef uint8_t *h = <uint8_t *>PyByteArray_AS_STRING(self.out) + old
        self._header(h, rid, 0, dlen)
        st64(h + HEADER, e.version)
        st32(h + HEADER + 8, <uint32_t>vlen)
        if vlen:
            memcpy(h + HEADER + 12, PyBytes_AS_STRING(v), vlen)
        st32(h + 16, frame_crc(h, h + HEADER, dlen))

    cdef void _append_version(self, uint64_t rid, uint64_t version) except *:
        cdef Py_ssize_t old = PyByteArray_GET_SIZE(self.out)
        PyByteArray_Resize(self.out, old + HEADER + 9)
        cdef uint8_t *h = <uint8_t *>PyByteArray_AS_STRING(self.out) + old
        self._header(h, rid, 0, 9)
        h[HEADER] = 1
        st64(h + HEADER + 1, version)
        st32(h + 16, frame_crc(h, h + HEADER, 9))

    cdef inline void _header(self, uint8_t *h, uint64_t rid, uint8_t status, uint32_t dlen) noexcept:
        st32(h, MAGIC)
        st32(h + 4, dlen)
        st64(h + 8, rid)
        h[20] = VERSION
        h[21] = status
        h[22] = 0
        h[23] = 0
        st64(h + 24, table_hash())

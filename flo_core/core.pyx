# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
# distutils: libraries = z
"""ServerCore: the per-connection request loop in C, sans-IO.

``feed(data, now)`` reassembles frames and runs each one, appending every
answer to ``out`` in request order. The hot paths run here: plain KV_GET,
KV_PUT and KV_INCR (no transaction, no wait that has to park, no guard that
fails, a counter that parses and does not overflow) against the KV store, and
STREAM_APPEND without options against the stream store, and QUEUE_ENQUEUE without delay or dedup key,
QUEUE_DEQUEUE of ready messages from a queue without parked dequeues, QUEUE_COMPLETE and QUEUE_FAIL
without options against the queue store. Everything else, and any case the fast path does not cover,
goes to the Python dispatcher ``slow(rid, op, payload)``, which returns
``(status, data)`` or a coroutine; coroutines are collected in ``deferred``
as ``(rid, coro)`` for the edge to schedule.

Once a connection has shown it speaks Flo wire v2, the edge (``FloProtocol``)
routes the transport's reads to its ServerCore's ``data_received``, so uvloop
calls C for every read: clock, request loop, answers out through the
connection's :class:`flo_core.output.Output`. The edge keeps what is rare:
blocking requests (``proto._start``), a broken stream (``proto._broken``), the
connection's lifetime and back-pressure.

The fast KV_PUT / KV_INCR do what the ``kv.set`` applier does (journal
append, store write, wake waiters) and the fast STREAM_APPEND what the
``stream_append`` handler and the ``s.append`` applier do (same id, same
journal record bytes, same stored blobs, retention, wake), the fast QUEUE_ENQUEUE what
``queue_enqueue`` and the ``q.enq`` applier do (same clock, seq, record bytes, wake of the
queue's line of parked dequeues), the fast QUEUE_DEQUEUE / QUEUE_COMPLETE / QUEUE_FAIL what
``queue_dequeue`` / ``queue_ack`` / ``queue_nack`` and the ``q.deq`` / ``q.ack`` / ``q.nack`` appliers do
(same clock, record bytes, message-list and count answers), so live writes
and replay stay identical whichever path served a request.
"""

cimport cython
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE, PyByteArray_Resize
from libc.string cimport memcpy, memcmp
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t

from flo_core.frame cimport FrameReader, append_reply
from flo_core.output cimport Output
from flo_core._pyframe import FrameError
from flo_core.kv cimport KVStore, Namespace, kv_ent, kv_val, entry_dead, find_live, find_stored, live_in
from flo_core.log cimport LogWriter, takes_writes
from flo_core.clock cimport unix_ms
from flo_core.wirefmt cimport grow_by, HEADER, VERSION, MAGIC, table_hash, ld16, ld32, ld64, st32, st64, frame_crc, utf8_ok, key_slot
from flo_core.records cimport log_kv_set, log_stream_append, log_queue_enqueue, log_queue_dequeue, log_queue_seqs
from flo_core.stream cimport Stream, next_id_of
from flo_core.pqueue cimport PriorityQueue, Queues
from flo_core.counters cimport counter_add, counter_text, COUNTER_OK, COUNTER_TEXT_MAX
from flo_core.metrics cimport Metrics, mono_ns

cdef enum:
    OP_KV_PUT = 0x100
    OP_KV_GET = 0x101
    OP_KV_INCR = 0x10B
    OP_STREAM_APPEND = 0x130
    OP_QUEUE_ENQUEUE = 0x170
    OP_QUEUE_DEQUEUE = 0x171
    OP_QUEUE_COMPLETE = 0x172
    OP_QUEUE_FAIL = 0x174
    TAG_PRIORITY = 0x10
    TAG_COUNT = 0x15
    TAG_BLOCK_MS = 0x17
    TAG_LEASE_MS = 0x43
    MAX_DEQUEUE_COUNT = 1000                  # flo_server.handlers.queue.MAX_DEQUEUE_COUNT
    MAX_BLOCK_MS = 300_000                    # flo_core.spec.MAX_BLOCK_MS
    MAX_LEASE_MS = 12 * 3600 * 1000           # flo_server.handlers.queue.MAX_LEASE_MS
    DEFAULT_LEASE_MS = 30_000                 # flo_core.pqueue.DEFAULT_LEASE_MS
    MAX_SEQS = 100_000                        # flo_server.handlers.queue.MAX_SEQS
    MAX_QUEUE_PAYLOAD = 16 * 1024 * 1024      # flo_server.handlers.queue.MAX_PAYLOAD
    MAX_DEDUP_WINDOW_MS = 7 * 24 * 3600 * 1000  # flo_server.handlers.queue.MAX_DEDUP_WINDOW_MS
    DEFAULT_DEDUP_WINDOW_MS = 300_000         # flo_core.pqueue.DEFAULT_DEDUP_WINDOW_MS
    MAX_KV_VALUE = 16 * 1024 * 1024
    MAX_APPEND_BATCH = 1000        # flo_core.stream.MAX_APPEND_BATCH
    MAX_HEADERS = 1024             # flo_server.handlers.stream.MAX_HEADERS
    MAX_APPEND_VALUE = 64 * 1024 * 1024  # bigger (with a raised max_frame): Python path, whose log checks apply

# NOT_FOUND + reason 13 (the one kv.get turns into None), ran 0
cdef bytes NOT_FOUND_BODY = b"\x0d\x00\x00key not found"
cdef str KIND_SET = "kv.set"
cdef str KIND_ENQUEUE = "q.enq"
cdef str KIND_DEQUEUE = "q.deq"
cdef str KIND_ACK = "q.ack"
cdef str KIND_NACK = "q.nack"
cdef str QUEUE_WAKE = "q"  # a queue's line of parked dequeues: Queues.lines[("q", ns, name)]
cdef Py_ssize_t ANSWER_BUDGET = 64 * 1024 * 1024  # flo_server.handlers.queue.ANSWER_BUDGET
cdef str STREAM_WAKE = "s"  # waiters' key of a stream: ("s", ns, name)


def now_ms():
    """Unix time in ms: the only clock the stores see (``Server.now``)."""
    return unix_ms()


@cython.final  # nothing subclasses it: its cdef methods are plain C calls
cdef class ServerCore(FrameReader):
    """One connection's request loop. ``out`` holds answers not yet written."""

    cdef public bytearray out
    cdef public list deferred
    cdef public object slow
    cdef public object srv
    cdef public bint fast
    # On a cluster member: one byte per slot, 1 where this member serves the slot (flo_server.cluster.node
    # keeps it current); the fast paths take only those, every other request goes to the router.
    cdef public bytearray served
    cdef public object proto  # the edge (FloProtocol): blocking requests and a broken stream
    cdef public Output output  # where data_received sends answers
    cdef object _clock  # srv.now
    cdef bint _c_clock  # srv.now is now_ms: read the clock in C
    cdef object _journal  # srv.journal as last seen, and what run() needs of it:
    cdef LogWriter _writer  # its raw writer (None: in memory)
    cdef KVStore kv
    cdef object waiting  # the waiters' key dict: notify only when someone waits
    cdef dict _ns_cache
    cdef bytes _last_ns_raw  # the namespace bytes _ns() decoded last, and what they decoded to:
    cdef str _last_ns  # one namespace per connection is the rule, so most heads skip the dict
    cdef int64_t _now
    cdef str _hns  # the request head _head() parsed last
    cdef str _hname  # the queue name _known_queue() decoded last
    cdef uint32_t _hns_len, _hkey_at, _hkey_len, _hval_at, _hval_len
    cdef LogWriter _log  # set for one run() when the journal is on disk and healthy
    cdef Py_ssize_t _logged  # bytes appended through _log in this run()
    cdef bytearray _rec  # scratch buffer for one log record
    cdef bint _durable  # the journal is on disk: without _log it refuses writes (Python path answers)
    cdef object _streams  # srv.streams (flo_core.stream.Streams) for this run(), or None
    cdef object _queues  # srv.queues (flo_core.pqueue.Queues) for this run(), or None
    cdef int64_t _qwindow  # the default dedup window for this run(); -2 not read yet, -1 out of range
    cdef int64_t _qlease  # the default lease length for this run(); -2 not read yet, -1 out of range
    cdef Metrics metrics  # srv.metrics: counts and sampled timings of what the fast paths serve
    # The client's output limit (0: none): once one read's answers pass it, the rest of the read
    # is not served and the edge drops the connection (``proto._output_full``).
    cdef public Py_ssize_t out_cap

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
        self._last_ns_raw = b""
        self._last_ns = "default"
        self._rec = bytearray(256)
        self._clock = srv.now
        self._c_clock = self._clock is now_ms
        self.metrics = getattr(srv, "metrics", None)

    @property
    def now(self):
        """The clock reading (Unix ms) of the batch being run: what slow paths see as ``now``."""
        return self._now

    # --- the transport's data_received, once the edge handed it over -----------------------

    def data_received(self, data):
        cdef list deferred
        if self.metrics is not None:
            self.metrics.bytes_in += len(data)
        try:
            self._run(data, unix_ms() if self._c_clock else self._clock())
        except FrameError as e:
            self.proto._broken(e)
            return
        if self.out_cap and PyByteArray_GET_SIZE(self.out) > self.out_cap:
            deferred, self.deferred = self.deferred, []
            n, self.out = PyByteArray_GET_SIZE(self.out), bytearray()
            self.proto._output_full(n, deferred)
            return
        if self.deferred:
            deferred, self.deferred = self.deferred, []
            for rid, coro in deferred:
                self.proto._start(rid, coro)
        if PyByteArray_GET_SIZE(self.out):
            out, self.out = self.out, bytearray()
            self.output.send_c(out)

    # --- the request loop ----------------------------------------------------------------------

    def run(self, data, int64_t now):
        """Feed bytes; run every complete request. Raises FrameError on a broken stream."""
        self._run(data, now)

    cdef int _run(self, data, int64_t now) except -1:
        self._now = now
        journal = self.srv.journal
        if journal is not self._journal:
            self._journal = journal
            self._writer = journal.raw_writer()
            self._durable = bool(getattr(journal, "durable", False))
        # a disk journal that stopped taking writes: no raw writer, the Python path refuses
        self._log = self._writer if self._writer is not None and takes_writes(self._writer, now) else None
        self._streams = getattr(self.srv, "streams", None)
        self._queues = getattr(self.srv, "queues", None)
        self._qwindow = -2
        self._qlease = -2
        self._logged = 0
        try:
            self.feed(data)
        finally:
            if self._logged and not self._log.flush_scheduled:
                journal.flush_soon()
            self._log = None
            self._streams = None
            self._queues = None
        return 0

    cdef int _on_frame(self, uint64_t rid, uint32_t op, const uint8_t *p, uint32_t n, list out) except -1:
        cdef Metrics m
        cdef int64_t t0
        cdef Py_ssize_t at
        if self.out_cap and PyByteArray_GET_SIZE(self.out) > self.out_cap:
            return 0  # past the client's output limit: the connection is dropped after this read
        if self.fast:
            m = self.metrics
            t0 = mono_ns() if m is not None and m.sample() else -1
            at = PyByteArray_GET_SIZE(self.out)
            if self._fast_one(rid, op, p, n):
                if m is not None:
                    self._count(m, op, at, t0)
                return 0
        r = self.slow(rid, op, PyBytes_FromStringAndSize(<const char *>p, n))
        if type(r) is tuple:
            append_reply(self.out, rid, r[0], r[1])
        else:
            self.deferred.append((rid, r))
        return 0

    cdef bint _fast_one(self, uint64_t rid, uint32_t op, const uint8_t *p, uint32_t n) except -1:
        """Serve one request in C if a fast path covers it (True: answered)."""
        cdef int slot
        if self.served is not None:
            if self._head(p, n) < 0:
                return False
            slot = key_slot(p + 2, self._hns_len, p + self._hkey_at, self._hkey_len)
            if slot < 0 or not (<const uint8_t *>PyByteArray_AS_STRING(self.served))[slot]:
                return False
        if op == OP_KV_GET or op == OP_KV_PUT:
            return self._fast_kv(rid, op, p, n)
        if op == OP_STREAM_APPEND:
            return self._fast_append(rid, p, n)
        if op == OP_KV_INCR:
            return self._fast_incr(rid, p, n)
        if op == OP_QUEUE_ENQUEUE:
            return self._fast_enqueue(rid, p, n)
        if op == OP_QUEUE_DEQUEUE:
            return self._fast_dequeue(rid, p, n)
        if op == OP_QUEUE_COMPLETE or op == OP_QUEUE_FAIL:
            return self._fast_seqs(rid, p, n, op == OP_QUEUE_FAIL)
        return False

    cdef int _count(self, Metrics m, uint32_t op, Py_ssize_t at, int64_t t0) except -1:
        """Count a request the fast path answered, with the status byte of its answer
        (the Python dispatcher counts the others, flo_server.dispatch)."""
        cdef int slot = m.op_slot(op)
        cdef int status = 0
        if PyByteArray_GET_SIZE(self.out) >= at + HEADER:
            status = (<uint8_t *>PyByteArray_AS_STRING(self.out))[at + 21]
        m.count(slot, status)
        if t0 >= 0:
            m.observe_ns(slot, mono_ns() - t0)
        return 0

    cdef Py_ssize_t _head(self, const uint8_t *p, uint32_t n) except -2:
        """``[ns str16][key str16]``: sets ``_hns`` (the namespace, "" = default), ``_hns_len``,
        ``_hkey_at``/``_hkey_len``; -1 when the fast path cannot take it (the dispatcher refuses)."""
        cdef uint32_t nslen, klen, pos
        if n < 4:
            return -1
        nslen = ld16(p)
        pos = 2 + nslen
        if pos + 2 > n or nslen > 255:
            return -1
        klen = ld16(p + pos)
        pos += 2
        if pos + klen > n:
            return -1
        self._hns = self._ns(p + 2, <uint16_t>nslen)
        if self._hns is None:
            return -1
        self._hns_len = nslen
        self._hkey_at = pos
        self._hkey_len = klen
        return pos + klen

    cdef Py_ssize_t _named_value(self, const uint8_t *p, uint32_t n, uint32_t max_value) except -2:
        """A value+options op on a named thing: ``_head`` with a non-empty name (the handlers
        refuse an empty one), then ``[value bytes32]`` of at most ``max_value`` bytes; sets
        ``_hval_at``/``_hval_len`` and returns the position after the value, or -1."""
        cdef Py_ssize_t pos = self._head(p, n)
        cdef uint32_t vlen
        if pos < 0 or self._hkey_len == 0 or pos + 4 > n:
            return -1
        vlen = ld32(p + pos)
        pos += 4
        if vlen > n - pos or vlen > max_value:
            return -1
        self._hval_at = <uint32_t>pos
        self._hval_len = vlen
        return pos + vlen

    cdef str _ns(self, const uint8_t *p, uint16_t n):
        # Why the last one first: a bytes object and a dict lookup per request were ~5 % of a GET.
        if n == PyBytes_GET_SIZE(self._last_ns_raw) and memcmp(p, PyBytes_AS_STRING(self._last_ns_raw), n) == 0:
            return self._last_ns
        key = PyBytes_FromStringAndSize(<const char *>p, n)
        ns = self._ns_cache.get(key)
        if ns is None:
            try:
                ns = key.decode("utf-8") or "default"
            except UnicodeDecodeError:
                return None
            if len(self._ns_cache) < 64:
                self._ns_cache[key] = ns
        self._last_ns_raw, self._last_ns = key, ns
        return ns

    cdef bint _fast_kv(self, uint64_t rid, uint32_t op, const uint8_t *p, uint32_t n) except -1:
        """Serve a plain GET/PUT; False hands the request to the Python path unchanged."""
        cdef uint32_t pos, nslen, klen, vlen
        cdef uint64_t wait_ms = 0, ttl = 0
        cdef uint8_t condition = 0
        cdef int64_t expires_at = 0
        cdef const kv_ent *e
        cdef const kv_ent *old
        cdef const char *k
        cdef Namespace sp
        cdef bint live
        if self._head(p, n) < 0:
            return False
        ns, nslen, pos = self._hns, self._hns_len, self._hkey_at + self._hkey_len
        k = <const char *>p + self._hkey_at  # looked up where it lies: no key object
        klen = self._hkey_len
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
            e = find_live(self.kv, ns, k, klen, self._now)
            if e == NULL:
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
        cdef const char *v = <const char *>p + pos
        pos += vlen
        if pos < n and p[pos] == 1:
            if pos + 9 > n:
                return False
            ttl = ld64(p + pos + 1)
            if ttl > 18446744073709ULL:
                return False  # kv.MAX_TTL_MS: the handler refuses (now + ttl would overflow the expiry)
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
        sp = self.kv.spaces.get(ns)
        if condition:
            old = find_stored(sp, k, klen)
            live = old != NULL and not entry_dead(old, self._now)
            if (condition == 1 and live) or (condition == 2 and not live) or condition > 2:
                return False  # the Python path refuses with the right reason
        if not self._can_write():
            return False
        if ttl:
            expires_at = self._now + <int64_t>ttl
        lsn = self._kv_set(ns, p + 2, nslen, k, klen, v, vlen, expires_at, sp)
        self._append_version(rid, lsn)
        return True

    cdef inline bint _can_write(self) noexcept:
        # a disk journal that stopped taking writes gives no raw writer: the Python path refuses
        return self._log is not None or not self._durable

    cdef uint64_t _kv_set(self, str ns, const uint8_t *nsb, uint32_t nslen, const char *k, size_t klen,
                          const char *v, size_t vlen, int64_t expires_at, Namespace sp) except 0:
        """The ``kv.set`` applier, inline: log, store, wake. Returns the new version.

        Key and value come as pointers (into the read buffer): bytes objects are made only for
        what needs them (a journal without a raw writer, a waiter, a TTL). ``sp``: the namespace
        as the caller looked it up (``kv.spaces.get(ns)``, None: no keys yet; KVStore.put)."""
        cdef uint64_t lsn
        key = None
        if self._log is not None:
            lsn = log_kv_set(self._log, self._rec, self._now, nsb, nslen, <const uint8_t *>k, klen,
                             <const uint8_t *>v, vlen, expires_at, &self._logged)
        else:
            key = PyBytes_FromStringAndSize(k, klen)
            value = PyBytes_FromStringAndSize(v, vlen)
            lsn = self.srv.journal.append(KIND_SET, (self._now, ns, key, value, expires_at))
            # Python ran: store from the copies, and look the namespace up again
            k, v = PyBytes_AS_STRING(key), PyBytes_AS_STRING(value)
            sp = self.kv.spaces.get(ns)
        self.kv.put(ns, sp, k, klen, v, vlen, lsn, expires_at, self._now, key)
        if self.waiting:
            self.srv.waiters.notify(("kv", ns, key if key is not None else PyBytes_FromStringAndSize(k, klen)), 0)
        return lsn

    cdef bint _fast_incr(self, uint64_t rid, const uint8_t *p, uint32_t n) except -1:
        """KV_INCR ``opt(delta i64)`` with no routing key and no transaction (kv.incr, inline).

        A value that is not a counter or an overflow goes to the Python path, which refuses
        (WRONG_TYPE / OUT_OF_RANGE) after the same lookup: nothing has changed by then.
        """
        cdef uint32_t pos, nslen, klen
        cdef int64_t delta = 1, expires_at = 0
        cdef long long result = 0
        cdef char text[COUNTER_TEXT_MAX]
        cdef const kv_ent *old
        cdef Namespace sp
        cdef const char *k
        if self._head(p, n) < 0:
            return False
        ns, nslen, pos = self._hns, self._hns_len, self._hkey_at + self._hkey_len
        k = <const char *>p + self._hkey_at
        klen = self._hkey_len
        if pos < n:  # opt(delta i64); an exhausted body means absent
            if p[pos] == 1:
                if pos + 9 > n:
                    return False
                delta = <int64_t>ld64(p + pos + 1)
                pos += 9
            elif p[pos] == 0:
                pos += 1
            else:
                return False
        if pos < n and p[pos] != 0:  # routing key: the Python path parses it
            return False
        pos += 1
        if pos < n and p[pos] != 0:  # transaction: buffered by the Python path
            return False
        if not self._can_write():
            return False
        sp = self.kv.spaces.get(ns)
        old = live_in(sp, k, klen, self._now)
        if old != NULL:
            expires_at = old.expires_at  # incr keeps the TTL
        if counter_add(<const uint8_t *>kv_val(old) if old != NULL else NULL,
                       old.vlen if old != NULL else 0, old != NULL, delta,
                       &result) != COUNTER_OK:
            return False
        lsn = self._kv_set(ns, p + 2, nslen, k, klen, text, counter_text(text, result), expires_at, sp)
        # opt(version u64) opt(value i64)
        cdef uint8_t *h = grow_by(self.out, HEADER + 18)
        self._header(h, rid, 0, 18)
        h[HEADER] = 1
        st64(h + HEADER + 1, lsn)
        h[HEADER + 9] = 1
        st64(h + HEADER + 10, <uint64_t>result)
        st32(h + 16, frame_crc(h, h + HEADER, 18))
        return True

    cdef bint _fast_append(self, uint64_t rid, const uint8_t *p, uint32_t n) except -1:
        """STREAM_APPEND without options: the ``stream_append`` handler and ``s.append`` applier, inline.

        value ``[count u32]`` count x ``([payload bytes32][hc u16]`` hc x ``([k str16][v str16]))``.
        Every case the handler would refuse (and a journal without a raw writer) goes to Python.
        """
        cdef uint32_t pos, nslen, klen, kpos, vlen, count, i, j, plen, hc, sl
        cdef Py_ssize_t vpos, r, recs_len
        cdef const uint8_t *v
        cdef uint64_t ts, seq
        cdef Stream s
        if self._log is None or self._streams is None or self._named_value(p, n, MAX_APPEND_VALUE) < 0:
            return False
        ns, nslen, kpos, klen = self._hns, self._hns_len, self._hkey_at, self._hkey_len
        v, vlen = p + self._hval_at, self._hval_len
        pos = self._hval_at + vlen
        # [options_len u16][TLV...]: only an absent or empty options block here
        if n - pos >= 2 and ld16(p + pos) != 0:
            return False
        # the records, checked the way the handler's Reader reads them
        if vlen < 4:
            return False
        count = ld32(v)
        if count < 1 or count > MAX_APPEND_BATCH:
            return False
        vpos = 4
        for i in range(count):
            if vpos + 4 > vlen:
                return False
            plen = ld32(v + vpos)
            vpos += 4
            if plen > vlen - vpos or vpos + plen + 2 > vlen:
                return False
            vpos += plen
            hc = ld16(v + vpos)
            vpos += 2
            if hc > MAX_HEADERS:
                return False
            for j in range(2 * hc):  # key, value, key, value ...
                if vpos + 2 > vlen:
                    return False
                sl = ld16(v + vpos)
                vpos += 2
                if sl > vlen - vpos or not utf8_ok(v + vpos, sl):
                    return False
                vpos += sl
        recs_len = vpos - 4  # bytes after the records (ignored by the handler) are not logged
        try:
            name = PyUnicode_DecodeUTF8(<const char *>p + kpos, klen, NULL)
        except UnicodeDecodeError:
            return False  # the handler refuses a name that is not UTF-8
        # _next_id: the id the handler picks
        d = self._streams.by_ns.get(ns)
        so = d.get(name) if d is not None else None
        if so is not None and type(so) is not Stream:
            return False
        next_id_of(<Stream>so, <uint64_t>self._now, count, &ts, &seq)
        if so is not None and ((<Stream>so).last_ts or (<Stream>so).last_seq) and not (
                ts > (<Stream>so).last_ts or (ts == (<Stream>so).last_ts and seq > (<Stream>so).last_seq)):
            return False  # ids used up (XADD put the largest one there): the handler refuses, nothing is logged
        # srv.write("s.append", now, ns, name, ts, seq, records): log, then the applier
        lsn = log_stream_append(self._log, self._rec, self._now, p + 2, nslen, p + kpos, klen, ts, seq,
                                count, v + 4, recs_len, &self._logged)
        if so is None:
            so = self._streams.get_or_create(ns, name, self._now)
        s = <Stream>so
        s.append_wire(<uint64_t>self._now, ts, seq, count, v + 4, recs_len)
        if self.waiting:
            self.srv.waiters.notify((STREAM_WAKE, ns, name), 0)
        # [seq u64][ts i64]
        cdef uint8_t *h = grow_by(self.out, HEADER + 16)
        self._header(h, rid, 0, 16)
        st64(h + HEADER, seq)
        st64(h + HEADER + 8, ts)
        st32(h + 16, frame_crc(h, h + HEADER, 16))
        return True

    cdef int64_t _dedup_window(self) except -2:
        """``srv.config.dedup_window_ms`` (or the built-in default) as the handler reads it; -1 when
        it is outside 0..MAX_DEDUP_WINDOW_MS (the handler refuses every enqueue then)."""
        if self._qwindow == -2:
            value = getattr(getattr(self.srv, "config", None), "dedup_window_ms", None)
            value = DEFAULT_DEDUP_WINDOW_MS if value is None else int(value)
            self._qwindow = value if 0 <= value <= MAX_DEDUP_WINDOW_MS else -1
        return self._qwindow

    cdef bint _fast_enqueue(self, uint64_t rid, const uint8_t *p, uint32_t n) except -1:
        """QUEUE_ENQUEUE with no option but PRIORITY: the ``queue_enqueue`` handler and the
        ``q.enq`` applier, inline.

        ``[value bytes32][options_len u16][TLV...]``, value = payload. DELAY_MS, DEDUP_KEY,
        DEDUP_WINDOW_MS or any other option, every case the handler refuses, a full queue, a new
        queue and a disk journal that stopped taking writes go to Python.
        """
        cdef uint32_t pos, nslen, klen, kpos, plen, olen, opos, end, tag, ln, i
        cdef uint64_t priority = 0, seq
        cdef int64_t window, clock
        cdef const uint8_t *payload
        cdef PriorityQueue q
        if not self._can_write() or self._queues is None or type(self._queues) is not Queues:
            return False
        if self._named_value(p, n, MAX_QUEUE_PAYLOAD) < 0:
            return False
        ns, nslen, kpos, klen = self._hns, self._hns_len, self._hkey_at, self._hkey_len
        payload, plen = p + self._hval_at, self._hval_len
        pos = self._hval_at + plen
        # options: absent when fewer than 2 bytes follow (tolerated, as split_value_options does)
        if n - pos >= 2:
            olen = ld16(p + pos)
            pos += 2
            if olen > n - pos:
                return False
            opos = pos
            end = pos + olen
            while opos + 2 <= end:
                tag = p[opos]
                ln = p[opos + 1]
                opos += 2
                if ln > end - opos or tag != TAG_PRIORITY:
                    return False
                if ln != 1 and ln != 2 and ln != 4 and ln != 8:
                    return False  # opt_uint refuses the width
                priority = 0  # the last one wins; little-endian of any natural width
                for i in range(ln):
                    priority |= (<uint64_t>p[opos + i]) << (8 * i)
                opos += ln
            if opos != end or priority > 255:
                return False
        window = self._dedup_window()
        if window < 0:
            return False
        try:
            name = PyUnicode_DecodeUTF8(<const char *>p + kpos, klen, NULL)
        except UnicodeDecodeError:
            return False  # the handler refuses a name that is not UTF-8
        d = (<Queues>self._queues).by_ns.get(ns)
        qo = d.get(name) if d is not None else None
        if qo is None or type(qo) is not PriorityQueue:
            return False  # creating a queue checks the registry's limit: Python path
        q = <PriorityQueue>qo
        if len(q.msgs) >= q.max_messages:
            return False  # full: the handler refuses
        clock = self._now if q.clock <= self._now else q.clock  # _clock(q, now)
        # srv.write("q.enq", clock, ns, name, payload, priority, 0, None, window): log, then the applier
        value = PyBytes_FromStringAndSize(<const char *>payload, plen)
        if self._log is not None:
            log_queue_enqueue(self._log, self._rec, clock, p + 2, nslen, p + kpos, klen, payload, plen,
                              priority, <uint64_t>window, &self._logged)
        else:  # the in-memory journal: numbers the record, keeps nothing
            self.srv.journal.append(KIND_ENQUEUE, (clock, ns, name, value, priority, 0, None, window))
        seq = q.enqueue_ready(value, <int>priority, clock)
        if self.waiting:  # parked dequeues are in srv.waiters: wake the line's oldest
            # a queue's parked dequeues stand in a line of ticket keys: the server picks whom to wake
            self.srv.wake_queue(ns, name)
        # [seq u64]
        cdef uint8_t *h = grow_by(self.out, HEADER + 8)
        self._header(h, rid, 0, 8)
        st64(h + HEADER, seq)
        st32(h + 16, frame_crc(h, h + HEADER, 8))
        return True

    cdef int64_t _lease_default(self) except -2:
        """``srv.config.queue_lease_ms`` (or the built-in default) as the handler reads it; -1 when
        it is outside 1..MAX_LEASE_MS (the handler refuses a dequeue without LEASE_MS then)."""
        if self._qlease == -2:
            value = getattr(getattr(self.srv, "config", None), "queue_lease_ms", None)
            value = DEFAULT_LEASE_MS if value is None else int(value)
            self._qlease = value if 1 <= value <= MAX_LEASE_MS else -1
        return self._qlease

    cdef PriorityQueue _known_queue(self, const uint8_t *p, uint32_t n, bint lineless):
        """The queue a value+options request names (``_named_value`` already ran), or None for the
        Python path: a name that is not UTF-8, a queue that does not exist, and with ``lineless``
        a queue with dequeues parked in its line (they are served first, in arrival order).
        Sets ``_hname``."""
        if not self._can_write() or self._queues is None or type(self._queues) is not Queues:
            return None
        try:
            name = PyUnicode_DecodeUTF8(<const char *>p + self._hkey_at, self._hkey_len, NULL)
        except UnicodeDecodeError:
            return None  # the handler refuses a name that is not UTF-8
        d = (<Queues>self._queues).by_ns.get(self._hns)
        qo = d.get(name) if d is not None else None
        if qo is None or type(qo) is not PriorityQueue:
            return None
        lines = (<Queues>self._queues).lines
        if lineless and lines and lines.get((QUEUE_WAKE, self._hns, name)):
            return None
        self._hname = name
        return <PriorityQueue>qo

    cdef bint _fast_dequeue(self, uint64_t rid, const uint8_t *p, uint32_t n) except -1:
        """QUEUE_DEQUEUE of a known queue with ready messages and nobody parked in its line: the
        ``queue_dequeue`` handler, ``_take`` and the ``q.deq`` applier, inline.

        ``[value bytes32][options_len u16][TLV...]`` (the value is ignored) with COUNT, BLOCK_MS and
        LEASE_MS options. Nothing ready (a dequeue that waits or answers an empty list), a line of
        parked dequeues, COUNT 0, any other option and every refusal go to Python.
        """
        cdef uint8_t tags[3]
        cdef uint64_t values[3]
        cdef uint64_t count
        cdef int64_t lease, clock
        cdef Py_ssize_t at, seen
        cdef uint32_t dlen
        cdef PriorityQueue q
        tags[0], tags[1], tags[2] = TAG_COUNT, TAG_BLOCK_MS, TAG_LEASE_MS
        values[0], values[1], values[2] = 1, 0, 0  # the defaults of COUNT and BLOCK_MS
        if self._named_value(p, n, 0xFFFFFFFF) < 0:
            return False
        seen = self._uint_options(p, self._hval_at + self._hval_len, n, tags, 3, values)
        if seen < 0:
            return False
        count = values[0] if values[0] < MAX_DEQUEUE_COUNT else MAX_DEQUEUE_COUNT
        if count == 0 or values[1] > MAX_BLOCK_MS:
            return False  # an empty answer / a refusal: Python
        if not seen & 4:
            lease = self._lease_default()
        else:
            lease = <int64_t>values[2] if values[2] <= MAX_LEASE_MS else -1
        if lease < 1:
            return False  # out of range: the handler refuses
        q = self._known_queue(p, n, True)
        if q is None:
            return False
        clock = q.advance(self._now)  # has_ready(now); the record carries _clock(q, now), the same time
        if q.n_ready == 0:
            return False  # it waits, or answers an empty list: Python
        # srv.write("q.deq", clock, ns, name, count, lease_ms): log, then the applier
        if self._log is not None:
            log_queue_dequeue(self._log, self._rec, clock, p + 2, self._hns_len, p + self._hkey_at,
                              self._hkey_len, count, <uint64_t>lease, &self._logged)
        else:  # the in-memory journal: numbers the record, keeps nothing
            self.srv.journal.append(KIND_DEQUEUE, (clock, self._hns, self._hname, count, lease))
        # the message list, encoded straight after the frame header
        at = PyByteArray_GET_SIZE(self.out)
        grow_by(self.out, HEADER)
        q.dequeue_wire(<Py_ssize_t>count, clock, lease, ANSWER_BUDGET, self.out)
        dlen = <uint32_t>(PyByteArray_GET_SIZE(self.out) - at - HEADER)
        cdef uint8_t *h = <uint8_t *>PyByteArray_AS_STRING(self.out) + at
        self._header(h, rid, 0, dlen)
        st32(h + 16, frame_crc(h, h + HEADER, dlen))
        return True

    cdef bint _fast_seqs(self, uint64_t rid, const uint8_t *p, uint32_t n, bint nack) except -1:
        """QUEUE_COMPLETE (ack), or with ``nack`` QUEUE_FAIL without options, of a known queue:
        the ``queue_ack`` / ``queue_nack`` handlers and the ``q.ack`` / ``q.nack`` appliers, inline.

        value ``[n u32] n x [seq u64]``. An empty list, a short or too long one, any option, and a
        nack of a queue with dequeues parked in its line (its applier wakes them, the handler arms
        their timer) go to Python.
        """
        cdef const uint8_t *v
        cdef uint32_t vlen, count, pos
        cdef int64_t clock
        cdef Py_ssize_t k
        cdef PriorityQueue q
        if self._named_value(p, n, 0xFFFFFFFF) < 0:
            return False
        pos = self._hval_at + self._hval_len
        if n - pos >= 2 and ld16(p + pos) != 0:
            return False  # options: the handler reads DELAY_MS / TO_DLQ (nack), checks the block
        v, vlen = p + self._hval_at, self._hval_len
        if vlen < 4:
            return False
        count = ld32(v)
        if count == 0 or count > MAX_SEQS or 8 * count > vlen - 4:
            return False
        q = self._known_queue(p, n, nack)
        if q is None:
            return False
        clock = self._now if q.clock <= self._now else q.clock  # _clock(q, now)
        # srv.write("q.ack", clock, ns, name, seqs) / srv.write("q.nack", clock, ns, name, seqs, 0, False)
        if self._log is not None:
            log_queue_seqs(self._log, self._rec, nack, clock, p + 2, self._hns_len, p + self._hkey_at,
                           self._hkey_len, v + 4, count, &self._logged)
        else:  # the in-memory journal: numbers the record, keeps nothing
            seqs = [ld64(v + 4 + 8 * i) for i in range(count)]
            if nack:
                self.srv.journal.append(KIND_NACK, (clock, self._hns, self._hname, seqs, 0, False))
            else:
                self.srv.journal.append(KIND_ACK, (clock, self._hns, self._hname, seqs))
        k = q.nack_wire(v + 4, count, clock) if nack else q.ack_wire(v + 4, count, clock)
        # [affected u32]
        cdef uint8_t *h = grow_by(self.out, HEADER + 4)
        self._header(h, rid, 0, 4)
        st32(h + HEADER, <uint32_t>k)
        st32(h + 16, frame_crc(h, h + HEADER, 4))
        return True

    cdef Py_ssize_t _uint_options(self, const uint8_t *p, uint32_t pos, uint32_t n, const uint8_t *tags,
                                  int ntags, uint64_t *values) except -2:
        """The options block at ``pos`` as split_value_options and opt_uint read it, when every option
        is one of ``tags`` with a natural width (1, 2, 4, 8 bytes, LE; the last one wins, into
        ``values``): a bit mask of the tags seen (bit i: ``tags[i]``), -1 for anything else (Python).
        Absent when fewer than 2 bytes follow."""
        cdef uint32_t olen, end, ln, i
        cdef uint64_t v
        cdef int t
        cdef Py_ssize_t seen = 0
        if n - pos < 2:
            return 0
        olen = ld16(p + pos)
        pos += 2
        if olen > n - pos:
            return -1
        end = pos + olen
        while pos + 2 <= end:
            ln = p[pos + 1]
            if ln > end - pos - 2 or (ln != 1 and ln != 2 and ln != 4 and ln != 8):
                return -1
            for t in range(ntags):
                if tags[t] == p[pos]:
                    break
            else:
                return -1
            v = 0
            for i in range(ln):
                v |= (<uint64_t>p[pos + 2 + i]) << (8 * i)
            values[t] = v
            seen |= 1 << t
            pos += 2 + ln
        return seen if pos == end else -1

    cdef void _append_value(self, uint64_t rid, const kv_ent *e) except *:
        """The reply to a KV_GET, written from the stored version (``e`` must not move: nothing
        here runs Python code that could write the store)."""
        cdef Py_ssize_t vlen = e.vlen
        cdef uint32_t dlen = <uint32_t>(12 + vlen)
        cdef uint8_t *h = grow_by(self.out, HEADER + dlen)
        self._header(h, rid, 0, dlen)
        st64(h + HEADER, e.version)
        st32(h + HEADER + 8, <uint32_t>vlen)
        if vlen:
            memcpy(h + HEADER + 12, kv_val(e), vlen)
        st32(h + 16, frame_crc(h, h + HEADER, dlen))

    cdef void _append_version(self, uint64_t rid, uint64_t version) except *:
        cdef uint8_t *h = grow_by(self.out, HEADER + 9)
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


def key_slot_c(bytes ns, bytes key):
    """The C fast paths' slot of ``key`` in namespace ``ns`` (b"" = default), for the tests that hold it
    to :func:`flo_core.slots.key_slot`; -1 when too long to hash in C."""
    return key_slot(<const uint8_t *>PyBytes_AS_STRING(ns), PyBytes_GET_SIZE(ns),
                    <const uint8_t *>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))

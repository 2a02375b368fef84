# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, embedsignature=True
"""Streams: ids, compact record storage, trim/retention and consumer groups (sans-IO).

Why Cython and this layout: a stream holds millions of records, so each one is
a 32-byte C struct (id, offset, lengths) in one array plus its payload and
headers in one byte buffer, already encoded the way a read answer carries them.
Appends are amortised O(1), a lookup by id is a binary search and a read is a
loop of ``memcpy``. Trimming the front moves a head index; the dead prefix is
compacted when it is larger than the live part (amortised O(1) again).

Records are addressed by their *ordinal* (0, 1, 2, ... in append order, never
reused): ``ordinal - first_ord`` is the position in the array, so consumer
group bookkeeping can find a record in O(1) after any trim.

Time comes in as ``now`` (unix ms); nothing here reads a clock.

Example:
    >>> s = Streams().get_or_create("default", "events")
    >>> ts, seq = s.next_id(1700000000000)
    >>> s.append(1700000000000, ts, seq, [[b"hello", None]])
    0
    >>> s.record(0)
    (1700000000000, 0, b'hello', None)
"""

import heapq
from bisect import bisect_left

from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.stdint cimport uint8_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memmove

from flo_core.wirefmt cimport ld16, ld32, st32, st64

#: The done sentinel of a claim cursor, and "no deadline" for pending entries.
U64_MAX = 0xFFFFFFFFFFFFFFFF
cdef uint64_t _U64_MAX = 0xFFFFFFFFFFFFFFFFULL

DEFAULT_READ_COUNT = 10
MAX_READ_COUNT = 1000
MAX_APPEND_BATCH = 1000
DEFAULT_ACK_TIMEOUT_MS = 30_000
DEFAULT_MAX_DELIVER = 10
MAX_PENDING_LIST = 10_000
MAX_CLAIM_SCAN = 10_000
MAX_DEAD_KEPT = 1000
MAX_CONSUMERS = 10_000
MAX_GROUPS = 1000

# Fixed part of an encoded record before the key:
# [seq u64][ts i64][tier u8][partition u32][key_present u8][key_len u32]
cdef enum:
    REC_FIXED = 26


# Meta (one record: id, blob offset and lengths) and Stream's fields are declared in stream.pxd.


cdef inline bint id_lt(uint64_t ats, uint64_t aseq, uint64_t bts, uint64_t bseq) noexcept nogil:
    return ats < bts or (ats == bts and aseq < bseq)


def id_int(ts, seq):
    """Pack a StreamID into one sortable int (ts in the high 64 bits)."""
    return (int(ts) << 64) | int(seq)


def id_split(v):
    """The inverse of :func:`id_int`: ``(ts, seq)``."""
    return (v >> 64, v & _U64_MAX)


def next_id_for(Stream stream, uint64_t now, uint64_t count=1):
    """``stream.next_id(now, count)``, or a new stream's first id when ``stream`` is None."""
    cdef uint64_t ts, seq
    next_id_of(stream, now, count, &ts, &seq)
    return (ts, seq)


cdef class Stream:
    """One stream: records, id generator, retention and its consumer groups (fields: stream.pxd)."""

    def __cinit__(self):
        self.meta = NULL
        self.data = NULL

    def __init__(self, str name, uint64_t created_ms=0):
        cdef bytes kb = name.encode("utf-8")
        self.name = name
        self.key_prefix = b"\x00" + b"\x00\x00\x00\x00" + b"\x01" + len(kb).to_bytes(4, "little") + kb
        self.groups = {}
        self.created_ms = created_ms

    def __dealloc__(self):
        free(self.meta)
        free(self.data)

    # --- sizes -------------------------------------------------------------

    def __len__(self):
        return self.n - self.head

    @property
    def end_ord(self):
        """Ordinal the next appended record will get."""
        return self.first_ord + <uint64_t>(self.n - self.head)

    @property
    def last_id(self):
        return (self.last_ts, self.last_seq)

    # --- ids ---------------------------------------------------------------

    def next_id(self, uint64_t now, uint64_t count=1):
        """The id the next append of ``count`` records gets at ``now``.

        Wall clock advanced -> ``(now, 0)``; same ms or clock went backwards ->
        ``(last_ts, last_seq + 1)``; a sequence that would overflow bumps the ms.
        """
        cdef uint64_t ts, seq
        self.next_id_c(now, count, &ts, &seq)
        return (ts, seq)

    cdef void next_id_c(self, uint64_t now, uint64_t count, uint64_t *ts, uint64_t *seq) noexcept:
        """:meth:`next_id` for C callers (ServerCore's STREAM_APPEND)."""
        if self.last_ts == 0 and self.last_seq == 0:
            first_id(now, ts, seq)
        elif now > self.last_ts:
            ts[0] = now
            seq[0] = 0
        elif self.last_seq > _U64_MAX - count:
            ts[0] = self.last_ts + 1
            seq[0] = 0
        else:
            ts[0] = self.last_ts
            seq[0] = self.last_seq + 1

    # --- storage -----------------------------------------------------------

    cdef int _reserve(self, Py_ssize_t nrec, uint64_t nbytes) except -1:
        cdef Py_ssize_t want
        cdef uint64_t dwant
        cdef void *p
        if self.n + nrec > self.cap:
            self._compact()
        if self.n + nrec > self.cap:
            want = max(self.cap * 2, self.n + nrec, 16)
            p = realloc(self.meta, want * sizeof(Meta))
            if p == NULL:
                raise MemoryError()
            self.meta = <Meta *>p
            self.cap = want
        if self.dlen + nbytes > self.dcap:
            self._compact()
        if self.dlen + nbytes > self.dcap:
            dwant = max(self.dcap * 2, self.dlen + nbytes, <uint64_t>4096)
            p = realloc(self.data, dwant)
            if p == NULL:
                raise MemoryError()
            self.data = <uint8_t *>p
            self.dcap = dwant
        return 0

    cdef void _compact(self) noexcept:
        """Drop the trimmed prefix of both buffers (called when it is worth it)."""
        cdef Py_ssize_t i, live = self.n - self.head
        cdef uint64_t dstart
        if self.head == 0:
            return
        if live == 0:
            self.head = 0
            self.n = 0
            self.dlen = 0
            return
        dstart = self.meta[self.head].off
        memmove(self.meta, self.meta + self.head, live * sizeof(Meta))
        self.head = 0
        self.n = live
        if dstart:
            memmove(self.data, self.data + dstart, self.dlen - dstart)
            self.dlen -= dstart
            for i in range(live):
                self.meta[i].off -= dstart

    def append(self, uint64_t now, uint64_t ts, uint64_t seq, list records):
        """Append ``records`` (``[[payload, headers], ...]``) with ids ``(ts, seq)``,
        ``(ts, seq+1)``... and apply retention at ``now``. Returns the first ordinal.

        ``headers`` is ``None`` or a list of ``[key, value]`` string pairs.
        The caller (the handler) picked the id with :meth:`next_id`.
        """
        cdef Py_ssize_t k = len(records), i
        cdef uint64_t first = self.end_ord, blob_total = 0, blen
        cdef list blobs = []
        cdef bytes blob
        cdef Meta *m
        if k == 0:
            return first
        if self.n > self.head or self.last_ts or self.last_seq:
            if not id_lt(self.last_ts, self.last_seq, ts, seq):
                raise ValueError("stream id must be greater than the last one")
        for rec in records:
            blob = _encode_blob(rec[0], rec[1])
            blobs.append(blob)
            blob_total += PyBytes_GET_SIZE(blob)
        self._reserve(k, blob_total)
        for i in range(k):
            blob = blobs[i]
            blen = PyBytes_GET_SIZE(blob)
            m = &self.meta[self.n]
            m.ts = ts
            m.seq = seq + <uint64_t>i
            m.off = self.dlen
            m.blen = <uint32_t>blen
            m.plen = ld32(<const uint8_t *>PyBytes_AS_STRING(blob))
            memcpy(self.data + self.dlen, PyBytes_AS_STRING(blob), blen)
            self.dlen += blen
            self.total_bytes += blen
            self.n += 1
        self.last_ts = ts
        self.last_seq = seq + <uint64_t>(k - 1)
        self.enforce_retention(now)
        return first

    cdef uint64_t append_wire(self, uint64_t now, uint64_t ts, uint64_t seq, uint32_t count,
                              const uint8_t *recs, Py_ssize_t n) except? 0xFFFFFFFFFFFFFFFF:
        """:meth:`append` straight from a STREAM_APPEND value: ``count`` records in wire form
        (``[payload bytes32][hc u16]`` hc x ``([k str16][v str16])``) at ``recs[:n]``, which the
        caller has already checked (bounds, UTF-8). Stores the same blobs as :meth:`append`
        (headers re-framed with u32 lengths), then applies retention. Returns the first ordinal.
        """
        cdef uint64_t first = self.end_ord, total = 0, blen
        cdef Py_ssize_t pos = 0, start
        cdef uint32_t i, j, plen, hc, kl, vl
        cdef uint8_t *w
        cdef Meta *m
        if count == 0:
            return first
        if self.n > self.head or self.last_ts or self.last_seq:
            if not id_lt(self.last_ts, self.last_seq, ts, seq):
                raise ValueError("stream id must be greater than the last one")
        # pass 1: blob sizes (each u16 length becomes a u32: +2 bytes per string, +2 for the count)
        for i in range(count):
            if pos + 4 > n:
                raise ValueError("stream records overrun their buffer")
            plen = ld32(recs + pos)
            pos += 4
            if plen > n - pos or pos + plen + 2 > n:
                raise ValueError("stream records overrun their buffer")
            pos += plen
            hc = ld16(recs + pos)
            pos += 2
            total += 8 + <uint64_t>plen
            for j in range(hc):
                if pos + 2 > n:
                    raise ValueError("stream records overrun their buffer")
                kl = ld16(recs + pos)
                pos += 2 + kl
                if pos + 2 > n:
                    raise ValueError("stream records overrun their buffer")
                vl = ld16(recs + pos)
                pos += 2 + vl
                if pos > n:
                    raise ValueError("stream records overrun their buffer")
                total += 8 + <uint64_t>kl + vl
        self._reserve(count, total)
        # pass 2: copy
        pos = 0
        for i in range(count):
            w = self.data + self.dlen
            start = pos
            plen = ld32(recs + pos)
            memcpy(w, recs + pos, 4 + plen)
            pos += 4 + plen
            hc = ld16(recs + pos)
            pos += 2
            blen = 8 + <uint64_t>plen
            st32(w + 4 + plen, hc)
            w += 8 + plen
            for j in range(hc):
                kl = ld16(recs + pos)
                st32(w, kl)
                memcpy(w + 4, recs + pos + 2, kl)
                w += 4 + kl
                pos += 2 + kl
                vl = ld16(recs + pos)
                st32(w, vl)
                memcpy(w + 4, recs + pos + 2, vl)
                w += 4 + vl
                pos += 2 + vl
                blen += 8 + <uint64_t>kl + vl
            m = &self.meta[self.n]
            m.ts = ts
            m.seq = seq + i
            m.off = self.dlen
            m.blen = <uint32_t>blen
            m.plen = plen
            self.dlen += blen
            self.total_bytes += blen
            self.n += 1
        self.last_ts = ts
        self.last_seq = seq + (count - 1)
        if self.max_len or self.max_age_ms or self.max_bytes:
            self.enforce_retention(now)
        return first

    def remove_oldest(self, uint64_t k):
        """Physically remove the ``k`` oldest records. Returns how many went."""
        cdef Py_ssize_t live = self.n - self.head, i
        if k > <uint64_t>live:
            k = live
        for i in range(self.head, self.head + <Py_ssize_t>k):
            self.total_bytes -= self.meta[i].blen
        self.head += <Py_ssize_t>k
        self.first_ord += k
        if self.head == self.n:
            self.head = 0
            self.n = 0
            self.dlen = 0
        elif self.head > 64 and self.head * 2 > self.n:
            self._compact()
        return k

    # --- positions ---------------------------------------------------------

    cdef Py_ssize_t _lower(self, uint64_t ts, uint64_t seq) noexcept:
        """Array position of the first live record with id >= (ts, seq)."""
        cdef Py_ssize_t lo = self.head, hi = self.n, mid
        while lo < hi:
            mid = (lo + hi) >> 1
            if id_lt(self.meta[mid].ts, self.meta[mid].seq, ts, seq):
                lo = mid + 1
            else:
                hi = mid
        return lo

    cdef Py_ssize_t _age_pos(self, uint64_t now) noexcept:
        """First array position not hidden by max-age retention at ``now``."""
        cdef uint64_t cutoff
        if self.max_age_ms == 0 or now <= self.max_age_ms:
            return self.head
        cutoff = now - self.max_age_ms
        return self._lower(cutoff, 0)

    def lower_bound(self, uint64_t ts, uint64_t seq):
        """Ordinal of the first record with id >= (ts, seq)."""
        return self.first_ord + <uint64_t>(self._lower(ts, seq) - self.head)

    def upper_bound(self, uint64_t ts, uint64_t seq):
        """Ordinal of the first record with id > (ts, seq)."""
        if seq == _U64_MAX:
            return self.first_ord + <uint64_t>(self._lower(ts + 1, 0) - self.head) if ts != _U64_MAX else self.end_ord
        return self.first_ord + <uint64_t>(self._lower(ts, seq + 1) - self.head)

    def visible_ord(self, uint64_t now):
        """Ordinal of the oldest record a read at ``now`` can see (max-age retention)."""
        return self.first_ord + <uint64_t>(self._age_pos(now) - self.head)

    cdef bint _has(self, uint64_t ordinal) noexcept:
        return self.first_ord <= ordinal < self.first_ord + <uint64_t>(self.n - self.head)

    def id_at(self, uint64_t ordinal):
        if not self._has(ordinal):
            raise IndexError("no such record")
        cdef Meta *m = &self.meta[self.head + <Py_ssize_t>(ordinal - self.first_ord)]
        return (m.ts, m.seq)

    def record(self, uint64_t ordinal):
        """``(ts, seq, payload, headers-dict-or-None)`` of one record."""
        if not self._has(ordinal):
            raise IndexError("no such record")
        cdef Meta *m = &self.meta[self.head + <Py_ssize_t>(ordinal - self.first_ord)]
        return (m.ts, m.seq) + _decode_blob(self.data + m.off, m.blen)

    # --- reads -------------------------------------------------------------

    def read(self, uint64_t start_ord, uint64_t now, uint64_t count=10, end=None):
        """Encode up to ``count`` records from ``start_ord`` (clamped to what is
        visible) up to the id ``end`` (inclusive) as a wire record list.

        Returns ``(n, answer_bytes)``.
        """
        cdef Py_ssize_t p0, p1, vis = self._age_pos(now)
        cdef uint64_t ets = 0, eseq = 0
        cdef bint has_end = end is not None
        if has_end:
            ets, eseq = end
        if start_ord < self.first_ord:
            p0 = self.head
        else:
            p0 = self.head + <Py_ssize_t>min(start_ord - self.first_ord, <uint64_t>(self.n - self.head))
        if p0 < vis:
            p0 = vis
        p1 = p0
        while p1 < self.n and <uint64_t>(p1 - p0) < count:
            if has_end and id_lt(ets, eseq, self.meta[p1].ts, self.meta[p1].seq):
                break
            p1 += 1
        return p1 - p0, self._encode_range(p0, p1)

    cdef bytes _encode_range(self, Py_ssize_t p0, Py_ssize_t p1):
        cdef list positions = list(range(p0, p1))
        return self._encode_positions(positions)

    cdef bytes _encode_positions(self, list positions):
        cdef Py_ssize_t kp = PyBytes_GET_SIZE(self.key_prefix), i, pos
        cdef uint64_t total = 4
        cdef Meta *m
        cdef uint8_t *w
        for pos in positions:
            total += 16 + kp + self.meta[pos].blen
        out = PyBytes_FromStringAndSize(NULL, total)
        w = <uint8_t *>PyBytes_AS_STRING(out)
        st32(w, <uint32_t>len(positions))
        w += 4
        for pos in positions:
            m = &self.meta[pos]
            st64(w, m.seq)
            st64(w + 8, m.ts)
            memcpy(w + 16, PyBytes_AS_STRING(self.key_prefix), kp)
            w += 16 + kp
            memcpy(w, self.data + m.off, m.blen)
            w += m.blen
        return out

    def encode_ords(self, list ordinals):
        """Encode the records with these ordinals (all must exist) as a wire record list."""
        cdef list positions = []
        for o in ordinals:
            if not self._has(o):
                raise IndexError("no such record")
            positions.append(self.head + <Py_ssize_t>(<uint64_t>o - self.first_ord))
        return self._encode_positions(positions)

    def info(self, uint64_t now):
        """``(first_ts, first_seq, last_ts, last_seq, count, bytes)`` as a read at ``now`` sees it."""
        cdef Py_ssize_t vis = self._age_pos(now), i
        cdef uint64_t hidden = 0
        if vis >= self.n:
            return (0, 0, self.last_ts, self.last_seq, 0, 0)
        for i in range(self.head, vis):
            hidden += self.meta[i].blen
        return (self.meta[vis].ts, self.meta[vis].seq, self.last_ts, self.last_seq,
                self.n - vis, self.total_bytes - hidden)

    # --- trim and retention -----------------------------------------------

    def trim_count_before(self, uint64_t ts, uint64_t seq):
        """How many records have id <= (ts, seq)."""
        return self.upper_bound(ts, seq) - self.first_ord

    def trim_count_max_len(self, uint64_t keep):
        cdef uint64_t live = self.n - self.head
        return live - keep if live > keep else 0

    def trim_count_age(self, uint64_t now, uint64_t max_age_ms):
        """How many records are older than ``max_age_ms`` at ``now``."""
        if now <= max_age_ms:
            return 0
        return <uint64_t>(self._lower(now - max_age_ms, 0) - self.head)

    def trim_count_bytes(self, uint64_t max_bytes):
        """How many oldest records must go for the rest to fit in ``max_bytes``."""
        cdef uint64_t over, freed = 0
        cdef Py_ssize_t i = self.head
        if self.total_bytes <= max_bytes:
            return 0
        over = self.total_bytes - max_bytes
        while i < self.n and freed < over:
            freed += self.meta[i].blen
            i += 1
        return <uint64_t>(i - self.head)

    def first_seq_after(self, uint64_t k):
        """Sequence of the first record left after removing ``k`` (0 if none left)."""
        cdef Py_ssize_t p = self.head + <Py_ssize_t>k
        return self.meta[p].seq if p < self.n else 0

    def enforce_retention(self, uint64_t now):
        """Remove what the retention settings no longer keep. Returns the count."""
        cdef uint64_t k = 0
        if self.max_len:
            k = max(k, self.trim_count_max_len(self.max_len))
        if self.max_age_ms:
            k = max(k, self.trim_count_age(now, self.max_age_ms))
        if self.max_bytes:
            k = max(k, self.trim_count_bytes(self.max_bytes))
        return self.remove_oldest(k) if k else 0

    # --- groups ------------------------------------------------------------

    def group(self, str name):
        return self.groups.get(name)

    def group_create(self, str name, uint64_t now, start_ord=None):
        """The group ``name``, created (starting at ``start_ord``, default the
        beginning of the stream) if absent."""
        g = self.groups.get(name)
        if g is None:
            g = Group(name, self.first_ord if start_ord is None else start_ord, now)
            self.groups[name] = g
        return g

    # --- snapshots ---------------------------------------------------------

    def dump(self):
        """A msgpack-able picture of the stream (records as two byte strings)."""
        self._compact()
        cdef Py_ssize_t live = self.n - self.head
        meta = PyBytes_FromStringAndSize(<char *>self.meta, live * sizeof(Meta)) if live else b""
        data = PyBytes_FromStringAndSize(<char *>self.data, self.dlen) if self.dlen else b""
        return {
            "name": self.name, "created": self.created_ms, "first_ord": self.first_ord,
            "last": [self.last_ts, self.last_seq], "bytes": self.total_bytes,
            "retention": [self.max_len, self.max_age_ms, self.max_bytes],
            "meta": meta, "data": data,
            "groups": [g.dump() for g in self.groups.values()],
        }

    @staticmethod
    def from_dump(dict d):
        cdef Stream s = Stream(d["name"], d.get("created", 0))
        cdef bytes meta = d["meta"], data = d["data"]
        cdef Py_ssize_t live = PyBytes_GET_SIZE(meta) // sizeof(Meta)
        s._reserve(live, PyBytes_GET_SIZE(data))
        if live:
            memcpy(s.meta, PyBytes_AS_STRING(meta), live * sizeof(Meta))
        if PyBytes_GET_SIZE(data):
            memcpy(s.data, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        s.n = live
        s.dlen = PyBytes_GET_SIZE(data)
        s.first_ord = d["first_ord"]
        s.last_ts, s.last_seq = d["last"]
        s.total_bytes = d["bytes"]
        s.max_len, s.max_age_ms, s.max_bytes = d["retention"]
        for gd in d["groups"]:
            g = Group.from_dump(gd)
            s.groups[g.name] = g
        return s

    def dump_without_records(self):
        """``(dump, meta_bytes, data_bytes)``: :meth:`dump` with "meta" and "data" empty, and their lengths.
        :meth:`record_pieces` has those bytes - a snapshot streams them rather than copy the stream at once."""
        cdef Py_ssize_t n
        cdef uint64_t dlen
        self._compact()  # the live records are now meta[0:n], data[0:dlen]
        n, dlen = self.n, self.dlen
        self.n = 0
        self.dlen = 0
        try:
            d = self.dump()
        finally:
            self.n, self.dlen = n, dlen
        return d, n * sizeof(Meta), dlen

    def record_pieces(self, Py_ssize_t size=1 << 20):
        """The bytes :meth:`dump_without_records` left out, "meta" then "data", in pieces of at most ``size``.

        Nothing may change the stream while they are read (the forked snapshot child, or the loop thread)."""
        cdef Py_ssize_t at, total
        self._compact()
        total = self.n * sizeof(Meta)
        for at in range(0, total, size):
            yield PyBytes_FromStringAndSize(<char *>self.meta + at, min(size, total - at))
        total = self.dlen
        for at in range(0, total, size):
            yield PyBytes_FromStringAndSize(<char *>self.data + at, min(size, total - at))

    def load_records(self, Py_ssize_t meta_bytes, Py_ssize_t data_bytes, pieces):
        """Put back the records of a stream :meth:`from_dump` made of a :meth:`dump_without_records`:
        ``pieces`` (bytes, as :meth:`record_pieces` cut them) hold ``meta_bytes`` then ``data_bytes``.
        ``ValueError`` if the stream holds records already or the pieces do not add up."""
        cdef Py_ssize_t got = 0, plen, total = meta_bytes + data_bytes
        cdef bytes piece
        if self.n != self.head or self.dlen:
            raise ValueError("the stream holds records already")
        if meta_bytes < 0 or data_bytes < 0 or meta_bytes % sizeof(Meta):
            raise ValueError(f"no stream has {meta_bytes} bytes of record index and {data_bytes} of records")
        self._reserve(meta_bytes // sizeof(Meta), data_bytes)
        for piece in (pieces if total else ()):  # (takes no more than its own pieces: the rest are the next stream's)
            plen = PyBytes_GET_SIZE(piece)
            if got + plen > total or (got < meta_bytes < got + plen):
                raise ValueError("the stream's pieces do not add up to its records")
            if got < meta_bytes:
                memcpy(<char *>self.meta + got, PyBytes_AS_STRING(piece), plen)
            else:
                memcpy(self.data + (got - meta_bytes), PyBytes_AS_STRING(piece), plen)
            got += plen
            if got == total:
                break
        if got != total:
            raise ValueError(f"the stream's pieces hold {got} of its {total} bytes")
        self.head = 0
        self.n = meta_bytes // sizeof(Meta)
        self.dlen = data_bytes


cdef bytes _encode_blob(object payload, object headers):
    """``[payload bytes32][header_count u32]([k bytes32][v bytes32])*``."""
    cdef list parts
    cdef bytes kb, vb
    payload = bytes(payload)
    if not headers:
        return len(payload).to_bytes(4, "little") + payload + b"\x00\x00\x00\x00"
    parts = [len(payload).to_bytes(4, "little"), payload, len(headers).to_bytes(4, "little")]
    for kv in headers:
        kb = kv[0].encode("utf-8") if isinstance(kv[0], str) else bytes(kv[0])
        vb = kv[1].encode("utf-8") if isinstance(kv[1], str) else bytes(kv[1])
        parts.append(len(kb).to_bytes(4, "little"))
        parts.append(kb)
        parts.append(len(vb).to_bytes(4, "little"))
        parts.append(vb)
    return b"".join(parts)


cdef tuple _decode_blob(const uint8_t *p, uint32_t blen):
    cdef uint32_t plen = ld32(p), hc, i, kl, vl
    cdef Py_ssize_t pos
    payload = PyBytes_FromStringAndSize(<const char *>p + 4, plen)
    pos = 4 + plen
    hc = ld32(p + pos)
    pos += 4
    if hc == 0:
        return (payload, None)
    headers = {}
    for i in range(hc):
        kl = ld32(p + pos)
        k = (<const char *>p)[pos + 4:pos + 4 + kl].decode("utf-8")
        pos += 4 + kl
        vl = ld32(p + pos)
        v = (<const char *>p)[pos + 4:pos + 4 + vl].decode("utf-8")
        pos += 4 + vl
        headers[k] = v
    return (payload, headers)


cdef class PendingEntry:
    """A delivered, not yet acknowledged record of a group (one PEL entry)."""

    cdef public uint64_t ordinal
    cdef public str owner
    cdef public uint32_t delivery_count
    cdef public uint64_t last_delivery_ms
    cdef public uint64_t deadline_ms      # redeliverable from then on; U64_MAX = never

    def __init__(self, uint64_t ordinal, str owner, uint32_t count, uint64_t last, uint64_t deadline):
        self.ordinal = ordinal
        self.owner = owner
        self.delivery_count = count
        self.last_delivery_ms = last
        self.deadline_ms = deadline


cdef class Group:
    """A consumer group: cursor, consumers and the pending entry list (PEL).

    The PEL is a dict keyed by the packed id (:func:`id_int`) plus a sorted list
    of keys for scans from an id (new entries always have the largest id, so the
    list is only ever appended to; acked keys are skipped and compacted away),
    and a heap of ``(deadline, key)`` for redelivery (stale items are skipped).
    """

    cdef public str name
    cdef public uint64_t next_ord         # next never-delivered record
    cdef public uint64_t last_ts, last_seq  # id of the last new record delivered
    cdef public uint64_t ack_timeout_ms   # 0 = no timeout
    cdef public uint32_t max_deliver      # 0 = unlimited
    cdef public dict consumers            # name -> [joined_ms, last_seen_ms]
    cdef public dict pel                  # id_int -> PendingEntry
    cdef list order                       # sorted id_ints (may hold acked ones)
    cdef list heap                        # (deadline, id_int)
    cdef public list dead                 # recent dead-lettered [ts, seq, deliveries]
    cdef public uint64_t dead_count, delivered, acked, created_ms

    def __init__(self, str name, uint64_t start_ord, uint64_t now,
                 uint64_t ack_timeout_ms=DEFAULT_ACK_TIMEOUT_MS, uint32_t max_deliver=DEFAULT_MAX_DELIVER):
        self.name = name
        self.next_ord = start_ord
        self.ack_timeout_ms = ack_timeout_ms
        self.max_deliver = max_deliver
        self.consumers = {}
        self.pel = {}
        self.order = []
        self.heap = []
        self.dead = []
        self.created_ms = now

    # --- consumers ---------------------------------------------------------

    def join(self, str consumer, uint64_t now):
        """Add ``consumer`` (idempotent). True if it was new."""
        c = self.consumers.get(consumer)
        if c is None:
            self.consumers[consumer] = [now, now]
            return True
        c[1] = now
        return False

    def leave(self, str consumer):
        """Remove ``consumer``; its pending entries stay (to be claimed or redelivered)."""
        return self.consumers.pop(consumer, None) is not None

    # --- delivery ----------------------------------------------------------

    cdef uint64_t _deadline(self, uint64_t now):
        return now + self.ack_timeout_ms if self.ack_timeout_ms else _U64_MAX

    cdef void _push(self, PendingEntry e, object key):
        if e.deadline_ms != _U64_MAX:
            heapq.heappush(self.heap, (e.deadline_ms, key))

    cdef void _clean_heap_top(self):
        cdef PendingEntry e
        while self.heap:
            dl, key = self.heap[0]
            e = self.pel.get(key)
            if e is not None and e.deadline_ms == dl:
                return
            heapq.heappop(self.heap)

    def next_deadline(self):
        """The earliest time an entry becomes redeliverable, or None."""
        self._clean_heap_top()
        return self.heap[0][0] if self.heap else None

    def has_deliverable(self, Stream stream, uint64_t now):
        """Would :meth:`deliver` at ``now`` hand out (or dead-letter) anything?"""
        self._clean_heap_top()
        if self.heap and self.heap[0][0] <= now:
            return True
        return max(self.next_ord, stream.visible_ord(now)) < stream.end_ord

    def deliver(self, Stream stream, str consumer, uint64_t count, uint64_t now):
        """Hand up to ``count`` records to ``consumer``: redeliverable entries
        first (nacked or past their ack deadline, oldest deadline first), then
        records past the group's cursor. Returns their ordinals."""
        cdef list out = []
        cdef PendingEntry e
        cdef uint64_t vis = stream.visible_ord(now), end = stream.end_ord, o
        self.join(consumer, now)
        while len(out) < count and self.heap and self.heap[0][0] <= now:
            dl, key = heapq.heappop(self.heap)
            e = self.pel.get(key)
            if e is None or e.deadline_ms != dl:
                continue
            if e.ordinal < vis or e.ordinal >= end:
                del self.pel[key]                       # the record was trimmed away
                continue
            if self.max_deliver and e.delivery_count >= self.max_deliver:
                del self.pel[key]
                self._dead(key, e)
                continue
            e.owner = consumer
            e.delivery_count += 1
            e.last_delivery_ms = now
            e.deadline_ms = self._deadline(now)
            self._push(e, key)
            out.append(e.ordinal)
            self.delivered += 1
        if self.next_ord < vis:
            self.next_ord = vis
        while len(out) < count and self.next_ord < end:
            o = self.next_ord
            self.next_ord += 1
            ts, seq = stream.id_at(o)
            key = id_int(ts, seq)
            e = PendingEntry(o, consumer, 1, now, self._deadline(now))
            self.pel[key] = e
            self.order.append(key)
            self._push(e, key)
            self.last_ts = ts
            self.last_seq = seq
            out.append(o)
            self.delivered += 1
        self._maybe_compact()
        return out

    cdef void _dead(self, object key, PendingEntry e):
        self.dead_count += 1
        ts, seq = id_split(key)
        self.dead.append([ts, seq, e.delivery_count])
        if len(self.dead) > MAX_DEAD_KEPT:
            del self.dead[: len(self.dead) - MAX_DEAD_KEPT]

    cdef void _maybe_compact(self):
        if len(self.order) > 2 * len(self.pel) + 64:
            self.order = [k for k in self.order if k in self.pel]
        if len(self.heap) > 2 * len(self.pel) + 64:
            self._rebuild_heap()

    cdef void _rebuild_heap(self):
        cdef PendingEntry e
        self.heap = [(e.deadline_ms, k) for k, e in self.pel.items() if e.deadline_ms != _U64_MAX]
        heapq.heapify(self.heap)

    # --- ack / nack / touch ------------------------------------------------

    def ack(self, list keys):
        """Remove these packed ids from the PEL. Returns how many were pending."""
        cdef uint64_t n = 0
        for k in keys:
            if self.pel.pop(k, None) is not None:
                n += 1
        self.acked += n
        self._maybe_compact()
        return n

    def nack(self, list keys, uint64_t now):
        """Make these entries redeliverable at once. Returns how many were pending."""
        cdef PendingEntry e
        cdef uint64_t n = 0
        for k in keys:
            e = self.pel.get(k)
            if e is not None:
                e.deadline_ms = now
                heapq.heappush(self.heap, (now, k))
                n += 1
        self._maybe_compact()
        return n

    def touch(self, list keys, uint64_t now):
        """Push these entries' ack deadlines to ``now + ack_timeout``."""
        cdef PendingEntry e
        cdef uint64_t n = 0
        for k in keys:
            e = self.pel.get(k)
            if e is not None:
                e.deadline_ms = self._deadline(now)
                self._push(e, k)
                n += 1
        self._maybe_compact()
        return n

    # --- claim and pending -------------------------------------------------

    def claim(self, Stream stream, str consumer, uint64_t min_idle_ms, start_key,
              uint64_t count, uint64_t now, others=None):
        """Take up to ``count`` pending entries, scanning from ``start_key`` in id
        order: ``consumer``'s own entries, plus (when ``others`` - by default
        ``min_idle_ms > 0``, Flo's rule) other consumers' entries idle at least
        ``min_idle_ms`` (Redis XAUTOCLAIM passes ``others=True`` with any idle).

        Returns ``(ordinals, next_key)``; ``next_key`` is None when the scan
        reached the end of the PEL. Entries whose record is gone are dropped.
        """
        cdef list out = []
        cdef PendingEntry e
        cdef Py_ssize_t i = bisect_left(self.order, start_key), scanned = 0, n = len(self.order)
        cdef uint64_t vis = stream.visible_ord(now), end = stream.end_ord
        cdef bint take_others = (min_idle_ms > 0) if others is None else bool(others)
        self.join(consumer, now)
        while i < n and len(out) < count and scanned < MAX_CLAIM_SCAN:
            key = self.order[i]
            i += 1
            e = self.pel.get(key)
            if e is None:
                continue
            scanned += 1
            if e.owner != consumer:
                if not take_others or now < e.last_delivery_ms + min_idle_ms:
                    continue
            if e.ordinal < vis or e.ordinal >= end:
                del self.pel[key]
                continue
            e.owner = consumer
            e.delivery_count += 1
            e.last_delivery_ms = now
            e.deadline_ms = self._deadline(now)
            self._push(e, key)
            out.append(e.ordinal)
        nxt = self.order[i] if i < n else None
        self._maybe_compact()
        return out, nxt

    def pending(self, consumer=None, start_key=0, uint64_t limit=MAX_PENDING_LIST, uint64_t now=0):
        """``[(ts, seq, delivery_count, owner, idle_ms, redeliverable)]`` in id order."""
        cdef list out = []
        cdef PendingEntry e
        cdef Py_ssize_t i = bisect_left(self.order, start_key), n = len(self.order)
        while i < n and <uint64_t>len(out) < limit:
            key = self.order[i]
            i += 1
            e = self.pel.get(key)
            if e is None or (consumer is not None and e.owner != consumer):
                continue
            ts, seq = id_split(key)
            out.append((ts, seq, e.delivery_count, e.owner,
                        now - e.last_delivery_ms if now > e.last_delivery_ms else 0,
                        e.deadline_ms <= now))
        return out

    def pending_by_consumer(self):
        cdef dict counts = {c: 0 for c in self.consumers}
        cdef PendingEntry e
        for e in self.pel.values():
            counts[e.owner] = counts.get(e.owner, 0) + 1
        return counts

    def lag(self, Stream stream, uint64_t now):
        """Records not yet delivered to the group."""
        cdef uint64_t start = max(self.next_ord, stream.visible_ord(now)), end = stream.end_ord
        return end - start if end > start else 0

    # --- snapshots ---------------------------------------------------------

    def dump(self):
        cdef PendingEntry e
        return {
            "name": self.name, "next_ord": self.next_ord, "last": [self.last_ts, self.last_seq],
            "ack_timeout": self.ack_timeout_ms, "max_deliver": self.max_deliver,
            "consumers": self.consumers, "created": self.created_ms,
            "counters": [self.dead_count, self.delivered, self.acked], "dead": self.dead,
            "pel": [[k >> 64, k & _U64_MAX, e.ordinal, e.owner, e.delivery_count,
                     e.last_delivery_ms, e.deadline_ms] for k in self.order
                    for e in (self.pel.get(k),) if e is not None],
        }

    @staticmethod
    def from_dump(dict d):
        cdef Group g = Group(d["name"], d["next_ord"], d.get("created", 0), d["ack_timeout"], d["max_deliver"])
        cdef PendingEntry e
        g.last_ts, g.last_seq = d["last"]
        g.consumers = {k: list(v) for k, v in d["consumers"].items()}
        g.dead_count, g.delivered, g.acked = d["counters"]
        g.dead = [list(x) for x in d["dead"]]
        for ts, seq, o, owner, cnt, last, dl in d["pel"]:
            key = id_int(ts, seq)
            e = PendingEntry(o, owner, cnt, last, dl)
            g.pel[key] = e
            g.order.append(key)
        g._rebuild_heap()
        return g


class Streams:
    """Every stream of every namespace: ``get_or_create``, ``get``, ``names``, ``dump``/``load``.

    Example:
        >>> reg = Streams()
        >>> reg.get("default", "events") is None
        True
        >>> reg.get_or_create("default", "events").name
        'events'
        >>> reg.names("default")
        ['events']
    """

    def __init__(self):
        self.by_ns = {}

    def get(self, str ns, str name):
        d = self.by_ns.get(ns)
        return d.get(name) if d is not None else None

    def get_or_create(self, str ns, str name, uint64_t now=0):
        d = self.by_ns.get(ns)
        if d is None:
            d = self.by_ns[ns] = {}
        s = d.get(name)
        if s is None:
            s = d[name] = Stream(name, now)
        return s

    def delete(self, str ns, str name):
        d = self.by_ns.get(ns)
        if d is None or name not in d:
            return False
        del d[name]
        if not d:
            del self.by_ns[ns]
        return True

    def names(self, str ns):
        return sorted(self.by_ns.get(ns, ()))

    def namespaces(self):
        return sorted(self.by_ns)

    def dump(self):
        return {ns: [s.dump() for s in d.values()] for ns, d in self.by_ns.items()}

    def load(self, state):
        self.by_ns = {}
        for ns, items in (state or {}).items():
            self.by_ns[ns] = {sd["name"]: Stream.from_dump(sd) for sd in items}


__all__ = [
    "Stream", "Group", "PendingEntry", "Streams", "id_int", "id_split", "U64_MAX",
    "DEFAULT_READ_COUNT", "MAX_READ_COUNT", "MAX_APPEND_BATCH", "DEFAULT_ACK_TIMEOUT_MS",
    "DEFAULT_MAX_DELIVER", "MAX_PENDING_LIST", "MAX_CLAIM_SCAN", "MAX_CONSUMERS", "MAX_GROUPS",
]

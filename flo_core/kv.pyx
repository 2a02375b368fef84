# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
"""Versioned KV store, sans-IO.

One :class:`KVStore` holds every namespace. A key's entry carries its value,
its version (the LSN of the write that made it, so versions rise strictly and
replay identically), an absolute expiry time in unix ms (0 = none) and up to
``MAX_HISTORY`` earlier versions. Time comes in as ``now``; expired keys read
as absent at once (lazy) and are removed by :meth:`KVStore.expire_some`
(active), which the server calls from a timer.

The versions live in C (``flo_core/kvtable.h``): one allocation per version with
the key and value inline, an open-addressing hash table per namespace and a
sorted index for scans. :class:`Entry` objects are copies made on demand.

Example:
    >>> s = KVStore()
    >>> s.set("default", b"k", b"v", 5, 0, 1000)
    >>> e = s.get("default", b"k", 1000)
    >>> (e.value, e.version)
    (b'v', 5)
"""

cimport cython
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from libc.stdlib cimport malloc, free, qsort
from libc.string cimport memcpy
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize

from flo_core.wirefmt cimport key_slot
from flo_core.mpack cimport _mp_array, _mp_bin, _mp_int, _mp_int_size, _mp_uint
import heapq


cdef extern from "kvtable.h":
    void kv_table_init(kv_table *t) noexcept
    void kv_table_release(kv_table *t) noexcept
    uint64_t kv_hash(const kv_table *t, const char *k, size_t n) noexcept
    int kv_key_cmp(const char *a, size_t an, const char *b, size_t bn) noexcept
    Py_ssize_t kv_find_slot(const kv_table *t, uint64_t h, const char *k, size_t n) noexcept
    int kv_reserve(kv_table *t) noexcept
    void kv_insert(kv_table *t, uint64_t h, kv_ent *e) noexcept
    void kv_index_swap(kv_table *t, kv_ent *old, kv_ent *e) noexcept
    kv_ent *kv_take(kv_table *t, const char *k, size_t n) noexcept
    int kv_index_merge(kv_table *t) noexcept
    void kv_index_maybe_merge(kv_table *t) noexcept
    size_t kv_lower_bound(const kv_table *t, const char *k, size_t n) noexcept
    void kv_fresh_sort(kv_table *t) noexcept
    size_t KV_MERGE_MIN
    size_t kv_fresh_lower_bound(const kv_table *t, const char *k, size_t n) noexcept
    int kv_ent_cmp(const void *a, const void *b) noexcept nogil


DEF_HISTORY = 64
DEF_HISTORY_BUDGET = 256 * 1024 * 1024
#: The size of a stored version's header (its key and value bytes follow it in the same block).
ENTRY_HEADER = sizeof(kv_ent)
#: What one kept version costs besides its key's and value's bytes: the 48 B header, the
#: allocator's 8 B and its rounding to 16 B (8 B on average). Counted in the history budget
#: so that small values (counters) are bounded too.
VERSION_OVERHEAD = 64
cdef Py_ssize_t _OVERHEAD = VERSION_OVERHEAD
cdef Py_ssize_t _live = 0  # versions allocated and not yet freed, every store together


def live_versions():
    """Stored versions not yet freed (every store of this process): tests check that what is
    dropped is freed."""
    return _live


cdef kv_ent *_new_ent(const char *k, size_t klen, const char *v, size_t vlen, uint64_t version,
                      int64_t expires_at, int64_t written_at) except NULL:
    global _live
    if klen > 0xFFFFFFFF or vlen > 0xFFFFFFFF:
        raise OverflowError("a KV key or value is at most 4 GiB")  # far above any frame limit
    cdef kv_ent *e = <kv_ent *>malloc(sizeof(kv_ent) + klen + vlen)
    if e == NULL:
        raise MemoryError()
    e.version = version
    e.expires_at = expires_at
    e.written_at = written_at
    e.prev = NULL
    e.klen = <uint32_t>klen
    e.vlen = <uint32_t>vlen
    e.depth = 0
    e.ipos = 0
    if klen:
        memcpy(<char *>kv_key(e), k, klen)
    if vlen:
        memcpy(<char *>kv_val(e), v, vlen)
    _live += 1
    return e


cdef inline void _free_ent(kv_ent *e) noexcept:
    global _live
    free(e)
    _live -= 1


cdef inline bytes _key_of(const kv_ent *e):
    return PyBytes_FromStringAndSize(kv_key(e), e.klen)


cdef inline bytes _value_of(const kv_ent *e):
    return PyBytes_FromStringAndSize(kv_val(e), e.vlen)


cdef Entry _entry(Namespace sp, bytes key, const kv_ent *e):
    cdef Entry out = Entry.__new__(Entry)
    out.value = _value_of(e)
    out.version = e.version
    out.expires_at = e.expires_at
    out.written_at = e.written_at
    if e.prev != NULL:
        out._sp = sp
        out._key = key if key is not None else _key_of(e)
    return out


# Entries hold only bytes, ints and a Namespace (which holds no Python objects but its name):
# never part of a cycle, so the garbage collector need not track them.
@cython.no_gc
@cython.final
cdef class Entry:
    """One version of a key: ``value``, ``version``, ``expires_at`` (0 = none), ``written_at``.

    A copy: a later write does not change it. Earlier versions: ``prev`` (the one it replaced)
    and ``history`` (oldest first), read from the store when asked for.
    """

    @property
    def size(self):
        """``len(value)``."""
        return PyBytes_GET_SIZE(self.value)

    cdef const kv_ent *_stored(self):
        """This version in the store's chain of the key, or NULL (no longer held)."""
        cdef const kv_ent *e
        if self._sp is None:
            return NULL
        e = kv_lookup(&self._sp.t, PyBytes_AS_STRING(self._key), PyBytes_GET_SIZE(self._key))
        while e != NULL and e.version != self.version:
            e = e.prev
        return e

    @property
    def prev(self):
        """The version this one replaced, or None."""
        cdef const kv_ent *e = self._stored()
        if e == NULL or e.prev == NULL:
            return None
        return _entry(self._sp, self._key, e.prev)

    @property
    def history(self):
        """The earlier versions held, oldest first (a list; empty when none)."""
        out = []
        cdef const kv_ent *e = self._stored()
        if e == NULL:
            return out
        e = e.prev
        while e != NULL:
            out.append(_entry(self._sp, self._key, e))
            e = e.prev
        out.reverse()
        return out

    def __repr__(self):
        return f"Entry(version={self.version}, expires_at={self.expires_at}, value={self.value[:32]!r})"


cdef class Namespace:
    """The keys of one namespace (``flo_core/kvtable.h``): a hash table of stored versions, with a
    sorted index for prefix scans.

    New keys wait in a "fresh" array and join the sorted one in bulk - when a scan needs the
    order, or when they reach a quarter of it - so writing a new key costs an append, not a
    sorted insert. ``keys`` is a read-only mapping view ``{key: Entry}``.
    """

    def __cinit__(self, str name=""):
        kv_table_init(&self.t)
        self.name = name

    def __dealloc__(self):
        cdef size_t i
        cdef kv_ent *e
        cdef kv_ent *nxt
        for i in range(self.t.cap):
            e = self.t.slots[i].e
            while e != NULL:
                nxt = e.prev
                _free_ent(e)
                e = nxt
        kv_table_release(&self.t)

    @property
    def keys(self):
        """``{key: Entry}`` as stored (expired keys not yet reclaimed included), read-only."""
        return KeysView(self)

    def __len__(self):
        return self.t.used

    @property
    def table_slots(self):
        """The hash table's slots (16 B each; it grows at 3/4 full, halves under 1/8)."""
        return self.t.cap

    def __repr__(self):
        return f"Namespace({self.name!r}, {self.t.used} keys)"


@cython.final
cdef class _InKeyOrder:
    """A namespace's live entries in key order: the sorted index beside a sorted copy of the fresh
    pointers - one allocation, no write to the table (a forked snapshot child walks this and must
    not dirty its pages). A change to the namespace meanwhile raises RuntimeError."""

    cdef Namespace _sp
    cdef uint64_t _gen
    cdef size_t _i, _j, _nf
    cdef kv_ent **_fresh

    def __cinit__(self, Namespace sp):
        cdef kv_table *t = &sp.t
        self._sp = sp
        self._gen = t.gen
        self._nf = t.n_fresh
        if self._nf:
            self._fresh = <kv_ent **>malloc(self._nf * sizeof(kv_ent *))
            if self._fresh == NULL:
                raise MemoryError()
            memcpy(self._fresh, t.fresh, self._nf * sizeof(kv_ent *))
            qsort(self._fresh, self._nf, sizeof(kv_ent *), kv_ent_cmp)

    def __dealloc__(self):
        free(self._fresh)

    cdef kv_ent *next(self) except? NULL:
        """The next entry, or NULL after the last."""
        cdef kv_table *t = &self._sp.t
        cdef kv_ent *e
        if t.gen != self._gen:
            raise RuntimeError("namespace changed during iteration")
        while self._i < t.n_sorted and t.sorted[self._i] == NULL:
            self._i += 1
        if self._i < t.n_sorted and (self._j >= self._nf or kv_key_cmp(
                kv_key(t.sorted[self._i]), t.sorted[self._i].klen,
                kv_key(self._fresh[self._j]), self._fresh[self._j].klen) < 0):
            e = t.sorted[self._i]
            self._i += 1
            return e
        if self._j < self._nf:
            e = self._fresh[self._j]
            self._j += 1
            return e
        return NULL


cdef inline Py_ssize_t _bin_size(size_t n) noexcept:
    return (2 if n < 256 else 3 if n < 65536 else 5) + <Py_ssize_t>n


cdef inline Py_ssize_t _uint_size(uint64_t v) noexcept:
    return 1 if v < 128 else 2 if v < 0x100 else 3 if v < 0x10000 else 5 if v < 0x100000000ULL else 9


cdef inline Py_ssize_t _array_size(size_t n) noexcept:
    return 1 if n < 16 else 3 if n < 65536 else 5


@cython.final
cdef class _RowPacker:
    """:meth:`KVStore.packed_rows`: a namespace's :meth:`KVStore.dump` rows packed by C, batch by batch."""

    cdef _InKeyOrder _order
    cdef int _depth
    cdef Py_ssize_t _max_rows
    cdef kv_ent **_held  # one row's history, newest first (history_depth pointers)
    cdef kv_ent **_rows  # the current batch's entries (max_rows pointers)
    cdef kv_ent *_next   # the entry the last batch had no room for

    def __cinit__(self, Namespace sp, int depth, Py_ssize_t max_rows):
        self._order = _InKeyOrder(sp)
        self._depth = depth if depth > 0 else 0
        self._max_rows = max_rows if max_rows > 0 else 1
        self._held = <kv_ent **>malloc((self._depth + 1) * sizeof(kv_ent *))
        self._rows = <kv_ent **>malloc(self._max_rows * sizeof(kv_ent *))
        if self._held == NULL or self._rows == NULL:
            raise MemoryError()
        self._next = NULL

    def __dealloc__(self):
        free(self._held)
        free(self._rows)

    cdef Py_ssize_t _history(self, kv_ent *e) noexcept:
        # what _held() shows: up to depth versions below e, into _held newest first
        cdef Py_ssize_t n = 0
        cdef kv_ent *h = e.prev
        while h != NULL and n < self._depth:
            self._held[n] = h
            n += 1
            h = h.prev
        return n

    cdef Py_ssize_t _row_size(self, kv_ent *e) noexcept:
        cdef Py_ssize_t i, n = self._history(e)
        cdef Py_ssize_t size = (1 + _bin_size(e.klen) + _bin_size(e.vlen) + _uint_size(e.version)
                                + _mp_int_size(e.expires_at) + _mp_int_size(e.written_at) + _array_size(n))
        for i in range(n):
            size += (1 + _uint_size(self._held[i].version) + _mp_int_size(self._held[i].written_at)
                     + _bin_size(self._held[i].vlen))
        return size

    cdef Py_ssize_t _pack_row(self, uint8_t *b, kv_ent *e) noexcept:
        cdef Py_ssize_t i, n = self._history(e)
        cdef Py_ssize_t at = 1
        cdef kv_ent *h
        b[0] = 0x96  # [key, value, version, expires_at, written_at, history]
        at += _mp_bin(b + at, <const uint8_t *>kv_key(e), e.klen)
        at += _mp_bin(b + at, <const uint8_t *>kv_val(e), e.vlen)
        at += _mp_uint(b + at, e.version)
        at += _mp_int(b + at, e.expires_at)
        at += _mp_int(b + at, e.written_at)
        at += _mp_array(b + at, n)
        for i in range(n - 1, -1, -1):  # oldest first
            h = self._held[i]
            b[at] = 0x93  # (version, written_at, value)
            at += 1
            at += _mp_uint(b + at, h.version)
            at += _mp_int(b + at, h.written_at)
            at += _mp_bin(b + at, <const uint8_t *>kv_val(h), h.vlen)
        return at

    cdef tuple batch(self, Py_ssize_t target):
        """``(rows, packed)``: the next rows, at least one and then while they stay under ``target``
        bytes and max_rows; ``(0, b"")`` after the last."""
        cdef kv_ent *e = self._next if self._next != NULL else self._order.next()
        cdef Py_ssize_t n = 0, size = 0, row, at = 0
        cdef bytes out
        cdef uint8_t *b
        # pass 1: which rows, and their size (the entries' headers only, no value bytes read)
        while e != NULL and n < self._max_rows:
            row = self._row_size(e)
            if n and size + row > target:
                break
            size += row
            self._rows[n] = e
            n += 1
            e = self._order.next()
        self._next = e
        if n == 0:
            return 0, b""
        # pass 2: the rows, each value copied once, straight from the store
        out = PyBytes_FromStringAndSize(NULL, size)
        b = <uint8_t *>PyBytes_AS_STRING(out)
        for row in range(n):
            at += self._pack_row(b + at, self._rows[row])
        if at != size:
            raise AssertionError(f"packed {at} bytes of {size}")
        return n, out


@cython.final
cdef class KeysView:
    """A namespace's keys as a read-only mapping: ``len``, ``in``, iteration (key bytes, in key
    order), ``[key]``, ``get``, ``keys``, ``values``, ``items``. Any write to the namespace while
    iterating raises RuntimeError (a dict allows changing a value; this view does not)."""

    cdef Namespace _sp

    def __cinit__(self, Namespace sp):
        self._sp = sp

    def __len__(self):
        return self._sp.t.used

    def __contains__(self, key):
        cdef bytes k = key
        return kv_lookup(&self._sp.t, PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k)) != NULL

    def __getitem__(self, key):
        cdef bytes k = key
        cdef kv_ent *e = kv_lookup(&self._sp.t, PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k))
        if e == NULL:
            raise KeyError(key)
        return _entry(self._sp, k, e)

    def get(self, key, default=None):
        cdef bytes k = key
        cdef kv_ent *e = kv_lookup(&self._sp.t, PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k))
        return default if e == NULL else _entry(self._sp, k, e)

    def _walk(self, int what):
        # what: 0 keys, 1 entries, 2 (key, entry). In key order, as dump() (snapshots read the
        # same rows whatever the table's past): the sorted index beside a sorted copy of the
        # fresh pointers - one allocation, no write to the table (a forked snapshot child
        # iterates this and must not dirty its pages).
        cdef kv_table *t = &self._sp.t
        cdef uint64_t gen = t.gen
        cdef size_t i = 0, j = 0, nf = t.n_fresh
        cdef kv_ent **fresh = NULL
        cdef kv_ent *e
        if nf:
            fresh = <kv_ent **>malloc(nf * sizeof(kv_ent *))
            if fresh == NULL:
                raise MemoryError()
            memcpy(fresh, t.fresh, nf * sizeof(kv_ent *))
            qsort(fresh, nf, sizeof(kv_ent *), kv_ent_cmp)
        try:
            while True:
                if t.gen != gen:
                    raise RuntimeError("namespace changed during iteration")
                while i < t.n_sorted and t.sorted[i] == NULL:
                    i += 1
                if i < t.n_sorted and (j >= nf or kv_key_cmp(
                        kv_key(t.sorted[i]), t.sorted[i].klen, kv_key(fresh[j]), fresh[j].klen) < 0):
                    e = t.sorted[i]
                    i += 1
                elif j < nf:
                    e = fresh[j]
                    j += 1
                else:
                    return
                k = _key_of(e)
                if what == 0:
                    yield k
                elif what == 1:
                    yield _entry(self._sp, k, e)
                else:
                    yield k, _entry(self._sp, k, e)
        finally:
            free(fresh)

    def __iter__(self):
        return self._walk(0)

    def keys(self):
        return self._walk(0)

    def values(self):
        return self._walk(1)

    def items(self):
        return self._walk(2)


cdef class KVStore:
    """Every namespace's keys. All methods are deterministic given their arguments."""

    # _ttl_heap: (expires_at, ns, key) candidates for active expiry (stale ones are skipped)

    def __cinit__(self, int history_depth=DEF_HISTORY, int64_t history_budget=DEF_HISTORY_BUDGET):
        self.spaces = {}
        self.history_depth = history_depth
        self.history_budget = history_budget
        self.history_bytes = 0
        self._ttl_heap = []
        self._hash_mask = <uint64_t>-1

    def set_hash_mask(self, uint64_t mask):
        """Tests only: keep only ``mask``'s bits of every key hash, so that keys collide. Only
        before the first key."""
        if self.spaces:
            raise ValueError("the hash mask is set before any key is stored")
        self._hash_mask = mask

    cdef Namespace _space(self, str ns, bint create):
        cdef Namespace sp = self.spaces.get(ns)
        if sp is None and create:
            sp = Namespace(ns)
            sp.t.hash_mask = self._hash_mask
            self.spaces[ns] = sp
        return sp

    cpdef Entry get(self, str ns, bytes key, int64_t now):
        """The live entry of ``key`` or None (expired keys are absent)."""
        cdef Namespace sp = self.spaces.get(ns)
        if sp is None:
            return None
        cdef kv_ent *e = kv_lookup(&sp.t, PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
        if e == NULL or entry_dead(e, now):
            return None
        return _entry(sp, key, e)

    cpdef Entry raw(self, str ns, bytes key):
        """The entry even if expired (history reads), or None."""
        cdef Namespace sp = self.spaces.get(ns)
        if sp is None:
            return None
        cdef kv_ent *e = kv_lookup(&sp.t, PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
        return None if e == NULL else _entry(sp, key, e)

    cpdef set(self, str ns, bytes key, bytes value, uint64_t version, int64_t expires_at, int64_t now):
        """Write ``value`` at ``version``; the old value goes to the history."""
        self.put(ns, self.spaces.get(ns), PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key),
                 PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value), version, expires_at, now, key)

    cdef int put(self, str ns, Namespace sp, const char *k, size_t klen, const char *v, size_t vlen,
                 uint64_t version, int64_t expires_at, int64_t now, object key) except -1:
        """:meth:`set` from pointers (the C request paths write from their read buffers): ``sp`` is
        ``spaces.get(ns)`` or None; ``key`` the key's bytes if the caller has them, else None (made
        only if the TTL heap needs it)."""
        cdef kv_ent *e
        cdef kv_ent *old
        if sp is None:
            sp = self._space(ns, True)
        e = _new_ent(k, klen, v, vlen, version, expires_at, now)
        self._install(sp, e, &old)
        if old != NULL:
            if entry_dead(old, now) or self.history_depth <= 0:
                self._drop(old)
            else:
                self._push_history(e, old)
        if expires_at:
            heapq.heappush(self._ttl_heap, (expires_at, ns, key if key is not None else _key_of(e)))
        return 0

    cdef int _install(self, Namespace sp, kv_ent *e, kv_ent **old) except -1:
        """Store ``e`` (a new version, its history hung below it) as its key's live version;
        ``old[0]``: the version it replaced (the caller's to keep or free), NULL if the key is new.
        Out of memory (or past KV_MAX_KEYS, 2**30 keys: index positions are 31 bits): ``e`` is freed and
        MemoryError (OverflowError) raised, nothing else changed."""
        cdef uint64_t h = kv_hash(&sp.t, kv_key(e), e.klen)
        cdef Py_ssize_t i = kv_find_slot(&sp.t, h, kv_key(e), e.klen)
        cdef int rc
        old[0] = NULL
        if i < 0:
            rc = kv_reserve(&sp.t)
            if rc < 0:
                self._drop(e)
                if rc == -2:
                    raise OverflowError("a namespace holds at most 2**30 keys")
                raise MemoryError()
            kv_insert(&sp.t, h, e)
            kv_index_maybe_merge(&sp.t)
        else:
            old[0] = sp.t.slots[i].e
            sp.t.slots[i].e = e
            kv_index_swap(&sp.t, old[0], e)
        return 0

    cdef void _push_history(self, kv_ent *e, kv_ent *old) noexcept:
        """``old`` becomes the newest earlier version of ``e``."""
        cdef kv_ent *keep
        cdef kv_ent *cut
        cdef int i
        self.history_bytes += old.klen + old.vlen + _OVERHEAD
        if self.history_bytes > self.history_budget:
            # Over the server's history budget: a key written now keeps only its last version.
            self._forget_history(old)
            e.depth = 1
        else:
            e.depth = old.depth + 1
        e.prev = old
        if e.depth >= <uint32_t>(2 * self.history_depth):
            # Cut back to history_depth versions in one walk every history_depth writes, not
            # one walk per write; history() shows history_depth at most.
            keep = e
            for i in range(self.history_depth):
                keep = keep.prev
            cut = keep.prev
            keep.prev = NULL
            e.depth = self.history_depth
            self._free_kept(cut)

    cdef void _free_kept(self, kv_ent *h) noexcept:
        """Free the kept versions ``h``, ``h.prev``, ... and take them out of ``history_bytes``."""
        cdef kv_ent *nxt
        while h != NULL:
            self.history_bytes -= h.klen + h.vlen + _OVERHEAD
            nxt = h.prev
            _free_ent(h)
            h = nxt

    cdef void _forget_history(self, kv_ent *e) noexcept:
        """Free the earlier versions of ``e``."""
        cdef kv_ent *h = e.prev
        e.prev = NULL
        e.depth = 0
        self._free_kept(h)

    cdef void _drop(self, kv_ent *e) noexcept:
        """Free ``e`` (no longer in any table) and its history."""
        self._forget_history(e)
        _free_ent(e)

    cdef int _drop_all(self, Namespace sp) except -1:
        cdef size_t i
        cdef kv_ent *e
        for i in range(sp.t.cap):
            e = sp.t.slots[i].e
            if e != NULL:
                sp.t.slots[i].e = NULL
                self._drop(e)
        kv_table_release(&sp.t)
        return 0

    cpdef bint delete(self, str ns, bytes key, int64_t now):
        """Remove ``key``; True if it was live."""
        cdef Namespace sp = self.spaces.get(ns)
        if sp is None:
            return False
        cdef kv_ent *e = kv_take(&sp.t, PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
        if e == NULL:
            return False
        cdef bint live = not entry_dead(e, now)
        self._drop(e)
        return live

    cpdef bint set_expiry(self, str ns, bytes key, int64_t expires_at, int64_t now):
        """Change the TTL without a new version; False if the key is absent."""
        cdef kv_ent *e = NULL
        cdef Namespace sp = self.spaces.get(ns)
        if sp is not None:
            e = kv_lookup(&sp.t, PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
        if e == NULL or entry_dead(e, now):
            return False
        e.expires_at = expires_at
        if expires_at:
            heapq.heappush(self._ttl_heap, (expires_at, ns, key))
        return True

    def scan(self, str ns, bytes prefix, bytes after, int limit, int64_t now):
        """Up to ``limit`` live key names with ``prefix``, strictly after ``after``.

        Returns ``(names, more)``. Keys are in byte order, so a cursor is just the
        last name returned: every live key is seen exactly once across pages even
        while keys are added or removed.
        """
        cdef Namespace sp = self.spaces.get(ns)
        cdef list out = []
        cdef kv_ent *e
        cdef const char *pp = PyBytes_AS_STRING(prefix)
        cdef size_t pn = PyBytes_GET_SIZE(prefix)
        cdef const char *ap = PyBytes_AS_STRING(after)
        cdef size_t an = PyBytes_GET_SIZE(after)
        cdef size_t i, j
        cdef kv_ent **fresh
        if sp is None:
            return out, False
        start = after if after > prefix else prefix
        # Two sorted runs walked together: the index, and the keys not merged into it yet (sorted
        # where they are: a scan after a few new keys does not merge the whole index).
        if sp.t.n_fresh >= KV_MERGE_MIN:
            if kv_index_merge(&sp.t) < 0:  # many: merge them (at most once per KV_MERGE_MIN new keys)
                raise MemoryError()
        else:
            kv_fresh_sort(&sp.t)
        fresh = (<kv_ent **>sp.t.fresh)
        i = kv_lower_bound(&sp.t, PyBytes_AS_STRING(start), PyBytes_GET_SIZE(start))
        j = kv_fresh_lower_bound(&sp.t, PyBytes_AS_STRING(start), PyBytes_GET_SIZE(start))
        while True:
            while i < sp.t.n_sorted and sp.t.sorted[i] == NULL:
                i += 1
            if i < sp.t.n_sorted and (j >= sp.t.n_fresh or kv_key_cmp(
                    kv_key(sp.t.sorted[i]), sp.t.sorted[i].klen, kv_key(fresh[j]), fresh[j].klen) < 0):
                e = sp.t.sorted[i]
                i += 1
            elif j < sp.t.n_fresh:
                e = fresh[j]
                j += 1
            else:
                break
            if e.klen < pn or kv_key_cmp(kv_key(e), pn, pp, pn) != 0:
                return out, False
            if an and kv_key_cmp(kv_key(e), e.klen, ap, an) <= 0:
                continue
            if entry_dead(e, now):
                continue
            if len(out) == limit:
                return out, True
            out.append(_key_of(e))
        return out, False

    def count(self, str ns, int64_t now, bint with_ttl=False):
        """Live keys in ``ns`` (``with_ttl``: only those with an expiry, Redis's INFO ``expires=``),
        counted in C: no object per key."""
        cdef Namespace sp = self.spaces.get(ns)
        if sp is None:
            return 0
        cdef size_t i
        cdef kv_ent *e
        cdef Py_ssize_t n = 0
        for i in range(sp.t.cap):
            e = sp.t.slots[i].e
            if e != NULL and not entry_dead(e, now) and (not with_ttl or e.expires_at != 0):
                n += 1
        return n

    def flush(self, str ns):
        """Drop every key of ``ns``."""
        cdef Namespace sp = self.spaces.pop(ns, None)
        if sp is not None:
            self._drop_all(sp)

    def history(self, str ns, bytes key, int limit, int64_t now):
        """``[(version, at_ms, value)]`` newest first, the live value included."""
        cdef Namespace sp = self.spaces.get(ns)
        cdef kv_ent *e = NULL
        if sp is not None:
            e = kv_lookup(&sp.t, PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
        if e == NULL:
            return []
        cdef list out = []
        if not entry_dead(e, now):
            out.append((e.version, e.written_at, _value_of(e)))
        cdef kv_ent *h = e.prev
        cdef int shown = 0
        while h != NULL and shown < self.history_depth and len(out) < limit:
            out.append((h.version, h.written_at, _value_of(h)))
            h = h.prev
            shown += 1
        return out[:limit]

    def expire_some(self, int64_t now, int budget=1000):
        """Remove up to ``budget`` keys whose TTL has passed; returns how many went."""
        cdef int removed = 0
        cdef kv_ent *e
        cdef Namespace sp
        cdef bytes k
        heap = self._ttl_heap
        while heap and budget > 0 and heap[0][0] <= now:
            at, ns, key = heapq.heappop(heap)
            budget -= 1
            sp = self.spaces.get(ns)
            if sp is None:
                continue
            k = key
            e = kv_lookup(&sp.t, PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k))
            # the heap holds stale candidates too: re-check against the entry
            if e != NULL and e.expires_at != 0 and e.expires_at <= now:
                self._drop(kv_take(&sp.t, PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k)))
                removed += 1
        return removed

    def namespaces(self):
        return list(self.spaces)

    def dump(self):
        """Snapshot state: ``{ns: [[key, value, version, expires_at, written_at, history], ...]}``,
        each namespace's rows in key order (the same state dumps the same whatever its past)."""
        cdef Namespace sp
        cdef size_t i
        cdef kv_ent *e
        out = {}
        for ns, sp in self.spaces.items():
            if kv_index_merge(&sp.t) < 0:
                raise MemoryError()
            rows = out[ns] = []
            for i in range(sp.t.n_sorted):
                e = sp.t.sorted[i]
                if e != NULL:
                    rows.append(self._row(_key_of(e), e))
        return out

    cdef list _row(self, bytes key, kv_ent *e):
        return [key, _value_of(e), e.version, e.expires_at, e.written_at, self._held(e)]

    cdef list _held(self, kv_ent *e):
        """Up to history_depth earlier versions of ``e``, oldest first, as snapshot tuples."""
        cdef list out = []
        cdef kv_ent *h = e.prev
        while h != NULL and len(out) < self.history_depth:
            out.append((h.version, h.written_at, _value_of(h)))
            h = h.prev
        out.reverse()
        return out

    def keys_in_slots(self, str ns, bytes mask):
        """The keys of ``ns`` whose cluster slot has a non-zero byte in ``mask`` (16384 bytes), computed
        in C (flo_core/slotcrc.h) from the stored key bytes: a slot move finds its keys without a
        Python object per key."""
        cdef Namespace sp = self.spaces.get(ns)
        cdef bytes nsb = b"" if ns == "default" else ns.encode("utf-8")
        cdef const uint8_t *m = <const uint8_t *>PyBytes_AS_STRING(mask)
        cdef size_t i
        cdef kv_ent *e
        cdef int slot
        if sp is None:
            return []
        if PyBytes_GET_SIZE(mask) != 16384:
            raise ValueError("mask must be 16384 bytes, one per slot")
        out = []
        for i in range(sp.t.cap):
            e = sp.t.slots[i].e
            if e == NULL:
                continue
            slot = key_slot(<const uint8_t *>PyBytes_AS_STRING(nsb), PyBytes_GET_SIZE(nsb),
                            <const uint8_t *>kv_key(e), e.klen)
            if slot < 0:  # too long to hash in place: the Python rule
                from flo_core.slots import key_slot as py_slot
                slot = py_slot(_key_of(e), ns)
            if m[slot]:
                out.append(_key_of(e))
        return out

    def export_keys(self, str ns, keys):
        """:meth:`dump` rows of those of ``keys`` that ``ns`` holds (a slot move hands them over)."""
        cdef Namespace sp = self.spaces.get(ns)
        cdef kv_ent *e
        cdef bytes k
        if sp is None:
            return []
        out = []
        for k in keys:
            e = kv_lookup(&sp.t, PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k))
            if e != NULL:
                out.append(self._row(k, e))
        return out

    def packed_rows(self, str ns, Py_ssize_t target=1 << 20, Py_ssize_t max_rows=8192):
        """``(count, bytes)`` batches of ``ns``'s :meth:`dump` rows, each row packed as msgpack
        (``use_bin_type``) would pack it, in key order, concatenated: a batch holds at least one row,
        then as many as stay under ``target`` bytes and ``max_rows``. Values are copied once, from
        the store into the batch, with no Python object per row (the snapshot writer's path).
        The namespace must not change while this is iterated (RuntimeError if it does).

        Example:
            >>> import msgpack
            >>> kv = KVStore()
            >>> _ = kv.set("default", b"k", b"v", 3, 0, 1000)
            >>> [(n, msgpack.unpackb(b)) for n, b in kv.packed_rows("default")]
            [(1, [b'k', b'v', 3, 0, 1000, []])]
        """
        cdef Namespace sp = self.spaces.get(ns)
        cdef _RowPacker packer
        cdef Py_ssize_t n
        if sp is None:
            return
        packer = _RowPacker(sp, self.history_depth, max_rows)
        while True:
            n, body = packer.batch(target)
            if n == 0:
                return
            yield n, body

    def import_rows(self, str ns, rows):
        """Add :meth:`dump` rows to ``ns``, each replacing what the key held (a slot moved here)."""
        cdef Namespace sp = self._space(ns, True)
        for k, value, version, expires_at, written_at, hist in rows:
            self._store_row(sp, ns, k, value, version, expires_at, written_at, hist)
        return len(rows)

    cdef int _store_row(self, Namespace sp, str ns, bytes k, bytes value, uint64_t version,
                        int64_t expires_at, int64_t written_at, list hist) except -1:
        cdef kv_ent *old
        self._install(sp, self._entry_of(k, value, version, expires_at, written_at, hist), &old)
        if old != NULL:
            self._drop(old)
        if expires_at:
            heapq.heappush(self._ttl_heap, (expires_at, ns, k))
        return 0

    def drop_keys(self, str ns, keys):
        """Forget ``keys`` of ``ns`` with their history (their slot moved away); how many there were."""
        cdef Namespace sp = self.spaces.get(ns)
        cdef kv_ent *e
        cdef bytes k
        cdef Py_ssize_t n = 0
        if sp is None:
            return 0
        for k in keys:
            e = kv_take(&sp.t, PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k))
            if e != NULL:
                self._drop(e)
                n += 1
        return n

    cdef kv_ent *_entry_of(self, bytes key, bytes value, uint64_t version, int64_t expires_at,
                           int64_t written_at, list hist) except NULL:
        """The entry of one :meth:`dump` row, its history (oldest first) hung below it and counted."""
        cdef kv_ent *e = NULL
        cdef kv_ent *prev = NULL
        cdef const char *kp = PyBytes_AS_STRING(key)
        cdef size_t kn = PyBytes_GET_SIZE(key)
        cdef bytes hv
        try:
            for h in hist:
                hv = h[2]
                e = _new_ent(kp, kn, PyBytes_AS_STRING(hv), PyBytes_GET_SIZE(hv), h[0], 0, h[1])
                e.prev = prev
                prev = e
                self.history_bytes += kn + PyBytes_GET_SIZE(hv) + _OVERHEAD
            e = _new_ent(kp, kn, PyBytes_AS_STRING(value), PyBytes_GET_SIZE(value), version,
                         expires_at, written_at)
        except BaseException:
            self._free_kept(prev)  # the partial chain, uncounted again
            raise
        e.prev = prev
        e.depth = len(hist)
        return e

    def load(self, state):
        """Replace the contents with a :meth:`dump`."""
        cdef Namespace sp
        self.spaces = {}
        self._ttl_heap = []
        self.history_bytes = 0
        for ns, rows in state.items():
            sp = self._space(ns, True)
            for k, value, version, expires_at, written_at, hist in rows:
                self._store_row(sp, ns, k, value, version, expires_at, written_at, hist)
            if kv_index_merge(&sp.t) < 0:
                raise MemoryError()
        heapq.heapify(self._ttl_heap)

from libc.stdint cimport int64_t, uint32_t, uint64_t


cdef extern from "kvtable.h":
    # One stored version: this header, then the key and the value bytes (flo_core/kvtable.h).
    ctypedef struct kv_ent:
        uint64_t version
        int64_t expires_at
        int64_t written_at
        kv_ent *prev
        uint32_t klen
        uint32_t vlen
        uint32_t depth
        uint32_t ipos
    ctypedef struct kv_slot:
        uint64_t hash
        kv_ent *e
    ctypedef struct kv_table:
        kv_slot *slots
        size_t cap
        size_t used
        uint64_t hash_mask
        kv_ent **sorted
        size_t n_sorted
        size_t holes
        kv_ent **fresh
        size_t n_fresh
        uint64_t gen
    const char *kv_key(const kv_ent *e) noexcept nogil
    const char *kv_val(const kv_ent *e) noexcept nogil
    kv_ent *kv_lookup(const kv_table *t, const char *k, size_t n) noexcept nogil


cdef class Namespace


cdef class Entry:
    """A Python copy of one stored version, made on demand (``KVStore.get``/``raw``)."""
    cdef readonly bytes value
    cdef readonly uint64_t version
    cdef readonly int64_t expires_at
    cdef readonly int64_t written_at
    cdef Namespace _sp  # where ``prev``/``history`` look the chain up again (None: no history)
    cdef bytes _key

    cdef const kv_ent *_stored(self)


cdef class Namespace:
    cdef kv_table t
    cdef readonly str name


cdef class KVStore:
    cdef public dict spaces
    cdef public int history_depth
    cdef public int64_t history_budget
    cdef public int64_t history_bytes
    cdef list _ttl_heap
    cdef uint64_t _hash_mask

    cdef void _free_kept(self, kv_ent *h) noexcept
    cdef void _forget_history(self, kv_ent *e) noexcept
    cdef void _drop(self, kv_ent *e) noexcept
    cdef void _push_history(self, kv_ent *e, kv_ent *old) noexcept
    cdef int _install(self, Namespace sp, kv_ent *e, kv_ent **old) except -1
    cdef int _drop_all(self, Namespace sp) except -1
    cdef list _held(self, kv_ent *e)
    cdef list _row(self, bytes key, kv_ent *e)
    cdef int _store_row(self, Namespace sp, str ns, bytes k, bytes value, uint64_t version,
                        int64_t expires_at, int64_t written_at, list hist) except -1
    cdef kv_ent *_entry_of(self, bytes key, bytes value, uint64_t version, int64_t expires_at,
                           int64_t written_at, list hist) except NULL

    cdef Namespace _space(self, str ns, bint create)
    cpdef Entry get(self, str ns, bytes key, int64_t now)
    cpdef Entry raw(self, str ns, bytes key)
    cpdef set(self, str ns, bytes key, bytes value, uint64_t version, int64_t expires_at, int64_t now)
    cdef int put(self, str ns, Namespace sp, const char *k, size_t klen, const char *v, size_t vlen,
                 uint64_t version, int64_t expires_at, int64_t now, object key) except -1
    cpdef bint delete(self, str ns, bytes key, int64_t now)
    cpdef bint set_expiry(self, str ns, bytes key, int64_t expires_at, int64_t now)


cdef inline bint entry_dead(const kv_ent *e, int64_t now) noexcept nogil:
    """``e`` has expired at ``now`` (it reads as absent)."""
    return e.expires_at != 0 and e.expires_at <= now


cdef inline kv_ent *find_live(KVStore kv, str ns, const char *k, size_t klen, int64_t now) noexcept:
    """The live version of key ``k[:klen]`` in ``ns``, or NULL (absent or expired): the C request
    paths look up straight from their read buffers, with no key object."""
    return live_in(kv.spaces.get(ns), k, klen, now)


cdef inline kv_ent *live_in(Namespace sp, const char *k, size_t klen, int64_t now) noexcept:
    """:func:`find_live` for a namespace already looked up (``sp`` may be None)."""
    cdef kv_ent *e = find_stored(sp, k, klen)
    if e == NULL or entry_dead(e, now):
        return NULL
    return e


cdef inline kv_ent *find_stored(Namespace sp, const char *k, size_t klen) noexcept:
    """The stored version of ``k[:klen]`` (maybe expired), or NULL; ``sp`` may be None."""
    if sp is None:
        return NULL
    return kv_lookup(&sp.t, k, klen)

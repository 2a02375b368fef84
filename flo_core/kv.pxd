from libc.stdint cimport int64_t, uint32_t, uint64_t


cdef class Entry:
    cdef readonly bytes value  # readonly: size must stay its length
    cdef readonly uint32_t size    # len(value); 32 bits so that with depth the entry stays 64 bytes
    cdef uint32_t depth            # versions held below this one (exact only on the live entry)
    cdef public uint64_t version
    cdef public int64_t expires_at
    cdef public int64_t written_at
    cdef readonly Entry prev   # the version this one replaced (its own prev: the one before, ...)


cdef class Namespace:
    cdef public dict keys
    cdef public object index
    cdef public set fresh

    cdef int add_key(self, bytes key) except -1
    cdef int remove_key(self, bytes key) except -1
    cdef int merge(self) except -1


cdef class KVStore:
    cdef public dict spaces
    cdef public int history_depth
    cdef public int64_t history_budget
    cdef public int64_t history_bytes
    cdef list _ttl_heap

    cdef void _forget_history(self, Entry e)
    cdef void _push_history(self, Entry e, Entry old)
    cdef list _held(self, Entry e)
    cdef Entry _entry_of(self, bytes value, uint64_t version, int64_t expires_at, int64_t written_at, list hist)

    cdef Namespace _space(self, str ns, bint create)
    cpdef Entry get(self, str ns, bytes key, int64_t now)
    cpdef Entry raw(self, str ns, bytes key)
    cpdef set(self, str ns, bytes key, bytes value, uint64_t version, int64_t expires_at, int64_t now)
    cdef int put(self, str ns, Namespace sp, bytes key, Entry old, bytes value, uint64_t version,
                 int64_t expires_at, int64_t now) except -1
    cpdef bint delete(self, str ns, bytes key, int64_t now)
    cpdef bint set_expiry(self, str ns, bytes key, int64_t expires_at, int64_t now)


cdef inline bint entry_dead(Entry e, int64_t now) noexcept:
    """``e`` has expired at ``now`` (it reads as absent)."""
    return e.expires_at != 0 and e.expires_at <= now

# cython: language_level=3, boundscheck=False, wraparound=False, embedsignature=True
"""Versioned KV store, sans-IO.

One :class:`KVStore` holds every namespace. A key's entry carries its value,
its version (the LSN of the write that made it, so versions rise strictly and
replay identically), an absolute expiry time in unix ms (0 = none) and up to
``MAX_HISTORY`` earlier versions. Time comes in as ``now``; expired keys read
as absent at once (lazy) and are removed by :meth:`KVStore.expire_some`
(active), which the server calls from a timer.

Example:
    >>> s = KVStore()
    >>> s.set("default", b"k", b"v", 5, 0, 1000)
    >>> e = s.get("default", b"k", 1000)
    >>> (e.value, e.version)
    (b'v', 5)
"""

cimport cython
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

from flo_core.wirefmt cimport key_slot
import heapq
from sortedcontainers import SortedList

DEF_HISTORY = 64
DEF_HISTORY_BUDGET = 256 * 1024 * 1024
#: What one kept version costs besides its value's bytes: the Entry (64 B), the bytes
#: object's header (33 B, rounded up by the allocator) and what the chain adds.
#: Counted in the history budget so that small values (counters) are bounded too.
VERSION_OVERHEAD = 112
cdef Py_ssize_t _OVERHEAD = VERSION_OVERHEAD


# Entries hold only bytes, ints and tuples: they can never be part of a cycle, so the
# garbage collector need not track them (a million tracked entries make every full
# collection walk them all).
@cython.no_gc
@cython.final
cdef class Entry:
    """A live key: ``value``, ``version``, ``expires_at`` (0 = none), ``written_at``.

    Earlier versions hang off ``prev`` (newest first): keeping the replaced entry costs
    one pointer in the new one, and no other object is touched on a write.
    """

    def __cinit__(self, bytes value, uint64_t version, int64_t expires_at, int64_t written_at):
        if len(value) > 0xFFFFFFFF:
            raise OverflowError("a KV value is at most 4 GiB")  # far above any frame limit
        self.value = value
        self.size = <uint32_t>len(value)  # history accounting without touching (cache-cold) old values
        self.version = version
        self.expires_at = expires_at
        self.written_at = written_at
        self.prev = None
        self.depth = 0

    @property
    def history(self):
        """The earlier versions held, oldest first (a list; empty when none)."""
        out = []
        cdef Entry h = self.prev
        while h is not None:
            out.append(h)
            h = h.prev
        out.reverse()
        return out

    def __repr__(self):
        return f"Entry(version={self.version}, expires_at={self.expires_at}, value={self.value[:32]!r})"


cdef class Namespace:
    """The keys of one namespace, with a sorted index for prefix scans.

    New keys wait in ``fresh`` (a set) and join the sorted ``index`` in bulk - when a
    scan needs the order, or when they reach a quarter of the index - so writing a
    new key costs a set insert, not a sorted insert done in Python.
    """

    # keys: {key: Entry}; index: SortedList of the keys; fresh: keys not yet in index

    def __cinit__(self):
        self.keys = {}
        self.index = SortedList()
        self.fresh = set()

    cdef int add_key(self, bytes key) except -1:
        self.fresh.add(key)
        if len(self.fresh) >= 4096 and len(self.fresh) * 4 >= len(self.index):
            self.merge()  # SortedList.update rebuilds by one sort: amortised O(1) a key
        return 0

    cdef int remove_key(self, bytes key) except -1:
        if key in self.fresh:
            self.fresh.discard(key)
        else:
            self.index.remove(key)
        return 0

    cdef int merge(self) except -1:
        if self.fresh:
            self.index.update(self.fresh)
            self.fresh = set()
        return 0


cdef class KVStore:
    """Every namespace's keys. All methods are deterministic given their arguments."""

    # _ttl_heap: (expires_at, ns, key) candidates for active expiry (stale ones are skipped)

    def __cinit__(self, int history_depth=DEF_HISTORY, int64_t history_budget=DEF_HISTORY_BUDGET):
        self.spaces = {}
        self.history_depth = history_depth
        self.history_budget = history_budget
        self.history_bytes = 0
        self._ttl_heap = []

    cdef Namespace _space(self, str ns, bint create):
        cdef Namespace sp = self.spaces.get(ns)
        if sp is None and create:
            sp = Namespace()
            self.spaces[ns] = sp
        return sp

    cpdef Entry get(self, str ns, bytes key, int64_t now):
        """The live entry of ``key`` or None (expired keys are absent)."""
        cdef Namespace sp = self.spaces.get(ns)
        if sp is None:
            return None
        cdef Entry e = sp.keys.get(key)
        if e is None or entry_dead(e, now):
            return None
        return e

    cpdef Entry raw(self, str ns, bytes key):
        """The entry even if expired (history reads), or None."""
        cdef Namespace sp = self.spaces.get(ns)
        if sp is None:
            return None
        return sp.keys.get(key)

    cpdef set(self, str ns, bytes key, bytes value, uint64_t version, int64_t expires_at, int64_t now):
        """Write ``value`` at ``version``; the old value goes to the history."""
        cdef Namespace sp = self._space(ns, True)
        self.put(ns, sp, key, sp.keys.get(key), value, version, expires_at, now)

    cdef int put(self, str ns, Namespace sp, bytes key, Entry old, bytes value, uint64_t version,
                 int64_t expires_at, int64_t now) except -1:
        """:meth:`set` for a caller that already looked the key up: ``sp`` is ``_space(ns, False)``
        (None: the namespace has no keys yet) and ``old`` the key's entry as stored
        (``sp.keys.get(key)``: maybe expired, None if absent) - the C request loops, which
        look the key up to check it: no second lookup."""
        cdef Entry e = Entry(value, version, expires_at, now)
        if sp is None:
            sp = self._space(ns, True)
        if old is None:
            sp.add_key(key)
        elif entry_dead(old, now):
            self._forget_history(old)
        elif self.history_depth > 0:
            self._push_history(e, old)
        sp.keys[key] = e
        if expires_at:
            heapq.heappush(self._ttl_heap, (expires_at, ns, key))
        return 0

    cdef void _push_history(self, Entry e, Entry old):
        """``old`` becomes the newest earlier version of ``e``."""
        cdef Entry keep, cut, nxt
        cdef int i
        self.history_bytes += old.size + _OVERHEAD
        if self.history_bytes > self.history_budget:
            # Over the server's history budget: a key written now keeps only its last version.
            self._forget_history(old)
            e.depth = 1
        else:
            e.depth = old.depth + 1
        e.prev = old
        if e.depth >= <uint32_t>(2 * self.history_depth):
            # Cut back to history_depth versions in one walk every history_depth writes, not
            # one walk (or a list shift) per write; history() shows history_depth at most.
            keep = e
            for i in range(self.history_depth):
                keep = keep.prev
            cut = keep.prev
            keep.prev = None
            e.depth = self.history_depth
            while cut is not None:
                self.history_bytes -= cut.size + _OVERHEAD
                nxt = cut.prev
                cut.prev = None  # unlink first: each entry is freed alone, no deep recursion
                cut = nxt

    cpdef bint delete(self, str ns, bytes key, int64_t now):
        """Remove ``key``; True if it was live."""
        cdef Namespace sp = self.spaces.get(ns)
        if sp is None:
            return False
        cdef Entry e = sp.keys.pop(key, None)
        if e is None:
            return False
        sp.remove_key(key)
        self._forget_history(e)
        return not entry_dead(e, now)

    cdef void _forget_history(self, Entry e):
        cdef Entry h = e.prev, nxt
        e.prev = None
        e.depth = 0
        while h is not None:
            self.history_bytes -= h.size + _OVERHEAD
            nxt = h.prev
            h.prev = None
            h = nxt

    cpdef bint set_expiry(self, str ns, bytes key, int64_t expires_at, int64_t now):
        """Change the TTL without a new version; False if the key is absent."""
        cdef Entry e = self.get(ns, key, now)
        if e is None:
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
        cdef Entry e
        if sp is None:
            return out, False
        start = after if after > prefix else prefix
        sp.merge()
        for k in sp.index.irange(start, None):
            if not (<bytes>k).startswith(prefix):
                return out, False
            if after and k <= after:
                continue
            e = sp.keys[k]
            if entry_dead(e, now):
                continue
            if len(out) == limit:
                return out, True
            out.append(k)
        return out, False

    def count(self, str ns, int64_t now):
        """Live keys in ``ns``."""
        cdef Namespace sp = self.spaces.get(ns)
        if sp is None:
            return 0
        cdef Entry e
        cdef Py_ssize_t n = 0
        for e in sp.keys.values():
            if not entry_dead(e, now):
                n += 1
        return n

    def flush(self, str ns):
        """Drop every key of ``ns``."""
        cdef Namespace sp = self.spaces.pop(ns, None)
        cdef Entry e
        if sp is not None:
            for e in sp.keys.values():
                self._forget_history(e)

    def history(self, str ns, bytes key, int limit, int64_t now):
        """``[(version, at_ms, value)]`` newest first, the live value included."""
        cdef Entry e = self.raw(ns, key)
        if e is None:
            return []
        cdef list out = []
        if not entry_dead(e, now):
            out.append((e.version, e.written_at, e.value))
        cdef Entry h = e.prev
        cdef int shown = 0
        while h is not None and shown < self.history_depth and len(out) < limit:
            out.append((h.version, h.written_at, h.value))
            h = h.prev
            shown += 1
        return out[:limit]

    def expire_some(self, int64_t now, int budget=1000):
        """Remove up to ``budget`` keys whose TTL has passed; returns how many went."""
        cdef int removed = 0
        cdef Entry e
        cdef Namespace sp
        heap = self._ttl_heap
        while heap and budget > 0 and heap[0][0] <= now:
            at, ns, key = heapq.heappop(heap)
            budget -= 1
            sp = self.spaces.get(ns)
            if sp is None:
                continue
            e = sp.keys.get(key)
            # the heap holds stale candidates too: re-check against the entry
            if e is not None and e.expires_at != 0 and e.expires_at <= now:
                self._forget_history(e)
                del sp.keys[key]
                sp.remove_key(key)
                removed += 1
        return removed

    def namespaces(self):
        return list(self.spaces)

    def dump(self):
        """Snapshot state: ``{ns: [[key, value, version, expires_at, written_at, history], ...]}``."""
        cdef Namespace sp
        cdef Entry e
        out = {}
        for ns, sp in self.spaces.items():
            out[ns] = [[k, e.value, e.version, e.expires_at, e.written_at, self._held(e)]
                       for k, e in sp.keys.items()]
        return out

    cdef list _held(self, Entry e):
        """Up to history_depth earlier versions of ``e``, oldest first, as snapshot tuples."""
        cdef list out = []
        cdef Entry h = e.prev
        while h is not None and len(out) < self.history_depth:
            out.append((h.version, h.written_at, h.value))
            h = h.prev
        out.reverse()
        return out

    def keys_in_slots(self, str ns, bytes mask):
        """The keys of ``ns`` whose cluster slot has a non-zero byte in ``mask`` (16384 bytes), computed
        in C (flo_core/slotcrc.h): a slot move finds its keys without a Python call per key."""
        cdef Namespace sp = self.spaces.get(ns)
        cdef bytes nsb = b"" if ns == "default" else ns.encode("utf-8")
        cdef const uint8_t *m = <const uint8_t *>PyBytes_AS_STRING(mask)
        cdef bytes k
        cdef int slot
        if sp is None:
            return []
        if PyBytes_GET_SIZE(mask) != 16384:
            raise ValueError("mask must be 16384 bytes, one per slot")
        out = []
        for k in sp.keys:
            slot = key_slot(<const uint8_t *>PyBytes_AS_STRING(nsb), PyBytes_GET_SIZE(nsb),
                            <const uint8_t *>PyBytes_AS_STRING(k), PyBytes_GET_SIZE(k))
            if slot < 0:  # too long to hash in place: the Python rule
                from flo_core.slots import key_slot as py_slot
                slot = py_slot(k, ns)
            if m[slot]:
                out.append(k)
        return out

    def export_keys(self, str ns, keys):
        """:meth:`dump` rows of those of ``keys`` that ``ns`` holds (a slot move hands them over)."""
        cdef Namespace sp = self.spaces.get(ns)
        cdef Entry e
        if sp is None:
            return []
        out = []
        for k in keys:
            e = sp.keys.get(k)
            if e is not None:
                out.append([k, e.value, e.version, e.expires_at, e.written_at, self._held(e)])
        return out

    def import_rows(self, str ns, rows):
        """Add :meth:`dump` rows to ``ns``, each replacing what the key held (a slot moved here)."""
        cdef Namespace sp = self._space(ns, True)
        cdef Entry e, old
        for k, value, version, expires_at, written_at, hist in rows:
            e = self._entry_of(value, version, expires_at, written_at, hist)
            old = sp.keys.get(k)
            if old is None:
                sp.add_key(k)
            else:
                self._forget_history(old)
            sp.keys[k] = e
            if expires_at:
                heapq.heappush(self._ttl_heap, (expires_at, ns, k))
        return len(rows)

    def drop_keys(self, str ns, keys):
        """Forget ``keys`` of ``ns`` with their history (their slot moved away); how many there were."""
        cdef Namespace sp = self.spaces.get(ns)
        cdef Entry e
        cdef Py_ssize_t n = 0
        if sp is None:
            return 0
        for k in keys:
            e = sp.keys.pop(k, None)
            if e is not None:
                sp.remove_key(k)
                self._forget_history(e)
                n += 1
        return n

    cdef Entry _entry_of(self, bytes value, uint64_t version, int64_t expires_at, int64_t written_at, list hist):
        """The entry of one :meth:`dump` row, its history (oldest first) hung below it and counted."""
        cdef Entry e = None, prev
        for h in hist:
            prev = e
            e = Entry(h[2], h[0], 0, h[1])
            e.prev = prev
            self.history_bytes += len(h[2]) + _OVERHEAD
        prev = e
        e = Entry(value, version, expires_at, written_at)
        e.prev = prev
        e.depth = len(hist)
        return e

    def load(self, state):
        """Replace the contents with a :meth:`dump`."""
        cdef Namespace sp
        cdef Entry e
        self.spaces = {}
        self._ttl_heap = []
        self.history_bytes = 0
        for ns, rows in state.items():
            sp = self._space(ns, True)
            for k, value, version, expires_at, written_at, hist in rows:
                sp.keys[k] = e = self._entry_of(value, version, expires_at, written_at, hist)
                if expires_at:
                    self._ttl_heap.append((expires_at, ns, k))
            sp.index = SortedList(sp.keys)
        heapq.heapify(self._ttl_heap)

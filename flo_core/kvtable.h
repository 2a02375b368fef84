/* The KV store's memory: one allocation per stored version, an open-addressing hash table per
 * namespace and a sorted index for prefix scans (flo_core/kv.pyx wraps it).
 *
 * Why C and not a dict of Entry objects: a key used to cost a dict slot, a key `bytes`, an Entry
 * object and a value `bytes` (four allocations, five dependent cache misses on a GET). Here a key
 * costs one block (48 B header, key and value inline), a 16 B slot that holds the key's hash
 * (a probe compares hashes without touching entries) and one pointer in the index.
 *
 * Everything that allocates or frees an entry lives in kv.pyx (it counts them); the inline
 * functions here only look up, place and move pointers, so core.pyx and respcore.pyx may call the
 * lookups straight from their read buffers.
 */
#ifndef FLO_KVTABLE_H
#define FLO_KVTABLE_H

#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct kv_ent {
    uint64_t version;
    int64_t expires_at;     /* unix ms, 0 = none */
    int64_t written_at;
    struct kv_ent *prev;    /* the version this one replaced (newest first); NULL: none */
    uint32_t klen, vlen;
    uint32_t depth;         /* versions held below this one (exact only on the live entry) */
    uint32_t ipos;          /* live entry: its position in the index; KV_FRESH: in the fresh array */
    char data[];            /* the key, then the value */
} kv_ent;

#define KV_FRESH 0x80000000u
#define KV_MERGE_MIN 4096   /* fresh keys wait for this many before a write merges them */

static inline const char *kv_key(const kv_ent *e) { return e->data; }
static inline const char *kv_val(const kv_ent *e) { return e->data + e->klen; }

typedef struct {
    uint64_t hash;
    kv_ent *e;              /* NULL: empty */
} kv_slot;

typedef struct {
    kv_slot *slots;
    size_t cap;             /* 0 or a power of two */
    size_t used;
    uint64_t hash_mask;     /* ~0; tests narrow it to force collisions */
    kv_ent **sorted;        /* in key order, NULL where a key was deleted */
    size_t n_sorted, holes;
    kv_ent **fresh;         /* keys not yet in `sorted`, in no order */
    size_t n_fresh, cap_fresh;
    int fresh_sorted;       /* `fresh` is in key order (a scan sorted it; no insert or delete since) */
    uint64_t gen;           /* bumped by every change of the table or the index: iterators check it */
} kv_table;

static inline void kv_table_init(kv_table *t) {
    memset(t, 0, sizeof(*t));
    t->hash_mask = ~(uint64_t)0;
}

/* Seeded (PYTHONHASHSEED's siphash): a client cannot choose keys that share one probe run.
 * Equal to hash(bytes) of the key, masked. */
static inline uint64_t kv_hash(const kv_table *t, const char *k, size_t n) {
    return (uint64_t)_Py_HashBytes(k, (Py_ssize_t)n) & t->hash_mask;
}

static inline int kv_key_cmp(const char *a, size_t an, const char *b, size_t bn) {
    int c = memcmp(a, b, an < bn ? an : bn);
    if (c) return c;
    return an < bn ? -1 : (an > bn ? 1 : 0);
}

/* The slot holding key k (hash h), or -1. */
static inline Py_ssize_t kv_find_slot(const kv_table *t, uint64_t h, const char *k, size_t n) {
    if (!t->cap) return -1;
    size_t m = t->cap - 1, i = (size_t)h & m;
    kv_slot *s;
    while ((s = &t->slots[i])->e) {
        if (s->hash == h && s->e->klen == n && memcmp(s->e->data, k, n) == 0) return (Py_ssize_t)i;
        i = (i + 1) & m;
    }
    return -1;
}

static inline kv_ent *kv_get(const kv_table *t, uint64_t h, const char *k, size_t n) {
    Py_ssize_t i = kv_find_slot(t, h, k, n);
    return i < 0 ? NULL : t->slots[i].e;
}

static inline kv_ent *kv_lookup(const kv_table *t, const char *k, size_t n) {
    return t->cap ? kv_get(t, kv_hash(t, k, n), k, n) : NULL;
}

static inline void kv_place(kv_slot *slots, size_t cap, uint64_t h, kv_ent *e) {
    size_t m = cap - 1, i = (size_t)h & m;
    while (slots[i].e) i = (i + 1) & m;
    slots[i].hash = h;
    slots[i].e = e;
}

/* Keys one namespace may hold: index positions are 31 bits (the top bit marks the fresh array) and
 * the sorted array may carry a quarter more in holes. */
#define KV_MAX_KEYS ((size_t)1 << 30)

/* Room for one more key in the table and in the fresh array; -1: out of memory, -2: the namespace
 * holds KV_MAX_KEYS (nothing changed either way). */
static inline int kv_reserve(kv_table *t) {
    if (t->used >= KV_MAX_KEYS) return -2;
    if ((t->used + 1) * 4 > t->cap * 3) {      /* load <= 0.75 */
        size_t ncap = t->cap ? t->cap * 2 : 8, i;
        kv_slot *ns = (kv_slot *)calloc(ncap, sizeof(kv_slot));
        if (!ns) return -1;
        for (i = 0; i < t->cap; i++)           /* rehash from the stored hashes: no entry touched */
            if (t->slots[i].e) kv_place(ns, ncap, t->slots[i].hash, t->slots[i].e);
        free(t->slots);
        t->slots = ns;
        t->cap = ncap;
    }
    if (t->n_fresh == t->cap_fresh) {
        size_t nc = t->cap_fresh ? t->cap_fresh * 2 : 16;
        kv_ent **nf = (kv_ent **)realloc(t->fresh, nc * sizeof(kv_ent *));
        if (!nf) return -1;
        t->fresh = nf;
        t->cap_fresh = nc;
    }
    return 0;
}

/* A new key (after kv_reserve): into the table and the fresh array. */
static inline void kv_insert(kv_table *t, uint64_t h, kv_ent *e) {
    kv_place(t->slots, t->cap, h, e);
    t->used++;
    e->ipos = (uint32_t)t->n_fresh | KV_FRESH;
    t->fresh[t->n_fresh++] = e;
    t->fresh_sorted = 0;
    t->gen++;
}

/* `e` takes the place of `old` (same key) in the index. */
static inline void kv_index_swap(kv_table *t, kv_ent *old, kv_ent *e) {
    t->gen++;
    e->ipos = old->ipos;
    if (old->ipos & KV_FRESH) t->fresh[old->ipos & ~KV_FRESH] = e;
    else t->sorted[old->ipos] = e;
}

/* Drop the NULLs of `sorted`, rewriting positions. */
static inline void kv_index_compact(kv_table *t) {
    size_t i, j = 0;
    for (i = 0; i < t->n_sorted; i++) {
        kv_ent *e = t->sorted[i];
        if (e) {
            e->ipos = (uint32_t)j;
            t->sorted[j++] = e;
        }
    }
    t->n_sorted = j;
    t->holes = 0;
}

static inline void kv_index_remove(kv_table *t, kv_ent *e) {
    t->gen++;
    if (e->ipos & KV_FRESH) {
        size_t at = e->ipos & ~KV_FRESH;
        kv_ent *last = t->fresh[--t->n_fresh];
        if (last != e) {
            t->fresh[at] = last;
            last->ipos = (uint32_t)at | KV_FRESH;
            t->fresh_sorted = 0;
        }
    } else {
        t->sorted[e->ipos] = NULL;
        if (++t->holes * 4 > t->n_sorted) kv_index_compact(t);  /* amortised O(1) a delete */
    }
}

/* Remove slot i's entry from the table and the index, returning it (backward-shift deletion:
 * no tombstones, probe runs stay as short as if the key had never been there). */
static inline kv_ent *kv_remove_at(kv_table *t, size_t i) {
    size_t m = t->cap - 1, j = i, home;
    kv_ent *out = t->slots[i].e;
    kv_index_remove(t, out);
    t->used--;
    for (;;) {
        t->slots[i].e = NULL;
        for (;;) {
            j = (j + 1) & m;
            if (!t->slots[j].e) return out;
            home = (size_t)t->slots[j].hash & m;
            /* slot j's entry may stay if its home lies cyclically in (i, j] */
            if (i <= j ? (i < home && home <= j) : (i < home || home <= j)) continue;
            break;
        }
        t->slots[i] = t->slots[j];
        i = j;
    }
}

/* After deletes: halve the table while it is under 1/8 full (deletes give memory back; the gap to
 * the 3/4 that grows it keeps a size from flapping). Best effort: out of memory it stays. */
static inline void kv_maybe_shrink(kv_table *t) {
    size_t ncap = t->cap, i;
    kv_slot *ns;
    if (ncap <= 64 || t->used * 8 >= ncap) return;
    while (ncap > 64 && t->used * 4 < ncap) ncap /= 2;  /* ends between 1/4 and 1/2 full */
    ns = (kv_slot *)calloc(ncap, sizeof(kv_slot));
    if (!ns) return;
    for (i = 0; i < t->cap; i++)
        if (t->slots[i].e) kv_place(ns, ncap, t->slots[i].hash, t->slots[i].e);
    free(t->slots);
    t->slots = ns;
    t->cap = ncap;
    t->gen++;
}

static inline kv_ent *kv_take(kv_table *t, const char *k, size_t n) {
    Py_ssize_t i;
    kv_ent *e;
    if (!t->cap) return NULL;
    i = kv_find_slot(t, kv_hash(t, k, n), k, n);
    if (i < 0) return NULL;
    e = kv_remove_at(t, (size_t)i);
    kv_maybe_shrink(t);
    return e;
}

static int kv_ent_cmp(const void *a, const void *b) {
    const kv_ent *x = *(kv_ent *const *)a, *y = *(kv_ent *const *)b;
    return kv_key_cmp(x->data, x->klen, y->data, y->klen);
}

/* Put the fresh keys in key order where they are (only they are touched): a scan walks them
 * beside `sorted` instead of merging the whole index for a few new keys. */
static inline void kv_fresh_sort(kv_table *t) {
    size_t i;
    if (t->fresh_sorted) return;
    t->gen++;
    qsort(t->fresh, t->n_fresh, sizeof(kv_ent *), kv_ent_cmp);
    for (i = 0; i < t->n_fresh; i++) t->fresh[i]->ipos = (uint32_t)i | KV_FRESH;
    t->fresh_sorted = 1;
}

/* The first position of the (sorted) fresh array whose key is >= k. */
static inline size_t kv_fresh_lower_bound(const kv_table *t, const char *k, size_t n) {
    size_t lo = 0, hi = t->n_fresh, mid;
    while (lo < hi) {
        mid = lo + (hi - lo) / 2;
        if (kv_key_cmp(t->fresh[mid]->data, t->fresh[mid]->klen, k, n) < 0) lo = mid + 1;
        else hi = mid;
    }
    return lo;
}

/* Sort the fresh keys into `sorted` (dropping its NULLs); -1: out of memory (nothing changed). */
static inline int kv_index_merge(kv_table *t) {
    size_t live = t->n_sorted - t->holes, n = live + t->n_fresh, i = 0, j = 0, o = 0;
    kv_ent **out, *e;
    if (!t->n_fresh) return 0;
    t->gen++;
    out = (kv_ent **)malloc((n ? n : 1) * sizeof(kv_ent *));
    if (!out) return -1;
    kv_fresh_sort(t);
    while (i < t->n_sorted || j < t->n_fresh) {
        if (i < t->n_sorted && !t->sorted[i]) { i++; continue; }
        if (j >= t->n_fresh || (i < t->n_sorted && kv_ent_cmp(&t->sorted[i], &t->fresh[j]) < 0))
            e = t->sorted[i++];
        else
            e = t->fresh[j++];
        e->ipos = (uint32_t)o;
        out[o++] = e;
    }
    free(t->sorted);
    t->sorted = out;
    t->n_sorted = o;
    t->holes = 0;
    t->n_fresh = 0;
    t->fresh_sorted = 0;
    if (t->cap_fresh > 4 * KV_MERGE_MIN) {     /* a bulk load's fresh array: give it back */
        free(t->fresh);
        t->fresh = NULL;
        t->cap_fresh = 0;
    }
    return 0;
}

/* After an insert: merge once the fresh keys are a quarter of the index (amortised O(1) a key,
 * as SortedList.update's one sort was). Best effort: out of memory it waits for the next one. */
static inline void kv_index_maybe_merge(kv_table *t) {
    if (t->n_fresh >= KV_MERGE_MIN && t->n_fresh * 4 >= t->n_sorted - t->holes) (void)kv_index_merge(t);
}

/* The first position of `sorted` whose key is >= k, or a NULL run just before it (callers skip
 * NULLs). */
static inline size_t kv_lower_bound(const kv_table *t, const char *k, size_t n) {
    size_t lo = 0, hi = t->n_sorted, mid, j;
    while (lo < hi) {
        mid = lo + (hi - lo) / 2;
        j = mid;
        while (j < hi && !t->sorted[j]) j++;
        if (j == hi) { hi = mid; continue; }
        if (kv_key_cmp(t->sorted[j]->data, t->sorted[j]->klen, k, n) < 0) lo = j + 1;
        else hi = mid;
    }
    return lo;
}

/* Frees the arrays (not the entries: kv.pyx does, counting them). */
static inline void kv_table_release(kv_table *t) {
    free(t->slots);
    free(t->sorted);
    free(t->fresh);
    uint64_t mask = t->hash_mask, gen = t->gen;
    kv_table_init(t);
    t->hash_mask = mask;
    t->gen = gen + 1;
}

#endif

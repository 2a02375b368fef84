"""flo_core.kv.KVStore with injected time (``now`` in unix ms): no clock, no sockets."""

from __future__ import annotations

import doctest
import random

import msgpack
import pytest

import flo_core.kv as kvmod
from flo_core.kv import KVStore

pytestmark = pytest.mark.unit

NS = "default"
T0 = 1_700_000_000_000


@pytest.fixture
def kv() -> KVStore:
    return KVStore()


def test_doctests() -> None:
    assert doctest.testmod(kvmod).failed == 0


# --- get / set / delete ----------------------------------------------------------------------


def test_set_get_version_and_write_time(kv: KVStore) -> None:
    assert kv.get(NS, b"k", T0) is None
    kv.set(NS, b"k", b"v1", 10, 0, T0)
    e = kv.get(NS, b"k", T0)
    assert (e.value, e.version, e.expires_at, e.written_at) == (b"v1", 10, 0, T0)
    kv.set(NS, b"k", b"v2", 11, 0, T0 + 5)
    e = kv.get(NS, b"k", T0 + 5)
    assert (e.value, e.version, e.written_at) == (b"v2", 11, T0 + 5)


def test_binary_keys_and_values(kv: KVStore) -> None:
    key = bytes(range(256))
    kv.set(NS, key, b"\x00" * 1000, 1, 0, T0)
    assert kv.get(NS, key, T0).value == b"\x00" * 1000
    kv.set(NS, b"", b"", 2, 0, T0)  # the empty key and the empty value are ordinary
    assert kv.get(NS, b"", T0).value == b""


def test_namespaces_are_isolated(kv: KVStore) -> None:
    kv.set("a", b"k", b"in-a", 1, 0, T0)
    kv.set("b", b"k", b"in-b", 2, 0, T0)
    assert kv.get("a", b"k", T0).value == b"in-a"
    assert kv.get("b", b"k", T0).value == b"in-b"
    assert kv.get("c", b"k", T0) is None
    assert kv.delete("a", b"k", T0) is True
    assert kv.get("b", b"k", T0).value == b"in-b"
    assert sorted(kv.namespaces()) == ["a", "b"]
    kv.flush("b")
    assert kv.get("b", b"k", T0) is None and kv.count("b", T0) == 0


def test_delete(kv: KVStore) -> None:
    assert kv.delete(NS, b"missing", T0) is False
    assert kv.delete("never-used", b"k", T0) is False
    kv.set(NS, b"k", b"v", 1, 0, T0)
    assert kv.delete(NS, b"k", T0) is True
    assert kv.get(NS, b"k", T0) is None
    assert kv.delete(NS, b"k", T0) is False
    assert kv.scan(NS, b"", b"", 10, T0) == ([], False)


def test_delete_of_an_expired_key_reports_not_live(kv: KVStore) -> None:
    kv.set(NS, b"k", b"v", 1, T0 + 100, T0)
    assert kv.delete(NS, b"k", T0 + 100) is False
    assert kv.raw(NS, b"k") is None


# --- TTL -------------------------------------------------------------------------------------------


def test_ttl_boundary_is_exact(kv: KVStore) -> None:
    kv.set(NS, b"k", b"v", 1, T0 + 1000, T0)
    assert kv.get(NS, b"k", T0 + 999) is not None
    assert kv.get(NS, b"k", T0 + 1000) is None  # expires_at is the first dead ms
    assert kv.raw(NS, b"k") is not None  # lazily absent, still stored until active expiry


def test_set_expiry_changes_ttl_without_new_version(kv: KVStore) -> None:
    kv.set(NS, b"k", b"v", 7, T0 + 1000, T0)
    assert kv.set_expiry(NS, b"k", T0 + 5000, T0 + 10) is True
    e = kv.get(NS, b"k", T0 + 4999)
    assert e is not None and e.version == 7
    assert kv.get(NS, b"k", T0 + 5000) is None
    # persist: 0 clears the TTL
    kv.set(NS, b"p", b"v", 8, T0 + 10, T0)
    assert kv.set_expiry(NS, b"p", 0, T0) is True
    assert kv.get(NS, b"p", T0 + 10**9) is not None
    # missing or already expired keys cannot be touched
    assert kv.set_expiry(NS, b"missing", T0 + 1, T0) is False
    assert kv.set_expiry(NS, b"k", T0 + 99999, T0 + 6000) is False


def test_overwrite_without_ttl_clears_it(kv: KVStore) -> None:
    kv.set(NS, b"k", b"v1", 1, T0 + 10, T0)
    kv.set(NS, b"k", b"v2", 2, 0, T0 + 1)
    assert kv.get(NS, b"k", T0 + 100).value == b"v2"


def test_active_expiry(kv: KVStore) -> None:
    for i in range(10):
        kv.set(NS, b"k%d" % i, b"v", i + 1, T0 + 100 * (i + 1), T0)
    kv.set(NS, b"forever", b"v", 99, 0, T0)
    assert kv.expire_some(T0 + 50) == 0
    assert kv.expire_some(T0 + 300) == 3
    assert kv.raw(NS, b"k0") is None and kv.raw(NS, b"k3") is not None
    assert kv.expire_some(T0 + 10_000, budget=2) == 2  # bounded work per tick
    assert kv.expire_some(T0 + 10_000) == 5
    assert kv.scan(NS, b"", b"", 100, T0 + 10_000) == ([b"forever"], False)
    assert kv.count(NS, T0 + 10_000) == 1


def test_active_expiry_ignores_stale_candidates(kv: KVStore) -> None:
    kv.set(NS, b"a", b"v", 1, T0 + 100, T0)
    kv.set_expiry(NS, b"a", 0, T0)  # persisted: its heap entry is stale
    kv.set(NS, b"b", b"v", 2, T0 + 100, T0)
    kv.set(NS, b"b", b"v", 3, T0 + 500, T0 + 1)  # re-written with a later TTL
    kv.set(NS, b"c", b"v", 4, T0 + 100, T0)
    kv.delete(NS, b"c", T0 + 1)  # deleted: stale too
    assert kv.expire_some(T0 + 200) == 0
    assert kv.get(NS, b"a", T0 + 200) is not None and kv.get(NS, b"b", T0 + 200) is not None
    assert kv.expire_some(T0 + 500) == 1
    assert kv.raw(NS, b"b") is None


def test_rewrite_after_expiry_starts_fresh_history(kv: KVStore) -> None:
    kv.set(NS, b"k", b"old", 1, T0 + 10, T0)
    kv.set(NS, b"k", b"new", 2, 0, T0 + 20)  # the old value had expired: it is not history
    assert kv.history(NS, b"k", 65, T0 + 20) == [(2, T0 + 20, b"new")]


# --- scan ----------------------------------------------------------------------------------------------


def _scan_all(kv: KVStore, prefix: bytes, limit: int, now: int, mutate=None) -> list[bytes]:
    seen: list[bytes] = []
    after = b""
    pages = 0
    while True:
        names, more = kv.scan(NS, prefix, after, limit, now)
        assert len(names) <= limit
        seen += names
        pages += 1
        assert pages < 10_000
        if not more:
            return seen
        after = names[-1]
        if mutate:
            mutate(pages)


def test_scan_prefix_order_and_paging(kv: KVStore) -> None:
    keys = [b"user:%03d" % i for i in range(25)] + [b"other:1", b"user", b"users:x", b"usez"]
    for i, k in enumerate(keys):
        kv.set(NS, k, b"v", i + 1, 0, T0)
    assert _scan_all(kv, b"user:", 7, T0) == sorted(k for k in keys if k.startswith(b"user:"))
    assert _scan_all(kv, b"", 4, T0) == sorted(keys)
    assert kv.scan(NS, b"nope", b"", 10, T0) == ([], False)
    assert kv.scan("never-used", b"", b"", 10, T0) == ([], False)


def test_scan_more_flag_is_exact(kv: KVStore) -> None:
    for i in range(4):
        kv.set(NS, b"p:%d" % i, b"v", i + 1, 0, T0)
    kv.set(NS, b"q", b"v", 9, 0, T0)  # a following key outside the prefix does not make "more"
    assert kv.scan(NS, b"p:", b"", 4, T0) == ([b"p:0", b"p:1", b"p:2", b"p:3"], False)
    assert kv.scan(NS, b"p:", b"", 3, T0) == ([b"p:0", b"p:1", b"p:2"], True)
    assert kv.scan(NS, b"p:", b"p:2", 3, T0) == ([b"p:3"], False)
    kv.set(NS, b"p:4", b"v", 10, T0 + 5, T0)  # expired trailing key does not make "more" either
    assert kv.scan(NS, b"p:", b"", 4, T0 + 5) == ([b"p:0", b"p:1", b"p:2", b"p:3"], False)


def test_scan_skips_expired_and_deleted(kv: KVStore) -> None:
    for i in range(10):
        kv.set(NS, b"k%d" % i, b"v", i + 1, (T0 + 50) if i % 2 else 0, T0)
    kv.delete(NS, b"k4", T0)
    assert _scan_all(kv, b"k", 3, T0 + 50) == [b"k0", b"k2", b"k6", b"k8"]


def test_scan_cursor_may_name_a_deleted_key(kv: KVStore) -> None:
    for k in (b"a", b"b", b"c", b"d"):
        kv.set(NS, k, b"v", 1, 0, T0)
    names, more = kv.scan(NS, b"", b"", 2, T0)
    assert names == [b"a", b"b"] and more
    kv.delete(NS, b"b", T0)
    assert kv.scan(NS, b"", b"b", 10, T0) == ([b"c", b"d"], False)


def test_scan_every_live_key_once_while_mutating(kv: KVStore) -> None:
    """Keys present for the whole scan are seen exactly once; added/removed ones at most once."""
    rng = random.Random(11)
    stable = {b"s:%05d" % rng.randrange(100_000) for _ in range(300)}
    version = 0
    for k in stable:
        version += 1
        kv.set(NS, k, b"v", version, 0, T0)
    churn: set[bytes] = set()

    def mutate(_page: int) -> None:
        nonlocal version
        for _ in range(5):
            k = b"s:%05d~%d" % (rng.randrange(100_000), rng.randrange(10))
            version += 1
            kv.set(NS, k, b"v", version, 0, T0)
            churn.add(k)
        if churn and rng.random() < 0.5:
            gone = rng.choice(sorted(churn))
            kv.delete(NS, gone, T0)

    seen = _scan_all(kv, b"s:", 17, T0, mutate)
    assert len(seen) == len(set(seen)), "a key came twice"
    assert stable <= set(seen)
    assert set(seen) <= stable | churn


def test_scan_long_keys(kv: KVStore) -> None:
    keys = sorted(b"long:" + bytes([65 + i]) * 200 + b"%d" % i for i in range(20))
    for i, k in enumerate(keys):
        kv.set(NS, k, b"v", i + 1, 0, T0)
    assert _scan_all(kv, b"long:", 3, T0) == keys


# --- history --------------------------------------------------------------------------------------------


def test_history_newest_first_with_times(kv: KVStore) -> None:
    for v in range(1, 6):
        kv.set(NS, b"k", b"v%d" % v, v * 10, 0, T0 + v)
    h = kv.history(NS, b"k", 10, T0 + 10)
    assert h == [(50, T0 + 5, b"v5"), (40, T0 + 4, b"v4"), (30, T0 + 3, b"v3"), (20, T0 + 2, b"v2"), (10, T0 + 1, b"v1")]
    assert kv.history(NS, b"k", 2, T0 + 10) == h[:2]
    assert kv.history(NS, b"missing", 10, T0) == []


def test_history_keeps_at_least_64_versions(kv: KVStore) -> None:
    for v in range(1, 201):
        kv.set(NS, b"k", b"%d" % v, v, 0, T0 + v)
    h = kv.history(NS, b"k", 65, T0 + 1000)
    assert [x[0] for x in h] == list(range(200, 135, -1))  # 65 versions, newest first
    # bounded: the chain is cut back to 64 in one walk when it reaches 128 versions
    held = len(kv.raw(NS, b"k").history)
    assert kv.history_depth <= held < 2 * kv.history_depth
    from flo_core.kv import VERSION_OVERHEAD

    assert kv.history_bytes == sum(len(b"k") + len(x.value) + VERSION_OVERHEAD for x in kv.raw(NS, b"k").history)


def test_history_shows_the_same_depth_whatever_the_chain_holds(kv: KVStore) -> None:
    for v in range(1, 400):
        kv.set(NS, b"k", b"%d" % v, v, 0, T0 + v)
        if v > 64:
            h = kv.history(NS, b"k", 1000, T0 + 1000)
            assert [x[0] for x in h] == list(range(v, v - 65, -1))


def test_history_depth_is_a_setting() -> None:
    s = KVStore(history_depth=3)
    for v in range(1, 10):
        s.set(NS, b"k", b"x", v, 0, T0)
    assert [x[0] for x in s.history(NS, b"k", 65, T0)] == [9, 8, 7, 6]


def test_history_budget_keeps_only_the_last_version_of_keys_written_over_it() -> None:
    from flo_core.kv import VERSION_OVERHEAD

    cost = 1 + 100 + VERSION_OVERHEAD  # a kept 100-byte version of key b"a": its key, value and header
    s = KVStore(history_budget=10 * cost)
    for v in range(1, 9):  # 7 replaced versions: under the budget
        s.set(NS, b"a", b"%04d" % v * 25, v, 0, T0)
    assert s.history_bytes == 7 * cost
    assert len(s.history(NS, b"a", 65, T0)) == 8
    for v in range(9, 13):  # past 10 kept versions: "a" keeps its live value and the one before
        s.set(NS, b"a", b"%04d" % v * 25, v, 0, T0)
    assert [x[0] for x in s.history(NS, b"a", 65, T0)] == [12, 11]
    assert s.history_bytes == cost
    s.delete(NS, b"a", T0)
    assert s.history_bytes == 0


def test_history_budget_bounds_small_values_too() -> None:
    """Counters: 8-byte values, but each kept version also costs its objects."""
    from flo_core.kv import VERSION_OVERHEAD

    s = KVStore(history_budget=1_000_000)
    for v in range(1, 20_001):
        s.set(NS, b"c%d" % (v % 100), b"%08d" % v, v, 0, T0)
    assert s.history_bytes <= 1_000_000 + 100 * (3 + 8 + VERSION_OVERHEAD)
    kept = sum(len(s.raw(NS, b"c%d" % k).history or ()) * (len(b"c%d" % k) + 8 + VERSION_OVERHEAD) for k in range(100))
    assert kept == s.history_bytes


def test_history_after_delete_and_expiry(kv: KVStore) -> None:
    kv.set(NS, b"k", b"a", 1, 0, T0)
    kv.set(NS, b"k", b"b", 2, T0 + 10, T0 + 1)
    # expired live value is not listed; earlier versions still are until the key is gone
    assert [x[0] for x in kv.history(NS, b"k", 10, T0 + 10)] == [1]
    kv.delete(NS, b"k", T0 + 11)
    assert kv.history(NS, b"k", 10, T0 + 11) == []


# --- snapshot ----------------------------------------------------------------------------------------------


def test_dump_load_round_trip_through_msgpack(kv: KVStore) -> None:
    kv.set("a", b"k1", b"v1", 1, 0, T0)
    kv.set("a", b"k1", b"v2", 2, T0 + 5000, T0 + 1)
    kv.set("a", b"k2", b"x", 3, T0 + 100, T0)
    kv.set("b", b"\xff", b"y", 4, 0, T0)
    state = msgpack.unpackb(msgpack.packb(kv.dump()), raw=False)
    s2 = KVStore()
    s2.load(state)
    for ns, key in (("a", b"k1"), ("a", b"k2"), ("b", b"\xff")):
        a, b = kv.get(ns, key, T0 + 2), s2.get(ns, key, T0 + 2)
        assert (a.value, a.version, a.expires_at, a.written_at) == (b.value, b.version, b.expires_at, b.written_at)
    assert s2.history("a", b"k1", 10, T0 + 2) == kv.history("a", b"k1", 10, T0 + 2)
    assert s2.scan("a", b"", b"", 10, T0) == (([b"k1", b"k2"]), False)
    # TTLs survive the snapshot, for active expiry too
    assert s2.expire_some(T0 + 100) == 1 and s2.raw("a", b"k2") is None
    assert s2.get("a", b"k1", T0 + 5000) is None


@pytest.mark.parametrize("mask,nkeys", [(None, 12), (0x3F, 300)])
def test_random_operations_against_a_model(mask, nkeys) -> None:
    """A dict model with the same rules: every read agrees after every step (the second case
    with hashes cut to 6 bits, so keys share probe runs, and enough keys to grow the table)."""
    rng = random.Random(3)
    s = KVStore()
    if mask is not None:
        s.set_hash_mask(mask)
    model: dict[bytes, tuple[bytes, int, int]] = {}  # key -> (value, version, expires_at)
    now = T0
    version = 0
    keys = [b"k%d" % i for i in range(nkeys)]

    def live(k: bytes):
        m = model.get(k)
        return m if m is not None and (m[2] == 0 or m[2] > now) else None

    for _ in range(3000):
        now += rng.randrange(0, 30)
        k = rng.choice(keys)
        op = rng.random()
        if op < 0.45:
            version += 1
            exp = rng.choice([0, 0, now + rng.randrange(1, 200)])
            s.set(NS, k, b"%d" % version, version, exp, now)
            model[k] = (b"%d" % version, version, exp)
        elif op < 0.6:
            assert s.delete(NS, k, now) == (live(k) is not None)
            model.pop(k, None)
        elif op < 0.7:
            exp = rng.choice([0, now + rng.randrange(1, 200)])
            ok = s.set_expiry(NS, k, exp, now)
            assert ok == (live(k) is not None)
            if ok:
                model[k] = (model[k][0], model[k][1], exp)
        elif op < 0.8:
            s.expire_some(now, budget=rng.randrange(1, 5))
        e = s.get(NS, k, now)
        m = live(k)
        assert (e.value, e.version) == (m[0], m[1]) if m else e is None
        names, more = s.scan(NS, b"", b"", 1000, now)
        assert names == sorted(x for x in model if live(x)) and not more
        assert s.count(NS, now) == len(names)


def test_an_entry_is_a_copy_made_on_demand() -> None:
    """Entries live in C (flo_core/kvtable.h; its header size: test_kv_table); get() copies one out."""
    s = KVStore()
    s.set(NS, b"k", b"v", 1, 0, T0)
    a, b = s.get(NS, b"k", T0), s.get(NS, b"k", T0)
    assert a is not b and (a.value, a.version, a.size) == (b.value, b.version, 1)
    with pytest.raises(AttributeError):
        a.version = 2  # read-only: a write goes through the store

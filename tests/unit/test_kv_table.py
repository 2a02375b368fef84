"""flo_core/kvtable.h through KVStore: the hash table (collisions, resizes, backward-shift deletes),
the sorted index (positions after overwrite/delete/merge/compaction), history chains and the budget,
and that every version dropped is freed."""

from __future__ import annotations

import io
import random

import msgpack
import pytest

import flo_core.kv as kvmod
from flo_core.kv import KVStore, live_versions

pytestmark = pytest.mark.unit

NS = "default"
T0 = 1_700_000_000_000


def _scan_all(s: KVStore, prefix: bytes, page: int, now: int, ns: str = NS) -> list[bytes]:
    out: list[bytes] = []
    after = b""
    while True:
        names, more = s.scan(ns, prefix, after, page, now)
        out += names
        if not more:
            return out
        after = names[-1]


def _check(s: KVStore, model: dict[bytes, bytes], now: int, ns: str = NS) -> None:
    assert s.count(ns, now) == len(model)
    for k, v in model.items():
        e = s.get(ns, k, now)
        assert e is not None and e.value == v, k
    assert _scan_all(s, b"", 7, now, ns) == sorted(model)
    space = s.spaces.get(ns)
    if space is not None:
        assert sorted(space.keys) == sorted(model) and len(space.keys) == len(model)


def test_an_entry_header_is_48_bytes() -> None:
    """Memory per key is a target (<= 1.2x Redis): one more field costs 8 B on every version."""
    assert kvmod.ENTRY_HEADER == 48


@pytest.mark.parametrize("mask", [0, 1, 7, 0xFF])
def test_forced_collisions_with_inserts_deletes_and_resizes(mask: int) -> None:
    """With every hash cut to a few bits, keys share probe runs; backward-shift deletion must keep
    every remaining key reachable through grows and deletes in any order."""
    rng = random.Random(mask)
    s = KVStore()
    s.set_hash_mask(mask)
    model: dict[bytes, bytes] = {}
    keys = [b"k%d" % i for i in range(600 if mask else 200)]
    for step in range(4000 if mask else 1500):
        k = rng.choice(keys)
        if rng.random() < 0.6:
            v = b"v%d" % step
            s.set(NS, k, v, step + 1, 0, T0)
            model[k] = v
        else:
            assert s.delete(NS, k, T0) == (k in model)
            model.pop(k, None)
        if step % 500 == 0:
            _check(s, model, T0)
    _check(s, model, T0)
    for k in list(model):
        assert s.delete(NS, k, T0)
    _check(s, {}, T0)


def test_set_hash_mask_only_before_the_first_key() -> None:
    s = KVStore()
    s.set(NS, b"k", b"v", 1, 0, T0)
    with pytest.raises(ValueError):
        s.set_hash_mask(0)


def test_scan_order_against_a_sorted_model_across_merges_and_compactions() -> None:
    """Enough keys to pass the merge threshold (4096 fresh keys) many times, with deletes that
    compact the sorted array and overwrites that swap pointers in place in both arrays."""
    rng = random.Random(11)
    s = KVStore(history_depth=2)
    model: dict[bytes, bytes] = {}
    version = 0
    for round_ in range(6):
        for _ in range(5000):
            version += 1
            k = b"%c%06d" % (rng.choice(b"abc"), rng.randrange(20000))
            s.set(NS, k, b"%d" % version, version, 0, T0)
            model[k] = b"%d" % version
        for k in rng.sample(sorted(model), len(model) // 3):  # past a quarter of the sorted array
            assert s.delete(NS, k, T0)
            del model[k]
        for k in rng.sample(sorted(model), 500):  # overwrites: in place in sorted or fresh
            version += 1
            s.set(NS, k, b"o%d" % version, version, 0, T0)
            model[k] = b"o%d" % version
        if round_ % 2:
            _check(s, model, T0)
        for prefix in (b"a", b"b0", b"c01", b"zz", b""):
            want = sorted(k for k in model if k.startswith(prefix))
            assert _scan_all(s, prefix, 97, T0) == want
    _check(s, model, T0)


def test_scan_skips_expired_and_starts_after_the_cursor() -> None:
    s = KVStore()
    for i in range(50):
        s.set(NS, b"p%02d" % i, b"x", i + 1, T0 + 10 if i % 5 == 0 else 0, T0)
    live = [b"p%02d" % i for i in range(50) if i % 5]
    assert _scan_all(s, b"p", 4, T0 + 10) == live
    assert s.scan(NS, b"p", b"p40", 100, T0 + 10) == ([k for k in live if k > b"p40"], False)
    assert s.scan(NS, b"p", b"", 0, T0 + 10) == ([], True)
    assert s.scan(NS, b"q", b"", 10, T0) == ([], False)
    assert s.scan(NS, b"", b"p9", 10, T0) == ([], False)


def test_history_chain_through_entries_and_the_budget_in_bytes() -> None:
    s = KVStore(history_depth=4)
    for v in range(1, 12):
        s.set(NS, b"key", b"v%d" % v, v, 0, T0 + v)
    e = s.raw(NS, b"key")
    held = e.history
    assert 4 <= len(held) < 8 and [h.version for h in held] == list(range(11 - len(held), 11))
    assert e.prev.version == 10 and e.prev.prev.version == 9 and held[-1].prev.version == 9
    assert held[0].prev is None
    cost = sum(len(b"key") + len(h.value) + kvmod.VERSION_OVERHEAD for h in held)
    assert s.history_bytes == cost
    # an Entry is a copy: writes after it do not change it, and its chain ends once the key is gone
    s.set(NS, b"key", b"new", 12, 0, T0 + 12)
    assert e.value == b"v11" and e.prev.version == 10
    s.delete(NS, b"key", T0 + 12)
    assert e.prev is None and e.history == [] and s.history_bytes == 0


def test_dropped_versions_are_freed() -> None:
    base = live_versions()
    s = KVStore(history_depth=3, history_budget=10_000)
    for i in range(3000):
        s.set("a", b"k%d" % (i % 700), b"x" * (i % 50), i + 1, T0 + 5 if i % 7 == 0 else 0, T0)
        s.set("b", b"k%d" % (i % 50), b"y", i + 1, 0, T0)
    assert live_versions() > base
    s.expire_some(T0 + 5, budget=10_000)
    s.drop_keys("a", [b"k%d" % i for i in range(100)])
    rows = s.export_keys("a", [b"k%d" % i for i in range(100, 200)])
    s.import_rows("c", rows)
    s.import_rows("c", rows)  # replacing what it imported
    for i in range(200, 300):
        s.delete("a", b"k%d" % i, T0)
    s.flush("b")
    state = s.dump()
    s.load(state)  # the old namespaces go with their versions
    s.load({})
    assert s.history_bytes == 0
    assert live_versions() == base
    s2 = KVStore()
    for i in range(100):
        s2.set(NS, b"x%d" % i, b"v", i + 1, 0, T0)
        s2.set(NS, b"x%d" % i, b"w", i + 200, 0, T0)
    del s2  # the namespaces' dealloc frees their chains
    assert live_versions() == base


def test_keys_view_reads_as_a_mapping_and_refuses_changes_while_iterating() -> None:
    s = KVStore()
    for i in range(20):
        s.set(NS, b"m%d" % i, b"v%d" % i, i + 1, 0, T0)
    view = s.spaces[NS].keys
    assert len(view) == 20 and b"m3" in view and b"zz" not in view
    assert view[b"m3"].value == b"v3" and view.get(b"zz") is None and view.get(b"zz", 5) == 5
    assert {k: e.value for k, e in view.items()} == {b"m%d" % i: b"v%d" % i for i in range(20)}
    assert sorted(e.version for e in view.values()) == list(range(1, 21))
    with pytest.raises(KeyError):
        view[b"zz"]
    assert list(view) == sorted(view)  # key order, as dump()
    with pytest.raises(RuntimeError):
        for k in view:
            s.set(NS, k + b"-new", b"x", 99, 0, T0)
    with pytest.raises(RuntimeError):  # an overwrite too: the version it walks may be freed
        for k in view:
            s.set(NS, k, b"x", 100, 0, T0)
    with pytest.raises(RuntimeError):
        for k in view:
            s.flush(NS)
    assert list(view) == []


def test_the_table_grows_under_inserts_and_shrinks_after_deletes() -> None:
    s = KVStore()
    s.set_hash_mask(0xFFF)  # collisions too, so that rehashing moves runs
    keys = [b"g%05d" % i for i in range(20000)]
    for i, k in enumerate(keys):
        s.set(NS, k, b"v", i + 1, 0, T0)
    space = s.spaces[NS]
    assert len(keys) * 4 <= space.table_slots * 3 < len(keys) * 8
    for k in keys[10:]:
        assert s.delete(NS, k, T0)
    assert space.table_slots <= 64
    _check(s, {k: b"v" for k in keys[:10]}, T0)
    s.drop_keys(NS, keys[:10])
    for i, k in enumerate(keys[:5000]):
        s.set(NS, k, b"w", i + 1, 0, T0)
    _check(s, {k: b"w" for k in keys[:5000]}, T0)


def test_packed_rows_are_the_dump_rows_as_msgpack_packs_them_in_bounded_batches() -> None:
    # The snapshot writer's C path: every size and int form (bin 8/16/32, negative and 64-bit ints,
    # history), keys both merged into the index and still fresh, byte for byte what msgpack packs.
    rng = random.Random(7)
    s = KVStore(history_depth=3)
    lsn = 0
    for _ in range(5000):
        lsn += rng.choice([1, 1000, 1 << 33])
        value = bytes(rng.choice([0, 1, 255, 256, 65535, 65536, 10]))
        s.set(NS, b"k%d" % rng.randrange(1500), value, lsn, rng.choice([0, 200, 70000, 1 << 40]),
              rng.choice([-5, -200, -40000, -(1 << 40), 0, 127, 128, 1 << 35]))
    s.set(NS, b"late", b"v", lsn + 1, 0, T0)  # a fresh key, not yet in the index
    rows = s.dump()[NS]
    batches = list(s.packed_rows(NS, 1 << 16, 50))
    assert b"".join(b for _, b in batches) == b"".join(msgpack.packb(r, use_bin_type=True) for r in rows)
    assert sum(n for n, _ in batches) == len(rows)
    for n, body in batches:
        assert 1 <= n <= 50
        assert n == 1 or len(body) <= 1 << 16
        assert len(list(msgpack.Unpacker(io.BytesIO(body)))) == n
    assert list(s.packed_rows("nowhere")) == []


def test_packed_rows_refuse_a_namespace_changed_meanwhile() -> None:
    s = KVStore()
    for i in range(10):
        s.set(NS, b"k%d" % i, b"v", i + 1, 0, T0)
    it = s.packed_rows(NS, 1, 1)
    next(it)
    s.set(NS, b"new", b"v", 99, 0, T0)
    with pytest.raises(RuntimeError):
        next(it)

"""The C fast paths' slot computation (flo_core/slotcrc.h) is exactly flo_core.slots.key_slot."""

from __future__ import annotations

import random

import pytest

from flo_core.slots import key_slot

core = pytest.importorskip("flo_core.core")


def test_c_slot_matches_python_for_keys_tags_and_namespaces():
    rng = random.Random(7)
    alphabet = b"ab{}:x\x00\xff"
    cases = [b"", b"foo", b"{user1000}.following", b"a{}b", b"a{b", b"x{y}{z}", b"{}", b"{", b"}{a}"]
    cases += [bytes(rng.choice(alphabet) for _ in range(rng.randrange(0, 12))) for _ in range(3000)]
    for ns in ("", "default", "tenant-a", "n{s}"):
        for k in cases:
            assert core.key_slot_c(ns.encode(), k) == key_slot(k, ns or "default"), (ns, k)


def test_c_slot_refuses_what_it_cannot_hash_in_place():
    assert core.key_slot_c(b"n" * 600, b"k" * 600) == -1  # the Python path routes it
    assert core.key_slot_c(b"", b"k" * 5000) == key_slot(b"k" * 5000)  # the default namespace needs no copy


def test_keys_in_slots_finds_exactly_the_keys_of_the_masked_slots():
    from flo_core.kv import KVStore
    from flo_server.cluster.migrate import slot_mask

    kv = KVStore()
    keys = [f"user:{i}".encode() for i in range(5000)] + [b"{t}x%d" % i for i in range(50)] + [b"k" * 3000]
    for ns in ("default", "tenant-a"):
        for k in keys:
            kv.set(ns, k, b"v", 1, 0, 0)
    slots = set(range(8000, 8300)) | {key_slot(b"t"), key_slot(b"t", "tenant-a"), key_slot(b"k" * 3000, "tenant-a")}
    mask = slot_mask(slots)
    for ns in ("default", "tenant-a"):
        assert set(kv.keys_in_slots(ns, mask)) == {k for k in keys if key_slot(k, ns) in slots}
    assert kv.keys_in_slots("absent", mask) == []
    with pytest.raises(ValueError):
        kv.keys_in_slots("default", b"\x01")

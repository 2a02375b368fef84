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

"""The checker itself (no server): it accepts linearizable histories and rejects hand-made ones that are not.

Each history is drawn as intervals on one clock: ``op(client, call, ret, kind, *args, out=...)``;
``ret=INF`` (with ``out=UNKNOWN``) is an operation whose answer never came.
"""

from __future__ import annotations

import math
import random

import pytest

from tests.reliability.checker import CAS_MISMATCH, History, Operation, Unknown, check, check_kv

pytestmark = pytest.mark.unit

INF = math.inf
UNKNOWN = object()  # placeholder in the tables below; op() turns it into a fresh Unknown()


def op(client, call, ret, kind, *args, out=None, key="k") -> Operation:
    output = Unknown() if out is UNKNOWN else out
    return Operation(client, key, (kind, *args), call, output, ret)


def verdict(*ops: Operation) -> bool:
    return check_kv(list(ops), time_limit=10).ok


# --- accepted --------------------------------------------------------------------------------------


def test_sequential_history_of_every_op_is_linearizable():
    assert verdict(
        op("a", 1, 2, "get", out=None),
        op("a", 3, 4, "put", b"x", out=5),
        op("a", 5, 6, "get", out=(b"x", 5)),
        op("a", 7, 8, "cas", b"y", 5, out=9),
        op("a", 9, 10, "cas", b"z", 5, out=CAS_MISMATCH),
        op("a", 11, 12, "cas_delete", 5, out=CAS_MISMATCH),
        op("a", 13, 14, "cas_delete", 9, out=True),
        op("a", 15, 16, "delete", out=False),
        op("a", 17, 18, "cas", b"w", 0, out=30),  # CAS on 0: "absent"
        op("a", 19, 20, "get", out=(b"w", 30)),
    )


def test_overlapping_reads_may_see_either_side_of_a_write():
    put = op("w", 1, 10, "put", b"new", out=7)
    assert verdict(op("w", 0, 0.5, "put", b"old", out=3), put,
                   op("r1", 2, 3, "get", out=(b"old", 3)), op("r2", 4, 5, "get", out=(b"new", 7)),
                   op("r3", 11, 12, "get", out=(b"new", 7)))


def test_two_cas_on_one_version_one_wins_one_mismatches():
    assert verdict(op("w", 0, 1, "put", b"v0", out=4),
                   op("a", 2, 6, "cas", b"a", 4, out=CAS_MISMATCH),
                   op("b", 3, 5, "cas", b"b", 4, out=8),
                   op("r", 7, 8, "get", out=(b"b", 8)))


def test_unknown_write_may_take_effect_any_time_after_its_call():
    # the put's answer was lost at a kill; reads long after see it: it took effect late
    assert verdict(op("w", 1, INF, "put", b"x", out=UNKNOWN),
                   op("r", 2, 3, "get", out=None),
                   op("r", 20, 21, "get", out=(b"x", 40)),
                   op("r", 22, 23, "get", out=(b"x", 40)))
    # ... or never
    assert verdict(op("w", 1, INF, "put", b"x", out=UNKNOWN), op("r", 2, 3, "get", out=None),
                   op("r", 30, 31, "get", out=None))
    # an unknown CAS that held, seen; one that cannot have held, ignored
    assert verdict(op("w", 0, 1, "put", b"a", out=5),
                   op("w", 2, INF, "cas", b"b", 5, out=UNKNOWN),
                   op("x", 3, INF, "cas", b"c", 99, out=UNKNOWN),
                   op("r", 4, 5, "get", out=(b"b", 9)))


def test_unknown_delete_may_or_may_not_have_happened():
    base = [op("w", 0, 1, "put", b"a", out=5), op("w", 2, INF, "delete", out=UNKNOWN)]
    assert verdict(*base, op("r", 3, 4, "get", out=(b"a", 5)))
    assert verdict(*base, op("r", 3, 4, "get", out=(b"a", 5)), op("r", 5, 6, "get", out=None))


def test_keys_are_checked_apart():
    assert verdict(op("a", 1, 4, "put", b"1", out=10, key="x"), op("b", 2, 3, "put", b"2", out=11, key="y"),
                   op("a", 5, 6, "get", out=(b"1", 10), key="x"), op("b", 5, 6, "get", out=(b"2", 11), key="y"))


# --- rejected --------------------------------------------------------------------------------------


def test_stale_read_after_a_write_returned_is_rejected():
    assert not verdict(op("w", 1, 2, "put", b"x", out=5), op("r", 3, 4, "get", out=None))


def test_read_going_back_in_time_is_rejected():
    # porcupine's classic: two reads inside one long write, the later one sees the older value
    assert not verdict(op("w", 0, 100, "put", b"new", out=7), op("w0", -2, -1, "put", b"old", out=3),
                       op("r1", 25, 30, "get", out=(b"new", 7)), op("r2", 40, 60, "get", out=(b"old", 3)))


def test_lost_acknowledged_write_is_rejected():
    # what a kill -9 that dropped an acknowledged put would look like
    assert not verdict(op("w", 0, 1, "put", b"a", out=5), op("w", 2, 3, "put", b"b", out=6),
                       op("r", 10, 11, "get", out=(b"a", 5)))


def test_two_winners_of_one_version_are_rejected():
    assert not verdict(op("w", 0, 1, "put", b"v0", out=4),
                       op("a", 2, 6, "cas", b"a", 4, out=8), op("b", 3, 5, "cas", b"b", 4, out=9))


def test_cas_refused_although_the_version_held_is_rejected():
    assert not verdict(op("w", 0, 1, "put", b"v0", out=4), op("a", 2, 3, "cas", b"a", 4, out=CAS_MISMATCH))
    assert not verdict(op("a", 2, 3, "cas_delete", 0, out=CAS_MISMATCH))  # absent key: version 0 holds


def test_versions_that_do_not_rise_are_rejected():
    assert not verdict(op("a", 0, 1, "put", b"x", out=9), op("a", 2, 3, "put", b"y", out=4))
    # not even across a delete
    assert not verdict(op("a", 0, 1, "put", b"x", out=9), op("a", 2, 3, "delete", out=True),
                       op("a", 4, 5, "put", b"y", out=9))


def test_read_with_the_wrong_version_or_an_unwritten_value_is_rejected():
    assert not verdict(op("a", 0, 1, "put", b"x", out=9), op("r", 2, 3, "get", out=(b"x", 8)))
    assert not verdict(op("r", 2, 3, "get", out=(b"never written", 1)))


def test_delete_that_saw_a_missing_key_exist_is_rejected():
    assert not verdict(op("a", 0, 1, "delete", out=True))
    assert not verdict(op("a", 0, 1, "put", b"x", out=3), op("a", 2, 3, "delete", out=False))


def test_unknown_write_seen_before_it_was_called_is_rejected():
    assert not verdict(op("r", 1, 2, "get", out=(b"x", 40)), op("w", 3, INF, "put", b"x", out=UNKNOWN))


def test_unknown_write_seen_then_unseen_is_rejected():
    assert not verdict(op("w", 1, INF, "put", b"x", out=UNKNOWN),
                       op("r", 2, 3, "get", out=(b"x", 40)), op("r", 4, 5, "get", out=None))


def test_one_write_seen_at_two_versions_is_rejected():
    assert not verdict(op("w", 1, INF, "put", b"x", out=UNKNOWN),
                       op("r", 2, 3, "get", out=(b"x", 40)), op("r", 4, 5, "get", out=(b"x", 41)))


def test_failure_is_explained_with_the_key_and_the_stuck_operation():
    result = check_kv([op("w", 1, 2, "put", b"x", out=5, key="acct"), op("r", 3, 4, "get", out=None, key="acct"),
                       op("r", 1, 2, "get", out=None, key="fine")])
    assert result.ok is False and result.key == "acct"
    text = result.explain()
    assert "NOT linearizable" in text and "'acct'" in text and "get() -> None" in text


def test_values_must_be_unique_per_write():
    with pytest.raises(ValueError, match="unique"):
        check_kv([op("a", 0, 1, "put", b"x", out=1), op("b", 0, 1, "put", b"x", out=2)])


# --- the search at size -------------------------------------------------------------------------


def simulated_history(rng: random.Random, n: int, clients: int = 6, keys: int = 3) -> History:
    """A real concurrent execution of a correct in-memory store: each op takes effect at one instant
    inside its [call, ret] interval (the clock is a History's). Some answers are lost (unknown)."""
    h = History()
    store: dict[str, tuple[bytes, int]] = {}
    seen: dict[tuple[int, str], int] = {}
    pending: list[tuple[Operation, object]] = []  # invoked, effect applied, not yet returned
    lsn = 0
    for i in range(n):
        c, key = rng.randrange(clients), f"k{rng.randrange(keys)}"
        if any(p.client == c for p, _ in pending) or (pending and rng.random() < 0.5):
            p, out = pending.pop(rng.randrange(len(pending)))  # return one in flight
            h.unknown(p) if rng.random() < 0.03 else h.ok(p, out)
            continue
        kind = rng.choice(["get", "get", "put", "cas", "delete"])
        cur = store.get(key)
        if kind == "get":
            o, out = h.invoke(c, key, "get"), cur
        elif kind == "put":
            lsn += 1
            o = h.invoke(c, key, "put", b"v%d" % i)
            store[key], out = (b"v%d" % i, lsn), lsn
        elif kind == "cas":
            expected = seen.get((c, key), 0)
            o = h.invoke(c, key, "cas", b"v%d" % i, expected)
            if (cur[1] if cur else 0) == expected:
                lsn += 1
                store[key], out = (b"v%d" % i, lsn), lsn
            else:
                out = CAS_MISMATCH
        else:
            o, out = h.invoke(c, key, "delete"), cur is not None
            store.pop(key, None)
        if cur is not None:
            seen[(c, key)] = cur[1]
        pending.append((o, out))
    for p, out in pending:
        h.ok(p, out)
    return h


@pytest.mark.parametrize("seed", range(5))
def test_large_random_histories_are_accepted_and_a_corrupted_read_is_not(seed):
    rng = random.Random(seed)
    h = simulated_history(rng, 3000)
    result = check_kv(h, time_limit=20)
    assert result.ok, result.explain()
    assert result.operations > 1000 and result.keys == 3
    # a read of an answered write that reports another version
    answered = {o.input[1] for o in h.ops if o.input[0] in ("put", "cas") and isinstance(o.output, int)}
    reads = [o for o in h.ops if o.input[0] == "get" and isinstance(o.output, tuple) and o.output[0] in answered]
    victim = rng.choice(reads)
    victim.output = (victim.output[0], victim.output[1] + 1)
    assert check_kv(h, time_limit=20).ok is False


def test_generic_check_with_another_model():
    """``check`` takes any model: a counter whose reads must see every increment that returned."""

    class Counter:
        def init(self):
            return 0

        def step(self, state, input, output):
            if input[0] == "incr":
                return [state + 1]
            return [state] if output == state else []

    ops = [Operation("a", "c", ("incr",), 1, None, 3), Operation("b", "c", ("read",), 2, 1, 4),
           Operation("b", "c", ("read",), 5, 1, 6)]
    assert check(Counter(), ops).ok
    ops.append(Operation("b", "c", ("read",), 7, 0, 8))
    assert check(Counter(), ops).ok is False

"""flo_core.pqueue with injected time: ordering, delay, leases, DLQ, dedup, snapshots."""

from __future__ import annotations

import doctest
import random
import struct

import msgpack
import pytest

import flo_core.pqueue as pq
from flo_core.pqueue import DELAYED, DLQ, LEASED, READY, PriorityQueue, Queues, encode_messages

pytestmark = pytest.mark.unit

LEASE = 30_000


def payloads(msgs) -> list[bytes]:
    return [m.payload for m in msgs]


def test_doctests() -> None:
    assert doctest.testmod(pq).failed == 0


# --- ordering ---------------------------------------------------------------


def test_lower_priority_value_first_fifo_within_priority() -> None:
    q = PriorityQueue()
    q.enqueue(b"p5-a", 5, now=0)
    q.enqueue(b"p0-a", 0, now=0)
    q.enqueue(b"p255", 255, now=0)
    q.enqueue(b"p5-b", 5, now=0)
    q.enqueue(b"p0-b", 0, now=0)
    got = q.dequeue(10, now=1, lease_ms=LEASE)
    assert payloads(got) == [b"p0-a", b"p0-b", b"p5-a", b"p5-b", b"p255"]
    assert [m.seq for m in got] == [2, 5, 1, 4, 3]


def test_seq_rises_per_queue_and_survives_ack_and_purge() -> None:
    q = PriorityQueue()
    assert [q.enqueue(b"x", 0, now=0) for _ in range(3)] == [1, 2, 3]
    q.purge(now=0)
    assert q.enqueue(b"y", 0, now=0) == 4
    other = PriorityQueue()
    assert other.enqueue(b"z", 0, now=0) == 1


def test_dequeue_count_and_batch_bytes() -> None:
    q = PriorityQueue()
    for i in range(5):
        q.enqueue(bytes(100), 0, now=0)
    assert len(q.dequeue(2, now=0, lease_ms=LEASE)) == 2
    # a byte budget stops the batch, but one message always goes out
    assert len(q.dequeue(10, now=0, lease_ms=LEASE, max_bytes=150)) == 1
    assert len(q.dequeue(10, now=0, lease_ms=LEASE, max_bytes=10)) == 1
    assert len(q.dequeue(10, now=0, lease_ms=LEASE)) == 1
    assert q.dequeue(10, now=0, lease_ms=LEASE) == []


def test_randomised_order_matches_sorted() -> None:
    rng = random.Random(7)
    q = PriorityQueue()
    expect = []
    for i in range(2000):
        p = rng.randrange(256)
        seq = q.enqueue(b"%d" % i, p, now=0)
        expect.append((p, seq))
    got = []
    while True:
        batch = q.dequeue(rng.randrange(1, 50), now=0, lease_ms=LEASE)
        if not batch:
            break
        got += [(m.priority, m.seq) for m in batch]
    assert got == sorted(expect)


def test_bad_arguments_raise() -> None:
    q = PriorityQueue()
    with pytest.raises(ValueError):
        q.enqueue(b"x", 256, now=0)
    with pytest.raises(ValueError):
        q.enqueue(b"x", 0, now=0, delay_ms=-1)
    with pytest.raises(ValueError):
        q.dequeue(1, now=0, lease_ms=0)
    with pytest.raises(ValueError):
        PriorityQueue(max_messages=0)


# --- delay --------------------------------------------------------------------


def test_delayed_message_invisible_until_due() -> None:
    q = PriorityQueue()
    q.enqueue(b"later", 0, now=1000, delay_ms=60_000)
    q.enqueue(b"now", 9, now=1000)
    assert payloads(q.dequeue(10, now=1000, lease_ms=LEASE)) == [b"now"]
    assert q.stats(1000)["delayed"] == 1
    assert q.next_due(1000) == 31_000  # the lease of "now" lapses first
    assert q.ack([2], now=1000) == 1
    assert q.next_due(1000) in (31_000, 61_000)  # a stale lease entry may wake early
    assert q.dequeue(10, now=60_999, lease_ms=LEASE) == []
    assert q.peek(10, now=60_999) == []
    got = q.dequeue(10, now=61_000, lease_ms=LEASE)
    assert payloads(got) == [b"later"]
    assert got[0].enqueued_at_ms == 1000


def test_next_due_reports_delays_and_leases() -> None:
    q = PriorityQueue()
    assert q.next_due(0) is None
    q.enqueue(b"a", 0, now=0, delay_ms=500)
    assert q.next_due(0) == 500
    q.enqueue(b"b", 0, now=0)
    q.dequeue(1, now=0, lease_ms=200)
    assert q.next_due(0) == 200
    q.ack([2], now=10)
    # the stale lease entry may still report 200: early wakes are allowed
    assert q.next_due(300) == 500
    assert q.has_ready(500)


# --- leases ---------------------------------------------------------------------


def test_leased_message_hidden_until_lease_lapses() -> None:
    q = PriorityQueue()
    seq = q.enqueue(b"job", 0, now=0)
    [m] = q.dequeue(1, now=0, lease_ms=1000)
    assert (m.seq, m.delivery_count, m.state, m.due) == (seq, 1, LEASED, 1000)
    assert q.dequeue(1, now=999, lease_ms=1000) == []
    assert q.peek(1, now=999) == []
    assert q.stats(999) | {} == q.stats(999)
    st = q.stats(999)
    assert (st["ready"], st["leased"]) == (0, 1)
    [again] = q.dequeue(1, now=1000, lease_ms=1000)
    assert (again.seq, again.delivery_count) == (seq, 2)
    assert q.stats(1000)["total_expired"] == 1


def test_ack_removes_and_is_idempotent() -> None:
    q = PriorityQueue()
    a = q.enqueue(b"a", 0, now=0)
    b = q.enqueue(b"b", 0, now=0)
    q.dequeue(2, now=0, lease_ms=LEASE)
    assert q.ack([a, 999], now=1) == 1
    assert q.ack([a], now=2) == 0
    st = q.stats(3)
    assert (st["leased"], st["total_acked"]) == (1, 1)
    assert q.get(a) is None and q.get(b) is not None


def test_ack_of_never_delivered_message_is_ignored() -> None:
    q = PriorityQueue()
    a = q.enqueue(b"a", 0, now=0)
    assert q.ack([a], now=0) == 0
    assert len(q) == 1


def test_late_ack_after_lapse_still_removes() -> None:
    q = PriorityQueue()
    a = q.enqueue(b"a", 0, now=0)
    q.dequeue(1, now=0, lease_ms=100)
    assert q.ack([a], now=500) == 1  # lapsed and ready again, but the work was done
    assert q.dequeue(1, now=500, lease_ms=100) == []


def test_nack_makes_ready_again_with_higher_delivery_count() -> None:
    q = PriorityQueue()
    a = q.enqueue(b"a", 0, now=0)
    q.dequeue(1, now=0, lease_ms=LEASE)
    assert q.nack([a], now=10) == 1
    [m] = q.peek(1, now=10)
    assert (m.seq, m.state, m.delivery_count) == (a, READY, 1)
    [m] = q.dequeue(1, now=11, lease_ms=LEASE)
    assert m.delivery_count == 2


def test_nack_with_delay() -> None:
    q = PriorityQueue()
    a = q.enqueue(b"a", 0, now=0)
    q.dequeue(1, now=0, lease_ms=LEASE)
    q.nack([a], now=100, delay_ms=5000)
    assert q.get(a).state == DELAYED
    assert q.dequeue(1, now=5099, lease_ms=LEASE) == []
    assert [m.seq for m in q.dequeue(1, now=5100, lease_ms=LEASE)] == [a]


def test_nack_ignores_unleased() -> None:
    q = PriorityQueue()
    a = q.enqueue(b"a", 0, now=0)
    assert q.nack([a, 77], now=0) == 0
    assert q.get(a).state == READY


def test_nack_to_dlq() -> None:
    q = PriorityQueue()
    a = q.enqueue(b"a", 3, now=0)
    q.dequeue(1, now=0, lease_ms=LEASE)
    q.nack([a], now=50, to_dlq=True)
    [d] = q.dlq_list(10, now=50)
    assert (d.seq, d.state, d.payload, d.priority, d.delivery_count, d.due) == (a, DLQ, b"a", 3, 1, 50)
    assert q.stats(50)["dlq"] == 1 and len(q) == 0


def test_max_deliveries_by_nack_then_dlq() -> None:
    q = PriorityQueue(max_deliveries=5)
    a = q.enqueue(b"a", 0, now=0)
    for i in range(1, 6):
        [m] = q.dequeue(1, now=i, lease_ms=LEASE)
        assert m.delivery_count == i
        q.nack([a], now=i)
    assert q.dequeue(1, now=10, lease_ms=LEASE) == []
    assert [m.seq for m in q.dlq_list(10, now=10)] == [a]


def test_max_deliveries_by_lease_expiry_then_dlq() -> None:
    q = PriorityQueue(max_deliveries=3)
    a = q.enqueue(b"a", 0, now=0)
    t = 0
    for i in range(3):
        assert [m.seq for m in q.dequeue(1, now=t, lease_ms=100)] == [a]
        t += 100
    assert q.dequeue(1, now=t, lease_ms=100) == []
    [d] = q.dlq_list(5, now=t)
    assert (d.seq, d.delivery_count, d.due) == (a, 3, 300)


def test_max_deliveries_zero_means_never() -> None:
    q = PriorityQueue(max_deliveries=0)
    a = q.enqueue(b"a", 0, now=0)
    for i in range(20):
        q.dequeue(1, now=i, lease_ms=LEASE)
        q.nack([a], now=i)
    assert q.dlq_list(5, now=100) == [] and len(q) == 1


def test_touch_extends_lease() -> None:
    q = PriorityQueue()
    a = q.enqueue(b"a", 0, now=0)
    b = q.enqueue(b"b", 0, now=0)
    q.dequeue(2, now=0, lease_ms=1000)
    assert q.touch([a, 999], now=900, lease_ms=1000) == [a]
    # b lapses at 1000, a is held until 1900
    assert [m.seq for m in q.dequeue(5, now=1000, lease_ms=1000)] == [b]
    assert q.dequeue(5, now=1899, lease_ms=1000) == []
    # touching never shortens a lease
    assert q.touch([a], now=1000, lease_ms=1) == [a]
    assert q.get(a).due == 1900
    # a lapsed lease cannot be touched back
    assert q.touch([a], now=1900, lease_ms=1000) == []
    assert q.get(a).state == READY
    # without a length, a touch extends by the dequeue's own lease length
    assert [m.seq for m in q.dequeue(1, now=1900, lease_ms=250)] == [a]
    assert q.get(a).lease_ms == 250
    assert q.touch([a], now=2000) == [a] and q.get(a).due == 2250


def test_clock_never_goes_back() -> None:
    q = PriorityQueue()
    q.enqueue(b"a", 0, now=0, delay_ms=100)
    assert q.has_ready(200)
    assert q.has_ready(50)  # an older `now` does not un-ready it
    assert q.clock == 200


# --- DLQ ------------------------------------------------------------------------


def _into_dlq(q: PriorityQueue, n: int, now: int = 0) -> list[int]:
    seqs = [q.enqueue(b"%d" % i, 0, now=now) for i in range(n)]
    q.dequeue(n, now=now, lease_ms=LEASE)
    q.nack(seqs, now=now, to_dlq=True)
    return seqs


def test_dlq_requeue_resets_delivery_count_and_keeps_seq() -> None:
    q = PriorityQueue()
    seqs = _into_dlq(q, 3)
    assert q.dlq_requeue([seqs[1], 12345], now=5) == 1
    [m] = q.peek(5, now=5)
    assert (m.seq, m.delivery_count, m.state) == (seqs[1], 0, READY)
    [m] = q.dequeue(5, now=6, lease_ms=LEASE)
    assert m.delivery_count == 1
    assert [d.seq for d in q.dlq_list(10, now=6)] == [seqs[0], seqs[2]]


def test_dlq_list_limit_delete_purge() -> None:
    q = PriorityQueue()
    seqs = _into_dlq(q, 5)
    assert [d.seq for d in q.dlq_list(2, now=0)] == seqs[:2]
    assert q.dlq_delete([seqs[0], seqs[0], 999]) == 1
    assert len(q.dlq_list(100, now=0)) == 4
    assert q.dlq_purge() == 4
    assert q.dlq_list(100, now=0) == [] and q.stats(0)["dlq"] == 0


def test_dlq_is_bounded_oldest_evicted() -> None:
    q = PriorityQueue(dlq_max=3)
    seqs = _into_dlq(q, 5)
    assert [d.seq for d in q.dlq_list(10, now=0)] == seqs[2:]
    q0 = PriorityQueue(dlq_max=0)
    _into_dlq(q0, 2)
    assert q0.dlq_list(10, now=0) == [] and q0.stats(0)["total_dead"] == 2


def test_purge_drops_everything_but_dlq() -> None:
    q = PriorityQueue()
    _into_dlq(q, 1)
    q.enqueue(b"r", 0, now=0)
    q.enqueue(b"d", 0, now=0, delay_ms=100)
    leased = q.enqueue(b"l", 0, now=0)
    q.dequeue(1, now=0, lease_ms=LEASE)  # takes "r" (seq 2)
    assert q.purge(now=0) == 3
    st = q.stats(0)
    assert (st["ready"], st["delayed"], st["leased"], st["dlq"]) == (0, 0, 0, 1)
    assert q.ack([leased], now=1) == 0
    assert q.dequeue(10, now=10_000, lease_ms=LEASE) == []
    assert q.next_due(0) is None


# --- dedup ----------------------------------------------------------------------


def test_dedup_within_window_returns_first_seq_and_adds_nothing() -> None:
    q = PriorityQueue()
    a = q.enqueue(b"one", 0, now=0, dedup_key="k", dedup_window_ms=1000)
    assert q.enqueue(b"two", 0, now=999, dedup_key="k", dedup_window_ms=1000) == a
    assert q.dedup_lookup("k", now=999) == a
    assert len(q) == 1 and q.stats(999)["total_enqueued"] == 1
    # the window is counted from the first enqueue, even after the ack
    q.dequeue(1, now=999, lease_ms=LEASE)
    q.ack([a], now=999)
    assert q.enqueue(b"three", 0, now=999, dedup_key="k") == a
    assert q.dedup_lookup("k", now=1000) is None
    b = q.enqueue(b"four", 0, now=1000, dedup_key="k", dedup_window_ms=1000)
    assert b != a and payloads(q.peek(5, now=1000)) == [b"four"]


def test_dedup_keys_are_independent_and_window_zero_disables() -> None:
    q = PriorityQueue()
    a = q.enqueue(b"a", 0, now=0, dedup_key="a")
    b = q.enqueue(b"b", 0, now=0, dedup_key="b")
    assert a != b
    c = q.enqueue(b"c", 0, now=0, dedup_key="c", dedup_window_ms=0)
    d = q.enqueue(b"d", 0, now=0, dedup_key="c", dedup_window_ms=0)
    assert c != d
    assert q.stats(0)["dedup_keys"] == 2


def test_default_dedup_window() -> None:
    q = PriorityQueue()
    a = q.enqueue(b"a", 0, now=0, dedup_key="k")
    assert q.dedup_lookup("k", pq.DEFAULT_DEDUP_WINDOW_MS - 1) == a
    assert q.dedup_lookup("k", pq.DEFAULT_DEDUP_WINDOW_MS) is None


# --- peek, capacity, heap hygiene ----------------------------------------------


def test_peek_does_not_lease_or_reorder() -> None:
    q = PriorityQueue()
    for p in (3, 1, 2):
        q.enqueue(b"%d" % p, p, now=0)
    assert payloads(q.peek(2, now=0)) == [b"1", b"2"]
    assert payloads(q.peek(10, now=0)) == [b"1", b"2", b"3"]
    assert payloads(q.dequeue(10, now=0, lease_ms=LEASE)) == [b"1", b"2", b"3"]


def test_is_full() -> None:
    q = PriorityQueue(max_messages=2)
    q.enqueue(b"a", 0, now=0)
    assert not q.is_full()
    q.enqueue(b"b", 0, now=0)
    assert q.is_full()


def test_many_acks_and_touches_keep_heaps_compact() -> None:
    q = PriorityQueue()
    seqs = [q.enqueue(b"x", 0, now=0) for _ in range(5000)]
    q.dequeue(5000, now=0, lease_ms=LEASE)
    for t in range(1, 20):
        q.touch(seqs, now=t, lease_ms=LEASE)
    q.ack(seqs[:4990], now=50)
    st = q.stats(50)
    assert (st["leased"], st["ready"]) == (10, 0)
    # lapsing the rest still works after compactions
    assert sorted(m.seq for m in q.dequeue(100, now=50 + LEASE + 100, lease_ms=LEASE)) == seqs[4990:]


# --- encoding and snapshots -------------------------------------------------------


def test_encode_messages_layout() -> None:
    q = PriorityQueue()
    q.enqueue(b"hi", 7, now=123)
    [m] = q.dequeue(1, now=200, lease_ms=LEASE)
    data = encode_messages([m])
    assert data == struct.pack("<IQI", 1, 1, 2) + b"hi" + struct.pack("<qIB", 123, 1, 7)
    # the public SDK parses it
    from flo.wire import parse_dequeue_response

    [sm] = parse_dequeue_response(data).messages
    assert (sm.seq, sm.payload, sm.enqueued_at_ms, sm.delivery_count, sm.priority) == (1, b"hi", 123, 1, 7)


def _state_of(q: PriorityQueue, now: int) -> tuple:
    return (
        [(m.seq, m.state, m.delivery_count, m.due) for m in q.peek(10_000, now)],
        q.stats(now),
        [(m.seq, m.delivery_count, m.due) for m in q.dlq_list(10_000, now)],
    )


def test_dump_load_roundtrip_through_msgpack() -> None:
    q = PriorityQueue(max_deliveries=2, dlq_max=50)
    for i in range(20):
        q.enqueue(b"m%d" % i, i % 3, now=i, delay_ms=(500 if i % 5 == 0 else 0), dedup_key=f"d{i}")
    q.dequeue(6, now=30, lease_ms=1000)
    q.nack([q.peek(1, 30)[0].seq], now=30)  # no-op: not leased
    leased = [m.seq for m in q.dequeue(3, now=31, lease_ms=100)]
    q.nack(leased[:1], now=32, to_dlq=True)
    blob = msgpack.packb(q.dump(), use_bin_type=True)
    r = PriorityQueue.load(msgpack.unpackb(blob, raw=False))
    for now in (40, 200, 600, 2000):
        assert _state_of(r, now) == _state_of(q, now)
        assert r.next_due(now) == q.next_due(now)
    assert r.enqueue(b"z", 0, now=2000, dedup_key="d19") == q.enqueue(b"z", 0, now=2000, dedup_key="d19")
    assert r.enqueue(b"new", 0, now=2000) == q.enqueue(b"new", 0, now=2000)


def test_registry() -> None:
    qs = Queues(max_deliveries=2, max_queues=2)
    q = qs.get_or_create("ns1", "b")
    assert qs.get_or_create("ns1", "b") is q and q.max_deliveries == 2
    qs.get_or_create("ns1", "a")
    assert qs.names("ns1") == ["a", "b"] and qs.names("ns2") == []
    assert not qs.can_create() and qs.count() == 2
    q.enqueue(b"x", 0, now=0)
    blob = msgpack.unpackb(msgpack.packb(qs.dump(), use_bin_type=True), raw=False)
    r = Queues()
    r.load(blob)
    assert r.names("ns1") == ["a", "b"] and len(r.get("ns1", "b")) == 1
    assert r.drop("ns1", "a") and not r.drop("ns1", "a")
    assert r.drop_namespace("ns1") == 1 and r.namespaces() == []

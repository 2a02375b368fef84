"""flo_core.stream: ids, storage, reads, trim/retention and consumer groups, with injected time."""

from __future__ import annotations

import msgpack
import pytest
from flo.wire import parse_stream_read_response

from flo_core.stream import U64_MAX, Group, Stream, Streams, id_int, id_split

pytestmark = pytest.mark.unit

T0 = 1_700_000_000_000


def add(s: Stream, now: int, payload: bytes = b"x", headers=None) -> tuple[int, int]:
    ts, seq = s.next_id(now)
    s.append(now, ts, seq, [[payload, headers]])
    return ts, seq


def ids_of(answer: bytes) -> list[tuple[int, int]]:
    return [(r.id.timestamp_ms, r.id.sequence) for r in parse_stream_read_response(answer).records]


# --- ids -------------------------------------------------------------------


def test_ids_rise_strictly_with_same_ms_and_clock_going_back():
    s = Stream("ev")
    assert add(s, T0) == (T0, 0)
    assert add(s, T0) == (T0, 1)
    assert add(s, T0 - 5000) == (T0, 2)  # clock went backwards: keep ts, bump seq
    assert add(s, T0 + 1) == (T0 + 1, 0)
    assert s.last_id == (T0 + 1, 0)


def test_first_id_is_never_zero_zero():
    s = Stream("ev")
    assert s.next_id(0) == (0, 1)


def test_sequence_overflow_bumps_the_ms():
    s = Stream("ev")
    s.append(T0, T0, U64_MAX, [[b"a", None]])
    assert s.next_id(T0) == (T0 + 1, 0)


def test_append_refuses_a_non_increasing_id():
    s = Stream("ev")
    add(s, T0)
    with pytest.raises(ValueError):
        s.append(T0, T0, 0, [[b"again", None]])


def test_batch_append_gets_contiguous_sequences():
    s = Stream("ev")
    first = s.append(T0, T0, 0, [[b"a", None], [b"b", None], [b"c", None]])
    assert first == 0
    assert [s.id_at(o) for o in range(3)] == [(T0, 0), (T0, 1), (T0, 2)]
    assert s.next_id(T0) == (T0, 3)


def test_id_int_round_trip_and_order():
    assert id_split(id_int(T0, 7)) == (T0, 7)
    assert id_int(1, U64_MAX) < id_int(2, 0)


# --- records and reads -----------------------------------------------------


def test_records_keep_payload_and_headers_and_encode_for_the_sdk():
    s = Stream("events")
    add(s, T0, b'{"event": "click"}', [["content-type", "application/json"], ["source", "web"]])
    add(s, T0, b"", None)
    assert s.record(0) == (T0, 0, b'{"event": "click"}', {"content-type": "application/json", "source": "web"})
    assert s.record(1) == (T0, 1, b"", None)
    n, answer = s.read(0, T0, 10)
    recs = parse_stream_read_response(answer).records
    assert n == 2 and recs[0].stream == "events" and recs[0].headers["source"] == "web"
    assert recs[1].headers is None and recs[1].payload == b""


def test_read_from_id_inclusive_with_end_and_count():
    s = Stream("ev")
    for i in range(20):
        add(s, T0 + i)
    start = s.lower_bound(T0 + 5, 0)
    n, answer = s.read(start, T0 + 100, 10)
    assert ids_of(answer) == [(T0 + i, 0) for i in range(5, 15)]
    n, answer = s.read(start, T0 + 100, 100, end=(T0 + 7, 0))
    assert ids_of(answer) == [(T0 + 5, 0), (T0 + 6, 0), (T0 + 7, 0)]
    # a start between ids lands on the next one
    assert s.lower_bound(T0 + 5, 1) == 6
    assert s.upper_bound(T0 + 5, 0) == 6


def test_tail_ordinal_sees_only_later_appends():
    s = Stream("ev")
    add(s, T0)
    tail = s.end_ord
    assert s.read(tail, T0, 10)[0] == 0
    add(s, T0 + 1, b"new")
    n, answer = s.read(tail, T0 + 1, 10)
    assert n == 1 and parse_stream_read_response(answer).records[0].payload == b"new"


def test_many_appends_and_front_trims_keep_everything_consistent():
    s = Stream("ev")
    for i in range(5000):
        add(s, T0 + i, b"p%d" % i)
        if i % 7 == 6:
            s.remove_oldest(3)
    live = len(s)
    assert s.end_ord == 5000 and s.first_ord == 5000 - live
    for o in range(s.first_ord, s.end_ord):
        assert s.record(o)[2] == b"p%d" % o
    assert s.total_bytes == sum(4 + len(b"p%d" % o) + 4 for o in range(s.first_ord, s.end_ord))


# --- trim and retention ----------------------------------------------------


def test_trim_counts_and_removal():
    s = Stream("ev")
    for i in range(10):
        add(s, T0 + i * 1000, b"abcd")
    assert s.trim_count_max_len(4) == 6
    assert s.trim_count_before(T0 + 2000, 0) == 3
    assert s.trim_count_age(T0 + 9000, 3000) == 6  # records older than T0+6000
    assert s.trim_count_bytes(3 * 12) == 7
    assert s.first_seq_after(3) == 0
    assert s.remove_oldest(3) == 3
    assert s.info(T0 + 9000)[:2] == (T0 + 3000, 0)
    assert s.info(T0 + 9000)[4] == 7


def test_retention_max_len_applies_on_append():
    s = Stream("ev")
    s.max_len = 3
    for i in range(10):
        add(s, T0 + i)
    assert len(s) == 3 and s.record(s.first_ord)[0] == T0 + 7


def test_max_age_hides_old_records_lazily_and_trims_on_append():
    s = Stream("ev")
    s.max_age_ms = 1000
    add(s, T0)
    add(s, T0 + 500)
    assert s.read(0, T0 + 600, 10)[0] == 2
    assert s.read(0, T0 + 1200, 10)[0] == 1  # first is too old now: hidden without a write
    assert s.info(T0 + 1200)[4] == 1
    add(s, T0 + 2000)  # the append applies retention physically
    assert len(s) == 1


def test_info_of_empty_stream_keeps_last_id():
    s = Stream("ev")
    add(s, T0)
    s.remove_oldest(1)
    assert s.info(T0) == (0, 0, T0, 0, 0, 0)
    assert add(s, T0) == (T0, 1)


# --- consumer groups -------------------------------------------------------


def mkgroup(n: int = 5, ack_timeout: int = 30_000, max_deliver: int = 10) -> tuple[Stream, Group]:
    s = Stream("ev")
    for i in range(n):
        add(s, T0 + i)
    g = s.group_create("g", T0)
    g.ack_timeout_ms = ack_timeout
    g.max_deliver = max_deliver
    return s, g


def test_new_group_starts_at_the_beginning_and_each_record_goes_to_one_consumer():
    s, g = mkgroup(5)
    a = g.deliver(s, "a", 2, T0)
    b = g.deliver(s, "b", 10, T0)
    assert a == [0, 1] and b == [2, 3, 4]
    assert g.deliver(s, "a", 10, T0) == []
    assert {c for c in g.consumers} == {"a", "b"}
    assert [(p[0], p[3]) for p in g.pending()] == [(T0, "a"), (T0 + 1, "a"), (T0 + 2, "b"), (T0 + 3, "b"), (T0 + 4, "b")]


def test_ack_removes_and_nack_redelivers_first_with_count_plus_one():
    s, g = mkgroup(3)
    g.deliver(s, "a", 3, T0)
    assert g.ack([id_int(T0, 0)]) == 1
    assert g.ack([id_int(T0, 0)]) == 0
    assert g.nack([id_int(T0 + 2, 0)], T0 + 10) == 1
    add(s, T0 + 20)
    got = g.deliver(s, "b", 2, T0 + 20)
    assert got == [2, 3]  # redeliverable first, then new
    pend = {(p[0], p[1]): p for p in g.pending()}
    assert pend[(T0 + 2, 0)][2] == 2 and pend[(T0 + 2, 0)][3] == "b"


def test_ack_timeout_makes_entries_redeliverable_lazily():
    s, g = mkgroup(2, ack_timeout=1000)
    g.deliver(s, "a", 10, T0)
    assert not g.has_deliverable(s, T0 + 999)
    assert g.next_deadline() == T0 + 1000
    assert g.has_deliverable(s, T0 + 1000)
    assert g.deliver(s, "b", 10, T0 + 1000) == [0, 1]
    assert all(p[3] == "b" and p[2] == 2 for p in g.pending())


def test_touch_pushes_the_deadline():
    s, g = mkgroup(1, ack_timeout=1000)
    g.deliver(s, "a", 1, T0)
    g.touch([id_int(T0, 0)], T0 + 900)
    assert g.deliver(s, "b", 1, T0 + 1500) == []
    assert g.deliver(s, "b", 1, T0 + 1900) == [0]


def test_max_deliveries_dead_letters():
    s, g = mkgroup(1, ack_timeout=0, max_deliver=2)
    key = id_int(T0, 0)
    assert g.deliver(s, "a", 1, T0) == [0]
    g.nack([key], T0)
    assert g.deliver(s, "a", 1, T0) == [0]
    g.nack([key], T0)
    assert g.deliver(s, "a", 1, T0) == []
    assert g.dead_count == 1 and g.dead == [[T0, 0, 2]] and not g.pel


def test_claim_min_idle_zero_takes_only_own_entries():
    s, g = mkgroup(4)
    g.deliver(s, "a", 2, T0)
    g.deliver(s, "b", 2, T0)
    ords, nxt = g.claim(s, "a", 0, 0, 10, T0 + 5)
    assert ords == [0, 1] and nxt is None
    assert [p[2] for p in g.pending("a")] == [2, 2]
    assert [p[3] for p in g.pending()] == ["a", "a", "b", "b"]


def test_claim_with_min_idle_steals_idle_entries_and_pages():
    s, g = mkgroup(4)
    g.deliver(s, "a", 4, T0)
    assert g.claim(s, "b", 1000, 0, 10, T0 + 500) == ([], None)
    ords, nxt = g.claim(s, "b", 1000, 0, 2, T0 + 1000)
    assert ords == [0, 1] and nxt == id_int(T0 + 2, 0)
    ords, nxt = g.claim(s, "b", 1000, nxt, 2, T0 + 1000)
    assert ords == [2, 3] and nxt is None


def test_trimmed_records_leave_the_pel_on_redelivery():
    s, g = mkgroup(3, ack_timeout=0)
    g.deliver(s, "a", 3, T0)
    g.nack([id_int(T0, 0)], T0)
    s.remove_oldest(1)
    assert g.deliver(s, "a", 3, T0) == []
    assert len(g.pel) == 2


def test_leave_keeps_pending_entries():
    s, g = mkgroup(2)
    g.deliver(s, "a", 2, T0)
    assert g.leave("a")
    assert len(g.pending()) == 2
    assert g.claim(s, "a", 0, 0, 10, T0)[0] == [0, 1]


def test_lag_and_pending_by_consumer():
    s, g = mkgroup(5)
    g.deliver(s, "a", 2, T0)
    assert g.lag(s, T0) == 3
    assert g.pending_by_consumer() == {"a": 2}


def test_pel_order_compaction_keeps_claims_right():
    s, g = mkgroup(500)
    g.deliver(s, "a", 500, T0)
    g.ack([id_int(T0 + i, 0) for i in range(0, 450)])
    g.deliver(s, "a", 1, T0)  # triggers compaction
    ords, nxt = g.claim(s, "a", 0, id_int(T0 + 460, 0), 100, T0)
    assert ords == list(range(460, 500)) and nxt is None


# --- registry and snapshots ------------------------------------------------


def test_registry_and_snapshot_round_trip_through_msgpack():
    reg = Streams()
    s = reg.get_or_create("default", "ev")
    add(s, T0, b"a", [["k", "v"]])
    add(s, T0, b"b")
    add(s, T0 + 1, b"c")
    s.remove_oldest(1)
    s.max_len = 100
    g = s.group_create("g", T0)
    g.deliver(s, "w1", 1, T0)
    g.nack([id_int(T0, 1)], T0 + 1)
    reg.get_or_create("other", "x")
    state = msgpack.unpackb(msgpack.packb(reg.dump()), raw=False, strict_map_key=False)
    reg2 = Streams()
    reg2.load(state)
    s2 = reg2.get("default", "ev")
    assert reg2.names("default") == ["ev"] and reg2.names("other") == ["x"]
    assert [s2.record(o) for o in range(s2.first_ord, s2.end_ord)] == [
        s.record(o) for o in range(s.first_ord, s.end_ord)
    ]
    assert s2.last_id == s.last_id and s2.max_len == 100 and s2.total_bytes == s.total_bytes
    g2 = s2.group("g")
    assert g2.pending(now=T0 + 1) == g.pending(now=T0 + 1)
    assert g2.deliver(s2, "w2", 10, T0 + 2) == g.deliver(s, "w2", 10, T0 + 2)
    assert reg2.delete("default", "ev") and reg2.get("default", "ev") is None

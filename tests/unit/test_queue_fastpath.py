"""The C QUEUE_DEQUEUE / QUEUE_COMPLETE / QUEUE_FAIL of ServerCore (flo_core/core.pyx) against the
Python handlers they stand in for (flo_server/handlers/queue.py).

As in tests/unit/test_core_fastpath.py, every scenario runs on two fresh servers with the same clock,
one through ServerCore with the fast path on, one with it off: answers, queue state, journal record
bytes, waiter wake-ups and the request counts must be identical. ``slow_ops`` shows which requests the
fast path handed to Python (it must hand over every refusal and every case it does not cover).
"""

from __future__ import annotations

import struct
from typing import Any

import pytest

pytest.importorskip("flo_core.core")

from flo_core.spec import Op, Tag  # noqa: E402
from flo_server.journal import MemoryJournal  # noqa: E402
from flo_server.persistence import pack_record, unpack_record  # noqa: E402

from test_core_fastpath import NOW, Twin, _head, _same, enqueue  # noqa: E402
from test_core_fastpath import twins  # noqa: E402,F401 - the fixture


def dequeue(name: bytes, count: int | None = None, block_ms: int | None = None, lease_ms: int | None = None,
            ns: str | bytes = "", raw_opts: bytes | None = None, width: int = 4) -> tuple[int, bytes]:
    opts = {}
    if count is not None:
        opts[Tag.COUNT] = count.to_bytes(width, "little")
    if block_ms is not None:
        opts[Tag.BLOCK_MS] = block_ms.to_bytes(4, "little")
    if lease_ms is not None:
        opts[Tag.LEASE_MS] = lease_ms.to_bytes(width, "little")
    w = _head(ns, name).bytes32(b"")
    w = w.raw(raw_opts) if raw_opts is not None else w.options(opts)
    return Op.QUEUE_DEQUEUE, w.getvalue()


def _seq_value(seqs: list[int], count: int | None = None) -> bytes:
    return struct.pack(f"<I{len(seqs)}Q", len(seqs) if count is None else count, *seqs)


def ack(name: bytes, seqs: list[int], ns: str | bytes = "", value: bytes | None = None,
        opts: dict | None = None, op: int = Op.QUEUE_COMPLETE) -> tuple[int, bytes]:
    w = _head(ns, name).bytes32(_seq_value(seqs) if value is None else value)
    return op, w.options(opts or {}).getvalue()


def nack(name: bytes, seqs: list[int], **kw: Any) -> tuple[int, bytes]:
    return ack(name, seqs, op=Op.QUEUE_FAIL, **kw)


def _messages(body: bytes) -> list[tuple[int, bytes, int, int, int]]:
    """(seq, payload, enqueued_at_ms, delivery_count, priority) of a message-list answer."""
    (n,), pos, out = struct.unpack_from("<I", body), 4, []
    for _ in range(n):
        seq, plen = struct.unpack_from("<QI", body, pos)
        payload = body[pos + 12: pos + 12 + plen]
        at, dc, prio = struct.unpack_from("<qIB", body, pos + 12 + plen)
        out.append((seq, payload, at, dc, prio))
        pos += 25 + plen
    assert pos == len(body)
    return out


def _count(body: bytes) -> int:
    return struct.unpack("<I", body)[0]


def _calls(t: Twin) -> dict:
    return t.srv.metrics.snapshot()["calls"] if t.srv.metrics is not None else {}


def _fill(fast: Twin, slow: Twin, name: bytes = b"q", n: int = 6, ns: str = "") -> None:
    _same(fast, slow, [enqueue(name, b"m%d" % i, ns=ns, opts={Tag.PRIORITY: bytes([i % 3])}) for i in range(n)])


def test_dequeue_ack_nack_cycle_matches_the_handlers(twins) -> None:
    fast, slow = twins()
    _fill(fast, slow, n=8)
    _fill(fast, slow, "t\u00e2ches".encode(), n=3, ns="tenant-\u00e9")
    fast.slow_ops.clear()
    frames = [
        dequeue(b"q"),                                         # COUNT absent: 1
        dequeue(b"q", 2, lease_ms=5000),
        dequeue(b"q", 1, block_ms=1000),                       # ready now: a blocking dequeue takes at once
        dequeue(b"q", 1, width=8, lease_ms=77, raw_opts=None),  # 8-byte widths
        dequeue(b"q", 1, width=2),
        dequeue("t\u00e2ches".encode(), 5, ns="tenant-\u00e9"),  # fewer ready than asked
        ack(b"q", [1, 2, 3]),                                  # 3 was never delivered
        ack(b"q", [4, 4, 99, 6]),                              # a duplicate, an unknown seq, a ready one
        nack(b"q", [5, 7, 1000]),                              # leased: ready again
        dequeue(b"q", 5000),                                   # clamped to 1000: the rest
        nack("t\u00e2ches".encode(), [1, 2, 3], ns="tenant-\u00e9"),
        ack(b"q", [5]),
    ]
    replies = _same(fast, slow, frames)
    assert fast.slow_ops == []
    assert all(status == 0 for _, status, _ in replies)
    msgs = [_messages(b) for _, _, b in replies[:6]]
    assert [len(m) for m in msgs] == [1, 2, 1, 1, 1, 3]
    assert msgs[0][0][3] == 1 and msgs[0][0][2] == NOW  # delivery_count, enqueued_at_ms
    # priorities 0, 1, 2, 0, 1, 2, 0, 1: leased in the order 1, 4, 7, 2, 5, 8
    assert [m[0] for ms in msgs[:5] for m in ms] == [1, 4, 7, 2, 5, 8]
    assert [_count(b) for _, _, b in replies[6:9]] == [2, 1, 2]
    last = _messages(replies[9][2])
    assert [m[0] for m in last] == [7, 5, 3, 6] and [m[3] for m in last] == [2, 2, 1, 1]
    assert _calls(fast) == _calls(slow)
    assert fast.records()[-3][2] == pack_record("q.deq", (NOW, "default", "q", 1000, 30_000))
    assert fast.records()[-1][2] == pack_record("q.ack", (NOW, "default", "q", [5]))
    assert fast.records()[-2][2] == pack_record("q.nack", (NOW, "tenant-\u00e9", "t\u00e2ches", [1, 2, 3], 0, False))


def test_seq_record_bytes_for_every_int_width(twins) -> None:
    fast, slow = twins()
    _fill(fast, slow, n=1)
    seqs = [0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1]
    _same(fast, slow, [dequeue(b"q"), ack(b"q", seqs), nack(b"q", seqs * 2), ack(b"q", list(range(300)))])
    assert fast.slow_ops == [Op.QUEUE_ENQUEUE]
    assert fast.records()[-3][2] == pack_record("q.ack", (NOW, "default", "q", seqs))


def test_refusals_and_uncovered_cases_go_to_python(twins) -> None:
    fast, slow = twins()
    _fill(fast, slow, n=4)
    _same(fast, slow, [dequeue(b"q", 2)])
    fast.slow_ops.clear()
    frames = [
        dequeue(b""),                                            # empty name
        dequeue(b"\xff\xfe"),                                    # name not UTF-8
        dequeue(b"q", ns=b"\xff"),                               # namespace not UTF-8
        dequeue(b"nope"),                                        # no such queue: empty answer
        dequeue(b"q", 0),                                        # COUNT 0: empty answer
        dequeue(b"q", block_ms=300_001),                         # out of range
        dequeue(b"q", lease_ms=0),
        dequeue(b"q", lease_ms=12 * 3600 * 1000 + 1),
        dequeue(b"q", lease_ms=2**64 - 1, width=8),
        dequeue(b"q", raw_opts=b"\x03\x00\x15\x03\x01\x00\x00"[:5]),  # truncated option
        dequeue(b"q", raw_opts=b"\x05\x00\x15\x03\x01\x00\x00"),  # bad width
        dequeue(b"q", raw_opts=b"\x09\x00\x15\x01\x01"),          # options overrun the payload
        dequeue(b"q", raw_opts=b"\x03\x00\x40\x01\x01"),          # an option dequeue does not read
        ack(b"q", [], value=b""),                                # empty value: 0
        ack(b"q", [], value=b"\x01\x00"),                        # shorter than a count
        ack(b"q", [], value=_seq_value([])),                     # count 0
        ack(b"q", [1], value=_seq_value([1], count=2)),          # shorter than its count
        ack(b"q", [1], value=_seq_value([1], count=100_001)),    # too many
        ack(b"q", [1], opts={Tag.LIMIT: b"\x01"}),                # an option
        ack(b"nope", [1]),                                       # no such queue: 0
        ack(b"", [1]),
        nack(b"q", [1], opts={Tag.DELAY_MS: (50).to_bytes(8, "little")}),
        nack(b"q", [2], opts={Tag.TO_DLQ: b""}),
        nack(b"\xff", [3]),
    ]
    replies = _same(fast, slow, frames)
    assert fast.slow_ops == [op for op, _ in frames]
    ok = [s == 0 for _, s, _ in replies]
    assert ok == [False, False, False, True, True, False, False, False, False, False, False, False, True,
                  True, False, True, False, False, True, True, False, True, True, False]
    # nothing ready: a non-blocking dequeue answers an empty list from Python
    _same(fast, slow, [dequeue(b"q", 10)])
    fast.slow_ops.clear()
    r = _same(fast, slow, [dequeue(b"q", 10)])
    assert fast.slow_ops == [Op.QUEUE_DEQUEUE] and _messages(r[0][2]) == []


def test_lease_setting_is_read_like_the_handler(twins) -> None:
    fast, slow = twins()
    _fill(fast, slow, n=3)
    for t in (fast, slow):
        t.srv.config.queue_lease_ms = 1234
    _same(fast, slow, [dequeue(b"q")])
    assert fast.records()[-1][2] == pack_record("q.deq", (NOW, "default", "q", 1, 1234))
    for t in (fast, slow):
        t.srv.config.queue_lease_ms = 0  # out of range: a dequeue without LEASE_MS is refused
    fast.slow_ops.clear()
    r = _same(fast, slow, [dequeue(b"q"), dequeue(b"q", lease_ms=10)])
    assert r[0][1] != 0 and r[1][1] == 0 and fast.slow_ops == [Op.QUEUE_DEQUEUE]


def test_lapsed_leases_redeliver_and_go_to_the_dlq_like_the_handler(twins) -> None:
    fast, slow = twins()
    for t in (fast, slow):
        t.srv.queues.max_deliveries = 2
    _fill(fast, slow, n=2)
    fast.slow_ops.clear()
    r1 = _same(fast, slow, [dequeue(b"q", 2, lease_ms=100)])
    r2 = _same(fast, slow, [dequeue(b"q", 2, lease_ms=100)], NOW + 100)   # both leases lapsed at +100
    assert [m[3] for m in _messages(r2[0][2])] == [2, 2]
    r3 = _same(fast, slow, [nack(b"q", [1]), dequeue(b"q", 2)], NOW + 150)  # the second delivery nacked: DLQ
    assert _count(r3[0][2]) == 1 and _messages(r3[1][2]) == []
    _same(fast, slow, [dequeue(b"q", 2)], NOW + 250)                   # seq 2 lapsed after 2 deliveries: DLQ
    q = fast.srv.queues.get("default", "q")
    assert (q.n_ready, q.n_leased, q.total_dead, q.total_expired) == (0, 0, 2, 3)
    assert fast.slow_ops == [Op.QUEUE_DEQUEUE, Op.QUEUE_DEQUEUE]  # the two that found nothing ready


def test_clock_never_goes_back_like_the_handler(twins) -> None:
    fast, slow = twins()
    _fill(fast, slow, n=3)
    _same(fast, slow, [dequeue(b"q")], NOW + 500)
    _same(fast, slow, [dequeue(b"q"), ack(b"q", [1]), nack(b"q", [2])], NOW)  # wall clock stepped back
    kinds = [unpack_record(p) for _, _, p in fast.records()[-3:]]
    assert [args[0] for _, args in kinds] == [NOW + 500] * 3


def test_a_line_of_parked_dequeues_keeps_its_order(twins) -> None:
    """Dequeues and nacks of a queue with a line go to Python (the line is served first, a nack
    wakes its oldest); acks stay in C (they wake nobody). Other queues' lines do not matter."""
    from flo_server.handlers import queue as qh

    fast, slow = twins(someone_waits=True)
    _fill(fast, slow, n=4)
    _fill(fast, slow, b"other", n=2)
    _same(fast, slow, [dequeue(b"q", 2)])
    for t in (fast, slow):
        line = qh._line(t.srv, "default", "q")
        line[21] = False
    fast.slow_ops.clear()
    _same(fast, slow, [dequeue(b"q", 1), nack(b"q", [1]), ack(b"q", [2]), dequeue(b"other"), nack(b"other", [1])])
    assert fast.slow_ops == [Op.QUEUE_DEQUEUE, Op.QUEUE_FAIL]
    assert fast.srv.waiters.notified == slow.srv.waiters.notified == [("q", "default", "q", 21)]
    assert fast.srv.queues.get("default", "q").clock == NOW  # the wake-up timer read the scenario's clock
    for t in (fast, slow):
        t.srv.queues.lines.pop(("q", "default", "q"))
    fast.slow_ops.clear()
    _same(fast, slow, [dequeue(b"q", 1, block_ms=1000)])
    assert fast.slow_ops == []


def test_memory_journal_matches(twins) -> None:
    fast, slow = twins()
    disk = [fast.srv.journal, slow.srv.journal]
    for t in (fast, slow):
        t.srv.journal = MemoryJournal()
    frames = [enqueue(b"q", b"a"), enqueue(b"q", b"b"), dequeue(b"q", 2), ack(b"q", [1]), nack(b"q", [2])]
    a, b = fast.run(frames), slow.run(frames)
    assert a == b and fast.state() == slow.state()
    assert fast.srv.journal.last_lsn == slow.srv.journal.last_lsn == 5
    assert fast.slow_ops == [Op.QUEUE_ENQUEUE]
    fast.srv.journal, slow.srv.journal = disk  # the fixture closes their writers


def test_records_replay_to_the_same_queues(twins) -> None:
    fast, _ = twins()
    fast.run([enqueue(b"q", b"x%d" % i) for i in range(5)])
    fast.run([dequeue(b"q", 3, lease_ms=100), ack(b"q", [1]), nack(b"q", [2])], NOW + 10)
    fast.run([dequeue(b"q", 3)], NOW + 200)  # seq 3's lease lapsed: redelivered
    assert fast.slow_ops == [Op.QUEUE_ENQUEUE]
    assert fast.replayed().queues.dump() == fast.srv.queues.dump()


def test_disk_journal_that_stopped_falls_back(twins) -> None:
    fast, slow = twins()
    _fill(fast, slow, n=2)
    fast.srv.journal.healthy = slow.srv.journal.healthy = False
    fast.slow_ops.clear()
    replies = _same(fast, slow, [dequeue(b"q"), ack(b"q", [1]), nack(b"q", [1])])
    assert fast.slow_ops == [Op.QUEUE_DEQUEUE, Op.QUEUE_COMPLETE, Op.QUEUE_FAIL]
    assert all(status != 0 for _, status, _ in replies)


def test_core_bounds_are_the_handlers_bounds() -> None:
    from flo_core import pqueue
    from flo_core.spec import MAX_BLOCK_MS
    from flo_server.handlers import queue as qh

    # the enum values in flo_core/core.pyx, restated
    assert (qh.MAX_DEQUEUE_COUNT, qh.MAX_LEASE_MS, qh.MAX_SEQS, MAX_BLOCK_MS) == (1000, 12 * 3600 * 1000, 100_000,
                                                                                300_000)
    assert (pqueue.DEFAULT_LEASE_MS, qh.ANSWER_BUDGET) == (30_000, 64 * 1024 * 1024)
    assert (Tag.COUNT, Tag.BLOCK_MS, Tag.LEASE_MS, Op.QUEUE_DEQUEUE, Op.QUEUE_COMPLETE, Op.QUEUE_FAIL) == (
        0x15, 0x17, 0x43, 0x171, 0x172, 0x174)

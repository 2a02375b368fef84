"""The C QUEUE_DEQUEUE / QUEUE_COMPLETE / QUEUE_FAIL (flo_core/core.pyx) through a real server.

The byte-for-byte comparison with the Python handlers is in tests/unit/test_queue_fastpath.py; here
the same queue workload runs on a server with the fast paths and on one without (FLO_NO_FASTPATH):
the answers must agree. The fast server is then killed (-9, fsync=always, so recovery replays the
records the C encoders wrote), restarted with and without the fast paths, and must come back with the
same counters, ready messages and DLQ. Parked dequeues must still be woken by an enqueue, a nack and
a lapsed lease, a message goes to the DLQ after max deliveries, and a malformed request is still
refused (by Python) without breaking the connection.
"""

from __future__ import annotations

import asyncio
import os
import struct
from contextlib import contextmanager
from typing import Any, Iterator

import pytest

from flo_client.client import FloClient
from flo_client.queue import DequeueOptions, EnqueueOptions, NackOptions, QueueOptions
from flo_core import wire
from flo_core.body import Writer
from flo_core.spec import Op, Tag
from tests.helpers import parked, wait_for

pytestmark = pytest.mark.integration


@contextmanager
def _no_fastpath() -> Iterator[None]:
    os.environ["FLO_NO_FASTPATH"] = "1"
    try:
        yield
    finally:
        os.environ.pop("FLO_NO_FASTPATH", None)


def _msgs(result: Any) -> list[tuple]:
    # enqueued_at_ms differs between two servers: everything else must match
    return [(m.seq, m.payload, m.delivery_count, m.priority) for m in result.messages]


async def _workload(endpoint: str) -> list:
    """Enqueues, dequeues (batches, lease lengths, BLOCK_MS with messages ready), acks and nacks; the answers."""
    out: list = []
    async with FloClient(endpoint) as c:
        for i in range(40):
            out.append(await c.queue.enqueue("jobs", b"j%d" % i, EnqueueOptions(priority=i % 4)))
        out.append(await c.queue.enqueue("t", b"t", EnqueueOptions(namespace="tenant")))
        taken: list[int] = []
        for count, lease in ((1, None), (5, 60_000), (3, 120_000), (10, None)):
            r = await c.queue.dequeue("jobs", count, DequeueOptions(lease_ms=lease))
            out.append(_msgs(r))
            taken += [m.seq for m in r.messages]
        out.append(_msgs(await c.queue.dequeue("jobs", 2, DequeueOptions(block_ms=2000))))
        out.append(_msgs(await c.queue.dequeue("t", 1, DequeueOptions(namespace="tenant"))))
        out.append(await c.queue.ack("jobs", taken[:8] + [9999]))
        out.append(await c.queue.nack("jobs", taken[8:12]))
        out.append(await c.queue.nack("jobs", taken[12:14], NackOptions(to_dlq=True)))  # Python: an option
        out.append(_msgs(await c.queue.dequeue("jobs", 6)))
        out.append(await c.queue.ack("jobs", taken[8:10]))
        st = await c.queue.stats("jobs")
        out.append((st.ready, st.leased, st.dlq, st.last_seq, st.total_delivered, st.total_acked, st.total_dead))
    return out


async def _picture(endpoint: str) -> tuple:
    async with FloClient(endpoint) as c:
        st = await c.queue.stats("jobs")
        peek = await c.queue.peek("jobs", 100)
        dlq = await c.queue.dlq_list("jobs")
        tenant = await c.queue.stats("t", QueueOptions(namespace="tenant"))
        return st, [(m.seq, m.payload, m.delivery_count, m.priority, m.enqueued_at_ms) for m in peek.messages], \
            [m.seq for m in dlq.messages], tenant


async def test_fast_and_python_paths_agree_and_replay_after_kill(make_server) -> None:
    fast = make_server(fsync="always")
    with _no_fastpath():
        slow = make_server(fsync="always")
    answers = await _workload(fast.endpoint)
    assert answers == await _workload(slow.endpoint)
    assert answers[46] == [(1, b"t", 1, 0)]
    # (ready, leased, dlq, last_seq, total_delivered, total_acked, total_dead): something of each state is left
    assert answers[-1] == (17, 11, 2, 40, 27, 10, 2)

    before = await _picture(fast.endpoint)
    fast.restart(kill=True)  # no clean snapshot: recovery replays the C-written records
    assert await _picture(fast.endpoint) == before
    with _no_fastpath():
        fast.restart(kill=True)
    assert await _picture(fast.endpoint) == before
    async with FloClient(fast.endpoint) as c:  # the Python path carries on from the recovered queue
        r = await c.queue.dequeue("jobs", 1)
        assert r.messages and r.messages[0].seq == before[1][0][0]


async def test_parked_dequeues_are_woken_and_dlq_after_max_deliveries(make_server) -> None:
    sp = make_server("--queue-max-deliveries", "3")
    async with FloClient(sp.endpoint) as waiter, FloClient(sp.endpoint) as worker:
        await worker.queue.enqueue("w", b"seed")
        assert _msgs(await worker.queue.dequeue("w", 1)) == [(1, b"seed", 1, 0)]
        await worker.queue.ack("w", [1])

        async def park() -> Any:
            task = asyncio.ensure_future(waiter.queue.dequeue("w", 1, DequeueOptions(block_ms=20_000, lease_ms=200)))
            await parked(worker, 1)
            return task

        task = await park()
        await worker.queue.enqueue("w", b"m")                    # an enqueue wakes the line
        assert _msgs(await task) == [(2, b"m", 1, 0)]
        await worker.queue.nack("w", [2])                        # ready again; nobody parked: C
        assert _msgs(await worker.queue.dequeue("w", 1, DequeueOptions(lease_ms=60_000))) == [(2, b"m", 2, 0)]
        task = await park()
        assert await worker.queue.nack("w", [2]) == 1             # a nack wakes the parked dequeue
        got = await task
        assert _msgs(got) == [(2, b"m", 3, 0)]

        async def dead() -> bool:  # the 200 ms lease of the 3rd delivery lapses: max deliveries, so DLQ
            return (await worker.queue.stats("w")).dlq == 1

        await wait_for(dead, 10)
        st = await worker.queue.stats("w")
        assert (st.ready, st.leased, st.dlq, st.total_expired, st.total_dead) == (0, 0, 1, 1, 1)
        assert [m.seq for m in (await worker.queue.dlq_list("w")).messages] == [2]

        # a lapsed lease with deliveries left wakes a parked dequeue
        await worker.queue.enqueue("w", b"n")
        assert [m.seq for m in (await worker.queue.dequeue("w", 1, DequeueOptions(lease_ms=200))).messages] == [3]
        task = await park()
        assert _msgs(await task) == [(3, b"n", 2, 0)]
        assert await worker.queue.ack("w", [3]) == 1


async def test_malformed_dequeue_and_ack_are_refused(make_server) -> None:
    sp = make_server()
    async with FloClient(sp.endpoint) as c:
        await c.queue.enqueue("q", b"x")
    host, port = sp.endpoint.split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        head = Writer().u16(0).u16(1).raw(b"q")
        bad_width = head.bytes32(b"").raw(b"\x05\x00" + bytes([Tag.COUNT, 3]) + b"\x01\x00\x00").getvalue()
        head = Writer().u16(0).u16(1).raw(b"q")
        short = head.bytes32(struct.pack("<IQ", 2, 1)).options({}).getvalue()
        head = Writer().u16(0).u16(1).raw(b"q")
        good = head.bytes32(b"").options({Tag.COUNT: struct.pack("<I", 1)}).getvalue()
        writer.write(wire.encode_request(1, Op.QUEUE_DEQUEUE, bad_width) + wire.encode_request(2, Op.QUEUE_COMPLETE, short)
                     + wire.encode_request(3, Op.QUEUE_DEQUEUE, good))
        frames = wire.FrameReader(is_request=False)
        replies: list = []
        while len(replies) < 3:
            data = await asyncio.wait_for(reader.read(65536), 10)
            assert data, "the server closed the connection"
            replies += list(frames.feed(data))
        assert [(rid, status != 0) for rid, status, _ in replies] == [(1, True), (2, True), (3, False)]
        assert struct.unpack_from("<IQ", bytes(replies[2][2]))[0:2] == (1, 1)
    finally:
        writer.close()

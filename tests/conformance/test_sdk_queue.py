"""flo-python 0.1.2 (unmodified) against flo-server: every queue op the SDK has.

The SDK's bytes are the same for at-most-once and leased queues
(flo-wire-v2 §3.3); this server leases (§7.1), so these tests also check
the lease behaviour the SDK can observe: ack removes, nack redelivers with a
higher delivery_count, 5 deliveries then DLQ, a lapsed lease redelivers.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from flo import FloClient
from flo.types import DequeueOptions, DlqListOptions, EnqueueOptions, NackOptions, PeekOptions

from flo_client import FloClient as OurClient
from flo_client.queue import DequeueOptions as OurDequeueOptions
from flo_client.queue import EnqueueOptions as OurEnqueueOptions
from flo_client.queue import QueueOptions as OurQueueOptions
from tests.helpers import wait_for, waiters

NS = "conf"

pytestmark = [
    pytest.mark.conformance,
    pytest.mark.timeout(60),
    pytest.mark.client(sdk=True, namespace=NS, timeout_ms=3000),
]


async def sdk(endpoint: str) -> FloClient:
    c = FloClient(endpoint, namespace=NS, timeout_ms=3000)
    await c.connect()
    return c


async def test_seed_queue_section_with_the_sdk(client):
    payload = b'{"task": "process"}'
    seq = await client.queue.enqueue("tasks", payload, EnqueueOptions(priority=10))
    assert seq >= 1
    result = await client.queue.dequeue("tasks", 10, DequeueOptions(block_ms=30000))
    assert [(m.seq, m.payload, m.priority, m.delivery_count) for m in result.messages] == [(seq, payload, 10, 1)]
    assert result.messages[0].enqueued_at_ms > 1_600_000_000_000
    for msg in result.messages:
        await client.queue.ack("tasks", [msg.seq])
    assert (await client.queue.peek("tasks", 5)).messages == []
    assert (await client.queue.dequeue("tasks", 10)).messages == []


async def test_priority_lower_first_fifo_within(client):
    s = [await client.queue.enqueue("prio", b"%d" % p, EnqueueOptions(priority=p)) for p in (7, 0, 7, 255, 0)]
    assert s == sorted(s)
    peeked = (await client.queue.peek("prio", 10)).messages
    assert [m.seq for m in peeked] == [s[1], s[4], s[0], s[2], s[3]]
    assert all(m.delivery_count == 0 for m in peeked)
    got = (await client.queue.dequeue("prio", 3)).messages
    assert [m.seq for m in got] == [s[1], s[4], s[0]]
    got = (await client.queue.dequeue("prio", 10)).messages
    assert [m.seq for m in got] == [s[2], s[3]]


async def test_empty_answers_parse(client):
    assert (await client.queue.dequeue("none", 5)).messages == []
    assert (await client.queue.peek("none", 5, PeekOptions())).messages == []
    assert (await client.queue.dlq_list("none", DlqListOptions())).messages == []
    await client.queue.ack("none", [1, 2])
    await client.queue.nack("none", [1])
    await client.queue.dlq_requeue("none", [1])
    await client.queue.ack("none", [])  # sends nothing


async def test_nack_redelivers_then_dlq_and_requeue(client):
    seq = await client.queue.enqueue("poison", b"bad")
    for attempt in range(1, 6):
        [m] = (await client.queue.dequeue("poison", 1)).messages
        assert (m.seq, m.delivery_count) == (seq, attempt)
        await client.queue.nack("poison", [m.seq], NackOptions())
    assert (await client.queue.dequeue("poison", 1)).messages == []
    result = await client.queue.dlq_list("poison")
    assert [(m.seq, m.payload, m.delivery_count) for m in result.messages] == [(seq, b"bad", 5)]
    await client.queue.dlq_requeue("poison", [m.seq for m in result.messages])
    assert (await client.queue.dlq_list("poison")).messages == []
    [m] = (await client.queue.dequeue("poison", 1)).messages
    assert (m.seq, m.delivery_count) == (seq, 1)
    await client.queue.ack("poison", [seq])


async def test_leased_message_is_not_handed_out_again_until_acked(server, client):
    seq = await client.queue.enqueue("leased", b"x")
    assert [m.seq for m in (await client.queue.dequeue("leased", 1)).messages] == [seq]
    other = await sdk(server)
    try:
        assert (await other.queue.dequeue("leased", 1)).messages == []
        assert (await other.queue.peek("leased", 1)).messages == []
        await client.queue.ack("leased", [seq])
        await client.queue.nack("leased", [seq])  # too late: nothing comes back
        assert (await other.queue.dequeue("leased", 1)).messages == []
    finally:
        await other.close()


async def test_long_poll_woken_by_an_enqueue(server, client):
    producer = await sdk(server)
    try:
        task = asyncio.create_task(client.queue.dequeue("lp", 5, DequeueOptions(block_ms=10000)))
        await wait_for(lambda: waiters(server))
        t0 = time.monotonic()
        seq = await producer.queue.enqueue("lp", b"wake")
        result = await asyncio.wait_for(task, 5)
        assert [m.seq for m in result.messages] == [seq]
        assert time.monotonic() - t0 < 2
    finally:
        await producer.close()


async def test_long_poll_times_out_empty(client):
    t0 = time.monotonic()
    result = await client.queue.dequeue("lp-empty", 5, DequeueOptions(block_ms=300))
    assert result.messages == []
    assert 0.25 < time.monotonic() - t0 < 2.5
    # block_ms=0 does not wait
    t0 = time.monotonic()
    assert (await client.queue.dequeue("lp-empty", 5, DequeueOptions(block_ms=0))).messages == []
    assert time.monotonic() - t0 < 1


async def test_sdk_that_gives_up_a_long_poll_gets_nothing(server, client):
    # A cancelled SDK call closes its socket; the server must not lease to that waiter.
    task = asyncio.create_task(client.queue.dequeue("gaveup", 1, DequeueOptions(block_ms=10000)))
    await wait_for(lambda: waiters(server))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await wait_for(lambda: _zero(waiters(server)))
    other = await sdk(server)
    try:
        seq = await other.queue.enqueue("gaveup", b"x")
        [m] = (await other.queue.dequeue("gaveup", 1)).messages
        assert (m.seq, m.delivery_count) == (seq, 1)
    finally:
        await other.close()


async def _zero(coro) -> bool:
    return await coro == 0


async def test_lapsed_lease_redelivers(make_server):
    sp = make_server("--queue-lease-ms", "300")
    a, b = await sdk(sp.endpoint), await sdk(sp.endpoint)
    try:
        seq = await a.queue.enqueue("lapse", b"job")
        [m] = (await a.queue.dequeue("lapse", 1)).messages
        assert m.delivery_count == 1
        t0 = time.monotonic()
        # the SDK has no lease option: the server default (300 ms here) applies
        [m2] = (await b.queue.dequeue("lapse", 1, DequeueOptions(block_ms=5000))).messages
        assert (m2.seq, m2.delivery_count) == (seq, 2)
        assert 0.1 < time.monotonic() - t0 < 3
        await b.queue.ack("lapse", [seq])
        assert (await a.queue.dequeue("lapse", 1, DequeueOptions(block_ms=500))).messages == []
    finally:
        await a.close()
        await b.close()


async def test_interop_with_flo_client_extensions(server, client):
    """SDK and flo_client share one queue: delays and touch from ours, acks from the SDK."""
    async with OurClient(server, namespace=NS) as ours:
        delayed = await ours.queue.enqueue("mix", b"later", OurEnqueueOptions(delay_ms=300))
        now = await client.queue.enqueue("mix", b"now", EnqueueOptions(priority=3))
        assert [m.seq for m in (await client.queue.peek("mix", 5)).messages] == [now]
        [m] = (await ours.queue.dequeue("mix", 5, OurDequeueOptions(lease_ms=60_000))).messages
        assert m.seq == now and await ours.queue.touch("mix", [now]) == [now]
        await client.queue.ack("mix", [now])
        result = await client.queue.dequeue("mix", 5, DequeueOptions(block_ms=5000))
        assert [m.seq for m in result.messages] == [delayed]
        await client.queue.ack("mix", [delayed])
        st = await ours.queue.stats("mix", OurQueueOptions())
        assert (st.ready, st.leased, st.delayed, st.total_acked) == (0, 0, 0, 2)

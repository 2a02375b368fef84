"""Leased priority queues through flo_client against a real flo-server."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import sys
import textwrap

import pytest

from flo_client import FloClient
from flo_client.queue import (
    DequeueOptions,
    DlqListOptions,
    EnqueueOptions,
    NackOptions,
    QueueListOptions,
    QueueOptions,
    TouchOptions,
)
from flo_core.errors import BadRequestError, NotFoundError
from flo_core.spec import Op, Reason, Tag
from tests.helpers import parked, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60), pytest.mark.client(timeout_ms=5000)]


# --- the seed page, as written ------------------------------------------------------------


async def test_seed_page_queue_section(client: FloClient) -> None:
    payload = b'{"task": "process"}'
    later = await client.queue.enqueue("tasks", payload, EnqueueOptions(priority=10, delay_ms=60000))
    now = await client.queue.enqueue("tasks", b'{"task": "now"}')
    assert later < now

    result = await client.queue.dequeue("tasks", 10, DequeueOptions(block_ms=30000))
    assert [m.seq for m in result.messages] == [now]  # the delayed one is invisible
    processed = []
    for msg in result.messages:
        try:
            if msg.payload == b'{"task": "now"}':
                raise RuntimeError("fails")
            processed.append(msg.seq)
            await client.queue.ack("tasks", [msg.seq])
        except Exception:
            await client.queue.nack("tasks", [msg.seq], NackOptions(to_dlq=True))

    result = await client.queue.dlq_list("tasks")
    assert [m.seq for m in result.messages] == [now]
    await client.queue.dlq_requeue("tasks", [msg.seq for msg in result.messages])
    assert (await client.queue.dlq_list("tasks")).messages == []

    result = await client.queue.peek("tasks", 5)
    assert [(m.seq, m.delivery_count) for m in result.messages] == [(now, 0)]
    [msg] = (await client.queue.dequeue("tasks", 1)).messages
    assert await client.queue.touch("tasks", [msg.seq]) == [msg.seq]
    assert await client.queue.ack("tasks", [msg.seq]) == 1
    st = await client.queue.stats("tasks")
    assert (st.ready, st.leased, st.delayed, st.dlq) == (0, 0, 1, 0)


# --- ordering, delay, leases ------------------------------------------------------------------


async def test_priority_then_fifo(client: FloClient) -> None:
    seqs = {}
    for name, prio in [("a5", 5), ("b0", 0), ("c5", 5), ("d255", 255), ("e0", 0)]:
        seqs[name] = await client.queue.enqueue("ord", name.encode(), EnqueueOptions(priority=prio))
    assert list(seqs.values()) == sorted(seqs.values())
    got = (await client.queue.dequeue("ord", 10)).messages
    assert [m.payload for m in got] == [b"b0", b"e0", b"a5", b"c5", b"d255"]
    assert [m.priority for m in got] == [0, 0, 5, 5, 255]
    assert all(m.delivery_count == 1 and m.enqueued_at_ms > 0 for m in got)


async def test_delay_wakes_a_blocked_dequeue_when_due(client: FloClient) -> None:
    seq = await client.queue.enqueue("delay", b"x", EnqueueOptions(delay_ms=300))
    assert (await client.queue.dequeue("delay", 1)).messages == []
    assert (await client.queue.stats("delay")).delayed == 1
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    got = (await client.queue.dequeue("delay", 1, DequeueOptions(block_ms=5000))).messages
    waited = loop.time() - t0
    assert [m.seq for m in got] == [seq]
    assert 0.15 < waited < 3.0  # woke by the due time, not by the 5 s timeout


async def test_lapsed_lease_goes_to_the_next_consumer(server: str, client: FloClient) -> None:
    seq = await client.queue.enqueue("lease", b"job")
    [m] = (await client.queue.dequeue("lease", 1, DequeueOptions(lease_ms=400))).messages
    assert (m.seq, m.delivery_count) == (seq, 1)
    async with FloClient(server) as other:
        # while leased, nobody else gets it
        assert (await other.queue.dequeue("lease", 1)).messages == []
        assert (await other.queue.peek("lease", 1)).messages == []
        [again] = (await other.queue.dequeue("lease", 1, DequeueOptions(block_ms=5000))).messages
    assert (again.seq, again.delivery_count) == (seq, 2)
    st = await client.queue.stats("lease")
    assert (st.leased, st.total_expired) == (1, 1)


async def test_touch_keeps_the_lease(client: FloClient) -> None:
    seq = await client.queue.enqueue("touch", b"job")
    await client.queue.dequeue("touch", 1, DequeueOptions(lease_ms=300))
    for _ in range(4):  # hold it well past its first deadline
        assert await client.queue.touch("touch", [seq, 12345], TouchOptions(lease_ms=300)) == [seq]
        assert (await client.queue.dequeue("touch", 1)).messages == []
        await asyncio.sleep(0.1)  # simulated work between heartbeats
    assert await client.queue.ack("touch", [seq]) == 1
    assert await client.queue.touch("touch", [seq]) == []


async def test_nack_redelivers_then_dlq_after_max_deliveries(client: FloClient) -> None:
    seq = await client.queue.enqueue("retry", b"poison")
    for attempt in range(1, 6):
        [m] = (await client.queue.dequeue("retry", 1)).messages
        assert (m.seq, m.delivery_count) == (seq, attempt)
        assert await client.queue.nack("retry", [seq]) == 1
    assert (await client.queue.dequeue("retry", 1)).messages == []
    [d] = (await client.queue.dlq_list("retry")).messages
    assert (d.seq, d.delivery_count, d.payload) == (seq, 5, b"poison")
    assert await client.queue.dlq_requeue("retry", [seq]) == 1
    [m] = (await client.queue.dequeue("retry", 1)).messages
    assert (m.seq, m.delivery_count) == (seq, 1)


async def test_nack_with_delay(client: FloClient) -> None:
    seq = await client.queue.enqueue("nackdelay", b"x")
    await client.queue.dequeue("nackdelay", 1)
    await client.queue.nack("nackdelay", [seq], NackOptions(delay_ms=250))
    assert (await client.queue.dequeue("nackdelay", 1)).messages == []
    assert (await client.queue.stats("nackdelay")).delayed == 1
    [m] = (await client.queue.dequeue("nackdelay", 1, DequeueOptions(block_ms=5000))).messages
    assert (m.seq, m.delivery_count) == (seq, 2)


# --- dedup ----------------------------------------------------------------------------------


async def test_dedup_key_inside_window(client: FloClient) -> None:
    a = await client.queue.enqueue("dd", b"first", EnqueueOptions(dedup_key="order-1"))
    b = await client.queue.enqueue("dd", b"second", EnqueueOptions(dedup_key="order-1"))
    c = await client.queue.enqueue("dd", b"third", EnqueueOptions(dedup_key="order-2"))
    assert a == b != c
    st = await client.queue.stats("dd")
    assert (st.ready, st.total_enqueued) == (2, 2)
    assert [m.payload for m in (await client.queue.peek("dd", 10)).messages] == [b"first", b"third"]


async def test_dedup_window_is_settable(client: FloClient) -> None:
    opts = EnqueueOptions(dedup_key="k", dedup_window_ms=200)
    first = await client.queue.enqueue("ddw", b"1", opts)
    assert await client.queue.enqueue("ddw", b"2", opts) == first

    async def new_seq() -> int:
        seq = await client.queue.enqueue("ddw", b"3", opts)
        return seq if seq != first else 0

    assert await wait_for(new_seq, timeout=5.0, interval=0.05) > first


# --- long poll ------------------------------------------------------------------------------


async def test_block_times_out_with_empty_answer(client: FloClient) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    assert (await client.queue.dequeue("empty", 5, DequeueOptions(block_ms=300))).messages == []
    assert 0.25 < loop.time() - t0 < 3.0


async def test_waiters_served_in_arrival_order(server: str, client: FloClient) -> None:
    consumers = [FloClient(server) for _ in range(3)]
    try:
        for c in consumers:
            await c.connect()
        tasks = []
        for i, c in enumerate(consumers):
            tasks.append(asyncio.create_task(c.queue.dequeue("line", 1, DequeueOptions(block_ms=10000))))
            await parked(client, i + 1)
        seqs = [await client.queue.enqueue("line", b"%d" % i) for i in range(3)]
        results = await asyncio.wait_for(asyncio.gather(*tasks), 10)
        assert [[m.seq for m in r.messages] for r in results] == [[s] for s in seqs]
    finally:
        for c in consumers:
            await c.close()


async def test_a_waiter_that_woke_for_nothing_keeps_its_place(server: str, client: FloClient) -> None:
    # W1 wants many, W2 and W3 one each. A burst of two enqueues may wake W1 and
    # W2 before W1 runs; W1 then takes both, and W2 must stay ahead of W3.
    consumers = [FloClient(server) for _ in range(3)]
    try:
        tasks = []
        for i, (c, n) in enumerate(zip(consumers, (5, 1, 1))):
            await c.connect()
            tasks.append(asyncio.create_task(c.queue.dequeue("keep", n, DequeueOptions(block_ms=10000))))
            await parked(client, i + 1)
        await asyncio.gather(client.queue.enqueue("keep", b"a"), client.queue.enqueue("keep", b"b"))
        await asyncio.wait_for(tasks[0], 5)
        while not all(t.done() for t in tasks):  # one more message per step
            served = sum(t.done() for t in tasks)
            await client.queue.enqueue("keep", b"more")
            await wait_for(lambda: _more_done(tasks, served))
        w1, w2, w3 = [[m.seq for m in t.result().messages] for t in tasks]
        assert 1 in w1 and w2 and w3
        assert max(w2) < min(w3), (w1, w2, w3)
        assert len(set(w1 + w2 + w3)) == len(w1 + w2 + w3)
    finally:
        for c in consumers:
            await c.close()


async def _more_done(tasks, served: int) -> bool:
    return sum(t.done() for t in tasks) > served


async def test_one_enqueue_wakes_one_waiter_and_a_batch_serves_several(server: str, client: FloClient) -> None:
    consumers = [FloClient(server) for _ in range(3)]
    try:
        tasks = []
        for i, c in enumerate(consumers):
            await c.connect()
            tasks.append(asyncio.create_task(c.queue.dequeue("batch", 2, DequeueOptions(block_ms=10000))))
            await parked(client, i + 1)
        for i in range(5):
            await client.queue.enqueue("batch", b"%d" % i)
        results = await asyncio.wait_for(asyncio.gather(*tasks), 10)
        got = [m.seq for r in results for m in r.messages]
        assert all(1 <= len(r.messages) <= 2 for r in results)  # every waiter served
        assert len(set(got)) == len(got)  # nothing handed out twice
        st = await client.queue.stats("batch")
        assert (st.leased, st.ready) == (len(got), 5 - len(got))  # nothing lost
    finally:
        for c in consumers:
            await c.close()


async def test_closed_waiter_is_never_handed_a_message(server: str, client: FloClient) -> None:
    gone = FloClient(server)
    await gone.connect()
    task = asyncio.create_task(gone.queue.dequeue("closed", 1, DequeueOptions(block_ms=10000)))
    await parked(client, 1)
    await gone.close()
    with pytest.raises(Exception):
        await asyncio.wait_for(task, 5)
    await parked(client, 0)
    seq = await client.queue.enqueue("closed", b"x")
    st = await client.queue.stats("closed")
    assert (st.ready, st.leased) == (1, 0)
    [m] = (await client.queue.dequeue("closed", 1)).messages
    assert (m.seq, m.delivery_count) == (seq, 1)


async def test_closed_waiter_passes_the_wakeup_on(server: str, client: FloClient) -> None:
    # The first waiter's client goes away; the message must reach the second waiter. Either the
    # server saw the close first (the wake-up goes straight on, delivery 1), or the enqueue raced
    # it and the closing waiter took the message: its short lease lapses and it is redelivered.
    first, second = FloClient(server), FloClient(server)
    try:
        await first.connect()
        await second.connect()
        t1 = asyncio.create_task(first.queue.dequeue("pass", 1, DequeueOptions(block_ms=10000, lease_ms=300)))
        await parked(client, 1)
        t2 = asyncio.create_task(second.queue.dequeue("pass", 1, DequeueOptions(block_ms=10000)))
        await parked(client, 2)
        await first.close()
        seq = await client.queue.enqueue("pass", b"x")
        [m] = (await asyncio.wait_for(t2, 5)).messages
        assert m.seq == seq and m.delivery_count in (1, 2)
        with pytest.raises(Exception):
            await asyncio.wait_for(t1, 5)
    finally:
        await first.close()
        await second.close()


# --- DLQ, purge, stats, list --------------------------------------------------------------------


async def test_dlq_limit_delete_purge_and_queue_purge(client: FloClient) -> None:
    seqs = [await client.queue.enqueue("dlq", b"%d" % i) for i in range(5)]
    await client.queue.dequeue("dlq", 5)
    assert await client.queue.nack("dlq", seqs, NackOptions(to_dlq=True)) == 5
    assert [m.seq for m in (await client.queue.dlq_list("dlq", DlqListOptions(limit=2))).messages] == seqs[:2]
    assert await client.queue.dlq_delete("dlq", [seqs[0], 999]) == 1
    assert len((await client.queue.dlq_list("dlq")).messages) == 4
    assert await client.queue.dlq_purge("dlq") == 4
    assert (await client.queue.stats("dlq")).dlq == 0

    await client.queue.enqueue("dlq", b"r")
    await client.queue.enqueue("dlq", b"d", EnqueueOptions(delay_ms=60_000))
    assert await client.queue.purge("dlq") == 2
    st = await client.queue.stats("dlq")
    assert (st.ready, st.delayed, st.leased, st.last_seq) == (0, 0, 0, 7)


async def test_unknown_queue_reads_are_empty(client: FloClient) -> None:
    assert (await client.queue.dequeue("nope", 3)).messages == []
    assert (await client.queue.peek("nope", 3)).messages == []
    assert (await client.queue.dlq_list("nope")).messages == []
    assert await client.queue.ack("nope", [1]) == 0
    assert await client.queue.nack("nope", [1]) == 0
    assert await client.queue.touch("nope", [1]) == []
    assert (await client.queue.stats("nope")).last_seq == 0
    assert "nope" not in (await client.queue.list()).names


async def test_list_pages_and_namespaces(client: FloClient) -> None:
    for name in ["jobs-a", "jobs-b", "jobs-c", "other"]:
        await client.queue.enqueue(name, b"x")
    await client.queue.enqueue("elsewhere", b"x", EnqueueOptions(namespace="ns2"))
    page = await client.queue.list(QueueListOptions(prefix="jobs-", limit=2))
    assert page.names == ["jobs-a", "jobs-b"] and page.has_more
    page = await client.queue.list(QueueListOptions(prefix="jobs-", limit=2, cursor=page.cursor))
    assert page.names == ["jobs-c"] and not page.has_more
    assert (await client.queue.list(QueueListOptions(namespace="ns2"))).names == ["elsewhere"]
    assert (await client.queue.stats("elsewhere", QueueOptions(namespace="ns2"))).ready == 1
    assert (await client.queue.stats("elsewhere")).ready == 0


async def test_large_payload_roundtrip(client: FloClient) -> None:
    big = os.urandom(4 * 1024 * 1024)
    seq = await client.queue.enqueue("big", big)
    [m] = (await client.queue.dequeue("big", 1)).messages
    assert (m.seq, m.payload) == (seq, big)


# --- bad input: clear refusals, connection stays --------------------------------------------------


async def test_bad_input_is_refused(client: FloClient) -> None:
    async def refused(op: int, value: bytes, opts: dict, key: str = "bad") -> BaseException:
        with pytest.raises(BadRequestError) as ei:
            await client._call_vo(op, key, value, opts)
        return ei.value

    e = await refused(Op.QUEUE_ENQUEUE, b"x", {Tag.PRIORITY: (300).to_bytes(2, "little")})
    assert e.reason == Reason.OUT_OF_RANGE
    e = await refused(Op.QUEUE_DEQUEUE, b"", {Tag.COUNT: b"\x01\0\0\0", Tag.BLOCK_MS: (400_000).to_bytes(4, "little")})
    assert e.reason == Reason.OUT_OF_RANGE
    e = await refused(Op.QUEUE_DEQUEUE, b"", {Tag.LEASE_MS: b"\0\0\0\0"})
    assert e.reason == Reason.OUT_OF_RANGE
    e = await refused(Op.QUEUE_ENQUEUE, b"x", {Tag.PRIORITY: b"\x01\x02\x03"})  # odd width
    assert e.reason == Reason.MALFORMED
    e = await refused(Op.QUEUE_ENQUEUE, b"x", {}, key="")
    assert e.reason == Reason.MALFORMED
    seqs = (5).to_bytes(4, "little") + (1).to_bytes(8, "little")  # says 5, carries 1
    e = await refused(Op.QUEUE_COMPLETE, seqs, {})
    assert e.reason == Reason.MALFORMED
    e = await refused(Op.QUEUE_ENQUEUE, b"x", {Tag.DEDUP_KEY: b"\xff\xfe"})
    assert e.reason == Reason.MALFORMED
    with pytest.raises(BadRequestError):
        await client.queue.enqueue("bad", b"x", EnqueueOptions(priority=256))
    # the connection is still fine
    assert await client.queue.enqueue("bad", b"ok") == 1


async def test_not_found_is_never_used_for_queues(client: FloClient) -> None:
    try:
        await client.queue.dlq_requeue("ghost", [1])
        await client.queue.dlq_delete("ghost", [1])
        await client.queue.purge("ghost")
    except NotFoundError:  # pragma: no cover - the assertion below explains
        pytest.fail("queues are implicit: unknown ones are empty, not NOT_FOUND")


# --- durability -------------------------------------------------------------------------------------


_HAS_PERSISTENCE = importlib.util.find_spec("flo_server.persistence") is not None


@pytest.mark.skipif(not _HAS_PERSISTENCE, reason="flo_server.persistence not built yet")
async def test_state_survives_restart(server_proc) -> None:
    async with FloClient(server_proc.endpoint) as c:
        a = await c.queue.enqueue("dur", b"a", EnqueueOptions(priority=1))
        b = await c.queue.enqueue("dur", b"b", EnqueueOptions(dedup_key="once"))
        d = await c.queue.enqueue("dur", b"d")
        [leased] = (await c.queue.dequeue("dur", 1, DequeueOptions(lease_ms=60_000))).messages
        assert leased.seq == b  # priority 0 first, lowest seq
        await c.queue.dequeue("dur", 1)  # d
        await c.queue.nack("dur", [d], NackOptions(to_dlq=True))
    server_proc.restart()
    async with FloClient(server_proc.endpoint) as c:
        st = await c.queue.stats("dur")
        assert (st.ready, st.leased, st.dlq, st.last_seq) == (1, 1, 1, 3)
        assert await c.queue.enqueue("dur", b"again", EnqueueOptions(dedup_key="once")) == b
        assert [m.seq for m in (await c.queue.peek("dur", 5)).messages] == [a]
        assert await c.queue.ack("dur", [b]) == 1
        assert [m.seq for m in (await c.queue.dlq_list("dur")).messages] == [d]
        assert await c.queue.enqueue("dur", b"new") == 4


# --- the at-least-once proof: a consumer killed while holding leases ----------------------------------

_CONSUMER = textwrap.dedent(
    """
    import asyncio, sys
    from flo_client import FloClient
    from flo_client.queue import DequeueOptions

    async def main(endpoint):
        async with FloClient(endpoint) as c:
            r = await c.queue.dequeue("alo", 10, DequeueOptions(lease_ms=1500))
            print("leased", " ".join(str(m.seq) for m in r.messages), flush=True)
            await asyncio.sleep(3600)  # "processing" forever: killed before it acks

    asyncio.run(main(sys.argv[1]))
    """
)


async def test_at_least_once_when_a_consumer_is_killed(server: str, client: FloClient) -> None:
    all_seqs = [await client.queue.enqueue("alo", b"job-%d" % i) for i in range(20)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CONSUMER, server, stdout=asyncio.subprocess.PIPE,
        cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    )
    try:
        line = (await asyncio.wait_for(proc.stdout.readline(), 15)).decode()
        assert line.startswith("leased"), line
        orphaned = [int(s) for s in line.split()[1:]]
        assert orphaned == all_seqs[:10]
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()

    loop = asyncio.get_running_loop()
    killed_at = loop.time()
    delivered: dict[int, int] = {}
    # While the dead consumer's leases run, only the other ten are handed out.
    while True:
        got = (await client.queue.dequeue("alo", 10)).messages
        if not got:
            break
        for m in got:
            assert m.seq not in orphaned, "a leased message was handed out twice"
            delivered[m.seq] = m.delivery_count
        await client.queue.ack("alo", [m.seq for m in got])
    assert sorted(delivered) == all_seqs[10:]
    assert (await client.queue.stats("alo")).leased == 10

    # After the leases lapse, the orphans come back, each exactly once more.
    redelivered: list = []
    while len(redelivered) < 10:
        got = (await client.queue.dequeue("alo", 10, DequeueOptions(block_ms=5000))).messages
        assert got, "orphaned messages were not redelivered"
        redelivered += got
        await client.queue.ack("alo", [m.seq for m in got])
    assert loop.time() - killed_at < 10
    assert sorted(m.seq for m in redelivered) == orphaned
    assert all(m.delivery_count == 2 for m in redelivered)
    st = await client.queue.stats("alo")
    assert (st.ready, st.leased, st.delayed, st.dlq, st.total_acked) == (0, 0, 0, 0, 20)

"""flo-python 0.1.2 (unmodified) against flo-server: streams, consumer groups, StreamWorker."""

from __future__ import annotations

import asyncio
import time

import pytest
from flo import FloClient
from flo.exceptions import BadRequestError, NotFoundError
from flo.types import (
    StreamAppendOptions,
    StreamGroupAckOptions,
    StreamGroupReadOptions,
    StreamID,
    StreamReadOptions,
    StreamTrimOptions,
)

from tests.helpers import parked, wait_for

pytestmark = [
    pytest.mark.conformance,
    pytest.mark.timeout(60),
    pytest.mark.client(sdk=True, namespace="conf", timeout_ms=3000),
]


async def test_seed_stream_section(client):
    r1 = await client.stream.append("events", b'{"event": "click"}')
    r2 = await client.stream.append(
        "events", b'{"event": "click"}', StreamAppendOptions(headers={"content-type": "application/json", "source": "web"})
    )
    assert (r2.id.timestamp_ms, r2.id.sequence) > (r1.id.timestamp_ms, r1.id.sequence)
    assert r1.id.timestamp_ms > 1_600_000_000_000
    res = await client.stream.read("events", StreamReadOptions(start=StreamID(timestamp_ms=1700000000000, sequence=0), count=10))
    assert [r.id for r in res.records] == [r1.id, r2.id]
    rec = res.records[1]
    assert rec.stream == "events" and rec.payload == b'{"event": "click"}'
    assert rec.headers == {"content-type": "application/json", "source": "web"}
    assert res.records[0].headers is None
    # read from an id is inclusive; a start past the last id reads nothing
    res = await client.stream.read("events", StreamReadOptions(start=r2.id))
    assert [r.id for r in res.records] == [r2.id]
    # end is inclusive
    res = await client.stream.read("events", StreamReadOptions(start=StreamID(0, 0), end=r1.id))
    assert [r.id for r in res.records] == [r1.id]
    # tail without block: nothing (only records appended after the request)
    assert (await client.stream.read("events", StreamReadOptions(tail=True, count=10))).records == []


async def test_default_count_is_10_and_unknown_stream_reads_empty(client):
    for i in range(15):
        await client.stream.append("many", b"%d" % i)
    assert len((await client.stream.read("many")).records) == 10
    assert len((await client.stream.read("many", StreamReadOptions(count=100))).records) == 15
    assert (await client.stream.read("nope")).records == []
    info = await client.stream.info("nope")
    assert info.count == 0 and info.partition_count == 1


async def test_blocking_tail_read_is_woken_by_an_append(server, client):
    other = FloClient(server, namespace="conf", timeout_ms=3000)
    await other.connect()
    try:
        await client.stream.append("live", b"old")
        t0 = time.monotonic()
        reader = asyncio.create_task(client.stream.read("live", StreamReadOptions(tail=True, count=10, block_ms=5000)))
        await parked(server, 1)
        await other.stream.append("live", b"new")
        res = await asyncio.wait_for(reader, 5)
        assert [r.payload for r in res.records] == [b"new"]
        assert time.monotonic() - t0 < 4
        # a blocking read that times out answers empty
        res = await client.stream.read("live", StreamReadOptions(tail=True, block_ms=200))
        assert res.records == []
    finally:
        await other.close()


async def test_info_and_trim(client):
    ids = [(await client.stream.append("t", b"abcd")).id for _ in range(10)]
    info = await client.stream.info("t")
    assert info.count == 10 and info.first_id == ids[0] and info.last_id == ids[-1] and info.bytes_size > 0
    dry = await client.stream.trim("t", StreamTrimOptions(max_len=4, dry_run=True))
    assert dry.removed == 6 and dry.first_seq == ids[6].sequence
    assert (await client.stream.info("t")).count == 10
    assert (await client.stream.trim("t", StreamTrimOptions(before=ids[1]))).removed == 2
    assert (await client.stream.trim("t", StreamTrimOptions(max_len=4))).removed == 4
    info = await client.stream.info("t")
    assert info.count == 4 and info.first_id == ids[6]
    assert (await client.stream.trim("t", StreamTrimOptions(max_age_seconds=3600))).removed == 0
    with pytest.raises(BadRequestError):
        await client.stream.trim("t", StreamTrimOptions())
    with pytest.raises(BadRequestError):
        await client.stream.trim("t", StreamTrimOptions(max_len=1, max_age_seconds=1))


async def test_consumer_group_read_ack_nack_pending_claim(client):
    for i in range(4):
        await client.stream.append("g", b"r%d" % i)
    await client.stream.group_join("g", "processors", "worker-1")
    res = await client.stream.group_read("g", "processors", "worker-1", StreamGroupReadOptions(count=2, block_ms=100))
    assert [r.payload for r in res.records] == [b"r0", b"r1"]  # a new group starts at the beginning
    res2 = await client.stream.group_read("g", "processors", "worker-2", StreamGroupReadOptions(count=10))
    assert [r.payload for r in res2.records] == [b"r2", b"r3"]
    pend = await client.stream.group_pending("g", "processors")
    assert [(p.consumer, p.delivery_count) for p in pend] == [("worker-1", 1)] * 2 + [("worker-2", 1)] * 2
    assert len(await client.stream.group_pending("g", "processors", "worker-2")) == 2
    await client.stream.group_ack("g", "processors", [r.id for r in res.records])
    await client.stream.group_nack("g", "processors", [res2.records[0].id])
    again = await client.stream.group_read("g", "processors", "worker-1", StreamGroupReadOptions(count=10))
    assert [r.payload for r in again.records] == [b"r2"]
    pend = {(p.id.timestamp_ms, p.id.sequence): p for p in await client.stream.group_pending("g", "processors")}
    nacked = res2.records[0].id
    assert pend[(nacked.timestamp_ms, nacked.sequence)].delivery_count == 2
    assert pend[(nacked.timestamp_ms, nacked.sequence)].consumer == "worker-1"
    # claim with min_idle 0 = own entries only
    mine = await client.stream.group_claim("g", "processors", "worker-2", 0, StreamID(), 10)
    assert [r.payload for r in mine.records] == [b"r3"] and mine.done
    # with min_idle > 0 an idle peer's entries come too (none is idle 1 h here)
    steal = await client.stream.group_claim("g", "processors", "worker-2", 3_600_000, StreamID(), 10)
    assert [r.payload for r in steal.records] == [b"r3"]
    with pytest.raises(NotFoundError):
        await client.stream.group_ack("g", "nogroup", [res.records[0].id])
    with pytest.raises(NotFoundError):
        await client.stream.group_nack("nostream", "processors", [res.records[0].id])
    # unknown group reads and lists empty
    assert (await client.stream.group_pending("g", "other")) == []
    empty = await client.stream.group_claim("g", "other", "w", 0, StreamID(), 10)
    assert empty.records == [] and empty.done
    await client.stream.group_leave("g", "processors", "worker-2")


async def test_blocking_group_read_woken_by_append(server, client):
    other = FloClient(server, namespace="conf", timeout_ms=3000)
    await other.connect()
    try:
        await client.stream.group_join("gb", "grp", "c1")
        reader = asyncio.create_task(
            client.stream.group_read("gb", "grp", "c1", StreamGroupReadOptions(count=10, block_ms=5000))
        )
        await parked(server, 1)
        await other.stream.append("gb", b"hello")
        res = await asyncio.wait_for(reader, 5)
        assert [r.payload for r in res.records] == [b"hello"]
        await other.stream.group_ack("gb", "grp", [res.records[0].id], StreamGroupAckOptions(consumer="c1"))
        assert await other.stream.group_pending("gb", "grp") == []
    finally:
        await other.close()


async def test_interrupted_group_read_hands_nothing_to_the_closed_connection(server, client):
    """A client closes a connection with a parked group_read; the next append must
    go to a live consumer, not sit pending under the dead one."""
    quitter = FloClient(server, namespace="conf", timeout_ms=3000)
    await quitter.connect()
    parked_read = asyncio.create_task(quitter.stream.group_read("gq", "grp", "dead", StreamGroupReadOptions(block_ms=10000)))
    await parked(server, 1)
    quitter.interrupt()
    with pytest.raises(Exception):
        await asyncio.wait_for(parked_read, 5)
    await quitter.close()
    await parked(server, 0)  # the server saw the close and dropped the waiter
    await client.stream.append("gq", b"x")
    res = await client.stream.group_read("gq", "grp", "alive", StreamGroupReadOptions(count=10))
    assert [r.payload for r in res.records] == [b"x"]
    assert [p.consumer for p in await client.stream.group_pending("gq", "grp")] == ["alive"]


async def test_stream_worker_processes_every_record_with_headers_and_acks(client):
    got: list[tuple[bytes, dict, str]] = []
    n = 25
    for i in range(n):
        await client.stream.append("wk", b'{"i": %d}' % i, StreamAppendOptions(headers={"n": str(i)} if i % 2 else None))

    async def handle(ctx):
        got.append((ctx.json()["i"], ctx.headers, ctx.stream))

    worker = client.new_stream_worker(stream="wk", group="processors", handler=handle, concurrency=5, block_ms=500)
    task = asyncio.create_task(worker.start())
    try:
        await wait_for(lambda: len(got) >= n)
        await wait_for(lambda: _no_pending(client, "wk", "processors"))
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)
    assert sorted(i for i, _, _ in got) == list(range(n))
    assert all(h == ({"n": str(i)} if i % 2 else {}) and s == "wk" for i, h, s in got)


async def _no_pending(client, stream, group):
    return await client.stream.group_pending(stream, group) == []


async def test_stream_worker_nacks_on_exception_and_retries(client):
    attempts: dict[int, int] = {}

    async def handle(ctx):
        i = ctx.json()["i"]
        attempts[i] = attempts.get(i, 0) + 1
        if i == 1 and attempts[i] < 3:
            raise RuntimeError("flaky")

    for i in range(3):
        await client.stream.append("wn", b'{"i": %d}' % i)
    worker = client.new_stream_worker(stream="wn", group="g", handler=handle, block_ms=300)
    task = asyncio.create_task(worker.start())
    try:
        await wait_for(lambda: attempts.get(1, 0) >= 3)
        await wait_for(lambda: _no_pending(client, "wn", "g"))
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)
    assert attempts[0] == 1 and attempts[2] == 1 and attempts[1] == 3

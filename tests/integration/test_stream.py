"""Streams, consumer groups and the StreamWorker through flo_client against a real flo-server."""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import subprocess
import sys
import textwrap

import pytest

from flo_client import FloClient
from flo_client.stream import (
    StreamAppendOptions,
    StreamGroupReadOptions,
    StreamID,
    StreamReadOptions,
    StreamTrimOptions,
)
from flo_client.stream_worker import StreamContext
from flo_core.errors import BadRequestError, ConflictError, NotFoundError
from tests.helpers import parked, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60), pytest.mark.client(namespace="it", timeout_ms=5000)]


# --- the seed page's Stream section -------------------------------------------------------------


async def test_seed_stream_section(client: FloClient) -> None:
    await client.stream.append("events", b'{"event": "login"}')
    result = await client.stream.append(
        "events", b'{"event": "click"}', StreamAppendOptions(headers={"content-type": "application/json", "source": "web"})
    )
    res = await client.stream.read("events", StreamReadOptions(start=StreamID(timestamp_ms=1700000000000, sequence=0), count=10))
    assert [r.payload for r in res.records] == [b'{"event": "login"}', b'{"event": "click"}']
    rec = res.records[1]
    assert rec.stream == "events" and rec.id == result.id
    assert rec.headers == {"content-type": "application/json", "source": "web"}
    assert res.records[0].headers is None
    assert res.records[0].id < rec.id  # StreamID orders
    assert (await client.stream.read("events", StreamReadOptions(tail=True, count=10))).records == []

    await client.stream.group_join("events", "processors", "worker-1")
    res = await client.stream.group_read("events", "processors", "worker-1", StreamGroupReadOptions(count=10, block_ms=30000))
    assert len(res.records) == 2
    assert await client.stream.group_ack("events", "processors", [r.id for r in res.records]) == 2
    assert await client.stream.group_pending("events", "processors") == []


async def test_ids_rise_strictly_and_batches_are_contiguous(client: FloClient) -> None:
    ids = [(await client.stream.append("ids", b"x")).id for _ in range(50)]
    assert ids == sorted(ids) and len(set(ids)) == 50
    batch = await client.stream.append_batch("ids", [b"a", (b"b", {"h": "1"}), b"c"])
    assert batch[0] > ids[-1] and [b.sequence - batch[0].sequence for b in batch] == [0, 1, 2]
    res = await client.stream.read("ids", StreamReadOptions(start=batch[0]))
    assert [(r.id, r.payload, r.headers) for r in res.records] == [
        (batch[0], b"a", None), (batch[1], b"b", {"h": "1"}), (batch[2], b"c", None)
    ]
    assert str(StreamID(5, 1)) == "5-1" and StreamID.parse("5-1") == StreamID(5, 1)


async def test_read_bounds_count_cap_and_unknown_stream(client: FloClient) -> None:
    await client.stream.append_batch("b", [b"%d" % i for i in range(1000)])
    await client.stream.append_batch("b", [b"%d" % i for i in range(1000, 1200)])
    assert len((await client.stream.read("b")).records) == 10
    assert len((await client.stream.read("b", StreamReadOptions(count=5000))).records) == 1000
    all_ids = [r.id for r in (await client.stream.read("b", StreamReadOptions(count=1000))).records]
    res = await client.stream.read("b", StreamReadOptions(start=all_ids[3], end=all_ids[6], count=100))
    assert [r.id for r in res.records] == all_ids[3:7]
    assert (await client.stream.read("none")).records == []
    with pytest.raises(BadRequestError):
        await client.stream.read("b", StreamReadOptions(block_ms=300_001))


async def test_blocking_reads_wake_on_append_and_time_out_empty(server: str, client: FloClient) -> None:
    async with FloClient(server, namespace="it") as other:
        await client.stream.append("bl", b"old")
        tail = asyncio.create_task(client.stream.read("bl", StreamReadOptions(tail=True, count=10, block_ms=10000)))
        start = asyncio.create_task(
            other.stream.read("never-yet", StreamReadOptions(start=StreamID(0, 0), block_ms=10000))
        )
        await parked(other, 2)
        await other.stream.append("bl", b"new")
        await client.stream.append("never-yet", b"first")
        assert [r.payload for r in (await asyncio.wait_for(tail, 5)).records] == [b"new"]
        assert [r.payload for r in (await asyncio.wait_for(start, 5)).records] == [b"first"]
        res = await client.stream.read("bl", StreamReadOptions(tail=True, block_ms=100))
        assert res.records == []


async def test_trim_retention_info_list_delete(client: FloClient) -> None:
    ids = await client.stream.append_batch("tr", [b"abcd"] * 10)
    info = await client.stream.info("tr")
    assert (info.count, info.first_id, info.last_id) == (10, ids[0], ids[-1])
    assert info.bytes_size == 10 * 12  # payload + length fields
    assert (await client.stream.trim("tr", StreamTrimOptions(max_bytes=36, dry_run=True))).removed == 7
    assert (await client.stream.trim("tr", StreamTrimOptions(before=ids[2]))).removed == 3
    assert (await client.stream.info("tr")).first_id == ids[3]
    with pytest.raises(BadRequestError):
        await client.stream.trim("tr", StreamTrimOptions(before=ids[2], max_len=1))
    # retention applies at once and on every append
    ret = await client.stream.set_retention("tr", max_len=3)
    assert ret.max_len == 3 and (await client.stream.info("tr")).count == 3
    await client.stream.append("tr", b"more")
    info = await client.stream.info("tr")
    assert info.count == 3 and info.max_len == 3 and info.last_id > ids[-1]
    with pytest.raises(NotFoundError):
        await client.stream.set_retention("absent", max_len=1)
    assert await client.stream.create("made", max_age_seconds=3600) is True
    assert await client.stream.create("made") is False
    assert (await client.stream.info("made")).max_age_ms == 3_600_000
    listing = await client.stream.list()
    assert [s.name for s in listing.streams] == ["made", "tr"] and listing.cursor is None
    page = await client.stream.list(limit=1)
    assert [s.name for s in page.streams] == ["made"] and page.cursor == "made"
    assert [s.name for s in (await client.stream.list(cursor=page.cursor)).streams] == ["tr"]
    with pytest.raises(ConflictError):
        await client.stream.delete("tr")
    assert await client.stream.delete("tr", force=True) is True
    assert await client.stream.delete("tr") is False
    assert (await client.stream.read("tr")).records == []


async def test_group_semantics(client: FloClient) -> None:
    ids = await client.stream.append_batch("gs", [b"r%d" % i for i in range(6)])
    await client.stream.group_join("gs", "g", "a")
    a = await client.stream.group_read("gs", "g", "a", StreamGroupReadOptions(count=3))
    b = await client.stream.group_read("gs", "g", "b", StreamGroupReadOptions(count=10))
    assert [r.id for r in a.records] == ids[:3] and [r.id for r in b.records] == ids[3:]
    # nack -> redeliverable at once, first, with delivery count + 1
    assert await client.stream.group_nack("gs", "g", [ids[4]], consumer="b") == 1
    again = await client.stream.group_read("gs", "g", "a")
    assert [r.id for r in again.records] == [ids[4]]
    pend = {p.id: p for p in await client.stream.group_pending("gs", "g")}
    assert pend[ids[4]].consumer == "a" and pend[ids[4]].delivery_count == 2
    # ack removes; acking twice counts 0
    assert await client.stream.group_ack("gs", "g", ids[:2]) == 2
    assert await client.stream.group_ack("gs", "g", ids[:2]) == 0
    # claim: min_idle 0 = own entries only, paged
    page = await client.stream.group_claim("gs", "g", "b", 0, StreamID.MIN, 1)
    assert [r.id for r in page.records] == [ids[3]] and not page.done
    page = await client.stream.group_claim("gs", "g", "b", 0, page.next_cursor, 10)
    assert [r.id for r in page.records] == [ids[5]] and page.done
    info = await client.stream.group_info("gs", "g")
    assert info.pending == 4 and info.lag == 0 and info.last_delivered_id == ids[-1]
    assert {c.name: c.pending for c in info.consumers} == {"a": 2, "b": 2}
    # leave keeps pending entries
    await client.stream.group_leave("gs", "g", "b")
    assert len(await client.stream.group_pending("gs", "g", "b")) == 2
    # an explicit group can start at the end
    assert await client.stream.group_create("gs", "late", start="$") is True
    assert (await client.stream.group_read("gs", "late", "x")).records == []
    new = await client.stream.append("gs", b"after")
    assert [r.id for r in (await client.stream.group_read("gs", "late", "x")).records] == [new.id]
    assert await client.stream.group_delete("gs", "late") is True
    with pytest.raises(NotFoundError):
        await client.stream.group_info("gs", "late")
    with pytest.raises(NotFoundError):
        await client.stream.group_ack("gs", "late", [new.id])


async def test_ack_timeout_redelivers_and_wakes_a_parked_reader(client: FloClient) -> None:
    await client.stream.group_configure("at", "g", ack_timeout_ms=300)
    rid = (await client.stream.append("at", b"job")).id
    first = await client.stream.group_read("at", "g", "slow")
    assert [r.id for r in first.records] == [rid]
    # a parked read by another consumer gets it once the ack deadline passes
    res = await client.stream.group_read("at", "g", "fast", StreamGroupReadOptions(block_ms=5000))
    assert [r.id for r in res.records] == [rid]
    (p,) = await client.stream.group_pending("at", "g")
    assert p.consumer == "fast" and p.delivery_count == 2


async def test_max_deliveries_dead_letters(client: FloClient) -> None:
    await client.stream.group_configure("md", "g", ack_timeout_ms=0, max_deliver=2)
    rid = (await client.stream.append("md", b"poison")).id
    for _ in range(2):
        (rec,) = (await client.stream.group_read("md", "g", "c")).records
        await client.stream.group_nack("md", "g", [rec.id])
    assert (await client.stream.group_read("md", "g", "c")).records == []
    info = await client.stream.group_info("md", "g")
    assert info.dead_lettered == 1 and info.pending == 0 and rid.sequence == rec.id.sequence


async def test_bad_input_is_refused(client: FloClient) -> None:
    from flo_core.spec import Op

    with pytest.raises(BadRequestError):
        await client._call_vo(Op.STREAM_APPEND, "x", b"\x01\x00\x00\x00\xff")  # truncated record
    with pytest.raises(BadRequestError):
        await client._call_vo(Op.STREAM_APPEND, "x", b"\x00\x00\x00\x00")  # zero records
    with pytest.raises(BadRequestError):
        await client.stream.group_read("x", "g", "")  # consumer name required
    with pytest.raises(BadRequestError):
        await client._call_vo(Op.STREAM_GROUP_ACK, "x", b"\x01\x00g\x00\x00\xff\xff\xff\xff")
    assert (await client.stream.read("x")).records == []


@pytest.mark.parametrize("kill", [False, True], ids=["snapshot", "log-replay"])
async def test_streams_and_groups_survive_a_restart(server_proc, client: FloClient, kill: bool) -> None:
    ids = await client.stream.append_batch("dur", [b"a", (b"b", {"k": "v"}), b"c"])
    await client.stream.group_configure("dur", "g", ack_timeout_ms=60_000)
    res = await client.stream.group_read("dur", "g", "w1", StreamGroupReadOptions(count=2))
    await client.stream.group_ack("dur", "g", [res.records[0].id])
    await client.stream.trim("dur", StreamTrimOptions(max_len=100))  # a no-op trim writes nothing
    server_proc.restart(kill=kill)
    async with FloClient(server_proc.endpoint, namespace="it") as c2:
        res = await c2.stream.read("dur")
        assert [(r.id, r.payload, r.headers) for r in res.records] == [
            (ids[0], b"a", None), (ids[1], b"b", {"k": "v"}), (ids[2], b"c", None)
        ]
        assert [(p.id, p.consumer) for p in await c2.stream.group_pending("dur", "g")] == [(ids[1], "w1")]
        assert [r.id for r in (await c2.stream.group_read("dur", "g", "w2")).records] == [ids[2]]
        assert (await c2.stream.append("dur", b"d")).id > ids[-1]


# --- StreamWorker -----------------------------------------------------------------------------------


async def test_worker_seed_example_with_context_and_headers(client: FloClient) -> None:
    seen: list[tuple] = []

    @dataclasses.dataclass
    class Event:
        event: str

    async def process_event(ctx: StreamContext) -> None:
        seen.append((ctx.json(), ctx.into(Event), ctx.stream, ctx.stream_id, ctx.headers, ctx.payload, ctx.record.id))

    r1 = await client.stream.append("wev", b'{"event": "click"}', StreamAppendOptions(headers={"source": "web"}))
    r2 = await client.stream.append("wev", b'{"event": "view"}')
    async with client.new_stream_worker(stream="wev", group="processors", handler=process_event,
                                        concurrency=5, block_ms=200) as worker:
        task = asyncio.create_task(worker.start())
        await wait_for(lambda: len(seen) == 2)
        await wait_for(lambda: _pending_empty(client, "wev", "processors"))
    await asyncio.wait_for(task, 10)
    seen.sort(key=lambda s: s[3])
    assert seen[0] == ({"event": "click"}, Event("click"), "wev", r1.id, {"source": "web"}, b'{"event": "click"}', r1.id)
    assert seen[1][4] == {} and seen[1][3] == r2.id


async def _pending_empty(client: FloClient, stream: str, group: str) -> bool:
    return await client.stream.group_pending(stream, group) == []


async def test_worker_nacks_on_exception_and_timeout(client: FloClient) -> None:
    tries: collections.Counter = collections.Counter()

    async def handler(ctx: StreamContext) -> None:
        n = ctx.json()["n"]
        tries[n] += 1
        if n == 1 and tries[n] == 1:
            raise RuntimeError("boom")
        if n == 2 and tries[n] == 1:
            await asyncio.sleep(5)  # longer than message_timeout: nacked

    await client.stream.append_batch("wnk", [b'{"n": %d}' % i for i in range(3)])
    worker = client.new_stream_worker(stream="wnk", group="g", handler=handler, block_ms=200, message_timeout=0.3)
    task = asyncio.create_task(worker.start())
    try:
        await wait_for(lambda: tries[1] == 2 and tries[2] == 2)
        await wait_for(lambda: _pending_empty(client, "wnk", "g"))
    finally:
        await worker.close()
    await asyncio.wait_for(task, 10)
    assert tries == {0: 1, 1: 2, 2: 2} and worker.failed == 2 and worker.processed == 3


async def test_two_workers_process_every_record_exactly_once(client: FloClient) -> None:
    n = 300
    counts: collections.Counter = collections.Counter()
    by_worker: collections.Counter = collections.Counter()

    def make(name: str):
        async def handler(ctx: StreamContext) -> None:
            counts[ctx.payload] += 1
            by_worker[name] += 1
            await asyncio.sleep(0)
        return handler

    workers = [client.new_stream_worker(stream="two", group="g", consumer=f"w{i}", handler=make(f"w{i}"),
                                        concurrency=4, batch_size=5, block_ms=500) for i in range(2)]
    tasks = [asyncio.create_task(w.start()) for w in workers]
    await parked(client, 2)  # both workers are polling before anything arrives
    for i in range(0, n, 50):
        await client.stream.append_batch("two", [b"%d" % j for j in range(i, i + 50)])
    try:
        await wait_for(lambda: sum(counts.values()) >= n)
        await wait_for(lambda: _pending_empty(client, "two", "g"))
    finally:
        for w in workers:
            w.stop()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
    assert len(counts) == n and set(counts.values()) == {1}
    assert set(by_worker) == {"w0", "w1"}


async def test_worker_survives_a_server_restart_and_drains_its_pending(server_proc, client: FloClient) -> None:
    got: collections.Counter = collections.Counter()
    gate = asyncio.Event()

    async def handler(ctx: StreamContext) -> None:
        got[ctx.payload] += 1
        if ctx.payload == b"held" and got[b"held"] == 1:
            await gate.wait()  # still running when the server goes away
            raise RuntimeError("lost with the server")

    await client.stream.group_configure("rs", "g", ack_timeout_ms=600_000)
    await client.stream.append("rs", b"held")
    worker = client.new_stream_worker(stream="rs", group="g", consumer="stable", handler=handler, block_ms=300)
    task = asyncio.create_task(worker.start())
    try:
        await wait_for(lambda: got[b"held"] == 1)
        server_proc.restart()
        gate.set()  # the nack is lost or refused; the entry stays pending under "stable"
        async with FloClient(server_proc.endpoint, namespace="it") as c2:
            await c2.stream.append("rs", b"after")
            # reconnect + re-join + drain of its own pending entries runs "held" again
            await wait_for(lambda: got[b"held"] >= 2 and got[b"after"] >= 1, timeout=20)
            await wait_for(lambda: _pending_empty(c2, "rs", "g"), timeout=10)
    finally:
        await worker.close()
    await asyncio.wait_for(task, 10)


WORKER_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from flo_client import FloClient

    async def main(endpoint):
        async with FloClient(endpoint, namespace="it") as client:
            async def handler(ctx):
                print("got", ctx.payload.decode(), flush=True)
                await asyncio.Event().wait()  # never finishes: killed mid-batch
            worker = client.new_stream_worker(stream="kill", group="g", consumer="doomed", handler=handler,
                                              concurrency=10, batch_size=10, block_ms=1000)
            await worker.start()

    asyncio.run(main(sys.argv[1]))
    """
)


@pytest.mark.slow
async def test_killed_worker_process_records_reach_the_other_worker(server: str, client: FloClient, tmp_path) -> None:
    await client.stream.group_configure("kill", "g", ack_timeout_ms=1000)
    await client.stream.append_batch("kill", [b"%d" % i for i in range(5)])
    script = tmp_path / "worker.py"
    script.write_text(WORKER_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), server], stdout=subprocess.PIPE, text=True)
    try:
        loop = asyncio.get_running_loop()
        lines: list[str] = []
        while len(lines) < 5:
            line = await asyncio.wait_for(loop.run_in_executor(None, proc.stdout.readline), 15)
            assert line, "worker process exited early"
            lines.append(line.split()[1])
        assert sorted(lines) == [str(i) for i in range(5)]
    finally:
        proc.kill()
        proc.wait(10)
    got: collections.Counter = collections.Counter()

    async def handler(ctx: StreamContext) -> None:
        got[ctx.payload] += 1

    worker = client.new_stream_worker(stream="kill", group="g", consumer="survivor", handler=handler, block_ms=500)
    task = asyncio.create_task(worker.start())
    try:
        await wait_for(lambda: len(got) == 5, timeout=15)
        await wait_for(lambda: _pending_empty(client, "kill", "g"))
    finally:
        await worker.close()
    await asyncio.wait_for(task, 10)
    assert sorted(got) == [b"%d" % i for i in range(5)]


async def test_worker_touches_records_of_long_handlers(client: FloClient) -> None:
    """message_timeout longer than the group's ack timeout: auto-touch keeps the record ours."""
    await client.stream.group_configure("lt", "g", ack_timeout_ms=300)
    await client.stream.append("lt", b"long")
    started, release = asyncio.Event(), asyncio.Event()
    runs: list[bytes] = []

    async def handler(ctx: StreamContext) -> None:
        runs.append(ctx.payload)
        started.set()
        await release.wait()

    worker = client.new_stream_worker(stream="lt", group="g", handler=handler, block_ms=200, message_timeout=10)
    task = asyncio.create_task(worker.start())
    try:
        await asyncio.wait_for(started.wait(), 5)
        # well past three ack timeouts, another consumer still gets nothing
        res = await client.stream.group_read("lt", "g", "thief", StreamGroupReadOptions(block_ms=1200))
        assert res.records == []
        release.set()
        await wait_for(lambda: _pending_empty(client, "lt", "g"))
    finally:
        await worker.close()
    await asyncio.wait_for(task, 10)
    assert runs == [b"long"]

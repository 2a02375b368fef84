"""Ops that span shards, on two shards of real processes and a real etcd: scans and lists cover both
shards through either member, a transaction commits where it began, and actions (not sharded: all on
the shard of ``{flo.actions}``) run with the worker on one member and the caller on the other."""

from __future__ import annotations

import asyncio

import pytest

from flo_client import FloClient
from flo_client.action import ActionRegisterOptions, RunStatus
from flo_client.action_worker import ActionContext
from flo_client.kv import ScanOptions
from flo_client.queue import QueueListOptions
from flo_core.errors import FloError, NotFoundError
from flo_core.body import Writer
from flo_core.slots import key_slot
from flo_core.spec import Op, Reason
from flo_server.cluster.coord import SlotMap
from tests.helpers import wait_for

pytestmark = pytest.mark.timeout(120)


SLOT_MAP = SlotMap.even(2)  # what `cluster create --shards 2` writes


def owner(key: str) -> int:
    return SLOT_MAP.owner(key_slot(key))


@pytest.fixture
async def two_shards(cluster):
    """[leader of shard 0, leader of shard 1], each the only member of its shard."""
    leaders = await cluster(2).ready()
    return [leaders[0], leaders[1]]


async def scan_all(scan, prefix: str, limit: int) -> list[str]:
    """Every name ``scan(prefix, limit, cursor)`` pages through, in the order given."""
    names, cursor = [], None
    for _ in range(10_000):
        page_names, cursor = await scan(prefix, limit, cursor)
        names += page_names
        if cursor is None:
            return names
    raise AssertionError("the scan never ended")


async def test_scan_gives_every_key_of_both_shards_once_through_either_member(two_shards):
    # short keys (cursors inline) and keys too long for a cursor (the shard keeps a token)
    keys = [f"scan:{i:04d}" for i in range(300)] + [f"scan:long:{'x' * 70}:{i}" for i in range(40)]
    assert {owner(k) for k in keys} == {0, 1}
    async with FloClient(two_shards[0].endpoint) as c:
        for k in keys:
            await c.kv.put(k, b"v")
        for i in range(30):
            await c.kv.put(f"other:{i}", b"v")  # outside the prefix: never listed
    for m in two_shards:
        async with FloClient(m.endpoint) as c:
            async def page(prefix, limit, cursor, c=c):
                r = await c.kv.scan(prefix, ScanOptions(limit=limit, cursor=cursor))
                assert len(r.names) <= limit and len(r.cursor or b"") <= 64
                return r.names, r.cursor

            for limit in (1, 37, 1024):
                got = await scan_all(page, "scan:", limit)
                assert sorted(got) == sorted(keys) and len(got) == len(keys), (m.endpoint, limit)
            assert len(await scan_all(page, "", 50)) == len(keys) + 30
            assert await scan_all(page, "nothing-has-this-prefix:", 10) == []
    # a cursor from one member continues on the other: it names its shard and that shard's own cursor
    async with FloClient(two_shards[0].endpoint) as c0, FloClient(two_shards[1].endpoint) as c1:
        clients = [c0, c1]
        turn = 0

        async def alternating(prefix, limit, cursor):
            nonlocal turn
            turn += 1
            r = await clients[turn % 2].kv.scan(prefix, ScanOptions(limit=limit, cursor=cursor))
            return r.names, r.cursor

        got = await scan_all(alternating, "scan:", 23)
        assert sorted(got) == sorted(keys) and len(got) == len(keys)
        with pytest.raises(FloError) as bad:
            await c0.kv.scan("scan:", ScanOptions(cursor=b"\x07"))
        assert bad.value.reason == Reason.MALFORMED
        with pytest.raises(FloError, match="names shard 9"):
            await c1.kv.scan("scan:", ScanOptions(cursor=b"\x09\x00\x00k"))
    import flo  # the public SDK pages while it gets a cursor back
    from flo.types import ScanOptions as SdkScanOptions

    for m in two_shards:
        sdk = flo.FloClient(m.endpoint)
        await sdk.connect()
        try:
            async def sdk_page(prefix, limit, cursor, sdk=sdk):
                r = await sdk.kv.scan(prefix, SdkScanOptions(limit=limit, cursor=cursor))
                return r.names, r.cursor

            got = await scan_all(sdk_page, "scan:", 64)
            assert sorted(got) == sorted(keys) and len(got) == len(keys)
        finally:
            await sdk.close()


async def test_queue_and_stream_lists_merge_both_shards(two_shards):
    queues = [f"q-{i:02d}" for i in range(40)]
    streams = [f"s-{i:02d}" for i in range(40)]
    assert {owner(q) for q in queues} == {0, 1} and {owner(s) for s in streams} == {0, 1}
    async with FloClient(two_shards[1].endpoint) as c:
        for q in queues:
            await c.queue.enqueue(q, b"m")
        for i, s in enumerate(streams):
            for _ in range(i % 3 + 1):
                await c.stream.append(s, b"r")
        await c.queue.enqueue("other-queue", b"m")
    for m in two_shards:
        async with FloClient(m.endpoint) as c:
            names, cursor = [], ""
            while True:
                r = await c.queue.list(QueueListOptions(prefix="q-", limit=7, cursor=cursor))
                assert len(r.names) <= 7
                names += r.names
                cursor = r.cursor
                if not cursor:
                    break
            assert names == queues  # sorted across both shards, each once
            assert (await c.queue.list(QueueListOptions(limit=1024))).names == sorted(queues + ["other-queue"])
            seen, scursor = [], None
            while True:
                r = await c.stream.list("s-", limit=6, cursor=scursor)
                assert len(r.streams) <= 6
                seen += r.streams
                scursor = r.cursor
                if scursor is None:
                    break
            assert [s.name for s in seen] == streams
            assert [s.count for s in seen] == [i % 3 + 1 for i in range(len(streams))]  # each from its own shard


async def test_a_transaction_commits_and_rolls_back_where_it_began(two_shards):
    # the routing key lives on shard 1; member 0 owns none of it
    tag = next(f"{{acct{i}}}" for i in range(100) if owner(f"{{acct{i}}}") == 1)
    async with FloClient(two_shards[0].endpoint) as c0, FloClient(two_shards[1].endpoint) as c1:
        await c1.kv.put(f"{tag}:balance", b"100")
        txn = await c0.kv.begin(tag)
        await txn.put(f"{tag}:balance", b"70")
        await txn.put(f"{tag}:log", b"-30")
        assert (await txn.get(f"{tag}:balance")).value == b"70"  # read-your-writes, on shard 1
        assert (await c1.kv.get(f"{tag}:balance")).value == b"100"  # nothing visible before commit
        done = await txn.commit()
        assert done.op_count == 2
        assert (await c1.kv.get(f"{tag}:balance")).value == b"70"
        assert (await c0.kv.get(f"{tag}:log")).value == b"-30"

        txn = await c0.kv.begin(tag)
        await txn.put(f"{tag}:balance", b"0")
        await txn.rollback()
        assert (await c0.kv.get(f"{tag}:balance")).value == b"70"
        with pytest.raises(NotFoundError):  # rolled back: the id is gone on shard 1
            await c0._call(Op.KV_COMMIT_TXN, b"", Writer().u64(txn.txn_id).getvalue())

        # a key of the other shard cannot join: refused as such, not "no such transaction"
        other = next(f"k{i}" for i in range(100) if owner(f"k{i}") == 0)
        txn = await c1.kv.begin(tag)
        with pytest.raises(FloError, match="CROSSSLOT") as cross:
            await txn.put(other, b"x")
        assert cross.value.reason == Reason.WRONG_ROUTING_KEY
        await txn.rollback()
        assert await c0.kv.get(other) is None
    import flo  # the public SDK, through the member that does not own the routing key

    sdk = flo.FloClient(two_shards[0].endpoint)
    await sdk.connect()
    try:
        txn = await sdk.kv.begin(tag)
        await txn.put(f"{tag}:sdk", b"committed")
        await txn.commit()
        assert (await sdk.kv.get(f"{tag}:sdk")).value == b"committed"
    finally:
        await sdk.close()


async def test_an_action_invoked_on_one_member_runs_on_a_worker_of_the_other(two_shards):
    async with FloClient(two_shards[0].endpoint) as c0, FloClient(two_shards[1].endpoint) as c1:
        await c0.action.register("resize", options=ActionRegisterOptions(timeout_ms=30_000, max_retries=2))
        run = (await c0.action.invoke("resize", b'{"px": 21}')).run_id
        assert (await c1.action.status(run)).status == RunStatus.PENDING

        worker = c1.new_action_worker(worker_id="w-on-member-1", block_ms=1000)

        @worker.action("resize", timeout_ms=30_000, max_retries=2)
        async def resize(ctx: ActionContext) -> bytes:
            return ctx.to_bytes({"px": ctx.json()["px"] * 2})

        task = asyncio.ensure_future(worker.start())
        try:
            done = await c0.action.result(run, timeout_ms=30_000)
            assert done.status == RunStatus.COMPLETED and done.json() == {"px": 42}
            assert done.worker_id == "w-on-member-1"
            again = await c1.action.status(run)
            assert again.status == RunStatus.COMPLETED and again.worker_id == "w-on-member-1"
            for c in (c0, c1):  # one registry: both members list the same action, run and worker
                assert [a.name for a in (await c.action.list()).actions] == ["resize"]
                assert [r.run_id for r in (await c.action.list_runs("resize")).runs] == [run]
                assert "w-on-member-1" in [w.worker_id for w in (await c.worker.list()).workers]
        finally:
            worker.stop()
            await asyncio.wait_for(task, 20)


async def test_with_a_shard_down_a_scan_or_list_is_refused_not_answered_in_part(cluster):
    c = cluster(2)
    leaders = await c.ready()
    async with FloClient(leaders[0].endpoint) as c0:
        for i in range(20):
            await c0.kv.put(f"half:{i}", b"v")
            await c0.queue.enqueue(f"half-q{i}", b"m")
        leaders[1].stop()

        async def shard1_leaderless():
            return "1" not in (await c0.server_info())["cluster"]["leaders"]

        await wait_for(shard1_leaderless, timeout=30, what="member 0 to see shard 1 without a leader")
        for call in (lambda: c0.kv.scan("half:"), lambda: c0.queue.list(QueueListOptions(limit=1024)),
                     lambda: c0.stream.list("")):
            with pytest.raises(FloError, match="CLUSTERDOWN shard 1") as down:
                await call()
            assert down.value.reason == Reason.LEADER_UNKNOWN


async def test_a_stopped_workers_parked_await_on_the_other_member_takes_no_run(two_shards):
    assert owner("{flo.actions}") == 0  # the registry is on shard 0: member 1 forwards its workers' awaits
    async with FloClient(two_shards[0].endpoint) as c0, FloClient(two_shards[1].endpoint) as c1:
        await c0.action.register("echo", options=ActionRegisterOptions(timeout_ms=120_000, max_retries=0))

        async def echo(ctx: ActionContext) -> bytes:
            return ctx.payload

        async def parked_at_owner() -> int:
            return (await c0.server_info())["waiters"]

        async def none_parked() -> bool:
            return await parked_at_owner() == 0

        gone = c1.new_action_worker(worker_id="gone", block_ms=60_000)
        gone.action("echo", timeout_ms=120_000, max_retries=0)(echo)
        task = asyncio.ensure_future(gone.start())
        await wait_for(parked_at_owner, timeout=15, what="the worker's await parked on member 0")
        gone.stop()
        await asyncio.wait_for(task, 20)
        # its await (parked for a minute) ends when its connection does; a run invoked now is not handed to it
        await wait_for(none_parked, timeout=15, what="the await to end")
        run = (await c0.action.invoke("echo", b"hello")).run_id
        here = c0.new_action_worker(worker_id="here", block_ms=1000)
        here.action("echo", timeout_ms=120_000, max_retries=0)(echo)
        task = asyncio.ensure_future(here.start())
        try:
            done = await c1.action.result(run, timeout_ms=30_000)
            assert done.status == RunStatus.COMPLETED and done.output == b"hello"
            assert done.worker_id == "here" and done.attempt == 1
        finally:
            here.stop()
            await asyncio.wait_for(task, 20)

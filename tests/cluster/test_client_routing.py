"""flo_client.FloClient on a cluster (real etcd, real processes): seeds, the slot map, each request sent
straight to its owner, MOVED and a failover refreshing the map; a single server sees no difference."""

from __future__ import annotations

import asyncio
import socket

import pytest

from flo_client import FloClient
from flo_client.cluster import SlotMap
from flo_core.slots import ACTIONS_SLOT
from flo_client.queue import DequeueOptions
from flo_client.stream import StreamReadOptions
from flo_core.errors import BadRequestError, ConnectionClosedError
from flo_core.slots import key_slot
from tests.helpers import parked, wait_for

pytestmark = pytest.mark.timeout(120)


def owner(key: str) -> int:
    return 0 if key_slot(key) <= 8191 else 1  # the even split of two shards


def named_on(shard: int, prefix: str) -> str:
    return next(f"{prefix}{i}" for i in range(1000) if owner(f"{prefix}{i}") == shard)


async def forwarded(endpoint: str) -> int:
    async with FloClient(endpoint, routing=False) as c:
        return (await c.server_info())["cluster"]["forwarded"]


async def moved_on(c, old) -> bool:
    """Every live member names a leader of shard 0 other than ``old`` (``Cluster.ready`` expects every named
    leader alive, so it is asked only after this)."""
    views = set()
    for p in c.members:
        if p is not old and p.proc is not None and p.proc.poll() is None:
            try:
                async with FloClient(p.endpoint, routing=False, timeout_ms=2000) as one:
                    views.add((await one.server_info())["cluster"]["leaders"].get("0"))
            except Exception:  # noqa: BLE001 - a member busy with the election
                return False
    return len(views) == 1 and None not in views and old.endpoint not in views


async def _no_pending(client: FloClient, stream: str) -> bool:
    return await client.stream.group_pending(stream, "g") == []


def dead_endpoint() -> str:
    with socket.socket() as s:  # a port nothing listens on (bound, then released)
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_doctests():
    import doctest

    from flo_client import client, cluster

    assert doctest.testmod(cluster).failed == 0 and doctest.testmod(client).failed == 0


def test_a_bad_slot_map_is_refused_in_words():
    from flo_core.errors import ProtocolError

    for bad in ({}, {"shards": 0, "ranges": []}, {"shards": 2, "ranges": [[0, 20000, 0]]},
                {"shards": 2, "ranges": [[0, 10, 5]]}, {"shards": 1, "ranges": "x"}):
        with pytest.raises(ProtocolError):
            SlotMap(bad)


async def test_each_request_goes_straight_to_its_owner(cluster):
    c = cluster(2)
    leaders = await c.ready()
    m0, m1 = leaders[0], leaders[1]
    before = {p: await forwarded(p.endpoint) for p in (m0, m1)}
    keys = [f"user:{i}" for i in range(200)]
    async with FloClient(m0.endpoint) as client:  # one seed: shard 1's keys are reached by the map alone
        slots = await client.cluster_slots()
        assert slots["shards"] == 2 and slots["leaders"] == {0: m0.endpoint, 1: m1.endpoint}
        versions = {k: (await client.kv.put(k, k.encode())).version for k in keys}
        for k in keys:
            got = await client.kv.get(k)
            assert got.value == k.encode() and got.version == versions[k]
        # A long-poll dequeue and a blocking stream read wait on the member that owns the name.
        q, s = named_on(1, "jobs-"), named_on(1, "events-")
        deq = asyncio.ensure_future(client.queue.dequeue(q, 1, DequeueOptions(block_ms=20000)))
        read = asyncio.ensure_future(client.stream.read(s, StreamReadOptions(tail=True, block_ms=20000)))
        await parked(m1.endpoint, 2)
        await client.queue.enqueue(q, b"job")
        await client.stream.append(s, b"event")
        assert [m.payload for m in (await deq).messages] == [b"job"]
        assert [r.payload for r in (await read).records] == [b"event"]
        # A stream worker (its own clients, a consumer group) on a stream the home member does not own.
        seen: list[bytes] = []

        async def handle(ctx) -> None:
            seen.append(ctx.payload)

        for i in range(5):
            await client.stream.append(s, b"w%d" % i)
        async with client.new_stream_worker(stream=s, group="g", handler=handle, block_ms=200) as worker:
            task = asyncio.ensure_future(worker.start())
            await wait_for(lambda: len(seen) == 6, what="the stream worker to handle 6 records")
            await wait_for(lambda: _no_pending(client, s), what="every record acknowledged")
        await asyncio.wait_for(task, 10)
        assert sorted(seen) == [b"event"] + [b"w%d" % i for i in range(5)]
        assert client._cluster.redirects == 0
        assert {p: await forwarded(p.endpoint) for p in (m0, m1)} == before  # nothing was forwarded
        assert len(client._cluster._conns) == 3  # m0, m1, and m1's long-poll connection
    import redis

    for i, p in enumerate((m0, m1)):
        local = redis.Redis(port=p.port)  # KEYS is not routed: what this member holds itself
        try:
            assert {k.decode() for k in local.keys("user:*")} == {k for k in keys if owner(k) == i}
        finally:
            local.close()
    # The same through routing=False: the member forwards what it does not own (the pre-routing path).
    async with FloClient(m0.endpoint, routing=False) as plain:
        assert (await plain.kv.get(named_on(1, "user:"))).value == named_on(1, "user:").encode()
        assert plain._cluster is None
    assert await forwarded(m0.endpoint) == before[m0] + 1


async def test_a_stale_map_follows_moved_and_is_refreshed(cluster):
    c = cluster(2)
    leaders = await c.ready()
    async with FloClient([leaders[0].endpoint, leaders[1].endpoint]) as client:
        await client.connect()
        router = client._cluster
        right = router.map.info
        # Swap the leaders: every request first reaches the member that does not own it.
        router.map = SlotMap({**right, "leaders": {0: leaders[1].endpoint, 1: leaders[0].endpoint}})
        keys = [f"k{i}" for i in range(100)]
        for k in keys:
            await client.kv.put(k, b"v")
        assert router.redirects >= 1
        await wait_for(lambda: router.map.leaders == {0: leaders[0].endpoint, 1: leaders[1].endpoint},
                       what="the map to be refreshed")
        seen = router.redirects
        assert [g.value for g in await client.kv.mget(keys)] == [b"v"] * 100  # split by the members
        for k in keys:
            assert (await client.kv.get(k)).value == b"v"
        assert router.redirects == seen  # a fresh map: no more MOVED


async def test_a_failover_refreshes_the_map_and_writes_go_on(cluster):
    c = cluster(2, 2)
    leaders = await c.ready()
    home = next(p for p in c.procs[1] if p is not leaders[1])  # a replica of shard 1 survives the kill
    keys = [f"fo:{i}" for i in range(60)]
    async with FloClient(home.endpoint) as client:
        for k in keys:
            await client.kv.put(k, b"before")
        old = leaders[0]
        old.kill()
        await wait_for(lambda: moved_on(c, old), timeout=30, what="every live member to know shard 0's new leader")
        new = await c.ready()
        assert new[0] is not old
        for k in keys:  # the map still names the dead leader: refreshed, then sent to the new one
            await client.kv.put(k, b"after")
        slots = await client.cluster_slots()
        assert slots["leaders"][0] == new[0].endpoint
        assert client._cluster.refreshes >= 1
        assert all(g.value == b"after" for g in await client.kv.mget(keys))


async def test_a_leader_that_stops_answering_is_routed_around(cluster):
    import os
    import signal

    from flo_core.errors import FloError

    c = cluster(2, 2)
    leaders = await c.ready()
    home = next(p for p in c.procs[1] if p is not leaders[1])
    k0 = named_on(0, "stop-")
    async with FloClient(home.endpoint, timeout_ms=1000) as client:
        await client.kv.put(k0, b"before")
        old = leaders[0]
        os.kill(old.proc.pid, signal.SIGSTOP)  # alive, its connections open, answering nothing
        try:
            await wait_for(lambda: moved_on(c, old), timeout=30, what="shard 0's new leader")

            async def put() -> bool:
                try:
                    await client.kv.put(k0, b"after")  # the first times out (its outcome unknown)
                    return True
                except FloError:
                    return False

            await wait_for(put, timeout=20, what="a write to reach the new leader")
            assert (await client.cluster_slots())["leaders"][0] != old.endpoint
        finally:
            os.kill(old.proc.pid, signal.SIGCONT)


async def test_a_slot_move_is_followed_by_moved(cluster):
    import subprocess
    import sys

    c = cluster(2)
    leaders = await c.ready()
    moving = range(8192 - 50, 8192)  # shard 0's highest 50 slots go to shard 1
    keys = [k for k in (f"mv{i}" for i in range(20000)) if key_slot(k) in moving][:20]
    async with FloClient(leaders[0].endpoint) as client:
        for k in keys:
            await client.kv.put(k, b"before")
        out = subprocess.run([sys.executable, "-m", "flo_server", "cluster", "move-slots", "--etcd", c.etcd.urls,
                              "--cluster", c.name, "--from", "0", "--to", "1", "--count", "50"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        before = {p: await forwarded(p.endpoint) for p in leaders.values()}
        for k in keys:  # the map says shard 0: MOVED to shard 1's leader, then the map is learned again
            await client.kv.put(k, b"after")
        assert client._cluster.redirects >= 1
        await wait_for(lambda: client._cluster.map.leader(moving[0]) == leaders[1].endpoint, what="the new map")
        assert [g.value for g in await client.kv.mget(keys)] == [b"after"] * len(keys)
        assert {p: await forwarded(p.endpoint) for p in leaders.values()} == before
    import redis

    held = redis.Redis(port=leaders[1].port)
    try:
        assert {k.decode() for k in held.keys("mv*")} == set(keys)  # on their new owner
    finally:
        held.close()


async def test_seeds_past_a_dead_first_one_connect(cluster):
    c = cluster(2)
    leaders = await c.ready()
    async with FloClient(f"{dead_endpoint()},{leaders[1].endpoint}") as client:
        assert client._cluster is not None and client._cluster.home == leaders[1].endpoint
        await client.kv.put(named_on(0, "seed-"), b"1")
        assert (await client.kv.get(named_on(0, "seed-"))).value == b"1"
        await client.reconnect()  # asks the seeds again
        assert client.is_connected and (await client.kv.get(named_on(0, "seed-"))).value == b"1"
    assert not client.is_connected
    with pytest.raises(ConnectionClosedError):  # closed: refused at once, not retried
        await client.kv.get("x")
    with pytest.raises(ConnectionClosedError):
        await FloClient([dead_endpoint(), dead_endpoint()]).connect()
    # Many first calls at once, a long poll among them: one of them finds the cluster, all are routed.
    fresh = FloClient(leaders[0].endpoint)
    try:
        keys = [f"many:{i}" for i in range(50)]
        poll = asyncio.ensure_future(fresh.queue.dequeue(named_on(1, "q-"), 1, DequeueOptions(block_ms=100)))
        await asyncio.gather(*(fresh.kv.put(k, b"1") for k in keys))
        assert (await poll).messages == [] and fresh._cluster.redirects == 0
    finally:
        await fresh.close()
    assert [await forwarded(p.endpoint) for p in leaders.values()] == [0, 0]


async def test_workers_and_writes_through_a_replica_seed(cluster):
    from flo_client.action_worker import ActionContext

    c = cluster(1, 2)
    leaders = await c.ready()
    replica = next(p for p in c.members if p is not leaders[0])
    async with FloClient(replica.endpoint) as client:
        await client.kv.put("via-replica", b"x")  # straight to the leader
        await client.action.register("double")
        worker = client.new_action_worker(block_ms=1000)

        @worker.action("double")
        async def double(ctx: ActionContext) -> bytes:
            return ctx.input() * 2

        task = asyncio.ensure_future(worker.start())
        try:
            run = await client.action.invoke("double", b"ab")
            done = await client.action.result(run.run_id, timeout_ms=20000)
            assert done.output == b"abab"
        finally:
            worker.stop()
            await asyncio.wait_for(task, 10)
    assert await forwarded(replica.endpoint) == 0


async def test_workers_reach_the_action_registry_straight(cluster):
    from flo_client.action_worker import ActionContext

    c = cluster(2)
    leaders = await c.ready()
    home = leaders[1 - (0 if ACTIONS_SLOT <= 8191 else 1)]  # the member that does not hold the registry
    async with FloClient(home.endpoint) as client:
        await client.action.register("upper")
        worker = client.new_action_worker(block_ms=1000)

        @worker.action("upper")
        async def upper(ctx: ActionContext) -> bytes:
            return ctx.input().upper()

        task = asyncio.ensure_future(worker.start())
        try:
            runs = [await client.action.invoke("upper", b"run%d" % i) for i in range(5)]
            for i, run in enumerate(runs):
                assert (await client.action.result(run.run_id, timeout_ms=20000)).output == b"RUN%d" % i
        finally:
            worker.stop()
            await asyncio.wait_for(task, 10)
    assert [await forwarded(p.endpoint) for p in leaders.values()] == [0, 0]


async def test_a_single_server_client_is_unchanged(server):
    async with FloClient(server) as client:
        await client.kv.put("k", b"v")
        assert client._cluster is None and client.is_connected
        with pytest.raises(BadRequestError):
            await client.cluster_slots()
    async with FloClient([dead_endpoint(), server]) as client:
        assert (await client.kv.get("k")).value == b"v" and client._cluster is None
    async with FloClient(server, routing=False) as client:
        assert (await client.kv.get("k")).value == b"v"
    with pytest.raises(BadRequestError):
        await FloClient(server, routing=True).connect()
    with pytest.raises(BadRequestError):
        FloClient("")

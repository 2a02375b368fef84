"""Two shards on real processes and a real etcd: every key on its owner, reachable through any member,
by flo_client, the public SDK, redis-py's RedisCluster and redis-cli -c."""

from __future__ import annotations

import asyncio
import shutil
import subprocess

import pytest

from flo_client import FloClient
from flo_core.slots import key_slot


@pytest.fixture
async def two_shards(cluster):
    c = cluster(2)
    await c.ready()
    return c.members


def owner(key: str) -> int:
    return 0 if key_slot(key) <= 8191 else 1  # the even split of two shards


async def test_keys_land_on_their_owner_and_are_reachable_through_any_member(two_shards):
    keys = [f"user:{i}" for i in range(200)]
    async with FloClient(two_shards[0].endpoint) as c:
        versions = {k: (await c.kv.put(k, k.encode())).version for k in keys}
        got = await c.kv.mget(keys)  # spans both shards: split by owner, answers in the order asked
        assert [g.value for g in got] == [k.encode() for k in keys]
        await c.queue.enqueue("jobs-b", b"x")
        await c.stream.append("events-b", b"e")
    import redis

    for i, p in enumerate(two_shards):
        local = redis.Redis(port=p.port)
        held = {k.decode() for k in local.keys("user:*")}  # KEYS is not routed: what this member holds itself
        assert held == {k for k in keys if owner(k) == i}, i
        local.close()
    async with FloClient(two_shards[1].endpoint) as c:
        for k in keys[:20]:
            g = await c.kv.get(k)
            assert g.value == k.encode() and g.version == versions[k]
        assert (await c.queue.peek("jobs-b", 5)).messages[0].payload == b"x"
    import flo  # the public SDK, which has no routing, through the member that owns none of these

    sdk = flo.FloClient(two_shards[1].endpoint)
    await sdk.connect()
    try:
        for k in keys[:40]:
            assert (await sdk.kv.get(k)).value == k.encode()
        await sdk.kv.put("sdk-key", b"via any member")
    finally:
        await sdk.close()
    async with FloClient(two_shards[0].endpoint) as c:
        assert (await c.kv.get("sdk-key")).value == b"via any member"


async def test_redis_cluster_clients_follow_the_slot_map(two_shards):
    from redis.cluster import ClusterNode, RedisCluster

    async with FloClient(two_shards[0].endpoint) as c:
        for i in range(50):
            await c.kv.put(f"k{i}", b"v%d" % i)
    rc = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", two_shards[1].port)], decode_responses=True)
    try:
        assert rc.keyslot("k1") == key_slot("k1")
        assert [rc.get(f"k{i}") for i in range(50)] == [f"v{i}" for i in range(50)]
        rc.set("from-redis-py", "1")
        assert len(rc.cluster_slots()) == 2
    finally:
        rc.close()
    async with FloClient(two_shards[1].endpoint) as c:
        assert (await c.kv.get("from-redis-py")).value == b"1"
    cli = shutil.which("redis-cli")
    if cli:
        # -c follows MOVED from a member that does not own the key
        k = next(f"k{i}" for i in range(50) if owner(f"k{i}") == 1)
        out = subprocess.run([cli, "-c", "-p", str(two_shards[0].port), "GET", k], capture_output=True, text=True,
                             timeout=30)
        assert out.stdout.strip() == "v" + k[1:], out
        moved = subprocess.run([cli, "-p", str(two_shards[0].port), "GET", k], capture_output=True, text=True,
                               timeout=30)
        assert moved.stdout.strip().startswith("MOVED") or "MOVED" in moved.stderr


async def test_an_mput_across_shards_is_refused_not_answered_in_part(two_shards):
    from flo_core.errors import FloError

    async with FloClient(two_shards[0].endpoint) as c:
        on0 = next(f"x{i}" for i in range(100) if owner(f"x{i}") == 0)
        on1 = next(f"x{i}" for i in range(100) if owner(f"x{i}") == 1)
        with pytest.raises(FloError, match="CROSSSLOT"):
            await c.kv.put_many([(on0, b"1"), (on1, b"2")])
        # a hash tag keeps keys of one mput on one shard
        await c.kv.put_many([("{t}a", b"1"), ("{t}b", b"2")])
        assert [g.value for g in await c.kv.mget(["{t}a", "{t}b"])] == [b"1", b"2"]


async def test_a_forwarded_long_poll_whose_client_went_away_takes_nothing(two_shards):
    """A dequeue parked at the owner through another member: when its client goes, so does the poll (on a
    connection of its own), so the next message is not leased to nobody."""
    from flo_client import DequeueOptions
    from tests.helpers import parked

    queue = next(f"lp{i}" for i in range(1000) if owner(f"lp{i}") == 0)
    via = FloClient(two_shards[1].endpoint, routing=False)  # one connection to the member that does not own it
    await via.connect()
    poll = asyncio.ensure_future(via.queue.dequeue(queue, 1, DequeueOptions(block_ms=60_000)))
    await parked(two_shards[0].endpoint, 1)  # parked at the owner
    await via.close()
    poll.cancel()
    await parked(two_shards[0].endpoint, 0)  # and gone with its client
    async with FloClient(two_shards[0].endpoint) as c:
        await c.queue.enqueue(queue, b"for a live consumer")
        got = await c.queue.dequeue(queue, 1, DequeueOptions(block_ms=5_000))
        assert [m.payload for m in got.messages] == [b"for a live consumer"]

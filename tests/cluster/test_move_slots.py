"""``flo-server cluster move-slots`` online, under load, on real processes and a real etcd: nothing acknowledged
is lost or duplicated, versions keep rising, every client finds the data at its new owner."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import redis

from flo_client import FloClient, StreamReadOptions
from flo_core.errors import FloError
from flo_core.slots import key_slot

COUNT = 100  # shard 0's highest slots of the even 2-shard split: 8092..8191
MOVING = range(8192 - COUNT, 8192)


def names(prefix: str, n: int) -> list[str]:
    """``n`` names whose slots are among the moving ones."""
    out, i = [], 0
    while len(out) < n:
        name = f"{prefix}{i}"
        if key_slot(name) in MOVING:
            out.append(name)
        i += 1
    return out


def move(c, src: int, dst: int, count: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flo_server", "cluster", "move-slots", "--etcd", c.etcd.urls,
                           "--cluster", c.name, "--from", str(src), "--to", str(dst), "--count", str(count)],
                          capture_output=True, text=True, timeout=120)


async def test_a_slot_move_under_load_loses_and_duplicates_nothing(cluster):
    c = cluster(2)
    leaders = await c.ready()
    keys, queue, stream = names("mk", 40), names("mq", 1)[0], names("ms", 1)[0]
    stay = next(f"stay{i}" for i in range(1000) if key_slot(f"stay{i}") < 8192 - COUNT)
    acked: dict[str, list[int]] = {k: [] for k in keys + [stay]}
    enqueued: set[bytes] = set()
    appended: set[bytes] = set()
    async with FloClient(leaders[0].endpoint) as a:
        for k in keys:
            acked[k].append((await a.kv.put(k, b"first")).version)
        for i in range(20):
            await a.queue.enqueue(queue, b"pre%d" % i)
            enqueued.add(b"pre%d" % i)
        await a.stream.append(stream, b"pre")
        appended.add(b"pre")
        await a.stream.group_create(stream, "g")
        leased = await a.queue.dequeue(queue, 3)  # leased when the queue moves: still leased at the new owner
        assert len(leased.messages) == 3
    rc = redis.Redis(port=leaders[0].port)
    rc.rpush(names("ml", 1)[0], b"a", b"b")
    rc.close()

    stop = asyncio.Event()
    errors: list[BaseException] = []

    async def writer(i: int, endpoint: str) -> None:
        n = 0
        async with FloClient(endpoint, timeout_ms=10_000) as w:
            while not stop.is_set():
                n += 1
                k = keys[(i * 7 + n) % len(keys)] if n % 5 else stay
                try:
                    acked[k].append((await w.kv.put(k, b"w%d-%d" % (i, n))).version)
                    tag = b"w%d-%d" % (i, n)
                    await w.queue.enqueue(queue, tag)
                    enqueued.add(tag)
                    await w.stream.append(stream, tag)
                    appended.add(tag)
                except FloError as e:  # a refusal is allowed only if the client can tell nothing ran
                    if e.ran != 0:
                        errors.append(e)

    writers = [asyncio.ensure_future(writer(i, p.endpoint)) for i, p in enumerate([leaders[0], leaders[1]] * 2)]
    from tests.helpers import wait_for

    await wait_for(lambda: len(enqueued) >= 100, timeout=20)  # the load runs when the move starts
    out = await asyncio.get_running_loop().run_in_executor(None, move, c, 0, 1, COUNT)
    assert out.returncode == 0, out.stderr + out.stdout
    assert f"moved {COUNT} slots" in out.stdout, out.stdout
    after = len(enqueued)
    await wait_for(lambda: len(enqueued) >= after + 100, timeout=20)  # and goes on after the flip, at the new owner
    stop.set()
    await asyncio.gather(*writers)
    assert not errors, errors[:3]

    # every acknowledged version of every key came in rising order, and the last one is what is stored
    for k, versions in acked.items():
        assert versions == sorted(versions) and len(set(versions)) == len(versions), k
    for member in (leaders[0], leaders[1]):
        async with FloClient(member.endpoint) as r:
            for k in keys:
                got = await r.kv.get(k)
                assert got is not None and got.version == acked[k][-1], k
            assert (await r.kv.get(stay)).version == acked[stay][-1]
            # history moved with the key
            assert len(await r.kv.history(keys[0], limit=50)) >= 2
    # the data lives on shard 1 now, and shard 0 keeps none of it
    r0, r1 = redis.Redis(port=leaders[0].port), redis.Redis(port=leaders[1].port)
    try:
        assert not {k.decode() for k in r0.keys("mk*")}
        assert {k.decode() for k in r1.keys("mk*")} == set(keys)
    finally:
        r0.close()
        r1.close()
    async with FloClient(leaders[1].endpoint) as b:
        info = (await b.server_info())["cluster"]
        assert info["role"] == "leader"
        # the queue: every acknowledged message exactly once (the three leased ones come back after their lease)
        got: list[bytes] = []
        for _ in range(200):
            res = await b.queue.dequeue(queue, 100)
            if not res.messages:
                break
            got += [m.payload for m in res.messages]
            await b.queue.ack(queue, [m.seq for m in res.messages])
        assert len(got) == len(set(got))
        assert set(got) | {m.payload for m in leased.messages} == enqueued
        # the stream: every acknowledged record once, the group still there
        payloads: list[bytes] = []
        start = None
        while True:
            recs = (await b.stream.read(stream, StreamReadOptions(start=start, count=1000))).records
            recs = [r for r in recs if start is None or r.id != start]
            if not recs:
                break
            payloads += [r.payload for r in recs]
            start = recs[-1].id
        assert len(payloads) == len(set(payloads)) and set(payloads) == appended
        assert await b.stream.group_info(stream, "g")
    # a Redis Cluster client follows the new map
    from redis.cluster import ClusterNode, RedisCluster

    rc = RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", leaders[0].port)])
    try:
        assert rc.lrange(names("ml", 1)[0], 0, -1) == [b"a", b"b"]
        assert rc.get(keys[0]) is not None
    finally:
        rc.close()


async def test_move_slots_refuses_what_it_cannot_do(cluster):
    c = cluster(2)
    await c.ready()
    out = await asyncio.get_running_loop().run_in_executor(None, move, c, 0, 0, 10)
    assert out.returncode != 0 and "another shard" in (out.stderr + out.stdout)
    out = await asyncio.get_running_loop().run_in_executor(None, move, c, 0, 1, 9000)
    assert out.returncode != 0 and "cannot move 9000" in (out.stderr + out.stdout)


async def test_versions_of_a_moved_key_rise_above_those_of_its_old_shard(cluster):
    c = cluster(2)
    leaders = await c.ready()
    k = names("rt", 1)[0]
    async with FloClient(leaders[1].endpoint) as cl:
        for _ in range(30):  # shard 0's log runs ahead of shard 1's
            v0 = (await cl.kv.put(k, b"on 0")).version
        out = await asyncio.get_running_loop().run_in_executor(None, move, c, 0, 1, COUNT)
        assert out.returncode == 0, out.stderr
        assert (await cl.kv.get(k)).version == v0
        v1 = (await cl.kv.put(k, b"on 1")).version
        assert v1 > v0
    async with FloClient(leaders[1].endpoint) as cl:
        assert (await cl.server_info())["last_lsn"] >= v1


async def test_a_long_poll_parked_on_a_moving_queue_is_answered_from_the_new_owner(cluster):
    from flo_client import DequeueOptions

    c = cluster(2)
    leaders = await c.ready()
    queue = names("pq", 1)[0]
    async with FloClient(leaders[0].endpoint) as a, FloClient(leaders[1].endpoint) as b:
        await a.queue.enqueue(queue, b"warm")
        await a.queue.ack(queue, [m.seq for m in (await a.queue.dequeue(queue, 1)).messages])
        polling = asyncio.ensure_future(a.queue.dequeue(queue, 1, DequeueOptions(block_ms=20_000)))
        from tests.helpers import parked

        await parked(leaders[0].endpoint, 1)
        out = await asyncio.get_running_loop().run_in_executor(None, move, c, 0, 1, COUNT)
        assert out.returncode == 0, out.stderr
        await b.queue.enqueue(queue, b"after the move")
        # had the poll stayed parked at the old owner it would see nothing and end empty at its deadline
        got = await asyncio.wait_for(polling, 30)
        assert [m.payload for m in got.messages] == [b"after the move"]


async def test_moved_slots_survive_kill9_of_the_new_owners_leader(cluster):
    """The import is in the new owner's log, replicated before the move completes (--sync-replicas 1):
    its replica takes over with the data, and the killed member recovers its log (LSNs with a gap)."""
    import signal

    from tests.helpers import wait_for

    c = cluster(2, 2, "--sync-replicas", "1", fsync="always")
    leaders = await c.ready()
    keys = names("dk", 30)
    async with FloClient(leaders[0].endpoint) as a:
        versions = {k: (await a.kv.put(k, k.encode())).version for k in keys}
    out = await asyncio.get_running_loop().run_in_executor(None, move, c, 0, 1, COUNT)
    assert out.returncode == 0, out.stderr
    killed = leaders[1]
    killed.proc.send_signal(signal.SIGKILL)
    killed.proc.wait(10)
    survivor = next(p for p in c.procs[1] if p is not killed)

    async def survivor_leads() -> bool:
        async with FloClient(survivor.endpoint, timeout_ms=1000, max_retries=1) as s:
            return (await s.server_info())["cluster"]["role"] == "leader"

    await wait_for(survivor_leads, timeout=20)
    async with FloClient(survivor.endpoint) as s:
        for k in keys:
            got = await s.kv.get(k)
            assert got is not None and (got.value, got.version) == (k.encode(), versions[k]), k
    killed.start()  # recovers its log, whose LSNs skip where the import came in, and rejoins as a replica
    await c.ready()
    async with FloClient(survivor.endpoint, timeout_ms=10_000) as s:
        v = (await s.kv.put(keys[0], b"after")).version
        assert v > max(versions.values())
    r = redis.Redis(port=killed.port)  # its own copy (KEYS is not routed)
    try:
        def held() -> bool:
            return {k.decode() for k in r.keys("dk*")} == set(keys)

        await wait_for(held, timeout=10)
    finally:
        r.close()

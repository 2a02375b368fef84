"""One shard, two real flo-server processes and a real etcd: replication, failover, fencing.

Every acknowledged write is checked after the leader is killed (``--sync-replicas 1 --fsync always``).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from flo_client import EnqueueOptions, FloClient, StreamReadOptions
from flo_core.errors import ConnectionClosedError, FloError
from tests.helpers import ServerProc

LEASE_MS = 2000


def create(etcd, shards: int = 1) -> str:
    name = "r" + uuid.uuid4().hex[:8]
    subprocess.run([sys.executable, "-m", "flo_server", "cluster", "create", "--etcd", etcd.urls, "--cluster", name,
                    "--shards", str(shards)], check=True, capture_output=True, timeout=60)
    return name


def member(tmp_path, etcd, cluster: str, node: str, *extra: str, sync: int = 1) -> ServerProc:
    return ServerProc(tmp_path / node, "--etcd", etcd.urls, "--cluster", cluster, "--shard", "0", "--node", node,
                      "--lease-ms", str(LEASE_MS), "--sync-replicas", str(sync), *extra, fsync="always")


async def role(p: ServerProc) -> str | None:
    try:
        async with FloClient(p.endpoint, timeout_ms=1000, max_retries=1) as c:
            return (await c.server_info())["cluster"]["role"]
    except (OSError, FloError, asyncio.TimeoutError):
        return None


async def leader_of(procs: list[ServerProc], timeout: float = 15.0) -> ServerProc:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.proc is not None and p.proc.poll() is None and await role(p) == "leader":
                return p
        await asyncio.sleep(0.05)
    raise AssertionError("no leader:\n" + "\n".join("\n".join(list(p.output)[-15:]) for p in procs))


async def caught_up(leader: ServerProc, replica: ServerProc, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    la = lb = None
    while time.monotonic() < deadline:
        try:
            async with FloClient(leader.endpoint) as a, FloClient(replica.endpoint) as b:
                la, lb = (await a.server_info())["last_lsn"], (await b.server_info())["last_lsn"]
        except ConnectionClosedError:  # a replica that resynchronises from a snapshot drops its clients
            la = lb = None
        if lb is not None and lb >= la:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"replica at {lb}, leader at {la}:\n" + "\n".join(list(replica.output)[-25:]))


async def replicas_fetching(leader: ServerProc, n: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        async with FloClient(leader.endpoint) as c:
            have = len((await c.server_info())["cluster"]["replicas"])
        if have >= n:
            return
        assert time.monotonic() < deadline, f"{have} replicas fetching, wanted {n}"
        await asyncio.sleep(0.05)


@pytest.fixture
def pair(tmp_path, etcd):
    """Two members with --sync-replicas 0: a lone survivor may take writes."""
    cluster = create(etcd)
    procs = [member(tmp_path, etcd, cluster, n, sync=0).start() for n in ("a", "b")]
    yield procs
    for p in procs:
        p.stop()


@pytest.fixture
def trio(tmp_path, etcd):
    """Three members with --sync-replicas 1: after a leader dies one replica still acknowledges."""
    cluster = create(etcd)
    procs = [member(tmp_path, etcd, cluster, n, sync=1).start() for n in ("a", "b", "c")]
    yield procs
    for p in procs:
        p.stop()


async def test_writes_reach_the_replica_which_refuses_writes(pair):
    leader = await leader_of(pair)
    replica = next(p for p in pair if p is not leader)
    async with FloClient(leader.endpoint) as c:
        versions = {f"k{i}": (await c.kv.put(f"k{i}", b"v%d" % i)).version for i in range(100)}
        await c.queue.enqueue("jobs", b"job-1", EnqueueOptions(priority=3))
        sid = await c.stream.append("events", b"e1")
    await caught_up(leader, replica)
    async with FloClient(replica.endpoint, routing=False) as r:  # through the replica, which forwards
        for k, v in versions.items():
            got = await r.kv.get(k)
            assert got is not None and got.version == v and got.value == b"v" + k[1:].encode()
        peek = await r.queue.peek("jobs", 10)
        assert [m.payload for m in peek.messages] == [b"job-1"]
        assert [rec.payload for rec in (await r.stream.read("events")).records] == [b"e1"]
        # A write through the replica is forwarded to the leader, which logs it (and so the replica too).
        v = (await r.kv.put("via-replica", b"yes")).version
    async with FloClient(leader.endpoint) as c:
        assert (await c.kv.get("via-replica")).version == v
    import flo  # the public SDK, which knows nothing of leaders, writes through the replica too

    sdk = flo.FloClient(replica.endpoint)
    await sdk.connect()
    try:
        await sdk.kv.put("sdk", b"x")
    finally:
        await sdk.close()
    await caught_up(leader, replica)
    import redis

    local = redis.Redis(port=replica.port)  # KEYS is not routed: the replica's own copy
    try:
        deadline = time.monotonic() + 10
        while not {b"via-replica", b"sdk"} <= set(local.keys("*")):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
    finally:
        local.close()
    assert sid


async def test_kill9_of_the_leader_loses_no_acknowledged_write(trio):
    leader = await leader_of(trio)
    await replicas_fetching(leader, 2)
    others = [p for p in trio if p is not leader]
    acked: dict[str, int] = {}
    enq: list[bytes] = []
    appended: list[bytes] = []
    stop = asyncio.Event()

    async def writer(w: int) -> None:
        i = 0
        async with FloClient(leader.endpoint, timeout_ms=3000, max_retries=1) as c:
            while not stop.is_set():
                key = f"w{w}-{i}"
                try:
                    acked[key] = (await c.kv.put(key, key.encode())).version
                    if i % 5 == 0:
                        await c.queue.enqueue("q", key.encode())
                        enq.append(key.encode())
                    if i % 7 == 0:
                        await c.stream.append("s", key.encode())
                        appended.append(key.encode())
                except (OSError, FloError, asyncio.TimeoutError):
                    return  # the leader is gone: outcome unknown, not acknowledged
                i += 1

    tasks = [asyncio.ensure_future(writer(w)) for w in range(4)]
    while len(acked) < 300:
        await asyncio.sleep(0.01)
    leader.kill()
    killed_at = time.monotonic()
    await asyncio.wait_for(asyncio.gather(*tasks), 15)
    # A replica takes over within about twice the lease and serves a write (the other acknowledges it).
    replica = await leader_of(others, timeout=2 * LEASE_MS / 1000 + 3)
    deadline = killed_at + 2 * LEASE_MS / 1000 + 3
    while True:
        try:
            async with FloClient(replica.endpoint, timeout_ms=1000, max_retries=1) as c:
                await c.kv.put("after-failover", b"1")
            break
        except FloError:
            assert time.monotonic() < deadline, "the replica did not take over:\n" + "\n".join(replica.output)
            await asyncio.sleep(0.05)
    took = time.monotonic() - killed_at
    assert took < 2 * LEASE_MS / 1000 + 1, took
    async with FloClient(replica.endpoint) as c:
        for key, version in acked.items():
            got = await c.kv.get(key)
            assert got is not None and got.version >= version, (key, version, got)
        peeked = await c.queue.peek("q", 1000)
        assert set(enq) <= {m.payload for m in peeked.messages}
        assert set(appended) <= {r.payload for r in (await c.stream.read("s", StreamReadOptions(count=1000))).records}
        newer = (await c.kv.put(next(iter(acked)), b"again")).version
        assert newer > max(acked.values())  # versions keep rising across the failover
    stop.set()
    # The old leader comes back as a replica of the new one and converges.
    leader.start()
    deadline = time.monotonic() + 15
    while await role(leader) != "replica":  # it rejoins as a replica, never as a second leader
        assert time.monotonic() < deadline and await role(leader) != "leader"
        await asyncio.sleep(0.05)
    assert await leader_of(trio) is replica
    await caught_up(replica, leader)
    async with FloClient(leader.endpoint) as old:
        assert (await old.kv.get("after-failover")).value == b"1"


async def test_a_stopped_leader_is_fenced_and_rejoins_as_a_replica(pair):
    leader = await leader_of(pair)
    other = next(p for p in pair if p is not leader)
    async with FloClient(leader.endpoint) as c:
        await c.kv.put("before", b"1")
    await caught_up(leader, other)
    os.kill(leader.proc.pid, signal.SIGSTOP)
    try:
        assert await leader_of([other], timeout=2 * LEASE_MS / 1000 + 3) is other
        async with FloClient(other.endpoint) as c:
            await c.kv.put("during", b"new leader")
    finally:
        os.kill(leader.proc.pid, signal.SIGCONT)
    # Resumed past its lease, it must not take a write as leader (no split brain): a write through it is
    # refused while it learns who leads, or forwarded to the new leader. Either way its own log never
    # holds a record the new leader lacks, so it rejoins without a resynchronisation.
    outcomes = []
    for _ in range(20):
        try:
            async with FloClient(leader.endpoint, timeout_ms=3000, max_retries=1) as c:
                await c.kv.put("split-brain", b"x")
                outcomes.append("forwarded")
                break
        except FloError as e:
            assert any(w in str(e) for w in ("writes stopped", "not the leader", "CLUSTERDOWN", "connection")), e
            outcomes.append("refused")
            await asyncio.sleep(0.1)
    deadline = time.monotonic() + 15
    while True:
        async with FloClient(leader.endpoint) as c:
            info = await c.server_info()
        if info["cluster"]["role"] == "replica" and info["last_lsn"] >= 1:
            try:
                await caught_up(other, leader, timeout=1)
                break
            except AssertionError:
                pass
        assert time.monotonic() < deadline, "\n".join(list(leader.output)[-30:])
        await asyncio.sleep(0.05)
    import redis

    for p in pair:
        local = redis.Redis(port=p.port)  # KEYS is not routed: each member's own state
        try:
            held = set(local.keys("*"))
            assert {b"during", b"before"} <= held
            assert (b"split-brain" in held) == (outcomes[-1] == "forwarded")
        finally:
            local.close()
    assert "resynchronis" not in "\n".join(leader.output)

async def test_a_member_with_writes_the_new_leader_lacks_resyncs(pair):
    """--sync-replicas 0 promises no more: a write only the old leader had is gone after failover,
    and the old leader, back, drops it too (full resync) instead of keeping a history of its own."""
    leader = await leader_of(pair)
    other = next(p for p in pair if p is not leader)
    async with FloClient(leader.endpoint) as c:
        await c.kv.put("both", b"1")
    await caught_up(leader, other)
    other.stop()
    async with FloClient(leader.endpoint) as c:
        await c.kv.put("only-old", b"1")  # acknowledged with no replica (sync 0)
    leader.kill()
    other.start()
    assert await leader_of([other], timeout=2 * LEASE_MS / 1000 + 5) is other
    async with FloClient(other.endpoint) as c:
        await c.kv.put("new", b"1")
    leader.start()
    import redis

    local = redis.Redis(port=leader.port)  # KEYS is not routed: the old leader's own state
    deadline = time.monotonic() + 15
    try:
        while b"new" not in set(local.keys("*")):
            assert time.monotonic() < deadline, "\n".join(list(leader.output)[-30:])
            await asyncio.sleep(0.05)
        held = set(local.keys("*"))
        assert b"only-old" not in held and b"both" in held
    finally:
        local.close()
    assert "resynchronis" in "\n".join(leader.output)
    async with FloClient(leader.endpoint) as c:
        info = await c.server_info()
    assert info["cluster"]["role"] == "replica"


async def test_a_replica_catches_up_from_the_leaders_segment_files(pair):
    """Records older than the leader's in-memory backlog (here: written before it restarted) come from its log."""
    leader = await leader_of(pair)
    other = next(p for p in pair if p is not leader)
    async with FloClient(leader.endpoint) as c:
        for i in range(50):
            await c.kv.put(f"early{i}", b"x" * 100)
    await caught_up(leader, other)
    other.stop()
    async with FloClient(leader.endpoint) as c:
        for i in range(50):
            await c.kv.put(f"missed{i}", b"y" * 100)  # on disk only, once the leader restarts
    leader.stop()
    leader.start()
    assert await leader_of([leader]) is leader
    async with FloClient(leader.endpoint) as c:
        await c.kv.put("late", b"z")
    other.start()
    await caught_up(leader, other)
    async with FloClient(other.endpoint) as c:
        assert all([await c.kv.get(f"missed{i}") for i in range(50)]) and (await c.kv.get("late")).value == b"z"


async def test_cluster_status_shows_each_replicas_lag(cluster):
    import json

    from tests.helpers import wait_for

    c = cluster(1, 2)
    leaders = await c.ready()
    async with FloClient(leaders[0].endpoint) as cl:
        for i in range(50):
            await cl.kv.put(f"s{i}", b"x")
    cmd = [sys.executable, "-m", "flo_server", "cluster", "status", "--etcd", c.etcd.urls, "--cluster", c.name]

    def replica_caught_up() -> bool:
        doc = json.loads(subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=60).stdout)
        (replica,) = [m for n, m in doc["shards"][0]["members"].items() if n != doc["shards"][0]["leader"]["node"]]
        return replica["lag_records"] == 0 and 0 <= replica["lag_ms"] < 60_000

    await wait_for(replica_caught_up, timeout=15)  # member records are refreshed every half second
    text = subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    assert "lag 0 records, last fetch" in text, text

"""The cluster when etcd itself fails: one member of three lost, then all of them."""

from __future__ import annotations

import asyncio
import time

import pytest

from flo_client import FloClient
from flo_core.errors import ConnectionClosedError, FloError
from tests.cluster.test_replication import LEASE_MS, caught_up, create, leader_of, member


@pytest.fixture
def pair3(tmp_path, etcd3):
    cluster = create(etcd3)
    procs = [member(tmp_path, etcd3, cluster, n, sync=0).start() for n in ("a", "b")]
    yield etcd3, procs
    for p in procs:
        p.stop()


async def test_one_etcd_member_of_three_lost_the_cluster_goes_on(pair3):
    etcd, procs = pair3
    leader = await leader_of(procs)
    other = next(p for p in procs if p is not leader)
    etcd.kill(0)  # the first address every member's client tried
    t0 = time.monotonic()
    async with FloClient(leader.endpoint) as c:
        while time.monotonic() - t0 < 2.5 * LEASE_MS / 1000:  # past a lease: the leader kept it through the others
            await c.kv.put("k", b"v")
            await asyncio.sleep(0.1)
    assert await leader_of(procs) is leader
    await caught_up(leader, other)
    leader.kill()  # and a failover still works with two etcd members
    assert await leader_of([other], timeout=2 * LEASE_MS / 1000 + 5) is other
    async with FloClient(other.endpoint) as c:
        await c.kv.put("after", b"1")


async def test_etcd_down_a_leader_serves_until_its_lease_ends_then_refuses_clearly(pair3):
    etcd, procs = pair3
    leader = await leader_of(procs)
    for i in range(3):
        etcd.kill(i)
    down = time.monotonic()
    served = 0
    async with FloClient(leader.endpoint, timeout_ms=2000, max_retries=1) as c:
        while True:
            try:
                await c.kv.put("still", b"1")  # within the lease: still the leader
                served += 1
            except ConnectionClosedError:
                break  # a put in flight as it saw its leadership gone: it closed its clients (outcome unknown)
            except FloError as e:
                assert any(w in str(e) for w in ("writes stopped", "not the leader", "CLUSTERDOWN")), e
                break
            assert time.monotonic() - down < LEASE_MS / 1000 + 2, "writes went on past the lease without etcd"
            await asyncio.sleep(0.05)
        assert served >= 1  # it did not stop before its lease could have ended
    # Reads go on. A deposed leader closes its clients' connections once it sees its leadership gone (their
    # in-flight writes have an unknown outcome), up to a check interval after its writes stopped: the read
    # may meet that close, so it is made with retries (KV_GET is resent on a new connection).
    async with FloClient(leader.endpoint, timeout_ms=2000) as c:
        assert (await c.kv.get("still")).value == b"1"
    # etcd back: a leader again, writes again.
    for i in range(3):
        etcd.start_member(i)
    etcd.wait_healthy()
    leader = await leader_of(procs, timeout=20)
    async with FloClient(leader.endpoint) as c:
        await c.kv.put("back", b"1")

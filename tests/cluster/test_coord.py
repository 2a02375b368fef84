"""flo_server.cluster.coord against a real etcd: the slot map, leader election, fencing epochs, lease loss."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from flo_core.slots import SLOTS
from flo_server.cluster.coord import ClusterError, Coordinator, SlotMap


def name() -> str:
    return "t" + uuid.uuid4().hex[:8]


def test_slot_map_split_and_move():
    m = SlotMap.even(3)
    assert sum(m.count_of(s) for s in range(3)) == SLOTS
    assert [m.owner(s) for s in (0, 5460, 5461, 10922, 10923, 16383)] == [0, 0, 1, 1, 2, 2]
    moved, slots = m.move(0, 2, 100)
    assert slots == list(range(5361, 5461)) and moved.count_of(0) == 5361 and moved.count_of(2) == 5461 + 100
    assert all(moved.owner(s) == 2 for s in slots) and moved.owner(5360) == 0
    assert SlotMap.from_json(moved.to_json()) == moved
    with pytest.raises(ClusterError):
        m.move(0, 0, 1)
    with pytest.raises(ClusterError):
        m.move(0, 1, 5462)


async def test_create_once_and_cas_the_slot_map(etcd):
    async with Coordinator(etcd.urls, name()) as c:
        with pytest.raises(ClusterError, match="no cluster"):
            await c.slot_map()
        await c.create(3)
        with pytest.raises(ClusterError, match="exists"):
            await c.create(2)
        m, rev = await c.slot_map()
        new, _ = m.move(1, 0, 10)
        assert await c.replace_slot_map(new, rev)
        assert not await c.replace_slot_map(m, rev)  # a stale revision loses: moves never interleave
        assert (await c.slot_map())[0] == new


async def test_one_leader_and_rising_epochs(etcd):
    async with Coordinator(etcd.urls, name()) as a, Coordinator(etcd.urls, a.cluster) as b:
        await a.create(1)
        la = await a.campaign(0, "na", "127.0.0.1:1", lease_ms=2000)
        contender = asyncio.ensure_future(b.campaign(0, "nb", "127.0.0.1:2", lease_ms=2000))
        await asyncio.sleep(0.5)
        assert not contender.done() and la.valid()
        assert (await a.leader_of(0))[:2] == ("na", "127.0.0.1:1")
        t0 = time.monotonic()
        await la.resign()
        lb = await asyncio.wait_for(contender, 5)
        assert time.monotonic() - t0 < 1.5  # a resignation hands over at once, not after the TTL
        assert lb.epoch > la.epoch and not la.valid() and lb.valid()
        assert await b.is_leader(0, lb.epoch) and not await b.is_leader(0, la.epoch)
        await lb.resign()


async def test_a_paused_leader_loses_at_its_deadline_and_is_replaced(etcd):
    async with Coordinator(etcd.urls, name()) as a, Coordinator(etcd.urls, a.cluster) as b:
        await a.create(1)
        la = await a.campaign(0, "na", "127.0.0.1:1", lease_ms=2000)
        la._task.cancel()  # as if the process were stopped: no keep-alive reaches etcd
        t0 = time.monotonic()
        lb = await asyncio.wait_for(b.campaign(0, "nb", "127.0.0.1:2", lease_ms=2000), 10)
        took = time.monotonic() - t0
        assert took < 2 * 2.0 + 1  # replaced within about 2 x the lease TTL
        assert la.deadline <= time.monotonic() and not la.valid()  # the old leader already counts itself out
        assert lb.epoch > la.epoch
        await lb.resign()


async def test_leader_keeps_its_lease_while_refreshing(etcd):
    async with Coordinator(etcd.urls, name()) as a:
        await a.create(1)
        la = await a.campaign(0, "na", "127.0.0.1:1", lease_ms=1000)
        await asyncio.sleep(2.5)  # well past one TTL: the keep-alive must have moved the deadline
        assert la.valid() and await a.is_leader(0, la.epoch)
        await la.resign()


def test_admin_create_and_status(etcd):
    import json
    import subprocess
    import sys

    cl = name()
    cmd = [sys.executable, "-m", "flo_server", "cluster"]
    out = subprocess.run([*cmd, "create", "--etcd", etcd.urls, "--cluster", cl, "--shards", "3"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["shard 0: slots 0-5460", "shard 1: slots 5461-10922",
                                       "shard 2: slots 10923-16383"]
    again = subprocess.run([*cmd, "create", "--etcd", etcd.urls, "--cluster", cl, "--shards", "3"],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 1 and "exists already" in again.stderr and "Traceback" not in again.stderr
    st = subprocess.run([*cmd, "status", "--etcd", etcd.urls, "--cluster", cl, "--json"],
                        capture_output=True, text=True, timeout=60)
    doc = json.loads(st.stdout)
    assert [s["slot_count"] for s in doc["shards"]] == [5461, 5462, 5461]
    assert all(s["leader"] is None for s in doc["shards"])

"""flamepy on a cluster (issue 17): every member runs its executor manager (a Flame node named after the
member), a session's records and task queue live on the shard of its id (the ``{hash tag}`` layout),
and clients, managers and service processes reach every key through whichever member they talk to."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import flamepy
from flamepy.core import records as R
from flamepy.core.client import set_default_connection
from flo_core.slots import SLOTS, key_slot
from tests.helpers import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

BIN = Path(sys.executable).parent
ECHO = '''\
import flamepy

class Echo(flamepy.FlameService):
    def on_task_invoke(self, ctx):
        return b"echo:" + ctx.input

flamepy.run(Echo())
'''
# Two cores shared by several agents: one service process per manager and session is plenty.
ENV = {"FLAME_EXECUTOR_CPU": "2", "FLAME_STARTUP_TIMEOUT": "60"}


def _sid_on_shard(shard: int, shards: int, prefix: str) -> str:
    """A session id whose slot ``cluster create`` gave to ``shard`` (slots are split evenly, in order)."""
    per = SLOTS // shards
    for i in range(10_000):
        sid = f"{prefix}-{i}"
        if key_slot(R.k_ssn(sid), R.NAMESPACE) // per == shard:
            return sid
    raise AssertionError("no session id found")


def _register(conn, app_dir: Path, name: str) -> None:
    (app_dir / "echo.py").write_text(ECHO)
    conn.register_application(name, {"command": sys.executable, "arguments": ["echo.py"],
                                     "working_directory": str(app_dir)})


def _flmctl(endpoint: str, home: Path, *args: str) -> str:
    (home / ".flame").mkdir(parents=True, exist_ok=True)
    doc = {"current-context": "c", "contexts": [{"name": "c", "cluster": {"endpoint": f"flo://{endpoint}"}}]}
    (home / ".flame" / "flame.yaml").write_text(yaml.safe_dump(doc))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAME_")}
    out = subprocess.run([str(BIN / "flmctl"), *args], capture_output=True, text=True, timeout=60,
                         env=dict(env, HOME=str(home)))
    assert out.returncode == 0, out.stderr
    return out.stdout


def _wait_for_managers(c, names: set) -> None:
    for p in c.members:
        wait_until(lambda p=p: f"executor manager {p.args[p.args.index('--node') + 1]} serving" in p.log(),
                   timeout=60)
    conn = flamepy.connect(c.members[0].endpoint)
    try:
        wait_until(lambda: {n.metadata.name for n in conn.list_nodes()} >= names, timeout=30)
    finally:
        conn.close()


async def test_one_shard_two_members_runs_sessions_through_the_replica(cluster, tmp_path):
    """The replica's client, manager and service processes all work through forwarding to the leader."""
    c = cluster(1, 2, executor=True, env=ENV)
    leaders = await c.ready()
    replica = next(p for p in c.members if p is not leaders[0])
    _wait_for_managers(c, {"s0m0", "s0m1"})
    conn = flamepy.connect(replica.endpoint)
    try:
        assert conn.store.spans_shards is False  # one shard: one connection's order holds for all keys
        _register(conn, tmp_path, "one-shard-echo")
        ssn = conn.create_session(flamepy.SessionAttributes(application="one-shard-echo", id="one-shard-s"))
        futures = ssn.run_many([str(i).encode() for i in range(60)])
        assert [f.result(timeout=120) for f in futures] == [b"echo:%d" % i for i in range(60)]
        assert "one-shard-s" in {s.id for s in conn.list_sessions()}
        # both managers took part: the replica's reserved and started instances through forwarding too
        assert {e.spec.node for e in conn.list_executors() if e.status.session_id == "one-shard-s"} \
            == {"s0m0", "s0m1"}
        ssn.close()
    finally:
        conn.close()


async def test_two_shards_run_two_sessions_each_on_its_shard(cluster, tmp_path):
    """200 tasks over two sessions whose ids hash to different shards, each created through another
    member; both are listed by flamepy and ``flmctl list -s`` through either member."""
    c = cluster(2, 1, executor=True, env=ENV)
    leaders = await c.ready()
    _wait_for_managers(c, {"s0m0", "s1m0"})
    sids = [_sid_on_shard(0, 2, "shard0"), _sid_on_shard(1, 2, "shard1")]
    for s, sid in enumerate(sids):  # each session's keys, queue and blobs land on one shard: its own
        keys = [R.k_ssn(sid), R.k_task(sid, 1), R.k_cnt(sid, "pending"), R.q_tasks(sid),
                R.k_blob(R.new_blob_id(sid), 0)]
        assert {key_slot(k, R.NAMESPACE) // (SLOTS // 2) for k in keys} == {s}
    conns = [flamepy.connect(leaders[s].endpoint) for s in (0, 1)]
    try:
        assert all(conn.store.spans_shards for conn in conns)
        _register(conns[0], tmp_path, "two-shard-echo")
        sessions = [conns[s].create_session(flamepy.SessionAttributes(application="two-shard-echo", id=sid))
                    for s, sid in enumerate(sids)]
        big = b"x" * (R.INLINE_MAX + 10)  # an input stored as blob chunks, on its session's shard
        inputs = [[b"%d-%d" % (s, i) for i in range(99)] + [big] for s in (0, 1)]
        futures = [ssn.run_many(inp) for ssn, inp in zip(sessions, inputs)]
        for fs, inp in zip(futures, inputs):
            assert [f.result(timeout=180) for f in fs] == [b"echo:" + i for i in inp]
        for conn in conns:
            listed = {s.id: s for s in conn.list_sessions()}
            assert set(sids) <= set(listed)
            assert all(listed[sid].succeed == 100 for sid in sids)
        set_default_connection(conns[1])
        assert set(sids) <= {s.id for s in flamepy.list_sessions()}
        nodes = {n.metadata.name for n in conns[1].list_nodes()}
        assert {"s0m0", "s1m0"} <= nodes
        for p in c.members:
            out = _flmctl(p.endpoint, tmp_path / f"home-{p.port}", "list", "-s")
            assert all(sid in out for sid in sids), out
        for ssn in sessions:
            ssn.close()
    finally:
        for conn in conns:
            conn.close()


SLEEPY = '''\
import time
import flamepy

class Sleepy(flamepy.FlameService):
    def on_task_invoke(self, ctx):
        time.sleep(2)
        return b"done:" + ctx.input

flamepy.run(Sleepy())
'''


async def test_kill_9_of_a_member_fails_what_its_instances_ran_and_the_rest_completes(cluster, tmp_path):
    """A member killed with its manager and instances: once its node's heartbeat lapses, a surviving
    manager fails the tasks those instances were running (as when an instance exits), the chunks they
    held run elsewhere once their leases lapse, and the session closes (nothing is left RUNNING)."""
    c = cluster(1, 2, executor=True, env=ENV)
    leaders = await c.ready()
    leader = leaders[0]
    victim = next(p for p in c.members if p is not leader)
    victim_node = victim.args[victim.args.index("--node") + 1]
    _wait_for_managers(c, {"s0m0", "s0m1"})
    (tmp_path / "sleepy.py").write_text(SLEEPY)
    conn = flamepy.connect(leader.endpoint)
    try:
        conn.register_application("kill-sleepy", {"command": sys.executable, "arguments": ["sleepy.py"],
                                                  "working_directory": str(tmp_path)})
        ssn = conn.create_session(flamepy.SessionAttributes(application="kill-sleepy", id="kill-s"))
        futures = [ssn.run(b"%d" % i) for i in range(16)]  # one queue message each: spread over instances

        def running_on_victim() -> bool:
            recs = conn._call(conn.store.mget([R.k_task(ssn.id, t) for t in range(1, 17)]))
            return any(R.unpack(g[0])["state"] == int(flamepy.TaskState.RUNNING)
                       and (R.unpack(g[0]).get("instance") or "").startswith(victim_node + "-") for g in recs if g)
        wait_until(running_on_victim, timeout=90)
        victim.kill()
        outcomes = []
        for f in futures:
            try:
                outcomes.append(f.result(timeout=180))
            except flamepy.FlameError as exc:
                outcomes.append(exc)
        lost = [o for o in outcomes if isinstance(o, Exception)]
        assert lost and all("was lost" in str(o) and victim_node in str(o) for o in lost), lost
        assert all(o == b"done:%d" % i for i, o in enumerate(outcomes) if not isinstance(o, Exception))
        wait_until(lambda: conn.get_session("kill-s").running == 0, timeout=30)
        ssn.close()
    finally:
        conn.close()



async def test_members_on_one_machine_split_its_capacity(cluster):
    """Managers whose capacity is read from the machine (no FLAME_EXECUTOR_CPU/MEMORY) and that share a
    host offer half of it each: two members on one machine are two Flame nodes, not two machines."""
    c = cluster(1, 2, executor=True, env={"FLAME_STARTUP_TIMEOUT": "60"})
    await c.ready()
    _wait_for_managers(c, {"s0m0", "s0m1"})
    machine_mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    want = (max(1, (os.cpu_count() or 1) // 2), machine_mem // 2)
    conn = flamepy.connect(c.members[0].endpoint)
    try:
        def shares():
            return {n.metadata.name: (n.status.capacity.cpu, n.status.capacity.memory) for n in conn.list_nodes()}
        wait_until(lambda: shares() == {"s0m0": want, "s0m1": want}, timeout=30)  # by their next heartbeats
    finally:
        conn.close()

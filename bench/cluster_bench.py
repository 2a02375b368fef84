"""The cluster group of the bench (issue 17): shards, synchronous replicas and the failover time.

``make bench-cluster`` (``python -m bench --only '^cluster/'``) starts its own etcd
(:class:`flo_server.cluster.local.LocalEtcd`) and flo-server members on 127.0.0.1, each a child
process stopped by its pid, and measures three things, each with an id for ``--only``:

* ``cluster/shards`` - KV SET and GET (Flo wire v2, 50 connections x K=16, 100 B values) against one
  flo-server that is no cluster member (with its C fast paths, and without: ``FLO_NO_FASTPATH=1``) and against
  clusters of 1, 2 and 3 shards (one member each).
  The load generator (this module's command line) asks a member for the slot map (CLUSTER_SLOTS),
  opens its connections to every shard's leader, marks them as routing by themselves (so a misrouted
  key is refused MOVED, never forwarded quietly) and sends each key to its owner. Ratios per
  repetition, then the median: 2 and 3 shards over 1, and each over the plain flo-server (what being a
  cluster member costs: the router, C fast paths off) and over the plain one without fast paths (the router's
  own share).
* ``cluster/sync`` - SET on 1 shard x 2 members, ``--sync-replicas 1`` over ``0``, with ``--fsync always``
  and ``everysec``.
* ``cluster/failover`` - 1 shard x 3 members, ``--sync-replicas 1 --fsync always``, ``--lease-ms`` 1000
  and 3000: two writers per member write steadily, the leader is killed (-9), and the figure is the time
  from the kill to the first write *sent after it* that a survivor answered OK; median of N runs, in ms
  and as a multiple of the lease. Three members, not two: with two, ``--sync-replicas 1`` leaves the
  lone survivor refusing writes (NOREPLICAS) until the dead member is back - that is the promise.

Nothing is pinned in this group: on two cores, 3 shards are 3 server processes, the load generator and
etcd sharing both, and the report says so beside every row.

The load generator, on its own (one process, every member's pid for the CPU figure)::

    python -m bench.cluster_bench --port 9100 -w kv.set -c 50 -k 16 -n 200000 --server-pid 11,12,13
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from flo_core.body import bare_request
from flo_core.errors import FloError
from flo_core.slots import key_slot
from flo_core.spec import Op

from .loadgen import LOOPBACK, FloLoad, LoadSpec, _Auth, _State, build_frames, pct, proc_cpu_seconds
from .servers import HOST, REPO, Fleet, ServerProc
from .workloads import WORKLOADS, kv_put

SHARDS_ID, SYNC_ID, FAILOVER_ID = "cluster/shards", "cluster/sync", "cluster/failover"
IDS = (SHARDS_ID, SYNC_ID, FAILOVER_ID)
PLAIN = "flo-server"  # the non-cluster baseline of cluster/shards
SLOW = "flo-server, no fast path"  # the same on the Python request loop (FLO_NO_FASTPATH=1), as cluster members are
CONNS, WINDOW, VALUE = 50, 16, 100


@dataclass(frozen=True)
class Plan:
    """Every count and time bound of the group."""

    reps: int
    max_seconds: float  # cap of each load
    total: int  # request cap of each load (the time cap is what normally ends it)
    shards: tuple[int, ...] = (1, 2, 3)
    workloads: tuple[str, ...] = ("kv.set", "kv.get")
    sync_fsyncs: tuple[str, ...] = ("always", "everysec")
    leases_ms: tuple[int, ...] = (1000, 3000)
    failover_runs: tuple[int, ...] = (5, 3)  # kills per lease (a run at the default lease takes ~10 s)


FULL = Plan(reps=3, max_seconds=1.8, total=2_000_000)
QUICK = Plan(reps=1, max_seconds=0.5, total=5_000, shards=(1, 2), workloads=("kv.set",), sync_fsyncs=("everysec",),
             leases_ms=(1000,), failover_runs=(1,))


ASK_SLOTS = bare_request()
#: CLUSTER_SLOTS with value ``{"redirect": true}``: this connection routes by itself (MOVED instead of forwarding).
ROUTING = bare_request(msgpack.packb({"redirect": True}))


# --- the slot map --------------------------------------------------------------------------------


@dataclass
class SlotView:
    """A member's answer to CLUSTER_SLOTS: who owns each slot and each shard's leader (``host:port``)."""

    shards: int
    ranges: list[tuple[int, int, int]]
    leaders: dict[int, str]

    @classmethod
    def parse(cls, data: bytes) -> "SlotView":
        m = msgpack.unpackb(data, raw=False, strict_map_key=False)
        return cls(int(m["shards"]), [tuple(r) for r in m["ranges"]], {int(s): a for s, a in m["leaders"].items()})

    def owner(self, key: bytes) -> int:
        from flo_server.cluster.coord import SlotMap

        return SlotMap(self.shards, self.ranges).owner(key_slot(key))

    def probe_key(self, shard: int) -> bytes:
        """A key that shard ``shard`` owns (readiness writes)."""
        return next(k for k in (b"probe:%d" % i for i in range(100_000)) if self.owner(k) == shard)


async def _request(host: str, port: int, op: int, payload: bytes, timeout: float = 2.0) -> tuple[int, bytes]:
    """One request on a fresh connection: ``(status, body)``; OSError-like failures raise."""
    from flo_client.connection import Connection

    conn = await Connection.open(host, port, timeout)
    try:
        return await conn.request(op, payload, timeout)
    finally:
        conn.close()


async def slot_view(host: str, port: int) -> SlotView | None:
    """The slot map as the member at ``port`` sees it, or None when that server is no cluster member."""
    status, data = await _request(host, port, Op.CLUSTER_SLOTS, ASK_SLOTS)
    return SlotView.parse(data) if status == 0 else None


# --- the routed load generator (a subprocess of the group) --------------------------------------


async def _open(spec: LoadSpec, port: int, factory: Any, routing: bool) -> Any:
    """One load connection to ``port``; ``routing`` marks it first (CLUSTER_SLOTS redirect), untimed."""
    loop = asyncio.get_running_loop()
    if not routing:
        _, proto = await asyncio.wait_for(loop.create_connection(factory, spec.host, port), timeout=10)
        return proto
    # _Auth is loadgen's "one request before the load protocol takes the transport over".
    from flo_core.wire import encode_request

    transport, first = await asyncio.wait_for(
        loop.create_connection(lambda: _Auth(encode_request(1, Op.CLUSTER_SLOTS, ROUTING)), spec.host, port),
        timeout=10)
    await asyncio.wait_for(first.done, timeout=10)
    proto = factory()
    transport.set_protocol(proto)
    proto.connection_made(transport)
    return proto


async def _phase(spec: LoadSpec, targets: list[tuple[int, list[bytes], list[int]]], conns: int, window: int,
                 total: int, max_seconds: float, pids: list[int], routing: bool,
                 exact: bool = False) -> tuple[list[_State], float, float, float]:
    """One closed loop over every target ``(port, frames, rids)``; connection c goes to target c mod n.
    Returns the states per target, the seconds, and the CPU seconds of ``pids`` and of this process meanwhile.

    ``exact`` (prefill): one connection per target sending its frames once each."""
    states = [_State() for _ in targets]
    clients = []
    for c in range(conns):
        t = c % len(targets)
        port, fr, rd = targets[t]
        if exact:
            budget, off = len(fr), 0
        else:
            budget, off = total // conns + (1 if c < total % conns else 0), c * 97
        if budget <= 0 or not fr:
            continue
        st = states[t]
        clients.append(await _open(spec, port, lambda st=st, fr=fr, rd=rd, off=off, b=budget:
                                   FloLoad(st, window, fr, rd, off, b), routing))
    cpu0, own0 = sum(proc_cpu_seconds(p) for p in pids), os.times()
    t0 = time.perf_counter()  # every connection is open before the clock starts
    for cl in clients:
        cl.start()
    _, left = await asyncio.wait([cl.done for cl in clients], timeout=max_seconds)
    if left:  # the time cap: stop sending, let what is in flight come back
        for st in states:
            st.stop = True
        _, left = await asyncio.wait(left, timeout=5)
    if left:
        states[0].errors += 1
        states[0].error_sample = states[0].error_sample or "replies still missing 5 s after the time limit"
    elapsed = time.perf_counter() - t0
    own1 = os.times()
    server_cpu = sum(proc_cpu_seconds(p) for p in pids) - cpu0
    # This process's CPU over the same timed phase (the pool building and the prefill are not in it).
    load_cpu = (own1.user + own1.system) - (own0.user + own0.system)
    for cl in clients:
        cl.transport.close()
    return states, elapsed, server_cpu, load_cpu


async def routed_load(spec: LoadSpec, pids: list[int]) -> dict:
    """One bounded load of ``spec.workload`` with every key sent to the leader of its shard.

    A server that is no cluster member (CLUSTER_SLOTS refused) is the only target."""
    if spec.host not in LOOPBACK:
        raise SystemExit("loopback only")
    w = WORKLOADS[spec.workload]
    view = await slot_view(spec.host, spec.port)
    rnd = random.Random(spec.seed)
    keys = [w.key_prefix + b"%d" % rnd.randrange(spec.keyspace) for _ in range(spec.pool)]
    by_shard: dict[int, list[bytes]] = {}
    for k in keys:
        by_shard.setdefault(0 if view is None else view.owner(k), []).append(k)
    ports: dict[int, int] = {}
    for shard in sorted(by_shard):
        addr = f"{spec.host}:{spec.port}" if view is None else view.leaders.get(shard)
        if addr is None:
            raise SystemExit(f"shard {shard} has no leader")
        host, _, port = addr.rpartition(":")
        if host not in LOOPBACK:
            raise SystemExit(f"loopback only: shard {shard}'s leader is {addr}")
        ports[shard] = int(port)
    routing = view is not None
    value = b"v" * spec.value_size
    if w.prefill:  # reads must find their key: one SET per distinct key through its owner, untimed
        pre = [(ports[s], *build_frames(WORKLOADS["kv.set"], "flo", sorted(set(ks)), value))
               for s, ks in sorted(by_shard.items())]
        states, *_ = await _phase(spec, pre, len(pre), 64, 0, 60.0, [], routing, exact=True)
        bad = next((st for st in states if st.errors), None)
        if bad is not None:
            raise SystemExit(f"prefill failed: {bad.error_sample}")
    targets = [(ports[s], *build_frames(w, "flo", ks, value)) for s, ks in sorted(by_shard.items())]
    states, elapsed, server_cpu, load_cpu = await _phase(spec, targets, spec.conns, spec.window, spec.total,
                                                         spec.max_seconds, pids, routing)
    lat = sorted(x for st in states for x in st.lat)
    completed = sum(st.completed for st in states)
    return {
        "workload": spec.workload, "conns": spec.conns, "window": spec.window, "value_size": spec.value_size,
        "shards": len(targets), "routed": routing,
        "completed": completed, "per_shard": [st.completed for st in states],
        "errors": sum(st.errors for st in states),
        "error_sample": next((st.error_sample for st in states if st.error_sample), ""),
        "elapsed_s": round(elapsed, 4),
        "ops_s": round(completed / elapsed, 1) if elapsed > 0 else 0.0,
        "p50_us": round(pct(lat, 50) / 1000, 1), "p99_us": round(pct(lat, 99) / 1000, 1),
        "server_cpu_pct": round(100 * server_cpu / elapsed, 1) if pids and elapsed > 0 else None,
        "loadgen_cpu_pct": round(100 * load_cpu / elapsed, 1) if elapsed > 0 else None,
        "server_processes": len(pids),
    }


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.cluster_bench``: the routed load generator; prints one JSON line."""
    ap = argparse.ArgumentParser(prog="python -m bench.cluster_bench", description=main.__doc__)
    ap.add_argument("--host", default=HOST)
    ap.add_argument("--port", type=int, required=True, help="any member (its slot map is asked for)")
    ap.add_argument("--workload", "-w", choices=("kv.set", "kv.get"), default="kv.set")
    ap.add_argument("--conns", "-c", type=int, default=CONNS)
    ap.add_argument("--window", "-k", type=int, default=WINDOW)
    ap.add_argument("--total", "-n", type=int, default=200_000)
    ap.add_argument("--max-seconds", type=float, default=10.0)
    ap.add_argument("--value-size", "-d", type=int, default=VALUE)
    ap.add_argument("--server-pid", default="", help="comma-separated pids whose CPU time is summed")
    a = ap.parse_args(argv)
    if a.host not in LOOPBACK:
        ap.error("loopback only: the load generator never targets another machine")
    for name, lo, hi in (("conns", 1, 1000), ("window", 1, 1024), ("total", 1, 100_000_000),
                         ("value_size", 0, 1 << 20)):
        if not lo <= getattr(a, name) <= hi:
            ap.error(f"--{name.replace('_', '-')} must be in [{lo}, {hi}]")
    if not 0 < a.max_seconds <= 600:
        ap.error("--max-seconds must be in (0, 600]")
    try:
        pids = [int(p) for p in a.server_pid.split(",") if p][:64]
    except ValueError:
        ap.error("--server-pid: comma-separated integers")
    spec = LoadSpec(port=a.port, host=a.host, workload=a.workload, conns=a.conns, window=a.window, total=a.total,
                    max_seconds=a.max_seconds, value_size=a.value_size)
    import uvloop

    try:
        res = uvloop.run(routed_load(spec, pids))
    except (OSError, asyncio.TimeoutError, FloError) as e:  # nothing listening, a member gone: say so, no traceback
        raise SystemExit(f"cannot load {a.host}:{a.port}: {e}") from None
    print(json.dumps(res), flush=True)


# --- clusters under test --------------------------------------------------------------------------


class Members:
    """``shards`` x ``per_shard`` flo-server members of a fresh cluster, started by ``fleet`` (so stopped by pid)."""

    def __init__(self, fleet: Fleet, etcd: Any, label: str, shards: int, per_shard: int, *flags: str) -> None:
        self.fleet, self.etcd, self.label, self.shards = fleet, etcd, label, shards
        self.name = "b" + uuid.uuid4().hex[:8]
        made = subprocess.run([sys.executable, "-m", "flo_server", "cluster", "create", "--etcd", etcd.urls,
                               "--cluster", self.name, "--shards", str(shards)], capture_output=True, text=True,
                              timeout=60, cwd=REPO)
        if made.returncode:
            raise RuntimeError(f"cluster create failed: {made.stderr.strip()[-300:]}")
        self.flags = flags
        self.nodes = {f"s{s}m{i}": s for s in range(shards) for i in range(per_shard)}
        self.procs: dict[str, ServerProc] = {}
        for node in self.nodes:
            self.start(node)

    def start(self, node: str) -> ServerProc:
        """(Re)start member ``node`` on its own data dir (a restart keeps its log; the port is a new free one)."""
        shard = self.nodes[node]
        data = self.fleet.rundir / f"data-{self.label}-{node}"
        sp = self.fleet.start_flo(label=f"{self.label}-{node}", data_dir=data, executor=False, extra=(
            "--etcd", self.etcd.urls, "--cluster", self.name, "--shard", str(shard), "--node", node, *self.flags))
        self.procs[node] = sp
        return sp

    @property
    def pids(self) -> list[int]:
        return [sp.pid for sp in self.procs.values() if sp.alive()]

    @property
    def any_port(self) -> int:
        return next(sp.port for sp in self.procs.values() if sp.alive())

    def by_addr(self, addr: str) -> str:
        return next(n for n, sp in self.procs.items() if f"{HOST}:{sp.port}" == addr and sp.alive())

    async def ready(self, timeout: float = 30.0, replicas: int = 0) -> dict[int, str]:
        """Wait until every live member names the same live leader of every shard, a write to each shard
        through its leader is answered, and (``replicas``) shard 0's leader has that many replicas fetching;
        ``{shard: leader node}``."""
        deadline = time.monotonic() + timeout
        why = "not asked yet"
        while time.monotonic() < deadline:
            try:
                views = [await slot_view(HOST, sp.port) for sp in self.procs.values() if sp.alive()]
                leaders = views[0].leaders if views and views[0] else {}
                if len(leaders) < self.shards or any(v is None or v.leaders != leaders for v in views):
                    why = f"leaders {[v and v.leaders for v in views]}"
                else:
                    nodes = {s: self.by_addr(a) for s, a in leaders.items()}
                    for s, node in nodes.items():
                        status, body = await _request(HOST, self.procs[node].port, *kv_put(views[0].probe_key(s),
                                                                                          b"ready"))
                        if status != 0:
                            raise RuntimeError(f"shard {s}: write refused {body[3:80]!r}")
                    if replicas:
                        have = await _fetching_replicas(self.procs[nodes[0]].port, self.flags)
                        if have < replicas:
                            raise RuntimeError(f"{have} replicas fetching, want {replicas}")
                    return nodes
            except Exception as e:  # noqa: BLE001 - a member still starting, an election under way: ask again
                why = f"{type(e).__name__}: {e}"
            await asyncio.sleep(0.05)
        raise RuntimeError(f"{self.label} not ready in {timeout:.0f} s: {why}")

    def stop(self) -> None:
        for sp in self.procs.values():
            self.fleet.stop(sp)
        for node in self.nodes:
            shutil.rmtree(self.fleet.rundir / f"data-{self.label}-{node}", ignore_errors=True)


async def _fetching_replicas(port: int, flags: tuple[str, ...]) -> int:
    """Replicas the leader at ``port`` heard from within its lease."""
    status, data = await _request(HOST, port, Op.SERVER_INFO, ASK_SLOTS)
    if status != 0:
        return 0
    lease = int(flags[flags.index("--lease-ms") + 1]) if "--lease-ms" in flags else 3000
    reps = msgpack.unpackb(data, raw=False).get("cluster", {}).get("replicas", {})
    return sum(1 for r in reps.values() if r.get("at", 0) >= time.time() - lease / 1000)


# --- the measurements -------------------------------------------------------------------------------


def _load(fleet: Fleet, port: int, workload: str, pids: list[int], plan: Plan) -> dict:
    argv = fleet.load_cpu + [fleet.python, "-m", "bench.cluster_bench", "--port", str(port), "-w", workload,
                             "-c", str(CONNS), "-k", str(WINDOW), "-n", str(plan.total), "--max-seconds",
                             str(plan.max_seconds), "-d", str(VALUE), "--server-pid", ",".join(map(str, pids))]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=plan.max_seconds + 90, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"errors": 1, "error_sample": "load generator did not finish", "ops_s": 0.0, "completed": 0}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode or not lines:
        return {"errors": 1, "error_sample": (out.stderr or out.stdout).strip()[-400:], "ops_s": 0.0, "completed": 0}
    return json.loads(lines[-1])


def _paired(run: Any, fleet: Fleet, mid: str, workload: str, targets: dict[str, tuple[int, list[int]]],
            plan: Plan, ratios: list[tuple[str, str]], cores: dict[str, str]) -> None:
    """Every target in turn (order reversed every other repetition), one ``cluster_run`` line per load, then a
    ``cluster_summary`` with medians and the median of the per-repetition ``ratios``."""
    names = list(targets)
    by_rep: dict[int, dict[str, float]] = {}
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for rep in range(plan.reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            port, pids = targets[name]
            res = _load(fleet, port, workload, pids, plan)
            if res.get("server_cpu_pct") and res.get("ops_s"):
                # The servers' CPU time per request: their cost, less swayed than ops/s by what else runs here.
                res["server_us_per_op"] = round(res["server_cpu_pct"] * 1e4 / res["ops_s"], 2)
            run.emit({"type": "cluster_run", "id": mid, "target": name, "rep": rep, **res})
            if res.get("errors"):
                run.note(f"{mid} {workload} {name}: {res['errors']} errors, e.g. {res.get('error_sample', '')!r}")
            runs[name].append(res)
            if res.get("completed"):
                by_rep.setdefault(rep, {})[name] = res["ops_s"]
            run.progress.message(f"  {mid} {workload:<7} {name:<22} {res.get('ops_s', 0):>10,.0f} ops/s")
    row: dict = {"type": "cluster_summary", "id": mid, "workload": workload, "conns": CONNS, "window": WINDOW,
                 "value_size": VALUE, "reps": plan.reps, "targets": {}, "ratios": {}}
    for name in names:
        ok = [r for r in runs[name] if r.get("completed")]
        if ok:
            row["targets"][name] = {k: _median([r.get(k) for r in ok]) for k in
                                    ("ops_s", "p50_us", "p99_us", "server_cpu_pct", "server_us_per_op",
                                     "loadgen_cpu_pct")}
            row["targets"][name].update(errors=sum(r.get("errors", 0) for r in ok), cores=cores[name],
                                        processes=ok[0].get("server_processes"))
    for num, den in ratios:
        per = [v[num] / v[den] for v in by_rep.values() if v.get(num) and v.get(den)]
        if per:
            row["ratios"][f"{num} / {den}"] = round(statistics.median(per), 3)
    run.emit(row)


def _median(vals: list) -> float | None:  # type: ignore[type-arg]
    vals = [v for v in vals if isinstance(v, (int, float))]
    return round(statistics.median(vals), 1) if vals else None


def _shard_label(n: int) -> str:
    return f"{n} shard" + ("s" if n > 1 else "")


def _cores(servers: int) -> str:
    cpus = os.cpu_count() or 1
    return f"{servers} server process{'es' if servers > 1 else ''} + load generator (+ etcd) on {cpus} cores"


def measure_shards(run: Any, fleet: Fleet, etcd: Any, plan: Plan) -> None:
    """KV SET/GET: a plain flo-server and clusters of 1..3 shards, all running at once, measured in turn."""
    started: list[Members] = []
    plain = fleet.start_flo(label="cluster-plain", executor=False)
    slow = fleet.start_flo(label="cluster-plain-nofastpath", executor=False, env={"FLO_NO_FASTPATH": "1"})
    try:
        targets = {PLAIN: (plain.port, [plain.pid]), SLOW: (slow.port, [slow.pid])}
        cores = {PLAIN: _cores(1) + " (no cluster: C fast paths on)",
                 SLOW: _cores(1) + " (no cluster, FLO_NO_FASTPATH=1: the Python request loop)"}
        for n in plan.shards:
            m = Members(fleet, etcd, f"shards{n}", n, 1, "--lease-ms", "3000")
            started.append(m)
        for m in started:
            asyncio.run(m.ready())
            targets[_shard_label(m.shards)] = (m.any_port, m.pids)
            cores[_shard_label(m.shards)] = _cores(m.shards)
        one = _shard_label(1)
        # Scaling over one shard; each over the plain server (what being a member costs) and over the plain server
        # without its C fast path (the router's own cost, since members run the Python request loop too).
        shards = [t for t in targets if t not in (PLAIN, SLOW)]
        ratios = ([(t, one) for t in shards if t != one] + [(t, PLAIN) for t in (SLOW, *shards)]
                  + [(t, SLOW) for t in shards])
        for wl in plan.workloads:
            _paired(run, fleet, SHARDS_ID, wl, targets, plan, ratios, cores)
    finally:
        for sp in (plain, slow):
            fleet.stop(sp)
            shutil.rmtree(Path(sp.info["data_dir"]), ignore_errors=True)
        for m in started:
            m.stop()


def measure_sync(run: Any, fleet: Fleet, etcd: Any, plan: Plan) -> None:
    """SET on 1 shard x 2 members: --sync-replicas 1 over 0, at each --fsync policy."""
    started: dict[str, Members] = {}
    try:
        for fsync in plan.sync_fsyncs:
            for sync in (0, 1):
                name = f"fsync {fsync}, sync {sync}"
                started[name] = Members(fleet, etcd, f"sync{sync}-{fsync}", 1, 2, "--lease-ms", "3000",
                                        "--fsync", fsync, "--sync-replicas", str(sync))
        targets = {}
        for name, m in started.items():
            asyncio.run(m.ready(replicas=1))
            targets[name] = (m.any_port, m.pids)
        ratios = [(f"fsync {f}, sync 1", f"fsync {f}, sync 0") for f in plan.sync_fsyncs]
        _paired(run, fleet, SYNC_ID, "kv.set", targets, plan, ratios,
                {n: _cores(2) + " (leader + replica)" for n in targets})
    finally:
        for m in started.values():
            m.stop()


async def _writer(members: Members, node: str, w: int, log: list[tuple[float, float, str]],
                  stop: asyncio.Event) -> None:
    """Write steadily through member ``node`` (K=1): ``(sent, answered, node)`` of every write answered OK."""
    from flo_client.connection import Connection

    sp = members.procs[node]
    conn = None
    i = 0
    while not stop.is_set():
        try:
            if conn is None or conn.closed:
                conn = await Connection.open(HOST, sp.port, 1.0)
            i += 1
            sent = time.monotonic()
            status, _ = await conn.request(*kv_put(b"failover:%s:%d:%d" % (node.encode(), w, i), b"x" * VALUE), 1.0)
            if status == 0:
                log.append((sent, time.monotonic(), node))
                continue
        except Exception:  # noqa: BLE001 - a dead member, a lost forward, an election: try again
            conn = None
        await asyncio.sleep(0.01)  # a refusal or a reconnect: do not spin (the figure's resolution)
    if conn is not None:
        conn.close()


async def _failover_once(members: Members, lease_ms: int) -> dict:
    """Kill -9 shard 0's leader under steady writes; ms from the kill to the first write sent after it that a
    survivor answered."""
    leader = (await members.ready(replicas=2))[0]
    log: list[tuple[float, float, str]] = []
    stop = asyncio.Event()
    # Two writers per member: a write that hangs on one (up to its 1 s timeout) cannot hide the other's answer.
    tasks = [asyncio.ensure_future(_writer(members, n, w, log, stop)) for n in members.procs for w in range(2)]
    try:
        steady = time.monotonic() + 10
        while len({n for _, _, n in log}) < len(members.procs) and time.monotonic() < steady:
            await asyncio.sleep(0.02)  # every member's writer has had a write answered
        before = len(log)
        members.procs[leader].proc.kill()  # SIGKILL, reaped later by the fleet
        killed, killed_wall = time.monotonic(), time.time()
        limit = killed + 2 * lease_ms / 1000 + 10
        first = None
        while first is None and time.monotonic() < limit:
            first = next((a for s, a, n in log[before:] if s >= killed and n != leader), None)
            await asyncio.sleep(0.005)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    new = next((n for s, a, n in log[before:] if a == first), None)
    ms = None if first is None else round(1000 * (first - killed), 1)
    return {"killed": leader, "writes_before": before, "ms": ms, "through": new,
            "elected_ms": _elected_after(members, leader, killed_wall)}


def _elected_after(members: Members, killed: str, since: float) -> float | None:
    """ms from ``since`` (wall clock) to the first "<node> leads (epoch" line a survivor logged after it: the part
    of the failover that is the election, the rest is the new leader waiting for a replica (--sync-replicas 1)."""
    from datetime import datetime

    found = []
    for node, sp in members.procs.items():
        if node == killed or not sp.log.exists():
            continue
        for line in sp.log.read_text(errors="replace").splitlines()[-2000:]:
            if f"{node} leads (epoch" in line:
                try:
                    at = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()  # logging's local time
                except ValueError:
                    continue
                if at >= since - 0.002:
                    found.append(at)
    return round(1000 * (min(found) - since), 1) if found else None


def measure_failover(run: Any, fleet: Fleet, etcd: Any, plan: Plan) -> None:
    """1 shard x 3 members, --sync-replicas 1 --fsync always: N kill -9s per lease, the killed member restarted
    (it rejoins as a replica) before the next one."""
    for lease, kills in zip(plan.leases_ms, plan.failover_runs):
        m = Members(fleet, etcd, f"failover{lease}", 1, 3, "--lease-ms", str(lease), "--fsync", "always",
                    "--sync-replicas", "1")
        rec: dict = {"type": "cluster_failover", "id": FAILOVER_ID, "lease_ms": lease, "members": 3,
                     "sync_replicas": 1, "fsync": "always", "runs": []}
        try:
            for _ in range(kills):
                one = asyncio.run(_failover_once(m, lease))
                rec["runs"].append(one)
                run.progress.message(f"  {FAILOVER_ID} lease {lease} ms: kill -> first write {one['ms']} ms")
                fleet.stop(m.procs[one["killed"]])
                m.start(one["killed"])  # back as a replica: the next run again has a leader and two replicas
        except Exception as e:  # noqa: BLE001 - reported
            rec["error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
            run.note(f"{FAILOVER_ID} lease {lease}: {rec['error']}")
        finally:
            m.stop()
        times = [r["ms"] for r in rec["runs"] if r["ms"] is not None]
        if times:
            rec["median_ms"] = round(statistics.median(times), 1)
            rec["lease_multiple"] = round(rec["median_ms"] / lease, 2)
        elected = [r["elected_ms"] for r in rec["runs"] if r.get("elected_ms") is not None]
        if elected:
            rec["median_elected_ms"] = round(statistics.median(elected), 1)
        if len(times) < len(rec["runs"]):
            run.note(f"{FAILOVER_ID} lease {lease}: {len(rec['runs']) - len(times)} run(s) saw no write answered "
                     "within 2 leases + 10 s")
        run.emit(rec)


def measure(run: Any, ids: tuple[str, ...]) -> None:
    """The harness's hook: run the cluster measurements named in ``ids`` (of :data:`IDS`), emitting their records
    through ``run`` (``emit``, ``note``, ``progress``; ``opts.quick`` picks :data:`QUICK`)."""
    from flo_server.cluster.local import LocalEtcd, etcd_binary

    plan = QUICK if run.opts.quick else FULL
    if etcd_binary() is None:
        run.note("cluster group skipped: etcd not installed (make system-deps installs Debian's etcd-server)")
        for _ in ids:
            run.progress.step("cluster: no etcd")
        return
    # Nothing pinned: the point is how 1..3 server processes share this machine's cores with the load.
    fleet = Fleet(run.fleet.rundir / "cluster")
    fleet.server_cpu = fleet.load_cpu = []
    load0 = os.getloadavg()
    t0 = time.monotonic()
    try:
        with LocalEtcd(fleet.rundir / "etcd") as etcd:
            for mid, fn in ((SHARDS_ID, measure_shards), (SYNC_ID, measure_sync), (FAILOVER_ID, measure_failover)):
                if mid in ids:
                    t = time.monotonic()
                    try:
                        fn(run, fleet, etcd, plan)
                    except Exception as e:  # noqa: BLE001 - reported; the other measurements still run
                        run.note(f"{mid}: {type(e).__name__}: {str(e).strip()[:300]}")
                    run.progress.step(f"{mid} done in {time.monotonic() - t:.0f} s")
    finally:
        fleet.stop_all()
        shutil.rmtree(fleet.rundir / "etcd" / "m0", ignore_errors=True)  # etcd's data (its log stays)
    run.emit({"type": "cluster_group", "seconds": round(time.monotonic() - t0, 1), "loadavg_start": load0,
              "loadavg_end": os.getloadavg(), "cpu_count": os.cpu_count(), "plan": plan.__dict__,
              "started": [{"name": n, "pid": p, "port": port} for n, p, port in fleet.history],
              "all_stopped": not fleet.procs})


# --- the report ---------------------------------------------------------------------------------------


def markdown(records: list[dict]) -> str:
    """The cluster section of ``summary.md`` (empty when the group did not run)."""
    group = next((r for r in records if r.get("type") == "cluster_group"), None)
    if group is None:
        return ""
    la, lb = group["loadavg_start"], group["loadavg_end"]
    out = ["## Cluster: shards, synchronous replicas, failover (etcd + flo-server members on 127.0.0.1)", "",
           f"{group['seconds']:.0f} s; nothing pinned: every server process, the load generator and etcd share the "
           f"{group['cpu_count']} cores; load average {la[0]:.2f} at the start, {lb[0]:.2f} at the end"
           + (" (a shared machine: compare the ratios, not the ops/s)" if max(la[0], lb[0]) > 0.5 else "") + ".", ""]
    for mid, title in ((SHARDS_ID, "KV over Flo wire v2, 50 connections x K=16, 100 B values, keys routed to their "
                                   "shard's leader by the load generator (CLUSTER_SLOTS)"),
                       (SYNC_ID, "SET on 1 shard x 2 members: --sync-replicas 1 vs 0")):
        rows = [r for r in records if r.get("type") == "cluster_summary" and r["id"] == mid]
        if not rows:
            continue
        out += [f"### `{mid}`: {title}", "",
                "| workload | target | ops/s | p50/p99 µs | server CPU % (all members) | server CPU µs/op | load CPU % "
                "| on the cores |", "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            for name, t in r["targets"].items():
                out.append(f"| {r['workload']} | {name} | {t['ops_s'] or 0:,.0f} | {t['p50_us'] or 0:,.0f} / "
                           f"{t['p99_us'] or 0:,.0f} | {t['server_cpu_pct'] or 0:.0f} | "
                           f"{t.get('server_us_per_op') or 0:.1f} | {t['loadgen_cpu_pct'] or 0:.0f} | {t['cores']} |")
        out += ["", "| workload | ratio | median of per-repetition ratios |", "|---|---|---|"]
        for r in rows:
            out += [f"| {r['workload']} | {k} | {v:.2f}x |" for k, v in r["ratios"].items()]
        out.append("")
    fo = [r for r in records if r.get("type") == "cluster_failover"]
    if fo:
        out += [f"### `{FAILOVER_ID}`: kill -9 of the leader -> first write answered through a survivor", "",
                "| lease | members | setting | runs (ms) | median | × lease | elected after (ms, from the logs) |",
                "|---|---|---|---|---|---|---|"]

        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:,.0f}"

        for r in fo:
            runs = ", ".join(ms(x["ms"]) for x in r["runs"]) or "-"
            elected = ", ".join(ms(x.get("elected_ms")) for x in r["runs"]) or "-"
            out.append(f"| {r['lease_ms']} ms | {r['members']} | --sync-replicas {r['sync_replicas']} --fsync "
                       f"{r['fsync']} | {runs} | {ms(r.get('median_ms'))} ms | {r.get('lease_multiple', '-')} | "
                       f"{elected} |" + (f" {r['error']}" if r.get("error") else ""))
        out += ["", "The time to the first write is the election plus the new leader's wait for a replica to "
                    "fetch from it (with --sync-replicas 1 it refuses writes, NOREPLICAS, until one does).", ""]
    return "\n".join(out)


if __name__ == "__main__":
    main()

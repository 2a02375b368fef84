"""The benchmark harness: the grid, the paired runs, the results directory.

One run of :func:`run_bench`:

1. refuses a debug build of flo_core (unless told otherwise) and records the
   environment block;
2. starts flo-server, the ceiling (:mod:`bench.ceiling`) and redis-server on
   127.0.0.1, pinned to core 0, with each load generator pinned to core 1;
3. for every cell of the grid runs each server in turn - alternating the
   order between repetitions - and takes medians; ratios are computed per
   repetition (pairwise, same run) and their median reported;
4. writes ``results.jsonl`` (environment, every run, every summary),
   ``summary.md`` and PNG plots into ``bench/results/<date>/`` and prints the
   table.

Every load is bounded by a request count and a time cap, every process it
starts is stopped by its pid, and nothing here asserts a performance
threshold: the report says which targets are met.

Example::

    python -m bench --quick          # about half a minute
    python -m bench --only 'kv\\.get' --reps 5
"""

from __future__ import annotations

import functools
import http.client
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from secrets import token_urlsafe
from typing import Callable, NamedTuple

from flo_core.spec import Reason, Status
from flo_core.wire import FrameReader, encode_request

from . import cluster_bench, report
from .environment import debug_build_reasons, environment
from .redis_runner import ensure_redis, info_memory, info_section, redis_benchmark, resp_call, speaks_resp
from .servers import HOST, REPO, Fleet, ServerProc, cpu_layout
from .workloads import WORKLOADS

FLO, REDIS, CEILING = "flo-server", "redis", "ceiling"
#: Redis with ``appendonly yes appendfsync everysec``: the like-for-like partner of flo-server's default
#: ``everysec`` in every plain cell (issue 20); ``redis`` (no persistence) stays as the second comparison.
REDIS_AOF = "redis-aof"
RESULTS = REPO / "bench" / "results"
#: The security group's flo-server variants; each is compared with plain flo-server (FLO) in the same cell, and
#: flo+metrics with flo+nometrics too (the cost of metrics).
AUTH, TLS, RESTRICTED, AGAIN, NOMETRICS, METRICS = report.SECURITY


# --- the grid -----------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One comparison point: a workload at one load shape, run against several servers."""

    group: str  # kv | resp | durability | stream | queue | action | security (security and metrics costs)
    workload: str
    proto: str  # how flo-server is driven: flo (our load generator) | resp (redis-benchmark)
    conns: int
    window: int
    value_size: int
    fsync: str | None = None  # durability cells: always | everysec | no
    servers: tuple[str, ...] = (FLO, REDIS)
    workers: int = 0  # action cells: ActionWorker processes taking the runs
    namespace: str = ""  # the load's namespace when not "default" (security: the restricted user's one)

    @property
    def id(self) -> str:
        s = f"{self.group}/{self.workload}/{self.proto}/c{self.conns}/k{self.window}/v{self.value_size}"
        return s + (f"/fsync-{self.fsync}" if self.fsync else "") + (f"/w{self.workers}" if self.workers else "")

    @property
    def label(self) -> str:
        size = f"{self.value_size}B" if self.value_size < 1024 else f"{self.value_size // 1024}KiB"
        extra = (f" fsync={self.fsync}" if self.fsync else "") + (f" workers={self.workers}" if self.workers else "")
        return f"{self.workload} {self.proto} K={self.window} c={self.conns} {size}{extra}"


@dataclass
class Budget:
    """Count and time bounds of one load, by its shape."""

    total_k16: int
    total_k1: int
    total_c1: int
    total_durable: int
    max_seconds: float
    memory_keys: int
    reps: int
    #: flamepy no-op burst: tasks, warm instances, time cap (bench/flamepy_bench.py's run()).
    flamepy_tasks: int = 20_000
    flamepy_instances: int = 2
    flamepy_seconds: float = 30.0
    #: Recovery: bytes of log to replay, keys in the snapshot, time cap of each write phase.
    recovery_log_bytes: int = 1 << 30
    recovery_snapshot_keys: int = 1_000_000
    recovery_write_seconds: float = 120.0


FULL = Budget(total_k16=600_000, total_k1=150_000, total_c1=20_000, total_durable=50_000, max_seconds=4.0,
              memory_keys=1_000_000, reps=3)
QUICK = Budget(total_k16=15_000, total_k1=4_000, total_c1=1_500, total_durable=1_500, max_seconds=1.5,
               memory_keys=20_000, reps=1, flamepy_tasks=1_000, flamepy_instances=2, flamepy_seconds=8.0,
               recovery_log_bytes=20 << 20, recovery_snapshot_keys=20_000, recovery_write_seconds=15.0)

#: Action workers in the "N workers" cells, and the in-flight runs (invoker connections, K = 1) of every action cell.
ACTION_WORKERS = 4
ACTION_CONNS = 16

AOF_OF_FSYNC = {"always": "always", "everysec": "everysec", "no": "off"}


def grid(quick: bool) -> list[Cell]:
    """Every cell of the grid (the issue's list); ``quick`` keeps a few that cover each group. Every plain
    cell that runs Redis runs it twice: without persistence and with AOF everysec (like for like)."""
    return [replace(c, servers=(*c.servers, REDIS_AOF)) if REDIS in c.servers and c.fsync is None else c
            for c in _grid(quick)]


def _grid(quick: bool) -> list[Cell]:
    cells: list[Cell] = []
    if quick:
        for wl in ("kv.set", "kv.get", "kv.incr"):
            for k in (1, 16):
                cells.append(Cell("kv", wl, "flo", 50, k, 100, servers=(FLO, CEILING, REDIS)))
        cells.append(Cell("kv", "kv.get", "flo", 1, 1, 100, servers=(FLO, CEILING, REDIS)))
        for wl in ("kv.set", "kv.get", "list.rpop"):
            cells.append(Cell("resp", wl, "resp", 50, 16, 100))
        cells.append(Cell("stream", "stream.append", "flo", 50, 16, 100))
        cells.append(Cell("stream", "stream.read", "flo", 50, 16, 100))
        cells.append(Cell("stream", "stream.group", "flo", 50, 1, 100))
        cells.append(Cell("queue", "queue.cycle", "flo", 50, 16, 100))
        cells += _action_cells()
        cells += _security_cells(("kv.set",))  # keeps the TLS and AUTH plumbing exercised; ratios need the full run
        cells.append(Cell("durability", "kv.set", "flo", 50, 1, 100, fsync="always"))
        return cells
    for wl in ("kv.set", "kv.get", "kv.incr"):
        sizes = (100, 4096) if WORKLOADS[wl].uses_value else (100,)
        for conns in (50, 1):
            for k in (1, 16):
                for size in sizes:
                    cells.append(Cell("kv", wl, "flo", conns, k, size, servers=(FLO, CEILING, REDIS)))
                    cells.append(Cell("resp", wl, "resp", conns, k, size))
    # The rest of issue 8's RESP list: redis-benchmark LPUSH, RPOP and XADD at -P 1 and -P 16.
    for wl in ("list.lpush", "list.rpop", "stream.append"):
        for k in (1, 16):
            cells.append(Cell("resp", wl, "resp", 50, k, 100))
    for wl in ("stream.append", "stream.read", "stream.group", "queue.enqueue", "queue.cycle"):
        for k in (1, 16):
            cells.append(Cell(wl.split(".")[0], wl, "flo", 50, k, 100))
    cells += _action_cells()
    cells += _security_cells()
    for fsync in ("always", "everysec", "no"):
        for conns in (50, 1):
            cells.append(Cell("durability", "kv.set", "flo", conns, 1, 100, fsync=fsync))
    return cells


def _action_cells() -> list[Cell]:
    """Action round trips with 1 and N workers, and the queue cycle at the same shape, in the same run."""
    return [
        Cell("action", "action.roundtrip", "flo", ACTION_CONNS, 1, 100, servers=(FLO,), workers=1),
        Cell("action", "action.roundtrip", "flo", ACTION_CONNS, 1, 100, servers=(FLO,), workers=ACTION_WORKERS),
        Cell("action", "action.invoke_result", "flo", ACTION_CONNS, 1, 100, servers=(FLO,), workers=ACTION_WORKERS),
        Cell("action", "queue.cycle", "flo", ACTION_CONNS, 1, 100, servers=(FLO,)),
    ]


def _security_cells(workloads: tuple[str, ...] = ("kv.set", "kv.get")) -> list[Cell]:
    """KV at K=16 on plain flo-server and on each variant (``VARIANTS``), in the same run."""
    # Plain runs between auth and its A/A control in either order, so both are measured next to it and
    # see the same drift of the machine (which, on a shared VM, can be larger than the 3 % judged); so do
    # nometrics and metrics, next to each other.
    order = (AUTH, FLO, AGAIN, NOMETRICS, METRICS, TLS, RESTRICTED)
    return [Cell("security", wl, "flo", 50, 16, 100, servers=order, namespace=SECURITY_NAMESPACE) for wl in workloads]


# --- security variants ------------------------------------------------------------------

#: Every load of the security group runs in this namespace (plain included): the restricted user's only one.
SECURITY_NAMESPACE = "bench"
RESTRICTED_USER = "app"


class Secrets:
    """One run's throwaway password, test CA and users file, made on first use (and deleted with the run's data)."""

    def __init__(self, where: Path) -> None:
        self.where = where
        self.password = token_urlsafe(16)

    @functools.cached_property
    def pems(self) -> dict[str, str]:
        from flo_server.testing import make_test_ca

        return make_test_ca(self.where / "tls")

    @functools.cached_property
    def users_file(self) -> str:
        from flo_server.auth import hash_password

        # scrypt at N = 2^10: AUTH is untimed, but 50 connections per load need not wait on a 16 MiB hash each.
        u = RESTRICTED_USER
        path = self.where / "users.toml"
        self.where.mkdir(parents=True, exist_ok=True)
        path.write_text(f'[users.{u}]\npassword = "{hash_password(self.password, log2_n=10)}"\n'
                        f'[[users.{u}.allow]]\nnamespaces = ["{SECURITY_NAMESPACE}"]\nrights = ["read", "write"]\n')
        return str(path)


class Variant(NamedTuple):
    """How one variant is started and reached."""

    flags: tuple[str, ...] = ()  # flo-server's
    client: tuple[str, ...] = ()  # the load generator's: AUTH and TLS are set up on every connection untimed
    env: tuple[tuple[str, str], ...] = ()  # flo-server's extra environment
    scrape: bool = False  # GET /metrics once a second while it is loaded (Scraper)


VARIANTS: dict[str, Callable[[Secrets], Variant]] = {
    # --requirepass: after AUTH the connection is the unrestricted default user, on the C fast paths.
    AUTH: lambda s: Variant(("--requirepass", s.password), ("--user", "default", "--password", s.password)),
    # TLS as it would be deployed, with the password too (AUTH itself costs nothing once done: see AUTH).
    TLS: lambda s: Variant(("--tls-cert", s.pems["cert"], "--tls-key", s.pems["key"], "--requirepass", s.password),
                           ("--tls-ca", s.pems["ca"], "--user", "default", "--password", s.password)),
    # Read and write in one namespace only: not a superuser, so every request takes the Python permission check.
    RESTRICTED: lambda s: Variant(("--users", s.users_file), ("--user", RESTRICTED_USER, "--password", s.password)),
    # Nothing: one flo-server process against another, so a ratio can be told from noise.
    AGAIN: lambda s: Variant(),
    # The baseline of metrics: no counting (the server has no metrics object) and no HTTP side port.
    NOMETRICS: lambda s: Variant(("--http-port", "0"), env=(("FLO_NO_METRICS", "1"),)),
    # Counting on, the HTTP side port on a free port, and /metrics scraped once a second during the load.
    METRICS: lambda s: Variant(("--http-port", "-1"), scrape=True),
}
#: Same-run ratios of the group besides every variant's to plain: metrics to its baseline, and plain (counting, no
#: HTTP) to it too, which tells the counting from the HTTP side port and the scrapes.
EXTRA_RATIOS = [(METRICS, NOMETRICS), (FLO, NOMETRICS)]


class Scraper:
    """GETs ``/metrics`` once a second on a thread while a load runs (what a Prometheus costs the server), on one
    keep-alive connection; at most ``limit`` scrapes. ``times`` holds the wall clock of each good one."""

    def __init__(self, port: int, limit: int) -> None:
        self.port, self.limit = port, limit
        self.times: list[float] = []
        self.errors, self.error_sample = 0, ""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> "Scraper":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
        try:
            while len(self.times) + self.errors < self.limit:
                t = time.time()
                try:
                    conn.request("GET", "/metrics")
                    r = conn.getresponse()
                    body = r.read()
                    if r.status != 200 or b"flo_" not in body:
                        raise OSError(f"HTTP {r.status}: {body[:80]!r}")
                    self.times.append(t)
                except (OSError, http.client.HTTPException) as e:
                    conn.close()  # the next request reconnects
                    self.errors += 1
                    self.error_sample = self.error_sample or str(e)
                if self._stop.wait(max(0.0, t + 1.0 - time.time())):
                    return
        finally:
            conn.close()

    def result(self, res: dict) -> dict:
        """Its counts for the run record: all scrapes, and those inside the load generator's timed phase."""
        t0, el = res.get("timed_from_unix"), res.get("elapsed_s") or 0
        timed = sum(1 for t in self.times if t0 is not None and t0 <= t <= t0 + el)
        return {"scrapes": len(self.times), "scrapes_timed": timed, "scrape_errors": self.errors,
                "scrape_error_sample": self.error_sample}


def total_for(cell: Cell, b: Budget) -> int:
    if cell.group == "durability":
        return b.total_durable if cell.conns > 1 else max(b.total_durable // 10, 200)
    per_op = WORKLOADS[cell.workload].cost  # a queue cycle is three requests, a group cycle consumes records
    if cell.conns == 1:
        return b.total_c1 * (4 if cell.window > 1 else 1) // per_op
    return (b.total_k16 if cell.window > 1 else b.total_k1) // per_op


# --- probes ---------------------------------------------------------------------------


def flo_supports(port: int, workload: str) -> tuple[bool, str]:
    """Send one request of ``workload``; unsupported when the server refuses it as UNKNOWN_OP."""
    w = WORKLOADS[workload]
    key = (w.fixed_key or (w.key_prefix + b"probe")) + (b":probe" if w.seed else b"")
    if w.seed is not None and w.seed.flo_at is not None:
        op, payload = w.seed.flo_at(key, (0, 0))
    elif w.chain is not None:
        op, payload = w.chain.flo(0, key, b"v" * 8, b"")  # type: ignore[misc]
    else:
        op, payload = w.flo(key, b"v" * 8)  # type: ignore[misc]
    reader = FrameReader(is_request=False)
    try:
        with socket.create_connection((HOST, port), timeout=3) as s:
            s.sendall(encode_request(1, op, payload))
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                data = s.recv(65536)
                if not data:
                    return False, "connection closed on the first request"
                for _rid, status, body in reader.feed(data):
                    reason = int.from_bytes(body[:2], "little") if status != Status.OK and len(body) >= 2 else 0
                    if reason == Reason.UNKNOWN_OP:
                        return False, "op not served yet (UNKNOWN_OP)"
                    return True, ""
    except OSError as e:
        return False, f"probe failed: {e}"
    return False, "no answer to the probe"


# --- the run ------------------------------------------------------------------------


@dataclass
class Options:
    quick: bool = False
    reps: int | None = None
    out: Path | None = None
    only: str | None = None
    install: bool = True
    allow_debug: bool = False
    plots: bool = True
    flo: bool = True
    memory: bool = True
    max_seconds: float | None = None


@dataclass
class Run:
    opts: Options
    budget: Budget
    outdir: Path
    fleet: Fleet
    jsonl: "object"
    progress: "Progress"
    notes: list[str] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
    supported: dict[tuple[str, str], tuple[bool, str]] = field(default_factory=dict)
    fresh_keys: int = 0  # numbering of Workload.fresh_key keys

    @functools.cached_property
    def secrets(self) -> Secrets:
        return Secrets(self.fleet.rundir / "security")

    def emit(self, rec: dict) -> None:
        self.records.append(rec)
        self.jsonl.write(json.dumps(rec, default=_json_default) + "\n")  # type: ignore[attr-defined]
        self.jsonl.flush()  # type: ignore[attr-defined]

    def note(self, msg: str) -> None:
        if msg not in self.notes:
            self.notes.append(msg)
            self.progress.message(f"note: {msg}")


def _json_default(o: object) -> object:
    if isinstance(o, Path):
        return str(o)
    return str(o)


class Progress:
    """A one-line progress bar on a terminal, one line per step otherwise."""

    def __init__(self, total: int, stream=sys.stderr) -> None:  # type: ignore[no-untyped-def]
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream
        self.tty = stream.isatty()
        self.t0 = time.monotonic()

    def step(self, what: str) -> None:
        self.done += 1
        frac = min(self.done / self.total, 1.0)
        bar = "#" * int(frac * 30)
        line = f"[{bar:<30}] {self.done:>3}/{self.total} {time.monotonic() - self.t0:5.0f}s  {what}"
        if self.tty:
            self.stream.write("\r\x1b[K" + line[:160])
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, msg: str) -> None:
        self.stream.write(("\r\x1b[K" if self.tty else "") + msg + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _loadgen(run: Run, port: int, proto: str, workload: str, conns: int, window: int, value_size: int,
             total: int, max_seconds: float, extra: tuple[str, ...] = ()) -> dict:
    argv = run.fleet.load_cpu + [run.fleet.python, "-m", "bench.loadgen", "--port", str(port), "--proto", proto,
                                 "--workload", workload, "-c", str(conns), "-k", str(window), "-n", str(total),
                                 "--max-seconds", str(max_seconds), "-d", str(value_size), *extra]
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=max_seconds + 90, cwd=REPO)
    except subprocess.TimeoutExpired:
        return {"errors": 1, "error_sample": "load generator did not finish", "ops_s": 0.0, "completed": 0}
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    if out.returncode != 0 or not lines:
        return {"errors": 1, "error_sample": (out.stderr or out.stdout).strip()[-400:], "ops_s": 0.0, "completed": 0}
    res = json.loads(lines[-1])
    res["tool"] = "loadgen"
    return res


#: Before a load, the page cache's dirty bytes are let down to this (or WRITEBACK_WAIT_S passes).
WRITEBACK_QUIET_KB = 64 * 1024
WRITEBACK_WAIT_S = 30.0


def _dirty_kb() -> int:
    """Dirty + Writeback from /proc/meminfo (kB); 0 where there is none."""
    kb = 0
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith(("Dirty:", "Writeback:")):
                    kb += int(line.split()[1])
    except (OSError, ValueError):
        return 0
    return kb


def quiet_writeback(max_s: float = WRITEBACK_WAIT_S) -> float:
    """Let the page cache write back what earlier loads left dirty; the seconds it took.

    Why: the servers of a run are shared across cells, and a cell of 4 KiB SETs leaves gigabytes of log
    and snapshots dirty. Their writeback (kernel threads on either core, and the throttling of any
    writer past the dirty limit) then lands in whichever load runs next, and both servers' rows of
    later cells moved by half between repetitions. Every load now starts with the disk quiet."""
    t0 = time.monotonic()
    if _dirty_kb() < WRITEBACK_QUIET_KB:
        return 0.0
    threading.Thread(target=os.sync, daemon=True).start()  # (bounded by the wait below, not joined)
    while _dirty_kb() >= WRITEBACK_QUIET_KB and time.monotonic() - t0 < max_s:
        time.sleep(0.05)
    return round(time.monotonic() - t0, 2)


#: How long a load waits for the log compaction it asked for (:func:`compact_log`) before it starts anyway.
COMPACT_WAIT_S = 60.0


def compact_log(sp: ServerProc, max_s: float = COMPACT_WAIT_S) -> float | None:
    """Compact the server's log now and wait until that is done: BGREWRITEAOF, which Redis with an AOF
    rewrites and flo-server answers with a snapshot; the seconds it took (None: the server has no log,
    or does not take the command from us, as a server requiring a password).

    Why: both servers compact their logs once it has grown enough since the last compaction, and the
    servers of a run are shared across cells: a compaction left due by one cell's writes then ran in
    the next cell's timed phase, on the core the server serves from (GET 4 KiB K=1 at 23:37 on
    2026-12-07: 83k/s in the repetition a leftover snapshot overlapped, 142k/s and 109k/s in the
    others). Now every load starts with a freshly compacted log on either server, and the
    compactions inside its timed phase are those its own writes make due."""
    if "data_dir" not in sp.info and sp.info.get("aof", "off") == "off":
        return None  # not a flo-server, or a redis-server without an AOF: no log to compact
    t0 = time.monotonic()
    try:
        if resp_call(sp.port, b"BGREWRITEAOF").startswith("-"):
            return None
        while time.monotonic() - t0 < max_s:
            fields = info_section(sp.port, b"persistence")
            if fields.get("aof_rewrite_in_progress", "0") == "0" and fields.get("aof_rewrite_scheduled", "0") == "0":
                break
            time.sleep(0.05)
    except (OSError, TimeoutError, ValueError):
        return None
    return round(time.monotonic() - t0, 2)


def measure(run: Run, cell: Cell, server: str, sp: ServerProc, key: str = "") -> dict:
    """One bounded load of ``cell`` against one running server (``key``: the action name of action cells),
    started once the server's log is compacted (:func:`compact_log`) and the page cache has written back
    what earlier loads left (:func:`quiet_writeback`)."""
    compacted = compact_log(sp)
    waited = quiet_writeback()
    res = _measure(run, cell, server, sp, key)
    res["writeback_wait_s"] = waited
    res["compact_s"] = compacted
    return res


def _measure(run: Run, cell: Cell, server: str, sp: ServerProc, key: str) -> dict:
    b = run.budget
    total = total_for(cell, b)
    if cell.proto == "resp":
        w = WORKLOADS[cell.workload]
        # redis-benchmark has a count but no time bound: a short calibration run sizes the count so the
        # measured run takes about max_seconds (a subprocess timeout stays as the hard stop).
        kw = dict(conns=cell.conns, pipeline=cell.window, value_size=cell.value_size, keyspace=100_000,
                  prefix=run.fleet.load_cpu)
        cal_n = max(min(total, 1000), total // 20)
        cal = redis_benchmark(sp.port, w.redis_benchmark, total=cal_n, max_seconds=b.max_seconds * 3, **kw)
        if cal.get("errors") or not cal.get("ops_s"):
            return cal
        if math.isfinite(cal["ops_s"]):  # redis-benchmark says "inf" for a run too short to time: keep the count
            total = max(cal_n, min(total, int(cal["ops_s"] * b.max_seconds)))
        cpu0 = sp.cpu_seconds()
        res = redis_benchmark(sp.port, w.redis_benchmark, total=total, max_seconds=b.max_seconds * 3, **kw)
        cpu = sp.cpu_seconds() - cpu0
        el = res.get("elapsed_s") or 0
        res["server_cpu_pct"] = round(100 * cpu / el, 1) if el else None
        return res
    # The load generator reads the server's CPU time over exactly its timed phase.
    proto = "resp" if server in (REDIS, REDIS_AOF) else "flo"
    w = WORKLOADS[cell.workload]
    if w.fresh_key and not key:
        run.fresh_keys += 1
        key = f"{(w.fixed_key or b'bench').decode()}:{run.fresh_keys}"
    extra = ("--server-pid", str(sp.pid)) + (("--key", key) if key else ()) + tuple(sp.info.get("client", ()))
    extra += ("--namespace", cell.namespace) if cell.namespace else ()
    if not sp.info.get("scrape"):
        return _loadgen(run, sp.port, proto, cell.workload, cell.conns, cell.window, cell.value_size, total,
                        b.max_seconds, extra=extra)
    with Scraper(sp.info["http_port"], limit=int(b.max_seconds) + 100) as scraper:  # as long as the load generator
        res = _loadgen(run, sp.port, proto, cell.workload, cell.conns, cell.window, cell.value_size, total,
                       b.max_seconds, extra=extra)
    return {**res, **scraper.result(res)}


def run_cell(run: Run, cell: Cell, servers: dict[str, ServerProc | None]) -> None:
    """All repetitions of one cell, servers alternating, every run one JSON line."""
    present = []
    for name in cell.servers:
        sp = servers.get(name)
        if sp is None:
            continue
        if name == FLO:
            key = (cell.proto, cell.workload)
            if key not in run.supported:
                if cell.proto == "resp":
                    ok = speaks_resp(sp.port)
                    run.supported[key] = (ok, "" if ok else "flo-server does not answer RESP yet")
                else:
                    run.supported[key] = flo_supports(sp.port, cell.workload)
            ok, why = run.supported[key]
            if not ok:
                run.note(f"{cell.workload} over {cell.proto}: {why}; flo-server column left empty")
                continue
        present.append(name)
    workers: list[ServerProc] = []
    action = ""
    if cell.workers and FLO in present:
        # Fresh no-op workers per cell, under an action name of their own (no run left over from another cell).
        action = f"bench-noop-w{cell.workers}"
        bound = run.budget.reps * (run.budget.max_seconds + 30) + 60
        try:
            workers = run.fleet.start_action_workers(servers[FLO].port, action, cell.workers, bound)  # type: ignore[union-attr]
        except Exception as e:  # noqa: BLE001 - reported; the cell is left empty
            run.note(f"{cell.label}: action workers did not start: {str(e).strip().splitlines()[0]}")
            present.remove(FLO)
    try:
        for rep in range(run.budget.reps):
            order = present if rep % 2 == 0 else list(reversed(present))
            for name in order:
                sp = servers[name]
                res = measure(run, cell, name, sp, key=action if name == FLO else "")  # type: ignore[arg-type]
                rec = {"type": "run", "cell": cell.id, **_cell_fields(cell), "server": name, "rep": rep, **res}
                run.emit(rec)
                if res.get("errors"):
                    run.note(f"{name} {cell.label}: {res['errors']} errors, e.g. {res.get('error_sample', '')!r}")
                if res.get("scrape_errors"):
                    run.note(f"{name} {cell.label}: {res['scrape_errors']} failed /metrics scrapes, e.g. "
                             f"{res.get('scrape_error_sample', '')!r}")
                run.progress.step(f"{cell.label:<40} {name:<10} {res.get('ops_s', 0):>11,.0f} ops/s")
    finally:
        for wp in workers:
            run.fleet.stop(wp)


def _cell_fields(cell: Cell) -> dict:
    d = asdict(cell)
    d.pop("servers")
    return d


def summarize(records: list[dict], cells: list[Cell]) -> list[dict]:
    """Medians per (cell, server) and pairwise ratios (per repetition, then the median)."""
    out = []
    for cell in cells:
        runs = [r for r in records if r.get("type") == "run" and r["cell"] == cell.id]
        if not runs:
            continue
        row: dict = {"type": "summary", "cell": cell.id, "label": cell.label, **_cell_fields(cell), "servers": {}}
        by_rep: dict[int, dict[str, float]] = {}
        for name in cell.servers:
            mine = [r for r in runs if r["server"] == name and r.get("completed")]
            if not mine:
                continue
            row["servers"][name] = {
                "ops_s": _median([r["ops_s"] for r in mine]),
                "p50_us": _median([r.get("p50_us") for r in mine]),
                "p99_us": _median([r.get("p99_us") for r in mine]),
                "server_cpu_pct": _median([r.get("server_cpu_pct") for r in mine]),
                "loadgen_cpu_pct": _median([r.get("loadgen_cpu_pct") for r in mine]),
                "load_core_busy_pct": _median([r.get("load_core_busy_pct") for r in mine]),
                "errors": sum(r.get("errors", 0) for r in mine),
                "reps": len(mine),
                "tool": mine[0].get("tool", ""),
            }
            if any("scrapes" in r for r in mine):
                row["servers"][name].update({k: sum(r.get(k, 0) for r in mine)
                                             for k in ("scrapes", "scrapes_timed", "scrape_errors")})
            for r in mine:
                by_rep.setdefault(r["rep"], {})[name] = r["ops_s"]
        ratios = {}
        # flo-server against Redis and the ceiling; each variant against plain flo-server (and EXTRA_RATIOS).
        for num, den in [(FLO, REDIS_AOF), (FLO, REDIS), (FLO, CEILING)] + [(v, FLO) for v in VARIANTS] + EXTRA_RATIOS:
            per = [v[num] / v[den] for v in by_rep.values() if v.get(num) and v.get(den)]
            if per:
                ratios[f"{num}/{den}"] = round(statistics.median(per), 3)
        row["ratios"] = ratios
        out.append(row)
    return out


def _median(vals: list) -> float | None:  # type: ignore[type-arg]
    vals = [v for v in vals if isinstance(v, (int, float)) and not math.isnan(v)]
    return round(statistics.median(vals), 1) if vals else None


# --- memory -----------------------------------------------------------------------


#: Value sizes of the memory test, each with the share of ``Budget.memory_keys`` it loads (4 KiB values:
#: a tenth, so that 1M keys' worth stays a few hundred MB per server).
MEMORY_SIZES = ((100, 1), (4096, 10))


def measure_memory(run: Run, fleet: Fleet) -> None:
    """Resident bytes per key after loading N keys (16-byte keys; 100-byte values, then N/10 4 KiB values),
    a fresh server for each size."""
    starters: list[tuple[str, Callable[[], ServerProc]]] = []
    if run.opts.flo:
        starters.append((FLO, lambda: fleet.start_flo(fsync="no", label="flo-server-memory")))
    starters.append((CEILING, fleet.start_ceiling))
    if shutil.which("redis-server"):
        starters.append((REDIS, lambda: fleet.start_redis("off", label="redis-memory")))
    for size, share in MEMORY_SIZES:
        for name, start in starters:
            if name == CEILING and size != MEMORY_SIZES[0][0]:
                continue  # the bare server keeps nothing: once is enough
            _memory_one(run, fleet, name, start, size, max(run.budget.memory_keys // share, 1))


def _memory_one(run: Run, fleet: Fleet, name: str, start: Callable[[], ServerProc], size: int, n: int) -> None:
    try:
        sp = start()
    except Exception as e:  # noqa: BLE001 - a server that cannot start is reported, not fatal
        run.note(f"memory: {name} did not start: {str(e).splitlines()[0]}")
        return
    try:
        if name != REDIS and not flo_supports(sp.port, "kv.set")[0]:
            run.note(f"memory: {name} does not serve KV_PUT yet")
            return
        info0 = info_memory(sp.port) if name == REDIS else {}
        rss0 = sp.rss_bytes()
        proto = "resp" if name == REDIS else "flo"
        res = _loadgen(run, sp.port, proto, "kv.set", 4, 64, size, n, 600.0,
                       extra=("--sequential", "--key-width", "12"))
        if name == REDIS:
            resp_call(sp.port, b"PING")
        rss1 = sp.rss_bytes()
        rec = {"type": "memory", "server": name, "keys": res.get("completed", 0), "key_bytes": 16,
               "value_bytes": size, "rss_before": rss0, "rss_after": rss1, "errors": res.get("errors", 0),
               "load_ops_s": res.get("ops_s")}
        done = max(res.get("completed", 0), 1)
        rec["rss_bytes_per_key"] = round((rss1 - rss0) / done, 1)
        if name == REDIS:
            info1 = info_memory(sp.port)
            rec["used_memory_before"] = info0.get("used_memory")
            rec["used_memory_after"] = info1.get("used_memory")
            rec["used_memory_bytes_per_key"] = round((info1["used_memory"] - info0["used_memory"]) / done, 1)
        run.emit(rec)
        run.progress.step(f"memory {name:<10} {size:>5} B values {rec['rss_bytes_per_key']:>8.1f} B/key resident "
                          f"({done:,} keys)")
    finally:
        fleet.stop(sp)


# --- flamepy ---------------------------------------------------------------------

#: Ids of the measurements outside the grid, for ``--only``.
FLAMEPY_ID = "flamepy/noop"
RECOVERY_LOG_ID = "recovery/log"
RECOVERY_SNAPSHOT_ID = "recovery/snapshot"

_FLAMEPY_CALL = ("import json, sys\n"
                 "from bench.flamepy_bench import run, run_runner\n"
                 "res = run(sys.argv[1], tasks=int(sys.argv[2]), instances=int(sys.argv[3]), "
                 "max_seconds=float(sys.argv[4]))\n"
                 "# the runner row beside it: the same no-op as a flamepy.runner function service\n"
                 "rr = run_runner(sys.argv[1], tasks=min(2000, int(sys.argv[2])), instances=int(sys.argv[3]), "
                 "max_seconds=float(sys.argv[4]))\n"
                 "res['runner_calls_per_s'] = rr.get('tasks_per_s')\n"
                 "print(json.dumps(res), flush=True)\n")


def measure_flamepy(run: Run, fleet: Fleet) -> None:
    """flamepy no-op tasks/s: ``bench.flamepy_bench.run`` (pinned to the load core) against a fresh flo-server
    with its embedded executor (the service instances it starts share the server's core), once per repetition
    (a fresh server each time); the record is the run with the median tasks/s, with every run's figure."""
    runs = [r for r in (_flamepy_once(run, fleet) for _ in range(run.budget.reps)) if r is not None]
    if not runs:
        return
    ok = sorted((r for r in runs if r.get("tasks_per_s")), key=lambda r: r["tasks_per_s"])
    rec = dict(ok[len(ok) // 2]) if ok else runs[-1]
    rec["runs_tasks_per_s"] = [r.get("tasks_per_s") for r in runs]
    run.emit(rec)
    if rec.get("error"):
        run.note(f"flamepy: {rec['error'].splitlines()[-1] if rec['error'] else 'failed'}")
    run.progress.step(f"flamepy no-op {rec.get('tasks_per_s') or 0:>11,.0f} tasks/s (median of {len(runs)})")


def _flamepy_once(run: Run, fleet: Fleet) -> dict | None:
    b = run.budget
    try:
        sp = fleet.start_flo(label="flo-server-flamepy", executor=True)
    except Exception as e:  # noqa: BLE001 - reported, not fatal
        run.note(f"flamepy: flo-server did not start: {str(e).splitlines()[0]}")
        return None
    rec: dict = {"type": "flamepy", "id": FLAMEPY_ID, "tasks": b.flamepy_tasks, "instances": b.flamepy_instances,
                 "max_seconds": b.flamepy_seconds}
    try:
        argv = fleet.load_cpu + [fleet.python, "-c", _FLAMEPY_CALL, f"{HOST}:{sp.port}", str(b.flamepy_tasks),
                                 str(b.flamepy_instances), str(b.flamepy_seconds)]
        cpu0, t0 = sp.cpu_seconds(), time.monotonic()
        try:
            # run() caps its burst at max_seconds, then a single-task probe and the warm-up: a generous hard stop.
            out = subprocess.run(argv, capture_output=True, text=True, timeout=2 * b.flamepy_seconds + 90, cwd=REPO)
            lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
            if out.returncode == 0 and lines:
                rec.update(json.loads(lines[-1]))
            else:
                rec["error"] = (out.stderr or out.stdout).strip()[-400:]
        except subprocess.TimeoutExpired:
            rec["error"] = "flamepy_bench.run did not finish"
        wall = time.monotonic() - t0
        rec["wall_s"] = round(wall, 2)
        rec["server_cpu_pct"] = round(100 * (sp.cpu_seconds() - cpu0) / wall, 1) if wall else None
    finally:
        fleet.stop(sp)
    return rec


# --- recovery ---------------------------------------------------------------------

_RECOVERED = re.compile(r"snapshot at LSN (\d+), (\d+) record\(s\) replayed in ([0-9.]+)s")


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.exists() else 0


def _restart_timed(run: Run, fleet: Fleet, data: Path, label: str, extra: tuple[str, ...]) -> dict:
    """Start flo-server on ``data`` again: seconds until ``flo-server ready``, and what it says it recovered."""
    sp = fleet.start_flo(fsync="no", label=label, data_dir=data, extra=extra, executor=False, timeout=900)
    try:
        m = None
        for line in sp.log.read_text(errors="replace").splitlines()[::-1]:
            m = _RECOVERED.search(line)
            if m:
                break
        return {"ready_s": round(sp.ready_s or 0.0, 3), "rss_after_recovery": sp.rss_bytes(),
                "snapshot_lsn": int(m.group(1)) if m else None, "replayed": int(m.group(2)) if m else None,
                "replay_s": float(m.group(3)) if m else None}
    finally:
        sp.kill9()
        fleet.stop(sp)


def measure_recovery(run: Run, fleet: Fleet, which: tuple[str, ...]) -> None:
    """Start-up time of flo-server over a long log (kill -9, no snapshot) and over a snapshot of N keys."""
    b = run.budget
    base = fleet.rundir / "recovery"
    if RECOVERY_LOG_ID in which:
        # Keep a bounded keyspace so memory stays small while the log grows; no snapshot while writing
        # (--snapshot-bytes above the log size), so start-up replays the whole log.
        data = base / "log"
        value = 4000
        per_record = value + 64
        n = max(1, b.recovery_log_bytes // per_record)
        extra = ("--snapshot-bytes", str(4 * b.recovery_log_bytes + (64 << 20)))
        rec: dict = {"type": "recovery", "id": RECOVERY_LOG_ID, "target_bytes": b.recovery_log_bytes}
        try:
            sp = fleet.start_flo(fsync="no", label="flo-server-recovery-log", data_dir=data, extra=extra,
                                 executor=False)
            try:
                load = _loadgen(run, sp.port, "flo", "kv.set", 8, 32, value, n, b.recovery_write_seconds,
                                extra=("--keyspace", "10000"))
            finally:
                sp.kill9()  # a crash: nothing is snapshotted on the way out
                fleet.stop(sp)
            rec.update(records_written=load.get("completed", 0), write_ops_s=load.get("ops_s"),
                       write_errors=load.get("errors", 0), log_bytes=_dir_bytes(data / "log"))
            rec.update(_restart_timed(run, fleet, data, "flo-server-recovery-log-restart", extra))
            _rates(rec, rec["log_bytes"])
        except Exception as e:  # noqa: BLE001 - reported
            rec["error"] = str(e).strip().splitlines()[0]
        finally:
            shutil.rmtree(data, ignore_errors=True)
        _emit_recovery(run, rec)
    if RECOVERY_SNAPSHOT_ID in which:
        # N keys (16-byte keys, 100-byte values), then a clean stop: the shutdown snapshot holds them all.
        data = base / "snapshot"
        n = b.recovery_snapshot_keys
        rec = {"type": "recovery", "id": RECOVERY_SNAPSHOT_ID, "keys": n}
        try:
            sp = fleet.start_flo(fsync="no", label="flo-server-recovery-snap", data_dir=data, executor=False)
            try:
                load = _loadgen(run, sp.port, "flo", "kv.set", 4, 64, 100, n, b.recovery_write_seconds,
                                extra=("--sequential", "--key-width", "12"))
            finally:
                sp.stop(grace=300)  # SIGTERM: the clean shutdown writes the snapshot
                fleet.stop(sp)
            rec.update(records_written=load.get("completed", 0), write_ops_s=load.get("ops_s"),
                       write_errors=load.get("errors", 0), snapshot_bytes=_dir_bytes(data / "snap"),
                       log_bytes=_dir_bytes(data / "log"))
            rec.update(_restart_timed(run, fleet, data, "flo-server-recovery-snap-restart", ()))
            _rates(rec, rec["snapshot_bytes"])
        except Exception as e:  # noqa: BLE001 - reported
            rec["error"] = str(e).strip().splitlines()[0]
        finally:
            shutil.rmtree(data, ignore_errors=True)
        _emit_recovery(run, rec)


def _rates(rec: dict, nbytes: int) -> None:
    t = rec.get("ready_s") or 0
    if t > 0:
        rec["mb_s"] = round(nbytes / 1e6 / t, 1)
        rec["records_s"] = round((rec.get("records_written") or 0) / t, 1)


def _emit_recovery(run: Run, rec: dict) -> None:
    run.emit(rec)
    if rec.get("error"):
        run.note(f"{rec['id']}: {rec['error']}")
    if rec.get("write_errors"):
        run.note(f"{rec['id']}: {rec['write_errors']} errors while writing the data")
    size = rec.get("log_bytes") if rec["id"] == RECOVERY_LOG_ID else rec.get("snapshot_bytes")
    run.progress.step(f"{rec['id']:<20} {(size or 0) / 1e6:>8.1f} MB  ready in {rec.get('ready_s') or 0:.2f} s")


# --- entry point ------------------------------------------------------------------


def run_bench(opts: Options) -> Path:
    """Run the grid and write the results directory; returns its path."""
    reasons = debug_build_reasons()
    if reasons and not opts.allow_debug:
        raise SystemExit("refusing to benchmark a debug build of flo_core:\n  " + "\n  ".join(reasons)
                         + "\nrebuild with `make compile` (without FLO_DEBUG), or pass --allow-debug for a smoke run")
    # SIGTERM unwinds like Ctrl-C, so every server we started is still stopped by its pid.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    budget = QUICK if opts.quick else FULL
    if opts.reps or opts.max_seconds:
        budget = Budget(**{**asdict(budget), **({"reps": opts.reps} if opts.reps else {}),
                           **({"max_seconds": opts.max_seconds} if opts.max_seconds else {})})
    cells = grid(opts.quick)
    extras = [FLAMEPY_ID, RECOVERY_LOG_ID, RECOVERY_SNAPSHOT_ID]
    if opts.only:
        pat = re.compile(opts.only)
        cells = [c for c in cells if pat.search(c.id)]
        # The cluster group (bench/cluster_bench.py, its own etcd and members) runs only when --only names it.
        extras = [x for x in extras + list(cluster_bench.IDS) if pat.search(x)]
    if not opts.flo:
        extras = []
    outdir = opts.out or RESULTS / datetime.now().strftime("%Y-%m-%d_%H%M%S")
    outdir.mkdir(parents=True, exist_ok=True)
    redis_problem = ensure_redis(opts.install, log=lambda m: print(m, file=sys.stderr))
    env = environment()
    env.update(mode="quick" if opts.quick else "full", budget=asdict(budget), debug_reasons=reasons,
               started_at=datetime.now().isoformat(timespec="seconds"),
               pinning=" / ".join(" ".join(p) or "none" for p in cpu_layout()))
    steps = sum(len(c.servers) for c in cells) * budget.reps + len(extras) + (5 if opts.memory and not opts.only else 0)
    progress = Progress(steps)
    t_start = time.monotonic()
    with open(outdir / "results.jsonl", "w") as jsonl, Fleet(outdir / "run") as fleet:
        run = Run(opts, budget, outdir, fleet, jsonl, progress)
        run.emit({"type": "env", **env})
        if redis_problem:
            run.note(f"redis column left empty: {redis_problem}")
        load = os.getloadavg()[0]
        if load > 0.5:
            run.note(f"the machine was not idle at the start (load average {load:.2f}): other processes share the "
                     "cores, so treat these numbers as noisy and compare only ratios from this run")
        if reasons:
            run.note("DEBUG BUILD: these numbers are not comparable (" + "; ".join(reasons) + ")")
        try:
            _run_grid(run, fleet, cells, redis_problem is None)
            if FLAMEPY_ID in extras:
                measure_flamepy(run, fleet)
            if RECOVERY_LOG_ID in extras or RECOVERY_SNAPSHOT_ID in extras:
                measure_recovery(run, fleet, tuple(extras))
            if any(x in cluster_bench.IDS for x in extras):
                cluster_bench.measure(run, tuple(x for x in extras if x in cluster_bench.IDS))
            if opts.memory and not opts.only:
                measure_memory(run, fleet)
        finally:
            fleet.stop_all()
            progress.close()
            # The servers' data dirs can reach gigabytes: keep only their logs (and no throwaway keys).
            for d in (outdir / "run").iterdir() if (outdir / "run").is_dir() else ():
                if d.is_dir() and (d.name.startswith(("data-", "redis-")) or d.name == "security"):
                    shutil.rmtree(d, ignore_errors=True)
        summary = summarize(run.records, cells)
        for row in summary:
            run.emit(row)
        run.emit({"type": "servers", "started": [{"name": n, "pid": p, "port": port} for n, p, port in fleet.history],
                  "all_stopped": not fleet.procs})
        run.emit({"type": "done", "seconds": round(time.monotonic() - t_start, 1), "notes": run.notes,
                  "loadavg_end": os.getloadavg()})
    report.write(outdir, env, summary, [r for r in run.records if r["type"] == "memory"], run.notes,
                 plots=opts.plots, extras=[r for r in run.records if r["type"] in ("flamepy", "recovery")])
    cluster_md = cluster_bench.markdown(run.records)
    if cluster_md:
        with open(outdir / "summary.md", "a") as f:
            f.write("\n" + cluster_md)
    print((outdir / "summary.md").read_text())
    print(f"results: {outdir}", file=sys.stderr)
    return outdir


def _run_grid(run: Run, fleet: Fleet, cells: list[Cell], have_redis: bool) -> None:
    """Normal cells share one set of servers; each durability mode gets its own pair; the security group gets
    fresh servers (plain flo-server beside its variants, every store starting empty, so they differ in nothing else)."""
    batches: dict[tuple[str | None, bool], list[Cell]] = {}
    for c in cells:
        batches.setdefault((c.fsync, c.group == "security"), []).append(c)
    for (fsync, _), group in batches.items():
        servers = _start(run, fleet, {name for c in group for name in c.servers}, fsync, have_redis)
        for cell in group:
            run_cell(run, cell, servers)
        for sp in servers.values():
            if sp is not None:
                fleet.stop(sp)


def _start(run: Run, fleet: Fleet, names: set[str], fsync: str | None, have_redis: bool) -> dict[str, ServerProc | None]:
    servers: dict[str, ServerProc | None] = {}
    for name in sorted(names):
        try:
            if name == FLO:
                # Plain cells run flo-server as a user gets it (its default fsync policy).
                servers[name] = fleet.start_flo(fsync=fsync) if run.opts.flo else None
            elif name in VARIANTS:
                # The same flo-server plus one setting; measure() tells the load generator how to connect.
                sp = None
                if run.opts.flo:
                    v = VARIANTS[name](run.secrets)
                    sp = fleet.start_flo(fsync=fsync, label=name, extra=v.flags, env=dict(v.env))
                    sp.info.update(client=v.client, scrape=v.scrape)
                    if v.scrape and not sp.info["http_port"]:
                        fleet.stop(sp)
                        raise RuntimeError("no HTTP side port in its ready line")
                servers[name] = sp
            elif name == REDIS:
                servers[name] = fleet.start_redis(AOF_OF_FSYNC[fsync or "no"]) if have_redis else None
            elif name == REDIS_AOF:
                servers[name] = fleet.start_redis("everysec", label=REDIS_AOF) if have_redis else None
            elif name == CEILING:
                servers[name] = fleet.start_ceiling()
        except Exception as e:  # noqa: BLE001 - reported in the notes; the other columns still run
            servers[name] = None
            run.note(f"{name} did not start{f' (fsync={fsync})' if fsync else ''}: {str(e).strip().splitlines()[0]}")
    if not run.opts.flo:
        run.note("flo-server skipped (--no-flo)")
    return servers

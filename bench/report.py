"""Turn a run's summaries into ``summary.md`` and PNG plots, and judge the targets.

The targets come from ``perf-anchors.md`` (the issue lists them); each is
reported as met / not met / not measured with the numbers it was judged on.
Nothing here fails a run: the report is for people.

Example::

    write(outdir, env, summary_rows, memory_records, notes)   # summary.md + *.png
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

FLO, REDIS, CEILING = "flo-server", "redis", "ceiling"
LOADGEN_BUSY_PCT = 90  # a load generator this busy may be what limits a cell (its ratio is then a lower bound)
REDIS_AOF = "redis-aof"  # Redis with appendonly yes, appendfsync everysec: like for like with flo-server's default
#: flo-server with security on (the harness's ``VARIANTS`` say how each is started), group ``security``, a
#: second plain one: its ratio to the first is the noise floor the others are read against (A/A), and flo-server
#: without metrics and with them scraped (the cost of metrics: flo+metrics / flo+nometrics).
SECURITY = AUTH, TLS, RESTRICTED, AGAIN, NOMETRICS, METRICS = (
    "flo+auth", "flo+tls", "flo+restricted", "flo-server-2", "flo+nometrics", "flo+metrics")
SETTINGS = {FLO: "plain: no auth, no TLS (metrics counted, no HTTP port)",
            AUTH: "--requirepass, AUTH first (default user)", TLS: "TLS + --requirepass",
            RESTRICTED: "users file: read/write in one namespace",
            AGAIN: "plain again, another process (A/A)", NOMETRICS: "FLO_NO_METRICS=1 --http-port 0: no counting",
            METRICS: "--http-port -1, /metrics scraped 1/s"}
#: The ratio shown for each in the security table: to plain, except metrics: to no metrics.
BASELINE = {METRICS: NOMETRICS}
SERVERS = (FLO, REDIS_AOF, REDIS, CEILING, *SECURITY)
COLORS = {FLO: "#1f77b4", REDIS: "#d62728", REDIS_AOF: "#ff9896", CEILING: "#7f7f7f", AUTH: "#2ca02c", TLS: "#ff7f0e",
          RESTRICTED: "#9467bd", AGAIN: "#aec7e8", NOMETRICS: "#8c564b", METRICS: "#e377c2"}


@dataclass
class Verdict:
    target: str
    measured: str
    status: str  # met | not met | not measured


def _find(rows: list[dict], **want: object) -> list[dict]:
    return [r for r in rows if all(r.get(k) == v for k, v in want.items())]


def _us_per_op(srv: dict | None) -> str:
    """The server's CPU time per operation: the figure that does not depend on the load generator."""
    if not srv or not srv.get("ops_s") or srv.get("server_cpu_pct") is None:
        return "-"
    return f"{srv['server_cpu_pct'] * 10_000 / srv['ops_s']:.2f}"


def _ratio_target(rows: list[dict], name: str, ratio: str, goal: float | None, workloads: tuple[str, ...],
                  **shape: object) -> Verdict:
    """Met when every matching cell's ratio reaches ``goal``; with no goal the ratios are just reported."""
    parts, vals = [], []
    for wl in workloads:
        for r in _find(rows, workload=wl, **shape):
            v = r["ratios"].get(ratio)
            if v is not None:
                vals.append(v)
                parts.append(f"{wl} {v:.2f}x")
    if not vals:
        return Verdict(name, "-", "not measured")
    if goal is None:
        return Verdict(name, ", ".join(parts), "reported")
    return Verdict(name, ", ".join(parts), "met" if min(vals) >= goal else "not met")


def _policy_target(rows: list[dict], name: str, goal: float) -> Verdict:
    """flo-server's own durable ``everysec`` figure against its ``fsync=no`` one (SET, K=1, 50 conns)."""
    got = {}
    for policy in ("everysec", "no"):
        for r in _find(rows, workload="kv.set", group="durability", fsync=policy, conns=50):
            s = r["servers"].get(FLO)
            if s and s.get("ops_s"):
                got[policy] = s["ops_s"]
    if len(got) < 2:
        return Verdict(name, "-", "not measured")
    v = got["everysec"] / got["no"]
    return Verdict(name, f"{got['everysec']:,.0f} vs {got['no']:,.0f} ops/s = {v:.2f}x", "met" if v >= goal else "not met")


def _latency_target(rows: list[dict], name: str, goal_us: float, **shape: object) -> Verdict:
    parts, vals = [], []
    for wl in ("kv.set", "kv.get"):
        for r in _find(rows, workload=wl, **shape):
            s = r["servers"].get(FLO)
            if s and s.get("p50_us") is not None:
                vals.append(s["p50_us"])
                parts.append(f"{wl} p50 {s['p50_us']:.0f} µs")
    if not vals:
        return Verdict(name, "-", "not measured")
    return Verdict(name, ", ".join(parts), "met" if max(vals) <= goal_us else "not met")


#: Issue 20: resident memory per key at most 1.2x Redis's INFO used_memory per key.
MEMORY_GOAL = 1.2


def _memory_targets(memory: list[dict]) -> list[Verdict]:
    """One verdict per value size measured (100 B is the headline; 4 KiB values beside it)."""
    sizes = sorted({m.get("value_bytes", 100) for m in memory}) or [100]
    return [_memory_target([m for m in memory if m.get("value_bytes", 100) == size], size) for size in sizes]


def _memory_target(memory: list[dict], size: int = 100) -> Verdict:
    name = f"memory per key ≤ {MEMORY_GOAL}× Redis (16 B keys, {size:,} B values)"
    flo = next((m for m in memory if m["server"] == FLO and m.get("keys")), None)
    red = next((m for m in memory if m["server"] == REDIS and m.get("keys")), None)
    if not flo or not red:
        return Verdict(name, "-", "not measured")
    ref = red.get("used_memory_bytes_per_key") or red["rss_bytes_per_key"]
    ratio = flo["rss_bytes_per_key"] / ref if ref else math.inf
    return Verdict(name, f"{flo['rss_bytes_per_key']:.0f} B/key vs Redis {ref:.0f} B/key (INFO used_memory) = "
                         f"{ratio:.2f}x ({flo['keys']:,} keys)", "met" if ratio <= MEMORY_GOAL else "not met")


def _flamepy_target(extras: list[dict]) -> Verdict:
    name = "flamepy ≥ 30,000 tasks/s (no-op tasks through Session, embedded executor; issue 16)"
    r = next((e for e in extras if e.get("type") == "flamepy"), None)
    if r is None or not r.get("tasks_per_s"):
        return Verdict(name, "-" if r is None else f"failed: {str(r.get('error', ''))[-120:]}", "not measured")
    v = r["tasks_per_s"]
    return Verdict(name, f"{v:,.0f} tasks/s ({r.get('completed') or 0:,} of {r.get('tasks') or 0:,} tasks, "
                         f"{r.get('instances')} instances, p50 {r.get('p50_ms', '-')} ms)",
                   "met" if v >= 30_000 else "not met")


def _recovery_rows(extras: list[dict]) -> list[Verdict]:
    """Start-up times: there is no target for them; they are reported beside the targets."""
    out = []
    for e in extras:
        if e.get("type") != "recovery":
            continue
        if e["id"] == "recovery/log":
            name = "recovery: replay a log (kill -9, no snapshot)"
            size = e.get("log_bytes")
        else:
            name = f"recovery: load a snapshot of {e.get('keys', 0):,} keys"
            size = e.get("snapshot_bytes")
        if e.get("error") or not e.get("ready_s"):
            out.append(Verdict(name, f"failed: {e.get('error', '')}"[:160], "not measured"))
            continue
        out.append(Verdict(name, f"{(size or 0) / 1e6:,.0f} MB, {e.get('records_written', 0):,} records: ready in "
                                 f"{e['ready_s']:.2f} s = {e.get('mb_s', 0):,.0f} MB/s, "
                                 f"{e.get('records_s', 0):,.0f} records/s", "reported"))
    return out


def verdicts(rows: list[dict], memory: list[dict], extras: list[dict] | None = None) -> list[Verdict]:
    """Every target of the issue, judged on this run's medians."""
    extras = extras or []
    k16 = dict(group="kv", proto="flo", conns=50, window=16, value_size=100)
    k1 = dict(group="kv", proto="flo", conns=50, window=1, value_size=100)
    setget = ("kv.set", "kv.get")
    resp = ("kv.set", "kv.get", "kv.incr", "list.lpush", "list.rpop", "stream.append")  # issue 8's list
    sec = dict(group="security", conns=50, window=16, value_size=100)
    return [
        _ratio_target(rows, "KV K=16 ≥ 0.7× the ceiling", f"{FLO}/{CEILING}", 0.7, setget, **k16),
        _ratio_target(rows, "KV K=16 ≥ 1.0× Redis AOF everysec (SET/GET P16, like for like)", f"{FLO}/{REDIS_AOF}", 1.0,
                      setget, **k16),
        _ratio_target(rows, "KV K=16 ≥ 1.0× Redis without persistence", f"{FLO}/{REDIS}", 1.0, setget, **k16),
        _ratio_target(rows, "KV K=1 within 10 % of Redis AOF everysec", f"{FLO}/{REDIS_AOF}", 0.9, setget, **k1),
        _latency_target(rows, "1-connection p50 ≤ 80 µs", 80.0, group="kv", proto="flo", conns=1, window=1,
                        value_size=100),
        _ratio_target(rows, "RESP P16 ≥ 0.5× Redis AOF everysec", f"{FLO}/{REDIS_AOF}", 0.5, resp, group="resp",
                      conns=50, window=16, value_size=100),
        _ratio_target(rows, "RESP P1 ≥ 0.9× Redis AOF everysec", f"{FLO}/{REDIS_AOF}", 0.9, resp, group="resp",
                      conns=50, window=1, value_size=100),
        _ratio_target(rows, "stream append P16 ≥ 0.5× Redis XADD (AOF everysec)", f"{FLO}/{REDIS_AOF}", 0.5,
                      ("stream.append",), group="stream", conns=50, window=16),
        _ratio_target(rows, "durable always ≥ 1.0× Redis AOF always", f"{FLO}/{REDIS}", 1.0, ("kv.set",),
                      group="durability", fsync="always", conns=50),
        _policy_target(rows, "durable everysec ≥ 0.9× flo-server's fsync=no (SET K=1, 50 conns)", 0.9),
        *_memory_targets(memory),
        _flamepy_target(extras),
        _ratio_target(rows, "auth costs ≤ 3 % (--requirepass + AUTH vs plain flo-server, KV K=16)", f"{AUTH}/{FLO}",
                      0.97, setget, **sec),
        _ratio_target(rows, "metrics cost ≤ 3 %: metrics ≥ 0.97× (counting, HTTP port, /metrics scraped 1/s vs "
                      "FLO_NO_METRICS=1 --http-port 0, KV K=16)", f"{METRICS}/{NOMETRICS}", 0.97, setget, **sec),
        _ratio_target(rows, "metrics counting alone (plain flo-server, no HTTP port, vs FLO_NO_METRICS=1), KV K=16",
                      f"{FLO}/{NOMETRICS}", None, setget, **sec),
        _ratio_target(rows, "TLS (+ --requirepass) vs plain flo-server, KV K=16", f"{TLS}/{FLO}", None, setget, **sec),
        _ratio_target(rows, "restricted user (Python permission check) vs plain flo-server, KV K=16",
                      f"{RESTRICTED}/{FLO}", None, setget, **sec),
        _ratio_target(rows, "A/A: a second plain flo-server vs the first (the noise of the ratios above)",
                      f"{AGAIN}/{FLO}", None, setget, **sec),
        *_recovery_rows(extras),
    ]


# --- markdown ------------------------------------------------------------------------


def _fmt_ops(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _fmt_lat(s: dict | None) -> str:
    if not s or s.get("p50_us") is None:
        return "-"
    p99 = s.get("p99_us")
    return f"{s['p50_us']:,.0f} / {p99:,.0f}" if p99 is not None else f"{s['p50_us']:,.0f}"


def markdown(env: dict, rows: list[dict], memory: list[dict], notes: list[str], extras: list[dict] | None = None) -> str:
    extras = extras or []
    out = [f"# flo-server benchmark ({env.get('mode', '?')})", ""]
    sha = env.get("git_sha", "?")[:12] + (" (dirty)" if env.get("git_dirty") else "")
    out += [
        f"git {sha} · Python {env.get('python')} · Cython {env.get('cython')} · uvloop {env.get('uvloop')} · "
        f"{env.get('cpu')} × {env.get('cpu_count')} · {env.get('redis_server', '')}",
        f"started {env.get('started_at')} · pinning (server / load) {env.get('pinning')} · "
        f"{env.get('budget', {}).get('reps')} repetitions, medians; ratios are medians of per-repetition ratios",
        "",
    ]
    if env.get("debug_build"):
        out += ["**DEBUG BUILD - not comparable.**", ""]
    out += ["## Targets", "", "| target | measured | status |", "|---|---|---|"]
    for v in verdicts(rows, memory, extras):
        mark = {"met": "✅ met", "not met": "❌ not met", "reported": "ℹ️ reported (no target)"}.get(
            v.status, "– not measured")
        out.append(f"| {v.target} | {v.measured} | {mark} |")
    out.append("")
    titles = {"kv": "KV over Flo wire v2 (Redis over RESP, same load generator)",
              "resp": "RESP (redis-benchmark against both: SET, GET, INCR, LPUSH, RPOP, XADD)",
              "stream": "Streams: append (Redis XADD), read of 10 from an id (XRANGE ... COUNT 10), "
                        "group read of 10 -> ack (XREADGROUP -> XACK)",
              "queue": "Queues: enqueue, and enqueue -> dequeue -> ack cycles (Redis LPUSH; LPUSH -> RPOPLPUSH -> LREM)",
              "action": "Actions: invoke -> complete round trips with ActionWorker processes: action.roundtrip is one "
                        "request (ACTION_INVOKE with WAIT_MS, client.action.call), action.invoke_result two (ACTION_INVOKE "
                        "-> ACTION_RESULT); beside the queue cycle at the same shape; ops/s = round trips/s, "
                        "latency = end to end",
              "durability": "Durability: flo-server fsync vs Redis AOF (SET, K=1)"}
    for group, title in titles.items():
        mine = [r for r in rows if r["group"] == group]
        if not mine:
            continue
        has_ceiling = any(CEILING in r["servers"] for r in mine)
        has_aof = any(REDIS_AOF in r["servers"] for r in mine)
        head = ["workload", "K", "conns", "value"] + (["fsync"] if group == "durability" else [])
        head += ["workers"] if group == "action" else []
        head += ["flo ops/s"] + (["redis AOF ops/s"] if has_aof else []) + ["redis ops/s"]
        head += ["ceiling ops/s"] if has_ceiling else []
        head += (["flo/redis AOF"] if has_aof else []) + ["flo/redis"] + (["flo/ceiling"] if has_ceiling else [])
        head += ["flo p50/p99 µs", "redis p50/p99 µs"] + (["ceiling p50/p99 µs"] if has_ceiling else [])
        head += ["flo CPU %", "flo µs/op"] + (["redis AOF µs/op"] if has_aof else [])
        out += [f"## {title}", "", f"A ratio marked ≥ is a lower bound: the load generator's core (with the action workers, where "
                f"a cell has them) was ≥ {LOADGEN_BUSY_PCT} % busy, so it may have been the limit.", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for r in mine:
            s = r["servers"]
            size = f"{r['value_size']} B" if r["value_size"] < 1024 else f"{r['value_size'] // 1024} KiB"
            cells = [r["workload"], str(r["window"]), str(r["conns"]), size] + ([r["fsync"]] if group == "durability" else [])
            cells += [str(r.get("workers") or "-")] if group == "action" else []
            cells += [_fmt_ops((s.get(FLO) or {}).get("ops_s"))]
            cells += [_fmt_ops((s.get(REDIS_AOF) or {}).get("ops_s"))] if has_aof else []
            cells += [_fmt_ops((s.get(REDIS) or {}).get("ops_s"))]
            if has_ceiling:
                cells.append(_fmt_ops((s.get(CEILING) or {}).get("ops_s")))
            # A load generator whose core was ≥ 90 % busy may have been the limit: flo's figure (and the
            # ratio) is then a lower bound, marked "≥".
            bound = "≥" if load_busy(s.get(FLO)) >= LOADGEN_BUSY_PCT else ""
            for den in ([REDIS_AOF] if has_aof else []) + [REDIS]:
                rr = r["ratios"].get(f"{FLO}/{den}")
                cells.append("-" if rr is None else f"{bound}{rr:.2f}")
            if has_ceiling:
                rc = r["ratios"].get(f"{FLO}/{CEILING}")
                cells.append("-" if rc is None else f"{rc:.2f}")
            cells += [_fmt_lat(s.get(FLO)), _fmt_lat(s.get(REDIS))] + ([_fmt_lat(s.get(CEILING))] if has_ceiling else [])
            cpu = (s.get(FLO) or {}).get("server_cpu_pct")
            cells.append("-" if cpu is None else f"{cpu:.0f}")
            cells += [_us_per_op(s.get(FLO))] + ([_us_per_op(s.get(REDIS_AOF))] if has_aof else [])
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    out += _security_table(rows)
    if memory:
        out += ["## Memory (fresh servers, sequential 16-byte keys)", "",
                "| server | value bytes | keys | resident B/key | INFO used_memory B/key |", "|---|---|---|---|---|"]
        for m in memory:
            um = m.get("used_memory_bytes_per_key")
            out.append(f"| {m['server']} | {m.get('value_bytes', 100):,} | {m['keys']:,} | {m['rss_bytes_per_key']:,.1f} | "
                       f"{'-' if um is None else f'{um:,.1f}'} |")
        out.append("")
    fl = [e for e in extras if e.get("type") == "flamepy"]
    if fl:
        out += ["## flamepy: no-op tasks through the embedded executor (bench/flamepy_bench.py)", "",
                "| tasks | completed | instances | tasks/s | p50 / p99 ms | single task p50 ms | flo CPU % "
                "| runner calls/s (function service, no-op) |",
                "|---|---|---|---|---|---|---|---|"]
        for e in fl:
            out.append(f"| {e.get('tasks') or 0:,} | {e.get('completed', '-')} | {e.get('instances', '-')} | "
                       f"{_fmt_ops(e.get('tasks_per_s'))} | {e.get('p50_ms', '-')} / {e.get('p99_ms', '-')} | "
                       f"{e.get('single_task_p50_ms', '-')} | {e.get('server_cpu_pct', '-')} | "
                       f"{_fmt_ops(e.get('runner_calls_per_s'))} |")
        out.append("")
    rc = [e for e in extras if e.get("type") == "recovery"]
    if rc:
        out += ["## Recovery: flo-server start-up until `flo-server ready`", "",
                "| what | data | records | on disk MB | ready s | replay s (server log) | MB/s | records/s |",
                "|---|---|---|---|---|---|---|---|"]
        for e in rc:
            log_case = e["id"] == "recovery/log"
            what = "log replay after kill -9" if log_case else "snapshot load after a clean stop"
            data = "4 KB values, 10k keys" if log_case else "16 B keys, 100 B values"
            size = e.get("log_bytes") if log_case else e.get("snapshot_bytes")
            out.append(f"| {what} | {data} | {e.get('records_written', 0):,} | {(size or 0) / 1e6:,.1f} | "
                       f"{e.get('ready_s', '-')} | {e.get('replay_s', '-')} | {e.get('mb_s', '-')} | "
                       f"{_fmt_ops(e.get('records_s'))} |")
        out.append("")
    if notes:
        out += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(out)


def _security_table(rows: list[dict]) -> list[str]:
    """One line per (cell, variant): ops/s and its same-run ratio to plain flo-server."""
    mine = [r for r in rows if r["group"] == "security"]
    if not mine:
        return []
    out = ["## Security and metrics: the cost of auth, TLS, a restricted user and metrics (KV over Flo wire v2, "
           "fresh servers, ratios to plain flo-server - flo+metrics: to flo+nometrics - in the same run)", "",
           "| workload | K | conns | value | server | setting | ops/s | ratio (to) | p50/p99 µs | flo CPU % "
           "| flo CPU µs/op | load CPU % |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in mine:
        for name in (FLO, *SECURITY):
            s = r["servers"].get(name)
            if s is None:
                continue
            base = BASELINE.get(name, FLO)
            ratio = 1.0 if name == FLO else r["ratios"].get(f"{name}/{base}")
            shown = "-" if ratio is None else f"{ratio:.3f}" + ("" if base == FLO else f" ({base})")
            setting = SETTINGS[name] + (f" ({s['scrapes_timed']} in the timed phases, {s['scrape_errors']} failed)"
                                        if "scrapes" in s else "")
            cpu, ops = s.get("server_cpu_pct"), s.get("ops_s")
            # The server's CPU time per op: its cost, less swayed than ops/s when the machine loses time to others.
            per_op = f"{cpu * 1e4 / ops:.2f}" if cpu and ops else "-"
            load = s.get("loadgen_cpu_pct")
            out.append(f"| {r['workload']} | {r['window']} | {r['conns']} | {r['value_size']} B | {name} | "
                       f"{setting} | {_fmt_ops(ops)} | {shown} | "
                       f"{_fmt_lat(s)} | {'-' if cpu is None else f'{cpu:.0f}'} | {per_op} | "
                       f"{'-' if load is None else f'{load:.0f}'} |")
    return out + [""]


def load_busy(summary: dict | None) -> float:
    """How busy the load side was (%): the generator's own CPU, or its whole core where that was
    measured (an action cell's workers share it), whichever is higher."""
    s = summary or {}
    return max(s.get("loadgen_cpu_pct") or 0, s.get("load_core_busy_pct") or 0)


# --- plots ---------------------------------------------------------------------------


def plot_group(rows: list[dict], group: str, path: Path) -> bool:
    """Throughput and p50/p99 per cell, flo-server beside Redis beside the ceiling."""
    mine = [r for r in rows if r["group"] == group and r["servers"]]
    if not mine:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [s for s in SERVERS if any(s in r["servers"] for r in mine)]
    labels = [_short(r) for r in mine]
    x = list(range(len(mine)))
    width = 0.8 / len(names)
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(8, 0.9 * len(mine) + 3), 8), sharex=True)
    for i, name in enumerate(names):
        xs = [p + (i - (len(names) - 1) / 2) * width for p in x]
        ops = [(r["servers"].get(name) or {}).get("ops_s") or 0 for r in mine]
        ax1.bar(xs, ops, width, label=name, color=COLORS[name])
        p50 = [(r["servers"].get(name) or {}).get("p50_us") or 0 for r in mine]
        p99 = [(r["servers"].get(name) or {}).get("p99_us") or 0 for r in mine]
        ax2.bar(xs, p50, width, color=COLORS[name], label=f"{name} p50")
        ax2.scatter(xs, p99, color=COLORS[name], marker="_", s=200, linewidths=2, label=f"{name} p99")
    ax1.set_ylabel("ops/s (median)")
    ax1.set_title(f"{group}: throughput")
    ax1.legend()
    ax2.set_ylabel("latency µs (bar p50, tick p99)")
    ax2.set_yscale("log")
    ax2.set_title(f"{group}: latency")
    ax2.set_xticks(x)
    ax2.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _short(r: dict) -> str:
    size = f"{r['value_size']}B" if r["value_size"] < 1024 else f"{r['value_size'] // 1024}K"
    s = f"{r['workload']} K{r['window']} c{r['conns']} {size}"
    return s + (f" {r['fsync']}" if r.get("fsync") else "") + (f" w{r['workers']}" if r.get("workers") else "")


def plot_memory(memory: list[dict], path: Path) -> bool:
    if not memory:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    memory = [m for m in memory if m.get("value_bytes", 100) == 100]  # the headline size
    if not memory:
        plt.close(fig)
        return False
    names = [m["server"] for m in memory]
    ax.bar(names, [m["rss_bytes_per_key"] for m in memory], color=[COLORS.get(n, "#333") for n in names],
           label="resident")
    um = [(m["server"], m["used_memory_bytes_per_key"]) for m in memory if m.get("used_memory_bytes_per_key")]
    if um:
        ax.scatter([n for n, _ in um], [v for _, v in um], color="black", marker="_", s=300, label="INFO used_memory")
    ax.set_ylabel("bytes per key")
    ax.set_title(f"memory per key ({memory[0]['keys']:,} keys, 16 B keys, 100 B values)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def write(outdir: Path, env: dict, rows: list[dict], memory: list[dict], notes: list[str], plots: bool = True,
          extras: list[dict] | None = None) -> None:
    md = markdown(env, rows, memory, notes, extras)
    images: list[str] = []
    if plots:
        for group in ("kv", "resp", "stream", "queue", "action", "security", "durability"):
            if plot_group(rows, group, outdir / f"{group}.png"):
                images.append(f"{group}.png")
        if plot_memory(memory, outdir / "memory.png"):
            images.append("memory.png")
    if images:
        md += "\n## Plots\n\n" + "\n".join(f"![{p}]({p})" for p in images) + "\n"
    (outdir / "summary.md").write_text(md)


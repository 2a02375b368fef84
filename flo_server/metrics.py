"""Prometheus metrics: what the request loops counted, and the stores' sizes, read at scrape time.

The counting itself happens where requests run, in one C object per server
(:class:`flo_core.metrics.Metrics`: counters per command and status, a latency
histogram per command from one request in 32, bytes in and out). The C fast
paths count into it directly; the Python dispatcher and the RESP command loop
through ``record()``. Nothing else on the request path knows about metrics.
This module turns that object, the journal's counters and the stores' sizes into
Prometheus families with ``prometheus_client`` (its custom-collector API and its
text format), only when ``/metrics`` is scraped.

Example:
    >>> text = render(srv)                  # doctest: +SKIP
    >>> b"flo_commands_total" in text       # doctest: +SKIP
    True
"""

from __future__ import annotations

import os
import resource
from typing import Any, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from flo_core.metrics import BUCKET_BOUNDS, Metrics  # type: ignore[import-not-found]
from flo_core.spec import SPEC, Status

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_LABELLED = 2000  # series per family for per-name gauges (queues, streams...): a scrape stays bounded


def new_metrics() -> Metrics:
    """The server's counters: a slot per Flo op and per RESP command."""
    from flo_server.resp import COMMANDS

    flo_ops = [(int(op), s.op.name.lower()) for op, s in sorted(SPEC.items())]
    resp = sorted({c.name for c in COMMANDS.values()})
    return Metrics(flo_ops, resp)


def render(srv: Any) -> bytes:
    """The Prometheus text exposition of ``srv``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(srv))
    return generate_latest(registry)


class _Collector:
    def __init__(self, srv: Any) -> None:
        self.srv = srv

    def collect(self) -> Iterator[Any]:
        srv = self.srv
        if srv.metrics is not None:
            yield from _commands(srv.metrics)
        yield from _server(srv)
        yield from _journal(srv)
        now = srv.now()
        yield from _stores(srv, now)
        yield from _flame(srv, now)


def _histogram(name: str, doc: str, labels: list[str]) -> HistogramMetricFamily:
    return HistogramMetricFamily(name, doc, labels=labels)


def _cumulative(counts: list[int]) -> list[tuple[str, float]]:
    out, total = [], 0
    for bound, n in zip([*map(repr, BUCKET_BOUNDS), "+Inf"], counts):
        total += n
        out.append((bound, total))
    return out


def _commands(m: Metrics) -> Iterator[Any]:
    snap = m.snapshot()
    calls = CounterMetricFamily("flo_commands", "Commands served, by protocol, command and status",
                                labels=["protocol", "op", "status"])
    for (proto, name, status), n in sorted(snap["calls"].items()):
        st = ("ok" if status == 0 else "error") if proto == "resp" else _status_name(status)
        calls.add_metric([proto, name, st], n)
    yield calls
    lat = _histogram("flo_command_duration_seconds",
                     "Server time of a command, from its parse to its answer (one request in 32 is timed)",
                     ["protocol", "op"])
    for (proto, name), (counts, seconds) in sorted(snap["latency"].items()):
        lat.add_metric([proto, name], _cumulative(counts), seconds)
    yield lat
    yield CounterMetricFamily("flo_bytes_in", "Bytes read from clients", value=m.bytes_in)
    yield CounterMetricFamily("flo_bytes_out", "Bytes of answers written to clients", value=m.bytes_out)


def _status_name(status: int) -> str:
    try:
        return Status(status).name.lower()
    except ValueError:
        return str(status)


def _server(srv: Any) -> Iterator[Any]:
    conns = GaugeMetricFamily("flo_connections", "Open client connections by protocol", labels=["protocol"])
    by: dict[str, int] = {"flo": 0, "resp": 0, "unknown": 0}
    for c in srv.connections:
        by["resp" if c.resp is not None else ("flo" if c.reader is not None else "unknown")] += 1
    for proto, n in by.items():
        conns.add_metric([proto], n)
    yield conns
    yield GaugeMetricFamily("flo_waiters", "Requests parked waiting (blocking reads, long polls)", value=len(srv.waiters))
    yield CounterMetricFamily("flo_auth_failures", "Failed AUTH attempts", value=srv.users.failures)
    yield GaugeMetricFamily("flo_resident_memory_bytes", "Resident memory of the server process", value=rss_bytes())
    yield GaugeMetricFamily("flo_uptime_seconds", "Seconds since the server started", value=srv.uptime())
    yield GaugeMetricFamily("flo_ready", "1 once recovery is done and the server listens", value=1 if srv.ready else 0)


def rss_bytes() -> int:
    """Resident memory of this process (/proc; peak RSS where there is no /proc)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _journal(srv: Any) -> Iterator[Any]:
    j = srv.journal
    st = j.stats() if hasattr(j, "stats") else {}
    yield GaugeMetricFamily("flo_log_last_lsn", "The last log sequence number written", value=j.last_lsn)
    yield CounterMetricFamily("flo_log_bytes", "Bytes appended to the log since start", value=st.get("bytes_appended", 0))
    yield GaugeMetricFamily("flo_log_segments", "Log segment files", value=st.get("segments", 0))
    yield GaugeMetricFamily("flo_log_failed", "1 when the log stopped taking writes", value=1 if st.get("failed") else 0)
    yield CounterMetricFamily("flo_log_storage_failures", "Times the log started failing (disk full, I/O error)",
                              value=st.get("storage_failures", 0))
    yield CounterMetricFamily("flo_log_storage_retries", "Retries of a failing log write or fdatasync",
                              value=st.get("storage_retries", 0))
    yield CounterMetricFamily("flo_snapshot_failures", "Snapshots that failed (the log kept everything)",
                              value=st.get("snapshot_failures", 0))
    writer = getattr(j, "writer", None)
    fs = _histogram("flo_fsync_duration_seconds", "Duration of each fdatasync of the log", [])
    if writer is not None:
        count, seconds, hist = writer.fsync_stats()
        fs.add_metric([], _cumulative(hist), seconds)
    else:
        fs.add_metric([], _cumulative([0] * (len(BUCKET_BOUNDS) + 1)), 0.0)
    yield fs
    yield CounterMetricFamily("flo_snapshots", "Snapshots taken since start", value=st.get("snapshots", 0))
    yield GaugeMetricFamily("flo_snapshot_last_duration_seconds", "Duration of the last snapshot",
                            value=st.get("last_snapshot_seconds") or 0)
    yield GaugeMetricFamily("flo_snapshot_last_size_bytes", "Size of the last snapshot",
                            value=st.get("last_snapshot_size") or 0)
    yield GaugeMetricFamily("flo_snapshot_lsn", "LSN the newest snapshot covers", value=st.get("snapshot_lsn") or 0)


def each_named(store: Any, limit: int = MAX_LABELLED, keep: Any = None) -> Iterator[tuple[str, str, Any]]:
    """``(namespace, name, object)`` of a queue or stream store, at most ``limit`` of them
    (``keep(ns, name)`` filters first): the one walk of /metrics and the console's API."""
    n = 0
    for ns in store.namespaces():
        for name in store.names(ns):
            if keep is not None and not keep(ns, name):
                continue
            obj = store.get(ns, name)
            if obj is None:
                continue
            if n >= limit:
                return
            n += 1
            yield ns, name, obj


def _stores(srv: Any, now: int) -> Iterator[Any]:
    keys = GaugeMetricFamily("flo_kv_keys", "KV keys per namespace (expired ones not yet reclaimed included)",
                             labels=["namespace"])
    for ns, space in list(srv.kv.spaces.items())[:MAX_LABELLED]:
        keys.add_metric([ns], len(space.keys))
    yield keys
    msgs = GaugeMetricFamily("flo_queue_messages", "Queue messages by state", labels=["namespace", "queue", "state"])
    for ns, name, q in each_named(srv.queues):
        s = q.stats(now)
        for state, field in (("ready", "ready"), ("inflight", "leased"), ("delayed", "delayed"), ("dlq", "dlq")):
            msgs.add_metric([ns, name, state], s[field])
    yield msgs
    length = GaugeMetricFamily("flo_stream_length", "Records in a stream", labels=["namespace", "stream"])
    lag = GaugeMetricFamily("flo_stream_group_lag", "Records a consumer group has not been given yet",
                            labels=["namespace", "stream", "group"])
    pending = GaugeMetricFamily("flo_stream_group_pending", "Records delivered to a group and not acknowledged",
                                labels=["namespace", "stream", "group"])
    for ns, name, st in each_named(srv.streams):
        length.add_metric([ns, name], st.info(now)[4])
        for gname, g in st.groups.items():
            lag.add_metric([ns, name, gname], g.lag(st, now))
            pending.add_metric([ns, name, gname], sum(g.pending_by_consumer().values()))
    yield length
    yield lag
    yield pending
    runs = GaugeMetricFamily("flo_action_runs", "Action runs held, by action and state",
                             labels=["namespace", "action", "state"])
    counts: dict[tuple[str, str, str], int] = {}
    for run in srv.actions.runs.values():
        k = (run.ns, run.action, run.status.name.lower())
        counts[k] = counts.get(k, 0) + 1
    for k, v in sorted(counts.items())[:MAX_LABELLED]:
        runs.add_metric(list(k), v)
    yield runs


def _flame(srv: Any, now: int) -> Iterator[Any]:
    """flamepy's tasks and instances, from its records in the KV store (flamepy.core.records)."""
    from flamepy.core import records as R

    tasks = GaugeMetricFamily("flame_tasks", "flamepy tasks of open sessions, by application and state",
                              labels=["app", "state"])
    instances = GaugeMetricFamily("flame_instances", "flamepy service instances reserved for open sessions, by "
                                  "application and state", labels=["app", "state"])
    space = srv.kv.spaces.get(R.NAMESPACE)
    if space is None:
        yield tasks
        yield instances
        return
    kv = srv.kv
    by_task: dict[tuple[str, str], int] = {}
    by_inst: dict[tuple[str, str], int] = {}
    opened, _ = kv.scan(R.NAMESPACE, b"open/", b"", MAX_LABELLED, now)  # in key order, from the index
    for key in opened:
        sid = R.tagged_id(key.decode("utf-8", "replace"))
        e = kv.get(R.NAMESPACE, key, now)
        if e is None:
            continue
        app = e.value.decode("utf-8", "replace")
        for state in R.COUNTERS:
            c = kv.get(R.NAMESPACE, R.k_cnt(sid, state).encode(), now)
            if c is not None and c.value.isdigit():
                by_task[(app, state)] = by_task.get((app, state), 0) + int(c.value)
        a = kv.get(R.NAMESPACE, R.k_alloc(sid).encode(), now)  # {node: instances reserved there}
        if a is not None:
            try:
                alloc = R.unpack(a.value)
            except Exception:  # noqa: BLE001 - a record we cannot read is not a metric
                alloc = {}
            total = sum(v for v in alloc.values() if isinstance(v, int)) if isinstance(alloc, dict) else 0
            by_inst[(app, "reserved")] = by_inst.get((app, "reserved"), 0) + total
    for (app, state), v in sorted(by_task.items()):
        tasks.add_metric([app, state], v)
    for (app, state), v in sorted(by_inst.items()):
        instances.add_metric([app, state], v)
    yield tasks
    yield instances


class SlowLog:
    """The last commands that took longer than ``threshold_us`` on the Python paths (Redis's SLOWLOG),
    and the latency events of Redis's LATENCY monitor, kept from the same measurements.

    The C fast paths are not in it: they answer in microseconds.

    >>> sl = SlowLog(threshold_us=0, max_len=2)
    >>> sl.add(5000, [b"SET", b"k", b"v"], "127.0.0.1:5000", b"", now_s=1)
    >>> sl.entries()[0][2:4]
    (5, [b'SET', b'k', b'v'])
    """

    MAX_ARGS = 32  # Redis keeps at most 32 arguments of a command ...
    MAX_ARG = 128  # ... each at most 128 bytes
    REDACTED = {b"auth", b"hello", b"acl"}  # their arguments may be passwords

    def __init__(self, threshold_us: int = 10_000, max_len: int = 128) -> None:
        from collections import deque

        self.threshold_us = threshold_us  # -1: off, 0: every command
        self.max_len = max_len
        self._entries: deque = deque(maxlen=max_len)
        self._next_id = 0
        self.latency: dict[str, list] = {}  # event -> [(unix s, ms), ...] (newest last, at most 160)

    def wants(self, ns: int) -> bool:
        return self.threshold_us >= 0 and ns >= self.threshold_us * 1000

    def add(self, ns: int, argv: list, client: str, name: bytes, now_s: int | None = None) -> None:
        import time

        now_s = int(time.time()) if now_s is None else now_s
        if argv and argv[0].lower() in self.REDACTED:
            argv = [argv[0], b"(redacted)"]
        shown = [a if len(a) <= self.MAX_ARG else a[: self.MAX_ARG - 32] + b"... (%d more bytes)" % (len(a) - self.MAX_ARG + 32)
                 for a in argv[: self.MAX_ARGS]]
        if len(argv) > self.MAX_ARGS:
            shown[-1] = b"... (%d more arguments)" % (len(argv) - self.MAX_ARGS + 1)
        self._entries.appendleft((self._next_id, now_s, ns // 1000, shown, client.encode(), name))
        self._next_id += 1
        events = self.latency.setdefault("command", [])
        events.append((now_s, ns // 1_000_000))
        del events[:-160]

    def resize(self, max_len: int) -> None:
        from collections import deque

        self.max_len = max_len
        self._entries = deque(self._entries, maxlen=max_len)

    def entries(self, count: int | None = None) -> list:
        items = list(self._entries)
        return items if count is None or count < 0 else items[:count]

    def __len__(self) -> int:
        return len(self._entries)

    def reset(self) -> None:
        self._entries.clear()

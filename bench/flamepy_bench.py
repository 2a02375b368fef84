"""flamepy end-to-end throughput and latency: a flmping-like no-op service (Flame README §6, `flmping -p`).

What it measures, against one flo-server with its embedded executor manager:

* ``tasks_per_s``: ``tasks`` no-op tasks submitted with ``Session.run_many`` (futures, in batches of
  ``batch``) to a session with ``instances`` warm instances, from the first submit to the last result;
* ``p50_ms`` / ``p99_ms``: each task's submit → result time within that burst;
* ``single_task_p50_ms``: one ``invoke`` at a time (round trip of a lone task through the whole system);
* the **runner** row (``run_runner``): the same no-op as a ``flamepy.runner`` function service (one
  call = one task; arguments cloudpickled, the result stored in the object cache and fetched back by
  ``get()``), ``runner_tasks`` calls submitted one by one, then every result fetched: tasks/s from the
  first call to the last result, plus one call at a time (``single_call_p50_ms``).

Usage::

    .venv/bin/python -m bench.flamepy_bench --tasks 20000 --instances 2      # starts its own flo-server
    .venv/bin/python -m bench.flamepy_bench --endpoint 127.0.0.1:9000        # an already running one
    .venv/bin/python -m bench.flamepy_bench --runs 3    # 3 fresh servers; each run's line, then the medians
    .venv/bin/python -m bench.flamepy_bench --runner-tasks 0   # the Session row only

or from Python: ``run("127.0.0.1:9000", tasks=20000, instances=2) -> dict``.
Everything is bounded: ``max_seconds`` caps the burst (a shortfall is reported, not waited for), and the
server this script starts is stopped by its pid.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import re
import threading
import time
import uuid
from typing import Optional

NOOP_SERVICE = textwrap.dedent('''\
    # A bytes-level no-op Flame service: returns its input (flmping's "ping").
    from flamepy.core import FlameService, run

    class Ping(FlameService):
        def on_task_invoke(self, context):
            return context.input

    if __name__ == "__main__":
        run(Ping())
    ''')

SINGLE_TASK_SAMPLES = 200
READY_TIMEOUT_S = 60.0
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def _proc_cpu() -> dict[int, tuple[int, float]]:
    """pid -> (parent pid, user+sys CPU seconds) of every process we can read (Linux /proc)."""
    out: dict[int, tuple[int, float]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()  # after "pid (comm) ": state ppid ... utime stime
        out[int(name)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) * _TICK_S)
    return out


def cpu_by_role(server_pid: Optional[int]) -> dict[str, float]:
    """CPU seconds used so far by this process ("client"), ``server_pid`` ("server") and the server's
    descendants (the service "instances"), the load-independent figure behind ``cpu_us_per_task``."""
    procs = _proc_cpu()
    roles = {"client": procs.get(os.getpid(), (0, 0.0))[1], "server": 0.0, "instances": 0.0}
    if server_pid is not None and server_pid in procs:
        roles["server"] = procs[server_pid][1]
        children: dict[int, list[int]] = {}
        for pid, (ppid, _) in procs.items():
            children.setdefault(ppid, []).append(pid)
        todo = list(children.get(server_pid, ()))
        while todo:
            pid = todo.pop()
            roles["instances"] += procs[pid][1]
            todo.extend(children.get(pid, ()))
    return roles


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    i = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[i]


def run(endpoint: str, tasks: int = 20000, instances: int = 2, max_seconds: float = 60, batch: int = 1000,
        single_samples: int = SINGLE_TASK_SAMPLES, server_pid: Optional[int] = None) -> dict:
    """Register a no-op app on ``endpoint``, run the burst and the single-task probe, clean up; the figures.

    With ``server_pid`` (the flo-server process, whose children are the instances) the result also has
    ``cpu_us_per_task``: user+sys CPU of client, server and instances during the burst, per task, and
    the same split by role (``cpu_us_client`` ...): unlike tasks/s it hardly moves with foreign load.

    >>> run("127.0.0.1:9000", tasks=2000, instances=2)          # doctest: +SKIP
    {'tasks_per_s': ..., 'p50_ms': ..., 'p99_ms': ..., 'single_task_p50_ms': ..., ...}
    """
    import flamepy
    from flamepy.core import client as core_client

    tasks = max(1, min(int(tasks), 10_000_000))
    instances = max(1, min(int(instances), 128))
    batch = max(1, min(int(batch), 100_000))
    work_dir = tempfile.mkdtemp(prefix="flamepy-bench-")
    script = os.path.join(work_dir, "noop_service.py")
    with open(script, "w") as f:
        f.write(NOOP_SERVICE)
    app = f"bench-noop-{uuid.uuid4().hex[:8]}"
    conn = core_client.connect(endpoint)
    session = None
    try:
        # Service instances get only their application's environment: pass PYTHONPATH on, so a bench run
        # with PYTHONPATH=<a copy of the tree> measures that copy end to end (A/B runs).
        environments = {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}
        conn.register_application(app, {"command": sys.executable, "arguments": [script],
                                         "working_directory": work_dir, "delay_release": 5,
                                         "environments": environments})
        session = conn.create_session(flamepy.SessionAttributes(
            application=app, min_instances=instances, max_instances=instances))
        # Warm up: every instance started and served one task, so the burst measures steady state.
        warm = session.run_many([b"warm"] * (instances * 4))
        concurrent.futures.wait(warm, timeout=READY_TIMEOUT_S)
        if not all(f.done() and f.exception() is None for f in warm):
            raise RuntimeError("the no-op service did not answer its warm-up tasks within "
                               f"{READY_TIMEOUT_S:g}s")

        # -- the burst: run_many in batches, futures all in flight -------------------------------------------
        payload = b"ping"
        done_at: list[float] = [0.0] * tasks
        submitted_at: list[float] = [0.0] * tasks
        finished_count = itertools.count(1)  # next() is atomic under the GIL: no lock per task
        all_done = threading.Event()
        clock = time.perf_counter

        # One callback for every future (not a closure each: the bench's own bookkeeping stays out of
        # the client's CPU per task); the futures stay referenced, so their ids are unique meanwhile.
        position: dict[int, int] = {}

        def on_done(fut):
            done_at[position[id(fut)]] = clock()
            if next(finished_count) == tasks:
                all_done.set()

        futures: list[concurrent.futures.Future] = []
        cpu_before = cpu_by_role(server_pid)
        start = time.perf_counter()
        deadline = start + max_seconds
        for off in range(0, tasks, batch):
            n = min(batch, tasks - off)
            t = time.perf_counter()
            futs = session.run_many([payload] * n)
            for j, fut in enumerate(futs):
                submitted_at[off + j] = t
                position[id(fut)] = off + j
                fut.add_done_callback(on_done)
            futures.extend(futs)
            if time.perf_counter() > deadline:
                break
        all_done.wait(max(0.0, deadline - time.perf_counter()))
        end = time.perf_counter()
        cpu_after = cpu_by_role(server_pid)
        finished = [i for i, f in enumerate(futures) if f.done()]
        failed = sum(1 for i in finished if futures[i].exception() is not None)
        last = max((done_at[i] for i in finished), default=end)
        elapsed = (last if len(finished) == tasks else end) - start
        latencies = sorted((done_at[i] - submitted_at[i]) * 1000 for i in finished)

        # -- single-task latency: one invoke at a time -------------------------------------------------------
        singles: list[float] = []
        single_deadline = time.perf_counter() + max(5.0, max_seconds / 4)
        for _ in range(max(1, single_samples)):
            t = time.perf_counter()
            session.invoke(payload)
            singles.append((time.perf_counter() - t) * 1000)
            if time.perf_counter() > single_deadline:
                break
        singles.sort()
        cpu = {role: (cpu_after[role] - cpu_before[role]) * 1e6 / max(1, len(finished)) for role in cpu_after}
        cpu_rows = {} if server_pid is None else {
            "cpu_us_per_task": round(sum(cpu.values()), 1), **{f"cpu_us_{r}": round(v, 1) for r, v in cpu.items()}}
        return {
            "tasks_per_s": round(len(finished) / elapsed, 1) if elapsed > 0 else 0.0,
            "p50_ms": round(_percentile(latencies, 0.50), 3),
            "p99_ms": round(_percentile(latencies, 0.99), 3),
            "single_task_p50_ms": round(_percentile(singles, 0.50), 3),
            "single_task_p99_ms": round(_percentile(singles, 0.99), 3),
            "tasks": tasks, "completed": len(finished), "failed": failed, "instances": instances,
            "batch": batch, "seconds": round(elapsed, 3), **cpu_rows,
        }
    finally:
        if session is not None:
            try:
                session.close()
            except Exception:
                pass
        conn.close()
        shutil.rmtree(work_dir, ignore_errors=True)


def run_runner(endpoint: str, tasks: int = 2000, instances: int = 2, max_seconds: float = 60,
               single_samples: int = SINGLE_TASK_SAMPLES) -> dict:
    """The runner row: a no-op function service of a ``flamepy.runner.Runner`` on ``endpoint``.

    >>> run_runner("127.0.0.1:9000", tasks=500)                    # doctest: +SKIP
    {'row': 'runner', 'tasks_per_s': ..., 'single_call_p50_ms': ..., ...}
    """
    from flamepy.core import client as core_client
    from flamepy.runner import Runner

    tasks = max(1, min(int(tasks), 1_000_000))
    instances = max(1, min(int(instances), 128))
    os.environ["FLAME_ENDPOINT"] = endpoint  # the Runner uses flamepy's default connection
    with core_client._default_lock:
        if core_client._default is not None and core_client._default.endpoint != endpoint:
            core_client._default = None
    project = tempfile.mkdtemp(prefix="flamepy-bench-runner-")  # what the Runner packages: nothing but this
    before = os.getcwd()
    os.chdir(project)
    try:
        with Runner(f"bench-runner-{uuid.uuid4().hex[:8]}") as runner:
            def noop(value):
                return value
            service = runner.service(noop, autoscale=False, warmup=instances)
            runner.wait([service(b"warm") for _ in range(instances * 4)])
            start = time.perf_counter()
            deadline = start + max_seconds
            futures = []
            for _ in range(tasks):
                futures.append(service(b"ping"))
                if time.perf_counter() > deadline:
                    break
            concurrent.futures.wait([f._future for f in futures], timeout=max(0.0, deadline - time.perf_counter()))
            done = [f for f in futures if f.done()]
            failed = sum(1 for f in done if f._future.exception() is not None)
            results = [f.get() for f in done if f._future.exception() is None]
            elapsed = time.perf_counter() - start
            singles = []
            single_deadline = time.perf_counter() + max(5.0, max_seconds / 4)
            for _ in range(max(1, single_samples)):
                t = time.perf_counter()
                service(b"ping").get()
                singles.append((time.perf_counter() - t) * 1000)
                if time.perf_counter() > single_deadline:
                    break
            singles.sort()
            return {"row": "runner", "tasks_per_s": round(len(results) / elapsed, 1) if elapsed > 0 else 0.0,
                    "single_call_p50_ms": round(_percentile(singles, 0.50), 3),
                    "single_call_p99_ms": round(_percentile(singles, 0.99), 3),
                    "tasks": tasks, "completed": len(done), "failed": failed, "instances": instances,
                    "seconds": round(elapsed, 3)}
    finally:
        os.chdir(before)
        shutil.rmtree(project, ignore_errors=True)


# -- a private flo-server for __main__ ------------------------------------------------------------------------


READY = re.compile(r"flo-server ready on (\S+?:\d+)")

class _Server:
    """``flo-server --port 0`` (with the embedded executor) in a temp data dir, stopped by its pid."""

    def __init__(self, startup_timeout: float = 30.0) -> None:
        self.data_dir = tempfile.mkdtemp(prefix="flamepy-bench-data-")
        exe = os.path.join(os.path.dirname(sys.executable), "flo-server")
        cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "flo_server"]
        self.proc = subprocess.Popen(
            cmd + ["--host", "127.0.0.1", "--port", "0", "--data-dir", self.data_dir, "--log-level", "warning"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
        self.endpoint: Optional[str] = None
        found = threading.Event()

        def pump() -> None:
            for line in self.proc.stdout:
                m = READY.search(line)
                if self.endpoint is None and m:
                    self.endpoint = m.group(1)
                    found.set()
            found.set()

        threading.Thread(target=pump, daemon=True).start()
        if not found.wait(startup_timeout) or self.endpoint is None:
            self.stop()
            raise RuntimeError("flo-server did not report 'flo-server ready on HOST:PORT'")

    def stop(self) -> None:
        if self.proc.poll() is None:
            # Its own process group: the service instances it launched go with it.
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        shutil.rmtree(self.data_dir, ignore_errors=True)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--endpoint", help="use this flo-server (host:port) instead of starting one")
    parser.add_argument("--tasks", type=int, default=20000)
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--batch", type=int, default=1000, help="tasks per run_many call")
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--single", type=int, default=SINGLE_TASK_SAMPLES, help="single-task samples")
    parser.add_argument("--runs", type=int, default=1, help="repeat (a fresh server each time); then print medians")
    parser.add_argument("--runner-tasks", type=int, default=2000,
                        help="calls for the runner row (a flamepy.runner function service); 0 skips it")
    args = parser.parse_args(argv)
    results = []
    runner_rows: list[dict] = []
    for _ in range(max(1, min(args.runs, 20))):
        server = None
        try:
            endpoint = args.endpoint
            if endpoint is None:
                server = _Server()
                endpoint = server.endpoint
            result = run(endpoint, args.tasks, args.instances, args.max_seconds, args.batch, args.single,
                         server.proc.pid if server is not None else None)
            result["load1"] = round(os.getloadavg()[0], 2)  # the box is shared: say how busy it was
            print(json.dumps(result), flush=True)
            results.append(result)
            if args.runner_tasks > 0:
                row = run_runner(endpoint, args.runner_tasks, args.instances, args.max_seconds, args.single)
                row["load1"] = round(os.getloadavg()[0], 2)
                print(json.dumps(row), flush=True)
                runner_rows.append(row)
        finally:
            if server is not None:
                server.stop()
    if len(results) > 1:
        medians = {k: sorted(r[k] for r in results)[len(results) // 2]
                   for k in ("tasks_per_s", "p50_ms", "p99_ms", "single_task_p50_ms", "single_task_p99_ms", "load1",
                             "cpu_us_per_task", "cpu_us_client", "cpu_us_server", "cpu_us_instances")
                   if all(k in r for r in results)}
        print(json.dumps({"median_of": len(results), **medians}))
    if len(runner_rows) > 1:
        medians = {k: sorted(r[k] for r in runner_rows)[len(runner_rows) // 2]
                   for k in ("tasks_per_s", "single_call_p50_ms", "single_call_p99_ms", "load1")}
        print(json.dumps({"row": "runner", "median_of": len(runner_rows), **medians}))
    return 0


if __name__ == "__main__":
    sys.exit(main())

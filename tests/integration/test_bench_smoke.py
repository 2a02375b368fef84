"""The benchmark harness cannot rot: ``python -m bench --quick`` runs end to end.

No performance threshold is asserted anywhere here - only that the harness
starts the servers, measures, stops them and writes its JSON lines, markdown
table and plots.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import ROOT

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie waiting to be reaped)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.timeout(150)
def test_quick_bench_writes_results(tmp_path: Path) -> None:
    out = tmp_path / "results"
    # --allow-debug: `make debug` runs this test on a FLO_DEBUG build; the results are marked as such.
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out), "--no-install", "--allow-debug"],
        cwd=ROOT, capture_output=True, text=True, timeout=140, env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    kinds = {r["type"] for r in records}
    assert {"env", "run", "summary", "done"} <= kinds
    env = records[0]
    assert env["type"] == "env" and env["git_sha"] and env["python"] and env["uvloop"]
    runs = [r for r in records if r["type"] == "run"]
    # The ceiling needs nothing but this repository, so its runs always complete.
    ceiling = [r for r in runs if r["server"] == "ceiling"]
    assert ceiling and all(r["completed"] > 0 for r in ceiling), ceiling
    # The security cell reached every variant (AUTH and TLS by the load generator) with nothing refused.
    sec = [r for r in runs if r["cell"].startswith("security/")]
    assert {r["server"] for r in sec} == {"flo-server", "flo+auth", "flo+tls", "flo+restricted", "flo-server-2",
                                          "flo+nometrics", "flo+metrics"}, sec
    assert all(r["completed"] > 0 and not r["errors"] for r in sec), sec
    # flo+metrics was scraped (the first GET /metrics goes out as its load starts), and nothing else served HTTP:
    # the bench passes --http-port 0 unless a variant asks for a port, so no two servers fight over 9001.
    scraped = [r for r in sec if r["server"] == "flo+metrics"]
    assert all(r["scrapes"] >= 1 and not r["scrape_errors"] for r in scraped), scraped
    ready = [ln for log in (out / "run").glob("*.log") for ln in log.read_text(errors="replace").splitlines()
             if "flo-server ready" in ln or "HTTP side port" in ln]
    assert sum("http on" in ln for ln in ready) == 1 and not any("HTTP side port" in ln for ln in ready), ready
    # The workloads added for streams and actions have cells (flo-server may refuse them; then they are noted).
    cells = {r["cell"] for r in records if r["type"] == "summary"}
    for wl in ("stream.read", "stream.group", "action.roundtrip"):
        assert any(f"/{wl}/" in c for c in cells) or any(wl in n for n in records[-1]["notes"]), (wl, cells)
    # flamepy and recovery are measured (or their failure is recorded), never skipped silently.
    extras = {r["id"]: r for r in records if r["type"] in ("flamepy", "recovery")}
    assert set(extras) == {"flamepy/noop", "recovery/log", "recovery/snapshot"}, extras
    for rid in ("recovery/log", "recovery/snapshot"):
        assert extras[rid].get("ready_s") or extras[rid].get("error"), extras[rid]
    # Memory per key is measured at both value sizes, each on a fresh flo-server.
    mem = [r for r in records if r["type"] == "memory" and r["server"] == "flo-server"]
    assert sorted(r["value_bytes"] for r in mem) == [100, 4096] and all(r["keys"] > 0 for r in mem), mem
    md = (out / "summary.md").read_text()
    assert "## Targets" in md and "KV over Flo wire v2" in md and "flamepy ≥ 30,000 tasks/s" in md
    assert "16 B keys, 4,096 B values" in md
    assert (out / "kv.png").stat().st_size > 0
    assert "## Targets" in proc.stdout  # the table is printed too
    # Every server the harness started was stopped, by pid.
    started = next(r for r in records if r["type"] == "servers")
    assert started["all_stopped"] and started["started"]
    for s in started["started"]:
        assert not _alive(s["pid"]), s


@pytest.mark.timeout(60)
def test_loadgen_against_the_ceiling_checks_every_reply(tmp_path: Path) -> None:
    from bench.servers import Fleet

    with Fleet(tmp_path) as fleet:
        ceiling = fleet.start_ceiling(max_seconds=60)
        for workload in ("kv.set", "kv.get", "kv.incr"):
            proc = subprocess.run(
                [sys.executable, "-m", "bench.loadgen", "--port", str(ceiling.port), "-w", workload, "-c", "3",
                 "-k", "4", "-n", "600", "--max-seconds", "10", "--server-pid", str(ceiling.pid)],
                cwd=ROOT, capture_output=True, text=True, timeout=30,
            )
            assert proc.returncode == 0, proc.stderr
            res = json.loads(proc.stdout.splitlines()[-1])
            assert res["completed"] == 600 and res["errors"] == 0, res
            assert res["p50_us"] > 0 and res["server_cpu_pct"] is not None
        pid = ceiling.pid
    assert not _alive(pid)


def test_resp_parser_and_record_ids() -> None:
    from bench.loadgen import RespError, RespIncomplete, resp_parse
    from bench.workloads import record_ids

    reply = b"*1\r\n*2\r\n$6\r\nstream\r\n*1\r\n*2\r\n$3\r\n1-0\r\n*2\r\n$1\r\nf\r\n$1\r\nv\r\n"
    value, end = resp_parse(reply)
    assert value == [[b"stream", [[b"1-0", [b"f", b"v"]]]]] and end == len(reply)
    with pytest.raises(RespIncomplete):
        resp_parse(reply[:-3])
    assert isinstance(resp_parse(b"-ERR no\r\n")[0], RespError)
    assert resp_parse(b"$-1\r\n") == (None, 5)
    # one record: [seq 7][ts 1000][tier 0][partition 0][key present]["s"][payload "p"][0 headers]
    rec = (7).to_bytes(8, "little") + (1000).to_bytes(8, "little") + b"\x00" + bytes(4) + b"\x01"
    rec += (1).to_bytes(4, "little") + b"s" + (1).to_bytes(4, "little") + b"p" + bytes(4)
    assert record_ids((1).to_bytes(4, "little") + rec) == [(1000, 7)]


def test_a_debug_build_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from bench import harness

    monkeypatch.setattr(harness, "debug_build_reasons", lambda: ["frame.so is built with line tracing (FLO_DEBUG=1)"])
    with pytest.raises(SystemExit, match="refusing to benchmark a debug build"):
        harness.run_bench(harness.Options(quick=True, out=tmp_path / "r", install=False))
    assert not (tmp_path / "r").exists()  # refused before anything ran


def test_loopback_only() -> None:
    proc = subprocess.run([sys.executable, "-m", "bench.loadgen", "--host", "10.0.0.1", "--port", "1", "-n", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0 and "loopback only" in proc.stderr


def test_queue_cycle_requests_are_what_the_generic_builders_make() -> None:
    # The cycle's requests are built once per key (and handed to the C engine); they must be the
    # bytes the general builders make, or the two engines would load the servers differently.
    from bench.workloads import (Op, Tag, _head, _queue_step, _redis_queue_step, queue_enqueue, resp_command)

    k, v = b"queue:cycle", b"x" * 100
    assert _queue_step(0, k, v, b"") == queue_enqueue(k, v)
    count1 = {Tag.COUNT: (1).to_bytes(4, "little")}
    assert _queue_step(1, k, v, b"") == (Op.QUEUE_DEQUEUE, _head(k).bytes32(b"").options(count1).getvalue())
    prev = (1).to_bytes(4, "little") + (77).to_bytes(8, "little") + b"rest"
    ack = _head(k).bytes32(b"\x01\x00\x00\x00" + prev[4:12]).options({}).getvalue()
    assert _queue_step(2, k, v, prev) == (Op.QUEUE_COMPLETE, ack)
    with pytest.raises(LookupError):
        _queue_step(2, k, v, bytes(4))
    assert _redis_queue_step(0, k, v, b"") == resp_command([b"LPUSH", k, v])
    assert _redis_queue_step(1, k, v, b"") == resp_command([b"RPOPLPUSH", k, k + b":processing"])
    assert _redis_queue_step(2, k, v, b"abc") == resp_command([b"LREM", k + b":processing", b"1", b"abc"])


def _loadgen(port: int, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "bench.loadgen", "--port", str(port), *args, "--max-seconds", "20"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.splitlines()[-1])


@pytest.mark.timeout(150)
def test_the_c_engines_and_python_check_every_reply_against_flo_and_redis(tmp_path: Path) -> None:
    # bench/fastload.pyx runs the closed loop in C; ChainLoad / FloLoad / RespLoad in Python. Both
    # must complete the same loads with nothing refused: single requests (a RESP stream read answers
    # nested arrays) and the queue cycle.
    import shutil

    from bench import loadgen
    from bench.servers import Fleet

    assert loadgen.fastload is not None, "bench/fastload.pyx is not built (make builds it in place)"
    with Fleet(tmp_path) as fleet:
        servers = [("flo", fleet.start_flo())]
        if shutil.which("redis-server"):
            servers.append(("resp", fleet.start_redis()))
        for proto, sp in servers:
            for workload in ("kv.set", "kv.get", "stream.read", "queue.cycle"):
                for engine in ("auto", "python"):
                    res = _loadgen(sp.port, "--proto", proto, "-w", workload, "-c", "3", "-k", "4", "-n", "900",
                                   "--engine", engine)
                    assert res["engine"] == ("c" if engine == "auto" else "python"), res
                    assert res["completed"] == 900 and res["errors"] == 0, (workload, res)
                    assert res["p50_us"] > 0, res
        # A server that refuses queue ops (the ceiling serves KV only): each failed request or cycle is
        # counted as an error, by status, and described the same way by both engines.
        ceiling = fleet.start_ceiling(max_seconds=60)
        for workload, prefix in (("queue.enqueue", "status "), ("queue.cycle", "step 0: status ")):
            samples = set()
            for engine in ("auto", "python"):
                res = _loadgen(ceiling.port, "-w", workload, "-c", "2", "-k", "2", "-n", "50", "--engine", engine)
                assert res["errors"] == 50 and sum(res["error_statuses"].values()) == 50, res
                assert res["error_sample"].startswith(prefix), res
                samples.add(res["error_sample"])
            assert len(samples) == 1, samples


@pytest.mark.timeout(120)
def test_both_engines_check_that_each_action_round_trip_completed_its_run(tmp_path: Path) -> None:
    # action.roundtrip is one request (an invoke that waits for its run): the C engine sends it from
    # FloPool and checks the run's status in the answer, as ChainLoad does in Python.
    from bench import loadgen
    from bench.servers import Fleet

    assert loadgen.fastload is not None, "bench/fastload.pyx is not built (make builds it in place)"
    with Fleet(tmp_path) as fleet:
        sp = fleet.start_flo()
        workers = fleet.start_action_workers(sp.port, "noop", 2, 60)
        for engine in ("auto", "python"):
            res = _loadgen(sp.port, "-w", "action.roundtrip", "--key", "noop", "-c", "4", "-n", "400", "--engine", engine)
            assert res["engine"] == ("c" if engine == "auto" else "python"), res
            assert res["completed"] == 400 and res["errors"] == 0, res
        for w in workers:
            fleet.stop(w)
        # No worker left: each invoke's wait (2 s) ends with the run still pending, an error for both.
        samples = set()
        for engine in ("auto", "python"):
            res = _loadgen(sp.port, "-w", "action.roundtrip", "--key", "noop", "-c", "2", "-n", "2", "--engine", engine)
            assert res["errors"] == 2, res
            samples.add(res["error_sample"])
        from flo_core.spec import RunStatus

        assert samples == {f"step 1: run not completed: status {int(RunStatus.PENDING):02x}"}, samples

"""Flame 0.6's own Python examples, run unchanged against a real flo-server with its executor.

The programs in ``flame_examples/`` are copies of xflops/flame v0.6.0 files (sdk/python/example/*,
examples/pi/python/main.py, the code blocks of docs/sdk/python.md), each with a header naming its source;
nothing below the headers is changed. The only difference from running them on Flame is the endpoint:
``~/.flame/flame.yaml`` and ``FLAME_ENDPOINT`` name the flo-server. Each runs as its own process, in a
scratch directory (a Runner packages its working directory), and its output is checked.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import flamepy
from tests.helpers import ServerProc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

EXAMPLES = Path(__file__).parent / "flame_examples"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("flame-examples")
    sp = ServerProc(root / "data", executor=True, env={"FLAME_EXECUTOR_CPU": "16"}).start()
    home = root / "home"
    (home / ".flame").mkdir(parents=True)
    (home / ".flame" / "flame.yaml").write_text(
        f"current-context: flame\ncontexts:\n  - name: flame\n    cluster:\n      endpoint: flo://{sp.endpoint}\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAME_")}
    env.update(HOME=str(home), FLAME_ENDPOINT=sp.endpoint, PYTHONUNBUFFERED="1")
    conn = flamepy.connect(sp.endpoint)
    try:
        yield type("Cluster", (), {"server": sp, "env": env, "conn": conn, "root": root})
    finally:
        conn.close()
        sp.stop()


def run_example(cluster, name: str, *, workdir: Path, as_name: str | None = None, env: dict | None = None,
                code: str | None = None) -> str:
    """Copy one example into ``workdir`` and run it there as a user would (``python <file>``)."""
    workdir.mkdir(parents=True, exist_ok=True)
    target = workdir / (as_name or name)
    shutil.copy(EXAMPLES / name, target)
    argv = [sys.executable, target.name] if code is None else [sys.executable, "-c", code]
    r = subprocess.run(argv, cwd=workdir, env={**cluster.env, **(env or {})}, capture_output=True, text=True,
                       timeout=150)
    assert r.returncode == 0, f"{name} failed:\n{r.stdout}\n{r.stderr}"
    return r.stdout


def test_sdk_example_client_against_its_service(cluster, tmp_path):
    """sdk/python/example/service.py (a FlameService) serves app flmtest; example/client.py drives it."""
    svc_dir = tmp_path / "svc"
    svc_dir.mkdir()
    shutil.copy(EXAMPLES / "sdk_service.py", svc_dir / "service.py")
    cluster.conn.register_application("flmtest", {"command": sys.executable, "arguments": ["service.py"],
                                                  "working_directory": str(svc_dir)})
    try:
        out = run_example(cluster, "sdk_client.py", workdir=tmp_path / "client", as_name="client.py")
        lines = out.splitlines()
        assert re.fullmatch(r"Created session: flmtest-[A-Za-z0-9]{6}", lines[1]), out
        # 1. invoke with a TaskInformer (0.5's argument the example still passes): its updates end in SUCCEED
        first = lines.index("1. Running task with informer...") + 1
        updates = lines[first:lines.index("", first)]
        assert updates and updates[-1].endswith(": SUCCEED") and all(u.startswith("Task 1: ") for u in updates), out
        assert "Sync result: b'sync task input'" in lines
        assert "Async result: b'async task input'" in lines
        assert "Parallel results: 5 tasks completed" in lines
        assert "Callback: Task completed with result: b'callback task input'" in lines
        assert lines[-1] == "Example completed successfully!"
        ssn = [s for s in cluster.conn.list_sessions() if s.application == "flmtest"][0]
        assert (ssn.state, ssn.succeed, ssn.failed) == (flamepy.SessionState.CLOSED, 9, 0)
        assert ssn.common_data() == b"shared data"
        # the service side printed what Flame's prints (its stdout goes to <working_directory>/<instance>.out)
        logs = "".join(p.read_text() for p in svc_dir.glob("*.out"))
        assert "Entering session: flmtest-" in logs and "Input: b'parallel task 4'" in logs, logs
    finally:
        cluster.conn.unregister_application("flmtest")


def test_sdk_example_instance_serves_a_typed_entrypoint(cluster, tmp_path):
    """sdk/python/example/instance.py (FlameInstance with a dataclass entrypoint) as an application."""
    svc_dir = tmp_path / "svc"
    svc_dir.mkdir()
    shutil.copy(EXAMPLES / "sdk_instance.py", svc_dir / "instance.py")
    cluster.conn.register_application("summarizer", {"command": sys.executable, "arguments": ["instance.py"],
                                                     "working_directory": str(svc_dir)})
    client = ("from dataclasses import dataclass\n"
              "from flamepy.service import Session\n"
              "@dataclass\n"
              "class Blog:\n"
              "    url: str\n"
              "with Session('summarizer') as s:\n"
              "    r = s.invoke(Blog(url='https://flame.example/post'))\n"
              "    print(type(r).__name__, r.url)\n"
              "    print(' '.join(r.summary.split()))\n")
    try:
        work = tmp_path / "client"
        work.mkdir()
        r = subprocess.run([sys.executable, "-c", client], cwd=work, env=cluster.env, capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stdout.splitlines() == ["Summary https://flame.example/post",
                                         "Summary of https://flame.example/post: You are a helpful assistant."]
    finally:
        cluster.conn.unregister_application("summarizer")


def test_docs_register_application(cluster, tmp_path):
    """docs/sdk/python.md "Register Applications": register echo, then create a session of it."""
    run_example(cluster, "docs_register_application.py", workdir=tmp_path)
    app = cluster.conn.get_application("echo")
    assert (app.shim, app.command, app.description) == (flamepy.Shim.HOST, "python /opt/echo/service.py",
                                                        "Echo service")
    [ssn] = [s for s in cluster.conn.list_sessions() if s.application == "echo"]
    assert ssn.state == flamepy.SessionState.OPEN
    cluster.conn.close_session(ssn.id)
    cluster.conn.unregister_application("echo")


def test_docs_sessions_and_tasks_on_flmping(cluster, tmp_path):
    """docs/sdk/python.md "Create Sessions And Run Tasks" on the built-in flmping.

    The snippet's first task sends ``b"hello"``; Flame 0.6's flmping decodes its input as a PingRequest (JSON)
    and fails such a task, and so does ours: the example stops there on Flame and here alike, with the reason.
    """
    shutil.copy(EXAMPLES / "docs_sessions_tasks.py", tmp_path / "docs_sessions_tasks.py")
    r = subprocess.run([sys.executable, "docs_sessions_tasks.py"], cwd=tmp_path, env=cluster.env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "FlameError: ping request is not JSON" in r.stderr, r.stdout + r.stderr
    [ssn] = [s for s in cluster.conn.list_sessions() if s.application == "flmping"]
    assert (ssn.state, ssn.failed, ssn.min_instances) == (flamepy.SessionState.OPEN, 1, 1)
    assert (ssn.resreq.cpu, ssn.resreq.memory) == (1, 1 << 30)  # ResourceRequirement.from_string("cpu=1,mem=1g")
    # the rest of the snippet, with the PingRequest flmping expects: 10 futures, all answered
    s = cluster.conn.open_session(ssn.id)
    futures = [s.run(b'{"duration": 1}') for _ in range(10)]
    outputs = [f.result(60) for f in futures]
    assert all(b"Completed on <" in o for o in outputs), outputs
    cluster.conn.close_session(ssn.id)


def test_docs_object_cache(cluster, tmp_path):
    """docs/sdk/python.md "Use Object Cache": put, get, update, get the new version."""
    out = run_example(cluster, "docs_object_cache.py", workdir=tmp_path, code=(
        "import runpy; g = runpy.run_path('docs_object_cache.py'); "
        "print(g['value']); print(g['next_value']); print(g['ref'].version, g['next_ref'].version, g['ref'].key)"))
    value, next_value, refs = out.splitlines()
    assert (value, next_value) == ("{'temperature': 0.8}", "{'temperature': 0.7}")
    v1, v2, key = refs.split()
    assert (int(v1), int(v2)) == (1, 2) and key.startswith("my-app/shared/")


def test_docs_runner_square(cluster, tmp_path):
    """docs/sdk/python.md "Use Runner": square-app with warmup=2."""
    out = run_example(cluster, "docs_runner.py", workdir=tmp_path)
    assert out.strip().splitlines()[-1] == "[0, 1, 4, 9, 16, 25, 36, 49]"
    assert cluster.conn.get_application("square-app") is None  # the Runner unregistered its application


def test_pi_example_with_runner(cluster, tmp_path):
    """examples/pi/python/main.py: Monte Carlo pi through flamepy.runner (sized by its own env variables)."""
    out = run_example(cluster, "pi_main.py", workdir=tmp_path, as_name="main.py",
                      env={"PI_NUM_BATCHES": "4", "PI_SAMPLES_PER_BATCH": "50000"})
    assert "Total samples: 200,000" in out
    estimate = float(re.search(r"Estimated PI: ([0-9.]+)", out).group(1))
    assert abs(estimate - math.pi) < 0.05, out
    assert cluster.conn.get_application("pi-estimation") is None

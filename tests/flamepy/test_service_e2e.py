"""flamepy end to end: real flo-server, real flame-executor, real service processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time

import pytest

from tests.helpers import wait_until

import flamepy
from flamepy import FlameError, FlameErrorCode
from flamepy.service import Session

BIN = os.path.dirname(sys.executable)


def wait_for(pred, timeout: float = 10.0):
    return wait_until(pred, timeout=timeout, interval=0.02)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ECHO_SERVICE = '''\
# echo_service.py
from dataclasses import dataclass
from flamepy import service
@dataclass
class EchoRequest:
    text: str
@dataclass
class EchoResponse:
    text: str
    count: int
ins = service.FlameInstance()
@ins.entrypoint
def echo(req: EchoRequest) -> EchoResponse:
    history = ins.context() or []
    history.append(req.text)
    ins.update_context(history)
    return EchoResponse(text=req.text.upper(), count=len(history))
if __name__ == "__main__":
    ins.run()
'''

CLIENT = '''\
# client.py
from echo_service import EchoRequest
from flamepy.service import Session
with Session("echo-app", ctx=[]) as session:
    response = session.invoke(EchoRequest("hello"))
    print(response.text)
    print(response.count)
    print(session.id())
'''

WORKER = '''\
import asyncio, os, time
from flamepy import service
ins = service.FlameInstance()

@ins.entrypoint
def work(req):
    kind = req[0] if isinstance(req, tuple) else req
    if kind == "pid":
        return os.getpid()
    if kind == "sleep":
        time.sleep(req[1])
        return os.getpid()
    if kind == "boom":
        raise ValueError("boom: " + str(req[1]))
    if kind == "crash":
        os._exit(3)
    if kind == "none":
        return None
    return req

if __name__ == "__main__":
    ins.run()
'''


def flmctl(flame, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([os.path.join(BIN, "flmctl"), *args], env=flame.env, capture_output=True, text=True, timeout=30)


def test_seed_guide_verbatim(flame, tmp_path):
    """The flamepy.service guide: service, YAML, flmctl register/list, client.py printing HELLO, 1, the id."""
    app_dir = tmp_path / "echo"
    app_dir.mkdir()
    (app_dir / "echo_service.py").write_text(ECHO_SERVICE)
    (app_dir / "client.py").write_text(CLIENT)
    # The guide's YAML; only the interpreter and directory are this machine's.
    (app_dir / "echo-app.yaml").write_text(textwrap.dedent(f"""\
        metadata:
          name: echo-app
        spec:
          working_directory: {app_dir}
          command: {sys.executable}
          arguments:
            - echo_service.py
          environments:
            FLAME_LOG_LEVEL: INFO
        """))
    r = flmctl(flame, "register", "--file", str(app_dir / "echo-app.yaml"))
    assert r.returncode == 0 and r.stdout == "", r.stderr
    r = flmctl(flame, "list", "--application")
    assert r.returncode == 0, r.stderr
    header, *rows = r.stdout.splitlines()
    assert header.split() == ["Name", "State", "Shim", "Tags", "Created", "Command"]
    from flamepy.apps import BUILTIN_APPLICATIONS  # listed too (flmrun, ...): the executor registers them
    rows = [row for row in rows if row.split()[0] not in BUILTIN_APPLICATIONS]
    assert [row.split()[:3] for row in rows] == [["echo-app", "Enabled", "Host"]]
    assert rows[0].rstrip().endswith(sys.executable)

    r = subprocess.run([sys.executable, "client.py"], cwd=app_dir, env=flame.env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    text, count, sid = r.stdout.splitlines()
    assert (text, count) == ("HELLO", "1")
    assert re.fullmatch(r"echo-app-[A-Za-z0-9]{6}", sid)

    r = flmctl(flame, "list", "--session")
    header, *rows = r.stdout.splitlines()
    assert header.split()[:4] == ["ID", "State", "App", "Resources"]
    assert rows[0].split()[:4] == [sid, "Closed", "echo-app", "cpu=1,mem=1Gi,gpu=0"]
    assert rows[0].split()[7] == "1"  # succeed
    # The instance's output went to files in the working directory.
    assert wait_for(lambda: list(app_dir.glob("*.err")))


def test_context_across_invokes_and_reopen(flame, tmp_path):
    app_dir = tmp_path / "echo"
    app_dir.mkdir()
    (app_dir / "echo_service.py").write_text(ECHO_SERVICE)
    flamepy.register_application("echo-app", {"command": sys.executable, "arguments": ["echo_service.py"],
                                              "working_directory": str(app_dir)})
    sys.path.insert(0, str(app_dir))
    try:
        from echo_service import EchoRequest
        session = Session("echo-app", ctx=[])
        assert session.invoke(EchoRequest("hello")).count == 1
        second = session.invoke(EchoRequest("world"))
        assert (second.text, second.count) == ("WORLD", 2)
        assert session.context() == ["hello", "world"]
        sid = session.id()

        reopened = Session(session_id=sid)
        try:
            assert reopened.id() == sid
            assert reopened.context() == ["hello", "world"]
            assert reopened.invoke(EchoRequest("again")).count == 3
        finally:
            reopened.close()
        assert reopened.id() is None and reopened.context() is None
        session.close()  # already closed by the other handle: idempotent
        with pytest.raises(RuntimeError, match="Service session is not initialized"):
            session.invoke(EchoRequest("x"))
        with pytest.raises(FlameError) as exc:
            Session(session_id=sid)
        assert exc.value.code == FlameErrorCode.INVALID_ARGUMENT
        with pytest.raises(FlameError) as exc:
            Session(session_id="echo-app-nosuch")
        assert exc.value.code == FlameErrorCode.NOT_FOUND
    finally:
        sys.path.remove(str(app_dir))
        sys.modules.pop("echo_service", None)


def test_errors_async_and_no_context(flame):
    flame.register("async-app", '''\
        import asyncio
        from flamepy import service
        ins = service.FlameInstance()

        @ins.entrypoint
        async def handle(req):
            await asyncio.sleep(0)
            if req == "fail":
                raise RuntimeError("it failed: " + req)
            ins.update_context("ignored")   # no ctx: silently nothing
            return {"echo": req, "ctx": ins.context()}

        if __name__ == "__main__":
            ins.run()
        ''')
    with Session("async-app", resreq={"cpu": 1, "memory": "256m"}) as session:
        assert session.invoke("hi") == {"echo": "hi", "ctx": None}
        with pytest.raises(FlameError) as exc:
            session.invoke("fail")
        assert exc.value.code == FlameErrorCode.INTERNAL
        assert exc.value.message == "it failed: fail"
        assert session.invoke(None) == {"echo": None, "ctx": None}
        assert session.context() is None
    core = flamepy.get_session(session._session.id if session._session else _last_session("async-app"))
    assert (core.succeed, core.failed, core.state) == (2, 1, flamepy.SessionState.CLOSED)
    assert core.resreq == flamepy.ResourceRequirement(cpu=1, memory=256 << 20, gpu=0)


def _last_session(app: str) -> str:
    return [s for s in flamepy.list_sessions() if s.application == app][-1].id


def test_many_sessions_and_concurrent_tasks(flame):
    flame.register("work-app", WORKER, delay_release=30)
    sessions = [flamepy.create_session("work-app", max_instances=3) for _ in range(3)]
    futures = {s.id: s.run_many([__import__("cloudpickle").dumps(("sleep", 0.05)) for _ in range(30)])
               for s in sessions}
    pids_by_session = {}
    for sid, futs in futures.items():
        pids = [__import__("cloudpickle").loads(f.result(60)) for f in futs]
        pids_by_session[sid] = set(pids)
    # Work was spread over several instances, never more than max_instances per session,
    # and one instance serves exactly one session.
    for pids in pids_by_session.values():
        assert 2 <= len(pids) <= 3
    all_pids = [p for pids in pids_by_session.values() for p in pids]
    assert len(all_pids) == len(set(all_pids))
    for s in sessions:
        snap = flamepy.get_session(s.id)
        assert (snap.succeed, snap.pending, snap.running) == (30, 0, 0)
        tasks = list(snap.list_tasks())
        assert [t.id for t in tasks] == [str(i) for i in range(1, 31)]
        assert all(t.state == flamepy.TaskState.SUCCEED for t in tasks)
        s.close()


def test_instance_crash_fails_only_its_task(flame):
    import cloudpickle
    flame.register("crash-app", WORKER)
    with Session("crash-app") as session:
        first_pid = session.invoke(("pid",))
        with pytest.raises(FlameError) as exc:
            session.invoke(("crash",))
        assert "exited with code 3" in exc.value.message
        # A fresh instance takes over the session.
        assert session.invoke(("pid",)) != first_pid
        with pytest.raises(FlameError, match="boom: 7"):
            session.invoke(("boom", 7))
    del cloudpickle


def test_service_that_never_becomes_ready_fails_tasks(flame):
    flame.register("broken-app", "import sys\nsys.exit(7)\n")
    ssn = flamepy.create_session("broken-app")
    fut = ssn.run(b"x")
    with pytest.raises(FlameError) as exc:
        fut.result(60)
    assert "could start" in exc.value.message and "exited with code 7" in exc.value.message
    snap = flamepy.get_session(ssn.id)
    assert {e.code for e in snap.events} >= {1001, 1002}
    ssn.close()


def test_resreq_and_close_with_pending_tasks(flame):
    flame.register("big-app", WORKER)
    # cpu=100 never fits the 8-cpu node: the tasks stay pending until the close cancels them.
    ssn = flamepy.create_session("big-app", resreq=flamepy.ResourceRequirement.from_string("cpu=100,mem=1g"))
    futs = ssn.run_many([b"a", b"b", b"c"])
    time.sleep(0.3)  # several scheduling cycles (not a synchronisation: we assert nothing started)
    assert flamepy.get_session(ssn.id).pending == 3
    ssn.close()
    for f in futs:
        with pytest.raises(FlameError, match="cancelled"):
            f.result(10)
    snap = flamepy.get_session(ssn.id)
    assert (snap.pending, snap.cancelled, snap.state) == (0, 3, flamepy.SessionState.CLOSED)
    assert {t.state for t in snap.list_tasks()} == {flamepy.TaskState.CANCELLED}
    flamepy.close_session(ssn.id)  # twice is fine
    with pytest.raises(FlameError):
        ssn.create_task(b"late")


def test_applications_lifecycle(flame):
    flame.register("life-app", WORKER)
    with pytest.raises(FlameError, match="already exists"):
        flamepy.register_application("life-app", {"command": "/bin/true"})
    with pytest.raises(FlameError):
        flamepy.register_application("../bad", {"command": "/bin/true"})
    with pytest.raises(TypeError):
        flamepy.register_application("x-app", {"nope": 1})
    ssn = flamepy.create_session("life-app")
    with pytest.raises(FlameError, match="1 open sessions"):
        flamepy.unregister_application("life-app")
    ssn.close()
    flamepy.unregister_application("life-app")
    assert flamepy.get_application("life-app") is None
    with pytest.raises(FlameError):
        flamepy.get_session(ssn.id)
    with pytest.raises(FlameError, match="not found"):
        flamepy.create_session("life-app")


def test_open_session_get_or_create(flame):
    flame.register("gc-app", WORKER)
    spec = flamepy.SessionAttributes(application="gc-app", id="gc-app-fixed", min_instances=0, max_instances=2)
    a = flamepy.open_session("gc-app-fixed", spec)
    b = flamepy.open_session("gc-app-fixed", spec)
    assert a.id == b.id == "gc-app-fixed"
    bad = flamepy.SessionAttributes(application="gc-app", id="gc-app-fixed", max_instances=5)
    with pytest.raises(FlameError, match="spec mismatch") as exc:
        flamepy.open_session("gc-app-fixed", bad)
    assert exc.value.code == FlameErrorCode.INVALID_ARGUMENT
    a.close()


def test_object_cache(flame):
    flame.register("obj-app", WORKER)
    ref = flamepy.put_object("obj-app/s1", {"a": 1})
    assert ref.version == 1 and ref.key.startswith("obj-app/s1/")
    assert flamepy.ObjectRef.decode(ref.encode()) == ref
    r2 = flamepy.core.patch_object(ref, {"b": 2})
    r3 = flamepy.core.patch_object(r2, {"c": 3})
    assert r3.version == 3
    assert flamepy.get_object(ref) == {"a": 1}  # base only without a deserializer
    merged = flamepy.get_object(ref, deserializer=lambda base, deltas: [base, *deltas])
    assert merged == [{"a": 1}, {"b": 2}, {"c": 3}]
    r4 = flamepy.update_object(ref, "new")
    assert r4.version == 4
    assert flamepy.get_object(ref, deserializer=lambda base, deltas: (base, deltas)) == ("new", [])
    big = os.urandom(700_000)  # several KV values
    rb = flamepy.put_object("obj-app/s1", big)
    assert flamepy.get_object(rb) == big
    with pytest.raises(ValueError):
        flamepy.put_object("bad-prefix", 1)
    with pytest.raises(ValueError):
        flamepy.core.patch_object(flamepy.ObjectRef(flame.endpoint, "obj-app/s1/missing"), 1)
    assert flamepy.core.delete_objects("obj-app/*") == 2
    with pytest.raises(ValueError):
        flamepy.get_object(ref)


def test_flmctl_commands(flame, tmp_path):
    spec = tmp_path / "apps.yaml"
    spec.write_text(textwrap.dedent(f"""\
        metadata:
          name: one-app
        spec:
          command: {sys.executable}
          arguments: [svc.py]
          labels: [Agent, Batch]
          delay_release: 3723
        ---
        metadata:
          name: two-app
        spec:
          command: /bin/true
        """))
    assert flmctl(flame, "register", "-f", str(spec)).returncode == 0
    r = flmctl(flame, "view", "-a", "one-app")
    assert "Name:          one-app" in r.stdout and "\tAgent" in r.stdout and "1h 2m 3s" in r.stdout
    r = flmctl(flame, "create", "-a", "two-app", "-r", "cpu=2,mem=4g")
    m = re.fullmatch(r"Session (two-app-[A-Za-z0-9]{6}) was created\.\n", r.stdout)
    assert m, r.stdout + r.stderr
    sid = m.group(1)
    r = flmctl(flame, "list", "-s")
    row = [line.split() for line in r.stdout.splitlines()[1:] if line.split()[0] == sid][0]
    assert row[1:5] == ["Open", "two-app", "cpu=2,mem=4Gi,gpu=0", "0"]
    r = flmctl(flame, "unregister", "-a", "two-app")
    assert r.returncode == 1 and r.stderr.startswith("Error:")
    r = flmctl(flame, "view", "-s", sid, "-o", "json")
    import json
    doc = json.loads(r.stdout)
    assert doc["id"] == sid and doc["resreq"] == {"cpu": 2, "memory": 4 << 30, "gpu": 0}
    assert flmctl(flame, "close", "-s", sid).stdout == f"Session {sid} was closed.\n"
    assert flmctl(flame, "unregister", "-a", "two-app").returncode == 0
    r = flmctl(flame, "list")
    assert r.returncode == 1 and "unsupported parameters" in r.stderr
    r = flmctl(flame, "--config", str(tmp_path / "nope.yaml"), "list", "-a")
    assert r.returncode == 1 and "is not a file" in r.stderr


def _bound_instances(flame) -> list[str]:
    r = flmctl(flame, "list", "-e")
    return [line.split()[0] for line in r.stdout.splitlines()[1:]]


def test_min_instances_warm_and_delay_release(flame):
    flame.register("warm-app", WORKER, delay_release=1)
    warm = flamepy.create_session("warm-app", min_instances=1, max_instances=1)
    # Warm without any task, and not released after delay_release.
    first = wait_for(lambda: _bound_instances(flame), timeout=20)
    cold = flamepy.create_session("warm-app")
    pid = __import__("cloudpickle").loads(cold.invoke(__import__("cloudpickle").dumps(("pid",))))
    assert pid
    # The cold session's instance leaves after its 1 s delay_release; the warm one stays.
    wait_for(lambda: _bound_instances(flame) == first, timeout=20)
    assert wait_for(lambda: flamepy.get_session(warm.id).running == 0)
    warm.close()
    cold.close()
    wait_for(lambda: _bound_instances(flame) == [], timeout=20)


def test_batched_tasks_and_a_crash_in_the_middle(flame):
    """One instance takes the whole batch in one chunk; a crash mid-chunk fails only that task,
    and the rest of the chunk (recorded or not yet) still completes exactly as it should."""
    import cloudpickle
    flame.register("batch-app", WORKER)
    ssn = flamepy.create_session("batch-app", max_instances=1)
    inputs = [("echo", i) for i in range(40)]
    inputs[20] = ("crash",)
    futs = ssn.run_many([cloudpickle.dumps(x) for x in inputs])
    for i, fut in enumerate(futs):
        if i == 20:
            with pytest.raises(FlameError, match="exited with code 3 while running task 21"):
                fut.result(60)
        else:
            assert cloudpickle.loads(fut.result(60)) == ("echo", i)
    snap = flamepy.get_session(ssn.id)
    assert (snap.succeed, snap.failed, snap.pending, snap.running) == (39, 1, 0, 0)
    states = [t.state for t in snap.list_tasks()]
    assert states.count(flamepy.TaskState.SUCCEED) == 39 and states[20] == flamepy.TaskState.FAILED
    # A fast task still shows it ran: created → running → succeed.
    assert [e.code for e in ssn.get_task("1").events] == [0, 1, 2]
    # A burst of no-op tasks: every future, counter and record agrees.
    futs = ssn.run_many([None] * 300)
    assert all(f.result(60) is None for f in futs)
    snap = flamepy.get_session(ssn.id)
    assert (snap.succeed, snap.pending, snap.running) == (339, 0, 0)
    ssn.close()

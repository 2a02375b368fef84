"""flamepy.core as Flame 0.6 has it, against a real flo-server whose embedded executor runs real services.

One server per module (the executor inside it, 16 cpus of capacity so sessions never wait for each other);
a bytes-level echo service; every test closes what it opens.
"""

from __future__ import annotations

import concurrent.futures
import sys
import time
from datetime import datetime, timezone

import pytest

import flamepy
from flamepy import FlameError, FlameErrorCode, SessionState, TaskState
from flamepy.core.client import set_default_connection
from tests.helpers import ServerProc, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ECHO = '''\
import time
import flamepy

class Echo(flamepy.FlameService):
    def on_task_invoke(self, ctx):
        if ctx.input == b"fail":
            raise ValueError("asked to fail")
        if ctx.input and ctx.input.startswith(b"sleep "):
            time.sleep(float(ctx.input[6:]))
        return ctx.input

flamepy.run(Echo())
'''


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("core-api")
    (root / "echo.py").write_text(ECHO)
    sp = ServerProc(root / "data", executor=True, env={"FLAME_EXECUTOR_CPU": "16",
                                                       "FLAME_EXECUTOR_NODE": "core-node"}).start()
    conn = flamepy.connect(sp.endpoint)
    set_default_connection(conn)
    flamepy.register_application("core-echo", {"command": sys.executable, "arguments": ["echo.py"],
                                               "working_directory": str(root)})
    try:
        yield sp
    finally:
        conn.close()
        sp.stop()


def test_enums_and_error_codes_are_flames():
    assert [s.name for s in SessionState] == ["OPEN", "CLOSED"]
    assert [(s.name, int(s)) for s in TaskState] == [("PENDING", 0), ("RUNNING", 1), ("SUCCEED", 2), ("FAILED", 3),
                                                    ("CANCELLED", 4)]
    assert {c.name: int(c) for c in FlameErrorCode} == {"INVALID_CONFIG": 0, "INVALID_STATE": 1,
                                                        "INVALID_ARGUMENT": 2, "INTERNAL": 3, "ALREADY_EXISTS": 4,
                                                        "NOT_FOUND": 5}
    assert flamepy.core.short_name("x").startswith("x-") and len(flamepy.core.short_name("x", 10)) == 12
    for name in ("TaskInformer", "TaskWatcher", "ConnectionInstance", "TaskIterator", "list_executors", "list_nodes"):
        assert hasattr(flamepy.core, name), name


def test_every_application_attribute_round_trips(cluster):
    attrs = flamepy.ApplicationAttributes(
        shim=flamepy.Shim.HOST, image="img:1", description="all fields", labels=["a", "b"], command="/bin/true",
        arguments=["-x", "$HOME"], environments={"K": "V"}, working_directory="/tmp", max_instances=7,
        delay_release=9, schema=flamepy.ApplicationSchema(input='{"type": "string"}', output=None,
                                                           common_data='{"type": "object"}'),
        url="file:///tmp/pkg.tar.gz", installer="python")
    flamepy.register_application("core-all-fields", attrs)
    try:
        app = flamepy.get_application("core-all-fields")
        for f in ("shim", "image", "description", "labels", "command", "arguments", "environments",
                  "working_directory", "max_instances", "delay_release", "schema", "url", "installer"):
            assert getattr(app, f) == getattr(attrs, f), f
        assert app.id == app.name == "core-all-fields" and app.state == flamepy.ApplicationState.ENABLED
        assert isinstance(app.creation_time, datetime) and app.creation_time.tzinfo == timezone.utc
        defaults = flamepy.register_application("core-defaults", flamepy.ApplicationAttributes())
        assert defaults is None
        got = flamepy.get_application("core-defaults")
        assert (got.shim, got.max_instances, got.delay_release, got.url) == (flamepy.Shim.HOST, 1_000_000, 60, None)
        assert flamepy.get_application("core-nope") is None
        with pytest.raises(TypeError):
            flamepy.register_application("core-bad", {"bogus": 1})
    finally:
        for name in ("core-all-fields", "core-defaults"):
            flamepy.unregister_application(name)


def test_tasks_list_get_watch_and_events(cluster):
    ssn = flamepy.create_session("core-echo")
    try:
        assert ssn.state == SessionState.OPEN and isinstance(ssn.creation_time, datetime)
        futures = ssn.run_many([b"%d" % i for i in range(300)])  # more than one page of list_tasks
        assert [f.result(60) for f in futures][:3] == [b"0", b"1", b"2"]
        tasks = ssn.list_tasks()
        assert iter(tasks) is tasks
        listed = list(tasks)
        assert [t.id for t in listed] == [str(i) for i in range(1, 301)]
        assert all(t.state == TaskState.SUCCEED and t.output == t.input for t in listed)
        task = ssn.get_task("300")
        assert task.is_completed() and not task.is_failed() and task.session_id == ssn.id
        assert [e.code for e in task.events] == [0, 2] or [e.code for e in task.events] == [0, 1, 2]
        assert task.events[-1].message == "Task was completed with state <Succeed>"
        assert task.completion_time >= task.creation_time

        created = ssn.create_task(b"sleep 0.5")
        assert created.state == TaskState.PENDING and created.events[0].code == 0
        seen = [t.state for t in ssn.watch_task(created.id)]
        assert seen[-1] == TaskState.SUCCEED and seen[0] in (TaskState.PENDING, TaskState.RUNNING)
        assert seen == sorted(seen) and len(set(seen)) == len(seen)  # one item per change, in order
        assert [t.state for t in ssn.watch_task(created.id)] == [TaskState.SUCCEED]  # terminal: yielded once

        slow = ssn.create_task(b"sleep 3")
        watcher = ssn.watch_task(slow.id, timeout=1.0)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            for _ in watcher:
                pass
        assert time.monotonic() - t0 < 10  # the timeout bounds the wait itself

        failed = ssn.create_task(b"fail")
        last = list(ssn.watch_task(failed.id))[-1]
        assert last.state == TaskState.FAILED and last.is_failed()
        assert last.events[-1].code == 3 and last.events[-1].message == "asked to fail"
        with pytest.raises(FlameError) as exc:
            ssn.invoke(b"fail")
        assert exc.value.code == FlameErrorCode.INTERNAL and exc.value.message == "asked to fail"
        with pytest.raises(FlameError) as exc:
            next(ssn.watch_task("99999"))
        assert exc.value.code == FlameErrorCode.NOT_FOUND
    finally:
        wait_until(lambda: _try_close(ssn.id), timeout=60)
    closed = flamepy.get_session(ssn.id)
    assert closed.state == SessionState.CLOSED and closed.completion_time is not None
    assert closed.succeed >= 302 and closed.failed == 2


def _try_close(sid: str) -> bool:
    try:
        flamepy.close_session(sid)
        return True
    except FlameError:  # a task still running: close is refused, as in Flame
        return False


class Recorder(flamepy.TaskInformer):
    def __init__(self):
        self.states, self.errors = [], []

    def on_update(self, task):
        self.states.append(task.state)

    def on_error(self, error):
        self.errors.append(error)


def test_informers_on_run_and_invoke(cluster):
    ssn = flamepy.create_session("core-echo")
    try:
        rec = Recorder()
        assert ssn.invoke(b"hi", rec) == b"hi"
        assert rec.states[-1] == TaskState.SUCCEED and not rec.errors  # delivered before invoke returns
        recs = [Recorder() for _ in range(5)]
        futures = [ssn.run(b"r%d" % i, r) for i, r in enumerate(recs)]
        concurrent.futures.wait(futures, 60)
        assert [f.result() for f in futures] == [b"r%d" % i for i in range(5)]
        assert wait_until(lambda: all(r.states and r.states[-1] == TaskState.SUCCEED for r in recs), timeout=30)
        bad = Recorder()
        with pytest.raises(FlameError):
            ssn.invoke(b"fail", bad)
        assert bad.states[-1] == TaskState.FAILED
    finally:
        ssn.close()


def test_executors_and_nodes(cluster):
    ssn = flamepy.create_session("core-echo", min_instances=1, resreq={"cpu": 2, "memory": "256m"})
    try:
        bound = flamepy.core.ExecutorState.BOUND
        assert wait_until(lambda: any(e.status.session_id == ssn.id and e.status.state == bound
                                      for e in flamepy.list_executors()), timeout=60)
        ex = [e for e in flamepy.list_executors() if e.status.session_id == ssn.id][0]
        assert ex.metadata.id == ex.id and ex.spec.node == "core-node"
        assert (ex.spec.resreq.cpu, ex.spec.resreq.memory) == (2, 256 << 20)
        nodes = flamepy.list_nodes()
        assert [n.metadata.name for n in nodes] == ["core-node"]
        node = nodes[0]
        assert node.status.state == flamepy.core.NodeState.READY and node.spec.hostname
        assert node.status.capacity.cpu == 16 and node.status.allocatable.cpu <= 14
        assert node.status.info.arch and node.status.info.os
        assert abs(node.status.last_heartbeat_time - time.time()) < 60
        assert flamepy.connect(cluster.endpoint).get_node("core-node").metadata.name == "core-node"
        with pytest.raises(FlameError) as exc:
            flamepy.core.ConnectionInstance.instance().get_node("no-such-node")
        assert exc.value.code == FlameErrorCode.NOT_FOUND
    finally:
        ssn.close()
    assert wait_until(lambda: not any(e.status.session_id == ssn.id for e in flamepy.list_executors()), timeout=60)


def test_open_session_rfe352(cluster):
    spec = flamepy.SessionAttributes(application="core-echo", id="core-gc", min_instances=0, max_instances=3)
    with pytest.raises(FlameError) as exc:
        flamepy.open_session("core-gc")
    assert exc.value.code == FlameErrorCode.NOT_FOUND and "not found" in exc.value.message
    created = flamepy.open_session("core-gc", spec)             # get-or-create: creates
    again = flamepy.open_session("core-gc", spec)               # ... then gets, spec validated
    plain = flamepy.open_session("core-gc")                     # no spec: opens
    assert created.id == again.id == plain.id == "core-gc" and plain.application == "core-echo"
    for bad in (flamepy.SessionAttributes(application="core-echo", id="core-gc", max_instances=4),
                flamepy.SessionAttributes(application="core-echo", id="core-gc", max_instances=3,
                                          resreq=flamepy.ResourceRequirement(cpu=3, memory=1 << 30))):
        with pytest.raises(FlameError, match="spec mismatch") as exc:
            flamepy.open_session("core-gc", bad)
        assert exc.value.code == FlameErrorCode.INVALID_ARGUMENT
    assert plain.invoke(b"ok") == b"ok"
    flamepy.close_session("core-gc")
    flamepy.close_session("core-gc")  # idempotent
    with pytest.raises(FlameError) as exc:
        flamepy.open_session("core-gc", spec)
    assert exc.value.code == FlameErrorCode.INVALID_ARGUMENT and "not open" in exc.value.message
    with pytest.raises(FlameError) as exc:
        flamepy.create_session("core-echo", session_id="core-gc")
    assert "already exists" in exc.value.message


def test_connection_methods(cluster):
    conn = flamepy.Connection.connect(cluster.endpoint)
    try:
        assert conn.addr == cluster.endpoint
        conn.register_application("core-conn", {"command": "/bin/true"})
        assert "core-conn" in [a.name for a in conn.list_applications()]
        ssn = conn.create_session(flamepy.SessionAttributes(application="core-conn", common_data=b"cd"))
        assert ssn.common_data() == b"cd" and ssn.connection is conn
        assert ssn.id.startswith("core-conn-") and len(ssn.id) == len("core-conn-") + 6
        assert conn.get_session(ssn.id).id in [s.id for s in conn.list_sessions()]
        assert conn.open_session(ssn.id).state == SessionState.OPEN
        with pytest.raises(FlameError) as exc:
            ssn.create_task("not bytes")
        assert exc.value.code == FlameErrorCode.INVALID_ARGUMENT
        closed = conn.close_session(ssn.id)
        assert closed.state == SessionState.CLOSED
        with pytest.raises(FlameError):
            ssn.create_task(b"late")
        conn.unregister_application("core-conn")
        assert conn.get_application("core-conn") is None
        assert isinstance(conn.list_executors(), list) and conn.list_nodes()
    finally:
        conn.close()
    with pytest.raises(FlameError) as exc:
        conn.list_applications()
    assert exc.value.code == FlameErrorCode.INVALID_STATE
    with pytest.raises(FlameError) as exc:
        flamepy.connect("")
    assert exc.value.code == FlameErrorCode.INVALID_CONFIG


def test_flame_instance_server_and_top_level_runner(cluster, tmp_path):
    (tmp_path / "srv.py").write_text(ECHO.replace("flamepy.run(Echo())",
                                                  "flamepy.core.FlameInstanceServer(Echo()).start()"))
    flamepy.register_application("core-server", {"command": sys.executable, "arguments": ["srv.py"],
                                                 "working_directory": str(tmp_path)})
    ssn = flamepy.create_session("core-server")
    try:
        assert ssn.invoke(b"via server") == b"via server"
    finally:
        ssn.close()
        flamepy.unregister_application("core-server")
    assert flamepy.runner.Runner is not None and "runner" in flamepy.__all__


def test_wasm_application_is_stored_but_never_launched(cluster):
    flamepy.register_application("core-wasm", flamepy.ApplicationAttributes(shim=flamepy.Shim.WASM,
                                                                            command="/bin/echo", arguments=["x"]))
    wasm = flamepy.create_session("core-wasm")
    host = flamepy.create_session("core-echo")
    try:
        assert flamepy.get_application("core-wasm").shim == flamepy.Shim.WASM
        task = wasm.create_task(b"never")
        # the executor has cycled many times once a host task started after it has run
        assert host.invoke(b"control") == b"control"
        assert wasm.get_task(task.id).state == TaskState.PENDING
        assert not [e for e in flamepy.list_executors() if e.status.session_id == wasm.id]
        assert flamepy.get_session(wasm.id).events == []  # no launch was even tried (no bind failure)
    finally:
        host.close()
        wasm.close()
        flamepy.unregister_application("core-wasm")

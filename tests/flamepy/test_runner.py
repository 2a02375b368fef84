"""flamepy.runner end to end: Flame's Runner tutorial programs, the e2e CLI, the Runner API, failures.

One flo-server with its embedded executor serves the module (``flame_cluster``); every Runner
packages a small project directory of its own, and its calls run in real service processes
(``python -m flamepy.runner.runpy``) that the executor launches. The functions served below are
defined in this module and travel by value (cloudpickle), as a user's ``__main__`` code does.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import yaml

import flamepy
from flamepy.core import ObjectRef
from flamepy.core import records as R
from flamepy.core.client import connection
from flamepy.runner import Runner, SessionContext, get_data
from tests.helpers import ServerProc, wait_until

pytestmark = pytest.mark.timeout(180)

cloudpickle.register_pickle_by_value(sys.modules[__name__])

EXAMPLES = Path(__file__).parent / "runner_examples"
CALL_TIMEOUT_S = 90


def _add(a: int, b: int) -> int:
    return a + b


def _lookup(mapping: dict, key: str):
    return mapping[key]


def _sleep_then_return(seconds: float, value: str) -> str:
    time.sleep(seconds)
    return value


def _fail_on_odd(n: int) -> int:
    if n % 2:
        raise ValueError(f"boom {n}")
    return n


def _record_pid_and_sleep(path: str, seconds: float) -> int:
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(seconds)
    return os.getpid()


class _Greeter:
    def hello(self, name: str) -> str:
        return f"hello {name}"

    def pid(self) -> int:
        return os.getpid()

    def _private(self) -> None:
        pass


class _Unbuildable:
    def __init__(self) -> None:
        raise OSError("model file missing")

    def predict(self, x):
        return x


class _Pinned:
    _session_context = SessionContext(session_id="rt-pinned-session")

    def ping(self) -> str:
        return "pong"


def _result(fut, timeout: float = CALL_TIMEOUT_S):
    """``fut.get()``, bounded: the test fails instead of hanging."""
    concurrent.futures.wait([fut._future], timeout=timeout)
    assert fut.done(), f"call not finished within {timeout}s"
    return fut.get()


def _app_names() -> set:
    return {a.name for a in flamepy.list_applications()}


def _objects(app: str) -> list:
    """The object-cache keys of an application still stored."""
    conn = connection()
    return conn._call(conn.store.scan(R.p_obj(app)))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def project(tmp_path, monkeypatch):
    """A small project directory as the current directory (what a Runner packages)."""
    d = tmp_path / "project"
    d.mkdir()
    (d / "README.md").write_text("a test project\n")
    monkeypatch.chdir(d)
    return d


def test_flame_tutorial_programs_print_their_results(flame_cluster, tmp_path):
    for script, expected in (("sum_app.py", "4"), ("counter_app.py", "14"), ("chain_app.py", "50")):
        d = tmp_path / script[:-3]
        d.mkdir()
        shutil.copy(EXAMPLES / script, d)
        r = subprocess.run([sys.executable, script], cwd=d, env=flame_cluster.env, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, f"{script}: {r.stderr[-3000:]}"
        assert r.stdout.strip().splitlines()[-1] == expected, r.stdout
        assert sorted(p.name for p in d.iterdir()) == [script]  # nothing written into the project (no dist/)
    assert not {"sum-app", "counter-app", "chain-app"} & _app_names()  # each Runner unregistered its app


def test_e2e_cli_passes_and_reports_failures(flame_cluster, tmp_path):
    r = subprocess.run([sys.executable, "-m", "flamepy.runner.e2e", "--json", "--tasks", "3"], cwd=tmp_path,
                       env=flame_cluster.env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads(r.stdout.strip().splitlines()[-1])
    assert doc["function_results"] == [0, 1, 4]
    assert doc["chained_result"] == 9 + 16 and doc["stateful_result"] == 6 and doc["template"] == "flmrun"
    assert doc["app_name"] not in _app_names()

    home = tmp_path / "home-no-template"
    (home / ".flame").mkdir(parents=True)
    (home / ".flame" / "flame.yaml").write_text(yaml.safe_dump({"current-context": "c", "contexts": [
        {"name": "c", "cluster": {"endpoint": f"flo://{flame_cluster.endpoint}"},
         "runner": {"template": "no-such-template"}}]}))
    r = subprocess.run([sys.executable, "-m", "flamepy.runner", "--tasks", "1"], cwd=tmp_path,
                       env=dict(flame_cluster.env, HOME=str(home)), capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert "Flame Runner cluster e2e failed: Runner template application 'no-such-template' is not registered" \
        in r.stderr


def test_futures_chain_by_reference_select_and_shared_objects(flame_cluster, project):
    with Runner("rt-futures") as runner:
        square = runner.service(lambda x: x * x)
        add = runner.service(_add)
        futures = [square(i) for i in range(6)]
        assert runner.get(futures) == [i * i for i in range(6)]
        refs = runner.ref(futures)
        assert all(isinstance(r, ObjectRef) and r.key.startswith("rt-futures/") for r in refs)
        runner.wait(futures)

        total = add(futures[2], futures[3])
        assert _result(total) == 13
        # what travelled: the ObjectRefs of the upstream results, not their values
        task = list(flamepy.get_session(add.session_id).list_tasks())[-1]
        request = cloudpickle.loads(task.input)
        assert [type(a) for a in request.args] == [ObjectRef, ObjectRef]
        assert get_data(task.input)["args"] == (4, 9)
        assert get_data(task.output)["result"] == 13

        big = runner.service(lambda n: b"x" * n)(300_000)          # too big to travel inline
        assert len(_result(big)) == 300_000 and big.ref().key.startswith("rt-futures/")
        task = list(flamepy.get_session(big._key_prefix.split("/")[1]).list_tasks())[-1]
        assert isinstance(ObjectRef.decode(task.output), ObjectRef)

        shared = runner.put_object({"answer": 42})
        assert shared.key.startswith("rt-futures/shared/")
        assert _result(runner.service(_lookup)(shared, "answer")) == 42

        # select yields in completion order: the slow call was submitted first
        slow = runner.service(_sleep_then_return)(3, "slow")
        fast = runner.service(_sleep_then_return)(0, "fast")
        order = [f.get() for f in runner.select([slow, fast])]
        assert order == ["fast", "slow"]
    assert not _objects("rt-futures")


def test_class_and_object_services(flame_cluster, project):
    with Runner("rt-classes") as runner:
        greeter = runner.service(_Greeter)          # a class: stateless, one object per instance
        assert _result(greeter.hello("flo")) == "hello flo"
        assert not hasattr(greeter, "_private")
        with pytest.raises(TypeError):
            greeter()
        pinned = runner.service(_Pinned())          # an object, with its own session id
        assert pinned.session_id == "rt-pinned-session"
        assert _result(pinned.ping()) == "pong"
        for bad in (dict(execution_object=_Greeter(), autoscale=True), dict(execution_object=_Greeter(), warmup=2),
                    dict(execution_object=_add, warmup=-1)):
            with pytest.raises(ValueError):
                runner.service(**bad)
    with pytest.raises(ValueError):
        SessionContext(session_id="x" * 129)


def test_a_call_that_raises_fails_alone(flame_cluster, project):
    with Runner("rt-raises") as runner:
        svc = runner.service(_fail_on_odd)
        bad, good = svc(7), svc(8)
        with pytest.raises(flamepy.FlameError) as err:
            _result(bad)
        assert "ValueError: boom 7" in err.value.message
        assert _result(good) == 8
        states = {t.id: t.state for t in flamepy.get_session(svc.session_id).list_tasks()}
        assert sorted(states.values()) == [flamepy.TaskState.SUCCEED, flamepy.TaskState.FAILED]


def test_a_service_whose_setup_raises_fails_its_binds_then_its_calls(flame_cluster, project):
    with Runner("rt-unbuildable") as runner:
        svc = runner.service(_Unbuildable)
        with pytest.raises(flamepy.FlameError) as err:
            _result(svc.predict(1))
        assert "_Unbuildable() failed: OSError: model file missing" in err.value.message
        events = flamepy.get_session(svc.session_id).events
        assert [e.code for e in events].count(1001) == 5 and events[-1].code == 1002


def test_a_killed_service_process_fails_its_call_and_the_next_call_runs(flame_cluster, project, tmp_path):
    marker = tmp_path / "pid"
    with Runner("rt-killed") as runner:
        svc = runner.service(_record_pid_and_sleep)
        fut = svc(str(marker), 300)
        pid = wait_until(lambda: marker.exists() and marker.read_text() and int(marker.read_text()), timeout=60)
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(flamepy.FlameError) as err:
            _result(fut)
        assert f"exited with code -{int(signal.SIGKILL)} while running task" in err.value.message
        marker.unlink()
        assert _result(svc(str(marker), 0)) != pid   # a fresh instance took over


def test_close_cancels_running_calls_and_leaves_nothing(flame_cluster, project, tmp_path):
    marker = tmp_path / "pid"
    runner = Runner("rt-close")
    svc = runner.service(_record_pid_and_sleep)
    fut = svc(str(marker), 300)
    queued = svc(str(marker), 300)
    pid = wait_until(lambda: marker.exists() and marker.read_text() and int(marker.read_text()), timeout=60)
    started = time.monotonic()
    runner.close()
    assert time.monotonic() - started < 30
    for f in (fut, queued):
        with pytest.raises(flamepy.FlameError) as err:
            _result(f, timeout=10)
        assert "cancelled" in err.value.message
    assert not _alive(pid)                               # close waited for the instance to stop
    assert "rt-close" not in _app_names()
    assert not _objects("rt-close")
    runner.close()                                       # twice is fine
    with pytest.raises(flamepy.FlameError):
        svc(str(marker), 0)


def test_existing_application_is_reused_or_refused(flame_cluster, project):
    with Runner("rt-reuse"):
        with pytest.raises(flamepy.FlameError) as err:
            Runner("rt-reuse", fail_if_exists=True)
        assert err.value.code == flamepy.FlameErrorCode.ALREADY_EXISTS
        second = Runner("rt-reuse")
        assert _result(second.service(len)([1, 2, 3])) == 3
        second.close()
        assert "rt-reuse" in _app_names()                # not its application to remove
    assert "rt-reuse" not in _app_names()

    with pytest.raises(RuntimeError, match="user code failed"):
        with Runner("rt-raising-block") as runner:
            runner.put_object("kept until close")
            raise RuntimeError("user code failed")
    assert "rt-raising-block" not in _app_names() and not _objects("rt-raising-block")


def test_bad_runner_arguments_are_refused(flame_cluster, project):
    for kwargs in (dict(name="bad name!"), dict(name="ok", dependencies="six"), dict(name="ok", python_version="3.x"),
                   dict(name="ok", dependencies=["--index-url=http://evil"])):
        with pytest.raises(flamepy.FlameError) as err:
            Runner(**kwargs)
        assert err.value.code == flamepy.FlameErrorCode.INVALID_ARGUMENT
    assert "ok" not in _app_names()


def test_builtin_applications_are_registered_once_and_never_overwritten(tmp_path):
    from flamepy.core.client import Connection

    sp = ServerProc(tmp_path / "data", executor=True, env={"TMPDIR": str(tmp_path)}).start()
    try:
        conn = Connection(sp.endpoint)
        wait_until(lambda: conn.get_application("flmrun"), timeout=30)
        assert "flmrun" in {a.name for a in conn.list_applications()}
        app = conn.get_application("flmrun")
        assert (app.command, app.arguments, app.installer) == (sys.executable, ["-m", "flamepy.runner.runpy"],
                                                               "python")
        conn.update_application("flmrun", {"command": app.command, "arguments": app.arguments,
                                           "installer": "python", "description": "edited by the user"})
        conn.close()
        sp.restart()
        wait_until(lambda: sp.log().count("executor manager") >= 2, timeout=30)
        conn = Connection(sp.endpoint)
        assert conn.get_application("flmrun").description == "edited by the user"
        conn.close()
    finally:
        sp.stop()

    # with authentication on, the server registers them through a user of their own
    sp = ServerProc(tmp_path / "data-auth", "--requirepass", "s3cret", executor=True,
                    env={"TMPDIR": str(tmp_path)}).start()
    try:
        conn = Connection(sp.endpoint, client_options={"password": "s3cret"})
        assert wait_until(lambda: conn.get_application("flmrun"), timeout=30).installer == "python"
        conn.close()
    finally:
        sp.stop()


def test_a_lingering_idle_instance_makes_room_for_the_next_service(tmp_path, monkeypatch):
    """One cpu on the node: the first service's instance lingers (delay_release 60 s) after its
    call; the second service's call must not wait for that: the executor releases it."""
    from flamepy.core.client import Connection, set_default_connection

    sp = ServerProc(tmp_path / "data", executor=True, env={"TMPDIR": str(tmp_path), "FLAME_EXECUTOR_CPU": "1"}).start()
    conn = Connection(sp.endpoint)
    try:
        set_default_connection(conn)
        monkeypatch.setenv("FLAME_ENDPOINT", sp.endpoint)
        (tmp_path / "project").mkdir()
        monkeypatch.chdir(tmp_path / "project")
        wait_until(lambda: conn.get_application("flmrun"), timeout=30)
        with Runner("rt-one-cpu") as runner:
            assert _result(runner.service(_add)(1, 2)) == 3
            started = time.monotonic()
            assert _result(runner.service(_add)(3, 4), timeout=40) == 7
            assert time.monotonic() - started < 40
        assert "releasing idle instance" in sp.log()
    finally:
        set_default_connection(None)
        conn.close()
        sp.stop()

"""The built-in flmping and flmexec applications, run for real: a flo-server with its executor manager
starts their service processes (``python -m flamepy.apps.flmping`` / ``flmexec``) for our sessions.

The request / response shapes are Flame 0.6's (PingRequest/PingResponse, Script/ScriptOutput as serde JSON).
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import textwrap

import pytest

import flamepy
from flamepy import FlameError
from tests.helpers import wait_until

TIMEOUT = 90  # a service process starting on a loaded 2-core box


def _script(language: str, code: str, input=None, **extra) -> bytes:
    return json.dumps({"language": language, "runtime": None, "code": textwrap.dedent(code), "input": input,
                       **extra}).encode()


def _stdout(answer: bytes) -> bytes:
    return bytes(json.loads(answer)["data"])


def test_fresh_server_lists_the_builtins(flame_cluster):
    apps = {a.name: a for a in wait_until(lambda: flamepy.list_applications() or None, timeout=TIMEOUT)}
    for name, module in (("flmping", "flamepy.apps.flmping"), ("flmexec", "flamepy.apps.flmexec")):
        assert name in apps, sorted(apps)
        assert apps[name].arguments == ["-m", module]
        assert os.path.basename(apps[name].command).startswith("python")


def test_flmping_answers_where_and_how_long(flame_cluster):
    ssn = flamepy.create_session("flmping")
    try:
        futures = ssn.run_many([None, b'{"duration": 50}', b'{"memory": 1048576, "duration": null}'])
        messages = [json.loads(f.result(TIMEOUT))["message"] for f in futures]
        shape = re.compile(r"^Completed on <(.+)> in <(\d+)> milliseconds with <(\d+)> memory$")
        parsed = [shape.match(m) for m in messages]
        assert all(parsed), messages
        assert {p.group(1) for p in parsed} == {socket.gethostname()}
        assert int(parsed[1].group(2)) >= 50
        assert [int(p.group(3)) for p in parsed] == [0, 0, 1048576]
        with pytest.raises(FlameError, match="ping duration must be an integer from 0 to 3600000"):
            ssn.run(b'{"duration": -1}').result(TIMEOUT)
        with pytest.raises(FlameError, match="not JSON"):
            ssn.run(b"ping?").result(TIMEOUT)
    finally:
        ssn.close()


def test_flmexec_runs_python_and_shell_scripts(flame_cluster):
    ssn = flamepy.create_session("flmexec")
    try:
        py = ssn.run(_script("python", """
            import sys
            data = sys.stdin.buffer.read()
            print(sum(data), data.decode().upper())
            """, input=list(b"flame")))
        sh = ssn.run(_script("Shell", 'printf "%s:%s" "$(cat)" "$(pwd | grep -c flmexec-shell)"', input="hi"))
        assert _stdout(py.result(TIMEOUT)) == f"{sum(b'flame')} FLAME\n".encode()
        assert _stdout(sh.result(TIMEOUT)) == b"hi:1"
        # Failures carry the exit status and the tails of stderr / stdout (0.6.0 answered them as successes).
        with pytest.raises(FlameError, match=r"script exited with code 3; stderr: .*boom.*; stdout: partial"):
            ssn.run(_script("python", """
                import sys
                print("partial", flush=True)
                sys.stderr.write("boom\\n")
                sys.exit(3)
                """)).result(TIMEOUT)
        with pytest.raises(FlameError, match="Unsupported language: ruby"):
            ssn.run(_script("ruby", "puts 1")).result(TIMEOUT)
        with pytest.raises(FlameError, match="Unsupported shell runtime: /tmp/bash"):
            ssn.run(json.dumps({"language": "shell", "runtime": "/tmp/bash", "code": "echo", "input": None})
                    .encode()).result(TIMEOUT)
        with pytest.raises(FlameError, match="timeout of 0.5 s"):
            ssn.run(_script("shell", "sleep 30", timeout=0.5)).result(TIMEOUT)
    finally:
        ssn.close()


def test_flmexec_script_uses_the_object_cache_of_the_same_cluster(flame_cluster):
    """The script gets the cluster's endpoint (and nothing of the instance's own identity), so flamepy
    works inside it: it reads an object the test wrote and patches it; the test's kept copy then
    fetches only that delta."""
    ref = flamepy.put_object("exec-app/s1", {"from": "test"})
    ssn = flamepy.create_session("flmexec")
    try:
        out = ssn.run(_script("python", f"""
            import os
            import flamepy
            from flamepy.core import ObjectRef, patch_object
            ref = ObjectRef({ref.endpoint!r}, {ref.key!r}, 1)
            print(flamepy.get_object(ref)["from"], patch_object(ref, "from-script").version,
                  os.environ.get("FLAME_INSTANCE_ID"), os.environ["FLAME_ENDPOINT"])
            """)).result(TIMEOUT)
        assert _stdout(out).decode().split() == ["test", "2", "None", flame_cluster.endpoint]
        before = flamepy.core.cache.stats()
        assert flamepy.get_object(ref, deserializer=lambda base, deltas: [base, *deltas]) == \
            [{"from": "test"}, "from-script"]
        after = flamepy.core.cache.stats()
        assert after.patches - before.patches == 1 and after.full == before.full
    finally:
        ssn.close()
        flamepy.core.delete_objects("exec-app/*")


def test_stopping_the_instance_ends_a_running_script(flame_cluster, tmp_path):
    """A forced close (what a Runner's close does) stops the instance; its script, a process group of
    its own, goes with it (no orphan left sleeping)."""
    from flamepy.core import _runtime, client, ops

    pid_file = tmp_path / "script.pid"
    ssn = flamepy.create_session("flmexec")
    # The pid of the script's own child: it outlives the shell unless the whole group is ended.
    fut = ssn.run(_script("shell", f"sleep 600 & echo $! > {pid_file}.tmp && mv {pid_file}.tmp {pid_file}; wait"))
    pid = int(wait_until(lambda: pid_file.exists() and pid_file.read_text().strip(), timeout=TIMEOUT))
    _runtime.run(ops.close_session(client.connection().store, ssn.id, force=True))

    def gone() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with open(f"/proc/{pid}/stat") as f:   # a zombie not yet reaped by init is gone too
            return f.read().split(") ", 1)[1].startswith("Z")

    wait_until(gone, timeout=TIMEOUT, interval=0.05)
    with pytest.raises(FlameError):
        fut.result(TIMEOUT)


def test_flmping_and_flmexec_clients(flame_cluster):
    """Run by hand (no FLAME_INSTANCE_ID), the modules are Flame's flmping / flmexec client CLIs."""
    import subprocess

    env = {k: v for k, v in flame_cluster.env.items() if not k.startswith("FLAME_INSTANCE")}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", *args], env=env, capture_output=True, text=True,
                              timeout=TIMEOUT)

    ping = cli("flamepy.apps.flmping", "-t", "3", "-d", "5")
    assert ping.returncode == 0, ping.stderr
    lines = ping.stdout.splitlines()
    assert re.match(r"^Session <flmping-\w+> was created in <\d+ ms>, start to run <3> tasks in the session:$",
                    lines[0])
    rows = [line.split(None, 3) for line in lines if "Completed on" in line]
    assert [(r[1], r[2]) for r in rows] == [("1", "Succeed"), ("2", "Succeed"), ("3", "Succeed")]
    assert re.search(r"<3> tasks was completed in <[\d,]+ ms>\.", ping.stdout)
    perf = cli("flamepy.apps.flmping", "-p", "-t", "20")
    assert perf.returncode == 0 and "Succeeded:       20/20" in perf.stdout and "Throughput:" in perf.stdout

    exe = cli("flamepy.apps.flmexec", "-t", "2", "-l", "python", "-c", "print(6 * 7)")
    assert exe.returncode == 0, exe.stderr
    assert re.findall(r"^Task (\d+)\s*: (.*)$", exe.stdout, re.M) == [("1", "42"), ("2", "42")]
    bad = cli("flamepy.apps.flmexec", "-t", "1", "-c", "exit 4")
    assert bad.returncode == 1 and "failed: script exited with code 4" in bad.stdout

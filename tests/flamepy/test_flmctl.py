"""flmctl as a user runs it (the installed console script) against real flo-servers with the embedded executor."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.helpers import ServerProc, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

BIN = Path(sys.executable).parent
MIGRATIONS = Path(__file__).parent / "flame_examples" / "migrations"

ECHO = '''\
import flamepy

class Echo(flamepy.FlameService):
    def on_task_invoke(self, ctx):
        return b"echo:" + (ctx.input or b"")

flamepy.run(Echo())
'''


def _home(path: Path, endpoint: str) -> Path:
    (path / ".flame").mkdir(parents=True, exist_ok=True)
    (path / ".flame" / "flame.yaml").write_text(
        f"current-context: t\ncontexts:\n  - name: t\n    cluster:\n      endpoint: flo://{endpoint}\n")
    return path


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("flmctl")
    (root / "echo.py").write_text(ECHO)
    sp = ServerProc(root / "data", executor=True, env={"FLAME_EXECUTOR_CPU": "16",
                                                       "FLAME_EXECUTOR_NODE": "ctl-node"}).start()
    e = {k: v for k, v in os.environ.items() if not k.startswith("FLAME_")}
    e["HOME"] = str(_home(root / "home", sp.endpoint))
    saved = os.environ.get("FLAME_ENDPOINT")
    try:
        yield type("Env", (), {"root": root, "server": sp, "env": e})
    finally:
        if saved is None:
            os.environ.pop("FLAME_ENDPOINT", None)
        else:
            os.environ["FLAME_ENDPOINT"] = saved
        sp.stop()


def use(conn) -> None:
    """Point this process's flamepy (the default connection and the object cache's endpoint) at ``conn``."""
    from flamepy.core.client import set_default_connection
    os.environ["FLAME_ENDPOINT"] = conn.endpoint
    set_default_connection(conn)


def flmctl(env, *args: str, home_env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "flmctl"), *args], env=home_env or env.env, capture_output=True, text=True,
                          timeout=60, cwd=env.root)


def ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout


def _register_echo(env, name: str) -> None:
    spec = env.root / f"{name}.yaml"
    spec.write_text(f"metadata:\n  name: {name}\nspec:\n  command: {sys.executable}\n  arguments: [echo.py]\n"
                    f"  working_directory: {env.root}\n")
    ok(flmctl(env, "register", "-f", str(spec)))


def test_nodes_executors_tasks_and_json(env):
    _register_echo(env, "ctl-echo")
    ssn = ok(flmctl(env, "create", "-a", "ctl-echo")).split()[1]
    import flamepy
    conn = flamepy.connect(env.server.endpoint)
    try:
        s = conn.open_session(ssn)
        assert s.invoke(b"a") == b"echo:a"
        # a warm instance stays while the session is open: one executor row, bound to it, on our node
        rows = wait_until(lambda: [line.split() for line in ok(flmctl(env, "list", "-e")).splitlines()[1:]
                                   if ssn in line], timeout=30)
        assert rows[0][1:] == ["Bound", ssn, "ctl-node"]
        execs = json.loads(ok(flmctl(env, "list", "-e", "-o", "json")))
        assert any(e["status"]["session_id"] == ssn and e["spec"]["node"] == "ctl-node" for e in execs)
        nodes = ok(flmctl(env, "list", "-n")).splitlines()
        assert nodes[0].split() == ["NAME", "HOSTNAME", "STATUS", "CPU", "MEMORY", "ARCH", "OS"]
        assert nodes[1].split()[0] == "ctl-node" and nodes[1].split()[2:4] == ["Ready", "16"]
        view = ok(flmctl(env, "view", "-n", "ctl-node"))
        assert "Name:          ctl-node" in view and "Status:        Ready" in view and "CPU:         16" in view
        assert json.loads(ok(flmctl(env, "view", "-n", "ctl-node", "-o", "json")))["status"]["capacity"]["cpu"] == 16
        r = flmctl(env, "view", "-n", "nope")
        assert r.returncode == 1 and "node <nope> not found" in r.stderr

        task = ok(flmctl(env, "view", "-s", ssn, "-t", "1"))
        assert "Task:          1" in task and "State:         Succeed" in task
        assert "Task was completed with state <Succeed> (2)" in task
        assert json.loads(ok(flmctl(env, "view", "-s", ssn, "-t", "1", "-o", "json")))["output"] == "echo:a"
        doc = json.loads(ok(flmctl(env, "view", "-s", ssn, "-o", "json")))
        assert doc["succeed"] == 1 and doc["tasks"][0]["input"] == "a" and doc["state"] == 0
        assert "1 succeed" in ok(flmctl(env, "view", "-s", ssn))
        assert [a["name"] for a in json.loads(ok(flmctl(env, "list", "-a", "-o", "json")))].count("ctl-echo") == 1
        assert any(s["id"] == ssn for s in json.loads(ok(flmctl(env, "list", "-s", "-o", "json"))))
        r = flmctl(env, "view", "-a", "ctl-echo", "-s", ssn)
        assert r.returncode == 1 and "unsupported parameters" in r.stderr
    finally:
        conn.close()
        ok(flmctl(env, "close", "-s", ssn))


def test_completion_scripts(env):
    for shell, marker in (("bash", "complete -o nosort -F"), ("zsh", "#compdef flmctl"), ("fish", "complete")):
        out = ok(flmctl(env, "completion", shell))
        assert "_FLMCTL_COMPLETE" in out and marker in out, shell
    r = flmctl(env, "completion", "powershell")
    assert r.returncode == 2 and "powershell" in r.stderr
    # the bash script really completes: ask it the way bash does
    e = dict(env.env, COMP_WORDS="flmctl li", COMP_CWORD="1", _FLMCTL_COMPLETE="bash_complete")
    assert "plain,list" in subprocess.run([str(BIN / "flmctl")], env=e, capture_output=True, text=True).stdout


def _python_project(path: Path) -> Path:
    (path / "deployed_app").mkdir(parents=True)
    (path / "pyproject.toml").write_text('[project]\nname = "deployed-app"\nversion = "0.1.0"\n')
    (path / "deployed_app" / "__init__.py").write_text("")
    (path / "deployed_app" / "__main__.py").write_text(ECHO)
    (path / ".git").mkdir()
    (path / ".git" / "HEAD").write_text("ref\n")
    (path / "deployed_app" / "__pycache__").mkdir()
    (path / "deployed_app" / "__pycache__" / "x.pyc").write_bytes(b"\0")
    return path


def test_deploy_detects_packages_uploads_and_registers(env):
    proj = _python_project(env.root / "proj")
    plan = json.loads(ok(flmctl(env, "deploy", "--name", "deployed-app", "--application", str(proj), "--dry-run",
                                "-o", "json")))
    assert (plan["input_kind"], plan["installer"], plan["command"], plan["arguments"]) == \
        ("Directory", "python", "python", ["-m", "deployed_app"])
    assert plan["object_key"] == f"deployed-app/pkg/deployed-app-{plan['sha256'][:16]}.tar.gz"
    assert plan["url"] == f"flo://{env.server.endpoint}/{plan['object_key']}" and plan["dry_run"] is True
    again = json.loads(ok(flmctl(env, "deploy", "--name", "deployed-app", "--application", str(proj), "--dry-run",
                                 "-o", "json")))
    assert again["sha256"] == plan["sha256"]  # same tree, same bytes, same key
    import flamepy
    conn = flamepy.connect(env.server.endpoint)
    try:
        assert conn.get_application("deployed-app") is None  # a dry run registers nothing

        summary = ok(flmctl(env, "deploy", "--name", "deployed-app", "--application", str(proj), "--label", "demo",
                            "--env", "A=1", "--delay-release", "90"))
        assert summary.splitlines()[0] == "Application <deployed-app> deployed."
        assert "Installer: python" in summary and "Delay Release: 1m 30s" in summary
        app = conn.get_application("deployed-app")
        assert (app.url, app.installer, app.command, app.arguments) == (plan["url"], "python", "python",
                                                                        ["-m", "deployed_app"])
        assert (app.labels, app.environments, app.delay_release) == (["demo"], {"A": "1"}, 90)
        from flamepy.core import cache
        use(conn)
        dest = env.root / "downloaded.tar.gz"
        cache.download_object(flamepy.ObjectRef(conn.endpoint, plan["object_key"]), str(dest))
        with tarfile.open(dest) as tar:
            names = tar.getnames()
        assert "pyproject.toml" in names and "deployed_app/__main__.py" in names
        assert not any(n.startswith(".git") or "__pycache__" in n for n in names)
        r = flmctl(env, "deploy", "--name", "deployed-app", "--application", str(proj))
        assert r.returncode == 4 and "already exists" in r.stderr
        # and it runs: the executor installs the package from its url and starts `python -m deployed_app`
        ssn = conn.create_session(flamepy.SessionAttributes(application="deployed-app"))
        try:
            assert ssn.invoke(b"deployed") == b"echo:deployed"
        finally:
            ssn.close()
    finally:
        conn.close()


def test_deploy_binary_tarball_and_refusals(env):
    exe = env.root / "svc-bin"
    exe.write_text("#!/bin/sh\necho hi\n")
    exe.chmod(0o755)
    plan = json.loads(ok(flmctl(env, "deploy", "--name", "bin-app", "--application", str(exe), "--dry-run",
                                "-o", "json")))
    assert (plan["input_kind"], plan["installer"], plan["command"]) == ("ExecutableFile", "binary", "svc-bin")
    tgz = env.root / "bundle.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        info = tarfile.TarInfo("bundle/bin/bundle-app")
        data = b"#!/bin/sh\n"
        info.size, info.mode = len(data), 0o755
        tar.addfile(info, io.BytesIO(data))
    y = ok(flmctl(env, "deploy", "--name", "bundle-app", "--application", str(tgz), "--dry-run", "-o", "yaml"))
    assert "command: bundle-app" in y and "installer: binary" in y and "name: bundle-app" in y
    over = json.loads(ok(flmctl(env, "deploy", "--name", "bundle-app", "--application", str(tgz), "--dry-run",
                                "-o", "json", "--installer", "python", "--command", "python", "--argument", "-m",
                                "--argument", "svc")))
    assert (over["installer"], over["command"], over["arguments"]) == ("python", "python", ["-m", "svc"])
    empty = env.root / "empty-dir"
    empty.mkdir()
    r = flmctl(env, "deploy", "--name", "empty-app", "--application", str(empty))
    assert r.returncode == 2 and "--installer" in r.stderr
    evil = env.root / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        info = tarfile.TarInfo("../escape")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    r = flmctl(env, "deploy", "--name", "evil-app", "--application", str(evil))
    assert r.returncode == 2 and "cannot unpack" in r.stderr
    r = flmctl(env, "deploy", "--name", "-bad", "--application", str(exe))
    assert r.returncode == 2 and "invalid application name" in r.stderr
    r = flmctl(env, "deploy", "--name", "x-app", "--application", str(exe), "--env", "NOEQUALS")
    assert r.returncode == 1 and "NAME=VALUE" in r.stderr


def test_migrate_from_flames_sqlite_runs_its_pending_tasks(env):
    db = env.root / "flame.db"
    out = ok(flmctl(env, "migrate", "-u", f"sqlite://{db}", "-s", str(MIGRATIONS), "--dry-run"))
    assert out.startswith("Would import 0 applications") and not db.exists()  # a dry run writes no database
    ok(flmctl(env, "migrate", "-u", f"sqlite://{db}", "-s", str(MIGRATIONS)))  # Flame's schema, as its migrate
    c = sqlite3.connect(db)
    assert c.execute("SELECT COUNT(*) FROM _sqlx_migrations").fetchone()[0] == 12
    c.execute("INSERT INTO applications (name, description, labels, command, arguments, environments, "
              "working_directory, max_instances, delay_release, creation_time, state, shim) VALUES "
              "('mig-echo', 'from flame', '[\"old\"]', ?, '[\"echo.py\"]', '{\"K\": \"V\"}', ?, 10, 5, 1700000000, "
              "0, 0)", (sys.executable, str(env.root)))
    c.execute("INSERT INTO sessions (id, application, common_data, creation_time, state, min_instances, batch_size, "
              "priority, resreq_cpu, resreq_memory, resreq_gpu) VALUES ('mig-echo-aaaaaa', 'mig-echo', X'01', "
              "1700000001, 0, 0, 1, 3, 1, 268435456, 0)")
    c.execute("INSERT INTO sessions (id, application, creation_time, completion_time, state) VALUES "
              "('mig-echo-closed', 'mig-echo', 1700000001, 1700000100, 1)")
    for tid, state in ((1, 2), (2, 3), (3, 0), (4, 1)):
        c.execute("INSERT INTO tasks (id, ssn_id, input, output, creation_time, state) VALUES "
                  "(?, 'mig-echo-aaaaaa', ?, ?, 1700000002, ?)", (tid, b"in%d" % tid, b"done" if state == 2 else None,
                                                                  state))
    c.commit()
    c.close()
    out = ok(flmctl(env, "migrate", "-u", f"sqlite://{db}", "-s", str(MIGRATIONS)))
    assert out.startswith("Imported 1 applications, 2 sessions, 4 tasks, 0 objects; 2 pending tasks queued again")
    import flamepy
    conn = flamepy.connect(env.server.endpoint)
    try:
        app = conn.get_application("mig-echo")
        assert (app.labels, app.environments, app.delay_release, app.max_instances) == (["old"], {"K": "V"}, 5, 10)
        ssn = conn.get_session("mig-echo-aaaaaa")
        assert (ssn.priority, ssn.resreq.memory, ssn.common_data()) == (3, 256 << 20, b"\x01")
        # the executor picks the imported open session up: its pending task and the one that was running run
        assert wait_until(lambda: conn.get_session("mig-echo-aaaaaa").succeed == 3, timeout=60)
        s = conn.get_session("mig-echo-aaaaaa")
        assert (s.pending, s.failed) == (0, 1)
        assert s.get_task("3").output == b"echo:in3" and s.get_task("1").output == b"done"
        assert conn.get_session("mig-echo-closed").state == flamepy.SessionState.CLOSED
        assert "Skipped (already present): application mig-echo" in ok(flmctl(env, "migrate", "-u",
                                                                               f"sqlite://{db}"))
        # export, then import into a fresh server: the records and objects arrive, nothing is overwritten
        use(conn)
        ref = flamepy.put_object("mig-echo/shared", {"x": 1})
        export = env.root / "export.jsonl"
        assert ok(flmctl(env, "migrate", "--export", str(export))).startswith("Exported ")
        other = ServerProc(env.root / "data2").start()
        try:
            home2 = dict(env.env, HOME=str(_home(env.root / "home2", other.endpoint)))
            out = ok(flmctl(env, "migrate", "-u", f"file://{export}", home_env=home2))
            assert out.startswith("Imported ") and " 0 objects" not in out, out
            conn2 = flamepy.connect(other.endpoint)
            try:
                assert conn2.get_session("mig-echo-aaaaaa").get_task("3").output == b"echo:in3"
                use(conn2)
                assert flamepy.get_object(ref) == {"x": 1}
            finally:
                use(conn)
                conn2.close()
            again = ok(flmctl(env, "migrate", "-u", f"flo://{env.server.endpoint}", home_env=home2))
            assert again.startswith("Imported 0 applications, 0 sessions, 0 tasks, 0 objects")
        finally:
            other.stop()
        r = flmctl(env, "migrate", "-u", "mysql://x/y")
        assert r.returncode == 1 and "unsupported --url scheme" in r.stderr
        r = flmctl(env, "migrate", "-u", f"file://{db}")
        assert r.returncode == 1 and "not a flmctl export" in r.stderr
        ok(flmctl(env, "close", "-s", "mig-echo-aaaaaa"))
    finally:
        conn.close()

"""flamepy on a server with users: who may register commands, what service processes get.

A real flo-server with its in-process executor manager (its own internal user),
flmctl as a subprocess with credentials from flame.yaml, and real service processes.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from flo_client import FloClient
from flo_server.auth import hash_password
from tests.flamepy.conftest import ExecutorProc, flame_home
from tests.helpers import ROOT, ServerProc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

BIN = Path(sys.executable).parent
PW = {"admin": "admin-pw", "dev": "dev-pw", "runner": "runner-pw"}
SECRET = "server-side-secret-7f3a"

SERVICE = '''\
import json, os, pathlib
from flamepy import service
ins = service.FlameInstance()
pathlib.Path("started-" + os.environ["FLAME_INSTANCE_ID"]).write_text(json.dumps(dict(os.environ)))
@ins.entrypoint
def echo(req):
    return req.upper()
if __name__ == "__main__":
    ins.run()
'''


@pytest.fixture
def secured(tmp_path: Path):
    h = {u: hash_password(p, log2_n=10) for u, p in PW.items()}
    (tmp_path / "users.toml").write_text(f'''
[users.admin]
password = "{h['admin']}"
allow = ["*"]
[users.dev]                 # may register applications and run them
password = "{h['dev']}"
[[users.dev.allow]]
namespaces = ["flame"]
rights = ["flame:register", "flame:invoke"]
[users.runner]              # may run registered applications, not register any
password = "{h['runner']}"
[[users.runner.allow]]
namespaces = ["flame"]
rights = ["flame:invoke"]
''')
    apps = tmp_path / "apps"
    allowed = tmp_path / "allowed"
    for d in (apps, allowed):
        d.mkdir()
        (d / "svc.py").write_text(SERVICE)
    sp = ServerProc(tmp_path / "data", "--users", str(tmp_path / "users.toml"), "--executor-allow", str(allowed),
                    executor=True, env={"FLO_REQUIREPASS": "", "SERVER_TOKEN": SECRET}).start()
    homes = {user: flame_home(tmp_path / f"home-{user}", f"flo://{sp.endpoint}", username=user, password=PW[user])
             for user in PW}
    homes["anonymous"] = flame_home(tmp_path / "home-anonymous", f"flo://{sp.endpoint}")
    try:
        yield sp, homes, apps, allowed, tmp_path
    finally:
        sp.stop()


def flmctl(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAME_")}
    env["HOME"] = str(home)
    return subprocess.run([str(BIN / "flmctl"), *args], capture_output=True, text=True, timeout=60, env=env, cwd=ROOT)


def app_file(where: Path, name: str, workdir: Path, **env: str) -> Path:
    envs = "".join(f"\n    {k}: {v}" for k, v in env.items())
    path = where / f"{name}.yaml"
    path.write_text(textwrap.dedent(f"""\
        metadata:
          name: {name}
        spec:
          command: {sys.executable}
          arguments: [svc.py]
          working_directory: {workdir}
        """) + (f"  environments:{envs}\n" if env else ""))
    return path


def run_session(sp: ServerProc, user: str, app: str, text: str) -> str:
    """A client process with the user's credentials from FLAME_* (what a user's program does)."""
    code = textwrap.dedent(f"""\
        from flamepy.service import Session
        with Session({app!r}) as s:
            print(s.invoke({text!r}))
        """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAME_")}
    env.update(FLAME_ENDPOINT=sp.endpoint, FLAME_USERNAME=user, FLAME_PASSWORD=PW[user], HOME="/nonexistent")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()


async def app_records(sp: ServerProc) -> list:
    """The application records besides the built-in ones (flmrun, ... registered by the executor)."""
    from flamepy.apps import BUILTIN_APPLICATIONS
    async with FloClient(sp.endpoint, username="admin", password=PW["admin"], namespace="flame") as c:
        return [n for n in (await c.kv.scan("app/")).names if n[len("app/"):] not in BUILTIN_APPLICATIONS]


def test_register_needs_flame_register(secured):
    sp, homes, apps, allowed, tmp = secured
    spec = app_file(tmp, "sneaky", allowed)
    res = flmctl(homes["runner"], "register", "--file", str(spec))
    assert res.returncode != 0
    assert "register flamepy applications" in res.stderr + res.stdout
    assert asyncio.run(app_records(sp)) == []
    assert not list(allowed.glob("started-*"))  # and no process ran
    # without credentials at all: refused before anything
    anon = flmctl(homes["anonymous"], "register", "--file", str(spec))
    assert anon.returncode != 0 and "authentication required" in anon.stderr + anon.stdout
    assert asyncio.run(app_records(sp)) == []


def test_registered_app_runs_with_the_executors_credentials_only(secured):
    sp, homes, apps, allowed, tmp = secured
    res = flmctl(homes["dev"], "register", "--file", str(app_file(tmp, "echo", allowed, GREETING="declared")))
    assert res.returncode == 0, res.stderr
    assert asyncio.run(app_records(sp)) == ["app/echo"]
    assert run_session(sp, "runner", "echo", "hello") == "HELLO"  # flame:invoke is enough to run it
    started = list(allowed.glob("started-*"))
    assert started
    env = __import__("json").loads(started[0].read_text())
    assert env["GREETING"] == "declared"  # what the application declares ...
    assert SECRET not in repr(env) and "SERVER_TOKEN" not in env  # ... and none of the server's environment
    assert env["FLAME_USERNAME"] == "flo:executor"  # the manager's internal user, not an admin
    assert SECRET not in sp.log() and PW["dev"] not in sp.log()


def test_working_directory_outside_executor_allow_fails_the_bind(secured):
    sp, homes, apps, allowed, tmp = secured
    res = flmctl(homes["dev"], "register", "--file", str(app_file(tmp, "outside", apps)))
    assert res.returncode == 0, res.stderr
    code = textwrap.dedent("""\
        from flamepy.service import Session
        from flamepy import FlameError
        with Session("outside") as s:
            try:
                s.invoke("x")
            except FlameError as e:
                print("FAILED", e)
        """)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLAME_")}
    env.update(FLAME_ENDPOINT=sp.endpoint, FLAME_USERNAME="dev", FLAME_PASSWORD=PW["dev"], HOME="/nonexistent")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90, env=env)
    assert "FAILED" in out.stdout and "outside the executor's allowed directories" in out.stdout, out.stdout + out.stderr
    assert not list(apps.glob("started-*"))


def test_flamepy_over_tls_with_a_password(tmp_path: Path):
    """TLS-only port: the embedded executor and its service processes connect over TLS too."""
    from flo_server.testing import make_test_ca

    ca = make_test_ca(tmp_path / "ca")
    apps = tmp_path / "apps"
    apps.mkdir()
    (apps / "svc.py").write_text(SERVICE)
    sp = ServerProc(tmp_path / "data", "--tls-cert", ca["cert"], "--tls-key", ca["key"], executor=True,
                    env={"FLO_REQUIREPASS": "tls-pw"}).start()
    try:
        assert sp.tls_port == sp.port
        home = flame_home(tmp_path / "home", f"flos://{sp.endpoint}", password="tls-pw", tls={"ca_file": ca["ca"]})
        res = flmctl(home, "register", "--file", str(app_file(tmp_path, "tls-echo", apps)))
        assert res.returncode == 0, res.stderr
        code = "from flamepy.service import Session\nwith Session('tls-echo') as s:\n    print(s.invoke('over tls'))\n"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("FLAME_", "FLO_"))}
        env.update(HOME=str(home))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
        assert out.stdout.strip() == "OVER TLS", out.stderr
        started = list(apps.glob("started-*"))
        env_seen = __import__("json").loads(started[0].read_text())
        assert env_seen["FLAME_TLS"] == "1" and "tls-pw" not in repr(env_seen)
    finally:
        sp.stop()


def test_standalone_executor_with_its_own_credentials(tmp_path: Path):
    """flame-executor on another host: credentials from FLAME_*; a wrong password stops it with a clear error."""
    h = {u: hash_password(p, log2_n=10) for u, p in PW.items()}
    (tmp_path / "users.toml").write_text(f'''
[users.dev]
password = "{h['dev']}"
[[users.dev.allow]]
namespaces = ["flame"]
rights = ["flame:register", "flame:invoke"]
[users.runner]
password = "{h['runner']}"
[[users.runner.allow]]
namespaces = ["flame"]
rights = ["read", "flame:invoke"]
''')
    apps = tmp_path / "apps"
    apps.mkdir()
    (apps / "svc.py").write_text(SERVICE)
    sp = ServerProc(tmp_path / "data", "--users", str(tmp_path / "users.toml")).start()
    try:
        bad = subprocess.run([str(BIN / "flame-executor"), "--server", sp.endpoint], capture_output=True, text=True,
                             timeout=60, env=dict(os.environ, FLAME_USERNAME="runner", FLAME_PASSWORD="wrong"))
        assert bad.returncode != 0 and "refused the credentials" in bad.stderr + bad.stdout
        ex = ExecutorProc(sp.endpoint, tmp_path / "work", "--startup-timeout", "10",
                          env={"FLAME_USERNAME": "runner", "FLAME_PASSWORD": PW["runner"]})
        try:
            from flamepy.core.client import Connection

            conn = Connection(sp.endpoint, client_options={"username": "dev", "password": PW["dev"]})
            conn.register_application("remote-echo", {"command": sys.executable, "arguments": ["svc.py"],
                                                      "working_directory": str(apps)})
            conn.close()
            assert run_session(sp, "runner", "remote-echo", "far") == "FAR"
            started = list(apps.glob("started-*"))
            assert __import__("json").loads(started[0].read_text())["FLAME_USERNAME"] == "runner"
        finally:
            ex.stop()
    finally:
        sp.stop()

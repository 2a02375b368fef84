"""flamepy fixtures: a real flo-server (the ``server`` fixture) plus a standalone ``flame-executor``.

``flame`` yields a namespace with ``endpoint``, ``home`` (a HOME with
``.flame/flame.yaml`` for flmctl), ``env`` (environment for client
subprocesses) and ``register(name, script, **spec)`` writing a service and
registering it with the executor's Python.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from collections import deque
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _reset_default_connection() -> None:
    from flamepy.core import client
    with client._default_lock:
        old, client._default = client._default, None
    if old is not None and not old._closed:
        old._closed = True
        try:
            client._runtime.submit(old.store.close()).result(2)
        except Exception:
            pass


class ExecutorProc:
    def __init__(self, endpoint: str, work_dir: Path, *args: str, env: dict | None = None) -> None:
        self.output: deque[str] = deque(maxlen=300)
        cmd = [str(BIN / "flame-executor"), "--server", endpoint, "--work-dir", str(work_dir), *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})))
        self.ready = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()
        if not self.ready.wait(20):
            self.stop()
            raise RuntimeError("flame-executor did not start:\n" + "\n".join(self.output))

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.output.append(line.rstrip())
            if "executor manager" in line and "serving" in line:
                self.ready.set()
        self.ready.set()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def flame_home(home: Path, endpoint: str, **cluster) -> Path:
    """A HOME whose ``~/.flame/flame.yaml`` points at ``endpoint``, with more ``cluster`` fields
    (username, password, tls) when given."""
    import yaml

    (home / ".flame").mkdir(parents=True, exist_ok=True)
    doc = {"current-context": "flame", "contexts": [{"name": "flame", "cluster": {"endpoint": endpoint, **cluster}}]}
    (home / ".flame" / "flame.yaml").write_text(yaml.safe_dump(doc))
    return home


@pytest.fixture
def flame(server: str, tmp_path: Path, monkeypatch):
    home = flame_home(tmp_path / "home", f"flo://{server}")
    monkeypatch.setenv("FLAME_ENDPOINT", server)
    _reset_default_connection()
    executor = ExecutorProc(server, tmp_path / "executor", "--cpu", "8", "--memory", "64g", "--node", "test-node",
                            "--startup-timeout", "10")
    apps = tmp_path / "apps"
    apps.mkdir()

    def register(name: str, source: str, module: str = "svc", **spec) -> Path:
        import flamepy
        (apps / f"{module}.py").write_text(textwrap.dedent(source))
        attrs = {"command": sys.executable, "arguments": [f"{module}.py"], "working_directory": str(apps)}
        attrs.update(spec)
        flamepy.register_application(name, attrs)
        return apps

    env = dict(os.environ, HOME=str(home), FLAME_ENDPOINT=server, PYTHONPATH=str(apps))
    ns = SimpleNamespace(endpoint=server, home=home, env=env, apps=apps, register=register, executor=executor)
    try:
        yield ns
    finally:
        executor.stop()
        _reset_default_connection()




@pytest.fixture(scope="session")
def flame_helpers():
    """The plain helpers above, for other modules' own fixtures: ``from conftest import`` may find another
    directory's conftest (each directory without ``__init__.py`` imports its own as module "conftest")."""
    return SimpleNamespace(flame_home=flame_home, reset_default_connection=_reset_default_connection)


@pytest.fixture(scope="module")
def flame_cluster(tmp_path_factory):
    """One flo-server with its embedded executor for a whole module, this process pointed at it.

    Its executor's work dir (installed packages, instance dirs) is under the module's tmp dir
    (``work_dir``), so nothing is shared with other runs. Yields ``server`` (the ServerProc: its
    ``log()`` has the executor's lines), ``endpoint``, ``home`` (a HOME with flame.yaml, also set
    as this process's HOME for the module) and ``env`` (for client subprocesses).
    """
    from tests.helpers import ServerProc

    base = tmp_path_factory.mktemp("cluster")
    (base / "tmp").mkdir()
    sp = ServerProc(base / "data", executor=True, env={"TMPDIR": str(base / "tmp")}).start()
    from tests.helpers import wait_until
    wait_until(lambda: "executor manager" in sp.log(), timeout=30)  # it registers flmrun & co. first
    home = flame_home(base / "home", f"flo://{sp.endpoint}")
    saved = {k: os.environ.get(k) for k in ("FLAME_ENDPOINT", "HOME")}
    os.environ.update(FLAME_ENDPOINT=sp.endpoint, HOME=str(home))
    _reset_default_connection()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    try:
        yield SimpleNamespace(server=sp, endpoint=sp.endpoint, home=home, env=env,
                              work_dir=base / "tmp" / "flame-executor")
    finally:
        _reset_default_connection()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        sp.stop()

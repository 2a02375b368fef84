"""Package install in the executor manager (``url`` + ``installer: python``) and Runner packaging.

A tiny local project depending on ``six`` (a small pure-Python PyPI package the executor's
Python does not have) is installed once for the module (``six_runner``) through a real
flo-server's embedded executor: pip from PyPI into the executor's work dir, its service
processes importing both. Also: a failing install, a Python version that does not match,
``file://`` package storage, the install timeout, archive safety and reproducible packages.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import io
import json
import os
import sys
import tarfile
import textwrap
from pathlib import Path

import pytest
import yaml

import flamepy
from flamepy.executor.installer import MANIFEST, InstallError, PackageInstaller, _unpack
from flamepy.runner import Runner
from flamepy.runner.package import build_package

pytestmark = pytest.mark.timeout(240)

CALL_TIMEOUT_S = 180  # the first call of a session waits for pip


def _result(fut, timeout: float = CALL_TIMEOUT_S):
    concurrent.futures.wait([fut._future], timeout=timeout)
    assert fut.done(), f"call not finished within {timeout}s"
    return fut.get()


@pytest.fixture(scope="module")
def six_project(tmp_path_factory):
    d = tmp_path_factory.mktemp("six-project")
    (d / "pyproject.toml").write_text(textwrap.dedent('''\
        [build-system]
        requires = ["setuptools>=61.0"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "tinyproj"
        version = "0.1.0"
        dependencies = ["six"]

        [tool.setuptools]
        py-modules = ["tinyproj_mod"]
        '''))
    (d / "tinyproj_mod.py").write_text(textwrap.dedent('''\
        import os


        class Probe:
            def where(self):
                import six  # installed from PyPI by the executor, not present in its own Python
                return {"six": six.__file__, "pythonpath": os.environ.get("PYTHONPATH", ""),
                        "package_dir": os.environ.get("FLAME_PACKAGE_DIR"), "pid": os.getpid()}
        '''))
    (d / ".venv").mkdir()                          # excluded from the package
    (d / ".venv" / "huge.bin").write_bytes(b"x" * 1024)
    return d


@pytest.fixture(scope="module")
def six_runner(flame_cluster, six_project):
    before = os.getcwd()
    os.chdir(six_project)
    sys.path.insert(0, str(six_project))   # the client imports tinyproj_mod too (pickled by reference)
    runner = Runner("pi-six")
    try:
        yield runner
    finally:
        runner.close()
        os.chdir(before)
        sys.path.remove(str(six_project))
        sys.modules.pop("tinyproj_mod", None)


def _installs(cluster, app: str) -> int:
    return cluster.server.log().count(f"installing the package of {app} ")


def test_a_pypi_dependency_is_installed_once_for_concurrent_binds(flame_cluster, six_runner):
    import tinyproj_mod

    if importlib.util.find_spec("six") is None:
        with pytest.raises(ImportError):
            import six  # noqa: F401 - the point: only the installed package has it
    probe = six_runner.service(tinyproj_mod.Probe, autoscale=False, warmup=2)   # two instances bind at once
    results = [_result(probe.where())] + six_runner.get([probe.where() for _ in range(5)])
    six_path = Path(results[0]["six"])
    assert six_path.parent.name == "deps" and six_path.parent.parent.parent.name == "pi-six"
    assert str(six_path).startswith(str(flame_cluster.work_dir))
    deps, src = results[0]["pythonpath"].split(os.pathsep)[:2]
    assert (deps, src) == (str(six_path.parent), results[0]["package_dir"])
    unpacked = set(os.listdir(src))
    assert {".flamepy-package.json", "pyproject.toml", "tinyproj_mod.py"} <= unpacked and ".venv" not in unpacked
    launched = flame_cluster.server.log().count(f"launched for session {probe.session_id}")
    assert launched == 2
    assert _installs(flame_cluster, "pi-six") == 1
    probe.close()  # its two warm instances would keep this 2-core box's slots


def test_the_install_is_reused_by_later_sessions(flame_cluster, six_runner):
    import tinyproj_mod

    first = six_runner.service(tinyproj_mod.Probe)   # installed by now (here or by the test above)
    assert _result(first.where())["six"].endswith("six.py")
    first.close()
    assert _installs(flame_cluster, "pi-six") == 1
    again = six_runner.service(tinyproj_mod.Probe)   # a new session of the same package
    assert _result(again.where())["six"].endswith("six.py")
    assert _installs(flame_cluster, "pi-six") == 1


def test_a_failing_install_fails_the_bind_with_pips_words(flame_cluster, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "main.py").write_text("print('hi')\n")
    with Runner("pi-bad", dependencies=["flamepy-test-no-such-distribution"]) as runner:
        svc = runner.service(len)
        with pytest.raises(flamepy.FlameError) as err:
            _result(svc([1, 2]))
        assert "could start" in err.value.message
        assert "No matching distribution found for flamepy-test-no-such-distribution" in err.value.message
        ssn = flamepy.get_session(svc.session_id)
        codes = [e.code for e in ssn.events]
        assert 1001 in codes and 1002 in codes
        bind = next(e.message for e in ssn.events if e.code == 1001)
        assert "(10) package install failed: pip install failed with exit code 1" in bind
        assert [t.state for t in ssn.list_tasks()] == [flamepy.TaskState.FAILED]
    assert _installs(flame_cluster, "pi-bad") == 1   # the failure is remembered: pip ran once for 5 binds


def test_the_python_version_must_match_the_executor(flame_cluster, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with Runner("pi-pyver", python_version="2.7") as runner:
        with pytest.raises(flamepy.FlameError) as err:
            _result(runner.service(len)([1]))
        assert "Python 2.7 requested (FLAME_PYTHON_VERSION) but this executor runs Python 3" in err.value.message
    mine = f"{sys.version_info.major}.{sys.version_info.minor}"
    with Runner("pi-pyver-ok", python_version=mine) as runner:
        assert _result(runner.service(len)([1, 2])) == 2


def test_file_storage_shares_the_package_through_a_directory(flame_cluster, tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    shared.mkdir()
    home = tmp_path / "home"
    (home / ".flame").mkdir(parents=True)
    (home / ".flame" / "flame.yaml").write_text(yaml.safe_dump({"current-context": "c", "contexts": [
        {"name": "c", "cluster": {"endpoint": f"flo://{flame_cluster.endpoint}"},
         "package": {"storage": f"file://{shared}", "excludes": ["data/"]}}]}))
    monkeypatch.setenv("HOME", str(home))
    project = tmp_path / "project"
    (project / "data").mkdir(parents=True)
    (project / "data" / "big.csv").write_text("1,2\n")
    (project / "helper.py").write_text("VALUE = 7\n")
    monkeypatch.chdir(project)
    with Runner("pi-file") as runner:
        url = flamepy.get_application("pi-file").url
        assert url.startswith(f"file://{shared}/pi-file-") and url.endswith(".tar.gz")
        with tarfile.open(url[len("file://"):]) as tar:
            assert "data/big.csv" not in tar.getnames() and "helper.py" in tar.getnames()

        def value():
            import helper  # the packaged project's module, on the instance's PYTHONPATH
            return helper.VALUE
        assert _result(runner.service(value)()) == 7
    assert os.listdir(shared) == []                   # close removed the package it copied there


def test_an_install_that_hangs_is_bounded(tmp_path):
    installer = PackageInstaller(store=None, work_dir=str(tmp_path), timeout=0.5)
    with pytest.raises(InstallError) as err:
        asyncio.run(installer._run([sys.executable, "-c", "print('resolving'); import time; time.sleep(60)"],
                                   cwd=str(tmp_path), log_path=str(tmp_path / "install.log")))
    assert "did not finish within 0.5s" in str(err.value) and "resolving" in str(err.value)


def _tar(members) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes = b"x") -> tuple:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _link(name: str, target: str) -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.SYMTYPE, target
    return info, None


@pytest.mark.parametrize("members", [[_file("../escape.py")], [_file("/etc/evil")], [_link("out", "/etc/passwd")],
                                     [_link("up", "../../x")]], ids=["dotdot", "absolute", "abs-link", "rel-link"])
def test_archives_that_reach_outside_are_refused(tmp_path, members):
    with pytest.raises(InstallError):
        _unpack(_tar(members), str(tmp_path / "src"))
    assert not (tmp_path / "escape.py").exists()
    with pytest.raises(InstallError, match="not a readable tar.gz"):
        _unpack(b"definitely not a tarball", str(tmp_path / "src2"))


def test_packages_are_reproducible_and_exclude_what_they_should(tmp_path):
    project = tmp_path / "p"
    for rel in ("app.py", "pkg/mod.py", "pkg/__pycache__/mod.cpython-311.pyc", ".git/HEAD", ".venv/x", "dist/old.tgz",
                "notes.log", "data/raw.bin"):
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_text(rel)
    one = build_package(str(project), "demo", dependencies=["six", "tomli>=2"], excludes=["*.log", "data/"])
    os.utime(project / "app.py", (1, 1))            # a touched file packs the same
    two = build_package(str(project), "demo", dependencies=["tomli>=2", "six"], excludes=["*.log", "data/"])
    assert one.digest == two.digest and one.filename == f"demo-{one.digest[:16]}.tar.gz"
    with tarfile.open(one.path) as tar:
        names = set(tar.getnames())
        manifest = json.load(tar.extractfile(MANIFEST))
        pyproject = tar.extractfile("pyproject.toml").read().decode()
    assert {"app.py", "pkg/mod.py", "pyproject.toml", MANIFEST} <= names
    assert not {n for n in names if n.startswith((".git", ".venv", "dist", "data")) or "__pycache__" in n
                or n.endswith(".log")}
    assert manifest == {"name": "demo", "dependencies": ["six", "tomli>=2"], "install_project": False}
    assert '"six",' in pyproject and 'name = "demo"' in pyproject

    (project / "setup.py").write_text("from setuptools import setup; setup()\n")
    own = build_package(str(project), "demo")
    with tarfile.open(own.path) as tar:
        assert "pyproject.toml" not in tar.getnames()
        assert json.load(tar.extractfile(MANIFEST))["install_project"] is True
    with pytest.raises(flamepy.FlameError):
        build_package(str(project), "demo", dependencies=["-e ."])


def test_prepare_installs_once_for_concurrent_callers_through_uv(tmp_path, monkeypatch):
    """The installer alone (file:// package, no server): two concurrent prepares share one install,
    a third is served from disk, and the uv command line is what a real uv takes (a shim that
    records it and hands over to pip)."""
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "uv").write_text('#!/bin/sh\necho "$@" >> "$UV_ARGS_LOG"\nshift 2\n[ "$1" = "--python" ] && PY=$2 && '
                             'shift 2\nexec "$PY" -m pip install --no-input "$@"\n')
    (shim / "uv").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("UV_ARGS_LOG", str(tmp_path / "uv-args"))
    project = tmp_path / "proj"
    project.mkdir()
    (project / "mod.py").write_text("import six\n")
    pkg = build_package(str(project), "uvapp", dependencies=["six"])
    app = {"name": "uvapp", "installer": "python", "url": f"file://{pkg.path}"}
    installer = PackageInstaller(store=None, work_dir=str(tmp_path / "work"), timeout=120)
    assert installer.tool == "uv"

    async def twice():
        return await asyncio.gather(installer.prepare(app), installer.prepare(app))

    first, second = asyncio.run(twice())
    assert first == second and installer.installs == 1
    assert asyncio.run(installer.prepare(app)) == first and installer.installs == 1
    deps, src = first["PYTHONPATH"].split(os.pathsep)
    assert os.path.exists(os.path.join(deps, "six.py")) and os.path.exists(os.path.join(src, "mod.py"))
    assert first["FLAME_PACKAGE_DIR"] == src and src.startswith(str(tmp_path / "work" / "apps" / "uvapp"))
    args = (tmp_path / "uv-args").read_text().split()
    assert args[:5] == ["pip", "install", "--python", sys.executable, "--target"] and args[-1] == "six"

    fresh = PackageInstaller(store=None, work_dir=str(tmp_path / "work"), timeout=120)  # a restarted manager
    assert asyncio.run(fresh.prepare(app)) == first and fresh.installs == 0

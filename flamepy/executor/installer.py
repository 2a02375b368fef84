"""Package install: an application's ``url`` + ``installer`` made ready before its processes start.

``installer: python`` (Flame's RFE420): the package (a tar.gz in the object
cache, ``flo://HOST:PORT/<app>/pkg/<file>``, or a ``file://`` path) is
fetched, unpacked into ``<work-dir>/apps/<app>/<digest>/src`` and installed
with pip (or uv when it is on PATH) into ``.../deps`` — the project and its
dependencies, from PyPI. Its service processes get
``PYTHONPATH=deps:src`` (and ``deps/bin`` on PATH, ``FLAME_PACKAGE_DIR=src``).
``installer: binary`` unpacks only and puts ``src/bin`` on PATH.

One install per version: the key is the application name plus the sha256 of
the package bytes, so a changed package under the same URL installs anew and
an unchanged one is reused across sessions and manager restarts (a
``.installed`` marker, written last, after an atomic rename into place).
Binds of the same version while it installs wait for that one install. A
failure is a bind failure whose message ends with pip's last output lines; it
is remembered for ``FAILED_INSTALL_TTL_S`` so the session's next binds fail
at once instead of running pip again. Every install is bounded in time
(``timeout``), in package size and in what the archive may unpack.

>>> inst = PackageInstaller(store, "/var/lib/flame-executor")     # doctest: +SKIP
>>> await inst.prepare(app_record)                                 # doctest: +SKIP
{'PYTHONPATH': '/var/.../deps:/var/.../src', 'FLAME_PACKAGE_DIR': '/var/.../src'}
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import json
import logging
import os
import re
import shutil
import signal
import sys
import tarfile
import time
import uuid
from typing import Optional
from urllib.parse import unquote, urlparse

from ..core import records as R

log = logging.getLogger("flamepy.executor")

__all__ = ["PackageInstaller", "InstallError", "MANIFEST", "MAX_PACKAGE_BYTES", "package_url_key",
           "check_requirement"]

INSTALLERS = ("python", "binary")
MANIFEST = ".flamepy-package.json"      # written by flamepy.runner: {"dependencies": [...], "install_project": bool}
MAX_PACKAGE_BYTES = 512 << 20           # a package is read whole into the executor's memory
MAX_UNPACKED_BYTES = 4 << 30
MAX_MEMBERS = 100_000
FAILED_INSTALL_TTL_S = 60.0
MEMO_ENTRIES = 4096                     # url fingerprints and failures remembered, at most
OUTPUT_TAIL_LINES = 12
_REQUIREMENT = re.compile(r"^[A-Za-z0-9][^\n\r\x00]{0,499}$")
_PIP_ENV = ("PIP_", "UV_", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
            "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "PYTHONHTTPSVERIFY")


class InstallError(Exception):
    """An application's package could not be made ready (the message says why)."""


def check_requirement(req: str) -> str:
    """A dependency the installer accepts: a PEP 508 requirement, never a pip option.

    >>> check_requirement("six>=1.16")
    'six>=1.16'
    """
    if not isinstance(req, str) or not _REQUIREMENT.match(req.strip()):
        raise ValueError(f"invalid dependency {req!r}: expected a requirement such as 'six' or 'numpy>=1.26'")
    return req.strip()


def package_url_key(url: str) -> tuple[str, str]:
    """(scheme, location) of a package URL: ('file', path) or ('flo', object key).

    >>> package_url_key("flo://127.0.0.1:9000/app/pkg/app-0123.tar.gz")
    ('flo', 'app/pkg/app-0123.tar.gz')
    """
    parsed = urlparse(str(url))
    if parsed.scheme == "file":
        path = unquote(parsed.path)
        if not path.startswith("/"):
            raise InstallError(f"package url <{url}>: a file:// url needs an absolute path")
        return "file", path
    if parsed.scheme in ("flo", "flos", "grpc", "grpcs"):  # grpc(s):// as Flame's object-cache urls are written
        key = unquote(parsed.path).lstrip("/")
        if key.count("/") != 2:
            raise InstallError(f"package url <{url}>: expected <scheme>://HOST:PORT/<app>/<session>/<object>")
        return "flo", key
    raise InstallError(f"package url <{url}>: unsupported scheme <{parsed.scheme}> (file:// or the object cache, "
                       "flo://HOST:PORT/<key>)")


class PackageInstaller:
    """Installs application packages under ``<work_dir>/apps``; one instance per executor manager."""

    def __init__(self, store, work_dir: str, timeout: float = 600.0, python: Optional[str] = None,
                 tool: Optional[str] = None) -> None:
        self.store = store
        self.root = os.path.join(work_dir, "apps")
        self.timeout = float(timeout)
        self.python = python or sys.executable
        # "pip" or "uv"; default: uv when it is on PATH (much faster), else this Python's pip
        self.tool = tool or ("uv" if shutil.which("uv") else "pip")
        self.installs = 0                                  # installs actually run (not reused)
        self._running: dict[str, asyncio.Future] = {}      # key -> the install in progress
        self._failed: dict[str, tuple[float, str]] = {}    # key -> (when, why)
        self._digests: dict[tuple, str] = {}               # fingerprint of a url's content -> sha256

    # -- the one entry point ---------------------------------------------------------------------------------

    async def prepare(self, app: dict) -> dict:
        """What the app's processes need in their environment once its package is installed ({} if none)."""
        installer = app.get("installer")
        if not installer:
            return {}
        kind = str(installer).lower()
        if kind not in INSTALLERS:
            raise InstallError(f"unknown installer <{installer}>, expected one of: {', '.join(INSTALLERS)}")
        if kind == "python":
            self._check_python_version(app)
        url = app.get("url")
        if not url:
            return {}  # installer python without a package: just this executor's Python
        scheme, where = package_url_key(url)
        fingerprint = await self._fingerprint(scheme, where)
        digest = self._digests.get(fingerprint)
        data = None
        if digest is None or not os.path.exists(self._marker(app["name"], digest)):
            data = await self._fetch(scheme, where)
            digest = hashlib.sha256(data).hexdigest()
            if len(self._digests) >= MEMO_ENTRIES:  # bounded: forgetting costs one fetch, nothing else
                self._digests.clear()
            self._digests[fingerprint] = digest
        key = f"{app['name']}/{digest[:16]}"
        failed = self._failed.get(key)
        if failed and time.monotonic() - failed[0] < FAILED_INSTALL_TTL_S:
            raise InstallError(failed[1])
        target = self._dir(app["name"], digest)
        if not os.path.exists(self._marker(app["name"], digest)):
            running = self._running.get(key)
            if running is None:
                if data is None:
                    data = await self._fetch(scheme, where)
                running = asyncio.ensure_future(self._install(app, kind, data, target))
                self._running[key] = running
                running.add_done_callback(lambda _f, k=key: self._running.pop(k, None))
            try:
                await asyncio.shield(running)  # a bind that gives up does not cancel the others' install
            except InstallError as exc:
                if len(self._failed) >= MEMO_ENTRIES:
                    self._failed.clear()
                self._failed[key] = (time.monotonic(), str(exc))
                raise
        return self._environment(app, kind, target)

    def cancel_all(self) -> None:
        """Stop every install in progress (the manager is stopping): their pip processes are killed."""
        for fut in list(self._running.values()):
            fut.cancel()

    # -- where things are ------------------------------------------------------------------------------------

    def _dir(self, app_name: str, digest: str) -> str:
        return os.path.join(self.root, app_name, digest[:16])

    def _marker(self, app_name: str, digest: str) -> str:
        return os.path.join(self._dir(app_name, digest), ".installed")

    def _environment(self, app: dict, kind: str, target: str) -> dict:
        src, deps = os.path.join(target, "src"), os.path.join(target, "deps")
        env = {"FLAME_PACKAGE_DIR": src}
        paths = []
        if kind == "python":
            user = (app.get("environments") or {}).get("PYTHONPATH")
            env["PYTHONPATH"] = os.pathsep.join([deps, src] + ([os.path.expandvars(user)] if user else []))
            paths.append(os.path.join(deps, "bin"))
        else:
            paths.append(os.path.join(src, "bin"))
        paths = [p for p in paths if os.path.isdir(p)]
        if paths:
            env["PATH"] = os.pathsep.join(paths)  # prepended to the process's PATH by the manager
        return env

    def _check_python_version(self, app: dict) -> None:
        wanted = str((app.get("environments") or {}).get("FLAME_PYTHON_VERSION") or "").strip()
        if not wanted:
            return
        have = ".".join(str(p) for p in sys.version_info[:3])
        if not re.fullmatch(r"\d+(\.\d+){0,2}", wanted) or not (have == wanted or have.startswith(wanted + ".")):
            raise InstallError(f"Python {wanted} requested (FLAME_PYTHON_VERSION) but this executor runs Python "
                               f"{have} ({self.python}); start a flame-executor with that Python")

    # -- fetching --------------------------------------------------------------------------------------------

    async def _fingerprint(self, scheme: str, where: str) -> tuple:
        if scheme == "file":
            try:
                st = os.stat(where)
            except OSError as exc:
                raise InstallError(f"package {where} not readable: {exc.strerror}") from None
            return ("file", where, st.st_size, st.st_mtime_ns)
        from ..core import cache
        head, _, _ = await cache._read_head(self.store, where)
        if head is None:
            raise InstallError(f"package object <{where}> not found in the object cache")
        return ("flo", where, head["g"], head["v"])

    async def _fetch(self, scheme: str, where: str) -> bytes:
        if scheme == "file":
            size = os.path.getsize(where)
            if size > MAX_PACKAGE_BYTES:
                raise InstallError(f"package {where} is {size} bytes, more than {MAX_PACKAGE_BYTES}")
            return await asyncio.to_thread(_read_file, where)
        from ..core import cache
        head, _, _ = await cache._read_head(self.store, where)
        if head is None:
            raise InstallError(f"package object <{where}> not found in the object cache")
        if head.get("f") != cache._RAW or head["v"] != head["bv"]:
            # never unpickle in the executor: a package is a file's bytes (upload_object)
            raise InstallError(f"package object <{where}> is not an uploaded file (store it with upload_object)")
        got = await self.store.get(cache._slot(where, head["g"], head["bv"]))
        base = R.unpack(got[0]) if got else None
        size = base[3] if base and base[0] == "c" else len(base[1]) if base else 0
        if size > MAX_PACKAGE_BYTES:
            raise InstallError(f"package object <{where}> is {size} bytes, more than {MAX_PACKAGE_BYTES}")
        data = await self.store.read_blob(base) if base else None
        if data is None:
            raise InstallError(f"package object <{where}> changed while it was read; try again")
        return bytes(data)

    # -- installing ------------------------------------------------------------------------------------------

    async def _install(self, app: dict, kind: str, data: bytes, target: str) -> None:
        started = time.monotonic()
        staging = f"{target}.tmp-{uuid.uuid4().hex[:8]}"
        src, deps = os.path.join(staging, "src"), os.path.join(staging, "deps")
        self.installs += 1
        log.info("installing the package of %s (%d bytes, %s installer) into %s", app["name"], len(data), kind,
                 target)
        try:
            os.makedirs(staging, exist_ok=True)
            await asyncio.to_thread(_unpack, data, src)
            if kind == "python":
                command = self._pip_command(src, deps)
                if command is not None:
                    await self._run(command, cwd=src, log_path=os.path.join(staging, "install.log"))
                    _drop_shadowing_flamepy(deps)
            with open(os.path.join(staging, ".installed"), "w") as f:
                json.dump({"app": app["name"], "url": app.get("url"), "installer": kind, "time": time.time(),
                           "seconds": round(time.monotonic() - started, 3)}, f)
            try:
                os.rename(staging, target)
            except OSError:  # another manager sharing this work dir was first: keep theirs
                if not os.path.exists(os.path.join(target, ".installed")):
                    raise
                shutil.rmtree(staging, ignore_errors=True)
        except InstallError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        except Exception as exc:
            shutil.rmtree(staging, ignore_errors=True)
            raise InstallError(f"install of {app['name']} failed: {exc}") from None
        except asyncio.CancelledError:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log.info("installed the package of %s in %.1fs", app["name"], time.monotonic() - started)

    def _pip_command(self, src: str, deps: str) -> Optional[list]:
        """The install command for an unpacked package, or None when there is nothing to install."""
        manifest = _read_manifest(src)
        has_metadata = any(os.path.exists(os.path.join(src, f)) for f in ("pyproject.toml", "setup.py", "setup.cfg"))
        install_project = has_metadata and bool(manifest.get("install_project", True))
        requirements = [check_requirement(r) for r in manifest.get("dependencies") or []]
        if not install_project and not requirements:
            return None
        if self.tool == "uv":
            command = ["uv", "pip", "install", "--python", self.python, "--target", deps]
        else:
            command = [self.python, "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
                       "--no-warn-script-location", "--target", deps]
        return command + (["."] if install_project else []) + requirements

    def _what(self) -> str:
        return "uv pip install" if self.tool == "uv" else "pip install"

    async def _run(self, command: list, cwd: str, log_path: str) -> None:
        from .manager import BASE_ENV, _set_pdeathsig
        env = {k: v for k, v in os.environ.items() if k in BASE_ENV or k.startswith(_PIP_ENV) or k.startswith("LC_")}
        env["PYTHONUNBUFFERED"] = "1"
        with open(log_path, "wb") as out:
            proc = await asyncio.create_subprocess_exec(
                *command, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
                start_new_session=True, preexec_fn=_set_pdeathsig)
            try:
                rc = await asyncio.wait_for(proc.wait(), self.timeout)
            except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(proc.wait(), 5)
                if isinstance(exc, asyncio.CancelledError):
                    raise
                raise InstallError(f"{self._what()} did not finish within {self.timeout:g}s"
                                   f"{_tail(log_path)}") from None
        if rc != 0:
            raise InstallError(f"{self._what()} failed with exit code {rc}{_tail(log_path)}")


def _read_file(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _read_manifest(src: str) -> dict:
    try:
        with open(os.path.join(src, MANIFEST)) as f:
            doc = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise InstallError(f"{MANIFEST} in the package is unreadable: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("dependencies", []), list):
        raise InstallError(f"{MANIFEST} in the package is not a mapping with a dependencies list")
    if len(doc.get("dependencies") or []) > 1024:
        raise InstallError(f"{MANIFEST} lists more than 1024 dependencies")
    return doc


def _unpack(data: bytes, dest: str) -> None:
    """Extract a tar(.gz) archive safely: bounded members and bytes, nothing outside ``dest``."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:*") as tar:
            members = tar.getmembers()
            if len(members) > MAX_MEMBERS:
                raise InstallError(f"package has {len(members)} entries, more than {MAX_MEMBERS}")
            for m in members:
                if m.name.startswith("/") or ".." in m.name.replace("\\", "/").split("/"):
                    raise InstallError(f"package entry {m.name!r} points outside the package")
            total = sum(m.size for m in members if m.isfile())
            if total > MAX_UNPACKED_BYTES:
                raise InstallError(f"package unpacks to {total} bytes, more than {MAX_UNPACKED_BYTES}")
            os.makedirs(dest, exist_ok=True)
            # "data" refuses absolute paths, '..', links leaving dest, devices; strips odd modes
            tar.extractall(dest, filter="data")
    except InstallError:
        raise
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InstallError(f"package is not a readable tar.gz archive: {exc}") from None


def _drop_shadowing_flamepy(deps: str) -> None:
    """A project that depends on Flame's flamepy (PyPI) must still run ours: theirs would shadow it."""
    if not os.path.isdir(deps):
        return
    for name in os.listdir(deps):
        if name == "flamepy" or (name.startswith("flamepy-") and name.endswith(".dist-info")):
            log.info("removing %s from the installed dependencies: the executor's flamepy serves", name)
            shutil.rmtree(os.path.join(deps, name), ignore_errors=True)


def _tail(path: str, lines: int = OUTPUT_TAIL_LINES, limit: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    kept = [ln for ln in text.splitlines() if ln.strip()][-lines:]
    out = "\n".join(kept)[-limit:]
    return f"; output: ...\n{out}" if out else ""

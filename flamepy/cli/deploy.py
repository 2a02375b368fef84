"""``flmctl deploy``: package an application path, upload it to the object cache, register it.

Flame 0.6 (RFE458) in one command: ``--application`` is a directory, a
``.tar.gz``/``.tgz`` or an executable file; the package is normalized into one
``.tar.gz`` (an executable becomes ``bin/<file>``), stored in the object cache
under the content-addressed key ``<name>/pkg/<name>-<sha256[:16]>.tar.gz``
(the object cache is flo-server itself), and the application is registered with
``url`` = that object's URL and the detected (or given) command and installer.

Detection, as Flame's: a Python project (``pyproject.toml``, ``setup.py`` or
``setup.cfg``) gets ``installer: python`` and, as command, its one
``[project.scripts]`` entry (or the one named like the application), else
``python -m <name_with_underscores>`` when that package has ``__main__.py``;
otherwise ``bin/<name>``, the one executable in ``bin/`` or the one at the root
gives ``installer: binary``. Ambiguous cases ask for ``--command`` /
``--installer``.

Example::

    flmctl deploy --name image-classifier --application . --dry-run -o yaml
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import stat
import tarfile
import tempfile
import tomllib
from dataclasses import dataclass, field
from typing import Optional

from ..core.types import FlameError, FlameErrorCode, validate_application_name

__all__ = ["DeployPlan", "plan_deploy", "package_key", "EXCLUDED"]

# Never packaged: build and tool litter (Flame excludes dist too, where it writes its own tarballs).
EXCLUDED = frozenset({".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache",
                      ".tox", "node_modules", "dist", ".DS_Store"})
MAX_PACKAGE_BYTES = 512 * 1024 * 1024
MAX_PACKAGE_FILES = 100_000
INSTALLERS = ("binary", "python")


@dataclass
class DeployPlan:
    name: str
    kind: str                      # "Directory", "TarGz" or "ExecutableFile"
    package: bytes                 # the normalized .tar.gz
    sha256: str
    installer: str
    command: str
    arguments: list = field(default_factory=list)

    @property
    def key(self) -> str:
        return package_key(self.name, self.sha256)


def package_key(name: str, sha256: str) -> str:
    """``<name>/pkg/<name>-<first 16 hex of sha256>.tar.gz``: new bytes, new key (no stale installs)."""
    return f"{name}/pkg/{name}-{sha256[:16]}.tar.gz"


def plan_deploy(name: str, path: str, command: Optional[str] = None, arguments: Optional[list] = None,
                installer: Optional[str] = None) -> DeployPlan:
    """Classify ``path``, detect command/installer (explicit values win), build the normalized package."""
    validate_application_name(name)
    if installer is not None and installer not in INSTALLERS:
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT,
                         f"unsupported installer '{installer}'. Supported installers: binary, python")
    if os.path.isdir(path):
        kind, root, cleanup = "Directory", path, None
    elif os.path.isfile(path) and path.endswith((".tar.gz", ".tgz")):
        cleanup = tempfile.mkdtemp(prefix="flmctl-deploy-")
        kind, root = "TarGz", _unpack(path, cleanup)
    elif os.path.isfile(path) and os.access(path, os.X_OK):
        kind, root, cleanup = "ExecutableFile", None, None
    elif os.path.exists(path):
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT,
                         f"{path} is neither a directory, a .tar.gz/.tgz nor an executable file")
    else:
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT, f"{path} does not exist")
    try:
        if kind == "ExecutableFile":
            detected = ("binary", os.path.basename(path), [])
            package = _pack_executable(path)
        else:
            detected = _detect(name, root)
            package = _pack_dir(root)
    finally:
        if cleanup:
            shutil.rmtree(cleanup, ignore_errors=True)
    chosen_installer = installer or detected[0]
    chosen_command = command or detected[1]
    if not chosen_installer:
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT,
                         "unable to detect installer; pass --installer binary or --installer python")
    if not chosen_command:
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT, "unable to detect command; pass --command (and --argument)")
    args = list(arguments) if arguments else (detected[2] if not command else [])
    return DeployPlan(name=name, kind=kind, package=package, sha256=hashlib.sha256(package).hexdigest(),
                      installer=chosen_installer, command=chosen_command, arguments=args)


# -- detection ------------------------------------------------------------------------------------------------

def _detect(name: str, root: str) -> tuple[Optional[str], Optional[str], list]:
    if any(os.path.exists(os.path.join(root, m)) for m in ("pyproject.toml", "setup.py", "setup.cfg")):
        script = _pyproject_script(name, root)
        if script:
            return "python", script, []
        module = name.replace("-", "_")
        if os.path.isfile(os.path.join(root, module, "__main__.py")):
            return "python", "python", ["-m", module]
        return "python", None, []
    named = os.path.join(root, "bin", name)
    if os.path.isfile(named) and os.access(named, os.X_OK):
        return "binary", name, []
    for where in (os.path.join(root, "bin"), root):
        found = _executables(where)
        if len(found) == 1:
            return "binary", found[0], []
        if len(found) > 1:
            return "binary", None, []
    return None, None, []


def _pyproject_script(name: str, root: str) -> Optional[str]:
    path = os.path.join(root, "pyproject.toml")
    if not os.path.isfile(path):
        return None
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT, f"failed to parse {path}: {exc}") from None
    scripts = (doc.get("project") or {}).get("scripts") or {}
    if name in scripts:
        return name
    return next(iter(scripts)) if len(scripts) == 1 else None


def _executables(where: str) -> list[str]:
    if not os.path.isdir(where):
        return []
    return sorted(n for n in os.listdir(where)
                  if os.path.isfile(os.path.join(where, n)) and os.access(os.path.join(where, n), os.X_OK))


# -- packaging ------------------------------------------------------------------------------------------------

def _unpack(path: str, into: str) -> str:
    """Extract a tarball safely (no absolute paths, no '..', no links leaving it); the detection root."""
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = tar.getmembers()
            if len(members) > MAX_PACKAGE_FILES:
                raise FlameError(FlameErrorCode.INVALID_ARGUMENT, f"{path} has more than {MAX_PACKAGE_FILES} entries")
            if sum(m.size for m in members) > MAX_PACKAGE_BYTES:  # a gzip bomb stops here, before extraction
                raise FlameError(FlameErrorCode.INVALID_ARGUMENT,
                                 f"{path} unpacks to more than {MAX_PACKAGE_BYTES >> 20} MiB")
            tar.extractall(into, filter="data")  # refuses absolute paths, '..' and escaping links
    except (tarfile.TarError, OSError) as exc:
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT, f"cannot unpack {path}: {exc}") from None
    top = os.listdir(into)
    if len(top) == 1 and os.path.isdir(os.path.join(into, top[0])):
        return os.path.join(into, top[0])
    return into


def _normalized(info: tarfile.TarInfo) -> tarfile.TarInfo:
    # Same bytes for the same tree: no owners, no times (the key is the content's digest).
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def _gzip_tar(buf: io.BytesIO):
    """A tar writer into a gzip stream whose header carries no time: equal trees give equal bytes."""
    return gzip.GzipFile(fileobj=buf, mode="wb", compresslevel=6, mtime=0)


def _pack_dir(root: str) -> bytes:
    root_real = os.path.realpath(root)
    buf = io.BytesIO()
    count = raw = 0
    with _gzip_tar(buf) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in EXCLUDED and not d.endswith(".egg-info"))
            for name in sorted(filenames):
                if name in EXCLUDED or name.endswith((".pyc", ".pyo")):
                    continue
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, root)
                if os.path.islink(full) and not os.path.realpath(full).startswith(root_real + os.sep):
                    raise FlameError(FlameErrorCode.INVALID_ARGUMENT, f"{rel} is a link out of the application")
                count += 1
                raw += os.path.getsize(full)
                if count > MAX_PACKAGE_FILES:
                    raise FlameError(FlameErrorCode.INVALID_ARGUMENT, f"more than {MAX_PACKAGE_FILES} files")
                if raw > MAX_PACKAGE_BYTES:  # checked before reading: the package is built in memory
                    raise FlameError(FlameErrorCode.INVALID_ARGUMENT,
                                     f"the application is larger than {MAX_PACKAGE_BYTES >> 20} MiB")
                tar.add(full, arcname=rel, recursive=False, filter=_normalized)
    return buf.getvalue()


def _pack_executable(path: str) -> bytes:
    if os.path.getsize(path) > MAX_PACKAGE_BYTES:
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT, f"{path} is larger than {MAX_PACKAGE_BYTES >> 20} MiB")
    buf = io.BytesIO()
    with _gzip_tar(buf) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        info = _normalized(tar.gettarinfo(path, arcname=f"bin/{os.path.basename(path)}"))
        info.mode |= stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH
        with open(path, "rb") as f:
            tar.addfile(info, f)
    return buf.getvalue()

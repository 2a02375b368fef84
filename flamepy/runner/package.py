"""Packaging a project directory for the executor's installer (``installer: python``).

The archive is a tar.gz of the directory minus :data:`DEFAULT_EXCLUDES` and
the caller's patterns, written outside the project (0.6.0 wrote
``dist/<name>.tar.gz`` into it). It is reproducible — sorted entries, no
owners, no times — so an unchanged project gives the same bytes, the same
sha256, and the executor reuses its install. A project without
``pyproject.toml`` / ``setup.py`` / ``setup.cfg`` gets a generated
``pyproject.toml``; ``.flamepy-package.json`` tells the installer the
dependencies to add and whether to install the project itself (a generated
one is not: its modules are used from the unpacked source on PYTHONPATH).

>>> pkg = build_package(".", "sum-app", dependencies=["six"])   # doctest: +SKIP
>>> pkg.digest[:16], pkg.size                                     # doctest: +SKIP
('5f0c...', 2048)
"""

from __future__ import annotations

import fnmatch
import gzip
import hashlib
import io
import json
import os
import re
import stat
import tarfile
import tempfile
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

from ..core.types import FlameError, FlameErrorCode
from ..executor.installer import MANIFEST, MAX_PACKAGE_BYTES, check_requirement

__all__ = ["Package", "build_package", "DEFAULT_EXCLUDES", "MAX_PACKAGE_FILES"]

DEFAULT_EXCLUDES = (".venv", "venv", "__pycache__", ".pytest_cache", ".ruff_cache", ".mypy_cache", "*.egg-info",
                    ".git", ".tox", "node_modules", "*.pyc", "*.pyo", ".DS_Store", "dist")
MAX_PACKAGE_FILES = 100_000
MAX_DEPENDENCIES = 256
_METADATA = ("pyproject.toml", "setup.py", "setup.cfg")


@dataclass
class Package:
    """A built archive: where it is, its sha256, its size, how many files it holds."""

    path: str
    digest: str
    size: int
    files: int
    generated_pyproject: bool

    @property
    def filename(self) -> str:
        return os.path.basename(self.path)


def _excluded(rel: str, is_dir: bool, patterns: Sequence[str]) -> bool:
    base = rel.rsplit("/", 1)[-1]
    for pattern in patterns:
        if pattern.endswith("/"):  # "data/": directories only (0.6.0 matched nothing with these)
            if is_dir and (fnmatch.fnmatch(base, pattern[:-1]) or fnmatch.fnmatch(rel, pattern[:-1])):
                return True
        elif fnmatch.fnmatch(base, pattern) or fnmatch.fnmatch(rel, pattern):
            return True
    return False


def _walk(root: str, patterns: Sequence[str]) -> Iterable[tuple[str, str]]:
    """(absolute path, archive name) of every file, directory and symlink kept, in sorted order."""
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        abs_dir = os.path.join(root, rel_dir) if rel_dir else root
        try:
            names = sorted(os.listdir(abs_dir))
        except OSError as exc:
            raise FlameError(FlameErrorCode.INTERNAL, f"cannot read {abs_dir}: {exc.strerror}") from None
        subdirs = []
        for name in names:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            path = os.path.join(abs_dir, name)
            st = os.lstat(path)
            is_dir = stat.S_ISDIR(st.st_mode)
            if _excluded(rel, is_dir, patterns):
                continue
            if is_dir:
                subdirs.append(rel)
                yield path, rel
            elif stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
                yield path, rel  # sockets, fifos and devices are not packaged
        stack.extend(reversed(subdirs))


def _generated_pyproject(name: str, dependencies: list[str]) -> str:
    project = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", name) or "flamepy-runner-project"
    deps = "".join(f"    {json.dumps(d)},\n" for d in dependencies)
    return ('[build-system]\nrequires = ["setuptools>=61.0"]\nbuild-backend = "setuptools.build_meta"\n\n'
            f'[project]\nname = "{project}"\nversion = "0.1.0"\nrequires-python = ">=3.9"\n'
            f'dependencies = [\n{deps}]\n\n[tool.setuptools]\npy-modules = []\n')


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def _normalized(info: tarfile.TarInfo) -> tarfile.TarInfo:
    """Content only: no owners, no times (a touched or re-checked-out file packs the same)."""
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def build_package(source_dir: str, name: str, dependencies: Optional[Sequence[str]] = None,
                  excludes: Sequence[str] = (), dest_dir: Optional[str] = None) -> Package:
    """Archive ``source_dir`` as ``<name>-<sha16>.tar.gz`` in ``dest_dir`` (default: a new temp dir)."""
    if not os.path.isdir(source_dir):
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT, f"{source_dir} is not a directory")
    deps = list(dependencies or [])
    if len(deps) > MAX_DEPENDENCIES:
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT, f"at most {MAX_DEPENDENCIES} dependencies")
    try:
        deps = sorted({check_requirement(d) for d in deps})
    except ValueError as exc:
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT, str(exc)) from None
    patterns = list(DEFAULT_EXCLUDES) + [str(p) for p in excludes or () if str(p)]
    root = os.path.abspath(source_dir)
    generated = not any(os.path.exists(os.path.join(root, f)) for f in _METADATA)
    dest_dir = dest_dir or tempfile.mkdtemp(prefix="flamepy-package-")
    buf = io.BytesIO()
    files = total = 0
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w",
                                                                             format=tarfile.PAX_FORMAT) as tar:
        for path, rel in _walk(root, patterns):
            if rel in (MANIFEST,) or (generated and rel == "pyproject.toml"):
                continue
            info = _normalized(tar.gettarinfo(path, arcname=rel))
            if info.isfile():
                files += 1
                total += info.size
                if files > MAX_PACKAGE_FILES:
                    raise FlameError(FlameErrorCode.INVALID_ARGUMENT,
                                     f"{source_dir} has more than {MAX_PACKAGE_FILES} files to package; "
                                     "exclude some with package.excludes in flame.yaml")
                if total > MAX_PACKAGE_BYTES:
                    raise FlameError(FlameErrorCode.INVALID_ARGUMENT,
                                     f"{source_dir} holds more than {MAX_PACKAGE_BYTES >> 20} MiB to package; "
                                     "exclude data files with package.excludes in flame.yaml")
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
        if generated:
            _add_bytes(tar, "pyproject.toml", _generated_pyproject(name, deps).encode())
        manifest = {"name": name, "dependencies": deps, "install_project": not generated}
        _add_bytes(tar, MANIFEST, json.dumps(manifest, sort_keys=True).encode())
    data = buf.getvalue()
    if len(data) > MAX_PACKAGE_BYTES:
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT,
                         f"the package of {source_dir} is {len(data)} bytes, more than {MAX_PACKAGE_BYTES}")
    digest = hashlib.sha256(data).hexdigest()
    path = os.path.join(dest_dir, f"{name}-{digest[:16]}.tar.gz")
    with open(path, "wb") as f:
        f.write(data)
    return Package(path=path, digest=digest, size=len(data), files=files, generated_pyproject=generated)

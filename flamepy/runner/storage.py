"""Where a Runner puts its package: the object cache (default) or a shared ``file://`` directory.

``package.storage`` in flame.yaml chooses: unset (or ``flo://`` / Flame's
``grpc://`` cache urls) → the object cache of the cluster's flo-server, key
``<app>/pkg/<app>-<sha16>.tar.gz``, url ``flo://HOST:PORT/<key>``;
``file:///shared/dir`` → a copy there (the directory must exist and be seen by
every executor). Names carry the content's digest, so a package that exists
already is the same package (0.6.0 skipped the copy of a changed package that
had the old name, and ran stale code).

>>> store = create_storage(None, "sum-app")             # doctest: +SKIP
>>> url = store.upload(pkg)                              # doctest: +SKIP
'flo://127.0.0.1:9000/sum-app/pkg/sum-app-5f0c1e2d3a4b5c6d.tar.gz'
"""

from __future__ import annotations

import abc
import logging
import os
import shutil
from typing import Optional
from urllib.parse import unquote, urlparse

from ..core.types import FlameError, FlameErrorCode
from .package import Package

__all__ = ["PackageStorage", "CacheStorage", "FileStorage", "create_storage"]

log = logging.getLogger("flamepy.runner")


class PackageStorage(abc.ABC):
    """Puts a package where executors can fetch it; ``upload`` returns the application's ``url``."""

    @abc.abstractmethod
    def upload(self, package: Package) -> str:
        """Store the package; the url executors fetch it from."""

    @abc.abstractmethod
    def delete(self, package: Package) -> None:
        """Remove what ``upload`` stored (best effort)."""


class CacheStorage(PackageStorage):
    """The object cache: the package's bytes as object ``<app>/pkg/<file>``."""

    def __init__(self, app_name: str) -> None:
        self.app_name = app_name

    def key(self, package: Package) -> str:
        return f"{self.app_name}/pkg/{package.filename}"

    def upload(self, package: Package) -> str:
        from ..core.cache import upload_object
        ref = upload_object(self.key(package), package.path)
        return f"flo://{ref.endpoint}/{ref.key}"

    def delete(self, package: Package) -> None:
        from ..core.cache import delete_objects
        delete_objects(self.key(package))


class FileStorage(PackageStorage):
    """A directory every executor sees (NFS or the like): ``file:///that/dir``."""

    def __init__(self, url: str) -> None:
        parsed = urlparse(url)
        self.directory = unquote(parsed.path)
        if parsed.scheme != "file" or not self.directory.startswith("/"):
            raise FlameError(FlameErrorCode.INVALID_CONFIG, f"invalid file storage url <{url}>: "
                                                            "expected file:///absolute/dir")
        if not os.path.isdir(self.directory):
            raise FlameError(FlameErrorCode.INVALID_CONFIG, f"package storage directory {self.directory} "
                                                            "does not exist")
        self._copied: set[str] = set()

    def upload(self, package: Package) -> str:
        dest = os.path.join(self.directory, package.filename)
        if not os.path.exists(dest):
            tmp = f"{dest}.tmp-{os.getpid()}"
            try:
                shutil.copyfile(package.path, tmp)
                os.replace(tmp, dest)  # an executor never sees half a file
            except OSError as exc:
                with_suppressed_unlink(tmp)
                raise FlameError(FlameErrorCode.INTERNAL, f"failed to copy the package to {dest}: {exc}") from None
            self._copied.add(dest)
        return f"file://{dest}"

    def delete(self, package: Package) -> None:
        dest = os.path.join(self.directory, package.filename)
        if dest in self._copied:  # only what this Runner put there (another one may share the same content)
            with_suppressed_unlink(dest)
            self._copied.discard(dest)


def with_suppressed_unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def create_storage(storage_url: Optional[str], app_name: str) -> PackageStorage:
    """The storage ``package.storage`` names (None: the object cache)."""
    if not storage_url:
        return CacheStorage(app_name)
    scheme = urlparse(str(storage_url)).scheme
    if scheme == "file":
        return FileStorage(str(storage_url))
    if scheme in ("flo", "flos", "grpc", "grpcs"):
        return CacheStorage(app_name)  # the object cache is the cluster's flo-server
    raise FlameError(FlameErrorCode.INVALID_CONFIG,
                     f"package.storage <{storage_url}>: supported are the object cache (leave it unset) and "
                     "file:///shared/dir; http(s) storage is not available on Flo")

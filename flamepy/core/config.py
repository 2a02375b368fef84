"""``~/.flame/flame.yaml`` contexts and the ``FLAME_*`` environment overrides.

Example file::

    current-context: local
    contexts:
      - name: local
        cluster:
          endpoint: "flo://127.0.0.1:9000"
          username: alice              # a flo-server user (--users / --requirepass)
          password: "..."
          tls:
            ca_file: /etc/flame/ca.pem # TLS, verified with this CA (or enabled: true for the system's)

``FLAME_ENDPOINT`` (e.g. ``127.0.0.1:9000``) overrides the file and lets a
program run with no file at all; ``FLAME_USERNAME`` / ``FLAME_PASSWORD`` /
``FLAME_CA_FILE`` / ``FLAME_TLS=1`` do the same for credentials and TLS.
Service processes get all of them from the executor manager. flmctl reads
the file only (``env=False``), as Flame's does.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import yaml

from .types import DEFAULT_FLAME_CONF, DEFAULT_FLAME_ENDPOINT, FlameError, FlameErrorCode

__all__ = ["FlameContext", "normalize_endpoint", "default_config_path"]

DEFAULT_PORT = 9000


def default_config_path() -> str:
    # Runtime HOME (0.6.0 flmctl baked the build machine's HOME in).
    return os.path.join(os.path.expanduser("~"), ".flame", DEFAULT_FLAME_CONF)


def normalize_endpoint(endpoint: str) -> str:
    """``host:port`` for flo_client from ``flo://h:p``, ``http://h:p``, ``h:p`` or ``h``.

    >>> normalize_endpoint("http://10.0.0.1")
    '10.0.0.1:9000'
    """
    if not endpoint or not str(endpoint).strip():
        raise FlameError(FlameErrorCode.INVALID_CONFIG, "endpoint is empty")
    text = str(endpoint).strip()
    if "://" in text:
        text = text.split("://", 1)[1]
    text = text.rstrip("/").split("/", 1)[0]
    if not text:
        raise FlameError(FlameErrorCode.INVALID_CONFIG, f"invalid endpoint <{endpoint}>")
    host, sep, port = text.rpartition(":")
    if not sep or "]" in port:
        return f"{text}:{DEFAULT_PORT}"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise FlameError(FlameErrorCode.INVALID_CONFIG, f"invalid port in endpoint <{endpoint}>")
    return f"{host or '127.0.0.1'}:{port}"


@dataclass
class FlameContext:
    """The resolved client configuration (cluster endpoint, cache endpoint, storage)."""

    name: str = "default"
    endpoint: str = DEFAULT_FLAME_ENDPOINT
    cache_endpoint: Optional[str] = None
    cache_storage: Optional[str] = None
    ca_file: Optional[str] = None
    package_storage: Optional[str] = None
    package_excludes: list = field(default_factory=list)
    runner_template: str = "flmrun"
    username: Optional[str] = None
    password: Optional[str] = None
    tls: bool = False

    def client_options(self) -> dict:
        """FloClient's keyword arguments for this context: credentials and TLS."""
        opts: dict = {}
        if self.password is not None:
            opts["username"] = self.username or "default"
            opts["password"] = self.password
        if self.tls or self.ca_file:
            opts["tls"] = True
            if self.ca_file:
                opts["ca_file"] = self.ca_file
        return opts

    @classmethod
    def load(cls, path: Optional[str] = None, env: bool = True, required: bool = False) -> "FlameContext":
        path = path or os.environ.get("FLAME_CONF") or default_config_path()
        ctx = cls()
        if os.path.isfile(path):
            ctx._load_file(path)
        elif required:
            raise FlameError(FlameErrorCode.INVALID_CONFIG, f"{path} is not a file")
        if env:
            if os.environ.get("FLAME_ENDPOINT"):
                ctx.endpoint = os.environ["FLAME_ENDPOINT"]
            if os.environ.get("FLAME_CACHE_ENDPOINT"):
                ctx.cache_endpoint = os.environ["FLAME_CACHE_ENDPOINT"]
            if os.environ.get("FLAME_CACHE_STORAGE"):
                ctx.cache_storage = os.environ["FLAME_CACHE_STORAGE"]
            if os.environ.get("FLAME_CA_FILE") and not ctx.ca_file:
                ctx.ca_file = os.environ["FLAME_CA_FILE"]
            if os.environ.get("FLAME_USERNAME"):
                ctx.username = os.environ["FLAME_USERNAME"]
            if "FLAME_PASSWORD" in os.environ:
                ctx.password = os.environ["FLAME_PASSWORD"]
            if os.environ.get("FLAME_TLS", "").lower() in ("1", "true", "yes"):
                ctx.tls = True
        if str(ctx.endpoint).startswith(("flos://", "https://")):
            ctx.tls = True
        ctx.endpoint = normalize_endpoint(ctx.endpoint)
        return ctx

    def _load_file(self, path: str) -> None:
        try:
            with open(path) as f:
                doc = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise FlameError(FlameErrorCode.INVALID_CONFIG, f"failed to read {path}: {exc}") from None
        if not isinstance(doc, dict):
            raise FlameError(FlameErrorCode.INVALID_CONFIG, f"{path} is not a mapping")
        current = doc.get("current-context")
        if not current:
            raise FlameError(FlameErrorCode.INVALID_CONFIG, "current-context is not set")
        for item in doc.get("contexts") or []:
            if isinstance(item, dict) and item.get("name") == current:
                break
        else:
            raise FlameError(FlameErrorCode.INVALID_CONFIG, f"context {current} not found")
        self.name = current
        cluster = item.get("cluster") or {}
        cache = item.get("cache") or {}
        package = item.get("package") or {}
        runner = item.get("runner") or {}
        if cluster.get("endpoint"):
            self.endpoint = str(cluster["endpoint"])
        tls = cluster.get("tls") or {}
        self.ca_file = tls.get("ca_file")
        self.tls = bool(tls.get("enabled", False))
        if cluster.get("username") is not None:
            self.username = str(cluster["username"])
        if cluster.get("password") is not None:
            self.password = str(cluster["password"])
        self.cache_endpoint = cache.get("endpoint")
        self.cache_storage = cache.get("storage")
        self.package_storage = package.get("storage")
        self.package_excludes = list(package.get("excludes") or [])
        self.runner_template = runner.get("template") or "flmrun"


def default_client_options() -> dict:
    """Credentials and TLS for a flamepy connection made without explicit ones: FLAME_* env, then flame.yaml.

    A missing or unreadable file means none (the endpoint may still come from elsewhere).
    """
    try:
        return FlameContext.load().client_options()
    except FlameError:
        return {}

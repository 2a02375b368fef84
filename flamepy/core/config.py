"""``FlameContext``: the ``~/.flame/flame.yaml`` context and the ``FLAME_*`` environment overrides.

Flame 0.6's field names and defaults (``cluster``, ``cache``, ``package``,
``runner``), plus what flo-server adds (``cluster.username`` / ``password``,
``cluster.tls.enabled``). Example file::

    current-context: local
    contexts:
      - name: local
        cluster:
          endpoint: "flo://127.0.0.1:9000"
          username: alice              # a flo-server user (--users / --requirepass)
          password: "..."
          tls:
            ca_file: /etc/flame/ca.pem # TLS, verified with this CA (or enabled: true for the system's)
        cache:
          endpoint: "flo://127.0.0.1:9000"   # optional: the object cache is the same flo-server
        package:
          storage: "file:///var/lib/flame/packages"
          excludes: ["data/", "*.log"]
        runner:
          template: flmrun

    >>> ctx = FlameContext()                      # doctest: +SKIP
    >>> ctx.endpoint, ctx.cache.endpoint, ctx.runner.template, ctx.package.excludes[:2]   # doctest: +SKIP
    ('127.0.0.1:9000', '127.0.0.1:9000', 'flmrun', ['.venv', '__pycache__'])

Environment (wins over the file, and works without one): ``FLAME_ENDPOINT``,
``FLAME_CACHE_ENDPOINT``, ``FLAME_CACHE_STORAGE``, ``FLAME_CA_FILE`` (fills the
cluster's and the cache's CA where the file sets none), and ours
``FLAME_USERNAME`` / ``FLAME_PASSWORD`` / ``FLAME_TLS=1`` / ``FLAME_CONF`` (another
file). Service processes get them from the executor manager. flmctl reads the
file only (``env=False``), as Flame's does.

Flame runs a separate object-cache service (Arrow Flight, ``grpc://host:9090``);
on Flo the cache is the flo-server itself, so :meth:`FlameContext.object_cache_endpoint`
maps a ``grpc://`` / ``grpcs://`` cache endpoint (and none at all) to the cluster
endpoint, and uses a ``flo://`` / ``host:port`` one as given.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

import yaml

from .types import DEFAULT_FLAME_CONF, DEFAULT_FLAME_ENDPOINT, FlameError, FlameErrorCode

__all__ = ["FlameContext", "FlameClusterConfig", "FlameClientTls", "FlameClientCache", "FlamePackage",
           "FlameContextRunner", "DEFAULT_FLAME_RUNNER_TEMPLATE", "DEFAULT_PACKAGE_EXCLUDES",
           "normalize_endpoint", "default_config_path", "default_client_options"]

DEFAULT_PORT = 9000
DEFAULT_FLAME_RUNNER_TEMPLATE = "flmrun"
# Flame 0.6's defaults, always applied (the user's excludes come after them).
DEFAULT_PACKAGE_EXCLUDES = (".venv", "__pycache__", ".gitignore", "*.pyc")
MAX_CONFIG_BYTES = 1 << 20           # a flame.yaml bigger than this is refused, not parsed
MAX_EXCLUDES = 1024
_FLO_SCHEMES = ("flo", "flos", "http", "https")
_FLIGHT_SCHEMES = ("grpc", "grpcs", "grpc+tls", "grpc+tcp")


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


def _scheme(endpoint: Optional[str]) -> str:
    return str(endpoint).split("://", 1)[0].lower() if endpoint and "://" in str(endpoint) else ""


@dataclass
class FlameClientTls:
    """TLS settings of a connection: the CA that signed the server's certificate (None: system CAs)."""

    ca_file: Optional[str] = None


@dataclass
class FlameClusterConfig:
    """``contexts[].cluster``: the flo-server (``host:port``), its TLS and the user to log in as."""

    endpoint: str = DEFAULT_FLAME_ENDPOINT
    tls: Optional[FlameClientTls] = None
    username: Optional[str] = None
    password: Optional[str] = None


@dataclass
class FlameClientCache:
    """``contexts[].cache``: the object cache's endpoint (as written), TLS and ``storage``.

    ``storage`` is kept for Flame compatibility; on Flo every object lives in the
    server's log, so it changes nothing.
    """

    endpoint: Optional[str] = None
    tls: Optional[FlameClientTls] = None
    storage: Optional[str] = None


@dataclass
class FlamePackage:
    """``contexts[].package``: where the Runner stores packages (None: the object cache) and what it leaves out."""

    storage: Optional[str] = None
    excludes: list = field(default_factory=lambda: list(DEFAULT_PACKAGE_EXCLUDES))


@dataclass
class FlameContextRunner:
    """``contexts[].runner``: the application the Runner registers its temporary apps from."""

    template: Optional[str] = DEFAULT_FLAME_RUNNER_TEMPLATE


class FlameContext:
    """The resolved client configuration: ``FlameContext()`` reads ``~/.flame/flame.yaml`` and the environment.

    ``FlameContext(path, env=False, required=True)`` (or ``FlameContext.load(...)``) reads
    another file, without the environment, refusing a missing file. A malformed file is a
    ``FlameError(INVALID_CONFIG)`` naming what is wrong.
    """

    def __init__(self, path: Optional[str] = None, env: bool = True, required: bool = False) -> None:
        self.name = "default"
        self.cluster = FlameClusterConfig()
        self._tls_enabled = False
        self._cache: Optional[FlameClientCache] = None
        self._package = FlamePackage()
        self._runner = FlameContextRunner()
        path = path or os.environ.get("FLAME_CONF") or default_config_path()
        if os.path.isfile(path):
            self._load_file(path)
        elif required:
            raise FlameError(FlameErrorCode.INVALID_CONFIG, f"{path} is not a file")
        if env:
            self._apply_env()
        if _scheme(self.cluster.endpoint) in ("flos", "https"):
            self._tls_enabled = True
        self.cluster.endpoint = normalize_endpoint(self.cluster.endpoint)

    @classmethod
    def load(cls, path: Optional[str] = None, env: bool = True, required: bool = False) -> "FlameContext":
        return cls(path, env=env, required=required)

    # -- Flame 0.6's properties ---------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        """The cluster's flo-server as ``host:port``."""
        return self.cluster.endpoint

    @endpoint.setter
    def endpoint(self, value: str) -> None:
        self.cluster.endpoint = normalize_endpoint(value)

    @property
    def tls(self) -> Optional[FlameClientTls]:
        return self.cluster.tls

    @property
    def cache(self) -> FlameClientCache:
        """The cache section as configured; without one, the cluster's flo-server (Flame: ``grpc://127.0.0.1:9090``)."""
        if self._cache is not None:
            return self._cache
        return FlameClientCache(endpoint=self.cluster.endpoint, tls=self.cluster.tls)

    @property
    def cache_endpoint(self) -> str:
        return self.cache.endpoint or self.cluster.endpoint

    @property
    def cache_tls(self) -> Optional[FlameClientTls]:
        return self.cache.tls

    @property
    def package(self) -> FlamePackage:
        return self._package

    @property
    def runner(self) -> FlameContextRunner:
        return self._runner

    # -- shorthands (older flamepy code and the runner use them) --------------------------------------------------

    @property
    def ca_file(self) -> Optional[str]:
        return self.cluster.tls.ca_file if self.cluster.tls else None

    @property
    def username(self) -> Optional[str]:
        return self.cluster.username

    @property
    def password(self) -> Optional[str]:
        return self.cluster.password

    @property
    def cache_storage(self) -> Optional[str]:
        return self.cache.storage

    @property
    def package_storage(self) -> Optional[str]:
        return self._package.storage

    @property
    def package_excludes(self) -> list:
        return list(self._package.excludes)

    @property
    def runner_template(self) -> str:
        return self._runner.template or DEFAULT_FLAME_RUNNER_TEMPLATE

    # -- connections ------------------------------------------------------------------------------------------

    def client_options(self) -> dict:
        """FloClient's keyword arguments for the cluster: credentials and TLS."""
        return self._options(self.cluster.tls, self._tls_enabled)

    def object_cache_endpoint(self) -> str:
        """The flo-server holding the object cache, ``host:port``: the cache endpoint when it names a
        flo-server, else (none, or Flame's ``grpc://`` cache service) the cluster's."""
        ep = self._cache.endpoint if self._cache is not None else None
        if not ep or _scheme(ep) in _FLIGHT_SCHEMES:
            return self.cluster.endpoint
        if _scheme(ep) and _scheme(ep) not in _FLO_SCHEMES:
            raise FlameError(FlameErrorCode.INVALID_CONFIG, f"unsupported cache endpoint <{ep}>")
        return normalize_endpoint(ep)

    def object_cache_options(self) -> dict:
        """FloClient's keyword arguments for :meth:`object_cache_endpoint` (the cache's own CA if it has one)."""
        if self.object_cache_endpoint() == self.cluster.endpoint and not (self._cache and self._cache.tls):
            return self.client_options()
        cache = self.cache
        enabled = self._tls_enabled or _scheme(cache.endpoint) in ("flos", "https")
        return self._options(cache.tls or self.cluster.tls, enabled)

    def _options(self, tls: Optional[FlameClientTls], enabled: bool) -> dict:
        opts: dict = {}
        if self.cluster.password is not None:
            opts["username"] = self.cluster.username or "default"
            opts["password"] = self.cluster.password
        if enabled or (tls and tls.ca_file):
            opts["tls"] = True
            if tls and tls.ca_file:
                opts["ca_file"] = tls.ca_file
        return opts

    # -- loading ----------------------------------------------------------------------------------------------

    def _apply_env(self) -> None:
        ca_file = os.environ.get("FLAME_CA_FILE")
        if ca_file:
            if self.cluster.tls is None:
                self.cluster.tls = FlameClientTls(ca_file=ca_file)
            elif self.cluster.tls.ca_file is None:
                self.cluster.tls.ca_file = ca_file
            if self._cache is not None:
                if self._cache.tls is None:
                    self._cache.tls = FlameClientTls(ca_file=ca_file)
                elif self._cache.tls.ca_file is None:
                    self._cache.tls.ca_file = ca_file
        if os.environ.get("FLAME_ENDPOINT"):
            self.cluster.endpoint = os.environ["FLAME_ENDPOINT"]
        for var, attr in (("FLAME_CACHE_ENDPOINT", "endpoint"), ("FLAME_CACHE_STORAGE", "storage")):
            if os.environ.get(var):
                if self._cache is None:
                    self._cache = FlameClientCache(tls=FlameClientTls(ca_file) if ca_file else None)
                setattr(self._cache, attr, os.environ[var])
        if os.environ.get("FLAME_USERNAME"):
            self.cluster.username = os.environ["FLAME_USERNAME"]
        if "FLAME_PASSWORD" in os.environ:
            self.cluster.password = os.environ["FLAME_PASSWORD"]
        if os.environ.get("FLAME_TLS", "").lower() in ("1", "true", "yes"):
            self._tls_enabled = True

    def _load_file(self, path: str) -> None:
        try:
            if os.path.getsize(path) > MAX_CONFIG_BYTES:
                raise FlameError(FlameErrorCode.INVALID_CONFIG, f"{path} is larger than {MAX_CONFIG_BYTES} bytes")
            with open(path) as f:
                doc = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError, UnicodeDecodeError) as exc:
            raise FlameError(FlameErrorCode.INVALID_CONFIG, f"failed to read {path}: {exc}") from None
        if not isinstance(doc, dict):
            raise FlameError(FlameErrorCode.INVALID_CONFIG, f"{path} is not a mapping")
        current = doc.get("current-context")
        if not current:
            raise FlameError(FlameErrorCode.INVALID_CONFIG, "current-context is not set")
        contexts = doc.get("contexts") or []
        if not isinstance(contexts, list):
            raise FlameError(FlameErrorCode.INVALID_CONFIG, f"{path}: contexts must be a list")
        for item in contexts:
            if isinstance(item, dict) and item.get("name") == current:
                break
        else:
            raise FlameError(FlameErrorCode.INVALID_CONFIG, f"context {current} not found")
        self.name = str(current)
        cluster = _section(item, "cluster")
        if cluster.get("endpoint"):
            self.cluster.endpoint = _text(cluster["endpoint"], "cluster.endpoint")
        tls = _section(cluster, "tls", "cluster.tls")
        if tls:
            self.cluster.tls = FlameClientTls(ca_file=_opt_text(tls.get("ca_file"), "cluster.tls.ca_file"))
            self._tls_enabled = bool(tls.get("enabled", False))
        if cluster.get("username") is not None:
            self.cluster.username = _text(cluster["username"], "cluster.username")
        if cluster.get("password") is not None:
            self.cluster.password = str(cluster["password"])
        if item.get("cache") is not None:
            cache = _section(item, "cache")
            cache_tls = _section(cache, "tls", "cache.tls")
            self._cache = FlameClientCache(
                endpoint=_opt_text(cache.get("endpoint"), "cache.endpoint"),
                tls=FlameClientTls(ca_file=_opt_text(cache_tls.get("ca_file"), "cache.tls.ca_file")) if cache_tls
                else None,
                storage=_opt_text(cache.get("storage"), "cache.storage"))
        package = _section(item, "package")
        excludes = package.get("excludes") or []
        if not isinstance(excludes, list) or len(excludes) > MAX_EXCLUDES or \
                not all(isinstance(e, str) and e for e in excludes):
            raise FlameError(FlameErrorCode.INVALID_CONFIG,
                             f"package.excludes must be a list of at most {MAX_EXCLUDES} non-empty strings")
        # Defaults first, then the user's, in order and without repeats (0.6.0 merged them through a set).
        merged = list(dict.fromkeys([*DEFAULT_PACKAGE_EXCLUDES, *excludes]))
        self._package = FlamePackage(storage=_opt_text(package.get("storage"), "package.storage"), excludes=merged)
        runner = _section(item, "runner")
        template = _opt_text(runner.get("template"), "runner.template")
        self._runner = FlameContextRunner(template=template or DEFAULT_FLAME_RUNNER_TEMPLATE)

    def __repr__(self) -> str:
        return (f"FlameContext(name={self.name!r}, endpoint={self.endpoint!r}, cache={self.cache!r}, "
                f"package={self.package!r}, runner={self.runner!r})")


def _section(parent: dict, key: str, what: Optional[str] = None) -> dict:
    value = parent.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise FlameError(FlameErrorCode.INVALID_CONFIG, f"{what or key} must be a mapping")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, (str, int)) or isinstance(value, bool) or not str(value).strip():
        raise FlameError(FlameErrorCode.INVALID_CONFIG, f"{what} must be a non-empty string")
    return str(value).strip()


def _opt_text(value: Any, what: str) -> Optional[str]:
    return None if value is None else _text(value, what)


def default_client_options() -> dict:
    """Credentials and TLS for a flamepy connection made without explicit ones: FLAME_* env, then flame.yaml.

    A missing or unreadable file means none (the endpoint may still come from elsewhere).
    """
    try:
        return FlameContext.load().client_options()
    except FlameError:
        return {}

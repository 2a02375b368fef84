"""FlameContext: Flame 0.6's flame.yaml fields and defaults, the FLAME_* overrides, refusals of malformed
files, and where the object cache is (the cluster's flo-server unless a flo endpoint says otherwise)."""

from __future__ import annotations

import textwrap

import pytest

import flamepy
from flamepy.core import FlameContext, FlameContextRunner, FlamePackage
from flamepy.core.config import DEFAULT_PACKAGE_EXCLUDES, MAX_CONFIG_BYTES
from flamepy.core.types import FlameError, FlameErrorCode

ENV = ("FLAME_ENDPOINT", "FLAME_CACHE_ENDPOINT", "FLAME_CACHE_STORAGE", "FLAME_CA_FILE", "FLAME_USERNAME",
       "FLAME_PASSWORD", "FLAME_TLS", "FLAME_CONF")


@pytest.fixture
def home(tmp_path, monkeypatch):
    """An empty HOME and none of the FLAME_* variables; ``write(text)`` puts ``~/.flame/flame.yaml``."""
    for var in ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".flame").mkdir()

    def write(text: str):
        path = tmp_path / ".flame" / "flame.yaml"
        path.write_text(textwrap.dedent(text))
        return path

    return write


FULL = """\
    current-context: prod
    contexts:
      - name: dev
        cluster: {endpoint: "http://dev:1"}
      - name: prod
        cluster:
          endpoint: "http://10.1.2.3:9100"
          tls: {ca_file: /etc/flame/ca.crt}
          username: alice
          password: secret
        cache:
          endpoint: "grpcs://flame-object-cache:9090"
          tls: {ca_file: /etc/flame/cache-ca.crt}
          storage: /var/lib/flame/cache
        package:
          storage: "file:///var/lib/flame/packages"
          excludes: ["data/", "*.log", ".venv"]
        runner:
          template: my-runner
    """


def test_every_section_of_a_full_file(home):
    home(FULL)
    ctx = FlameContext()
    assert ctx.name == "prod"
    assert (ctx.endpoint, ctx.cluster.endpoint) == ("10.1.2.3:9100", "10.1.2.3:9100")
    assert ctx.tls.ca_file == ctx.ca_file == "/etc/flame/ca.crt"
    assert (ctx.cluster.username, ctx.cluster.password) == ("alice", "secret")
    assert (ctx.cache.endpoint, ctx.cache.tls.ca_file, ctx.cache.storage) == \
        ("grpcs://flame-object-cache:9090", "/etc/flame/cache-ca.crt", "/var/lib/flame/cache")
    assert ctx.cache_endpoint == "grpcs://flame-object-cache:9090" and ctx.cache_tls.ca_file.endswith("cache-ca.crt")
    # Flame's defaults first, then the user's, in order, without repeats
    assert ctx.package == FlamePackage(storage="file:///var/lib/flame/packages",
                                       excludes=[*DEFAULT_PACKAGE_EXCLUDES, "data/", "*.log"])
    assert ctx.runner == FlameContextRunner(template="my-runner") and ctx.runner_template == "my-runner"
    # The separate grpc cache service of Flame is the cluster's flo-server here; TLS with the cache's CA.
    assert ctx.object_cache_endpoint() == "10.1.2.3:9100"
    assert ctx.object_cache_options() == {"username": "alice", "password": "secret", "tls": True,
                                          "ca_file": "/etc/flame/cache-ca.crt"}
    assert ctx.client_options()["ca_file"] == "/etc/flame/ca.crt"


def test_defaults_without_a_file(home):
    ctx = FlameContext()
    assert ctx.endpoint == flamepy.DEFAULT_FLAME_ENDPOINT == "127.0.0.1:9000"
    assert ctx.cache.endpoint == ctx.endpoint and ctx.object_cache_endpoint() == ctx.endpoint
    assert ctx.package == FlamePackage() and ctx.package.storage is None
    assert ctx.package.excludes == list(DEFAULT_PACKAGE_EXCLUDES)
    assert ctx.runner.template == "flmrun" and ctx.tls is None and ctx.client_options() == {}
    # a context without package/runner sections still has Flame's defaults (0.6 gave package=None,
    # dropping package.excludes unless package.storage was set)
    home("""\
        current-context: c
        contexts:
          - name: c
            cluster: {endpoint: "flo://h:7"}
            package: {excludes: ["big/"]}
        """)
    ctx = FlameContext()
    assert ctx.endpoint == "h:7" and ctx.package.storage is None and ctx.package.excludes[-1] == "big/"
    assert ctx.runner.template == "flmrun"


def test_environment_overrides(home, monkeypatch, tmp_path):
    home(FULL)
    monkeypatch.setenv("FLAME_ENDPOINT", "127.0.0.1:9555")
    monkeypatch.setenv("FLAME_CACHE_ENDPOINT", "flo://127.0.0.1:9666")
    monkeypatch.setenv("FLAME_CACHE_STORAGE", "/tmp/cache")
    monkeypatch.setenv("FLAME_CA_FILE", "/env/ca.crt")   # fills only CAs the file does not set
    ctx = FlameContext()
    assert ctx.endpoint == "127.0.0.1:9555"
    assert (ctx.cache.endpoint, ctx.cache.storage) == ("flo://127.0.0.1:9666", "/tmp/cache")
    assert ctx.ca_file == "/etc/flame/ca.crt" and ctx.cache.tls.ca_file == "/etc/flame/cache-ca.crt"
    assert ctx.object_cache_endpoint() == "127.0.0.1:9666"
    assert FlameContext.load(env=False).endpoint == "10.1.2.3:9100"   # flmctl's view: the file only

    # No file at all: the environment alone makes a context; FLAME_CA_FILE reaches cluster and cache.
    other = tmp_path / "elsewhere.yaml"
    monkeypatch.setenv("FLAME_CONF", str(other))
    ctx = FlameContext()
    assert ctx.endpoint == "127.0.0.1:9555" and ctx.ca_file == "/env/ca.crt" and ctx.cache.tls.ca_file == "/env/ca.crt"
    monkeypatch.setenv("FLAME_PASSWORD", "pw")
    monkeypatch.setenv("FLAME_TLS", "1")
    assert FlameContext().client_options() == {"username": "default", "password": "pw", "tls": True,
                                               "ca_file": "/env/ca.crt"}
    with pytest.raises(FlameError, match="is not a file"):
        FlameContext(str(other), required=True)


@pytest.mark.parametrize("text, message", [
    ("contexts: []\n", "current-context is not set"),
    ("current-context: x\ncontexts: []\n", "context x not found"),
    ("current-context: x\ncontexts: {x: 1}\n", "contexts must be a list"),
    ("- just\n- a list\n", "is not a mapping"),
    ("current-context: x\ncontexts:\n  - name: x\n    cluster: [1]\n", "cluster must be a mapping"),
    ("current-context: x\ncontexts:\n  - name: x\n    cluster: {endpoint: 'h:99999'}\n", "invalid port"),
    ("current-context: x\ncontexts:\n  - name: x\n    package: {excludes: data}\n", "package.excludes must be"),
    ("current-context: x\ncontexts:\n  - name: x\n    runner: {template: [a]}\n", "runner.template must be"),
    ("current-context: x\ncontexts:\n  - name: x\n    cache: {endpoint: 'ftp://h'}\n", "unsupported cache endpoint"),
    ("current-context: [unclosed\n", "failed to read"),
])
def test_malformed_files_are_refused(home, text, message):
    home(text)
    with pytest.raises(FlameError, match=message) as exc:
        FlameContext().object_cache_endpoint()
    assert exc.value.code == FlameErrorCode.INVALID_CONFIG


def test_oversized_file_is_refused_unread(home):
    home("# " + "x" * MAX_CONFIG_BYTES + "\n")
    with pytest.raises(FlameError, match="larger than"):
        FlameContext()


def test_util_short_name():
    names = {flamepy.util.short_name("my-app") for _ in range(200)}
    assert len(names) == 200
    for name in names:
        prefix, _, tail = name.rpartition("-")
        assert prefix == "my-app" and len(tail) == 6 and tail.isalnum() and tail.isascii()
    assert len(flamepy.util.short_name("x", length=12)) == len("x-") + 12

"""Security through clients we did not write: redis-py, redis-cli and openssl s_client.

Errors must read exactly as Redis 7 words them (NOAUTH, WRONGPASS, NOPERM), so
redis-py raises its own AuthenticationError / NoPermissionError.
"""

from __future__ import annotations

import shutil
import socket
import subprocess

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from flo_server.auth import hash_password
from tests.helpers import ServerProc, make_test_ca, recv_until

pytestmark = [pytest.mark.conformance, pytest.mark.timeout(120)]

needs_cli = pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-tools not installed (make system-deps)")
PW = {"admin": "admin-pw", "app": "app-pw", "reader": "reader-pw"}


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    d = tmp_path_factory.mktemp("resp-secured")
    h = {u: hash_password(p, log2_n=10) for u, p in PW.items()}
    (d / "users.yaml").write_text(f"""
users:
  admin:
    password: "{h['admin']}"
    allow: ["*"]
  app:                       # database 1 only, strings under user:*, lists and streams too
    password: "{h['app']}"
    allow:
      - namespaces: [db1]
        primitives: [kv, list, stream]
        rights: [read, write]
        keys: ["user:*"]
  reader:
    password: "{h['reader']}"
    allow:
      - rights: [read]
""")
    sp = ServerProc(d / "data", "--users", str(d / "users.yaml")).start()
    yield sp
    sp.stop()


def r(sp: ServerProc | int, user: str | None = None, **kw) -> redis.Redis:
    """redis-py without its retries: a refused AUTH is an answer here, not a fault to retry."""
    if user is not None:
        kw.update(username=user, password=PW[user])
    port = sp if isinstance(sp, int) else sp.port
    return redis.Redis(host="127.0.0.1", port=port, socket_timeout=10, retry=Retry(NoBackoff(), 0), **kw)


def test_no_auth_is_refused_and_changes_nothing(secured):
    r(secured, "admin").set("k", "before")
    anon = r(secured)  # redis-py 8 opens with HELLO: refused as Redis refuses it
    with pytest.raises(redis.AuthenticationError, match="must be called with the client already authenticated"):
        anon.set("k", "after")
    with pytest.raises(redis.AuthenticationError):
        anon.flushall()
    # a client that sends the command straight away gets Redis's NOAUTH, byte for byte
    assert raw(secured, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nafter\r\n") == b"-NOAUTH Authentication required.\r\n"
    assert r(secured, "admin").get("k") == b"before"


def raw(sp: ServerProc, request: bytes) -> bytes:
    """One request on a fresh plain socket, and the first answer line."""
    with socket.create_connection(("127.0.0.1", sp.port), timeout=10) as s:
        s.sendall(request)
        return recv_until(s, b"\r\n")


def test_wrong_password(secured):
    with pytest.raises(redis.AuthenticationError, match="invalid username-password pair or user is disabled"):
        r(secured.port, username="admin", password="nope").ping()
    with pytest.raises(redis.AuthenticationError):
        r(secured.port, username="ghost", password="admin-pw").ping()


def test_auth_command_and_hello(secured):
    auth = f"*3\r\n$4\r\nAUTH\r\n$5\r\nadmin\r\n${len(PW['admin'])}\r\n{PW['admin']}\r\n".encode()
    assert raw(secured, auth) == b"+OK\r\n"
    assert raw(secured, b"*2\r\n$4\r\nAUTH\r\n$5\r\nwrong\r\n") == \
        b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
    c = r(secured, "admin", protocol=2)  # AUTH admin admin-pw, then RESP2
    assert c.acl_whoami() in ("admin", b"admin")
    resp3 = r(secured, "admin", protocol=3)  # HELLO 3 AUTH admin admin-pw
    assert resp3.set("r3", "v") and resp3.get("r3") == b"v"
    listing = [x.decode() if isinstance(x, bytes) else x for x in resp3.acl_list()]
    assert any(line.startswith("user app on") for line in listing)
    assert not any(PW["app"] in line for line in listing)


def test_database_and_key_patterns(secured):
    app = r(secured, "app", db=1)  # SELECT 1 is namespace db1
    assert app.set("user:1", "alice") and app.get("user:1") == b"alice"
    assert app.incr("user:n") == 1 and app.lpush("user:l", "a") == 1
    assert app.xadd("user:s", {"f": "v"})
    with pytest.raises(redis.exceptions.NoPermissionError,
                       match="this user has no permissions to access one of the keys used as arguments"):
        app.set("order:1", "x")
    with pytest.raises(redis.exceptions.NoPermissionError):
        app.mset({"user:2": "ok", "order:2": "not ok"})
    assert app.get("user:2") is None  # the refused MSET wrote nothing
    with pytest.raises(redis.exceptions.NoPermissionError, match="run the 'flushall' command"):
        app.flushall()
    for cmd in ("BGSAVE", "SAVE", "BGREWRITEAOF", "LASTSAVE"):  # snapshots are an administrator's
        with pytest.raises(redis.exceptions.NoPermissionError, match=f"run the '{cmd.lower()}' command"):
            app.execute_command(cmd)
    db0 = r(secured, "app")
    with pytest.raises(redis.exceptions.NoPermissionError, match="this user has no permissions to run the 'get' command"):
        db0.get("user:1")


def test_read_only_user(secured):
    r(secured, "admin").set("ro", "v")
    ro = r(secured, "reader")
    assert ro.get("ro") == b"v"
    # GET/SET/INCR/LPUSH/RPOP/XADD are served in C for trusted users: a checked user never reaches them
    for call in (lambda: ro.set("ro", "w"), lambda: ro.incr("n"), lambda: ro.lpush("l", "a"), lambda: ro.rpop("l"),
                 lambda: ro.xadd("s", {"f": "v"}), lambda: ro.delete("ro"), lambda: ro.flushdb()):
        with pytest.raises(redis.exceptions.NoPermissionError):
            call()
    assert r(secured, "admin").get("ro") == b"v"


@needs_cli
def test_redis_cli_user_and_pass(secured):
    def cli(*args: str) -> str:
        res = subprocess.run(["redis-cli", "-p", str(secured.port), *args], capture_output=True, text=True, timeout=30)
        return (res.stdout + res.stderr).strip()

    assert cli("--user", "admin", "--pass", PW["admin"], "--no-auth-warning", "SET", "cli", "v") == "OK"
    assert cli("--user", "admin", "--pass", PW["admin"], "--no-auth-warning", "GET", "cli") == "v"
    assert cli("GET", "cli") == "NOAUTH Authentication required."
    assert "WRONGPASS" in cli("--user", "admin", "--pass", "bad", "--no-auth-warning", "GET", "cli")
    assert cli("--user", "reader", "--pass", PW["reader"], "--no-auth-warning", "SET", "cli", "w") == \
        "NOPERM this user has no permissions to run the 'set' command"


def test_requirepass_with_redis_cli_and_redis_py(make_server):
    sp = make_server("--requirepass", "only-one")
    assert r(sp, password="only-one").set("k", "v")
    with pytest.raises(redis.AuthenticationError):
        r(sp, password="two").ping()
    config = r(sp, password="only-one").config_get("*")
    assert "only-one" not in repr(config)
    if shutil.which("redis-cli"):
        res = subprocess.run(["redis-cli", "-p", str(sp.port), "-a", "only-one", "--no-auth-warning", "GET", "k"],
                             capture_output=True, text=True, timeout=30)
        assert res.stdout.strip() == "v"
    assert "only-one" not in sp.log()


def test_no_password_configured_answers_like_redis(server):
    c = r(int(server.rsplit(":", 1)[1]))
    with pytest.raises(redis.AuthenticationError, match="called without any password configured"):
        c.execute_command("AUTH", "x")
    assert c.acl_whoami() in ("default", b"default")


# --- TLS -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    ca = make_test_ca(tmp_path_factory.mktemp("ca"))
    sp = ServerProc(tmp_path_factory.mktemp("tls") / "data", "--tls-cert", ca["cert"], "--tls-key", ca["key"],
                    "--tls-port", "0").start()
    yield sp, ca
    sp.stop()


def test_redis_py_over_tls(tls_server):
    sp, ca = tls_server
    c = redis.Redis(host="127.0.0.1", port=sp.tls_port, ssl=True, ssl_ca_certs=ca["ca"], socket_timeout=10)
    assert c.set("tls", "yes") and c.get("tls") == b"yes"
    assert c.lpush("tl", "a") == 1 and c.incr("tn") == 1
    assert redis.Redis(port=sp.port).get("tls") == b"yes"  # the same data on the plaintext port


@needs_cli
def test_redis_cli_over_tls_and_plaintext_refused(tls_server):
    sp, ca = tls_server
    res = subprocess.run(["redis-cli", "--tls", "--cacert", ca["ca"], "-h", "127.0.0.1", "-p", str(sp.tls_port),
                          "SET", "cli-tls", "v"], capture_output=True, text=True, timeout=30)
    if "not supported" in (res.stderr + res.stdout).lower() or "unrecognized option" in (res.stderr + res.stdout):
        pytest.skip("this redis-cli was built without TLS")
    assert res.stdout.strip() == "OK", res.stderr
    # plaintext to the TLS listener: no answer but a closed connection, and the server goes on
    with socket.create_connection(("127.0.0.1", sp.tls_port), timeout=10) as s:
        s.sendall(b"*1\r\n$4\r\nPING\r\n")
        s.settimeout(10)
        data = s.recv(1024)
        assert b"PONG" not in data
    assert redis.Redis(host="127.0.0.1", port=sp.tls_port, ssl=True, ssl_ca_certs=ca["ca"]).ping()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="no openssl")
def test_openssl_s_client(tls_server):
    sp, ca = tls_server
    res = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{sp.tls_port}", "-CAfile", ca["ca"],
                          "-verify_return_error", "-quiet", "-ign_eof"],
                         input=b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nQUIT\r\n", capture_output=True, timeout=30)
    assert b"+PONG\r\n" in res.stdout, res.stderr
    bad = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{sp.tls_port}", "-verify_return_error",
                          "-quiet", "-ign_eof"], input=b"*1\r\n$4\r\nPING\r\n*1\r\n$4\r\nQUIT\r\n", capture_output=True, timeout=30)
    assert b"+PONG" not in bad.stdout  # an unknown CA: the client refuses the handshake

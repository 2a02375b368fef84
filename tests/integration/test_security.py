"""Security against a real flo-server: users, permissions, AUTH, TLS and protected mode.

Clients: our flo_client, the public SDK (flo-python 0.1.2, which cannot AUTH) and,
in tests/conformance/test_security_redis.py, redis-py / redis-cli / openssl.
"""

from __future__ import annotations

import asyncio
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flo_client import FloClient
from flo_core.errors import UnauthorizedError
from flo_core.spec import Reason, Status
from flo_server.auth import AUTH_FAILED, MAX_AUTH_FAILURES, NO_PERMISSION, hash_password
from tests.helpers import ROOT, ServerProc, make_test_ca, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

PASSWORDS = {"admin": "admin-pw", "alice": "alice-pw", "reader": "reader-pw", "flame": "flame-pw"}


def users_toml(default: str = "") -> str:
    h = {u: hash_password(p, log2_n=10) for u, p in PASSWORDS.items()}
    return f'''
[users.admin]
password = "{h['admin']}"
allow = ["*"]

[users.alice]                       # namespace "a" only, every primitive, read and write
password = "{h['alice']}"
[[users.alice.allow]]
namespaces = ["a"]
rights = ["read", "write"]

[users.reader]                      # reads everything, writes nothing
password = "{h['reader']}"
[[users.reader.allow]]
rights = ["read"]
{default}'''


PUBLIC_DEFAULT = '''
[users.default]                     # unauthenticated connections: read and write "public" only
nopass = true
[[users.default.allow]]
namespaces = ["public"]
rights = ["read", "write"]
'''


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    d = tmp_path_factory.mktemp("secured")
    (d / "users.toml").write_text(users_toml(PUBLIC_DEFAULT))
    sp = ServerProc(d / "data", "--users", str(d / "users.toml")).start()
    yield sp
    sp.stop()


def as_user(sp: ServerProc, user: str | None, **kw) -> FloClient:
    if user is None:
        return FloClient(sp.endpoint, **kw)
    return FloClient(sp.endpoint, username=user, password=PASSWORDS[user], **kw)


async def test_no_auth_is_refused_and_changes_nothing(secured):
    async with as_user(secured, "admin") as admin:
        await admin.kv.put("k", b"before", namespace="b")
    c = as_user(secured, None, namespace="b")
    for attempt in (c.kv.put("k", b"after"), c.kv.delete("k"), c.queue.enqueue("q", b"m"),
                    c.stream.append("s", b"r"), c.kv.incr("n")):
        with pytest.raises(UnauthorizedError) as e:
            await attempt
        assert str(e.value).startswith(NO_PERMISSION)  # default may use "public" only
    await c.close()
    async with as_user(secured, "admin") as admin:
        assert (await admin.kv.get("k", namespace="b")).value == b"before"
        assert await admin.kv.get("n", namespace="b") is None


async def test_wrong_password_is_refused(secured):
    for user, pw in (("admin", "nope"), ("nobody", "admin-pw"), ("admin", "")):
        c = FloClient(secured.endpoint, username=user, password=pw)
        with pytest.raises(UnauthorizedError) as e:
            await c.connect()
        assert str(e.value) == AUTH_FAILED
        await c.close()


async def test_url_credentials_and_whoami(secured):
    async with FloClient(f"flo://alice:{PASSWORDS['alice']}@{secured.endpoint}", namespace="a") as c:
        assert await c.whoami() == "alice"
        await c.kv.put("x", b"1")


async def test_namespace_limits_every_primitive(secured):
    async with as_user(secured, "alice", namespace="a") as alice:
        await alice.kv.put("k", b"v")
        assert (await alice.kv.get("k")).value == b"v"
        await alice.queue.enqueue("q", b"m")
        await alice.stream.append("s", b"r")
        assert (await alice.kv.incr("n")).value == 1
    async with as_user(secured, "alice", namespace="b") as alice:
        for call in (alice.kv.get("k"), alice.kv.put("k", b"v"), alice.queue.enqueue("q", b"m"),
                     alice.stream.append("s", b"r"), alice.kv.incr("n"), alice.kv.mget(["k"]), alice.kv.scan(""),
                     alice.queue.dequeue("q"), alice.stream.read("s"), alice.kv.history("k")):
            with pytest.raises(UnauthorizedError) as e:
                await call
            assert str(e.value).startswith(NO_PERMISSION) and e.value.reason == Reason.UNCLASSIFIED


async def test_read_only_user_cannot_write(secured):
    async with as_user(secured, "admin", namespace="ro") as admin:
        await admin.kv.put("k", b"v")
        await admin.queue.enqueue("q", b"m")
    async with as_user(secured, "reader", namespace="ro") as reader:
        assert (await reader.kv.get("k")).value == b"v"
        assert await reader.queue.peek("q")
        for call in (reader.kv.put("k", b"w"), reader.kv.delete("k"), reader.kv.incr("n"),
                     reader.queue.enqueue("q", b"x"), reader.queue.dequeue("q"), reader.stream.append("s", b"r"),
                     reader.kv.put_many([("k", b"w")])):
            with pytest.raises(UnauthorizedError):
                await call
    async with as_user(secured, "admin", namespace="ro") as admin:
        assert (await admin.kv.get("k")).value == b"v"
        assert (await admin.queue.stats("q")).ready == 1  # the refused dequeue leased nothing


async def test_public_sdk_as_the_default_user(secured):
    """flo-python 0.1.2 cannot send AUTH: it works where the file grants the default user, and nowhere else."""
    import flo

    async with flo.FloClient(secured.endpoint, namespace="public") as c:
        await c.kv.put("greeting", b"hi")
        assert (await c.kv.get("greeting")).value == b"hi"
    async with flo.FloClient(secured.endpoint, namespace="private") as c:
        with pytest.raises(flo.UnauthorizedError):
            await c.kv.put("greeting", b"hi")
        with pytest.raises(flo.UnauthorizedError):
            await c.kv.get("greeting")


async def test_failed_auth_is_rate_limited_then_the_connection_closed(secured):
    from flo_client.connection import Connection
    from flo_core.spec import Op

    raw = await Connection.open("127.0.0.1", secured.port, 5)
    payload = b"\x00\x00\x05\x00admin" + (5).to_bytes(4, "little") + b"wrong" + b"\x00"
    times = []
    for _ in range(MAX_AUTH_FAILURES):
        t = time.monotonic()
        status, _ = await raw.request(Op.AUTH, payload, 10)
        times.append(time.monotonic() - t)
        assert status == Status.UNAUTHORIZED
    assert times[5] > times[1] + 0.3  # each failure makes the next answer wait longer
    await wait_for(lambda: raw.closed, timeout=5, what="the connection closed after the tenth failure")
    async with as_user(secured, "admin") as admin:  # other connections were never slowed
        assert (await admin.server_info())["auth_failures"] >= MAX_AUTH_FAILURES


async def test_restricted_users_bypass_the_c_fast_paths(make_server, tmp_path):
    """GET/PUT/INCR/APPEND/ENQUEUE have C fast paths: a restricted connection must not reach them."""
    (tmp_path / "u.toml").write_text(users_toml())
    sp = make_server("--users", str(tmp_path / "u.toml"))
    async with as_user(sp, "reader", namespace="a") as reader:
        for call in (reader.kv.put("k", b"v"), reader.kv.incr("n"), reader.stream.append("s", b"r"),
                     reader.queue.enqueue("q", b"m")):
            with pytest.raises(UnauthorizedError):
                await call
    async with as_user(sp, "admin", namespace="a") as admin:  # admin: the fast paths, unchecked
        await admin.kv.put("k", b"v")
        assert (await admin.kv.incr("n")).value == 1
    async with as_user(sp, "alice", namespace="a") as alice:
        assert (await alice.kv.get("k")).value == b"v"
        with pytest.raises(UnauthorizedError):
            await alice.kv.get("k", namespace="other")


async def test_requirepass(make_server):
    sp = make_server("--requirepass", "s3cret-pass")
    import flo

    async with flo.FloClient(sp.endpoint) as c:
        with pytest.raises(flo.UnauthorizedError):
            await c.kv.put("k", b"v")
    async with FloClient(sp.endpoint, password="s3cret-pass") as c:  # user "default"
        await c.kv.put("k", b"v")
        info = await c.server_info()
        assert "s3cret-pass" not in repr(info)
    assert "s3cret-pass" not in sp.log()


def test_protected_mode_refuses_a_public_bind(tmp_path):
    res = subprocess.run([sys.executable, "-m", "flo_server", "--host", "0.0.0.0", "--port", "0", "--no-persist",
                          "--no-executor"], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 2
    assert "refusing to listen on 0.0.0.0 with no authentication" in res.stderr
    assert "--insecure-bind" in res.stderr and "Traceback" not in res.stderr


def test_bad_users_file_stops_start_up_clearly(tmp_path):
    (tmp_path / "u.toml").write_text('[users.bob]\npassword = "plain-text-oops"\n')
    res = subprocess.run([sys.executable, "-m", "flo_server", "--port", "0", "--no-persist", "--no-executor",
                          "--users", str(tmp_path / "u.toml")], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert res.returncode == 2 and "not a scrypt hash" in res.stderr
    assert "plain-text-oops" not in res.stderr + res.stdout


def test_hash_password_command():
    res = subprocess.run([sys.executable, "-m", "flo_server", "hash-password", "--password-stdin"], input="pw\n",
                         capture_output=True, text=True, timeout=60, cwd=ROOT)
    from flo_server.auth import check_password

    assert res.returncode == 0 and check_password(res.stdout.strip(), b"pw")


# --- TLS -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> dict:
    return make_test_ca(tmp_path_factory.mktemp("ca"))


async def test_tls_on_the_main_port(make_server, ca):
    sp = make_server("--tls-cert", ca["cert"], "--tls-key", ca["key"], "--requirepass", "pw")
    assert sp.tls_port == sp.port
    async with FloClient(sp.endpoint, password="pw", ca_file=ca["cert"] and ca["ca"]) as c:
        await c.kv.put("k", b"over tls")
        assert (await c.kv.get("k")).value == b"over tls"
        await c.queue.enqueue("q", b"m")  # a few ops on the C fast paths and off them
        assert (await c.kv.incr("n")).value == 1
    ctx = ssl.create_default_context(cafile=ca["ca"])
    async with FloClient(f"flos://default:pw@{sp.endpoint}", tls=ctx) as c:
        assert (await c.kv.get("k")).value == b"over tls"
    # plaintext to the TLS listener: refused cleanly, and the server goes on
    plain = FloClient(sp.endpoint, password="pw", timeout_ms=2000)
    with pytest.raises(Exception):
        await plain.connect()
        await plain.kv.get("k")
    await plain.close()
    # an untrusted certificate: the client refuses the server
    with pytest.raises(Exception):
        async with FloClient(sp.endpoint, password="pw", tls=True) as c:
            await c.kv.get("k")
    async with FloClient(sp.endpoint, password="pw", ca_file=ca["ca"]) as c:
        assert (await c.kv.get("k")).value == b"over tls"


async def test_tls_on_a_second_port_with_client_certificates(make_server, ca):
    sp = make_server("--tls-cert", ca["cert"], "--tls-key", ca["key"], "--tls-ca", ca["ca"],
                     "--tls-auth-clients", "yes", "--tls-port", "0")
    assert sp.tls_port not in (None, sp.port)
    async with FloClient(sp.endpoint) as c:  # plaintext port as before
        await c.kv.put("k", b"v")
    with_cert = ssl.create_default_context(cafile=ca["ca"])
    with_cert.load_cert_chain(ca["client_cert"], ca["client_key"])
    async with FloClient(f"127.0.0.1:{sp.tls_port}", tls=with_cert) as c:
        assert (await c.kv.get("k")).value == b"v"
    without = FloClient(f"127.0.0.1:{sp.tls_port}", ca_file=ca["ca"], timeout_ms=2000)
    with pytest.raises(Exception):
        await without.connect()
        await without.kv.get("k")
    await without.close()


async def test_key_patterns_and_transactions(make_server, tmp_path):
    (tmp_path / "u.toml").write_text(f'''
[users.app]
password = "{hash_password("app-pw", log2_n=10)}"
[[users.app.allow]]
namespaces = ["shop"]
primitives = ["kv"]
keys = ["cart:*"]
rights = ["read", "write"]
''')
    sp = make_server("--users", str(tmp_path / "u.toml"))
    async with FloClient(sp.endpoint, username="app", password="app-pw", namespace="shop") as c:
        async with c.kv.begin("cart:1") as txn:
            await txn.put("cart:1", b"apple")
            await txn.commit()
        assert (await c.kv.get("cart:1")).value == b"apple"
        assert (await c.kv.scan("cart:")).names == ["cart:1"]
        for call in (c.kv.put("order:1", b"x"), c.kv.scan(""), c.kv.mget(["cart:1", "order:1"]),
                     c.kv.put_many([("cart:2", b"ok"), ("order:2", b"no")])):
            with pytest.raises(UnauthorizedError):
                await call
        assert await c.kv.get("cart:2") is None  # the refused MPUT wrote nothing

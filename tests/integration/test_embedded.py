"""EmbeddedServer (a real flo-server on a thread of this process) and the pytest plugin's fixtures.

docs/testing.md is the user's side of this. The plugin test writes a small user
test suite into a temp dir and runs it with a fresh ``python -m pytest``: the
``flo`` plugin comes from the installed package's ``pytest11`` entry point.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from flo_client import FloClient
from flo_core.errors import ConnectionClosedError, UnauthorizedError
from flo_server import EmbeddedServer
from tests.helpers import parked, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def server_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("flo-server-embedded")]


def put_get(srv: EmbeddedServer, key: str, value: bytes | None, **client_kw) -> bytes | None:
    """From sync code: write ``value`` (unless None) and read the key back, on a fresh loop and client."""

    async def main() -> bytes | None:
        async with srv.client(**client_kw) as c:
            if value is not None:
                await c.kv.put(key, value)
            got = await c.kv.get(key)
            return None if got is None else got.value

    return asyncio.run(main())


# --- sync code: a script, a notebook ---------------------------------------------------------


def test_start_stop_from_sync_code() -> None:
    srv = EmbeddedServer()
    assert not srv.running and srv.port == 0
    with pytest.raises(RuntimeError, match="start"):
        srv.address
    assert srv.start() is srv and srv.running
    assert srv.port > 0
    assert srv.address == f"127.0.0.1:{srv.port}"
    assert srv.url == f"flo://127.0.0.1:{srv.port}"
    assert srv.start() is srv  # already running: nothing happens
    assert put_get(srv, "k", b"v") == b"v"
    assert srv.server.info()["data_dir"] is None  # memory only
    srv.stop()
    assert not srv.running and not server_threads()
    srv.stop()  # idempotent
    with pytest.raises(ConnectionClosedError):
        put_get(srv, "k", None)


def test_context_manager() -> None:
    with EmbeddedServer() as srv:
        assert srv.running
        assert put_get(srv, "k", b"1") == b"1"
        assert "running" in repr(srv)
    assert not srv.running and not server_threads()


def test_bad_option_is_refused_at_once() -> None:
    with pytest.raises(TypeError):
        EmbeddedServer(no_such_option=1)


# --- inside a running loop (pytest-asyncio) ---------------------------------------------------


async def test_async_with_from_an_async_test() -> None:
    async with EmbeddedServer() as srv, srv.client(namespace="app") as c:
        await c.kv.put("user:1", b"Ada")
        assert (await c.kv.get("user:1")).value == b"Ada"
        await c.queue.enqueue("jobs", b"j1")
        got = await c.queue.dequeue("jobs", 1)
        assert [m.payload for m in got.messages] == [b"j1"]
    assert not srv.running


async def test_sync_calls_inside_a_running_loop() -> None:
    # The server never runs on the caller's loop: blocking start()/stop() inside a coroutine is fine.
    srv = EmbeddedServer().start()
    try:
        c = srv.client()
        await c.kv.put("k", b"v")
        assert (await c.kv.get("k")).value == b"v"
        await c.close()
    finally:
        srv.stop()


async def test_a_parked_dequeue_does_not_hold_up_stop() -> None:
    srv = EmbeddedServer().start()
    c = srv.client()
    try:
        parked_dequeue = asyncio.ensure_future(c.queue.dequeue("empty", 1, _block(20_000)))
        await parked(srv.address, 1)  # the server holds it
        await asyncio.to_thread(srv.stop)
        with pytest.raises(ConnectionClosedError):
            await asyncio.wait_for(parked_dequeue, 5)
    finally:
        await c.close()
        srv.stop()


def _block(ms: int):
    from flo_client.queue import DequeueOptions

    return DequeueOptions(block_ms=ms)


# --- durability: restart with a data dir ------------------------------------------------------


def test_data_survives_restart_with_a_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    srv = EmbeddedServer(data, fsync="everysec").start()
    try:
        port = srv.port
        assert put_get(srv, "kept", b"v1") == b"v1"
        srv.restart()
        assert srv.port == port  # same port: old endpoints stay valid
        assert put_get(srv, "kept", None) == b"v1"
        assert srv.server.info()["data_dir"] == str(data)
    finally:
        srv.stop()
    # a new server on the same dir (the lock was released by stop())
    with EmbeddedServer(data) as again:
        assert put_get(again, "kept", None) == b"v1"


async def test_a_client_reconnects_after_restart(tmp_path: Path) -> None:
    srv = EmbeddedServer(tmp_path / "data", fsync="always").start()
    try:
        async with srv.client() as c:
            await c.kv.put("k", b"before")
            await c.queue.enqueue("q", b"m1")
            await asyncio.to_thread(srv.restart)  # this loop runs meanwhile: it sees the connection go
            assert (await c.kv.get("k")).value == b"before"
            assert [m.payload for m in (await c.queue.dequeue("q", 1)).messages] == [b"m1"]
    finally:
        srv.stop()


def test_memory_only_restart_comes_back_empty() -> None:
    with EmbeddedServer() as srv:
        put_get(srv, "k", b"v")
        srv.restart()
        assert put_get(srv, "k", None) is None


def test_a_script_that_forgets_stop_still_flushes_at_exit(tmp_path: Path) -> None:
    data = tmp_path / "data"
    script = textwrap.dedent(f"""
        import asyncio
        from flo_server import EmbeddedServer

        srv = EmbeddedServer({str(data)!r}, fsync="no").start()

        async def main():
            async with srv.client() as c:
                await c.kv.put("k", b"written before exit")

        asyncio.run(main())
        # no srv.stop(): the interpreter's exit stops it (its thread is a daemon)
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert any((data / "snap").iterdir())  # what only a clean stop writes: the final snapshot
    with EmbeddedServer(data) as srv:
        assert put_get(srv, "k", None) == b"written before exit"


# --- several at once, start errors --------------------------------------------------------------


def test_two_servers_at_once() -> None:
    with EmbeddedServer() as a, EmbeddedServer() as b:
        assert a.port != b.port
        put_get(a, "k", b"a")
        put_get(b, "k", b"b")
        assert put_get(a, "k", None) == b"a"
        assert put_get(b, "k", None) == b"b"
        assert len(server_threads()) == 2
    assert not server_threads()


def test_port_in_use_raises_in_the_callers_thread(tmp_path: Path) -> None:
    with EmbeddedServer() as first:
        busy = EmbeddedServer(tmp_path / "data", port=first.port)
        with pytest.raises(OSError, match="in use") as ei:
            busy.start()
        assert f"{first.port}" in str(ei.value)
        assert not busy.running
        assert len(server_threads()) == 1  # nothing left of the failed one
        assert put_get(first, "k", b"still fine") == b"still fine"
    # the failed start released its data dir
    with EmbeddedServer(tmp_path / "data") as srv:
        assert srv.running


def test_a_locked_data_dir_raises(tmp_path: Path) -> None:
    from flo_server.persistence import RecoveryError

    with EmbeddedServer(tmp_path / "data"):
        with pytest.raises(RecoveryError, match="in use"):
            EmbeddedServer(tmp_path / "data").start()


def test_unsafe_bind_is_refused() -> None:
    from flo_server.app import ConfigError

    with pytest.raises(ConfigError, match="no authentication"):
        EmbeddedServer(host="0.0.0.0").start()


# --- security ------------------------------------------------------------------------------


async def test_requirepass_with_client_and_url() -> None:
    pw = "s3cret:@/x"
    async with EmbeddedServer(requirepass=pw) as srv:
        async with srv.client() as c:
            await c.kv.put("k", b"v")
            assert await c.whoami() == "default"
        assert srv.url == f"flo://:s3cret%3A%40%2Fx@127.0.0.1:{srv.port}"
        async with FloClient(srv.url) as by_url:
            assert (await by_url.kv.get("k")).value == b"v"
        anon = FloClient(srv.address)
        try:
            with pytest.raises(UnauthorizedError):
                await anon.kv.get("k")
        finally:
            await anon.close()
        with pytest.raises(UnauthorizedError):
            async with srv.client(password="wrong"):
                pass


async def test_tls_port_and_client(tmp_path: Path) -> None:
    from flo_server.testing import make_test_ca

    pems = make_test_ca(tmp_path / "ca")
    async with EmbeddedServer(tls_cert=pems["cert"], tls_key=pems["key"]) as srv:
        assert srv.tls_port == srv.port and srv.url.startswith("flos://")
        async with srv.client() as c:  # trusts the server's certificate by itself
            await c.kv.put("k", b"over tls")
        async with FloClient(srv.address, ca_file=pems["ca"]) as by_ca:
            assert (await by_ca.kv.get("k")).value == b"over tls"


async def test_with_the_flamepy_executor() -> None:
    async with EmbeddedServer(executor=True, requirepass="pw") as srv, srv.client() as c:
        async def manager_connected() -> bool:  # the executor manager connects as a client of its own
            return (await c.server_info())["connections"] >= 2

        await wait_for(manager_connected, timeout=5, what="the executor manager's connection")
    assert not server_threads()


# --- the pytest plugin, in a user's own test suite ----------------------------------------------

USER_SUITE = {
    "pytest.ini": """
        [pytest]
        asyncio_default_fixture_loop_scope = function
        filterwarnings =
            error
    """,
    "conftest.py": """
        import gc

        import pytest


        @pytest.fixture(autouse=True)
        def _collect():  # a connection left open would warn now (an error, filterwarnings = error)
            yield
            gc.collect()
    """,
    "test_user.py": """
        import asyncio
        import threading

        import pytest


        @pytest.mark.asyncio
        async def test_kv(flo_client):
            await flo_client.kv.put("greeting", b"hello")
            assert (await flo_client.kv.get("greeting")).value == b"hello"


        @pytest.mark.asyncio
        async def test_queue(flo_client):
            await flo_client.queue.enqueue("jobs", b"job-1")
            result = await flo_client.queue.dequeue("jobs", 1)
            assert [m.payload for m in result.messages] == [b"job-1"]
            await flo_client.queue.ack("jobs", [m.seq for m in result.messages])


        @pytest.mark.asyncio
        async def test_a_fresh_server_per_test(flo_client):
            assert await flo_client.kv.get("greeting") is None


        def test_sync_test_with_asyncio_run(flo_server, flo_client):
            async def main():
                await flo_client.kv.put("k", b"v")
                return (await flo_client.kv.get("k")).value

            assert asyncio.run(main()) == b"v"
            assert asyncio.run(main()) == b"v"  # a second loop: the client reconnects on it
            assert flo_server.url == f"flo://127.0.0.1:{flo_server.port}"


        @pytest.mark.asyncio(loop_scope="module")
        async def test_on_a_module_loop(flo_client):
            await flo_client.kv.put("m", b"1")
            assert (await flo_client.kv.get("m")).value == b"1"


        def test_nothing_runs_unless_asked():
            assert not [t for t in threading.enumerate() if t.name.startswith("flo-server-embedded")]
    """,
    "test_options.py": """
        import pytest

        from flo_client import FloClient
        from flo_core.errors import UnauthorizedError


        @pytest.fixture
        def flo_server_options():
            return {"requirepass": "s3cret"}


        @pytest.mark.asyncio
        async def test_password(flo_server, flo_client):
            assert flo_server.url.startswith("flo://:s3cret@")
            await flo_client.kv.put("k", b"v")
            async with FloClient(flo_server.address) as anon:
                with pytest.raises(UnauthorizedError):
                    await anon.kv.get("k")
    """,
    "shared/test_shared.py": """
        import pytest

        ports = []


        def test_first(flo_server):
            ports.append(flo_server.port)


        @pytest.mark.asyncio
        async def test_second_sees_the_same_server(flo_server, flo_client):
            ports.append(flo_server.port)
            assert ports[0] == ports[1]
    """,
}


def run_pytest(where: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                          cwd=where, env=env, capture_output=True, text=True, timeout=90)


def test_a_user_suite_with_the_plugin_needs_no_server_started_by_hand(tmp_path: Path) -> None:
    suite = tmp_path / "user_suite"
    for name, text in USER_SUITE.items():
        (suite / name).parent.mkdir(parents=True, exist_ok=True)
        (suite / name).write_text(textwrap.dedent(text).lstrip())

    r = run_pytest(suite, str(suite / "test_user.py"), str(suite / "test_options.py"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "7 passed" in r.stdout, r.stdout

    r = run_pytest(suite, "--flo-server-scope=session", str(suite / "shared"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 passed" in r.stdout, r.stdout

    # the same file with one server per test fails: the scope option is what made them share
    r = run_pytest(suite, str(suite / "shared"))
    assert r.returncode == 1 and "1 failed, 1 passed" in r.stdout, r.stdout

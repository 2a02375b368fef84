"""pytest fixtures for testing against a real flo-server: ``flo_server`` and ``flo_client``.

Loaded by itself once flo-py is installed (the ``pytest11`` entry point ``flo``;
``-p no:flo`` turns it off). Nothing starts unless a test asks for a fixture::

    async def test_cache(flo_client):                   # pytest-asyncio
        await flo_client.kv.put("k", b"v")
        assert (await flo_client.kv.get("k")).value == b"v"

    def test_address(flo_server):                       # any test, sync too
        assert flo_server.address.startswith("127.0.0.1:")

``flo_server``
    An :class:`~flo_server.embedded.EmbeddedServer`, memory only, on a free port;
    one per test unless ``--flo-server-scope`` / ini ``flo_server_scope`` says
    ``module``, ``session``, ... (a shared server keeps its data between tests).
``flo_server_options``
    The keyword arguments it is built with: ``{}``. Override it in a conftest.py
    or test module (``requirepass``, ``executor=True``, ``data_dir``, ...). With a
    wider server scope, give the override that scope too (or ``session``).
``flo_client``
    A :class:`flo_client.FloClient` for ``flo_server`` with its credentials, not
    connected yet: it connects on the loop of the test's first call. Its
    connections are closed on that loop when the loop ends (pytest-asyncio's
    and ``asyncio.run``'s loops cancel their tasks then) or after the test,
    whichever comes first. See docs/testing.md.
"""

from __future__ import annotations

import asyncio
from typing import Any, Iterator

import pytest

SCOPES = ("function", "class", "module", "package", "session")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("flo", "flo-server fixtures (flo_server, flo_client)")
    group.addoption("--flo-server-scope", dest="flo_server_scope", default=None, choices=SCOPES,
                    help="how long one flo_server fixture lives (default: function; ini: flo_server_scope)")
    parser.addini("flo_server_scope", "how long one flo_server fixture lives: function (default), class, module, "
                  "package or session", default="")


def _server_scope(fixture_name: str, config: pytest.Config) -> str:
    scope = config.getoption("flo_server_scope", None) or config.getini("flo_server_scope") or "function"
    if scope not in SCOPES:
        raise pytest.UsageError(f"flo_server_scope = {scope!r}: use one of {', '.join(SCOPES)}")
    return scope


@pytest.fixture(scope="session")
def flo_server_options() -> dict[str, Any]:
    """Keyword arguments for the ``flo_server`` fixture's EmbeddedServer (override this fixture to change them)."""
    return {}


@pytest.fixture(scope=_server_scope)
def flo_server(flo_server_options: dict[str, Any]) -> Iterator[Any]:
    """A real flo-server (EmbeddedServer, memory only unless ``flo_server_options`` gives ``data_dir``)."""
    from flo_server.embedded import EmbeddedServer

    srv = EmbeddedServer(**dict(flo_server_options)).start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def flo_client(flo_server: Any) -> Iterator[Any]:
    """A FloClient for ``flo_server`` (its password too); connects lazily, on the test's loop."""
    client = flo_server.client()
    guards: dict[Any, asyncio.Task] = {}
    _guard_connections(client, guards)
    try:
        yield client
    finally:
        _close_connections(client, guards)


# --- closing the client's connections on the loop they belong to ---------------------------
#
# The fixture is sync (it needs no async plugin, and sync tests may use it with
# asyncio.run), so its teardown runs outside any loop, and with pytest-asyncio
# after the test's function-scoped loop is already closed. So on the first
# connection a client makes on a loop, a small task waits on that loop; loops
# run by asyncio.Runner (pytest-asyncio, asyncio.run) cancel leftover tasks
# before closing, and the task then closes the connections of that loop. The
# teardown closes whatever is left (a loop that outlives the test).


def _guard_connections(client: Any, guards: dict[Any, asyncio.Task]) -> None:
    plain_open = client._open

    async def _open(attr: str) -> Any:
        conn = await plain_open(attr)
        loop = asyncio.get_running_loop()
        guard = guards.get(loop)
        if guard is None or guard.done():
            guards[loop] = loop.create_task(_close_at_loop_end(client, loop), name="flo_client: close at loop end")
        return conn

    client._open = _open  # the one place FloClient opens connections


async def _close_at_loop_end(client: Any, loop: asyncio.AbstractEventLoop) -> None:
    try:
        await loop.create_future()  # until cancelled: the loop is ending, or the test is over
    finally:
        _close_on(client, loop)


def _close_on(client: Any, loop: Any = None) -> None:
    """Close the client's connections that belong to ``loop`` (call this on that loop), or all of them."""
    for attr in ("_conn", "_blocking"):
        conn = getattr(client, attr)
        if conn is None:
            continue
        own = getattr(conn, "_loop", None)
        if loop is None and own is not None and own.is_running():
            continue  # the loop of another thread still runs: its guard closes these
        if loop is None or own is loop:
            try:
                conn.close()
            except RuntimeError:  # its loop is closed
                pass
            setattr(client, attr, None)


async def _finish(guard: asyncio.Task) -> None:
    guard.cancel()
    await asyncio.wait([guard])
    await asyncio.sleep(0)  # connection_lost callbacks


def _close_connections(client: Any, guards: dict[Any, asyncio.Task]) -> None:
    for loop, guard in list(guards.items()):
        if guard.done() or loop.is_closed():
            continue
        if loop.is_running():  # a loop on another thread (or a test that leaked a running loop)
            loop.call_soon_threadsafe(guard.cancel)
        else:
            try:
                loop.run_until_complete(_finish(guard))  # the guard closes that loop's connections
            except RuntimeError:
                pass
    guards.clear()
    _close_on(client)  # anything left: connections of a loop closed without cancelling its tasks
    client._closed = True

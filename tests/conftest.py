"""Shared fixtures: real ``flo-server`` subprocesses on free ports with temp data dirs, and clients for them.

``server`` yields its endpoint ``"127.0.0.1:PORT"``; ``server_proc`` is the
handle (``.endpoint``, ``.port``, ``.data_dir``, ``.restart()``, ``.kill()``,
``.stop()``, ``.start(*extra_args)``); ``make_server`` starts more.
``shared_server`` is one server for a whole test module, run twice (C fast
path on, and off); ``ns`` is a namespace of the test's own, to share it.

``client`` is a connected client, configured by the module's marker::

    pytestmark = pytest.mark.client(sdk=True, namespace="conf", timeout_ms=3000)

``sdk=True`` gives the public SDK's ``flo.FloClient`` (what we must serve
unmodified), otherwise ours (``flo_client.FloClient``). It connects to the
test's own ``server``; a module that uses ``shared_server`` (e.g. with
``pytest.mark.usefixtures("shared_server")``) gets it connected there instead,
in the test's own namespace ``ns``. Plain helpers are in ``tests/helpers.py``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tests.helpers import ServerProc


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "client(sdk=False, namespace=None, timeout_ms=5000): how the `client` fixture connects"
    )


@pytest.fixture
def server_proc(tmp_path: Path):
    sp = ServerProc(tmp_path / "data").start()
    try:
        yield sp
    finally:
        sp.stop()


@pytest.fixture
def server(server_proc: ServerProc) -> str:
    return server_proc.endpoint


@pytest.fixture
def make_server(tmp_path: Path):
    """Factory for servers with other options: ``make_server("--fsync", "always")``."""
    started: list[ServerProc] = []

    def make(*args: str, fsync: str = "everysec", data_dir: Path | None = None) -> ServerProc:
        sp = ServerProc(data_dir or tmp_path / f"data{len(started)}", *args, fsync=fsync).start()
        started.append(sp)
        return sp

    yield make
    for sp in started:
        sp.stop()


@pytest.fixture(scope="module", params=["fastpath", "dispatcher"])
def shared_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """One server per module, twice: with the C fast path for GET/PUT, and with every op in Python."""
    saved = os.environ.get("FLO_NO_FASTPATH")
    if request.param == "dispatcher":
        os.environ["FLO_NO_FASTPATH"] = "1"
    try:
        sp = ServerProc(tmp_path_factory.mktemp("shared") / "data").start()
    finally:
        if saved is None:
            os.environ.pop("FLO_NO_FASTPATH", None)
        else:
            os.environ["FLO_NO_FASTPATH"] = saved
    try:
        yield sp
    finally:
        sp.stop()


@pytest.fixture
def ns(request: pytest.FixtureRequest) -> str:
    """A namespace of this test's own (tests sharing a server cannot see each other's keys)."""
    return "t_" + re.sub(r"\W", "_", request.node.name)[:60]


@pytest.fixture
async def client(request: pytest.FixtureRequest):
    """A connected client as the module's ``pytest.mark.client(...)`` says (see the module docstring)."""
    marker = request.node.get_closest_marker("client")
    opts = dict(marker.kwargs) if marker else {}
    sdk, namespace, timeout_ms = opts.pop("sdk", False), opts.pop("namespace", None), opts.pop("timeout_ms", 5000)
    assert not opts, f"unknown client options {opts}"
    if "shared_server" in request.fixturenames:
        endpoint, namespace = request.getfixturevalue("shared_server").endpoint, request.getfixturevalue("ns")
    else:
        endpoint = request.getfixturevalue("server")
    if sdk:
        from flo import FloClient
    else:
        from flo_client import FloClient
    kwargs = {"timeout_ms": timeout_ms} if namespace is None else {"namespace": namespace, "timeout_ms": timeout_ms}
    async with FloClient(endpoint, **kwargs) as c:
        yield c

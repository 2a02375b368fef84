"""RESP GET/SET/INCR in C (flo_core.respcore) against the same commands in Python (FLO_NO_FASTPATH=1).

Both servers get the same byte stream and must answer the same bytes, store
the same values at the same versions (seen through the Flo protocol), and
replay them after a restart.
"""

from __future__ import annotations

import os
import socket
import time

import pytest

from flo_client import FloClient
from flo_core.resp import encode_command

pytestmark = [pytest.mark.conformance, pytest.mark.timeout(60)]

END = b"$13\r\nEND-OF-SCRIPT\r\n"

# Every situation the C path must either serve exactly like Python or hand over.
SCRIPT: list[list[bytes]] = [
    [b"SET", b"k", b"v"], [b"GET", b"k"], [b"get", b"k"], [b"GET", b"missing"], [b"sEt", b"k", b"v2"],
    [b"GET", b"k"], [b"SET", b"k"], [b"GET"], [b"GET", b"k", b"extra"],
    [b"INCR", b"n"], [b"incr", b"n"], [b"INCR", b"k"], [b"SET", b"max", b"9223372036854775807"],
    [b"INCR", b"max"], [b"SET", b"z", b"007"], [b"INCR", b"z"], [b"SET", b"neg", b"-5"], [b"INCR", b"neg"],
    [b"SET", b"sp", b" 1"], [b"INCR", b"sp"], [b"SET", b"m0", b"-0"], [b"INCR", b"m0"],
    [b"SET", b"t", b"5", b"EX", b"100"], [b"INCR", b"t"], [b"TTL", b"t"], [b"SET", b"t", b"6"], [b"TTL", b"t"],
    [b"SET", b"nx", b"1", b"NX"], [b"SET", b"nx", b"2", b"NX"], [b"GET", b"nx"],
    [b"RPUSH", b"lst", b"a"], [b"GET", b"lst"], [b"INCR", b"lst"], [b"SET", b"lst", b"s"], [b"GET", b"lst"],
    [b"TYPE", b"lst"], [b"XADD", b"str", b"1-1", b"f", b"v"], [b"GET", b"str"], [b"INCR", b"str"],
    [b"SET", b"str", b"x"], [b"TYPE", b"str"], [b"GET", b"str"],
    [b"SET", b"\xff\xfebin", b"\x00\r\n\x01"], [b"GET", b"\xff\xfebin"],
    [b"SELECT", b"2"], [b"GET", b"k"], [b"SET", b"k", b"db2"], [b"INCR", b"n"], [b"GET", b"k"],
    [b"USE", b"fastpath_ns"], [b"SET", b"k", b"ns"], [b"GET", b"k"], [b"SELECT", b"0"], [b"GET", b"k"],
    [b"HELLO", b"3"], [b"GET", b"missing"], [b"GET", b"k"], [b"HELLO", b"2"], [b"GET", b"missing"],
    [b"BLPOP", b"nolist", b"0.05"], [b"SET", b"after", b"block"], [b"GET", b"after"], [b"INCR", b"n"],
    [b"NOSUCH", b"x"], [b"SET", b"big", b"x" * 70000], [b"GET", b"big"], [b"STRLEN", b"big"],
]
INLINE = b"SET inl 1\r\nINCR inl\r\nGET inl\r\n"


def _script() -> bytes:
    return b"".join(encode_command(*c) for c in SCRIPT) + INLINE + encode_command(b"ECHO", b"END-OF-SCRIPT")


def _talk(port: int, data: bytes, chunk: int) -> bytes:
    """Send ``data`` in ``chunk``-byte writes; return every reply up to the ECHO marker."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        for i in range(0, len(data), chunk):
            s.sendall(data[i:i + chunk])
        buf = bytearray()
        deadline = time.monotonic() + 20
        while not buf.endswith(END) and time.monotonic() < deadline:
            got = s.recv(1 << 20)
            if not got:
                break
            buf += got
        assert buf.endswith(END), bytes(buf[-200:])
        return bytes(buf)


@pytest.fixture
def pair(make_server):
    """(fast, python) servers: the same build, C request loops on and off."""
    fast = make_server()
    saved = os.environ.get("FLO_NO_FASTPATH")
    os.environ["FLO_NO_FASTPATH"] = "1"
    try:
        slow = make_server()
    finally:
        if saved is None:
            os.environ.pop("FLO_NO_FASTPATH", None)
        else:
            os.environ["FLO_NO_FASTPATH"] = saved
    return fast, slow


async def _flo_view(endpoint: str, ns: str, keys: list[str]) -> dict:
    async with FloClient(endpoint, namespace=ns, timeout_ms=5000) as c:
        out = {}
        for k in keys:
            r = await c.kv.get(k)
            out[k] = None if r is None else (bytes(r.value), r.version)
        return out


@pytest.mark.parametrize("chunk", [1 << 20, 7])
async def test_fast_and_python_paths_answer_and_store_the_same(pair, chunk: int) -> None:
    fast, slow = pair
    data = _script()
    replies = [_talk(sp.port, data, chunk) for sp in (fast, slow)]
    assert replies[0] == replies[1]
    assert b"WRONGTYPE" in replies[0] and b":2\r\n" in replies[0] and b"-ERR value is not an integer" in replies[0]
    keys = ["k", "n", "max", "z", "neg", "t", "nx", "lst", "str", "after", "big", "inl"]
    views = [{ns: await _flo_view(sp.endpoint, ns, keys) for ns in ("default", "db2", "fastpath_ns")}
             for sp in (fast, slow)]
    assert views[0] == views[1]
    assert views[0]["default"]["n"][0] == b"3" and views[0]["db2"]["k"][0] == b"db2"


async def test_fast_writes_replay_after_restart(make_server) -> None:
    sp = make_server()
    cmds = [[b"SET", b"a", b"1"], [b"INCR", b"a"], [b"SET", b"b", b"x" * 300], [b"SELECT", b"5"],
            [b"SET", b"a", b"five"], [b"INCR", b"c"], [b"INCR", b"c"]]
    data = b"".join(encode_command(*c) for c in cmds) + encode_command(b"ECHO", b"END-OF-SCRIPT")
    assert _talk(sp.port, data, 1 << 20) == b"+OK\r\n:2\r\n+OK\r\n+OK\r\n+OK\r\n:1\r\n:2\r\n" + END
    before = {ns: await _flo_view(sp.endpoint, ns, ["a", "b", "c"]) for ns in ("default", "db5")}
    assert before["default"]["a"] == (b"2", 2) and before["db5"]["c"] == (b"2", 6)
    sp.restart(kill=True)
    after = {ns: await _flo_view(sp.endpoint, ns, ["a", "b", "c"]) for ns in ("default", "db5")}
    assert after == before


async def test_fast_set_under_fsync_always(make_server) -> None:
    sp = make_server(fsync="always")
    data = b"".join(encode_command(b"SET", b"k%d" % i, b"v%d" % i) for i in range(200))
    data += encode_command(b"GET", b"k199") + encode_command(b"ECHO", b"END-OF-SCRIPT")
    assert _talk(sp.port, data, 1 << 20) == b"+OK\r\n" * 200 + b"$4\r\nv199\r\n" + END
    sp.restart(kill=True)
    assert (await _flo_view(sp.endpoint, "default", ["k0", "k199"])) == {"k0": (b"v0", 1), "k199": (b"v199", 200)}

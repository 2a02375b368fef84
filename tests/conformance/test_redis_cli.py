"""redis-cli and redis-benchmark (Debian's redis-tools, unmodified) against flo-server's port."""

from __future__ import annotations

import shutil
import socket
import subprocess

import pytest

from tests.helpers import recv_until, wait_until

pytestmark = [
    pytest.mark.conformance,
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("redis-cli") is None, reason="redis-tools not installed (make system-deps)"),
]


def cli(endpoint: str, *args: str, stdin: str | None = None, resp3: bool = False) -> str:
    host, port = endpoint.rsplit(":", 1)
    cmd = ["redis-cli", "-h", host, "-p", port] + (["-3"] if resp3 else []) + list(args)
    res = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stderr
    return res.stdout


def test_round_trips(server: str) -> None:
    assert cli(server, "PING") == "PONG\n"
    assert cli(server, "SET", "greeting", "hello world") == "OK\n"
    assert cli(server, "GET", "greeting") == "hello world\n"
    assert cli(server, "INCRBY", "n", "5") == "5\n"
    assert cli(server, "RPUSH", "l", "a", "b") == "2\n"
    assert cli(server, "LRANGE", "l", "0", "-1") == "a\nb\n"
    assert cli(server, "XADD", "s", "1-1", "f", "v") == "1-1\n"
    assert cli(server, "XRANGE", "s", "-", "+") == "1-1\nf\nv\n"
    assert cli(server, "TYPE", "s") == "stream\n"
    assert cli(server, "GET", "l").strip() == "WRONGTYPE Operation against a key holding the wrong kind of value"
    assert cli(server, "NOSUCH", "x").strip() == "ERR unknown command 'NOSUCH', with args beginning with: 'x'"
    assert cli(server, "-n", "3", "SET", "in3", "x") == "OK\n"  # SELECT 3 first
    assert cli(server, "EXISTS", "in3") == "0\n"
    assert cli(server, "HELLO", "3", resp3=True).startswith("server redis\nversion ")
    assert cli(server, "DBSIZE") == "4\n"  # greeting, n, l, s (in3 lives in db 3)
    assert cli(server, "BGSAVE") == "Background saving started\n"
    wait_until(lambda: "rdb_bgsave_in_progress:0" in cli(server, "INFO", "persistence"), timeout=10)
    assert cli(server, "BGSAVE") == "Background saving skipped: nothing was written since the last snapshot\n"


def test_pipe_mode_and_inline(server: str) -> None:
    # `redis-cli --pipe` streams a file of commands (the bulk-load path)
    lines = "".join(f"SET bulk:{i} {i}\r\n" for i in range(500))
    out = cli(server, "--pipe", stdin=lines)
    assert "errors: 0, replies: 500" in out
    assert cli(server, "GET", "bulk:499") == "499\n"
    # raw inline commands over a socket, with quoting and a protocol error at the end
    host, port = server.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b'SET "two words" \'it\\\'s\'\r\nGET "two words"\r\n*1\r\n$x\r\n')
        data = recv_until(sock, b"invalid bulk length\r\n")
        assert data == b"+OK\r\n$4\r\nit's\r\n-ERR Protocol error: invalid bulk length\r\n"
        assert sock.recv(10) == b""  # closed after a protocol error, as Redis does


def test_benchmark_completes_without_errors(server: str) -> None:
    host, port = server.rsplit(":", 1)
    for pipeline in ("1", "16"):
        res = subprocess.run(
            ["redis-benchmark", "-h", host, "-p", port, "-q", "--csv", "-n", "2000", "-c", "10", "-P", pipeline,
             "-t", "set,get,incr,lpush,rpop,ping"],
            capture_output=True, text=True, timeout=60,
        )
        assert res.returncode == 0, res.stderr
        rows = [ln for ln in res.stdout.splitlines() if ln.startswith('"') and not ln.startswith('"test"')]
        assert len(rows) >= 6, res.stdout
        assert "error" not in (res.stdout + res.stderr).lower()
    res = subprocess.run(
        ["redis-benchmark", "-h", host, "-p", port, "-q", "--csv", "-n", "2000", "-c", "10", "-P", "16",
         "XADD", "bench", "*", "f", "x" * 100],
        capture_output=True, text=True, timeout=60,
    )
    assert res.returncode == 0 and "error" not in (res.stdout + res.stderr).lower(), res.stdout + res.stderr
    assert cli(server, "XLEN", "bench") == "2000\n"

"""Redis side of the comparison: installing it, redis-benchmark, INFO, RESP probes.

redis-server itself is started by :meth:`bench.servers.Fleet.start_redis`
(no RDB saves, optional AOF, a pidfile, our child process). Here:

* :func:`ensure_redis` - install ``redis-server`` and ``redis-tools`` from
  Debian when missing (root only; ``apt-get``), else say why not;
* :func:`redis_benchmark` - one bounded ``redis-benchmark --csv`` run against any
  RESP server (Redis, or flo-server's RESP listener), parsed into the same
  record shape as the load generator's;
* :func:`resp_call` - one RESP command over a plain socket (``INFO memory``,
  ``FLUSHALL``, ``PING``) without needing redis-py.

Example::

    >>> resp_call(6379, b"PING")  # doctest: +SKIP
    'PONG'
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import socket
import subprocess
import time

from .servers import HOST
from .workloads import resp_command


def ensure_redis(install: bool = True, log=print) -> str | None:  # type: ignore[no-untyped-def]
    """Return None when redis-server and redis-benchmark are usable, else the reason they are not."""
    if shutil.which("redis-server") and shutil.which("redis-benchmark"):
        return None
    if not install:
        return "redis-server/redis-benchmark not installed (run without --no-install, as root, to install them)"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return "redis-server/redis-benchmark not installed and cannot apt-get here (need root on Debian)"
    log("installing redis-server and redis-tools with apt-get ...")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, timeout=300, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "redis-server", "redis-tools"],
                       check=True, env=env, timeout=600, capture_output=True)
    except (subprocess.SubprocessError, OSError) as e:
        return f"apt-get install redis-server redis-tools failed: {e}"
    if shutil.which("redis-server") and shutil.which("redis-benchmark"):
        return None
    return "redis installed but redis-server/redis-benchmark still not on PATH"


def resp_call(port: int, *args: bytes, timeout: float = 5.0) -> str:
    """Send one command and return the reply as text (bulk/simple/int; errors as '-ERR ...')."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(resp_command(list(args)))
        buf = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            if buf[:1] == b"$":
                head, _, rest = buf.partition(b"\r\n")
                n = int(head[1:])
                if n < 0:
                    return ""
                if len(rest) >= n + 2:
                    return rest[:n].decode("utf-8", "replace")
            elif buf.endswith(b"\r\n"):
                text = buf[:-2].decode("utf-8", "replace")
                return text[1:] if buf[:1] in (b"+", b":") else text
        raise TimeoutError(f"no complete RESP reply from port {port}")


def speaks_resp(port: int) -> bool:
    """Does the server on ``port`` answer a RESP PING? (flo-server sniffs RESP on its one port.)"""
    try:
        return resp_call(port, b"PING", timeout=2.0) == "PONG"
    except (OSError, TimeoutError, ValueError):
        return False


def info_section(port: int, section: bytes) -> dict[str, str]:
    """The fields of one ``INFO`` section, as text (``info_section(port, b"persistence")``)."""
    out: dict[str, str] = {}
    for line in resp_call(port, b"INFO", section).splitlines():
        k, sep, v = line.partition(":")
        if sep:
            out[k] = v.strip()
    return out


def info_memory(port: int) -> dict[str, int]:
    """The integer fields of ``INFO memory`` (used_memory, used_memory_rss, ...)."""
    return {k: int(v) for k, v in info_section(port, b"memory").items() if v.isdigit()}


def redis_benchmark(port: int, args: tuple[str, ...], *, total: int, conns: int, pipeline: int, value_size: int,
                    keyspace: int, max_seconds: float, prefix: list[str]) -> dict:
    """One ``redis-benchmark --csv`` run; ``args`` is ``("-t", "set")`` or a raw command."""
    cmd = list(args)
    if "-t" not in cmd:
        # Raw commands take the value inline; __value__ stands for a value of the asked size.
        cmd = [("x" * value_size if a == "__value__" else a) for a in cmd]
    argv = prefix + ["redis-benchmark", "-h", HOST, "-p", str(port), "-q", "--csv", "-n", str(total),
                     "-c", str(conns), "-P", str(pipeline), "-d", str(value_size), "-r", str(keyspace)] + cmd
    t0 = time.perf_counter()
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=max_seconds + 10)
    except subprocess.TimeoutExpired:
        # redis-benchmark has no time bound of its own: the timeout kills exactly the child we started.
        return {"errors": 1, "error_sample": f"redis-benchmark exceeded {max_seconds:.0f} s", "ops_s": 0.0,
                "completed": 0, "timed_out": True}
    elapsed = time.perf_counter() - t0
    rows = [r for r in csv.reader(io.StringIO(out.stdout)) if r and r[0] != "test"]
    if out.returncode != 0 or not rows:
        return {"errors": 1, "error_sample": (out.stderr or out.stdout).strip()[-300:], "ops_s": 0.0,
                "completed": 0, "timed_out": False}
    # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
    r = rows[-1]
    f = [float(x) for x in r[1:8]]
    return {"completed": total, "errors": 0, "error_sample": "", "elapsed_s": round(elapsed, 4),
            "ops_s": f[0], "mean_us": f[1] * 1000, "p50_us": f[3] * 1000, "p99_us": f[5] * 1000,
            "p90_us": float("nan"), "p999_us": float("nan"), "max_us": f[6] * 1000, "timed_out": False, "tool": "redis-benchmark"}

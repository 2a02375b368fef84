"""Bounded memory per connection, and many connections (docs/reliability.md).

* ``--client-output-limit``: a client that pipelines GETs of a 1 MiB value and never reads
  the answers (Flo wire v2 and RESP, plain reads and blocking reads woken all at once) is
  dropped, counted and logged, the server's RSS stays bounded, and a well-behaved client
  next to it keeps a low p99; a client that reads late but stays under the limit keeps
  every answer.
* ``--max-connections``: one connection too many gets a refusal in its own protocol
  (redis-py: MaxClientsReachedError; flo_client and the public SDK: OVERLOADED), or
  Redis's ``-ERR`` line when it says nothing for a second.
* 10,000 idle connections (half Flo, half RESP): RSS per connection, a new client's
  latency while they are open, RSS back near the baseline once they are closed.

The flooders run in a subprocess of their own (``FLOODER``), so their Python does not
share the GIL with the client whose latency is measured.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import redis

from flo_client import FloClient
from flo_core.body import Writer
from flo_core.errors import OverloadedError
from flo_core.spec import Op, Reason, Status
from flo_core.wire import encode_request
from tests.helpers import ROOT, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

MiB = 1 << 20
LIMIT = 32 * MiB  # --client-output-limit of the flood tests
BIG = b"v" * MiB


# --- small sync clients ----------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def kv_payload(key: bytes, ns: bytes = b"default") -> bytes:
    return len(ns).to_bytes(2, "little") + ns + len(key).to_bytes(2, "little") + key


def flo_get(rid: int, key: bytes, wait_ms: int = 0) -> bytes:
    tail = Writer().opt_u64(wait_ms or None).opt_u8(0 if wait_ms else None).absent().getvalue()
    return encode_request(rid, Op.KV_GET, kv_payload(key) + tail)


def flo_ping(rid: int) -> bytes:
    return encode_request(rid, Op.PING, kv_payload(b"") + Writer().bytes32(b"").options({}).getvalue())


def resp(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return bytes(buf)


def flo_answer(s: socket.socket) -> tuple[int, int, bytes]:
    """(request id, status, body) of the next answer frame."""
    h = recv_exact(s, 32)
    assert h[:4] == b"FLO\x00"
    return int.from_bytes(h[8:16], "little"), h[21], recv_exact(s, int.from_bytes(h[4:8], "little"))


class FloSync:
    """One blocking Flo wire v2 connection: a request, its answer."""

    def __init__(self, port: int) -> None:
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.rid = 0

    def get(self, key: bytes) -> bytes:
        self.rid += 1
        self.s.sendall(flo_get(self.rid, key))
        rid, status, body = flo_answer(self.s)
        assert rid == self.rid and status == 0, (rid, status, body)
        return body

    def close(self) -> None:
        self.s.close()


def latencies(port: int, proto: str, n: int, key: bytes = b"small") -> list[float]:
    """``n`` sequential GETs of ``key`` by a client that reads its answers: seconds each."""
    out = []
    if proto == "flo":
        c = FloSync(port)
        try:
            for _ in range(n):
                t0 = time.perf_counter()
                c.get(key)
                out.append(time.perf_counter() - t0)
        finally:
            c.close()
    else:
        r = redis.Redis(port=port, socket_timeout=10)
        try:
            for _ in range(n):
                t0 = time.perf_counter()
                assert r.get(key) is not None
                out.append(time.perf_counter() - t0)
        finally:
            r.close()
    return out


def p99(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * 0.99))]


class RssPeak(threading.Thread):
    """Samples the server's VmRSS every few ms until stopped; ``peak`` in KiB."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = rss_kib(pid)
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.003):
            self.peak = max(self.peak, rss_kib(self.pid))

    def stop(self) -> int:
        self._done.set()
        self.join(5)
        return self.peak


# --- the flooder (its own process) -------------------------------------------------------------

FLOODER = r'''
import json, select, socket, sys, time
port, seconds, path, step, gap = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
stream = open(path, "rb").read()  # whole requests: sent round and round, never read
deadline = time.time() + seconds
while time.time() < deadline:
    s = socket.create_connection(("127.0.0.1", port))
    s.setblocking(False)
    t0, sent, pos, why = time.time(), 0, 0, "deadline"
    while time.time() < deadline:
        select.select([], [s], [], 0.05)
        if gap:
            time.sleep(gap)
        try:
            n = s.send(memoryview(stream)[pos:pos + step])
        except BlockingIOError:
            continue
        except OSError as e:  # reset by the server: dropped
            why = type(e).__name__
            break
        sent += n
        pos = (pos + n) % len(stream)
    print(json.dumps({"why": why, "sent": sent, "seconds": round(time.time() - t0, 3)}), flush=True)
    s.close()
    time.sleep(0.05)
'''


def flood_stream(proto: str) -> bytes:
    """4,000 pipelined GETs of the 1 MiB value."""
    if proto == "flo":
        return b"".join(flo_get(i + 1, b"big") for i in range(4000))
    return resp(b"GET", b"big") * 4000


def end_flood(flood: subprocess.Popen, peak) -> tuple[list, int]:
    """Wait for the flooder process (kill it if it overran), stop the RSS sampler: (its rounds, peak RSS)."""
    try:
        out, _ = flood.communicate(timeout=30)
    finally:
        if flood.poll() is None:
            flood.kill()
        top = peak.stop()
    return [json.loads(line) for line in out.splitlines()], top


def run_flood(tmp_path, port: int, stream: bytes, seconds: float, step: int = 65536,
              gap: float = 0.0) -> subprocess.Popen:
    """A flooder process: for ``seconds``, connections that send ``stream`` round and round (at most
    ``step`` bytes a send, ``gap`` seconds apart) and never read; a new one each time it is dropped."""
    path = tmp_path / f"flood-{len(os.listdir(tmp_path))}.bin"
    path.write_bytes(stream)
    return subprocess.Popen([sys.executable, "-c", FLOODER, str(port), str(seconds), str(path), str(step), str(gap)],
                            stdout=subprocess.PIPE, text=True, cwd=ROOT)


def server_info(port: int) -> dict:
    async def go() -> dict:
        async with FloClient(f"127.0.0.1:{port}") as c:
            return await c.server_info()

    return asyncio.run(go())


def put_big(port: int) -> None:
    r = redis.Redis(port=port)
    r.set("big", BIG)
    r.set("small", b"s" * 100)
    r.close()


# --- --client-output-limit ---------------------------------------------------------------------


@pytest.mark.parametrize("proto", ["flo", "resp"])
def test_flood_that_never_reads_is_dropped_and_others_keep_their_latency(make_server, tmp_path, proto):
    sp = make_server("--client-output-limit", str(LIMIT))
    put_big(sp.port)
    quiet = latencies(sp.port, proto, 300)
    base = rss_kib(sp.proc.pid)
    peak = RssPeak(sp.proc.pid)
    peak.start()
    flood = run_flood(tmp_path, sp.port, flood_stream(proto), seconds=4.0)
    try:
        time.sleep(0.3)  # the flood is on
        during = []
        t_end = time.time() + 3.0
        while time.time() < t_end:  # a few hundred requests spread over the flood
            during += latencies(sp.port, proto, 50)
            time.sleep(0.05)
    finally:
        rounds, top = end_flood(flood, peak)
    dropped = [r for r in rounds if r["why"] != "deadline"]
    print(f"{proto}: p99 quiet {p99(quiet) * 1e3:.2f} ms, during the flood {p99(during) * 1e3:.2f} ms over "
          f"{len(during)} GETs; {len(dropped)} flooders dropped; RSS {base // 1024} MiB -> peak {top // 1024} MiB")
    assert len(dropped) >= 2, rounds  # dropped, reconnected, dropped again
    assert all(r["why"] in ("ConnectionResetError", "BrokenPipeError") for r in dropped), rounds
    # Each flooder sent far more than the limit's worth of GETs (thousands of MiB of answers)...
    assert max(r["sent"] for r in dropped) > 10 * (LIMIT // MiB) * len(stream_request(proto))
    # ... yet the server's memory stayed within the limit's order: the high-water mark, one read's
    # answers up to the limit, the write buffer, allocator slack.
    assert top - base < (3 * LIMIT + 64 * MiB) // 1024, (base, top)
    assert len(during) >= 300
    assert p99(during) < 0.1, sorted(during)[-10:]
    info = server_info(sp.port)
    assert info["clients_dropped_output_limit"] >= len(dropped)
    log = sp.log()
    assert "pass the client output limit" in log and "127.0.0.1:" in log
    if proto == "resp":
        r = redis.Redis(port=sp.port)
        assert r.info("stats")["client_output_buffer_limit_disconnections"] == info["clients_dropped_output_limit"]
        r.close()


def stream_request(proto: str) -> bytes:
    return flo_get(1, b"big") if proto == "flo" else resp(b"GET", b"big")


def test_answers_held_for_an_fsync_count_toward_the_limit(make_server, tmp_path):
    """fsync=always: each PUT holds the GET answers behind it until the fsync that covers it (the
    Output counts what it holds; here a read's answers usually pass the limit before that)."""
    sp = make_server("--client-output-limit", str(LIMIT), fsync="always")
    put_big(sp.port)
    base = rss_kib(sp.proc.pid)
    peak = RssPeak(sp.proc.pid)
    peak.start()
    put = encode_request(1, Op.KV_PUT, kv_payload(b"w") + Writer().bytes32(b"x").absent().absent().absent()
                         .absent().absent().getvalue())
    unit = put + b"".join(flo_get(i + 2, b"big") for i in range(8))
    flood = run_flood(tmp_path, sp.port, unit * 500, seconds=2.0)
    try:
        lat = latencies(sp.port, "flo", 200)
    finally:
        rounds, top = end_flood(flood, peak)
    assert sum(r["why"] != "deadline" for r in rounds) >= 2, rounds
    assert top - base < (3 * LIMIT + 64 * MiB) // 1024, (base, top)
    assert p99(lat) < 0.1
    assert server_info(sp.port)["clients_dropped_output_limit"] >= 2
    r = redis.Redis(port=sp.port)
    assert r.get("w") == b"x"  # the flood's PUTs were real writes
    r.close()


def test_blocking_reads_woken_at_once_drop_a_client_that_does_not_read(make_server):
    """Parked GETs (Flo) and a BLPOP with GETs queued behind it (RESP) answered while the client is paused."""
    sp = make_server("--client-output-limit", str(LIMIT))
    put_big(sp.port)
    base = rss_kib(sp.proc.pid)
    peak = RssPeak(sp.proc.pid)
    peak.start()
    flo = socket.create_connection(("127.0.0.1", sp.port))
    flo.sendall(b"".join(flo_get(i + 1, b"later", wait_ms=60_000) for i in range(100)))
    rsp = socket.create_connection(("127.0.0.1", sp.port))
    rsp.sendall(resp(b"BLPOP", b"q", b"0") + resp(b"GET", b"big") * 200)
    r = redis.Redis(port=sp.port)
    wait_until(lambda: server_info(sp.port)["waiters"] >= 101, timeout=10)
    r.set("later", BIG)  # wakes the 100 parked GETs: 100 MiB of answers for a client that does not read
    r.lpush("q", b"x")  # the BLPOP answers, then its 200 GETs run
    wait_until(lambda: server_info(sp.port)["clients_dropped_output_limit"] == 2, timeout=10)
    top = peak.stop()
    for s, answers in ((flo, 100 * MiB), (rsp, 200 * MiB)):
        s.settimeout(5)
        got = 0
        try:  # what the kernels had buffered, then the reset (or EOF): the rest was discarded
            while chunk := s.recv(1 << 20):
                got += len(chunk)
        except ConnectionResetError:
            pass
        s.close()
        assert got < LIMIT + 16 * MiB < answers, got
    assert top - base < (3 * LIMIT + 64 * MiB) // 1024, (base, top)
    assert r.get("small") == b"s" * 100
    assert server_info(sp.port)["waiters"] == 0
    r.close()


def test_a_client_that_reads_late_under_the_limit_keeps_its_answers(make_server):
    sp = make_server("--client-output-limit", str(LIMIT))
    put_big(sp.port)
    s = socket.create_connection(("127.0.0.1", sp.port))
    n = 20  # 20 MiB of answers: past the high-water mark (reading pauses), under the limit
    s.sendall(b"".join(flo_get(i + 1, b"big") for i in range(n)))
    time.sleep(1.0)
    s.settimeout(10)
    for i in range(n):
        rid, status, body = flo_answer(s)
        assert (rid, status) == (i + 1, 0) and BIG in body
    s.close()
    r = redis.Redis(port=sp.port)
    pipe = r.pipeline(transaction=False)
    for _ in range(n):
        pipe.get("big")
    assert pipe.execute() == [BIG] * n
    assert server_info(sp.port)["clients_dropped_output_limit"] == 0
    r.close()


# --- --max-connections ------------------------------------------------------------------------


def test_over_max_connections_a_client_gets_a_refusal_it_understands(make_server):
    sp = make_server("--max-connections", "2")
    held = [socket.create_connection(("127.0.0.1", sp.port)) for _ in range(2)]
    for i, s in enumerate(held):  # both in: they are answered
        s.sendall(flo_ping(1) if i == 0 else resp(b"PING"))
    rid, status, _ = flo_answer(held[0])
    assert (rid, status) == (1, 0)
    assert recv_exact(held[1], 7) == b"+PONG\r\n"

    # redis-py: Redis's wording, which it maps to MaxClientsReachedError
    r = redis.Redis(port=sp.port, socket_timeout=5)
    with pytest.raises(redis.exceptions.MaxClientsReachedError):
        r.ping()
    r.close()

    # flo_client: a refusal frame with request id 0, OVERLOADED / SHARD_BUSY
    async def flo_client_ping() -> None:
        async with FloClient(sp.endpoint) as c:
            await c.kv.get("k")

    with pytest.raises(OverloadedError) as e:
        asyncio.run(flo_client_ping())
    assert "max number of clients reached" in str(e.value)

    # the public SDK surfaces the same refusal
    import flo

    async def sdk_ping() -> None:
        c = flo.FloClient(sp.endpoint)
        await c.connect()
        try:
            await c.kv.get("k")
        finally:
            await c.close()

    with pytest.raises(flo.exceptions.OverloadedError):
        asyncio.run(sdk_ping())

    # raw: the frame, then the close
    s = socket.create_connection(("127.0.0.1", sp.port), timeout=5)
    s.sendall(flo_ping(7))
    rid, status, body = flo_answer(s)
    assert (rid, status) == (0, Status.OVERLOADED)
    assert int.from_bytes(body[:2], "little") == Reason.SHARD_BUSY and body[2] == 0
    assert b"max number of clients reached" in body
    assert s.recv(1) == b""
    s.close()

    # a client that says nothing: Redis's line after a second, then the close
    s = socket.create_connection(("127.0.0.1", sp.port), timeout=5)
    t0 = time.monotonic()
    assert recv_exact(s, 36) == b"-ERR max number of clients reached\r\n"
    assert 0.5 < time.monotonic() - t0 < 3
    assert s.recv(1) == b""
    s.close()

    # one of the two leaves: a new client gets in
    held.pop().close()

    def ok() -> bool:
        try:
            c = redis.Redis(port=sp.port, socket_timeout=5)
            try:
                return c.ping()
            finally:
                c.close()
        except redis.exceptions.ConnectionError:
            return False

    wait_until(ok, timeout=5, interval=0.05)
    info = server_info_over_resp(sp.port)
    assert info["rejected_connections"] >= 5
    for s in held:
        s.close()


def server_info_over_resp(port: int) -> dict:
    r = redis.Redis(port=port)
    try:
        return r.info("stats")
    finally:
        r.close()


# --- many connections ---------------------------------------------------------------------------

N_IDLE = 10_000
BATCH = 500


@pytest.mark.slow
def test_ten_thousand_idle_connections(make_server):
    t_start = time.monotonic()
    sp = make_server("--max-connections", str(N_IDLE + 100))
    put_big(sp.port)
    # warm both protocols up (first-use imports and caches are not per-connection memory)
    latencies(sp.port, "flo", 20)
    latencies(sp.port, "resp", 20)
    time.sleep(0.2)
    base = rss_kib(sp.proc.pid)
    socks: list[socket.socket] = []
    ping_flo, ping_resp = flo_ping(1), resp(b"PING")
    try:
        for start in range(0, N_IDLE, BATCH):
            batch = [socket.create_connection(("127.0.0.1", sp.port), timeout=10) for _ in range(BATCH)]
            for i, s in enumerate(batch):
                s.sendall(ping_flo if (start + i) % 2 == 0 else ping_resp)
            for i, s in enumerate(batch):  # every one is served (and so set up on the server)
                if (start + i) % 2 == 0:
                    assert flo_answer(s)[:2] == (1, 0)
                else:
                    assert recv_exact(s, 7) == b"+PONG\r\n"
            socks += batch
        t_open = time.monotonic() - t_start
        wait_until(lambda: server_info(sp.port)["connections"] >= N_IDLE, timeout=10)
        time.sleep(0.2)
        full = rss_kib(sp.proc.pid)
        per_conn = (full - base) * 1024 / N_IDLE
        lat = latencies(sp.port, "flo", 200) + latencies(sp.port, "resp", 200)
        print(f"{N_IDLE} idle connections (half Flo, half RESP) opened in {t_open:.1f} s: RSS {base / 1024:.1f} -> "
              f"{full / 1024:.1f} MiB, {per_conn / 1024:.2f} KiB per connection; a new client's p99 "
              f"{p99(lat) * 1e3:.2f} ms over {len(lat)} GETs")
        assert per_conn < 16 * 1024, per_conn
        assert p99(lat) < 0.02, sorted(lat)[-5:]
    finally:
        for s in socks:
            s.close()
    wait_until(lambda: server_info(sp.port)["connections"] <= 1, timeout=20)
    # their objects are freed as each closes; a second after most are gone the server trims the heap
    # (on a busy machine later than that: wait for its log line, then for RSS)
    bound = base + max((full - base) // 4, 8 * 1024)
    try:
        wait_until(lambda: "memory given back" in sp.log(), timeout=10, interval=0.1)
        wait_until(lambda: rss_kib(sp.proc.pid) < bound, timeout=5, interval=0.1)
    finally:
        after = rss_kib(sp.proc.pid)
        print(f"closed: RSS {after / 1024:.1f} MiB (baseline {base / 1024:.1f} MiB); "
              f"test {time.monotonic() - t_start:.1f} s")
    assert time.monotonic() - t_start < 60

"""A real flo-server under fuzz: 20 connections of random and mutated Flo frames and RESP commands.

For ``FLO_FUZZ_LIVE_SECONDS`` (default 10) twenty raw connections send, in small bursts,
frames built from the Flo corpus (valid frames whose payloads are mutated, whole frames
mutated, garbage, a header that promises 8 MiB followed by 1 MiB and a hang-up) and
RESP (corpus commands, mutated ones, generated commands, an 8 MiB bulk cut short).
When the server closes one (a broken frame stream, a RESP protocol error) it reconnects.
Meanwhile a checker, ``flo_client.FloClient`` in a namespace of its own, keeps writing
and reading its keys, a counter, a queue and a stream and verifies every answer.

At the end: the server process is alive and answers, the checker saw no wrong answer and
no timeout, the server logged no traceback / internal error, and once the fuzz
connections are closed its RSS (``/proc/<pid>/status`` VmRSS) is within
``RSS_BOUND`` of the baseline taken before the fuzzing.

The baseline is taken after a warm-up that includes failed AUTHs: each scrypt check takes
16 MiB that its thread's malloc arena keeps (two such threads: ``auth._scrypt_pool``), a
fixed cost, not growth. Why +64 MiB then: the fuzzers' valid writes stay stored (keys,
stream records, queue messages, workers, runs - a few MiB in 10 s) and freed memory is
not always returned to the OS at once (allocator arenas, fragmentation). A leak would
not fit: the big-frame and big-bulk connections alone buffer 1 MiB each per attempt,
hundreds of attempts a run (~550 MB sent), and ~4,000 connections come and go.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import struct
import time
from collections import Counter

import pytest

from flo_client import FloClient
from flo_client.queue import DequeueOptions
from flo_client.stream import StreamReadOptions
from flo_core import _pyframe as pf
from flo_core.resp import encode_command
from flo_core.spec import HEADER_SIZE, Op
from tests.fuzz._fuzz import REPORT, apply_mutations, corpus, executed, flo_seeds, random_steps

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

SECONDS = float(os.environ.get("FLO_FUZZ_LIVE_SECONDS", "10"))
CONNECTIONS = 20
RSS_BOUND = 64 * 1024 * 1024
SEED = int(os.environ.get("FLO_FUZZ_SEED", "20261206"))
BIG = float(os.environ.get("FLO_FUZZ_BIG", "0.02"))  # share of bursts that are a big frame or bulk cut short

FLO = flo_seeds()
RESP = [data for _, data in corpus("resp")]
#: commands the RESP fuzzers may send: everything but what would touch the checker's data
#: (FLUSHALL, FLUSHDB, CLIENT KILL) or change the server (CONFIG SET)
RESP_NAMES = [b"GET", b"SET", b"DEL", b"INCR", b"INCRBY", b"APPEND", b"EXPIRE", b"TTL", b"PERSIST", b"GETEX", b"MGET",
              b"MSET", b"EXISTS", b"TYPE", b"SCAN", b"KEYS", b"XADD", b"XRANGE", b"XREVRANGE", b"XREAD", b"XLEN",
              b"XTRIM", b"XGROUP", b"XREADGROUP", b"XACK", b"XPENDING", b"XCLAIM", b"XAUTOCLAIM", b"JSON.SET",
              b"JSON.GET", b"JSON.DEL", b"JSON.TYPE", b"LPUSH", b"RPUSH", b"LPOP", b"RPOP", b"LRANGE", b"LLEN",
              b"LINDEX", b"PING", b"ECHO", b"HELLO", b"CLIENT", b"INFO", b"COMMAND", b"SELECT", b"TIME", b"DBSIZE",
              b"CONFIG", b"SLOWLOG", b"LATENCY", b"ACL", b"AUTH", b"STRLEN", b"GETSET", b"SETNX", b"NOPE"]
RESP_ARGS = [b"k", b"l", b"s", b"d", b"g", b"c", b"0", b"1", b"-1", b"10", b"9223372036854775807", b"*", b"$", b">",
             b"-", b"+", b"0-1", b"18446744073709551615-18446744073709551615", b"18446744073709551615-*", b"COUNT",
             b"BLOCK", b"STREAMS", b"MAXLEN", b"~", b"NX", b"XX", b"EX", b"PX", b"GET", b"MATCH", b"TYPE", b"GROUP",
             b"CREATE", b"MKSTREAM", b"JUSTID", b"$.a", b'["\\u12"]', b"[[[[[", b'{"a":[1]}', b"\xff\xfe", b"",
             b"LIST", b"INFO", b"SETNAME", b"GETNAME", b"100", b"3", b"WHOAMI", b"GET", b"slowlog-*"]


def rss(pid: int, field: str = "VmRSS") -> int:
    with open(f"/proc/{pid}/status") as f:
        m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
    assert m, field
    return int(m.group(1)) * 1024


def flo_burst(rng: random.Random) -> tuple[bytes, bool]:
    """Bytes for one burst of a Flo connection; True when the burst breaks the stream (expect a close)."""
    kind = rng.random()
    if kind < BIG:  # a header that promises 8 MiB, then 1 MiB of it, then we hang up
        head = pf.encode_request(rng.randrange(1 << 32), Op.KV_PUT, b"")[:HEADER_SIZE]
        head = head[:4] + struct.pack("<I", 8 << 20) + head[8:]
        return head + rng.randbytes(1 << 20), True
    frames = []
    for _ in range(rng.randint(1, 12)):
        name, op, payload = rng.choice(FLO)
        if rng.random() < 0.7:
            payload = apply_mutations(payload, random_steps(rng))
        if rng.random() < 0.05:
            op = rng.choice(FLO)[1]
        frames.append(pf.encode_request(rng.randrange(1 << 32), op, payload))
    data = b"".join(frames)
    if kind < 0.10:
        return apply_mutations(data, random_steps(rng, 2)), True  # probably broken framing
    if kind < 0.12:
        return rng.randbytes(rng.randrange(1, 200)), True
    return data, False


def resp_burst(rng: random.Random) -> tuple[bytes, bool]:
    kind = rng.random()
    if kind < BIG:  # an 8 MiB bulk, 1 MiB of it, hang-up
        return b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$8388608\r\n" + rng.randbytes(1 << 20), True
    if kind < 0.10:
        return apply_mutations(b"".join(rng.choices(RESP, k=2)), random_steps(rng)), True
    cmds = []
    for _ in range(rng.randint(1, 10)):
        if rng.random() < 0.2:
            cmds.append(rng.choice(RESP))
            continue
        args = [rng.choice(RESP_NAMES)] + [rng.choice(RESP_ARGS) for _ in range(rng.randint(0, 6))]
        if args[0] in (b"BLPOP", b"XREAD") or b"BLOCK" in args:
            args = [a if a != b"0" else b"1" for a in args]  # no wait forever
        cmds.append(encode_command(*args))
    return b"".join(cmds).replace(b"FLUSH", b"FLUSX"), False


async def fuzz_connection(i: int, port: int, deadline: float, stats: Counter) -> None:
    rng = random.Random(SEED * 100 + i)
    flo = i % 2 == 0
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            stats["connect_failed"] += 1
            await asyncio.sleep(0.05)
            continue
        stats["connections"] += 1

        async def drain() -> None:
            while True:
                data = await reader.read(1 << 16)
                if not data:
                    return
                stats["bytes_in"] += len(data)

        drainer = asyncio.ensure_future(drain())
        try:
            while time.monotonic() < deadline and not drainer.done():
                data, breaks = flo_burst(rng) if flo else resp_burst(rng)
                writer.write(data)
                await writer.drain()
                stats["bursts"] += 1
                stats["bytes_out"] += len(data)
                executed("live_flo" if flo else "live_resp")
                if breaks:
                    break  # hang up (or the server already did): start over
                await asyncio.sleep(rng.random() * 0.01)
        except (ConnectionError, OSError):
            stats["reset"] += 1
        finally:
            drainer.cancel()
            writer.close()
            try:
                await writer.wait_closed()
            except (ConnectionError, OSError):
                pass


async def checker(c: FloClient, deadline: float, stats: Counter, seen: dict) -> None:
    """Writes and reads its own data; every answer must be the right one."""
    counter = 0
    i = 0
    while time.monotonic() < deadline:
        t0 = time.monotonic()
        key = f"key{i % 100}"
        value = b"%d:" % i + os.urandom(8)
        await c.kv.put(key, value)
        got = await c.kv.get(key)
        assert got is not None and got.value == value, (key, got)
        seen[key] = value
        n = await c.kv.incr("counter")
        counter += 1
        assert int(n) == counter, (n, counter)
        if i % 5 == 0:
            payload = b"job-%d" % i
            await c.queue.enqueue("chkq", payload)
            res = await c.queue.dequeue("chkq", 1, DequeueOptions(block_ms=1000))
            assert [m.payload for m in res.messages] == [payload]
            await c.queue.ack("chkq", [res.messages[0].seq])
            rec = await c.stream.append("chks", payload)
            read = await c.stream.read("chks", StreamReadOptions(start=rec.id, count=1))
            assert [(r.id, r.payload) for r in read.records] == [(rec.id, payload)]
        stats["checks"] += 1
        stats["check_max_ms"] = max(stats["check_max_ms"], int((time.monotonic() - t0) * 1000))
        i += 1
    stats["counter"] = counter


async def _failed_auth(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    value = struct.pack("<I", 5) + b"wrong" + b"\x00\x00"
    writer.write(pf.encode_request(1, Op.AUTH, struct.pack("<H", 0) + struct.pack("<H", 6) + b"nobody" + value))
    await writer.drain()
    await reader.read(1 << 16)
    writer.close()


async def test_live_server_survives_fuzzing(make_server) -> None:
    sp = make_server()
    pid = sp.proc.pid
    ns = "chk-" + os.urandom(6).hex()
    stats: Counter = Counter()
    seen: dict = {}
    async with FloClient(sp.endpoint, namespace=ns, timeout_ms=5000) as c:
        for k in range(50):  # warm up: the code paths and the allocator the run will use
            await c.kv.put(f"warm{k}", b"x" * 100)
        await c.stream.append("chks", b"warm")
        await asyncio.gather(*(_failed_auth(sp.port) for _ in range(4)))  # the password threads' scrypt memory
        await asyncio.sleep(0.3)
        baseline = rss(pid)
        deadline = time.monotonic() + SECONDS
        tasks = [asyncio.ensure_future(fuzz_connection(i, sp.port, deadline, stats)) for i in range(CONNECTIONS)]
        await checker(c, deadline, stats, seen)
        await asyncio.gather(*tasks)
        # the fuzz connections are closed: wait until the server has let go of them
        for _ in range(100):
            if (await c.server_info())["connections"] <= 2:  # the checker: its main and its blocking connection
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
        after, peak = rss(pid), rss(pid, "VmHWM")
        assert sp.proc.poll() is None, "flo-server died"
        await c.ping()
        for key, value in seen.items():  # everything the checker wrote is still there, unchanged
            got = await c.kv.get(key)
            assert got is not None and got.value == value
        assert int(await c.kv.incr("counter")) == stats["counter"] + 1
    log = sp.log()
    if os.environ.get("FLO_FUZZ_SERVER_LOG"):  # keep the server's output for a look
        with open(os.environ["FLO_FUZZ_SERVER_LOG"], "w") as f:
            f.write(log)
    REPORT.append(f"live fuzz: {SECONDS:.0f} s, {stats['connections']} connections, {stats['bursts']} bursts, "
          f"{stats['bytes_out'] / 1e6:.1f} MB sent, {stats['bytes_in'] / 1e6:.1f} MB answers; checker "
          f"{stats['checks']} rounds (slowest {stats['check_max_ms']} ms); RSS baseline {baseline / 2**20:.1f} MiB, "
          f"after {after / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB")
    print("\n" + REPORT[-1])
    for bad in ("Traceback", "internal error", "Fatal error", "failed", "never awaited"):
        assert bad not in log, f"server log has {bad!r}:\n{log[-4000:]}"
    assert stats["checks"] > 0 and stats["bursts"] > 100
    assert after <= baseline + RSS_BOUND, f"RSS {after} after the fuzzing, baseline {baseline}"

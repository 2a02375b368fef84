"""Durability: restarts, kill -9, torn tails, corruption, snapshots + replay, the crash test under fsync=always."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time

import msgpack
import pytest

from flo_client.client import FloClient
from flo_client.queue import DequeueOptions, EnqueueOptions
from flo_core.errors import FloError
from flo_core.log import RECORD_HEADER, LogReader, list_segments
from flo_server.app import Server
from flo_server.config import ServerConfig
from flo_server.persistence import list_snapshots, open_journal
from tests.helpers import ROOT, wait_for

pytestmark = pytest.mark.integration

def flo_server_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "flo_server", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


async def kv_state(endpoint: str, keys: list[str]) -> dict[str, tuple[bytes, int] | None]:
    async with FloClient(endpoint) as c:
        out = {}
        for k in keys:
            r = await c.kv.get(k)
            out[k] = (r.value, r.version) if r is not None else None
        return out


# --- restarts -------------------------------------------------------------------------


async def test_restart_keeps_kv_and_queue_state(make_server):
    sp = make_server(fsync="everysec")
    async with FloClient(sp.endpoint) as c:
        for i in range(50):
            await c.kv.put(f"k{i}", f"v{i}".encode())
        await c.kv.put("k7", b"again")
        await c.kv.delete("k8")
        await c.kv.put("ttl", b"x", ttl_seconds=3600)
        await c.kv.incr("counter", 5)
        for i in range(5):
            await c.queue.enqueue("jobs", f"job{i}".encode(), EnqueueOptions(priority=i % 2))
        leased = await c.queue.dequeue("jobs", 2, DequeueOptions(lease_ms=600_000))
        await c.queue.ack("jobs", [leased.messages[0].seq])
    keys = [f"k{i}" for i in range(50)] + ["ttl", "counter"]
    before = await kv_state(sp.endpoint, keys)
    sp.restart()  # clean stop (final snapshot) then start
    assert await kv_state(sp.endpoint, keys) == before
    sp.restart(kill=True)  # kill -9: snapshot from the clean stop + replay of nothing
    after = await kv_state(sp.endpoint, keys)
    assert after == before and after["k8"] is None and after["k7"][0] == b"again"
    async with FloClient(sp.endpoint) as c:
        ttl = await c.kv.get("ttl")
        assert ttl is not None and ttl.value == b"x"
        # the acked message is gone, the leased one still leased, the other three deliverable
        got = await c.queue.dequeue("jobs", 10)
        payloads = sorted(m.payload for m in got.messages)
        leased_payloads = {m.payload for m in leased.messages}
        assert len(payloads) == 3 and not leased_payloads & set(payloads)
        # versions keep rising after a restart: the next LSN follows the recovered one
        r = await c.kv.put("k0", b"new")
        assert r.version > max(v[1] for v in after.values() if v)


async def test_kill9_under_everysec_keeps_acknowledged_writes(make_server):
    """Each loop iteration's writes reach the OS before answers go out, so kill -9 loses none."""
    sp = make_server(fsync="everysec")
    async with FloClient(sp.endpoint) as c:
        versions = {f"e{i}": (await c.kv.put(f"e{i}", b"%d" % i)).version for i in range(200)}
    sp.restart(kill=True)
    state = await kv_state(sp.endpoint, list(versions))
    assert {k: v[1] for k, v in state.items()} == versions
    assert "torn" not in sp.log()


async def test_ttl_that_lapsed_while_down_is_gone_after_start(make_server):
    sp = make_server()
    async with FloClient(sp.endpoint) as c:
        await c.kv.put("short", b"x", ttl_ms=300)
        await c.kv.put("long", b"y", ttl_seconds=3600)
    sp.kill()
    deadline_passed = time.time() + 0.4
    while time.time() < deadline_passed:  # wait out the TTL while the server is down
        await asyncio.sleep(0.05)
    sp.start()
    async with FloClient(sp.endpoint) as c:
        assert await c.kv.get("short") is None
        assert (await c.kv.get("long")).value == b"y"


# --- damaged logs ---------------------------------------------------------------------


async def test_torn_tail_is_truncated_with_a_warning(make_server):
    sp = make_server(fsync="always")
    async with FloClient(sp.endpoint) as c:
        for i in range(20):
            await c.kv.put(f"t{i}", b"v%d" % i)
    sp.kill()
    (_, seg), *_ = reversed(list_segments(sp.data_dir / "log"))
    reader = LogReader(str(sp.data_dir / "log"))
    last = list(reader)[-1]
    size = reader.offset + RECORD_HEADER + len(last[2])  # the end of the last record
    assert os.path.getsize(seg) > size  # the writer's zero-filled room follows it
    with open(seg, "r+b") as f:
        f.seek(size)
        f.write(b"\x40\x00\x00\x00garbage-of-a-half-written-record")  # a record cut short
    sp.start()
    assert "torn log tail" in sp.log()
    assert os.path.getsize(seg) == size
    state = await kv_state(sp.endpoint, [f"t{i}" for i in range(20)])
    assert all(state[f"t{i}"][0] == b"v%d" % i for i in range(20))
    async with FloClient(sp.endpoint) as c:
        await c.kv.put("after", b"ok")
    sp.restart(kill=True)
    assert (await kv_state(sp.endpoint, ["after"]))["after"][0] == b"ok"


async def test_mid_log_corruption_stops_start_until_repaired(make_server, tmp_path):
    sp = make_server(fsync="always")
    async with FloClient(sp.endpoint) as c:
        for i in range(20):
            await c.kv.put(f"c{i}", b"x" * 30)
    sp.kill()
    (_, seg), = list_segments(sp.data_dir / "log")
    reader = LogReader(sp.data_dir / "log")
    offsets = [reader.offset for _ in reader]  # byte offset of each record, in LSN order
    bad_off = offsets[10]  # the record of c10
    with open(seg, "r+b") as f:
        f.seek(bad_off + 20)
        b = f.read(1)
        f.seek(bad_off + 20)
        f.write(bytes([b[0] ^ 0xFF]))
    # Start-up must stop (non-zero exit) naming the file and the offset.
    bad = subprocess.run([sys.executable, "-m", "flo_server", "--host", "127.0.0.1", "--port", "0",
                          "--data-dir", str(sp.data_dir), "--no-executor"],
                         capture_output=True, text=True, timeout=30, cwd=ROOT)
    said = bad.stdout + bad.stderr
    assert bad.returncode != 0 and str(seg) in said and f"offset {bad_off}" in said, said
    check = flo_server_cli("check-log", str(sp.data_dir))
    assert check.returncode == 1 and f"offset {bad_off}" in check.stdout, check.stdout
    fixed = flo_server_cli("check-log", str(sp.data_dir), "--repair")
    assert fixed.returncode == 0, fixed.stdout
    assert flo_server_cli("check-log", str(sp.data_dir)).returncode == 0
    sp.start()
    state = await kv_state(sp.endpoint, [f"c{i}" for i in range(20)])
    present = [k for k, v in state.items() if v is not None]
    assert present == [f"c{i}" for i in range(10)]  # records before the damage survive


def test_check_log_and_dump_log(tmp_path):
    async def fill() -> None:
        srv = Server(ServerConfig(data_dir=str(tmp_path), fsync="no"))
        srv.journal = open_journal(srv, srv.config)
        now = srv.now()
        srv.write("kv.set", now, "default", b"a", b"1", 0)
        srv.write("kv.del", now, "default", b"a")
        srv.journal.writer.flush()
        srv.journal.close()

    asyncio.run(fill())
    out = flo_server_cli("check-log", str(tmp_path))
    assert out.returncode == 0 and "records: 2" in out.stdout and "kv.set=1" in out.stdout, out.stdout
    dump = flo_server_cli("dump-log", str(tmp_path), "--offsets")
    lines = dump.stdout.splitlines()
    assert lines[0].startswith("1\tkv.set\t") and "b'a'" in lines[0] and lines[0].endswith(":0")
    assert lines[1].startswith("2\tkv.del\t")


# --- snapshots + replay equal the live state ------------------------------------------


def _normal(state):
    return msgpack.unpackb(msgpack.packb(state, use_bin_type=True), raw=False, strict_map_key=False)


async def test_snapshot_plus_replay_equals_live_state(tmp_path):
    """In-process: drive every primitive through real clients, then recover a second Server from the dir."""
    import flo

    cfg = ServerConfig(host="127.0.0.1", port=0, data_dir=str(tmp_path), fsync="everysec", snapshot_bytes=64 * 1024)
    srv = Server(cfg)
    await srv.start()
    ep = f"127.0.0.1:{srv.port}"
    try:
        async with FloClient(ep) as c:
            sdk = flo.FloClient(ep)
            await sdk.connect()
            try:
                for i in range(1500):
                    await c.kv.put(f"key{i % 300}", os.urandom(40), ttl_seconds=3600 if i % 5 == 0 else None)
                    if i % 7 == 0:
                        await c.kv.delete(f"key{(i * 3) % 300}")
                    if i % 3 == 0:
                        await c.queue.enqueue("q", b"m%d" % i, EnqueueOptions(priority=i % 4))
                    if i % 11 == 0:
                        got = await c.queue.dequeue("q", 2, DequeueOptions(lease_ms=60_000))
                        if got.messages:
                            await c.queue.ack("q", [got.messages[0].seq])
                    if i % 4 == 0:
                        await sdk.stream.append("events", b"e%d" % i)
                    if i == 750:
                        await sdk.stream.group_join("events", "g", "worker-1")
                    if i > 750 and i % 50 == 0:
                        await sdk.stream.group_read("events", "g", "worker-1")
                    if i == 900:
                        await wait_for(lambda: srv.journal.snapshots >= 2, what="two snapshots")
            finally:
                await sdk.close()
        await wait_for(lambda: srv.journal._snapshot_inflight is None, what="snapshot to finish")
        journal = srv.journal
        assert journal.snapshots >= 2 and journal.snapshot_lsn > 0
        assert len(list_snapshots(str(tmp_path))) == 2
        assert list_segments(tmp_path / "log")[0][0] > 1  # segments below the snapshots were removed
        assert journal.snapshot_lsn < journal.last_lsn  # so recovery is snapshot + replay
        live = _normal({name: store.dump() for name, store in srv.stores.items()})
        journal.writer.flush()
        # "Crash": give up the data dir lock without the clean-shutdown snapshot.
        from flo_server.persistence import _unlock

        _unlock(journal)
        srv2 = Server(ServerConfig(data_dir=str(tmp_path), fsync="no"))
        srv2.journal = open_journal(srv2, srv2.config)
        try:
            assert srv2.journal.last_lsn == journal.last_lsn
            recovered = _normal({name: store.dump() for name, store in srv2.stores.items()})
            assert recovered.keys() == live.keys()
            for name in live:
                assert recovered[name] == live[name], f"store {name} differs after snapshot + replay"
        finally:
            srv2.journal.closed = True  # leave the dir as it is; srv closes it below
            srv2.journal.writer.close()
            from flo_server.persistence import _unlock as unlock2

            unlock2(srv2.journal)
    finally:
        await srv.stop()


async def test_always_holds_answers_until_fsync(tmp_path):
    """Group commit: many writes of one iteration share one fsync, and answers wait for it."""
    cfg = ServerConfig(host="127.0.0.1", port=0, data_dir=str(tmp_path), fsync="always")
    srv = Server(cfg)
    await srv.start()
    try:
        clients = [FloClient(f"127.0.0.1:{srv.port}") for _ in range(8)]
        for c in clients:
            await c.connect()
        synced_at_answer = []

        async def writer(c: FloClient, w: int) -> None:
            for i in range(50):
                r = await c.kv.put(f"w{w}:{i}", b"x")
                synced_at_answer.append(srv.journal.writer.synced_lsn >= r.version)

        await asyncio.gather(*(writer(c, w) for w, c in enumerate(clients)))
        for c in clients:
            await c.close()
        assert all(synced_at_answer)
        st = srv.journal.stats()
        assert st["syncs"] < 400  # 400 writes, fewer fsyncs: they were grouped
    finally:
        await srv.stop()


async def test_snapshots_wait_for_as_much_log_as_the_last_snapshot_holds(tmp_path):
    """Snapshot work stays proportional to writes: after a snapshot of S bytes the next one
    waits for max(snapshot_bytes, S) bytes of log (Redis's auto-aof-rewrite-percentage 100)."""
    cfg = ServerConfig(host="127.0.0.1", port=0, data_dir=str(tmp_path), fsync="no", snapshot_bytes=16 * 1024)
    srv = Server(cfg)
    await srv.start()
    try:
        async with FloClient(f"127.0.0.1:{srv.port}") as c:
            await c.kv.put_many([(f"big{i}", os.urandom(1000)) for i in range(200)])  # ~200 KB of state
            await wait_for(lambda: srv.journal.snapshots >= 1 and srv.journal._snapshot_inflight is None,
                           what="the first snapshot")
            j = srv.journal
            size = j.last_snapshot_size
            assert size > 200_000 and j.stats()["last_snapshot_size"] == size
            first = j.snapshots
            n = 0
            while j.bytes_since_snapshot < size // 2:  # far past snapshot_bytes, under the snapshot's size
                await c.kv.put(f"small{n % 50}", b"y" * 500)
                n += 1
            assert j.bytes_since_snapshot > 4 * cfg.snapshot_bytes
            assert j.snapshots == first and j._snapshot_inflight is None
            while j.snapshots == first and j._snapshot_inflight is None:
                await c.kv.put(f"small{n % 50}", b"y" * 500)
                n += 1
            assert n * 500 > size // 2  # it came once the log reached the snapshot's size
    finally:
        await srv.stop()


# --- the crash test ---------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_crash_kill9_under_fsync_always(make_server):
    """Concurrent writers, kill -9 at random moments, several rounds.

    After every restart: every acknowledged write is there (KV puts with their
    versions, transactions, queue messages), and nothing unacknowledged is half
    applied (a transaction's two keys are both there or both absent; a writer's
    keys form a prefix: at most its one in-flight write beyond what it saw acked).
    """
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    sp = make_server(fsync="always")
    acked_kv: dict[str, tuple[bytes, int]] = {}
    attempted_kv: dict[str, bytes] = {}
    acked_txn: set[str] = set()
    attempted_txn: set[str] = set()
    acked_q: set[bytes] = set()
    writers = 6

    async def kv_writer(w: int, rnd: int) -> None:
        async with FloClient(sp.endpoint, timeout_ms=3000) as c:
            for i in range(10_000):
                key, value = f"r{rnd}:w{w}:{i}", os.urandom(16) + b"%d" % i
                attempted_kv[key] = value
                r = await c.kv.put(key, value)
                acked_kv[key] = (value, r.version)

    async def txn_writer(rnd: int) -> None:
        async with FloClient(sp.endpoint, timeout_ms=3000) as c:
            for i in range(10_000):
                name = f"r{rnd}:t{i}"
                txn = await c.kv.begin(name)
                await txn.put(f"{name}:a", b"A")
                await txn.put(f"{name}:b", b"B")
                attempted_txn.add(name)
                await txn.commit()
                acked_txn.add(name)

    async def queue_writer(rnd: int) -> None:
        async with FloClient(sp.endpoint, timeout_ms=3000) as c:
            for i in range(10_000):
                payload = b"r%d:m%d" % (rnd, i)
                await c.queue.enqueue("crash-q", payload)
                acked_q.add(payload)

    for rnd in range(4):
        target = len(acked_kv) + rng.randint(50, 600)
        tasks = [asyncio.ensure_future(kv_writer(w, rnd)) for w in range(writers)]
        tasks += [asyncio.ensure_future(txn_writer(rnd)), asyncio.ensure_future(queue_writer(rnd))]
        await wait_for(lambda: len(acked_kv) >= target or any(t.done() for t in tasks), timeout=30,
                       what="writers to make progress")
        assert not any(t.done() for t in tasks), [t.exception() for t in tasks if t.done()]
        sp.kill()  # kill -9 while every writer has a request in flight
        print(f"round {rnd}: kill -9 after {len(acked_kv)} puts, {len(acked_txn)} txns, {len(acked_q)} enqueues acked")
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, (FloError, ConnectionError, OSError)) for r in results), results
        sp.start()

        state = await kv_state(sp.endpoint, list(attempted_kv))
        for key, (value, version) in acked_kv.items():
            assert state[key] == (value, version), f"acknowledged {key} lost or changed after round {rnd}"
        for key, got in state.items():
            assert got is None or got[0] == attempted_kv[key]
        for w in range(writers):  # per writer: a prefix, at most one unacknowledged extra
            present = [i for i in range(10_000) if state.get(f"r{rnd}:w{w}:{i}")]
            assert present == list(range(len(present)))
            acked_n = sum(1 for k in acked_kv if k.startswith(f"r{rnd}:w{w}:"))
            assert acked_n <= len(present) <= acked_n + 1
        txn_state = await kv_state(sp.endpoint, [f"{n}:{s}" for n in attempted_txn for s in "ab"])
        for name in attempted_txn:
            a, b = txn_state[f"{name}:a"], txn_state[f"{name}:b"]
            assert (a is None) == (b is None), f"transaction {name} half applied"
            if name in acked_txn:
                assert a is not None and a[1] == b[1], f"acknowledged transaction {name} lost"
        async with FloClient(sp.endpoint) as c:
            seen = {m.payload for m in (await c.queue.peek("crash-q", 100_000)).messages}
        assert acked_q <= seen, f"acknowledged messages lost: {sorted(acked_q - seen)[:5]}"
    sp.stop()
    check = flo_server_cli("check-log", str(sp.data_dir))
    assert check.returncode == 0, check.stdout


# --- in-process: snapshot fallback, data dir lock -------------------------------------


def _crash(srv: Server) -> None:
    """Drop a journal the way kill -9 would: no final snapshot, the lock released."""
    from flo_server.persistence import _unlock

    srv.journal.writer.flush()
    srv.journal.closed = True
    srv.journal.writer.close(sync=False)
    _unlock(srv.journal)


def _state(srv: Server) -> dict:
    return _normal({name: store.dump() for name, store in srv.stores.items()})


async def test_damaged_newest_snapshot_falls_back_to_the_older_one(tmp_path):
    cfg = ServerConfig(data_dir=str(tmp_path), fsync="no", snapshot_bytes=1 << 30)
    srv = Server(cfg)
    srv.journal = open_journal(srv, cfg)
    now = srv.now()
    for rnd in range(3):
        for i in range(200):
            srv.write("kv.set", now, "default", b"k%d" % i, b"r%d-%d" % (rnd, i), 0)
        srv.write("kv.del", now, "default", b"k%d" % rnd)
        if rnd < 2:
            srv.journal.snapshot_now()
    live = _state(srv)
    _crash(srv)
    (newest_lsn, newest), (older_lsn, _) = list_snapshots(str(tmp_path))
    with open(newest, "r+b") as f:  # flip a byte in the body: CRC mismatch
        f.seek(100)
        b = f.read(1)
        f.seek(100)
        f.write(bytes([b[0] ^ 1]))
    srv2 = Server(cfg)
    srv2.journal = open_journal(srv2, cfg)
    try:
        assert srv2.journal.snapshot_lsn == older_lsn < newest_lsn
        assert _state(srv2) == live
        assert srv2.journal.last_lsn == srv.journal.last_lsn
    finally:
        srv2.journal.close()


async def test_data_dir_is_locked(tmp_path):
    from flo_server.persistence import RecoveryError

    cfg = ServerConfig(data_dir=str(tmp_path), fsync="everysec")
    srv = Server(cfg)
    srv.journal = open_journal(srv, cfg)
    try:
        with pytest.raises(RecoveryError, match="in use"):
            open_journal(Server(cfg), cfg)
    finally:
        srv.journal.close()
    other = Server(cfg)
    other.journal = open_journal(other, cfg)  # free again after close
    other.journal.close()


async def test_a_failed_log_write_stops_writes_on_every_path_until_it_recovers(tmp_path):
    """everysec: while the log cannot be written, writes are refused - the C request loops of
    both protocols included (they read the journal's state off the writer) - and reads go on;
    once a retry succeeds, writes are taken again. Every appended byte counts toward a snapshot."""
    import redis.asyncio as aioredis

    from flo_server.persistence import StorageFailure

    cfg = ServerConfig(host="127.0.0.1", port=0, data_dir=str(tmp_path), fsync="everysec")
    srv = Server(cfg)
    await srv.start()
    r = aioredis.Redis(host="127.0.0.1", port=srv.port)
    try:
        async with FloClient(f"127.0.0.1:{srv.port}") as c:
            j = srv.journal
            before = j.bytes_since_snapshot
            await c.kv.put("k", b"v1")  # C path
            await c.kv.incr("n")  # C path
            assert await r.set("rk", b"r1")  # RESP C path
            assert j.bytes_since_snapshot > before
            assert j.bytes_since_snapshot == j.writer.bytes_appended - j._snap_base
            j.failed = StorageFailure("write", OSError(5, "disk gone (test)"))  # what _storage_failed records
            assert not j.writer.accepting
            with pytest.raises(FloError, match="STORAGE_ERROR: log write failed: disk gone"):
                await c.kv.put("k", b"v2")
            with pytest.raises(FloError, match="STORAGE_ERROR"):
                await c.kv.incr("n")
            with pytest.raises(Exception, match="MISCONF Errors writing to the AOF file: disk gone"):
                await r.set("rk", b"r2")
            with pytest.raises(Exception, match="MISCONF"):
                await r.incr("rn")
            assert (await c.kv.get("k")).value == b"v1"  # reads go on
            assert await r.get("rk") == b"r1"
            j.failed = None  # a retry succeeded (_retry_storage)
            assert j.writer.accepting
            await c.kv.put("k", b"v3")
            assert await r.set("rk", b"r3")
            assert (await c.kv.get("k")).value == b"v3" and await r.get("rk") == b"r3"
    finally:
        await r.aclose()
        await srv.stop()

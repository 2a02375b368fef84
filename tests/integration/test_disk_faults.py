"""Disk full and I/O errors: writes refused with a clear error, reads go on, nothing acknowledged is lost,
writes resume by themselves.

Disk full is real: the data dir sits on a small tmpfs that a ballast file fills (mounting needs
root / CAP_SYS_ADMIN, as CI runs; elsewhere these tests skip and say why). EIO cannot come from a
tmpfs, so it is injected with ``FLO_FAULT`` (flo_server/faults.py) at the log's write, fdatasync
and rotation steps, and at the snapshot's write and rename. After each fault the server is
killed with kill -9 and restarted, and ``tests/durable_oracle.py`` checks every acknowledged write.
"""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from flo_client import FloClient
from flo_core.errors import UnavailableError
from flo_core.spec import Ran, Reason
from flo_server.persistence import list_snapshots
from tests.durable_oracle import Oracle
from tests.helpers import ServerProc, wait_for

pytestmark = pytest.mark.integration

DISK_FULL = "STORAGE_ERROR: log write failed: No space left on device (writes refused until it succeeds)"
MISCONF = "MISCONF Errors writing to the AOF file: No space left on device"


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A 16 MiB tmpfs mounted for this test (unmounted after), or a skip saying why there is none."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CAP_SYS_ADMIN); CI runs as root")
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs", str(mnt)],
                       capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); CI runs as root")
    try:
        yield mnt
    finally:
        if subprocess.run(["umount", str(mnt)], capture_output=True, timeout=30).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def fill(mnt: Path) -> Path:
    """Write a ballast file until the file system is full (ENOSPC); returns its path."""
    path = mnt / "ballast"
    with open(path, "wb", buffering=0) as f:
        for chunk in (b"\0" * (1 << 20), b"\0" * 4096):
            while True:
                try:
                    f.write(chunk)
                except OSError as e:
                    assert e.errno == errno.ENOSPC
                    break
    return path


async def journal(c: FloClient) -> dict:
    return (await c.server_info())["journal"]


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def warnings(sp: ServerProc) -> tuple[int, int]:
    """(lines saying the log started failing, lines saying it works again)."""
    log = sp.log()
    return log.count("WARNING flo_server.persistence: STORAGE_ERROR"), log.count("works again after")


# --- disk full on a real tmpfs -----------------------------------------------------------------


@pytest.mark.parametrize("fsync", ["always", "everysec"])
async def test_disk_full_refuses_writes_keeps_reads_and_resumes(small_tmpfs: Path, fsync: str) -> None:
    from flo import FloClient as SdkClient
    from flo.exceptions import UnavailableError as SdkUnavailable
    from flo.retry import RetryPolicy

    sp = ServerProc(small_tmpfs / "data", "--http-port", "-1", fsync=fsync).start()
    r = aioredis.Redis(host="127.0.0.1", port=sp.port)
    oracle = Oracle()
    try:
        # (max_retries=1: flo_client would retry an UNAVAILABLE refusal with backoff; we want to see it)
        async with FloClient(sp.endpoint, timeout_ms=60_000) as c, FloClient(sp.endpoint, max_retries=1) as watcher:
            assert await oracle.run(c, 6)
            assert await r.set("rk", "before")
            ballast = fill(small_tmpfs)
            # The log keeps zero-filled room ahead of its data (flo_core.log): big puts use it up
            # until a flush finds no space. That put is not answered - it is held for the retry.
            big_versions: dict[str, int] = {}
            held: asyncio.Task | None = None
            for i in range(200):
                put = asyncio.ensure_future(c.kv.put(f"big{i}", b"%06d" % i * 10_000))

                async def settled() -> bool:
                    return put.done() or bool((await journal(watcher))["storage_error"])

                await wait_for(settled, timeout=30, what="the put's answer or a failing log")
                if not put.done():
                    held = put
                    break
                big_versions[f"big{i}"] = put.result().version
            assert held is not None, "the disk never filled"
            j = await journal(watcher)
            assert j["storage_error"] == DISK_FULL and j["failed"] == DISK_FULL

            # New writes are refused at once on every path, with a status the public SDK knows.
            # (On other connections: the answers of c's connection leave in order, after the held one.)
            w = watcher
            for write in (lambda: w.kv.put("new", b"v"), lambda: w.kv.incr("n"),
                          lambda: w.queue.enqueue("jobs", b"x"), lambda: w.stream.append("events", b"x")):
                with pytest.raises(UnavailableError) as refused:
                    await write()
                assert refused.value.message == DISK_FULL
                assert refused.value.reason == Reason.WRITES_STOPPED and refused.value.ran == Ran.NO
            async with SdkClient(sp.endpoint, retry=RetryPolicy(max_attempts=1)) as sdk:
                with pytest.raises(SdkUnavailable, match="STORAGE_ERROR"):
                    await sdk.kv.put("sdk", b"v")
            for cmd in (("SET", "rk", "x"), ("INCR", "rn"), ("LPUSH", "rl", "x"), ("XADD", "rs", "*", "f", "v")):
                with pytest.raises(redis.ResponseError) as resp_refused:
                    await r.execute_command(*cmd)
                assert str(resp_refused.value) == MISCONF

            # reads go on: GET (both protocols), scan, queue peek, stream read
            assert await r.get("rk") == b"before"
            for key, (value, version) in list(oracle.kv_acked.items())[:10]:
                got = await w.kv.get(key)
                assert (got.value, got.version) == (value, version)
            assert len((await w.kv.scan("k", limit=100)).names) == 40
            assert (await w.queue.peek("jobs", 5)).messages
            assert len(await w.stream.read("events")) > 0

            # health and INFO say so; the log warned once
            status, body = http_get(sp.http_port, "/readyz")
            assert (status, body.strip()) == (503, DISK_FULL)
            assert http_get(sp.http_port, "/healthz")[0] == 200
            assert (await r.info("persistence"))["aof_last_write_status"] == "err"
            assert "flo_log_failed 1.0" in http_get(sp.http_port, "/metrics")[1]
            await wait_for(lambda: warnings(sp) == (1, 0), what="one warning line")
            assert not held.done(), "answered while its record is not in the log"

            # space comes back: the held put is answered and writes resume, no restart
            ballast.unlink()
            t0 = time.monotonic()
            big_versions[f"big{i}"] = (await asyncio.wait_for(held, 30)).version
            print(f"\n{fsync}: {len(big_versions)} big puts filled the log's room; the held one answered "
                  f"{time.monotonic() - t0:.2f}s after the ballast went")
            await wait_for(lambda: http_get(sp.http_port, "/readyz")[0] == 200, timeout=10, what="ready again")
            assert (await c.kv.put("new", b"v")).version > big_versions[f"big{i}"]
            assert await r.set("rk", "after")
            assert await oracle.run(c, 10, first=6)
            j = await journal(watcher)
            assert j["storage_error"] is None and j["storage_failures"] == 1 and j["storage_retries"] >= 1
            await wait_for(lambda: warnings(sp) == (1, 1), what="one line when it failed, one when it recovered")
        sp.kill()
        sp.start()
        async with FloClient(sp.endpoint) as c:
            await oracle.check(c)
            for key, version in big_versions.items():
                assert (await c.kv.get(key)).version == version
            assert (await c.kv.get("new")).value == b"v"
            await oracle.check_versions_rise(c)
        assert await r.get("rk") == b"after"
    finally:
        await r.aclose()
        sp.stop()


# --- EIO (and ENOSPC) at each step of the log, injected -------------------------------------------

FAULT_CASES = [
    ("eio:log.write:6:4", "always"),
    ("eio:log.write:6:4", "everysec"),
    ("eio:log.fsync:6:6", "always"),  # six in a row: ~0.6 s of failing, long enough to be refused in
    ("eio:log.fsync:1:3", "everysec"),  # the once-a-second fdatasync; the answers had left already
    ("eio:log.roll:1:4", "always"),  # cutting + syncing the full segment
    ("enospc:log.roll.create:1:4", "everysec"),  # the old segment closed, the new one cannot be made
]


@pytest.mark.parametrize("fault,fsync", FAULT_CASES)
async def test_injected_io_errors_are_retried_and_lose_nothing(tmp_path: Path, fault: str, fsync: str) -> None:
    """While the fault lasts, writes are refused and the records taken before it are held; then the
    retry gets them into the log (after a failed fdatasync, written again first), writes resume, and
    after kill -9 every acknowledged write is there and the log checks clean."""
    from click.testing import CliRunner

    from flo_server.persistence import check_log_cmd

    sp = ServerProc(tmp_path / "data", "--snapshot-bytes", "131072", fsync=fsync, env={"FLO_FAULT": fault}).start()
    oracle = Oracle()
    stop = asyncio.Event()

    async def prober(c: FloClient) -> None:
        i = 0
        while not stop.is_set():  # a second writer: its writes meet the failing log too
            await oracle._put(c, f"p{i % 10}", b"p%d" % i)
            i += 1

    saw_failing = []

    async def refused_while_failing(w: FloClient) -> None:
        while not stop.is_set():  # a third: once the log fails, a new write on a free connection is refused
            if (await journal(w))["storage_error"]:
                saw_failing.append(1)
                await oracle._put(w, "late", b"late%d" % len(saw_failing))
            await asyncio.sleep(0.005)

    try:
        async with (FloClient(sp.endpoint, timeout_ms=60_000) as c, FloClient(sp.endpoint) as c2,
                    FloClient(sp.endpoint, max_retries=1) as c3):
            probe = asyncio.ensure_future(prober(c2))
            late = asyncio.ensure_future(refused_while_failing(c3))
            deadline = time.monotonic() + 30
            rounds = 0
            while True:
                assert await oracle.run(c, rounds + 5, first=rounds)
                rounds += 5
                j = await journal(c)
                if j["storage_failures"] and j["storage_error"] is None:
                    break
                assert time.monotonic() < deadline, f"the fault never came and went: {j}\n{sp.log()}"
            stop.set()
            await asyncio.wait_for(probe, 30)
            await asyncio.wait_for(late, 30)
            assert await oracle.run(c, rounds + 3, first=rounds)
            j = await journal(c)
            # (a fault window can outlast one failure: an fdatasync already queued may succeed first)
            assert j["storage_failures"] >= 1 and j["storage_retries"] >= int(fault.split(":")[3]) - 1
            await wait_for(lambda: warnings(sp) == (j["storage_failures"],) * 2, what="a line per failure and recovery")
            assert all(m.startswith("STORAGE_ERROR: log ") and "Input/output error" in m or "No space" in m
                       for m in oracle.refusals), oracle.refusals
            if fault.endswith(":6"):  # (under heavy load the watcher may not get a turn while it fails)
                assert oracle.refusals or not saw_failing, "no write was refused during ~0.6 s of failing"
            print(f"\n{fault} {fsync}: {oracle.acks} answers, {len(oracle.refusals)} refused, "
                  f"{j['storage_retries']} retries")
        sp.kill()
        out = CliRunner().invoke(check_log_cmd, [str(sp.data_dir)])
        assert out.exit_code == 0 and "OK" in out.output, out.output
        sp.env = {}
        sp.start()
        async with FloClient(sp.endpoint) as c:
            await oracle.check(c)
            await oracle.check_versions_rise(c)
    finally:
        stop.set()
        sp.stop()


# --- snapshots that fail -----------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["enospc:snap.write:2", "eio:snap.rename:2"])
async def test_a_failed_snapshot_leaves_the_log_and_the_older_snapshot_alone(tmp_path: Path, fault: str) -> None:
    """The second snapshot fails half written (ENOSPC) or at its rename (EIO): its temp file is gone,
    the first snapshot is byte for byte what it was, no segment was dropped for it, writes never
    stopped; the next snapshot succeeds; after kill -9 everything acknowledged is there."""
    sp = ServerProc(tmp_path / "data", "--snapshot-bytes", "65536", fsync="always", env={"FLO_FAULT": fault}).start()
    snap_dir = sp.data_dir / "snap"
    oracle = Oracle()
    try:
        async with FloClient(sp.endpoint, timeout_ms=60_000) as c:
            rounds = 0
            first: tuple[int, bytes] | None = None
            while True:
                assert await oracle.run(c, rounds + 1, first=rounds)
                rounds += 1
                j = await journal(c)
                if first is None and j["snapshots"] == 1:
                    lsn, path = list_snapshots(str(sp.data_dir))[0]
                    first = (lsn, Path(path).read_bytes())
                if j["snapshot_failures"]:
                    break
                assert rounds < 200, f"no snapshot failed: {j}"
            assert first is not None
            assert "No space left on device" in j["last_snapshot_error"] or "Input/output" in j["last_snapshot_error"]
            # no more writes now, so no snapshot starts: once none runs, no temp file may be left
            await wait_for(lambda: _no_snapshot_running(c), timeout=30, what="no snapshot running")
            assert [p.name for p in snap_dir.iterdir() if p.name.endswith(".tmp")] == []
            assert first[0] in [lsn for lsn, _ in list_snapshots(str(sp.data_dir))]
            assert (snap_dir / f"{first[0]:020d}.snap").read_bytes() == first[1]
            segments = sorted(p.name for p in (sp.data_dir / "log").iterdir())
            oldest = min(lsn for lsn, _ in list_snapshots(str(sp.data_dir)))
            assert int(segments[0][:20]) <= oldest + 1, "the log no longer reaches back to the oldest snapshot"
            assert j["storage_error"] is None
            await wait_for(lambda: _snapshots_after_failure(c), timeout=30, what="a later snapshot")
        sp.kill()
        sp.env = {}
        sp.start()
        async with FloClient(sp.endpoint) as c:
            await oracle.check(c)
            await oracle.check_versions_rise(c)
        assert "snapshot at LSN" in sp.log() and "failed" in sp.log()
    finally:
        sp.stop()


async def _no_snapshot_running(c: FloClient) -> bool:
    return not (await journal(c))["snapshot_in_progress"]


async def _snapshots_after_failure(c: FloClient) -> bool:
    """Write a little more; True once a snapshot after the failed one is in place."""
    for i in range(20):
        await c.kv.put(f"more{i}", b"m" * 900)
    return (await journal(c))["snapshots"] >= 2

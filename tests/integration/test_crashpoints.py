"""Crash points and torn writes: the server dies at each durable step, restarts, and holds what it acknowledged.

Every crash point of ``flo_server.faults.POINTS`` (parametrized from the table, so a new point
is covered without touching this file) is armed with ``FLO_CRASHPOINT`` in a real flo-server
(``--fsync always``, small segments and snapshots so rolls, snapshots and log truncation happen
within the workload), which runs ``tests/durable_oracle.py``'s workload until it dies at the
point (or, for start-up and shutdown points, through a kill -9 and restart / a clean stop). The
test asserts the point fired, restarts without it and checks the recovered state against the
oracle. Torn writes: the last segment cut or scribbled over at seeded random offsets; the server
must start, recover the valid prefix (``check-log`` agreeing) and keep every record before the tear.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import random
import re
import time
from pathlib import Path

import pytest

from flo_client import FloClient
from flo_core.log import RECORD_HEADER, LogReader, list_segments
from flo_server.faults import POINTS
from tests.durable_oracle import Oracle
from tests.helpers import ServerProc, wait_until

pytestmark = pytest.mark.integration

#: Workload rounds by phase: "run" points need up to ~700 KiB of log (10 segment rolls, 4 snapshots,
#: truncations; ~24 KiB a round); start-up and shutdown points only need a log to start from / close.
ROUNDS = {"run": 60, "start": 4, "stop": 4}  # (a run point dies long before; snapshots lag on a loaded box)
RUN_MORE_S = 60.0  # how long a "run" point that has not fired after its rounds may go on
SERVER_ARGS = ("--snapshot-bytes", "65536")  # segments of 64 KiB (the minimum)
#: Which hit of a point to die at, when the first is too early to be interesting.
NTH = {"log.write.before": 12, "log.write.torn": 14, "log.write.after": 10, "group.after_flush": 11,
       "log.fsync.after": 11, "group.after_sync": 11, "log.roll.before_sync": 2, "log.roll.after_sync": 2}
RECOVERY: dict[str, float] = {}  # point -> seconds from exec to ready (printed at the end of the module)


def _fired(sp: ServerProc, point: str) -> bool:
    return f"crash point {point} hit" in sp.log()


def _replay_seconds(sp: ServerProc) -> float:
    m = re.findall(r"record\(s\) replayed in ([\d.]+)s", sp.log())
    return float(m[-1]) if m else -1.0


async def crash_and_recover(point: str, data_dir: Path) -> str:
    """Die at ``point``, restart, check the oracle; returns a line for the report (raises on a failure)."""
    spec = POINTS[point]
    env = {"FLO_CRASHPOINT": f"{point}:{NTH.get(point, 1)}"}
    if spec.fault:  # a step only taken after an I/O error: the table says which one to inject
        env["FLO_FAULT"] = spec.fault
    sp = ServerProc(data_dir, *SERVER_ARGS, fsync="always", env=env)
    oracle = Oracle()
    sp.start(timeout=60)
    try:
        async with FloClient(sp.endpoint, timeout_ms=30_000) as c:
            finished = await oracle.run(c, ROUNDS[spec.phase])
            if spec.phase == "run":
                # A loaded box lags the snapshot child, whose points come after it: go on,
                # 20 rounds at a time, until the point fires or RUN_MORE_S has passed.
                more_until, done = time.monotonic() + RUN_MORE_S, ROUNDS["run"]
                while finished and time.monotonic() < more_until:
                    finished = await oracle.run(c, done + 20, first=done)
                    done += 20
        if spec.phase == "run":
            assert not finished, f"the workload ended and {point} never fired:\n{sp.log()}"
        elif spec.phase == "start":
            assert finished
            sp.kill()
            with pytest.raises(RuntimeError, match="did not start"):
                sp.start(timeout=60)
        else:
            assert finished
            sp.stop(timeout=30)
        wait_until(lambda: sp.proc.poll() is not None, timeout=30)
        assert sp.proc.returncode == -9, f"{point}: exit {sp.proc.returncode}, not SIGKILL:\n{sp.log()}"
        wait_until(lambda: _fired(sp, point), timeout=30)  # (its last line may still be in the pipe)
        assert oracle.acks > 0
        sp.env = {}
        t0 = time.monotonic()
        sp.start(timeout=60)
        RECOVERY[point] = time.monotonic() - t0
        async with FloClient(sp.endpoint, timeout_ms=30_000) as c:
            await oracle.check(c)
            await oracle.check_versions_rise(c)
        assert "Traceback" not in sp.log(), sp.log()
    finally:
        sp.stop()
    return (f"{point}: died after {oracle.rounds_done} round(s), {oracle.acks} answers; "
            f"restart to ready {RECOVERY[point]:.2f}s (replay {_replay_seconds(sp):.3f}s)")


@pytest.fixture(scope="module")
def crash_runs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Every selected point's run, three at a time (each in a thread with its own loop and server):
    the runs mostly wait on processes, so this cuts the wall time on a loaded 2-core box."""
    points = [item.callspec.params["point"] for item in request.session.items
              if getattr(item, "originalname", "") == "test_crash_point" and hasattr(item, "callspec")]
    base = tmp_path_factory.mktemp("crash")

    def one(point: str) -> str | BaseException:
        try:
            return asyncio.run(crash_and_recover(point, base / point / "data"))
        except BaseException as e:  # noqa: BLE001 - handed to that point's test
            return e

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        return dict(zip(points, pool.map(one, points)))


@pytest.mark.timeout(600)  # the first selected point waits for all runs (crash_runs)
@pytest.mark.parametrize("point", list(POINTS))
def test_crash_point(point: str, crash_runs: dict) -> None:
    result = crash_runs[point]
    if isinstance(result, BaseException):
        raise result
    print(f"\n{result}")


# --- torn writes ---------------------------------------------------------------------------


def _records(data_dir: Path) -> list[tuple[int, int]]:
    """(lsn, end offset) of every intact record of the (one) segment, the way start-up reads them."""
    out = []
    reader = LogReader(str(data_dir / "log"))
    for lsn, _, payload in reader:
        out.append((lsn, reader.offset + RECORD_HEADER + len(payload)))
    return out


#: (how, seed): "cut" truncates the segment at a random offset; "scribble" does and then appends
#: 1-300 random bytes, as a write torn by a power cut leaves half a record and junk.
TEARS = [("cut", 1), ("scribble", 2), ("cut", 3), ("scribble", 4)]


async def test_torn_writes_at_random_offsets(tmp_path: Path) -> None:
    """kill -9 after a workload, then the segment torn at a seeded random offset: check-log says OK with
    exactly the records before the tear, the server starts (warning of the torn tail), recovers
    that prefix and no more, every key holds its last acknowledged put before the tear, and writes
    go on. One data dir, torn four times (one segment, no snapshot: --snapshot-bytes 4 MiB)."""
    from click.testing import CliRunner

    from flo_server.persistence import check_log_cmd

    sp = ServerProc(tmp_path / "data", "--snapshot-bytes", str(4 << 20), fsync="always")
    sp.start()
    try:
        oracle = Oracle()
        async with FloClient(sp.endpoint, timeout_ms=20_000) as c:
            assert await oracle.run(c, 10)
        for how, seed in TEARS:
            sp.kill()
            rng = random.Random(seed)
            records = _records(sp.data_dir)
            (_, seg), = list_segments(sp.data_dir / "log")
            offset = rng.randrange(records[len(records) // 3][1], records[-1][1])
            with open(seg, "r+b") as f:
                f.truncate(offset)
                if how == "scribble":
                    f.seek(offset)
                    f.write(rng.randbytes(rng.randrange(1, 300)))
            kept = [lsn for lsn, end in records if end <= offset]
            lost = [lsn for lsn, end in records if end > offset]
            assert lost and kept
            out = CliRunner().invoke(check_log_cmd, [str(sp.data_dir)])
            assert out.exit_code == 0 and re.search(rf"records: {len(kept)}\b", out.output), out.output
            assert ("torn at" in out.output) == (how == "scribble" or offset not in {e for _, e in records})
            sp.start()
            assert [lsn for lsn, _ in _records(sp.data_dir)] == kept, "start-up kept another prefix than check-log"
            oracle.forget_from(lost[0])
            async with FloClient(sp.endpoint, timeout_ms=20_000) as c:
                await oracle.check_kv_exact(c)
                assert await oracle.run(c, oracle.rounds_done + 3, first=oracle.rounds_done)
        assert sp.log().count("torn log tail") >= sum(how == "scribble" for how, _ in TEARS)
    finally:
        sp.stop()

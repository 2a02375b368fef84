"""Actions, runs and workers through flo_client against a real flo-server process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time

import pytest

from flo_client import FloClient
from flo_client.action import (
    ActionInvokeOptions,
    ActionListOptions,
    ActionListRunsOptions,
    ActionRegisterOptions,
    ActionType,
    RunStatus,
    WorkerAPI,
    WorkerAwaitOptions,
    WorkerStatus,
)
from flo_client.action_worker import ActionContext, ActionWorker, NonRetryableError
from flo_core.errors import ConflictError, NotFoundError, RequestTimeoutError
from flo_core.spec import Reason
from flo_server.actions import RETRY_BASE_MS
from tests.helpers import ROOT, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60), pytest.mark.client(namespace="it", timeout_ms=3000)]


@contextlib.asynccontextmanager
async def running(worker: ActionWorker):
    task = asyncio.ensure_future(worker.start())
    try:
        def started() -> bool:  # registered and polling (a failed start raises here)
            if task.done():
                task.result()
            return worker.running

        await wait_for(started, timeout=5, what="the worker to start")
        yield task
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)


def new_worker(client: FloClient, **kw) -> ActionWorker:
    kw.setdefault("block_ms", 2000)
    return client.new_action_worker(**kw)


async def test_seed_snippets_end_to_end(client):
    await client.action.register("process-image", ActionType.USER, ActionRegisterOptions(timeout_ms=60000, max_retries=3))
    result = await client.action.invoke(
        "process-image", b'{"pixels": 4}', ActionInvokeOptions(priority=10, idempotency_key="order-123")
    )
    status = await client.action.status(result.run_id)
    assert status.status == RunStatus.PENDING and status.attempt == 0

    worker = new_worker(client, concurrency=5)

    @worker.action("process-image")
    async def process_image(ctx: ActionContext) -> bytes:
        data = ctx.json()
        return ctx.to_bytes({"status": "done", "result": data["pixels"] * 2})

    async with running(worker):
        done = await client.action.result(result.run_id, timeout_ms=10000)
    assert done.status == RunStatus.COMPLETED and done.json() == {"status": "done", "result": 8}
    assert done.outcome == "success" and done.worker_id == worker.worker_id and done.attempt == 1
    # The idempotency key still maps to the same run, even after it finished.
    again = await client.action.invoke("process-image", b"other", ActionInvokeOptions(idempotency_key="order-123"))
    assert again.run_id == result.run_id


async def test_invoke_unregistered_and_unknown_run(client):
    with pytest.raises(NotFoundError):
        await client.action.invoke("ghost", b"")
    with pytest.raises(NotFoundError):
        await client.action.status("act-ffff")
    with pytest.raises(NotFoundError):
        await client.action.result("act-ffff", timeout_ms=100)


async def test_idempotency_is_per_action_and_key(client):
    await client.action.register("a1")
    await client.action.register("a2")
    r1 = await client.action.invoke("a1", b"", ActionInvokeOptions(idempotency_key="k"))
    assert (await client.action.invoke("a1", b"", ActionInvokeOptions(idempotency_key="k"))).run_id == r1.run_id
    assert (await client.action.invoke("a2", b"", ActionInvokeOptions(idempotency_key="k"))).run_id != r1.run_id
    assert (await client.action.invoke("a1", b"", ActionInvokeOptions(idempotency_key="k2"))).run_id != r1.run_id
    assert (await client.action.invoke("a1", b"")).run_id != r1.run_id
    runs = await client.action.list_runs("a1")
    assert len(runs.runs) == 3


async def test_priority_orders_pending_runs(client):
    await client.action.register("prio")
    low = await client.action.invoke("prio", b"low", ActionInvokeOptions(priority=200))
    default = await client.action.invoke("prio", b"default")
    urgent = await client.action.invoke("prio", b"urgent", ActionInvokeOptions(priority=0))
    default2 = await client.action.invoke("prio", b"default2")
    order: list[bytes] = []
    worker = new_worker(client, concurrency=1)

    @worker.action("prio")
    async def prio(ctx: ActionContext) -> bytes:
        order.append(ctx.payload)
        return b""

    async with running(worker):
        await client.action.result(low.run_id, timeout_ms=10000)
    assert order == [b"urgent", b"default", b"default2", b"low"]
    listed = (await client.action.list_runs("prio")).runs
    assert [r.priority for r in listed] == [10, 0, 10, 200]  # newest first
    assert {r.run_id for r in listed} == {low.run_id, default.run_id, urgent.run_id, default2.run_id}


async def test_retries_use_backoff_then_complete(client):
    stamps: list[float] = []
    worker = new_worker(client)

    @worker.action("flaky", max_retries=3)
    async def flaky(ctx: ActionContext) -> bytes:
        stamps.append(time.monotonic())
        if ctx.attempt < 3:
            raise RuntimeError(f"transient {ctx.attempt}")
        return b"ok"

    @worker.action("fatal", max_retries=3)
    async def fatal(ctx: ActionContext) -> bytes:
        raise NonRetryableError("broken input")

    async with running(worker):
        r = await client.action.invoke("flaky", b"")
        f = await client.action.invoke("fatal", b"")
        done = await client.action.result(r.run_id, timeout_ms=10000)
        failed = await client.action.result(f.run_id, timeout_ms=10000)
    assert (done.status, done.attempt, done.output, done.error_message) == (RunStatus.COMPLETED, 3, b"ok", "transient 2")
    assert (failed.status, failed.attempt, failed.error_message) == (RunStatus.FAILED, 1, "broken input")
    # 200 ms before the 2nd attempt, 400 ms before the 3rd (a little slack for timers).
    assert stamps[1] - stamps[0] >= RETRY_BASE_MS / 1000 * 0.9
    assert stamps[2] - stamps[1] >= 2 * RETRY_BASE_MS / 1000 * 0.9


async def test_result_waits_without_polling_and_times_out(client):
    await client.action.register("later", options=ActionRegisterOptions(timeout_ms=0))
    run = (await client.action.invoke("later", b"")).run_id
    with pytest.raises(RequestTimeoutError):
        await client.action.result(run, timeout_ms=200)
    waiting = asyncio.ensure_future(client.action.result(run, timeout_ms=10000))
    api = WorkerAPI(client)
    task = await api.await_task("manual", ["later"], WorkerAwaitOptions(block_ms=0))
    assert task.task_id == run
    await api.complete("manual", "later", run, b"42")
    done = await asyncio.wait_for(waiting, 5)
    assert done.status == RunStatus.COMPLETED and done.output == b"42"


async def test_call_invokes_and_answers_with_the_result_in_one_request(client):
    """client.action.call: ACTION_INVOKE with WAIT_MS answers once the run finished."""
    await client.action.register("later-call", options=ActionRegisterOptions(timeout_ms=0))
    waiting = asyncio.ensure_future(client.action.call("later-call", b"in", timeout_ms=10000))
    api = WorkerAPI(client)
    task = await api.await_task("manual", ["later-call"], WorkerAwaitOptions(block_ms=5000))
    assert task.payload == b"in" and not waiting.done()
    await api.complete("manual", "later-call", task.task_id, b"out")
    done = await asyncio.wait_for(waiting, 5)
    assert (done.run_id, done.status, done.output) == (task.task_id, RunStatus.COMPLETED, b"out")
    assert (await client.action.status(task.task_id)).status == RunStatus.COMPLETED


async def test_call_times_out_and_leaves_the_run_going(client):
    await client.action.register("slow-call", options=ActionRegisterOptions(timeout_ms=0))
    with pytest.raises(RequestTimeoutError) as e:
        await client.action.call("slow-call", b"", timeout_ms=200)
    run_id = str(e.value).split()[1]  # "run <id> did not finish within ..."
    assert (await client.action.status(run_id)).status == RunStatus.PENDING
    with pytest.raises(NotFoundError):
        await client.action.call("never-registered", b"", timeout_ms=200)


async def test_call_with_an_idempotency_key_answers_with_the_first_run(client):
    await client.action.register("once-call", options=ActionRegisterOptions(timeout_ms=0))
    opts = ActionInvokeOptions(idempotency_key="k-1")
    first = await client.action.invoke("once-call", b"a", opts)
    api = WorkerAPI(client)
    task = await api.await_task("manual", ["once-call"], WorkerAwaitOptions(block_ms=5000))
    await api.complete("manual", "once-call", task.task_id, b"done")
    again = await client.action.call("once-call", b"b", timeout_ms=5000, options=opts)
    assert (again.run_id, again.output) == (first.run_id, b"done")  # answered at once: it had finished


async def test_call_by_workers_under_load(client, server):
    """ActionWorker processes complete what 8 callers ``call`` at once: every answer is its own run's."""
    async with FloClient(server, namespace="it", timeout_ms=3000) as wc:
        w = new_worker(wc, worker_id="caller-load", concurrency=16, auto_touch=False)

        @w.action("echo-call", timeout_ms=30_000, max_retries=1)
        async def echo(ctx: ActionContext) -> bytes:
            return ctx.payload

        async def caller(i: int) -> None:
            async with FloClient(server, namespace="it", timeout_ms=3000) as c:
                for j in range(40):
                    done = await c.action.call("echo-call", b"%d-%d" % (i, j), timeout_ms=5000)
                    assert done.status == RunStatus.COMPLETED and done.output == b"%d-%d" % (i, j)

        async with running(w):
            await asyncio.wait_for(asyncio.gather(*(caller(i) for i in range(8))), 30)


async def test_timed_out_when_last_lease_lapses(client):
    await client.action.register("stuck", options=ActionRegisterOptions(timeout_ms=200, max_retries=1))
    run = (await client.action.invoke("stuck", b"")).run_id
    api = WorkerAPI(client)
    assert (await api.await_task("w", ["stuck"], WorkerAwaitOptions(block_ms=0))).task_id == run
    t0 = time.monotonic()
    done = await client.action.result(run, timeout_ms=5000)  # woken by the lapse itself
    assert done.status == RunStatus.TIMED_OUT and time.monotonic() - t0 < 2
    with pytest.raises(ConflictError) as e:
        await api.complete("w", "stuck", run, b"")
    assert e.value.reason == Reason.STALE_REPORT


async def test_cancel_pending_and_running(client):
    await client.action.register("cancel-me", options=ActionRegisterOptions(timeout_ms=300))
    pending = (await client.action.invoke("cancel-me", b"")).run_id
    assert await client.action.cancel(pending)
    assert not await client.action.cancel(pending)
    assert (await client.action.status(pending)).status == RunStatus.CANCELLED

    noticed = asyncio.Event()
    worker = new_worker(client)

    @worker.action("cancel-me", timeout_ms=300)
    async def slow(ctx: ActionContext) -> bytes:
        while not ctx.cancelled:  # auto-touch notices the cancel
            await asyncio.sleep(0.02)
        noticed.set()
        return b"too late"

    async with running(worker):
        run = (await client.action.invoke("cancel-me", b"")).run_id
        async def running_now() -> bool:
            return (await client.action.status(run)).status == RunStatus.RUNNING

        await wait_for(running_now, timeout=5, what="the run to start")
        assert await client.action.cancel(run)
        await asyncio.wait_for(noticed.wait(), 5)
    st = await client.action.status(run)
    assert st.status == RunStatus.CANCELLED and st.output is None


async def test_labels_route_runs_to_matching_workers(client):
    seen: dict[str, str] = {}
    plain, gpu = new_worker(client, worker_id="plain"), new_worker(client, worker_id="gpu", labels={"gpu": "a100"})
    for w in (plain, gpu):
        @w.action("render")
        async def render(ctx: ActionContext, _w=w) -> bytes:
            seen[ctx.task_id] = _w.worker_id
            return b""

    async with running(plain), running(gpu):
        need_gpu = [(await client.action.invoke("render", b"", ActionInvokeOptions(labels={"gpu": "a100"}))).run_id
                    for _ in range(4)]
        for run in need_gpu:
            await client.action.result(run, timeout_ms=10000)
    assert {seen[r] for r in need_gpu} == {"gpu"}


async def test_list_and_delete(client):
    for name in ("img-a", "img-b", "txt"):
        await client.action.register(name, options=ActionRegisterOptions(timeout_ms=1234, max_retries=2, owner="me"))
    await client.action.invoke("img-a", b"")
    page = await client.action.list(ActionListOptions(prefix="img", limit=1))
    assert [a.name for a in page.actions] == ["img-a"] and page.has_more
    info = page.actions[0]
    assert (info.timeout_ms, info.max_retries, info.owner, info.pending) == (1234, 2, "me", 1)
    page = await client.action.list(ActionListOptions(prefix="img", limit=1, cursor=page.cursor))
    assert [a.name for a in page.actions] == ["img-b"] and not page.has_more
    await client.action.delete("img-a")
    await client.action.delete("img-a")
    assert [a.name for a in (await client.action.list()).actions] == ["img-b", "txt"]
    runs = (await client.action.list_runs("img-a")).runs
    assert runs[0].status == RunStatus.CANCELLED  # pending runs of a deleted action
    runs = await client.action.list_runs(None, ActionListRunsOptions(limit=1))
    assert len(runs.runs) == 1 and runs.has_more is False


async def test_drain_stops_a_worker_and_registry_reports_it(client):
    worker = new_worker(client, worker_id="drain-me", heartbeat_interval=0.1)

    @worker.action("noop")
    async def noop(ctx: ActionContext) -> bytes:
        return b""

    api = WorkerAPI(client)
    task = asyncio.ensure_future(worker.start())
    try:
        async def registered():
            ws = {w.worker_id: w for w in (await api.list()).workers}
            w = ws.get("drain-me")
            return w if w is not None and w.last_heartbeat_ms > w.registered_at_ms else None

        info = await wait_for(registered, timeout=5, what="heartbeats")  # heartbeats are flowing
        assert info.status == WorkerStatus.IDLE and info.machine_id
        await api.drain("drain-me")
        await asyncio.wait_for(asyncio.shield(task), 5)  # the parked await is refused: start() returns
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)
    ws = {w.worker_id: w for w in (await api.list()).workers}
    assert ws["drain-me"].status == WorkerStatus.DRAINING
    with pytest.raises(NotFoundError):
        await api.heartbeat("never-registered")


async def test_runs_survive_a_server_restart(server_proc):
    async with FloClient(server_proc.endpoint, namespace="it", timeout_ms=3000) as c:
        await c.action.register("durable", options=ActionRegisterOptions(timeout_ms=5000, max_retries=2))
        run = (await c.action.invoke("durable", b"keep", ActionInvokeOptions(idempotency_key="once"))).run_id
        await WorkerAPI(c).register("wr", ["durable"])
    server_proc.restart()
    async with FloClient(server_proc.endpoint, namespace="it", timeout_ms=3000) as c:
        st = await c.action.status(run)
        assert st.status == RunStatus.PENDING
        assert (await c.action.invoke("durable", b"", ActionInvokeOptions(idempotency_key="once"))).run_id == run
        worker = new_worker(c)

        @worker.action("durable", timeout_ms=5000, max_retries=2)
        async def durable(ctx: ActionContext) -> bytes:
            return ctx.payload.upper()

        async with running(worker):
            done = await c.action.result(run, timeout_ms=10000)
        assert done.output == b"KEEP"
        # A fresh run id after the restart does not collide with the old one.
        assert (await c.action.invoke("durable", b"")).run_id != run


_DYING_WORKER = """
import asyncio, sys
from flo_client import FloClient
from flo_client.action_worker import ActionContext

async def main():
    async with FloClient(sys.argv[1], namespace="it", timeout_ms=3000) as client:
        worker = client.new_action_worker(worker_id="doomed", block_ms=2000)

        @worker.action("crunch", timeout_ms=600, max_retries=3)
        async def crunch(ctx: ActionContext) -> bytes:
            print("STARTED", ctx.task_id, flush=True)
            await asyncio.sleep(3600)
            return b"never"

        await worker.start()

asyncio.run(main())
"""


async def test_killed_worker_process_run_is_taken_back_and_completed(client, server):
    await client.action.register("crunch", options=ActionRegisterOptions(timeout_ms=600, max_retries=3))
    run = (await client.action.invoke("crunch", b"data")).run_id
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _DYING_WORKER, server,
        stdout=asyncio.subprocess.PIPE, env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=str(ROOT),
    )
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 15)
        assert line.decode().split() == ["STARTED", run]
        st = await client.action.status(run)
        assert st.status == RunStatus.RUNNING and st.worker_id == "doomed"
    finally:
        proc.kill()  # SIGKILL mid-run: no report, no goodbye
        await proc.wait()
    worker = new_worker(client, worker_id="rescuer")

    @worker.action("crunch", timeout_ms=600, max_retries=3)
    async def crunch(ctx: ActionContext) -> bytes:
        return b"crunched " + ctx.payload

    async with running(worker):
        done = await client.action.result(run, timeout_ms=10000)
    assert (done.status, done.output, done.worker_id, done.attempt) == (
        RunStatus.COMPLETED, b"crunched data", "rescuer", 2)


async def test_state_survives_restart_through_snapshots(make_server):
    sp = make_server("--snapshot-bytes", "2048")  # snapshots taken along the way
    async with FloClient(sp.endpoint, namespace="it", timeout_ms=3000) as c:
        api = WorkerAPI(c)
        await c.action.register("snap", options=ActionRegisterOptions(timeout_ms=0, max_retries=4, owner="o"))
        await api.register("holder", ["snap"])
        runs = [(await c.action.invoke("snap", b"x" * 300, ActionInvokeOptions(idempotency_key=f"k{i}"))).run_id
                for i in range(20)]
        held = await api.await_task("holder", ["snap"], WorkerAwaitOptions(block_ms=0))
        before = [await c.action.status(r) for r in runs]
    sp.restart()
    async with FloClient(sp.endpoint, namespace="it", timeout_ms=3000) as c:
        after = [await c.action.status(r) for r in runs]
        assert after == before
        api = WorkerAPI(c)
        # the holder still holds its run (no lease), and can complete it after the restart
        await api.complete("holder", "snap", held.task_id, b"done")
        assert (await c.action.status(held.task_id)).status == RunStatus.COMPLETED
        assert (await c.action.invoke("snap", b"", ActionInvokeOptions(idempotency_key="k3"))).run_id == runs[3]
        (info,) = (await c.action.list()).actions
        assert (info.max_retries, info.owner, info.pending) == (4, "o", 19)
        assert [w.worker_id for w in (await api.list()).workers] == ["holder"]
    from flo_server.persistence import list_snapshots

    assert list_snapshots(str(sp.data_dir)), "no snapshot was taken"


async def test_worker_reconnects_after_server_restart(server_proc):
    async with FloClient(server_proc.endpoint, namespace="it", timeout_ms=3000) as c:
        worker = new_worker(c, block_ms=1000)

        @worker.action("phoenix")
        async def phoenix(ctx: ActionContext) -> bytes:
            return b"back"

        async with running(worker):
            await asyncio.to_thread(server_proc.restart)
            # The worker's connections broke; it reconnects and registers again by itself.
            async with FloClient(server_proc.endpoint, namespace="it", timeout_ms=3000) as fresh:
                run = (await fresh.action.invoke("phoenix", b"")).run_id
                done = await fresh.action.result(run, timeout_ms=15000)
        assert done.output == b"back"


async def test_many_workers_and_callers_never_lose_a_wake_up(client, server):
    """4 workers and 16 invoke -> result callers at once (the bench's action workload).
    A request checks its condition at once but parks on a later loop turn; a run
    finishing (or becoming takeable) in between must still answer it, not leave
    it parked for its whole wait."""
    worker_clients = [FloClient(server, namespace="it", timeout_ms=3000) for _ in range(4)]
    workers = []
    for i, wc in enumerate(worker_clients):
        await wc.connect()
        w = new_worker(wc, worker_id=f"busy-{i}", concurrency=16, auto_touch=False, block_ms=5000)

        @w.action("echo-many", timeout_ms=30_000, max_retries=1)
        async def echo(ctx: ActionContext) -> bytes:
            return ctx.payload

        workers.append(w)
    slowest = 0.0

    async def caller(n: int) -> None:
        nonlocal slowest
        async with FloClient(server, namespace="it", timeout_ms=3000) as c:
            for i in range(n):
                t0 = time.monotonic()
                run = (await c.action.invoke("echo-many", b"%d" % i)).run_id
                done = await c.action.result(run, timeout_ms=3000)
                assert done.status == RunStatus.COMPLETED and done.output == b"%d" % i
                slowest = max(slowest, time.monotonic() - t0)

    try:
        async with contextlib.AsyncExitStack() as stack:
            for w in workers:
                await stack.enter_async_context(running(w))
            t0 = time.monotonic()
            try:
                await asyncio.wait_for(asyncio.gather(*(caller(60) for _ in range(16))), 20)
            except asyncio.TimeoutError:
                pytest.fail(f"960 round trips not done in 20 s (slowest so far {slowest:.2f} s): wake-ups were lost")
            elapsed = time.monotonic() - t0
    finally:
        for wc in worker_clients:
            await wc.close()
    # Every round trip is a few ms; a lost wake-up costs a whole wait (seconds).
    assert slowest < 1.0, f"a round trip took {slowest:.2f} s: a wake-up was lost"
    assert elapsed < 15, f"960 round trips took {elapsed:.1f} s"

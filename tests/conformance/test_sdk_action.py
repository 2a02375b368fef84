"""flo-python 0.1.2 (unmodified) against flo-server: actions, runs, workers and its ActionWorker."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest
from flo import ActionContext, FloClient, NonRetryableError
from flo.exceptions import ConflictError, NotFoundError, ServerError
from flo.types import (
    ActionInvokeOptions,
    ActionListOptions,
    ActionRegisterOptions,
    ActionType,
    Reason,
    RunStatus,
    WorkerAwaitOptions,
    WorkerCompleteOptions,
    WorkerFailOptions,
    WorkerListOptions,
    WorkerRegisterOptions,
    WorkerStatus,
    WorkerTouchOptions,
)

from tests.helpers import wait_for

pytestmark = [
    pytest.mark.conformance,
    pytest.mark.timeout(60),
    pytest.mark.client(sdk=True, namespace="conf", timeout_ms=3000),
]

NOW = lambda: int(time.time() * 1000)  # noqa: E731


async def finished(client, run_id, timeout: float = 10.0):
    async def done():
        st = await client.action.status(run_id)
        return st if st.status not in (RunStatus.PENDING, RunStatus.RUNNING) else None

    return await wait_for(done, timeout)


@contextlib.asynccontextmanager
async def running(worker):
    task = asyncio.create_task(worker.start())
    try:
        yield task
    finally:
        worker.stop()
        await asyncio.wait_for(task, 10)


async def test_seed_action_section_with_action_worker(client):
    await client.action.register("process-image", ActionType.USER, ActionRegisterOptions(timeout_ms=60000, max_retries=3))
    result = await client.action.invoke("process-image", b'{"w": 3}', ActionInvokeOptions())
    assert result.run_id
    status = await client.action.status(result.run_id)
    assert status.status == RunStatus.PENDING and status.attempt == 0 and status.worker_id is None
    assert status.created_at_ms > 1_600_000_000_000 and status.started_at_ms is None

    worker = client.new_action_worker(concurrency=5, block_ms=1000)
    seen: list[ActionContext] = []

    @worker.action("process-image", ActionRegisterOptions(timeout_ms=60000, max_retries=3))
    async def process_image(ctx: ActionContext) -> bytes:
        seen.append(ctx)
        data = ctx.json()
        return ctx.to_bytes({"status": "done", "result": data["w"] * 2})

    async with running(worker):
        st = await finished(client, result.run_id)
    assert st.status == RunStatus.COMPLETED
    assert st.output == b'{"status": "done", "result": 6}'
    assert st.attempt == 1 and st.worker_id == worker.config.worker_id
    assert st.started_at_ms is not None and st.completed_at_ms >= st.started_at_ms >= st.created_at_ms
    # task_id is the run id; attempt 1-based; the namespace is the worker's.
    assert seen[0].task_id == result.run_id and seen[0].attempt == 1 and seen[0].namespace == "conf"
    assert seen[0].action_name == "process-image"


async def test_invoke_unregistered_is_not_found(client):
    with pytest.raises(NotFoundError):
        await client.action.invoke("nobody-registered-me", b"")
    with pytest.raises(NotFoundError):
        await client.action.status("act-does-not-exist")


async def test_retries_then_success_and_non_retryable(client):
    worker = client.new_action_worker(concurrency=2, block_ms=1000)
    calls: dict[str, int] = {}

    @worker.action("flaky", ActionRegisterOptions(timeout_ms=10000, max_retries=3))
    async def flaky(ctx: ActionContext) -> bytes:
        calls[ctx.task_id] = ctx.attempt
        if ctx.attempt < 3:
            raise RuntimeError(f"boom {ctx.attempt}")
        return b"ok"

    @worker.action("hopeless", ActionRegisterOptions(timeout_ms=10000, max_retries=5))
    async def hopeless(ctx: ActionContext) -> bytes:
        raise NonRetryableError("bad input")

    @worker.action("always-fails", ActionRegisterOptions(timeout_ms=10000, max_retries=2))
    async def always_fails(ctx: ActionContext) -> bytes:
        raise ValueError(f"nope {ctx.attempt}")

    async with running(worker):
        await wait_for(lambda: worker._running, 5)
        r1 = await client.action.invoke("flaky", b"")
        r2 = await client.action.invoke("hopeless", b"")
        r3 = await client.action.invoke("always-fails", b"")
        s1 = await finished(client, r1.run_id)
        s2 = await finished(client, r2.run_id)
        s3 = await finished(client, r3.run_id)
    assert (s1.status, s1.attempt, s1.output) == (RunStatus.COMPLETED, 3, b"ok")
    assert s1.error_message == "boom 2"  # the last failure stays visible
    assert (s2.status, s2.attempt, s2.error_message) == (RunStatus.FAILED, 1, "bad input")
    assert (s3.status, s3.attempt, s3.error_message) == (RunStatus.FAILED, 2, "nope 2")


async def test_named_outcome_and_dict_result(client):
    worker = client.new_action_worker(block_ms=1000)

    @worker.action("approve")
    async def approve(ctx: ActionContext):
        return ctx.result("approved", {"by": "bot"})

    @worker.action("as-dict")
    async def as_dict(ctx: ActionContext):
        return {"x": 1}

    async with running(worker):
        await wait_for(lambda: worker._running, 5)
        r1 = await client.action.invoke("approve", b"")
        r2 = await client.action.invoke("as-dict", b"")
        s1, s2 = await finished(client, r1.run_id), await finished(client, r2.run_id)
    assert s1.status == RunStatus.COMPLETED and s1.output == b'{"by": "bot"}'
    assert s2.output == b'{"x": 1}'


async def test_lease_lapse_stale_report_and_timed_out(client):
    await client.action.register("slow", options=ActionRegisterOptions(timeout_ms=300, max_retries=2))
    await client.worker.register("w1", ["slow"])
    await client.worker.register("w2", ["slow"])
    run = (await client.action.invoke("slow", b"p")).run_id
    got = (await client.worker.await_task("w1", ["slow"], WorkerAwaitOptions(block_ms=0))).task
    assert got.task_id == run and got.attempt == 1 and got.payload == b"p"
    st = await client.action.status(run)
    assert st.status == RunStatus.RUNNING and st.worker_id == "w1"
    # w1 goes silent: the lease lapses and w2's blocking await receives the run, attempt 2.
    t0 = time.monotonic()
    got2 = (await client.worker.await_task("w2", ["slow"], WorkerAwaitOptions(block_ms=5000))).task
    assert got2 is not None and got2.task_id == run and got2.attempt == 2
    assert time.monotonic() - t0 < 2.0
    with pytest.raises(ConflictError) as e:
        await client.worker.complete("w1", "slow", run, b"late")
    assert e.value.reason == Reason.STALE_REPORT
    with pytest.raises(ConflictError):
        await client.worker.touch("w1", "slow", run)
    # w2 goes silent as well, on the last attempt: TIMED_OUT.
    st = await finished(client, run, 5)
    assert st.status == RunStatus.TIMED_OUT and st.attempt == 2 and st.worker_id == "w2"
    with pytest.raises(ConflictError):
        await client.worker.fail("w2", "slow", run, "too late", WorkerFailOptions(retry=True))


async def test_touch_extends_the_lease(client):
    await client.action.register("touchy", options=ActionRegisterOptions(timeout_ms=400, max_retries=1))
    await client.worker.register("tw", ["touchy"])
    run = (await client.action.invoke("touchy", b"")).run_id
    await client.worker.await_task("tw", ["touchy"], WorkerAwaitOptions(block_ms=0))
    for _ in range(4):  # ~1 s in all, well past the 400 ms lease
        await asyncio.sleep(0.25)
        await client.worker.touch("tw", "touchy", run, WorkerTouchOptions(extend_ms=400))
    assert (await client.action.status(run)).status == RunStatus.RUNNING
    await client.worker.complete("tw", "touchy", run, b"done", WorkerCompleteOptions(outcome="success"))
    assert (await client.action.status(run)).status == RunStatus.COMPLETED


async def test_auto_touch_keeps_a_long_handler(client):
    worker = client.new_action_worker(block_ms=1000, auto_touch=True)

    @worker.action("long", ActionRegisterOptions(timeout_ms=300, max_retries=1))
    async def long(ctx: ActionContext) -> bytes:
        await asyncio.sleep(1.0)
        return b"survived"

    async with running(worker):
        await wait_for(lambda: worker._running, 5)
        run = (await client.action.invoke("long", b"")).run_id
        st = await finished(client, run)
    assert (st.status, st.attempt, st.output) == (RunStatus.COMPLETED, 1, b"survived")


async def test_labels_restrict_which_worker_takes_a_run(client):
    await client.action.register("render")
    await client.worker.register("cpu", ["render"])
    await client.worker.register("gpu", ["render"], WorkerRegisterOptions(metadata='{"gpu": "a100", "zone": "eu"}'))
    run = (await client.action.invoke("render", b"", ActionInvokeOptions(labels={"gpu": "a100"}))).run_id
    assert (await client.worker.await_task("cpu", ["render"], WorkerAwaitOptions(block_ms=0))).task is None
    task = (await client.worker.await_task("gpu", ["render"], WorkerAwaitOptions(block_ms=0))).task
    assert task.task_id == run


async def test_worker_registry_heartbeat_and_list(client):
    with pytest.raises(NotFoundError):
        await client.worker.heartbeat("ghost", 0)
    before = NOW()
    await client.worker.register("wb", ["a"], WorkerRegisterOptions(concurrency=7, machine_id="box-1"))
    await client.worker.register("wa", ["a"])
    await client.worker.heartbeat("wb", current_load=3)
    page = await client.worker.list(WorkerListOptions(limit=1))
    assert [w.worker_id for w in page.workers] == ["wa"] and page.cursor is not None
    page2 = await client.worker.list(WorkerListOptions(limit=1, cursor=page.cursor))
    (wb,) = page2.workers
    assert page2.cursor is None
    assert (wb.worker_id, wb.max_concurrency, wb.current_load, wb.machine_id) == ("wb", 7, 3, "box-1")
    assert wb.status == WorkerStatus.ACTIVE and wb.last_heartbeat_ms >= wb.registered_at_ms >= before - 5


async def test_blocking_await_is_woken_by_invoke(client):
    await client.action.register("wake")
    waiter = asyncio.create_task(client.worker.await_task("ww", ["other", "wake"], WorkerAwaitOptions(block_ms=5000)))
    await asyncio.sleep(0.1)  # let the await park (correctness doesn't depend on it)
    async with FloClient(client._endpoint, namespace="conf", timeout_ms=3000) as other:
        run = (await other.action.invoke("wake", b"hi")).run_id
    task = (await asyncio.wait_for(waiter, 5)).task
    assert task.task_id == run and task.task_type == "wake" and task.payload == b"hi"


async def test_empty_await_without_wait_and_list_delete(client):
    await client.action.register("idle")
    res = await client.worker.await_task("wi", ["idle"], WorkerAwaitOptions(block_ms=0))
    assert res.task is None
    await client.action.list(ActionListOptions(prefix="id"))
    await client.action.delete("idle")
    await client.action.delete("idle")  # idempotent
    with pytest.raises(NotFoundError):
        await client.action.invoke("idle", b"")


async def test_register_replaces_settings(client):
    await client.action.register("re", options=ActionRegisterOptions(timeout_ms=100000, max_retries=1))
    await client.action.register("re", options=ActionRegisterOptions(timeout_ms=200, max_retries=1))
    await client.worker.register("rw", ["re"])
    run = (await client.action.invoke("re", b"")).run_id
    await client.worker.await_task("rw", ["re"], WorkerAwaitOptions(block_ms=0))
    st = await finished(client, run, 5)  # the 200 ms lease won: TIMED_OUT quickly
    assert st.status == RunStatus.TIMED_OUT


async def test_bad_input_is_refused_cleanly(client):
    with pytest.raises(ServerError):
        await client.worker.touch("nobody", "x", "act-1", WorkerTouchOptions(extend_ms=0))
    with pytest.raises(ServerError):
        await client.action.invoke("bad\udcff".encode("utf-8", "surrogatepass").decode("latin-1"), b"")
    # the connection still works
    await client.action.register("still-ok")


async def test_no_run_is_handed_to_a_closed_parked_await(client, server):
    await client.action.register("orphan")
    gone = FloClient(server, namespace="conf", timeout_ms=3000)
    await gone.connect()
    parked = asyncio.create_task(gone.worker.await_task("gone", ["orphan"], WorkerAwaitOptions(block_ms=10000)))
    await asyncio.sleep(0.2)  # let it park (the assertion holds either way)
    gone.interrupt()  # what ActionWorker.stop() does: close the connection under the await
    with contextlib.suppress(Exception):
        await parked
    await gone.close()
    run = (await client.action.invoke("orphan", b"")).run_id
    st = await client.action.status(run)
    assert st.status == RunStatus.PENDING and st.attempt == 0
    task = (await client.worker.await_task("alive", ["orphan"], WorkerAwaitOptions(block_ms=0))).task
    assert task.task_id == run and task.attempt == 1

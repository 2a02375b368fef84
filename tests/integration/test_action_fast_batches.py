"""Batched actions (option COUNT on ACTION_AWAIT / ACTION_COMPLETE) and the ActionWorker that uses them,
against a real flo-server process.

A request without COUNT is the flo-wire-v2 one (tests/conformance drives it with the SDK); these
tests pin the extension: its layouts, its per-report refusals, its log records across a restart,
and the worker's per-run timers (timeout) that replaced its per-run helper tasks.
"""

from __future__ import annotations

import asyncio

import pytest

from flo_client import FloClient
from flo_client.action import ActionInvokeOptions, ActionRegisterOptions, RunStatus
from flo_client.action_worker import BATCH_MARK, ActionContext, ActionWorker, _complete_entry, parse_assignments
from flo_core.body import Writer
from flo_core.errors import BadRequestError, ServerError
from flo_core.spec import Op, Reason, Tag
from tests.helpers import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60), pytest.mark.client(namespace="fast", timeout_ms=3000)]


def _await_rest(names: list[str], count: int | None, block_ms: int = 0) -> bytes:
    w = Writer().u32(len(names))
    for name in names:
        w.str16(name)
    opts = {Tag.BLOCK_MS: block_ms.to_bytes(4, "little")}
    if count is not None:
        opts[Tag.COUNT] = count.to_bytes(4, "little")
    return Writer().bytes32(w.getvalue()).options(opts).getvalue()


async def _await(c: FloClient, worker: str, names: list[str], count: int | None, block_ms: int = 0) -> bytes:
    return await c._call(Op.ACTION_AWAIT, worker, _await_rest(names, count, block_ms), block_ms=block_ms)


async def _complete(c: FloClient, worker: str, entries: list[bytes], count: int) -> bytes:
    rest = Writer().bytes32(b"".join(entries)).options({Tag.COUNT: count.to_bytes(4, "little")}).getvalue()
    return await c._call(Op.ACTION_COMPLETE, worker, rest)


async def _invoke(c: FloClient, name: str, n: int) -> list[str]:
    return [(await c.action.invoke(name, f"in-{i}".encode())).run_id for i in range(n)]


async def test_batch_await_hands_out_ready_runs_in_order_and_single_await_is_unchanged(client):
    await client.action.register("b-order", options=ActionRegisterOptions(timeout_ms=30_000))
    ids = await _invoke(client, "b-order", 6)
    first = await _await(client, "wb", ["b-order"], 4)
    assert first[:2] == BATCH_MARK
    got = parse_assignments(first)
    assert [t.task_id for t in got] == ids[:4]
    assert [t.payload for t in got] == [f"in-{i}".encode() for i in range(4)]
    assert all(t.attempt == 1 and t.task_type == "b-order" for t in got)
    # Without COUNT: one assignment in the flo-wire-v2 layout (what the SDK reads).
    single = await _await(client, "wb", ["b-order"], None)
    assert single[:2] != BATCH_MARK and single[2 : 2 + len(ids[4])] == ids[4].encode()
    rest = parse_assignments(await _await(client, "wb", ["b-order"], 100))
    assert [t.task_id for t in rest] == ids[5:]
    assert await _await(client, "wb", ["b-order"], 100) == b""  # nothing ready, no wait
    for rid in ids:
        assert (await client.action.status(rid)).status == RunStatus.RUNNING


async def test_batch_complete_answers_one_reason_per_report(client):
    await client.action.register("b-done", options=ActionRegisterOptions(timeout_ms=30_000))
    ids = await _invoke(client, "b-done", 3)
    parse_assignments(await _await(client, "wc", ["b-done"], 2))  # holds ids[0], ids[1]
    entries = [
        _complete_entry("b-done", ids[0], "success", b"out-0"),
        _complete_entry("b-done", ids[1], "approved", b""),
        _complete_entry("b-done", ids[1], "success", b"again"),  # the same run twice: stale
        _complete_entry("b-done", ids[2], "success", b""),  # pending, nobody holds it
        _complete_entry("b-done", "act-ffffff", "success", b""),  # no such run
    ]
    answer = await _complete(client, "wc", entries, len(entries))
    assert answer[:2] == (5).to_bytes(2, "little")
    assert list(answer[2:]) == [0, 0, Reason.STALE_REPORT, Reason.STALE_REPORT, Reason.NOT_FOUND]
    done0 = await client.action.result(ids[0], timeout_ms=0)
    assert done0.status == RunStatus.COMPLETED and done0.output == b"out-0" and done0.outcome == "success"
    done1 = await client.action.result(ids[1], timeout_ms=0)
    assert done1.status == RunStatus.COMPLETED and done1.outcome == "approved" and done1.output == b""
    assert (await client.action.status(ids[2])).status == RunStatus.PENDING


async def test_bad_batches_are_refused_before_anything_is_written(client):
    await client.action.register("b-bad", options=ActionRegisterOptions(timeout_ms=30_000))
    ids = await _invoke(client, "b-bad", 1)
    with pytest.raises(ServerError) as e:
        await _await(client, "wx", ["b-bad"], 257)
    assert e.value.reason == Reason.OUT_OF_RANGE
    parse_assignments(await _await(client, "wx", ["b-bad"], 1))
    good = _complete_entry("b-bad", ids[0], "success", b"x")
    with pytest.raises(BadRequestError):  # says 2 reports, carries 1 (cut short)
        await _complete(client, "wx", [good], 2)
    with pytest.raises(BadRequestError):  # says 1, carries more
        await _complete(client, "wx", [good, b"\x01"], 1)
    with pytest.raises(ServerError) as e:
        await _complete(client, "wx", [good], 1025)
    assert e.value.reason == Reason.OUT_OF_RANGE
    assert (await client.action.status(ids[0])).status == RunStatus.RUNNING  # none of it was applied


async def test_parked_batch_awaits_are_woken_and_share_a_burst(client):
    await client.action.register("b-park", options=ActionRegisterOptions(timeout_ms=30_000))
    a = asyncio.ensure_future(_await(client, "wp1", ["b-park"], 3, block_ms=5000))
    b = asyncio.ensure_future(_await(client, "wp2", ["b-park"], 3, block_ms=5000))
    await asyncio.sleep(0)  # (both requests leave in this loop turn; the server parks them)

    async def parked() -> bool:
        st = await client.server_info()
        return st.get("waiters", 0) >= 2

    await wait_for(parked, timeout=5, what="both awaits to park")
    # A burst (pipelined: most likely one read) of more runs than one await has room for.
    ids = [r.run_id for r in await asyncio.gather(*(client.action.invoke("b-park", b"") for _ in range(5)))]
    got_a = parse_assignments(await asyncio.wait_for(a, 5))
    got_b = parse_assignments(await asyncio.wait_for(b, 5))
    assert got_a and got_b and len(got_a) <= 3 and len(got_b) <= 3  # both woken, neither over its COUNT
    left = parse_assignments(await _await(client, "wp3", ["b-park"], 10) or BATCH_MARK + b"\x00\x00")
    assert sorted(t.task_id for t in got_a + got_b + left) == sorted(ids)  # each run handed out once


async def test_batched_takes_and_completes_survive_a_restart(server_proc):
    async with FloClient(server_proc.endpoint, namespace="fast", timeout_ms=3000) as c:
        await c.action.register("b-durable", options=ActionRegisterOptions(timeout_ms=0))
        ids = await _invoke(c, "b-durable", 3)
        parse_assignments(await _await(c, "wd", ["b-durable"], 3))
        entries = [_complete_entry("b-durable", rid, "success", rid.encode()) for rid in ids[:2]]
        assert list((await _complete(c, "wd", entries, 2))[2:]) == [0, 0]
    server_proc.restart()
    async with FloClient(server_proc.endpoint, namespace="fast", timeout_ms=3000) as c:
        for rid in ids[:2]:
            st = await c.action.result(rid, timeout_ms=0)
            assert st.status == RunStatus.COMPLETED and st.output == rid.encode() and st.worker_id == "wd"
        held = await c.action.status(ids[2])
        assert held.status == RunStatus.RUNNING and held.worker_id == "wd" and held.attempt == 1
        # The holder still holds it (no lease) and completes it, batched, after the restart.
        entry = _complete_entry("b-durable", ids[2], "success", b"late")
        assert list((await _complete(c, "wd", [entry], 1))[2:]) == [0]
        assert (await c.action.result(ids[2], timeout_ms=0)).output == b"late"


async def _start(worker: ActionWorker) -> asyncio.Task:
    """Start ``worker`` and return once it polls (``async with worker`` stops it, reports sent)."""
    task = asyncio.ensure_future(worker.start())
    await wait_for(lambda: worker.running or task.done(), timeout=5, what="the worker to start")
    if task.done():
        task.result()  # a failed start raises here
    return task


async def test_worker_completes_a_burst_once_each_with_batches(client):
    seen: list[str] = []
    worker = client.new_action_worker(concurrency=16, block_ms=2000)

    @worker.action("b-burst", timeout_ms=30_000)
    async def burst(ctx: ActionContext) -> bytes:
        seen.append(ctx.task_id)
        if ctx.payload.endswith(b"7"):
            await asyncio.sleep(0.01)  # some handlers really wait: their runs finish later, in other batches
        return ctx.payload[::-1]

    async with worker:
        await _start(worker)
        runs = [(await client.action.invoke("b-burst", f"p{i}".encode())).run_id for i in range(200)]
        results = await asyncio.gather(*(client.action.result(r, timeout_ms=10_000) for r in runs))
    assert worker._batches  # the server answered batches, so completions went batched
    assert sorted(seen) == sorted(runs)  # each run handled exactly once
    for i, res in enumerate(results):
        assert res.status == RunStatus.COMPLETED and res.output == f"p{i}".encode()[::-1] and res.attempt == 1


async def test_worker_times_a_handler_out_even_if_it_swallows_the_cancel(client):
    worker = client.new_action_worker(concurrency=4, block_ms=2000, action_timeout=0.2)
    stubborn_done = asyncio.Event()

    @worker.action("b-slow", timeout_ms=30_000, max_retries=3)
    async def slow(ctx: ActionContext) -> bytes:
        if ctx.payload == b"stubborn":
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                stubborn_done.set()
                return b"pretends to be done"  # swallowed: still a timeout
        await asyncio.sleep(30)
        return b"never"

    async with worker:
        await _start(worker)
        plain = (await client.action.invoke("b-slow", b"plain")).run_id
        stubborn = (await client.action.invoke("b-slow", b"stubborn")).run_id
        for rid in (plain, stubborn):
            res = await client.action.result(rid, timeout_ms=10_000)
            # "Action timed out" is never retried, whatever attempts are left.
            assert res.status == RunStatus.FAILED and res.error == "Action timed out" and res.attempt == 1
        assert stubborn_done.is_set()
        # The worker keeps taking work after its timeouts (their slots came back).
        ok = (await client.action.invoke("b-slow", b"x", ActionInvokeOptions())).run_id
        worker._handlers["b-slow"] = _echo
        assert (await client.action.result(ok, timeout_ms=10_000)).output == b"x"


async def _echo(ctx: ActionContext) -> bytes:
    return ctx.payload


async def test_stopping_worker_reports_the_runs_it_holds(client):
    worker = client.new_action_worker(concurrency=8, block_ms=2000)
    release = asyncio.Event()

    @worker.action("b-stop", timeout_ms=30_000)
    async def held(ctx: ActionContext) -> bytes:
        await release.wait()
        return b"done " + ctx.payload

    task = await _start(worker)
    runs = [(await client.action.invoke("b-stop", f"{i}".encode())).run_id for i in range(5)]
    await wait_for(lambda: worker.running_handlers == 5, timeout=5, what="all five runs to be held")
    worker.stop()  # while all five handlers still run
    release.set()
    await asyncio.wait_for(task, 10)
    for i, rid in enumerate(runs):  # every completion left before the worker closed its connections
        res = await client.action.result(rid, timeout_ms=0)
        assert res.status == RunStatus.COMPLETED and res.output == f"done {i}".encode()

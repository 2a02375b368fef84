"""flamepy's fast paths keep what users see: the light TaskFuture, template-packed task records, the
one-copy terminal record (issue 16)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading

import pytest

from flamepy.core import ops
from flamepy.core import records as R
from flamepy.core._store import Store
from flamepy.core.client import TaskFuture, _settle
from flamepy.core.types import FlameError, FlameErrorCode, TaskState

pytestmark = pytest.mark.timeout(60)


def _futures(n: int) -> tuple[threading.Condition, list[TaskFuture]]:
    cond = threading.Condition()
    return cond, [TaskFuture(cond, i + 1) for i in range(n)]


def test_task_future_is_a_future_with_the_usual_surface():
    _, (fut,) = _futures(1)
    assert isinstance(fut, concurrent.futures.Future)
    assert fut.task_id == "1" and not fut.done() and not fut.running() and not fut.cancelled()
    assert fut.cancel() is False  # a submitted task runs: close the session to cancel
    with pytest.raises(concurrent.futures.TimeoutError):
        fut.result(timeout=0.01)
    with pytest.raises(concurrent.futures.TimeoutError):
        fut.exception(timeout=0)
    assert "pending" in repr(fut)
    fut.set_result(b"out")
    assert fut.done() and fut.result() == b"out" and fut.exception() is None
    assert "finished" in repr(fut)
    with pytest.raises(concurrent.futures.InvalidStateError):
        fut.set_result(b"again")


def test_task_future_failure_raises_the_flame_error():
    _, (fut,) = _futures(1)
    err = FlameError(FlameErrorCode.INTERNAL, "boom")
    fut.set_exception(err)
    assert fut.exception() is err
    with pytest.raises(FlameError, match="boom"):
        fut.result()


def test_callbacks_run_once_in_order_and_a_failing_one_is_logged(caplog):
    _, (a, b) = _futures(2)
    seen = []

    def bad(f):
        raise RuntimeError("callback bug")

    a.add_done_callback(lambda f: seen.append(("first", f.result())))
    a.add_done_callback(bad)
    a.add_done_callback(lambda f: seen.append(("third", f.result())))
    b.add_done_callback(lambda f: seen.append(("only", f.result())))
    assert seen == []
    a.set_result(1)
    b.set_result(2)
    assert seen == [("first", 1), ("third", 1), ("only", 2)]
    assert "callback bug" in caplog.text or "exception calling callback" in caplog.text
    a.add_done_callback(lambda f: seen.append(("late", f.result())))  # already done: called at once
    assert seen[-1] == ("late", 1)


def test_a_shared_condition_never_wakes_the_wrong_waiter_for_good():
    """result() on one future stays blocked while others of the same condition finish; two threads
    waiting on one future both get it."""
    cond, futs = _futures(3)
    got = []
    waiter = threading.Thread(target=lambda: got.append(futs[2].result(timeout=30)))
    waiter.start()
    _settle(cond, [(futs[0], "a", None), (futs[1], "b", None)])  # wakes the waiter, which must wait again
    waiter.join(0.2)
    assert waiter.is_alive() and got == []
    second = threading.Thread(target=lambda: got.append(futs[2].result(timeout=30)))
    second.start()
    futs[2].set_result("c")
    waiter.join(10)
    second.join(10)
    assert got == ["c", "c"]


def test_wait_as_completed_and_asyncio_work_with_task_futures():
    cond, futs = _futures(4)
    threading.Timer(0.05, lambda: _settle(cond, [(f, f.task_id, None) for f in futs[:2]])).start()
    done, not_done = concurrent.futures.wait(futs, timeout=10, return_when=concurrent.futures.FIRST_COMPLETED)
    assert done and done <= set(futs[:2])
    _settle(cond, [(futs[2], "3", None), (futs[3], None, FlameError(FlameErrorCode.INTERNAL, "x"))])
    assert sorted(f.task_id for f in concurrent.futures.as_completed(futs, timeout=10)) == ["1", "2", "3", "4"]
    assert not any(f._waiters for f in futs)  # wait/as_completed took their waiters back

    async def main():
        cond2, (f,) = _futures(1)
        loop = asyncio.get_running_loop()
        loop.call_later(0.01, threading.Thread(target=f.set_result, args=(b"async",)).start)
        return await asyncio.wrap_future(f)
    assert asyncio.run(main()) == b"async"


def test_settle_keeps_the_first_outcome_of_a_batch():
    cond, (fut,) = _futures(1)
    _settle(cond, [(fut, "first", None), (fut, "second", None)])
    assert fut.result() == "first"


@pytest.mark.parametrize("reply", ["reply/abc", None])
def test_record_template_packs_what_new_task_record_packs(reply):
    sid, now = "s-tmpl", 1_700_000_000_123
    template = ops._RecordTemplate.of(sid, reply, now)
    assert template is not None
    for tid in (1, 127, 128, 255, 65_536, 2**32 + 5, 2**62):
        for data in (None, b"", b"ping", bytes(300), bytes(70_000)):
            ref, _ = R.split_blob(data, sid)
            assert template.render(tid, ref) == R.pack(R.new_task_record(sid, tid, ref, reply, now))


def test_record_template_steps_aside_when_the_layout_repeats_the_id(monkeypatch):
    real = R.new_task_record

    def with_id_twice(sid, tid, ref, reply, now):
        return {**real(sid, tid, ref, reply, now), "id_again": tid}
    monkeypatch.setattr(R, "new_task_record", with_id_twice)
    assert ops._RecordTemplate.of("s-x", "reply/x", 1) is None


def test_one_copy_terminal_record_equals_running_then_terminal(monkeypatch):
    monkeypatch.setattr(ops, "now_ms", lambda: 1_700_000_009_999)
    rec = R.new_task_record("s-1", 7, ["i", b"in"], "reply/c", 1_700_000_000_000)
    for state, message in ((TaskState.SUCCEED, None), (TaskState.FAILED, "it broke")):
        two_copies = ops.terminal_record(ops.running_record(rec, "inst-1", 1_700_000_000_500), state,
                                         ["i", b"out"], message)
        one_copy = ops.terminal_record(rec, state, ["i", b"out"], message, ("inst-1", 1_700_000_000_500))
        assert R.pack(one_copy) == R.pack(two_copies)
    assert rec["state"] == int(TaskState.PENDING) and len(rec["events"]) == 1  # the input is not changed


async def test_create_tasks_records_are_the_same_on_both_paths(server, monkeypatch):
    """A batch (template) and a lone task (new_task_record) store identical records, and a batch still
    works when the template steps aside."""
    store = await Store(server, namespace="flamepy_fast_paths").connect()
    try:
        sid = "ssn-fast"
        await store.put(R.k_open(sid), b"app")
        monkeypatch.setattr(ops, "now_ms", lambda: 1_700_000_000_000)
        batch = await ops.create_tasks(store, sid, [b"x%d" % i for i in range(100)], "reply/c")
        [lone] = await ops.create_tasks(store, sid, [b"x100"], "reply/c")
        monkeypatch.setattr(ops._RecordTemplate, "of", classmethod(lambda cls, *a: None))
        slow = await ops.create_tasks(store, sid, [b"x%d" % i for i in range(101, 150)], "reply/c")
        ids = batch + [lone] + slow
        assert ids == list(range(1, 151))
        got = await store.mget([R.k_task(sid, t) for t in ids])
        assert [g[0] for g in got] == [R.pack(R.new_task_record(sid, t, ["i", b"x%d" % (t - 1)], "reply/c",
                                                                1_700_000_000_000)) for t in ids]
    finally:
        await store.close()


GATED_SERVICE = '''\
import os, time
from flamepy.core import FlameService, run

class Gated(FlameService):
    """b"fast" answers at once; b"gate:<path>" waits (bounded) until that file exists."""
    def on_task_invoke(self, context):
        if context.input.startswith(b"gate:"):
            path = context.input[5:].decode()
            deadline = time.monotonic() + 60
            while not os.path.exists(path) and time.monotonic() < deadline:
                time.sleep(0.01)
        return context.input

if __name__ == "__main__":
    run(Gated())
'''


@pytest.mark.integration
def test_a_fast_result_does_not_wait_for_a_slow_task_behind_it(flame, tmp_path):
    """Group commit gathers results, but never holds a finished task's result while the next task of
    the same lease runs on: the first result is out while the second still waits for its gate."""
    import flamepy
    from tests.helpers import wait_until

    flame.register("gated-app", GATED_SERVICE)
    ssn = flamepy.create_session("gated-app", min_instances=1, max_instances=1)
    try:
        gate = tmp_path / "gate"
        fast, slow = ssn.run_many([b"fast", b"gate:" + str(gate).encode()])  # one chunk, one instance
        assert wait_until(fast.done, timeout=30, interval=0.01), "the fast result waited for the slow task"
        assert fast.result() == b"fast" and not slow.done()
        gate.touch()
        assert slow.result(60) == b"gate:" + str(gate).encode()
    finally:
        ssn.close()

"""The action/run/worker store alone: no sockets, time passed in."""

from __future__ import annotations

import msgpack
import pytest

from flo_core.spec import RunStatus, WorkerStatus
from flo_server.actions import (
    IDEMPOTENCY_WINDOW_MS,
    WORKER_REMOVE_MS,
    WORKER_UNHEALTHY_MS,
    Actions,
    retry_backoff_ms,
)

NS = "default"
T0 = 1_700_000_000_000


def store(timeout_ms: int = 1000, attempts: int = 3, name: str = "job") -> Actions:
    a = Actions()
    a.register_action(T0, NS, name, 0, timeout_ms, attempts, "")
    return a


class Log:
    """A tiny stand-in for the journal: numbers invokes like LSNs."""

    def __init__(self) -> None:
        self.lsn = 0

    def next(self) -> int:
        self.lsn += 1
        return self.lsn


def invoke(a: Actions, log: Log, now: int = T0, prio: int = 10, key: str | None = None, sig: str | None = None,
           name: str = "job", payload: bytes = b"x") -> str:
    return a.invoke(log.next(), now, NS, name, payload, sig, prio, key)


def take(a: Actions, worker: str, now: int, names: list[str] | None = None, labels: dict | None = None):
    run = a.select(NS, names or ["job"], labels or {}, now)
    return a.take(now, NS, worker, run.run_id) if run is not None else None


def test_priority_lower_first_then_fifo():
    a, log = store(), Log()
    r_late = invoke(a, log, prio=10)
    r_urgent = invoke(a, log, prio=0)
    r_late2 = invoke(a, log, prio=10)
    order = [take(a, "w", T0 + 1).run_id for _ in range(3)]
    assert order == [r_urgent, r_late, r_late2]
    assert take(a, "w", T0 + 1) is None


def test_take_sets_running_attempt_worker_lease():
    a, log = store(timeout_ms=5000), Log()
    rid = invoke(a, log)
    run = take(a, "w1", T0 + 10)
    assert run.run_id == rid and run.status == RunStatus.RUNNING
    assert (run.attempt, run.worker_id, run.started_at, run.lease_until) == (1, "w1", T0 + 10, T0 + 5010)


def test_complete_and_stale_reports():
    a, log = store(), Log()
    rid = invoke(a, log)
    take(a, "w1", T0)
    assert not a.complete(T0 + 1, NS, "w2", rid, "success", b"no")  # not the holder
    assert a.complete(T0 + 1, NS, "w1", rid, "approved", b"out")
    run = a.runs[rid]
    assert (run.status, run.output, run.outcome, run.completed_at) == (RunStatus.COMPLETED, b"out", "approved", T0 + 1)
    assert not a.complete(T0 + 2, NS, "w1", rid, "success", b"again")
    assert not a.fail(T0 + 2, NS, "w1", rid, True, "late")
    assert not a.touch(T0 + 2, NS, "w1", rid, 1000)


def test_retry_with_backoff_then_failed():
    a, log = store(attempts=3), Log()
    rid = invoke(a, log)
    t = T0
    for attempt in (1, 2):
        run = take(a, "w", t)
        assert run.attempt == attempt
        assert a.fail(t, NS, "w", rid, True, f"boom {attempt}")
        assert a.runs[rid].status == RunStatus.PENDING
        # Not takeable during the backoff, takeable right after it.
        due = t + retry_backoff_ms(attempt)
        assert take(a, "w", due - 1) is None
        assert a.next_due() == due
        t = due
    run = take(a, "w", t)
    assert run.attempt == 3
    assert a.fail(t, NS, "w", rid, True, "boom 3")
    assert a.runs[rid].status == RunStatus.FAILED and a.runs[rid].error == "boom 3"


def test_non_retryable_fail_is_final():
    a, log = store(attempts=5), Log()
    rid = invoke(a, log)
    take(a, "w", T0)
    assert a.fail(T0, NS, "w", rid, False, "bad input")
    assert a.runs[rid].status == RunStatus.FAILED


def test_lease_lapse_is_taken_back_then_times_out():
    a, log = store(timeout_ms=1000, attempts=2), Log()
    rid = invoke(a, log)
    take(a, "w1", T0)
    assert a.holds(NS, "w1", rid, T0 + 999)
    # The lease lapses: another worker takes it at once; the first one's report is stale.
    run = take(a, "w2", T0 + 1000)
    assert run.run_id == rid and run.attempt == 2 and run.worker_id == "w2"
    assert not a.complete(T0 + 1001, NS, "w1", rid, "success", b"")
    # Last attempt lapses too: TIMED_OUT at the lease's end.
    a.settle(T0 + 5000)
    run = a.runs[rid]
    assert run.status == RunStatus.TIMED_OUT and run.completed_at == T0 + 2000


def test_touch_extends_lease():
    a, log = store(timeout_ms=1000, attempts=1), Log()
    rid = invoke(a, log)
    take(a, "w", T0)
    assert a.touch(T0 + 900, NS, "w", rid, 5000)
    a.settle(T0 + 3000)
    assert a.runs[rid].status == RunStatus.RUNNING
    a.settle(T0 + 5900)
    assert a.runs[rid].status == RunStatus.TIMED_OUT


def test_no_lease_when_timeout_zero():
    a, log = store(timeout_ms=0), Log()
    rid = invoke(a, log)
    take(a, "w", T0)
    a.settle(T0 + 10**9)
    assert a.runs[rid].status == RunStatus.RUNNING and a.runs[rid].lease_until == 0


def test_idempotency_window():
    a, log = store(), Log()
    r1 = invoke(a, log, key="order-123")
    assert invoke(a, log, now=T0 + 5, key="order-123") == r1
    assert invoke(a, log, now=T0 + 5, key="other") != r1
    assert invoke(a, log, now=T0 + IDEMPOTENCY_WINDOW_MS + 1, key="order-123") != r1


def test_labels_restrict_workers():
    a, log = store(), Log()
    gpu = invoke(a, log, sig='{"gpu":"a100"}')
    plain = invoke(a, log, prio=20)
    assert take(a, "cpu", T0).run_id == plain  # the gpu run is skipped, not blocking
    assert take(a, "cpu", T0) is None
    assert take(a, "gpu", T0, labels={"gpu": "a100", "zone": "eu"}).run_id == gpu


def test_cancel_pending_and_running():
    a, log = store(), Log()
    r1, r2 = invoke(a, log), invoke(a, log)
    assert a.cancel(T0, NS, r1)
    run = take(a, "w", T0)
    assert run.run_id == r2
    assert a.cancel(T0, NS, r2)
    assert not a.complete(T0, NS, "w", r2, "success", b"")
    assert not a.cancel(T0, NS, r2)
    assert {a.runs[r].status for r in (r1, r2)} == {RunStatus.CANCELLED}


def test_delete_cancels_pending():
    a, log = store(), Log()
    r1 = invoke(a, log)
    assert a.delete_action(T0, NS, "job")
    assert a.runs[r1].status == RunStatus.CANCELLED
    assert not a.delete_action(T0, NS, "job")
    assert a.action(NS, "job") is None


def test_await_several_actions_best_priority_across_them():
    a, log = store(), Log()
    a.register_action(T0, NS, "other", 0, 1000, 3, "")
    invoke(a, log, prio=5)
    r_other = invoke(a, log, prio=1, name="other")
    assert take(a, "w", T0, names=["job", "other"]).run_id == r_other


def test_worker_health_and_forgetting():
    a = Actions()
    a.register_worker(T0, NS, "w1", 0, 5, ["job"], '{"gpu":"a100"}', "host")
    w = a.worker(NS, "w1", T0)
    assert w.labels == {"gpu": "a100"} and w.status(T0) == WorkerStatus.IDLE
    assert w.status(T0 + WORKER_UNHEALTHY_MS + 1) == WorkerStatus.UNHEALTHY
    assert a.heartbeat(T0 + WORKER_UNHEALTHY_MS + 1, NS, "w1", 2)
    assert w.status(T0 + WORKER_UNHEALTHY_MS + 2) == WorkerStatus.ACTIVE
    later = T0 + WORKER_UNHEALTHY_MS + 1 + WORKER_REMOVE_MS + 1
    assert not a.heartbeat(later, NS, "w1", 0)
    assert a.worker_count(NS) == 0
    assert not a.heartbeat(T0, NS, "nobody", 0)


def test_drain_is_sticky():
    a = Actions()
    a.register_worker(T0, NS, "w1", 0, 5, ["job"], None, None)
    assert a.drain_worker(T0, NS, "w1")
    a.register_worker(T0 + 1, NS, "w1", 0, 5, ["job"], None, None)
    assert a.worker(NS, "w1", T0 + 1).status(T0 + 1) == WorkerStatus.DRAINING
    assert a.deregister_worker(T0 + 2, NS, "w1")
    assert a.worker(NS, "w1", T0 + 2) is None


def test_list_paging():
    a, log = Actions(), Log()
    for n in ("a1", "a2", "a3", "b1"):
        a.register_action(T0, NS, n, 0, 1000, 3, "")
    page, cur = a.list_actions(NS, "a", None, 2)
    assert [x.name for x in page] == ["a1", "a2"] and cur == "a2"
    page, cur = a.list_actions(NS, "a", cur, 2)
    assert [x.name for x in page] == ["a3"] and cur is None
    ids = [invoke(a, log, name="a1") for _ in range(5)]
    page, cur = a.list_runs(NS, "a1", None, 3)
    assert [r.run_id for r in page] == ids[::-1][:3]
    page, cur = a.list_runs(NS, "a1", cur, 3)
    assert [r.run_id for r in page] == ids[::-1][3:] and cur is None
    for i in range(3):
        a.register_worker(T0, NS, f"w{i}", 0, 1, ["a1"], None, None)
    page, cur = a.list_workers(NS, None, 2, T0)
    assert [w.worker_id for w in page] == ["w0", "w1"]
    page, cur = a.list_workers(NS, cur, 2, T0)
    assert [w.worker_id for w in page] == ["w2"] and cur is None


def _scenario(a: Actions) -> None:
    log = Log()
    a.register_action(T0, NS, "job", 0, 1000, 3, "me")
    a.register_worker(T0, NS, "w1", 0, 4, ["job"], '{"k":1}', "m")
    r1 = invoke(a, log, key="k1")
    invoke(a, log, prio=0, sig='{"k":1}')
    invoke(a, log)
    take(a, "w1", T0 + 1)
    take(a, "w1", T0 + 2, labels={"k": 1})
    a.fail(T0 + 3, NS, "w1", r1, True, "x")


def test_dump_load_round_trip_is_equivalent():
    a = Actions()
    _scenario(a)
    b = Actions()
    b.load(msgpack.unpackb(msgpack.packb(a.dump()), strict_map_key=False))
    assert msgpack.packb(b.dump()) == msgpack.packb(a.dump())
    # Both behave the same from here on.
    for s in (a, b):
        s.settle(T0 + 10_000)
    assert msgpack.packb(b.dump()) == msgpack.packb(a.dump())
    assert [r.status for r in a.runs.values()] == [r.status for r in b.runs.values()]


def test_events_for_waiters():
    a, log = store(), Log()
    a.drain_events()
    rid = invoke(a, log)
    assert a.drain_events() == [("ready", NS, "job", 1, False)]
    take(a, "w", T0)
    a.complete(T0, NS, "w", rid, "success", b"")
    assert a.drain_events() == [("run", NS, rid)]


@pytest.mark.parametrize("attempt,expected", [(1, 200), (2, 400), (6, 6400), (7, 10_000), (50, 10_000)])
def test_backoff(attempt, expected):
    assert retry_backoff_ms(attempt) == expected

"""Action and worker ops (flo-wire-v2 §3.6-3.7, §4.1): handlers, and the ``a.*`` / ``w.*`` records.

The store is :class:`flo_server.actions.Actions` (``srv.actions``). Handlers
validate and refuse; appliers change the store and wake waiters. Waiter keys:
``("a", ns, action)`` runs of an action became takeable, ``("ar", ns, run_id)``
a run finished, ``("w", ns, worker_id)`` a worker was drained (its parked
awaits are refused at once).

Extensions (docs/protocol-action.md): invoke options RUN_PRIORITY (u8, lower
value first, default 10) and IDEMPOTENCY_KEY; ACTION_RESULT (wait for a run to
finish, WAIT_MS); ACTION_CANCEL; answers of ACTION_LIST / ACTION_LIST_RUNS /
WORKER_INFO (the SDK ignores or never sends those); batches: option COUNT on
ACTION_AWAIT (up to COUNT runs in one answer, :func:`assignments_answer`) and on
ACTION_COMPLETE (COUNT reports in one value, one status byte each). A request
without COUNT is served exactly as flo-wire-v2 says, so the SDK is unaffected.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
from typing import Any

from flo_core.body import Reader, Writer, opt_str, opt_uint
from flo_core.errors import Refusal
from flo_core.spec import MAX_BLOCK_MS, Op, Reason, RunStatus, Tag, WorkerStatus
from flo_server import actions as A
from flo_server.actions import Run, Worker
from flo_server.dispatch import Request, handler
from flo_server.journal import applier
from flo_server.waiters import Parked, loop_of

__all__ = ["status_answer", "assignment_answer", "assignments_answer", "BATCH_MARK"]

DEFAULT_LIST_LIMIT = 100
MAX_AWAIT_BATCH = 256  # runs one ACTION_AWAIT with COUNT may carry
MAX_COMPLETE_BATCH = 1024  # reports one ACTION_COMPLETE with COUNT may carry
#: A batch of assignments starts with an empty task id, which a single assignment never has
#: (run ids are non-empty): a worker tells the two layouts apart by these two bytes.
BATCH_MARK = b"\x00\x00"
BATCH = "n"  # the 4th part of a batch await's waiter key: ("a", ns, action, BATCH)

_head = struct.Struct("<H")
_times = struct.Struct("<qIB")  # created_at i64, attempt u32, has_caller u8
_u32 = struct.Struct("<I")
# status u8, created i64, present + started i64, present + completed i64, attempt u32, present + output length u16
_done_head = struct.Struct("<BqBqBqIBH")
_present16 = struct.Struct("<BH")

log = logging.getLogger("flo_server.action")


# --- waking waiters ---------------------------------------------------------------


def _flush(srv: Any) -> None:
    """Turn the store's events into wake-ups, and keep the timer armed for the next due time.

    Awaits that take one run (the SDK's) are woken one per new run, at once. Awaits that take
    batches (COUNT) park on their own key and are woken once per loop turn: the first takes
    every ready run it has room for and wakes the next only if some are left (:func:`_take_batch`),
    so runs invoked in one turn go out in one answer instead of waking one worker each."""
    waiters = srv.waiters
    for ev in srv.actions.drain_events():
        if ev[0] == "ready":
            _, ns, name, n, labeled = ev
            # A labelled run may suit only some waiters: wake them all to look.
            waiters.notify(("a", ns, name), 0 if labeled else n)
            bkey = ("a", ns, name, BATCH)
            if waiters.has_waiters(bkey):
                if labeled:
                    waiters.notify(bkey, 0)
                else:
                    _wake_later(srv, bkey)
        elif ev[0] == "run":
            waiters.notify(("ar", ev[1], ev[2]), 0)
    _arm_timer(srv)


def _wake_later(srv: Any, key: tuple) -> None:
    wakes = getattr(srv, "_action_wakes", None)
    if wakes is None:
        wakes = srv._action_wakes = {}
    if not wakes:
        loop_of(srv).call_soon(_wake_batches, srv)
    wakes[key] = None


def _wake_batches(srv: Any) -> None:
    wakes, srv._action_wakes = srv._action_wakes, {}
    for key in wakes:
        srv.waiters.notify(key, 1)


def _arm_timer(srv: Any) -> None:
    """One timer per server fires at the store's next due time (a retry's backoff
    ends, a lease lapses) and settles it, which wakes exactly the waiters that
    care. Without it a parked await would only notice at the end of its wait."""
    due = srv.actions.next_due()
    if due is None:
        return
    armed = getattr(srv, "_action_timer", None)
    if armed is not None and armed[0] <= due and not armed[1].cancelled():
        return
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:  # replay before the loop runs: the first request settles
        return
    if armed is not None:
        armed[1].cancel()
    delay = max(due - srv.now(), 0) / 1000.0 + 0.001
    srv._action_timer = (due, loop.call_later(delay, _on_timer, srv))


def _on_timer(srv: Any) -> None:
    srv._action_timer = None
    try:
        _settle(srv, srv.now())
    except Exception:  # noqa: BLE001 - a timer must never take the loop down
        log.exception("action timer failed")


def _settle(srv: Any, now: int) -> None:
    srv.actions.settle(now)
    _flush(srv)


# --- appliers: the only code that changes actions, runs and workers ------------------


@applier("a.reg")
def apply_register(
    srv: Any, lsn: int, now: int, ns: str, name: str, action_type: int, timeout_ms: int, max_retries: int, owner: str
) -> None:
    srv.actions.register_action(now, ns, name, action_type, timeout_ms, max_retries, owner)
    _flush(srv)


@applier("a.del")
def apply_delete(srv: Any, lsn: int, now: int, ns: str, name: str) -> bool:
    out = srv.actions.delete_action(now, ns, name)
    _flush(srv)
    return out


@applier("a.inv")
def apply_invoke(
    srv: Any, lsn: int, now: int, ns: str, name: str, payload: bytes, labels: str | None, priority: int, key: str | None
) -> str:
    run_id = srv.actions.invoke(lsn, now, ns, name, payload, labels, priority, key)
    _flush(srv)
    return run_id


@applier("a.take")
def apply_take(srv: Any, lsn: int, now: int, ns: str, worker_id: str, run_id: str) -> Run | None:
    run = srv.actions.take(now, ns, worker_id, run_id)
    _flush(srv)
    return run


@applier("a.takes")
def apply_takes(srv: Any, lsn: int, now: int, ns: str, worker_id: str, run_ids: list) -> list[Run]:
    """One await's batch: the runs :meth:`Actions.select_many` chose, taken in that order."""
    take = srv.actions.take
    runs = [run for run in (take(now, ns, worker_id, rid) for rid in run_ids) if run is not None]
    _flush(srv)
    return runs


@applier("a.dones")
def apply_completes(srv: Any, lsn: int, now: int, ns: str, worker_id: str, reports: list) -> int:
    """One batch of completions: ``[[run_id, outcome, output], ...]`` (each checked by the handler)."""
    complete = srv.actions.complete
    done = sum(1 for run_id, outcome, output in reports if complete(now, ns, worker_id, run_id, outcome, output))
    _flush(srv)
    return done


@applier("a.done")
def apply_complete(
    srv: Any, lsn: int, now: int, ns: str, worker_id: str, run_id: str, outcome: str, output: bytes
) -> bool:
    out = srv.actions.complete(now, ns, worker_id, run_id, outcome, output)
    _flush(srv)
    return out


@applier("a.fail")
def apply_fail(srv: Any, lsn: int, now: int, ns: str, worker_id: str, run_id: str, retry: bool, message: str) -> bool:
    out = srv.actions.fail(now, ns, worker_id, run_id, retry, message)
    _flush(srv)
    return out


@applier("a.touch")
def apply_touch(srv: Any, lsn: int, now: int, ns: str, worker_id: str, run_id: str, extend_ms: int) -> bool:
    out = srv.actions.touch(now, ns, worker_id, run_id, extend_ms)
    _flush(srv)
    return out


@applier("a.cancel")
def apply_cancel(srv: Any, lsn: int, now: int, ns: str, run_id: str) -> bool:
    out = srv.actions.cancel(now, ns, run_id)
    _flush(srv)
    return out


@applier("w.reg")
def apply_worker_register(
    srv: Any,
    lsn: int,
    now: int,
    ns: str,
    worker_id: str,
    worker_type: int,
    max_concurrency: int,
    actions: list,
    metadata: str | None,
    machine_id: str | None,
) -> None:
    srv.actions.register_worker(now, ns, worker_id, worker_type, max_concurrency, list(actions), metadata, machine_id)
    _flush(srv)


@applier("w.hb")
def apply_heartbeat(srv: Any, lsn: int, now: int, ns: str, worker_id: str, load: int) -> bool:
    out = srv.actions.heartbeat(now, ns, worker_id, load)
    _flush(srv)
    return out


@applier("w.dereg")
def apply_worker_deregister(srv: Any, lsn: int, now: int, ns: str, worker_id: str) -> bool:
    out = srv.actions.deregister_worker(now, ns, worker_id)
    _flush(srv)
    srv.waiters.notify(("w", ns, worker_id), 0)
    return out


@applier("w.drain")
def apply_worker_drain(srv: Any, lsn: int, now: int, ns: str, worker_id: str) -> bool:
    out = srv.actions.drain_worker(now, ns, worker_id)
    _flush(srv)
    srv.waiters.notify(("w", ns, worker_id), 0)
    return out


# --- field helpers ------------------------------------------------------------------------


def _text(raw: bytes, what: str, limit: int, *, empty_ok: bool = False) -> str:
    if not raw and not empty_ok:
        raise Refusal(Reason.MALFORMED, f"{what} is empty")
    if len(raw) > limit:
        raise Refusal(Reason.FIELD_TOO_LONG, f"{what} is longer than {limit} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Refusal(Reason.MALFORMED, f"{what} is not UTF-8") from None


def _action_name(raw: bytes) -> str:
    return _text(raw, "action name", A.MAX_ACTION_NAME)


def _worker_id(raw: bytes) -> str:
    return _text(raw, "worker id", A.MAX_WORKER_ID)


def _run_id(raw: bytes) -> str:
    return _text(raw, "run id", 255)


def _wait_ms(opts: dict[int, bytes], tag: int, default: int) -> int:
    ms = opt_uint(opts, tag, default)
    assert ms is not None
    if ms > MAX_BLOCK_MS:
        raise Refusal(Reason.OUT_OF_RANGE, f"wait of {ms} ms is over {MAX_BLOCK_MS}")
    return ms


def _limit_cursor(value: bytes, opts: dict[int, bytes]) -> tuple[int, bytes]:
    """``[limit u32][cursor: rest]`` (the SDK's list value), LIMIT / CURSOR options override."""
    r = Reader(value)
    limit = r.u32() if r.remaining >= 4 else DEFAULT_LIST_LIMIT
    cursor = r.rest()
    limit = opt_uint(opts, Tag.LIMIT, limit) or 0
    cursor = opts.get(Tag.CURSOR, cursor)
    if not 1 <= limit <= A.MAX_LIST_LIMIT:
        raise Refusal(Reason.OUT_OF_RANGE, f"limit must be 1..{A.MAX_LIST_LIMIT}, got {limit}")
    return limit, cursor


# --- answers ------------------------------------------------------------------------------


def _status_fields(w: Writer, run: Run, *, with_output: bool = True) -> Writer:
    output = run.output if with_output and run.status == RunStatus.COMPLETED else None
    error = run.error.encode("utf-8") if run.error is not None else None
    worker = run.worker_id.encode("utf-8") if run.worker_id is not None else None
    return (
        w.u8(int(run.status))
        .i64(run.created_at)
        .opt_i64(run.started_at)
        .opt_i64(run.completed_at)
        .u32(run.attempt)
        .opt_bytes16(output)
        .opt_bytes16(error)
        .opt_bytes16(worker)
    )


def status_answer(run: Run) -> bytes:
    """ACTION_STATUS OK: ``[status u8][created_at i64][opt started i64][opt completed i64]
    [attempt u32][opt output bytes16][opt error bytes16][opt worker_id bytes16]``."""
    return _status_fields(Writer(), run).getvalue()


def _result_answer(run: Run) -> bytes:
    """ACTION_RESULT OK: the status layout, then ``opt(outcome str16)``."""
    status = run.status
    out = run.output
    if (status == RunStatus.COMPLETED and out is not None and run.error is None and run.outcome is not None
            and run.started_at is not None and run.completed_at is not None):
        # The common answer (a run that completed), packed in one go; the same bytes as below.
        worker, outcome = run.worker_id, run.outcome
        wb, ob = worker.encode("utf-8") if worker is not None else None, outcome.encode("utf-8")
        return b"".join((
            _done_head.pack(int(status), run.created_at, 1, run.started_at, 1, run.completed_at, run.attempt, 1, len(out)),
            out, b"\x00",  # no error
            _present16.pack(1, len(wb)) + wb if wb is not None else b"\x00",
            _present16.pack(1, len(ob)), ob,
        ))
    return _status_fields(Writer(), run).opt_str16(run.outcome).getvalue()


def _assignment_head(run: Run) -> bytes:
    rid = run.run_id.encode("utf-8")
    name = run.action.encode("utf-8")
    return b"".join((_head.pack(len(rid)), rid, _head.pack(len(name)), name, _times.pack(run.created_at, run.attempt, 0)))


def assignment_answer(run: Run) -> bytes:
    """ACTION_AWAIT OK: ``[task_id str16][task_type str16][created_at i64][attempt u32][has_caller u8 = 0][payload]``."""
    return _assignment_head(run) + run.payload


def assignments_answer(runs: list[Run]) -> bytes:
    """ACTION_AWAIT with COUNT, OK: ``BATCH_MARK [n u16]`` then n x (an assignment's head, then
    ``[payload bytes32]``), runs in the order they were taken.

    >>> r = Run("act-1", "default", "a", 1, b"in", "", 10, None, 5, 3, 0, attempt=1)
    >>> assignments_answer([r]).hex()
    '0000010005006163742d310100610500000000000000010000000002000000696e'
    """
    parts = [BATCH_MARK, _head.pack(len(runs))]
    for run in runs:
        parts += (_assignment_head(run), _u32.pack(len(run.payload)), run.payload)
    return b"".join(parts)


def _worker_entry(w: Writer, wk: Worker, now: int) -> Writer:
    machine = wk.machine_id.encode("utf-8")[:255] if wk.machine_id else None
    return (
        w.str16(wk.worker_id)
        .u8(wk.worker_type)
        .u8(int(wk.status(now)))
        .u32(wk.current_load)
        .u32(wk.max_concurrency)
        .u64(wk.tasks_completed)
        .u64(wk.tasks_failed)
        .i64(wk.registered_at)
        .i64(wk.last_heartbeat)
        .opt_bytes8(machine)
    )


# --- actions -------------------------------------------------------------------------------


@handler(Op.ACTION_REGISTER)
def action_register(srv: Any, req: Request) -> bytes:
    """value ``[type u8][timeout_ms u32][max_retries u32][owner str16]`` -> empty. Creates or replaces."""
    name = _action_name(req.key)
    r = Reader(req.value)
    action_type = r.u8()
    timeout_ms = r.u32()
    max_retries = r.u32()
    owner = r.str16() if r.remaining >= 2 else ""
    if action_type != 0:
        raise Refusal(Reason.OUT_OF_RANGE, f"action type {action_type} is not served (only 0 = USER)")
    ns = req.ns
    if srv.actions.action(ns, name) is None and srv.actions.action_count(ns) >= A.MAX_ACTIONS_PER_NAMESPACE:
        raise Refusal(Reason.OUT_OF_RANGE, f"namespace already has {A.MAX_ACTIONS_PER_NAMESPACE} actions")
    srv.write("a.reg", req.now, ns, name, action_type, timeout_ms, max_retries, owner)
    return b""


@handler(Op.ACTION_INVOKE)
def action_invoke(srv: Any, req: Request) -> Any:
    """value ``[has_labels u8][labels str16]?[input: rest]``, options RUN_PRIORITY u8 /
    IDEMPOTENCY_KEY string -> ``[run_id str16][0x00]``.

    ext: with option WAIT_MS (u32, ≤ MAX_BLOCK_MS) the answer waits for the run like ACTION_RESULT
    does and is ``[run_id str16]`` then ACTION_RESULT's answer: one request instead of two for
    the invoker (a client that sends no WAIT_MS, like the SDK, gets the plain answer)."""
    name = _action_name(req.key)
    value = req.value
    labels_sig = None
    if value[:1] == b"\x00":  # no labels (the common case): the input is the rest
        payload = value[1:]
    else:
        r = Reader(value)
        if r.flag():
            raw = r.bytes16()
            try:
                labels = A.parse_labels(raw.decode("utf-8"))
            except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
                raise Refusal(Reason.MALFORMED, f"labels: {e}") from None
            labels_sig = json.dumps(labels, sort_keys=True, separators=(",", ":")) if labels else None
        payload = r.rest()
    if len(payload) > A.MAX_RUN_INPUT:
        raise Refusal(Reason.FIELD_TOO_LONG, f"input is longer than {A.MAX_RUN_INPUT} bytes")
    priority, key, wait_ms = A.DEFAULT_RUN_PRIORITY, None, 0
    if req.opts:
        priority = opt_uint(req.opts, Tag.RUN_PRIORITY, A.DEFAULT_RUN_PRIORITY)  # type: ignore[assignment]
        if priority > 255:
            raise Refusal(Reason.OUT_OF_RANGE, "priority must be 0..255")
        key = opt_str(req.opts, Tag.IDEMPOTENCY_KEY) or None
        wait_ms = _wait_ms(req.opts, Tag.WAIT_MS, 0)
    ns, store = req.ns, srv.actions
    if store.action(ns, name) is None:
        raise Refusal(Reason.NOT_FOUND, f"action {name!r} is not registered")
    run_id = store.idempotent_hit(ns, name, key, req.now) if key is not None else None
    if run_id is None:  # (a hit inside the key's window: the same run, nothing written)
        if store.unfinished >= A.MAX_UNFINISHED_RUNS:
            raise Refusal(Reason.TOO_MANY_PROPOSALS, "too many unfinished runs; retry later")
        run_id = srv.write("a.inv", req.now, ns, name, payload, labels_sig, priority, key)
    if not wait_ms:
        return _invoke_answer(run_id)
    head = _run_id_field(run_id)
    run = store.run(ns, run_id)
    if run is None or run.finished:
        return head + _result_of(run, run_id)
    return _park_result(srv, req, run_id, wait_ms, head)


def _run_id_field(run_id: str) -> bytes:
    rid = run_id.encode("utf-8")
    return _head.pack(len(rid)) + rid


def _invoke_answer(run_id: str) -> bytes:
    """``[run_id str16][0x00]`` (the trailing byte: an absent output)."""
    return _run_id_field(run_id) + b"\x00"


@handler(Op.ACTION_STATUS)
def action_status(srv: Any, req: Request) -> bytes:
    """Table op: key = run id, body empty -> the status layout (:func:`status_answer`)."""
    run_id = _run_id(req.key)
    _settle(srv, req.now)
    run = srv.actions.run(req.ns, run_id)
    if run is None:
        raise Refusal(Reason.NOT_FOUND, f"no run {run_id!r}")
    return status_answer(run)


@handler(Op.ACTION_RESULT)
def action_result(srv: Any, req: Request) -> Any:
    """ext: key = run id, option WAIT_MS (or BLOCK_MS) u32 -> the status layout + opt(outcome str16),
    once the run has finished or the wait is over (then with its current status)."""
    run_id = _run_id(req.key)
    wait_ms = _wait_ms(req.opts, Tag.WAIT_MS, _wait_ms(req.opts, Tag.BLOCK_MS, 0))
    ns = req.ns
    _settle(srv, req.now)
    run = srv.actions.run(ns, run_id)
    if run is None or run.finished or wait_ms == 0:
        return _result_of(run, run_id)
    return _park_result(srv, req, run_id, wait_ms)


def _result_of(run: Run | None, run_id: str) -> bytes:
    if run is None:
        raise Refusal(Reason.NOT_FOUND, f"no run {run_id!r}")
    return _result_answer(run)


def _park_result(srv: Any, req: Request, run_id: str, wait_ms: int, head: bytes = b"") -> Parked:
    """Park until the run has finished (or the wait is over, then answer its current status):
    ``head`` + ACTION_RESULT's answer. Nothing is taken, so there is no wake-up to hand on."""
    ns, store = req.ns, srv.actions

    def step(final: bool) -> bytes | None:
        if final:
            _settle(srv, srv.now())  # the wait ran out: a lapse may be due that no timer fired yet
        run = store.run(ns, run_id)
        if run is None:
            raise Refusal(Reason.NOT_FOUND, f"run {run_id!r} is no longer kept")
        return head + _result_answer(run) if run.finished or final else None

    return srv.waiters.park((("ar", ns, run_id),), req.conn, wait_ms / 1000.0, step)


@handler(Op.ACTION_CANCEL)
def action_cancel(srv: Any, req: Request) -> bytes:
    """ext: key = run id -> ``[cancelled u8][status u8]`` (cancelled = 0 when it had already finished)."""
    run_id = _run_id(req.key)
    _settle(srv, req.now)
    run = srv.actions.run(req.ns, run_id)
    if run is None:
        raise Refusal(Reason.NOT_FOUND, f"no run {run_id!r}")
    done = False
    if not run.finished:
        done = srv.write("a.cancel", req.now, req.ns, run_id)
    return Writer().flag(done).u8(int(run.status)).getvalue()


@handler(Op.ACTION_LIST)
def action_list(srv: Any, req: Request) -> bytes:
    """key = name prefix (or option PREFIX), value ``[limit u32][cursor: rest]`` ->
    ``[n u16] n x ([name str16][type u8][timeout_ms u32][max_retries u32][owner str16]
    [created_at i64][updated_at i64][version u32][pending u32][running u32])`` ``opt(str16 next cursor)``."""
    prefix = _text(req.key, "prefix", A.MAX_ACTION_NAME, empty_ok=True)
    prefix = opt_str(req.opts, Tag.PREFIX, prefix) or ""
    limit, cursor = _limit_cursor(req.value, req.opts)
    after = _text(cursor, "cursor", A.MAX_ACTION_NAME) if cursor else None
    _settle(srv, req.now)
    store = srv.actions
    page, nxt = store.list_actions(req.ns, prefix, after, limit)
    w = Writer().u16(len(page))
    for a in page:
        pending, running = store.counts(a.ns, a.name)
        w.str16(a.name).u8(a.action_type).u32(a.timeout_ms).u32(a.max_retries).str16(a.owner)
        w.i64(a.created_at).i64(a.updated_at).u32(a.version).u32(pending).u32(running)
    return w.opt_str16(nxt).getvalue()


@handler(Op.ACTION_LIST_RUNS)
def action_list_runs(srv: Any, req: Request) -> bytes:
    """key = action name (empty: every run of the namespace), value ``[limit u32][cursor: rest]``
    (cursor = 8-byte LE u64 from the last page) -> runs newest first:
    ``[n u16] n x ([run_id str16][action str16][priority u8] status layout without output,
    opt(outcome str16))`` ``opt(u64 next cursor)``."""
    name = _text(req.key, "action name", A.MAX_ACTION_NAME, empty_ok=True) or None
    limit, cursor = _limit_cursor(req.value, req.opts)
    if cursor and len(cursor) != 8:
        raise Refusal(Reason.MALFORMED, "runs cursor must be 8 bytes")
    before = int.from_bytes(cursor, "little") if cursor else None
    _settle(srv, req.now)
    page, nxt = srv.actions.list_runs(req.ns, name, before, limit)
    w = Writer().u16(len(page))
    for run in page:
        w.str16(run.run_id).str16(run.action).u8(run.priority)
        _status_fields(w, run, with_output=False).opt_str16(run.outcome)
    return w.opt_u64(nxt).getvalue()


@handler(Op.ACTION_DELETE)
def action_delete(srv: Any, req: Request) -> bytes:
    """key = action name -> empty. Pending runs are cancelled. Idempotent."""
    name = _action_name(req.key)
    if srv.actions.action(req.ns, name) is not None:
        srv.write("a.del", req.now, req.ns, name)
    return b""


# --- the worker side of runs ---------------------------------------------------------------------


@handler(Op.ACTION_AWAIT)
def action_await(srv: Any, req: Request) -> Any:
    """key = worker id, value ``[n u32] n x str16 action``, option BLOCK_MS (absent = 30 000,
    0 = don't wait) -> empty (nothing came) or a task assignment (:func:`assignment_answer`).
    ext: option COUNT u32 (1..256) -> up to COUNT runs at once (:func:`assignments_answer`),
    as many as are ready; it waits only while none is."""
    worker_id = _worker_id(req.key)
    r = Reader(req.value)
    n = r.u32()
    if not 1 <= n <= A.MAX_WORKER_ACTIONS:
        raise Refusal(Reason.OUT_OF_RANGE, f"await names 1..{A.MAX_WORKER_ACTIONS} actions, not {n}")
    names = list(dict.fromkeys(_action_name(r.bytes16()) for _ in range(n)))
    block_ms = _wait_ms(req.opts, Tag.BLOCK_MS, A.DEFAULT_AWAIT_BLOCK_MS)
    count = opt_uint(req.opts, Tag.COUNT, 0)
    if count is not None and count > MAX_AWAIT_BATCH:
        raise Refusal(Reason.OUT_OF_RANGE, f"an await takes at most {MAX_AWAIT_BATCH} runs, not {count}")
    ns = req.ns

    def attempt() -> bytes | None:
        now = srv.now()
        _settle(srv, now)
        labels = _admit(srv, ns, worker_id, now)
        if count:
            return _take_batch(srv, ns, worker_id, names, labels, now, count)
        run = srv.actions.select(ns, names, labels, now)
        if run is None:
            return None
        taken = srv.write("a.take", now, ns, worker_id, run.run_id)
        return assignment_answer(taken) if taken is not None else None

    out = attempt()
    if out is not None or block_ms == 0:
        return out or b""
    return _await_run(srv, req, ns, worker_id, names, block_ms, attempt, BATCH if count else None)


def _take_batch(srv: Any, ns: str, worker_id: str, names: list[str], labels: dict[str, Any], now: int,
                count: int) -> bytes | None:
    """Up to ``count`` ready runs for one batch await, in one log record; wakes the next batch
    waiter when this one was filled and runs are left."""
    store = srv.actions
    picked = store.select_many(ns, names, labels, now, count)
    if not picked:
        return None
    runs = srv.write("a.takes", now, ns, worker_id, [run.run_id for run in picked])
    if len(picked) == count and store.select(ns, names, labels, now) is not None:
        for name in names:
            srv.waiters.notify(("a", ns, name, BATCH), 1)
    return assignments_answer(runs) if runs else None


def _admit(srv: Any, ns: str, worker_id: str, now: int) -> dict[str, Any]:
    """Refuse a draining or unhealthy worker; the labels of one that may take work.
    An await from a worker that never registered is served, without labels."""
    w = srv.actions.worker(ns, worker_id, now)
    if w is None:
        return {}
    st = w.status(now)
    if st == WorkerStatus.DRAINING:
        raise Refusal(Reason.WORKER_DRAINING, f"worker {worker_id!r} is draining")
    if st == WorkerStatus.UNHEALTHY:
        raise Refusal(Reason.WORKER_UNHEALTHY, f"worker {worker_id!r} missed its heartbeats; heartbeat first")
    return w.labels


def _await_run(srv: Any, req: Request, ns: str, worker_id: str, names: list[str], block_ms: int, attempt: Any,
               kind: str | None = None) -> Parked:
    """Park an await until a run it may take is ready (or a drain of its worker); empty when the
    wait is over. ``attempt`` is tried after every wake-up."""
    keys = [("a", ns, name) if kind is None else ("a", ns, name, kind) for name in names] + [("w", ns, worker_id)]

    def step(final: bool) -> bytes | None:
        out = attempt()
        return b"" if out is None and final else out

    return srv.waiters.park(keys, req.conn, block_ms / 1000.0, step)


def _report_target(srv: Any, req: Request, r: Reader) -> tuple[str, str, str]:
    worker_id = _worker_id(req.key)
    action = _action_name(r.bytes16())
    run_id = _run_id(r.bytes16())
    return worker_id, action, run_id


def _check_holder(srv: Any, ns: str, worker_id: str, action: str, run_id: str, now: int) -> None:
    """NOT_FOUND for an unknown run, STALE_REPORT when this worker no longer holds it."""
    _settle(srv, now)
    refusal = _holder_refusal(srv, ns, worker_id, action, run_id, now)
    if refusal is not None:
        raise refusal


def _holder_refusal(srv: Any, ns: str, worker_id: str, action: str, run_id: str, now: int) -> Refusal | None:
    """What :func:`_check_holder` raises, or None when the worker holds the run (the store is settled)."""
    store = srv.actions
    run = store.run(ns, run_id)
    if run is None or run.action != action:
        return Refusal(Reason.NOT_FOUND, f"no run {run_id!r} of action {action!r}")
    if not A.held_by(run, worker_id, now):
        why = run.status.name.lower() if run.finished else f"held by {run.worker_id!r}, attempt {run.attempt}"
        if run.status == RunStatus.PENDING:
            why = "taken back (lease lapsed or retried)"
        return Refusal(Reason.STALE_REPORT, f"worker {worker_id!r} no longer holds run {run_id!r}: {why}")
    return None


def _outcome(raw: bytes) -> str:
    return _text(raw, "outcome", A.MAX_OUTCOME, empty_ok=True) or "success"


@handler(Op.ACTION_COMPLETE)
def action_complete(srv: Any, req: Request) -> bytes:
    """key = worker id, value ``[action str16][task_id str16][outcome str16][result bytes16]`` -> empty.
    ext: option COUNT u32 (1..1024): the value holds COUNT such reports (:func:`_complete_many`)."""
    count = opt_uint(req.opts, Tag.COUNT, 0)
    if count:
        return _complete_many(srv, req, count)
    r = Reader(req.value)
    worker_id, action, run_id = _report_target(srv, req, r)
    outcome = _outcome(r.bytes16())
    output = r.bytes16()
    _check_holder(srv, req.ns, worker_id, action, run_id, req.now)
    srv.write("a.done", req.now, req.ns, worker_id, run_id, outcome, output)
    return b""


def _complete_many(srv: Any, req: Request, count: int) -> bytes:
    """COUNT reports of one worker -> ``[n u16] n x [reason u8]``: 0 = completed, else the
    reason a single COMPLETE would have been refused with (NOT_FOUND, STALE_REPORT). A malformed
    report refuses the whole request before anything is written; the rest go in one log record."""
    if count > MAX_COMPLETE_BATCH:
        raise Refusal(Reason.OUT_OF_RANGE, f"a complete carries at most {MAX_COMPLETE_BATCH} reports, not {count}")
    worker_id = _worker_id(req.key)
    reports = _reports(req.value, count)
    ns, now = req.ns, req.now
    _settle(srv, now)
    codes = bytearray(count)
    accepted: list[list[Any]] = []
    seen: set[str] = set()
    for i, (action, run_id, outcome, output) in enumerate(reports):
        refusal = _holder_refusal(srv, ns, worker_id, action, run_id, now)
        if refusal is None and run_id in seen:  # the same run twice: the second report is stale
            refusal = Refusal(Reason.STALE_REPORT, f"run {run_id!r} reported twice")
        if refusal is not None:
            codes[i] = int(refusal.reason)
            continue
        seen.add(run_id)
        accepted.append([run_id, outcome, output])
    if accepted:
        srv.write("a.dones", now, ns, worker_id, accepted)
    return _head.pack(count) + bytes(codes)


def _reports(value: bytes, count: int) -> list[tuple[str, str, str, bytes]]:
    """``count`` x ``[action str16][task_id str16][outcome str16][result bytes16]``, nothing after."""
    out = []
    pos, end = 0, len(value)
    for _ in range(count):
        fields = []
        for _ in range(4):
            if pos + 2 > end:
                raise Refusal(Reason.MALFORMED, f"reports cut short: {count} announced, {len(out)} complete")
            stop = pos + 2 + (value[pos] | value[pos + 1] << 8)
            if stop > end:
                raise Refusal(Reason.MALFORMED, f"reports cut short: {count} announced, {len(out)} complete")
            fields.append(value[pos + 2 : stop])
            pos = stop
        out.append((_action_name(fields[0]), _run_id(fields[1]), _outcome(fields[2]), fields[3]))
    if pos != end:
        raise Refusal(Reason.MALFORMED, f"{end - pos} bytes after {count} reports")
    return out


@handler(Op.ACTION_FAIL)
def action_fail(srv: Any, req: Request) -> bytes:
    """key = worker id, value ``[action str16][task_id str16][retry u8][message: rest]`` -> empty."""
    r = Reader(req.value)
    worker_id, action, run_id = _report_target(srv, req, r)
    retry = r.flag()
    message = r.rest()[: A.MAX_ERROR_MESSAGE + 4].decode("utf-8", "replace")
    _check_holder(srv, req.ns, worker_id, action, run_id, req.now)
    srv.write("a.fail", req.now, req.ns, worker_id, run_id, retry, message)
    return b""


@handler(Op.ACTION_TOUCH)
def action_touch(srv: Any, req: Request) -> bytes:
    """key = worker id, value ``[action str16][task_id str16][extend_ms u32]`` -> empty.
    The lease becomes now + extend_ms (1..3 600 000)."""
    r = Reader(req.value)
    worker_id, action, run_id = _report_target(srv, req, r)
    extend_ms = r.u32()
    if not 1 <= extend_ms <= A.MAX_TOUCH_EXTEND_MS:
        raise Refusal(Reason.OUT_OF_RANGE, f"extend_ms must be 1..{A.MAX_TOUCH_EXTEND_MS}")
    _check_holder(srv, req.ns, worker_id, action, run_id, req.now)
    srv.write("a.touch", req.now, req.ns, worker_id, run_id, extend_ms)
    return b""


# --- workers ---------------------------------------------------------------------------------------


@handler(Op.WORKER_REGISTER)
def worker_register(srv: Any, req: Request) -> bytes:
    """key = worker id, value ``[type u8][max_concurrency u32][n u16] n x ([name str16][kind u8])
    [has_meta u8][meta str16]? [has_machine u8][machine str16]?`` -> empty. Metadata that is
    a JSON object gives the worker's labels."""
    worker_id = _worker_id(req.key)
    r = Reader(req.value)
    worker_type = r.u8()
    if worker_type > 1:
        raise Refusal(Reason.OUT_OF_RANGE, "worker type must be 0 (action) or 1 (stream)")
    max_concurrency = r.u32()
    n = r.u16()
    if n > A.MAX_WORKER_ACTIONS:
        raise Refusal(Reason.OUT_OF_RANGE, f"a worker names at most {A.MAX_WORKER_ACTIONS} actions")
    names = []
    for _ in range(n):
        raw = r.bytes16()
        r.u8()  # kind: mirrors the worker type
        names.append(_text(raw, "process name", A.MAX_ACTION_NAME * 2))
    metadata = r.str16() if r.present() else None
    machine = r.str16() if r.present() else None
    if machine is not None and len(machine.encode("utf-8")) > A.MAX_MACHINE_ID:
        raise Refusal(Reason.FIELD_TOO_LONG, f"machine id is longer than {A.MAX_MACHINE_ID} bytes")
    ns = req.ns
    if srv.actions.worker(ns, worker_id, req.now) is None and srv.actions.worker_count(ns) >= A.MAX_WORKERS_PER_NAMESPACE:
        raise Refusal(Reason.OUT_OF_RANGE, f"namespace already has {A.MAX_WORKERS_PER_NAMESPACE} workers")
    srv.write("w.reg", req.now, ns, worker_id, worker_type, max_concurrency, names, metadata, machine)
    return b""


@handler(Op.WORKER_HEARTBEAT)
def worker_heartbeat(srv: Any, req: Request) -> bytes:
    """key = worker id, value ``[current_load u32]`` -> empty; NOT_FOUND for an unknown or
    forgotten worker (it should register again)."""
    worker_id = _worker_id(req.key)
    r = Reader(req.value)
    load = r.u32() if r.remaining >= 4 else 0
    _settle(srv, req.now)
    if srv.actions.worker(req.ns, worker_id, req.now) is None:
        raise Refusal(Reason.NOT_FOUND, f"worker {worker_id!r} is not registered")
    srv.write("w.hb", req.now, req.ns, worker_id, load)
    return b""


@handler(Op.WORKER_DEREGISTER)
def worker_deregister(srv: Any, req: Request) -> bytes:
    """key = worker id -> empty. Idempotent; runs it holds come back when their leases lapse."""
    worker_id = _worker_id(req.key)
    if srv.actions.worker(req.ns, worker_id, req.now) is not None:
        srv.write("w.dereg", req.now, req.ns, worker_id)
    return b""


@handler(Op.WORKER_DRAIN)
def worker_drain(srv: Any, req: Request) -> bytes:
    """key = worker id -> empty. Its awaits are refused WORKER_DRAINING from now on (parked
    ones at once); runs it holds may still report. Sticky until deregistered."""
    worker_id = _worker_id(req.key)
    if srv.actions.worker(req.ns, worker_id, req.now) is None:
        raise Refusal(Reason.NOT_FOUND, f"worker {worker_id!r} is not registered")
    srv.write("w.drain", req.now, req.ns, worker_id)
    return b""


@handler(Op.WORKER_LIST)
def worker_list(srv: Any, req: Request) -> bytes:
    """Table op: key empty, body ``opt(u32 limit 1..1024)[cursor bytes16]`` -> ``[n u16]`` entries
    ``opt(bytes16 next cursor)``, in id order (flo-wire-v2 §3.7)."""
    r = Reader(req.body)
    limit = r.opt_u32()
    limit = DEFAULT_LIST_LIMIT if limit is None else limit
    if not 1 <= limit <= A.MAX_LIST_LIMIT:
        raise Refusal(Reason.OUT_OF_RANGE, f"limit must be 1..{A.MAX_LIST_LIMIT}")
    cursor = r.bytes16() if r.remaining >= 2 else b""
    after = _text(cursor, "cursor", A.MAX_WORKER_ID) if cursor else None
    _settle(srv, req.now)
    page, nxt = srv.actions.list_workers(req.ns, after, limit, req.now)
    w = Writer().u16(len(page))
    for wk in page:
        _worker_entry(w, wk, req.now)
    return w.opt_bytes16(nxt.encode("utf-8") if nxt is not None else None).getvalue()


@handler(Op.WORKER_INFO)
def worker_info(srv: Any, req: Request) -> bytes:
    """key = worker id -> one WORKER_LIST entry, then ``[n u16] n x str16 action``,
    ``opt(str16 metadata)``, ``[held u32]`` (runs it holds now)."""
    worker_id = _worker_id(req.key)
    _settle(srv, req.now)
    wk = srv.actions.worker(req.ns, worker_id, req.now)
    if wk is None:
        raise Refusal(Reason.NOT_FOUND, f"worker {worker_id!r} is not registered")
    w = _worker_entry(Writer(), wk, req.now).u16(len(wk.actions))
    for name in wk.actions:
        w.str16(name)
    return w.opt_str16(wk.metadata).u32(len(wk.holding)).getvalue()


"""The Flame semantics as async functions over a :class:`Store`.

Shared by the client API (run on the private loop), the service runtime and
the executor manager, so every state change is written in one place.
Ordering rule for task completion: record → counters → notice, so a client
that wakes on the notice already sees the final counters (close checks them).
"""

from __future__ import annotations

import asyncio
import time
from typing import Optional, Sequence

import msgpack

from . import records as R
from ._store import Conflict, Store
from .types import (ApplicationState, FlameError, FlameErrorCode, ResourceRequirement, SessionState, TaskState,
                    short_name, validate_application_name, validate_session_id)

MAX_SESSION_EVENTS = 100
MAX_TASK_EVENTS = 16


def now_ms() -> int:
    return int(time.time() * 1000)


def _internal(msg: str) -> FlameError:
    return FlameError(FlameErrorCode.INTERNAL, msg)


# -- applications ---------------------------------------------------------------------------------------------

async def register_application(store: Store, name: str, attrs: dict) -> None:
    validate_application_name(name)
    wd = attrs.get("working_directory")
    if wd and not str(wd).startswith("/"):
        raise _internal(f"working_directory <{wd}> must be an absolute path")
    rec = R.app_to_record(name, attrs, now_ms())
    try:
        await store.put(R.k_app(name), R.pack(rec), if_absent=True)
    except Conflict:
        raise _internal(f"application <{name}> already exists") from None


async def update_application(store: Store, name: str, attrs: dict) -> None:
    validate_application_name(name)
    got = await store.get(R.k_app(name))
    if got is None:
        raise _internal(f"application <{name}> not found")
    await _refuse_if_open_sessions(store, name)
    old = R.unpack(got[0])
    rec = R.app_to_record(name, attrs, old["ctime"])
    try:
        await store.put(R.k_app(name), R.pack(rec), cas=got[1])
    except Conflict:
        raise _internal(f"application <{name}> was changed concurrently") from None


async def _refuse_if_open_sessions(store: Store, app: str) -> list[str]:
    sids = [k.rsplit("/", 1)[1] for k in await store.scan(R.p_appssn(app))]
    opened = await store.mget([R.k_open(s) for s in sids]) if sids else []
    n_open = sum(1 for o in opened if o is not None)
    if n_open:
        raise _internal(f"{n_open} open sessions in the application")
    return sids


async def unregister_application(store: Store, name: str) -> None:
    if await store.get(R.k_app(name)) is None:
        raise _internal(f"application <{name}> not found")
    sids = await _refuse_if_open_sessions(store, name)
    for sid in sids:  # closed sessions and their tasks go with the application
        await delete_session_data(store, name, sid)
    await store.delete(R.k_app(name))


async def get_application(store: Store, name: str) -> Optional[dict]:
    got = await store.get(R.k_app(name))
    return R.unpack(got[0]) if got else None


async def list_applications(store: Store) -> list[dict]:
    keys = await store.scan("app/")
    recs = [R.unpack(v[0]) for v in await store.mget(keys) if v]
    return sorted(recs, key=lambda r: (r["ctime"], r["name"]))


# -- sessions -------------------------------------------------------------------------------------------------

async def create_session(store: Store, application: str, common_data: Optional[bytes] = None,
                         session_id: Optional[str] = None, min_instances: int = 0,
                         max_instances: Optional[int] = None, batch_size: int = 1, priority: int = 0,
                         resreq: Optional[ResourceRequirement] = None) -> dict:
    if common_data is not None and not isinstance(common_data, (bytes, bytearray)):
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT, "common_data must be bytes or None")
    if min_instances < 0 or (max_instances is not None and max_instances < 0) or batch_size < 1:
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT, "invalid min_instances/max_instances/batch_size")
    if max_instances is not None and min_instances > max_instances:
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT, "min_instances is greater than max_instances")
    sid = validate_session_id(session_id) if session_id else short_name(application)
    app = await get_application(store, application)
    if app is None:
        raise _internal(f"failed to create session: application <{application}> not found")
    if app["state"] != int(ApplicationState.ENABLED):
        raise _internal(f"failed to create session: application <{application}> is not enabled")
    rec = R.new_session_record(sid, application, bytes(common_data) if common_data is not None else None,
                               min_instances, max_instances, batch_size, priority,
                               resreq if resreq is not None else R.DEFAULT_RESREQ, now_ms())
    try:
        await store.put(R.k_ssn(sid), R.pack(rec), if_absent=True)
    except Conflict:
        raise _internal(f"failed to create session: session <{sid}> already exists") from None
    await store.put_many([(R.k_appssn(application, sid), b""), (R.k_open(sid), application.encode())])
    return rec


def _spec_mismatch(rec: dict, spec: dict) -> Optional[str]:
    want_resreq = (spec["resreq"] if spec.get("resreq") is not None else R.DEFAULT_RESREQ).to_list()
    pairs = [("application", rec["app"], spec["application"]), ("resreq", rec["resreq"], want_resreq),
             ("min_instances", rec["min"], spec.get("min_instances", 0)),
             ("max_instances", rec["max"], spec.get("max_instances")),
             ("batch_size", rec["batch"], spec.get("batch_size", 1)),
             ("priority", rec["priority"], spec.get("priority", 0))]
    for field, have, want in pairs:
        if list(have) != list(want) if isinstance(have, list) else have != want:
            return f"spec mismatch: {field} is {have}, requested {want}"
    return None


async def open_session(store: Store, session_id: str, spec: Optional[dict] = None) -> dict:
    got = await store.get(R.k_ssn(session_id))
    if got is None:
        if spec is None:
            raise FlameError(FlameErrorCode.NOT_FOUND, f"session <{session_id}> not found")
        try:
            return await create_session(store, spec["application"], spec.get("common_data"), session_id,
                                        spec.get("min_instances", 0), spec.get("max_instances"),
                                        spec.get("batch_size", 1), spec.get("priority", 0), spec.get("resreq"))
        except FlameError as exc:
            if "already exists" not in exc.message:
                raise
            got = await store.get(R.k_ssn(session_id))
            if got is None:
                raise
    rec = R.unpack(got[0])
    if rec["state"] != int(SessionState.OPEN):
        raise FlameError(FlameErrorCode.INVALID_ARGUMENT, f"session <{session_id}> is not open")
    if spec is not None:
        why = _spec_mismatch(rec, spec)
        if why:
            raise FlameError(FlameErrorCode.INVALID_ARGUMENT, why)
    return rec


async def get_session(store: Store, session_id: str) -> tuple[dict, dict]:
    got = await store.get(R.k_ssn(session_id))
    if got is None:
        raise _internal(f"session <{session_id}> not found")
    return R.unpack(got[0]), await session_counters(store, session_id)


async def session_counters(store: Store, sid: str) -> dict:
    vals = await store.mget([R.k_cnt(sid, c) for c in R.COUNTERS])
    return {c: _as_int(v) for c, v in zip(R.COUNTERS, vals)}


def _as_int(v) -> int:
    if v is None:
        return 0
    try:
        return max(0, int(v[0]))
    except ValueError:
        return 0


async def list_sessions(store: Store) -> list[tuple[dict, dict]]:
    keys = await store.scan("ssn/")
    recs = [R.unpack(v[0]) for v in await store.mget(keys) if v]
    counters = await store.mget([R.k_cnt(r["id"], c) for r in recs for c in R.COUNTERS])
    out = []
    for i, rec in enumerate(recs):
        vals = counters[i * len(R.COUNTERS):(i + 1) * len(R.COUNTERS)]
        out.append((rec, {c: _as_int(v) for c, v in zip(R.COUNTERS, vals)}))
    out.sort(key=lambda rc: (rc[0]["state"], rc[0]["ctime"], rc[0]["id"]))  # open first, then creation order
    return out


async def update_session(store: Store, sid: str, change) -> Optional[dict]:
    """Read-modify-CAS loop on a session record; ``change(rec)`` returns False to skip the write."""
    while True:
        got = await store.get(R.k_ssn(sid))
        if got is None:
            return None
        rec = R.unpack(got[0])
        if change(rec) is False:
            return rec
        try:
            await store.put(R.k_ssn(sid), R.pack(rec), cas=got[1])
            return rec
        except Conflict:
            continue


async def add_session_event(store: Store, sid: str, code: int, message: str, **fields) -> Optional[dict]:
    def change(rec):
        rec["events"] = (rec.get("events") or [])[-(MAX_SESSION_EVENTS - 1):] + [[code, message, now_ms()]]
        rec.update(fields)
    return await update_session(store, sid, change)


async def close_session(store: Store, sid: str, force: bool = False) -> dict:
    """Close a session: refused while a task runs, unless ``force`` (flamepy.runner's close), which
    cancels the running tasks too (their instances are then stopped by the executor manager)."""
    got = await store.get(R.k_ssn(sid))
    if got is None:
        raise _internal(f"session <{sid}> not found")
    rec = R.unpack(got[0])
    if rec["state"] == int(SessionState.CLOSED):
        return rec  # closing twice is fine
    counters = await session_counters(store, sid)
    if counters["running"] > 0 and not force:
        raise _internal("Cannot close session with running tasks")

    def change(r):
        if r["state"] == int(SessionState.CLOSED):
            return False
        r["state"] = int(SessionState.CLOSED)
        r["dtime"] = now_ms()
    rec = await update_session(store, sid, change)
    await store.delete(R.k_open(sid))
    await cancel_pending_tasks(store, sid, TaskState.CANCELLED, "Task was cancelled because its session was closed")
    if force:
        await _cancel_running_tasks(store, sid, "Task was cancelled because its session was closed")
    try:  # nothing in the queue can run any more
        await store.purge(R.q_tasks(sid))
    except Exception:
        pass
    return rec


async def _cancel_running_tasks(store: Store, sid: str, message: str) -> None:
    """RUNNING → CANCELLED (CAS: a result recorded first stands; the instance's later write loses)."""
    keys = await store.scan(R.p_tasks(sid))
    for i in range(0, len(keys), 256):
        for v in await store.mget(keys[i:i + 256]):
            if v is not None and R.unpack(v[0])["state"] == int(TaskState.RUNNING):
                await finish_task(store, sid, R.unpack(v[0]), v[1], TaskState.CANCELLED, None, message)


async def delete_session_data(store: Store, app: str, sid: str) -> None:
    keys = await store.scan(R.p_tasks(sid))
    recs = await store.mget(keys)
    chunk_keys = [k for v in recs if v for ref in (R.unpack(v[0]).get("input"), R.unpack(v[0]).get("output"))
                  for k in R.blob_chunk_keys(ref)]
    await store.delete_many(keys + chunk_keys + [R.k_cnt(sid, c) for c in R.COUNTERS]
                            + [R.k_seq(sid), R.k_alloc(sid), R.k_appssn(app, sid), R.k_ssn(sid)])


# -- tasks ----------------------------------------------------------------------------------------------------

async def create_tasks(store: Store, sid: str, inputs: Sequence[Optional[bytes]], reply: Optional[str]) -> list[int]:
    """Create len(inputs) PENDING tasks in one pipelined burst; returns their ids.

    One id allocation, the records in one KV_MPUT (more only past 4096 tasks / 4 MiB), and one
    queue message per chunk of ``R.CHUNK_TASKS`` consecutive ids. Records and messages leave on
    the same connection in that order, and the server applies a connection's requests in order,
    so an instance never dequeues a chunk whose records are not there yet.
    """
    for data in inputs:
        if data is not None and not isinstance(data, (bytes, bytearray, memoryview)):
            raise FlameError(FlameErrorCode.INVALID_ARGUMENT, "task input must be bytes or None")
    n = len(inputs)
    opened, last = await asyncio.gather(store.get(R.k_open(sid)), store.incr(R.k_seq(sid), n))
    if opened is None:
        raise _internal(f"session <{sid}> is not open")
    ids = list(range(last - n + 1, last + 1))
    now = now_ms()
    chunk_writes: list = []
    records: list = []
    # A batch packs its records from one template (they differ only in id and input): same bytes.
    template = _RecordTemplate.of(sid, reply, now) if n >= _TEMPLATE_FROM else None
    pack_record = template.render if template is not None else (
        lambda tid, ref: R.pack(R.new_task_record(sid, tid, ref, reply, now)))
    k_task, split_blob = R.k_task, R.split_blob
    for tid, data in zip(ids, inputs):
        ref, chunks = split_blob(data, sid)
        if chunks:
            chunk_writes.extend(chunks)
        records.append((k_task(sid, tid), pack_record(tid, ref)))
    # Blob chunks before the records that point at them, records before the messages naming them.
    requests = store.mput_requests(chunk_writes + records)
    if len(requests) > 1:  # a huge batch: all but the last request are in before anything else goes
        await asyncio.gather(*(store.mput(r) for r in requests[:-1]))
    queue = R.q_tasks(sid)
    await asyncio.gather(*(store.mput(r) for r in requests[-1:]), store.incr(R.k_cnt(sid, "pending"), n),
                         *(store.enqueue(queue, R.chunk_payload(a, b), R.PRIORITY_FRESH)
                           for a, b in R.chunk_ranges(ids)))
    return ids


_TEMPLATE_FROM = 32  # tasks in one create_tasks call from which the records are packed from a template


class _RecordTemplate:
    """``R.pack(R.new_task_record(sid, tid, ref, reply, now))`` for many (tid, ref) of one batch.

    The record is packed once with a marker id and a marker input; the bytes between them are
    fixed, so a task's record is those pieces joined around its own packed id and input, about a
    third of the cost of building and packing the dict. Built from ``new_task_record`` itself and
    checked against it on a few probes, so a change of the record's layout can only make :meth:`of`
    answer None (the slow path), never a different record.

    >>> _RecordTemplate.of("s-1", "reply/c", 1700000000000).render(7, ["i", b"x"])  # doctest: +SKIP
    b'\x8a\xa2id\x07...'
    """

    _TID = 0x5EED_F1A3_C0DE_7777  # packs as one 9-byte uint64 that no other field plausibly holds
    _INPUT = ["i", b"\xfe\xed" + bytes(range(32, 62)) + b"\xfe\xed"]

    __slots__ = ("parts", "packb")

    def __init__(self, parts: tuple[bytes, bytes, bytes], packb) -> None:
        self.parts = parts
        self.packb = packb

    @classmethod
    def of(cls, sid: str, reply: Optional[str], now: int) -> Optional["_RecordTemplate"]:
        packb = msgpack.Packer(use_bin_type=True).pack  # R.pack's options; this template's own packer
        whole = R.pack(R.new_task_record(sid, cls._TID, cls._INPUT, reply, now))
        tid_bytes, input_bytes = packb(cls._TID), packb(cls._INPUT)
        if whole.count(tid_bytes) != 1 or whole.count(input_bytes) != 1:
            return None
        a, b = whole.index(tid_bytes), whole.index(input_bytes)
        if a > b:
            return None
        template = cls((whole[:a], whole[a + len(tid_bytes):b], whole[b + len(input_bytes):]), packb)
        for tid, ref in ((1, None), (300, ["i", b"x" * 300]), (1 << 40, ["c", "{s}abc", 2, 300_000])):
            if template.render(tid, ref) != R.pack(R.new_task_record(sid, tid, ref, reply, now)):
                return None
        return template

    def render(self, tid: int, ref) -> bytes:
        head, mid, tail = self.parts
        packb = self.packb
        return b"".join((head, packb(tid), mid, packb(ref), tail))


async def requeue_chunks(store: Store, sid: str, chunks: Sequence[Sequence[int]]) -> None:
    """Give back held chunk messages ([seq, first, last]): the ranges go back to the queue ahead of
    fresh chunks (tasks already terminal in them are skipped by whoever takes them), then the old
    messages are acked — in that order, so a failure in between duplicates instead of losing."""
    if not chunks:
        return
    queue = R.q_tasks(sid)
    await asyncio.gather(*(store.enqueue(queue, R.chunk_payload(first, last), R.PRIORITY_REQUEUED)
                           for _, first, last in chunks))
    await store.ack(queue, [seq for seq, _, _ in chunks])


async def get_task_record(store: Store, sid: str, tid) -> Optional[tuple[dict, int]]:
    got = await store.get(R.k_task(sid, tid))
    return (R.unpack(got[0]), got[1]) if got else None


async def load_task(store: Store, sid: str, tid):
    got = await get_task_record(store, sid, tid)
    if got is None:
        raise _internal(f"task <{tid}> of session <{sid}> not found")
    rec = got[0]
    inp, out = await asyncio.gather(store.read_blob(rec.get("input")), store.read_blob(rec.get("output")))
    return R.task_from_record(rec, inp, out)


def _event(rec: dict, code: int, message: str, at_ms: Optional[int] = None) -> None:
    events = rec.get("events") or []
    rec["events"] = (events if len(events) < MAX_TASK_EVENTS else events[:1] + events[-(MAX_TASK_EVENTS - 2):]) \
        + [[code, message, now_ms() if at_ms is None else at_ms]]


def running_record(rec: dict, instance_id: str, started_ms: int) -> dict:
    """A copy of a PENDING task record, now RUNNING on ``instance_id``."""
    rec = dict(rec)
    rec["state"] = int(TaskState.RUNNING)
    rec["instance"] = instance_id
    _event(rec, int(TaskState.RUNNING), "Task state was updated to <Running>", started_ms)
    return rec


async def start_task(store: Store, sid: str, tid: int, rec: dict, version: int, instance_id: str,
                     started_ms: int) -> Optional[tuple[dict, int]]:
    """PENDING → RUNNING (CAS on the version read); None when someone else changed it (cancelled)."""
    running = running_record(rec, instance_id, started_ms)
    try:
        version = await store.put(R.k_task(sid, tid), R.pack(running), cas=version)
    except Conflict:
        return None
    await asyncio.gather(store.incr(R.k_cnt(sid, "pending"), -1), store.incr(R.k_cnt(sid, "running"), 1))
    return running, version


def terminal_record(rec: dict, state: TaskState, output_ref, message: Optional[str],
                    started: Optional[tuple[str, int]] = None) -> dict:
    """A copy of ``rec``, now terminal. ``started`` = (instance id, start ms) for a task that ran without
    being marked RUNNING: the copy gets what :func:`running_record` adds too (one copy instead of two)."""
    rec = dict(rec)
    if started is not None:
        rec["instance"] = started[0]
        _event(rec, _RUNNING, "Task state was updated to <Running>", started[1])
    now = now_ms()
    rec["state"] = code = int(state)
    rec["output"] = output_ref
    rec["dtime"] = now
    if code == _SUCCEED:
        _event(rec, code, "Task was completed with state <Succeed>", now)
    else:
        _event(rec, code, message or "Task failed without error message", now)
    return rec


_RUNNING = int(TaskState.RUNNING)
_SUCCEED = int(TaskState.SUCCEED)


async def finish_batch(store: Store, sid: str, done: Sequence[tuple], acks: Sequence[int] = ()) -> list[bool]:
    """Record many finished tasks of one session at once; the instance's fast path.

    ``done``: (rec, prev_state, version, state, output bytes or None, message[, started]): ``rec``
    is the record to finish (it may already carry the Running event), ``prev_state`` the state
    stored under ``version`` (PENDING, or RUNNING if the instance marked it); ``started`` =
    (instance id, start ms) adds the Running event of a task that was not marked (see
    :func:`terminal_record`). The records go in one
    KV_MPUT, each guarded by its CAS (a task cancelled meanwhile keeps its cancellation), then the
    counters move by the summed deltas, then the notices go out, several per reply message —
    record → counters → notice as in :func:`finish_task` — and last the task-queue messages
    ``acks`` are acked (pipelined behind the notices: the connection applies them in order).
    Returns, per item, whether it was recorded.

    >>> await finish_batch(store, "s-1", [(rec, 0, 17, TaskState.SUCCEED, b"out", None)], acks=[5])  # doctest: +SKIP
    [True]
    """
    if not done:
        if acks:
            await store.ack(R.q_tasks(sid), acks)
        return []
    puts, finals, chunk_writes = [], [], []
    pack, k_task, notice_of = R.pack, R.k_task, R.notice_of
    for rec, prev_state, version, state, output, message, *started in done:
        ref, chunks = R.split_blob(output, sid)
        if chunks:
            chunk_writes.extend(chunks)
        final = terminal_record(rec, state, ref, message, started[0] if started else None)
        finals.append((prev_state, final, message))
        puts.append((k_task(sid, rec["id"]), pack(final), version))
    # Output chunks first in the same burst: a record never points at a chunk that is not there.
    versions = (await store.put_many(chunk_writes + puts))[len(chunk_writes):]
    deltas: dict[str, int] = {}
    notices: dict[str, list] = {}
    recorded: list[bool] = []
    for (prev_state, final, message), version in zip(finals, versions):
        recorded.append(version is not None)
        if version is None:
            continue  # cancelled or failed by someone else meanwhile: theirs stands
        src = "running" if prev_state == _RUNNING else "pending"
        code = final["state"]
        dst = _COUNTER_OF[code]
        deltas[src] = deltas.get(src, 0) - 1
        deltas[dst] = deltas.get(dst, 0) + 1
        reply = final.get("reply")
        if reply:
            if message is None and code != _SUCCEED:
                message = R.failure_message(final)
            group = notices.get(reply)
            if group is None:
                group = notices[reply] = []
            group.append(notice_of(sid, final["id"], code, final.get("output"), message))
    # Same connection, sent in this order and applied in order: counters land before the notices,
    # the notices before the acks. On a cluster of several shards a reply queue may live on another
    # shard than the session: there the counters are in before a notice goes.
    counters = [store.incr(R.k_cnt(sid, c), d) for c, d in deltas.items() if d]
    if counters and notices and store.spans_shards:
        await asyncio.gather(*counters)
        counters = []
    await asyncio.gather(*counters,
                         *(store.enqueue(reply, payload) for reply, group in notices.items()
                           for payload in R.reply_notices(group)),
                         *((store.ack(R.q_tasks(sid), acks),) if acks else ()))
    return recorded


_COUNTER_OF = {int(TaskState.SUCCEED): "succeed", int(TaskState.FAILED): "failed",
               int(TaskState.CANCELLED): "cancelled"}


async def finish_task(store: Store, sid: str, rec: dict, version: int, state: TaskState,
                      output: Optional[bytes], message: Optional[str]) -> bool:
    """RUNNING/PENDING → terminal, then counters, then the client's notice. False if someone else finished it."""
    ref, chunks = R.split_blob(output, sid)
    await store.write_chunks(chunks)
    prev_state = rec["state"]
    tid = rec["id"]
    while True:
        rec["state"] = int(state)
        rec["output"] = ref
        rec["dtime"] = now_ms()
        if state == TaskState.SUCCEED:
            _event(rec, int(state), "Task was completed with state <Succeed>")
        else:
            _event(rec, int(state), message or "Task failed without error message")
        try:
            await store.put(R.k_task(sid, tid), R.pack(rec), cas=version)
            break
        except Conflict:
            got = await get_task_record(store, sid, tid)
            if got is None or got[0]["state"] != prev_state:
                return False
            rec, version = got
    from_counter = "running" if prev_state == int(TaskState.RUNNING) else "pending"
    to_counter = {TaskState.SUCCEED: "succeed", TaskState.FAILED: "failed", TaskState.CANCELLED: "cancelled"}[state]
    await asyncio.gather(store.incr(R.k_cnt(sid, from_counter), -1), store.incr(R.k_cnt(sid, to_counter), 1))
    await notify(store, rec, message)
    return True


async def notify(store: Store, rec: dict, message: Optional[str] = None) -> None:
    """Tell the waiting client (if any) that a task is terminal."""
    if rec.get("reply"):
        if message is None and rec["state"] != int(TaskState.SUCCEED):
            message = R.failure_message(rec)
        await store.enqueue(rec["reply"], R.reply_notice(rec["ssn"], rec["id"], rec["state"], rec.get("output"),
                                                         message))


async def cancel_pending_tasks(store: Store, sid: str, state: TaskState, message: str) -> int:
    """Every PENDING task of the session → ``state`` (CANCELLED on close, FAILED when no instance can start)."""
    keys = await store.scan(R.p_tasks(sid))
    n = 0
    for i in range(0, len(keys), 256):
        batch = keys[i:i + 256]
        vals = await store.mget(batch)
        pending = []
        for v in vals:
            if v is None:
                continue
            rec = R.unpack(v[0])
            if rec["state"] == int(TaskState.PENDING):
                pending.append((rec, int(TaskState.PENDING), v[1], state, None, message))
        # One KV_MPUT for the page; a task whose CAS lost (an instance took it meanwhile) goes the
        # careful way: finish_task re-reads it and finishes it only if it is still pending.
        recorded = await finish_batch(store, sid, pending)
        retry = [finish_task(store, sid, item[0], item[2], state, None, message)
                 for item, ok in zip(pending, recorded) if not ok]
        n += sum(recorded) + sum(1 for ok in await asyncio.gather(*retry) if ok)
    return n


async def fail_lost_task(store: Store, sid: str, tid: int, seq: Optional[int], message: str) -> None:
    """The instance running ``tid`` died: the task FAILS (no retry) and its queue message is settled.

    The record may still say PENDING: an instance writes RUNNING only once a task has run for a
    while (a fast task goes PENDING → terminal in one write)."""
    got = await get_task_record(store, sid, tid)
    if got is not None:
        rec, version = got
        if rec["state"] in (int(TaskState.RUNNING), int(TaskState.PENDING)):
            await finish_task(store, sid, rec, version, TaskState.FAILED, None, message)
        elif rec["state"] in (int(TaskState.SUCCEED), int(TaskState.FAILED)):
            await notify(store, rec)  # it may have died between the record and the notice
    if seq is not None:
        try:
            await store.ack(R.q_tasks(sid), [seq])
        except Exception:  # lease may already be gone; the next dequeuer skips a non-pending task anyway
            pass


# -- cluster view ---------------------------------------------------------------------------------------------

async def list_executor_records(store: Store) -> list[tuple[str, dict]]:
    """(instance id, record) of every executor whose node is alive (a dead manager's records are ignored,
    as its reservations are)."""
    keys = await store.scan("exec/")
    live = {k[len("node/"):] for k in await store.scan("node/")}
    out = []
    for key, got in zip(keys, await store.mget(keys) if keys else []):
        if got is not None:
            rec = R.unpack(got[0])
            if rec.get("node") in live:
                out.append((key[len("exec/"):], rec))
    out.sort(key=lambda item: (item[1]["node"], item[1]["ctime"], item[0]))
    return out


async def list_nodes(store: Store) -> list:
    """Every node whose executor manager heartbeats, with capacity and what its executors leave free."""
    keys = await store.scan("node/")
    vals = await store.mget(keys) if keys else []
    used: dict[str, ResourceRequirement] = {}
    for _, rec in await list_executor_records(store):
        u = used.setdefault(rec["node"], ResourceRequirement())
        cpu, mem, gpu = rec["resreq"]
        u.cpu, u.memory, u.gpu = u.cpu + cpu, u.memory + mem, u.gpu + gpu
    now = now_ms()
    nodes = [R.node_from_record(key[len("node/"):], R.unpack(got[0]), used.get(key[len("node/"):],
                                                                             ResourceRequirement()), now)
             for key, got in zip(keys, vals) if got is not None]
    return sorted(nodes, key=lambda n: n.metadata.name)


async def load_tasks(store: Store, sid: str, tids: Sequence[int]) -> list:
    """Tasks by id in one ``mget`` (+ the blob chunks of big inputs/outputs); missing ones are left out."""
    vals = await store.mget([R.k_task(sid, t) for t in tids])
    recs = [R.unpack(v[0]) for v in vals if v is not None]
    blobs = await asyncio.gather(*(store.read_blob(ref) for rec in recs for ref in (rec.get("input"),
                                                                                   rec.get("output"))))
    return [R.task_from_record(rec, blobs[2 * i], blobs[2 * i + 1]) for i, rec in enumerate(recs)]


async def task_ids(store: Store, sid: str) -> list[int]:
    """Every task id of a session, in creation order."""
    keys = await store.scan(R.p_tasks(sid))
    return sorted(int(k.rsplit("/", 1)[1]) for k in keys)

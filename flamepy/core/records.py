"""How flamepy lays its state out in Flo, and the msgpack records stored there.

All keys live in one namespace (``flame`` unless ``FLAME_NAMESPACE`` says
otherwise). Application, session and task ids are restricted to
``[A-Za-z0-9._-]`` so ``/`` is a safe separator and prefix scans are exact.

Every key that names a session carries the session id as a Redis ``{hash tag}``:
on a cluster the slot of such a key is that of the session id alone, so one
session's records, counters, task queue and blob chunks live on one shard (a
``put_many`` of its task records is one request there, and the order of one
connection's requests holds). One layout for every deployment; data of the
layout before it (no tags) is moved once when an executor manager starts
(:mod:`flamepy.executor.layout`).

===========================  =====================================================
key / queue                  what
===========================  =====================================================
app/<name>                   application record (one key: its slot is its name's)
ssn/{<id>}                   session record (state, spec, events)
open/{<id>}                  exists while the session is open (value: app name)
appssn/{<app>}/<id>          index of an application's sessions (on the app's shard)
seq/{<id>}                   task id counter (kv.incr)
task/{<id>}/<tid>            task record (state, input, output, events)
cnt/{<id>}/<counter>         pending / running / succeed / failed / cancelled
alloc/{<id>}                 instances reserved for the session (all managers)
ready/<instance>             written by an instance once it serves its session
exec/<instance>              executor record (node, session, state, resreq) kept by its executor manager
node/<name>                  a manager's heartbeat (capacity, hostname, arch, os; TTL 15 s)
blob/{<tag>}<uuid>/<i>       chunks of values bigger than one KV value (tag: the session, or
                             the object's ``<app>/<ssn>``; blobs of the old layout: blob/<uuid>/<i>)
obj/{<app>/<ssn>}/<oid>      object cache record; objd/{<app>/<ssn>}/<oid>/<n> its deltas
q: tasks/{<id>}              pending task ids of a session (leased queue), one message per *chunk*
                             of consecutive ids: payload ``b"<first>"`` or ``b"<first>-<last>"``
q: reply/<client>            completion notices for one client process
===========================  =====================================================

An instance tells its executor manager what it is doing through a small local
file (``FLAME_INSTANCE_STATE``) it keeps mapped: the running task id (one
memory store per task) and the chunk messages it holds. The page cache outlives
the process, so a crash is attributed to the right task without a system call,
let alone a network round trip, per task.
"""

from __future__ import annotations

import os
import uuid
from typing import Any, Optional

import msgpack

from .types import (Application, ApplicationSchema, ApplicationState, Event, Executor, ExecutorSpec, ExecutorState,
                    ExecutorStatus, Metadata, Node, NodeInfo, NodeSpec, NodeState, NodeStatus, ResourceRequirement,
                    Shim, Task, TaskState, utc_datetime)

NAMESPACE = os.environ.get("FLAME_NAMESPACE", "flame")
# A Flo request frame is 256 KiB; keep every KV value comfortably below it.
CHUNK = 192 * 1024
INLINE_MAX = 160 * 1024
COUNTERS = ("pending", "running", "succeed", "failed", "cancelled")

# Session event codes (Flame's numbers; 1003 is ours: tasks failed because no instance could start).
EVENT_BIND_FAILED = 1001
EVENT_RETRY_LIMIT = 1002
EVENT_INSTANCE_LOST = 1003

DEFAULT_RESREQ = ResourceRequirement(cpu=1, memory=1 << 30, gpu=0)
DEFAULT_DELAY_RELEASE = 60
DEFAULT_APP_MAX_INSTANCES = 1_000_000


def tag(text: str) -> str:
    """``{text}``: the part of a key a cluster routes by (flo_core.slots.hash_tag)."""
    return "{" + text + "}"


def tagged_id(key: str) -> str:
    """The id inside a key's ``{hash tag}``: ``"open/{s-1}"`` → ``"s-1"`` (``""`` without one)."""
    start = key.find("{")
    end = key.find("}", start + 1)
    return key[start + 1:end] if start >= 0 and end > start else ""


def k_app(name: str) -> str: return f"app/{name}"
def k_ssn(sid: str) -> str: return f"ssn/{{{sid}}}"
def k_open(sid: str) -> str: return f"open/{{{sid}}}"
def k_appssn(app: str, sid: str) -> str: return f"appssn/{{{app}}}/{sid}"
def p_appssn(app: str) -> str: return f"appssn/{{{app}}}/"
def k_seq(sid: str) -> str: return f"seq/{{{sid}}}"
def k_task(sid: str, tid: int | str) -> str: return f"task/{{{sid}}}/{tid}"
def p_tasks(sid: str) -> str: return f"task/{{{sid}}}/"
def k_cnt(sid: str, name: str) -> str: return f"cnt/{{{sid}}}/{name}"
def k_alloc(sid: str) -> str: return f"alloc/{{{sid}}}"
def k_ready(iid: str) -> str: return f"ready/{iid}"
def k_exec(iid: str) -> str: return f"exec/{iid}"
def k_node(name: str) -> str: return f"node/{name}"
def k_blob(bid: str, i: int) -> str: return f"blob/{bid}/{i}"
def q_tasks(sid: str) -> str: return f"tasks/{{{sid}}}"
def q_reply(client_id: str) -> str: return f"reply/{client_id}"


def new_blob_id(tag_text: Optional[str] = None) -> str:
    """A fresh blob id; with ``tag_text`` its chunks live on that tag's shard (``{s-1}3f2a...``)."""
    return uuid.uuid4().hex if not tag_text else tag(tag_text) + uuid.uuid4().hex


def _obj_parts(key: str) -> tuple[str, str]:
    """``"app/ssn/oid"`` → (``"app/ssn"``, ``"oid"``): an object lives on its session's shard."""
    app, _, rest = key.partition("/")
    ssn, _, oid = rest.partition("/")
    return f"{app}/{ssn}", oid


def k_obj(key: str) -> str:
    scope, oid = _obj_parts(key)
    return f"obj/{{{scope}}}/{oid}"


def k_objd(key: str, n: int | str) -> str:
    scope, oid = _obj_parts(key)
    return f"objd/{{{scope}}}/{oid}/{n}"


def p_obj(app: str, ssn: Optional[str] = None) -> str:
    """Scan prefix of the objects of one session (``obj/{app/ssn}/``) or of every session of an app."""
    return f"obj/{{{app}/{ssn}}}/" if ssn is not None else f"obj/{{{app}/"


def obj_key_of(key: str) -> str:
    """``"obj/{app/ssn}/oid"`` → ``"app/ssn/oid"`` (the object key :func:`k_obj` was given)."""
    return key[len("obj/{"):].replace("}", "", 1)


# Task chunks: lower priority values are dequeued first, so the unfinished rest of a chunk an
# instance gives back (a slow chunk split for other instances, or a crashed instance's) runs before
# chunks submitted later: FIFO order within a session is kept.
CHUNK_TASKS = 64
PRIORITY_FRESH = 100
PRIORITY_REQUEUED = 50


def chunk_payload(first: int, last: int) -> bytes:
    return str(first).encode() if first == last else f"{first}-{last}".encode()


def parse_chunk(payload: bytes) -> tuple[int, int]:
    """``b"7"`` → (7, 7), ``b"7-70"`` → (7, 70); ValueError on anything else."""
    text = bytes(payload).decode("ascii")
    first, sep, last = text.partition("-")
    a = int(first)
    b = int(last) if sep else a
    if a < 1 or b < a or b - a > 1_000_000:
        raise ValueError(f"bad task chunk {text!r}")
    return a, b


def chunk_ranges(ids: list[int], size: int = CHUNK_TASKS) -> list[tuple[int, int]]:
    """Consecutive ids (as kv.incr hands them out) cut into chunks of at most ``size``."""
    out = []
    for i in range(0, len(ids), size):
        part = ids[i:i + size]
        out.append((part[0], part[-1]))
    return out


def id_runs(ids: list[int], size: int = CHUNK_TASKS) -> list[tuple[int, int]]:
    """Sorted ids (with gaps) as runs of consecutive ids, at most ``size`` each: task-queue chunks.

    >>> id_runs([1, 2, 3, 7, 8])
    [(1, 3), (7, 8)]
    """
    out: list[tuple[int, int]] = []
    for tid in ids:
        if out and tid == out[-1][1] + 1 and tid - out[-1][0] < size:
            out[-1] = (out[-1][0], tid)
        else:
            out.append((tid, tid))
    return out


# The instance state file: [0:8] running task id (i64, 0 = none), [8:12] which chunk slot is live,
# then two slots of [len u32][msgpack [session, [[seq, first, last], ...]]]. The running id is one
# aligned 8-byte store per task; a chunk list is written into the idle slot, then the slot switched,
# so a process killed mid-write leaves the previous list readable.
STATE_SLOT = 32 * 1024
STATE_SIZE = 16 + 2 * STATE_SLOT


def encode_state_chunks(sid: str, chunks: list) -> bytes:
    body = pack([sid, chunks])
    if len(body) + 4 > STATE_SLOT:  # bounded: without the list, leases lapse and redeliver instead
        body = pack([sid, []])
    return len(body).to_bytes(4, "little") + body


def decode_instance_state(data: bytes) -> Optional[list]:
    """[session, running task id or None, chunks] from the file's bytes; None if unreadable."""
    if len(data) < STATE_SIZE:
        return None
    running = int.from_bytes(data[0:8], "little", signed=True)
    slot = int.from_bytes(data[8:12], "little") & 1
    off = 16 + slot * STATE_SLOT
    n = int.from_bytes(data[off:off + 4], "little")
    if n == 0 or n + 4 > STATE_SLOT:
        return None
    try:
        sid, chunks = unpack(data[off + 4:off + 4 + n])
    except Exception:
        return None
    return [sid, running if running > 0 else None, chunks if isinstance(chunks, list) else []]


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False)


# -- blobs: task inputs/outputs and objects can exceed one KV value -------------------------------------------

def split_blob(data: Optional[bytes], tag_text: Optional[str] = None) -> tuple[Any, list[tuple[str, bytes]]]:
    """(reference stored in the record, chunk writes to do first). Small values stay inline.

    ``tag_text`` (a session id, an object's ``app/ssn``) puts the chunks on the shard of the
    record that points at them, so they go in the same request as that record."""
    if data is None:
        return None, []
    data = bytes(data)
    if len(data) <= INLINE_MAX:
        return ["i", data], []
    bid = new_blob_id(tag_text)
    chunks = [(k_blob(bid, i), data[off:off + CHUNK]) for i, off in enumerate(range(0, len(data), CHUNK))]
    return ["c", bid, len(chunks), len(data)], chunks


def blob_chunk_keys(ref: Any) -> list[str]:
    if not ref or ref[0] != "c":
        return []
    return [k_blob(ref[1], i) for i in range(ref[2])]


# -- applications ---------------------------------------------------------------------------------------------

def app_to_record(name: str, attrs: dict, now_ms: int) -> dict:
    schema = attrs.get("schema")
    if isinstance(schema, ApplicationSchema):
        schema = [schema.input, schema.output, schema.common_data]
    elif isinstance(schema, dict):
        schema = [schema.get("input"), schema.get("output"), schema.get("common_data")]
    if schema is not None:
        schema = [s or None for s in schema]
        if not any(schema):
            schema = None
    return {
        "name": name, "state": int(ApplicationState.ENABLED), "ctime": now_ms,
        "shim": int(Shim.parse(attrs.get("shim"))),
        "image": attrs.get("image"), "description": attrs.get("description"),
        "labels": list(attrs.get("labels") or []),
        "command": attrs.get("command"), "arguments": [str(a) for a in attrs.get("arguments") or []],
        "environments": {str(k): str(v) for k, v in (attrs.get("environments") or {}).items()},
        "working_directory": attrs.get("working_directory") or None,
        "max_instances": int(attrs["max_instances"]) if attrs.get("max_instances") is not None
        else DEFAULT_APP_MAX_INSTANCES,
        "delay_release": int(attrs["delay_release"]) if attrs.get("delay_release") is not None
        else DEFAULT_DELAY_RELEASE,
        "schema": schema, "url": attrs.get("url"), "installer": attrs.get("installer"),
    }


def app_from_record(rec: dict) -> Application:
    schema = rec.get("schema")
    return Application(
        id=rec["name"], name=rec["name"], state=ApplicationState(rec["state"]),
        creation_time=utc_datetime(rec["ctime"]),
        shim=Shim(rec["shim"]), image=rec.get("image"), description=rec.get("description"),
        labels=list(rec.get("labels") or []), command=rec.get("command"),
        arguments=list(rec.get("arguments") or []), environments=dict(rec.get("environments") or {}),
        working_directory=rec.get("working_directory"), max_instances=rec.get("max_instances"),
        delay_release=rec.get("delay_release"),
        schema=ApplicationSchema(*schema) if schema else None, url=rec.get("url"), installer=rec.get("installer"))


# -- sessions -------------------------------------------------------------------------------------------------

def new_session_record(sid: str, app: str, common_data: Optional[bytes], min_instances: int,
                       max_instances: Optional[int], batch_size: int, priority: int,
                       resreq: ResourceRequirement, now_ms: int) -> dict:
    return {"id": sid, "app": app, "common_data": common_data, "min": min_instances, "max": max_instances,
            "batch": batch_size, "priority": priority, "resreq": resreq.to_list(), "state": 0, "ctime": now_ms,
            "dtime": None, "events": [], "bind_failures": 0, "broken": None}


def events_of(rec: dict) -> list[Event]:
    return [Event(code=e[0], message=e[1], creation_time=utc_datetime(e[2])) for e in rec.get("events") or []]


# -- tasks ----------------------------------------------------------------------------------------------------

def new_task_record(sid: str, tid: int, input_ref: Any, reply: Optional[str], now_ms: int) -> dict:
    return {"id": tid, "ssn": sid, "state": int(TaskState.PENDING), "ctime": now_ms, "dtime": None,
            "input": input_ref, "output": None, "reply": reply, "instance": None,
            "events": [[0, "Task was created with state <Pending>", now_ms]]}


def task_from_record(rec: dict, input_data: Optional[bytes], output_data: Optional[bytes]) -> Task:
    return Task(id=str(rec["id"]), session_id=rec["ssn"], state=TaskState(rec["state"]),
                creation_time=utc_datetime(rec["ctime"]), input=input_data, output=output_data,
                completion_time=utc_datetime(rec.get("dtime")), events=events_of(rec))


def failure_message(rec: dict) -> str:
    """The message a failed/cancelled task carries (its last failure event)."""
    for code, message, _ in reversed(rec.get("events") or []):
        if code in (int(TaskState.FAILED), int(TaskState.CANCELLED)):
            return message
    return "Task failed without error message"


def notice_of(sid: str, tid: int, state: int, output_ref: Any, message: Optional[str]) -> list:
    return [sid, tid, state, output_ref if output_ref and output_ref[0] == "i" else None,
            bool(output_ref) and output_ref[0] == "c", message]


def reply_notice(sid: str, tid: int, state: int, output_ref: Any, message: Optional[str]) -> bytes:
    """Completion notice sent to the waiting client's reply queue (output inline when it is)."""
    return pack(notice_of(sid, tid, state, output_ref, message))


NOTICE_BATCH_BYTES = 128 * 1024


def reply_notices(notices: list[list]) -> list[bytes]:
    """Reply messages carrying many notices each (lists of :func:`notice_of` lists), every message
    below ``NOTICE_BATCH_BYTES`` unless one notice alone is bigger (inline outputs are < one frame)."""
    out: list[bytes] = []
    group: list[list] = []
    size = 0
    for n in notices:
        one = len(n[3][1]) + 64 if n[3] else 64
        if group and size + one > NOTICE_BATCH_BYTES:
            out.append(pack(group))
            group, size = [], 0
        group.append(n)
        size += one
    if group:
        out.append(pack(group))
    return out


def notices_in(payload: bytes) -> list[list]:
    """The notices of one reply message, single or batched."""
    obj = unpack(payload)
    return obj if obj and isinstance(obj[0], list) else [obj]


# -- nodes and executors --------------------------------------------------------------------------------------

# A node whose heartbeat (every 5 s) is older than this is shown NotReady; its key expires after 15 s anyway.
NODE_STALE_MS = 10_000


def node_from_record(name: str, rec: dict, used: ResourceRequirement, now_ms: int) -> Node:
    """The Flame-shaped view of a ``node/<name>`` heartbeat; ``used`` = resreq of its live executors."""
    capacity = ResourceRequirement(rec.get("cpu", 0), rec.get("memory", 0), rec.get("gpu", 0))
    allocatable = ResourceRequirement(max(0, capacity.cpu - used.cpu), max(0, capacity.memory - used.memory),
                                      max(0, capacity.gpu - used.gpu))
    beat = int(rec.get("time") or 0)
    state = NodeState.READY if now_ms - beat <= NODE_STALE_MS else NodeState.NOT_READY
    hostname = rec.get("hostname") or name
    return Node(metadata=Metadata(id=name, name=name), spec=NodeSpec(hostname=hostname),
                status=NodeStatus(state=state, capacity=capacity, allocatable=allocatable,
                                  info=NodeInfo(arch=rec.get("arch", ""), os=rec.get("os", "")),
                                  addresses=[{"type": "Hostname", "address": hostname}],
                                  last_heartbeat_time=beat // 1000, max_instances=rec.get("max", 0),
                                  instances=rec.get("instances", 0)))


def executor_record(node: str, sid: str, state: ExecutorState, resreq: ResourceRequirement, now_ms: int) -> bytes:
    return pack({"node": node, "ssn": sid, "state": int(state), "resreq": resreq.to_list(), "ctime": now_ms})


def executor_from_record(iid: str, rec: dict) -> Executor:
    return Executor(metadata=Metadata(id=iid, name=iid),
                    spec=ExecutorSpec(node=rec["node"], resreq=ResourceRequirement(*rec["resreq"])),
                    status=ExecutorStatus(state=ExecutorState(rec["state"]), session_id=rec.get("ssn")))

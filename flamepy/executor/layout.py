"""The one-time move of flamepy data written before session hash tags (layout 1) to today's (layout 2).

Layout 1 had no ``{hash tags}``: ``ssn/<id>``, ``open/<id>``, ``appssn/<app>/<id>``, ``seq/<id>``,
``task/<id>/<tid>``, ``cnt/<id>/<counter>``, ``alloc/<id>``, the queue ``tasks/<id>``, and objects under
``obj/<app>/<ssn>/<oid>`` / ``objd/<app>/<ssn>/<oid>/...``. Layout 2 (:mod:`flamepy.core.records`)
tags each with its session (objects with ``<app>/<ssn>``), so on a cluster a session lives on one shard.
Application records (``app/<name>``), node, executor and ready keys, reply queues and blob chunks keep
their names (a record points at its chunks by blob id, so old chunks stay where they are).

Why a migration at executor-manager start rather than a read fallback: a fallback would have every
read of every session try two keys forever, and writes would still have to pick one layout; a
migration leaves one layout for all code, costs one ``get`` per start once done (the ``layout`` key),
and runs where flamepy's runtime state is already rebuilt (a manager starting owns no instances).

It is idempotent and resumable: every copy is put only where the new key is free (CAS 0), a
session is switched over by writing its new ``ssn`` then ``open`` key last (until then no manager or
instance acts on it in the new layout), and old keys are deleted only after that. Several managers
starting together (a cluster) take turns through a lease key; the others wait for the ``layout`` mark.
Open sessions get their queue rebuilt from their task records: PENDING tasks are queued again and
tasks that were RUNNING run again (their instances died with the old server; at-least-once, as
``flmctl migrate``).

>>> moved = await migrate_layout(store)        # doctest: +SKIP
>>> moved.sessions, moved.tasks, moved.objects   # doctest: +SKIP
(2, 300, 1)
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from dataclasses import dataclass
from typing import Optional

from ..core import ops
from ..core import records as R
from ..core._store import Conflict, Store
from ..core.types import SessionState, TaskState

__all__ = ["LAYOUT", "LAYOUT_KEY", "LayoutReport", "migrate_layout", "object_key_now"]

log = logging.getLogger("flamepy.executor")

LAYOUT = 2
LAYOUT_KEY = "layout"            # b"2" once this namespace holds layout-2 keys only
LOCK_KEY = "layout/migrating"    # the manager migrating right now (lease: refreshed per session)
LOCK_TTL_S = 30
WAIT_MS = 5_000
PAGE = 256


@dataclass
class LayoutReport:
    sessions: int = 0
    tasks: int = 0
    objects: int = 0
    requeued: int = 0

    def __bool__(self) -> bool:
        return bool(self.sessions or self.objects)


def _old_key(key: str) -> bool:
    return "{" not in key  # layout-1 ids are [A-Za-z0-9._-]: never a brace


async def migrate_layout(store: Store, owner: Optional[str] = None) -> LayoutReport:
    """Move every layout-1 session and object of ``store``'s namespace to layout 2 (no-op once done).

    ``owner`` names the caller in the lease key (a manager passes its node name, so a restarted
    manager resumes its own interrupted run at once instead of waiting for the lease to lapse)."""
    owner = owner or f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    report = LayoutReport()
    while True:
        mark = await store.get(LAYOUT_KEY)
        if mark is not None and mark[0] == str(LAYOUT).encode():
            return report
        lock = await _take_lock(store, owner)
        if lock is None:
            # Another manager migrates: wait for its mark (or for its lease to lapse, then try ourselves).
            await store.get(LAYOUT_KEY, block_ms=WAIT_MS)
            continue
        try:
            await _migrate(store, owner, lock, report)
        except Conflict:  # our lease lapsed (a long stall) and another manager took over: wait for it
            continue
        await store.put(LAYOUT_KEY, str(LAYOUT).encode())
        await store.delete(LOCK_KEY)
        if report:
            log.info("flamepy data moved to key layout %d: %d sessions (%d tasks, %d queued again), %d objects",
                     LAYOUT, report.sessions, report.tasks, report.requeued, report.objects)
        return report


async def _take_lock(store: Store, owner: str) -> Optional[int]:
    """The lease key's version if we hold it now (taken, or left by our own earlier run), else None."""
    try:
        return await store.put(LOCK_KEY, owner.encode(), if_absent=True, ttl_seconds=LOCK_TTL_S)
    except Conflict:
        got = await store.get(LOCK_KEY)
        if got is None or got[0] != owner.encode():
            return None
        try:
            return await store.put(LOCK_KEY, owner.encode(), cas=got[1], ttl_seconds=LOCK_TTL_S)
        except Conflict:
            return None


async def _migrate(store: Store, owner: str, lock: int, report: LayoutReport) -> None:
    for key in [k for k in await store.scan("ssn/") if _old_key(k)]:
        got = await store.get(key)
        if got is not None:
            await _move_session(store, R.unpack(got[0]), report)
        lock = await store.put(LOCK_KEY, owner.encode(), cas=lock, ttl_seconds=LOCK_TTL_S)  # still ours
    for key in [k for k in await store.scan("obj/") if _old_key(k)]:
        await _move_object(store, key[len("obj/"):], report)


async def _move_session(store: Store, rec: dict, report: LayoutReport) -> None:
    sid, app = rec["id"], rec["app"]
    old = {"ssn": f"ssn/{sid}", "open": f"open/{sid}", "appssn": f"appssn/{app}/{sid}", "seq": f"seq/{sid}",
           "alloc": f"alloc/{sid}", "queue": f"tasks/{sid}"}
    task_keys = await store.scan(f"task/{sid}/")
    if await store.get(R.k_ssn(sid)) is None:  # else a previous run switched it over: only clean up
        is_open = rec["state"] == int(SessionState.OPEN) and await store.get(old["open"]) is not None
        counts = {c: 0 for c in R.COUNTERS}
        items, queued, last = [], [], 0
        for i in range(0, len(task_keys), PAGE):
            for got in await store.mget(task_keys[i:i + PAGE]):
                if got is None:
                    continue
                task = R.unpack(got[0])
                if task["state"] == int(TaskState.RUNNING):  # its instance died with the old server: again
                    task = dict(task, state=int(TaskState.PENDING), instance=None)
                    task["events"] = list(task.get("events") or []) + [
                        [int(TaskState.PENDING), "Task was queued again when its data moved to key layout 2",
                         ops.now_ms()]]
                counts[_COUNTER[task["state"]]] += 1
                if task["state"] == int(TaskState.PENDING):
                    queued.append(task["id"])
                last = max(last, int(task["id"]))
                items.append((R.k_task(sid, task["id"]), R.pack(task), 0))
        seq = await store.get(old["seq"])
        last = max(last, int(seq[0]) if seq and seq[0].isdigit() else 0)
        items.append((R.k_seq(sid), str(last).encode(), 0))
        items += [(R.k_cnt(sid, c), str(n).encode(), 0) for c, n in counts.items() if n]
        items.append((R.k_appssn(app, sid), b"", 0))
        await store.put_many(items)
        if is_open and queued:  # records are in before the messages that name them
            queue = R.q_tasks(sid)
            await store.purge(queue)  # what an interrupted earlier run queued
            await asyncio.gather(*(store.enqueue(queue, R.chunk_payload(a, b), R.PRIORITY_FRESH)
                                   for a, b in R.id_runs(sorted(queued))))
            report.requeued += len(queued)
        # The switch: the session record, then its open mark. From here on it is a layout-2 session.
        await store.put_many([(R.k_ssn(sid), R.pack(rec), 0)])
        if is_open:
            await store.put_many([(R.k_open(sid), app.encode(), 0)])
        report.sessions += 1
        report.tasks += sum(counts.values())
    with_old = [f"cnt/{sid}/{c}" for c in R.COUNTERS] + [old[k] for k in ("seq", "alloc", "appssn", "open")]
    await store.delete_many(task_keys + with_old)
    await store.purge(old["queue"])
    await store.delete(old["ssn"])


def object_key_now(key: str) -> str:
    """A layout-1 object key (``obj/a/s/o``, ``objd/a/s/o/g/v``) as layout 2 has it; others unchanged.

    >>> object_key_now("objd/app/ssn/o1/g7/1")
    'objd/{app/ssn}/o1/g7/1'
    """
    if not _old_key(key) or not key.startswith(("obj/", "objd/")):
        return key
    kind, _, rest = key.partition("/")
    parts = rest.split("/", 3)
    if len(parts) < 3:
        return key
    obj = "/".join(parts[:3])
    return R.k_obj(obj) if kind == "obj" else R.k_objd(obj, parts[3] if len(parts) > 3 else "")


async def _move_object(store: Store, key: str, report: LayoutReport) -> None:
    """``key`` = ``app/ssn/oid``: its parts first, then its head, each where the new key is free."""
    part_keys = await store.scan(f"objd/{key}/")
    head = await store.get(f"obj/{key}")
    if head is not None and await store.get(R.k_obj(key)) is None:
        items = []
        for i in range(0, len(part_keys), PAGE):
            page = part_keys[i:i + PAGE]
            items += [(object_key_now(k), got[0], 0)
                      for k, got in zip(page, await store.mget(page)) if got is not None]
        items.append((R.k_obj(key), head[0], 0))
        await store.put_many(items)  # one tag: applied in order, a reader never sees the head alone
        report.objects += 1
    await store.delete(f"obj/{key}")
    await store.delete_many(part_keys)


_COUNTER = {int(TaskState.PENDING): "pending", int(TaskState.RUNNING): "running",
            int(TaskState.SUCCEED): "succeed", int(TaskState.FAILED): "failed", int(TaskState.CANCELLED): "cancelled"}


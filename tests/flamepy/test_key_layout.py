"""flamepy's key layout 2 (session hash tags) and the one-time move of layout-1 data
(:mod:`flamepy.executor.layout`): a server started on a data dir written by the old layout serves its
sessions, tasks and objects, runs the tasks that were pending (or running) and leaves no old key behind."""

from __future__ import annotations

import asyncio
import sys

import pytest

import flamepy
from flamepy.core import cache
from flamepy.core import ops
from flamepy.core import records as R
from flamepy.core._store import Store
from flamepy.core.client import set_default_connection
from flamepy.core.types import SessionState, TaskState
from flamepy.executor.layout import LAYOUT_KEY, migrate_layout, object_key_now
from flo_core.slots import key_slot
from tests.helpers import ServerProc, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ECHO = '''\
import flamepy

class Echo(flamepy.FlameService):
    def on_task_invoke(self, ctx):
        return ctx.input

flamepy.run(Echo())
'''
BIG = bytes(range(256)) * 1200  # > INLINE_MAX: stored as blob chunks


def test_a_sessions_keys_share_its_slot_and_old_object_keys_translate():
    blob = R.k_blob(R.new_blob_id("s-1"), 0)
    keys = [R.k_ssn("s-1"), R.k_open("s-1"), R.k_seq("s-1"), R.k_task("s-1", 7), R.k_cnt("s-1", "pending"),
            R.k_alloc("s-1"), R.q_tasks("s-1"), blob]
    assert len({key_slot(k, R.NAMESPACE) for k in keys}) == 1
    assert key_slot(R.k_task("s-1", 1), R.NAMESPACE) != key_slot(R.k_task("s-2", 1), R.NAMESPACE)
    assert R.tagged_id(R.k_open("s-1")) == "s-1" and R.tagged_id("open/x") == ""
    assert R.obj_key_of(R.k_obj("a/s/o")) == "a/s/o"
    assert key_slot(R.k_obj("a/s/o"), R.NAMESPACE) == key_slot(R.k_objd("a/s/o", "g/3"), R.NAMESPACE)
    assert object_key_now("obj/a/s/o") == R.k_obj("a/s/o")
    assert object_key_now("objd/a/s/o/g/1") == R.k_objd("a/s/o", "g/1")
    assert object_key_now(R.k_obj("a/s/o")) == R.k_obj("a/s/o") and object_key_now("blob/x/0") == "blob/x/0"


async def _write_layout1(endpoint: str, app_dir: str) -> None:
    """What flamepy before hash tags wrote: an open session (2 tasks done, one pending, one running,
    one queue message per unfinished task), a closed one, and an object."""
    store = await Store(endpoint).connect()
    try:
        await ops.register_application(store, "lay-echo", {"command": sys.executable, "arguments": ["echo.py"],
                                                         "working_directory": app_dir})
        now = ops.now_ms()
        for sid, state in (("old-open", SessionState.OPEN), ("old-closed", SessionState.CLOSED)):
            rec = R.new_session_record(sid, "lay-echo", None, 0, None, 1, 0, R.DEFAULT_RESREQ, now)
            rec["state"] = int(state)
            await store.put(f"ssn/{sid}", R.pack(rec))
            await store.put(f"appssn/lay-echo/{sid}", b"")
        await store.put("open/old-open", b"lay-echo")
        big_ref, chunks = R.split_blob(BIG)  # untagged blob id: the old chunk keys
        assert chunks and "{" not in chunks[0][0]
        await store.put_many(chunks)
        tasks = [(1, TaskState.SUCCEED, b"one", ["i", b"done-1"]), (2, TaskState.SUCCEED, b"two", big_ref),
                 (3, TaskState.PENDING, b"three", None), (4, TaskState.RUNNING, b"four", None)]
        for tid, state, inp, out in tasks:
            t = R.new_task_record("old-open", tid, ["i", inp], None, now)
            t["state"], t["output"] = int(state), out
            await store.put(f"task/old-open/{tid}", R.pack(t))
        closed = R.new_task_record("old-closed", 1, ["i", b"c"], None, now)
        closed["state"], closed["output"] = int(TaskState.SUCCEED), ["i", b"c"]
        await store.put("task/old-closed/1", R.pack(closed))
        await store.put("seq/old-open", b"4")
        await store.put("seq/old-closed", b"1")
        for name, n in (("succeed", 2), ("pending", 1), ("running", 1)):
            await store.put(f"cnt/old-open/{name}", str(n).encode())
        await store.put("cnt/old-closed/succeed", b"1")
        await store.put("alloc/old-open", R.pack({"gone-node": 1}))
        await store.enqueue("tasks/old-open", b"3", R.PRIORITY_FRESH)
        await store.enqueue("tasks/old-open", b"4", R.PRIORITY_FRESH)
        key = "lay-echo/old-open/o1"
        await store.put(f"objd/{key}/g1/1", R.pack(["i", cache._dumps({"answer": 42})]))
        await store.put(f"obj/{key}", cache._head(1, 1, "g1", cache._PICKLED))
    finally:
        await store.close()


async def _old_keys(endpoint: str) -> list[str]:
    store = await Store(endpoint).connect()
    try:
        out = []
        for prefix in ("ssn/", "open/", "appssn/", "seq/", "task/", "cnt/", "alloc/", "obj/", "objd/"):
            out += [k for k in await store.scan(prefix) if "{" not in k]
        return out
    finally:
        await store.close()


def test_a_server_started_on_layout1_data_moves_it_once_and_serves_it(tmp_path, monkeypatch):
    (tmp_path / "echo.py").write_text(ECHO)
    data = tmp_path / "data"
    sp = ServerProc(data).start()
    try:
        asyncio.run(_write_layout1(sp.endpoint, str(tmp_path)))
    finally:
        sp.stop()
    sp = ServerProc(data, executor=True, env={"FLAME_EXECUTOR_NODE": "layout-node"}).start()
    conn = None
    try:
        wait_until(lambda: "executor manager layout-node serving" in sp.log(), timeout=30)
        assert "moved to key layout 2: 2 sessions (5 tasks, 2 queued again), 1 objects" in sp.log()
        assert asyncio.run(_old_keys(sp.endpoint)) == []
        monkeypatch.setenv("FLAME_ENDPOINT", sp.endpoint)  # the object cache's endpoint too
        conn = flamepy.connect(sp.endpoint)
        set_default_connection(conn)
        by_id = {s.id: s for s in flamepy.list_sessions()}
        assert by_id["old-open"].state == SessionState.OPEN and by_id["old-closed"].state == SessionState.CLOSED
        ssn = flamepy.open_session("old-open")
        # the pending task and the one that was running when the old server stopped run (again) here
        wait_until(lambda: all(ssn.get_task(t).state == TaskState.SUCCEED for t in ("3", "4")), timeout=60)
        assert [ssn.get_task(t).output for t in ("1", "2", "3", "4")] == [b"done-1", BIG, b"three", b"four"]
        assert ssn.invoke(b"new") == b"new"            # the id counter moved too: task 5
        assert sorted(int(t.id) for t in ssn.list_tasks()) == [1, 2, 3, 4, 5]
        assert flamepy.get_session("old-closed").get_task("1").output == b"c"
        ref = cache.ObjectRef(endpoint=sp.endpoint, key="lay-echo/old-open/o1")
        assert flamepy.get_object(ref) == {"answer": 42}
        ssn.close()

        async def again():
            store = await Store(sp.endpoint).connect()
            try:
                assert await store.get(LAYOUT_KEY) is not None
                return await migrate_layout(store)
            finally:
                await store.close()
        assert not asyncio.run(again())                # once: the mark says it is done
    finally:
        if conn is not None:
            conn.close()
        sp.stop()


def test_an_interrupted_move_resumes_without_duplicating(tmp_path):
    """A run stopped after a session's switch (new records in, old ones not yet deleted) finishes the
    cleanup on the next start instead of copying again; the other session is moved whole."""
    (tmp_path / "echo.py").write_text(ECHO)
    sp = ServerProc(tmp_path / "data").start()
    try:
        asyncio.run(_write_layout1(sp.endpoint, str(tmp_path)))

        async def go():
            store = await Store(sp.endpoint).connect()
            try:
                got = await store.get("ssn/old-closed")
                await store.put(R.k_ssn("old-closed"), got[0])       # switched, old keys still there
                await store.put(R.k_task("old-closed", 1), b"kept")  # what the earlier run wrote stays
                await store.put("layout/migrating", b"layout-node", ttl_seconds=30)  # its own lease
                report = await migrate_layout(store, owner="layout-node")
                assert (report.sessions, report.tasks, report.requeued) == (1, 4, 2)
                assert (await store.get(R.k_task("old-closed", 1)))[0] == b"kept"
                assert await store.get("task/old-closed/1") is None and await store.get("ssn/old-closed") is None
                queued = await store.dequeue(R.q_tasks("old-open"), 10)
                assert [p for _, p in queued] == [b"3-4"]                 # one chunk, not one per run
                assert await store.get("layout/migrating") is None
            finally:
                await store.close()
        asyncio.run(go())
        assert asyncio.run(_old_keys(sp.endpoint)) == []
    finally:
        sp.stop()

"""flamepy's batched writes (KV_MPUT via ``Store.put_many``): task creation, group commit, cancellation."""

from __future__ import annotations

import pytest

from flamepy.core import ops
from flamepy.core import records as R
from flamepy.core._store import MPUT_MAX_BYTES, MPUT_MAX_ITEMS, Store
from flamepy.core.types import TaskState

pytestmark = pytest.mark.timeout(60)


def test_mput_requests_split_on_items_bytes_and_repeated_keys():
    items = [(f"k/{{s}}/{i}", b"v") for i in range(MPUT_MAX_ITEMS + 1)]
    assert [len(r) for r in Store.mput_requests(items)] == [MPUT_MAX_ITEMS, 1]
    big = b"x" * (MPUT_MAX_BYTES // 3)
    assert [len(r) for r in Store.mput_requests([(f"{{t}}{c}", big) for c in "abcd"])] == [2, 2]
    # A key twice never shares a request (the server refuses that); order is kept.
    reqs = Store.mput_requests([("{t}a", b"1"), ("{t}b", b"2", 5), ("{t}a", b"3")])
    assert [[it[0] for it in r] for r in reqs] == [["{t}a", "{t}b"], ["{t}a"]]
    assert reqs[0][1][2].cas_version == 5 and len(reqs[0][0]) == 2
    assert Store.mput_requests([]) == []


def test_mput_requests_never_mix_routing_tags():
    """On a cluster one KV_MPUT must stay on one shard: keys of one {hash tag} share requests (in
    order), keys of another tag get their own, and a key without a tag goes alone."""
    reqs = Store.mput_requests([(R.k_task("s1", 1), b""), (R.k_task("s2", 1), b""), (R.k_cnt("s1", "x"), b""),
                                ("plain-a", b""), ("plain-b", b""), (R.k_task("s2", 2), b"")])
    assert [[it[0] for it in r] for r in reqs] == [
        [R.k_task("s1", 1), R.k_cnt("s1", "x")], [R.k_task("s2", 1), R.k_task("s2", 2)], ["plain-a"], ["plain-b"]]


async def _store(endpoint: str) -> Store:
    return await Store(endpoint, namespace="flamepy_mput_test").connect()


async def test_create_tasks_past_one_request_and_with_blobs(server):
    store = await _store(server)
    try:
        sid = "ssn-mput"
        await store.put(R.k_open(sid), b"app")
        n = MPUT_MAX_ITEMS + 100  # more than one KV_MPUT
        ids = await ops.create_tasks(store, sid, [str(i).encode() for i in range(n)], R.q_reply("c1"))
        assert ids == list(range(1, n + 1))
        got = await store.mget([R.k_task(sid, t) for t in ids])
        recs = [R.unpack(g[0]) for g in got]
        assert all(r["state"] == int(TaskState.PENDING) for r in recs)
        assert [r["input"][1] for r in recs] == [str(i).encode() for i in range(n)]
        assert (await ops.session_counters(store, sid))["pending"] == n
        msgs = await store.dequeue(R.q_tasks(sid), 1000)
        assert [R.parse_chunk(p) for _, p in msgs] == R.chunk_ranges(ids)
        # A large input goes as blob chunks in the same burst, ahead of its record.
        data = bytes(range(256)) * 3000
        [tid] = await ops.create_tasks(store, sid, [data], None)
        task = await ops.load_task(store, sid, tid)
        assert task.input == data
    finally:
        await store.close()


async def test_finish_batch_keeps_a_cancellation_and_counts_only_what_it_wrote(server):
    store = await _store(server)
    try:
        sid = "ssn-fin"
        reply = R.q_reply("c2")
        await store.put(R.k_open(sid), b"app")
        ids = await ops.create_tasks(store, sid, [b"a", b"b", b"c"], reply)
        read = [await ops.get_task_record(store, sid, t) for t in ids]
        # Task 2 is cancelled meanwhile (its version moves on): the batch must not overwrite it.
        assert await ops.finish_task(store, sid, read[1][0], read[1][1], TaskState.CANCELLED, None, "closed")
        seqs = [seq for seq, _ in await store.dequeue(R.q_tasks(sid), 10)]
        big = b"o" * (R.INLINE_MAX + 10)
        done = [(ops.running_record(rec, "inst-1", ops.now_ms()), int(TaskState.PENDING), version,
                 TaskState.SUCCEED, out, None) for (rec, version), out in zip(read, [b"A", b"B", big])]
        assert await ops.finish_batch(store, sid, done, acks=seqs) == [True, False, True]
        states = [(await ops.get_task_record(store, sid, t))[0]["state"] for t in ids]
        assert states == [int(TaskState.SUCCEED), int(TaskState.CANCELLED), int(TaskState.SUCCEED)]
        assert (await ops.load_task(store, sid, ids[2])).output == big
        counters = await ops.session_counters(store, sid)
        assert (counters["pending"], counters["succeed"], counters["cancelled"]) == (0, 2, 1)
        notices = [n for _, p in await store.dequeue(reply, 10) for n in R.notices_in(p)]
        assert sorted(n[1] for n in notices) == ids  # 2 (cancel, one by one) + 2 (the batch)
        assert await store.dequeue(R.q_tasks(sid), 10) == []  # the chunk was acked
        # Cancelling the rest: nothing pending is left, so nothing changes.
        assert await ops.cancel_pending_tasks(store, sid, TaskState.CANCELLED, "closed") == 0
    finally:
        await store.close()


async def test_cancel_pending_tasks_in_batches(server):
    store = await _store(server)
    try:
        sid = "ssn-cancel"
        await store.put(R.k_open(sid), b"app")
        ids = await ops.create_tasks(store, sid, [b"x"] * 300, R.q_reply("c3"))
        rec, version = await ops.get_task_record(store, sid, ids[0])
        await ops.finish_task(store, sid, rec, version, TaskState.SUCCEED, b"done", None)
        assert await ops.cancel_pending_tasks(store, sid, TaskState.CANCELLED, "bye") == 299
        counters = await ops.session_counters(store, sid)
        assert (counters["pending"], counters["succeed"], counters["cancelled"]) == (0, 1, 299)
        last = (await ops.get_task_record(store, sid, ids[-1]))[0]
        assert last["state"] == int(TaskState.CANCELLED) and last["events"][-1][1] == "bye"
    finally:
        await store.close()

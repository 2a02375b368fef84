"""Regenerate the seed corpus of ``tests/fuzz/corpus/`` from real encodings.

The Flo request corpus (``corpus/dispatch/``) is what ``flo_client`` actually
sends: a real ``flo-server`` subprocess is started, ``Connection.request`` is
wrapped to record every ``(op, payload)``, and a scenario calls every op the
server has (70 of them). Each recorded request becomes one file
``<OPNAME>-<n>.bin`` holding ``[op u16 LE][payload]``. The other targets' seeds
(RESP commands, JSON documents and paths, stream ids, log segments, frames) are
written from the small tables below.

``crash-*`` files are added by hand (an input that once crashed, see README.md);
this script rewrites only the files it generates. Run it from the repository
root::

    .venv/bin/python -m tests.fuzz.gen_corpus
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

CORPUS = Path(__file__).resolve().parent / "corpus"


def _write(target: str, name: str, data: bytes) -> None:
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


# --- Flo requests, recorded from flo_client against a real server ------------------------------------


async def _ok(aw) -> None:  # noqa: ANN001
    """Await a call whose answer does not matter (only its request is recorded)."""
    try:
        await aw
    except Exception as e:  # noqa: BLE001
        print(f"  (refused: {type(e).__name__}: {e})", file=sys.stderr)


async def _scenario(endpoint: str) -> None:
    from flo_client import FloClient
    from flo_client.action import (ActionInvokeOptions, ActionRegisterOptions, WorkerAwaitOptions,
                                   WorkerRegisterOptions)
    from flo_client.kv import GetOptions, HistoryOptions, PutOptions, ScanOptions
    from flo_client.queue import DequeueOptions, EnqueueOptions, NackOptions, QueueListOptions
    from flo_client.stream import StreamAppendOptions, StreamID, StreamReadOptions, StreamTrimOptions
    from flo_core.spec import Op

    async with FloClient(endpoint, namespace="fz", timeout_ms=5000) as c:
        await c.ping()
        await c.server_info()
        kv = c.kv
        await kv.put("k1", b"v1")
        await kv.put("k2", b"v2", PutOptions(ttl_ms=60_000))
        await kv.put("k3", b"v3", PutOptions(if_not_exists=True))
        await kv.put("k1", b"v1b", PutOptions(cas_version=1))
        await kv.get("k1")
        await kv.get("k1", GetOptions(block_ms=10, wait_for=1))
        await kv.get("missing")
        await kv.mget(["k1", "k2", "missing"])
        await kv.exists("k1")
        await kv.scan("k", ScanOptions(limit=2))
        await kv.history("k1", HistoryOptions(limit=5))
        await kv.incr("n")
        await kv.incr("n", 41)
        await kv.expire("k2", 30_000)
        await kv.persist("k2")
        await kv.json_set("doc", "$", {"a": [1, 2, {"b": "x"}], "c": None, "s": "\u00e9"})
        await kv.json_get("doc", "$.a[2].b")
        await kv.json_set("doc", '$["c"]', [True, 1.5])
        await kv.json_del("doc", "$.a[0]")
        await kv.delete("k3")
        await kv.put_many([("m1", b"a"), ("m2", b"b")])
        txn = await kv.begin("route")
        await txn.put("t1", b"x")
        await txn.incr("t2", 3)
        await txn.get("t1")
        await txn.commit()
        txn = await kv.begin("route")
        await txn.put("t3", b"y")
        await txn.rollback()

        q = c.queue
        s1 = await q.enqueue("jobs", b"job-1")
        await q.enqueue("jobs", b"job-2", EnqueueOptions(priority=3, dedup_key="d1", dedup_window_ms=10_000))
        await q.enqueue("jobs", b"job-3", EnqueueOptions(delay_ms=5))
        got = await q.dequeue("jobs", 2, DequeueOptions(block_ms=10, lease_ms=30_000))
        seqs = [m.seq for m in got.messages] or [s1]
        await q.touch("jobs", seqs[:1])
        await q.ack("jobs", seqs[:1])
        await q.nack("jobs", seqs[1:], NackOptions(to_dlq=True))
        await q.peek("jobs", 5)
        await q.dlq_list("jobs")
        await q.dlq_requeue("jobs", seqs[1:])
        await q.nack("jobs", seqs[1:], NackOptions(delay_ms=5))
        await q.dlq_delete("jobs", [999])
        await q.dlq_purge("jobs")
        await q.stats("jobs")
        await q.list(QueueListOptions(prefix="j", limit=10))
        await q.purge("jobs")

        st = c.stream
        await st.create("ev", max_len=1000)
        r1 = await st.append("ev", b"e1", StreamAppendOptions(headers={"h": "v"}))
        await st.append("ev", b"e2")
        await st.append_batch("ev", [b"e3", (b"e4", {"k": "v"})])
        await st.read("ev", StreamReadOptions(start=StreamID(0, 0), count=10))
        await st.read("ev", StreamReadOptions(tail=True, count=1, block_ms=10))
        await st.info("ev")
        await st.list("e", limit=10)
        await st.set_retention("ev", max_len=500, max_age_seconds=3600)
        await st.group_create("ev", "g", start="0-0")
        await st.group_configure("ev", "g", ack_timeout_ms=30_000, max_deliver=5)
        await st.group_join("ev", "g", "alice")
        rd = await st.group_read("ev", "g", "alice")
        ids = [r.id for r in rd.records] or [r1.id]
        await st.group_pending("ev", "g")
        await st.group_touch("ev", "g", ids[:1], consumer="alice")
        await st.group_ack("ev", "g", ids[:1])
        await st.group_nack("ev", "g", ids[1:2])
        await st.group_claim("ev", "g", "bob", 0, StreamID(0, 0), 10)
        await st.group_info("ev", "g")
        await st.group_leave("ev", "g", "alice")
        await st.group_delete("ev", "g")
        await st.trim("ev", StreamTrimOptions(max_len=2, dry_run=True))
        await st.trim("ev", StreamTrimOptions(before=StreamID(1, 0)))
        await st.delete("ev", force=True)

        a, w = c.action, c.worker
        await a.register("resize", options=ActionRegisterOptions(timeout_ms=60_000, max_retries=2, owner="me"))
        await w.register("w1", ["resize"], WorkerRegisterOptions(concurrency=2, labels={"zone": "a"}))
        await w.heartbeat("w1", 1)
        run = await a.invoke("resize", b"img", ActionInvokeOptions(priority=1, idempotency_key="i1",
                                                                  labels={"zone": "a"}))
        await a.status(run.run_id)
        task = await w.await_task("w1", ["resize"], WorkerAwaitOptions(block_ms=100))
        await c._call_vo(Op.WORKER_INFO, "w1", b"")
        if task is not None:
            await w.touch("w1", "resize", task.task_id)
            await w.complete("w1", "resize", task.task_id, b"done")
        await _ok(a.result(run.run_id, timeout_ms=100))
        run2 = await a.invoke("resize", b"img2")
        task2 = await w.await_task("w1", ["resize"], WorkerAwaitOptions(block_ms=100))
        if task2 is not None:
            await w.fail("w1", "resize", task2.task_id, "boom")
        await a.cancel(run2.run_id)
        await a.list()
        await a.list_runs("resize")
        await w.list()
        await w.drain("w1")
        await w.deregister("w1")
        await a.delete("resize")
        # AUTH as the default user (no password set: refused, but the encoding is real)
        try:
            await c._call_vo(Op.AUTH, "default", b"secret")
        except Exception:  # noqa: BLE001 - only the request matters here
            pass


def record_requests() -> dict[int, list[bytes]]:
    from flo_client import connection
    from tests.helpers import ServerProc

    seen: dict[int, list[bytes]] = defaultdict(list)
    orig = connection.Connection.request

    def request(self, op, payload, timeout=0.0):  # noqa: ANN001
        if bytes(payload) not in seen[int(op)]:
            seen[int(op)].append(bytes(payload))
        return orig(self, op, payload, timeout)

    connection.Connection.request = request  # type: ignore[method-assign]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            sp = ServerProc(Path(tmp) / "data").start()
            try:
                asyncio.run(_scenario(sp.endpoint))
            finally:
                sp.stop()
    finally:
        connection.Connection.request = orig  # type: ignore[method-assign]
    return seen


def write_dispatch_corpus() -> int:
    from flo_core.spec import Op

    seen = record_requests()
    n = 0
    for op, payloads in sorted(seen.items()):
        for i, p in enumerate(payloads[:4]):
            _write("dispatch", f"{Op(op).name}-{i}.bin", struct.pack("<H", op) + p)
            n += 1
    missing = sorted(Op(o).name for o in _handled_ops() if o not in seen)
    if missing:
        print("ops without a recorded request:", ", ".join(missing), file=sys.stderr)
    return n


def _handled_ops() -> list[int]:
    import flo_server.app  # noqa: F401 - registers the handlers
    from flo_server.dispatch import HANDLERS

    return sorted(HANDLERS)


# --- the other targets' seeds ------------------------------------------------------------------------

RESP_SEEDS = {
    "ping-inline": b"PING\r\n",
    "set-get": b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
    "inline-quotes": b'SET "a b" \'c\\\'d\' "\\x41\\n"\r\n',
    "pipeline": b"*1\r\n$4\r\nPING\r\n" * 3 + b"INCR n\r\nDEL k\n",
    "xadd": b"*5\r\n$4\r\nXADD\r\n$1\r\ns\r\n$1\r\n*\r\n$1\r\nf\r\n$1\r\nv\r\n",
    "xadd-ms-star": b"XADD s 5-* f v\r\n",
    "xrange": b"XRANGE s - + COUNT 10\r\nXREVRANGE s + (0-1\r\n",
    "xread": b"XREAD COUNT 2 STREAMS s $\r\n",
    "xgroup": b"XGROUP CREATE s g 0 MKSTREAM\r\nXREADGROUP GROUP g c STREAMS s >\r\nXACK s g 0-1\r\n",
    "json": b"JSON.SET d $ '{\"a\":[1,2]}'\r\nJSON.GET d $.a[1]\r\nJSON.DEL d $.a\r\n",
    "list": b"RPUSH l a b c\r\nLRANGE l 0 -1\r\nLPOP l\r\n",
    "hello": b"HELLO 3\r\nCLIENT SETNAME x\r\nINFO\r\n",
    "empty-multibulk": b"*0\r\n*-1\r\n",
    "bad-bulk": b"*1\r\n$-5\r\n",
    "half-bulk": b"*2\r\n$3\r\nGET\r\n$100\r\nabc",
}

JSON_SEEDS = {
    "nested": ({"a": [1, 2, {"b": "x", "c": [None, True]}], "d\u00e9": 1.5}, ["$.a[2].b", "$.a[-1]", '$["d\u00e9"]']),
    "array": ([[1], [2, [3]], {"k": "v"}], ["$[1][1][0]", "$[2].k", "$[3]"]),
    "scalar": ("text", ["$", ".", "$.x"]),
    "quoted": ({"a b": {"'": 1}, "": 2}, ["$['a b']", "$[\"a b\"][\"'\"]", '$[""]', '$["\\u0061 b"]']),
}

STREAM_ID_SEEDS = [b"0-0", b"1-1", b"*", b"5-*", b"$", b">", b"-", b"+", b"(1-0",
                   b"18446744073709551615-18446744073709551615",
                   b"1", b"1-", b"-1", b"0x10-1", b"1_0-1", b" 1-1"]


def write_other_seeds() -> int:
    n = 0
    for name, data in RESP_SEEDS.items():
        _write("resp", f"{name}.resp", data)
        n += 1
    for name, (doc, paths) in JSON_SEEDS.items():
        _write("jsonpath", f"{name}.json", json.dumps({"doc": doc, "paths": paths}, ensure_ascii=False).encode())
        n += 1
    for i, sid in enumerate(STREAM_ID_SEEDS):
        _write("stream_id", f"id-{i:02d}.txt", sid)
        n += 1
    n += _frame_seeds()
    n += _log_seeds()
    return n


def _frame_seeds() -> int:
    """A few whole request streams (several ops in a row) for the frame reader."""
    from flo_core import _pyframe as pf

    files = sorted((CORPUS / "dispatch").glob("*.bin"))
    frames = [(int.from_bytes(f.read_bytes()[:2], "little"), f.read_bytes()[2:]) for f in files]
    groups = {"kv": "KV_", "queue": "QUEUE_", "stream": "STREAM_", "action": "ACTION_"}
    n = 0
    for name, prefix in groups.items():
        picked = [(op, p) for (op, p), f in zip(frames, files) if f.name.startswith(prefix)][:8]
        data = b"".join(pf.encode_request(i, op, p) for i, (op, p) in enumerate(picked, 1))
        _write("frame", f"{name}.frames", data)
        n += 1
    _write("frame", "empty-payload.frames", pf.encode_request(7, 0, b""))
    return n + 1


def _log_seeds() -> int:
    """Real log segments: one clean, one with a zero-filled tail, one with two segments."""
    import shutil

    from flo_core.log import LogWriter
    from flo_server.persistence import pack_record

    n = 0
    for name, segment_bytes, count, close in (("clean", 1 << 20, 6, True), ("rotated", 4096, 40, True),
                                              ("open", 4096, 5, False)):
        with tempfile.TemporaryDirectory() as tmp:
            w = LogWriter(tmp, segment_bytes=segment_bytes)
            for i in range(count):
                w.append(1, pack_record("kv.set", [1_700_000_000_000 + i, "default", b"k%d" % i, b"v" * (i * 13), 0]))
                if i % 3 == 2:
                    w.flush()
            w.flush()
            w.sync()
            segs = sorted(Path(tmp).glob("*.seg"))
            out = CORPUS / "log" / name
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            for s in segs:  # "open": copied before close, with the writer's zero-filled room after the data
                shutil.copy(s, out / s.name)
            w.close() if close else w.close(sync=False)
            if close:
                for s in segs:
                    if s.exists():
                        shutil.copy(s, out / s.name)
            n += 1
    return n


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    n = write_dispatch_corpus()
    n += write_other_seeds()
    print(f"wrote {n} corpus entries under {CORPUS}")


if __name__ == "__main__":
    main()

"""Soak: mixed load on a real flo-server with periodic kill -9, checking its own data after every restart.

Run it::

    .venv/bin/python -m tests.reliability.soak --seconds 1800 --kill-every 20 --json build/soak.json
    make soak                        # the same: SOAK_SECONDS (default 1800), SOAK_KILL_EVERY (default 20)

Several connections at once, each one request at a time:

- KV (two flo_client connections): put / get / delete on a bounded key space of their
  own, plus a counter by ``incr``; a get must show the connection's last write;
- queue (two): a producer enqueues unique payloads at random priorities, a consumer
  dequeues batches under a lease and acks them;
- stream (two): an appender on a stream with ``max_len`` retention (ids must rise), a
  consumer-group reader that acks what it gets (a record acked is never delivered again);
- RESP (one redis-py connection): SET / GET / INCR / LPUSH / RPOP / XADD with MAXLEN;
- actions: an ActionWorker runs an echo action, an invoker invokes it and waits for
  the result (a few runs a second).

Every ``--kill-every`` seconds (+-50 %, so the kill lands at a random point of the
load) the server gets SIGKILL and is started again on the same data dir. Before the
clients go on, what they had acknowledged is checked against the restarted server:
each KV key holds its last acknowledged value (or the one whose answer the kill cut
off), the counters likewise, the queue holds at least every acknowledged message
not yet delivered, the stream's recent acknowledged records are there with their
ids. At the end the queue is drained (every acknowledged enqueue delivered at least
once), every acknowledged action run must have completed with its output, the
server is stopped and ``flo-server check-log`` must pass.

Reported (stdout, and ``--json FILE``): operations by kind, ops/s, errors by kind
(those in a kill window - in flight at the kill, or tried while the server was
down - apart from the rest), the server's RSS (sampled every 0.5 s: max, and the
median of the first and last fifth of the run), recovery times (kill -> ready).
The exit status is 1 when an acknowledged write was lost, an answer was wrong, an
error came outside a kill window, the server died by itself, RSS grew without
bound (``--max-rss-mib``, or the last fifth's median over 1.5x the first's
+ 64 MiB) or check-log failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, OrderedDict, deque
from pathlib import Path
from typing import Any, Awaitable, Callable

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from flo_client import FloClient
from flo_client.action import ActionRegisterOptions
from flo_client.queue import DequeueOptions, EnqueueOptions
from flo_client.stream import StreamGroupReadOptions, StreamID, StreamReadOptions
from flo_core.spec import RunStatus
from tests.helpers import ROOT, ServerProc
from tests.reliability.nemesis import LOST, Nemesis, cut_log_tail

KV_KEYS = 200  # per KV connection
RESP_KEYS = 100
QUEUE = "soak-q"
QUEUE_BACKLOG = 5_000  # the producer waits while this many acknowledged messages are undelivered
QUEUE_LEASE_MS = 5_000
STREAM = "soak-s"
STREAM_MAX_LEN = 10_000
STREAM_RECENT = 300  # acknowledged appends checked after each restart (all well inside max_len)
GROUP = "soak-g"
ACTION = "soak-echo"
# A few runs a second: the server keeps the newest 100 000 finished runs (docs/protocol-action.md), so
# unpaced runs (~200/s here) would fill that by design in ten minutes and look like RSS growth.
ACTION_PAUSE_S = 0.05
TIMEOUT_MS = 30_000  # per request; generous for a loaded 2-core machine
RESP_LOST = (RedisConnectionError, RedisTimeoutError, OSError)
SAMPLES = 20  # failure samples kept per kind
FATAL = {"server died", "restart failed"}  # the run stops there: no final drain


class Soak:
    """The server, the fault, the clients' models of what they wrote, and the figures."""

    def __init__(self, args: argparse.Namespace, data_dir: Path) -> None:
        self.args = args
        self.rng = random.Random(args.seed)
        extra = ["--snapshot-bytes", str(args.snapshot_bytes)]
        self.server = ServerProc(data_dir, *extra, fsync=args.fsync)
        self.nemesis = Nemesis(self.server, start_timeout=120)
        self.stop = asyncio.Event()
        self.ops: Counter[str] = Counter()
        self.errors_expected: Counter[str] = Counter()
        self.errors_unexpected: Counter[str] = Counter()
        self.failures: dict[str, list[str]] = {}  # kind -> samples
        self.failure_counts: Counter[str] = Counter()
        self.verified = 0  # items checked after restarts
        self.rss: list[tuple[float, int, int]] = []  # (t, epoch, bytes)
        self.started = 0.0
        self.load_seconds = 0.0
        # models: what was acknowledged, and what a kill may or may not have applied
        self.kv: dict[str, tuple[bytes | None, int]] = {}  # key -> (value or None when deleted, version)
        self.kv_maybe: dict[str, bytes | None] = {}
        self.counters: dict[str, int] = {}  # flo "ctr:*" and RESP "resp:ctr": acknowledged value
        self.counters_maybe: Counter[str] = Counter()  # increments whose answer was lost
        self.resp: dict[str, bytes] = {}
        self.resp_maybe: dict[str, bytes] = {}
        self.outstanding: set[bytes] = set()  # acknowledged enqueues not yet delivered
        self.maybe_enqueued: set[bytes] = set()
        self.delivered = 0  # deliveries, redeliveries included
        self.enqueue_seq = 0
        self.appended: deque[tuple[StreamID, bytes]] = deque(maxlen=STREAM_RECENT)
        self.append_seq = 0
        self.group_acked: OrderedDict[StreamID, None] = OrderedDict()
        self.runs: dict[str, bytes] = {}  # acknowledged invokes not yet seen completed -> input
        self.runs_done = 0

    # --- bookkeeping -----------------------------------------------------------------------------

    def fail(self, kind: str, detail: str) -> None:
        self.failure_counts[kind] += 1
        samples = self.failures.setdefault(kind, [])
        if len(samples) < SAMPLES:
            samples.append(detail)

    async def ready(self) -> None:
        """Wait while the server is down or being checked. A worker calls it before it notes a write as
        possibly applied (the check after a restart settles those), then sends at once."""
        if not self.nemesis.up.is_set():
            await self.nemesis.up.wait()

    async def attempt(self, kind: str, call: Callable[[], Awaitable[Any]], lost: tuple = LOST) -> tuple[bool, Any]:
        """Run one operation: (True, answer), or (False, None) after a transport error (then the server is up)."""
        await self.ready()
        epoch = self.nemesis.epoch
        try:
            out = await call()
        except lost as e:
            name = f"{kind}: {type(e).__name__}"
            if self.nemesis.in_kill_window(epoch):
                self.errors_expected[name] += 1
            else:
                self.errors_unexpected[name] += 1
                self.fail("unexpected error", f"{name}: {e}")
            await self.nemesis.up.wait()
            return False, None
        except Exception as e:  # noqa: BLE001 - a refusal where none is due: count it, keep going
            name = f"{kind}: {type(e).__name__}"
            self.errors_unexpected[name] += 1
            self.fail("unexpected error", f"{name}: {e}")
            return False, None
        self.ops[kind] += 1
        return True, out

    # --- KV --------------------------------------------------------------------------------------

    async def kv_worker(self, w: int) -> None:
        rng = random.Random(self.rng.random())
        counter = f"ctr:{w}"
        async with FloClient(self.server.endpoint, timeout_ms=TIMEOUT_MS) as c:
            i = 0
            while not self.stop.is_set():
                await self.ready()
                i += 1
                key, r = f"kv:{w}:{rng.randrange(KV_KEYS)}", rng.random()
                if r < 0.55:
                    value = b"%d:%d:" % (w, i) + os.urandom(rng.randrange(8, 200))
                    self.kv_maybe[key] = value
                    ok, res = await self.attempt("kv.put", lambda: c.kv.put(key, value))
                    if ok:
                        self.kv[key] = (value, res.version)
                        del self.kv_maybe[key]
                elif r < 0.85:
                    ok, got = await self.attempt("kv.get", lambda: c.kv.get(key))
                    if ok and key not in self.kv_maybe:
                        value, version = self.kv.get(key, (None, 0))
                        have = (got.value, got.version) if got is not None else (None, version)
                        if have != (value, version):
                            self.fail("wrong answer", f"get {key}: {got!r:.60}, last written {value!r:.40}@{version}")
                elif r < 0.93:
                    self.kv_maybe[key] = None
                    ok, _ = await self.attempt("kv.delete", lambda: c.kv.delete(key))
                    if ok:
                        self.kv[key] = (None, self.kv.get(key, (None, 0))[1])
                        del self.kv_maybe[key]
                else:
                    self.counters_maybe[counter] += 1
                    ok, n = await self.attempt("kv.incr", lambda: c.kv.incr(counter))
                    if ok:
                        self.counters_maybe[counter] -= 1
                        want = self.counters.get(counter, 0) + 1
                        if int(n) != want and not self.counters_maybe[counter]:
                            self.fail("wrong answer", f"incr {counter} gave {int(n)}, expected {want}")
                        self.counters[counter] = int(n)

    async def verify_kv(self, c: FloClient) -> None:
        keys = sorted(set(self.kv) | set(self.kv_maybe))
        for e in await c.kv.mget(keys):
            self.verified += 1
            value, version = self.kv.get(e.key, (None, 0))
            have = e.value if e.found else None
            if have == value and (have is None or e.version == version):
                continue
            if e.key in self.kv_maybe and have == self.kv_maybe[e.key]:
                self.kv[e.key] = (have, e.version if e.found else version)  # the cut-off write happened
                continue
            self.fail("lost write", f"kv {e.key}: {have!r:.40}@{e.version} after the restart, acknowledged "
                                    f"{value!r:.40}@{version}")
            self.kv[e.key] = (have, e.version)
        self.kv_maybe.clear()
        for counter in [k for k in self.counters if k.startswith("ctr:")]:
            got = await c.kv.get(counter)
            self.check_counter(counter, int(got.value) if got is not None else 0)

    def check_counter(self, counter: str, have: int) -> None:
        self.verified += 1
        low = self.counters.get(counter, 0)
        if not low <= have <= low + self.counters_maybe[counter]:
            self.fail("lost write", f"counter {counter} is {have} after the restart, acknowledged {low} "
                                    f"(+{self.counters_maybe[counter]} unanswered)")
        self.counters[counter] = have
        self.counters_maybe[counter] = 0

    # --- queue -----------------------------------------------------------------------------------

    async def queue_producer(self) -> None:
        rng = random.Random(self.rng.random())
        async with FloClient(self.server.endpoint, timeout_ms=TIMEOUT_MS) as c:
            while not self.stop.is_set():
                if len(self.outstanding) > QUEUE_BACKLOG:
                    await asyncio.sleep(0.01)  # pacing: let the consumer catch up
                    continue
                self.enqueue_seq += 1
                payload = b"m%d" % self.enqueue_seq
                ok, _ = await self.attempt("queue.enqueue", lambda: c.queue.enqueue(
                    QUEUE, payload, EnqueueOptions(priority=rng.randrange(8))))
                (self.outstanding if ok else self.maybe_enqueued).add(payload)

    async def queue_consumer(self, until: Callable[[], bool]) -> None:
        async with FloClient(self.server.endpoint, timeout_ms=TIMEOUT_MS) as c:
            while not until():
                ok, got = await self.attempt("queue.dequeue", lambda: c.queue.dequeue(
                    QUEUE, 10, DequeueOptions(block_ms=200, lease_ms=QUEUE_LEASE_MS)))
                if not ok or not got.messages:
                    continue
                for m in got.messages:
                    p = m.payload
                    if not (p.startswith(b"m") and 0 < int(p[1:]) <= self.enqueue_seq):
                        self.fail("wrong answer", f"dequeued {p!r}, never enqueued")
                    self.outstanding.discard(p)
                self.delivered += len(got.messages)
                await self.attempt("queue.ack", lambda: c.queue.ack(QUEUE, [m.seq for m in got.messages]))

    async def verify_queue(self, c: FloClient) -> None:
        st = await c.queue.stats(QUEUE)
        self.verified += 1
        held = st.ready + st.delayed + st.leased + st.dlq
        if held < len(self.outstanding):
            self.fail("lost write", f"queue holds {held} messages after the restart, {len(self.outstanding)} "
                                    "acknowledged ones are not delivered yet")

    # --- streams ---------------------------------------------------------------------------------

    async def stream_appender(self) -> None:
        async with FloClient(self.server.endpoint, timeout_ms=TIMEOUT_MS) as c:
            await c.stream.create(STREAM, max_len=STREAM_MAX_LEN)
            while not self.stop.is_set():
                self.append_seq += 1
                payload = b"s%d" % self.append_seq
                ok, res = await self.attempt("stream.append", lambda: c.stream.append(STREAM, payload))
                if ok:
                    if self.appended and res.id <= self.appended[-1][0]:
                        self.fail("wrong answer", f"append got id {res.id}, not after {self.appended[-1][0]}")
                    self.appended.append((res.id, payload))

    async def stream_group_reader(self) -> None:
        async with FloClient(self.server.endpoint, timeout_ms=TIMEOUT_MS) as c:
            await c.stream.group_join(STREAM, GROUP, "r1")
            while not self.stop.is_set():
                ok, got = await self.attempt("stream.group_read", lambda: c.stream.group_read(
                    STREAM, GROUP, "r1", StreamGroupReadOptions(count=50, block_ms=200)))
                if not ok or not got.records:
                    continue
                ids = [r.id for r in got.records]
                for r in got.records:
                    if not (r.payload.startswith(b"s") and 0 < int(r.payload[1:]) <= self.append_seq):
                        self.fail("wrong answer", f"group read {r.payload!r:.40} at {r.id}, never appended")
                    if r.id in self.group_acked:
                        self.fail("wrong answer", f"group delivered {r.id} again after its ack")
                ok, n = await self.attempt("stream.group_ack", lambda: c.stream.group_ack(
                    STREAM, GROUP, ids, consumer="r1"))
                if ok and n == len(ids):  # all were pending: all are acked now
                    for i in ids:
                        self.group_acked[i] = None
                    while len(self.group_acked) > 50_000:
                        self.group_acked.popitem(last=False)

    async def verify_stream(self, c: FloClient) -> None:
        if not self.appended:
            return
        want = dict(self.appended)
        first = self.appended[0][0]
        found: dict[StreamID, bytes] = {}
        start = first
        while len(found) < len(want):
            recs = (await c.stream.read(STREAM, StreamReadOptions(start=start, count=1000))).records
            if not recs:
                break
            found.update((r.id, r.payload) for r in recs)
            start = StreamID(recs[-1].id.timestamp_ms, recs[-1].id.sequence + 1)
        lost = 0
        for sid, payload in want.items():
            self.verified += 1
            if found.get(sid) != payload:
                lost += 1
                self.fail("lost write", f"stream record {sid} ({payload!r}) is {found.get(sid)!r} after the restart")
        if lost:
            self.appended.clear()  # go on from what is there

    # --- RESP ------------------------------------------------------------------------------------

    async def resp_worker(self) -> None:
        rng = random.Random(self.rng.random())
        r = aioredis.Redis(host="127.0.0.1", port=self.server.port, socket_timeout=TIMEOUT_MS / 1000,
                           retry=Retry(NoBackoff(), 0))  # no silent resends: an INCR must run once
        try:
            i = 0
            while not self.stop.is_set():
                await self.ready()
                i += 1
                key, x = f"resp:{rng.randrange(RESP_KEYS)}", rng.random()
                if x < 0.4:
                    value = b"r%d" % i
                    self.resp_maybe[key] = value
                    ok, _ = await self.attempt("resp.set", lambda: r.set(key, value), RESP_LOST)
                    if ok:
                        self.resp[key] = value
                        del self.resp_maybe[key]
                elif x < 0.7:
                    ok, got = await self.attempt("resp.get", lambda: r.get(key), RESP_LOST)
                    if ok and key not in self.resp_maybe and got != self.resp.get(key):
                        self.fail("wrong answer", f"GET {key}: {got!r}, last SET {self.resp.get(key)!r}")
                elif x < 0.8:
                    self.counters_maybe["resp:ctr"] += 1
                    ok, n = await self.attempt("resp.incr", lambda: r.incr("resp:ctr"), RESP_LOST)
                    if ok:
                        self.counters_maybe["resp:ctr"] -= 1
                        if n != self.counters.get("resp:ctr", 0) + 1:
                            self.fail("wrong answer", f"INCR resp:ctr gave {n}, expected "
                                                      f"{self.counters.get('resp:ctr', 0) + 1}")
                        self.counters["resp:ctr"] = n
                elif x < 0.9:
                    ok, _ = await self.attempt("resp.lpush", lambda: r.lpush("resp:list", b"l%d" % i), RESP_LOST)
                    ok, got = await self.attempt("resp.rpop", lambda: r.rpop("resp:list"), RESP_LOST)
                    if ok and got is not None and not got.startswith(b"l"):
                        self.fail("wrong answer", f"RPOP resp:list gave {got!r}")
                else:
                    await self.attempt("resp.xadd", lambda: r.xadd("resp:s", {"i": i}, maxlen=1000,
                                                                   approximate=False), RESP_LOST)
        finally:
            await r.aclose()

    async def verify_resp(self) -> None:
        r = aioredis.Redis(host="127.0.0.1", port=self.server.port, socket_timeout=TIMEOUT_MS / 1000)
        try:
            keys = sorted(set(self.resp) | set(self.resp_maybe))
            if keys:
                for key, have in zip(keys, await r.mget(keys)):
                    self.verified += 1
                    if have == self.resp.get(key):
                        continue
                    if key in self.resp_maybe and have == self.resp_maybe[key]:
                        self.resp[key] = have
                        continue
                    self.fail("lost write", f"RESP {key} is {have!r} after the restart, acknowledged "
                                            f"{self.resp.get(key)!r}")
                    self.resp[key] = have  # go on from what is there
            self.resp_maybe.clear()
            if "resp:ctr" in self.counters or self.counters_maybe["resp:ctr"]:
                self.check_counter("resp:ctr", int(await r.get("resp:ctr") or 0))
        finally:
            await r.aclose()

    # --- actions ---------------------------------------------------------------------------------

    async def action_worker(self, registered: asyncio.Event, stop: asyncio.Event) -> None:
        """Runs the echo action (registered by the worker as it starts) until ``stop``."""
        async with FloClient(self.server.endpoint, timeout_ms=TIMEOUT_MS) as c:
            worker = c.new_action_worker(concurrency=2, block_ms=1000, heartbeat_interval=1.0)

            async def echo(ctx) -> bytes:
                return ctx.payload

            worker.register_action(ACTION, echo, ActionRegisterOptions(timeout_ms=3000, max_retries=10))
            task = asyncio.ensure_future(worker.start())
            while not worker.running and not task.done():
                await asyncio.sleep(0.01)
            registered.set()
            await stop.wait()
            await worker.close()
            await task

    async def action_invoker(self) -> None:
        async with FloClient(self.server.endpoint, timeout_ms=TIMEOUT_MS) as c:
            i = 0
            while not self.stop.is_set():
                i += 1
                data = b"a%d" % i
                ok, res = await self.attempt("action.invoke", lambda: c.action.invoke(ACTION, data))
                if not ok:
                    continue
                self.runs[res.run_id] = data
                ok, done = await self.attempt("action.result", lambda: c.action.result(res.run_id, timeout_ms=20_000))
                if ok:
                    self.run_finished(done)
                await asyncio.sleep(ACTION_PAUSE_S)

    def run_finished(self, done: Any) -> None:
        want = self.runs.pop(done.run_id, None)
        self.runs_done += 1
        if done.status != RunStatus.COMPLETED or done.output != want:
            self.fail("wrong answer", f"run {done.run_id}: {done.status.name} {done.output!r}, input {want!r}")

    # --- the fault, and the checks after it ------------------------------------------------------

    async def verify_after_restart(self) -> None:
        """Every acknowledged write is on the restarted server (the clients wait meanwhile)."""
        async with FloClient(self.server.endpoint, timeout_ms=TIMEOUT_MS) as c:
            await self.verify_kv(c)
            await self.verify_queue(c)
            await self.verify_stream(c)
        await self.verify_resp()

    async def killer(self) -> None:
        rng = random.Random(self.rng.random())
        while True:
            try:
                await asyncio.wait_for(self.stop.wait(), self.args.kill_every * rng.uniform(0.5, 1.5))
                return
            except asyncio.TimeoutError:
                pass
            # the clients hold still from the kill until the restarted server has been checked
            sabotage = None
            if self.args.cut_log_at_first_kill and self.nemesis.epoch == 0:
                sabotage = lambda: self.log(  # noqa: E731
                    f"self-test: cut {cut_log_tail(self.server.data_dir, self.args.cut_log_at_first_kill)} "
                    "acknowledged records off the log")
            try:
                took = await self.nemesis.kill_and_restart(before_up=self.verify_after_restart, while_down=sabotage)
            except Exception as e:  # noqa: BLE001 - the server did not come back (or the check broke): stop here
                self.fail("restart failed", f"{e!r}\n" + "\n".join(list(self.server.output)[-30:]))
                self.stop.set()
                return
            self.log(f"kill -9 #{self.nemesis.epoch}: ready again in {took:.2f} s, checked")

    async def watch(self) -> None:
        """RSS every 0.5 s; the server must not die by itself; progress every 10 s."""
        last_print = time.monotonic()
        while not self.stop.is_set():
            proc = self.server.proc
            if self.nemesis.up.is_set() and proc is not None and proc.poll() is not None:
                self.fail("server died", f"exit status {proc.returncode}:\n" + "\n".join(list(self.server.output)[-30:]))
                self.stop.set()
                return
            rss = rss_bytes(proc.pid) if proc is not None else None
            if rss:
                self.rss.append((time.monotonic() - self.started, self.nemesis.epoch, rss))
            if time.monotonic() - last_print >= 10:
                last_print = time.monotonic()
                total = sum(self.ops.values())
                elapsed = time.monotonic() - self.started
                self.log(f"{elapsed:6.0f} s: {total} ops ({total / elapsed:.0f}/s), {self.nemesis.epoch} kills, "
                         f"errors {sum(self.errors_expected.values())} in kill windows / "
                         f"{sum(self.errors_unexpected.values())} other, RSS {(rss or 0) / 2**20:.0f} MiB, "
                         f"failures {sum(self.failure_counts.values())}")
            try:
                await asyncio.wait_for(self.stop.wait(), 0.5)
            except asyncio.TimeoutError:
                pass

    def log(self, line: str) -> None:
        print(f"soak: {line}", flush=True)

    # --- the run ---------------------------------------------------------------------------------

    async def run(self) -> dict:
        self.server.start(timeout=120)
        self.log(f"flo-server on {self.server.endpoint} (--fsync {self.args.fsync}, data {self.server.data_dir}), "
                 f"{self.args.seconds} s, kill -9 every ~{self.args.kill_every} s, seed {self.args.seed}")
        self.started = time.monotonic()
        registered, worker_stop, consumer_stop = asyncio.Event(), asyncio.Event(), asyncio.Event()
        worker = asyncio.ensure_future(self.action_worker(registered, worker_stop))
        await asyncio.wait_for(registered.wait(), 60)  # before the first invoke
        load = [self.kv_worker(0), self.kv_worker(1), self.queue_producer(),
                self.queue_consumer(lambda: consumer_stop.is_set()), self.stream_appender(),
                self.stream_group_reader(), self.resp_worker(), self.action_invoker()]
        tasks = [asyncio.ensure_future(t) for t in load]
        background = [asyncio.ensure_future(self.watch())]
        if self.args.kill_every > 0:
            background.append(asyncio.ensure_future(self.killer()))
        try:
            await asyncio.wait_for(self.stop.wait(), self.args.seconds)
        except asyncio.TimeoutError:
            pass
        self.stop.set()
        self.load_seconds = time.monotonic() - self.started
        await asyncio.gather(*background)  # a restart under way finishes first
        consumer_stop.set()
        await asyncio.gather(*tasks)
        if not FATAL & set(self.failures):
            await self.finish()
        worker_stop.set()
        await worker
        self.server.stop()
        self.check_log_dir()
        return self.report()

    async def finish(self) -> None:
        """Drain the queue and the action runs, check everything once more, stop, check the log."""
        await self.verify_after_restart()
        deadline = time.monotonic() + 60
        drained = asyncio.Event()
        drain = asyncio.ensure_future(self.queue_consumer(drained.is_set))
        async with FloClient(self.server.endpoint, timeout_ms=TIMEOUT_MS) as c:
            for run_id in list(self.runs):  # runs whose result call a kill cut off: they finish after restarts too
                try:
                    wait_ms = int(max(1.0, deadline - time.monotonic()) * 1000)
                    self.run_finished(await c.action.result(run_id, timeout_ms=wait_ms))
                except Exception as e:  # noqa: BLE001
                    self.fail("lost write", f"run {run_id} did not finish: {e!r}")
            # leases of deliveries a kill cut off lapse (QUEUE_LEASE_MS), then those come again
            while self.outstanding and time.monotonic() < deadline:
                st = await c.queue.stats(QUEUE)
                if st.ready + st.delayed + st.leased == 0:
                    break
                await asyncio.sleep(0.2)
        drained.set()
        await drain
        for p in sorted(self.outstanding)[:SAMPLES]:
            self.fail("lost write", f"queue message {p!r} was acknowledged and never delivered")

    def check_log_dir(self) -> None:
        check = subprocess.run([sys.executable, "-m", "flo_server", "check-log", str(self.server.data_dir)],
                               capture_output=True, text=True, timeout=300, cwd=ROOT)
        self.check_log = check.stdout.strip().splitlines()[-3:]
        if check.returncode != 0:
            self.fail("check-log", check.stdout[-2000:] + check.stderr[-2000:])

    def report(self) -> dict:
        total = sum(self.ops.values())
        rss = [b for _, _, b in self.rss]
        fifth = max(1, len(rss) // 5)
        first = statistics.median(rss[:fifth]) if rss else 0
        last = statistics.median(rss[-fifth:]) if rss else 0
        per_epoch: dict[int, int] = {}
        for _, epoch, b in self.rss:
            per_epoch[epoch] = max(per_epoch.get(epoch, 0), b)
        mib = 2 ** 20
        if rss and max(rss) > self.args.max_rss_mib * mib:
            self.fail("rss", f"server RSS reached {max(rss) / mib:.0f} MiB, over --max-rss-mib {self.args.max_rss_mib}")
        if rss and len(rss) >= 20 and last > 1.5 * first + 64 * mib:
            self.fail("rss", f"server RSS grew: median {first / mib:.0f} MiB in the first fifth of the run, "
                             f"{last / mib:.0f} MiB in the last")
        rec = self.nemesis.recoveries
        report = {
            "ok": not self.failure_counts,
            "seconds": round(self.load_seconds, 1),
            "kill_every_s": self.args.kill_every,
            "fsync": self.args.fsync,
            "seed": self.args.seed,
            "ops": total,
            "ops_per_s": round(total / self.load_seconds) if self.load_seconds else 0,
            "ops_by_kind": dict(sorted(self.ops.items())),
            "kills": self.nemesis.epoch,
            "recovery_s": {"min": round(min(rec), 3), "median": round(statistics.median(rec), 3),
                           "max": round(max(rec), 3), "all": [round(t, 3) for t in rec]} if rec else {},
            "errors_in_kill_windows": dict(sorted(self.errors_expected.items())),
            "errors_unexpected": dict(sorted(self.errors_unexpected.items())),
            "verified_items": self.verified,
            "queue_deliveries": self.delivered,
            "action_runs_completed": self.runs_done,
            "rss_mib": {"max": round(max(rss) / mib, 1) if rss else 0, "first_fifth_median": round(first / mib, 1),
                        "last_fifth_median": round(last / mib, 1),
                        "max_per_process": [round(per_epoch[e] / mib, 1) for e in sorted(per_epoch)]},
            "check_log": getattr(self, "check_log", None),
            "failures": {k: {"count": self.failure_counts[k], "samples": v} for k, v in self.failures.items()},
        }
        return report


def rss_bytes(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tests.reliability.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=120, help="how long the load runs (default 120)")
    p.add_argument("--kill-every", type=float, default=20,
                   help="mean seconds between kill -9s, each +-50%% at random (0: never; default 20)")
    p.add_argument("--json", type=Path, help="write the report here too")
    p.add_argument("--fsync", choices=["always", "everysec", "no"], default="everysec",
                   help="the server's --fsync (default everysec, its default: kill -9 must lose nothing either way)")
    p.add_argument("--snapshot-bytes", type=int, default=8 << 20,
                   help="the server's --snapshot-bytes (default 8 MiB, so snapshots happen during the run)")
    p.add_argument("--max-rss-mib", type=float, default=1024, help="fail if the server's RSS passes this")
    p.add_argument("--data-dir", type=Path, help="keep the data here (default: a temporary dir, removed if all is well)")
    p.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "little"))
    p.add_argument("--cut-log-at-first-kill", type=int, default=0, metavar="N",
                   help="self-test of the checks: drop the log's last N records at the first kill (no snapshots "
                        "are taken then); the run must fail with lost writes")
    args = p.parse_args(argv)
    if args.cut_log_at_first_kill:
        args.snapshot_bytes = 1 << 40
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.getLogger("flo_client").setLevel(logging.ERROR)  # the action worker's reconnect notes at every kill
    tmp = None
    if args.data_dir is None:
        tmp = Path(tempfile.mkdtemp(prefix="flo-soak-"))
        data_dir = tmp / "data"
    else:
        data_dir = args.data_dir
    soak = Soak(args, data_dir)
    try:
        report = asyncio.run(soak.run())
    finally:
        soak.server.stop()
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    if report["ok"]:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        print(f"soak: OK - {report['ops']} ops in {report['seconds']} s, {report['kills']} kills, nothing lost")
        return 0
    print(f"soak: FAILED - {', '.join(report['failures'])} (data dir kept: {data_dir})")
    return 1


if __name__ == "__main__":
    sys.exit(main())

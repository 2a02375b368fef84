"""Queue delivery under kill -9 (``--fsync always``): at-least-once, nothing invented, acked stays acked.

Two producers enqueue unique payloads at random priorities; three consumers
dequeue batches with a short lease and mostly ack, sometimes nack, sometimes
let the lease lapse; the server is killed at random moments and restarted on
the same data dir. Then the queue is drained and the recorded deliveries are
checked against what docs/protocol-queue.md promises:

- every acknowledged enqueue is delivered at least once (or, after five
  deliveries, sits in the DLQ); nothing is delivered that was never enqueued,
  and a message keeps its seq, payload and priority;
- once an ack that removed a message has answered, no dequeue called later
  returns it, across restarts too;
- a leased message goes to nobody else before its lease ran out (unless it was
  nacked), and ``delivery_count`` rises with every delivery;
- a dequeue's batch is in priority order (lower first), FIFO within one; that
  order, and a lease, survive a kill -9.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import random
import time
from collections import defaultdict
from dataclasses import dataclass

import pytest

from flo_client import FloClient
from flo_client.queue import DequeueOptions, EnqueueOptions
from tests.helpers import wait_for
from tests.reliability.nemesis import LOST, Nemesis

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

Q = "jobs"
LEASE_MS = 1500
CLOCK_SLACK_S = 0.005  # the server's clock is whole milliseconds of the same wall clock


@dataclass
class Delivery:
    seq: int
    payload: bytes
    priority: int
    count: int  # delivery_count
    consumer: str
    call: int  # ticks of the dequeue's call and answer (one clock for the whole test)
    ret: int
    call_wall: float  # time.time() at the call, for the lease arithmetic
    ret_wall: float


class QueueRun:
    """What the producers and consumers did, and the errors a kill does not explain."""

    def __init__(self, nemesis: Nemesis) -> None:
        self.nemesis = nemesis
        self.tick = itertools.count(1)
        self.enqueued: dict[bytes, tuple[int, int]] = {}  # acknowledged: payload -> (seq, priority)
        self.maybe_enqueued: dict[bytes, int] = {}  # answer lost: payload -> priority
        self.deliveries: list[Delivery] = []
        self.batches: list[list] = []
        self.removed_at: dict[int, int] = {}  # seq -> tick of the first ack answer that removed it
        self.removed_twice: list[int] = []
        self.nacks: dict[int, list[int]] = defaultdict(list)  # seq -> call ticks of nacks
        self.unexpected: list[str] = []
        self.done = 0
        self.producing = True
        self.draining = False  # consumers ack everything
        self.stop = asyncio.Event()

    async def attempt(self, what: str, call):
        """(True, answer), or (False, None) when the connection broke; then the server is up again."""
        if not self.nemesis.up.is_set():
            await self.nemesis.up.wait()
        epoch = self.nemesis.epoch
        try:
            return True, await call()
        except LOST as e:
            if not self.nemesis.in_kill_window(epoch):
                self.unexpected.append(f"{what}: {e!r}")
            await self.nemesis.up.wait()
            return False, None

    async def producer(self, name: str, c: FloClient, rng: random.Random) -> None:
        i = 0
        while self.producing:
            i += 1
            payload, priority = f"{name}:{i}".encode(), rng.randrange(4)
            ok, seq = await self.attempt("enqueue", lambda: c.queue.enqueue(Q, payload, EnqueueOptions(priority=priority)))
            if ok:
                self.enqueued[payload] = (seq, priority)
                self.done += 1
            else:
                self.maybe_enqueued[payload] = priority

    async def consumer(self, name: str, c: FloClient, rng: random.Random) -> None:
        while not self.stop.is_set():
            count = rng.randint(1, 3)
            call, call_wall = next(self.tick), time.time()
            ok, got = await self.attempt("dequeue", lambda: c.queue.dequeue(
                Q, count, DequeueOptions(block_ms=100, lease_ms=LEASE_MS)))
            if not ok:
                continue
            ret, ret_wall = next(self.tick), time.time()
            self.done += 1
            if got.messages:
                self.batches.append(got.messages)
            for m in got.messages:
                self.deliveries.append(Delivery(m.seq, m.payload, m.priority, m.delivery_count, name,
                                                call, ret, call_wall, ret_wall))
            for m in got.messages:
                r = rng.random()
                if self.draining or r < 0.85:
                    ok, removed = await self.attempt("ack", lambda: c.queue.ack(Q, [m.seq]))
                    if ok and removed:
                        if m.seq in self.removed_at:
                            self.removed_twice.append(m.seq)
                        self.removed_at.setdefault(m.seq, next(self.tick))
                elif r < 0.93:
                    self.nacks[m.seq].append(next(self.tick))
                    await self.attempt("nack", lambda: c.queue.nack(Q, [m.seq]))
                # else: leave it leased; the lease lapses and it is delivered again


async def test_queue_delivery_through_kill9(make_server):
    seed = int.from_bytes(os.urandom(4), "little")
    rng = random.Random(seed)
    sp = make_server(fsync="always")
    run = QueueRun(Nemesis(sp))
    clients = [FloClient(sp.endpoint, timeout_ms=30_000) for _ in range(5)]
    for c in clients:
        await c.connect()
    producers = [asyncio.ensure_future(run.producer(f"p{i}", c, random.Random(rng.random())))
                 for i, c in enumerate(clients[:2])]
    consumers = [asyncio.ensure_future(run.consumer(f"c{i}", c, random.Random(rng.random())))
                 for i, c in enumerate(clients[2:])]
    try:
        for _ in range(3):
            target = run.done + rng.randint(150, 500)
            await wait_for(lambda: run.done >= target, timeout=60, what="queue operations")
            await run.nemesis.kill_and_restart()
        target = run.done + 200
        await wait_for(lambda: run.done >= target, timeout=60, what="queue operations after the last restart")
        run.producing = False
        await asyncio.gather(*producers)
        run.draining = True

        async def drained() -> bool:  # what is left is acked or dead-lettered
            st = await clients[0].queue.stats(Q)
            return st.ready + st.delayed + st.leased == 0

        # leases of messages whose dequeue answer was lost at a kill lapse after LEASE_MS
        await wait_for(drained, timeout=60, interval=0.05, what="the queue to drain")
        run.stop.set()
        await asyncio.gather(*consumers)
        dlq = {m.payload for m in (await clients[0].queue.dlq_list(Q)).messages}
    finally:
        run.producing = False
        run.stop.set()
        for c in clients:
            await c.close()

    ds = run.deliveries
    print(f"seed {seed}: {len(run.enqueued)} enqueues acknowledged, {len(run.maybe_enqueued)} unknown, "
          f"{len(ds)} deliveries ({len(ds) - len({d.seq for d in ds})} redeliveries), {len(run.removed_at)} acked, "
          f"{len(dlq)} in the DLQ, recoveries {[round(t, 2) for t in run.nemesis.recoveries]} s")
    assert not run.unexpected, run.unexpected
    assert len(run.enqueued) > 200 and run.nemesis.epoch == 3

    # at least once; nothing invented; a message keeps its seq, payload and priority
    delivered = {d.payload for d in ds}
    assert set(run.enqueued) <= delivered | dlq, sorted(set(run.enqueued) - delivered - dlq)[:10]
    by_seq: dict[int, list[Delivery]] = defaultdict(list)
    for d in ds:
        if d.payload in run.enqueued:
            assert (d.seq, d.priority) == run.enqueued[d.payload], d
        else:
            assert d.payload in run.maybe_enqueued, f"delivered but never enqueued: {d}"
            assert d.priority == run.maybe_enqueued[d.payload], d
        by_seq[d.seq].append(d)
    for seq, seen in by_seq.items():
        assert len({d.payload for d in seen}) == 1, seen

    # acked stays acked (an ack that removed it, then a later dequeue returned it: it came back)
    assert not run.removed_twice, run.removed_twice
    again = [d for d in ds if d.seq in run.removed_at and d.call > run.removed_at[d.seq]]
    assert not again, f"delivered after an ack removed it: {again[:5]}"

    # leases: nobody else gets a leased message before the lease ran out, unless it was nacked
    for seq, seen in by_seq.items():
        seen.sort(key=lambda d: d.ret)
        assert all(d.count >= 1 for d in seen), seen
        for a, b in zip(seen, seen[1:]):
            nacked = any(t < b.ret for t in run.nacks.get(seq, ()))
            if not nacked:
                assert b.ret_wall >= a.call_wall + LEASE_MS / 1000 - CLOCK_SLACK_S, \
                    f"seq {seq} delivered again {b.ret_wall - a.call_wall:.3f} s into a {LEASE_MS} ms lease: {a} {b}"
            if b.call > a.ret:
                assert b.count > a.count, f"delivery_count did not rise: {a} {b}"

    # priority order within every batch
    for batch in run.batches:
        order = [(m.priority, m.seq) for m in batch]
        assert order == sorted(order), batch


async def test_priority_order_and_leases_survive_kill9(make_server):
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    sp = make_server(fsync="always")
    nemesis = Nemesis(sp)
    async with FloClient(sp.endpoint) as c:
        sent = []
        for i in range(40):
            priority = rng.randrange(4)
            seq = await c.queue.enqueue("order", b"o%d" % i, EnqueueOptions(priority=priority))
            sent.append((priority, seq))
        leased = (await c.queue.dequeue("order", 3, DequeueOptions(lease_ms=120_000))).messages
    expected = [seq for _, seq in sorted(sent)]
    assert [m.seq for m in leased] == expected[:3]
    await nemesis.kill_and_restart()
    async with FloClient(sp.endpoint) as c:
        st = await c.queue.stats("order")
        assert (st.ready, st.leased) == (37, 3)
        got = (await c.queue.dequeue("order", 100, DequeueOptions(lease_ms=120_000))).messages
        assert [m.seq for m in got] == expected[3:]  # the rest, in priority order; the leased three still out
        assert all(m.delivery_count == 1 for m in got + leased)
        assert await c.queue.ack("order", [m.seq for m in leased]) == 3  # their lease held over the restart

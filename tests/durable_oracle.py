"""A deterministic write workload that records what the server acknowledged, and the check of a
restarted server against it (the crash-point, torn-write and disk-fault tests share it).

Each round writes, concurrently: 8 KV puts (40 keys, padded values), one CAS step of a chain
on ``cas``, two enqueues to ``jobs`` (every third round two messages are dequeued with a short
lease and acknowledged), and one stream append to ``events``. Every request is recorded as
attempted before it is sent; an answer records it as acknowledged, a refusal (the request did
not run) as refused. :meth:`Oracle.check` then asserts, against the restarted server:

* every acknowledged write is there - a KV key at the acknowledged version (or a later
  attempted one), the CAS chain at least at its acknowledged step, every enqueued message no
  ack was sent for, every stream record with its id;
* nothing appears that was never attempted, or that was refused;
* versions rise strictly across the restart (:meth:`Oracle.check_versions_rise`).

Example::

    oracle = Oracle()
    async with FloClient(endpoint) as c:
        await oracle.run(c, rounds=30)        # stops early (returns) when the server dies
    ...restart...
    async with FloClient(endpoint) as c:
        await oracle.check(c)
        await oracle.check_versions_rise(c)
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from flo_client import FloClient, PutOptions
from flo_client.queue import DequeueOptions
from flo_client.stream import StreamID, StreamReadOptions
from flo_core.errors import ClientError, ServerError

KEYS = 40
PUTS_PER_ROUND = 8
VALUE_BYTES = 3000
LEASE_MS = 250


class ServerGone(Exception):
    """The connection to the server broke (it died, as a crash test wants)."""


@dataclass
class Oracle:
    kv_attempts: dict[str, list[bytes]] = field(default_factory=dict)  # in attempt order (one at a time per key)
    kv_acked: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    kv_history: dict[str, list[tuple[bytes, int]]] = field(default_factory=dict)  # every acknowledged put
    kv_refused: set[bytes] = field(default_factory=set)
    cas_attempted: int = -1  # highest chain step sent
    cas_acked: tuple[int, int] | None = None  # (step, version)
    enq_attempted: set[bytes] = field(default_factory=set)
    enq_acked: set[bytes] = field(default_factory=set)
    enq_refused: set[bytes] = field(default_factory=set)
    done_attempted: set[bytes] = field(default_factory=set)  # dequeued and an ack sent (it may have run)
    done_acked: set[bytes] = field(default_factory=set)  # ... and the ack was acknowledged
    stream_attempted: set[bytes] = field(default_factory=set)
    stream_acked: dict[bytes, StreamID] = field(default_factory=dict)
    stream_refused: set[bytes] = field(default_factory=set)
    refusals: list[str] = field(default_factory=list)  # messages of the refusals seen
    rounds_done: int = 0
    acks: int = 0  # requests answered OK

    @property
    def max_version(self) -> int:
        versions = [v for _, v in self.kv_acked.values()]
        if self.cas_acked:
            versions.append(self.cas_acked[1])
        return max(versions, default=0)

    # --- the workload -------------------------------------------------------------------

    async def _call(self, coro, on_ok, on_refused):
        try:
            result = await coro
        except ServerError as e:
            self.refusals.append(e.message)
            on_refused(e)
            return None
        except (ClientError, ConnectionError, OSError, asyncio.TimeoutError) as e:
            raise ServerGone(repr(e)) from e
        self.acks += 1
        on_ok(result)
        return result

    async def _put(self, c: FloClient, key: str, value: bytes) -> None:
        self.kv_attempts.setdefault(key, []).append(value)

        def ok(r) -> None:
            self.kv_acked[key] = (value, r.version)
            self.kv_history.setdefault(key, []).append((value, r.version))

        def refused(e) -> None:
            if int(e.ran) == 0:
                self.kv_refused.add(value)

        await self._call(c.kv.put(key, value), ok, refused)

    async def _cas(self, c: FloClient, step: int) -> None:
        if step != self.cas_attempted + 1 or (self.cas_acked is None and step):
            return  # the chain continues only from an acknowledged step
        expected = self.cas_acked[1] if self.cas_acked else 0
        self.cas_attempted = step

        def ok(r) -> None:
            self.cas_acked = (step, r.version)

        def refused(e) -> None:
            self.cas_attempted = step - 1  # did not run: the step may be tried again

        await self._call(c.kv.put("cas", b"c%d" % step, PutOptions(cas_version=expected)), ok, refused)

    async def _enqueue(self, c: FloClient, payload: bytes) -> None:
        self.enq_attempted.add(payload)
        await self._call(c.queue.enqueue("jobs", payload), lambda seq: self.enq_acked.add(payload),
                         lambda e: self.enq_refused.add(payload) if int(e.ran) == 0 else None)

    async def _take_and_ack(self, c: FloClient) -> None:
        got = await self._call(c.queue.dequeue("jobs", 2, DequeueOptions(lease_ms=LEASE_MS)),
                               lambda r: None, lambda e: None)
        if not got or not got.messages:
            return
        payloads = [m.payload for m in got.messages]
        self.done_attempted.update(payloads)
        await self._call(c.queue.ack("jobs", [m.seq for m in got.messages]),
                         lambda n: self.done_acked.update(payloads), lambda e: None)

    async def _append(self, c: FloClient, payload: bytes) -> None:
        self.stream_attempted.add(payload)

        def ok(r) -> None:
            self.stream_acked[payload] = r.id

        await self._call(c.stream.append("events", payload), ok,
                         lambda e: self.stream_refused.add(payload) if int(e.ran) == 0 else None)

    async def round(self, c: FloClient, r: int) -> None:
        """One round of the workload (see the module docstring); raises ServerGone when the server died."""
        ops = []
        for i in range(PUTS_PER_ROUND):
            key = f"k{(r * PUTS_PER_ROUND + i) % KEYS}"
            ops.append(self._put(c, key, f"{key}@{r}:".encode().ljust(VALUE_BYTES, b".")))
        ops.append(self._cas(c, r))
        ops += [self._enqueue(c, b"m%d-%d" % (r, j)) for j in range(2)]
        if r % 3 == 2:
            ops.append(self._take_and_ack(c))
        ops.append(self._append(c, b"e%d" % r))
        results = await asyncio.gather(*ops, return_exceptions=True)
        for res in results:
            if isinstance(res, BaseException):
                raise res
        self.rounds_done = r + 1

    async def run(self, c: FloClient, rounds: int, first: int = 0) -> bool:
        """Rounds ``first .. rounds-1``; returns False if the server died on the way."""
        try:
            for r in range(first, rounds):
                await self.round(c, r)
        except ServerGone:
            return False
        return True

    def forget_from(self, lsn: int) -> None:
        """The log lost every record from ``lsn`` on (a torn tail): KV puts acknowledged there are gone,
        the keys hold their last version before it. (Queue and stream acks carry no LSN: not tracked.)"""
        for key, hist in self.kv_history.items():
            hist[:] = [h for h in hist if h[1] < lsn]
            if hist:
                self.kv_acked[key] = hist[-1]
            else:
                self.kv_acked.pop(key, None)

    async def check_kv_exact(self, c: FloClient) -> None:
        """Each key holds exactly its last acknowledged put (no write was in flight)."""
        for key in self.kv_attempts:
            got = await c.kv.get(key)
            want = self.kv_acked.get(key)
            assert (got.value, got.version) == want if got else want is None, f"{key}: {got} != {want}"

    # --- the check after a restart --------------------------------------------------------

    async def check(self, c: FloClient, timeout: float = 10.0) -> None:
        await self._check_kv(c)
        await self._check_queue(c, timeout)
        await self._check_stream(c)

    async def _check_kv(self, c: FloClient) -> None:
        for key, attempts in self.kv_attempts.items():
            got = await c.kv.get(key)
            acked = self.kv_acked.get(key)
            if acked is not None:
                value, version = acked
                assert got is not None, f"{key}: acknowledged at version {version}, gone after the restart"
                assert got.version >= version, f"{key}: version {got.version} < acknowledged {version}"
                if got.version == version:
                    assert got.value == value, f"{key}: version {version} holds another value"
                else:  # a later put that was sent but not answered when the server died
                    later = attempts[attempts.index(value) + 1:]
                    assert got.value in later, f"{key}: value {got.value[:20]!r} was never attempted after the ack"
            elif got is not None:
                assert got.value in attempts, f"{key}: value {got.value[:20]!r} was never attempted"
            if got is not None:
                assert got.value not in self.kv_refused, f"{key}: a refused put is there"
        for i in range(3):
            assert await c.kv.get(f"never{i}") is None
        cas = await c.kv.get("cas")
        if self.cas_acked is not None:
            step, version = self.cas_acked
            assert cas is not None and cas.version >= version, "the acknowledged CAS step is gone"
            got_step = int(cas.value[1:])
            assert step <= got_step <= self.cas_attempted, f"CAS chain at step {got_step}, acked {step}"
            assert cas.version > version or got_step == step
        elif cas is not None:
            assert int(cas.value[1:]) <= self.cas_attempted

    async def _check_queue(self, c: FloClient, timeout: float) -> None:
        must = self.enq_acked - self.done_attempted  # an ack in flight at the crash may have run
        seen: set[bytes] = set()
        deadline = time.monotonic() + timeout
        while True:  # leased messages come back once their lease (LEASE_MS, absolute) lapses
            got = await c.queue.dequeue("jobs", 100, DequeueOptions(lease_ms=120_000))
            for m in got.messages:
                assert m.payload not in seen, f"{m.payload!r} delivered twice while leased"
                seen.add(m.payload)
            if must <= seen and not got.messages:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"queue messages lost: {sorted(must - seen)[:10]}")
            if not got.messages:
                await asyncio.sleep(0.05)
        assert seen <= self.enq_attempted, f"never enqueued: {sorted(seen - self.enq_attempted)[:5]}"
        assert not seen & self.done_acked, f"acknowledged as done, delivered again: {sorted(seen & self.done_acked)[:5]}"
        assert not seen & self.enq_refused, "a refused enqueue is there"

    async def _check_stream(self, c: FloClient) -> None:
        records = []
        start = None
        while True:
            got = await c.stream.read("events", StreamReadOptions(start=start, count=1000))
            records += got.records
            if len(got.records) < 1000:
                break
            last = got.records[-1].id
            start = StreamID(last.timestamp_ms, last.sequence + 1)
        by_payload = {r.payload: r.id for r in records}
        assert len(by_payload) == len(records), "a stream record appears twice"
        for payload, rid in self.stream_acked.items():
            assert by_payload.get(payload) == rid, f"stream record {payload!r} ({rid}) lost or moved"
        assert set(by_payload) <= self.stream_attempted, "a stream record that was never appended"
        assert not set(by_payload) & self.stream_refused, "a refused append is there"

    async def check_versions_rise(self, c: FloClient) -> None:
        """A write after the restart gets a version above every version seen before it."""
        before = self.max_version
        for key in list(self.kv_attempts)[:5] + ["cas"]:
            got = await c.kv.get(key)
            floor = max(before, got.version if got else 0)
            r = await c.kv.put(key, b"after-restart")
            assert r.version > floor, f"{key}: version {r.version} after the restart is not above {floor}"
            before = r.version

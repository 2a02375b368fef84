"""One cluster member: campaigns for its shard's leadership, leads it, or follows its leader.

``flo-server --etcd URL --cluster NAME --shard N --advertise HOST:PORT`` makes a
:class:`ClusterNode`. Every member of a shard runs the same loop:

* no leader in etcd -> campaign (a member whose log is behind another live member's waits a
  little first, so the most complete log tends to win);
* this member leads -> unfence the journal, log a ``cluster.epoch`` record, serve writes until
  the lease is lost (then fence at once and drop the clients, whose in-flight writes have an
  unknown outcome);
* another member leads -> follow it: fetch its log (``REPL_FETCH``), append it unchanged,
  apply it, make it durable, acknowledge it with the next fetch.

While not leading, writes are refused with WRITES_STOPPED naming the leader, reads are served
from the local (possibly lagging) state.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from typing import Any

import msgpack

from flo_core.errors import Refusal
from flo_core.slots import SLOTS
from flo_core.spec import Op, Reason
from flo_server.cluster.coord import Coordinator, Leadership
from flo_server.cluster.replication import MAX_FETCH, Backlog, parse_answer, split_framed
from flo_server.journal import APPLIERS

log = logging.getLogger("flo.cluster")

FETCH_WAIT_MS = 1_000
MEMBER_REFRESH_S = 0.5
MAX_BACKOFF_S = 0.2  # longest wait before asking etcd again after a failure (one small read a member)


class ClusterNode:
    """The cluster side of one flo-server process (``srv.cluster``)."""

    def __init__(self, srv: Any, *, etcd: str, cluster: str, shard: int, advertise: str, node: str | None = None,
                 lease_ms: int = 3000, sync_replicas: int = 0) -> None:
        self.srv = srv
        self.shard = shard
        self.advertise = advertise
        self.node = node or advertise
        self.lease_ms = lease_ms
        self.sync_replicas = sync_replicas
        # etcd calls give up within half a lease: a lost etcd member costs a retry, not a stalled member.
        self.coord = Coordinator(etcd, cluster, timeout_s=max(0.5, lease_ms / 2000))
        self.role = "starting"
        self.epoch = 0
        self.leadership: Leadership | None = None
        self.leader: tuple[str, str, int] | None = None  # (node, advertise, epoch) we follow
        self.backlog = Backlog()
        self.replicas: dict[str, dict] = {}  # the leader's view: node -> {"next", "synced", "at"}
        self.slot_map: Any = None
        self.map_revision = 0  # the etcd mod revision of slot_map (or a lower bound of it)
        self.leaders: dict[int, tuple[str, str, int]] = {}  # shard -> (node, advertise, epoch), refreshed from etcd
        self.members: dict[int, dict[str, dict]] = {}  # shard -> member name -> its etcd record
        # Credentials for asking other members (forwarded requests, replication) when they require users.
        user, password = os.environ.get("FLO_CLUSTER_USERNAME"), os.environ.get("FLO_CLUSTER_PASSWORD")
        self.peer_auth = (user or "default", password) if password else None
        self.router: Any = None
        self.failovers = 0
        self._task: asyncio.Task | None = None
        self._member_lease: Any = None
        self._stopping = False
        # One byte per slot, 1 where this member serves it now (it leads the owning shard and the slot
        # is not moving): the C fast paths read it for every request (flo_core/core.pyx ``served``).
        self.served = bytearray(SLOTS)
        self._fence(f"not the leader of shard {shard} (starting)")

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.coord.connect()
        self.adopt_map(*await self.coord.slot_map())
        if not 0 <= self.shard < self.slot_map.shards:
            raise Refusal(Reason.MALFORMED, f"--shard {self.shard}: the cluster has {self.slot_map.shards} shards")
        journal = self.srv.journal
        journal.writer.tap = self.backlog
        self.backlog.last_lsn = journal.last_lsn
        self._fence(f"not the leader of shard {self.shard} (starting)")
        await self._refresh_map()
        from flo_server.cluster.router import Router

        self.router = self.srv.router = Router(self)
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except BaseException:  # noqa: BLE001 - stopping
                pass
        if self.leadership is not None:
            await self.leadership.resign()
        if self.router is not None:
            await self.router.close()
        await self.coord.close()

    def adopt_map(self, slot_map: Any, revision: int) -> None:
        """Use ``slot_map`` (etcd ``revision`` or later) unless a newer one is known already."""
        if revision >= self.map_revision:
            changed = slot_map != self.slot_map
            self.slot_map, self.map_revision = slot_map, revision
            if changed:
                self.update_served()

    def update_served(self) -> None:
        """Recompute :attr:`served` (after a change of role, slot map or moving slots), in place."""
        served = self.served
        mine = bytearray(SLOTS)
        if self.role == "leader" and self.slot_map is not None:
            for first, last, shard in self.slot_map.ranges:
                if shard == self.shard:
                    mine[first:last + 1] = b"\x01" * (last - first + 1)
            if self.router is not None:
                for s in self.router.frozen:
                    mine[s] = 0
        served[:] = mine

    async def _refresh_map(self) -> None:
        """The slot map and every shard's leader, as etcd has them now."""
        # A read that started before a slot move flipped the map may end after it: adopt_map keeps
        # the newer of the two, so a member never goes back to serving slots it gave away.
        self.adopt_map(*await self.coord.slot_map())
        leaders, members = {}, {}
        for shard in range(self.slot_map.shards):
            lead = await self.coord.leader_of(shard)
            if lead is not None:
                leaders[shard] = lead
            members[shard] = await self.coord.members(shard)
        self.leaders, self.members = leaders, members

    # --- the write gate ---------------------------------------------------------------------------

    def _fence(self, why: str) -> None:
        self.served[:] = bytes(SLOTS)  # first: the fast paths serve nothing from here on
        self.srv.journal.fence(why)
        writer = getattr(self.srv.journal, "writer", None)
        if writer is not None:
            writer.replica_gate = False

    def check_leader(self, epoch: int) -> None:
        """Refuse (WRITES_STOPPED) unless this member leads at ``epoch`` with a valid lease."""
        lead = self.leadership
        if lead is None or not lead.valid() or lead.epoch != epoch:
            raise Refusal(Reason.WRITES_STOPPED, f"not the leader of shard {self.shard} at epoch {epoch}")

    def acked(self, node: str, next_minus_1: int, synced: int) -> None:
        """A replica's fetch says it holds every record up to ``next_minus_1`` (``synced`` durably)."""
        self.replicas[node] = {"next": next_minus_1 + 1, "synced": min(synced, next_minus_1), "at": time.time()}
        if self.sync_replicas:
            w = self.srv.journal.writer
            acks = sorted((r["synced"] for r in self.replicas.values()), reverse=True)
            safe = acks[self.sync_replicas - 1] if len(acks) >= self.sync_replicas else 0
            if safe > w.replica_lsn:
                w.replica_lsn = safe
                self.srv.journal.release_held()

    def live_replicas(self) -> int:
        """Replicas that fetched within the lease time."""
        cutoff = time.time() - self.lease_ms / 1000
        return sum(1 for r in self.replicas.values() if r["at"] >= cutoff)

    # --- the loop ---------------------------------------------------------------------------------

    async def _run(self) -> None:
        publisher = asyncio.ensure_future(self._publish())
        backoff, last_error = 0.05, ""
        try:
            while not self._stopping:
                try:
                    lead = await self.coord.leader_of(self.shard)
                    if lead is None:
                        if await self._should_wait():
                            await asyncio.sleep(self.lease_ms / 2000)
                            continue
                        won = await self._try_lead()
                        if won is not None:
                            await self._lead(won)
                        continue
                    if lead[0] == self.node and (self.leadership is None or self.leadership.epoch != lead[2]):
                        # Our own key from before a restart: its lease lapses by itself.
                        await asyncio.sleep(0.1)
                        continue
                    await self._follow(lead)
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # noqa: BLE001 - etcd or the leader unreachable: retry, say so once
                    what = f"{type(e).__name__}: {e}"
                    (log.warning if what != last_error else log.debug)("shard %d: %s (retrying)", self.shard, what)
                    last_error = what
                    await asyncio.sleep(backoff)
                    # Short: while a dead leader's key waits out its lease, every member asks etcd again
                    # soon enough to campaign (or follow the winner) within moments of it lapsing.
                    backoff = min(backoff * 2, MAX_BACKOFF_S)
                    continue
                backoff, last_error = 0.05, ""
        finally:
            publisher.cancel()

    async def _should_wait(self) -> bool:
        """Another live member of the shard has a longer log: let it campaign first."""
        mine = self.srv.journal.last_lsn
        members = await self.coord.members(self.shard)
        fresh = time.time() * 1000 - 3 * MEMBER_REFRESH_S * 1000
        # Not the last leader's own record (its key is gone: it died or was cut off, so it will not
        # campaign) nor one not refreshed lately: waiting for those only delays the election.
        return any(n != self.node and int(m.get("lsn", 0)) > mine and m.get("role") != "leader"
                   and float(m.get("at_ms", 0)) >= fresh for n, m in members.items())

    async def _try_lead(self) -> Leadership | None:
        """One campaign: our Leadership, or None when another member won (we follow it at once)."""
        try:
            return await asyncio.wait_for(self.coord.campaign(self.shard, self.node, self.advertise, self.lease_ms,
                                                              wait=False), self.lease_ms / 1000)
        except asyncio.TimeoutError:
            return None  # etcd too slow to answer within a lease: ask again who leads

    async def _lead(self, lead: Leadership) -> None:
        self.leadership, self.epoch, self.role = lead, lead.epoch, "leader"
        self.leader = self.leaders[self.shard] = (self.node, self.advertise, lead.epoch)
        self.failovers += 1
        self.replicas.clear()
        journal = self.srv.journal
        w = journal.writer
        w.replica_lsn = journal.last_lsn
        w.replica_gate = self.sync_replicas > 0
        journal.unfence(lead.deadline)
        self.srv.write("cluster.epoch", lead.epoch, self.node)
        self.update_served()
        log.info("shard %d: leading at epoch %d from LSN %d", self.shard, lead.epoch, journal.last_lsn)
        try:
            while lead.valid() and not self._stopping:
                # Fewer live replicas than --sync-replicas: refuse writes up front (Redis's
                # min-replicas-to-write) rather than take writes no replica will acknowledge.
                have = self.live_replicas()
                if have < self.sync_replicas:
                    if journal.fenced is None:
                        journal.fence(f"NOREPLICAS not enough replicas for --sync-replicas {self.sync_replicas} "
                                      f"(have {have})")
                elif journal.fenced is not None:
                    journal.unfence(lead.deadline)
                else:
                    journal.extend_fence(lead.deadline)
                try:
                    await asyncio.wait_for(lead.lost.wait(), 0.05)
                except asyncio.TimeoutError:
                    pass
        finally:
            self._fence(f"not the leader of shard {self.shard} (leadership at epoch {lead.epoch} lost)")
            self.role = "replica"
            self.leadership = None
            if not self._stopping:
                self.srv.drop_clients("leadership lost")  # their in-flight writes have an unknown outcome

    async def _follow(self, lead: tuple[str, str, int]) -> None:
        from flo_client import FloClient

        self.role, self.leader = "replica", lead
        self.leaders[self.shard] = lead
        self._fence(f"not the leader of shard {self.shard}; the leader is {lead[1]}")
        journal = self.srv.journal
        w = journal.writer
        # A healthy leader answers a fetch within its wait; one that does not within a quarter lease
        # more is stopped or cut off: ask etcd again rather than wait on it.
        creds = {"username": self.peer_auth[0], "password": self.peer_auth[1]} if self.peer_auth else {}
        # routing=False: replication talks to this leader only, never through the slot map
        async with FloClient(lead[1], timeout_ms=max(250, self.lease_ms // 4), max_retries=1, routing=False,
                             **creds) as client:
            while not self._stopping:
                cur = await self.coord.leader_of(self.shard) if self._stale_leader_check() else lead
                if cur != lead:
                    return
                last = self.srv.epochs[-1] if self.srv.epochs else None
                req = {"shard": self.shard, "epoch": lead[2], "from": journal.last_lsn + 1,
                       "synced": w.synced_lsn if w.ack_on_sync else w.flushed_lsn, "max": MAX_FETCH,
                       "wait": FETCH_WAIT_MS, "last_epoch": list(last) if last else None}
                try:
                    data = await client._call_vo(Op.REPL_FETCH, self.node, msgpack.packb(req),
                                                 block_ms=FETCH_WAIT_MS)
                except Exception as e:  # noqa: BLE001 - deposed, or gone: ask etcd again
                    log.info("shard %d: fetch from %s: %s", self.shard, lead[1], e)
                    await asyncio.sleep(0.1)
                    return
                head, records = parse_answer(data)
                if head.get("diverged") or head.get("snapshot"):
                    await self._resync(client, lead, "diverged" if head.get("diverged") else "behind the log")
                    return
                if records:
                    await self._apply(records)
                self._last_fetch = time.monotonic()

    def _stale_leader_check(self) -> bool:
        # Ask etcd at most every half lease whether the leader changed (the fetch itself fails
        # fast when the leader was deposed: it refuses a fetch for an epoch it no longer holds).
        now = time.monotonic()
        if now - getattr(self, "_checked", 0.0) > self.lease_ms / 2000:
            self._checked = now
            return True
        return False

    async def _apply(self, records: bytes) -> None:
        """Log the leader's records unchanged, apply them, and make them durable before the next fetch."""
        journal = self.srv.journal
        w = journal.writer
        w.append_framed(records)  # checks CRCs and that the LSNs follow ours
        srv = self.srv
        errors = 0
        for lsn, _kind, payload in split_framed(records):
            kind, args = msgpack.unpackb(payload, raw=False, strict_map_key=False)
            try:
                APPLIERS[kind](srv, lsn, *args)
            except Exception as e:  # noqa: BLE001 - it failed the same way on the leader
                errors += 1
                log.debug("replica apply of %d (%s) raised %r", lsn, kind, e)
        journal.flush_now()
        if w.ack_on_sync:
            await asyncio.get_running_loop().run_in_executor(None, w.sync)
        self.backlog.last_lsn = w.last_lsn

    async def _resync(self, client: Any, lead: tuple[str, str, int], why: str) -> None:
        from flo_server.cluster.replication import resync_from

        log.warning("shard %d: %s: full resynchronisation from %s", self.shard, why, lead[1])
        await resync_from(self.srv, client, lead)

    async def _publish(self) -> None:
        """Keep this member's record in etcd fresh: role, LSN, what it follows (cluster status reads it)."""
        ttl_s = max(1, -(-self.lease_ms // 1000))
        while True:
            try:
                if self._member_lease is None:
                    self._member_lease = await self.coord.etcd.lease(ttl_s)
                else:
                    await self.coord.etcd.refresh_lease(self._member_lease.id)
                info = {"advertise": self.advertise, "role": self.role, "lsn": self.srv.journal.last_lsn,
                        "epoch": self.epoch if self.role == "leader" else (self.leader[2] if self.leader else 0),
                        "at_ms": int(time.time() * 1000), "pid": os.getpid()}
                if self.role == "leader":
                    info["replicas"] = self.replicas
                await self.coord.register(self.shard, self.node, info, self._member_lease)
                await self._refresh_map()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - etcd unreachable: a new lease next time
                log.debug("member record: %r", e)
                self._member_lease = None
            await asyncio.sleep(MEMBER_REFRESH_S)

    def info(self) -> dict:
        return {"cluster": self.coord.cluster, "shard": self.shard, "node": self.node, "role": self.role,
                "epoch": self.epoch, "leader": self.leader[1] if self.leader else None,
                "sync_replicas": self.sync_replicas, "replicas": json.loads(json.dumps(self.replicas)),
                "leaders": {str(s): lead[1] for s, lead in self.leaders.items()},
                "shards": self.slot_map.shards if self.slot_map is not None else 0,
                "forwarded": self.router.forwarded if self.router else 0}

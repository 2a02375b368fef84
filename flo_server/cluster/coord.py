"""What a cluster keeps in etcd: the slot map, each shard's leader (a key on a lease) and its members.

Layout under ``/flo/<cluster>/``::

    slots               JSON slot map {"shards": N, "ranges": [[first, last, shard], ...]}; CAS-updated
    shard/<n>/leader    JSON {"advertise": "host:port", "node": id}, on the leader's lease
    shard/<n>/member/<node>   JSON {"advertise", "role", "lsn", "lsn_at_ms"}, on the member's lease

The **epoch** of a leadership is the etcd create-revision of its leader key: etcd revisions only
rise, so a later leader always has a larger epoch, and a replica refuses records from a leader
whose epoch is below the one it last saw (fencing). A leader counts its lease as lost at
``keep-alive sent + TTL`` by its own monotonic clock — before etcd can let anyone else win, because
etcd measures the same TTL from when the keep-alive *arrived* — so a leader that was paused
(SIGSTOP, a long GC, a VM freeze) finds its leadership over the moment it runs again.

>>> m = SlotMap.even(3)
>>> m.ranges
[(0, 5460, 0), (5461, 10922, 1), (10923, 16383, 2)]
>>> m.owner(12182)
2
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import socket
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from flo_core.slots import SLOTS

__all__ = ["ClusterError", "Coordinator", "Leadership", "SlotMap", "grpc_target"]

log = logging.getLogger("flo.cluster")


class ClusterError(Exception):
    """A cluster operation that cannot be done as asked (no such cluster, it exists already, a bad move)."""


def grpc_target(urls: str) -> str:
    """``--etcd`` URLs (comma-separated ``http://host:port``) -> one gRPC target over all members.

    gRPC's ``ipv4:``/``ipv6:`` targets take several addresses and fail over between them, so one
    etcd member going away costs a reconnect, not an outage. Host names are resolved here.

    >>> grpc_target("http://127.0.0.1:2379,127.0.0.1:22379")
    'ipv4:127.0.0.1:2379,127.0.0.1:22379'
    """
    addrs: list[str] = []
    family = "ipv4"
    for url in filter(None, (u.strip() for u in urls.split(","))):
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme not in ("http", ""):
            raise ClusterError(f"etcd URL {url!r}: only http:// is supported")
        host, port = parts.hostname or "127.0.0.1", parts.port or 2379
        for fam, _, _, _, sa in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM):
            if fam == socket.AF_INET6:
                family = "ipv6"
                addrs.append(f"[{sa[0]}]:{port}")
            else:
                addrs.append(f"{sa[0]}:{port}")
            break
    if not addrs:
        raise ClusterError("no etcd URL given")
    return f"{family}:{','.join(addrs)}"


@dataclass(frozen=True)
class SlotMap:
    """Which shard owns each slot, as sorted inclusive ranges ``(first, last, shard)`` covering 0..16383."""

    shards: int
    ranges: list[tuple[int, int, int]]

    @classmethod
    def even(cls, shards: int) -> "SlotMap":
        """Redis Cluster's even split (``redis-cli --cluster create``'s ranges)."""
        if not 1 <= shards <= 1024:
            raise ClusterError("shards must be in 1..1024")
        per = SLOTS / shards
        ranges = [(round(i * per), round((i + 1) * per) - 1, i) for i in range(shards)]
        return cls(shards, ranges)

    def owner(self, slot: int) -> int:
        lo, hi = 0, len(self.ranges) - 1
        while lo <= hi:  # binary search over the sorted ranges
            mid = (lo + hi) // 2
            first, last, shard = self.ranges[mid]
            if slot < first:
                hi = mid - 1
            elif slot > last:
                lo = mid + 1
            else:
                return shard
        raise ClusterError(f"slot {slot} has no owner")

    def slots_of(self, shard: int) -> list[tuple[int, int]]:
        return [(f, l) for f, l, s in self.ranges if s == shard]

    def count_of(self, shard: int) -> int:
        return sum(l - f + 1 for f, l in self.slots_of(shard))

    def move(self, src: int, dst: int, count: int) -> tuple["SlotMap", list[int]]:
        """The map after ``count`` of ``src``'s slots (its highest ones) go to ``dst``, and those slots."""
        if src == dst or not (0 <= src < self.shards and 0 <= dst < self.shards):
            raise ClusterError("move-slots needs two different, existing shards")
        owned = [s for f, l in self.slots_of(src) for s in range(f, l + 1)]
        if not 0 < count <= len(owned):
            raise ClusterError(f"shard {src} owns {len(owned)} slots; cannot move {count}")
        moving = set(owned[-count:])
        owners = [self.owner(s) if s not in moving else dst for s in range(SLOTS)]
        return SlotMap(self.shards, _ranges(owners)), sorted(moving)

    def reassign(self, slots: list[int], dst: int) -> "SlotMap":
        """The map with ``slots`` owned by ``dst``."""
        if not 0 <= dst < self.shards:
            raise ClusterError(f"no shard {dst}")
        moving = set(slots)
        owners = [dst if s in moving else self.owner(s) for s in range(SLOTS)]
        return SlotMap(self.shards, _ranges(owners))

    def to_json(self) -> bytes:
        return json.dumps({"shards": self.shards, "ranges": self.ranges}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "SlotMap":
        doc = json.loads(data)
        m = cls(int(doc["shards"]), [tuple(r) for r in doc["ranges"]])
        if sum(l - f + 1 for f, l, _ in m.ranges) != SLOTS:
            raise ClusterError("slot map does not cover every slot")
        return m


def _ranges(owners: list[int]) -> list[tuple[int, int, int]]:
    out: list[tuple[int, int, int]] = []
    start = 0
    for s in range(1, SLOTS + 1):
        if s == SLOTS or owners[s] != owners[start]:
            out.append((start, s - 1, owners[start]))
            start = s
    return out


class Leadership:
    """A won election: the shard's ``epoch`` and a lease kept alive until :meth:`resign` or loss.

    ``valid()`` is the check a leader makes before accepting a write; ``lost`` is set once the lease
    is gone (expired while we could not reach etcd, or taken over), and never cleared.
    """

    def __init__(self, coord: "Coordinator", shard: int, lease: Any, epoch: int, ttl_s: int, granted_at: float):
        self.coord, self.shard, self.lease, self.epoch, self.ttl_s = coord, shard, lease, epoch, ttl_s
        self.deadline = granted_at + ttl_s
        self.lost = asyncio.Event()
        self._task = asyncio.ensure_future(self._keep_alive())

    def valid(self) -> bool:
        if self.lost.is_set():
            return False
        if time.monotonic() >= self.deadline:
            self._lose("lease deadline passed")
            return False
        return True

    def _lose(self, why: str) -> None:
        if not self.lost.is_set():
            log.warning("shard %d: leadership (epoch %d) lost: %s", self.shard, self.epoch, why)
            self.lost.set()

    async def _keep_alive(self) -> None:
        # Refresh at a third of the TTL; the deadline moves only by what a refresh that was
        # answered proves (measured from when it was sent).
        try:
            while self.valid():
                await asyncio.sleep(min(self.ttl_s / 3, max(0.05, self.deadline - time.monotonic() - 0.05)))
                if not self.valid():
                    return
                sent = time.monotonic()
                try:
                    resp = await asyncio.wait_for(self._refresh(), timeout=max(0.1, self.deadline - sent))
                except (asyncio.TimeoutError, Exception) as e:  # etcd unreachable: keep trying until the deadline
                    log.debug("shard %d: lease refresh failed: %r", self.shard, e)
                    continue
                if resp <= 0:
                    self._lose("etcd says the lease has expired")
                    return
                self.deadline = sent + resp
        except asyncio.CancelledError:
            pass

    async def _refresh(self) -> int:
        ttl = (await self.coord.etcd.refresh_lease(self.lease.id)).TTL
        if ttl > 0 and not await self.coord.is_leader(self.shard, self.epoch):
            return 0
        return ttl

    async def resign(self) -> None:
        """Give up leadership now (a clean shutdown): the next candidate need not wait for the TTL."""
        self._lose("resigned")
        self._task.cancel()
        try:
            await self.lease.revoke()
        except Exception as e:  # etcd unreachable: the lease lapses by itself
            log.debug("revoke failed: %r", e)


class Coordinator:
    """One cluster's records in etcd.

    Example::

        coord = Coordinator("http://127.0.0.1:2379", "prod")
        await coord.connect()
        await coord.create(shards=3)
        lead = await coord.campaign(0, node="n1", advertise="10.0.0.5:9000", lease_ms=3000)
        assert lead.valid()
    """

    def __init__(self, etcd_urls: str, cluster: str, timeout_s: float = 5.0) -> None:
        if not cluster or "/" in cluster:
            raise ClusterError("cluster name must be non-empty and have no '/'")
        self.target = grpc_target(etcd_urls)
        self.cluster = cluster
        self.prefix = f"/flo/{cluster}/".encode()
        self.timeout_s = timeout_s
        self.etcd: Any = None

    async def connect(self) -> "Coordinator":
        import aetcd

        # aetcd joins host and port into the gRPC target; hand it our multi-address target whole.
        host, _, port = self.target.rpartition(":")
        self.etcd = aetcd.Client(host=host, port=int(port), timeout=self.timeout_s)
        await self.etcd.connect()
        return self

    async def close(self) -> None:
        if self.etcd is not None:
            await self.etcd.close()
            self.etcd = None

    async def __aenter__(self) -> "Coordinator":
        return await self.connect()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    def _key(self, *parts: Any) -> bytes:
        return self.prefix + "/".join(str(p) for p in parts).encode()

    # -- slot map ---------------------------------------------------------------------------------

    async def create(self, shards: int) -> SlotMap:
        """Create the cluster with ``shards`` shards and an even slot split; refused if it exists."""
        m = SlotMap.even(shards)
        t = self.etcd.transactions
        ok, _ = await self.etcd.transaction(compare=[t.version(self._key("slots")) == 0],
                                            success=[t.put(self._key("slots"), m.to_json())], failure=[])
        if not ok:
            raise ClusterError(f"cluster {self.cluster!r} exists already")
        return m

    async def slot_map(self) -> tuple[SlotMap, int]:
        """The slot map and its etcd mod-revision (what :meth:`replace_slot_map` compares against)."""
        got = await self.etcd.get(self._key("slots"))
        if got is None:
            raise ClusterError(f"no cluster {self.cluster!r} in etcd (flo-server cluster create ...)")
        return SlotMap.from_json(got.value), got.mod_revision

    async def replace_slot_map(self, new: SlotMap, expect_revision: int) -> bool:
        t = self.etcd.transactions
        ok, _ = await self.etcd.transaction(compare=[t.mod(self._key("slots")) == expect_revision],
                                            success=[t.put(self._key("slots"), new.to_json())], failure=[])
        return ok

    # -- leadership -------------------------------------------------------------------------------

    async def campaign(self, shard: int, node: str, advertise: str, lease_ms: int = 3000,
                       give_up: asyncio.Event | None = None, wait: bool = True) -> Leadership | None:
        """Wait until this node leads ``shard``; returns the :class:`Leadership` (with its epoch).

        ``wait=False``: one attempt; None at once when another node holds the leadership (a member
        then follows it rather than waiting out its lease)."""
        ttl = max(1, math.ceil(lease_ms / 1000))  # etcd leases are whole seconds
        key = self._key("shard", shard, "leader")
        value = json.dumps({"advertise": advertise, "node": node}).encode()
        t = self.etcd.transactions
        while give_up is None or not give_up.is_set():
            granted_at = time.monotonic()
            lease = await self.etcd.lease(ttl)
            ok, resp = await self.etcd.transaction(compare=[t.version(key) == 0],
                                                   success=[t.put(key, value, lease=lease), t.get(key)],
                                                   failure=[])
            if ok:
                epoch = resp[1][0][1].create_revision
                log.info("shard %d: %s leads (epoch %d)", shard, node, epoch)
                return Leadership(self, shard, lease, epoch, ttl, granted_at)
            await lease.revoke()
            if not wait:
                return None
            await self._wait_vacant(key, ttl, give_up)
        raise asyncio.CancelledError

    async def _wait_vacant(self, key: bytes, ttl: int, give_up: asyncio.Event | None = None) -> None:
        # A watch would be exact; a bounded poll is as good at this rate and survives etcd failover.
        deadline = time.monotonic() + ttl
        while time.monotonic() < deadline and not (give_up is not None and give_up.is_set()):
            if await self.etcd.get(key) is None:
                return
            await asyncio.sleep(0.1)

    async def leader_of(self, shard: int) -> tuple[str, str, int] | None:
        """``(node, advertise, epoch)`` of the shard's leader, or None while it has none."""
        got = await self.etcd.get(self._key("shard", shard, "leader"))
        if got is None:
            return None
        doc = json.loads(got.value)
        return doc["node"], doc["advertise"], got.create_revision

    async def is_leader(self, shard: int, epoch: int) -> bool:
        cur = await self.leader_of(shard)
        return cur is not None and cur[2] == epoch

    # -- members ----------------------------------------------------------------------------------

    async def register(self, shard: int, node: str, info: dict, lease: Any) -> None:
        """Publish (or refresh) a member's record on its own lease: it disappears with the member."""
        await self.etcd.put(self._key("shard", shard, "member", node), json.dumps(info).encode(), lease=lease)

    async def members(self, shard: int) -> dict[str, dict]:
        prefix = self._key("shard", shard, "member") + b"/"
        out = {}
        for kv in await self.etcd.get_prefix(prefix):
            out[kv.key[len(prefix):].decode()] = json.loads(kv.value)
        return out

    async def status(self) -> dict:
        """The cluster as ``flo-server cluster status`` prints it: shards, slots, leader, members."""
        m, _ = await self.slot_map()
        shards = []
        now_ms = time.time() * 1000
        for n in range(m.shards):
            lead = await self.leader_of(n)
            members = await self.members(n)
            _lags(members, lead[0] if lead else None, now_ms)
            shards.append({
                "shard": n, "slots": m.slots_of(n), "slot_count": m.count_of(n),
                "leader": None if lead is None else {"node": lead[0], "advertise": lead[1], "epoch": lead[2]},
                "members": members,
            })
        return {"cluster": self.cluster, "shards": shards}


def _lags(members: dict[str, dict], leader: str | None, now_ms: float) -> None:
    """Each replica's ``lag_records`` (the leader's last LSN minus the last it acknowledged) and ``lag_ms``
    (since that acknowledgement), from the leader's own view of its replicas in its member record."""
    info = members.get(leader or "")
    if info is None:
        return
    seen = info.get("replicas") or {}
    for node, member in members.items():
        if node == leader:
            continue
        r = seen.get(node)
        if r is None:
            member["lag_records"], member["lag_ms"] = None, None  # not fetching from this leader
            continue
        member["lag_records"] = max(0, int(info.get("lsn", 0)) - (int(r.get("next", 1)) - 1))
        member["lag_ms"] = max(0, int(now_ms - float(r.get("at", 0)) * 1000))

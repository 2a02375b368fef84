"""The cluster's one routing seam: which shard a request belongs to, and what to do when it is not ours.

A Flo request whose slot another shard owns — or that this member cannot serve because it does
not lead its shard — is forwarded, as it came, to the owning shard's leader over a pooled
connection, and the answer is relayed back. The public SDK, which knows nothing of slots, so works
through any member. ``KV_MGET`` may span shards: its keys are split by owner and the answers merged
in the order asked. RESP clients get Redis Cluster's ``-MOVED slot host:port`` instead, and
``-CROSSSLOT`` for a command whose keys live in different slots (redis-py's ``RedisCluster`` and
``redis-cli -c`` follow them).

Routing keys: a request's key (KV key, queue, stream or action name) in its namespace
(:func:`flo_core.slots.key_slot`); server-level ops (PING, SERVER_INFO, AUTH, namespaces,
replication) are served where they arrive.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import msgpack

from flo_core.body import Reader, Writer, bare_request
from flo_core.errors import ClientError, Refusal
from flo_core.slots import ACROSS_SHARDS, LOCAL_OPS, key_slot  # noqa: F401 - the routing table
from flo_core.spec import SPEC, Flag, Op, Ran, Reason, Tag
from flo_server.cluster import scatter
from flo_server.dispatch import HANDLERS, handler

log = logging.getLogger("flo.cluster")

FORWARD_TIMEOUT_S = 30.0
#: A request is forwarded at most this often: once by the member it reached, once more by a member
#: that knows of a slot move or a new leader the first did not yet.
MAX_HOPS = 2


class Router:
    """``srv.cluster.router``: consulted by ``dispatch`` and ``RespSession`` for every request."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self._peers: dict[tuple[str, int], Any] = {}  # (address, hops) -> connection
        self._connecting: dict[tuple[str, int], asyncio.Lock] = {}
        self.forwarded = 0
        self.frozen: dict[int, asyncio.Event] = {}  # slots of a batch being moved -> set when it is done

    # --- where a slot is served -------------------------------------------------------------------

    def serves(self, slot: int) -> bool:
        node = self.node
        return node.role == "leader" and node.slot_map.owner(slot) == node.shard

    def leader_for(self, slot: int) -> str:
        shard = self.node.slot_map.owner(slot)
        lead = self.node.leaders.get(shard)
        if lead is None or lead[0] == self.node.node:  # none, or us until a moment ago
            raise Refusal(Reason.LEADER_UNKNOWN, f"CLUSTERDOWN shard {shard} (slot {slot}) has no leader right now")
        return lead[1]

    def _read_without_leader(self, slot: int, op: int) -> bool:
        """A read of our own shard while it has no leader (etcd down, an election): serve our copy,
        which may lag, rather than nothing. Writes wait for a leader."""
        node = self.node
        if node.slot_map.owner(slot) != node.shard:
            return False
        spec = SPEC.get(op)
        if spec is None or spec.flags & Flag.WRITE:
            return False
        lead = node.leaders.get(node.shard)
        return lead is None or lead[0] == node.node

    # --- Flo --------------------------------------------------------------------------------------

    def route(self, req: Any, op: int, payload: bytes) -> Any:
        """None to serve ``req`` here, else a coroutine answering ``(status, data)`` from elsewhere."""
        if op in LOCAL_OPS:
            return None
        if op in ACROSS_SHARDS and self.node.slot_map.shards > 1:
            return scatter.route(self, req, op, payload)  # scans, lists, transactions, actions (scatter.py)
        if op == Op.KV_MGET:
            return self._mget(req, payload)
        if op == Op.KV_MPUT:
            slots = {key_slot(k, req.ns) for k in _mput_keys(req)}
            if len({self.node.slot_map.owner(s) for s in slots}) > 1:
                raise Refusal(Reason.WRONG_ROUTING_KEY, "CROSSSLOT an mput's keys live on different shards "
                                                         "(one log record per write: give them a {hash tag})")
            slot = next(iter(slots))
        else:
            slot = key_slot(req.key, req.ns)
        return self.to_slot(req, op, payload, slot)

    def to_slot(self, req: Any, op: int, payload: bytes, slot: int) -> Any:
        """:meth:`route` for a request that belongs to ``slot``."""
        if self.frozen and slot in self.frozen and _changes(op):
            return self._when_thawed(req, op, payload, self.frozen[slot])
        if self.serves(slot):
            return None
        if self._read_without_leader(slot, op):
            return None
        if getattr(req.conn, "routing", False):
            # A routing client (flo_client with the slot map) sends each request to its owner: tell it
            # where the slot lives rather than forwarding, as Redis Cluster's MOVED does. Nothing ran.
            raise Refusal(Reason.LEADER_UNKNOWN, f"MOVED {slot} {self.leader_for(slot)}")
        hops = getattr(req.conn, "forwarded", 0)
        if hops >= MAX_HOPS:
            # Views of the cluster a moment old on both members we came through: the client retries.
            raise Refusal(Reason.LEADER_UNKNOWN, f"CLUSTERDOWN slot {slot} is not served here (a moved leader "
                                                 "or slot): retry")
        # A forwarded request goes on once more at most: the member that sent it had not yet seen a
        # slot move or a new leader that we have.
        addr = self.leader_for(slot)
        if op == Op.ACTION_AWAIT or (op in TAKES_WHEN_WOKEN and _blocks(req)):
            return self._forward_parked(addr, op, payload, hops + 1)
        return self._forward(addr, op, payload, hops + 1)

    # --- slot moves (flo_server.cluster.migrate) ---------------------------------------------------

    def freeze(self, slots: set[int]) -> Any:
        """Hold writes and blocking requests on ``slots`` until the returned ``thaw()`` is called."""
        ev = asyncio.Event()
        for s in slots:
            self.frozen[s] = ev
        self.node.update_served()  # the C fast paths leave them to us

        def thaw() -> None:
            for s in slots:
                if self.frozen.get(s) is ev:
                    del self.frozen[s]
            self.node.update_served()
            ev.set()

        return thaw

    async def _when_thawed(self, req: Any, op: int, payload: bytes, ev: asyncio.Event) -> tuple[int, bytes]:
        await ev.wait()
        again = self.route(req, op, payload)  # the slot moved (forward it) or the move failed (ours still)
        if again is not None:
            return await again
        out = HANDLERS[op](self.node.srv, req)
        return (0, out) if type(out) is bytes else (0, await out)

    async def _forward(self, addr: str, op: int, payload: bytes, hops: int = 1) -> tuple[int, bytes]:
        conn = await self._peer(addr, hops)
        self.forwarded += 1
        spec = SPEC.get(op)
        timeout = 0.0 if spec is not None and spec.flags & Flag.BLOCKING else FORWARD_TIMEOUT_S
        try:
            return await conn.request(op, payload, timeout)
        except (OSError, ClientError) as e:
            # Lost with the request in flight: it may have run there, unless it only reads.
            ran = Ran.NO if spec is not None and not spec.flags & Flag.WRITE else Ran.UNKNOWN
            raise Refusal(Reason.LEADER_UNKNOWN, f"CLUSTERDOWN the leader {addr} went away ({e}): retry",
                          ran=ran) from None

    async def _forward_parked(self, addr: str, op: int, payload: bytes, hops: int) -> tuple[int, bytes]:
        """A long poll that takes what wakes it (a dequeue's lease, a group read's delivery, a worker's run),
        parked at the owner on a connection of its own that closes when the client's does.

        On one server, closing the polling connection is what stops a parked poll: it is handed nothing.
        On the pooled connection the owner would not know the client went, and could lease the next
        message to a poll nobody reads (it would come back only when that lease ran out)."""
        conn = await self._open_peer(addr, hops)
        try:
            self.forwarded += 1
            return await conn.request(op, payload, 0.0)
        except ClientError as e:
            raise Refusal(Reason.LEADER_UNKNOWN, f"CLUSTERDOWN the leader {addr} went away ({e}): retry",
                          ran=Ran.UNKNOWN) from None
        finally:
            conn.close()  # also when the client went away and this coroutine was cancelled

    async def _peer(self, addr: str, hops: int = 1) -> Any:
        """A pooled connection to ``addr`` whose requests arrive there as having come ``hops`` hops."""
        pool = (addr, hops)
        conn = self._peers.get(pool)
        if conn is not None and not conn.closed:
            return conn
        lock = self._connecting.setdefault(pool, asyncio.Lock())
        async with lock:
            conn = self._peers.get(pool)
            if conn is None or conn.closed:
                conn = self._peers[pool] = await self._open_peer(addr, hops)
        return conn

    async def _open_peer(self, addr: str, hops: int) -> Any:
        """A new connection to member ``addr``, marked as carrying requests that came ``hops`` hops."""
        from flo_client.connection import Connection

        host, _, port = addr.rpartition(":")
        try:
            conn = await Connection.open(host, int(port), 5.0, auth=self.node.peer_auth)
            status, _ = await conn.request(Op.CLUSTER_HOP, hop_payload(hops), 5.0)
        except (OSError, ClientError) as e:  # the leader is gone (a failover): nothing ran, the client retries
            raise Refusal(Reason.LEADER_UNKNOWN, f"CLUSTERDOWN cannot reach the leader {addr} ({e}): retry") from None
        if status != 0:
            conn.close()
            raise Refusal(Reason.LEADER_UNKNOWN, f"CLUSTERDOWN member {addr} refused to take forwarded requests")
        return conn

    def _mget(self, req: Any, payload: bytes) -> Any:
        r = Reader(req.body)
        keys = [r.bytes16() for _ in range(r.u16())]
        groups: dict[int, list[int]] = {}
        for i, k in enumerate(keys):
            groups.setdefault(self.node.slot_map.owner(key_slot(k, req.ns)), []).append(i)
        if len(groups) == 1:  # one shard: routed as any request of one slot
            return self.to_slot(req, Op.KV_MGET, payload, key_slot(keys[0], req.ns))
        return self._scatter(req, keys, groups)

    async def _scatter(self, req: Any, keys: list[bytes], groups: dict[int, list[int]]) -> tuple[int, bytes]:
        """An MGET over several shards: one MGET per shard, in parallel, answers merged in asking order."""
        from flo_server.handlers.kv import kv_mget

        head = len(req.ns.encode()).to_bytes(2, "little") + req.ns.encode() + b"\x00\x00"
        entries: list[bytes | None] = [None] * len(keys)

        async def one(shard: int, idx: list[int]) -> None:
            body = Writer().u16(len(idx))
            for i in idx:
                body.bytes16(keys[i])
            if shard == self.node.shard and self.node.role == "leader":
                sub = type(req)(Op.KV_MGET, req.rid, req.ns, b"", req.conn, req.now)
                sub.body = body.getvalue()
                data = kv_mget(self.node.srv, sub)
            else:
                lead = self.node.leaders.get(shard)
                if lead is None:
                    raise Refusal(Reason.LEADER_UNKNOWN, f"CLUSTERDOWN shard {shard} has no leader right now")
                hops = getattr(req.conn, "forwarded", 0)
                if hops >= MAX_HOPS:
                    raise Refusal(Reason.LEADER_UNKNOWN, f"CLUSTERDOWN shard {shard}'s keys are not served here: retry")
                status, data = await self._forward(lead[1], Op.KV_MGET, head + body.getvalue(), hops + 1)
                if status != 0:
                    raise _Relayed(status, data)
            rd = Reader(data)
            n = rd.u16()
            for j in range(n):
                found = rd.u8()
                version = rd.u64()
                value = rd.bytes32()
                entries[idx[j]] = Writer().u8(found).u64(version).bytes32(value).getvalue()

        try:
            await asyncio.gather(*(one(s, idx) for s, idx in groups.items()))
        except _Relayed as e:
            return e.status, e.data
        answered = next((i for i, e in enumerate(entries) if e is None), len(entries))
        w = Writer().u16(answered)
        for e in entries[:answered]:
            w.buf += e
        out = w.opt_u64(None).getvalue() if answered == len(keys) else w.u8(1).u16(answered).getvalue()
        return 0, out

    # --- RESP -------------------------------------------------------------------------------------

    def resp_redirect(self, keys: list[bytes]) -> str | None:
        """``MOVED``/``CROSSSLOT``/``CLUSTERDOWN`` for a RESP command's keys, or None to run it here."""
        if not keys:
            return None
        slots = {key_slot(k) for k in keys}
        if len(slots) > 1:
            return "CROSSSLOT Keys in request don't hash to the same slot"
        slot = slots.pop()
        if slot in self.frozen:
            return "TRYAGAIN the slot is moving to another shard (a few milliseconds): retry"
        if self.serves(slot):
            return None
        try:
            return f"MOVED {slot} {self.leader_for(slot)}"
        except Refusal:
            return "CLUSTERDOWN The cluster is down"

    async def close(self) -> None:
        for conn in self._peers.values():
            conn.close()
        self._peers.clear()


@handler(Op.CLUSTER_SLOTS)
def cluster_slots(srv: Any, req: Any) -> bytes:
    """CLUSTER_SLOTS -> msgpack ``{"cluster", "shards", "ranges": [[first, last, shard]], "leaders": {shard:
    "host:port"}, "members": {shard: ["host:port", ...]}}`` (ext): what a routing client needs to send each request
    to its owner. Served by every member, from its view of etcd (refreshed every half second). With value
    msgpack ``{"redirect": true}`` the connection is marked as routing by itself: a request this member does
    not serve is then refused ``LEADER_UNKNOWN`` "MOVED <slot> <host:port>" (nothing ran) instead of forwarded."""
    node = srv.cluster
    if node is None or node.slot_map is None:
        raise Refusal(Reason.MALFORMED, "CLUSTER_SLOTS: this server is not a cluster member")
    if req.value and req.conn is not None:
        # value msgpack {"redirect": true}: this connection routes by itself; answer MOVED instead of forwarding
        try:
            req.conn.routing = bool(msgpack.unpackb(req.value).get("redirect"))
        except Exception:  # noqa: BLE001 - bad input is refused, never fatal
            raise Refusal(Reason.MALFORMED, "CLUSTER_SLOTS: value must be msgpack {\"redirect\": bool}") from None
    m = node.slot_map
    info = {"cluster": node.coord.cluster, "shards": m.shards, "ranges": [list(r) for r in m.ranges],
            "leaders": {s: lead[1] for s, lead in node.leaders.items()},
            "members": {s: sorted(r.get("advertise", "") for r in ms.values()) for s, ms in node.members.items()}}
    return msgpack.packb(info)


@handler(Op.CLUSTER_HOP)
def cluster_hop(srv: Any, req: Any) -> bytes:
    """CLUSTER_HOP value=hop count (empty: 1) -> empty (ext): requests on this connection come from another
    member's router, having come that many hops (a request is forwarded twice at most)."""
    if req.conn is not None:
        try:
            hops = int(req.value or b"1")
        except ValueError:
            raise Refusal(Reason.MALFORMED, "CLUSTER_HOP: value must be the hop count") from None
        req.conn.forwarded = max(1, min(hops, MAX_HOPS))
    return b""


def hop_payload(hops: int = 1) -> bytes:
    """The CLUSTER_HOP request of a connection whose requests have come ``hops`` hops."""
    return bare_request(str(hops).encode())


class _Relayed(Exception):
    def __init__(self, status: int, data: bytes) -> None:
        self.status, self.data = status, data


#: Long polls that take what wakes them: forwarded on a connection of their own (``_forward_parked``).
TAKES_WHEN_WOKEN = frozenset({Op.QUEUE_DEQUEUE, Op.STREAM_GROUP_READ, Op.ACTION_AWAIT})


def _blocks(req: Any) -> bool:
    """The request asks to wait (its BLOCK_MS option is not zero)."""
    b = req.opts.get(Tag.BLOCK_MS) if req.opts else None
    return bool(b) and any(b)


def _changes(op: int) -> bool:
    """Writes and blocking requests wait while their slot moves; plain reads are served from the copy."""
    spec = SPEC.get(op)
    return spec is None or bool(spec.flags & (Flag.WRITE | Flag.BLOCKING))


def _mput_keys(req: Any) -> list[bytes]:
    from flo_server.auth import flo_keys

    return flo_keys(req)

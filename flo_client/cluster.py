"""Cluster routing for :class:`~flo_client.FloClient`: the slot map, one pool per member, MOVED and failover.

A ``FloClient`` whose first connection answers ``CLUSTER_SLOTS`` is talking to a cluster member: it
keeps the slot map and each shard's leader, and sends every request straight to the leader of its
key's slot (:func:`flo_core.slots.key_slot`) over that member's own pipelined connection (a second
one for long polls), opened on first use. Every connection it opens says ``{"redirect": true}``, so a
member that does not serve a request answers ``MOVED <slot> <host:port>`` (nothing ran) instead of
forwarding it: the client resends it there, at most :data:`MAX_REDIRECTS` times, and refreshes its map
in the background. A lost member, ``WRITES_STOPPED`` or ``CLUSTERDOWN`` refreshes the map from any
member that answers and retries within the client's ``max_retries`` — only when nothing ran, or when
the request is a read that may run twice. A request that times out is not resent (it may have run),
but the map is refreshed, so a leader that stopped answering is left behind once it is replaced.

Example:
    >>> async with FloClient("10.0.0.1:9000,10.0.0.2:9000") as client:   # doctest: +SKIP
    ...     await client.kv.put("user:1", b"x")        # sent to the leader of slot 10778's shard
    ...     (await client.cluster_slots())["leaders"]
    {0: '10.0.0.1:9000', 1: '10.0.0.2:9000'}
"""

from __future__ import annotations

import asyncio
import copy
import logging
import random
from array import array
from typing import TYPE_CHECKING, Any

import msgpack

from flo_core.body import Reader, bare_request
from flo_core.errors import (
    ConnectionClosedError,
    NotConnectedError,
    ProtocolError,
    RequestTimeoutError,
    error_from_refusal,
    parse_refusal_body,
)
from flo_core.slots import ACROSS_SHARDS, ACTION_OPS, ACTIONS_SLOT, LOCAL_OPS, SLOTS, key_slot
from flo_core.spec import SPEC, Flag, Op, Ran, Reason, Status

if TYPE_CHECKING:
    from .client import FloClient
    from .connection import Connection

log = logging.getLogger("flo.client")

MAX_REDIRECTS = 5  # MOVED answers followed for one request before giving up
DOWN_S = 1.0  # an address that refused a connection is asked last for this long
REFRESH_GAP_S = 0.05  # MOVED answers refresh the map at most this often
MAX_ADDRESSES = 256  # members (and seeds) a map may name: every one may get a pooled connection
_RETRY_STATUSES = (Status.OVERLOADED, Status.UNAVAILABLE)
_REDIRECT_ON = msgpack.packb({"redirect": True})

def slots_payload(redirect: bool) -> bytes:
    """A CLUSTER_SLOTS request (no namespace, no key); ``redirect`` marks the connection as routing by itself."""
    return bare_request(_REDIRECT_ON if redirect else b"")


async def probe(conn: "Connection", timeout: float) -> dict | None:
    """Ask a fresh connection for the slot map (marking it as routing): the map, or None from a single server.

    Any refusal means "not a cluster member": a single flo-server refuses CLUSTER_SLOTS, and a
    server that predates it refuses an unknown op.
    """
    status, data = await conn.request(Op.CLUSTER_SLOTS, slots_payload(True), timeout)
    if status != 0:
        return None
    try:
        info = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except Exception as e:  # noqa: BLE001 - a garbled answer is the server's fault, said plainly
        raise ProtocolError(f"CLUSTER_SLOTS answer is not msgpack: {e}") from None
    SlotMap(info)  # checks it
    return info


def split_address(addr: str) -> tuple[str, int]:
    """``"host:port"`` (``[v6]:port`` too) -> (host, port), as members advertise themselves."""
    host, _, port = addr.rpartition(":")
    try:
        return host.strip("[]") or "localhost", int(port)
    except ValueError:
        raise ProtocolError(f"bad member address {addr!r} in the slot map") from None


class SlotMap:
    """One member's answer to CLUSTER_SLOTS, indexed: slot -> shard -> its leader's address.

    >>> m = SlotMap({"shards": 2, "ranges": [[0, 8191, 0], [8192, 16383, 1]], "leaders": {0: "a:1", 1: "b:2"},
    ...              "members": {0: ["a:1"], 1: ["b:2", "c:3"]}})
    >>> m.leader(100), m.leader(16000), m.addresses()
    ('a:1', 'b:2', ['a:1', 'b:2', 'c:3'])
    """

    def __init__(self, info: Any) -> None:
        try:
            self.shards = int(info["shards"])
            if not 1 <= self.shards <= SLOTS:
                raise ValueError(f"{self.shards} shards")
            owner = array("i", [-1]) * SLOTS  # -1: a slot no range covers (the member says CLUSTERDOWN)
            ranges = info["ranges"]
            if len(ranges) > SLOTS:
                raise ValueError("more ranges than slots")
            for first, last, shard in ranges:
                if not (0 <= first <= last < SLOTS and 0 <= shard < self.shards):
                    raise ValueError(f"range {first}..{last} -> shard {shard}")
                owner[first:last + 1] = array("i", [shard]) * (last - first + 1)
            self.leaders = {int(s): str(a) for s, a in (info.get("leaders") or {}).items()}
            self.members = {int(s): [str(a) for a in ms if a] for s, ms in (info.get("members") or {}).items()}
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ProtocolError(f"bad CLUSTER_SLOTS answer: {e}") from None
        if len(self.addresses()) > MAX_ADDRESSES:
            raise ProtocolError(f"CLUSTER_SLOTS names more than {MAX_ADDRESSES} members")
        self._owner = owner
        self.info = info

    def shard(self, slot: int) -> int:
        return self._owner[slot]

    def leader(self, slot: int) -> str | None:
        """The address of the leader of ``slot``'s shard, or None when no leader is known."""
        return self.leaders.get(self._owner[slot])

    def addresses(self) -> list[str]:
        """Every member, leaders first."""
        out = list(dict.fromkeys(self.leaders.values()))
        for ms in self.members.values():
            out.extend(a for a in ms if a not in out)
        return out


def _moved(reason: int, message: str) -> str | None:
    """The address of a ``MOVED <slot> <host:port>`` refusal, else None."""
    if reason == Reason.LEADER_UNKNOWN and message.startswith("MOVED "):
        parts = message.split()
        if len(parts) == 3:
            return parts[2]
    return None


def _resendable(op: int) -> bool:
    """A read may run twice: resent after a connection was lost with it in flight (writes are not)."""
    spec = SPEC.get(op)
    return spec is not None and bool(spec.flags & Flag.READ) and not spec.flags & Flag.WRITE


class ClusterRouter:
    """``client._cluster``: routes a :class:`~flo_client.FloClient`'s requests over a cluster's members.

    ``home`` is the member the client first reached: it serves server-level ops (PING, SERVER_INFO,
    namespaces), and the ops the members route among themselves (scans, lists, actions, workers).
    """

    def __init__(self, client: "FloClient", home: str, info: dict) -> None:
        self.client = client
        self.home = home
        self.map = SlotMap(info)
        self._conns: dict[tuple[str, bool], Connection] = {}  # (address, for long polls) -> connection
        self._locks: dict[tuple[str, bool], asyncio.Lock] = {}
        self._down: dict[str, float] = {}  # address -> loop time it last refused a connection (or timed out)
        self._refreshing: asyncio.Future | None = None
        self._refreshed_at = 0.0
        self.redirects = 0  # MOVED answers followed (a stale map's cost)
        self.refreshes = 0  # maps learned after the first

    # --- connections ----------------------------------------------------------------------------------

    def adopt(self, conn: "Connection", blocking: bool) -> None:
        """The home connection the client probed with becomes the first of the pool."""
        self._conns[(self.home, blocking)] = conn

    @property
    def is_connected(self) -> bool:
        conn = self._conns.get((self.home, False))
        return conn is not None and not conn.closed

    async def connection(self, addr: str, blocking: bool = False) -> "Connection":
        """The pooled connection to ``addr`` (opened, authenticated and marked routing on first use)."""
        key = (addr, blocking)
        conn = self._conns.get(key)
        if conn is not None and not conn.closed:
            return conn
        if self.client._closed:
            raise NotConnectedError("client is closed")
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        async with lock:
            conn = self._conns.get(key)
            if conn is None or conn.closed:
                host, port = split_address(addr)
                try:
                    conn = await self.client._connect_to(host, port)
                except ConnectionClosedError:
                    self._down[addr] = asyncio.get_running_loop().time()
                    raise
                try:
                    info = await probe(conn, self.client.timeout_ms / 1000)
                except BaseException:
                    conn.close()
                    raise
                if info is None:
                    conn.close()
                    raise ConnectionClosedError(f"{addr} is not a member of the cluster (CLUSTER_SLOTS refused)")
                self._down.pop(addr, None)
                self._conns[key] = conn
        return conn

    def _is_down(self, addr: str) -> bool:
        at = self._down.get(addr)
        return at is not None and asyncio.get_running_loop().time() - at < DOWN_S

    def _candidates(self) -> list[str]:
        """Home, the members the map names, then the seeds; addresses that just refused go last."""
        seeds = [f"{h}:{p}" for h, p in self.client._seeds]
        every = list(dict.fromkeys([self.home, *self.map.addresses(), *seeds]))
        return [a for a in every if not self._is_down(a)] + [a for a in every if self._is_down(a)]

    def close(self) -> None:
        conns, self._conns = self._conns, {}
        self._locks.clear()
        for conn in conns.values():
            conn.close()
        # A refresh under way is left to fail by itself: connection() refuses once the client is closed.

    # --- where a request goes -------------------------------------------------------------------------

    def target(self, op: int, key: bytes | str, rest: bytes, ns: str) -> str | None:
        """The leader that serves this request, or None for "any member" (it routes it)."""
        m = self.map
        if op in ACROSS_SHARDS and m.shards > 1:
            return m.leader(ACTIONS_SLOT) if op in ACTION_OPS else None
        try:
            if op == Op.KV_MGET:
                r = Reader(rest)
                slots = [key_slot(r.bytes16(), ns) for _ in range(r.u16())]
                if not slots or len({m.shard(s) for s in slots}) > 1:
                    return None  # over several shards: any member splits it by owner
                slot = slots[0]
            elif op == Op.KV_MPUT:
                r = Reader(Reader(rest).bytes32())  # the items: [count u16] then [key bytes16][value bytes32]...
                if r.u16() == 0:
                    return None
                slot = key_slot(r.bytes16(), ns)
            else:
                slot = key_slot(key, ns)
        except Exception:  # noqa: BLE001 - a malformed body: a member refuses it in words
            return None
        return m.leader(slot)

    def _anywhere(self) -> str:
        return self.home if not self._is_down(self.home) else self._candidates()[0]

    # --- the request path -----------------------------------------------------------------------------

    async def call(self, op: int, key: bytes | str, rest: bytes, ns: str, payload: bytes, block_ms: int,
                   timeout: float) -> bytes:
        """Send one request to its owner; MOVED, a lost member or a leaderless shard are handled here."""
        client = self.client
        pinned = op in LOCAL_OPS  # about this member (its info, its log): never sent elsewhere
        target = None if pinned else self.target(op, key, rest, ns)
        blocking = bool(block_ms)
        attempt = redirects = 0
        delay = 0.05
        while True:
            addr = self.home if pinned else (target or self._anywhere())
            topology = True  # the failure says the map may be stale
            try:
                conn = await self.connection(addr, blocking)
                fut = conn.request(op, payload, timeout)
            except NotConnectedError:
                raise
            except ConnectionClosedError as e:  # not sent: the member is gone (or never was)
                err: Exception = e
                retry = not pinned or not self._is_pinned_home()  # several seeds: another can be home
            else:
                try:
                    status, data = await fut
                except asyncio.CancelledError:
                    conn.forget(fut)
                    raise
                except RequestTimeoutError:
                    # It may have run. A member that stopped answering may have lost its shard meanwhile:
                    # the next requests should not wait on it too.
                    if not pinned:
                        self._down[addr] = asyncio.get_running_loop().time()  # asked last by the refresh
                        self.refresh_soon()
                    raise
                except ConnectionClosedError as e:  # lost in flight: it may have run
                    err, retry = e, not pinned and _resendable(op)
                else:
                    if status == 0:
                        return data
                    reason, ran, msg = parse_refusal_body(data)
                    moved = None if pinned else _moved(reason, msg)
                    if moved is not None and redirects < MAX_REDIRECTS:
                        redirects += 1
                        self.redirects += 1
                        target = moved
                        self.refresh_soon()
                        continue
                    err = error_from_refusal(status, reason, ran, msg)
                    retry = status in _RETRY_STATUSES and ran == Ran.NO
                    topology = not pinned and reason in (Reason.LEADER_UNKNOWN, Reason.WRITES_STOPPED)
            attempt += 1
            if not retry or attempt >= client.max_retries:
                raise err
            if topology:
                await self.refresh()
                target = self.target(op, key, rest, ns)
            await asyncio.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 1.0)

    # --- the map --------------------------------------------------------------------------------------

    def refresh_soon(self) -> None:
        """Learn the map again in the background (one refresh at a time, and not in a burst of MOVED)."""
        if asyncio.get_running_loop().time() - self._refreshed_at >= REFRESH_GAP_S:
            self._start_refresh()

    def _start_refresh(self) -> asyncio.Future:
        if self._refreshing is None or self._refreshing.done():
            self._refreshing = asyncio.ensure_future(self._refresh())
        return self._refreshing

    async def refresh(self) -> bool:
        """Learn the map again from any member that answers; False when none did (the old map stays)."""
        return await asyncio.shield(self._start_refresh())  # a cancelled caller leaves the others' refresh running

    async def _refresh(self) -> bool:
        timeout = self.client.timeout_ms / 1000
        for addr in self._candidates()[:MAX_ADDRESSES]:
            try:
                conn = await self.connection(addr)
                status, data = await conn.request(Op.CLUSTER_SLOTS, slots_payload(True), timeout)
                if status != 0:
                    continue
                new = SlotMap(msgpack.unpackb(data, raw=False, strict_map_key=False))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - that member is gone or confused: ask the next
                log.debug("cluster map from %s: %r", addr, e)
                continue
            self.map = new
            self.refreshes += 1
            self._refreshed_at = asyncio.get_running_loop().time()
            if self._is_down(self.home) and addr != self.home and not self._is_pinned_home():
                self.home = addr
            self._prune()
            return True
        return False

    def _is_pinned_home(self) -> bool:
        # A client given one seed keeps it as home: server-level ops are about that member.
        return len(self.client._seeds) == 1

    def _prune(self) -> None:
        """Close connections to addresses the map no longer names (bounds the pool)."""
        keep = {self.home, *self.map.addresses()}
        for key in [k for k in self._conns if k[0] not in keep]:
            self._conns.pop(key).close()
            self._locks.pop(key, None)

    async def slots(self) -> dict:
        """The current map (refreshed first) as CLUSTER_SLOTS answers it."""
        await self.refresh()
        return copy.deepcopy(self.map.info)


__all__ = ["ClusterRouter", "SlotMap", "LOCAL_OPS", "ACROSS_SHARDS", "ACTION_OPS", "ACTIONS_SLOT", "MAX_REDIRECTS",
           "probe", "split_address"]

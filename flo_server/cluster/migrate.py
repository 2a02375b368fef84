"""Moving slots between shards, online: ``flo-server cluster move-slots --from A --to B --count C``.

The admin command asks shard A's leader (``CLUSTER_MIGRATE``); A moves the slots itself, a batch
of at most :data:`BATCH_SLOTS` at a time:

1. **Freeze** the batch: the router holds every write (and blocking op) on those slots until the
   batch is done; reads go on from A's copy, which no longer changes.
2. **Export** everything the slots hold — KV keys with their history, queues with their leases
   and DLQ, streams with their groups, RESP lists (and the action registry when its slot moves) —
   in one loop turn, so the copy is exact, and hand it to B's leader in parts
   (``CLUSTER_IMPORT``). B logs each part as a ``cluster.import`` record, so B's replicas and B's
   recovery have it too, and answers once it is durable (and on its ``--sync-replicas``).
   B's log first skips to A's LSN (``LogWriter.raise_floor``): KV versions are LSNs, so every
   later version of a moved key is larger than any it had on A.
3. **Flip** the slot map in etcd by compare-and-swap; B adopts it before it answers, A at once.
4. **Drop** the slots on A with a ``cluster.drop`` record (A's replicas drop them too), end the
   parked long polls on them (their clients retry and reach B), abort A's open transactions on
   them, and **thaw**: the held requests route again and go to B.

Nothing acknowledged is lost and nothing is applied twice: a write either ran on A before the
export (and moved with it) or runs on B after the flip. If anything fails before the flip, the
batch stays on A (B is told to forget its copy) and the move stops with the reason.
Redis answers ``-ASK`` while a slot is half moved; here a slot's data moves at once per batch, so
a RESP client only sees ``-TRYAGAIN`` for the moment a batch is frozen, then ``-MOVED``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from typing import Any, Iterable, Iterator

import msgpack

from flo_core.body import bare_request
from flo_core.errors import Refusal, error_from_refusal, parse_refusal_body
from flo_core.slots import ACTIONS_SLOT, SLOTS, key_slot
from flo_core.spec import Op, Reason
from flo_server.dispatch import handler
from flo_server.journal import applier

log = logging.getLogger("flo.cluster")

#: Slots frozen and moved together: small enough that a batch is frozen for milliseconds.
BATCH_SLOTS = 256
#: Bytes of exported state in one CLUSTER_IMPORT (a request frame holds 16 MiB).
PART_BYTES = 4 * 1024 * 1024
MIGRATE_TIMEOUT_S = 30.0


# --- what a set of slots holds ---------------------------------------------------------------------


def slot_mask(slots: Iterable[int]) -> bytes:
    """One byte per slot, 1 for ``slots`` (what ``KVStore.keys_in_slots`` takes)."""
    mask = bytearray(SLOTS)
    for s in slots:
        mask[s] = 1
    return bytes(mask)


def objects(items: list[tuple[str, Any]]) -> int:
    """How many keys, queues, streams and lists ``items`` hold."""
    return sum(len(state[1]) if kind == "kv" else 1 for kind, state in items)


def _named_in(srv: Any, slots: set[int]) -> Iterator[tuple[str, str, Any, Any]]:
    """``(kind, ns, name, object)`` of every queue, stream and RESP list whose slot is in ``slots``."""
    for ns, name in srv.queues.all_names():
        if key_slot(name, ns) in slots:
            yield "queue", ns, name, srv.queues.get(ns, name)
    for ns, d in srv.streams.by_ns.items():
        for name, stream in d.items():
            if key_slot(name, ns) in slots:
                yield "stream", ns, name, stream
    for ns, sp in srv.lists.spaces.items():
        for k, values in sp.items():
            if key_slot(k, ns) in slots:
                yield "list", ns, k, values


def export(srv: Any, slots: set[int]) -> list[tuple[str, Any]]:
    """Every object of ``slots`` as ``(kind, state)`` items, in one loop turn (an exact copy)."""
    items: list[tuple[str, Any]] = []
    kv = srv.kv
    mask = slot_mask(slots)
    for ns in list(kv.spaces):
        keys = kv.keys_in_slots(ns, mask)
        if keys:
            rows = kv.export_keys(ns, keys)
            for i in range(0, len(rows), 512):
                items.append(("kv", [ns, rows[i:i + 512]]))
    for kind, ns, name, obj in _named_in(srv, slots):
        if kind == "queue":
            items.append(("queue", [ns, name, obj.dump()]))
        elif kind == "stream":
            items.append(("stream", [ns, obj.dump()]))
        else:
            items.append(("list", [ns, name, list(obj)]))
    if ACTIONS_SLOT in slots:
        items.append(("actions", srv.actions.dump()))
    return items


def parts(items: list[tuple[str, Any]], limit: int = PART_BYTES) -> list[bytes]:
    """The items packed into msgpack parts of at most ``limit`` bytes (an item bigger than a frame is refused)."""
    out: list[bytes] = []
    cur: list[bytes] = []
    size = 0
    for item in items:
        b = msgpack.packb(item, use_bin_type=True)
        if len(b) > 3 * limit:
            raise Refusal(Reason.FIELD_TOO_LONG, f"cannot move a {item[0]} of {len(b)} bytes in one piece")
        if cur and size + len(b) > limit:
            out.append(_join(cur))
            cur, size = [], 0
        cur.append(b)
        size += len(b)
    if cur:
        out.append(_join(cur))
    return out


def _join(packed: list[bytes]) -> bytes:
    """One msgpack array of items packed already (each was packed once, to measure it)."""
    return msgpack.Packer().pack_array_header(len(packed)) + b"".join(packed)


@applier("cluster.import")
def apply_import(srv: Any, lsn: int, items: list) -> int:
    """Take objects of slots moving here; each replaces what this shard held under its name."""
    from flo_core.pqueue import PriorityQueue
    from flo_core.stream import Stream

    for kind, state in items:
        if kind == "kv":
            srv.kv.import_rows(state[0], state[1])
        elif kind == "queue":
            ns, name, q = state
            srv.queues.adopt(ns, name, PriorityQueue.load(q))
        elif kind == "stream":
            ns, d = state
            srv.streams.by_ns.setdefault(ns, {})[d["name"]] = Stream.from_dump(d)
        elif kind == "list":
            ns, k, values = state
            srv.lists.spaces.setdefault(ns, {})[k] = deque(values)
        elif kind == "actions":
            srv.actions.load(state)
    return len(items)


@applier("cluster.drop")
def apply_drop(srv: Any, lsn: int, slots: list) -> int:
    """Forget everything ``slots`` hold (they moved to another shard, or a move of them failed)."""
    return drop(srv, set(slots))


def drop(srv: Any, slots: set[int]) -> int:
    n = 0
    kv = srv.kv
    mask = slot_mask(slots)
    for ns in list(kv.spaces):
        n += kv.drop_keys(ns, kv.keys_in_slots(ns, mask))
    for kind, ns, name, _ in list(_named_in(srv, slots)):
        if kind == "queue":
            srv.queues.drop(ns, name)
        elif kind == "stream":
            srv.streams.delete(ns, name)
        else:
            sp = srv.lists.spaces[ns]
            del sp[name]
            if not sp:
                del srv.lists.spaces[ns]
        n += 1
    if ACTIONS_SLOT in slots:
        srv.actions.load(srv._empty_states["actions"])
    return n


def _waiter_slot(key: Any) -> int | None:
    """The slot a parked request waits on (``("kv"|"q"|"s"|"l", ns, name, ...)``; actions' own slot)."""
    if not isinstance(key, tuple) or len(key) < 3:
        return None
    if key[0] in ("a", "ar", "w"):
        return ACTIONS_SLOT
    if key[0] in ("kv", "q", "s", "l") and isinstance(key[1], str) and isinstance(key[2], (bytes, str)):
        return key_slot(key[2], key[1])
    return None


def end_parked(srv: Any, slots: set[int], where: str) -> int:
    """Answer the long polls parked on ``slots`` with a retryable refusal: their data lives elsewhere now."""
    # Worded as the router's MOVED, so a routing client goes straight to the new owner; any other retries here.
    return srv.waiters.fail_where(lambda k: _waiter_slot(k) in slots, lambda k: Refusal(
        Reason.LEADER_UNKNOWN, f"MOVED {_waiter_slot(k)} {where}"))


def abort_txns(srv: Any, slots: set[int]) -> int:
    stale = [tid for tid, t in srv.txns.open.items() if key_slot(t.routing, t.ns) in slots]
    for tid in stale:
        del srv.txns.open[tid]
    return len(stale)


def _request(srv: Any, req: Any, name: str) -> tuple[Any, dict]:
    """This member's ClusterNode and the request's msgpack map, or a clear refusal."""
    if srv.cluster is None:
        raise Refusal(Reason.MALFORMED, f"{name}: this server is not a cluster member")
    try:
        args = msgpack.unpackb(req.value, raw=False)
    except Exception:  # noqa: BLE001 - bad input is refused, never fatal
        args = None
    if not isinstance(args, dict):
        raise Refusal(Reason.MALFORMED, f"{name}: value must be a msgpack map")
    return srv.cluster, args


# --- the target's side ------------------------------------------------------------------------------


@handler(Op.CLUSTER_IMPORT)
def cluster_import(srv: Any, req: Any) -> Any:
    """CLUSTER_IMPORT value=msgpack {"shard", "floor", "part"} | {"shard", "adopt": true} | {"shard", "forget": [slots]}
    -> msgpack {"lsn"} (ext; from another shard's leader moving slots here)."""
    node, args = _request(srv, req, "CLUSTER_IMPORT")
    try:
        shard = int(args["shard"])
    except (KeyError, TypeError, ValueError):
        raise Refusal(Reason.MALFORMED, "CLUSTER_IMPORT: value must be msgpack {shard, ...}") from None
    if shard != node.shard or node.role != "leader":
        raise Refusal(Reason.LEADER_UNKNOWN, f"CLUSTER_IMPORT: this member does not lead shard {shard}")
    if args.get("adopt"):
        async def adopt() -> bytes:
            await node._refresh_map()
            return msgpack.packb({"lsn": srv.journal.last_lsn})

        return adopt()
    if "forget" in args:
        slots = [int(s) for s in args["forget"]]
        owned = [s for s in slots if node.slot_map.owner(s) != node.shard]
        if owned:
            srv.write("cluster.drop", owned)
        return msgpack.packb({"lsn": srv.journal.last_lsn})
    try:
        items = msgpack.unpackb(args["part"], raw=False, strict_map_key=False, use_list=True)
        floor = int(args.get("floor", 0))
    except Exception:  # noqa: BLE001
        raise Refusal(Reason.MALFORMED, "CLUSTER_IMPORT: part must be msgpack items") from None
    srv.journal.writer.raise_floor(floor)
    srv.write("cluster.import", items)
    return msgpack.packb({"lsn": srv.journal.last_lsn})


# --- the source's side ------------------------------------------------------------------------------


@handler(Op.CLUSTER_MIGRATE)
def cluster_migrate(srv: Any, req: Any) -> Any:
    """CLUSTER_MIGRATE value=msgpack {"to": shard, "count": n} | {"to", "slots": [...]} -> msgpack summary (ext).

    Sent by ``flo-server cluster move-slots`` to the source shard's leader; answers when the move is done."""
    node, args = _request(srv, req, "CLUSTER_MIGRATE")
    try:
        to = int(args["to"])
        count = int(args.get("count", 0))
        slots = [int(s) for s in args.get("slots") or ()]
    except Exception:  # noqa: BLE001
        raise Refusal(Reason.MALFORMED, "CLUSTER_MIGRATE: value must be msgpack {to, count | slots}") from None
    if node.role != "leader":
        raise Refusal(Reason.LEADER_UNKNOWN, f"CLUSTER_MIGRATE: this member does not lead shard {node.shard}")
    mover = getattr(node, "mover", None)
    if mover is None:
        mover = node.mover = Mover(node)

    async def run() -> bytes:
        # The move goes on if the admin's connection drops: a half-done batch is worse than a late answer.
        summary = await asyncio.shield(asyncio.ensure_future(mover.move(to, count, slots)))
        return msgpack.packb(summary)

    return run()


class Mover:
    """Moves slots from this member's shard (it leads) to another shard; one move at a time."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self._lock = asyncio.Lock()

    async def move(self, to: int, count: int, slots: Iterable[int] = ()) -> dict:
        from flo_server.cluster.coord import ClusterError

        node = self.node
        if self._lock.locked():
            raise Refusal(Reason.SHARD_BUSY, "a move of slots from this shard is already running")
        async with self._lock:
            m, _ = await node.coord.slot_map()
            if not 0 <= to < m.shards or to == node.shard:
                raise Refusal(Reason.OUT_OF_RANGE, f"move-slots: --to must be another shard (0..{m.shards - 1})")
            try:
                if slots:
                    moving = sorted(set(slots))
                    if any(m.owner(s) != node.shard for s in moving):
                        raise ClusterError(f"shard {node.shard} does not own all of those slots")
                else:
                    moving = m.move(node.shard, to, count)[1]
            except ClusterError as e:
                raise Refusal(Reason.OUT_OF_RANGE, f"move-slots: {e}") from None
            t0 = time.monotonic()
            moved = objects = 0
            frozen_ms = 0.0
            for i in range(0, len(moving), BATCH_SLOTS):
                batch = moving[i:i + BATCH_SLOTS]
                n, ms = await self._batch(to, batch)
                moved += len(batch)
                objects += n
                frozen_ms = max(frozen_ms, ms)
            log.info("moved %d slots (%d objects) from shard %d to shard %d in %.2fs (longest freeze %.1f ms)",
                     moved, objects, node.shard, to, time.monotonic() - t0, frozen_ms)
            return {"from": node.shard, "to": to, "slots": moved, "objects": objects,
                    "seconds": round(time.monotonic() - t0, 3), "max_frozen_ms": round(frozen_ms, 1)}

    async def _batch(self, to: int, batch: list[int]) -> tuple[int, float]:
        node, srv = self.node, self.node.srv
        router = node.router
        want = set(batch)
        lead = node.leaders.get(to)
        if lead is None:
            raise Refusal(Reason.LEADER_UNKNOWN, f"move-slots: shard {to} has no leader right now")
        peer = await router._peer(lead[1])
        thaw = router.freeze(want)
        t0 = time.monotonic()
        flipped = False
        try:
            items = export(srv, want)
            floor = srv.journal.last_lsn
            for part in parts(items):
                await self._ask(peer, {"shard": to, "floor": floor, "part": part})
            # the flip: compare-and-swap the slot map, retried if another part of it changed meanwhile
            for _ in range(5):
                m, rev = await node.coord.slot_map()
                if any(m.owner(s) != node.shard for s in batch):
                    raise Refusal(Reason.CONDITION_FAILED, "move-slots: the slot map changed under the move")
                new = m.reassign(batch, to)
                node.check_leader(node.epoch)  # never flip for a shard we no longer lead
                if await node.coord.replace_slot_map(new, rev):
                    flipped = True
                    break
            if not flipped:
                raise Refusal(Reason.CONDITION_FAILED, "move-slots: could not update the slot map (contended)")
            try:
                await self._ask(peer, {"shard": to, "adopt": True})
            except Exception as e:  # noqa: BLE001 - the map is flipped: its leader or the next learns it from etcd
                log.warning("move-slots: shard %d did not confirm the new slot map: %r", to, e)
            node.adopt_map(new, rev + 1)  # no older read of etcd may bring the old owner back
            srv.write("cluster.drop", batch)
            end_parked(srv, want, lead[1])
            abort_txns(srv, want)
            return objects(items), (time.monotonic() - t0) * 1000
        except BaseException:
            if not flipped:
                try:
                    await self._ask(peer, {"shard": to, "forget": batch})
                except Exception as e:  # noqa: BLE001 - its copy is unreachable garbage; say so
                    log.warning("move-slots: shard %d keeps a copy of slots it does not own: %r", to, e)
            raise
        finally:
            thaw()

    async def _ask(self, peer: Any, args: dict) -> dict:
        status, data = await peer.request(Op.CLUSTER_IMPORT, bare_request(msgpack.packb(args, use_bin_type=True)),
                                          MIGRATE_TIMEOUT_S)
        if status != 0:
            raise error_from_refusal(status, *parse_refusal_body(data))
        return msgpack.unpackb(data, raw=False)

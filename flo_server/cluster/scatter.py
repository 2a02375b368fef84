"""Routing of the ops that are not "the owner of one key's slot" on a cluster of several shards.

Called by :meth:`flo_server.cluster.router.Router.route` for the ops in ``router.ACROSS_SHARDS`` when
the cluster has more than one shard; returns what ``route`` returns: None to serve the request here,
a coroutine answering ``(status, data)``, or raises a Refusal.

* ``KV_SCAN`` walks the shards in order, 0 first. The cursor a client gets is ``[shard u16][that
  shard's own cursor]`` (at most 64 bytes: a shard leaves 2 bytes of room, ``kv.SCAN_CURSOR_ROOM``),
  so any member can continue it. A page is filled from the cursor's shard and, when that shard is
  exhausted, from the next ones; a page that fills as a shard ends carries a cursor naming the next
  shard's start. Keys come sorted within a shard, shard after shard; the prefix applies per shard.
* ``QUEUE_LIST`` / ``STREAM_LIST`` ask every shard's leader at once (the same request) and merge:
  names sorted, the limit applied after the merge, the cursor the last name of the page.
* ``KV_COMMIT_TXN`` / ``KV_ROLLBACK_TXN`` go to the shard the transaction id names
  (``kv.txn_shard``: ``KV_BEGIN_TXN`` ran on its routing key's owner, which put its shard in the id).
* ``ACTION_*`` / ``WORKER_*``: actions are not sharded. The whole registry - actions, runs, workers -
  lives on the shard that owns the slot of ``{flo.actions}`` (the same slot in every namespace: the
  hash tag is all that is hashed), so a worker's await, complete and fail reach the runs it took.

A request that came forwarded by another member (``conn.forwarded``) asks for this shard's part
only: it is served here, never fanned out again (a single-slot request may go one hop further:
``Router.to_slot``).

>>> ACTIONS_SLOT == key_slot(b"{flo.actions}", "any-namespace")
True
>>> _split_cursor(_cursor(1, b"\\x00k42"), 2)
(1, b'\\x00k42')
"""

from __future__ import annotations

import asyncio
from typing import Any

from flo_core.body import Reader, Writer
from flo_core.errors import Refusal
from flo_core.slots import ACTION_OPS, ACTIONS_SLOT, key_slot  # noqa: F401 - key_slot: the doctest
from flo_core.spec import MAX_SCAN_CURSOR, MAX_SCAN_LIMIT, Op, Reason, Tag
from flo_server.dispatch import HANDLERS, parse
from flo_server.handlers import queue as queue_handlers
from flo_server.handlers import stream as stream_handlers
from flo_server.handlers.kv import SCAN_CURSOR_ROOM, scan_body, txn_shard

_STREAM_ENTRY_TAIL = 32  # [count u64][bytes u64][last_ts u64][last_seq u64] after each STREAM_LIST name


def route(router: Any, req: Any, op: int, payload: bytes) -> Any:
    """None to serve ``req`` here, else a coroutine answering ``(status, data)`` (see the module doc)."""
    if op in ACTION_OPS:
        return _to_slot(router, req, op, payload, ACTIONS_SLOT)
    if op in (Op.KV_COMMIT_TXN, Op.KV_ROLLBACK_TXN):
        if len(req.body) < 8:
            raise Refusal(Reason.MALFORMED, "a commit or rollback needs [txn_id u64]")
        shard = txn_shard(Reader(req.body).u64())
        if shard >= router.node.slot_map.shards:
            if op == Op.KV_ROLLBACK_TXN:
                return None  # unknown ids roll back fine (idempotent): nothing of it is here either
            raise Refusal(Reason.NO_SUCH_TRANSACTION, f"no open transaction has this id (it names shard {shard}, "
                                                      f"the cluster has {router.node.slot_map.shards})")
        return _to_shard(router, req, op, payload, shard)
    if _forwarded(req):
        # Another member's scan or list asks for this shard's part: served from here, never fanned out again.
        return _to_shard(router, req, op, payload, router.node.shard)
    if op == Op.KV_SCAN:
        return _scan(router, req, payload)
    if op in (Op.QUEUE_LIST, Op.STREAM_LIST):
        return _list(router, req, op, payload)
    raise Refusal(Reason.UNCLASSIFIED, f"{Op(op).name} has no cluster-wide routing")


# --- one owner --------------------------------------------------------------------------------


def _forwarded(req: Any) -> bool:
    return getattr(req.conn, "forwarded", False)


def _to_slot(router: Any, req: Any, op: int, payload: bytes, slot: int) -> Any:
    """The owner of ``slot`` answers, as ``Router.route`` does for a key (a read of our own shard without
    a leader is served from our copy)."""
    return router.to_slot(req, op, payload, slot)  # a worker's await parks on a connection of its own there


def _to_shard(router: Any, req: Any, op: int, payload: bytes, shard: int) -> Any:
    node = router.node
    if shard == node.shard and node.role == "leader":
        return None
    if _forwarded(req):
        raise Refusal(Reason.LEADER_UNKNOWN, f"CLUSTERDOWN this member does not lead shard {shard} any more: retry")
    return router._forward(_leader_of(router, shard), op, payload)


def _leader_of(router: Any, shard: int) -> str:
    lead = router.node.leaders.get(shard)
    if lead is None or lead[0] == router.node.node:  # none, or us until a moment ago
        raise Refusal(Reason.LEADER_UNKNOWN, f"CLUSTERDOWN shard {shard} has no leader right now")
    return lead[1]


async def _ask(router: Any, req: Any, shard: int, op: int, payload: bytes) -> bytes:
    """One shard's OK answer to ``payload``: from our own store when we lead that shard, else from its
    leader. A refusal there is relayed as it came (:class:`_Relayed`)."""
    node = router.node
    if shard == node.shard and node.role == "leader":
        return HANDLERS[op](node.srv, parse(op, req.rid, payload, req.conn, req.now))
    status, data = await router._forward(_leader_of(router, shard), op, payload)
    if status != 0:
        raise _Relayed(status, data)
    return data


class _Relayed(Exception):
    def __init__(self, status: int, data: bytes) -> None:
        self.status, self.data = status, data


# --- KV_SCAN: shard after shard -----------------------------------------------------------------


def _cursor(shard: int, own: bytes) -> bytes:
    return shard.to_bytes(SCAN_CURSOR_ROOM, "little") + own


def _split_cursor(cursor: bytes, shards: int) -> tuple[int, bytes]:
    if not cursor:
        return 0, b""
    if len(cursor) < SCAN_CURSOR_ROOM:
        raise Refusal(Reason.MALFORMED, "not a scan cursor of this cluster")
    shard = int.from_bytes(cursor[:SCAN_CURSOR_ROOM], "little")
    if shard >= shards:
        raise Refusal(Reason.MALFORMED, f"scan cursor names shard {shard}; the cluster has {shards}")
    return shard, cursor[SCAN_CURSOR_ROOM:]


async def _scan(router: Any, req: Any, payload: bytes) -> tuple[int, bytes]:
    limit, cursor = scan_body(req.body)
    shards = router.node.slot_map.shards
    shard, own = _split_cursor(cursor, shards)
    head = payload[: len(payload) - len(req.body)]  # namespace and prefix, as the client sent them
    names: list[bytes] = []
    try:
        while True:
            body = Writer().opt_u32(limit - len(names)).bytes8(own).getvalue()
            rd = Reader(await _ask(router, req, shard, Op.KV_SCAN, head + body))
            names += [rd.bytes16() for _ in range(rd.u16())]
            nxt = rd.bytes8() if rd.present() else None
            if nxt is not None:
                if len(nxt) > MAX_SCAN_CURSOR - SCAN_CURSOR_ROOM:
                    raise Refusal(Reason.UNCLASSIFIED, f"shard {shard} answered a scan cursor with no room for "
                                                       "its shard (a member of another version?)")
                return 0, _scan_answer(names, _cursor(shard, nxt))
            shard, own = shard + 1, b""
            if shard == shards:
                return 0, _scan_answer(names, None)
            if len(names) >= limit:
                return 0, _scan_answer(names, _cursor(shard, b""))  # an empty own cursor: that shard's start
    except _Relayed as e:
        return e.status, e.data


def _scan_answer(names: list[bytes], cursor: bytes | None) -> bytes:
    w = Writer().u16(len(names))
    for n in names:
        w.bytes16(n)
    return w.opt_bytes8(cursor).getvalue()


# --- QUEUE_LIST / STREAM_LIST: every shard at once, merged ---------------------------------------


async def _list(router: Any, req: Any, op: int, payload: bytes) -> tuple[int, bytes]:
    if op == Op.QUEUE_LIST:
        limit = queue_handlers._bounded(req.opts, Tag.LIMIT, MAX_SCAN_LIMIT, 1, MAX_SCAN_LIMIT, "limit")
    else:
        limit = stream_handlers._count(req, default=stream_handlers.MAX_LIST, cap=stream_handlers.MAX_LIST)
    shards = range(router.node.slot_map.shards)
    answers = await asyncio.gather(*(_ask(router, req, s, op, payload) for s in shards), return_exceptions=True)
    for a in answers:
        if isinstance(a, _Relayed):
            return a.status, a.data
        if isinstance(a, BaseException):
            raise a  # a shard without a leader: the whole list is refused, never answered in part
    entries: dict[str, bytes] = {}  # name -> what follows it in the answer
    more = False
    for data in answers:
        rd = Reader(data)
        for _ in range(rd.u32()):
            name = rd.str16()
            entries[name] = rd.raw(_STREAM_ENTRY_TAIL) if op == Op.STREAM_LIST else b""
        more |= bool(rd.bytes16()) if op == Op.QUEUE_LIST else rd.present()
    names = sorted(entries)
    page = names[:limit]
    more |= len(names) > limit
    w = Writer().u32(len(page))
    for n in page:
        w.str16(n).raw(entries[n])
    last = page[-1] if more and page else None
    if op == Op.QUEUE_LIST:
        return 0, w.bytes16(last.encode("utf-8") if last is not None else b"").getvalue()
    return 0, w.opt_str16(last).getvalue()

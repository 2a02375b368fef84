"""KV ops (flo-wire-v2 §3.1-3.2): one handler per op, records ``kv.*``.

Versions are the LSN of the write. Counters are stored as decimal ASCII text
(``b"42"``), the way Redis stores them, so ``get`` of a counter returns its
digits and RESP and Flo read the same bytes; ``incr`` refuses WRONG_TYPE on a
value that is not a decimal i64 and OUT_OF_RANGE on overflow. ``incr`` keeps
the key's TTL (Redis semantics); a put without a TTL clears it.
"""

from __future__ import annotations

import secrets
import zlib
from typing import Any

from flo_core.body import Reader, Writer
from flo_core.errors import Refusal
from flo_core.spec import (
    DEFAULT_HISTORY_LIMIT,
    DEFAULT_SCAN_LIMIT,
    MAX_BLOCK_MS,
    MAX_HISTORY,
    MAX_JSON_PATH,
    MAX_KV_VALUE,
    MAX_MGET_KEYS,
    MAX_MPUT_ITEMS,
    MAX_SCAN_CURSOR,
    MAX_SCAN_LIMIT,
    TXN_IDLE_TIMEOUT_MS,
    TXN_MAX_BYTES,
    TXN_MAX_OPEN,
    TXN_MAX_OPS,
    Condition,
    Op,
    Reason,
    WaitFor,
)
from flo_server import jsonpath
from flo_server.dispatch import Request, handler
from flo_server.journal import applier

I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1
MAX_TTL_MS = 18_446_744_073_709  # ~584 years: now + ttl stays a timestamp the log and the store can hold
MGET_ANSWER_BUDGET = 8 * 1024 * 1024  # answer a prefix (next_index) past this
# A transaction id names its shard in bits 48..61, so a cluster sends its commit where it began
# (flo_server.cluster.scatter); a scan cursor leaves 2 bytes of its 64 for the cluster's shard prefix.
TXN_SHARD_SHIFT = 48
SCAN_CURSOR_ROOM = 2


# --- appliers: the only code that changes the KV store ------------------------


@applier("kv.set")
def apply_set(srv: Any, lsn: int, now: int, ns: str, key: bytes, value: bytes, expires_at: int) -> int:
    srv.kv.set(ns, key, value, lsn, expires_at, now)
    srv.waiters.notify(("kv", ns, key), 0)
    return lsn


@applier("kv.del")
def apply_del(srv: Any, lsn: int, now: int, ns: str, key: bytes) -> bool:
    existed = srv.kv.delete(ns, key, now)
    srv.waiters.notify(("kv", ns, key), 0)
    return existed


@applier("kv.exp")
def apply_expire(srv: Any, lsn: int, now: int, ns: str, key: bytes, expires_at: int) -> bool:
    return srv.kv.set_expiry(ns, key, expires_at, now)


@applier("kv.batch")
def apply_batch(srv: Any, lsn: int, now: int, ns: str, ops: list) -> int:
    """A committed transaction (or a multi-key RESP write): every op at version ``lsn``."""
    for op in ops:
        kind, key = op[0], op[1]
        if kind == "set":
            apply_set(srv, lsn, now, ns, key, op[2], op[3])
        elif kind == "del":
            apply_del(srv, lsn, now, ns, key)
        elif kind == "exp":
            apply_expire(srv, lsn, now, ns, key, op[2])
    return lsn


@applier("kv.flush")
def apply_flush(srv: Any, lsn: int, now: int, ns: str) -> None:
    srv.kv.flush(ns)


# --- shared helpers (also used by the RESP layer) ------------------------------


def expires_from_ttl(now: int, ttl_ms: int | None) -> int:
    return now + ttl_ms if ttl_ms else 0


def parse_counter(value: bytes) -> int:
    """A counter's value: decimal ASCII i64, strictly (no spaces, no '+', no leading zeros)."""
    if not value or len(value) > 20:
        raise Refusal(Reason.WRONG_TYPE, "value is not an integer counter")
    try:
        text = value.decode("ascii")
        n = int(text)
    except (UnicodeDecodeError, ValueError):
        raise Refusal(Reason.WRONG_TYPE, "value is not an integer counter") from None
    if str(n) != text or not I64_MIN <= n <= I64_MAX:
        raise Refusal(Reason.WRONG_TYPE, "value is not an integer counter")
    return n


def add_counter(current: bytes | None, delta: int) -> tuple[int, bytes]:
    n = (parse_counter(current) if current is not None else 0) + delta
    if not I64_MIN <= n <= I64_MAX:
        raise Refusal(Reason.OUT_OF_RANGE, "increment or decrement would overflow")
    return n, str(n).encode("ascii")


def check_guard(entry: Any, condition: int, cas: int | None) -> None:
    """Refuse a write whose IF_ABSENT / IF_PRESENT / CAS does not hold (``entry`` None = absent)."""
    if cas is not None:
        current = entry.version if entry is not None else 0
        if current != cas:
            raise Refusal(Reason.CAS_MISMATCH, f"version is {current}, not {cas}")
    if condition == Condition.IF_ABSENT and entry is not None:
        raise Refusal(Reason.CONDITION_FAILED, "key exists")
    if condition == Condition.IF_PRESENT and entry is None:
        raise Refusal(Reason.CONDITION_FAILED, "key does not exist")


def put(srv: Any, ns: str, key: bytes, value: bytes, now: int, ttl_ms: int | None = None,
        condition: int = Condition.ALWAYS, cas: int | None = None, keep_ttl: bool = False) -> int:
    """Guarded write of one key; returns the new version."""
    if len(value) > MAX_KV_VALUE:
        raise Refusal(Reason.FIELD_TOO_LONG, f"value longer than {MAX_KV_VALUE} bytes")
    entry = srv.kv.get(ns, key, now)
    check_guard(entry, condition, cas)
    expires_at = entry.expires_at if keep_ttl and entry is not None else expires_from_ttl(now, ttl_ms)
    return srv.write("kv.set", now, ns, key, value, expires_at)


def incr(srv: Any, ns: str, key: bytes, delta: int, now: int) -> tuple[int, int]:
    """Add ``delta`` to a counter (created at ``delta``); returns (version, value)."""
    entry = srv.kv.get(ns, key, now)
    n, text = add_counter(entry.value if entry is not None else None, delta)
    version = srv.write("kv.set", now, ns, key, text, entry.expires_at if entry is not None else 0)
    return version, n


def _not_found(what: str = "key not found") -> Refusal:
    return Refusal(Reason.NOT_FOUND, what)


def txn_shard(tid: int) -> int:
    """The shard a transaction id was opened on (0 outside a cluster)."""
    return (tid >> TXN_SHARD_SHIFT) & 0x3FFF


def _own_shard(srv: Any) -> int:
    return srv.cluster.shard if srv.cluster is not None else 0


def _open_txn(srv: Any, tid: int, routing: str | None, now: int) -> "Txn":
    """The open transaction ``tid``; an op whose key lives on another shard than its transaction is
    refused as such (every key of a transaction must share its shard: give them its {hash tag})."""
    if srv.cluster is not None and txn_shard(tid) != _own_shard(srv):
        raise Refusal(Reason.WRONG_ROUTING_KEY, f"CROSSSLOT this key lives on shard {_own_shard(srv)}, the "
                                                f"transaction on shard {txn_shard(tid)}: give its keys a {{hash tag}}")
    return srv.txns.get(tid, routing, now)


def _routing_and_txn(r: Reader) -> tuple[str | None, int | None]:
    routing = r.opt_str16()
    txn = r.opt_u64()
    return routing, txn


# --- transactions -----------------------------------------------------------------


class Txn:
    """Buffered writes of one open transaction; reads see them (read-your-writes)."""

    __slots__ = ("id", "ns", "routing", "ops", "size", "overlay", "touched")

    def __init__(self, tid: int, ns: str, routing: bytes, now: int) -> None:
        self.id = tid
        self.ns = ns
        self.routing = routing
        self.ops: list[tuple] = []
        self.size = 0
        self.overlay: dict[bytes, tuple[bytes, int] | None] = {}  # key -> (value, expires_at) | None (deleted)
        self.touched = now

    def add(self, op: tuple, nbytes: int) -> None:
        if len(self.ops) >= TXN_MAX_OPS:
            raise Refusal(Reason.TXN_TOO_LARGE, f"a transaction holds at most {TXN_MAX_OPS} ops")
        if self.size + nbytes > TXN_MAX_BYTES:
            raise Refusal(Reason.TXN_TOO_LARGE, f"a transaction holds at most {TXN_MAX_BYTES} bytes")
        self.ops.append(op)
        self.size += nbytes


class Txns:
    """Open transactions by id; abandoned ones expire after ``TXN_IDLE_TIMEOUT_MS``."""

    def __init__(self) -> None:
        self.open: dict[int, Txn] = {}

    def begin(self, ns: str, routing: bytes, now: int, shard: int = 0) -> Txn:
        self.expire(now)
        if len(self.open) >= TXN_MAX_OPEN:
            raise Refusal(Reason.TOO_MANY_TRANSACTIONS, f"{TXN_MAX_OPEN} transactions are open; retry later")
        tid = (shard << TXN_SHARD_SHIFT) | secrets.randbits(TXN_SHARD_SHIFT) | 1
        while tid in self.open:
            tid = (shard << TXN_SHARD_SHIFT) | secrets.randbits(TXN_SHARD_SHIFT) | 1
        txn = self.open[tid] = Txn(tid, ns, routing, now)
        return txn

    def get(self, tid: int, routing: str | None, now: int) -> Txn:
        txn = self.open.get(tid)
        if txn is None or now - txn.touched > TXN_IDLE_TIMEOUT_MS:
            self.open.pop(tid, None)
            raise Refusal(Reason.NO_SUCH_TRANSACTION, "no open transaction has this id (committed, rolled back or expired)")
        if routing is not None and routing.encode("utf-8") != txn.routing:
            raise Refusal(Reason.WRONG_ROUTING_KEY, "routing key differs from the transaction's")
        txn.touched = now
        return txn

    def expire(self, now: int) -> None:
        stale = [t for t, x in self.open.items() if now - x.touched > TXN_IDLE_TIMEOUT_MS]
        for t in stale:
            del self.open[t]


class _View:
    """Store + a transaction's overlay: what reads inside the txn see."""

    def __init__(self, srv: Any, txn: Txn, now: int) -> None:
        self.srv, self.txn, self.now = srv, txn, now

    def get(self, key: bytes) -> Any:
        if key in self.txn.overlay:
            o = self.txn.overlay[key]
            return None if o is None else _Buffered(o[0], o[1])
        return self.srv.kv.get(self.txn.ns, key, self.now)


class _Buffered:
    """A value written inside the txn: version 0 until commit (flo-wire-v2 §3.2)."""

    __slots__ = ("value", "version", "expires_at")

    def __init__(self, value: bytes, expires_at: int) -> None:
        self.value, self.version, self.expires_at = value, 0, expires_at


def _run_txn_op(view: _View, op: tuple, now: int) -> None:
    """Check one buffered op against ``view`` and record its effect in the overlay."""
    kind, key = op[0], op[1]
    entry = view.get(key)
    overlay = view.txn.overlay
    if kind == "set":
        _, _, value, ttl_ms, condition, cas = op
        if cas is not None and isinstance(entry, _Buffered):
            raise Refusal(Reason.CAS_MISMATCH, "key was written earlier in this transaction")
        check_guard(entry, condition, cas)
        overlay[key] = (value, expires_from_ttl(now, ttl_ms))
    elif kind == "del":
        _, _, cas = op
        if cas is not None:
            check_guard(entry, Condition.ALWAYS, cas)
        overlay[key] = None
    elif kind == "incr":
        _, _, delta = op
        _, text = add_counter(entry.value if entry is not None else None, delta)
        overlay[key] = (text, entry.expires_at if entry is not None else 0)
    elif kind == "exp":
        _, _, ttl_ms, cas = op
        if entry is None:
            raise _not_found()
        if cas is not None:
            check_guard(entry, Condition.ALWAYS, cas)
        overlay[key] = (entry.value, expires_from_ttl(now, ttl_ms))


def _txn_write(srv: Any, req: Request, tid: int, routing: str | None, op: tuple, nbytes: int) -> None:
    txn = _open_txn(srv, tid, routing, req.now)
    _run_txn_op(_View(srv, txn, req.now), op, req.now)  # refuse now what would fail at commit
    txn.add(op, nbytes)


@handler(Op.KV_BEGIN_TXN)
def kv_begin(srv: Any, req: Request) -> bytes:
    """KV_BEGIN_TXN key=routing key -> [txn_id u64][pinned_hash u64]"""
    if not req.key:
        raise Refusal(Reason.MALFORMED, "a transaction needs a routing key")
    txn = srv.txns.begin(req.ns, req.key, req.now, _own_shard(srv))
    return Writer().u64(txn.id).u64(zlib.crc32(req.key)).getvalue()


@handler(Op.KV_COMMIT_TXN)
def kv_commit(srv: Any, req: Request) -> bytes:
    """KV_COMMIT_TXN [txn_id u64] -> [commit_index u64][op_count u16]; all or nothing."""
    tid = Reader(req.body).u64()
    txn = srv.txns.get(tid, None, req.now)
    del srv.txns.open[tid]
    # Re-run every op against the store as it is now: a guard that no longer holds fails the whole commit.
    txn.overlay = {}
    view = _View(srv, txn, req.now)
    for op in txn.ops:
        _run_txn_op(view, op, req.now)
    effects: list[list] = []
    for key, o in txn.overlay.items():
        effects.append(["del", key] if o is None else ["set", key, o[0], o[1]])
    if effects:
        lsn = srv.write("kv.batch", req.now, txn.ns, effects)
    else:
        lsn = srv.journal.last_lsn
    return Writer().u64(lsn).u16(len(txn.ops)).getvalue()


@handler(Op.KV_ROLLBACK_TXN)
def kv_rollback(srv: Any, req: Request) -> bytes:
    """KV_ROLLBACK_TXN [txn_id u64] -> empty; unknown ids are fine (idempotent)."""
    srv.txns.open.pop(Reader(req.body).u64(), None)
    return b""


# --- single-key ops ------------------------------------------------------------------


@handler(Op.KV_PUT)
def kv_put(srv: Any, req: Request) -> bytes:
    """KV_PUT [value bytes32] opt(ttl_ms u64) opt(condition u8) opt(cas u64) routing txn -> opt(version u64)"""
    r = Reader(req.body)
    value = r.bytes32()
    ttl_ms = r.opt_u64()
    condition = r.opt_u8() or Condition.ALWAYS
    cas = r.opt_u64()
    routing, tid = _routing_and_txn(r)
    if ttl_ms is not None and ttl_ms > MAX_TTL_MS:  # (the log's u64 expiry would overflow: was INTERNAL_ERROR)
        raise Refusal(Reason.OUT_OF_RANGE, "ttl too large")
    if condition > Condition.IF_PRESENT:
        raise Refusal(Reason.OUT_OF_RANGE, "unknown condition")
    if cas is not None and condition == Condition.IF_ABSENT and cas != 0:
        raise Refusal(Reason.CONFLICTING_FIELDS, "cas_version and IF_ABSENT cannot be combined")
    if tid is not None:
        _txn_write(srv, req, tid, routing, ("set", req.key, value, ttl_ms, condition, cas), len(req.key) + len(value))
        return b"\x00"
    version = put(srv, req.ns, req.key, value, req.now, ttl_ms, condition, cas)
    return Writer().opt_u64(version).getvalue()


@handler(Op.KV_DELETE)
def kv_delete(srv: Any, req: Request) -> bytes:
    """KV_DELETE opt(cas u64) routing txn -> opt(flag existed)"""
    r = Reader(req.body)
    cas = r.opt_u64()
    routing, tid = _routing_and_txn(r)
    if tid is not None:
        _txn_write(srv, req, tid, routing, ("del", req.key, cas), len(req.key))
        return b"\x00"
    entry = srv.kv.get(req.ns, req.key, req.now)
    if cas is not None:
        check_guard(entry, Condition.ALWAYS, cas)
    if entry is None:
        return b"\x01\x00"  # nothing to log: deleting a missing key changes nothing
    existed = srv.write("kv.del", req.now, req.ns, req.key)
    return b"\x01\x01" if existed else b"\x01\x00"


@handler(Op.KV_INCR)
def kv_incr(srv: Any, req: Request) -> bytes:
    """KV_INCR opt(delta i64) routing txn -> opt(version u64) opt(value i64)"""
    r = Reader(req.body)
    delta = r.opt_i64()
    delta = 1 if delta is None else delta
    routing, tid = _routing_and_txn(r)
    if tid is not None:
        _txn_write(srv, req, tid, routing, ("incr", req.key, delta), len(req.key) + 8)
        return b"\x00\x00"
    version, n = incr(srv, req.ns, req.key, delta, req.now)
    return Writer().opt_u64(version).opt_i64(n).getvalue()


@handler(Op.KV_EXPIRE)
def kv_expire(srv: Any, req: Request) -> bytes:
    """KV_EXPIRE [ttl_ms u64] opt(cas u64) routing txn -> empty; ttl 0 clears the TTL"""
    r = Reader(req.body)
    ttl_ms = r.u64()
    cas = r.opt_u64()
    routing, tid = _routing_and_txn(r)
    if ttl_ms > MAX_TTL_MS:
        raise Refusal(Reason.OUT_OF_RANGE, "ttl too large")
    if tid is not None:
        _txn_write(srv, req, tid, routing, ("exp", req.key, ttl_ms, cas), len(req.key) + 8)
        return b""
    entry = srv.kv.get(req.ns, req.key, req.now)
    if entry is None:
        raise _not_found()
    if cas is not None:
        check_guard(entry, Condition.ALWAYS, cas)
    srv.write("kv.exp", req.now, req.ns, req.key, expires_from_ttl(req.now, ttl_ms))
    return b""


@handler(Op.KV_EXISTS)
def kv_exists(srv: Any, req: Request) -> bytes:
    """KV_EXISTS routing txn -> [exists flag][version u64]"""
    routing, tid = _routing_and_txn(Reader(req.body))
    if tid is not None:
        entry = _View(srv, _open_txn(srv, tid, routing, req.now), req.now).get(req.key)
    else:
        entry = srv.kv.get(req.ns, req.key, req.now)
    if entry is None:
        return b"\x00" + bytes(8)
    return Writer().u8(1).u64(entry.version).getvalue()


def _value_answer(entry: Any) -> bytes:
    return Writer().u64(entry.version).bytes32(entry.value).getvalue()


@handler(Op.KV_GET)
def kv_get(srv: Any, req: Request) -> Any:
    """KV_GET opt(wait_ms u64) opt(wait_for u8) routing txn -> [version u64][value bytes32]"""
    r = Reader(req.body)
    wait_ms = r.opt_u64() or 0
    wait_for = r.opt_u8() or WaitFor.EXISTS
    routing, tid = _routing_and_txn(r)
    if wait_ms > MAX_BLOCK_MS:
        raise Refusal(Reason.OUT_OF_RANGE, f"wait_ms above {MAX_BLOCK_MS}")
    if tid is not None:
        entry = _View(srv, _open_txn(srv, tid, routing, req.now), req.now).get(req.key)
        if entry is None:
            raise _not_found()
        return _value_answer(entry)
    ns, key = req.ns, req.key
    entry = srv.kv.get(ns, key, req.now)
    if wait_ms == 0 or (wait_for == WaitFor.EXISTS and entry is not None):
        if entry is None:
            raise _not_found()
        return _value_answer(entry)
    return _wait_get(srv, req, wait_for, entry.version if entry is not None else 0, wait_ms)


async def _wait_get(srv: Any, req: Request, wait_for: int, seen: int, wait_ms: int) -> bytes:
    ns, key = req.ns, req.key

    def attempt() -> Any:
        e = srv.kv.get(ns, key, srv.now())
        if e is not None and (wait_for == WaitFor.EXISTS or e.version != seen):
            return e
        return None

    entry = await srv.waiters.poll([("kv", ns, key)], req.conn, wait_ms, attempt)
    if entry is None:
        # CHANGE that timed out answers the current value (flo-wire-v2 §7.4)
        entry = srv.kv.get(ns, key, srv.now())
        if entry is None:
            raise _not_found()
    return _value_answer(entry)


@handler(Op.KV_MGET)
def kv_mget(srv: Any, req: Request) -> bytes:
    """KV_MGET [count u16] count x str16 key, routing -> [count u16] entries opt(next_index u16)"""
    r = Reader(req.body)
    count = r.u16()
    if not 1 <= count <= MAX_MGET_KEYS:
        raise Refusal(Reason.OUT_OF_RANGE, f"mget takes 1..{MAX_MGET_KEYS} keys")
    keys = [r.bytes16() for _ in range(count)]
    get = srv.kv.get
    ns, now = req.ns, req.now
    w = Writer().u16(0)
    answered = 0
    for key in keys:
        e = get(ns, key, now)
        if e is None:
            w.u8(0).u64(0).u32(0)
        else:
            if answered and len(w.buf) + len(e.value) > MGET_ANSWER_BUDGET:
                break  # the client asks again from next_index
            w.u8(1).u64(e.version).bytes32(e.value)
        answered += 1
    w.buf[0:2] = answered.to_bytes(2, "little")
    return w.opt_u64(None).getvalue() if answered == count else w.u8(1).u16(answered).getvalue()


def scan_body(body: bytes) -> tuple[int, bytes]:
    """A KV_SCAN body's (limit, cursor), bounded (a cluster's scan reads it too: flo_server.cluster.scatter)."""
    r = Reader(body)
    limit = r.opt_u32()
    limit = DEFAULT_SCAN_LIMIT if limit is None else limit
    cursor = r.bytes8() if not r.at_end() else b""
    if not 1 <= limit <= MAX_SCAN_LIMIT:
        raise Refusal(Reason.OUT_OF_RANGE, f"scan limit is 1..{MAX_SCAN_LIMIT}")
    if len(cursor) > MAX_SCAN_CURSOR:
        raise Refusal(Reason.FIELD_TOO_LONG, f"scan cursor longer than {MAX_SCAN_CURSOR} bytes")
    return limit, cursor


@handler(Op.KV_SCAN)
def kv_scan(srv: Any, req: Request) -> bytes:
    """KV_SCAN key=prefix; opt(limit u32) [cursor bytes8] -> [count u16] names opt(bytes8 cursor)"""
    limit, cursor = scan_body(req.body)
    after = srv.scan_cursors.resolve(cursor)
    names, more = srv.kv.scan(req.ns, req.key, after, limit, req.now)
    w = Writer().u16(len(names))
    for n in names:
        w.bytes16(n)
    if more:
        w.opt_bytes8(srv.scan_cursors.make(names[-1], req.now))
    else:
        w.absent()
    return w.getvalue()


class ScanCursors:
    """Opaque scan cursors of at most 64 bytes.

    A cursor names the last key returned: short keys travel in the cursor
    itself; a key too long for 64 bytes is kept here under a random token
    (bounded table, oldest dropped), so a scan of long keys still resumes.
    """

    INLINE, TOKEN = 0, 1
    LIMIT = 10_000

    def __init__(self) -> None:
        self._tokens: dict[bytes, bytes] = {}

    def make(self, last: bytes, now: int) -> bytes:
        if 1 + len(last) <= MAX_SCAN_CURSOR - SCAN_CURSOR_ROOM:
            return bytes((self.INLINE,)) + last
        token = secrets.token_bytes(16)
        if len(self._tokens) >= self.LIMIT:
            self._tokens.pop(next(iter(self._tokens)))
        self._tokens[token] = last
        return bytes((self.TOKEN,)) + token

    def resolve(self, cursor: bytes) -> bytes:
        if not cursor:
            return b""
        if len(cursor) > MAX_SCAN_CURSOR:
            raise Refusal(Reason.FIELD_TOO_LONG, "scan cursor longer than 64 bytes")
        if cursor[0] == self.INLINE:
            return cursor[1:]
        last = self._tokens.get(cursor[1:]) if cursor[0] == self.TOKEN else None
        if last is None:
            raise Refusal(Reason.MALFORMED, "unknown or expired scan cursor")
        return last


@handler(Op.KV_HISTORY)
def kv_history(srv: Any, req: Request) -> bytes:
    """KV_HISTORY opt(limit u32) routing -> [count u8] x ([version u64][at_ms i64][value bytes32]), newest first"""
    limit = Reader(req.body).opt_u32()
    limit = DEFAULT_HISTORY_LIMIT if limit is None else limit
    if not 1 <= limit <= MAX_HISTORY:
        raise Refusal(Reason.OUT_OF_RANGE, f"history limit is 1..{MAX_HISTORY}")
    items = srv.kv.history(req.ns, req.key, limit, req.now)
    if not items:
        raise _not_found()
    w = Writer().u8(len(items))
    for version, at, value in items:
        w.u64(version).i64(at).bytes32(value)
    return w.getvalue()


# --- JSON -------------------------------------------------------------------------------


def _json_path(r: Reader) -> list:
    path = r.opt_str16()
    if path is None:
        return []
    if len(path) > MAX_JSON_PATH:
        raise Refusal(Reason.FIELD_TOO_LONG, f"JSON path longer than {MAX_JSON_PATH} bytes")
    return jsonpath.parse_path(path)


@handler(Op.KV_JSON_GET)
def kv_json_get(srv: Any, req: Request) -> bytes:
    """KV_JSON_GET opt(path str16) routing -> [version u64][json bytes32]"""
    path = _json_path(Reader(req.body))
    entry = srv.kv.get(req.ns, req.key, req.now)
    if entry is None:
        raise _not_found()
    try:
        value = jsonpath.get_at(jsonpath.loads(entry.value), path)
    except jsonpath.Missing:
        raise _not_found("path not found") from None
    return Writer().u64(entry.version).bytes32(jsonpath.dumps(value)).getvalue()


@handler(Op.KV_JSON_SET)
def kv_json_set(srv: Any, req: Request) -> bytes:
    """KV_JSON_SET opt(path str16) [json bytes32] routing -> [version u64]"""
    r = Reader(req.body)
    path = _json_path(r)
    doc = r.bytes32()
    try:
        value = jsonpath.loads(doc)
    except Refusal:
        raise Refusal(Reason.MALFORMED, "document is not valid JSON") from None
    if len(doc) > MAX_KV_VALUE:
        raise Refusal(Reason.FIELD_TOO_LONG, "document too large")
    entry = srv.kv.get(req.ns, req.key, req.now)
    if not path:
        new = doc  # a whole document is kept as sent (it was checked to parse)
        expires_at = 0
    else:
        if entry is None:
            raise _not_found("a sub-path needs an existing document")
        try:
            new = jsonpath.dumps(jsonpath.set_at(jsonpath.loads(entry.value), path, value))
        except jsonpath.Missing:
            raise _not_found("parent path not found") from None
        expires_at = entry.expires_at
    version = srv.write("kv.set", req.now, req.ns, req.key, new, expires_at)
    return Writer().u64(version).getvalue()


@handler(Op.KV_JSON_DEL)
def kv_json_del(srv: Any, req: Request) -> bytes:
    """KV_JSON_DEL opt(path str16) routing -> opt(version u64); absent when ``$`` deleted the key"""
    path = _json_path(Reader(req.body))
    entry = srv.kv.get(req.ns, req.key, req.now)
    if entry is None:
        raise _not_found()
    if not path:
        srv.write("kv.del", req.now, req.ns, req.key)
        return b"\x00"
    doc = jsonpath.loads(entry.value)
    if not jsonpath.del_at(doc, path):
        return Writer().opt_u64(entry.version).getvalue()
    version = srv.write("kv.set", req.now, req.ns, req.key, jsonpath.dumps(doc), entry.expires_at)
    return Writer().opt_u64(version).getvalue()


@handler(Op.KV_MPUT)
def kv_mput(srv: Any, req: Request) -> bytes:
    """KV_MPUT (ext) value ``[n u16] n x ([key bytes16][value bytes32][opt(cas u64)][opt(ttl_ms u64)])``
    -> ``[n u16] n x ([written u8][version u64])``.

    Each item is guarded on its own (an item whose CAS fails is not written: written 0 and
    the key's current version); every written item goes into ONE log record and
    gets the same version.
    """
    r = Reader(req.value)
    n = r.u16()
    if not 1 <= n <= MAX_MPUT_ITEMS:
        raise Refusal(Reason.OUT_OF_RANGE, f"mput takes 1..{MAX_MPUT_ITEMS} items")
    items = []
    for _ in range(n):
        key = r.bytes16()
        value = r.bytes32()
        items.append((key, value, r.opt_u64(), r.opt_u64()))
    ns, now = req.ns, req.now
    effects: list[list] = []
    seen: dict[bytes, int] = {}
    results: list[tuple[int, int]] = []
    for key, value, cas, ttl_ms in items:
        if len(value) > MAX_KV_VALUE:
            raise Refusal(Reason.FIELD_TOO_LONG, f"value longer than {MAX_KV_VALUE} bytes")
        if ttl_ms is not None and ttl_ms > MAX_TTL_MS:
            raise Refusal(Reason.OUT_OF_RANGE, "ttl too large")
        if key in seen:
            raise Refusal(Reason.CONFLICTING_FIELDS, "a key appears twice in one mput")
        seen[key] = len(results)
        entry = srv.kv.get(ns, key, now)
        current = entry.version if entry is not None else 0
        if cas is not None and cas != current:
            results.append((0, current))
            continue
        effects.append(["set", key, value, expires_from_ttl(now, ttl_ms)])
        results.append((1, 0))
    version = srv.write("kv.batch", now, ns, effects) if effects else 0
    w = Writer().u16(n)
    for written, current in results:
        w.u8(written).u64(version if written else current)
    return w.getvalue()

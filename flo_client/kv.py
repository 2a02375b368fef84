"""``client.kv``: versioned KV with TTL, CAS, blocking get, mget, scan, history, counters, JSON and transactions.

Both spellings work: the seed page's (``PutOptions(ttl_seconds=, if_not_exists=)``,
``GetOptions(block_ms=)``, ``touch``/``persist``) and flo-python 0.1.2's
(``ttl_ms``, ``condition=Condition.IF_ABSENT``, ``wait_ms``, ``expire``).

Example:
    >>> res = await client.kv.put("session:abc", b"data", PutOptions(ttl_seconds=3600))  # doctest: +SKIP
    >>> r = await client.kv.get("session:abc")                                           # doctest: +SKIP
    >>> r.value, r.version                                                                # doctest: +SKIP
    (b'data', 1)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterable

from flo_core.body import Reader, Writer
from flo_core.errors import BadRequestError, NotFoundError, TxnFinishedError, TxnUnsupportedOpError
from flo_core.spec import MAX_MGET_KEYS, MAX_MPUT_ITEMS, Condition, Op, Reason, WaitFor

# --- options ----------------------------------------------------------------------------


@dataclass
class PutOptions:
    ttl_seconds: float | None = None
    ttl_ms: int | None = None
    cas_version: int | None = None
    if_not_exists: bool = False
    if_exists: bool = False
    condition: Condition | int | None = None
    routing_key: str | None = None
    namespace: str | None = None

    def ttl(self) -> int | None:
        if self.ttl_ms:
            return int(self.ttl_ms)
        if self.ttl_seconds:
            return int(self.ttl_seconds * 1000)
        return None

    def cond(self) -> int:
        if self.condition is not None:
            return int(self.condition)
        if self.if_not_exists and self.if_exists:
            raise BadRequestError("if_not_exists and if_exists cannot both be set")
        if self.if_not_exists:
            return Condition.IF_ABSENT
        return Condition.IF_PRESENT if self.if_exists else Condition.ALWAYS


@dataclass
class GetOptions:
    block_ms: int | None = None
    wait_ms: int | None = None
    wait_for: WaitFor | int = WaitFor.EXISTS
    routing_key: str | None = None
    namespace: str | None = None

    def wait(self) -> int:
        return int(self.block_ms or self.wait_ms or 0)


@dataclass
class DeleteOptions:
    cas_version: int | None = None
    routing_key: str | None = None
    namespace: str | None = None


@dataclass
class ScanOptions:
    limit: int | None = None
    cursor: bytes | None = None
    namespace: str | None = None


@dataclass
class HistoryOptions:
    limit: int | None = None
    routing_key: str | None = None
    namespace: str | None = None


@dataclass
class KVIncrOptions:
    delta: int = 1
    routing_key: str | None = None
    namespace: str | None = None


@dataclass
class MGetOptions:
    routing_key: str | None = None
    namespace: str | None = None


@dataclass
class ExpireOptions:
    cas_version: int | None = None
    routing_key: str | None = None
    namespace: str | None = None


@dataclass
class JsonOptions:
    routing_key: str | None = None
    namespace: str | None = None


# --- results ------------------------------------------------------------------------------


@dataclass
class PutResult:
    version: int


@dataclass
class GetResult:
    """A value and its version. Behaves like the value where bytes are expected (``.decode()``, ``==``)."""

    value: bytes
    version: int

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return self.value.decode(encoding, errors)

    def __bytes__(self) -> bytes:
        return self.value

    def __len__(self) -> int:
        return len(self.value)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (bytes, bytearray)):
            return self.value == other
        if isinstance(other, GetResult):
            return (self.value, self.version) == (other.value, other.version)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]


@dataclass
class GetJsonResult:
    value: Any
    version: int


@dataclass
class MGetEntry:
    key: str
    value: bytes
    version: int
    found: bool


@dataclass
class ScanResult:
    names: list[str]
    cursor: bytes | None

    @property
    def has_more(self) -> bool:
        return self.cursor is not None

    @property
    def entries(self) -> list[str]:
        return self.names


@dataclass
class VersionEntry:
    version: int
    at_ms: int
    value: bytes


class IncrResult(int):
    """The counter's new value (an ``int``), with ``.value`` and ``.version``."""

    version: int

    def __new__(cls, value: int, version: int) -> "IncrResult":
        obj = super().__new__(cls, value)
        obj.version = version
        return obj

    @property
    def value(self) -> int:
        return int(self)

    def __repr__(self) -> str:
        return f"IncrResult(value={int(self)}, version={self.version})"


@dataclass
class CommitResult:
    commit_index: int
    op_count: int


# --- encoding helpers ---------------------------------------------------------------------


def _routing(w: Writer, routing_key: str | None) -> Writer:
    return w.opt_str16(routing_key) if routing_key else w.absent()


def _json_bytes(doc: Any) -> bytes:
    if isinstance(doc, (bytes, bytearray)):
        return bytes(doc)
    if isinstance(doc, str):
        return doc.encode("utf-8")
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


def _absent(e: NotFoundError) -> bool:
    return e.reason == Reason.NOT_FOUND


class _KVOps:
    """Ops shared by ``client.kv`` and a transaction (``_txn`` is None outside one)."""

    _client: Any
    _txn: int | None = None
    _txn_routing: str | None = None

    def _tail(self, w: Writer, routing_key: str | None) -> bytes:
        if self._txn is not None:
            return w.opt_str16(self._txn_routing).opt_u64(self._txn).getvalue()
        return _routing(w, routing_key).absent().getvalue()

    def _ns(self, ns: str | None) -> str | None:
        return self._txn_ns if self._txn is not None else ns  # type: ignore[attr-defined]

    async def put(self, key: str, value: bytes, options: PutOptions | None = None, **kw: Any) -> PutResult:
        """KV_PUT: write ``value``; returns the new version (0 inside a transaction)."""
        o = options or PutOptions(**kw)
        if isinstance(value, str):
            value = value.encode("utf-8")
        w = Writer().bytes32(value).opt_u64(o.ttl()).opt_u8(o.cond()).opt_u64(o.cas_version)
        data = await self._client._call(Op.KV_PUT, key, self._tail(w, o.routing_key), ns=self._ns(o.namespace))
        return PutResult(Reader(data).opt_u64() or 0)

    async def get(self, key: str, options: GetOptions | None = None, **kw: Any) -> GetResult | None:
        """KV_GET: the value and version, or None. ``block_ms`` waits for the key to exist."""
        o = options or GetOptions(**kw)
        wait = o.wait()
        w = Writer().opt_u64(wait).opt_u8(int(o.wait_for))
        try:
            data = await self._client._call(Op.KV_GET, key, self._tail(w, o.routing_key), ns=self._ns(o.namespace),
                                            block_ms=wait)
        except NotFoundError as e:
            if _absent(e):
                return None
            raise
        r = Reader(data)
        version = r.u64()
        return GetResult(r.bytes32(), version)

    async def delete(self, key: str, options: DeleteOptions | None = None, **kw: Any) -> bool:
        """KV_DELETE: True if the key existed (deleting a missing key is fine)."""
        o = options or DeleteOptions(**kw)
        w = Writer().opt_u64(o.cas_version)
        data = await self._client._call(Op.KV_DELETE, key, self._tail(w, o.routing_key), ns=self._ns(o.namespace))
        r = Reader(data)
        return bool(r.u8()) if r.present() else False

    async def incr(self, key: str, options: KVIncrOptions | int | None = None, **kw: Any) -> IncrResult:
        """KV_INCR: add ``delta`` (default 1) to a counter; missing keys start at 0."""
        o = KVIncrOptions(delta=options) if isinstance(options, int) else (options or KVIncrOptions(**kw))
        w = Writer().opt_i64(o.delta)
        data = await self._client._call(Op.KV_INCR, key, self._tail(w, o.routing_key), ns=self._ns(o.namespace))
        r = Reader(data)
        version = r.opt_u64() or 0
        value = r.opt_i64()
        return IncrResult(value or 0, version)

    async def expire(self, key: str, ttl_ms: int, options: ExpireOptions | None = None, **kw: Any) -> None:
        """KV_EXPIRE: set the TTL in ms (0 clears it). A missing key raises NotFoundError."""
        o = options or ExpireOptions(**kw)
        w = Writer().u64(int(ttl_ms)).opt_u64(o.cas_version)
        await self._client._call(Op.KV_EXPIRE, key, self._tail(w, o.routing_key), ns=self._ns(o.namespace))

    async def touch(self, key: str, ttl_seconds: float, options: ExpireOptions | None = None, **kw: Any) -> None:
        """Extend (set) the TTL to ``ttl_seconds`` without rewriting the value."""
        if ttl_seconds <= 0:
            raise BadRequestError("touch needs a positive TTL; use persist() to clear it")
        await self.expire(key, int(ttl_seconds * 1000), options, **kw)

    async def persist(self, key: str, options: ExpireOptions | None = None, **kw: Any) -> None:
        """Clear the TTL."""
        await self.expire(key, 0, options, **kw)

    async def exists(self, key: str, options: MGetOptions | None = None, **kw: Any) -> bool:
        """KV_EXISTS: does the key exist (no value transfer)."""
        o = options or MGetOptions(**kw)
        data = await self._client._call(Op.KV_EXISTS, key, self._tail(Writer(), o.routing_key), ns=self._ns(o.namespace))
        return bool(data[0]) if data else False


class KVAPI(_KVOps):
    """``client.kv``."""

    def __init__(self, client: Any) -> None:
        self._client = client

    async def mget(self, keys: Iterable[str], options: MGetOptions | None = None, **kw: Any) -> list[MGetEntry]:
        """KV_MGET: one entry per key, in order (any number of keys; sent 256 at a time)."""
        o = options or MGetOptions(**kw)
        keys = list(keys)
        out: list[MGetEntry] = []
        i = 0
        while i < len(keys):
            chunk = keys[i : i + MAX_MGET_KEYS]
            w = Writer().u16(len(chunk))
            for k in chunk:
                w.bytes16(k.encode("utf-8") if isinstance(k, str) else k)
            data = await self._client._call(Op.KV_MGET, b"", _routing(w, o.routing_key).getvalue(), ns=o.namespace)
            r = Reader(data)
            n = r.u16()
            for j in range(n):
                found = bool(r.u8())
                version = r.u64()
                out.append(MGetEntry(chunk[j], r.bytes32(), version, found))
            nxt = r.u16() if r.present() else None
            if n == 0 and nxt is not None:
                raise BadRequestError("server answered no mget entries")
            i += n if n else len(chunk)
        return out

    async def scan(self, prefix: str = "", options: ScanOptions | None = None, **kw: Any) -> ScanResult:
        """KV_SCAN: key names with ``prefix``, a page at a time (``cursor`` from the last page)."""
        o = options or ScanOptions(**kw)
        w = Writer().opt_u32(o.limit).bytes8(o.cursor or b"")
        r = Reader(await self._client._call(Op.KV_SCAN, prefix, w.getvalue(), ns=o.namespace))
        names = [r.bytes16().decode("utf-8", "replace") for _ in range(r.u16())]
        cursor = r.bytes8() if r.present() else None
        return ScanResult(names, cursor)

    async def history(self, key: str, options: HistoryOptions | None = None, **kw: Any) -> list[VersionEntry]:
        """KV_HISTORY: earlier versions, newest first ([] for a missing key)."""
        o = options or HistoryOptions(**kw)
        w = _routing(Writer().opt_u32(o.limit), o.routing_key)
        try:
            r = Reader(await self._client._call(Op.KV_HISTORY, key, w.getvalue(), ns=o.namespace))
        except NotFoundError as e:
            if _absent(e):
                return []
            raise
        out = []
        for _ in range(r.u8()):
            version = r.u64()
            at = r.i64()
            out.append(VersionEntry(version, at, r.bytes32()))
        return out

    async def json_get(self, key: str, path: str = "$", options: JsonOptions | None = None, **kw: Any) -> GetJsonResult | None:
        """KV_JSON_GET: the JSON value at ``path`` (decoded) and the document's version, or None."""
        o = options or JsonOptions(**kw)
        w = _routing(Writer().opt_str16(path), o.routing_key)
        try:
            r = Reader(await self._client._call(Op.KV_JSON_GET, key, w.getvalue(), ns=o.namespace))
        except NotFoundError as e:
            if _absent(e):
                return None
            raise
        version = r.u64()
        return GetJsonResult(json.loads(r.bytes32()), version)

    async def json_set(self, key: str, path: str, document: Any, options: JsonOptions | None = None, **kw: Any) -> PutResult:
        """KV_JSON_SET: write JSON at ``path`` (``$`` = the whole document); returns the new version."""
        o = options or JsonOptions(**kw)
        w = _routing(Writer().opt_str16(path).bytes32(_json_bytes(document)), o.routing_key)
        return PutResult(Reader(await self._client._call(Op.KV_JSON_SET, key, w.getvalue(), ns=o.namespace)).u64())

    async def json_del(self, key: str, path: str = "$", options: JsonOptions | None = None, **kw: Any) -> int | None:
        """KV_JSON_DEL: remove ``path``; the new version, or None when ``$`` deleted the key."""
        o = options or JsonOptions(**kw)
        w = _routing(Writer().opt_str16(path), o.routing_key)
        return Reader(await self._client._call(Op.KV_JSON_DEL, key, w.getvalue(), ns=o.namespace)).opt_u64()

    async def put_many(self, items: Iterable[tuple], *, namespace: str | None = None) -> list[int | None]:
        """KV_MPUT (extension): many puts in one request and one log record.

        ``items`` are ``(key, value)`` or ``(key, value, PutOptions)`` (``cas_version`` and
        the TTL are honoured per item). Returns each item's new version, or None where its
        CAS did not hold (that item was not written; the others were).

        Example:
            >>> await client.kv.put_many([("a", b"1"), ("b", b"2", PutOptions(cas_version=0))])  # doctest: +SKIP
            [17, 17]
        """
        items = list(items)
        out: list[int | None] = []
        for i in range(0, len(items), MAX_MPUT_ITEMS):
            chunk = items[i : i + MAX_MPUT_ITEMS]
            w = Writer().u16(len(chunk))
            for item in chunk:
                key, value = item[0], item[1]
                o = item[2] if len(item) > 2 and item[2] is not None else PutOptions()
                if o.cond() != Condition.ALWAYS:
                    raise BadRequestError("put_many takes cas_version and TTL, not if_not_exists / if_exists")
                w.bytes16(key.encode("utf-8") if isinstance(key, str) else key)
                w.bytes32(value.encode("utf-8") if isinstance(value, str) else value)
                w.opt_u64(o.cas_version).opt_u64(o.ttl())
            r = Reader(await self._client._call_vo(Op.KV_MPUT, b"", w.getvalue(), ns=namespace))
            for _ in range(r.u16()):
                written = r.u8()
                version = r.u64()
                out.append(version if written else None)
        return out

    def begin(self, routing_key: str) -> "_TxnStarter":
        """KV_BEGIN_TXN: a transaction on ``routing_key``'s partition.

        ``txn = await client.kv.begin(k)`` and ``async with client.kv.begin(k) as txn`` (or with
        ``await``) both work; the context manager rolls back on an exception.
        """
        if not routing_key:
            raise BadRequestError("a transaction needs a routing key")
        return _TxnStarter(self._client, routing_key)


class _TxnStarter:
    def __init__(self, client: Any, routing_key: str) -> None:
        self._client = client
        self._routing_key = routing_key
        self._txn: Transaction | None = None

    async def _begin(self) -> "Transaction":
        if self._txn is None:
            data = await self._client._call(Op.KV_BEGIN_TXN, self._routing_key, b"")
            r = Reader(data)
            self._txn = Transaction(self._client, r.u64(), self._routing_key, r.u64())
        return self._txn

    def __await__(self):  # type: ignore[no-untyped-def]
        return self._begin().__await__()

    async def __aenter__(self) -> "Transaction":
        return await (await self._begin()).__aenter__()

    async def __aexit__(self, *exc: Any) -> None:
        assert self._txn is not None
        await self._txn.__aexit__(*exc)


class Transaction(_KVOps):
    """Buffered writes on one routing key, committed all or nothing.

    Reads inside see the buffered writes. ``scan``, ``mget``, ``json_*`` and
    ``history`` raise :class:`TxnUnsupportedOpError`.
    """

    def __init__(self, client: Any, txn_id: int, routing_key: str, pinned_hash: int) -> None:
        self._client = client
        self._txn = txn_id
        self._txn_routing = routing_key
        self._txn_ns = client.namespace
        self.txn_id = txn_id
        self.pinned_hash = pinned_hash
        self._done = False
        self._committed = False

    def _check(self) -> None:
        if self._done:
            raise TxnFinishedError("transaction already committed or rolled back")

    async def put(self, *a: Any, **kw: Any) -> PutResult:  # type: ignore[override]
        self._check()
        return await super().put(*a, **kw)

    async def get(self, *a: Any, **kw: Any) -> GetResult | None:  # type: ignore[override]
        self._check()
        return await super().get(*a, **kw)

    async def delete(self, *a: Any, **kw: Any) -> bool:  # type: ignore[override]
        self._check()
        return await super().delete(*a, **kw)

    async def incr(self, *a: Any, **kw: Any) -> IncrResult:  # type: ignore[override]
        self._check()
        return await super().incr(*a, **kw)

    async def expire(self, *a: Any, **kw: Any) -> None:  # type: ignore[override]
        self._check()
        return await super().expire(*a, **kw)

    async def exists(self, *a: Any, **kw: Any) -> bool:  # type: ignore[override]
        self._check()
        return await super().exists(*a, **kw)

    async def commit(self) -> CommitResult:
        """KV_COMMIT_TXN: apply every buffered write atomically."""
        self._check()
        self._done = True
        r = Reader(await self._client._call(Op.KV_COMMIT_TXN, b"", Writer().u64(self._txn).getvalue()))
        self._committed = True
        return CommitResult(r.u64(), r.u16())

    async def rollback(self) -> None:
        """KV_ROLLBACK_TXN: discard; idempotent, and a no-op after commit."""
        if self._committed:
            return
        self._done = True
        await self._client._call(Op.KV_ROLLBACK_TXN, b"", Writer().u64(self._txn).getvalue())

    def _unsupported(self, *a: Any, **kw: Any) -> Any:
        raise TxnUnsupportedOpError(
            "scan, mget, put_many, json_get, json_set, json_del and history are not supported in a transaction")

    scan = mget = put_many = json_get = json_set = json_del = history = _unsupported

    async def __aenter__(self) -> "Transaction":
        return self

    async def __aexit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is not None or not self._done:
            if not self._committed:
                await self.rollback()


__all__ = [
    "KVAPI",
    "Transaction",
    "PutOptions",
    "GetOptions",
    "DeleteOptions",
    "ScanOptions",
    "HistoryOptions",
    "KVIncrOptions",
    "MGetOptions",
    "ExpireOptions",
    "JsonOptions",
    "PutResult",
    "GetResult",
    "GetJsonResult",
    "MGetEntry",
    "ScanResult",
    "VersionEntry",
    "IncrResult",
    "CommitResult",
    "Condition",
    "WaitFor",
]

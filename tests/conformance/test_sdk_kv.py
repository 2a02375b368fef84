"""flo-python 0.1.2 (``import flo``, unmodified) against flo-server: every KV op and error path.

The SDK is a black box here: we only call its public API and read what it
returns or raises. The byte-exact examples of flo-wire-v2.md §1.9 are checked
by putting a recording TCP relay between the SDK and a fresh server.
"""

from __future__ import annotations

import asyncio
import time

import pytest

import flo
from flo import (
    BadRequestError,
    Condition,
    ConflictError,
    DeleteOptions,
    EnqueueOptions,
    FloClient,
    GetOptions,
    HistoryOptions,
    KVExistsOptions,
    KVExpireOptions,
    KVIncrOptions,
    KVJsonOptions,
    KVMGetOptions,
    NotFoundError,
    PutOptions,
    Reason,
    ScanOptions,
    ServerError,
    TxnFinishedError,
    TxnUnsupportedOpError,
    WaitFor,
)

from tests.helpers import wait_for, waiters

pytestmark = [
    pytest.mark.conformance,
    pytest.mark.timeout(60),
    pytest.mark.usefixtures("shared_server"),
    pytest.mark.client(sdk=True, timeout_ms=3000),
]

I64_MAX = (1 << 63) - 1


async def gone(client, *keys) -> bool:
    return all([await client.kv.get(k) is None for k in keys])


async def parked(shared_server, n: int) -> bool:
    """The server has at least ``n`` parked requests."""
    return await waiters(shared_server.endpoint) >= n


# --- §1.9 byte-exact, through a recording relay -------------------------------------------------------

HASH = "30 18 94 ae d9 7d ba 2f"
PUT_REQ = bytes.fromhex(
    "46 4c 4f 00 25 00 00 00 01 00 00 00 00 00 00 00"
    f"74 5d 81 09 00 01 02 00 {HASH}"
    "07 00 64 65 66 61 75 6c 74 08 00 75 73 65 72 3a"
    "31 32 33 08 00 00 00 4a 6f 68 6e 20 44 6f 65 00"
    "01 00 00 00 00"
)
PUT_OK_V7 = bytes.fromhex(
    "46 4c 4f 00 09 00 00 00 01 00 00 00 00 00 00 00"
    f"15 32 4b 6b 02 00 00 00 {HASH}"
    "01 07 00 00 00 00 00 00 00"
)
GET_REQ = (
    bytes.fromhex(f"46 4c 4f 00 20 00 00 00 02 00 00 00 00 00 00 00 b7 7b 8d 8c 01 01 02 00 {HASH}")
    + b"\x07\x00default\x08\x00user:123"
    + b"\x01" + bytes(8) + b"\x01\x00\x00\x00"
)
GET_NOT_FOUND = (
    bytes.fromhex(f"46 4c 4f 00 10 00 00 00 02 00 00 00 00 00 00 00 04 76 83 01 02 02 00 00 {HASH}")
    + b"\x0d\x00\x00key not found"
)
ENQ_REQ = bytes.fromhex(
    "46 4c 4f 00 1b 00 00 00 03 00 00 00 00 00 00 00"
    f"34 a2 86 f6 70 01 02 00 {HASH}"
    "07 00 64 65 66 61 75 6c 74 05 00 74 61 73 6b 73"
    "02 00 00 00 68 69 03 00 10 01 0a"
)


class Recorder:
    """A TCP relay that keeps every byte each way, per connection."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.conns: list[dict[str, bytearray]] = []
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _relay(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        rec = {"up": bytearray(), "down": bytearray()}
        self.conns.append(rec)
        sr, sw = await asyncio.open_connection(*self.target)

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, buf: bytearray) -> None:
            try:
                while data := await r.read(65536):
                    buf += data
                    w.write(data)
                    await w.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                w.close()

        await asyncio.gather(pipe(cr, sw, rec["up"]), pipe(sr, cw, rec["down"]))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def test_section_1_9_byte_exact(server) -> None:
    """The SDK's own bytes and our answers are exactly the documented examples."""
    host, port = server.rsplit(":", 1)
    rec = Recorder(host, int(port))
    relay = await rec.start()
    try:
        # Versions are LSNs: bring the fresh server's log to 6 so the next put is version 7.
        side = FloClient(server, namespace="side")
        await side.connect()
        for i in range(6):
            if (await side.kv.put(f"w{i}", b"x")).version >= 6:
                break
        await side.close()

        a = FloClient(relay)  # namespace "default", first request id 1
        await a.connect()
        res = await a.kv.put("user:123", b"John Doe")
        await a.close()
        assert res.version == 7
        assert bytes(rec.conns[0]["up"]) == PUT_REQ
        assert bytes(rec.conns[0]["down"]) == PUT_OK_V7

        b = FloClient(relay)
        await b.connect()
        assert await b.kv.delete("user:123") is True  # request id 1
        assert await b.kv.get("user:123") is None  # request id 2: the documented get and NOT_FOUND
        await b.close()
        assert bytes(rec.conns[1]["up"]).endswith(GET_REQ)
        assert bytes(rec.conns[1]["down"]).endswith(GET_NOT_FOUND)

        c = FloClient(relay)
        await c.connect()
        assert await c.kv.exists("a") is False
        assert await c.kv.exists("b") is False
        seq = await c.queue.enqueue("tasks", b"hi", EnqueueOptions(priority=10))  # request id 3
        await c.close()
        assert bytes(rec.conns[2]["up"]).endswith(ENQ_REQ)
        assert isinstance(seq, int)
    finally:
        await rec.close()


# --- put / get / delete ---------------------------------------------------------------------------------


async def test_put_get_delete(client) -> None:
    r1 = await client.kv.put("user:123", b"John Doe")
    got = await client.kv.get("user:123")
    assert isinstance(got, flo.GetResult) and (got.value, got.version) == (b"John Doe", r1.version)
    r2 = await client.kv.put("user:123", b"Jane")
    assert r2.version > r1.version
    assert await client.kv.delete("user:123") is True
    assert await client.kv.get("user:123") is None
    assert await client.kv.delete("user:123") is False
    await client.kv.put(b"\x00\xff", bytes(range(256)))
    assert (await client.kv.get(b"\x00\xff")).value == bytes(range(256))


async def test_put_max_sdk_value(client) -> None:
    value = bytes(range(256)) * (253_817 // 256) + b"x" * (253_817 % 256)
    await client.kv.put("big", value)
    assert (await client.kv.get("big")).value == value


async def test_ttl(client) -> None:
    await client.kv.put("t", b"v", PutOptions(ttl_ms=150))
    await client.kv.put("keep", b"v", PutOptions(ttl_ms=0))  # 0 = no TTL
    assert await client.kv.exists("t")
    await wait_for(lambda: gone(client, "t"))
    assert await client.kv.exists("keep")


async def test_conditions(client) -> None:
    await client.kv.put("k", b"1", PutOptions(condition=Condition.IF_ABSENT))
    with pytest.raises(ConflictError) as ei:
        await client.kv.put("k", b"2", PutOptions(condition=Condition.IF_ABSENT))
    assert ei.value.reason == Reason.CONDITION_FAILED and ei.value.ran == flo.Ran.NO
    with pytest.raises(ConflictError) as ei:
        await client.kv.put("missing", b"2", PutOptions(condition=Condition.IF_PRESENT))
    assert ei.value.reason == Reason.CONDITION_FAILED
    await client.kv.put("k", b"3", PutOptions(condition=Condition.IF_PRESENT))
    assert (await client.kv.get("k")).value == b"3"
    # the client is still usable after refusals
    assert await client.kv.get("missing") is None


async def test_cas_put_and_delete(client) -> None:
    v = (await client.kv.put("k", b"1")).version
    with pytest.raises(ConflictError) as ei:
        await client.kv.put("k", b"2", PutOptions(cas_version=v + 1))
    assert ei.value.reason == Reason.CAS_MISMATCH
    v2 = (await client.kv.put("k", b"2", PutOptions(cas_version=v))).version
    await client.kv.put("new", b"x", PutOptions(cas_version=0))  # 0: must not exist
    with pytest.raises(ConflictError) as ei:
        await client.kv.put("new", b"x", PutOptions(cas_version=0))
    assert ei.value.reason == Reason.CAS_MISMATCH
    with pytest.raises(ConflictError) as ei:
        await client.kv.delete("k", DeleteOptions(cas_version=v))
    assert ei.value.reason == Reason.CAS_MISMATCH
    assert await client.kv.delete("k", DeleteOptions(cas_version=v2)) is True
    with pytest.raises(ConflictError):
        await client.kv.delete("k", DeleteOptions(cas_version=v2))  # missing key with a CAS


async def test_routing_key_is_accepted(client) -> None:
    await client.kv.put("rk", b"v", PutOptions(routing_key="shard-a"))
    assert (await client.kv.get("rk", GetOptions(routing_key="shard-a"))).value == b"v"
    assert await client.kv.exists("rk", KVExistsOptions(routing_key="shard-a"))
    assert [e.found for e in await client.kv.mget(["rk"], KVMGetOptions(routing_key="shard-a"))] == [True]


# --- waits --------------------------------------------------------------------------------------------


async def test_wait_exists_woken_by_put(client, shared_server, ns) -> None:
    waiter = asyncio.ensure_future(client.kv.get("soon", GetOptions(wait_ms=10_000)))
    await wait_for(lambda: parked(shared_server, 1))
    other = FloClient(shared_server.endpoint, namespace=ns)
    await other.connect()
    t0 = time.monotonic()
    await other.kv.put("soon", b"here")
    await other.close()
    r = await asyncio.wait_for(waiter, 5)
    assert r.value == b"here" and time.monotonic() - t0 < 3


async def test_wait_exists_timeout_is_none(client) -> None:
    t0 = time.monotonic()
    assert await client.kv.get("never", GetOptions(wait_ms=250)) is None
    assert 0.2 <= time.monotonic() - t0 < 3


async def test_wait_change(client, shared_server, ns) -> None:
    v1 = (await client.kv.put("k", b"one")).version
    # an existing key answers at once for EXISTS
    assert (await client.kv.get("k", GetOptions(wait_ms=10_000, wait_for=WaitFor.EXISTS))).version == v1
    waiter = asyncio.ensure_future(client.kv.get("k", GetOptions(wait_ms=10_000, wait_for=WaitFor.CHANGE)))
    await wait_for(lambda: parked(shared_server, 1))
    other = FloClient(shared_server.endpoint, namespace=ns)
    await other.connect()
    v2 = (await other.kv.put("k", b"two")).version
    await other.close()
    r = await asyncio.wait_for(waiter, 5)
    assert (r.value, r.version) == (b"two", v2)
    # timed-out CHANGE: the current value (a watcher sees "no change" by version)
    r = await client.kv.get("k", GetOptions(wait_ms=150, wait_for=WaitFor.CHANGE))
    assert r.version == v2


async def test_waiter_whose_connection_closed_is_dropped(client, shared_server, ns) -> None:
    from flo_client import FloClient as OurClient

    async with OurClient(shared_server.endpoint) as probe:
        base = (await probe.server_info())["waiters"]
        quitter = FloClient(shared_server.endpoint, namespace=ns, timeout_ms=200)
        await quitter.connect()
        # a cancelled call makes the SDK close its socket while the server still waits
        pending = asyncio.ensure_future(quitter.kv.get("ghost", GetOptions(wait_ms=300_000)))
        await wait_for(lambda: parked(shared_server, base + 1))
        pending.cancel()
        with pytest.raises((flo.FloError, asyncio.CancelledError)):
            await pending
        await quitter.close()
        await wait_for(lambda: _waiters(probe, base))
        # a write to the key now reaches nobody stale, and the next waiter is served
        waiter = asyncio.ensure_future(client.kv.get("ghost", GetOptions(wait_ms=10_000)))
        await wait_for(lambda: parked(shared_server, base + 1))
        async with OurClient(shared_server.endpoint, namespace=ns) as w:
            await w.kv.put("ghost", b"boo")
        assert (await asyncio.wait_for(waiter, 5)).value == b"boo"


async def _waiters(probe, n: int) -> bool:
    return (await probe.server_info())["waiters"] <= n


# --- mget / scan / history -----------------------------------------------------------------------------


async def test_mget(client) -> None:
    await client.kv.put("a", b"A")
    entries = await client.kv.mget(["a", "b", b"a"])
    assert [(e.key, e.found, e.value) for e in entries] == [("a", True, b"A"), ("b", False, b""), ("a", True, b"A")]
    assert entries[1].version == 0
    assert await client.kv.mget([]) == []
    keys = [f"k{i}" for i in range(256)]
    for k in keys[::16]:
        await client.kv.put(k, k.encode())
    entries = await client.kv.mget(keys)
    assert [e.found for e in entries] == [i % 16 == 0 for i in range(256)]


async def test_mget_resumes_from_next_index(client) -> None:
    """Forty 250 KB values are more than one answer holds: the SDK follows next_index."""
    value = b"v" * 250_000
    keys = [f"big{i}" for i in range(40)]
    for k in keys:
        await client.kv.put(k, value)
    entries = await client.kv.mget(keys)
    assert [e.key for e in entries] == keys and all(e.found and e.value == value for e in entries)


async def test_scan_pages(client) -> None:
    names = sorted(f"user:{i:03d}" for i in range(300))
    for n in names:
        await client.kv.put(n, b"x")
    await client.kv.put("other", b"x")
    result = await client.kv.scan("user:", ScanOptions(limit=100))
    seen = list(result.names)
    pages = 1
    while result.cursor is not None:
        assert len(result.cursor) <= 64
        result = await client.kv.scan("user:", ScanOptions(limit=100, cursor=result.cursor))
        seen += result.names
        pages += 1
    assert seen == names and pages in (3, 4)
    assert (await client.kv.scan("nothing:")).names == []


async def test_scan_long_keys_and_changes_between_pages(client) -> None:
    stable = sorted(f"L:{i:03d}:" + "k" * 120 for i in range(0, 60, 2))
    for k in stable:
        await client.kv.put(k, b"v")
    seen: list[str] = []
    result = await client.kv.scan("L:", ScanOptions(limit=7))
    seen += result.names
    page = 0
    while result.cursor is not None:
        page += 1
        await client.kv.put(f"L:{page * 13 % 60:03d}:x", b"v")  # added between pages
        if page == 2:
            await client.kv.delete(f"L:{page * 13 % 60:03d}:x")
        result = await client.kv.scan("L:", ScanOptions(limit=7, cursor=result.cursor))
        seen += result.names
    assert len(seen) == len(set(seen)) and set(stable) <= set(seen)


async def test_history(client) -> None:
    versions = [(await client.kv.put("h", b"%d" % i)).version for i in range(70)]
    hist = await client.kv.history("h", HistoryOptions(limit=65))
    assert [e.version for e in hist] == versions[::-1][:65]
    assert hist[0].value == b"69" and hist[0].at_ms > 1_600_000_000_000
    assert len(await client.kv.history("h")) == 10
    assert await client.kv.history("missing") == []


# --- counters / expire / exists -------------------------------------------------------------------------


async def test_incr(client) -> None:
    r = await client.kv.incr("c")
    assert isinstance(r, flo.IncrResult) and r.value == 1 and r.version > 0
    assert (await client.kv.incr("c", KVIncrOptions(delta=-11))).value == -10
    assert (await client.kv.get("c")).value == b"-10"
    await client.kv.put("text", b"not a number")
    with pytest.raises(ConflictError) as ei:
        await client.kv.incr("text")
    assert ei.value.reason == Reason.WRONG_TYPE
    await client.kv.put("max", str(I64_MAX).encode())
    with pytest.raises(BadRequestError) as ei:
        await client.kv.incr("max")
    assert ei.value.reason == Reason.OUT_OF_RANGE
    assert (await client.kv.incr("max", KVIncrOptions(delta=-1))).value == I64_MAX - 1


async def test_expire_and_exists(client) -> None:
    v = (await client.kv.put("k", b"v")).version
    assert await client.kv.exists("k") is True
    await client.kv.expire("k", 60_000)
    await client.kv.expire("k", 0)  # clear
    await client.kv.expire("k", 60_000, KVExpireOptions(cas_version=v))
    with pytest.raises(ConflictError) as ei:
        await client.kv.expire("k", 100, KVExpireOptions(cas_version=v + 99))
    assert ei.value.reason == Reason.CAS_MISMATCH
    with pytest.raises(NotFoundError):
        await client.kv.expire("missing", 100)
    await client.kv.expire("k", 120)
    await wait_for(lambda: gone(client, "k"))
    assert await client.kv.exists("k") is False


# --- JSON --------------------------------------------------------------------------------------------------


async def test_json(client) -> None:
    r1 = await client.kv.json_set("order:42", "$", b'{"items":3,"status":"new","tags":["a","b"]}')
    r2 = await client.kv.json_set("order:42", "$.status", b'"shipped"')
    assert r2.version > r1.version
    status = await client.kv.json_get("order:42", "$.status")
    assert isinstance(status, flo.GetJsonResult) and (status.value, status.version) == ("shipped", r2.version)
    assert (await client.kv.json_get("order:42", "$.tags[1]")).value == "b"
    assert (await client.kv.json_get("order:42")).value == {"items": 3, "status": "shipped", "tags": ["a", "b"]}
    assert await client.kv.json_get("order:42", "$.nope") is None
    assert await client.kv.json_get("missing") is None
    deleted = await client.kv.json_del("order:42", "$.status")
    assert isinstance(deleted, flo.PutResult) and deleted.version > r2.version
    assert await client.kv.json_get("order:42", "$.status") is None
    assert await client.kv.json_del("order:42", "$") is None
    assert await client.kv.get("order:42") is None
    with pytest.raises(ServerError):
        await client.kv.json_set("missing", "$.a", b"1")
    other_ns = client.get_namespace(None) + "_j"
    await client.kv.json_set("d", "$", b"[1,2]", KVJsonOptions(namespace=other_ns))
    assert (await client.kv.json_get("d", "$[0]", KVJsonOptions(namespace=other_ns))).value == 1
    assert await client.kv.json_get("d") is None


# --- transactions -------------------------------------------------------------------------------------------


async def test_transaction_commit(client, shared_server, ns) -> None:
    await client.kv.put("u:42:visits", b"1")
    await client.kv.put("u:42:old", b"x")
    await client.kv.put("u:42:ttl", b"x")
    txn = await client.kv.begin("user:42")
    assert txn.id > 0
    assert (await txn.put("u:42:name", b"Jane")).version == 0
    assert await txn.incr("u:42:visits") is None
    assert await txn.delete("u:42:old") is None
    await txn.expire("u:42:ttl", 60_000)
    assert (await txn.get("u:42:name")).value == b"Jane"  # read your writes
    assert (await txn.get("u:42:visits")).value == b"2"
    assert await txn.get("u:42:old") is None and await txn.exists("u:42:old") is False
    assert await txn.exists("u:42:name") is True
    assert await client.kv.get("u:42:name") is None  # invisible outside
    res = await txn.commit()
    assert isinstance(res, flo.KVCommitResult) and res.op_count == 4 and res.commit_index > 0
    assert (await client.kv.get("u:42:name")).value == b"Jane"
    assert (await client.kv.get("u:42:visits")).value == b"2"
    assert await client.kv.get("u:42:old") is None
    with pytest.raises(TxnFinishedError):
        await txn.put("u:42:x", b"y")
    await txn.rollback()  # no-op after commit


async def test_transaction_rollback_and_context_manager(client) -> None:
    async with await client.kv.begin("r") as txn:
        await txn.put("r:1", b"x")
        await txn.rollback()
        await txn.rollback()
    assert await client.kv.get("r:1") is None
    with pytest.raises(RuntimeError):
        async with await client.kv.begin("r") as txn:
            await txn.put("r:2", b"x")
            raise RuntimeError("boom")
    assert await client.kv.get("r:2") is None
    async with await client.kv.begin("r") as txn:
        for name in ("scan", "mget", "json_get", "json_set", "json_del", "history"):
            with pytest.raises(TxnUnsupportedOpError):
                await getattr(txn, name)("r:1")


async def test_transaction_guard_fails_at_commit(client, shared_server, ns) -> None:
    v = (await client.kv.put("g:k", b"old")).version
    txn = await client.kv.begin("g")
    await txn.put("g:side", b"x")
    await txn.put("g:k", b"new", PutOptions(cas_version=v))
    other = FloClient(shared_server.endpoint, namespace=ns)
    await other.connect()
    await other.kv.put("g:k", b"meanwhile")
    await other.close()
    with pytest.raises(ConflictError) as ei:
        await txn.commit()
    assert ei.value.reason == Reason.CAS_MISMATCH
    assert await client.kv.get("g:side") is None
    assert (await client.kv.get("g:k")).value == b"meanwhile"


async def test_transaction_caps_and_unknown_id(client) -> None:
    async with await client.kv.begin("cap") as txn:
        for i in range(256):
            await txn.put(f"cap:{i}", b"x")
        with pytest.raises(BadRequestError) as ei:
            await txn.put("cap:256", b"x")
        assert ei.value.reason == Reason.TXN_TOO_LARGE
        assert (await txn.commit()).op_count == 256
    # an id the server never gave (or one that expired): NotFoundError, not "absent"
    ghost = flo.Transaction(client, client.get_namespace(None), "ghost", 987654321, 0)
    with pytest.raises(NotFoundError) as ei:
        await ghost.get("x")
    assert ei.value.reason == Reason.NO_SUCH_TRANSACTION
    with pytest.raises(NotFoundError):
        await ghost.commit()
    ghost2 = flo.Transaction(client, client.get_namespace(None), "ghost", 987654321, 0)
    await ghost2.rollback()  # unknown id: rollback is idempotent


# --- namespaces -------------------------------------------------------------------------------------------------


async def test_namespaces(client, shared_server, ns) -> None:
    await client.kv.put("k", b"mine")
    await client.kv.put("k", b"theirs", PutOptions(namespace=ns + "_2"))
    assert (await client.kv.get("k")).value == b"mine"
    assert (await client.kv.get("k", GetOptions(namespace=ns + "_2"))).value == b"theirs"
    assert (await client.kv.scan("", ScanOptions(namespace=ns + "_2"))).names == ["k"]
    # the empty namespace is "default"
    key = f"empty-ns:{ns}"
    await client.kv.put(key, b"d", PutOptions(namespace=""))
    d = FloClient(shared_server.endpoint)  # default namespace
    await d.connect()
    try:
        assert (await d.kv.get(key)).value == b"d"
        assert await d.kv.delete(key, DeleteOptions(namespace="")) is True
    finally:
        await d.close()
    with pytest.raises(flo.NamespaceTooLargeError):
        await client.kv.get("k", GetOptions(namespace="n" * 256))  # the SDK's own check

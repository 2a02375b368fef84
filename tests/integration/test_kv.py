"""flo_client's KV API against a real flo-server subprocess.

One server per module (started like the ``server`` fixture: free port, temp
data dir); every test works in its own namespace so tests cannot see each
other's keys. The seed SDK page's KV snippets run verbatim first, then each
promise of the KV issue: TTL, conditions, CAS, waits, mget, scan, history,
counters, expire/touch/persist, JSON paths, transactions and namespaces.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from flo_client import (
    CommitResult,
    Condition,
    ConflictError,
    DeleteOptions,
    ExpireOptions,
    FloClient,
    GetOptions,
    GetResult,
    HistoryOptions,
    KVIncrOptions,
    MGetOptions,
    NotFoundError,
    PutOptions,
    PutResult,
    ScanOptions,
    WaitFor,
)
from flo_core.body import Reader, Writer
from flo_core.errors import (
    BadRequestError,
    OverloadedError,
    ServerError,
    TxnFinishedError,
    TxnUnsupportedOpError,
)
from flo_core.spec import MAX_MGET_KEYS, TXN_MAX_OPEN, TXN_MAX_OPS, Op, Reason
from tests.helpers import wait_for

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(60),
    pytest.mark.usefixtures("shared_server"),
    pytest.mark.client(timeout_ms=5000),
]

I64_MAX = (1 << 63) - 1


async def raw(client: FloClient, op: int, ns: bytes, key: bytes, rest: bytes = b"") -> tuple[int, bytes]:
    """One request with hand-made namespace bytes; returns (status, data) without mapping refusals."""
    conn = await client._main()
    payload = len(ns).to_bytes(2, "little") + ns + len(key).to_bytes(2, "little") + key + rest
    return await asyncio.wait_for(conn.request(op, payload), 5)


# --- the seed page's KV section, verbatim where it works ---------------------------------------------


async def test_seed_quick_start(client) -> None:
    await client.kv.put("user:123", b"John Doe")
    value = await client.kv.get("user:123")
    assert f"Got: {value.decode()}" == "Got: John Doe"


async def test_seed_kv_operations(client) -> None:
    res = await client.kv.put("session:abc", b"data", PutOptions(ttl_seconds=3600))
    assert isinstance(res, PutResult) and res.version > 0

    await client.kv.put("key", b"value0")
    r = await client.kv.get("key")
    assert r is not None and (r.value, r.version) == (b"value0", r.version) and r.version > res.version

    # Blocking get (the key exists, so it answers at once)
    t0 = time.monotonic()
    r = await client.kv.get("key", GetOptions(block_ms=5000))
    assert r.value == b"value0" and time.monotonic() - t0 < 2

    # Put with CAS - use the version returned by Get/Put
    await client.kv.put("counter", b"1")
    r = await client.kv.get("counter")
    await client.kv.put("counter", b"2", PutOptions(cas_version=r.version))
    assert (await client.kv.get("counter")).value == b"2"

    # Conditional writes
    await client.kv.put("fresh", b"value", PutOptions(if_not_exists=True))
    with pytest.raises(ConflictError) as ei:
        await client.kv.put("fresh", b"value", PutOptions(if_not_exists=True))
    assert ei.value.reason == Reason.CONDITION_FAILED

    # Delete
    await client.kv.delete("key")
    assert await client.kv.get("key") is None

    # Multi-key get
    await client.kv.put("user:1", b"one")
    await client.kv.put("user:3", b"three")
    entries = await client.kv.mget(["user:1", "user:2", "user:3"])
    lines = [f"{e.key} = {e.value!r} (v{e.version})" if e.found else f"{e.key} missing" for e in entries]
    assert lines[1] == "user:2 missing" and lines[0].startswith("user:1 = b'one' (v")

    # Scan with pagination
    for i in range(250):
        await client.kv.put(f"user:p{i:03d}", b"x")
    result = await client.kv.scan("user:", ScanOptions(limit=100))
    seen = list(result.names)
    while result.has_more:
        result = await client.kv.scan("user:", ScanOptions(cursor=result.cursor))
        seen += result.names
    assert len(seen) == len(set(seen)) == 252 and all(s.startswith("user:") for s in seen)

    # Version history
    history = await client.kv.history("user:123", HistoryOptions(limit=10))
    assert history == []
    await client.kv.put("user:123", b"a")
    await client.kv.put("user:123", b"b")
    history = await client.kv.history("user:123", HistoryOptions(limit=10))
    assert [h.value for h in history] == [b"b", b"a"]

    # Atomic counter
    n = await client.kv.incr("visits:home")
    assert n == 1
    n = await client.kv.incr("visits:home", KVIncrOptions(delta=10))
    assert n == 11 and n.version > 0

    # TTL lifecycle and existence
    await client.kv.put("lock:resource", b"me", PutOptions(ttl_seconds=5))
    await client.kv.touch("lock:resource", 60)
    await client.kv.persist("lock:resource")
    ok = await client.kv.exists("lock:resource")
    assert ok is True


async def test_seed_json_paths(client) -> None:
    await client.kv.json_set("order:42", "$", b'{"items":3,"status":"new"}')
    res = await client.kv.json_set("order:42", "$.status", b'"shipped"')
    status = await client.kv.json_get("order:42", "$.status")
    assert f"{status.value!r} @ v{status.version}" == f"'shipped' @ v{res.version}"
    await client.kv.json_del("order:42", "$.status")
    assert await client.kv.json_get("order:42", "$.status") is None
    assert (await client.kv.json_get("order:42")).value == {"items": 3}


async def test_seed_transactions(client) -> None:
    await client.kv.put("user:42:visits", b"4")
    txn = await client.kv.begin("user:42")
    try:
        await txn.put("user:42:name", b"Jane")
        await txn.incr("user:42:visits")
        result = await txn.commit()
        assert f"committed {result.op_count} ops at index {result.commit_index}".startswith("committed 2 ops at index ")
    except Exception:
        await txn.rollback()  # idempotent
        raise
    assert (await client.kv.get("user:42:name")).value == b"Jane"
    assert (await client.kv.get("user:42:visits")).value == b"5"

    async with await client.kv.begin("user:42") as txn:
        await txn.put("user:42:last_seen", b"now")
        await txn.commit()
    assert (await client.kv.get("user:42:last_seen")).value == b"now"

    async with await client.kv.begin("user:42") as txn:
        for op in ("scan", "mget", "json_get", "json_set", "json_del", "history"):
            with pytest.raises(TxnUnsupportedOpError):
                await getattr(txn, op)("user:42:x")


# --- put: TTL, conditions, CAS ---------------------------------------------------------------------------


async def test_versions_rise_strictly(client) -> None:
    versions = [(await client.kv.put("k", b"%d" % i)).version for i in range(20)]
    assert versions == sorted(set(versions)) and versions[0] > 0
    r = await client.kv.get("k")
    assert (r.value, r.version) == (b"19", versions[-1])


async def test_ttl_both_spellings(client) -> None:
    await client.kv.put("a", b"v", PutOptions(ttl_ms=300))
    await client.kv.put("b", b"v", PutOptions(ttl_seconds=0.3))
    await client.kv.put("c", b"v", PutOptions(ttl_ms=60_000))
    assert await client.kv.exists("a") and await client.kv.exists("b")
    await wait_for(lambda: _all_gone(client, "a", "b"), timeout=5)
    assert await client.kv.exists("c")
    assert "a" not in (await client.kv.scan("")).names


async def _all_gone(client, *keys) -> bool:
    return all([await client.kv.get(k) is None for k in keys])


async def test_overwrite_without_ttl_clears_it(client) -> None:
    await client.kv.put("k", b"v1", PutOptions(ttl_ms=200))
    await client.kv.put("k", b"v2")
    await client.kv.put("probe", b"v", PutOptions(ttl_ms=200))
    await wait_for(lambda: _all_gone(client, "probe"))
    assert (await client.kv.get("k")).value == b"v2"


async def test_conditions_both_spellings(client) -> None:
    await client.kv.put("a", b"1", PutOptions(condition=Condition.IF_ABSENT))
    for opts in (PutOptions(condition=Condition.IF_ABSENT), PutOptions(if_not_exists=True)):
        with pytest.raises(ConflictError) as ei:
            await client.kv.put("a", b"2", opts)
        assert ei.value.reason == Reason.CONDITION_FAILED and ei.value.ran == 0
    for opts in (PutOptions(condition=Condition.IF_PRESENT), PutOptions(if_exists=True)):
        with pytest.raises(ConflictError) as ei:
            await client.kv.put("missing", b"2", opts)
        assert ei.value.reason == Reason.CONDITION_FAILED
    await client.kv.put("a", b"3", PutOptions(condition=Condition.IF_PRESENT))
    assert (await client.kv.get("a")).value == b"3"
    assert await client.kv.get("missing") is None


async def test_cas(client) -> None:
    v1 = (await client.kv.put("k", b"1")).version
    v2 = (await client.kv.put("k", b"2", PutOptions(cas_version=v1))).version
    with pytest.raises(ConflictError) as ei:
        await client.kv.put("k", b"3", PutOptions(cas_version=v1))
    assert ei.value.reason == Reason.CAS_MISMATCH
    assert (await client.kv.get("k")).version == v2
    # version 0 = the key must not exist
    await client.kv.put("new", b"x", PutOptions(cas_version=0))
    with pytest.raises(ConflictError) as ei:
        await client.kv.put("new", b"y", PutOptions(cas_version=0))
    assert ei.value.reason == Reason.CAS_MISMATCH
    with pytest.raises(ConflictError):
        await client.kv.put("absent", b"y", PutOptions(cas_version=v2))
    assert await client.kv.get("absent") is None


async def test_delete_with_and_without_cas(client) -> None:
    assert await client.kv.delete("missing") is False
    v = (await client.kv.put("k", b"v")).version
    with pytest.raises(ConflictError) as ei:
        await client.kv.delete("k", DeleteOptions(cas_version=v + 1000))
    assert ei.value.reason == Reason.CAS_MISMATCH
    assert await client.kv.exists("k")
    assert await client.kv.delete("k", DeleteOptions(cas_version=v)) is True
    assert await client.kv.delete("k") is False
    with pytest.raises(ConflictError):
        await client.kv.delete("k", DeleteOptions(cas_version=v))


async def test_binary_keys_and_large_values(client) -> None:
    big = bytes(range(256)) * 4096  # 1 MiB
    await client.kv.put(b"\x00bin\xff", big)
    assert (await client.kv.get(b"\x00bin\xff")).value == big
    await client.kv.put("empty", b"")
    r = await client.kv.get("empty")
    assert r is not None and r.value == b""


# --- get with a wait ------------------------------------------------------------------------------------


async def test_wait_exists_woken_by_a_write(client, shared_server, ns) -> None:
    for spelling in (GetOptions(block_ms=10_000), GetOptions(wait_ms=10_000)):
        key = f"later:{spelling.block_ms}"
        t0 = time.monotonic()
        waiter = asyncio.ensure_future(client.kv.get(key, spelling))
        async with FloClient(shared_server.endpoint, namespace=ns) as other:
            await wait_for(lambda: _waiters_at_least(other, 1))
            await other.kv.put(key, b"here")
        r = await asyncio.wait_for(waiter, 5)
        assert r.value == b"here" and time.monotonic() - t0 < 5


async def test_wait_exists_times_out_as_absent(client) -> None:
    t0 = time.monotonic()
    assert await client.kv.get("never", GetOptions(block_ms=300)) is None
    assert 0.25 <= time.monotonic() - t0 < 3


async def test_wait_change(client, shared_server, ns) -> None:
    v1 = (await client.kv.put("k", b"one")).version
    waiter = asyncio.ensure_future(client.kv.get("k", GetOptions(block_ms=10_000, wait_for=WaitFor.CHANGE)))
    async with FloClient(shared_server.endpoint, namespace=ns) as other:
        await wait_for(lambda: _waiters_at_least(other, 1))
        v2 = (await other.kv.put("k", b"two")).version
    r = await asyncio.wait_for(waiter, 5)
    assert (r.value, r.version) == (b"two", v2) and v2 > v1
    # a CHANGE wait that times out answers the current value (flo-wire-v2 §7.4)
    r = await client.kv.get("k", GetOptions(block_ms=200, wait_for=WaitFor.CHANGE))
    assert (r.value, r.version) == (b"two", v2)
    # on a missing key a CHANGE waits for it to appear
    waiter = asyncio.ensure_future(client.kv.get("k2", GetOptions(block_ms=10_000, wait_for=WaitFor.CHANGE)))
    await wait_for(lambda: _waiters_at_least(client, 1))
    await client.kv.put("k2", b"born")
    assert (await asyncio.wait_for(waiter, 5)).value == b"born"


async def test_wait_for_deleted_key_reports_absent(client, shared_server, ns) -> None:
    await client.kv.put("k", b"v")
    waiter = asyncio.ensure_future(client.kv.get("k", GetOptions(block_ms=10_000, wait_for=WaitFor.CHANGE)))
    async with FloClient(shared_server.endpoint, namespace=ns) as other:
        await wait_for(lambda: _waiters_at_least(other, 1))
        await other.kv.delete("k")
        # a delete is a change, but there is nothing to answer: the wait goes on until a value comes
        await other.kv.put("k", b"back")
    assert (await asyncio.wait_for(waiter, 5)).value == b"back"


async def _waiters_at_least(client: FloClient, n: int) -> bool:
    return (await client.server_info())["waiters"] >= n


async def test_closed_waiter_is_dropped(client, shared_server) -> None:
    base = (await client.server_info())["waiters"]
    other = FloClient(shared_server.endpoint, namespace=client.namespace)
    task = asyncio.ensure_future(other.kv.get("nobody", GetOptions(block_ms=60_000)))
    await wait_for(lambda: _waiters_at_least(client, base + 1))
    await other.close()
    with pytest.raises(Exception):
        await asyncio.wait_for(task, 5)
    await wait_for(lambda: _waiters_back_to(client, base))


async def _waiters_back_to(client: FloClient, n: int) -> bool:
    return (await client.server_info())["waiters"] <= n


async def test_bad_wait_is_refused(client) -> None:
    status, data = await raw(client, Op.KV_GET, client.namespace.encode(), b"k",
                             Writer().opt_u64(300_001).opt_u8(0).absent().absent().getvalue())
    assert status != 0 and Reader(data).u16() == Reason.OUT_OF_RANGE


# --- mget ------------------------------------------------------------------------------------------------


async def test_mget_order_and_missing(client) -> None:
    await client.kv.put("a", b"A")
    await client.kv.put("c", b"C")
    entries = await client.kv.mget(["c", "b", "a", "c"])
    assert [(e.key, e.found, e.value) for e in entries] == [
        ("c", True, b"C"), ("b", False, b""), ("a", True, b"A"), ("c", True, b"C")]
    assert entries[1].version == 0 and entries[0].version > 0
    assert await client.kv.mget([]) == []


async def test_mget_more_than_256_keys_is_split_by_the_client(client) -> None:
    keys = [f"k{i}" for i in range(700)]
    for k in keys[::7]:
        await client.kv.put(k, k.encode())
    entries = await client.kv.mget(keys)
    assert [e.key for e in entries] == keys
    assert all(e.found == (i % 7 == 0) for i, e in enumerate(entries))
    assert all(e.value == e.key.encode() for e in entries if e.found)


async def test_mget_server_bounds(client) -> None:
    def body(n: int) -> bytes:
        w = Writer().u16(n)
        for i in range(n):
            w.bytes16(b"k%d" % i)
        return w.absent().getvalue()

    status, data = await raw(client, Op.KV_MGET, client.namespace.encode(), b"", body(MAX_MGET_KEYS))
    assert status == 0 and Reader(data).u16() == MAX_MGET_KEYS
    for n in (0, MAX_MGET_KEYS + 1):
        status, data = await raw(client, Op.KV_MGET, client.namespace.encode(), b"", body(n))
        assert status != 0 and Reader(data).u16() == Reason.OUT_OF_RANGE


async def test_mget_large_answer_uses_next_index(client) -> None:
    """Values too big for one answer: the server answers a prefix, the client asks again from next_index."""
    big = [bytes([65 + i]) * (3 * 1024 * 1024) for i in range(4)]
    for i, v in enumerate(big):
        await client.kv.put(f"big{i}", v)
    status, data = await raw(client, Op.KV_MGET, client.namespace.encode(), b"",
                             Writer().u16(4).bytes16(b"big0").bytes16(b"big1").bytes16(b"big2").bytes16(b"big3")
                             .absent().getvalue())
    assert status == 0
    r = Reader(data)
    count = r.u16()
    assert 1 <= count < 4
    for _ in range(count):
        r.u8(), r.u64(), r.bytes32()
    assert r.present() and r.u16() == count and r.at_end()
    entries = await client.kv.mget([f"big{i}" for i in range(4)])
    assert [e.value for e in entries] == big


# --- scan ------------------------------------------------------------------------------------------------


async def _scan_all(client, prefix: str, limit: int, between=None) -> list[str]:
    out: list[str] = []
    cursor = None
    pages = 0
    while True:
        res = await client.kv.scan(prefix, ScanOptions(limit=limit, cursor=cursor))
        assert len(res.names) <= limit
        out += res.names
        pages += 1
        assert pages < 1000
        if res.cursor is None:
            return out
        assert len(res.cursor) <= 64
        cursor = res.cursor
        if between:
            await between(pages)


async def test_scan_every_live_key_once_with_changes_between_pages(client) -> None:
    stable = [f"s:{i:04d}" for i in range(0, 400, 2)]
    for k in stable:
        await client.kv.put(k, b"v")
    added, deleted = [], []

    async def between(page: int) -> None:
        k = f"s:{page * 37 % 400:04d}x"
        await client.kv.put(k, b"v")
        added.append(k)
        if page % 3 == 0 and added:
            gone = added.pop(0)
            await client.kv.delete(gone)
            deleted.append(gone)

    seen = await _scan_all(client, "s:", 13, between)
    assert len(seen) == len(set(seen)), "a key came twice"
    assert set(stable) <= set(seen)
    assert set(seen) <= set(stable) | set(added) | set(deleted)
    assert seen == sorted(seen)


async def test_scan_skips_expired_and_respects_prefix(client) -> None:
    await client.kv.put("p:live", b"v")
    await client.kv.put("p:dying", b"v", PutOptions(ttl_ms=100))
    await client.kv.put("q:other", b"v")
    await wait_for(lambda: _all_gone(client, "p:dying"))
    assert await _scan_all(client, "p:", 10) == ["p:live"]
    assert sorted(await _scan_all(client, "", 1)) == ["p:live", "q:other"]
    assert await _scan_all(client, "zzz", 10) == []


async def test_scan_long_keys_with_token_cursor(client) -> None:
    keys = sorted(f"long:{i:03d}:" + "x" * (100 + i) for i in range(30))
    for k in keys:
        await client.kv.put(k, b"v")
    assert await _scan_all(client, "long:", 4) == keys


async def test_scan_limits(client) -> None:
    for i in range(5):
        await client.kv.put(f"k{i}", b"v")
    res = await client.kv.scan("", ScanOptions(limit=1024))
    assert len(res.names) == 5 and res.cursor is None
    for bad in (1025, 1 << 31):
        status, data = await raw(client, Op.KV_SCAN, client.namespace.encode(), b"",
                                 Writer().opt_u32(bad).bytes8(b"").getvalue())
        assert status != 0 and Reader(data).u16() == Reason.OUT_OF_RANGE
    # a cursor the server never made is refused, not a crash
    status, data = await raw(client, Op.KV_SCAN, client.namespace.encode(), b"",
                             Writer().opt_u32(10).bytes8(b"\x01" + b"\xaa" * 16).getvalue())
    assert status != 0


# --- history ---------------------------------------------------------------------------------------------


async def test_history_newest_first_keeps_64_and_more(client) -> None:
    t0 = int(time.time() * 1000)
    versions = [(await client.kv.put("h", b"%d" % i)).version for i in range(70)]
    hist = await client.kv.history("h", HistoryOptions(limit=65))
    assert [e.version for e in hist] == versions[::-1][:65]
    assert [e.value for e in hist[:3]] == [b"69", b"68", b"67"]
    assert all(t0 - 5000 <= e.at_ms <= t0 + 60_000 for e in hist)
    assert [e.version for e in await client.kv.history("h")] == versions[::-1][:10]  # default limit 10
    assert await client.kv.history("nope") == []
    for bad in (66, 1 << 31):
        status, data = await raw(client, Op.KV_HISTORY, client.namespace.encode(), b"h",
                                 Writer().opt_u32(bad).absent().getvalue())
        assert status != 0 and Reader(data).u16() == Reason.OUT_OF_RANGE


# --- counters --------------------------------------------------------------------------------------------


async def test_incr_semantics(client) -> None:
    assert await client.kv.incr("c") == 1
    assert await client.kv.incr("c", 41) == 42
    assert await client.kv.incr("c", KVIncrOptions(delta=-50)) == -8
    r = await client.kv.get("c")
    assert r.value == b"-8"  # stored as decimal ASCII text, readable by get
    await client.kv.put("text-counter", b"100")
    assert await client.kv.incr("text-counter", 5) == 105
    n = await client.kv.incr("fresh", KVIncrOptions(delta=-3))
    assert n == -3 and n.version == (await client.kv.get("fresh")).version


async def test_incr_wrong_type_and_overflow(client) -> None:
    for bad in (b"abc", b"1.5", b" 1", b"", b"99999999999999999999"):
        await client.kv.put("bad", bad)
        with pytest.raises(ConflictError) as ei:
            await client.kv.incr("bad")
        assert ei.value.reason == Reason.WRONG_TYPE
        assert (await client.kv.get("bad")).value == bad  # untouched
    await client.kv.put("max", str(I64_MAX).encode())
    with pytest.raises(BadRequestError) as ei:
        await client.kv.incr("max")
    assert ei.value.reason == Reason.OUT_OF_RANGE
    assert (await client.kv.get("max")).value == str(I64_MAX).encode()
    assert await client.kv.incr("min", -(1 << 63)) == -(1 << 63)
    with pytest.raises(BadRequestError):
        await client.kv.incr("min", -1)


async def test_incr_keeps_ttl(client) -> None:
    await client.kv.put("c", b"1", PutOptions(ttl_ms=200))
    assert await client.kv.incr("c") == 2
    await wait_for(lambda: _all_gone(client, "c"))


# --- expire / touch / persist / exists -------------------------------------------------------------------------


async def test_expire_touch_persist(client) -> None:
    v = (await client.kv.put("k", b"v")).version
    await client.kv.expire("k", 150)
    await wait_for(lambda: _all_gone(client, "k"))

    await client.kv.put("t", b"v")
    await client.kv.touch("t", 0.15)
    await wait_for(lambda: _all_gone(client, "t"))

    await client.kv.put("p", b"v", PutOptions(ttl_ms=150))
    await client.kv.persist("p")
    await client.kv.put("p2", b"v", PutOptions(ttl_ms=150))
    await client.kv.expire("p2", 0)  # the 0.1.2 spelling of persist
    await client.kv.put("probe", b"v", PutOptions(ttl_ms=150))
    await wait_for(lambda: _all_gone(client, "probe"))
    assert await client.kv.exists("p") and await client.kv.exists("p2")
    # expire changes no version
    await client.kv.put("keep", b"v")
    before = (await client.kv.get("keep")).version
    await client.kv.expire("keep", 60_000)
    assert (await client.kv.get("keep")).version == before and before > v


async def test_expire_missing_and_cas(client) -> None:
    with pytest.raises(NotFoundError):
        await client.kv.expire("missing", 1000)
    with pytest.raises(NotFoundError):
        await client.kv.persist("missing")
    v = (await client.kv.put("k", b"v")).version
    with pytest.raises(ConflictError) as ei:
        await client.kv.expire("k", 1000, ExpireOptions(cas_version=v + 1))
    assert ei.value.reason == Reason.CAS_MISMATCH
    await client.kv.expire("k", 60_000, ExpireOptions(cas_version=v))


async def test_exists(client) -> None:
    assert await client.kv.exists("k") is False
    await client.kv.put("k", b"")
    assert await client.kv.exists("k") is True
    status, data = await raw(client, Op.KV_EXISTS, client.namespace.encode(), b"k", b"\x00\x00")
    r = Reader(data)
    assert status == 0 and r.flag() is True and r.u64() == (await client.kv.get("k")).version
    await client.kv.delete("k")
    assert await client.kv.exists("k") is False


# --- JSON ----------------------------------------------------------------------------------------------------


async def test_json_paths(client) -> None:
    v1 = (await client.kv.json_set("doc", "$", {"a": {"b": [10, 20, 30]}, "n": None})).version
    assert (await client.kv.json_get("doc")).value == {"a": {"b": [10, 20, 30]}, "n": None}
    assert (await client.kv.json_get("doc", "$.a.b")).value == [10, 20, 30]
    assert (await client.kv.json_get("doc", ".a.b")).value == [10, 20, 30]
    assert (await client.kv.json_get("doc", "$.a.b[1]")).value == 20
    r = await client.kv.json_get("doc", "$.n")
    assert r is not None and r.value is None and r.version == v1  # a JSON null is a value, not "missing"
    assert await client.kv.json_get("doc", "$.zzz") is None
    assert await client.kv.json_get("doc", "$.a.b[7]") is None
    assert await client.kv.json_get("nodoc") is None

    v2 = (await client.kv.json_set("doc", "$.a.b[0]", 11)).version
    v3 = (await client.kv.json_set("doc", ".a.c", '"new"')).version  # a str is JSON text, like bytes
    assert v1 < v2 < v3
    doc = await client.kv.json_get("doc")
    assert doc.value == {"a": {"b": [11, 20, 30], "c": "new"}, "n": None} and doc.version == v3
    v4 = await client.kv.json_del("doc", "$.a.b[1]")
    assert v4 > v3
    assert (await client.kv.json_get("doc", "$.a.b")).value == [11, 30]
    # the document is plain KV too
    assert (await client.kv.get("doc")).version == v4
    assert await client.kv.json_del("doc", "$") is None
    assert await client.kv.get("doc") is None


async def test_json_errors(client) -> None:
    with pytest.raises(ServerError):
        await client.kv.json_set("nodoc", "$.a", 1)  # a sub-path needs a document
    assert await client.kv.get("nodoc") is None
    await client.kv.put("notjson", b"\xffnot json")
    with pytest.raises(ServerError):
        await client.kv.json_get("notjson", "$.a")
    with pytest.raises(ServerError):
        await client.kv.json_set("doc", "$", b"{not json")
    await client.kv.json_set("doc", "$", {"a": 1})
    with pytest.raises(ServerError):
        await client.kv.json_get("doc", "$$bad path[")
    assert (await client.kv.json_get("doc")).value == {"a": 1}


# --- transactions ---------------------------------------------------------------------------------------------


async def test_txn_buffers_and_reads_its_writes(client, shared_server, ns) -> None:
    await client.kv.put("acct:1", b"10")
    async with FloClient(shared_server.endpoint, namespace=ns) as outside:
        txn = await client.kv.begin("acct")
        assert (await txn.put("acct:2", b"20")).version == 0  # no version before commit
        await txn.incr("acct:1", 5)
        await txn.delete("acct:gone")
        assert (await txn.get("acct:2")).value == b"20"
        assert (await txn.get("acct:1")).value == b"15"
        assert await txn.exists("acct:2") is True
        # nothing is visible outside before commit
        assert await outside.kv.get("acct:2") is None
        assert (await outside.kv.get("acct:1")).value == b"10"
        res = await txn.commit()
        assert isinstance(res, CommitResult) and res.op_count == 3 and res.commit_index > 0
        assert (await outside.kv.get("acct:2")).value == b"20"
        assert (await outside.kv.get("acct:1")).value == b"15"
        # every write of a commit has the commit's index as its version
        assert (await outside.kv.get("acct:2")).version == res.commit_index
        with pytest.raises(TxnFinishedError):
            await txn.put("acct:3", b"x")
        await txn.rollback()  # after commit: a no-op


async def test_txn_delete_and_expire_inside(client) -> None:
    await client.kv.put("r:a", b"1")
    await client.kv.put("r:b", b"1")
    async with await client.kv.begin("r") as txn:
        await txn.delete("r:a")
        assert await txn.get("r:a") is None and await txn.exists("r:a") is False
        await txn.expire("r:b", 150)
        await txn.commit()
    assert await client.kv.get("r:a") is None
    await wait_for(lambda: _all_gone(client, "r:b"))


async def test_txn_rollback_discards_and_is_idempotent(client) -> None:
    txn = await client.kv.begin("rb")
    await txn.put("rb:1", b"x")
    await txn.rollback()
    await txn.rollback()
    assert await client.kv.get("rb:1") is None
    with pytest.raises(TxnFinishedError):
        await txn.get("rb:1")
    # an unknown id rolls back fine too
    status, _ = await raw(client, Op.KV_ROLLBACK_TXN, client.namespace.encode(), b"", Writer().u64(12345).getvalue())
    assert status == 0


async def test_txn_context_manager_rolls_back_on_error(client) -> None:
    with pytest.raises(RuntimeError):
        async with await client.kv.begin("cm") as txn:
            await txn.put("cm:1", b"x")
            raise RuntimeError("boom")
    assert await client.kv.get("cm:1") is None
    with pytest.raises(TxnFinishedError):
        await txn.put("cm:2", b"x")


async def test_txn_guard_failing_at_commit_applies_nothing(client, shared_server, ns) -> None:
    v = (await client.kv.put("g:guarded", b"old")).version
    txn = await client.kv.begin("g")
    await txn.put("g:side", b"effect")
    await txn.put("g:guarded", b"new", PutOptions(cas_version=v))
    await txn.incr("g:count")
    async with FloClient(shared_server.endpoint, namespace=ns) as other:
        await other.kv.put("g:guarded", b"changed-meanwhile")
    with pytest.raises(ConflictError) as ei:
        await txn.commit()
    assert ei.value.reason == Reason.CAS_MISMATCH
    assert await client.kv.get("g:side") is None and await client.kv.get("g:count") is None
    assert (await client.kv.get("g:guarded")).value == b"changed-meanwhile"


async def test_txn_guard_refused_when_buffered(client) -> None:
    await client.kv.put("b:x", b"1")
    async with await client.kv.begin("b") as txn:
        with pytest.raises(ConflictError) as ei:
            await txn.put("b:x", b"2", PutOptions(condition=Condition.IF_ABSENT))
        assert ei.value.reason == Reason.CONDITION_FAILED
        await txn.put("b:y", b"ok")
        assert (await txn.commit()).op_count == 1
    assert (await client.kv.get("b:x")).value == b"1" and (await client.kv.get("b:y")).value == b"ok"


async def test_txn_op_cap(client) -> None:
    async with await client.kv.begin("cap") as txn:
        for i in range(TXN_MAX_OPS):
            await txn.put(f"cap:{i}", b"x")
        with pytest.raises(BadRequestError) as ei:
            await txn.put("cap:one-too-many", b"x")
        assert ei.value.reason == Reason.TXN_TOO_LARGE
        res = await txn.commit()
    assert res.op_count == TXN_MAX_OPS
    assert (await client.kv.get(f"cap:{TXN_MAX_OPS - 1}")).value == b"x"
    assert await client.kv.get("cap:one-too-many") is None


async def test_txn_byte_cap(client) -> None:
    chunk = b"z" * (200 * 1024)
    async with await client.kv.begin("bytes") as txn:
        with pytest.raises(BadRequestError) as ei:
            for i in range(10):
                await txn.put(f"bytes:{i}", chunk)
        assert ei.value.reason == Reason.TXN_TOO_LARGE
        assert 4 <= i <= 5  # ~1 MiB in: the 6th 200 KiB write is refused
        await txn.rollback()


async def test_txn_open_cap(client) -> None:
    txns = []
    try:
        for _ in range(TXN_MAX_OPEN):
            txns.append(await client.kv.begin("many"))
        with pytest.raises(OverloadedError) as ei:
            await client.kv.begin("many")
        assert ei.value.reason == Reason.TOO_MANY_TRANSACTIONS and ei.value.ran == 0
    finally:
        await asyncio.gather(*(t.rollback() for t in txns))
    t = await client.kv.begin("many")  # room again
    await t.rollback()


async def test_txn_routing_key_and_unknown_id(client) -> None:
    txn = await client.kv.begin("route")
    ns = client.namespace.encode()
    body = Writer().bytes32(b"v").absent().opt_u8(0).absent().opt_str16("other").opt_u64(txn.txn_id).getvalue()
    status, data = await raw(client, Op.KV_PUT, ns, b"k", body)
    assert status != 0 and Reader(data).u16() == Reason.WRONG_ROUTING_KEY
    await txn.commit()
    status, data = await raw(client, Op.KV_COMMIT_TXN, ns, b"", Writer().u64(txn.txn_id).getvalue())
    assert status != 0 and Reader(data).u16() == Reason.NO_SUCH_TRANSACTION
    body = Writer().bytes32(b"v").absent().opt_u8(0).absent().opt_str16("route").opt_u64(txn.txn_id).getvalue()
    status, data = await raw(client, Op.KV_PUT, ns, b"k", body)
    assert status != 0 and Reader(data).u16() == Reason.NO_SUCH_TRANSACTION
    status, data = await raw(client, Op.KV_BEGIN_TXN, ns, b"", b"")  # a routing key is required
    assert status != 0


def test_abandoned_txns_expire_with_injected_time() -> None:
    """The server's txn table (pure Python, time passed in): idle ones go after TXN_IDLE_TIMEOUT_MS."""
    from flo_server.handlers.kv import Txns

    from flo_core.spec import TXN_IDLE_TIMEOUT_MS

    t = Txns()
    a = t.begin("ns", b"r", 1000)
    b = t.begin("ns", b"r", 1000)
    t.get(b.id, None, 1000 + TXN_IDLE_TIMEOUT_MS)  # use keeps it alive
    with pytest.raises(ServerError) as ei:
        t.get(a.id, None, 1001 + TXN_IDLE_TIMEOUT_MS)
    assert ei.value.reason == Reason.NO_SUCH_TRANSACTION
    t.expire(1000 + 2 * TXN_IDLE_TIMEOUT_MS)
    assert b.id in t.open
    t.expire(1001 + 2 * TXN_IDLE_TIMEOUT_MS)
    assert t.open == {}
    # a full table makes room by dropping the idle ones first
    for _ in range(TXN_MAX_OPEN):
        t.begin("ns", b"r", 5000)
    with pytest.raises(ServerError) as ei:
        t.begin("ns", b"r", 5000)
    assert ei.value.reason == Reason.TOO_MANY_TRANSACTIONS
    t.begin("ns", b"r", 5001 + TXN_IDLE_TIMEOUT_MS)
    assert len(t.open) == 1


# --- namespaces ------------------------------------------------------------------------------------------------


async def test_namespace_isolation_and_override(client, ns) -> None:
    other = ns + "_b"
    await client.kv.put("k", b"mine")
    await client.kv.put("k", b"theirs", PutOptions(namespace=other))
    assert (await client.kv.get("k")).value == b"mine"
    assert (await client.kv.get("k", GetOptions(namespace=other))).value == b"theirs"
    assert await client.kv.delete("k", DeleteOptions(namespace=other)) is True
    assert (await client.kv.get("k")).value == b"mine"
    assert (await client.kv.scan("", ScanOptions(namespace=other))).names == []
    assert [e.found for e in await client.kv.mget(["k"], MGetOptions(namespace=other))] == [False]


async def test_empty_namespace_is_default(client, shared_server) -> None:
    key = b"ns-default-probe:" + client.namespace.encode()
    status, _ = await raw(client, Op.KV_PUT, b"", key,
                          Writer().bytes32(b"via-empty").absent().opt_u8(0).absent().absent().absent().getvalue())
    assert status == 0
    assert (await client.kv.get(key, GetOptions(namespace="default"))).value == b"via-empty"
    async with FloClient(shared_server.endpoint) as d:
        assert d.namespace == "default"
        assert (await d.kv.get(key)).value == b"via-empty"
        assert await d.kv.delete(key) is True


async def test_namespace_too_long_is_refused(client) -> None:
    status, data = await raw(client, Op.KV_GET, b"n" * 256, b"k", b"")
    assert status != 0 and Reader(data).u16() == Reason.FIELD_TOO_LONG
    # the connection is still good
    assert await client.kv.get("k") is None


async def test_get_result_behaves_like_bytes(client) -> None:
    await client.kv.put("k", b"abc")
    r = await client.kv.get("k")
    assert isinstance(r, GetResult) and r == b"abc" and bytes(r) == b"abc" and len(r) == 3


async def test_ping_and_server_info(client) -> None:
    await client.ping()  # PING is a value+options op: the client must send [value u32][options u16]
    info = await client.server_info()
    assert info["last_lsn"] >= 0 and info["connections"] >= 1

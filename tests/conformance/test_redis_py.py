"""redis-py (from PyPI, unmodified) against flo-server's RESP side: every command of docs/resp.md."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis
import redis.asyncio as aioredis
from flo import FloClient

from tests.helpers import wait_for, wait_until

pytestmark = [pytest.mark.conformance, pytest.mark.timeout(60)]


async def _blocked(r: aioredis.Redis, n: int) -> None:
    """Wait until the server counts ``n`` clients parked in blocking commands."""

    async def parked() -> bool:
        return (await r.info("clients")).get("blocked_clients", 0) >= n

    await wait_for(parked, timeout=5, what=f"{n} blocked client(s)")


def _hp(endpoint: str) -> tuple[str, int]:
    host, port = endpoint.rsplit(":", 1)
    return host, int(port)


@pytest.fixture
def r(server):
    host, port = _hp(server)
    c = redis.Redis(host=host, port=port, socket_timeout=10)
    yield c
    c.close()


@pytest.fixture
def r3(server):
    host, port = _hp(server)
    c = redis.Redis(host=host, port=port, protocol=3, socket_timeout=10, decode_responses=True)
    yield c
    c.close()


# --- connection and server -----------------------------------------------------------------


def test_connection_commands(r: redis.Redis) -> None:
    assert r.ping() is True
    assert r.echo(b"hi \x00 there") == b"hi \x00 there"
    assert r.client_setname("worker-1") is True
    assert r.client_getname() in ("worker-1", b"worker-1")  # redis-py decodes this one itself
    assert isinstance(r.client_id(), int)
    assert "name=worker-1" in r.execute_command("CLIENT", "INFO").decode()
    assert r.command_count() > 50
    table = r.command()
    assert table["get"]["arity"] == 2 and table["set"]["arity"] == -3
    assert r.execute_command("COMMAND DOCS", "get")  # a map (a flat list in RESP2)
    assert r.config_get("save") == {"save": ""}
    assert "redis_version" in r.info()
    with pytest.raises(redis.exceptions.AuthenticationError, match="without any password configured"):
        r.execute_command("AUTH", "x")


def _saved(r: redis.Redis, saves: int) -> bool:
    info = r.info("persistence")
    return info["rdb_saves"] >= saves and info["rdb_bgsave_in_progress"] == 0 and info["aof_rewrite_scheduled"] == 0


def test_bgsave_save_lastsave_bgrewriteaof(r: redis.Redis, server_proc) -> None:
    from flo_server.persistence import list_snapshots

    r.mset({f"k{i}": b"v" * 100 for i in range(1000)})
    before = r.info("persistence")
    assert before["rdb_changes_since_last_save"] >= 1 and before["rdb_bgsave_in_progress"] == 0
    started_at = r.lastsave()
    assert r.bgsave() is True
    wait_until(lambda: _saved(r, before["rdb_saves"] + 1), timeout=10)
    after = r.info("persistence")
    assert after["rdb_changes_since_last_save"] == 0
    assert after["rdb_last_bgsave_status"] == "ok"
    assert list_snapshots(str(server_proc.data_dir))[0][0] == after["flo_snapshot_lsn"] >= 1
    assert r.lastsave() >= started_at
    # Nothing written since: a second BGSAVE has nothing to do, and says so rather than failing.
    assert r.execute_command("BGSAVE") is True  # (redis-py reads any status reply of BGSAVE as True)
    assert r.info("persistence")["rdb_saves"] == after["rdb_saves"]
    # SCHEDULE and BGREWRITEAOF (the log's compaction is a snapshot) each make one more.
    r.set("k1", b"changed")
    assert r.bgsave(schedule=True) is True
    wait_until(lambda: _saved(r, after["rdb_saves"] + 1), timeout=10)
    r.set("k2", b"changed")
    assert r.bgrewriteaof() is True
    wait_until(lambda: _saved(r, after["rdb_saves"] + 2), timeout=10)
    # SAVE returns once the snapshot is on disk.
    r.set("k3", b"changed")
    assert r.save() is True
    last = r.info("persistence")
    assert last["rdb_saves"] == after["rdb_saves"] + 3 and last["rdb_changes_since_last_save"] == 0
    assert list_snapshots(str(server_proc.data_dir))[0][0] == last["flo_snapshot_lsn"]


def test_bgsave_during_a_snapshot_is_refused_unless_scheduled(r: redis.Redis) -> None:
    r.mset({f"k{i}": b"v" * 100 for i in range(1000)})
    saves = r.info("persistence")["rdb_saves"]
    # One pipeline: the server reads it in one go, so the later commands meet the snapshot the first started.
    p = r.pipeline(transaction=False)
    p.execute_command("BGSAVE")
    p.execute_command("BGSAVE")  # (redis-py's bgsave() adds SCHEDULE unless told schedule=False)
    p.save()
    p.set("k1", b"changed")  # after the first snapshot's LSN: the scheduled one has something to save
    p.execute_command("BGSAVE", "SCHEDULE")
    first, again, save, _, scheduled = p.execute(raise_on_error=False)
    assert first is True
    for refused in (again, save):
        assert isinstance(refused, redis.ResponseError) and "Background save already in progress" in str(refused)
    assert scheduled is True
    wait_until(lambda: _saved(r, saves + 2), timeout=10)
    assert r.info("persistence")["rdb_changes_since_last_save"] == 0


def test_bgsave_without_a_data_directory_is_refused(make_server) -> None:
    sp = make_server("--no-persist")
    c = redis.Redis(*_hp(sp.endpoint), socket_timeout=10)
    try:
        for cmd in ("BGSAVE", "SAVE", "BGREWRITEAOF"):
            with pytest.raises(redis.ResponseError, match="without a data directory"):
                c.execute_command(cmd)
        assert c.lastsave() is not None
    finally:
        c.close()


def test_unknown_command_wording(r: redis.Redis) -> None:
    with pytest.raises(redis.ResponseError) as e:
        r.execute_command("NOSUCH", "a", "b")
    assert str(e.value) == "unknown command 'NOSUCH', with args beginning with: 'a' 'b' "
    with pytest.raises(redis.ResponseError, match="wrong number of arguments for 'get' command"):
        r.execute_command("GET")


def test_hello_resp3(r3: redis.Redis) -> None:
    r3.set("k3", "v")
    assert r3.get("k3") == "v"
    assert r3.get("missing") is None
    assert r3.config_get("appendonly")["appendonly"] in ("yes", "no")
    hello = r3.execute_command("HELLO", "3")
    assert hello["proto"] == 3 and hello["server"] == "redis"
    with pytest.raises(redis.ResponseError, match="NOPROTO"):
        r3.execute_command("HELLO", "4")


def test_select_dbsize_flushdb(r: redis.Redis) -> None:
    r.set("a", "1")
    assert r.dbsize() == 1
    r.select(1)  # the namespace "db1"
    assert r.dbsize() == 0 and r.get("a") is None
    r.set("a", "2")
    r.rpush("l", "x")
    assert r.dbsize() == 2
    assert r.flushdb() is True
    assert r.dbsize() == 0
    r.select(0)
    assert r.get("a") == b"1"
    with pytest.raises(redis.ResponseError, match="DB index is out of range"):
        r.select(99)


def test_quit_closes(server: str) -> None:
    host, port = _hp(server)
    c = redis.Redis(host=host, port=port, single_connection_client=True)
    assert c.execute_command("QUIT") in (True, b"OK")
    c.close()


# --- strings and keys ------------------------------------------------------------------------


def test_set_options(r: redis.Redis) -> None:
    assert r.set("s", "v1") is True
    assert r.set("s", "v2", nx=True) is None
    assert r.set("s", "v2", xx=True) is True
    assert r.set("new", "x", xx=True) is None
    assert r.set("s", "v3", get=True) == b"v2"
    assert r.set("s", "v4", ex=100) is True
    assert 99 <= r.ttl("s") <= 100
    assert r.set("s", "v5", keepttl=True) is True
    assert r.ttl("s") > 0
    assert r.set("s", "v6") is True
    assert r.ttl("s") == -1  # a plain SET clears the TTL
    assert r.set("s", "v", px=50_000) and 49_000 < r.pttl("s") <= 50_000
    assert r.set("s", "v", exat=int(time.time()) + 100) and r.ttl("s") > 90
    assert r.set("s", "v", pxat=int(time.time() * 1000) + 100_000) and r.ttl("s") > 90
    assert r.set("s", "gone", pxat=1000) is True and r.get("s") is None  # a past time deletes
    with pytest.raises(redis.ResponseError, match="invalid expire time in 'set' command"):
        r.set("s", "v", ex=0)
    with pytest.raises(redis.ResponseError, match="syntax error"):
        r.execute_command("SET", "s", "v", "NX", "XX")
    assert r.setnx("nx", "1") is True and r.setnx("nx", "2") is False
    assert r.getset("nx", "3") == b"1"
    assert r.getdel("nx") == b"3" and r.get("nx") is None


def test_multi_key_and_counters(r: redis.Redis) -> None:
    assert r.mset({"a": "1", "b": "2", "c": b"\xff\x00"}) is True
    assert r.mget("a", "nope", "c") == [b"1", None, b"\xff\x00"]
    assert r.exists("a", "b", "nope", "a") == 3
    assert r.delete("a", "b", "nope") == 2
    assert r.unlink("c") == 1
    assert r.incr("n") == 1 and r.incrby("n", 10) == 11 and r.decr("n") == 10 and r.decrby("n", 20) == -10
    assert r.get("n") == b"-10"  # decimal text, as Redis and Flo store counters
    r.set("txt", "abc")
    with pytest.raises(redis.ResponseError, match="value is not an integer or out of range"):
        r.incr("txt")
    r.set("big", str(2**63 - 1))
    with pytest.raises(redis.ResponseError, match="increment or decrement would overflow"):
        r.incr("big")
    assert r.append("txt", "def") == 6 and r.strlen("txt") == 6 and r.strlen("nope") == 0
    assert r.get("txt") == b"abcdef"


def test_expiry(r: redis.Redis) -> None:
    r.set("e", "v")
    assert r.ttl("e") == -1 and r.ttl("missing") == -2 and r.pttl("missing") == -2
    assert r.expire("e", 100) is True and 99 <= r.ttl("e") <= 100
    assert r.pexpire("e", 5000) is True and 4000 < r.pttl("e") <= 5000
    assert r.persist("e") is True and r.ttl("e") == -1 and r.persist("e") is False
    assert r.expire("missing", 10) is False
    assert r.expire("e", 10, nx=True) is True and r.expire("e", 20, nx=True) is False
    assert r.expire("e", 5, gt=True) is False and r.expire("e", 50, gt=True) is True
    r.pexpire("e", 1)
    wait_until(lambda: not r.exists("e"))  # the 1 ms TTL lapses
    assert r.get("e") is None


def test_type_scan_keys(r: redis.Redis) -> None:
    for i in range(30):
        r.set(f"user:{i}", i)
    r.rpush("list:1", "x")
    r.xadd("stream:1", {"f": "v"})
    assert r.type("user:1") == b"string" and r.type("list:1") == b"list"
    assert r.type("stream:1") == b"stream" and r.type("nope") == b"none"
    assert sorted(r.keys("user:1*")) == sorted([b"user:1"] + [f"user:{i}".encode() for i in range(10, 20)])
    assert set(r.keys("*")) >= {b"list:1", b"stream:1", b"user:0"}
    seen = list(r.scan_iter(match="user:*", count=7))
    assert sorted(seen) == sorted(f"user:{i}".encode() for i in range(30))
    assert len(set(r.scan_iter(count=3))) == 32
    assert list(r.scan_iter(_type="list")) == [b"list:1"]
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        r.get("list:1")
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        r.lpush("user:1", "x")


def test_json(r: redis.Redis) -> None:
    assert r.json().set("doc", "$", {"a": {"b": [1, 2]}, "name": "x"}) is True
    assert r.json().get("doc") == {"a": {"b": [1, 2]}, "name": "x"}
    assert r.json().get("doc", "$.a.b") == [[1, 2]]
    assert r.json().set("doc", "$.name", "y") is True
    assert r.json().get("doc", "$.name") == ["y"]
    assert r.json().delete("doc", "$.a") == 1
    assert r.json().get("doc") == {"name": "y"}
    assert r.json().delete("doc") == 1 and r.exists("doc") == 0


# --- lists -----------------------------------------------------------------------------------


def test_lists(r: redis.Redis) -> None:
    assert r.lpush("l", "a", "b", "c") == 3  # c b a
    assert r.rpush("l", "d") == 4
    assert r.lrange("l", 0, -1) == [b"c", b"b", b"a", b"d"]
    assert r.lrange("l", -2, 100) == [b"a", b"d"] and r.lrange("l", 5, 10) == []
    assert r.llen("l") == 4 and r.llen("nope") == 0
    assert r.lpop("l") == b"c" and r.rpop("l") == b"d"
    assert r.lpop("l", 5) == [b"b", b"a"]
    assert r.exists("l") == 0  # an emptied list is gone
    assert r.lpop("l") is None and r.rpop("l", 2) is None


async def test_blocking_pops(server: str) -> None:
    host, port = _hp(server)
    waiter = aioredis.Redis(host=host, port=port)
    pusher = aioredis.Redis(host=host, port=port)
    try:
        assert await waiter.blpop(["q1", "q2"], timeout=0.1) is None  # times out: nil
        task = asyncio.ensure_future(waiter.brpop(["q1", "q2"], timeout=10))
        await _blocked(pusher, 1)  # the pop is parked once the server counts a blocked client
        await pusher.rpush("q2", "job")
        assert await asyncio.wait_for(task, 5) == (b"q2", b"job") or await task == [b"q2", b"job"]
        await pusher.rpush("q1", "now")
        assert await waiter.blpop(["q1"], timeout=1) in ((b"q1", b"now"), [b"q1", b"now"])
    finally:
        await waiter.aclose()
        await pusher.aclose()


async def test_blocking_keeps_pipeline_order(server: str) -> None:
    host, port = _hp(server)
    c = aioredis.Redis(host=host, port=port)
    other = aioredis.Redis(host=host, port=port)
    try:
        pipe = c.pipeline(transaction=False)
        pipe.set("before", "1")
        pipe.blpop(["pq"], timeout=5)
        pipe.get("before")
        task = asyncio.ensure_future(pipe.execute())
        await _blocked(other, 1)
        await other.rpush("pq", "x")
        res = await asyncio.wait_for(task, 5)
        assert res[0] is True and list(res[1]) == [b"pq", b"x"] and res[2] == b"1"
    finally:
        await c.aclose()
        await other.aclose()


def test_pipeline(r: redis.Redis) -> None:
    pipe = r.pipeline(transaction=False)
    for i in range(200):
        pipe.set(f"p{i}", i)
        pipe.incr("pc")
    pipe.get("p199")
    pipe.execute_command("NOSUCH")
    res = pipe.execute(raise_on_error=False)
    assert res[-2] == b"199" and res[-3] == 200
    assert isinstance(res[-1], redis.ResponseError)


# --- streams --------------------------------------------------------------------------------


def test_streams(r: redis.Redis) -> None:
    i1 = r.xadd("s", {"f": "v1"})
    i2 = r.xadd("s", {"payload": b"\x00bin", "h": "x"})
    with pytest.raises(redis.ResponseError, match="equal or smaller"):
        r.xadd("s", {"f": "v"}, id="1-1")
    assert r.xlen("s") == 2
    assert r.xrange("s") == [(i1, {b"f": b"v1"}), (i2, {b"payload": b"\x00bin", b"h": b"x"})]
    assert r.xrevrange("s", count=1) == [(i2, {b"payload": b"\x00bin", b"h": b"x"})]
    assert r.xrange("s", min=f"({i1.decode()}") == [(i2, {b"payload": b"\x00bin", b"h": b"x"})]
    assert r.xread({"s": 0}, count=1) == [[b"s", [(i1, {b"f": b"v1"})]]]
    assert r.xread({"s": "$"}, block=50) == []
    for n in range(10):
        r.xadd("capped", {"n": str(n)}, maxlen=3, approximate=False)
    assert r.xlen("capped") == 3
    assert r.xtrim("capped", maxlen=1, approximate=False) == 2
    with pytest.raises(redis.ResponseError):
        r.xdel("s", i1)


def test_consumer_groups(r: redis.Redis) -> None:
    ids = [r.xadd("g", {"n": str(n)}) for n in range(4)]
    assert r.xgroup_create("g", "grp", id="0") is True
    with pytest.raises(redis.ResponseError, match="BUSYGROUP"):
        r.xgroup_create("g", "grp", id="0")
    got = r.xreadgroup("grp", "alice", {"g": ">"}, count=3)
    assert [e[0] for e in got[0][1]] == ids[:3]
    summary = r.xpending("g", "grp")
    assert summary["pending"] == 3 and summary["min"] == ids[0]
    detail = r.xpending_range("g", "grp", min="-", max="+", count=10)
    assert [d["message_id"] for d in detail] == ids[:3] and detail[0]["consumer"] == b"alice"
    # alice's own history (id 0) replays her pending entries
    hist = r.xreadgroup("grp", "alice", {"g": "0"})
    assert [e[0] for e in hist[0][1]] == ids[:3]
    assert r.xack("g", "grp", ids[0], ids[1]) == 2
    claimed = r.xautoclaim("g", "grp", "bob", min_idle_time=0, start_id="0-0")
    assert [e[0] for e in claimed[1]] == [ids[2]]
    assert r.xclaim("g", "grp", "carol", 0, [ids[2]], justid=True) in ([ids[2]], [])
    assert r.xgroup_create("g", "late", id="$") is True
    assert r.xreadgroup("grp", "alice", {"g": ">"}) == [[b"g", [(ids[3], {b"n": b"3"})]]]
    assert r.xgroup_destroy("g", "late") == 1
    with pytest.raises(redis.ResponseError, match="NOGROUP"):
        r.xreadgroup("late", "x", {"g": ">"})


async def test_xread_block_wakes(server: str) -> None:
    host, port = _hp(server)
    reader = aioredis.Redis(host=host, port=port)
    writer = aioredis.Redis(host=host, port=port)
    try:
        await writer.xadd("bs", {"a": "0"})
        await writer.xgroup_create("bs", "g", id="$")
        task = asyncio.ensure_future(reader.xread({"bs": "$"}, block=5000))
        gtask = asyncio.ensure_future(
            aioredis.Redis(host=host, port=port).xreadgroup("g", "c", {"bs": ">"}, block=5000)
        )
        await _blocked(writer, 2)
        new_id = await writer.xadd("bs", {"a": "1"})
        got = await asyncio.wait_for(task, 5)
        assert got == [[b"bs", [(new_id, {b"a": b"1"})]]]
        ggot = await asyncio.wait_for(gtask, 5)
        assert ggot == [[b"bs", [(new_id, {b"a": b"1"})]]]
    finally:
        await reader.aclose()
        await writer.aclose()


# --- one store, two protocols ---------------------------------------------------------------


async def test_same_bytes_through_both_protocols(server: str) -> None:
    host, port = _hp(server)
    r = aioredis.Redis(host=host, port=port)
    flo = FloClient(server, timeout_ms=3000)
    await flo.connect()
    try:
        await r.set("shared", b"\x00\x01redis")
        got = await flo.kv.get("shared")
        assert got is not None and got.value == b"\x00\x01redis"
        await flo.kv.put("from-flo", b"flo\xffbytes")
        assert await r.get("from-flo") == b"flo\xffbytes"
        await r.incrby("ctr", 41)
        assert (await flo.kv.incr("ctr")).value == 42
        assert await r.get("ctr") == b"42"
        res = await flo.stream.append("evts", b"payload-bytes")
        entries = await r.xrange("evts")
        assert entries[0][1] == {b"payload": b"payload-bytes"}
        assert entries[0][0] == f"{res.id.timestamp_ms}-{res.id.sequence}".encode()
        await r.select(2)
        await r.set("in-db2", "x")
        assert await flo.kv.get("in-db2") is None  # db 2 is the namespace "db2"
    finally:
        await flo.close()
        await r.aclose()

"""KV_MPUT (our extension): many guarded puts in one request and one log record."""

import pytest

from flo_client import BadRequestError, FloClient, PutOptions, TxnUnsupportedOpError

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


async def test_put_many_writes_every_item_at_one_version(server):
    async with FloClient(server, namespace="mput") as c:
        versions = await c.kv.put_many([("a", b"1"), ("b", b"2"), ("c", "three")])
        assert versions[0] == versions[1] == versions[2] > 0
        got = await c.kv.mget(["a", "b", "c"])
        assert [(e.value, e.version) for e in got] == [(b"1", versions[0]), (b"2", versions[0]), (b"three", versions[0])]


async def test_put_many_guards_each_item_on_its_own(server):
    async with FloClient(server, namespace="mput") as c:
        v1 = (await c.kv.put("a", b"old")).version
        res = await c.kv.put_many([
            ("a", b"new", PutOptions(cas_version=v1)),  # holds
            ("b", b"x", PutOptions(cas_version=5)),  # b does not exist: fails
            ("c", b"y", PutOptions(cas_version=0)),  # must not exist: holds
        ])
        assert res[0] is not None and res[0] > v1
        assert res[1] is None
        assert res[2] == res[0]
        assert (await c.kv.get("a")).value == b"new"
        assert await c.kv.get("b") is None
        # the same CAS again fails now: the version moved on
        assert await c.kv.put_many([("a", b"again", PutOptions(cas_version=v1))]) == [None]


async def test_put_many_ttl_and_survives_restart(server_proc):
    async with FloClient(server_proc.endpoint, namespace="mput") as c:
        await c.kv.put_many([("t", b"1", PutOptions(ttl_seconds=3600)), ("p", b"2")])
    server_proc.restart(kill=True)
    async with FloClient(server_proc.endpoint, namespace="mput") as c:
        assert (await c.kv.get("t")).value == b"1"
        assert (await c.kv.get("p")).value == b"2"


async def test_put_many_refusals(server):
    async with FloClient(server, namespace="mput") as c:
        with pytest.raises(BadRequestError):
            await c.kv.put_many([("k", b"1"), ("k", b"2")])  # a key twice
        with pytest.raises(BadRequestError):
            await c.kv.put_many([("k", b"1", PutOptions(if_not_exists=True))])
        assert await c.kv.put_many([]) == []
        async with c.kv.begin("r") as txn:
            with pytest.raises(TxnUnsupportedOpError):
                await txn.put_many([("k", b"1")])

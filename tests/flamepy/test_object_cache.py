"""The object cache against a real flo-server: Flame 0.6's API and versioning, incremental get (a client
that kept version v reads only what changed since, counted by the client and by the server's
``flo_bytes_out_total``), concurrent writers, files, deletes, keys, limits and the cache endpoint.
"""

from __future__ import annotations

import os
import threading
import urllib.request

import pytest

import flamepy
from flamepy.core import cache, ObjectKey, ObjectRef, WILDCARD_SESSION, _runtime
from flamepy.core._store import Store
from flamepy.core import records as R
from tests.helpers import ServerProc


KIB = 1024


@pytest.fixture(scope="module")
def srv(tmp_path_factory, flame_helpers):
    """One flo-server (with /metrics) for the module; flamepy's default connection points at it."""
    base = tmp_path_factory.mktemp("objcache")
    sp = ServerProc(base / "data", "--http-port", "-1").start()
    home = flame_helpers.flame_home(base / "home", f"flo://{sp.endpoint}")
    saved = {k: os.environ.get(k) for k in ("FLAME_ENDPOINT", "HOME", "FLAME_CACHE_ENDPOINT")}
    os.environ.update(FLAME_ENDPOINT=sp.endpoint, HOME=str(home))
    os.environ.pop("FLAME_CACHE_ENDPOINT", None)
    flame_helpers.reset_default_connection()
    try:
        yield sp
    finally:
        flame_helpers.reset_default_connection()
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        sp.stop()


@pytest.fixture
def other(srv):
    """A second client of the same server that shares nothing with this process's kept objects."""
    store = _runtime.run(Store(srv.endpoint, client_options={}).connect())
    yield store
    _runtime.run(store.close())


def _deltas(base, deltas):
    return {"base": base, "deltas": deltas}


def _server_bytes_out(sp: ServerProc) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{sp.http_port}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("flo_bytes_out_total "):
                return float(line.split()[1])
    raise AssertionError("no flo_bytes_out_total in /metrics")


def test_flame_semantics(srv):
    """What Flame's own e2e test_cache.py checks, on Flo."""
    ref = flamepy.put_object("test-app/ssn-1", {"message": "Hello, Flame!", "value": 42})
    assert ref.key.startswith("test-app/ssn-1/") and ref.version == 1 and ref.endpoint == srv.endpoint
    assert flamepy.get_object(ref) == {"message": "Hello, Flame!", "value": 42}
    assert ObjectRef.decode(ref.encode()) == ref

    refs = [ref]
    for i in range(5):
        refs.append(flamepy.core.patch_object(refs[-1], {"index": i, "blob": b"\x00\xff" * i, "none": None}))
    assert [r.version for r in refs] == [1, 2, 3, 4, 5, 6] and {r.key for r in refs} == {ref.key}
    got = flamepy.get_object(ref, deserializer=_deltas)
    assert got["base"]["value"] == 42 and [d["index"] for d in got["deltas"]] == [0, 1, 2, 3, 4]
    assert got["deltas"][3]["blob"] == b"\x00\xff" * 3
    assert flamepy.get_object(ref) == {"message": "Hello, Flame!", "value": 42}   # base only, no deserializer

    updated = flamepy.update_object(ref, {"count": 1})
    assert (updated.key, updated.version) == (ref.key, 7)
    assert flamepy.get_object(ref, deserializer=_deltas) == {"base": {"count": 1}, "deltas": []}

    class Complex:   # defined here: cloudpickle carries it by value
        def __init__(self, name):
            self.name = name

    assert flamepy.get_object(flamepy.put_object("test-app/ssn-1", Complex("x"))).name == "x"
    # update_object of a missing key creates it, at version 1 (as 0.6)
    fresh = flamepy.update_object(ObjectRef(srv.endpoint, "test-app/ssn-1/made-by-update"), "made")
    assert fresh.version == 1 and flamepy.get_object(fresh) == "made"
    with pytest.raises(ValueError, match="Object not found"):
        flamepy.core.patch_object(ObjectRef(srv.endpoint, "test-app/nonexistent/object"), {"delta": 1})


def test_get_returns_a_fresh_object_each_time(srv):
    ref = flamepy.put_object("test-app/fresh", {"items": [1]})
    first = flamepy.get_object(ref)
    first["items"].append("mutated by the caller")
    assert flamepy.get_object(ref) == {"items": [1]}   # 0.6.0 handed back its cached instance


def test_incremental_get_reads_only_what_changed(srv, other):
    base = {"weights": os.urandom(1024 * KIB)}
    ref = flamepy.put_object("test-app/incremental", base)
    forced = ObjectRef(ref.endpoint, ref.key, 0)
    cache.stats(reset=True)
    assert flamepy.get_object(forced, deserializer=_deltas)["base"] == base      # version 0: everything
    full = cache.stats(reset=True)
    assert (full.full, full.patches, full.not_modified) == (1, 0, 0) and full.bytes_fetched > 1024 * KIB

    # Another client appends two 1 KiB deltas; this process kept version 1 and reads only those two.
    d1, d2 = cache._dumps(os.urandom(KIB)), cache._dumps(os.urandom(KIB))
    for d in (d1, d2):
        _runtime.run(cache._patch(other, ref.key, d))
    server_before = _server_bytes_out(srv)
    got = flamepy.get_object(ref, deserializer=_deltas)
    server_after = _server_bytes_out(srv)
    inc = cache.stats(reset=True)
    assert got["base"] == base and [cache._dumps(d) for d in got["deltas"]] == [d1, d2]
    assert (inc.full, inc.patches, inc.not_modified) == (0, 1, 0)
    assert len(d1) + len(d2) <= inc.bytes_fetched <= len(d1) + len(d2) + 512   # the deltas + a small head
    assert server_after - server_before < len(d1) + len(d2) + 2 * KIB           # framing of 2 replies

    # Nothing changed: the head alone.
    flamepy.get_object(ref)
    same = cache.stats(reset=True)
    assert same.not_modified == 1 and same.bytes_fetched < 100

    # Our own patch is kept as written: the next read is "not modified", not a fetch of the delta.
    flamepy.core.patch_object(ref, "own delta")
    assert flamepy.get_object(ref, deserializer=_deltas)["deltas"][-1] == "own delta"
    assert cache.stats(reset=True).not_modified == 1

    # Another client replaces the base: the kept deltas are stale, the next read is a full one.
    _runtime.run(cache._install(other, ref.key, cache._dumps({"weights": b"new"}), cache._PICKLED))
    assert flamepy.get_object(ref, deserializer=_deltas) == {"base": {"weights": b"new"}, "deltas": []}
    replaced = cache.stats(reset=True)
    assert replaced.full == 1 and replaced.bytes_fetched < 2 * KIB


def test_concurrent_patches_lose_nothing(srv):
    ref = flamepy.put_object("test-app/contended", [])
    writers, each = 8, 25

    def patch(w):
        for i in range(each):
            flamepy.core.patch_object(ref, (w, i))

    threads = [threading.Thread(target=patch, args=(w,)) for w in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    deltas = flamepy.get_object(ObjectRef(ref.endpoint, ref.key, 0), deserializer=lambda b, d: d)
    assert sorted(deltas) == sorted((w, i) for w in range(writers) for i in range(each))
    for w in range(writers):   # each writer's deltas in its own order
        assert [i for ww, i in deltas if ww == w] == list(range(each))
    assert flamepy.core.patch_object(ref, "last").version == 1 + writers * each + 1


def test_reads_racing_updates_see_whole_versions(srv):
    """Another client (its own connection and event loop) replaces a chunked base over and over, each
    update dropping the parts it replaced; every read meanwhile returns one whole version, never a mix
    or a missing part (a read that finds parts gone starts over)."""
    import asyncio

    def value(i: int) -> bytes:
        return i.to_bytes(4, "big") * (100 * KIB)   # 400 KiB: three blob chunks

    ref = flamepy.put_object("test-app/racing", value(0))
    updates, done = 60, threading.Event()
    errors: list = []

    async def replace_all():
        store = await Store(srv.endpoint, client_options={}).connect()
        try:
            for i in range(1, updates + 1):
                await cache._install(store, ref.key, cache._dumps(value(i)), cache._PICKLED)
        finally:
            await store.close()

    def writer():
        try:
            asyncio.run(replace_all())
        except Exception as exc:   # surfaced by the assertion below
            errors.append(exc)
        finally:
            done.set()

    t = threading.Thread(target=writer)
    t.start()
    seen = set()
    while not done.is_set() and len(seen) < 1000:
        got = flamepy.get_object(ObjectRef(ref.endpoint, ref.key, 0))
        i = int.from_bytes(got[:4], "big")
        assert got == value(i)
        seen.add(i)
    t.join(60)
    assert not errors
    assert flamepy.get_object(ref) == value(updates)


def test_large_objects_and_files(srv, tmp_path):
    big = os.urandom(3 * 1024 * KIB)   # many KV values
    ref = flamepy.put_object("test-app/files", big)
    assert flamepy.get_object(ObjectRef(ref.endpoint, ref.key, 0)) == big
    big_delta = os.urandom(700 * KIB)
    flamepy.core.patch_object(ref, big_delta)
    assert flamepy.get_object(ObjectRef(ref.endpoint, ref.key, 0), deserializer=lambda b, d: d) == [big_delta]

    src = tmp_path / "pkg.tar.gz"
    src.write_bytes(os.urandom(5 * 1024 * KIB + 17))
    up = flamepy.core.upload_object("test-app/pkg/pkg.tar.gz", str(src))
    assert (up.key, up.version) == ("test-app/pkg/pkg.tar.gz", 1)
    assert flamepy.core.upload_object("test-app/pkg/pkg.tar.gz", str(src)).version == 2   # replaced
    generated = flamepy.core.upload_object("test-app/pkg", str(src))
    assert ObjectKey.from_key(generated.key).object_id != "pkg.tar.gz"
    dest = tmp_path / "out" / "pkg.tar.gz"
    flamepy.core.download_object(up, str(dest))
    assert dest.read_bytes() == src.read_bytes()
    small = tmp_path / "small.txt"
    small.write_bytes(b"hello")
    assert flamepy.get_object(flamepy.core.upload_object("test-app/pkg", str(small))) == b"hello"  # raw bytes

    with pytest.raises(ValueError, match="has 1 deltas"):
        flamepy.core.download_object(ref, str(tmp_path / "never"))
    with pytest.raises(ValueError, match="Object not found"):
        flamepy.core.download_object(ObjectRef(srv.endpoint, "test-app/pkg/missing"), str(tmp_path / "never"))
    assert not (tmp_path / "never").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".download")]
    with pytest.raises(FileNotFoundError):
        flamepy.core.upload_object("test-app/pkg", str(tmp_path / "no-such-file"))
    with pytest.raises(ValueError, match="Invalid key format"):
        flamepy.core.upload_object(f"test-app/{WILDCARD_SESSION}", str(src))


def test_delete_objects_removes_every_part(srv):
    store = flamepy.core.client.connection().store
    keys = lambda prefix: _runtime.run(store.scan(prefix))   # noqa: E731
    blobs_before = len(keys("blob/"))
    a1 = flamepy.put_object("del-app/a", os.urandom(400 * KIB))
    a1 = flamepy.core.patch_object(a1, os.urandom(300 * KIB))
    a2 = flamepy.put_object("del-app/a", 1)
    b1 = flamepy.put_object("del-app/b", 2)
    c1 = flamepy.put_object("other-app/a", 3)
    flamepy.get_object(a1)   # kept by this process: a delete must drop the kept copy too
    assert len(keys("blob/")) > blobs_before

    assert flamepy.core.delete_objects(a2.key) == 1
    assert flamepy.core.delete_objects("del-app/a") == 1
    assert flamepy.core.delete_objects("del-app/*") == 1
    assert flamepy.core.delete_objects("del-app/*") == 0
    for ref in (a1, a2, b1):
        with pytest.raises(ValueError, match="Object not found"):
            flamepy.get_object(ref)
    assert flamepy.get_object(c1) == 3
    assert keys("obj/{del-app/") == [] and keys("objd/{del-app/") == []
    assert len(keys("blob/")) == blobs_before


def test_keys_are_checked(srv):
    assert ObjectKey.from_path("a/b/c") == ObjectKey("a", "b", "c")
    assert ObjectKey.for_shared("a").to_prefix() == "a/shared"
    assert ObjectKey.for_all_sessions("a").matches_key("a/s/o") and not ObjectKey("a", "s").matches_key("a/t/o")
    assert ObjectKey.from_prefix("a/b").with_generated_id().to_prefix() == "a/b"
    for bad in ["a", "a/b/c/d", "*/b", "a/../c", "a/b/*", "a\\x/b", "a//b", "a/" + "s" * 300, "a/b\n"]:
        with pytest.raises(ValueError):
            ObjectKey.from_path(bad)
    with pytest.raises(ValueError, match="cannot have object_id"):
        ObjectKey("a", WILDCARD_SESSION, "o")
    for bad_prefix in ["bad-prefix", "a/b/c", "a/*"]:
        with pytest.raises(ValueError):
            flamepy.put_object(bad_prefix, 1)
    with pytest.raises(ValueError):
        flamepy.get_object(ObjectRef(srv.endpoint, "a/b"))
    with pytest.raises(ValueError, match="invalid ObjectRef bytes"):
        ObjectRef.decode(b"\x00garbage")


def test_delta_limit_and_folding(srv, monkeypatch):
    monkeypatch.setattr(cache, "MAX_DELTAS", 3)
    ref = flamepy.put_object("test-app/limit", 0)
    for i in range(3):
        ref = flamepy.core.patch_object(ref, i)
    with pytest.raises(ValueError, match="has 3 deltas, the limit: update_object it"):
        flamepy.core.patch_object(ref, 3)
    folded = flamepy.get_object(ref, deserializer=lambda base, deltas: base + sum(deltas))
    ref = flamepy.update_object(ref, folded)
    assert flamepy.core.patch_object(ref, 10).version == ref.version + 1
    assert flamepy.get_object(ref, deserializer=lambda base, deltas: base + sum(deltas)) == 13


def test_cache_endpoint_names_another_flo_server(srv, tmp_path, monkeypatch, flame_helpers):
    """FLAME_CACHE_ENDPOINT (or cache.endpoint) naming a flo-server puts objects there; Flame's grpc://
    cache service address means the cluster's own server."""
    second = ServerProc(tmp_path / "second").start()
    try:
        monkeypatch.setenv("FLAME_CACHE_ENDPOINT", f"flo://{second.endpoint}")
        flame_helpers.reset_default_connection()
        ref = flamepy.put_object("far-app/s", "far away")
        assert ref.endpoint == second.endpoint and flamepy.get_object(ref) == "far away"
        far = _runtime.run(Store(second.endpoint, client_options={}).connect())
        try:
            assert _runtime.run(far.get(R.k_obj(ref.key))) is not None
        finally:
            _runtime.run(far.close())
        assert _runtime.run(flamepy.core.client.connection().store.get(R.k_obj(ref.key))) is None

        monkeypatch.setenv("FLAME_CACHE_ENDPOINT", "grpc://127.0.0.1:9090")
        flame_helpers.reset_default_connection()
        assert flamepy.put_object("near-app/s", 1).endpoint == srv.endpoint
    finally:
        monkeypatch.delenv("FLAME_CACHE_ENDPOINT")
        flame_helpers.reset_default_connection()
        for store in list(cache._stores.values()):
            _runtime.run(store.close())
        cache._stores.clear()
        second.stop()

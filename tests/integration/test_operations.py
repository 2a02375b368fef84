"""Operating a real flo-server: /metrics scraped with prometheus_client's parser, health checks,
and the Redis-side tools (INFO, CLIENT LIST/KILL, SLOWLOG, LATENCY, CONFIG GET) through redis-py."""

from __future__ import annotations

import asyncio
import base64
import socket
import urllib.error
import urllib.request

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from flo_client import FloClient, StreamGroupReadOptions
from tests.helpers import recv_until, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def get(port: int, path: str, auth: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def scrape(port: int, auth: str | None = None) -> dict:
    """{family name: {(sample name, frozen labels): value}}"""
    status, body = get(port, "/metrics", auth)
    assert status == 200
    out: dict = {}
    for fam in text_string_to_metric_families(body.decode()):
        out[fam.name] = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in fam.samples}
    return out


def value(fams: dict, family: str, sample: str | None = None, **labels) -> float:
    want = tuple(sorted(labels.items()))
    for (name, lab), v in fams[family].items():
        if (sample is None or name == sample) and all(item in lab for item in want):
            return v
    return 0.0


@pytest.fixture(params=["fastpath", "dispatcher"])
def http_server(request, make_server, monkeypatch):
    """One server with an HTTP port, twice: C fast paths on and off (both must count)."""
    if request.param == "dispatcher":
        monkeypatch.setenv("FLO_NO_FASTPATH", "1")
    return make_server("--http-port", "-1")


def test_health_checks(http_server):
    assert get(http_server.http_port, "/healthz") == (200, b"ok\n")
    assert get(http_server.http_port, "/readyz") == (200, b"ready\n")
    assert get(http_server.http_port, "/nope")[0] == 404


async def test_metrics_count_the_load(http_server):
    port = http_server.http_port
    before = scrape(port)
    async with FloClient(http_server.endpoint, namespace="m") as c:
        await asyncio.gather(*(c.kv.put(f"k{i}", b"v" * 100) for i in range(300)))
        await asyncio.gather(*(c.kv.get(f"k{i}") for i in range(200)))
        assert await c.kv.get("missing") is None
        for i in range(7):
            await c.queue.enqueue("jobs", b"j")
        leased = await c.queue.dequeue("jobs", 2)
        for i in range(5):
            await c.stream.append("events", b"e")
        await c.stream.group_create("events", "g")  # from the beginning
        got = await c.stream.group_read("events", "g", "worker-1", StreamGroupReadOptions(count=2))
        r = redis.Redis(port=http_server.port)
        r.set("rk", "v")
        r.execute_command("INCR", "rn")  # (redis-py's incr() sends INCRBY)
        r.mset({"a": 1, "b": 2})
        fams = scrape(port)
        assert leased
    d = lambda family, **l: value(fams, family, "flo_commands_total", **l) - value(before, family, "flo_commands_total", **l)  # noqa: E731
    assert d("flo_commands", protocol="flo", op="kv_put", status="ok") == 300
    assert d("flo_commands", protocol="flo", op="kv_get", status="ok") == 200
    assert d("flo_commands", protocol="flo", op="kv_get", status="not_found") == 1
    assert d("flo_commands", protocol="flo", op="queue_enqueue", status="ok") == 7
    assert d("flo_commands", protocol="flo", op="stream_append", status="ok") == 5
    assert d("flo_commands", protocol="resp", op="set", status="ok") == 1
    assert d("flo_commands", protocol="resp", op="incr", status="ok") == 1
    assert d("flo_commands", protocol="resp", op="mset", status="ok") == 1
    # sampled latency: about one request in 32, never more than were served
    timed = value(fams, "flo_command_duration_seconds", "flo_command_duration_seconds_count", op="kv_put")
    assert 0 < timed <= 300
    assert value(fams, "flo_kv_keys", namespace="m") == 300
    assert value(fams, "flo_queue_messages", queue="jobs", state="ready") == 5
    assert value(fams, "flo_queue_messages", queue="jobs", state="inflight") == 2
    assert value(fams, "flo_stream_length", stream="events") == 5
    assert len(got.records) == 2
    assert value(fams, "flo_stream_group_pending", stream="events", group="g") == 2
    assert value(fams, "flo_stream_group_lag", stream="events", group="g") == 3
    assert value(fams, "flo_bytes_in", "flo_bytes_in_total") > 300 * 100
    assert value(fams, "flo_bytes_out", "flo_bytes_out_total") > 200 * 100
    assert value(fams, "flo_connections", protocol="resp") >= 1
    assert value(fams, "flo_log_bytes", "flo_log_bytes_total") > 300 * 100  # every write went to the log
    assert value(fams, "flo_fsync_duration_seconds", "flo_fsync_duration_seconds_count") >= 0
    for family in ("flo_snapshots", "flo_stream_group_lag", "flo_stream_group_pending", "flo_action_runs",
                   "flame_tasks", "flame_instances", "flo_ready", "flo_resident_memory_bytes"):
        assert family in fams, family


def test_metrics_need_credentials_when_the_server_has_users(make_server):
    sp = make_server("--http-port", "-1", "--requirepass", "pw")
    assert get(sp.http_port, "/healthz")[0] == 200  # health checks stay open for load balancers
    assert get(sp.http_port, "/metrics")[0] == 401
    assert get(sp.http_port, "/metrics", "default:wrong")[0] == 401
    assert "flo_commands" in scrape(sp.http_port, "default:pw")


async def test_flame_gauges_count_open_sessions_only(make_server):
    """flame_tasks sums the task counters of open sessions (``open/{id}`` in the flame namespace)."""
    from flamepy.core import records as R

    sp = make_server("--http-port", "-1")
    async with FloClient(sp.endpoint, namespace=R.NAMESPACE) as c:
        for sid, app, pending in (("s-1", "calc", 3), ("s-2", "calc", 4), ("s-3", "other", 5)):
            await c.kv.put(R.k_open(sid), app.encode())
            await c.kv.put(R.k_cnt(sid, "pending"), str(pending).encode())
        await c.kv.put(R.k_cnt("s-9", "pending"), b"100")  # a closed session: no open/ key
        await c.kv.put("opened-elsewhere", b"calc")  # shares the prefix "open" but not "open/"
    fams = scrape(sp.http_port)
    assert value(fams, "flame_tasks", app="calc", state="pending") == 7
    assert value(fams, "flame_tasks", app="other", state="pending") == 5


def test_info_client_slowlog_latency_config(make_server):
    sp = make_server("--http-port", "-1")
    r = redis.Redis(port=sp.port, decode_responses=True)
    r.client_setname("ops-test")
    other = redis.Redis(port=sp.port)
    other.ping()
    info = r.info("all")
    for field in ("redis_version", "uptime_in_seconds", "connected_clients", "used_memory", "aof_enabled",
                  "total_commands_processed", "total_net_input_bytes", "role"):
        assert field in info, field
    assert info["connected_clients"] >= 2
    r.set("x", 1)
    r.set("with-ttl-1", 1, ex=600)
    r.set("with-ttl-2", 1, px=600_000)
    db0 = r.info("keyspace")["db0"]
    assert db0["keys"] >= 3 and db0["expires"] == 2
    clients = r.client_list()
    assert any(c["name"] == "ops-test" for c in clients) and len(clients) >= 2
    victim = next(c for c in clients if c["name"] != "ops-test")
    assert r.client_kill_filter(_id=victim["id"]) == 1
    wait_until(lambda: all(c["id"] != victim["id"] for c in r.client_list()))
    with pytest.raises(redis.ResponseError, match="No such client"):
        redis.Redis(port=sp.port).client_kill("10.9.9.9:1")
    assert r.config_get("slowlog-log-slower-than") == {"slowlog-log-slower-than": "10000"}
    assert r.config_set("slowlog-log-slower-than", 0)
    r.slowlog_reset()
    r.mset({"s1": "a", "s2": "b"})
    with socket.create_connection(("127.0.0.1", sp.port), timeout=10) as raw:  # refused, and still logged
        raw.sendall(b"*3\r\n$4\r\nAUTH\r\n$7\r\nsomeone\r\n$11\r\nsecret-pass\r\n")
        assert recv_until(raw, b"\r\n").startswith(b"-ERR AUTH")
    log = r.slowlog_get(-1)
    assert any(e["command"].startswith(b"MSET s1 a") for e in log)  # (redis-py never decodes it)
    assert any(e["command"] == b"AUTH (redacted)" for e in log) and not any(b"secret-pass" in e["command"] for e in log)
    assert r.slowlog_len() >= 1
    latest = r.execute_command("LATENCY", "LATEST")
    assert latest and latest[0][0] == "command"
    assert r.config_get("flo-fsync")["flo-fsync"] == "everysec"
    assert r.dbsize() >= 1

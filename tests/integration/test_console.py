"""The web console and its JSON API (flo_server/api.py, flo_server/console/) against real servers.

One server with data in every primitive and a real flamepy session (its embedded
executor runs the service) is shown in headless Chromium (Debian's ``chromium``,
driven by Playwright; no browser download): every page must show what was made,
and a screenshot of each goes to ``docs/console/<page>.png`` (with
``FLO_UPDATE_SCREENSHOTS=1``; a temp dir otherwise). The API is also
checked over plain HTTP, with ``--requirepass`` (401 / 200) and with a users file
(a reader's requeue is refused with 403, in the API and on the queue page).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from flo_server.auth import hash_password
from tests.helpers import ROOT, ServerProc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
# Screenshots refresh docs/console/ with FLO_UPDATE_SCREENSHOTS=1; a plain run keeps them in a temp dir,
# so `make test` leaves the tree as it found it.
SHOTS = ROOT / "docs" / "console" if os.environ.get("FLO_UPDATE_SCREENSHOTS") else Path(tempfile.mkdtemp(prefix="console-"))
NS = "shop"
QUEUE = "console-jobs"
APP = "console-app"

SERVICE = '''\
import flamepy

class Service(flamepy.FlameService):
    def on_task_invoke(self, context):
        if context.input == b"fail":
            raise RuntimeError("console demo: this task fails")
        return context.input

flamepy.run(Service())
'''


# --- HTTP helpers -------------------------------------------------------------------------------------------


def http(port: int, path: str, *, auth: tuple[str, str] | None = None, body: dict | None = None) -> tuple[int, dict]:
    """(status, JSON body) of one request; errors are answers too."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method="POST" if body is not None else "GET",
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"} if body is not None else {})
    if auth is not None:
        req.add_header("Authorization", "Basic " + base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        data = e.read()
        try:
            return e.code, json.loads(data)
        except ValueError:
            return e.code, {"raw": data.decode("latin-1")}


def ok(port: int, path: str, **kw) -> dict:
    status, data = http(port, path, **kw)
    assert status == 200, (path, status, data)
    return data


# --- the populated server -----------------------------------------------------------------------------------


async def _populate(endpoint: str, **login) -> dict:
    from flo_client import FloClient
    from flo_client.action import ActionRegisterOptions, WorkerRegisterOptions
    from flo_client.queue import DequeueOptions, EnqueueOptions, NackOptions
    from flo_client.stream import StreamGroupReadOptions

    async with FloClient(endpoint, namespace=NS, **login) as c:
        for i in range(6):
            body = json.dumps({"order": 1000 + i, "sku": f"sku-{i % 3}", "qty": i + 1}).encode()
            await c.queue.enqueue(QUEUE, body, EnqueueOptions(priority=i % 2))
        await c.queue.enqueue(QUEUE, b"later", EnqueueOptions(delay_ms=3_600_000))
        got = await c.queue.dequeue(QUEUE, 2, DequeueOptions(lease_ms=600_000))
        await c.queue.nack(QUEUE, [got.messages[0].seq], NackOptions(to_dlq=True))  # dead-lettered
        await c.queue.enqueue("emails", b"welcome alice")
        for v in (b'{"name": "alice", "plan": "free"}', b'{"name": "alice", "plan": "pro"}',
                  b'{"name": "alice", "plan": "team"}'):
            await c.kv.put("user:1", v)
        await c.kv.put("user:2", b'{"name": "bob"}')
        await c.kv.put("session:42", b"token-xyz", ttl_seconds=3600)
        await c.kv.put("blob:1", bytes(range(200)))
        for i in range(5):
            await c.stream.append("orders", json.dumps({"order": i}).encode())
        await c.stream.group_create("orders", "billing")
        await c.stream.group_read("orders", "billing", "biller-1", StreamGroupReadOptions(count=2))
        await c.action.register("resize", options=ActionRegisterOptions(timeout_ms=60_000, max_retries=3))
        await c.action.invoke("resize", b"img-1")
        await c.action.invoke("resize", b"img-2")
        await c.worker.register("worker-1", ["resize"], WorkerRegisterOptions(concurrency=4))
        return {"dlq_seq": got.messages[0].seq}


def _flame_session(endpoint: str, work: Path) -> tuple[object, str]:
    """An application, an open session, one task that succeeded and one that failed (the server's executor)."""
    import flamepy
    from flamepy import FlameError, SessionAttributes

    work.mkdir(parents=True, exist_ok=True)
    (work / "svc.py").write_text(SERVICE)
    conn = flamepy.connect(endpoint)
    conn.register_application(APP, {"command": sys.executable, "arguments": ["svc.py"],
                                    "working_directory": str(work)})
    session = conn.create_session(SessionAttributes(application=APP))
    assert session.invoke(b"ok") == b"ok"
    with pytest.raises(FlameError, match="console demo"):
        session.invoke(b"fail")
    return conn, session.id


@pytest.fixture(scope="module")
def console(tmp_path_factory):
    d = tmp_path_factory.mktemp("console")
    sp = ServerProc(d / "data", "--http-port", "-1", executor=True).start()
    conn = None
    try:
        info = asyncio.run(_populate(sp.endpoint))
        conn, sid = _flame_session(sp.endpoint, d / "app")
        info.update(sid=sid)
        yield sp, info
    finally:
        if conn is not None:
            conn.close()
        sp.stop()


# --- the API over HTTP --------------------------------------------------------------------------------------


def test_api_shows_every_primitive(console):
    sp, info = console
    port = sp.http_port
    me = ok(port, "/api/session")
    assert me["user"] == "default" and me["admin"] and me["csrf"]

    o = ok(port, "/api/overview")
    for k in ("ops_per_s", "latency", "connections", "memory", "log", "fsync", "uptime_s", "info"):
        assert k in o, k
    assert o["commands_total"] > 20 and o["memory"]["rss_bytes"] > 1 << 20
    assert o["log"]["last_lsn"] > 20 and o["fsync"] is not None and o["info"]["version"]

    names = {n["name"]: n for n in ok(port, "/api/namespaces")["namespaces"]}
    assert names[NS]["queues"] == 2 and names[NS]["streams"] == 1 and names[NS]["kv_keys"] == 4
    assert names["flame"]["kv_keys"] > 0

    qs = {q["name"]: q for q in ok(port, f"/api/queues?ns={NS}")["queues"]}
    assert (qs[QUEUE]["ready"], qs[QUEUE]["inflight"], qs[QUEUE]["delayed"], qs[QUEUE]["dlq"]) == (4, 1, 1, 1)
    q = ok(port, f"/api/queue?ns={NS}&name={QUEUE}&peek=3")
    assert len(q["ready"]) == 3 and [m["seq"] for m in q["dlq"]] == [info["dlq_seq"]]
    assert json.loads(q["dlq"][0]["payload"]["data"])["order"] == 1000
    assert http(port, f"/api/queue?ns={NS}&name=nosuch")[0] == 404

    keys = ok(port, f"/api/kv?ns={NS}&prefix=user:")["keys"]
    assert [k["key"] for k in keys] == ["user:1", "user:2"]
    k = ok(port, f"/api/kv/key?ns={NS}&key=user:1")
    assert json.loads(k["value"]["data"])["plan"] == "team" and k["ttl_ms"] is None
    assert [json.loads(h["value"]["data"])["plan"] for h in k["history"]] == ["pro", "free"]
    assert 0 < ok(port, f"/api/kv/key?ns={NS}&key=session:42")["ttl_ms"] <= 3_600_000
    b = ok(port, f"/api/kv/key?ns={NS}&key_b64=" + base64.b64encode(b"blob:1").decode())
    assert b["value"]["encoding"] == "base64" and base64.b64decode(b["value"]["data"]) == bytes(range(200))
    page = ok(port, f"/api/kv?ns={NS}&limit=2")
    assert page["more"] and len(page["keys"]) == 2
    rest = ok(port, f"/api/kv?ns={NS}&limit=10&after={page['next']}")
    assert len(page["keys"]) + len(rest["keys"]) == 4 and not rest["more"]

    (s,) = ok(port, f"/api/streams?ns={NS}")["streams"]
    assert s["name"] == "orders" and s["length"] == 5
    (g,) = s["groups"]
    assert (g["name"], g["lag"], g["pending"]) == ("billing", 3, 2)

    a = ok(port, f"/api/actions?ns={NS}")
    assert [x["name"] for x in a["actions"]] == ["resize"] and a["actions"][0]["runs"] == {"pending": 2}
    assert [w["id"] for w in a["workers"]] == ["worker-1"] and len(a["recent_runs"]) == 2

    f = ok(port, "/api/flame")
    from flamepy.apps import BUILTIN_APPLICATIONS  # flmrun & co., registered by the executor, are listed too
    assert [x["name"] for x in f["applications"] if x["name"] not in BUILTIN_APPLICATIONS] == [APP]
    (ssn,) = [x for x in f["sessions"] if x["id"] == info["sid"]]
    assert ssn["state"] == "open" and ssn["counters"]["succeed"] == 1 and ssn["counters"]["failed"] == 1
    (err,) = f["task_errors"]
    assert err["session"] == info["sid"] and err["state"] == "failed" and "console demo" in err["message"]
    tasks = ok(port, f"/api/flame/session?id={info['sid']}")["tasks"]
    assert [t["state"] for t in tasks] == ["succeed", "failed"]
    from flamepy.core.records import k_ssn
    rec = ok(port, f"/api/kv/key?ns=flame&key={urllib.parse.quote(k_ssn(info['sid']))}")
    assert rec["value"]["decoded"]["app"] == APP  # msgpack records are shown decoded

    conns = ok(port, "/api/connections")
    assert conns["all_shown"] and any(c["protocol"] == "flo" for c in conns["connections"])

    # bad requests
    assert http(port, "/api/nosuch")[0] == 404
    assert http(port, f"/api/kv?ns={NS}&limit=x")[0] == 400
    assert http(port, "/api/queue/requeue")[0] == 405
    st, data = http(port, "/api/queue/requeue", body={"ns": NS, "name": QUEUE, "seqs": [info["dlq_seq"]]})
    assert st == 403 and "token" in data["error"]  # no CSRF token: refused, nothing requeued
    assert ok(port, f"/api/queue?ns={NS}&name={QUEUE}")["stats"]["dlq"] == 1
    st, data = http(port, "/api/queue/requeue", body={"ns": NS, "name": QUEUE, "seqs": ["x"], "csrf": me["csrf"]})
    assert st == 400


def test_requirepass_needs_basic_auth(tmp_path):
    sp = ServerProc(tmp_path / "data", "--http-port", "-1", "--requirepass", "pw").start()
    try:
        port = sp.http_port
        status, _ = http(port, "/api/overview")
        assert status == 401
        assert http(port, "/api/overview", auth=("default", "wrong"))[0] == 401
        assert ok(port, "/api/overview", auth=("default", "pw"))["info"]["auth_required"] is True
        assert ok(port, "/api/session", auth=("default", "pw"))["user"] == "default"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            assert r.status == 200  # health checks need no credentials
        assert http(port, "/")[0] == 401  # nor does the console's page load without them
    finally:
        sp.stop()


USERS = '''
[users.admin]
password = "{admin}"
allow = ["*"]

[users.reader]                      # reads everything, no admin right
password = "{reader}"
[[users.reader.allow]]
rights = ["read"]

[users.alice]                       # namespace "a" only
password = "{alice}"
[[users.alice.allow]]
namespaces = ["a"]
rights = ["read", "write"]
'''


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    d = tmp_path_factory.mktemp("secured")
    users = d / "users.toml"
    users.write_text(USERS.format(**{u: hash_password("pw", log2_n=10) for u in ("admin", "reader", "alice")}))
    sp = ServerProc(d / "data", "--http-port", "-1", "--users", str(users)).start()
    try:
        info = asyncio.run(_populate(sp.endpoint, username="admin", password="pw"))
        yield sp, info
    finally:
        sp.stop()


def test_requeue_needs_admin(secured):
    sp, info = secured
    port = sp.http_port
    assert http(port, "/api/queues")[0] == 401
    reader = ok(port, f"/api/session?ns={NS}", auth=("reader", "pw"))
    assert reader["user"] == "reader" and not reader["admin"] and not reader["server_admin"]
    assert not ok(port, f"/api/queue?ns={NS}&name={QUEUE}", auth=("reader", "pw"))["can_requeue"]
    body = {"ns": NS, "name": QUEUE, "seqs": [info["dlq_seq"]], "csrf": reader["csrf"]}
    status, data = http(port, "/api/queue/requeue", auth=("reader", "pw"), body=body)
    assert status == 403 and "admin" in data["error"], data
    assert ok(port, f"/api/queue?ns={NS}&name={QUEUE}", auth=("admin", "pw"))["stats"]["dlq"] == 1
    # alice sees only her namespace
    assert [n["name"] for n in ok(port, "/api/namespaces", auth=("alice", "pw"))["namespaces"]] == []
    assert http(port, f"/api/queue?ns={NS}&name={QUEUE}", auth=("alice", "pw"))[0] == 403
    assert ok(port, "/api/queues", auth=("alice", "pw"))["queues"] == []
    assert http(port, "/api/flame", auth=("alice", "pw"))[0] == 403
    conns = ok(port, "/api/connections", auth=("alice", "pw"))
    assert not conns["all_shown"] and conns["connections"] == []
    # the admin may
    status, data = http(port, "/api/queue/requeue", auth=("admin", "pw"), body=body)
    assert (status, data["requeued"]) == (200, 1)
    q = ok(port, f"/api/queue?ns={NS}&name={QUEUE}", auth=("admin", "pw"))
    assert q["stats"]["dlq"] == 0 and q["stats"]["ready"] == 5


# --- the console in a browser -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no chromium binary (make system-deps installs Debian's chromium)")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is not installed (pip install -e '.[test]')")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


def _page(browser, **ctx):
    # bypass_csp: Playwright's wait_for_function evaluates strings, which the console's CSP forbids
    context = browser.new_context(viewport={"width": 1360, "height": 900}, bypass_csp=True, **ctx)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    return context, page, errors


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def _load(endpoint: str, seconds: float) -> None:
    """Some traffic, so the overview's figures move."""
    from flo_client import FloClient

    async def run() -> None:
        async with FloClient(endpoint, namespace="load") as c:
            end = time.monotonic() + seconds
            i = 0
            while time.monotonic() < end:
                await asyncio.gather(*(c.kv.put(f"k{(i + j) % 50}", b"v" * 64) for j in range(20)))
                await asyncio.gather(*(c.kv.get(f"k{(i + j) % 50}") for j in range(20)))
                i += 20
                await asyncio.sleep(0.005)

    try:
        asyncio.run(run())
    except Exception:  # noqa: BLE001 - the server went away (a failed test): the load just stops
        pass


def test_console_pages(console, browser):
    sp, info = console
    base = f"http://127.0.0.1:{sp.http_port}/"
    context, page, errors = _page(browser)
    try:
        load = threading.Thread(target=_load, args=(sp.endpoint, 4.0), daemon=True)
        load.start()
        page.goto(base)
        page.wait_for_selector("text=Operations / s")
        page.wait_for_function("document.querySelectorAll('.spark polyline').length >= 2", timeout=10_000)
        page.wait_for_timeout(2500)  # a few live refreshes
        ops = page.locator(".stat", has_text="Operations / s").locator(".value").inner_text()
        assert ops not in ("", "–")
        assert page.locator("text=Log writes / s").count() == 1
        _shot(page, "overview")
        load.join(10)

        page.goto(base + "#/connections")
        page.wait_for_selector("#main table >> text=flo")
        _shot(page, "connections")

        page.goto(base + f"#/kv?ns={NS}")
        page.wait_for_selector("text=user:1")
        page.click("td >> text=user:1")
        page.wait_for_selector(".detail >> text=Earlier versions")
        page.wait_for_function("""document.querySelector('.detail pre.value').textContent.includes('"plan": "team"')""")
        assert page.locator(".detail tbody tr").count() >= 2 + 5  # history rows below the key's own table
        page.fill("#prefix", "session:")
        page.click("button[type=submit]")
        page.wait_for_function("!document.body.innerText.includes('user:2')")
        page.click("td >> text=session:42")
        page.wait_for_selector(".detail >> text=expires")
        page.fill("#prefix", "user:")
        page.click("button[type=submit]")
        page.wait_for_selector("td >> text=user:2")
        page.click("td >> text=user:1")
        page.wait_for_selector(".detail >> text=Earlier versions")
        _shot(page, "kv")

        page.goto(base + f"#/queues?ns={NS}&name={QUEUE}")
        page.wait_for_selector(f"td >> text={QUEUE}")
        page.wait_for_selector("text=Dead-letter queue")
        dlq = page.locator(".card", has_text="Dead-letter queue")
        dlq.locator("tbody tr").first.wait_for()
        assert dlq.locator("tbody tr").count() == 1
        assert page.locator(".card", has_text="Next ready").locator("tbody tr").count() == 4
        _shot(page, "queues")
        dlq.locator("tbody input[type=checkbox]").first.check()
        page.click("#requeue")
        page.wait_for_selector("text=Requeued 1 message")
        page.wait_for_selector("text=The DLQ is empty.")
        assert ok(sp.http_port, f"/api/queue?ns={NS}&name={QUEUE}")["stats"]["dlq"] == 0

        page.goto(base + f"#/streams?ns={NS}")
        page.wait_for_selector("text=orders")
        page.wait_for_selector("td >> text=billing")
        _shot(page, "streams")

        page.goto(base + f"#/actions?ns={NS}")
        page.wait_for_selector("td >> text=resize")
        page.wait_for_selector("td >> text=worker-1")
        _shot(page, "actions")

        page.goto(base + "#/flame")
        page.wait_for_selector(f"td >> text={APP}")
        page.wait_for_selector(f"td >> text={info['sid']}")
        page.wait_for_selector("text=console demo: this task fails")
        page.click(f"td >> text={info['sid']}")
        page.wait_for_selector(f"h2 >> text={info['sid']}")
        _shot(page, "flame")
        assert not errors, errors
    finally:
        context.close()


def _run(coro) -> object:
    """asyncio.run on a thread of its own (Playwright's sync API holds this thread's event loop)."""
    out: list = []

    def target() -> None:
        try:
            out.append((True, asyncio.run(coro)))
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            out.append((False, e))

    t = threading.Thread(target=target)
    t.start()
    t.join(30)
    assert out, "timed out"
    good, value = out[0]
    if not good:
        raise value
    return value


async def _dead_letter(endpoint: str, queue: str, **login) -> None:
    from flo_client import FloClient
    from flo_client.queue import NackOptions

    async with FloClient(endpoint, namespace=NS, **login) as c:
        await c.queue.enqueue(queue, b"poison")
        got = await c.queue.dequeue(queue, 1)
        await c.queue.nack(queue, [got.messages[0].seq], NackOptions(to_dlq=True))


def test_console_shows_refused_requeue(secured, browser):
    sp, _ = secured
    _run(_dead_letter(sp.endpoint, "refused-jobs", username="admin", password="pw"))
    base = f"http://127.0.0.1:{sp.http_port}/"
    context, page, errors = _page(browser, http_credentials={"username": "reader", "password": "pw"})
    try:
        page.goto(base + f"#/queues?ns={NS}&name=refused-jobs")
        page.wait_for_selector("text=signed in as reader")
        dlq = page.locator(".card", has_text="Dead-letter queue")
        dlq.locator("tbody tr").first.wait_for()
        page.click("#requeue-all")
        refusal = page.locator(".status-line.refused")
        refusal.wait_for()
        assert "403" in refusal.inner_text() and "admin" in refusal.inner_text()
        assert dlq.locator("tbody tr").count() == 1  # still there
        assert [e for e in errors if "403" not in e] == []  # the browser logs the refused POST itself
    finally:
        context.close()

"""The ``flo`` CLI against a real flo-server: every subcommand run as a subprocess, text and ``--json``
output, exit codes (1 refused, 2 unreachable), follow modes while others write, and the connection
settings (options, ``FLO_URL``, ``FLO_PASSWORD``, the config file) against a password-protected server.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import pytest

from flo_client import FloClient
from flo_client.action_worker import ActionContext, NonRetryableError
from tests.helpers import make_test_ca, parked

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

FLO = Path(sys.executable).parent / "flo"


class Flo:
    """Runs ``flo`` with a home of its own (no config file unless a test writes one) and no FLO_* variables."""

    def __init__(self, endpoint: str | None, home: Path) -> None:
        self.endpoint = endpoint
        self.home = home

    def env(self, extra: dict[str, str] | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLO_") and k != "XDG_CONFIG_HOME"}
        return {**env, "HOME": str(self.home), **(extra or {})}

    def argv(self, args: tuple[str, ...]) -> list[str]:
        return [str(FLO), *(["--url", self.endpoint] if self.endpoint else []), *args]

    def __call__(self, *args: str, rc: int = 0, input: bytes | None = None,
                 env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        # stdin is never a terminal here, so nothing ever prompts for a password
        stdin = {"input": input} if input is not None else {"stdin": subprocess.DEVNULL}
        p = subprocess.run(self.argv(args), capture_output=True, env=self.env(env), timeout=30, **stdin)
        assert p.returncode == rc, f"flo {' '.join(args)} exited {p.returncode}: {p.stdout!r} {p.stderr!r}"
        assert b"Traceback" not in p.stderr, p.stderr.decode()
        return p

    def out(self, *args: str, **kw: Any) -> str:
        return self(*args, **kw).stdout.decode()

    def json(self, *args: str, **kw: Any) -> Any:
        return json.loads(self(*args, "--json", **kw).stdout)

    def err(self, *args: str, rc: int = 1, **kw: Any) -> str:
        """Run a command that must fail; its stderr (one ``flo: ...`` line)."""
        p = self(*args, rc=rc, **kw)
        return p.stderr.decode()

    def popen(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen(self.argv(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=self.env(None))


@pytest.fixture
def flo(server: str, tmp_path: Path) -> Flo:
    return Flo(server, tmp_path)


def with_client(endpoint: str, work: Callable[[FloClient], Awaitable[Any]], **kw: Any) -> Any:
    async def main() -> Any:
        async with FloClient(endpoint, **kw) as client:
            return await work(client)

    return asyncio.run(main())


def finish(proc: subprocess.Popen, timeout: float = 15) -> list[Any]:
    """Wait for a follow-mode ``flo --json`` and return its JSON lines."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err.decode()
    return [json.loads(line) for line in out.decode().splitlines()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- kv ---------------------------------------------------------------------------------------------


def test_kv_get_put_del_scan_history(flo: Flo) -> None:
    assert flo.out("kv", "put", "user:1", "John Doe").startswith("OK version ")
    v1 = flo.json("kv", "put", "user:1", "Jane")["version"]
    assert flo.out("kv", "get", "user:1") == "Jane\n"
    assert flo.out("kv", "get", "user:1", "--version") == f"{v1}\tJane\n"
    assert flo.json("kv", "get", "user:1") == {"key": "user:1", "found": True, "value": "Jane", "version": v1}
    assert flo.out("--json", "kv", "get", "user:1") == flo.out("kv", "get", "user:1", "--json")  # global or per command

    # Refusals: exit 1 and one "flo: ..." line, no traceback.
    assert flo.err("kv", "get", "nope") == "flo: nope: not found\n"
    assert flo(*["kv", "get", "nope", "--json"], rc=1).stdout.startswith(b'{"key":"nope","found":false')
    assert flo.err("kv", "put", "user:1", "x", "--cas", str(v1 + 1000)).startswith("flo: version is")
    assert flo.err("kv", "put", "user:1", "x", "--if-absent").startswith("flo: ")
    v2 = flo.json("kv", "put", "user:1", "Jo", "--cas", str(v1))["version"]
    assert v2 > v1

    blob = bytes(range(256))
    flo("kv", "put", "blob", "-", input=blob)  # VALUE "-" reads stdin
    assert flo("kv", "get", "blob", "--raw").stdout == blob
    assert flo.json("kv", "get", "blob")["value"] == {"base64": base64.b64encode(blob).decode()}
    flo("kv", "put", "session", "s", "--ttl", "3600")
    with_client(flo.endpoint, lambda c: c.kv.put("other:1", b"in another namespace"), namespace="other")

    assert flo.out("kv", "scan", "user:") == "user:1\n"
    assert flo.json("kv", "scan") == {"prefix": "", "keys": ["blob", "session", "user:1"], "truncated": False}
    assert flo.json("kv", "scan", "--limit", "2")["truncated"] is True
    assert flo.json("-n", "other", "kv", "scan")["keys"] == ["other:1"]

    history = flo.json("kv", "history", "user:1")["versions"]
    assert [(e["version"], e["value"]) for e in history] == [(v2, "Jo"), (v1, "Jane"), (v1 - 1, "John Doe")]
    assert len(flo.json("kv", "history", "user:1", "--limit", "1")["versions"]) == 1
    assert flo.out("kv", "history", "user:1").splitlines()[0].split() == ["VERSION", "WRITTEN", "VALUE"]

    assert flo.json("kv", "del", "user:1") == {"key": "user:1", "deleted": True}
    assert flo.out("kv", "del", "user:1") == "user:1 did not exist\n"


def test_kv_watch_prints_every_version_and_deletes(flo: Flo, server: str) -> None:
    watch = flo.popen("--json", "kv", "watch", "cfg", "--count", "4")
    asyncio.run(parked(server, 1))

    async def put_three(client: FloClient) -> list[int]:
        return [(await client.kv.put("cfg", f"v{i}".encode())).version for i in range(3)]  # back to back

    versions = with_client(server, put_three)
    assert watch.stdout is not None
    changes = [json.loads(watch.stdout.readline()) for _ in versions]  # each change is flushed as it comes
    assert changes == [{"key": "cfg", "version": v, "value": f"v{i}"} for i, v in enumerate(versions)]
    flo("kv", "del", "cfg")  # another process
    assert finish(watch) == [{"key": "cfg", "deleted": True}]

    # --initial prints the current value first; another flo process writes the next one.
    flo("kv", "put", "cfg", "now")
    watch = flo.popen("kv", "watch", "cfg", "--initial", "--count", "2")
    asyncio.run(parked(server, 1))
    version = flo.json("kv", "put", "cfg", "next")["version"]
    out, _ = watch.communicate(timeout=15)
    assert out.decode().splitlines()[1] == f"{version}\tnext"
    assert out.decode().splitlines()[0].endswith("\tnow")


# --- queue ------------------------------------------------------------------------------------------


def test_queue_commands(flo: Flo, server: str) -> None:
    assert flo.json("queue", "enqueue", "tasks", "low", "--priority", "9") == {"queue": "tasks", "seq": 1}
    assert flo.out("queue", "enqueue", "tasks", "high") == "OK seq 2\n"
    flo("queue", "enqueue", "tasks", "later", "--delay-ms", "600000")
    assert [m["payload"] for m in flo.json("queue", "peek", "tasks")["messages"]] == ["high", "low"]
    stats = flo.json("queue", "stats", "tasks")
    assert (stats["ready"], stats["delayed"], stats["total_enqueued"]) == (2, 1, 3)
    assert "ready            2" in flo.out("queue", "stats", "tasks")
    assert flo.json("queue", "list") == {"queues": ["tasks"]}

    # Without --ack the leases stay and the seqs (lease ids) are printed; with --ack they are gone.
    text = flo.out("queue", "dequeue", "tasks")
    assert text.splitlines()[0].split()[:3] == ["SEQ", "PRIORITY", "DELIVERIES"]
    assert text.splitlines()[1].split()[:3] == ["2", "0", "1"]
    assert flo.json("queue", "stats", "tasks")["leased"] == 1
    got = flo.json("queue", "dequeue", "tasks", "--count", "5", "--ack")
    assert ([m["seq"] for m in got["messages"]], got["acked"]) == ([1], 1)
    empty = flo("queue", "dequeue", "tasks")
    assert (empty.stdout, empty.stderr) == (b"", b"(no messages)\n")

    # The DLQ: one message failed for good, listed and requeued.
    async def dead_letter(client: FloClient) -> int:
        seq = await client.queue.enqueue("jobs", b"poison")
        await client.queue.dequeue("jobs")
        from flo_client.queue import NackOptions

        await client.queue.nack("jobs", [seq], NackOptions(to_dlq=True))
        return seq

    seq = with_client(server, dead_letter)
    dlq = flo.json("queue", "dlq", "jobs")["messages"]
    assert [(m["seq"], m["payload"]) for m in dlq] == [(seq, "poison")]
    assert flo.out("queue", "requeue", "jobs", str(seq), "999") == "requeued 1 of 2\n"
    assert flo.json("queue", "dlq", "jobs")["messages"] == []
    assert flo.json("queue", "stats", "jobs")["ready"] == 1


def test_queue_dequeue_blocks_until_an_enqueue(flo: Flo, server: str) -> None:
    waiting = flo.popen("--json", "queue", "dequeue", "q", "--block-ms", "20000", "--ack")
    asyncio.run(parked(server, 1))
    flo("queue", "enqueue", "q", "arrived")
    out, err = waiting.communicate(timeout=15)
    doc = json.loads(out)
    assert ([m["payload"] for m in doc["messages"]], doc["acked"]) == (["arrived"], 1)


# --- stream -----------------------------------------------------------------------------------------


def test_stream_append_read_tail_groups(flo: Flo, server: str) -> None:
    first = flo.json("stream", "append", "events", "click", "--header", "source=web", "--header", "v=2")["id"]
    ids = [first] + [flo.out("stream", "append", "events", f"e{i}").split()[-1] for i in range(1, 4)]
    records = flo.json("stream", "read", "events")["records"]
    assert [r["id"] for r in records] == ids
    assert records[0] == {"id": first, "payload": "click", "headers": {"source": "web", "v": "2"}}
    assert flo.out("stream", "read", "events", "--count", "1") == f"{first}\tclick\tsource=web v=2\n"
    assert [r["id"] for r in flo.json("stream", "read", "events", "--from", ids[2])["records"]] == ids[2:]
    assert [r["id"] for r in flo.json("stream", "read", "events", "--from", ids[1], "--count", "2")["records"]] \
        == ids[1:3]
    assert flo.out("stream", "tail", "events") == f"{ids[-1]}\te3\n"
    assert flo.err("stream", "read", "events", "--from", "nonsense", rc=2).startswith("Usage:")
    assert flo.err("stream", "append", "events", "x", "--header", "novalue", rc=2).startswith("Usage:")

    assert flo.json("stream", "groups", "events") == {"stream": "events", "groups": []}

    async def consume(client: FloClient) -> None:
        from flo_client.stream import StreamGroupReadOptions

        await client.stream.group_join("events", "billing", "worker-1")
        await client.stream.group_read("events", "billing", "worker-1", StreamGroupReadOptions(count=3))

    with_client(server, consume)
    (group,) = flo.json("stream", "groups", "events")["groups"]
    assert (group["name"], group["pending"], group["lag"], group["last_delivered_id"]) == ("billing", 3, 1, ids[2])
    assert group["consumers"] == [{"name": "worker-1", "pending": 3, "idle_ms": group["consumers"][0]["idle_ms"]}]
    assert flo.out("stream", "groups", "events").splitlines()[1].split()[:3] == ["billing", "3", "1"]


def test_stream_tail_follow_prints_new_records(flo: Flo, server: str) -> None:
    flo("stream", "append", "log", "old")  # before the tail: not printed
    tail = flo.popen("--json", "stream", "tail", "-f", "log", "--count", "3")
    asyncio.run(parked(server, 1))
    appended = [flo.json("stream", "append", "log", f"new{i}", "--header", f"n={i}")["id"] for i in range(3)]
    lines = finish(tail)
    assert [(r["id"], r["payload"], r["headers"]) for r in lines] == \
        [(rid, f"new{i}", {"n": str(i)}) for i, rid in enumerate(appended)]
    assert all(r["stream"] == "log" for r in lines)


# --- action -----------------------------------------------------------------------------------------


@contextlib.contextmanager
def echo_worker(endpoint: str) -> Iterator[None]:
    """An ActionWorker on a thread: ``echo`` answers ``echo:<input>``, input ``boom`` fails for good."""
    ready = threading.Event()
    control: dict[str, Any] = {}

    async def main() -> None:
        async with FloClient(endpoint) as client:
            worker = client.new_action_worker(concurrency=2, block_ms=500)

            @worker.action("echo", timeout_ms=10_000, max_retries=1)
            async def echo(ctx: ActionContext) -> bytes:
                if ctx.payload == b"boom":
                    raise NonRetryableError("went boom")
                return b"echo:" + ctx.payload

            loop = asyncio.get_running_loop()
            control["stop"] = lambda: loop.call_soon_threadsafe(worker.stop)
            task = asyncio.ensure_future(worker.start())
            while not worker.running and not task.done():
                await asyncio.sleep(0.01)
            ready.set()
            await task

    thread = threading.Thread(target=lambda: asyncio.run(main()), daemon=True)
    thread.start()
    assert ready.wait(10), "the worker did not start"
    try:
        yield
    finally:
        control["stop"]()
        thread.join(10)


def test_action_list_invoke_status(flo: Flo, server: str) -> None:
    assert flo.json("action", "list") == {"actions": []}
    with echo_worker(server):
        (listed,) = flo.json("action", "list")["actions"]
        assert (listed["name"], listed["timeout_ms"], listed["max_retries"]) == ("echo", 10_000, 1)
        assert flo.out("action", "list").splitlines()[1].split()[:3] == ["echo", "10000", "1"]

        assert flo.out("action", "invoke", "echo", "hello", "--wait") == "echo:hello\n"
        done = flo.json("action", "invoke", "echo", "-", "--wait", "--timeout", "10", input=b"from stdin")
        assert (done["status"], done["output"], done["attempt"]) == ("COMPLETED", "echo:from stdin", 1)
        assert flo.err("action", "invoke", "echo", "boom", "--wait").endswith("FAILED: went boom\n")

        run_id = flo.out("action", "invoke", "echo", "later").strip()
        with_client(server, lambda c: c.action.result(run_id, timeout_ms=10_000))
        status = flo.json("action", "status", run_id)
        assert (status["run_id"], status["status"], status["output"]) == (run_id, "COMPLETED", "echo:later")
        text = flo.out("action", "status", run_id)
        assert "status:    COMPLETED" in text and "output:    echo:later" in text
    assert flo.err("action", "invoke", "nope") == "flo: action 'nope' is not registered\n"
    assert flo.err("action", "status", "act-nope").startswith("flo: no run")


# --- top and bench ----------------------------------------------------------------------------------


def test_top_once(flo: Flo, server: str) -> None:
    for i in range(3):
        flo("queue", "enqueue", "work", f"job{i}")
    text = flo.out("top", "--once", "--interval", "0.2")
    assert "\x1b[" not in text  # no screen clearing when stdout is not a terminal
    assert text.startswith("flo-server ") and "connections " in text and "writes/s " in text
    assert any(line.split()[:2] == ["work", "3"] for line in text.splitlines())

    # Writes during the frame's interval show up in its rates.
    top = flo.popen("--json", "top", "--once", "--interval", "1")

    async def write_until_top_exits(client: FloClient) -> None:
        while top.poll() is None:
            await asyncio.gather(client.kv.put("k", b"v"), client.queue.enqueue("work", b"x"))
            await asyncio.sleep(0.02)

    with_client(server, write_until_top_exits)
    (frame,) = finish(top)
    assert frame["server"]["last_lsn"] > 3 and frame["server"]["connections"] >= 1
    assert frame["rates"]["writes_per_s"] > 0 and frame["rates"]["log_bytes_per_s"] > 0
    if "commands" in frame["server"]:  # a server that counts its requests
        assert frame["rates"]["ops_per_s"] > 0
    (work,) = frame["queues"]
    assert work["name"] == "work" and work["ready"] > 3 and work["rates"]["enqueued_per_s"] > 0


def test_bench(flo: Flo) -> None:
    text = flo.out("bench", "--ops", "2000", "--connections", "2", "--pipeline", "8")
    set_line, get_line = text.splitlines()[:2]
    assert set_line.startswith("SET: 2000 ops in ") and "ops/s, p50 " in set_line and " p99 " in set_line
    assert get_line.startswith("GET: 2000 ops in ")
    assert flo.json("kv", "get", "bench:7")["value"] == "x" * 64

    doc = flo.json("bench", "--ops", "2000", "--test", "get", "--value-size", "10", "--keys", "100")
    (result,) = doc["results"]
    assert (result["test"], result["ops"]) == ("get", 2000)
    assert result["ops_per_s"] > 0 and 0 < result["p50_ms"] <= result["p99_ms"]

    # --max-seconds bounds a test whose --ops would take far longer.
    (bounded,) = flo.json("bench", "--test", "set", "--ops", "100000000", "--max-seconds", "0.5")["results"]
    assert 0 < bounded["ops"] < 100_000_000 and bounded["seconds"] < 5
    assert "zadd: choose from set, get" in flo.err("bench", "--test", "zadd", rc=2)


# --- connection settings and errors -------------------------------------------------------------------


def test_authentication_and_connection_precedence(make_server, tmp_path: Path) -> None:
    sp = make_server("--requirepass", "pw")
    endpoint = sp.endpoint
    host, port = endpoint.split(":")
    dead = f"127.0.0.1:{free_port()}"
    anonymous = Flo(endpoint, tmp_path)
    env_only = Flo(None, tmp_path)

    assert anonymous.err("kv", "get", "k").startswith("flo: ")
    assert "refused the login" in anonymous.err("--user", "default", "--password", "wrong", "kv", "get", "k")
    anonymous("--user", "default", "--password", "pw", "kv", "put", "k", "secret")
    assert anonymous.out("--host", host, "--port", port, "--user", "default", "--password", "pw",
                         "kv", "get", "k") == "secret\n"

    assert env_only.out("kv", "get", "k", env={"FLO_URL": f"flo://default:pw@{endpoint}"}) == "secret\n"
    assert env_only.out("kv", "get", "k", env={"FLO_URL": f"flo://{endpoint}", "FLO_PASSWORD": "pw"}) == "secret\n"
    assert anonymous.out("--user", "default", "kv", "get", "k", env={"FLO_PASSWORD": "pw"}) == "secret\n"
    # --url beats FLO_URL; without any, a user needs a password (no terminal to ask on).
    assert anonymous.out("kv", "get", "k", env={"FLO_URL": f"flo://default:pw@{dead}",
                                                "FLO_PASSWORD": "pw"}) == "secret\n"
    assert "needs a password" in anonymous.err("--user", "alice", "kv", "get", "k", rc=2)

    # The config file: the default place under $HOME, then --config, and FLO_URL over its url.
    default_config = tmp_path / ".config" / "flo" / "config.toml"
    default_config.parent.mkdir(parents=True)
    default_config.write_text(f'url = "flo://{endpoint}"\nuser = "default"\npassword = "pw"\nnamespace = "cfg"\n')
    env_only("kv", "put", "in-cfg", "1")
    assert with_client(endpoint, lambda c: c.kv.get("in-cfg"), namespace="cfg", password="pw") == b"1"
    assert env_only.out("-n", "default", "kv", "get", "k") == "secret\n"
    assert "cannot connect" in env_only.err("kv", "get", "k", rc=2, env={"FLO_URL": dead})
    other = tmp_path / "other.toml"
    other.write_text(f'url = "{dead}"\n')
    assert "cannot connect" in env_only.err("--config", str(other), "kv", "get", "k", rc=2)
    assert env_only.json("--config", str(other), "-u", endpoint, "--password", "pw", "queue", "list") == {"queues": []}


def test_errors_and_exit_codes(tmp_path: Path) -> None:
    port = free_port()
    unreachable = Flo(f"127.0.0.1:{port}", tmp_path)
    assert unreachable.err("kv", "get", "k", rc=2).startswith(f"flo: cannot connect to 127.0.0.1:{port}")
    assert unreachable.err("top", "--once", rc=2).startswith("flo: cannot connect")

    nowhere = Flo(None, tmp_path)
    assert "does not exist" in nowhere.err("--config", str(tmp_path / "missing.toml"), "kv", "get", "k", rc=2)
    bad = tmp_path / "bad.toml"
    bad.write_text('url = "127.0.0.1:1"\ncolour = "blue"\n')
    assert "unknown key(s) colour" in nowhere.err("--config", str(bad), "kv", "get", "k", rc=2)
    assert "unsupported scheme" in nowhere.err("-u", "http://x:1", "kv", "get", "k", rc=2)
    assert nowhere.err("kv", "frobnicate", rc=2).startswith("Usage:")  # click's usage errors exit 2 as well
    assert "kv" in nowhere.out("--help") and "Examples:" in nowhere.out("kv", "get", "--help")


def test_tls_with_a_ca_file(make_server, tmp_path: Path) -> None:
    pem = make_test_ca(tmp_path / "pki")
    sp = make_server("--tls-cert", pem["cert"], "--tls-key", pem["key"])
    tls = Flo(f"flos://{sp.endpoint}", tmp_path)
    assert tls.out("--ca-file", pem["ca"], "kv", "put", "k", "over tls").startswith("OK version")
    assert Flo(sp.endpoint, tmp_path).out("--tls", "--ca-file", pem["ca"], "kv", "get", "k") == "over tls\n"
    config = tmp_path / "tls.toml"
    config.write_text(f'url = "{sp.endpoint}"\ntls = true\nca_file = "{pem["ca"]}"\n')
    assert Flo(None, tmp_path).out("--config", str(config), "kv", "get", "k") == "over tls\n"
    # Not trusting the server's certificate is a connection failure.
    assert "CERTIFICATE_VERIFY_FAILED" in tls.err("kv", "get", "k", rc=2)

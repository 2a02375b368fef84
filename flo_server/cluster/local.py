"""A local etcd for trying a cluster on one machine (``make cluster``) and for the tests.

``LocalEtcd`` starts Debian's ``etcd`` (package ``etcd-server``) as one member, or as a
three-member cluster, on loopback ports it picks, with its data in a directory you give.

Example::

    with LocalEtcd(Path("/tmp/etcd"), members=3) as etcd:
        print(etcd.urls)            # "http://127.0.0.1:41231,http://127.0.0.1:41233,..."
        etcd.kill(0)                # one member of three gone: the other two keep a quorum
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

__all__ = ["LocalEtcd", "etcd_binary"]


def etcd_binary() -> str | None:
    return shutil.which("etcd") or (os.path.exists("/usr/bin/etcd") and "/usr/bin/etcd") or None


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class LocalEtcd:
    """One or three etcd members on 127.0.0.1 that we started (and stop, by pid)."""

    def __init__(self, data_dir: Path, members: int = 1, name: str = "flo-etcd") -> None:
        if members not in (1, 3):
            raise ValueError("members: 1 or 3")
        self.data_dir, self.members, self.name = Path(data_dir), members, name
        ports = _free_ports(2 * members)
        self.client_ports, self.peer_ports = ports[:members], ports[members:]
        self.procs: list[subprocess.Popen | None] = [None] * members

    @property
    def urls(self) -> str:
        return ",".join(f"http://127.0.0.1:{p}" for p in self.client_ports)

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.client_ports[i]}"

    def _cmd(self, i: int) -> list[str]:
        binary = etcd_binary()
        if binary is None:
            raise RuntimeError("etcd not found: install Debian's etcd-server (make system-deps does)")
        cluster = ",".join(f"m{j}=http://127.0.0.1:{p}" for j, p in enumerate(self.peer_ports))
        return [binary, "--name", f"m{i}", "--data-dir", str(self.data_dir / f"m{i}"),
                "--listen-client-urls", self.url(i), "--advertise-client-urls", self.url(i),
                "--listen-peer-urls", f"http://127.0.0.1:{self.peer_ports[i]}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{self.peer_ports[i]}",
                "--initial-cluster", cluster, "--initial-cluster-token", self.name,
                "--initial-cluster-state", "new",
                # Loopback: short heartbeats make elections (and a lost member) quick to notice.
                "--heartbeat-interval", "50", "--election-timeout", "500", "--log-level", "error"]

    def start(self, timeout: float = 20.0) -> "LocalEtcd":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for i in range(self.members):
            self.start_member(i)
        self.wait_healthy(timeout)
        return self

    def start_member(self, i: int) -> None:
        log = open(self.data_dir / f"m{i}.log", "ab")
        self.procs[i] = subprocess.Popen(self._cmd(i), stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        log.close()

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            alive = [i for i, p in enumerate(self.procs) if p is not None and p.poll() is None]
            try:
                if any(b'"health":"true"' in urllib.request.urlopen(self.url(i) + "/health", timeout=1).read()
                       for i in alive):
                    return
            except OSError:
                pass
            if time.monotonic() > deadline or not alive:
                logs = "".join((self.data_dir / f"m{i}.log").read_text(errors="replace")[-2000:]
                               for i in range(self.members) if (self.data_dir / f"m{i}.log").exists())
                self.stop()
                raise RuntimeError(f"etcd did not become healthy:\n{logs}")
            time.sleep(0.05)

    def kill(self, i: int) -> None:
        p = self.procs[i]
        if p is not None and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait(10)

    def stop(self) -> None:
        for p in self.procs:
            if p is not None and p.poll() is None:
                p.terminate()
        for i, p in enumerate(self.procs):
            if p is not None:
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
                self.procs[i] = None

    def __enter__(self) -> "LocalEtcd":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """``make cluster``: a local etcd and SHARDS x MEMBERS flo-server processes on loopback, until Ctrl-C."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(prog="python -m flo_server.cluster.local", description=main.__doc__)
    ap.add_argument("--shards", type=int, default=3)
    ap.add_argument("--members", type=int, default=2, help="processes per shard (1 leader + replicas)")
    ap.add_argument("--dir", default="./cluster-data", help="etcd's and every member's data")
    ap.add_argument("--base-port", type=int, default=9100, help="member i of shard s listens on base + 10*s + i")
    ap.add_argument("--sync-replicas", type=int, default=0)
    ap.add_argument("--fsync", default="everysec", choices=["always", "everysec", "no"])
    a = ap.parse_args(argv)
    if not (1 <= a.shards <= 16 and 1 <= a.members <= 5):
        ap.error("--shards 1..16, --members 1..5")
    root = Path(a.dir).resolve()
    procs: list[subprocess.Popen] = []

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    with LocalEtcd(root / "etcd") as etcd:
        name = "local"
        create = subprocess.run([sys.executable, "-m", "flo_server", "cluster", "create", "--etcd", etcd.urls,
                                 "--cluster", name, "--shards", str(a.shards)], capture_output=True, text=True)
        if create.returncode and "exists already" not in create.stderr:
            print(create.stderr, file=sys.stderr)
            return 1
        try:
            for s in range(a.shards):
                for i in range(a.members):
                    port = a.base_port + 10 * s + i
                    log = open(root / f"shard{s}-m{i}.log", "ab")
                    procs.append(subprocess.Popen(
                        [sys.executable, "-m", "flo_server", "--host", "127.0.0.1", "--port", str(port),
                         "--http-port", "0", "--data-dir", str(root / f"shard{s}-m{i}"), "--fsync", a.fsync,
                         "--etcd", etcd.urls, "--cluster", name, "--shard", str(s), "--node", f"s{s}m{i}",
                         "--sync-replicas", str(a.sync_replicas)], stdout=log, stderr=subprocess.STDOUT))
                    log.close()
            print(f"etcd: {etcd.urls}")
            print(f"members: 127.0.0.1:{a.base_port}..{a.base_port + 10 * (a.shards - 1) + a.members - 1} "
                  f"(logs in {root})")
            print(f"try:  redis-cli -c -p {a.base_port} set k v   |   "
                  f"flo-server cluster status --etcd {etcd.urls} --cluster {name}")
            print("Ctrl-C stops everything")
            try:
                while all(p.poll() is None for p in procs):
                    time.sleep(0.5)
                print("a member exited; see its log", file=sys.stderr)
            except KeyboardInterrupt:
                pass
        finally:
            for p in procs:
                if p.poll() is None:
                    p.terminate()
            for p in procs:
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

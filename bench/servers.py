"""Start and stop the servers under test: flo-server, the ceiling, redis-server.

Every server runs on 127.0.0.1 as a child process of the harness (so its pid is
exactly the one we started), pinned to the server core with ``taskset`` when
the machine has two cores, and is stopped by that pid - SIGTERM, then SIGKILL
after a grace period. :class:`Fleet` remembers every process it started and
stops them all on exit, even when the run is interrupted.

Example::

    with Fleet(rundir) as fleet:
        ceiling = fleet.start_ceiling()
        flo = fleet.start_flo(fsync="no")
        ...                      # ceiling.port, flo.cpu_seconds(), flo.rss_bytes()
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_layout() -> tuple[list[str], list[str]]:
    """``taskset`` prefixes for (server, load generator): cores 0 and 1 when there are two."""
    if (os.cpu_count() or 1) >= 2 and shutil.which("taskset"):
        return ["taskset", "-c", "0"], ["taskset", "-c", "1"]
    return [], []


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, timeout: float, log: Path | None = None) -> None:
    """Wait until something accepts on ``port``; fail fast if ``proc`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"server exited with {proc.returncode} before listening on {port}\n{tail}")
        try:
            with socket.create_connection((HOST, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)  # polling a port that is not open yet; bounded by the deadline
    raise RuntimeError(f"nothing listens on {HOST}:{port} after {timeout:.0f} s")


@dataclass
class ServerProc:
    """One server process we started: name, port, pid and how to read its costs."""

    name: str
    port: int
    proc: subprocess.Popen
    log: Path
    info: dict = field(default_factory=dict)
    #: Set when the server printed its ready line (``flo-server ready on ...``), if we watch for one.
    ready: threading.Event = field(default_factory=threading.Event)
    #: Seconds from the spawn to that line.
    ready_s: float | None = None
    #: Started in its own session: the children it launches (service instances) share its process group.
    own_group: bool = False
    #: The output is piped through :func:`_pump` watching for this line.
    ready_line: str | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def cpu_seconds(self) -> float:
        """utime + stime of the process so far, from /proc (0.0 where /proc is missing)."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK

    def rss_bytes(self) -> int:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM this pid, SIGKILL it after ``grace`` seconds; reap it.

        A server started in its own session (``own_group``) has its process group
        (its pid, so still only what we started) SIGKILLed afterwards: children it
        launched and did not stop go with it.
        """
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=grace)
        if self.own_group:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass  # the group is already empty
        if self.proc.stdout and not self.ready_line:
            self.proc.stdout.close()  # a pumped pipe is closed by its pump at end of file

    def kill9(self) -> None:
        """SIGKILL this pid at once (a crash, for recovery tests) and reap it."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


class Fleet:
    """Starts servers and guarantees every one of them is stopped by its pid."""

    def __init__(self, rundir: Path, python: str = sys.executable) -> None:
        self.rundir = rundir
        self.python = python
        self.procs: list[ServerProc] = []
        #: (name, pid, port) of every process ever started, for the record.
        self.history: list[tuple[str, int, int]] = []
        self.server_cpu, self.load_cpu = cpu_layout()

    def __enter__(self) -> "Fleet":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def stop_all(self) -> None:
        while self.procs:
            self.procs.pop().stop()

    def stop(self, sp: ServerProc) -> None:
        sp.stop()
        if sp in self.procs:
            self.procs.remove(sp)

    def _spawn(self, name: str, argv: list[str], port: int, timeout: float, env: dict | None = None,
               ready_line: str | None = None, own_group: bool = False) -> ServerProc:
        """Start ``argv`` pinned to the server core; wait for its port (and its ``ready_line`` when given)."""
        self.rundir.mkdir(parents=True, exist_ok=True)
        log = self.rundir / f"{name}.log"
        t0 = time.monotonic()
        if ready_line is None:
            with open(log, "ab") as lf:
                proc = subprocess.Popen(self.server_cpu + argv, stdout=lf, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, cwd=REPO, env=env, start_new_session=own_group)
        else:
            proc = subprocess.Popen(self.server_cpu + argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, cwd=REPO, env=env, start_new_session=own_group)
        sp = ServerProc(name, port, proc, log, own_group=own_group, ready_line=ready_line)
        self.procs.append(sp)
        self.history.append((name, proc.pid, port))
        if ready_line is not None:
            # The pipe is copied to the log by a thread (a full pipe would stall the server);
            # the moment the ready line passes is the start-up time.
            threading.Thread(target=_pump, args=(sp, ready_line.encode(), t0), daemon=True).start()
        try:
            wait_port(port, proc, timeout, log)
            if ready_line is not None and not sp.ready.wait(max(0.1, timeout - (time.monotonic() - t0))):
                raise RuntimeError(f"{name} did not print {ready_line!r} within {timeout:.0f} s")
        except Exception:
            self.stop(sp)
            raise
        return sp

    def start_ceiling(self, max_seconds: float = 3600) -> ServerProc:
        port = free_port()
        argv = [self.python, "-m", "bench.ceiling", "--port", str(port), "--max-seconds", str(max_seconds)]
        return self._spawn("ceiling", argv, port, timeout=15)

    def start_flo(self, fsync: str | None = None, label: str = "flo-server", *, data_dir: Path | None = None,
                  extra: tuple[str, ...] = (), executor: bool = True, timeout: float = 30,
                  env: dict[str, str] | None = None) -> ServerProc:
        """flo-server on a free port; ``sp.ready_s`` = seconds until it printed ``flo-server ready``.

        ``data_dir`` reuses a directory (a restart); ``executor=False`` passes ``--no-executor``.
        With the executor it runs in its own session, so the service instances it starts are stopped with it.
        No HTTP side port (``--http-port 0``) unless ``extra`` asks for one: flo-server's default, 9001, would be
        taken by the first of the servers running at once; ``sp.info["http_port"]`` is the one it printed.
        ``env``: extra environment variables (``FLO_NO_METRICS``).
        """
        port = free_port()
        data = data_dir or self.rundir / f"data-{label}-{port}"
        data.mkdir(parents=True, exist_ok=True)
        exe = Path(self.python).with_name("flo-server")
        argv = [str(exe)] if exe.exists() else [self.python, "-m", "flo_server.cli"]
        argv += ["--host", HOST, "--port", str(port), "--data-dir", str(data), *extra]
        if "--http-port" not in extra:
            argv += ["--http-port", "0"]
        if fsync:
            argv += ["--fsync", fsync]
        if not executor:
            argv.append("--no-executor")
        sp = self._spawn(label, argv, port, timeout=timeout, ready_line="flo-server ready", own_group=executor,
                         env={**os.environ, **env} if env else None)
        http = re.search(r"http on (\d+)", sp.info.get("ready_line", ""))
        sp.info.update(fsync=fsync or "default", data_dir=str(data), http_port=int(http.group(1)) if http else None)
        return sp

    def start_action_workers(self, port: int, action: str, n: int, max_seconds: float,
                             timeout: float = 60) -> list[ServerProc]:
        """``n`` processes of :mod:`bench.action_workers` (pinned to the load core), each ready to take runs."""
        self.rundir.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        started: list[ServerProc] = []
        for i in range(n):
            argv = self.load_cpu + [self.python, "-m", "bench.action_workers", "--port", str(port), "--action",
                                    action, "--max-seconds", str(max_seconds)]
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    cwd=REPO)
            sp = ServerProc(f"action-worker-{i}", 0, proc, self.rundir / f"{action}-worker-{i}.log", ready_line="ready ")
            self.procs.append(sp)
            self.history.append((sp.name, proc.pid, 0))
            threading.Thread(target=_pump, args=(sp, b"ready ", t0), daemon=True).start()
            started.append(sp)
        for sp in started:
            if not sp.ready.wait(max(0.1, timeout - (time.monotonic() - t0))):
                for other in started:
                    self.stop(other)
                tail = sp.log.read_text(errors="replace")[-1500:] if sp.log.exists() else ""
                raise RuntimeError(f"action worker did not get ready within {timeout:.0f} s\n{tail}")
        return started

    def start_redis(self, aof: str = "off", label: str = "redis") -> ServerProc:
        """redis-server in the foreground (our child), no RDB saves; ``aof`` = off | everysec | always."""
        exe = shutil.which("redis-server")
        if not exe:
            raise RuntimeError("redis-server is not installed")
        port = free_port()
        rdir = self.rundir / f"{label}-{port}"
        rdir.mkdir(parents=True, exist_ok=True)
        argv = [exe, "--port", str(port), "--bind", HOST, "--save", "", "--daemonize", "no",
                "--pidfile", str(rdir / "redis.pid"), "--dir", str(rdir), "--protected-mode", "yes"]
        if aof == "off":
            argv += ["--appendonly", "no"]
        else:
            argv += ["--appendonly", "yes", "--appendfsync", aof]
        sp = self._spawn(label, argv, port, timeout=15)
        sp.info.update(aof=aof)
        return sp


def _pump(sp: ServerProc, ready: bytes, t0: float) -> None:
    """Copy the server's output to its log; note when the ready line goes by."""
    assert sp.proc.stdout is not None
    with open(sp.log, "ab") as lf, sp.proc.stdout as out:
        for line in out:
            if not sp.ready.is_set() and ready in line:
                sp.ready_s = time.monotonic() - t0
                sp.info["ready_line"] = line.decode(errors="replace").strip()
                sp.ready.set()
            lf.write(line)
            lf.flush()


def tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unavailable"

"""The executor manager: launches one service process per (session, instance) on this node.

It runs inside flo-server by default (:func:`run_embedded_executor`) and
standalone elsewhere (``flame-executor --server HOST:PORT``). Every cycle
(``interval``, 100 ms like Flame's scheduler) it reads the open sessions and
their counters, and for each session wants
``clamp(pending + running, min_instances, max_instances)`` instances in the
whole cluster. Instances are reserved with a CAS on ``alloc/<session>`` (a
map node → count, entries of dead nodes ignored), so several managers never
exceed a session's max_instances. Capacity per node is cpu / memory / gpu /
instance count against each session's resreq.

A launched process gets ``FLAME_ENDPOINT``, ``FLAME_SESSION_ID``,
``FLAME_INSTANCE_ID`` and ``FLAME_IDLE_TIMEOUT`` (the app's delay_release;
0 for the ``min_instances`` warm ones) and must write ``ready/<instance>``
within ``startup_timeout``; otherwise (or if it exits first) the bind failure
is a session event (1001), and after ``bind_retry_limit`` failures (1002) the
session's pending tasks fail with that reason instead of waiting forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import sys
import re
import shutil
import signal
import socket
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, Optional

from ..core import ops
from ..core import records as R
from ..core._store import Conflict, Store
from ..core.types import ExecutorState, ResourceRequirement, TaskState
from .installer import PackageInstaller
from .layout import migrate_layout

__all__ = ["ExecutorManager", "NodeCapacity", "run_embedded_executor"]

log = logging.getLogger("flamepy.executor")

NODE_TTL_S = 15
NODE_HEARTBEAT_S = 5.0
STOP_GRACE_S = 5.0
START_RETRY_MAX_S = 2.0
SHARE_UNLESS = ("FLAME_EXECUTOR_CPU", "FLAME_EXECUTOR_MEMORY")  # a capacity given is this manager's own


def _total_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 8 << 30


@dataclass
class NodeCapacity:
    cpu: int = field(default_factory=lambda: os.cpu_count() or 1)
    memory: int = field(default_factory=_total_memory)
    gpu: int = 0
    max_instances: int = 128

    @classmethod
    def from_env(cls) -> "NodeCapacity":
        from ..core.types import parse_memory
        cap = cls()
        if os.environ.get("FLAME_EXECUTOR_CPU"):
            cap.cpu = int(os.environ["FLAME_EXECUTOR_CPU"])
        if os.environ.get("FLAME_EXECUTOR_MEMORY"):
            cap.memory = parse_memory(os.environ["FLAME_EXECUTOR_MEMORY"])
        if os.environ.get("FLAME_EXECUTOR_GPU"):
            cap.gpu = int(os.environ["FLAME_EXECUTOR_GPU"])
        if os.environ.get("FLAME_EXECUTOR_MAX_INSTANCES"):
            cap.max_instances = int(os.environ["FLAME_EXECUTOR_MAX_INSTANCES"])
        return cap


@dataclass
class _Instance:
    id: str
    session_id: str
    resreq: ResourceRequirement
    warm: bool
    proc: Optional[asyncio.subprocess.Process] = None
    ready: bool = False
    stopping: bool = False
    temp_dir: Optional[str] = None
    state_path: Optional[str] = None
    supervisor: Optional[asyncio.Task] = None


def _set_pdeathsig() -> None:
    """In the child: die with the manager (Linux), so a crashed manager leaves no orphans."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:  # pragma: no cover - not Linux
        pass


# What a service process inherits from the manager's own environment; everything else it gets
# comes from its application's ``environments`` (so a server's FLO_REQUIREPASS never leaks into one).
BASE_ENV = frozenset({"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TERM", "VIRTUAL_ENV", "SYSTEMROOT"})


def _credentials_env(opts: dict) -> dict:
    """The manager's credentials and TLS settings as the FLAME_* variables a service process reads."""
    env = {}
    if opts.get("password") is not None:
        env["FLAME_USERNAME"] = opts.get("username") or "default"
        env["FLAME_PASSWORD"] = opts["password"]
    if opts.get("tls"):
        env["FLAME_TLS"] = "1"
    if opts.get("ca_file"):
        env["FLAME_CA_FILE"] = opts["ca_file"]
    return env


def _inside(path: str, dirs: tuple) -> bool:
    return any(path == d or path.startswith(d.rstrip(os.sep) + os.sep) for d in dirs)


def _safe_node_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "-", name)[:64] or "node"


class ExecutorManager:
    """Launches, scales and stops service processes for the sessions of one flo-server.

    >>> mgr = ExecutorManager("127.0.0.1:9000")          # doctest: +SKIP
    >>> await mgr.start(); ...; await mgr.stop()          # doctest: +SKIP
    """

    def __init__(self, endpoint: str, node_name: Optional[str] = None, capacity: Optional[NodeCapacity] = None,
                 work_dir: Optional[str] = None, interval: float = 0.1, startup_timeout: float = 30.0,
                 bind_retry_limit: int = 5, client_options: Optional[dict] = None, allow_dirs: tuple = (),
                 install_timeout: float = 600.0, builtin_client_options: Optional[dict] = None) -> None:
        self.endpoint = endpoint
        self.node = _safe_node_name(node_name or os.environ.get("FLAME_EXECUTOR_NODE") or socket.gethostname())
        self.capacity = capacity or NodeCapacity.from_env()
        # Capacity read from the machine (not given): managers of one server (cluster members) on the
        # same machine split it between them (_share_machine) instead of each offering all of it.
        self.share_machine = capacity is None and not any(os.environ.get(v) for v in SHARE_UNLESS)
        self._machine = (self.capacity.cpu, self.capacity.memory)
        self.work_dir = work_dir or os.path.join(tempfile.gettempdir(), "flame-executor", self.node)
        self.interval = interval
        self.startup_timeout = float(os.environ.get("FLAME_STARTUP_TIMEOUT", startup_timeout))
        self.bind_retry_limit = bind_retry_limit
        self.store = Store(endpoint, client_options=client_options)
        # applications' working_directory must lie inside one of these (empty: anywhere)
        self.allow_dirs = tuple(os.path.realpath(d) for d in allow_dirs)
        self.instances: dict[str, _Instance] = {}
        self._task: Optional[asyncio.Task] = None
        self._stopping = False
        self._failing: set[str] = set()
        self._settling: set[str] = set()  # sessions whose dead nodes' work is being settled
        # packages of applications with url + installer (flamepy.executor.installer)
        self.installer = PackageInstaller(self.store, self.work_dir,
                                          timeout=float(os.environ.get("FLAME_INSTALL_TIMEOUT", install_timeout)))
        # who registers the built-in applications (None: this manager's own connection)
        self.builtin_client_options = builtin_client_options

    # -- lifecycle --------------------------------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.connect()
        os.makedirs(self.work_dir, exist_ok=True)
        await migrate_layout(self.store, owner=self.node)  # data of the key layout before hash tags, once
        await self._heartbeat()
        await self._forget_own_reservations()
        await self._register_builtins()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="flame-executor")
        log.info("executor manager %s serving %s (cpu=%s mem=%s gpu=%s max=%s)", self.node, self.endpoint,
                 self.capacity.cpu, self.capacity.memory, self.capacity.gpu, self.capacity.max_instances)

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self.installer.cancel_all()  # a pip still running would outlive us otherwise
        await asyncio.gather(*(self._terminate(i) for i in list(self.instances.values())), return_exceptions=True)
        sups = [i.supervisor for i in self.instances.values() if i.supervisor]
        if sups:
            await asyncio.wait(sups, timeout=STOP_GRACE_S + 2)
        with contextlib.suppress(Exception):
            await self.store.delete(R.k_node(self.node))
        await self.store.close()

    async def wait(self) -> None:
        if self._task is not None:
            await self._task

    async def _register_builtins(self) -> None:
        """flmrun & co. (flamepy.apps), each only if absent; a manager whose user may not register serves anyway."""
        from ..apps import register_builtin_applications
        store = self.store
        if self.builtin_client_options is not None:
            store = Store(self.endpoint, client_options=self.builtin_client_options)
        try:
            if store is not self.store:
                await store.connect()
            await register_builtin_applications(store)
        except Exception as exc:
            log.warning("built-in applications not registered: %s", exc)
        finally:
            if store is not self.store:
                await store.close()

    async def _run(self) -> None:
        last_beat = time.monotonic()
        while not self._stopping:
            try:
                await self.cycle()
                if time.monotonic() - last_beat >= NODE_HEARTBEAT_S:
                    await self._heartbeat()
                    last_beat = time.monotonic()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("executor cycle failed")
                await asyncio.sleep(1.0)  # flo-server restarting or unreachable: back off, then retry
            await asyncio.sleep(self.interval)

    async def _heartbeat(self) -> None:
        if self.share_machine:
            await self._share_machine()
        await self.store.put(R.k_node(self.node), R.pack({
            "cpu": self.capacity.cpu, "memory": self.capacity.memory, "gpu": self.capacity.gpu,
            "max": self.capacity.max_instances, "instances": len(self.instances), "pid": os.getpid(),
            "time": ops.now_ms(), "hostname": socket.gethostname(), "arch": os.uname().machine,
            "os": sys.platform, "share": self.share_machine}), ttl_seconds=NODE_TTL_S)

    async def _share_machine(self) -> None:
        """Offer ``1/n`` of the machine's cpus and memory, ``n`` = the live managers on this host that
        share it too: several members of a cluster on one machine are several Flame nodes, not
        several machines (each heartbeat re-counts; a peer gone for 10 s gives its share back)."""
        keys = await self.store.scan("node/")
        host, now = socket.gethostname(), ops.now_ms()
        peers = {self.node}
        for key, got in zip(keys, await self.store.mget(keys) if keys else []):
            rec = R.unpack(got[0]) if got is not None else {}
            if rec.get("share") and rec.get("hostname") == host and now - int(rec.get("time") or 0) <= R.NODE_STALE_MS:
                peers.add(key[len("node/"):])
        cpu, memory = max(1, self._machine[0] // len(peers)), self._machine[1] // len(peers)
        if (cpu, memory) != (self.capacity.cpu, self.capacity.memory):
            log.info("executor manager %s shares this machine with %d other manager(s): cpu=%s memory=%s",
                     self.node, len(peers) - 1, cpu, memory)
            self.capacity.cpu, self.capacity.memory = cpu, memory

    async def _forget_own_reservations(self) -> None:
        """A restarted manager has no instances: settle what its previous run's instances were doing
        and drop what it had reserved."""
        keys = await self.store.scan("alloc/")
        sids = [R.tagged_id(k) for k in keys]
        for sid, got in zip(sids, await self.store.mget(keys) if keys else []):
            if got is not None and self.node in R.unpack(got[0]):
                await self._settle_lost_instances(sid, lambda node: node == self.node)

    # -- the scheduling cycle ---------------------------------------------------------------------------------

    async def cycle(self) -> None:
        open_ids = [R.tagged_id(k) for k in await self.store.scan("open/")]
        open_set = set(open_ids)
        for inst in list(self.instances.values()):
            if inst.session_id not in open_set and not inst.stopping:
                log.info("session %s closed: stopping instance %s", inst.session_id, inst.id)
                asyncio.get_running_loop().create_task(self._terminate(inst))
        if not open_ids:
            return
        recs = await self.store.mget([R.k_ssn(s) for s in open_ids])
        counters = await self.store.mget([R.k_cnt(s, c) for s in open_ids for c in ("pending", "running")])
        allocs = await self.store.mget([R.k_alloc(s) for s in open_ids])
        live_nodes = {k[len("node/"):] for k in await self.store.scan("node/")} | {self.node}
        sessions = []
        for i, (sid, got) in enumerate(zip(open_ids, recs)):
            if got is None:
                continue
            rec = R.unpack(got[0])
            pending = ops._as_int(counters[2 * i])
            running = ops._as_int(counters[2 * i + 1])
            alloc = R.unpack(allocs[i][0]) if allocs[i] else {}
            allocated = sum(n for node, n in alloc.items() if node in live_nodes)
            if any(node not in live_nodes for node in alloc) and sid not in self._settling:
                self._settling.add(sid)
                asyncio.get_running_loop().create_task(self._settle_lost_instances(
                    sid, lambda node, live=live_nodes: node not in live))
            sessions.append((rec, pending, running, allocated))
        sessions.sort(key=lambda s: (-s[0].get("priority", 0), s[0]["ctime"]))
        # sessions with nothing to do: their lingering (delay_release) instances may make room for others
        idle = {rec["id"] for rec, pending, running, _ in sessions if pending + running == 0}
        apps: dict[str, Optional[dict]] = {}
        for rec, pending, running, allocated in sessions:
            sid = rec["id"]
            if rec.get("broken"):
                if pending and sid not in self._failing:
                    asyncio.get_running_loop().create_task(self._fail_pending(sid, rec["broken"]))
                continue
            limit = rec["max"] if rec["max"] is not None else 1 << 31
            demand = min(max(pending + running, rec["min"]), limit)
            batch = rec.get("batch") or 1
            if batch > 1:  # 0.6.0's batch_size: instances are wanted in whole batches, so one task alone waits
                demand -= demand % batch
            if allocated >= demand:
                continue
            app_name = rec["app"]
            if app_name not in apps:
                apps[app_name] = await ops.get_application(self.store, app_name)
            app = apps[app_name]
            # Gone, or a Wasm application: there is no Wasm runtime here, so its tasks wait (as on Flame's host
            # executors) instead of its command being started as a host process.
            if app is None or app.get("shim", 0) != 0:
                continue
            resreq = ResourceRequirement.from_list(rec["resreq"]) or R.DEFAULT_RESREQ
            mine = sum(1 for i in self.instances.values() if i.session_id == sid)
            while allocated < demand and self._fits(resreq):
                slot = await self._reserve(sid, demand, live_nodes)
                if slot is None:
                    break
                allocated = slot
                warm = mine < rec["min"]
                mine += 1
                self._launch(rec, app, resreq, warm)
            cap = self.capacity
            if allocated < demand and not self._fits(resreq) and resreq.cpu <= cap.cpu \
                    and resreq.memory <= cap.memory and resreq.gpu <= cap.gpu:  # room can be made
                self._release_idle(idle, sid)

    def _release_idle(self, idle: set, for_sid: str) -> None:
        """The node is full and ``for_sid`` waits: stop one instance that only lingers (its session has
        no pending or running task; never a warm one), so an idle session does not starve a busy one."""
        for inst in self.instances.values():
            if inst.session_id in idle and inst.session_id != for_sid and inst.ready and not inst.warm \
                    and not inst.stopping:
                log.info("releasing idle instance %s of session %s to make room for session %s", inst.id,
                         inst.session_id, for_sid)
                asyncio.get_running_loop().create_task(self._terminate(inst))
                return

    def _used(self) -> ResourceRequirement:
        used = ResourceRequirement()
        for inst in self.instances.values():
            used.cpu += inst.resreq.cpu
            used.memory += inst.resreq.memory
            used.gpu += inst.resreq.gpu
        return used

    def _fits(self, r: ResourceRequirement) -> bool:
        used = self._used()
        return (len(self.instances) < self.capacity.max_instances and used.cpu + r.cpu <= self.capacity.cpu
                and used.memory + r.memory <= self.capacity.memory and used.gpu + r.gpu <= self.capacity.gpu)

    async def _reserve(self, sid: str, demand: int, live_nodes: set) -> Optional[int]:
        """CAS +1 on this node's entry of alloc/<sid> if the live total is below demand; the new total."""
        key = R.k_alloc(sid)
        while True:
            got = await self.store.get(key)
            alloc = R.unpack(got[0]) if got else {}
            total = sum(n for node, n in alloc.items() if node in live_nodes)
            if total >= demand:
                return None
            alloc = {n: c for n, c in alloc.items() if n in live_nodes}
            alloc[self.node] = alloc.get(self.node, 0) + 1
            try:
                if got is None:
                    await self.store.put(key, R.pack(alloc), if_absent=True)
                else:
                    await self.store.put(key, R.pack(alloc), cas=got[1])
                return total + 1
            except Conflict:
                continue

    async def _settle_lost_instances(self, sid: str, lost: Callable[[str], bool]) -> None:
        """Instances of ``sid`` on the nodes ``lost`` says are gone — a node that stopped heartbeating
        (its manager was killed with its member: kill -9, a lost machine), or this node's previous
        run: fail the tasks they were running, as an instance that exits does (no retry; the chunks
        they held come back when their leases lapse), then drop those nodes' entries from
        ``alloc/{sid}``. Any manager may do it; CAS keeps a result recorded first. Every task record
        is read (the running counter may lag the records by the write a kill interrupted): this is
        rare, once per lost node and session."""
        try:
            keys = await self.store.scan(R.p_tasks(sid))
            for i in range(0, len(keys), 256):
                for got in await self.store.mget(keys[i:i + 256]):
                    rec = R.unpack(got[0]) if got is not None else None
                    iid = (rec or {}).get("instance") or ""
                    if rec and rec["state"] == int(TaskState.RUNNING) and lost(_node_of(iid)):
                        await ops.fail_lost_task(self.store, sid, rec["id"], None,
                                                 f"instance {iid} was lost (its node {_node_of(iid)} stopped "
                                                 f"or restarted) while it ran task {rec['id']}")
            key = R.k_alloc(sid)
            while True:
                got = await self.store.get(key)
                alloc = R.unpack(got[0]) if got else {}
                if got is None or not any(lost(node) for node in alloc):
                    return
                try:
                    await self.store.put(key, R.pack({n: c for n, c in alloc.items() if not lost(n)}), cas=got[1])
                    return
                except Conflict:
                    continue
        except Exception:  # the next cycle tries again
            log.warning("settling the lost instances of session %s failed", sid, exc_info=True)
        finally:
            self._settling.discard(sid)

    async def _change_alloc(self, sid: str, delta: int) -> None:
        """Add ``delta`` to this node's entry."""
        key = R.k_alloc(sid)
        while True:
            got = await self.store.get(key)
            if got is None:
                return
            alloc = R.unpack(got[0])
            alloc[self.node] = max(0, alloc.get(self.node, 0) + delta)
            try:
                await self.store.put(key, R.pack(alloc), cas=got[1])
                return
            except Conflict:
                continue

    # -- instances --------------------------------------------------------------------------------------------

    def _launch(self, rec: dict, app: dict, resreq: ResourceRequirement, warm: bool) -> None:
        inst = _Instance(id=f"{self.node}-{uuid.uuid4().hex[:10]}", session_id=rec["id"], resreq=resreq, warm=warm)
        inst.state_path = os.path.join(self.work_dir, f"{inst.id}.state")
        self.instances[inst.id] = inst
        inst.supervisor = asyncio.get_running_loop().create_task(self._supervise(inst, rec, app))

    def _environment(self, inst: _Instance, app: dict, install_env: Optional[dict] = None) -> dict:
        """What a service process gets: a few basics of ours (never the server's secrets), the
        application's declared environment, and the FLAME_* variables it needs to serve."""
        env = {k: v for k, v in os.environ.items() if k in BASE_ENV or k.startswith("LC_")}
        for k, v in (app.get("environments") or {}).items():
            env[k] = os.path.expandvars(v)
        for k, v in (install_env or {}).items():  # the installed package's paths go first
            env[k] = f"{v}{os.pathsep}{env[k]}" if k == "PATH" and env.get(k) else v
        env.update({
            "FLAME_ENDPOINT": self.endpoint,
            "FLAME_SESSION_ID": inst.session_id,
            "FLAME_INSTANCE_ID": inst.id,
            "FLAME_INSTANCE_ENDPOINT": f"flo://{self.endpoint}/{R.NAMESPACE}/{inst.session_id}/{inst.id}",
            "FLAME_NAMESPACE": R.NAMESPACE,
            "FLAME_IDLE_TIMEOUT": "0" if inst.warm else str(app.get("delay_release") or R.DEFAULT_DELAY_RELEASE),
            "FLAME_INSTANCE_STATE": inst.state_path or "",
            "PYTHONUNBUFFERED": "1",
        })
        env.update(_credentials_env(self.store.client_options))
        return env

    async def _spawn(self, inst: _Instance, app: dict,
                     install_env: Optional[dict] = None) -> tuple[asyncio.subprocess.Process, str]:
        env = self._environment(inst, app, install_env)
        cwd = app.get("working_directory")
        if not cwd:
            cwd = inst.temp_dir = os.path.join(self.work_dir, inst.id)
            os.makedirs(cwd, exist_ok=True)
        elif not os.path.isdir(cwd):
            raise RuntimeError(f"working directory {cwd} does not exist")
        if app.get("working_directory") and self.allow_dirs and not _inside(os.path.realpath(cwd), self.allow_dirs):
            raise RuntimeError(f"working directory {cwd} is outside the executor's allowed directories "
                               f"(--executor-allow {' '.join(self.allow_dirs)})")
        tmp = os.path.join(cwd, "work", app["name"], "tmp") if inst.temp_dir else None
        if tmp:
            os.makedirs(tmp, exist_ok=True)
            env.update(TMPDIR=tmp, TEMP=tmp, TMP=tmp)
        command = app.get("command")
        if not command:
            raise RuntimeError(f"application {app['name']} has no command")
        command = os.path.expandvars(command)
        resolved = command if os.sep in command else shutil.which(command, path=env.get("PATH"))
        if _PYTHON_NAME.fullmatch(os.path.basename(command)) and (
                not resolved or not os.path.exists(resolved)
                or (app.get("installer") == "python" and os.sep not in command)):
            # The guide's spec says /usr/bin/python, which many systems (Debian among them) do not have:
            # a missing "python" means "a Python that can import flamepy", i.e. the one running us. A bare
            # "python" of an installed Python package (flmctl deploy writes that) is ours too: its
            # dependencies were installed for this interpreter.
            log.info("%s not found: running %s with %s", command, app["name"], sys.executable)
            resolved = sys.executable
        if not resolved:
            raise RuntimeError(f"command {command} not found in PATH")
        args = [os.path.expandvars(a) for a in app.get("arguments") or []]
        out_path = os.path.join(cwd, f"{inst.id}.out")
        err_path = os.path.join(cwd, f"{inst.id}.err")
        with open(out_path, "ab") as out, open(err_path, "ab") as err:
            proc = await asyncio.create_subprocess_exec(
                resolved, *args, cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=err,
                start_new_session=True, preexec_fn=_set_pdeathsig)
        return proc, err_path

    async def _supervise(self, inst: _Instance, rec: dict, app: dict) -> None:
        sid = inst.session_id
        err_path = None
        try:
            try:
                install_env = await self.installer.prepare(app)
            except Exception as exc:  # InstallError says why; anything else (the store) fails the bind too
                await self._bind_failed(inst, 10, f"package install failed: {exc}")
                return
            if inst.stopping:  # the session closed while its package installed
                return
            try:
                await self._record_executor(inst, ExecutorState.BINDING)
                inst.proc, err_path = await self._spawn(inst, app, install_env)
            except Exception as exc:
                await self._bind_failed(inst, 11, f"failed to start {app.get('command')}: {exc}")
                return
            log.info("instance %s (pid %s) launched for session %s", inst.id, inst.proc.pid, sid)
            if not await self._await_ready(inst, err_path):
                return
            rc = await inst.proc.wait()
            log.info("instance %s of session %s exited with code %s", inst.id, sid, rc)
            await self._settle_lost_work(inst, rc, err_path)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("supervising instance %s failed", inst.id)
        finally:
            if inst.proc is not None and inst.proc.returncode is None:
                await self._kill(inst)
            with contextlib.suppress(Exception):
                await self.store.delete_many([R.k_ready(inst.id), R.k_exec(inst.id)])
            with contextlib.suppress(Exception):
                await self._change_alloc(sid, -1)
            self.instances.pop(inst.id, None)
            if inst.state_path:
                with contextlib.suppress(OSError):
                    os.unlink(inst.state_path)
            if inst.temp_dir:
                shutil.rmtree(inst.temp_dir, ignore_errors=True)

    async def _settle_lost_work(self, inst: _Instance, rc: Optional[int], err_path: Optional[str]) -> None:
        """After an instance exited: the task it was running fails (no retry), clearly; the chunks it
        still held go back to the queue (tasks not recorded yet run again: at-least-once)."""
        state = None
        if inst.state_path:
            with contextlib.suppress(OSError):
                with open(inst.state_path, "rb") as f:
                    state = R.decode_instance_state(f.read(R.STATE_SIZE))
        if state is None:
            return
        sid, tid, chunks = state
        if tid is not None:
            await ops.fail_lost_task(self.store, sid, tid, None,
                                     f"instance {inst.id} exited with code {rc} while running task {tid}"
                                     f"{_tail_of(err_path)}")
        if chunks:
            try:
                await ops.requeue_chunks(self.store, sid, chunks)
            except Exception:  # the session may be gone; leases lapse anyway
                log.warning("could not give back the task chunks of instance %s", inst.id, exc_info=True)

    async def _await_ready(self, inst: _Instance, err_path: str) -> bool:
        ready = asyncio.ensure_future(self.store.get(R.k_ready(inst.id), block_ms=int(self.startup_timeout * 1000)))
        exited = asyncio.ensure_future(inst.proc.wait())
        done, _ = await asyncio.wait({ready, exited}, timeout=self.startup_timeout + 1,
                                     return_when=asyncio.FIRST_COMPLETED)
        if ready in done and ready.exception() is None and ready.result() is not None:
            exited.cancel()
            status = R.unpack(ready.result()[0])
            if status[0] == "ok":
                inst.ready = True
                await self._record_executor(inst, ExecutorState.BOUND)
                return True
            await self._kill(inst)
            await self._bind_failed(inst, 12, f"{status[1]}{_tail_of(err_path)}")
            return False
        ready.cancel()
        if exited in done:
            await self._bind_failed(inst, 11, f"process exited with code {inst.proc.returncode} before it was ready"
                                              f"{_tail_of(err_path)}")
        else:
            exited.cancel()
            await self._kill(inst)
            await self._bind_failed(inst, 11, f"not ready within {self.startup_timeout:g}s{_tail_of(err_path)}")
        return False

    async def _record_executor(self, inst: _Instance, state: ExecutorState) -> None:
        """``exec/<instance>``: what flamepy.list_executors() and ``flmctl list -e`` show."""
        await self.store.put(R.k_exec(inst.id), R.executor_record(self.node, inst.session_id, state, inst.resreq,
                                                                   ops.now_ms()))

    async def _bind_failed(self, inst: _Instance, code: int, reason: str) -> None:
        sid = inst.session_id
        msg = f"executor {inst.id} on node {self.node} failed to bind session {sid}: ({code}) {reason}"
        log.warning(msg)

        def change(rec):
            rec["bind_failures"] = rec.get("bind_failures", 0) + 1
            events = rec.get("events") or []
            events.append([R.EVENT_BIND_FAILED, msg, ops.now_ms()])
            if rec["bind_failures"] >= self.bind_retry_limit and not rec.get("broken"):
                rec["broken"] = f"no instance of session {sid} could start ({rec['bind_failures']} attempts); " \
                                f"last: {reason}"
                events.append([R.EVENT_RETRY_LIMIT, rec["broken"], ops.now_ms()])
            rec["events"] = events[-ops.MAX_SESSION_EVENTS:]
        rec = await ops.update_session(self.store, sid, change)
        if rec is not None and rec.get("broken"):
            await self._fail_pending(sid, rec["broken"])

    async def _fail_pending(self, sid: str, reason: str) -> None:
        self._failing.add(sid)
        try:
            await ops.cancel_pending_tasks(self.store, sid, TaskState.FAILED, reason)
        finally:
            self._failing.discard(sid)

    async def _terminate(self, inst: _Instance) -> None:
        inst.stopping = True
        if inst.proc is None or inst.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(inst.proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(inst.proc.wait()), STOP_GRACE_S)
        except asyncio.TimeoutError:
            await self._kill(inst)

    async def _kill(self, inst: _Instance) -> None:
        if inst.proc is not None and inst.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(inst.proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                await inst.proc.wait()


def _node_of(instance_id: str) -> str:
    """The node that launched an instance (its id is ``<node>-<10 hex>``, :meth:`ExecutorManager._launch`)."""
    return instance_id.rsplit("-", 1)[0]


def _tail_of(path: Optional[str], limit: int = 400) -> str:
    """The last lines of an instance's stderr, to make a failure message self-explanatory."""
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - limit))
            text = f.read().decode("utf-8", "replace").strip()
    except OSError:
        return ""
    return f"; stderr: ...{text[-limit:]}" if text else ""


_PYTHON_NAME = re.compile(r"python[0-9.]*")


async def run_embedded_executor(endpoint: str, stop_event: asyncio.Event, **kwargs) -> None:
    """Run an executor manager inside flo-server until ``stop_event`` is set.

    flo_server/app.py starts it as a task once the listener is up::

        task = asyncio.create_task(run_embedded_executor(f"127.0.0.1:{port}", stop_event))
    """
    manager = ExecutorManager(endpoint, **kwargs)
    delay = 0.1
    while True:
        # The listener may need a moment; a cluster member may wait seconds for its shards' leaders
        # (an election, etcd down): keep trying until the server stops.
        try:
            await manager.start()
            break
        except Exception as exc:
            if stop_event.is_set():
                return
            if delay >= START_RETRY_MAX_S:
                log.warning("executor manager %s not started yet (retrying every %gs): %s", manager.node,
                            START_RETRY_MAX_S, exc)
            with contextlib.suppress(Exception):
                await manager.store.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop_event.wait(), delay)
            if stop_event.is_set():
                return
            delay = min(delay * 2, START_RETRY_MAX_S)
    try:
        await stop_event.wait()
    finally:
        await manager.stop()

"""Actions, their runs, and the workers that execute them (one store per server).

This is the state behind the ACTION_* and WORKER_* ops. It is pure Python and
has no clock and no I/O: every method that depends on time takes ``now`` (unix
ms), so the write path can replay the log through the same methods and get the
same state (docs/architecture.md §3). The lead attaches one instance as
``srv.actions``; the appliers in ``flo_server/handlers/action.py`` are the only
writers.

A run's life::

    PENDING --take--> RUNNING --complete--> COMPLETED
       ^                 |  \\--fail(retry=0) or attempts used up--> FAILED
       |   backoff       |   \\--lease lapses on the last attempt--> TIMED_OUT
       +--fail(retry=1)--+    \\--cancel (from PENDING too)--> CANCELLED
       +--lease lapses with attempts left (taken back at once)

Lazy timers: a retry's backoff (``ready_at``) and a run's lease
(``lease_until``) are absolute times. Nothing fires; :meth:`Actions.settle`
applies every timer that is due at ``now`` and is called before any read or
write looks at runs. Settling is invisible to clients (a lapsed lease looks
the same whether or not it was settled yet), so a read path may call it too.

Example:
    >>> a = Actions()
    >>> a.register_action(1000, "default", "resize", 0, 60_000, 3, "")
    >>> run_id = a.invoke(7, 1000, "default", "resize", b"img", None, 10, None)
    >>> run = a.select("default", ["resize"], {}, 1001)
    >>> a.take(1001, "default", "w1", run.run_id).attempt
    1
    >>> a.complete(1002, "default", "w1", run_id, "success", b"ok")
    True
    >>> a.runs[run_id].status.name, a.runs[run_id].output
    ('COMPLETED', b'ok')
"""

from __future__ import annotations

import heapq
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from sortedcontainers import SortedDict

from flo_core.spec import RunStatus, WorkerStatus

__all__ = [
    "Actions",
    "ActionDef",
    "Run",
    "Worker",
    "retry_backoff_ms",
    "parse_labels",
    "labels_match",
    "held_by",
    "MAX_ACTION_NAME",
    "MAX_ACTIONS_PER_NAMESPACE",
    "MAX_RUN_INPUT",
    "MAX_RUN_OUTPUT",
    "MAX_ERROR_MESSAGE",
    "MAX_IDEMPOTENCY_KEY",
    "MAX_UNFINISHED_RUNS",
    "MAX_FINISHED_RUNS",
    "MAX_WORKER_ID",
    "MAX_WORKERS_PER_NAMESPACE",
    "MAX_WORKER_ACTIONS",
    "MAX_TOUCH_EXTEND_MS",
    "MAX_LIST_LIMIT",
    "DEFAULT_TIMEOUT_MS",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_RUN_PRIORITY",
    "DEFAULT_AWAIT_BLOCK_MS",
    "IDEMPOTENCY_WINDOW_MS",
    "RETRY_BASE_MS",
    "RETRY_MAX_MS",
    "WORKER_UNHEALTHY_MS",
    "WORKER_REMOVE_MS",
    "FINISHED",
]

# --- limits and defaults (docs/protocol-action.md) --------------------------

MAX_ACTION_NAME = 256  # bytes (Flo: names up to 256 characters)
MAX_ACTIONS_PER_NAMESPACE = 10_000
MAX_RUN_INPUT = 1024 * 1024  # bytes of invoke input (Flo: 1 MiB)
MAX_RUN_OUTPUT = 65_535  # bytes: the wire carries outputs as bytes16
MAX_ERROR_MESSAGE = 8192  # bytes kept of a failure message (longer is cut)
MAX_OUTCOME = 255  # bytes of a named outcome
MAX_IDEMPOTENCY_KEY = 255  # bytes (one TLV)
MAX_LABELS_JSON = 65_535
MAX_UNFINISHED_RUNS = 1_000_000  # pending + running, all namespaces
MAX_FINISHED_RUNS = 100_000  # finished runs kept for status; oldest forgotten first
MAX_WORKER_ID = 4096
MAX_WORKERS_PER_NAMESPACE = 10_000
MAX_WORKER_ACTIONS = 1024  # action names in one register / await
MAX_MACHINE_ID = 255  # the list answer carries it as bytes8
MAX_METADATA = 65_535
MAX_TOUCH_EXTEND_MS = 3_600_000
MAX_LIST_LIMIT = 1024

DEFAULT_TIMEOUT_MS = 30_000
DEFAULT_MAX_ATTEMPTS = 3
DEFAULT_RUN_PRIORITY = 10  # lower value is taken first; 0 most urgent
DEFAULT_AWAIT_BLOCK_MS = 30_000  # ACTION_AWAIT without BLOCK_MS (the SDK's rule)
IDEMPOTENCY_WINDOW_MS = 24 * 3600 * 1000

RETRY_BASE_MS = 200  # backoff before retry n (n = 1, 2, ...): 200 ms * 2^(n-1) ...
RETRY_MAX_MS = 10_000  # ... capped at 10 s

WORKER_UNHEALTHY_MS = 90_000  # no heartbeat for this long: unhealthy, refused work
WORKER_REMOVE_MS = 600_000  # no heartbeat for this long: forgotten (heartbeat -> NOT_FOUND)

FINISHED = frozenset({RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.TIMED_OUT})
# The statuses as module constants: the compiled build holds them in C globals (actions.pxd),
# not an attribute lookup on the enum per comparison.
_PENDING, _RUNNING, _COMPLETED = RunStatus.PENDING, RunStatus.RUNNING, RunStatus.COMPLETED
_FAILED, _CANCELLED, _TIMED_OUT = RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.TIMED_OUT


def retry_backoff_ms(attempt: int) -> int:
    """Wait before the next attempt after attempt ``attempt`` (1-based) failed.

    >>> [retry_backoff_ms(n) for n in (1, 2, 3, 10)]
    [200, 400, 800, 10000]
    """
    return min(RETRY_BASE_MS << min(max(attempt - 1, 0), 20), RETRY_MAX_MS)


def parse_labels(text: str | None) -> dict[str, Any] | None:
    """A labels JSON object -> dict (flat values only); None for no labels.

    Raises ValueError for anything else (the handler turns it into MALFORMED).

    >>> parse_labels('{"gpu":"a100","zone":1}')
    {'gpu': 'a100', 'zone': 1}
    """
    if text is None:
        return None
    value = json.loads(text)
    if not isinstance(value, dict):
        raise ValueError("labels must be a JSON object")
    for k, v in value.items():
        if isinstance(v, (dict, list)):
            raise ValueError(f"label {k!r} must have a flat value")
    return value


def labels_match(required: dict[str, Any] | None, offered: dict[str, Any]) -> bool:
    """Every required key is offered with an equal value.

    >>> labels_match({"gpu": "a100"}, {"gpu": "a100", "zone": "eu"}), labels_match({"gpu": 1}, {})
    (True, False)
    """
    if not required:
        return True
    for k, v in required.items():
        if k not in offered or offered[k] != v:
            return False
    return True


def _label_sig(labels: dict[str, Any] | None) -> str:
    """Canonical text of a label set: runs with equal sets share one ready heap."""
    if not labels:
        return ""
    return json.dumps(labels, sort_keys=True, separators=(",", ":"))


def _cut_utf8(text: str, limit: int) -> str:
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text
    return raw[:limit].decode("utf-8", "ignore")


# --- records ------------------------------------------------------------------


@dataclass(slots=True)
class ActionDef:
    """A registered action. Registering again replaces the settings (last wins)."""

    ns: str
    name: str
    action_type: int
    timeout_ms: int  # the run lease; 0 = never taken back
    max_retries: int  # attempts in all, the first included
    owner: str
    created_at: int
    updated_at: int
    version: int = 1

    def to_list(self) -> list[Any]:
        return [
            self.ns,
            self.name,
            self.action_type,
            self.timeout_ms,
            self.max_retries,
            self.owner,
            self.created_at,
            self.updated_at,
            self.version,
        ]


class Run:
    """One invocation of an action. ``run_id`` is also the worker's ``task_id``.

    A plain class, not a dataclass: the compiled build makes it an extension type whose fields
    are C members (flo_server/actions.pxd), and a dataclass cannot be one.
    """

    __slots__ = ("run_id", "ns", "action", "seq", "payload", "label_sig", "priority", "idempotency_key",
                 "created_at", "max_attempts", "lease_ms", "status", "attempt", "started_at", "completed_at",
                 "output", "outcome", "error", "worker_id", "lease_until", "ready_at", "token")

    def __init__(
        self,
        run_id: str,
        ns: str,
        action: str,
        seq: int,  # the LSN of the invoke: FIFO order within a priority, list cursor
        payload: bytes,
        label_sig: str,  # "" = any worker
        priority: int,
        idempotency_key: str | None,
        created_at: int,
        max_attempts: int,
        lease_ms: int,
        status: RunStatus = _PENDING,
        attempt: int = 0,
        started_at: int | None = None,
        completed_at: int | None = None,
        output: bytes | None = None,
        outcome: str | None = None,
        error: str | None = None,
        worker_id: str | None = None,
        lease_until: int = 0,  # 0 = no lease
        ready_at: int = 0,  # a retry waits until then
        token: int = 0,  # bumped whenever the run is (re)queued or leased: stale heap entries are skipped
    ) -> None:
        self.run_id, self.ns, self.action, self.seq, self.payload = run_id, ns, action, seq, payload
        self.label_sig, self.priority, self.idempotency_key = label_sig, priority, idempotency_key
        self.created_at, self.max_attempts, self.lease_ms, self.status = created_at, max_attempts, lease_ms, status
        self.attempt, self.started_at, self.completed_at = attempt, started_at, completed_at
        self.output, self.outcome, self.error, self.worker_id = output, outcome, error, worker_id
        self.lease_until, self.ready_at, self.token = lease_until, ready_at, token

    def __repr__(self) -> str:
        return f"Run({self.run_id!r}, {self.ns!r}, {self.action!r}, status={self.status.name}, attempt={self.attempt})"

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def to_list(self) -> list[Any]:
        return [
            self.run_id,
            self.ns,
            self.action,
            self.seq,
            self.payload,
            self.label_sig,
            self.priority,
            self.idempotency_key,
            self.created_at,
            self.max_attempts,
            self.lease_ms,
            int(self.status),
            self.attempt,
            self.started_at,
            self.completed_at,
            self.output,
            self.outcome,
            self.error,
            self.worker_id,
            self.lease_until,
            self.ready_at,
            self.token,
        ]

    @classmethod
    def from_list(cls, v: list[Any]) -> "Run":
        run = cls(*v[:11])
        (
            status,
            run.attempt,
            run.started_at,
            run.completed_at,
            run.output,
            run.outcome,
            run.error,
            run.worker_id,
            run.lease_until,
            run.ready_at,
            run.token,
        ) = v[11:22]
        run.status = RunStatus(status)
        return run


@dataclass(slots=True)
class Worker:
    """A registered worker (observability and routing by labels, not required to take work)."""

    ns: str
    worker_id: str
    worker_type: int
    max_concurrency: int
    actions: list[str]
    metadata: str | None
    machine_id: str | None
    registered_at: int
    last_heartbeat: int
    current_load: int = 0
    tasks_completed: int = 0
    tasks_failed: int = 0
    draining: bool = False
    hb_token: int = 0
    labels: dict[str, Any] = field(default_factory=dict)
    holding: set[str] = field(default_factory=set)

    def status(self, now: int) -> WorkerStatus:
        if self.draining:
            return WorkerStatus.DRAINING
        if now - self.last_heartbeat > WORKER_UNHEALTHY_MS:
            return WorkerStatus.UNHEALTHY
        if self.holding or self.current_load:
            return WorkerStatus.ACTIVE
        return WorkerStatus.IDLE

    def to_list(self) -> list[Any]:
        return [
            self.ns,
            self.worker_id,
            self.worker_type,
            self.max_concurrency,
            list(self.actions),
            self.metadata,
            self.machine_id,
            self.registered_at,
            self.last_heartbeat,
            self.current_load,
            self.tasks_completed,
            self.tasks_failed,
            self.draining,
            self.hb_token,
        ]


def _worker_labels(metadata: str | None) -> dict[str, Any]:
    """Worker labels come from its registration metadata, when that is a JSON object
    (flo-wire-v2 §7.11); any other metadata is kept as text and gives no labels."""
    if not metadata:
        return {}
    try:
        value = json.loads(metadata)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def held_by(run: Run, worker_id: str, now: int) -> bool:
    """``worker_id`` holds ``run`` at ``now``: RUNNING, taken by it, its lease not lapsed."""
    return run.status == _RUNNING and run.worker_id == worker_id and not (run.lease_until and run.lease_until <= now)


# --- the store ------------------------------------------------------------------


class Actions:
    """Action registry, run store and worker registry of one server.

    Writers (called by appliers only, deterministic in their arguments):
    :meth:`register_action`, :meth:`delete_action`, :meth:`invoke`, :meth:`take`,
    :meth:`complete`, :meth:`fail`, :meth:`touch`, :meth:`cancel`,
    :meth:`register_worker`, :meth:`heartbeat`, :meth:`deregister_worker`,
    :meth:`drain_worker`. Readers: :meth:`select`, :meth:`run`, :meth:`worker`,
    :meth:`list_actions`, :meth:`list_runs`, :meth:`list_workers`, :meth:`next_due`.

    Every change a waiter may care about is queued in :attr:`events`
    (``("run", ns, run_id)`` finished, ``("ready", ns, action, n, labelled)`` n runs
    became takeable); the server drains them with :meth:`drain_events` and wakes waiters.
    """

    def __init__(self) -> None:
        self.actions: dict[tuple[str, str], ActionDef] = {}
        self._actions_per_ns: dict[str, SortedDict] = {}
        self.runs: dict[str, Run] = {}
        # (ns, action) -> {label_sig: heap of (priority, seq, token, run)}. Entries hold the run itself
        # (no table lookup per look at a heap); (x, seq, token) is unique, so runs are never compared.
        self._ready: dict[tuple[str, str], dict[str, list[tuple[int, int, int, Run]]]] = {}
        self._delays: list[tuple[int, int, int, Run]] = []  # (ready_at, seq, token, run)
        self._leases: list[tuple[int, int, int, Run]] = []  # (lease_until, seq, token, run)
        self._by_action: dict[tuple[str, str], dict[str, None]] = {}  # creation order
        self._idem: dict[tuple[str, str, str], tuple[str, int]] = {}  # -> (run_id, expires_at)
        self._idem_expiry: list[tuple[int, str, str, str]] = []
        self._finished: deque[str] = deque()
        self.unfinished = 0
        self.workers: dict[str, SortedDict] = {}  # ns -> worker_id -> Worker
        self._worker_expiry: list[tuple[int, int, str, str]] = []  # (forget_at, hb_token, ns, id)
        self._sig_labels: dict[str, dict[str, Any]] = {"": {}}
        self.events: list[tuple[Any, ...]] = []

    # --- timers ----------------------------------------------------------------

    def settle(self, now: int) -> None:
        """Apply every timer due at ``now``: retries whose backoff ended become
        takeable, lapsed leases are taken back (or time the run out), silent
        workers are forgotten. Idempotent; invisible to clients."""
        delays = self._delays
        while delays and delays[0][0] <= now:
            _, _, token, run = heapq.heappop(delays)
            if run.token == token and run.status == _PENDING:
                self._push_ready(run)
                self.events.append(("ready", run.ns, run.action, 1, bool(run.label_sig)))
        leases = self._leases
        while leases and leases[0][0] <= now:
            lease_until, _, token, run = heapq.heappop(leases)
            if run.token != token or run.status != _RUNNING:
                continue
            self._lapse(run, lease_until)
        expiry = self._worker_expiry
        while expiry and expiry[0][0] <= now:
            _, hb_token, ns, wid = heapq.heappop(expiry)
            table = self.workers.get(ns)
            w = table.get(wid) if table is not None else None
            if w is not None and w.hb_token == hb_token:
                self._drop_worker(w)
        idem = self._idem_expiry
        while idem and idem[0][0] <= now:
            _, ns, name, key = heapq.heappop(idem)
            entry = self._idem.get((ns, name, key))
            if entry is not None and entry[1] <= now:
                del self._idem[(ns, name, key)]

    def _lapse(self, run: Run, lease_until: int) -> None:
        """A run's lease ran out: the holder lost it."""
        self._release_holder(run)
        note = f"lease expired on attempt {run.attempt}"
        if (run.ns, run.action) not in self.actions:
            run.error = "action deleted"
            self._finish(run, _CANCELLED, lease_until)
        elif run.attempt >= run.max_attempts:
            run.error = f"timed out: {note}"
            self._finish(run, _TIMED_OUT, lease_until)
        else:
            # Taken back at once: it is already a lease late.
            run.error = note
            run.status = _PENDING
            run.lease_until = 0
            run.ready_at = lease_until
            run.token += 1
            self._push_ready(run)
            self.events.append(("ready", run.ns, run.action, 1, bool(run.label_sig)))

    def next_due(self) -> int | None:
        """The earliest time a timer becomes due (a blocked await or result
        wait wakes then to look again), or None."""
        delays, leases = self._delays, self._leases
        if delays:
            return min(delays[0][0], leases[0][0]) if leases else delays[0][0]
        return leases[0][0] if leases else None

    def drain_events(self) -> list[tuple[Any, ...]]:
        ev, self.events = self.events, []
        return ev

    # --- helpers ----------------------------------------------------------------

    def _push_ready(self, run: Run) -> None:
        heaps = self._ready.setdefault((run.ns, run.action), {})
        heapq.heappush(heaps.setdefault(run.label_sig, []), (run.priority, run.seq, run.token, run))

    def _push_delay(self, run: Run) -> None:
        heapq.heappush(self._delays, (run.ready_at, run.seq, run.token, run))

    def _push_lease(self, run: Run) -> None:
        if run.lease_until:
            heapq.heappush(self._leases, (run.lease_until, run.seq, run.token, run))

    def _release_holder(self, run: Run) -> None:
        if run.worker_id is None:
            return
        table = self.workers.get(run.ns)
        w = table.get(run.worker_id) if table is not None else None
        if w is not None:
            w.holding.discard(run.run_id)

    def _finish(self, run: Run, status: RunStatus, now: int) -> None:
        if run.status == _RUNNING:
            self._release_holder(run)
        run.status = status
        run.completed_at = now
        run.lease_until = 0
        run.token += 1
        self.unfinished -= 1
        self._finished.append(run.run_id)
        self.events.append(("run", run.ns, run.run_id))
        while len(self._finished) > MAX_FINISHED_RUNS:
            self._forget(self._finished.popleft())

    def _forget(self, run_id: str) -> None:
        run = self.runs.pop(run_id, None)
        if run is None:
            return
        index = self._by_action.get((run.ns, run.action))
        if index is not None:
            index.pop(run_id, None)
            if not index:
                del self._by_action[(run.ns, run.action)]
        if run.idempotency_key is not None:
            key = (run.ns, run.action, run.idempotency_key)
            entry = self._idem.get(key)
            if entry is not None and entry[0] == run_id:
                del self._idem[key]

    def _labels_of(self, sig: str) -> dict[str, Any]:
        labels = self._sig_labels.get(sig)
        if labels is None:
            labels = self._sig_labels[sig] = json.loads(sig)
        return labels

    # --- actions ------------------------------------------------------------------

    def action(self, ns: str, name: str) -> ActionDef | None:
        return self.actions.get((ns, name))

    def action_count(self, ns: str) -> int:
        table = self._actions_per_ns.get(ns)
        return len(table) if table is not None else 0

    def register_action(
        self, now: int, ns: str, name: str, action_type: int, timeout_ms: int, max_retries: int, owner: str
    ) -> None:
        """Create or replace an action's settings. Runs already taken keep the
        lease and attempts they were taken with; later takes use the new ones."""
        self.settle(now)
        a = self.actions.get((ns, name))
        if a is None:
            a = ActionDef(ns, name, action_type, timeout_ms, max_retries, owner, now, now)
            self.actions[(ns, name)] = a
            self._actions_per_ns.setdefault(ns, SortedDict())[name] = a
        else:
            a.action_type, a.timeout_ms, a.max_retries, a.owner = action_type, timeout_ms, max_retries, owner
            a.updated_at = now
            a.version += 1

    def delete_action(self, now: int, ns: str, name: str) -> bool:
        """Remove an action. Its pending runs are cancelled; running ones may
        still report; finished ones stay readable. Idempotent."""
        self.settle(now)
        a = self.actions.pop((ns, name), None)
        if a is None:
            return False
        table = self._actions_per_ns.get(ns)
        if table is not None:
            table.pop(name, None)
            if not table:
                del self._actions_per_ns[ns]
        for rid in list(self._by_action.get((ns, name), ())):
            run = self.runs.get(rid)
            if run is not None and run.status == _PENDING:
                run.error = "action deleted"
                self._finish(run, _CANCELLED, now)
        self._ready.pop((ns, name), None)
        for key in [k for k in self._idem if k[0] == ns and k[1] == name]:
            del self._idem[key]
        return True

    def list_actions(self, ns: str, prefix: str, after: str | None, limit: int) -> tuple[list[ActionDef], str | None]:
        """Actions whose name starts with ``prefix``, in name order, after the
        cursor ``after``; returns (page, next cursor or None)."""
        table = self._actions_per_ns.get(ns)
        if not table:
            return [], None
        out: list[ActionDef] = []
        for name in table.irange(minimum=prefix if after is None else max(prefix, after)):
            if after is not None and name <= after:
                continue
            if not name.startswith(prefix):
                break
            if len(out) == limit:
                return out, out[-1].name
            out.append(table[name])
        return out, None

    def counts(self, ns: str, name: str) -> tuple[int, int]:
        """(pending, running) runs of an action."""
        pending = running = 0
        for rid in self._by_action.get((ns, name), ()):
            st = self.runs[rid].status
            if st == _PENDING:
                pending += 1
            elif st == _RUNNING:
                running += 1
        return pending, running

    # --- runs ---------------------------------------------------------------------------

    def run(self, ns: str, run_id: str) -> Run | None:
        run = self.runs.get(run_id)
        return run if run is not None and run.ns == ns else None

    def idempotent_hit(self, ns: str, name: str, key: str | None, now: int) -> str | None:
        """The run an earlier invoke with this idempotency key created, if still inside its window."""
        if key is None:
            return None
        entry = self._idem.get((ns, name, key))
        if entry is None or entry[1] <= now or entry[0] not in self.runs:
            return None
        return entry[0]

    def invoke(
        self,
        lsn: int,
        now: int,
        ns: str,
        name: str,
        payload: bytes,
        labels_sig: str | None,
        priority: int,
        idempotency_key: str | None,
    ) -> str:
        """Create a PENDING run (the id is derived from the log position, so a
        replay creates the same id). A key still inside its window returns the
        earlier run's id instead."""
        self.settle(now)
        hit = self.idempotent_hit(ns, name, idempotency_key, now)
        if hit is not None:
            return hit
        a = self.actions.get((ns, name))
        run_id = f"act-{lsn:x}"
        # (positional: a keyword call to the compiled class builds a dict per run)
        run = Run(run_id, ns, name, lsn, payload, labels_sig or "", priority, idempotency_key, now,
                  max(a.max_retries, 1) if a is not None else DEFAULT_MAX_ATTEMPTS,
                  a.timeout_ms if a is not None else DEFAULT_TIMEOUT_MS)
        run.ready_at = now
        self.runs[run_id] = run
        self.unfinished += 1
        self._by_action.setdefault((ns, name), {})[run_id] = None
        if idempotency_key is not None:
            expires = now + IDEMPOTENCY_WINDOW_MS
            self._idem[(ns, name, idempotency_key)] = (run_id, expires)
            heapq.heappush(self._idem_expiry, (expires, ns, name, idempotency_key))
        self._push_ready(run)
        self.events.append(("ready", ns, name, 1, bool(run.label_sig)))
        return run_id

    def select(self, ns: str, names: list[str], labels: dict[str, Any], now: int) -> Run | None:
        """The run a worker with ``labels`` awaiting ``names`` would take now:
        lowest priority value first, then oldest. Does not take it."""
        self.settle(now)
        best: tuple[int, int, int, Run] | None = None
        for name in names:
            heaps = self._ready.get((ns, name))
            if not heaps:
                continue
            for sig in list(heaps):
                heap = heaps[sig]
                while heap:
                    _, _, token, run = heap[0]
                    if run.token == token and run.status == _PENDING:
                        break
                    heapq.heappop(heap)  # stale: taken, cancelled or requeued since
                if not heap:
                    del heaps[sig]
                    continue
                if sig and not labels_match(self._labels_of(sig), labels):
                    continue
                if best is None or heap[0] < best:
                    best = heap[0]
            if not heaps:
                del self._ready[(ns, name)]
        return best[3] if best is not None else None

    def select_many(self, ns: str, names: list[str], labels: dict[str, Any], now: int, n: int) -> list[Run]:
        """The first ``n`` runs :meth:`select` would return if each were taken in turn
        (fewer when fewer are takeable). Takes none.

        >>> a = Actions()
        >>> a.register_action(1000, "default", "x", 0, 60_000, 3, "")
        >>> ids = [a.invoke(lsn, 1000, "default", "x", b"", None, 10, None) for lsn in (1, 2, 3)]
        >>> [r.run_id for r in a.select_many("default", ["x"], {}, 1001, 2)] == ids[:2]
        True
        """
        picked: list[Run] = []
        self.settle(now)
        if len(names) == 1:
            heaps = self._ready.get((ns, names[0]))
            if heaps is not None and len(heaps) == 1 and "" in heaps:
                # Only unlabelled runs of one action (the common case): its one heap, in order.
                return self._first_of(heaps[""], n)
        aside: list[tuple[tuple[str, str], str, tuple[int, int, int, Run]]] = []
        try:
            while len(picked) < n:
                run = self.select(ns, names, labels, now)
                if run is None:
                    break
                picked.append(run)
                # Set its entry aside so the next select sees the one behind it.
                heap = self._ready[(ns, run.action)][run.label_sig]
                aside.append(((ns, run.action), run.label_sig, heapq.heappop(heap)))
        finally:
            # Put every entry back: the runs are still PENDING until taken (take makes the entries stale).
            for key, sig, entry in aside:
                heapq.heappush(self._ready.setdefault(key, {}).setdefault(sig, []), entry)
        return picked

    def _first_of(self, heap: list[tuple[int, int, int, Run]], n: int) -> list[Run]:
        """The first ``n`` takeable runs of one ready heap (stale entries are dropped; the
        others are put back: the runs stay PENDING until taken)."""
        picked, aside = [], []
        pop = heapq.heappop
        while heap and len(picked) < n:
            entry = pop(heap)
            run = entry[3]
            if run.token == entry[2] and run.status == _PENDING:
                picked.append(run)
                aside.append(entry)
        for entry in aside:
            heapq.heappush(heap, entry)
        return picked

    def take(self, now: int, ns: str, worker_id: str, run_id: str) -> Run | None:
        """Give a PENDING run to a worker: RUNNING, attempt + 1, lease from the
        action's current timeout. None if the run is not takeable (never for a
        run :meth:`select` just returned)."""
        self.settle(now)
        run = self.run(ns, run_id)
        if run is None or run.status != _PENDING or run.ready_at > now:
            return None
        a = self.actions.get((ns, run.action))
        if a is not None:
            run.max_attempts = max(a.max_retries, 1)
            run.lease_ms = a.timeout_ms
        run.status = _RUNNING
        run.attempt += 1
        if run.started_at is None:
            run.started_at = now
        run.worker_id = worker_id
        run.token += 1
        run.lease_until = now + run.lease_ms if run.lease_ms else 0
        self._push_lease(run)
        table = self.workers.get(ns)
        w = table.get(worker_id) if table is not None else None
        if w is not None:
            w.holding.add(run_id)
        return run

    def holds(self, ns: str, worker_id: str, run_id: str, now: int) -> Run | None:
        """The run if ``worker_id`` holds it at ``now`` (RUNNING, its lease not lapsed)."""
        run = self.run(ns, run_id)
        return run if run is not None and held_by(run, worker_id, now) else None

    def _count(self, ns: str, worker_id: str, completed: bool) -> None:
        table = self.workers.get(ns)
        w = table.get(worker_id) if table is not None else None
        if w is not None:
            if completed:
                w.tasks_completed += 1
            else:
                w.tasks_failed += 1

    def complete(self, now: int, ns: str, worker_id: str, run_id: str, outcome: str, output: bytes) -> bool:
        """The holder reports success. False (nothing changes) if it no longer holds the run."""
        self.settle(now)
        run = self.holds(ns, worker_id, run_id, now)
        if run is None:
            return False
        run.output = output
        run.outcome = outcome
        self._count(ns, worker_id, True)
        self._finish(run, _COMPLETED, now)
        return True

    def fail(self, now: int, ns: str, worker_id: str, run_id: str, retry: bool, message: str) -> bool:
        """The holder reports failure: retried after a backoff while attempts
        remain and ``retry`` is set, else FAILED. False if it no longer holds the run."""
        self.settle(now)
        run = self.holds(ns, worker_id, run_id, now)
        if run is None:
            return False
        run.error = _cut_utf8(message, MAX_ERROR_MESSAGE)
        self._count(ns, worker_id, False)
        if retry and run.attempt < run.max_attempts and (ns, run.action) in self.actions:
            self._release_holder(run)
            run.status = _PENDING
            run.lease_until = 0
            run.ready_at = now + retry_backoff_ms(run.attempt)
            run.token += 1
            self._push_delay(run)
        else:
            self._finish(run, _FAILED, now)
        return True

    def touch(self, now: int, ns: str, worker_id: str, run_id: str, extend_ms: int) -> bool:
        """The holder extends its lease to ``now + extend_ms`` (a run without a
        lease keeps none). False if it no longer holds the run."""
        self.settle(now)
        run = self.holds(ns, worker_id, run_id, now)
        if run is None:
            return False
        if run.lease_until:
            run.lease_until = now + extend_ms
            run.token += 1
            self._push_lease(run)
        return True

    def cancel(self, now: int, ns: str, run_id: str) -> bool:
        """PENDING or RUNNING -> CANCELLED (a later report from the holder is
        stale). False if the run had already finished."""
        self.settle(now)
        run = self.run(ns, run_id)
        if run is None or run.finished:
            return False
        run.error = "cancelled"
        self._finish(run, _CANCELLED, now)
        return True

    def list_runs(
        self, ns: str, name: str | None, before_seq: int | None, limit: int
    ) -> tuple[list[Run], int | None]:
        """Runs newest first (of one action, or all of the namespace when
        ``name`` is None), older than the cursor ``before_seq``; returns
        (page, next cursor or None)."""
        if name is not None:
            ids: Any = reversed(self._by_action.get((ns, name), {}))
            source = (self.runs[rid] for rid in ids)
        else:
            source = (r for r in reversed(self.runs.values()) if r.ns == ns)
        out: list[Run] = []
        for run in source:
            if before_seq is not None and run.seq >= before_seq:
                continue
            if len(out) == limit:
                return out, out[-1].seq
            out.append(run)
        return out, None

    # --- workers ----------------------------------------------------------------

    def worker(self, ns: str, worker_id: str, now: int) -> Worker | None:
        """A registered worker, unless it has been silent long enough to be forgotten."""
        table = self.workers.get(ns)
        w = table.get(worker_id) if table is not None else None
        if w is None or now - w.last_heartbeat > WORKER_REMOVE_MS:
            return None
        return w

    def worker_count(self, ns: str) -> int:
        table = self.workers.get(ns)
        return len(table) if table is not None else 0

    def _schedule_forget(self, w: Worker) -> None:
        w.hb_token += 1
        heapq.heappush(self._worker_expiry, (w.last_heartbeat + WORKER_REMOVE_MS + 1, w.hb_token, w.ns, w.worker_id))

    def register_worker(
        self,
        now: int,
        ns: str,
        worker_id: str,
        worker_type: int,
        max_concurrency: int,
        actions: list[str],
        metadata: str | None,
        machine_id: str | None,
    ) -> Worker:
        """Create or replace a worker's registration. Counters survive, and so
        does a drain (a drained worker that reconnects stays drained)."""
        self.settle(now)
        table = self.workers.setdefault(ns, SortedDict())
        w = table.get(worker_id)
        if w is None:
            w = Worker(ns, worker_id, worker_type, max_concurrency, list(actions), metadata, machine_id, now, now)
            table[worker_id] = w
        else:
            w.worker_type, w.max_concurrency, w.actions = worker_type, max_concurrency, list(actions)
            w.metadata, w.machine_id, w.last_heartbeat = metadata, machine_id, now
        w.labels = _worker_labels(metadata)
        self._schedule_forget(w)
        return w

    def heartbeat(self, now: int, ns: str, worker_id: str, load: int) -> bool:
        """Liveness and load; brings an unhealthy worker back. False if unknown."""
        self.settle(now)
        w = self.worker(ns, worker_id, now)
        if w is None:
            return False
        w.last_heartbeat = now
        w.current_load = load
        self._schedule_forget(w)
        return True

    def deregister_worker(self, now: int, ns: str, worker_id: str) -> bool:
        self.settle(now)
        w = self.worker(ns, worker_id, now)
        if w is None:
            return False
        self._drop_worker(w)
        return True

    def drain_worker(self, now: int, ns: str, worker_id: str) -> bool:
        """The worker takes no more runs (its awaits are refused); running ones finish."""
        self.settle(now)
        w = self.worker(ns, worker_id, now)
        if w is None:
            return False
        w.draining = True
        return True

    def _drop_worker(self, w: Worker) -> None:
        table = self.workers.get(w.ns)
        if table is not None:
            table.pop(w.worker_id, None)
            if not table:
                del self.workers[w.ns]

    def list_workers(self, ns: str, after: str | None, limit: int, now: int) -> tuple[list[Worker], str | None]:
        """Workers in id order after the cursor; returns (page, next cursor or None)."""
        table = self.workers.get(ns)
        if not table:
            return [], None
        out: list[Worker] = []
        ids = table.irange(minimum=after, inclusive=(False, True)) if after is not None else iter(table)
        for wid in ids:
            w = table[wid]
            if now - w.last_heartbeat > WORKER_REMOVE_MS:
                continue
            if len(out) == limit:
                return out, out[-1].worker_id
            out.append(w)
        return out, None

    # --- snapshots ------------------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        """Everything, as msgpack-able lists (heaps are rebuilt by :meth:`load`)."""
        return {
            "actions": [a.to_list() for a in self.actions.values()],
            "runs": [r.to_list() for r in self.runs.values()],
            "finished": list(self._finished),
            "idem": [[ns, name, key, rid, exp] for (ns, name, key), (rid, exp) in self._idem.items()],
            "workers": [w.to_list() for table in self.workers.values() for w in table.values()],
        }

    def load(self, state: dict[str, Any]) -> None:
        self.__init__()  # type: ignore[misc]
        for v in state.get("actions", ()):
            a = ActionDef(*v)
            self.actions[(a.ns, a.name)] = a
            self._actions_per_ns.setdefault(a.ns, SortedDict())[a.name] = a
        for w in (self._worker_from(v) for v in state.get("workers", ())):
            self.workers.setdefault(w.ns, SortedDict())[w.worker_id] = w
            heapq.heappush(
                self._worker_expiry, (w.last_heartbeat + WORKER_REMOVE_MS + 1, w.hb_token, w.ns, w.worker_id)
            )
        for v in state.get("runs", ()):
            run = Run.from_list(v)
            self.runs[run.run_id] = run
            self._by_action.setdefault((run.ns, run.action), {})[run.run_id] = None
            if run.status == _PENDING:
                self.unfinished += 1
                self._push_delay(run)  # the next settle makes it takeable once ready_at is due
            elif run.status == _RUNNING:
                self.unfinished += 1
                self._push_lease(run)
                table = self.workers.get(run.ns)
                w = table.get(run.worker_id) if table is not None and run.worker_id else None
                if w is not None:
                    w.holding.add(run.run_id)
        self._finished = deque(state.get("finished", ()))
        for ns, name, key, rid, exp in state.get("idem", ()):
            self._idem[(ns, name, key)] = (rid, exp)
            heapq.heappush(self._idem_expiry, (exp, ns, name, key))

    @staticmethod
    def _worker_from(v: list[Any]) -> Worker:
        w = Worker(*v[:9])
        w.current_load, w.tasks_completed, w.tasks_failed, w.draining, w.hb_token = v[9:14]
        w.actions = list(w.actions)
        w.labels = _worker_labels(w.metadata)
        return w

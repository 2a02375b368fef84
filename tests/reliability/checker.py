"""A linearizability checker for histories of concurrent clients, and the KV model it checks flo-server against.

The search is Wing & Gong's, with Lowe's memoisation, as porcupine (Athalye's Go
checker) implements it: walk the history's call/return events in time order, and
at each point try to *linearize* (apply to the sequential model) one of the
operations that has been called but whose return is still ahead; back-track when
a return comes whose operation could not be placed. A cache of (operations
placed, model state) pairs prunes what was already explored. Histories are split
per key first (P-compositionality: a history is linearizable iff each key's is),
so each search is small.

No well-kept Python checker exists on PyPI (porcupine is Go, knossos is
Clojure, and the PyPI package named ``knossos`` is a game mod manager), so this
is the small one the issue asks for.

An operation whose outcome the client never learned (in flight when the server was
killed, or its connection broke) gets the output :class:`Unknown` and a return
time of infinity: it may take effect at any moment after its call, or never
(linearized after everything else). Models are nondeterministic (``step``
returns every state an operation may lead to); the search runs on sets of them,
as porcupine's ``NondeterministicModel`` does.

Example::

    from tests.reliability.checker import CAS_MISMATCH, History, check_kv

    h = History()
    put = h.invoke("c1", "k", "put", b"a")
    get = h.invoke("c2", "k", "get")
    h.ok(put, 17)                # put returned version 17
    h.ok(get, (b"a", 17))        # overlapping get saw it: fine
    h.ok(h.invoke("c1", "k", "cas", b"b", 16), CAS_MISMATCH)
    result = check_kv(h)
    assert result.ok, result.explain()
"""

from __future__ import annotations

import itertools
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Hashable, Iterable, Protocol, Sequence


class Unknown:
    """The output of an operation whose outcome the client never learned.

    ``version`` is filled in by :func:`check_kv` when a read showed which version
    the write made (values are unique per write, so a read of it identifies it).
    """

    __slots__ = ("version",)

    def __init__(self, version: int | None = None) -> None:
        self.version = version

    def __repr__(self) -> str:
        return "unknown" if self.version is None else f"unknown(seen as v{self.version})"


CAS_MISMATCH = "cas-mismatch"  # the server refused a CAS: the key's version was another


@dataclass(slots=True, eq=False)
class Operation:
    """One call of one client: ``input`` is ``(kind, *args)``; ``call`` < ``ret`` on one clock."""

    client: Hashable
    key: Hashable
    input: tuple
    call: float
    output: Any = None
    ret: float = math.inf  # infinity: it never returned (or its answer was lost)

    def __repr__(self) -> str:
        args = ", ".join(repr(a) for a in self.input[1:])
        ret = "inf" if self.ret == math.inf else f"{self.ret:g}"
        return f"[{self.call:g}..{ret}] {self.client}: {self.input[0]}({args}) -> {self.output!r}"


class History:
    """Records what concurrent clients of one process did, on one logical clock.

    Every ``invoke`` / ``ok`` takes the next tick, so the clock's order is the
    real-time order of the events as the process saw them (one event loop, or
    threads calling under the GIL: each tick is atomic).
    """

    def __init__(self) -> None:
        self._tick = itertools.count(1)
        self.ops: list[Operation] = []

    def invoke(self, client: Hashable, key: Hashable, kind: str, *args: Any) -> Operation:
        op = Operation(client, key, (kind, *args), next(self._tick), Unknown())
        self.ops.append(op)
        return op

    def ok(self, op: Operation, output: Any) -> None:
        """The call returned ``output`` (a refusal that is an outcome, like CAS_MISMATCH, counts)."""
        op.output, op.ret = output, next(self._tick)

    def unknown(self, op: Operation) -> None:
        """Its outcome is unknown (connection lost, timed out): it may take effect at any time after its call."""
        op.output, op.ret = Unknown(), math.inf

    def __len__(self) -> int:
        return len(self.ops)


class Model(Protocol):
    """A sequential specification. States must be hashable and compare by value."""

    def init(self) -> Hashable: ...

    def step(self, state: Any, input: tuple, output: Any) -> Iterable[Hashable]:
        """The states ``input`` answered with ``output`` may lead to from ``state`` (none: not allowed)."""
        ...


@dataclass
class Result:
    """What :func:`check` found. ``ok`` is None when the search ran out of time."""

    ok: bool | None
    key: Hashable = None  # the key whose history failed (or timed out)
    ops: list[Operation] = field(default_factory=list)  # that key's operations, by call time
    linearized: list[Operation] = field(default_factory=list)  # the longest order the search could place
    keys: int = 0
    operations: int = 0
    explored: int = 0  # model steps tried, all keys
    seconds: float = 0.0

    def explain(self, context: int = 12) -> str:
        """A readable account of a failure: the longest valid order, then the operations it could not place."""
        if self.ok:
            return f"linearizable: {self.operations} operations on {self.keys} keys ({self.explored} steps)"
        what = "search timed out" if self.ok is None else "NOT linearizable"
        placed = {id(op) for op in self.linearized}
        stuck = [op for op in self.ops if id(op) not in placed]
        lines = [f"{what}: key {self.key!r}, {len(self.ops)} operations; longest linearization "
                 f"{len(self.linearized)} of them, ending:"]
        lines += [f"  {op!r}" for op in self.linearized[-context:]]
        lines.append("could not place next (earliest calls first):")
        lines += [f"  {op!r}" for op in sorted(stuck, key=lambda o: o.call)[:context]]
        return "\n".join(lines)


class _Node:
    __slots__ = ("op", "id", "match", "prev", "next")

    def __init__(self, op: Operation | None, id: int, match: "_Node | None") -> None:
        self.op, self.id, self.match = op, id, match  # match: a call's return node; None on a return
        self.prev: _Node | None = None
        self.next: _Node | None = None


def _linked_events(ops: Sequence[Operation]) -> _Node:
    """The call and return events in time order (calls first on a tie), as a list behind a head node."""
    events = []
    for i, op in enumerate(ops):
        ret = _Node(op, i, None)
        events.append((op.ret, 1, i, ret))
        events.append((op.call, 0, i, _Node(op, i, ret)))
    events.sort(key=lambda e: e[:3])
    head = prev = _Node(None, -1, None)
    for *_, node in events:
        prev.next, node.prev = node, prev
        prev = node
    return head


def _lift(call: _Node) -> None:
    call.prev.next = call.next
    call.next.prev = call.prev
    ret = call.match
    ret.prev.next = ret.next
    if ret.next is not None:
        ret.next.prev = ret.prev


def _unlift(call: _Node) -> None:
    ret = call.match
    ret.prev.next = ret
    if ret.next is not None:
        ret.next.prev = ret
    call.prev.next = call
    call.next.prev = call


def _check_one(model: Model, ops: Sequence[Operation], deadline: float) -> tuple[bool | None, list[Operation], int]:
    """porcupine's checkSingle on a powerset of the model's states: (ok, longest linearization, steps)."""
    head = _linked_events(ops)
    state = frozenset([model.init()])
    linearized = 0  # bit i: ops[i] is placed
    cache: set[tuple[int, frozenset]] = set()
    calls: list[tuple[_Node, frozenset]] = []  # the placed calls, and the state before each
    best: list[Operation] = []
    steps = 0
    entry = head.next
    while head.next is not None:
        steps += 1
        if steps & 1023 == 0 and time.monotonic() > deadline:
            return None, best, steps
        if entry.match is not None:  # a call: try to place it here
            op = entry.op
            after = frozenset(s for before in state for s in model.step(before, op.input, op.output))
            if after:
                placed = linearized | (1 << entry.id)
                if (placed, after) not in cache:
                    cache.add((placed, after))
                    calls.append((entry, state))
                    state, linearized = after, placed
                    _lift(entry)
                    if len(calls) > len(best):
                        best = [c.op for c, _ in calls]
                    entry = head.next
                    continue
            entry = entry.next
        else:  # a return whose call is not placed: undo the last placement
            if not calls:
                return False, best, steps
            entry, state = calls.pop()
            linearized &= ~(1 << entry.id)
            _unlift(entry)
            entry = entry.next
    return True, best, steps


def check(model: Model, ops: Iterable[Operation], *, time_limit: float = 60.0) -> Result:
    """Is the history linearizable under ``model``? Each key is checked on its own.

    ``time_limit`` bounds the whole search (checking is NP-complete; histories of a
    few thousand operations with little concurrency take well under a second).
    """
    t0 = time.monotonic()
    deadline = t0 + time_limit
    by_key: dict[Hashable, list[Operation]] = defaultdict(list)
    for op in ops:
        by_key[op.key].append(op)
    result = Result(True, keys=len(by_key), operations=sum(map(len, by_key.values())))
    for key, key_ops in by_key.items():
        key_ops.sort(key=lambda o: o.call)
        ok, best, steps = _check_one(model, key_ops, deadline)
        result.explored += steps
        if not ok:
            result.ok, result.key, result.ops, result.linearized = ok, key, key_ops, best
            break
    result.seconds = time.monotonic() - t0
    return result


# --- the KV model ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Unseen:
    """The version of a write whose answer was lost and which no read showed: unequal to every number."""

    value: bytes


class VersionedRegister:
    """One flo-server KV key, as its clients see it (flo-wire-v2 §3.2, ``flo_server/handlers/kv.py``).

    State ``(value, version, floor)``: ``value`` None and ``version`` 0 when the key
    is absent; ``floor`` is the highest version a write of the key returned, since
    versions (log sequence numbers) rise strictly per key, deletes included.

    Inputs and outputs:

    - ``("get",)`` -> ``None`` or ``(value, version)``
    - ``("put", value)`` -> the new version
    - ``("cas", value, expected)`` -> the new version, or CAS_MISMATCH; a CAS holds
      when the key's version is ``expected`` (0: the key is absent)
    - ``("delete",)`` -> whether the key existed
    - ``("cas_delete", expected)`` -> whether it existed, or CAS_MISMATCH

    and :class:`Unknown` for any of them: a write that may or may not have happened.
    """

    def init(self) -> tuple:
        return (None, 0, 0)

    def step(self, state: tuple, input: tuple, output: Any) -> list[tuple]:
        value, version, floor = state
        kind = input[0]
        if kind == "get":
            if isinstance(output, Unknown):
                return [state]
            if output is None:
                return [state] if value is None else []
            return [state] if value is not None and (value, version) == tuple(output) else []
        if kind in ("put", "cas"):
            new_value = input[1]
            holds = kind == "put" or version == input[2]
            if isinstance(output, Unknown):
                if not holds:
                    return [state]  # a CAS that did not hold changes nothing, whether or not it ran
                if output.version is None:
                    return [(new_value, Unseen(new_value), floor)]
                output = output.version  # a read showed the version it made: as if it had answered so
            if output == CAS_MISMATCH:
                return [] if holds else [state]
            return [(new_value, output, output)] if holds and output > floor else []
        if kind in ("delete", "cas_delete"):
            holds = kind == "delete" or version == input[1]
            if isinstance(output, Unknown):
                return [(None, 0, floor)] if holds else [state]
            if output == CAS_MISMATCH:
                return [] if holds else [state]
            return [(None, 0, floor)] if holds and bool(output) == (value is not None) else []
        raise ValueError(f"unknown KV operation {kind!r}")


WRITES = ("put", "cas")


def check_kv(history: History | Iterable[Operation], *, time_limit: float = 60.0) -> Result:
    """Check a KV history against :class:`VersionedRegister`, one key at a time.

    Every write must write a value of its own within its key (the generator's job;
    checked here): then a read that returned a value tells which write it saw, and
    an unknown write that a read saw gets that read's version. Reads whose outcome
    is unknown say nothing and are dropped.
    """
    ops = [op for op in (history.ops if isinstance(history, History) else history)
           if not (op.input[0] == "get" and isinstance(op.output, Unknown))]
    writers: dict[tuple, Operation] = {}
    for op in ops:
        if op.input[0] in WRITES:
            k = (op.key, op.input[1])
            if k in writers:
                raise ValueError(f"two writes of {op.input[1]!r} to {op.key!r}: values must be unique per write")
            writers[k] = op
    for op in ops:
        if op.input[0] == "get" and op.output is not None:
            w = writers.get((op.key, op.output[0]))
            if w is not None and isinstance(w.output, Unknown) and w.output.version is None:
                w.output = Unknown(op.output[1])
    return check(VersionedRegister(), ops, time_limit=time_limit)

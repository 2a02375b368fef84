"""Test hooks for the durable steps: crash points and injected I/O errors.

**For tests only.** Nothing here runs unless an environment variable names it when the
server starts (read once, at import; changing it later does nothing):

``FLO_CRASHPOINT=name[:N]``
    die at the N-th time (default 1) the server reaches crash point ``name`` - SIGKILL to
    itself, no flush, no atexit, like a power cut to the process. A line
    ``flo-server: crash point NAME hit N: dying now`` goes to stderr first, so a test can
    tell the point fired. In a forked snapshot child the server is killed with it (hits
    are counted in memory shared with those children: ``snap.before_rename:2`` is the
    second snapshot's).

``FLO_FAULT=errno:point:N[:TIMES][,...]``
    make hits N .. N+TIMES-1 (TIMES default 1) of fault point ``point`` fail with that
    errno (``eio``, ``enospc``, any ``errno`` name), as the disk would. How the server
    copes is in docs/reliability.md ("Disk full and I/O errors").

:data:`POINTS` lists every crash point and :data:`FAULTS` every fault point, those in
the C log writer (``flo_core.log``) included: one table, so a test parametrized from it
covers a new point without being told. Disarmed, a point costs one test of a bool: in
Python the module-level :data:`ACTIVE`, checked before any call; in C a ``cdef`` flag.

Example::

    FLO_CRASHPOINT=log.roll.after_sync flo-server --data-dir /tmp/d --snapshot-bytes 131072
    FLO_FAULT=eio:log.fsync:5:3 flo-server --fsync always ...   # fdatasyncs 5, 6 and 7 fail

    # in code, at a durable step:
    if faults.ACTIVE:
        faults.crash("snap.before_rename")
"""

from __future__ import annotations

import errno as _errno
import mmap
import os
import signal
from typing import NamedTuple

from flo_core import log as _clog

__all__ = ["POINTS", "FAULTS", "ACTIVE", "Point", "crash", "fault", "parse_crash_point", "parse_faults"]


class Point(NamedTuple):
    """One crash point: where it is (``c``: flo_core.log, ``py``: flo_server), and when a server
    reaches it: ``run`` (while serving writes), ``start`` (start-up over an existing log) or
    ``stop`` (clean shutdown); ``fault``: the FLO_FAULT that makes a server reach it (a step
    taken only after an I/O error), else empty."""

    where: str
    phase: str
    what: str
    fault: str = ""


#: Every crash point, by name: the steps of a log append, group commit, segment roll,
#: snapshot, log truncation, start-up and shutdown.
POINTS: dict[str, Point] = {
    # log append (flo_core.log.LogWriter.flush) and group commit (persistence.DiskJournal)
    "log.write.before": Point("c", "run", "records of a loop iteration pending, none written"),
    "log.write.torn": Point("c", "run", "half of the iteration's bytes written, then death: a torn record"),
    "log.write.after": Point("c", "run", "written to the file (page cache), before any fdatasync"),
    "group.after_flush": Point("py", "run", "the iteration's one write done, the fdatasync not yet asked for"),
    "log.fsync.after": Point("c", "run", "the syncer's fdatasync returned, the loop not told: no answer sent"),
    "group.after_sync": Point("py", "run", "the loop took the fdatasync's result, held answers not released"),
    # segment roll (LogWriter._rotate)
    "log.roll.before_sync": Point("c", "run", "rotation due: the old segment not yet cut to its data and synced"),
    "log.roll.after_sync": Point("c", "run", "the old segment synced and closed, the new one not created"),
    "log.roll.after_create": Point("c", "run", "the new segment file created, its directory entry not fsynced"),
    "log.roll.after_dirsync": Point("c", "run", "the new segment durable and empty, nothing written to it"),
    # snapshot (persistence.write_snapshot, in a forked child) and the log truncation after it
    "snap.mid_file": Point("py", "run", "the snapshot's temp file half written"),
    "snap.before_fsync": Point("py", "run", "the temp file written, not fsynced"),
    "snap.before_rename": Point("py", "run", "the temp file durable, not renamed"),
    "snap.after_rename": Point("py", "run", "renamed into place, the directory not fsynced"),
    "snap.before_prune": Point("py", "run", "the snapshot durable, older snapshots not yet removed"),
    "snap.before_truncate": Point("py", "run", "the server knows the snapshot is in place, no segment dropped yet"),
    "log.truncate.mid": Point("c", "run", "dropping segments below the snapshot: one unlinked, the rest not"),
    # start-up and clean shutdown
    "log.open.after_cut": Point("c", "start", "start-up cut the newest segment's tail, not yet fsynced"),
    "stop.before_snapshot": Point("py", "stop", "clean shutdown: the last records flushed, the final snapshot not taken"),
    "stop.before_close": Point("py", "stop", "the final snapshot taken, the log not yet closed"),
    "log.close.after_cut": Point("c", "stop", "clean close cut the zero room after the data, not yet fsynced"),
    # the retry after a failed fdatasync (persistence.DiskJournal._retry_storage)
    "log.rewrite.after": Point("c", "run", "the unsynced bytes written again after a failed fdatasync, not synced",
                               fault="eio:log.fsync:8:2"),
}

#: Every fault point (an I/O step that FLO_FAULT can fail), by name.
FAULTS: dict[str, str] = {
    "log.write": "the pwrite of a loop iteration's records (and their rewrite after a failed fdatasync)",
    "log.fsync": "every fdatasync of the open segment (the syncer's, and sync())",
    "log.roll": "rotation: cutting and fdatasync of the full segment",
    "log.roll.create": "rotation: creating the next segment",
    "snap.write": "writing a snapshot's temp file",
    "snap.rename": "renaming a snapshot's temp file into place",
}

assert {n for n, p in POINTS.items() if p.where == "c"} == set(_clog.CRASH_POINTS), "POINTS and flo_core.log disagree"
assert set(_clog.FAULT_POINTS) <= set(FAULTS), "FAULTS and flo_core.log disagree"

#: True when FLO_CRASHPOINT or FLO_FAULT armed something at start: the one check before any call.
ACTIVE = False

_SERVER_PID = os.getpid()
_crash_name: str | None = None
_crash_at = 0
_py_faults: dict[str, tuple[int, int, int, int]] = {}  # point -> (errno, first, until, counter slot)
# Hit counters of the Python points, in an anonymous shared mapping: the forked snapshot
# children count into the same memory as the server (slot 0: the crash point).
_counts: memoryview | None = None


def parse_crash_point(spec: str) -> tuple[str, int]:
    """``"name[:N]"`` -> ``(name, N)``; ``ValueError`` naming the known points otherwise.

    >>> parse_crash_point("log.roll.after_sync:3")
    ('log.roll.after_sync', 3)
    """
    name, _, nth = spec.strip().partition(":")
    if name not in POINTS:
        raise ValueError(f"FLO_CRASHPOINT: unknown crash point {name!r}; known: {', '.join(POINTS)}")
    try:
        n = int(nth) if nth else 1
    except ValueError:
        raise ValueError(f"FLO_CRASHPOINT: N must be a whole number, not {nth!r}") from None
    if n < 1:
        raise ValueError("FLO_CRASHPOINT: N must be >= 1")
    return name, n


def parse_faults(spec: str) -> list[tuple[int, str, int, int]]:
    """``"eio:log.write:3:2,enospc:snap.write:1"`` -> ``[(errno, point, first, times), ...]``.

    >>> parse_faults("eio:log.fsync:5:3")
    [(5, 'log.fsync', 5, 3)]
    """
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        parts = item.split(":")
        if len(parts) not in (3, 4):
            raise ValueError(f"FLO_FAULT: {item!r} is not errno:point:N[:TIMES]")
        code = getattr(_errno, parts[0].upper(), None)
        if not isinstance(code, int):
            raise ValueError(f"FLO_FAULT: {parts[0]!r} is not an errno name (eio, enospc, ...)")
        if parts[1] not in FAULTS:
            raise ValueError(f"FLO_FAULT: unknown fault point {parts[1]!r}; known: {', '.join(FAULTS)}")
        try:
            first, times = int(parts[2]), int(parts[3]) if len(parts) == 4 else 1
        except ValueError:
            raise ValueError(f"FLO_FAULT: N and TIMES of {item!r} must be whole numbers") from None
        if first < 1 or times < 1:
            raise ValueError(f"FLO_FAULT: N and TIMES of {item!r} must be >= 1")
        out.append((code, parts[1], first, times))
    return out


def _die(name: str, nth: int) -> None:
    os.write(2, f"flo-server: crash point {name} hit {nth}: dying now (FLO_CRASHPOINT test hook)\n".encode())
    if os.getpid() != _SERVER_PID:  # a forked child (snapshot): the server goes with it
        os.kill(_SERVER_PID, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)


def crash(name: str) -> None:
    """A Python crash point was reached: die if it is the armed one's N-th hit. Call only under ``ACTIVE``."""
    if name != _crash_name:
        return
    _counts[0] += 1
    if _counts[0] == _crash_at:
        _die(name, _crash_at)


def fault(name: str) -> None:
    """A Python fault point was reached: raise the armed ``OSError`` on its failing hits. Call only under ``ACTIVE``."""
    f = _py_faults.get(name)
    if f is None:
        return
    code, first, until, slot = f
    _counts[slot] += 1
    if first <= _counts[slot] < until:
        raise OSError(code, f"{os.strerror(code)} (FLO_FAULT {name})")


def _arm_from_env() -> None:
    global ACTIVE, _crash_name, _crash_at, _counts
    spec = os.environ.get("FLO_CRASHPOINT", "").strip()
    faults = parse_faults(os.environ.get("FLO_FAULT", ""))
    if spec or faults:
        _counts = memoryview(mmap.mmap(-1, 8 * (1 + len(FAULTS)), mmap.MAP_SHARED)).cast("Q")
    if spec:
        name, nth = parse_crash_point(spec)
        if POINTS[name].where == "c":
            _clog.arm_crash_point(name, nth, _SERVER_PID)
        else:
            _crash_name, _crash_at = name, nth
        ACTIVE = True
    for code, point, first, times in faults:
        if point in _clog.FAULT_POINTS:
            _clog.arm_fault(point, code, first, times, _SERVER_PID)
        else:
            _py_faults[point] = (code, first, first + times, 1 + list(FAULTS).index(point))
        ACTIVE = True


_arm_from_env()

"""flmping's service: Flame's ping application, what the built-in ``flmping`` runs.

A task's input is Flame's ``PingRequest`` as JSON (``{"duration": ms, "memory":
bytes}``, both optional; no input at all is an empty request); the service holds
that much memory for that long and answers Flame's ``PingResponse``::

    {"message": "Completed on <host> in <12> milliseconds with <1048576> memory"}

Client side, with any flamepy session::

    ssn = flamepy.create_session("flmping")
    print(json.loads(ssn.invoke(b'{"duration": 10}'))["message"])

Run by the executor manager as ``python -m flamepy.apps.flmping``; run by hand (no
``FLAME_INSTANCE_ID``) the same command is Flame's ``flmping`` client::

    python -m flamepy.apps.flmping -t 10            # a table of the 10 answers
    python -m flamepy.apps.flmping -p -t 30000      # BENCHMARK RESULTS: duration, succeeded, throughput
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import socket
import sys
import time
from typing import Any, Optional, Sequence

from ..core.service import FlameService, TaskContext, run

__all__ = ["PingService", "ping", "parse_request", "MAX_DURATION_MS", "MAX_MEMORY_BYTES"]

MAX_DURATION_MS = 3_600_000         # one hour
MAX_MEMORY_BYTES = 4 << 30          # 4 GiB
MAX_REQUEST_BYTES = 64 * 1024


class PingError(ValueError):
    """A ping request the service refuses (the task fails with this message)."""


def parse_request(data: Optional[bytes]) -> tuple[Optional[int], Optional[int]]:
    """(duration ms, memory bytes) of a PingRequest; no input, ``b""`` or ``null`` are an empty request.

    >>> parse_request(b'{"duration": 5, "memory": null}')
    (5, None)
    """
    if data is None or not bytes(data).strip():
        return None, None
    if len(data) > MAX_REQUEST_BYTES:
        raise PingError(f"ping request is {len(data)} bytes, more than {MAX_REQUEST_BYTES}")
    try:
        req = json.loads(bytes(data))
    except (ValueError, UnicodeDecodeError) as exc:
        raise PingError(f"ping request is not JSON: {exc}") from None
    if req is None:
        return None, None
    if not isinstance(req, dict):
        raise PingError("ping request must be a JSON object like {\"duration\": 10, \"memory\": 1024}")
    return (_bounded(req.get("duration"), "duration", MAX_DURATION_MS),
            _bounded(req.get("memory"), "memory", MAX_MEMORY_BYTES))


def _bounded(value: Any, name: str, limit: int) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= limit:
        raise PingError(f"ping {name} must be an integer from 0 to {limit}, not {value!r}")
    return value


def ping(data: Optional[bytes]) -> bytes:
    """Hold the requested memory for the requested time; the PingResponse JSON."""
    duration, memory = parse_request(data)
    start = time.monotonic()
    held = _hold(memory or 0)
    try:
        if duration:
            time.sleep(duration / 1000)
        elapsed_ms = int((time.monotonic() - start) * 1000)
        size = len(held) if held is not None else 0
    finally:
        if held is not None:
            held.close()
    message = f"Completed on <{socket.gethostname()}> in <{elapsed_ms}> milliseconds with <{size}> memory"
    return json.dumps({"message": message}).encode()


def _hold(size: int) -> Optional[mmap.mmap]:
    """``size`` bytes really resident: every page written (0.6.0's zeroed buffer was never touched, so
    the kernel backed none of it and ``memory`` did not load the node)."""
    if size <= 0:
        return None
    try:
        buf = mmap.mmap(-1, size)
    except (OSError, OverflowError) as exc:
        raise PingError(f"cannot allocate {size} bytes: {exc}") from None
    page = mmap.PAGESIZE
    buf[::page] = b"\x01" * len(range(0, size, page))
    return buf


class PingService(FlameService):
    """The bytes-level service: one ping per task."""

    def on_task_invoke(self, context: TaskContext) -> Optional[bytes]:
        return ping(context.input)


def client(argv: Optional[Sequence[str]] = None) -> int:
    """Flame's ``flmping`` CLI: ``-t`` tasks, ``-c`` common data, ``-d`` sleep ms, ``-m`` memory, ``-p`` perf
    summary, ``-P`` priority, ``-r`` resreq; the exit status is 1 if a task failed."""
    from ..cli.flmctl import format_table
    from ..core import client as core_client
    from ..core.types import FlameError, SessionAttributes, TaskState, parse_memory

    p = argparse.ArgumentParser(prog="flmping", description="Flame Ping: run ping tasks in a flmping session")
    p.add_argument("-t", "--task-num", type=int, default=10)
    p.add_argument("-c", "--common-data", help="common data of the session")
    p.add_argument("-d", "--duration", type=int, help="milliseconds each task sleeps")
    p.add_argument("-m", "--memory", help="memory each task holds, e.g. 64m or 1Gi")
    p.add_argument("-p", "--perf", action="store_true", help="summary only (benchmark mode)")
    p.add_argument("-P", "--priority", type=int, default=0)
    p.add_argument("-r", "--resreq", help='"cpu=N,mem=SIZE,gpu=N"')
    args = p.parse_args(argv)
    if not 0 < args.task_num <= 10_000_000:
        p.error("--task-num must be from 1 to 10000000")
    try:
        memory = parse_memory(args.memory) if args.memory else None
        request = json.dumps({"duration": args.duration, "memory": memory}).encode()
        parse_request(request)
        common = json.dumps({"value": args.common_data}).encode() if args.common_data is not None else None
        started = time.monotonic()
        ssn = core_client.connection().create_session(
            SessionAttributes(application="flmping", common_data=common, resreq=args.resreq), priority=args.priority)
    except (FlameError, ValueError) as exc:
        print(f"flmping: {exc}", file=sys.stderr)
        return 1
    print(f"Session <{ssn.id}> was created in <{int((time.monotonic() - started) * 1000)} ms>, "
          f"start to run <{args.task_num:,}> tasks in the session:\n")
    try:
        started = time.monotonic()
        futures = ssn.run_many([request] * args.task_num)
        rows, failed = [], 0
        for f in futures:
            try:
                state, output = TaskState.SUCCEED, json.loads(f.result())["message"]
            except FlameError as exc:
                state, output, failed = TaskState.FAILED, exc.message, failed + 1
            if not args.perf:
                rows.append([ssn.id, f.task_id, state.name.capitalize(), output])
        took = time.monotonic() - started
    finally:
        ssn.close()
    if args.perf:
        done = args.task_num - failed
        print("\n" + "=" * 60 + "\nBENCHMARK RESULTS\n" + "=" * 60)
        print(f"Duration:        {took:.2f}s\nSucceeded:       {done}/{args.task_num}\nFailed:          {failed}")
        print(f"Throughput:      {done / took if took > 0 else 0.0:.2f} tasks/sec\n" + "=" * 60 + "\n")
    else:
        print(format_table(["Session", "Task", "State", "Output"], rows))
        print(f"\n\n<{args.task_num:,}> tasks was completed in <{int(took * 1000):,} ms>.\n")
    return 1 if failed else 0


def main() -> None:
    """The service when the executor manager started us, else the ``flmping`` client."""
    if os.environ.get("FLAME_INSTANCE_ID"):
        run(PingService())
    else:
        sys.exit(client())


if __name__ == "__main__":
    main()

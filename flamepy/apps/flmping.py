"""flmping's service: Flame's ping application, what the built-in ``flmping`` runs.

A task's input is Flame's ``PingRequest`` as JSON (``{"duration": ms, "memory":
bytes}``, both optional; no input at all is an empty request); the service holds
that much memory for that long and answers Flame's ``PingResponse``::

    {"message": "Completed on <host> in <12> milliseconds with <1048576> memory"}

Client side, with any flamepy session::

    ssn = flamepy.create_session("flmping")
    print(json.loads(ssn.invoke(b'{"duration": 10}'))["message"])

Run by the executor manager as ``python -m flamepy.apps.flmping``.
"""

from __future__ import annotations

import json
import mmap
import socket
import time
from typing import Any, Optional

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


def main() -> None:
    run(PingService())


if __name__ == "__main__":
    main()

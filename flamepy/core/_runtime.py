"""The private event loop that runs the async flo_client for flamepy's sync API.

One daemon thread per process owns one loop; every sync call hops onto it with
``run(coro)``. Keeping all network I/O on one loop lets concurrent callers
(threads, futures) share one pipelined connection.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import threading
from typing import Any, Awaitable, Optional

__all__ = ["run", "submit", "loop", "in_loop_thread"]

_lock = threading.Lock()
_loop: Optional[asyncio.AbstractEventLoop] = None
_thread: Optional[threading.Thread] = None


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()


def loop() -> asyncio.AbstractEventLoop:
    global _loop, _thread
    with _lock:
        if _loop is None or not _thread.is_alive():
            _loop = _new_loop()
            ready = threading.Event()

            def main(lp=_loop):
                asyncio.set_event_loop(lp)
                lp.call_soon(ready.set)
                lp.run_forever()

            _thread = threading.Thread(target=main, name="flamepy-io", daemon=True)
            _thread.start()
            ready.wait()
        return _loop


def in_loop_thread() -> bool:
    return _thread is not None and threading.current_thread() is _thread


def submit(coro: Awaitable) -> concurrent.futures.Future:
    return asyncio.run_coroutine_threadsafe(coro, loop())


def run(coro: Awaitable, timeout: Optional[float] = None) -> Any:
    """Run ``coro`` on the flamepy loop and wait for its result from a plain thread."""
    if in_loop_thread():
        raise RuntimeError("flamepy's synchronous API was called from its own I/O thread; use the async layer")
    return submit(coro).result(timeout)


@atexit.register
def _stop() -> None:
    if _loop is not None and _loop.is_running():
        _loop.call_soon_threadsafe(_loop.stop)

"""No-op action workers for the action round-trip workload: one process = one ``ActionWorker``.

The harness starts N of these (pinned to the load core) before an ``action.roundtrip``
cell and stops them by pid after it. Each registers the action (``--action``), prints
``ready <worker id>`` once it is taking work, completes every run with its input, and
exits on SIGTERM / SIGINT or after ``--max-seconds`` (a worker never outlives its bound).

Example::

    taskset -c 1 python -m bench.action_workers --port 9000 --action bench-noop-w4 --max-seconds 60
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

LOOPBACK = ("127.0.0.1", "localhost", "::1")


async def serve(host: str, port: int, action: str, concurrency: int, max_seconds: float) -> int:
    """Run one ActionWorker until a signal or ``max_seconds``; the number of runs it completed."""
    from flo_client import FloClient
    from flo_client.action_worker import ActionContext, ActionWorker

    done = 0
    async with FloClient(f"{host}:{port}") as client:
        worker = ActionWorker(client, concurrency=concurrency, auto_touch=False, block_ms=5_000)

        async def noop(ctx: ActionContext) -> bytes:
            nonlocal done
            done += 1
            return ctx.payload

        worker.register_action(action, noop, timeout_ms=30_000, max_retries=1)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, worker.stop)
        loop.call_later(max_seconds, worker.stop)
        runner = asyncio.ensure_future(worker.start())
        # "ready" only once the action is registered and the worker polls (invokes before that are refused).
        while not worker.running and not runner.done():
            await asyncio.sleep(0.01)  # polling our own flag, bounded by max_seconds via worker.stop
        if worker.running:
            print(f"ready {worker.worker_id}", flush=True)
        await runner
    return done


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m bench.action_workers", description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--action", required=True)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--max-seconds", type=float, default=120.0)
    a = ap.parse_args(argv)
    if a.host not in LOOPBACK:
        ap.error("loopback only")
    if not 1 <= a.concurrency <= 1024:
        ap.error("--concurrency must be in [1, 1024]")
    if not 0 < a.max_seconds <= 3600:
        ap.error("--max-seconds must be in (0, 3600]")
    import uvloop

    n = uvloop.run(serve(a.host, a.port, a.action, a.concurrency, a.max_seconds))
    print(f"completed {n}", flush=True)


if __name__ == "__main__":
    sys.exit(main())

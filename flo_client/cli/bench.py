"""``flo bench``: a quick load test, like ``redis-benchmark -t set,get``.

Each test runs ``--ops`` requests (or until ``--max-seconds``) from
``--connections`` clients with ``--pipeline`` requests in flight on each, and
prints one result line: ops/s and the p50 / p99 latency of single requests.
GET reads the keys SET wrote (run ``set`` first, as the default does).

Example::

    flo bench --ops 100000 --connections 4 --pipeline 32 --value-size 256
    flo --json bench --test get --ops 2000
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

import click

from ..client import FloClient
from .session import Session, flo_command

TESTS = ("set", "get")
PROGRESS_TICK_S = 0.1


@dataclass
class BenchResult:
    test: str
    ops: int
    seconds: float
    latencies_s: list[float]

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0

    def percentile_ms(self, q: float) -> float:
        if not self.latencies_s:
            return 0.0
        ordered = sorted(self.latencies_s)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    def doc(self) -> dict:
        return {"test": self.test, "ops": self.ops, "seconds": round(self.seconds, 4),
                "ops_per_s": round(self.ops_per_s, 1), "p50_ms": round(self.percentile_ms(0.50), 3),
                "p99_ms": round(self.percentile_ms(0.99), 3)}

    def line(self) -> str:
        return (f"{self.test.upper()}: {self.ops} ops in {self.seconds:.2f} s, {self.ops_per_s:,.0f} ops/s, "
                f"p50 {self.percentile_ms(0.50):.3f} ms, p99 {self.percentile_ms(0.99):.3f} ms")


Op = Callable[[FloClient, int], Awaitable[object]]


def make_op(test: str, key_prefix: str, keyspace: int, value: bytes) -> Op:
    if test == "set":
        return lambda client, i: client.kv.put(f"{key_prefix}{i % keyspace}", value)
    return lambda client, i: client.kv.get(f"{key_prefix}{i % keyspace}")


async def run_test(test: str, op: Op, clients: list[FloClient], ops: int, pipeline: int, max_seconds: float,
                   show_progress: bool) -> BenchResult:
    """``pipeline`` coroutines per client take op numbers from one shared iterator until it or the time runs out."""
    loop = asyncio.get_running_loop()
    numbers = iter(range(ops))
    latencies: list[float] = []
    start = time.perf_counter()
    deadline = loop.time() + max_seconds

    async def worker(client: FloClient) -> None:
        for i in numbers:
            if loop.time() > deadline:
                return
            t0 = time.perf_counter()
            await op(client, i)
            latencies.append(time.perf_counter() - t0)

    async def progress(bar: click.progressbar) -> None:  # type: ignore[valid-type]
        shown = 0
        while True:
            await asyncio.sleep(PROGRESS_TICK_S)
            bar.update(len(latencies) - shown)
            shown = len(latencies)

    stderr = click.get_text_stream("stderr")
    with click.progressbar(length=ops, label=f"{test.upper():<4}", hidden=not show_progress, file=stderr) as bar:
        ticker = asyncio.ensure_future(progress(bar))
        try:
            await asyncio.gather(*(worker(c) for c in clients for _ in range(pipeline)))
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        bar.update(len(latencies) - bar.pos)
    return BenchResult(test, len(latencies), time.perf_counter() - start, latencies)


def _tests(ctx: click.Context, param: click.Parameter, value: str) -> list[str]:
    chosen = [t.strip().lower() for t in value.split(",") if t.strip()]
    unknown = [t for t in chosen if t not in TESTS]
    if unknown or not chosen:
        raise click.BadParameter(f"{', '.join(unknown) or 'none'}: choose from {', '.join(TESTS)}", ctx, param)
    return chosen


@click.command("bench")
@click.option("--test", "tests", default="set,get", show_default=True, callback=_tests,
              help="Comma-separated: set, get.")
@click.option("--ops", type=click.IntRange(min=1), default=100_000, show_default=True, help="Requests per test.")
@click.option("--connections", "-c", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--pipeline", "-P", type=click.IntRange(min=1), default=16, show_default=True,
              help="Requests in flight per connection.")
@click.option("--value-size", type=click.IntRange(min=0), default=64, show_default=True, metavar="BYTES")
@click.option("--keys", "keyspace", type=click.IntRange(min=1), default=10_000, show_default=True,
              help="Distinct keys used.")
@click.option("--key-prefix", default="bench:", show_default=True)
@click.option("--max-seconds", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              help="Stop a test after this long even if --ops are not done.")
@flo_command
async def bench(session: Session, client: FloClient, tests: list[str], ops: int, connections: int, pipeline: int,
                value_size: int, keyspace: int, key_prefix: str, max_seconds: float) -> None:
    """Load the server with SET / GET and print ops/s and p50 / p99 latency per test.

    \b
    Examples:
      flo bench --ops 2000
      flo bench --test set --ops 1000000 --connections 8 --pipeline 64 --max-seconds 10
    """
    value = b"x" * value_size
    extra = [session.target.client() for _ in range(connections - 1)]
    try:
        await asyncio.gather(*(c.connect() for c in extra))
        clients = [client, *extra]
        results = []
        for test in tests:
            result = await run_test(test, make_op(test, key_prefix, keyspace, value), clients, ops, pipeline,
                                    max_seconds, show_progress=not session.json_output)
            results.append(result)
    finally:
        await asyncio.gather(*(c.close() for c in extra))
    setup = {"connections": connections, "pipeline": pipeline, "value_size": value_size, "keys": keyspace}
    session.emit({**setup, "results": [r.doc() for r in results]},
                 "\n".join(r.line() for r in results) + f"\n({connections} connections x {pipeline} in flight, "
                                                       f"{value_size} B values, {keyspace} keys)")

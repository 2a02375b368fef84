"""``flame-executor --server HOST:PORT``: a standalone executor manager for another machine."""

from __future__ import annotations

import asyncio
import logging
import signal

import click

from ..core.config import normalize_endpoint
from ..core.types import parse_memory
from .manager import ExecutorManager, NodeCapacity


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--server", "server", default="127.0.0.1:9000", show_default=True, help="flo-server HOST:PORT")
@click.option("--node", default=None, help="node name (default: hostname)")
@click.option("--cpu", type=int, default=None, help="cpus this node offers (default: all)")
@click.option("--memory", default=None, help="memory this node offers, e.g. 16g (default: all)")
@click.option("--gpu", type=int, default=None, help="gpus this node offers (default: 0)")
@click.option("--max-instances", type=int, default=None, help="instances at most on this node (default: 128)")
@click.option("--work-dir", default=None, help="where instances without working_directory run")
@click.option("--startup-timeout", type=float, default=30.0, show_default=True,
              help="seconds a service has to become ready")
@click.option("--install-timeout", type=float, default=600.0, show_default=True,
              help="seconds an application's package install (pip/uv) may take")
@click.option("--log-level", default="INFO", show_default=True)
def main(server, node, cpu, memory, gpu, max_instances, work_dir, startup_timeout, install_timeout,
         log_level) -> None:
    """Launch flamepy service processes for the sessions of a flo-server."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cap = NodeCapacity.from_env()
    if cpu is not None:
        cap.cpu = cpu
    if memory is not None:
        cap.memory = parse_memory(memory)
    if gpu is not None:
        cap.gpu = gpu
    if max_instances is not None:
        cap.max_instances = max_instances
    manager = ExecutorManager(normalize_endpoint(server), node_name=node, capacity=cap, work_dir=work_dir,
                              startup_timeout=startup_timeout, install_timeout=install_timeout)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await manager.start()
        try:
            waiter = asyncio.ensure_future(stop.wait())
            await asyncio.wait({waiter, manager._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await manager.stop()

    try:
        import uvloop
        uvloop.run(run())
    except ImportError:  # pragma: no cover
        asyncio.run(run())


if __name__ == "__main__":
    main()

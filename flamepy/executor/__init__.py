"""The executor manager (``flame-executor``) that launches flamepy service processes."""

from .manager import ExecutorManager, NodeCapacity, run_embedded_executor

__all__ = ["ExecutorManager", "NodeCapacity", "run_embedded_executor"]

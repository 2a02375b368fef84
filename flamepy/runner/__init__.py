"""flamepy.runner: package this project, register a temporary application, call Python objects remotely.

    from flamepy.runner import Runner

    with Runner("chain-app") as runner:
        double = runner.service(lambda v: v * 2)
        add = runner.service(lambda a, b: a + b)
        print(add(double(21), 8).get())          # 50: the first result never visits the client

``Runner`` / ``RunnerService`` / ``ObjectFuture`` (flamepy.runner.runner), the
data types (flamepy.runner.types), ``get_data`` (flamepy.runner.helper), the
service side ``FlameRunpyService`` (flamepy.runner.runpy, run by the built-in
``flmrun`` application) and ``python -m flamepy.runner.e2e`` (a smoke test of
a configured cluster). docs/flamepy.md, "Runner", has the details.
"""

from .helper import ErrorType, RunnerError, get_data
from .runner import ObjectFuture, ObjectFutureIterator, Runner, RunnerService
from .types import RunnerContext, RunnerRequest, SessionContext

__all__ = ["SessionContext", "ObjectFuture", "ObjectFutureIterator", "Runner", "RunnerService",
           "FlameRunpyService", "RunnerContext", "RunnerRequest", "get_data", "RunnerError", "ErrorType"]


def __getattr__(name: str):
    # Imported on first use: ``python -m flamepy.runner.runpy`` must not find it loaded already.
    if name == "FlameRunpyService":
        from .runpy import FlameRunpyService
        return FlameRunpyService
    raise AttributeError(f"module 'flamepy.runner' has no attribute {name!r}")

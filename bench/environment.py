"""The environment block that goes with every result, and the debug-build check.

A benchmark number means nothing without the build it measured: the git sha
(and whether the tree was dirty), Python, Cython, uvloop, the CPU and the tool
versions are recorded beside every result. A ``FLO_DEBUG`` build of flo_core
(line tracing, bounds checks) is refused: its numbers would be misleading.

Example:
    >>> env = environment()
    >>> sorted(env)[:3]
    ['cpu', 'cpu_count', 'cython']
"""

from __future__ import annotations

import glob
import importlib
import importlib.util
import os
import platform
import subprocess
import sys
from pathlib import Path

from .servers import REPO, tool_version

# Only a Cython build with line tracing (setup.py's FLO_DEBUG=1) links this helper in.
_TRACE_MARKER = b"__Pyx_call_line_trace_func"


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def _version(module: str) -> str:
    try:
        return str(getattr(importlib.import_module(module), "__version__", "?"))
    except ImportError:
        return "not installed"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def debug_build_reasons() -> list[str]:
    """Why this flo_core looks like a debug (or non-compiled) build; empty when it is a release build."""
    import flo_core
    from flo_core import wire

    reasons = []
    if not wire.COMPILED:
        reasons.append("flo_core.wire uses the pure-Python codec (FLO_PUREPYTHON set, or the extension is not built)")
    pkg = Path(flo_core.__file__).parent
    for so in sorted(glob.glob(str(pkg / "*.so"))):
        mod = importlib.import_module("flo_core." + Path(so).name.split(".")[0])
        if getattr(mod, "FLO_DEBUG", False):
            reasons.append(f"{Path(so).name} says FLO_DEBUG")
            continue
        with open(so, "rb") as f:
            if _TRACE_MARKER in f.read():
                reasons.append(f"{Path(so).name} is built with line tracing (FLO_DEBUG=1)")
    # Belt and braces: a traced build reports Cython calls to a profiler.
    if wire.COMPILED:
        seen: list[str] = []

        def prof(frame, event, arg):  # type: ignore[no-untyped-def]
            if event == "call" and frame.f_code.co_filename.endswith(".pyx"):
                seen.append(frame.f_code.co_filename)

        sys.setprofile(prof)
        try:
            wire.encode_request(1, 0x101, b"\x00\x00\x00\x00")
        finally:
            sys.setprofile(None)
        if seen and not any("line tracing" in r for r in reasons):
            reasons.append(f"{seen[0]} reports calls to the profiler (built with line tracing)")
    return reasons


def environment() -> dict:
    """Everything a reader needs to know which build on which machine produced a number."""
    sha = _git("rev-parse", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    try:
        from flo_core import wire

        compiled = wire.COMPILED
    except ImportError:
        compiled = False
    return {
        "git_sha": sha or "unknown",
        "git_dirty": dirty,
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "cython": _version("Cython"),
        "uvloop": _version("uvloop"),
        "msgpack": _version("msgpack"),
        "flo_core_compiled": compiled,
        # the load generator's closed loop: in C (bench/fastload.pyx) or, where that is not built, Python
        "loadgen_engine": "c" if importlib.util.find_spec("bench.fastload") is not None else "python",
        "debug_build": bool(debug_build_reasons()),
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "redis_server": tool_version(["redis-server", "--version"]),
        "redis_benchmark": tool_version(["redis-benchmark", "--version"]),
    }

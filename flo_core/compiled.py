"""The pure-Python modules ``setup.py`` also compiles with Cython, as they are.

Why: they are the interpreter's share of the action round trip (invoke, park, await, complete,
answer); compiled, the server spends about a tenth less CPU per round trip. The ``.py`` files stay
the source and run as they are where nothing was built (``FLO_NO_EXT=1``, no compiler).

Where a class is an extension type in the compiled build, a ``.pxd`` beside its ``.py`` says so
and types its fields and hot locals (``flo_server/actions.pxd``, ``waiters.pxd``,
``handlers/action.pxd``); the ``.py`` stays valid, unchanged Python.

A built extension shadows its ``.py``: after editing one, rebuild (``make build``).
:func:`stale` names the extensions older than their source (tests/unit/test_build.py fails on them).

Example:
    >>> "flo_server/actions.py" in SOURCES
    True
"""

from __future__ import annotations

import importlib.machinery
import os

#: Paths from the repository root (``setup.py`` reads this file without importing the package).
SOURCES = (
    "flo_core/body.py",
    "flo_server/actions.py",
    "flo_server/dispatch.py",
    "flo_server/handlers/action.py",
    "flo_server/persistence.py",
    "flo_server/protocol.py",
    "flo_server/waiters.py",
)

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def module_name(source: str) -> str:
    """``"flo_server/actions.py"`` -> ``"flo_server.actions"``."""
    return os.path.splitext(source)[0].replace("/", ".")


def extension_of(source: str) -> str | None:
    """The built extension beside ``source`` (the file an import loads instead of it), or None."""
    base = os.path.join(_ROOT, os.path.splitext(source)[0])
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if os.path.exists(base + suffix):
            return base + suffix
    return None


def declarations(source: str) -> str | None:
    """The ``.pxd`` beside ``source`` that types its compiled module (its classes become extension
    types), or None."""
    pxd = os.path.join(_ROOT, os.path.splitext(source)[0] + ".pxd")
    return pxd if os.path.exists(pxd) else None


def stale() -> list[str]:
    """The sources (or their ``.pxd``) edited since their extension was built: an import would run
    the old code."""
    out = []
    for source in SOURCES:
        ext = extension_of(source)
        if ext is None:
            continue
        inputs = [os.path.join(_ROOT, source)] + [p for p in [declarations(source)] if p]
        if os.path.getmtime(ext) < max(os.path.getmtime(p) for p in inputs):
            out.append(source)
    return out


def not_compiled() -> list[str]:
    """The sources that run as Python here (no extension built for them)."""
    return [s for s in SOURCES if extension_of(s) is None]

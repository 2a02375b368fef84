"""The built-in applications: what every flo-server offers without a ``flmctl register``.

The executor manager registers them when it starts (inside flo-server, or a
standalone ``flame-executor``), each only if absent: an application a user
edited or re-registered under the same name is never overwritten.

``BUILTIN_APPLICATIONS`` is the one table: name → ApplicationAttributes fields.
An entry without ``command`` runs the executor's own Python
(``arguments: ["-m", <module>]``); an entry whose module this installation
does not have is skipped, so a table slot never registers something that
cannot start.

>>> "flmrun" in builtin_specs()
True
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from typing import Optional

from ..core.types import FlameError

__all__ = ["BUILTIN_APPLICATIONS", "builtin_specs", "register_builtin_applications"]

log = logging.getLogger("flamepy.apps")

BUILTIN_APPLICATIONS: dict[str, dict] = {
    # The Runner template (flamepy.runner.Runner copies it for each temporary application): the
    # executor installs the Runner's package (installer: python) and runs flamepy.runner.runpy.
    "flmrun": {
        "description": "Flame Runner template: runs the functions, classes and objects of a packaged project",
        "labels": ["builtin", "runner"],
        "arguments": ["-m", "flamepy.runner.runpy"],
        "installer": "python",
    },
    # Flame's script runner: a task's input is a Script JSON, its output the script's stdout (flamepy/apps/flmexec.py).
    "flmexec": {
        "description": "Flame script runner: runs a task's Python or shell script, answers its stdout",
        "labels": ["builtin", "exec"],
        "arguments": ["-m", "flamepy.apps.flmexec"],
    },
    # Flame's ping service: holds the requested memory for the requested time (flamepy/apps/flmping.py).
    "flmping": {
        "description": "Flame ping service: answers where and how long a task ran",
        "labels": ["builtin", "ping"],
        "arguments": ["-m", "flamepy.apps.flmping"],
    },
}


def _module_of(spec: dict) -> Optional[str]:
    args = spec.get("arguments") or []
    return args[1] if len(args) >= 2 and args[0] == "-m" else None


def builtin_specs(python: Optional[str] = None) -> dict[str, dict]:
    """The table, ready to register: ``command`` filled in with ``python`` (default: this Python),
    entries whose ``-m`` module is not importable here left out."""
    out = {}
    for name, spec in BUILTIN_APPLICATIONS.items():
        module = _module_of(spec)
        if module is not None:
            try:
                found = importlib.util.find_spec(module) is not None
            except (ImportError, ValueError):
                found = False
            if not found:
                log.debug("built-in application %s skipped: module %s is not installed", name, module)
                continue
        attrs = dict(spec)
        attrs.setdefault("command", python or sys.executable)
        out[name] = attrs
    return out


async def register_builtin_applications(store, python: Optional[str] = None) -> list[str]:
    """Register every built-in application that is absent; the names registered now.

    A name that exists already (registered before, or by a user) is left as it is.
    """
    from ..core import ops

    registered = []
    for name, attrs in builtin_specs(python).items():
        if await ops.get_application(store, name) is not None:
            continue
        try:
            await ops.register_application(store, name, attrs)
        except FlameError as exc:
            if "already exists" in exc.message:  # another manager was quicker
                continue
            raise
        registered.append(name)
    if registered:
        log.info("registered built-in applications: %s", ", ".join(registered))
    return registered

"""The cyclic garbage collector's settings for a process that serves requests for a long time
(flo-server, a flamepy service instance).

Why: a served request allocates tens of short-lived objects (tuples, frames, parked waiters), so
CPython's default first-generation threshold (700) starts a collection every few requests, and
each one walks whatever is still alive then. At 20 000 most of a request's objects are gone before
the collector looks: an action round trip costs the server about 7 % less CPU. What exists once
start-up is over (recovered stores, imported modules) is frozen out of the collector's sight.

Example (once start-up is over)::

    gctune.settle()
"""

from __future__ import annotations

import gc

#: (generation 0 allocations, generation 1 collections, generation 2 collections) between passes.
SERVING_THRESHOLDS = (20_000, 50, 100)


def settle() -> None:
    """Start-up is over: collect once, freeze what is alive, and collect less often from now on."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*SERVING_THRESHOLDS)

"""Routing of the ops that are not "the owner of one key's slot" on a cluster of several shards.

Called by :meth:`flo_server.cluster.router.Router.route` for the ops in ``router.ACROSS_SHARDS`` when
the cluster has more than one shard; returns what ``route`` returns: None to serve the request here,
or a coroutine answering ``(status, data)``.
"""

from __future__ import annotations

from typing import Any

from flo_core.errors import Refusal
from flo_core.spec import SPEC, Reason


def route(router: Any, req: Any, op: int, payload: bytes) -> Any:
    name = SPEC[op].op.name
    raise Refusal(Reason.UNCLASSIFIED, f"{name} is not supported on a cluster of more than one shard yet "
                                       "(docs/cluster.md)")

"""ServerCore's C fast paths (STREAM_APPEND, KV_INCR) through a real server: what they log replays.

The byte-for-byte comparison with the Python handlers is in tests/unit/test_core_fastpath.py; here a
real flo-server serves appends (with headers, batches) and increments in C, is killed (-9, so
recovery replays the log records the C encoders wrote) and must come back with the same records,
ids, counters and TTLs - and a FLO_NO_FASTPATH server replaying the same data directory agrees.
"""

from __future__ import annotations

import os

import pytest

from flo_client.client import FloClient
from flo_client.stream import StreamAppendOptions, StreamReadOptions

pytestmark = pytest.mark.integration


async def _state(endpoint: str) -> tuple:
    async with FloClient(endpoint) as c:
        events = await c.stream.read("events", StreamReadOptions(count=1000))
        other = await c.stream.read("other", StreamReadOptions(count=1000, namespace="tenant"))
        counters = [await c.kv.get(k) for k in ("hits", "ttl")]
        recs = [(r.id, r.payload, r.headers) for r in list(events) + list(other)]
        return recs, [(e.value, e.version) if e else None for e in counters]


async def test_fast_appends_and_incrs_replay_after_kill(make_server):
    sp = make_server(fsync="everysec")
    async with FloClient(sp.endpoint) as c:
        ids = [(await c.stream.append("events", b"e%d" % i)).id for i in range(20)]
        ids += await c.stream.append_batch("events", [(b"h", {"k": "v", "\u00e9": "\u4e2d"}), b"plain", (b"x" * 70000, None)])
        await c.stream.append("other", b"o", StreamAppendOptions(namespace="tenant", headers={"a": "b"}))
        for _ in range(7):
            await c.kv.incr("hits")
        await c.kv.incr("hits", -3)
        await c.kv.put("ttl", b"10", ttl_seconds=3600)
        await c.kv.incr("ttl", 5)
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    before = await _state(sp.endpoint)
    assert before[1][0][0] == b"4" and before[1][1][0] == b"15"
    assert before[0][20][2] == {"k": "v", "\u00e9": "\u4e2d"} and len(before[0]) == 24

    sp.restart(kill=True)  # no clean snapshot: recovery replays the C-written records
    assert await _state(sp.endpoint) == before

    os.environ["FLO_NO_FASTPATH"] = "1"
    try:
        sp.restart(kill=True)
    finally:
        os.environ.pop("FLO_NO_FASTPATH", None)
    assert await _state(sp.endpoint) == before
    async with FloClient(sp.endpoint) as c:  # the Python path carries on from the recovered ids
        nxt = (await c.stream.append("events", b"after")).id
        assert nxt > before[0][22][0]

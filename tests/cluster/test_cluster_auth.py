"""Members of a cluster that requires passwords: they authenticate to each other (FLO_CLUSTER_USERNAME /
FLO_CLUSTER_PASSWORD) for replication, forwarding and slot moves; clients still have to."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest

from flo_client import FloClient
from flo_core.errors import FloError
from flo_core.slots import key_slot

PASSWORD = "members-and-clients"


async def test_a_cluster_that_requires_passwords_replicates_forwards_and_moves(cluster):
    c = cluster(2, 2, "--requirepass", PASSWORD, "--sync-replicas", "1",
                env={"FLO_CLUSTER_PASSWORD": PASSWORD})
    leaders = await c.ready(password=PASSWORD)
    with pytest.raises(FloError):
        async with FloClient(leaders[0].endpoint, max_retries=1) as anon:
            await anon.kv.put("nope", b"x")
    on0 = [k for k in (f"a{i}" for i in range(400)) if key_slot(k) < 8192][:20]
    # routing=False: one connection to the member that owns none of these keys, which forwards them with
    # the members' login (as it does for the public SDK, which has no routing)
    async with FloClient(leaders[1].endpoint, password=PASSWORD, routing=False) as cl:
        for k in on0:
            await cl.kv.put(k, b"via 1")  # --sync-replicas 1: answered once shard 0's replica has it
    async with FloClient(leaders[1].endpoint, password=PASSWORD) as cl:
        assert (await cl.server_info())["cluster"]["forwarded"] >= len(on0)
    out = await asyncio.get_running_loop().run_in_executor(None, lambda: subprocess.run(
        [sys.executable, "-m", "flo_server", "cluster", "move-slots", "--etcd", c.etcd.urls, "--cluster", c.name,
         "--from", "0", "--to", "1", "--count", "8192", "--password", PASSWORD],
        capture_output=True, text=True, timeout=120))
    assert out.returncode == 0, out.stderr + out.stdout
    async with FloClient(leaders[1].endpoint, password=PASSWORD) as cl:
        for k in on0:
            assert (await cl.kv.get(k)).value == b"via 1"
        assert (await cl.server_info())["cluster"]["replicas"]  # its replica fetches with the members' login

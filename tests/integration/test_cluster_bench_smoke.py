"""The cluster group of the bench cannot rot: ``python -m bench --quick --only '^cluster/'`` runs end to end.

No figure is asserted - only that its etcd and members start, every key reaches its shard's leader (no refusal,
no MOVED), the failover run sees a write answered after the kill, and every process it started is stopped.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flo_server.cluster.local import etcd_binary
from tests.helpers import ROOT

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.timeout(150)
def test_quick_cluster_group_writes_results(tmp_path: Path) -> None:
    if etcd_binary() is None:
        pytest.skip("etcd not installed (make system-deps installs Debian's etcd-server)")
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "^cluster/", "--out", str(out), "--no-install",
         "--allow-debug", "--no-plots"],
        cwd=ROOT, capture_output=True, text=True, timeout=140, env=dict(os.environ, PYTHONUNBUFFERED="1"),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    runs = [r for r in records if r["type"] == "cluster_run"]
    assert runs and all(r["completed"] > 0 and not r["errors"] for r in runs), runs
    shards = {r["target"]: r for r in runs if r["id"] == "cluster/shards"}
    assert set(shards) == {"flo-server", "flo-server, no fast path", "1 shard", "2 shards"}, shards
    assert not shards["flo-server"]["routed"] and shards["2 shards"]["routed"]
    # Keys went to both shards' leaders, each on connections that refuse (MOVED) what is not theirs.
    assert len(shards["2 shards"]["per_shard"]) == 2 and min(shards["2 shards"]["per_shard"]) > 0, shards
    summaries = {r["id"]: r for r in records if r["type"] == "cluster_summary"}
    assert "2 shards / 1 shard" in summaries["cluster/shards"]["ratios"]
    assert "fsync everysec, sync 1 / fsync everysec, sync 0" in summaries["cluster/sync"]["ratios"]
    failover = next(r for r in records if r["type"] == "cluster_failover")
    assert not failover.get("error") and failover["runs"] and failover["runs"][0]["ms"] > 0, failover
    assert failover["lease_multiple"] == round(failover["median_ms"] / failover["lease_ms"], 2)
    assert 0 < failover["runs"][0]["elected_ms"] <= failover["runs"][0]["ms"], failover  # read from the logs
    md = (out / "summary.md").read_text()
    assert "## Cluster" in md and "cluster/failover" in md and "nothing pinned" in md
    group = next(r for r in records if r["type"] == "cluster_group")
    assert group["all_stopped"] and group["started"]
    for s in group["started"]:
        assert not _alive(s["pid"]), s

"""``flo-server cluster ...``: create a cluster's slot map in etcd and show its state.

Example::

    flo-server cluster create --etcd http://127.0.0.1:2379 --cluster demo --shards 3
    flo-server cluster status --etcd http://127.0.0.1:2379 --cluster demo [--json]
"""

from __future__ import annotations

import asyncio
import json

import click

from flo_server.cluster.coord import ClusterError, Coordinator

ETCD = click.option("--etcd", "etcd_urls", envvar="FLO_ETCD", required=True, metavar="URL[,URL...]",
                    help="etcd client URLs (all members, comma-separated)")
CLUSTER = click.option("--cluster", "cluster", envvar="FLO_CLUSTER", required=True, help="cluster name")


def _run(coro):
    try:
        return asyncio.run(asyncio.wait_for(coro, 30))
    except ClusterError as e:
        raise click.ClickException(str(e)) from None
    except (asyncio.TimeoutError, ConnectionError) as e:
        raise click.ClickException(f"etcd did not answer: {e!r}") from None


@click.group("cluster")
def cluster_cmd() -> None:
    """Cluster administration (slot map and leaders in etcd; docs/cluster.md)."""


@cluster_cmd.command("create")
@ETCD
@CLUSTER
@click.option("--shards", type=click.IntRange(1, 1024), required=True, help="number of shards (even slot split)")
def create_cmd(etcd_urls: str, cluster: str, shards: int) -> None:
    """Create CLUSTER with SHARDS shards; refused if it exists."""
    async def go():
        async with Coordinator(etcd_urls, cluster) as c:
            return await c.create(shards)

    m = _run(go())
    for first, last, shard in m.ranges:
        click.echo(f"shard {shard}: slots {first}-{last}")


@cluster_cmd.command("status")
@ETCD
@CLUSTER
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def status_cmd(etcd_urls: str, cluster: str, as_json: bool) -> None:
    """Shards, their slots, leader (epoch) and members with their replication lag."""
    async def go():
        async with Coordinator(etcd_urls, cluster) as c:
            return await c.status()

    st = _run(go())
    if as_json:
        click.echo(json.dumps(st, indent=2))
        return
    click.echo(f"cluster {st['cluster']}: {len(st['shards'])} shards")
    for sh in st["shards"]:
        lead = sh["leader"]
        who = f"{lead['node']} {lead['advertise']} (epoch {lead['epoch']})" if lead else "none"
        ranges = ",".join(f"{f}-{l}" for f, l in sh["slots"])
        click.echo(f"shard {sh['shard']}: {sh['slot_count']} slots [{ranges}] leader {who}")
        for node, info in sorted(sh["members"].items()):
            click.echo(f"  {node} {info.get('advertise', '?')} {info.get('role', '?')} lsn {info.get('lsn', '?')}")

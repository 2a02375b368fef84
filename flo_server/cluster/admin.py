"""``flo-server cluster ...``: create a cluster's slot map in etcd and show its state.

Example::

    flo-server cluster create --etcd http://127.0.0.1:2379 --cluster demo --shards 3
    flo-server cluster status --etcd http://127.0.0.1:2379 --cluster demo [--json]
    flo-server cluster move-slots --etcd http://127.0.0.1:2379 --cluster demo --from 0 --to 2 --count 100
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
            lag = ""
            if "lag_records" in info:
                lag = (" (not fetching)" if info["lag_records"] is None
                       else f" (lag {info['lag_records']} records, last fetch {info['lag_ms']} ms ago)")
            click.echo(f"  {node} {info.get('advertise', '?')} {info.get('role', '?')} lsn {info.get('lsn', '?')}{lag}")


@cluster_cmd.command("move-slots")
@ETCD
@CLUSTER
@click.option("--from", "src", type=int, required=True, help="the shard that gives the slots")
@click.option("--to", "dst", type=int, required=True, help="the shard that takes them")
@click.option("--count", type=click.IntRange(1, 16384), required=True, help="how many (the source's highest slots)")
@click.option("--username", envvar="FLO_CLUSTER_USERNAME", default=None, help="a user with the admin right")
@click.option("--password", envvar="FLO_CLUSTER_PASSWORD", default=None)
@click.option("--timeout", "timeout_s", type=float, default=600.0, show_default=True, help="seconds to wait")
def move_slots_cmd(etcd_urls: str, cluster: str, src: int, dst: int, count: int, username: str | None,
                   password: str | None, timeout_s: float) -> None:
    """Move COUNT slots of shard FROM to shard TO, online: writes to a batch of slots wait a moment, none fail."""
    import msgpack

    from flo_client import FloClient
    from flo_core.errors import FloError
    from flo_core.spec import Op

    async def go() -> dict:
        async with Coordinator(etcd_urls, cluster) as c:
            lead = await c.leader_of(src)
        if lead is None:
            raise ClusterError(f"shard {src} has no leader right now")
        creds = {"username": username or "default", "password": password} if password else {}
        async with FloClient(lead[1], timeout_ms=int(timeout_s * 1000), max_retries=1, routing=False, **creds) as client:
            try:
                data = await client._call_vo(Op.CLUSTER_MIGRATE, b"", msgpack.packb({"to": dst, "count": count}))
            except FloError as e:
                raise ClusterError(f"shard {src}'s leader {lead[1]} refused: {e}") from None
        return msgpack.unpackb(data, raw=False)

    try:
        done = asyncio.run(asyncio.wait_for(go(), timeout_s + 5))
    except ClusterError as e:
        raise click.ClickException(str(e)) from None
    except (asyncio.TimeoutError, ConnectionError, OSError) as e:
        raise click.ClickException(f"no answer: {e!r}") from None
    click.echo(f"moved {done['slots']} slots ({done['objects']} objects) from shard {done['from']} to shard "
               f"{done['to']} in {done['seconds']:.2f}s; writes to a batch waited {done['max_frozen_ms']:.1f} ms at most")

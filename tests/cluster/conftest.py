"""Cluster fixtures: a real etcd (Debian's etcd-server, installed by ``make system-deps``) on loopback."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid

import pytest

from flo_client import FloClient

from flo_server.cluster.local import LocalEtcd, etcd_binary
from tests.helpers import ServerProc


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    if etcd_binary() is None:
        pytest.skip("etcd not installed (make system-deps installs Debian's etcd-server)")
    with LocalEtcd(tmp_path_factory.mktemp("etcd")) as e:
        yield e


@pytest.fixture
def etcd3(tmp_path):
    if etcd_binary() is None:
        pytest.skip("etcd not installed (make system-deps installs Debian's etcd-server)")
    with LocalEtcd(tmp_path / "etcd3", members=3) as e:
        yield e


def create_cluster(etcd, shards: int = 1) -> str:
    """``flo-server cluster create`` of a fresh cluster name; returns the name."""
    name = "c" + uuid.uuid4().hex[:8]
    subprocess.run([sys.executable, "-m", "flo_server", "cluster", "create", "--etcd", etcd.urls, "--cluster", name,
                    "--shards", str(shards)], check=True, capture_output=True, timeout=60)
    return name


class Cluster:
    """``shards`` × ``per_shard`` real flo-server members of a fresh cluster (``procs[shard][i]``)."""

    def __init__(self, root, etcd, shards: int = 2, per_shard: int = 1, *extra: str, lease_ms: int = 2000,
                 fsync: str = "everysec", executor: bool = False, env: dict | None = None) -> None:
        self.etcd, self.name = etcd, create_cluster(etcd, shards)
        # executor: each member runs its flamepy executor manager (a Flame node named after the member)
        self.procs = [[ServerProc(root / f"s{s}m{i}", "--etcd", etcd.urls, "--cluster", self.name, "--shard", str(s),
                                  "--node", f"s{s}m{i}", "--lease-ms", str(lease_ms), *extra, fsync=fsync,
                                  executor=executor, env=env)
                       for i in range(per_shard)] for s in range(shards)]

    @property
    def members(self) -> list[ServerProc]:
        return [p for shard in self.procs for p in shard]

    def start(self) -> "Cluster":
        for p in self.members:
            p.start()
        return self

    def stop(self) -> None:
        for p in self.members:
            if p.proc is not None and p.proc.poll() is None:
                p.stop()

    async def ready(self, timeout: float = 20.0, password: str | None = None) -> dict[int, ServerProc]:
        """Wait until every live member knows a leader for every shard; ``{shard: its leader}``."""
        deadline = time.monotonic() + timeout
        while True:
            infos = {}
            try:
                for p in self.members:
                    if p.proc is not None and p.proc.poll() is None:
                        async with FloClient(p.endpoint, timeout_ms=2000, password=password) as c:
                            infos[p] = (await c.server_info())["cluster"]
            except Exception:  # noqa: BLE001 - a member still starting
                infos = {}
            shards = len(self.procs)
            by_addr = {p.endpoint: p for p in self.members}
            if infos and all(len(i["leaders"]) == shards for i in infos.values()):
                views = {tuple(sorted(i["leaders"].items())) for i in infos.values()}
                if len(views) == 1 and all(a in by_addr for a in infos[next(iter(infos))]["leaders"].values()):
                    leaders = {int(s): by_addr[a] for s, a in next(iter(views))}
                    # a leader named may be one that was just killed: wait until the live ones name a live one
                    if all(p in infos and infos[p]["role"] == "leader" for p in leaders.values()):
                        return leaders
            assert time.monotonic() < deadline, infos
            await asyncio.sleep(0.05)


@pytest.fixture
def cluster(tmp_path, etcd):
    """A factory: ``c = cluster(shards=2, per_shard=1, *extra_flags)`` starts one; all are stopped after the test."""
    made: list[Cluster] = []

    def make(shards: int = 2, per_shard: int = 1, *extra: str, **kw) -> Cluster:
        c = Cluster(tmp_path / f"cluster{len(made)}", etcd, shards, per_shard, *extra, **kw)
        made.append(c)
        return c.start()

    yield make
    for c in made:
        c.stop()

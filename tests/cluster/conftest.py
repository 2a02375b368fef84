"""Cluster fixtures: a real etcd (Debian's etcd-server, installed by ``make system-deps``) on loopback."""

from __future__ import annotations

import pytest

from flo_server.cluster.local import LocalEtcd, etcd_binary


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

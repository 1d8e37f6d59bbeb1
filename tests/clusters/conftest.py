"""Clustered engines for failure tests, from the same pip-installed binaries as the rest.

`nats_cluster` is a 3-node JetStream cluster on loopback (what k8s/infra/nats-values.yaml asks
for); `pg_pair` a PostgreSQL primary with a synchronous streaming standby (what the CloudNativePG
cluster runs), its `url` naming both hosts with `target_session_attrs=read-write`. Each test gets
its own, since the tests kill, restart, promote and lose them. Settings built on it
ask for three stream replicas, as a cluster deployment sets SYNCMESH_STREAM_REPLICAS=3.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import nats
import pytest

from services.common.embedded import NatsCluster, PostgresPair
from services.common.settings import Settings

# The process-fault tests' fixtures, shared: `make_mesh` runs the deployables as processes, `db` a connection.
from tests.faults.test_process_faults import db, make_mesh  # noqa: F401

pytestmark = pytest.mark.cluster


@pytest.fixture
async def nats_cluster(tmp_path: Path) -> AsyncIterator[NatsCluster]:
    cluster = NatsCluster(tmp_path / "nats")
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_pair(tmp_path: Path) -> Iterator[PostgresPair]:
    pair = PostgresPair(tmp_path / "pg")
    pair.start()
    try:
        yield pair
    finally:
        pair.stop()


@pytest.fixture
def cluster_settings(settings: Settings, nats_cluster: NatsCluster) -> Settings:
    return replace(settings, nats_url=nats_cluster.url, stream_replicas=3, publish_timeout_seconds=3.0)


async def stream_leader(cluster: NatsCluster, stream: str) -> str:
    """The name of the node that leads a stream now."""
    nc = await nats.connect(servers=[n.url for n in cluster.nodes.values() if n.running])
    try:
        info = await nc.jetstream().stream_info(stream)
        assert info.cluster is not None and info.cluster.leader
        return str(info.cluster.leader)
    finally:
        await nc.close()

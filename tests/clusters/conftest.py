"""Clustered engines for failure tests, from the same pip-installed binaries as the rest.

`nats_cluster` is a 3-node JetStream cluster on loopback (what k8s/infra/nats-values.yaml asks
for); each test gets its own, since the tests kill, restart and lose nodes. Settings built on it
ask for three stream replicas, as a cluster deployment sets SYNCMESH_STREAM_REPLICAS=3.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import nats
import pytest

from services.common.embedded import NatsCluster
from services.common.settings import Settings

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

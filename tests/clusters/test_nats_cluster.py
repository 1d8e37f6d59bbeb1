"""The gateway on a 3-node JetStream cluster with three stream replicas."""

from __future__ import annotations

import asyncio
import json

import nats
import pytest

from gateway.app import Gateway
from services.common.bus import STRIPE_STREAM
from services.common.embedded import NatsCluster
from services.common.settings import Settings
from tests.gateway.test_gateway import customer_created, post
from tests.support.signing import sign

pytestmark = pytest.mark.cluster


async def test_copies_of_one_event_sent_at_once_are_all_200_and_stored_once(
    cluster_settings: Settings, nats_cluster: NatsCluster
) -> None:
    """Stripe (or a retry racing the original) may deliver one event twice at the same moment.
    On a replicated stream the second copy meets JetStream's "duplicate message id is in
    process" (10158) while the first is being replicated; that copy is safe, so its sender is
    owed a 200, not a 503 that makes Stripe retry an event the mesh already has."""
    gateway = Gateway(cluster_settings, port=0, host="127.0.0.1")
    await gateway.start()
    try:
        await gateway.bus.wait_ready(30)
        events = [customer_created() for _ in range(40)]
        bodies = [json.dumps(e).encode() for e in events]
        statuses: list[int] = []
        for body in bodies:
            headers = {"Stripe-Signature": sign(body)}
            answers = await asyncio.gather(*(post(gateway, body, headers) for _ in range(4)))
            statuses.extend(status for status, _ in answers)
            assert sum(not payload["duplicate"] for _, payload in answers) == 1, answers
    finally:
        await gateway.stop()
    assert statuses == [200] * len(statuses)
    nc = await nats.connect(servers=nats_cluster.url.split(","))
    try:
        info = await nc.jetstream().stream_info(STRIPE_STREAM)
    finally:
        await nc.close()
    assert info.state.messages == len(events)
    assert info.config.num_replicas == 3

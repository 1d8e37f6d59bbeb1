"""A fetch returns soon after its first message, on a real nats-server, even when the message
came on an older pull request that is still open (one a fetch that returned early left behind),
whose only status is its 408 when it expires."""

from __future__ import annotations

import asyncio
import json
import time

import nats
from nats.js.api import AckPolicy, ConsumerConfig

from services.common import consumer


async def test_a_fetch_holding_a_message_does_not_wait_for_an_older_requests_expiry(nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        await js.add_stream(name="FOLLOWUP", subjects=["followup.>"])
        await js.add_consumer("FOLLOWUP", ConsumerConfig(durable_name="d", ack_policy=AckPolicy.EXPLICIT))
        psub = await js.pull_subscribe_bind(durable="d", stream="FOLLOWUP")
        consumer._take_delivered_at_once(psub)
        # A pull request left open on the subscription's inbox for 3 s, as a fetch that returned
        # with an early message leaves its own: the next message is delivered on it.
        await nc.publish(
            "$JS.API.CONSUMER.MSG.NEXT.FOLLOWUP.d",
            json.dumps({"batch": 10, "expires": 3_000_000_000}).encode(),
            reply=psub._deliver,
        )
        await nc.flush()
        fetching = asyncio.create_task(psub.fetch(10, timeout=3))
        await asyncio.sleep(0.3)
        published = time.monotonic()
        await js.publish("followup.one", b"1")
        msgs = await fetching
        waited = time.monotonic() - published
        assert [m.data for m in msgs] == [b"1"]
        assert waited < 0.5, f"the fetch returned {waited:.2f} s after its message"
        # And a backlog still comes as one batch: delivered back to back, within the follow-up.
        for i in range(200):
            await js.publish("followup.many", str(i).encode())
        await asyncio.sleep(3)  # every request above expired
        assert len(await psub.fetch(200, timeout=3)) == 200
    finally:
        await nc.close()

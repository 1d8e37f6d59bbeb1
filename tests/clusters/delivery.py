"""What the cluster failure tests share: webhooks delivered the way Stripe delivers them, and the
check that every domain event was announced once."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import aiohttp
import asyncpg
import nats

from services.common.bus import EVENTS_STREAM
from tests.faults.test_process_faults import Lifecycle, deliver_until_accepted


async def stripe_retries(
    http: aiohttp.ClientSession, url: str, evt: dict[str, Any], attempts: list[tuple[float, int]], deadline: float
) -> None:
    """Stripe's retries, each attempt noted with its time, so a test can say how long the
    gateway refused (`deadline` on the monotonic clock, as the event loop's)."""
    await deliver_until_accepted(http, url, evt, deadline, lambda status: attempts.append((time.monotonic(), status)))


async def deliver_steadily(url: str, lives: list[Lifecycle], rate: float) -> dict[str, list[tuple[float, int]]]:
    """Every event of `lives` through the gateway at `rate` per second, each retried as Stripe
    would until a 2xx; returns each event's attempts as (time, status)."""
    attempts: dict[str, list[tuple[float, int]]] = {}
    started = time.monotonic()
    async with aiohttp.ClientSession() as http:
        tasks = []
        for n, evt in enumerate(e for life in lives for e in life.events):
            ahead = started + n / rate - time.monotonic()
            if ahead > 0:
                await asyncio.sleep(ahead)
            attempts[evt["id"]] = []
            tasks.append(
                asyncio.create_task(stripe_retries(http, url, evt, attempts[evt["id"]], time.monotonic() + 90))
            )
        await asyncio.gather(*tasks)
    return attempts


async def domain_events_once(servers: list[str], db: asyncpg.Connection) -> None:
    """Each committed domain event is in SYNCMESH_EVENTS exactly once, by its id."""
    expected = Counter[str]()
    for schema in ("customer", "billing", "crm_export"):
        rows = await db.fetch(f"SELECT msg_id, published_at FROM {schema}.outbox")
        assert all(r["published_at"] is not None for r in rows), f"{schema}: outbox not relayed"
        expected.update(r["msg_id"] for r in rows)
    assert set(expected.values()) == {1}
    nc = await nats.connect(servers=servers)
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(">", stream=EVENTS_STREAM)
        seen = Counter[str]()
        while sum(seen.values()) < len(expected):
            for msg in await sub.fetch(500, timeout=5):
                seen[msg.headers["Nats-Msg-Id"]] += 1
                await msg.ack()
        assert (await js.stream_info(EVENTS_STREAM)).state.messages == len(expected)
    finally:
        await nc.close()
    assert set(seen) == set(expected) and set(seen.values()) == {1}

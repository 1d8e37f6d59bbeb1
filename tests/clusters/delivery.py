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
import nats.js.errors

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
    deadline = time.monotonic() + 60
    while True:
        try:
            seen = await _read_events(servers, len(expected))
            break
        except nats.js.errors.ServiceUnavailableError as exc:
            # A node back from a kill: the cluster may answer 503 (no leader yet for the
            # stream or the reading consumer) for a few seconds. Read it all again, afresh.
            if time.monotonic() >= deadline:
                raise AssertionError(f"{EVENTS_STREAM} still unreadable after 60 s: {exc!r}") from exc
            await asyncio.sleep(0.5)
    assert set(seen) == set(expected) and set(seen.values()) == {1}


async def _read_events(servers: list[str], expected: int) -> Counter[str]:
    """Every message of SYNCMESH_EVENTS by its Nats-Msg-Id, through a consumer of its own."""
    nc = await nats.connect(servers=servers)
    try:
        js = nc.jetstream()
        sub = await js.pull_subscribe(">", stream=EVENTS_STREAM)
        seen = Counter[str]()
        while sum(seen.values()) < expected:
            for msg in await sub.fetch(500, timeout=5):
                seen[msg.headers["Nats-Msg-Id"]] += 1
                await msg.ack()
        assert (await js.stream_info(EVENTS_STREAM)).state.messages == expected
        return seen
    finally:
        await nc.close()

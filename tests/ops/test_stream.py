"""The history reader every tool uses, on a real nats-server."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from services.common.bus import STRIPE_STREAM, Bus
from services.common.stream import StreamReader, message_ids
from tests.ops.helpers import customer_event, publish


async def test_reads_everything_in_order_in_batches_and_stops_at_the_end(bus: Bus) -> None:
    ids = []
    for i in range(25):
        evt = customer_event(f"cus_{i}")
        ids.append(evt["id"])
        await publish(bus, evt)
    reader = StreamReader(bus, STRIPE_STREAM, batch=10)
    assert (await reader.window()).pending == 25
    seen: list[str] = []
    sizes: list[int] = []
    async for batch in reader.batches():
        sizes.append(len(batch))
        seen.extend(m.headers["Nats-Msg-Id"] for m in batch)
    assert seen == ids
    assert max(sizes) <= 10
    # the walk left no consumer behind
    info = await bus.js.stream_info(STRIPE_STREAM)
    assert info.state.consumer_count == 0


async def test_a_growing_stream_does_not_make_the_walk_endless(bus: Bus) -> None:
    for i in range(5):
        await publish(bus, customer_event(f"cus_g{i}"))
    reader = StreamReader(bus, STRIPE_STREAM, batch=2)
    count = 0
    async for batch in reader.batches():
        count += len(batch)
        await publish(bus, customer_event(f"cus_late{count}"))  # arrives while reading
    assert count == 5


async def test_empty_stream_and_subject_filter(bus: Bus) -> None:
    assert [b async for b in StreamReader(bus, STRIPE_STREAM).batches()] == []
    await publish(bus, customer_event("cus_f"))
    filtered = StreamReader(bus, STRIPE_STREAM, subjects=("stripe.invoice.*",))
    assert (await filtered.window()).pending == 0
    assert [b async for b in filtered.batches()] == []


async def test_message_ids_from_a_start_time_read_headers_only(bus: Bus) -> None:
    old = customer_event("cus_old")
    await publish(bus, old)
    await asyncio.sleep(1.1)
    middle = datetime.now(UTC)
    new = customer_event("cus_new")
    await publish(bus, new)
    assert await message_ids(bus, STRIPE_STREAM, start_time=middle) == {new["id"]}
    assert await message_ids(bus, STRIPE_STREAM, start_time=middle - timedelta(minutes=5)) == {old["id"], new["id"]}
    assert await message_ids(bus, STRIPE_STREAM, prefix="nope") == set()

"""The consumer's batch path, through the toy service's batch handler, on real NATS and
PostgreSQL: a batch applied in one call, a declined batch applied event by event, and a failing
message that keeps its failure (run once per delivery) while the rest of its batch is written."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.common.bus import Bus
from services.common.service import ServiceRuntime
from services.common.settings import Settings
from tests.common import toy_service
from tests.common.test_service_runtime import _consumer_settled, customer_event, publish, rows
from tests.conftest import eventually


@pytest.fixture
async def bus(settings: Settings) -> AsyncIterator[Bus]:
    bus = Bus(settings, name="test-batch")
    await bus.start(wait=10)
    await bus.wait_ready(20)
    yield bus
    await bus.close()


async def _start(settings: Settings) -> ServiceRuntime:
    """Started after the events are in the stream, so they arrive as one fetched batch."""
    rt = ServiceRuntime(toy_service.BATCH_DEFINITION, settings, port=0)
    await rt.start()
    await rt.wait_ready(20)
    return rt


async def test_a_batch_is_applied_in_one_call(bus: Bus, settings: Settings) -> None:
    events = [customer_event(f"cus_batch{i}") for i in range(20)]
    for evt in events:
        await publish(bus, evt)
    await publish(bus, events[0], msg_id=events[0]["id"] + "-again")  # a resend: a duplicate
    toy_service.batches_written.clear()
    rt = await _start(settings)
    try:
        await eventually(lambda: _consumer_settled(rt))
        written = await rows(settings)
        assert {f"cus_batch{i}" for i in range(20)} <= set(written)
        assert all(written[f"cus_batch{i}"]["times_applied"] == 1 for i in range(20))
        assert sum(toy_service.batches_written) == 20 and len(toy_service.batches_written) < 20
        assert rt.consumer.duplicates == 1 and rt.consumer.batches_declined == 0
        outbox = await rt.pool.fetchval("SELECT count(*) FROM toy.outbox")
        assert outbox == 20  # every event's domain event, written with the batch
    finally:
        await rt.stop()


async def test_a_declined_batch_is_applied_event_by_event(bus: Bus, settings: Settings) -> None:
    await publish(bus, customer_event("cus_d1"))
    await publish(bus, customer_event("cus_d2", decline_batch=1))
    await publish(bus, customer_event("cus_d3"))
    rt = await _start(settings)
    try:
        await eventually(lambda: _consumer_settled(rt))
        written = await rows(settings)
        assert {"cus_d1", "cus_d2", "cus_d3"} <= set(written)
        assert all(written[c]["times_applied"] == 1 for c in ("cus_d1", "cus_d2", "cus_d3"))
        assert rt.consumer.batches_declined >= 1
    finally:
        await rt.stop()


async def test_a_failing_message_is_run_once_per_delivery_and_the_rest_is_written(bus: Bus, settings: Settings) -> None:
    poison = customer_event("cus_bpoison", fail=1)
    await publish(bus, customer_event("cus_b1"))
    await publish(bus, poison)
    await publish(bus, customer_event("cus_b2"))
    rt = await _start(settings)
    try:
        await eventually(lambda: rt.consumer.dead_lettered == 1, timeout=20)
        written = await rows(settings)
        assert {"cus_b1", "cus_b2"} <= set(written) and "cus_bpoison" not in written
        # Once by the batch handler per delivery; the event-by-event pass does not run it again.
        assert toy_service.attempts[poison["id"]] == settings.max_deliver
    finally:
        await rt.stop()

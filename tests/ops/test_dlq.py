"""Dead letters end to end: a poison event is dead-lettered by a real service, inspected,
redriven once its cause is gone, and applied exactly once."""

from __future__ import annotations

import asyncpg
import pytest
from syncmesh.events.v1 import envelope_pb2

from ops import dlq
from services.common.bus import DLQ_STREAM, STRIPE_STREAM, Bus
from services.common.errors import ConflictError, NotFoundError
from services.common.service import ServiceRuntime
from services.common.settings import Settings
from tests.common import toy_service
from tests.conftest import eventually
from tests.ops.helpers import customer_event, publish, stop_runtime, stripe_messages


@pytest.fixture
async def runtime(settings: Settings):
    rt = ServiceRuntime(toy_service.DEFINITION, settings, port=0)
    await rt.start()
    await rt.wait_ready(20)
    yield rt
    await stop_runtime(rt)


async def toy_row(settings: Settings, object_id: str) -> asyncpg.Record | None:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return await conn.fetchrow("SELECT * FROM toy.toy_records WHERE object_id = $1", object_id)
    finally:
        await conn.close()


async def test_poison_event_is_listed_shown_redriven_and_applied_once(
    runtime: ServiceRuntime, bus: Bus, settings: Settings
) -> None:
    # The toy handler fails until its (max_deliver + 1)th attempt: the cause is "fixed" by the
    # time an operator redrives, as after a deploy.
    poison = customer_event("cus_poison", fail_until=settings.max_deliver + 1)
    await publish(bus, poison)
    await publish(bus, customer_event("cus_fine"))
    await eventually(lambda: runtime.consumer.dead_lettered == 1, timeout=20)
    assert await toy_row(settings, "cus_fine") is not None
    assert await toy_row(settings, "cus_poison") is None

    [entry] = await dlq.list_dead_letters(bus)
    summary = entry.summary()
    assert summary["service"] == "customer"
    assert summary["subject"] == "stripe.customer.updated"
    assert summary["event_id"] == poison["id"]
    assert summary["event_type"] == "customer.updated"
    assert summary["attempts"] == settings.max_deliver
    assert "transient toy failure" in str(summary["reason"])
    assert summary["dead_lettered_at"]
    assert await dlq.list_dead_letters(bus, service="billing") == []

    shown = dlq.describe(await dlq.get_dead_letter(bus, entry.sequence))
    assert poison["id"] in shown and '"cus_poison"' in shown and "EVENT_SOURCE_WEBHOOK" in shown

    result = await dlq.redrive(bus, entry.sequence)
    assert (result.msg_id, result.duplicate, result.subject) == (
        f"redrive:{entry.sequence}",
        False,
        "stripe.customer.updated",
    )
    written = await eventually(lambda: toy_row(settings, "cus_poison"), timeout=10)
    assert written["times_applied"] == 1 and written["last_event_id"] == poison["id"]
    assert await dlq.list_dead_letters(bus) == []

    redriven = [m for m in await stripe_messages(bus) if m["msg_id"] == result.msg_id]
    assert len(redriven) == 1
    assert redriven[0]["envelope"].source == envelope_pb2.EVENT_SOURCE_REDRIVE
    assert redriven[0]["payload"] == poison  # the event itself, byte for byte the same JSON

    with pytest.raises(NotFoundError, match="redriven or discarded"):
        await dlq.redrive(bus, entry.sequence)
    # Any later copy of the event is a no-op for the service that now has it.
    duplicates = runtime.consumer.duplicates
    await publish(bus, poison, msg_id="another-copy")
    await eventually(lambda: runtime.consumer.duplicates == duplicates + 1)
    assert (await toy_row(settings, "cus_poison"))["times_applied"] == 1


async def test_undecodable_letter_cannot_be_redriven_and_is_discarded(
    runtime: ServiceRuntime, bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    await bus.publish("stripe.customer.updated", b"\xff garbage", msg_id="junk-1")
    await eventually(lambda: runtime.consumer.dead_lettered == 1)
    [entry] = await dlq.list_dead_letters(bus, service="customer")
    assert entry.envelope is None and entry.letter.reason.startswith("undecodable")
    assert "not a StripeEventEnvelope" in dlq.describe(entry)

    with pytest.raises(ConflictError, match="dlq discard"):
        await dlq.redrive(bus, entry.sequence)
    assert len(await dlq.list_dead_letters(bus)) == 1  # refused redrive kept it

    stripe_before = (await bus.js.stream_info(STRIPE_STREAM)).state.messages
    with caplog.at_level("WARNING", logger="ops.dlq"):
        discarded = await dlq.discard(bus, entry.sequence)
    assert discarded.sequence == entry.sequence
    assert any(f"discarding dead letter {entry.sequence}" in r.getMessage() for r in caplog.records)
    assert await dlq.list_dead_letters(bus) == []
    assert (await bus.js.stream_info(STRIPE_STREAM)).state.messages == stripe_before  # nothing re-published
    with pytest.raises(NotFoundError):
        await dlq.discard(bus, entry.sequence)


async def test_list_filters_by_service_and_limits(bus: Bus) -> None:
    from services.common.consumer import Consumer

    async def never(_conn, _items) -> None:
        raise AssertionError("not called")

    # Dead letters as two services' consumers write them, without running the services.
    for service in ("customer", "crm-export", "crm-export"):
        consumer = Consumer(
            service=service,
            bus=bus,
            pool=None,
            apply=never,
            subjects=(),
            settings=bus.settings,
        )
        evt = customer_event(f"cus_{service}")
        ack = await publish(bus, evt)
        msg = await _as_msg(bus, ack.seq)
        await consumer.dead_letter(msg, "permanent: because", 1)
    assert [e.letter.service for e in await dlq.list_dead_letters(bus)] == ["customer", "crm-export", "crm-export"]
    assert [e.letter.service for e in await dlq.list_dead_letters(bus, service="crm-export")] == ["crm-export"] * 2
    assert len(await dlq.list_dead_letters(bus, limit=2)) == 2
    assert (await bus.js.stream_info(DLQ_STREAM)).state.messages == 3
    with pytest.raises(NotFoundError, match="unknown service"):
        await dlq.list_dead_letters(bus, service="nope")


async def _as_msg(bus: Bus, seq: int):
    """The STRIPE message at `seq`, as a consumer would receive it (with metadata)."""
    from services.common.stream import StreamReader

    async for batch in StreamReader(bus, STRIPE_STREAM).batches():
        for msg in batch:
            if msg.metadata.sequence.stream == seq:
                return msg
    raise AssertionError(f"no message {seq}")

"""The batch path is the one-event path: any mix of customers' events, cut into batches of any
size (duplicates, replays and events before the sync start included), leaves the same records,
the same audit trail in the same order and the same domain events as handling them one at a time.

Both runs use the same PostgreSQL schema, each inside a transaction that is rolled back, with
the ERP id sequence set to the same value first, so even the assigned ids must agree.
"""

from __future__ import annotations

import itertools
import json
from datetime import UTC, datetime
from typing import Any

import asyncpg
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from syncmesh.customer.v1 import events_pb2
from syncmesh.events.v1 import envelope_pb2

from services.common.consumer import BatchItem, HandlerContext
from services.common.events import StripeEvent, parse_event
from services.common.settings import Settings
from services.customer.handlers import apply
from tests.customer.support import current_customer, customer_event

T0 = 1_700_000_000
_run = itertools.count()
KINDS = ("customer.created", "customer.updated", "customer.deleted")


@st.composite
def streams(draw: st.DrawFn) -> tuple[list[dict[str, Any]], list[int], bool]:
    """Events of 1-4 customers interleaved, some repeated, in any order; batch sizes; sync start."""
    run = next(_run)
    events: list[dict[str, Any]] = []
    for c in range(draw(st.integers(1, 4))):
        stripe_id = f"cus_b{run}x{c}"
        created = T0 + draw(st.integers(-5, 5)) * 100  # some before the sync start (T0), some after
        for n in range(draw(st.integers(1, 5))):
            kind = draw(st.sampled_from(KINDS))
            fields: dict[str, Any] = {"created": created}
            if kind == "customer.deleted" and draw(st.booleans()):
                obj: dict[str, Any] = {"id": stripe_id, "object": "customer", "deleted": True}
            else:
                fields.update(name=f"n{n}", email=f"C{c}.{n}@Example.com", balance=draw(st.integers(-99, 99)))
                fields.update(metadata={"n": str(n)}, delinquent=draw(st.booleans()))
                obj = current_customer(stripe_id, **fields)
            at = created + draw(st.integers(0, 4))
            events.append(customer_event(kind, obj, created=at, id=f"evt_b{run}x{c}x{n}"))
    events += draw(st.lists(st.sampled_from(events), max_size=4), label="repeats")
    events = draw(st.permutations(events), label="order")
    sizes = draw(st.lists(st.integers(1, 8), min_size=1, max_size=6), label="batch sizes")
    return events, sizes, draw(st.booleans(), label="sync start at T0")


def _context(conn: asyncpg.Connection, settings: Settings, event: StripeEvent) -> HandlerContext:
    envelope = envelope_pb2.StripeEventEnvelope(event_id=event.id, event_type=event.type)
    return HandlerContext(conn=conn, service="customer", settings=settings, envelope=envelope)


def _chunks(events: list[StripeEvent], sizes: list[int]) -> list[list[StripeEvent]]:
    """Cut into batches; a repeat inside one batch is dropped, as the consumer's claim does."""
    out: list[list[StripeEvent]] = []
    start = 0
    for size in itertools.cycle(sizes):
        if start >= len(events):
            return out
        chunk = list({e.id: e for e in reversed(events[start : start + size])}.values())[::-1]
        out.append(chunk)
        start += size
    return out


async def _snapshot(conn: asyncpg.Connection) -> dict[str, Any]:
    records = await conn.fetch("SELECT * FROM customers ORDER BY erp_customer_id")
    history = await conn.fetch(
        "SELECT erp_customer_id, stripe_customer_id, stripe_event_id, action, event_created, outcome "
        "FROM customer_history ORDER BY id"
    )
    outbox = await conn.fetch("SELECT subject, message_type, payload FROM outbox ORDER BY id")
    return {
        # When rows were written is the transaction's clock, different in each run.
        "records": [{k: v for k, v in dict(r).items() if k not in ("created_at", "updated_at")} for r in records],
        "history": [tuple(r) for r in history],
        "events": [(r["subject"], _content(r["message_type"], r["payload"])) for r in outbox],
    }


def _content(message_type: str, payload: bytes) -> str:
    cls = {
        m.DESCRIPTOR.full_name: m
        for m in (events_pb2.CustomerUpserted, events_pb2.CustomerLinked, events_pb2.CustomerDeactivated)
    }[message_type]
    message = cls.FromString(payload)
    message.ClearField("meta")
    if isinstance(message, events_pb2.CustomerUpserted):
        message.customer.ClearField("created_at")
        message.customer.ClearField("updated_at")
    return str(message)


async def _run_through(
    conn: asyncpg.Connection, settings: Settings, batches: list[list[StripeEvent]], *, batched: bool
) -> tuple[dict[str, Any], list[str | None]]:
    skips: list[str | None] = []
    tx = conn.transaction()
    await tx.start()
    try:
        await conn.execute("SELECT setval('erp_customer_number', 1000, false)")
        await conn.execute(
            "INSERT INTO customers (erp_customer_id, stripe_customer_id, origin) VALUES ('CUST-001001', NULL, 'import')"
        )
        for batch in batches:
            contexts = [_context(conn, settings, e) for e in batch]
            if batched:
                items = [BatchItem.alone(c, e) for c, e in zip(contexts, batch, strict=True)]
                await apply(conn, items)
            else:
                for ctx, event in zip(contexts, batch, strict=True):
                    await apply(conn, [BatchItem.alone(ctx, event)])
            skips += [c.skipped_reason for c in contexts]
        return await _snapshot(conn), skips
    finally:
        await tx.rollback()


@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(stream=streams())
async def test_batches_of_any_size_equal_one_event_at_a_time(
    conn: asyncpg.Connection, settings: Settings, stream: tuple[list[dict[str, Any]], list[int], bool]
) -> None:
    raw, sizes, sync_start = stream
    if sync_start:
        settings = settings.with_overrides(sync_start=datetime.fromtimestamp(T0, tz=UTC))
    events = [parse_event(json.dumps(e).encode()) for e in raw]
    batches = _chunks(events, sizes)
    one_by_one = await _run_through(conn, settings, batches, batched=False)
    batched = await _run_through(conn, settings, batches, batched=True)
    assert batched == one_by_one
    # Not vacuous: without a sync start every stream creates records and announces them.
    assert sync_start or (one_by_one[0]["records"][1:] and one_by_one[0]["events"])


async def test_a_malformed_event_in_a_batch_is_dead_lettered_and_the_rest_applied(settings: Settings) -> None:
    """Bad input changes nothing: the batch is redone message by message, the bad one goes to
    the dead letters at once (PermanentError), its neighbours are written."""
    from syncmesh.events.v1 import dead_letter_pb2

    from services.common.bus import DLQ_STREAM, Bus
    from tests.conftest import eventually
    from tests.customer.conftest import start_runtime, stop_runtime
    from tests.customer.support import new_customer_id, publish

    good = [new_customer_id(), new_customer_id()]
    # Shaped as Stripe documents (so the runtime's shape check lets it through) but no customer id.
    bad = customer_event(
        "customer.updated", {"id": "not-a-customer-id", "object": "customer", "created": T0}, created=T0
    )
    bus = Bus(settings, name="test-malformed")
    await bus.start(wait=10)
    await bus.wait_ready(20)
    try:
        await publish(bus, customer_event("customer.created", current_customer(good[0]), created=T0))
        await publish(bus, bad)
        await publish(bus, customer_event("customer.created", current_customer(good[1]), created=T0))
    finally:
        await bus.close()
    rt = await start_runtime(settings)
    try:
        await eventually(lambda: rt.consumer.dead_lettered == 1)
        letter = dead_letter_pb2.DeadLetter.FromString(
            (await rt.bus.js.get_msg(DLQ_STREAM, subject="dlq.customer")).data
        )
        assert letter.reason.startswith("permanent") and letter.attempts == 1
        written = await rt.pool.fetch("SELECT stripe_customer_id FROM customers")
        assert {r["stripe_customer_id"] for r in written} == set(good)
    finally:
        await stop_runtime(rt)

"""A minimal service built on the shared runtime, to test the runtime itself.

It records each customer event's object id; its behaviour is steered by the object's metadata
(`fail`: always raise; `permanent`: raise PermanentError; `fail_until`: raise until that
attempt; `unavailable_until`: raise UnavailableError, as when Stripe is down, until that
attempt; `hang_first`: block on the first attempt, as a process that dies mid-applier; `sleep`:
take that many seconds). `DEFINITION` applies a batch one event at a time (a statement each, in
each event's span); `BATCH_DEFINITION` writes a whole batch in one statement.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from syncmesh.type.v1 import money_pb2

from services.common.consumer import BatchItem, HandlerContext
from services.common.db import Conn
from services.common.errors import PermanentError, UnavailableError
from services.common.events import StripeEvent
from services.common.service import ServiceDefinition

attempts: dict[str, int] = {}


async def apply(conn: Conn, items: Sequence[BatchItem]) -> None:
    """Each event in turn, in its own span."""
    for item in items:
        with item.consuming():
            await _apply_one(item.ctx, item.event)


async def _apply_one(ctx: HandlerContext, event: StripeEvent) -> None:
    metadata = event.object.get("metadata") or {}
    attempts[event.id] = attempts.get(event.id, 0) + 1
    if metadata.get("hang_first") and attempts[event.id] == 1:
        await asyncio.sleep(3600)  # the process "dies" here, mid-handler, before commit
    await asyncio.sleep(float(metadata.get("sleep", 0)))
    if metadata.get("fail"):
        raise RuntimeError("toy failure for " + event.object_id)
    if metadata.get("permanent"):
        raise PermanentError("toy cannot ever apply " + event.object_id)
    if attempts[event.id] < int(metadata.get("fail_until", 0)):
        raise RuntimeError("transient toy failure")
    if attempts[event.id] < int(metadata.get("unavailable_until", 0)):
        raise UnavailableError("toy's Stripe is down")
    await ctx.conn.execute(
        "INSERT INTO toy_records (object_id, last_event_id) VALUES ($1, $2) "
        "ON CONFLICT (object_id) DO UPDATE SET last_event_id = $2, times_applied = toy_records.times_applied + 1",
        event.object_id,
        event.id,
    )
    await ctx.emit("toy_recorded", money_pb2.Money(amount_minor=1, currency="usd"))


DEFINITION = ServiceDefinition(
    name="customer",  # borrows a real deployable name so settings/ports apply
    schema="toy",
    migrations=Path(__file__).parent / "toy_migrations",
    subjects=("stripe.customer.*",),
    apply=apply,
    grpc_service_name="syncmesh.toy.v1.ToyService",
    register_grpc=lambda server, runtime: None,
)


#: Calls of the set-based applier that got as far as writing.
batches_written: list[int] = []


async def apply_set_based(conn: Conn, items: Sequence[BatchItem]) -> None:
    """The toy's rows for a whole batch in one statement."""
    records = []
    for item in items:
        with item.consuming():
            metadata = item.event.object.get("metadata") or {}
            attempts[item.event.id] = attempts.get(item.event.id, 0) + 1
            if metadata.get("fail"):
                raise RuntimeError("toy failure for " + item.event.object_id)
            if metadata.get("permanent"):
                raise PermanentError("toy cannot ever apply " + item.event.object_id)
            records.append((item.event.object_id, item.event.id))
            await item.ctx.emit("toy_recorded", money_pb2.Money(amount_minor=1, currency="usd"))
    await conn.execute(
        "INSERT INTO toy_records (object_id, last_event_id) SELECT * FROM unnest($1::text[], $2::text[]) "
        "ON CONFLICT (object_id) DO UPDATE SET last_event_id = EXCLUDED.last_event_id, "
        "times_applied = toy_records.times_applied + 1",
        [r[0] for r in records],
        [r[1] for r in records],
    )
    batches_written.append(len(records))


BATCH_DEFINITION = replace(DEFINITION, apply=apply_set_based)

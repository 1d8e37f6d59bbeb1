"""A toy service whose applier is idempotent at the record level, as every real service's is:
a guarded upsert keyed on the event's `created`, so re-applying an event the records already
reflect changes nothing. `NAME_STYLE` plays the part of a mapping that an operator changes
before replaying."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from syncmesh.type.v1 import money_pb2

from services.common.consumer import BatchItem, HandlerContext
from services.common.db import Conn
from services.common.events import StripeEvent
from services.common.service import ServiceDefinition

NAME_STYLE = {"upper": False}


def display_name(name: str) -> str:
    return name.upper() if NAME_STYLE["upper"] else name


async def apply(conn: Conn, items: Sequence[BatchItem]) -> None:
    for item in items:
        with item.consuming():
            await _apply_one(item.ctx, item.event)


async def _apply_one(ctx: HandlerContext, event: StripeEvent) -> None:
    if event.object.get("metadata", {}).get("poison"):
        raise RuntimeError("cannot map this customer")
    await ctx.conn.execute(
        "INSERT INTO toy_customers (customer_id, display_name, last_event_created) VALUES ($1, $2, $3) "
        "ON CONFLICT (customer_id) DO UPDATE SET display_name = excluded.display_name, "
        "last_event_created = excluded.last_event_created "
        "WHERE toy_customers.last_event_created <= excluded.last_event_created",
        event.object_id,
        display_name(str(event.object.get("name") or "")),
        event.created,
    )
    await ctx.emit("toy_customer_recorded", money_pb2.Money(amount_minor=1, currency="usd"))


DEFINITION = ServiceDefinition(
    name="customer",
    schema="record_toy",
    migrations=Path(__file__).parent / "record_toy_migrations",
    subjects=("stripe.customer.*",),
    apply=apply,
    grpc_service_name="syncmesh.toy.v1.RecordToyService",
    register_grpc=lambda server, runtime: None,
)

"""Stripe customer events -> ERP customer records.

Order and duplication do not matter. Each event carries a version key (event `created`, then
the lifecycle rank created < updated < deleted); a record only takes the state of an event
newer than the one it holds, and `active` only turns false, so any order and any repetition of
one customer's events leave the same record.

Ties (two events of the same rank in the same Stripe second, since `created` has one-second
resolution):
- with SYNCMESH_STRIPE_API_KEY set, the current customer is fetched from the Stripe API and
  that state is applied: Stripe's present answer is the same whatever order events arrived in;
- without a key, the later-consumed event wins. Order-independence then holds for every
  lifecycle except two updates of one customer within one second, whose final state depends
  on arrival order until the next event. A deletion is never lost: it outranks created and
  updated at the same second and `active` never turns back to true.

A deleted Stripe customer is marked inactive, never erased. Events for customers created
before SYNCMESH_SYNC_START are skipped, unless the customer is already known (an imported
mapping), since the ERP then wants its changes.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime

import stripe

from services.common.consumer import HandlerContext
from services.common.errors import PermanentError, RetryableError
from services.common.events import StripeEvent
from services.customer import store
from services.customer.mapping import (
    EVENT_RANKS,
    CustomerRecord,
    Decision,
    MappingError,
    StripeCustomerState,
    Version,
    customer_from_stripe,
    decide,
)
from services.customer.messages import customer_message, timestamp
from syncmesh.customer.v1 import events_pb2

log = logging.getLogger(__name__)


async def fetch_current(client: stripe.StripeClient, stripe_customer_id: str) -> StripeCustomerState | None:
    """The customer as Stripe holds it now; None when it is deleted (or gone)."""
    try:
        obj = await client.v1.customers.retrieve_async(stripe_customer_id)
    except stripe.InvalidRequestError as exc:
        if exc.http_status == 404:
            return None
        raise PermanentError(f"Stripe refused to return {stripe_customer_id}: {exc.user_message or exc}") from exc
    except stripe.StripeError as exc:
        raise RetryableError(f"Stripe unreachable while settling a tie for {stripe_customer_id}: {exc}") from exc
    data = obj.to_dict()
    if data.get("deleted"):
        return None
    return customer_from_stripe(data)


async def handle(ctx: HandlerContext, event: StripeEvent) -> None:
    rank = EVENT_RANKS.get(event.type)
    if rank is None:
        ctx.skip(f"{event.type} is not a customer lifecycle event")
        return
    try:
        incoming = customer_from_stripe(event.object, deleted=event.type == "customer.deleted")
    except MappingError as exc:
        raise PermanentError(f"{event.type} {event.id}: {exc}") from exc
    if await store.event_seen(ctx.conn, event.id):
        return
    version = Version(event.created, rank)
    event_time = datetime.fromtimestamp(event.created, tz=UTC)
    existing = await store.get_by_stripe_id(ctx.conn, incoming.stripe_customer_id, for_update=True)

    if existing is None:
        if ctx.before_sync_start(incoming.stripe_created):
            ctx.skip("before SYNCMESH_SYNC_START")
            return
        erp_id = await store.next_erp_customer_id(ctx.conn)
        created = await store.insert_from_stripe(ctx.conn, erp_id, incoming, version, event.id, event_time)
        if created is not None:
            await _record_and_emit(ctx, event, None, created, Decision.APPLY)
            return
        # Another replica created it a moment ago; go on as an update of its record.
        existing = await store.get_by_stripe_id(ctx.conn, incoming.stripe_customer_id, for_update=True)
        assert existing is not None

    client = ctx.stripe
    decision = decide(existing.version, version, can_refetch=client is not None)
    state = incoming
    if decision is Decision.STALE:
        await _record_and_emit(ctx, event, existing, None, decision)
        return
    if incoming.deleted and "email" not in event.object:
        # Stripe's deleted customer is a bare {id, deleted: true}: keep what is known about it.
        state = _as_deleted(existing.state() or incoming)
    if decision is Decision.TIE_REFETCH and existing.state() != state:
        assert client is not None
        current = await fetch_current(client, incoming.stripe_customer_id)
        state = current if current is not None else _as_deleted(existing.state() or incoming)
    updated = await store.apply_stripe_state(
        ctx.conn,
        existing.erp_customer_id,
        state,
        version,
        event.id,
        event_time,
        allow_equal=decision is not Decision.APPLY,
    )
    await _record_and_emit(ctx, event, existing, updated, decision)


def _as_deleted(state: StripeCustomerState) -> StripeCustomerState:
    return replace(state, deleted=True)


async def _record_and_emit(
    ctx: HandlerContext,
    event: StripeEvent,
    before: CustomerRecord | None,
    after: CustomerRecord | None,
    decision: Decision,
) -> None:
    record = after or before
    assert record is not None
    outcome = decision.value if after is not None else Decision.STALE.value
    await store.record_history(
        ctx.conn,
        erp_customer_id=record.erp_customer_id,
        stripe_customer_id=record.stripe_customer_id,
        action=event.type,
        outcome=outcome,
        stripe_event_id=event.id,
        event_created=event.created,
    )
    if after is None:
        log.info(
            "%s %s is older than the state held by %s: kept for history", event.type, event.id, record.erp_customer_id
        )
        return
    if before is not None and _same(before, after):
        return
    await ctx.emit(
        "customer_upserted", events_pb2.CustomerUpserted(customer=customer_message(after), created=before is None)
    )
    if before is None:
        await ctx.emit(
            "customer_linked",
            events_pb2.CustomerLinked(
                erp_customer_id=after.erp_customer_id,
                stripe_customer_id=after.stripe_customer_id or "",
                source=events_pb2.LINK_SOURCE_STRIPE_EVENT,
            ),
        )
    if not after.active and (before is None or before.active):
        message = events_pb2.CustomerDeactivated(
            erp_customer_id=after.erp_customer_id, stripe_customer_id=after.stripe_customer_id or ""
        )
        deactivated = timestamp(after.deleted_at)
        if deactivated is not None:
            message.deactivated_at.CopyFrom(deactivated)
        await ctx.emit("customer_deactivated", message)


def _same(before: CustomerRecord, after: CustomerRecord) -> bool:
    """True when nothing a subscriber sees changed (a replayed state): no domain event then."""
    return before.state() == after.state()

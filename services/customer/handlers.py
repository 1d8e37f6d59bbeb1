"""Stripe customer events -> ERP customer records, a whole batch at a time.

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

How a batch is applied: the records it touches are read and locked in one statement, the
events are folded over them in memory in arrival order (the rules above, in `mapping`), and the
results are written in a few set-based statements: new records, changed records, audit rows.
A single event is a batch of one, so every path (live, isolated, replayed) is the same code.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import stripe

from services.common.consumer import BatchItem
from services.common.db import Conn
from services.common.errors import PermanentError, RetryableError
from services.customer import store
from services.customer.mapping import (
    EVENT_RANKS,
    CustomerRecord,
    Decision,
    MappingError,
    StripeCustomerState,
    Version,
    applied_record,
    customer_from_stripe,
    decide,
    new_record,
)
from services.customer.messages import announcements

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


@dataclass(frozen=True)
class _Incoming:
    item: BatchItem
    state: StripeCustomerState
    version: Version


async def apply(conn: Conn, items: Sequence[BatchItem]) -> None:
    incoming = [x for x in map(_parse, items) if x is not None]
    if not incoming:
        return
    seen, now, records = await store.seen_and_locked(
        conn, [x.item.event.id for x in incoming], [x.state.stripe_customer_id for x in incoming]
    )
    incoming = [x for x in incoming if x.item.event.id not in seen]
    if not incoming:
        return
    creating = _to_create(incoming, set(records))
    erp_ids = dict(zip(creating, await store.allocate_erp_ids(conn, len(creating)), strict=True))
    inserts: dict[str, CustomerRecord] = {}
    updates: dict[str, CustomerRecord] = {}
    history: list[store.HistoryEntry] = []
    client = items[0].ctx.stripe
    for x in incoming:
        event, ctx, stripe_id = x.item.event, x.item.ctx, x.state.stripe_customer_id
        with x.item.consuming():
            before = records.get(stripe_id)
            after, decision = await _next(x, before, erp_ids.get(stripe_id), client, now)
            if after is None:
                continue  # skipped: before the sync start
            history.append(
                store.HistoryEntry(
                    erp_customer_id=after.erp_customer_id,
                    stripe_customer_id=after.stripe_customer_id,
                    action=event.type,
                    outcome=decision.value,
                    stripe_event_id=event.id,
                    event_created=event.created,
                )
            )
            if decision is Decision.STALE:
                log.info("%s %s is older than the state held by %s: kept for history", event.type, event.id, stripe_id)
                continue
            (inserts if before is None or stripe_id in inserts else updates)[stripe_id] = after
            records[stripe_id] = after
            for name, message in announcements(before, after):
                await ctx.emit(name, message)
    inserted = await store.insert_records(conn, list(inserts.values()))
    if len(inserted) != len(inserts):
        raced = sorted(set(inserts) - inserted)
        raise RetryableError(f"{', '.join(raced[:5])} linked by another replica meanwhile; applying again")
    if await store.update_records(conn, list(updates.values())) != len(updates):
        raise RuntimeError("the store refused state older than it holds: the version rules were bypassed")
    # Nothing of the batch reads the audit rows back (the seen events were read first): they go
    # with the COMMIT (`HandlerContext.later`). The update's row count is read, so it goes now.
    await store.add_history(items[0].ctx.later, history)


def _parse(item: BatchItem) -> _Incoming | None:
    event = item.event
    rank = EVENT_RANKS.get(event.type)
    if rank is None:
        item.ctx.skip(f"{event.type} is not a customer lifecycle event")
        return None
    try:
        state = customer_from_stripe(event.object, deleted=event.type == "customer.deleted")
    except MappingError as exc:
        raise PermanentError(f"{event.type} {event.id}: {exc}") from exc
    return _Incoming(item, state, Version(event.created, rank))


def _to_create(incoming: Sequence[_Incoming], known: set[str]) -> list[str]:
    """Stripe ids that get a new record, in the order their first applicable event arrives
    (so ids are numbered as one event at a time would number them)."""
    order: list[str] = []
    for x in incoming:
        stripe_id = x.state.stripe_customer_id
        if stripe_id not in known and not x.item.ctx.before_sync_start(x.state.stripe_created):
            order.append(stripe_id)
            known.add(stripe_id)
    return order


async def _next(
    x: _Incoming,
    before: CustomerRecord | None,
    erp_id: str | None,
    client: stripe.StripeClient | None,
    now: datetime,
) -> tuple[CustomerRecord | None, Decision]:
    """The record after event `x` and how it was decided: a new or changed record, `before`
    itself when the event is older than what it holds (STALE), or None when it is skipped."""
    event, ctx = x.item.event, x.item.ctx
    event_time = datetime.fromtimestamp(event.created, tz=UTC)
    if before is None:
        if ctx.before_sync_start(x.state.stripe_created):
            ctx.skip("before SYNCMESH_SYNC_START")
            return None, Decision.STALE
        assert erp_id is not None  # `_to_create` numbered it
        return new_record(erp_id, x.state, x.version, event.id, event_time, now), Decision.APPLY
    decision = decide(before.version, x.version, can_refetch=client is not None)
    if decision is Decision.STALE:
        return before, decision
    state = x.state
    if state.deleted and "email" not in event.object:
        # Stripe's deleted customer is a bare {id, deleted: true}: keep what is known about it.
        state = _as_deleted(before.state() or state)
    if decision is Decision.TIE_REFETCH and before.state() != state:
        assert client is not None
        current = await fetch_current(client, state.stripe_customer_id)
        state = current if current is not None else _as_deleted(before.state() or state)
    return applied_record(before, state, x.version, event.id, event_time, now), decision


def _as_deleted(state: StripeCustomerState) -> StripeCustomerState:
    return replace(state, deleted=True)

"""Live Stripe events -> the customer-success view.

The `apply_*` functions are the one path into the store: the consumer calls them with the
event's `created` as the version time, the initial import with the moment it read the object,
so an import and the live stream write the same records the same way. They map; the rows go
to a `Changes`, which writes them and announces what changed when the batch (of events, or of
imported objects) ends.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from stripe import StripeClient, StripeError

from services.common.consumer import BatchItem, HandlerContext
from services.common.db import Conn
from services.common.events import StripeEvent
from services.common.stripe_api import upstream_error
from services.crm_export import mapping, store
from services.crm_export.changes import Changes, Emit
from services.crm_export.fetch import Fetcher, NoFetcher, StripeFetcher
from services.crm_export.mapping import CrmSettings

CUSTOMER_EVENTS = frozenset({"customer.created", "customer.updated", "customer.deleted"})
PRODUCT_EVENTS = frozenset({"product.created", "product.updated", "product.deleted"})
PAID_EVENTS = frozenset({"invoice.paid", "invoice.payment_succeeded"})
SUBSCRIPTION_PREFIX = "customer.subscription."


async def apply(conn: Conn, items: Sequence[BatchItem]) -> None:
    """The events in turn under the settings read once for the batch (they are versioned, and a
    change made meanwhile applies from the next batch, as it would from the next event); what
    they read one at a time is read up front in bulk, and what they changed is announced once."""
    settings = (await store.current_settings(conn)).settings
    changes = Changes()
    await changes.prefetch(
        conn,
        customers=[str(i.event.object.get("id") or "") for i in items if i.event.type in CUSTOMER_EVENTS],
        health=[_health_subject(i.event) for i in items],
    )
    for item in items:
        with item.consuming():
            await _apply(item.ctx, item.event, settings, changes)
    await changes.commit(conn)


def _health_subject(event: StripeEvent) -> str:
    """The customer whose health the event may change ("" when none)."""
    kind = event.type
    if kind in PAID_EVENTS or kind == "invoice.payment_failed" or kind.startswith(SUBSCRIPTION_PREFIX):
        return mapping.customer_id_of(event.object)
    return ""


async def _apply(ctx: HandlerContext, event: StripeEvent, settings: CrmSettings, changes: Changes) -> None:
    obj = event.object
    created = obj.get("created")
    if ctx.before_sync_start(created if isinstance(created, int) else None):
        ctx.skip("before SYNCMESH_SYNC_START")
        return
    kind = event.type
    if kind.startswith(SUBSCRIPTION_PREFIX):
        if kind == "customer.subscription.trial_will_end":
            ctx.skip("trial reminders change no record")
            return
        await apply_subscription(
            ctx.conn, obj, event.created, settings, changes, ctx.emit, _fetcher(ctx), deleted=kind.endswith(".deleted")
        )
    elif kind in CUSTOMER_EVENTS:
        await apply_customer(
            ctx.conn,
            obj,
            event.created,
            settings,
            changes,
            ctx.emit,
            deleted=kind == "customer.deleted",
            event_type=kind,
            stripe=ctx.stripe,
        )
    elif kind in PRODUCT_EVENTS:
        apply_product(
            obj, event.created, settings, changes, ctx.emit, deleted=kind == "product.deleted", event_type=kind
        )
    elif kind in PAID_EVENTS:
        await apply_paid_invoice(ctx.conn, obj, event.created, settings, changes, ctx.emit, _fetcher(ctx))
    elif kind == "invoice.payment_failed":
        await apply_failed_payment(ctx.conn, obj, changes, ctx.emit)
    else:
        ctx.skip(f"{kind} changes no customer-success record")


def _fetcher(ctx: HandlerContext) -> Fetcher:
    client = ctx.stripe
    return StripeFetcher(client) if client is not None else NoFetcher()


async def apply_customer(
    conn: Conn,
    obj: dict[str, Any],
    ts: int,
    settings: CrmSettings,
    changes: Changes,
    emit: Emit,
    *,
    deleted: bool = False,
    event_type: str | None = None,
    stripe: StripeClient | None = None,
) -> None:
    kept = await changes.kept_customer(conn, str(obj.get("id", "")))
    if deleted and "email" not in obj and kept is not None:
        # A bare deletion stub: keep what is known about the customer, flip it to deleted.
        obj = {**kept[0], **obj}
    version = mapping.customer_version(obj, ts, deleted=deleted, event_type=event_type)
    if stripe is not None and kept is not None and kept[1] == version and not version.terminal:
        # Two events of one kind in one Stripe second: which is newer cannot be told from them,
        # so take the customer as Stripe holds it now (the same whatever the arrival order).
        obj = await _current_customer(stripe, obj)
        if obj.get("deleted"):  # deleted in Stripe meanwhile: keep what is known, mark it deleted
            deleted = True
            obj = {**kept[0], **obj}
            version = mapping.customer_version(obj, ts, deleted=True, event_type=event_type)
    changes.keep_customer(mapping.stripe_customer(obj, deleted=deleted), version)
    if not settings.pulls_customers:
        return  # customer sync DISABLED: clients come from the CRM only
    changes.client(mapping.client_from_customer(obj, settings, deleted=deleted), version, emit)


async def _current_customer(stripe: StripeClient, obj: dict[str, Any]) -> dict[str, Any]:
    try:
        current = await stripe.v1.customers.retrieve_async(str(obj["id"]))
    except StripeError as exc:
        raise upstream_error(exc, "fetch a customer to settle a same-second tie") from exc
    return dict(current.to_dict())


def apply_product(
    obj: dict[str, Any],
    ts: int,
    settings: CrmSettings,
    changes: Changes,
    emit: Emit,
    *,
    deleted: bool = False,
    event_type: str | None = None,
) -> None:
    product = mapping.product_from_stripe(obj, settings, deleted=deleted)
    version = mapping.product_version(obj, ts, deleted=deleted, event_type=event_type)
    changes.product(product, dict(obj), version, emit)


async def apply_paid_invoice(
    conn: Conn, invoice: dict[str, Any], ts: int, settings: CrmSettings, changes: Changes, emit: Emit, fetcher: Fetcher
) -> None:
    if not mapping.invoice_is_paid(invoice):
        return
    await changes.health_may_change(conn, mapping.customer_id_of(invoice), emit)
    changes.payment(mapping.invoice_payment(invoice, failed=False))
    if mapping.INVOICE in settings.contract_sources:
        lines, truncated = mapping.invoice_lines(invoice)
        if truncated:
            lines = await fetcher.invoice_lines(str(invoice["id"]))
        contract = mapping.contract_from_invoice(invoice, lines)
        changes.contract(contract, mapping.invoice_contract_version(ts), emit)


async def apply_failed_payment(conn: Conn, invoice: dict[str, Any], changes: Changes, emit: Emit) -> None:
    payment = mapping.invoice_payment(invoice, failed=True)
    await changes.health_may_change(conn, payment.stripe_customer_id, emit)
    changes.payment(payment)


async def apply_invoice_payment_facts(conn: Conn, invoice: dict[str, Any], changes: Changes, emit: Emit) -> None:
    """For the import: what a listed invoice says about payment health (see mapping)."""
    payment = mapping.imported_invoice_payment(invoice)
    if payment is None:
        return
    await changes.health_may_change(conn, payment.stripe_customer_id, emit)
    changes.payment(payment)


async def apply_subscription(
    conn: Conn,
    subscription: dict[str, Any],
    ts: int,
    settings: CrmSettings,
    changes: Changes,
    emit: Emit,
    fetcher: Fetcher,
    *,
    deleted: bool = False,
) -> None:
    state = mapping.subscription_state(subscription, deleted=deleted)
    version = mapping.subscription_version(subscription, ts, deleted=deleted)
    await changes.health_may_change(conn, state.stripe_customer_id, emit)
    changes.subscription(state, version)
    if mapping.SUBSCRIPTION in settings.contract_sources:
        items, truncated = mapping.subscription_items(subscription)
        if truncated:
            items = await fetcher.subscription_items(state.id)
        source = {**subscription, "status": state.status}
        contract = mapping.contract_from_subscription(source, items)
        changes.contract(contract, version, emit)

"""Stripe billing events -> the ERP ledger, one event at a time, inside the consumer's transaction.

Each handler stores the Stripe facts the event carries (keyed by Stripe id, version-guarded),
then re-derives the invoice's ledger state from all of its stored facts. That split is what
makes the result independent of order and duplication: a late or repeated event can only add
a fact the store already has or ignore an older one; the derivation does the rest.

A batch (`handle_batch`) runs the same handlers on each event in turn and shares only the work
that does not depend on order: the invoices' locks are taken together up front (in id order,
so replicas cannot deadlock), item mappings are read once, and the audit rows are written in
one statement at the end. The ledger itself is still written event by event: it is not yet
folded set-based as the customer service does (see issue 8's closing note).
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from typing import Any

import stripe

from services.billing import mapping, store
from services.billing.mapping import ErpCreditNote, ErpPayment, ErpRefund, HoldRequest
from services.billing.settings import BillingSettings
from services.common.consumer import BatchHandler, BatchItem, Handler, HandlerContext
from services.common.db import Conn
from services.common.errors import PermanentError, RetryableError
from services.common.events import StripeEvent
from services.common.stripe_api import upstream_error
from syncmesh.billing.v1 import events_pb2
from syncmesh.type.v1 import money_pb2

log = logging.getLogger(__name__)

#: Invoice events whose object is not a stored invoice.
_NOT_A_RECORD = ("invoice.upcoming", "invoice.will_be_due")
_PAYMENT_CHARGE_EVENTS = ("charge.succeeded", "charge.captured", "charge.updated", "charge.refunded")


def money(amount: int, currency: str) -> money_pb2.Money:
    return money_pb2.Money(amount_minor=amount, currency=currency)


def make_handler(billing: BillingSettings) -> Handler:
    """The consumer's handler, bound to the billing policy the process was started with."""

    async def handle(ctx: HandlerContext, event: StripeEvent) -> None:
        pending: list[store.HistoryRow] = []
        token = _history_rows.set(pending)
        try:
            await dispatch(ctx, event, billing)
            await store.add_history(ctx.conn, pending)
        finally:
            _history_rows.reset(token)

    return handle


def make_batch_handler(billing: BillingSettings) -> BatchHandler:
    """The consumer's batch handler: the same handlers in turn, with the shared work done once."""

    async def handle_batch(conn: Conn, items: Sequence[BatchItem]) -> None:
        pending: list[store.HistoryRow] = []
        invoices = sorted({key for item in items if (key := mapping.invoice_key(item.event.type, item.event.object))})
        await store.lock_many(conn, invoices)
        prices = sorted({p for item in items for p in _price_ids(item.event)})
        shared = _Shared(locked=set(invoices), prices=set(prices), item_map=await store.load_item_map(conn, prices))
        tokens = (_history_rows.set(pending), _shared.set(shared))
        try:
            for item in items:
                with item.consuming():
                    await dispatch(item.ctx, item.event, billing)
            await store.add_history(conn, pending)
        finally:
            _shared.reset(tokens[1])
            _history_rows.reset(tokens[0])

    return handle_batch


@dataclass
class _Shared:
    """What a batch has done once for all of its events."""

    locked: set[str]
    prices: set[str]
    item_map: dict[str, str]


_shared: contextvars.ContextVar[_Shared | None] = contextvars.ContextVar("billing_batch_shared", default=None)


async def _lock(ctx: HandlerContext, invoice_id: str) -> None:
    shared = _shared.get()
    if shared is None or invoice_id not in shared.locked:
        await store.lock(ctx.conn, invoice_id)


async def _item_map(ctx: HandlerContext, price_ids: Sequence[str]) -> dict[str, str]:
    shared = _shared.get()
    if shared is not None and shared.prices.issuperset(price_ids):
        return {p: shared.item_map[p] for p in price_ids if p in shared.item_map}
    return await store.load_item_map(ctx.conn, price_ids)


def _price_ids(event: StripeEvent) -> list[str]:
    """The prices of an invoice event's lines as the event carries them (no API call)."""
    if not event.type.startswith("invoice."):
        return []
    lines = event.object.get("lines")
    data = lines.get("data") if isinstance(lines, dict) else None
    return mapping.invoice_price_ids([x for x in data or [] if isinstance(x, dict)])


async def dispatch(ctx: HandlerContext, event: StripeEvent, billing: BillingSettings) -> None:
    kind = event.type
    if kind.startswith("invoice_payment."):
        await on_invoice_payment(ctx, event, billing)
    elif kind.startswith("invoice."):
        await on_invoice(ctx, event, billing)
    elif kind.startswith("charge."):
        await on_charge(ctx, event, billing)
    elif kind.startswith("refund."):
        await on_refund(ctx, event, billing)
    elif kind.startswith("credit_note."):
        await on_credit_note(ctx, event, billing)
    elif kind.startswith("customer.subscription."):
        await on_subscription(ctx, event, billing)
    elif kind in ("customer.created", "customer.updated"):
        await on_customer(ctx, event)
    else:
        ctx.skip(f"{kind} is not a billing event")


def _notified_on(ctx: HandlerContext, event: StripeEvent) -> date:
    """The day the mesh was told (the gateway's receipt time), the write-off's transaction date."""
    received = ctx.envelope.received_at
    if received.seconds:
        return datetime.fromtimestamp(received.seconds, tz=UTC).date()
    return event.created_at.date()


#: History rows of the event being handled, written together when the handler finishes.
_history_rows: contextvars.ContextVar[list[store.HistoryRow]] = contextvars.ContextVar("billing_history_rows")


async def _history(ctx: HandlerContext, event: StripeEvent, record_type: str, record_id: str, change: str) -> None:
    _history_rows.get().append((record_type, record_id, event.id, event.type, change))


# -- invoices -----------------------------------------------------------------------------------


async def fetch_all_lines(ctx: HandlerContext, obj: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """The invoice's lines; all of them when the event holds only the first page.

    Without an API key the first page is kept but the invoice is marked incomplete, so it can
    never pass for a whole invoice; a Stripe failure is retried (and dead-lettered in the end).
    """
    lines = obj.get("lines") if isinstance(obj.get("lines"), dict) else {}
    assert isinstance(lines, dict)
    data = [x for x in lines.get("data") or [] if isinstance(x, dict)]
    if not lines.get("has_more") or obj.get("deleted") is True:
        return data, True
    client = ctx.stripe
    if client is None:
        log.warning("invoice %s has more lines than its event holds and no Stripe API key is set", obj.get("id"))
        return data, False
    invoice_id = str(obj["id"])
    fetched: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100}
    try:
        while True:
            page = await client.v1.invoices.line_items.list_async(invoice_id, params)  # type: ignore[arg-type]
            fetched.extend(item.to_dict() for item in page.data)
            if not page.has_more or not page.data:
                break
            params = {"limit": 100, "starting_after": page.data[-1].id}
    except stripe.StripeError as exc:
        raise RetryableError(str(upstream_error(exc, f"list the lines of invoice {invoice_id}"))) from exc
    return fetched, True


async def on_invoice(ctx: HandlerContext, event: StripeEvent, billing: BillingSettings) -> None:
    obj = event.object
    if event.type in _NOT_A_RECORD or not obj.get("id"):
        ctx.skip(f"{event.type} carries no invoice record")
        return
    if obj.get("object") not in (None, "invoice"):
        raise PermanentError(f"{event.type} does not carry an invoice")
    if ctx.before_sync_start(obj.get("created")):
        ctx.skip("before SYNCMESH_SYNC_START")
        return
    if event.type == "invoice.deleted":
        obj = {**obj, "deleted": True}
    raw_lines, complete = await fetch_all_lines(ctx, obj)
    item_map = await _item_map(ctx, mapping.invoice_price_ids(raw_lines))
    inv = mapping.map_invoice(obj, lines=raw_lines, lines_complete=complete, item_map=item_map, billing=billing)
    if not inv.stripe_customer_id:
        raise PermanentError(f"invoice {inv.stripe_invoice_id} has no customer")
    await _lock(ctx, inv.stripe_invoice_id)
    result = await store.upsert_invoice(ctx.conn, inv, event_id=event.id, event_created=event.created)
    if result.snapshot_applied:
        await _history(
            ctx,
            event,
            "invoice",
            inv.stripe_invoice_id,
            f"{'created' if result.created else 'updated'} from Stripe status {inv.stripe_status}, "
            f"total {inv.total} {inv.currency}",
        )
    if result.lines_replaced:
        await store.note_unmapped(ctx.conn, inv.unmapped_price_ids, inv.stripe_invoice_id)
        problems = mapping.invoice_problems(inv)
        note = f"; does not balance: {'; '.join(problems)}" if problems else ""
        await _history(ctx, event, "invoice", inv.stripe_invoice_id, f"{len(inv.lines)} lines written{note}")
        if problems:
            log.warning("invoice %s: %s", inv.stripe_invoice_id, "; ".join(problems))
    if inv.uncollectible:
        await store.note_uncollectible(
            ctx.conn, inv.stripe_invoice_id, notified_on=_notified_on(ctx, event), at=inv.uncollectible_at
        )
    payment = mapping.payment_from_invoice(inv, obj)
    if payment is not None:
        await apply_payment(ctx, event, payment)
    if event.type == "invoice.payment_failed" and billing.credit_hold:
        hold = mapping.hold_from_invoice(inv)
        if hold is not None:
            await place_hold(ctx, event, hold)
    await settle_invoice(ctx, event, billing, inv.stripe_invoice_id, changed=result.snapshot_applied)


async def settle_invoice(
    ctx: HandlerContext, event: StripeEvent, billing: BillingSettings, invoice_id: str, *, changed: bool = False
) -> None:
    """Re-derive the invoice's ledger from its stored facts; record and announce what moved."""
    row = await store.invoice_with_facts(ctx.conn, invoice_id)
    if row is None:
        return  # the invoice has not arrived yet; it will settle with these facts when it does
    state = mapping.compute_ledger(store.ledger_facts(row, write_off_enabled=billing.write_off_uncollectible))
    status = mapping.forward_status(row["erp_status"], state.erp_status)
    moved = not store.ledger_unchanged(row, state, status)
    if moved:
        await store.save_ledger(ctx.conn, invoice_id, state, status)
        await _history(
            ctx,
            event,
            "invoice",
            invoice_id,
            f"ledger: {status}, paid {state.amount_paid}, credits {state.credits_applied}, "
            f"remaining {state.amount_remaining}",
        )
    if moved or changed:
        await ctx.emit(
            "invoice_changed",
            events_pb2.InvoiceChanged(
                erp_invoice_id=row["erp_invoice_id"],
                stripe_invoice_id=invoice_id,
                stripe_customer_id=row["stripe_customer_id"],
                status=status,
                total=money(row["total"], row["currency"]),
                amount_remaining=money(state.amount_remaining, row["currency"]),
                lines_complete=row["lines_complete"],
            ),
        )
    memo = await store.sync_write_off(ctx.conn, row, state)
    if memo is not None:
        what = {"issued": "written off", "reversed": "write-off reversed (invoice collected)", "void": "voided"}
        await _history(ctx, event, "credit_memo", memo.memo_key, f"{what[memo.status]}: {memo.amount}")
        await _history(ctx, event, "invoice", invoice_id, f"write-off {memo.erp_credit_memo_id} {memo.status}")
        await _emit_memo(ctx, memo)
    if billing.release_hold_on_pay and status in ("paid_in_full", "voided") and row["has_active_holds"]:
        reason = f"invoice {row['stripe_invoice_id']} {status.replace('_', ' ')}"
        for hold in await store.release_holds(ctx.conn, invoice_id, reason):
            await _history(ctx, event, "credit_hold", hold["stripe_customer_id"], f"released: {reason}")
            await ctx.emit(
                "credit_hold_changed",
                events_pb2.CreditHoldChanged(
                    stripe_customer_id=hold["stripe_customer_id"],
                    stripe_invoice_id=invoice_id,
                    active=False,
                    reason=reason,
                ),
            )


async def _emit_memo(ctx: HandlerContext, memo: store.MemoChange) -> None:
    await ctx.emit(
        "credit_memo_changed",
        events_pb2.CreditMemoChanged(
            erp_credit_memo_id=memo.erp_credit_memo_id,
            source_id=memo.memo_key,
            kind=memo.kind,
            stripe_invoice_id=memo.stripe_invoice_id or "",
            amount=money(memo.amount, memo.currency),
            status=memo.status,
        ),
    )


async def place_hold(ctx: HandlerContext, event: StripeEvent, hold: HoldRequest) -> None:
    placed = await store.place_hold(ctx.conn, hold)
    if placed is False:
        await _history(ctx, event, "credit_hold", hold.stripe_customer_id, f"reason now: {hold.reason}")
    if placed:
        await _history(
            ctx, event, "credit_hold", hold.stripe_customer_id, f"placed for {hold.stripe_invoice_id}: {hold.reason}"
        )
        await ctx.emit(
            "credit_hold_changed",
            events_pb2.CreditHoldChanged(
                stripe_customer_id=hold.stripe_customer_id,
                stripe_invoice_id=hold.stripe_invoice_id,
                active=True,
                reason=hold.reason,
            ),
        )


# -- payments -----------------------------------------------------------------------------------


async def apply_payment(ctx: HandlerContext, event: StripeEvent, payment: ErpPayment) -> list[str]:
    """Store the payment (once per Stripe id); returns refunds that learnt their invoice from it."""
    row = await store.upsert_payment(ctx.conn, payment)
    if row is not None:
        verb = "applied" if row["inserted"] else f"updated from {payment.source}"
        change = f"{verb}: {payment.amount} {payment.currency} to {payment.stripe_invoice_id} ({payment.method})"
        await _history(ctx, event, "payment", payment.stripe_payment_id, change)
        if payment.stripe_invoice_id:
            await _history(ctx, event, "invoice", payment.stripe_invoice_id, f"payment {row['erp_payment_id']} {verb}")
        await ctx.emit(
            "payment_applied",
            events_pb2.PaymentApplied(
                erp_payment_id=row["erp_payment_id"],
                stripe_payment_id=payment.stripe_payment_id,
                stripe_invoice_id=payment.stripe_invoice_id or "",
                amount=money(payment.amount, payment.currency),
            ),
        )
    linked = await store.link_refunds(ctx.conn, payment)
    for refund_id in linked:
        memo = await store.sync_refund_memo(ctx.conn, refund_id)
        if memo is not None:
            await _emit_memo(ctx, memo)
    return linked


async def on_invoice_payment(ctx: HandlerContext, event: StripeEvent, billing: BillingSettings) -> None:
    obj = event.object
    if ctx.before_sync_start(obj.get("created")):
        ctx.skip("before SYNCMESH_SYNC_START")
        return
    payment = mapping.payment_from_invoice_payment(obj)
    if payment is None:
        ctx.skip(f"invoice payment {obj.get('status')}: nothing paid")
        return
    if payment.stripe_invoice_id:
        await _lock(ctx, payment.stripe_invoice_id)
    await apply_payment(ctx, event, payment)
    if payment.stripe_invoice_id:
        await settle_invoice(ctx, event, billing, payment.stripe_invoice_id)


async def on_charge(ctx: HandlerContext, event: StripeEvent, billing: BillingSettings) -> None:
    obj = event.object
    if ctx.before_sync_start(obj.get("created")):
        ctx.skip("before SYNCMESH_SYNC_START")
        return
    touched: set[str] = set()
    if event.type in _PAYMENT_CHARGE_EVENTS:
        payment = mapping.payment_from_charge(obj)
        if payment is not None and payment.stripe_invoice_id:
            await _lock(ctx, payment.stripe_invoice_id)
            await apply_payment(ctx, event, payment)
            touched.add(payment.stripe_invoice_id)
    if event.type == "charge.refunded":
        for refund in mapping.refunds_from_charge(obj):
            invoice = await apply_refund(ctx, event, refund)
            if invoice:
                touched.add(invoice)
    if not touched and event.type != "charge.refunded":
        ctx.skip("charge not linked to an invoice (basil charges are paid through invoice_payment)")
    for invoice_id in sorted(touched):
        await settle_invoice(ctx, event, billing, invoice_id)


# -- refunds and credit notes -------------------------------------------------------------------


async def apply_refund(ctx: HandlerContext, event: StripeEvent, refund: ErpRefund) -> str | None:
    """Customer refund + its credit memo, once per refund id; returns the invoice it belongs to."""
    invoice = refund.stripe_invoice_id or await store.invoice_for_payment(
        ctx.conn, refund.charge_id, refund.payment_intent_id
    )
    refund = replace(refund, stripe_invoice_id=invoice)
    if invoice:
        await _lock(ctx, invoice)
    row = await store.upsert_refund(ctx.conn, refund)
    if row is not None:
        verb = "recorded" if row["inserted"] else f"now {row['status']}"
        await _history(ctx, event, "refund", refund.stripe_refund_id, f"{verb}: {refund.amount} {refund.currency}")
        if invoice:
            await _history(ctx, event, "invoice", invoice, f"refund {row['erp_refund_id']} {verb}")
        await ctx.emit(
            "refund_recorded",
            events_pb2.RefundRecorded(
                erp_refund_id=row["erp_refund_id"],
                stripe_refund_id=refund.stripe_refund_id,
                stripe_invoice_id=row["stripe_invoice_id"] or "",
                amount=money(refund.amount, refund.currency),
                status=row["status"],
            ),
        )
    memo = await store.sync_refund_memo(ctx.conn, refund.stripe_refund_id)
    if memo is not None:
        await _history(ctx, event, "credit_memo", memo.memo_key, f"refund credit memo {memo.status}: {memo.amount}")
        await _emit_memo(ctx, memo)
    return invoice


async def on_refund(ctx: HandlerContext, event: StripeEvent, billing: BillingSettings) -> None:
    obj = event.object
    if obj.get("object") not in (None, "refund") or not obj.get("id"):
        raise PermanentError(f"{event.type} does not carry a refund")
    if ctx.before_sync_start(obj.get("created")):
        ctx.skip("before SYNCMESH_SYNC_START")
        return
    invoice = await apply_refund(ctx, event, mapping.refund_from_object(obj))
    if invoice:
        await settle_invoice(ctx, event, billing, invoice)


async def on_credit_note(ctx: HandlerContext, event: StripeEvent, billing: BillingSettings) -> None:
    obj = event.object
    if ctx.before_sync_start(obj.get("created")):
        ctx.skip("before SYNCMESH_SYNC_START")
        return
    note: ErpCreditNote = mapping.map_credit_note(obj)
    if note.stripe_invoice_id:
        await _lock(ctx, note.stripe_invoice_id)
    memo = await store.upsert_credit_note(ctx.conn, note)
    if memo is not None:
        change = f"credit note {note.number or note.stripe_credit_note_id} {note.status}: {note.amount}"
        await _history(ctx, event, "credit_memo", note.stripe_credit_note_id, change)
        if note.stripe_invoice_id:
            await _history(ctx, event, "invoice", note.stripe_invoice_id, f"{memo.erp_credit_memo_id}: {change}")
        await _emit_memo(ctx, memo)
    for refund_id in note.refund_ids:
        refund_memo = await store.sync_refund_memo(ctx.conn, refund_id)
        if refund_memo is not None:
            await _history(ctx, event, "credit_memo", refund_id, f"refund credit memo {refund_memo.status}")
            await _emit_memo(ctx, refund_memo)
    if note.stripe_invoice_id:
        await settle_invoice(ctx, event, billing, note.stripe_invoice_id)


# -- customers and subscriptions ----------------------------------------------------------------

#: Metadata keys under which the customer service (or finance) records the ERP customer.
ERP_CUSTOMER_KEYS = ("erp_customer_id", "netsuite_customer_id", "netsuite_id")


async def on_customer(ctx: HandlerContext, event: StripeEvent) -> None:
    obj = event.object
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    assert isinstance(metadata, dict)
    erp_id = next((str(metadata[k]) for k in ERP_CUSTOMER_KEYS if metadata.get(k)), None)
    if not obj.get("id"):
        raise PermanentError(f"{event.type} carries no customer id")
    if erp_id is None:
        ctx.skip("customer has no ERP link yet")
        return
    if await store.upsert_customer(ctx.conn, str(obj["id"]), erp_id, event.created):
        await _history(ctx, event, "customer", str(obj["id"]), f"linked to ERP customer {erp_id}")


async def on_subscription(ctx: HandlerContext, event: StripeEvent, billing: BillingSettings) -> None:
    if not billing.credit_hold:
        ctx.skip("credit hold is off (SYNCMESH_BILLING_CREDIT_HOLD)")
        return
    hold = mapping.hold_from_subscription(event.object, event.type)
    if hold is None:
        ctx.skip("subscription change does not put the customer on hold")
        return
    await _lock(ctx, hold.stripe_invoice_id)
    await place_hold(ctx, event, hold)
    await settle_invoice(ctx, event, billing, hold.stripe_invoice_id)

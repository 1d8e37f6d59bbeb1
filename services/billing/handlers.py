"""Stripe billing events other than invoice snapshots -> the ERP ledger, inside a batch.

Each handler stores the Stripe facts the event carries (keyed by Stripe id, version-guarded)
and notes the invoice in the batch (`Batch.settle_later`) for its ledger to be re-derived from
all of its stored facts at the end of the batch (`settlement`). That split is what makes the
result independent of order and duplication: a late or repeated event can only add a fact the
store already has or ignore an older one; the derivation (`decide.settle`, pure) does the rest.
What the batch has noted travels in an explicit `Batch` value. Invoice snapshots themselves are
folded set-based in `invoices`; `batch` runs the two together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, date, datetime

from services.billing import announce, decide, holds, payment_mapping, store
from services.billing.batch_state import Batch
from services.billing.holds import HoldRequest
from services.billing.payment_mapping import ErpCreditNote, ErpPayment, ErpRefund
from services.common.consumer import HandlerContext
from services.common.db import Conn
from services.common.errors import PermanentError
from services.common.events import StripeEvent

_PAYMENT_CHARGE_EVENTS = ("charge.succeeded", "charge.captured", "charge.updated", "charge.refunded")


async def _lock(batch: Batch, ctx: HandlerContext, invoice_id: str) -> None:
    if invoice_id not in batch.locked:
        await store.lock(ctx.conn, invoice_id)
        batch.locked.add(invoice_id)


async def item_map(batch: Batch, conn: Conn, price_ids: Sequence[str]) -> dict[str, str]:
    """The ERP items of these prices, read from the store once per batch."""
    missing = sorted(set(price_ids) - batch.prices)
    if missing:
        batch.item_map.update(await store.load_item_map(conn, missing))
        batch.prices.update(missing)
    return {p: batch.item_map[p] for p in price_ids if p in batch.item_map}


async def dispatch(batch: Batch, ctx: HandlerContext, event: StripeEvent) -> None:
    """Every billing event but an invoice snapshot (see `invoices.is_snapshot_event`)."""
    kind = event.type
    if kind.startswith("invoice_payment."):
        await on_invoice_payment(batch, ctx, event)
    elif kind.startswith("charge."):
        await on_charge(batch, ctx, event)
    elif kind.startswith("refund."):
        await on_refund(batch, ctx, event)
    elif kind.startswith("credit_note."):
        await on_credit_note(batch, ctx, event)
    elif kind.startswith("customer.subscription."):
        await on_subscription(batch, ctx, event)
    elif kind in ("customer.created", "customer.updated"):
        await on_customer(batch, ctx, event)
    else:
        ctx.skip(f"{kind} is not a billing event")


def notified_on(ctx: HandlerContext, event: StripeEvent) -> date:
    """The day the mesh was told (the gateway's receipt time), the write-off's transaction date."""
    received = ctx.envelope.received_at
    if received.seconds:
        return datetime.fromtimestamp(received.seconds, tz=UTC).date()
    return event.created_at.date()


async def place_hold(batch: Batch, ctx: HandlerContext, event: StripeEvent, hold: HoldRequest) -> None:
    placed = await store.place_hold(ctx.conn, hold)
    if placed is False:
        batch.record(event, "credit_hold", hold.stripe_customer_id, f"reason now: {hold.reason}")
    if placed:
        change = f"placed for {hold.stripe_invoice_id}: {hold.reason}"
        batch.record(event, "credit_hold", hold.stripe_customer_id, change)
        await ctx.emit(
            "credit_hold_changed",
            announce.credit_hold_changed(
                hold.stripe_customer_id, hold.stripe_invoice_id, active=True, reason=hold.reason
            ),
        )


# -- payments -----------------------------------------------------------------------------------


async def apply_payment(batch: Batch, ctx: HandlerContext, event: StripeEvent, payment: ErpPayment) -> list[str]:
    """Store the payment (once per Stripe id); returns refunds that learnt their invoice from it."""
    written = await store.upsert_payment(ctx.conn, payment)
    if written is not None:
        verb = "applied" if written.inserted else f"updated from {payment.source}"
        change = f"{verb}: {payment.amount} {payment.currency} to {payment.stripe_invoice_id} ({payment.method})"
        batch.record(event, "payment", payment.stripe_payment_id, change)
        if payment.stripe_invoice_id:
            batch.record(event, "invoice", payment.stripe_invoice_id, f"payment {written.erp_payment_id} {verb}")
        await ctx.emit("payment_applied", announce.payment_applied(written, payment))
    linked = await store.link_refunds(ctx.conn, payment)
    for refund_id in linked:
        await _sync_refund_memo(ctx, refund_id)
    return linked


async def _sync_refund_memo(ctx: HandlerContext, refund_id: str) -> decide.RefundMemo | None:
    """Bring the refund's credit memo in line with its stored facts; the memo when it changed."""
    refund = await store.stored_refund(ctx.conn, refund_id)
    if refund is None:
        return None
    memo = decide.refund_memo(refund)
    erp_id = await store.write_refund_memo(ctx.conn, memo)
    if erp_id is None:
        return None
    await ctx.emit(
        "credit_memo_changed",
        announce.credit_memo_changed(
            erp_id, refund_id, "refund", memo.stripe_invoice_id, memo.amount, memo.currency, memo.status
        ),
    )
    return memo


async def on_invoice_payment(batch: Batch, ctx: HandlerContext, event: StripeEvent) -> None:
    obj = event.object
    if ctx.before_sync_start(obj.get("created")):
        ctx.skip("before SYNCMESH_SYNC_START")
        return
    payment = payment_mapping.payment_from_invoice_payment(obj)
    if payment is None:
        ctx.skip(f"invoice payment {obj.get('status')}: nothing paid")
        return
    if payment.stripe_invoice_id:
        await _lock(batch, ctx, payment.stripe_invoice_id)
    await apply_payment(batch, ctx, event, payment)
    if payment.stripe_invoice_id:
        batch.settle_later(ctx, event, payment.stripe_invoice_id)


async def on_charge(batch: Batch, ctx: HandlerContext, event: StripeEvent) -> None:
    obj = event.object
    if ctx.before_sync_start(obj.get("created")):
        ctx.skip("before SYNCMESH_SYNC_START")
        return
    touched: set[str] = set()
    if event.type in _PAYMENT_CHARGE_EVENTS:
        payment = payment_mapping.payment_from_charge(obj)
        if payment is not None and payment.stripe_invoice_id:
            await _lock(batch, ctx, payment.stripe_invoice_id)
            await apply_payment(batch, ctx, event, payment)
            touched.add(payment.stripe_invoice_id)
    if event.type == "charge.refunded":
        for refund in payment_mapping.refunds_from_charge(obj):
            invoice = await apply_refund(batch, ctx, event, refund)
            if invoice:
                touched.add(invoice)
    if not touched and event.type != "charge.refunded":
        ctx.skip("charge not linked to an invoice (basil charges are paid through invoice_payment)")
    for invoice_id in sorted(touched):
        batch.settle_later(ctx, event, invoice_id)


# -- refunds and credit notes -------------------------------------------------------------------


async def apply_refund(batch: Batch, ctx: HandlerContext, event: StripeEvent, refund: ErpRefund) -> str | None:
    """Customer refund + its credit memo, once per refund id; returns the invoice it belongs to."""
    invoice = refund.stripe_invoice_id or await store.invoice_for_payment(
        ctx.conn, refund.charge_id, refund.payment_intent_id
    )
    refund = replace(refund, stripe_invoice_id=invoice)
    if invoice:
        await _lock(batch, ctx, invoice)
    written = await store.upsert_refund(ctx.conn, refund)
    if written is not None:
        verb = "recorded" if written.inserted else f"now {written.status}"
        batch.record(event, "refund", refund.stripe_refund_id, f"{verb}: {refund.amount} {refund.currency}")
        if invoice:
            batch.record(event, "invoice", invoice, f"refund {written.erp_refund_id} {verb}")
        await ctx.emit("refund_recorded", announce.refund_recorded(written, refund))
    memo = await _sync_refund_memo(ctx, refund.stripe_refund_id)
    if memo is not None:
        batch.record(event, "credit_memo", memo.memo_key, f"refund credit memo {memo.status}: {memo.amount}")
    return invoice


async def on_refund(batch: Batch, ctx: HandlerContext, event: StripeEvent) -> None:
    obj = event.object
    if obj.get("object") not in (None, "refund") or not obj.get("id"):
        raise PermanentError(f"{event.type} does not carry a refund")
    if ctx.before_sync_start(obj.get("created")):
        ctx.skip("before SYNCMESH_SYNC_START")
        return
    invoice = await apply_refund(batch, ctx, event, payment_mapping.refund_from_object(obj))
    if invoice:
        batch.settle_later(ctx, event, invoice)


async def on_credit_note(batch: Batch, ctx: HandlerContext, event: StripeEvent) -> None:
    obj = event.object
    if ctx.before_sync_start(obj.get("created")):
        ctx.skip("before SYNCMESH_SYNC_START")
        return
    note: ErpCreditNote = payment_mapping.map_credit_note(obj)
    if note.stripe_invoice_id:
        await _lock(batch, ctx, note.stripe_invoice_id)
    erp_id = await store.upsert_credit_note(ctx.conn, note)
    if erp_id is not None:
        change = f"credit note {note.number or note.stripe_credit_note_id} {note.status}: {note.amount}"
        batch.record(event, "credit_memo", note.stripe_credit_note_id, change)
        if note.stripe_invoice_id:
            batch.record(event, "invoice", note.stripe_invoice_id, f"{erp_id}: {change}")
        await ctx.emit(
            "credit_memo_changed",
            announce.credit_memo_changed(
                erp_id,
                note.stripe_credit_note_id,
                "credit_note",
                note.stripe_invoice_id,
                note.amount,
                note.currency,
                note.status,
            ),
        )
    for refund_id in note.refund_ids:
        refund_memo = await _sync_refund_memo(ctx, refund_id)
        if refund_memo is not None:
            batch.record(event, "credit_memo", refund_id, f"refund credit memo {refund_memo.status}")
    if note.stripe_invoice_id:
        batch.settle_later(ctx, event, note.stripe_invoice_id)


# -- customers and subscriptions ----------------------------------------------------------------

#: Metadata keys under which the customer service (or finance) records the ERP customer.
ERP_CUSTOMER_KEYS = ("erp_customer_id", "netsuite_customer_id", "netsuite_id")


async def on_customer(batch: Batch, ctx: HandlerContext, event: StripeEvent) -> None:
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
        batch.record(event, "customer", str(obj["id"]), f"linked to ERP customer {erp_id}")


async def on_subscription(batch: Batch, ctx: HandlerContext, event: StripeEvent) -> None:
    if not batch.policy.credit_hold:
        ctx.skip("credit hold is off (SYNCMESH_BILLING_CREDIT_HOLD)")
        return
    hold = holds.hold_from_subscription(event.object, event.type)
    if hold is None:
        ctx.skip("subscription change does not put the customer on hold")
        return
    await _lock(batch, ctx, hold.stripe_invoice_id)
    await place_hold(batch, ctx, event, hold)
    batch.settle_later(ctx, event, hold.stripe_invoice_id)

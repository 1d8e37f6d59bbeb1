"""Stripe billing events other than invoice snapshots -> the ERP ledger, inside a batch.

Each handler stores the Stripe facts the event carries (keyed by Stripe id, version-guarded),
then notes the invoice for its ledger to be re-derived from all of its stored facts. That split
is what makes the result independent of order and duplication: a late or repeated event can only
add a fact the store already has or ignore an older one; the derivation (`decide.settle`) does
the rest.

The derivation is deferred to the end of the batch (`settle_noted`), once per invoice, whatever
number of the batch's events touched it: the ledger ends the same, and the mesh announces each
invoice's newest state once per batch rather than every step towards it. What the batch has
noted travels in an explicit `Batch` value. Invoice snapshots themselves are folded set-based in
`invoices`; `batch` runs the two together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from datetime import UTC, date, datetime

from syncmesh.billing.v1 import events_pb2
from syncmesh.type.v1 import money_pb2

from services.billing import decide, holds, payment_mapping, store
from services.billing.batch_state import Batch, Settle
from services.billing.holds import HoldRequest
from services.billing.payment_mapping import ErpCreditNote, ErpPayment, ErpRefund
from services.common.consumer import HandlerContext
from services.common.db import Conn
from services.common.errors import PermanentError
from services.common.events import StripeEvent

_PAYMENT_CHARGE_EVENTS = ("charge.succeeded", "charge.captured", "charge.updated", "charge.refunded")

#: What a write-off memo's status means, in its audit row.
_WRITE_OFF_CHANGE = {"issued": "written off", "reversed": "write-off reversed (invoice collected)", "void": "voided"}


def money(amount: int, currency: str) -> money_pb2.Money:
    return money_pb2.Money(amount_minor=amount, currency=currency)


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


# -- the ledger ---------------------------------------------------------------------------------


async def settle_noted(batch: Batch, conn: Conn) -> None:
    """Re-derive every noted invoice's ledger: read the facts of them all at once, decide each
    (`decide.settle`, pure), write what changed set-based, then record and announce it."""
    stored = await store.stored_ledgers(conn, sorted(batch.settle))
    settlements = [decide.settle(stored[invoice_id], batch.policy) for invoice_id in sorted(stored)]
    await store.save_ledgers(conn, [s for s in settlements if s.moved])
    memo_ids = await store.write_write_offs(conn, [s.write_off for s in settlements if s.write_off is not None])
    released = await store.release_holds(
        conn, {s.invoice.stripe_invoice_id: s.release_reason for s in settlements if s.release_reason is not None}
    )
    # Invoices not stored yet settle with these facts when their snapshot arrives.
    for settlement in settlements:
        invoice_id = settlement.invoice.stripe_invoice_id
        await _announce(batch, batch.settle[invoice_id], settlement, memo_ids, released.get(invoice_id, []))
    batch.settle.clear()


async def _announce(
    batch: Batch, by: Settle, s: decide.Settlement, memo_ids: Mapping[str, str], released: Sequence[str]
) -> None:
    """The audit rows and domain events of one settled invoice, in the order it changed."""
    ctx, event, invoice = by.ctx, by.event, s.invoice
    invoice_id = invoice.stripe_invoice_id
    if s.moved:
        batch.record(event, "invoice", invoice_id, s.history)
    if s.moved or by.changed:
        await ctx.emit(
            "invoice_changed",
            events_pb2.InvoiceChanged(
                erp_invoice_id=invoice.erp_invoice_id,
                stripe_invoice_id=invoice_id,
                stripe_customer_id=invoice.stripe_customer_id,
                status=s.status,
                total=money(invoice.total, invoice.currency),
                amount_remaining=money(s.state.amount_remaining, invoice.currency),
                lines_complete=invoice.lines_complete,
            ),
        )
    memo = s.write_off
    if memo is not None and memo.memo_key in memo_ids:
        erp_id = memo_ids[memo.memo_key]
        batch.record(event, "credit_memo", memo.memo_key, f"{_WRITE_OFF_CHANGE[memo.status]}: {memo.amount}")
        batch.record(event, "invoice", invoice_id, f"write-off {erp_id} {memo.status}")
        await _emit_memo(ctx, erp_id, memo.memo_key, "write_off", invoice_id, memo.amount, memo.currency, memo.status)
    for customer in released:
        assert s.release_reason is not None
        batch.record(event, "credit_hold", customer, f"released: {s.release_reason}")
        await ctx.emit(
            "credit_hold_changed",
            events_pb2.CreditHoldChanged(
                stripe_customer_id=customer, stripe_invoice_id=invoice_id, active=False, reason=s.release_reason
            ),
        )


async def _emit_memo(
    ctx: HandlerContext,
    erp_credit_memo_id: str,
    memo_key: str,
    kind: str,
    invoice_id: str | None,
    amount: int,
    currency: str,
    status: str,
) -> None:
    await ctx.emit(
        "credit_memo_changed",
        events_pb2.CreditMemoChanged(
            erp_credit_memo_id=erp_credit_memo_id,
            source_id=memo_key,
            kind=kind,
            stripe_invoice_id=invoice_id or "",
            amount=money(amount, currency),
            status=status,
        ),
    )


async def place_hold(batch: Batch, ctx: HandlerContext, event: StripeEvent, hold: HoldRequest) -> None:
    placed = await store.place_hold(ctx.conn, hold)
    if placed is False:
        batch.record(event, "credit_hold", hold.stripe_customer_id, f"reason now: {hold.reason}")
    if placed:
        change = f"placed for {hold.stripe_invoice_id}: {hold.reason}"
        batch.record(event, "credit_hold", hold.stripe_customer_id, change)
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


async def apply_payment(batch: Batch, ctx: HandlerContext, event: StripeEvent, payment: ErpPayment) -> list[str]:
    """Store the payment (once per Stripe id); returns refunds that learnt their invoice from it."""
    written = await store.upsert_payment(ctx.conn, payment)
    if written is not None:
        verb = "applied" if written.inserted else f"updated from {payment.source}"
        change = f"{verb}: {payment.amount} {payment.currency} to {payment.stripe_invoice_id} ({payment.method})"
        batch.record(event, "payment", payment.stripe_payment_id, change)
        if payment.stripe_invoice_id:
            batch.record(event, "invoice", payment.stripe_invoice_id, f"payment {written.erp_payment_id} {verb}")
        await ctx.emit(
            "payment_applied",
            events_pb2.PaymentApplied(
                erp_payment_id=written.erp_payment_id,
                stripe_payment_id=payment.stripe_payment_id,
                stripe_invoice_id=payment.stripe_invoice_id or "",
                amount=money(payment.amount, payment.currency),
            ),
        )
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
    await _emit_memo(ctx, erp_id, refund_id, "refund", memo.stripe_invoice_id, memo.amount, memo.currency, memo.status)
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
        await ctx.emit(
            "refund_recorded",
            events_pb2.RefundRecorded(
                erp_refund_id=written.erp_refund_id,
                stripe_refund_id=refund.stripe_refund_id,
                stripe_invoice_id=written.stripe_invoice_id or "",
                amount=money(refund.amount, refund.currency),
                status=written.status,
            ),
        )
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
        await _emit_memo(
            ctx,
            erp_id,
            note.stripe_credit_note_id,
            "credit_note",
            note.stripe_invoice_id,
            note.amount,
            note.currency,
            note.status,
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

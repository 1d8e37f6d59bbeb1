"""Stripe billing events other than invoice snapshots -> the ERP ledger, inside a batch.

Each handler stores the Stripe facts the event carries (keyed by Stripe id, version-guarded),
then asks for the invoice's ledger state to be re-derived from all of its stored facts. That
split is what makes the result independent of order and duplication: a late or repeated event
can only add a fact the store already has or ignore an older one; the derivation does the rest.

The derivation (`settle_invoice`) is deferred to the end of the batch (`settle_noted`), once per
invoice, whatever number of the batch's events touched it: the ledger ends the same, and the
mesh announces each invoice's newest state once per batch rather than every step towards it.
Invoice snapshots themselves are folded set-based in `invoices`; `batch` runs the two together.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime

import asyncpg
from syncmesh.billing.v1 import events_pb2
from syncmesh.type.v1 import money_pb2

from services.billing import mapping, store
from services.billing.mapping import ErpCreditNote, ErpPayment, ErpRefund, HoldRequest
from services.billing.settings import BillingSettings
from services.common.consumer import HandlerContext
from services.common.db import Conn
from services.common.errors import PermanentError
from services.common.events import StripeEvent

log = logging.getLogger(__name__)

_PAYMENT_CHARGE_EVENTS = ("charge.succeeded", "charge.captured", "charge.updated", "charge.refunded")


def money(amount: int, currency: str) -> money_pb2.Money:
    return money_pb2.Money(amount_minor=amount, currency=currency)


@dataclass
class Settle:
    """An invoice to re-derive at the end of the batch, with the event that last touched it."""

    ctx: HandlerContext
    event: StripeEvent
    changed: bool = False


@dataclass
class BatchState:
    """What a batch does once for all of its events."""

    locked: set[str] = field(default_factory=set)
    prices: set[str] = field(default_factory=set)
    item_map: dict[str, str] = field(default_factory=dict)
    history: list[store.HistoryRow] = field(default_factory=list)
    settle: dict[str, Settle] = field(default_factory=dict)


batch_state: contextvars.ContextVar[BatchState] = contextvars.ContextVar("billing_batch_state")


async def _lock(ctx: HandlerContext, invoice_id: str) -> None:
    state = batch_state.get()
    if invoice_id not in state.locked:
        await store.lock(ctx.conn, invoice_id)
        state.locked.add(invoice_id)


async def item_map(conn: Conn, price_ids: Sequence[str]) -> dict[str, str]:
    state = batch_state.get()
    missing = sorted(set(price_ids) - state.prices)
    if missing:
        state.item_map.update(await store.load_item_map(conn, missing))
        state.prices.update(missing)
    return {p: state.item_map[p] for p in price_ids if p in state.item_map}


async def dispatch(ctx: HandlerContext, event: StripeEvent, billing: BillingSettings) -> None:
    """Every billing event but an invoice snapshot (see `invoices.is_snapshot_event`)."""
    kind = event.type
    if kind.startswith("invoice_payment."):
        await on_invoice_payment(ctx, event)
    elif kind.startswith("charge."):
        await on_charge(ctx, event)
    elif kind.startswith("refund."):
        await on_refund(ctx, event)
    elif kind.startswith("credit_note."):
        await on_credit_note(ctx, event)
    elif kind.startswith("customer.subscription."):
        await on_subscription(ctx, event, billing)
    elif kind in ("customer.created", "customer.updated"):
        await on_customer(ctx, event)
    else:
        ctx.skip(f"{kind} is not a billing event")


def notified_on(ctx: HandlerContext, event: StripeEvent) -> date:
    """The day the mesh was told (the gateway's receipt time), the write-off's transaction date."""
    received = ctx.envelope.received_at
    if received.seconds:
        return datetime.fromtimestamp(received.seconds, tz=UTC).date()
    return event.created_at.date()


def history(event: StripeEvent, record_type: str, record_id: str, change: str) -> None:
    """An audit row for this event, written with the batch's others in one statement."""
    batch_state.get().history.append((record_type, record_id, event.id, event.type, change))


# -- the ledger ---------------------------------------------------------------------------------


def settle_invoice(ctx: HandlerContext, event: StripeEvent, invoice_id: str, *, changed: bool = False) -> None:
    """Re-derive the invoice's ledger at the end of the batch (its facts are all stored by then)."""
    noted = batch_state.get().settle
    earlier = noted.get(invoice_id)
    noted[invoice_id] = Settle(ctx, event, changed or (earlier is not None and earlier.changed))


async def settle_noted(conn: Conn, billing: BillingSettings) -> None:
    """Re-derive every noted invoice's ledger from its stored facts; record and announce what moved."""
    noted = batch_state.get().settle
    rows = await store.invoices_with_facts(conn, sorted(noted))
    derived = []
    for invoice_id in sorted(rows):
        row = rows[invoice_id]
        state = mapping.compute_ledger(store.ledger_facts(row, write_off_enabled=billing.write_off_uncollectible))
        status = mapping.forward_status(row["erp_status"], state.erp_status)
        derived.append((row, state, status, not store.ledger_unchanged(row, state, status)))
    moved_ledgers = [(row["stripe_invoice_id"], st, status) for row, st, status, moved in derived if moved]
    await store.save_ledgers(conn, moved_ledgers)
    # Invoices not stored yet settle with these facts when their snapshot arrives.
    for row, state, status, moved in derived:
        await _announce(conn, billing, noted[row["stripe_invoice_id"]], row, state, status, moved=moved)
    noted.clear()


async def _announce(
    conn: Conn,
    billing: BillingSettings,
    by: Settle,
    row: asyncpg.Record,
    state: mapping.LedgerState,
    status: str,
    *,
    moved: bool,
) -> None:
    ctx, event, invoice_id = by.ctx, by.event, row["stripe_invoice_id"]
    if moved:
        history(
            event,
            "invoice",
            invoice_id,
            f"ledger: {status}, paid {state.amount_paid}, credits {state.credits_applied}, "
            f"remaining {state.amount_remaining}",
        )
    if moved or by.changed:
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
    memo = await store.sync_write_off(conn, row, state)
    if memo is not None:
        what = {"issued": "written off", "reversed": "write-off reversed (invoice collected)", "void": "voided"}
        history(event, "credit_memo", memo.memo_key, f"{what[memo.status]}: {memo.amount}")
        history(event, "invoice", invoice_id, f"write-off {memo.erp_credit_memo_id} {memo.status}")
        await _emit_memo(ctx, memo)
    if billing.release_hold_on_pay and status in ("paid_in_full", "voided") and row["has_active_holds"]:
        reason = f"invoice {invoice_id} {status.replace('_', ' ')}"
        for hold in await store.release_holds(conn, invoice_id, reason):
            history(event, "credit_hold", hold["stripe_customer_id"], f"released: {reason}")
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
        history(event, "credit_hold", hold.stripe_customer_id, f"reason now: {hold.reason}")
    if placed:
        history(event, "credit_hold", hold.stripe_customer_id, f"placed for {hold.stripe_invoice_id}: {hold.reason}")
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
        history(event, "payment", payment.stripe_payment_id, change)
        if payment.stripe_invoice_id:
            history(event, "invoice", payment.stripe_invoice_id, f"payment {row['erp_payment_id']} {verb}")
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


async def on_invoice_payment(ctx: HandlerContext, event: StripeEvent) -> None:
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
        settle_invoice(ctx, event, payment.stripe_invoice_id)


async def on_charge(ctx: HandlerContext, event: StripeEvent) -> None:
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
        settle_invoice(ctx, event, invoice_id)


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
        history(event, "refund", refund.stripe_refund_id, f"{verb}: {refund.amount} {refund.currency}")
        if invoice:
            history(event, "invoice", invoice, f"refund {row['erp_refund_id']} {verb}")
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
        history(event, "credit_memo", memo.memo_key, f"refund credit memo {memo.status}: {memo.amount}")
        await _emit_memo(ctx, memo)
    return invoice


async def on_refund(ctx: HandlerContext, event: StripeEvent) -> None:
    obj = event.object
    if obj.get("object") not in (None, "refund") or not obj.get("id"):
        raise PermanentError(f"{event.type} does not carry a refund")
    if ctx.before_sync_start(obj.get("created")):
        ctx.skip("before SYNCMESH_SYNC_START")
        return
    invoice = await apply_refund(ctx, event, mapping.refund_from_object(obj))
    if invoice:
        settle_invoice(ctx, event, invoice)


async def on_credit_note(ctx: HandlerContext, event: StripeEvent) -> None:
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
        history(event, "credit_memo", note.stripe_credit_note_id, change)
        if note.stripe_invoice_id:
            history(event, "invoice", note.stripe_invoice_id, f"{memo.erp_credit_memo_id}: {change}")
        await _emit_memo(ctx, memo)
    for refund_id in note.refund_ids:
        refund_memo = await store.sync_refund_memo(ctx.conn, refund_id)
        if refund_memo is not None:
            history(event, "credit_memo", refund_id, f"refund credit memo {refund_memo.status}")
            await _emit_memo(ctx, refund_memo)
    if note.stripe_invoice_id:
        settle_invoice(ctx, event, note.stripe_invoice_id)


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
        history(event, "customer", str(obj["id"]), f"linked to ERP customer {erp_id}")


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
    settle_invoice(ctx, event, hold.stripe_invoice_id)

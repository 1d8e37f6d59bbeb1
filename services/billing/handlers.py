"""Stripe billing events other than invoice snapshots -> the ERP ledger, a batch at a time.

Three steps, like the customer service's: each event is read into the facts it carries
(`read_event`: payments, refunds, credit notes, credit holds, customer links; no I/O); the
stored facts they touch are loaded in one statement and the batch's facts folded over them in
arrival order by pure rules (`facts.FactsFold`); then what changed is written set-based
(`fact_store.write`), and the audit rows and domain events follow in event order, with the ERP
ids the write assigned. Each invoice an event touches is noted in the batch (`Batch.settle_later`)
for its ledger to be re-derived from all of its stored facts at the end of the batch
(`settlement`). That split is what makes the ledger independent of order and duplication: a late
or repeated event can only add a fact the store already has or lose to a newer one; the
derivation (`decide.settle`, pure) does the rest. Invoice snapshots themselves are folded
set-based in `invoices`; `batch` runs the two together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, tzinfo

from services.billing import announce, fact_store, holds, payment_mapping, store
from services.billing.batch_state import Batch
from services.billing.facts import (
    ChargeLinked,
    CustomerLinked,
    Effect,
    FactsFold,
    HoldPlaced,
    MemoSynced,
    NoteStored,
    PaymentStored,
    RefundStored,
)
from services.billing.holds import HoldRequest
from services.billing.payment_mapping import ChargeSeen, ErpCreditNote, ErpPayment, ErpRefund
from services.billing.records import PaymentWrite, RefundWrite
from services.common.consumer import BatchItem, HandlerContext
from services.common.db import Conn
from services.common.errors import PermanentError
from services.common.events import StripeEvent

_PAYMENT_CHARGE_EVENTS = ("charge.succeeded", "charge.captured", "charge.updated", "charge.refunded")

#: Metadata keys under which the customer service (or finance) records the ERP customer.
ERP_CUSTOMER_KEYS = ("erp_customer_id", "netsuite_customer_id", "netsuite_id")


@dataclass(frozen=True)
class CustomerLink:
    """A customer event's link to its ERP customer, as of the event."""

    stripe_customer_id: str
    erp_customer_id: str
    created: int


Fact = ErpPayment | ErpRefund | ErpCreditNote | HoldRequest | CustomerLink | ChargeSeen


@dataclass
class EventFacts:
    """The facts one event carries, in the order it carries them, and the invoices it touches."""

    item: BatchItem
    facts: list[Fact] = field(default_factory=list)
    #: Invoices to re-derive at the end of the batch (None: this event notes none itself).
    settles: list[str] | None = None
    #: Filled by `store_facts`: the invoices the event's refunds were resolved to.
    refund_invoices: list[str] = field(default_factory=list)


async def item_map(batch: Batch, conn: Conn, price_ids: Sequence[str]) -> dict[str, str]:
    """The ERP items of these prices, read from the store once per batch."""
    missing = sorted(set(price_ids) - batch.prices)
    if missing:
        batch.item_map.update(await store.load_item_map(conn, missing))
        batch.prices.update(missing)
    return {p: batch.item_map[p] for p in price_ids if p in batch.item_map}


def notified_on(ctx: HandlerContext, event: StripeEvent, zone: tzinfo) -> date:
    """The day (in the ledger's zone) the mesh was told: the gateway's receipt time, kept in the
    stream so a replay sees the same day. Only the last resort for a date Stripe gave none of."""
    received = ctx.envelope.received_at
    if received.seconds:
        return datetime.fromtimestamp(received.seconds, tz=zone).date()
    return event.created_at.astimezone(zone).date()


# -- reading: an event -> the facts it carries (no I/O) ---------------------------------------------


def read_event(batch: Batch, item: BatchItem) -> EventFacts | None:
    """Every billing event but an invoice snapshot (see `invoices.is_snapshot_event`); None when
    the event carries nothing to store (the reason is recorded with `ctx.skip`)."""
    ctx, event = item.ctx, item.event
    kind, obj = event.type, event.object
    if kind.startswith(("invoice_payment.", "charge.", "refund.", "credit_note.")):
        if kind.startswith("refund.") and (obj.get("object") not in (None, "refund") or not obj.get("id")):
            raise PermanentError(f"{kind} does not carry a refund")
        if ctx.before_sync_start(obj.get("created")):
            ctx.skip("before SYNCMESH_SYNC_START")
            return None
    if kind.startswith("invoice_payment."):
        payment = payment_mapping.payment_from_invoice_payment(obj, event.created)
        if payment is None:
            ctx.skip(f"invoice payment {obj.get('status')}: nothing paid")
            return None
        invoice = payment.stripe_invoice_id
        return EventFacts(item, [payment], [invoice] if invoice else [])
    if kind.startswith("charge."):
        return _read_charge(item)
    if kind.startswith("refund."):
        return EventFacts(item, [payment_mapping.refund_from_object(obj)], [])
    if kind.startswith("credit_note."):
        note = payment_mapping.map_credit_note(obj, batch.policy.ledger_zone)
        return EventFacts(item, [note], [note.stripe_invoice_id] if note.stripe_invoice_id else [])
    if kind.startswith("customer.subscription."):
        if not batch.policy.credit_hold:
            ctx.skip("credit hold is off (SYNCMESH_BILLING_CREDIT_HOLD)")
            return None
        hold = holds.hold_from_subscription(obj, kind, event.created)
        if hold is None:
            ctx.skip("subscription change does not put the customer on hold")
            return None
        return EventFacts(item, [hold], [hold.stripe_invoice_id])
    if kind in ("customer.created", "customer.updated"):
        return _read_customer(item)
    ctx.skip(f"{kind} is not a billing event")
    return None


def _read_charge(item: BatchItem) -> EventFacts | None:
    event = item.event
    facts: list[Fact] = []
    settles: list[str] = []
    if event.type in _PAYMENT_CHARGE_EVENTS:
        payment = payment_mapping.payment_from_charge(event.object)
        if payment is not None and payment.stripe_invoice_id:
            facts.append(payment)
            settles.append(payment.stripe_invoice_id)
        # Current-shape charges name no invoice, but they are where a payment's charge id is:
        # stored by payment intent, joined with the intent's invoice payment (`facts`).
        seen = payment_mapping.charge_seen(event.object)
        if seen is not None:
            facts.append(seen)
    if event.type == "charge.refunded":
        facts.extend(payment_mapping.refunds_from_charge(event.object))
    elif not facts:
        item.ctx.skip("charge neither succeeded with a payment intent nor linked to an invoice")
        return None
    return EventFacts(item, facts, settles)


def _read_customer(item: BatchItem) -> EventFacts | None:
    event = item.event
    obj = event.object
    metadata = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    assert isinstance(metadata, dict)
    erp_id = next((str(metadata[k]) for k in ERP_CUSTOMER_KEYS if metadata.get(k)), None)
    if not obj.get("id"):
        raise PermanentError(f"{event.type} carries no customer id")
    if erp_id is None:
        item.ctx.skip("customer has no ERP link yet")
        return None
    return EventFacts(item, [CustomerLink(str(obj["id"]), erp_id, event.created)])


# -- storing: load, fold, write, then record and announce --------------------------------------------


def _keys(read: Sequence[EventFacts]) -> fact_store.FactKeys:
    payments, charges, intents, refunds, notes, invoices = set(), set(), set(), set(), set(), set()
    hold_keys: set[tuple[str, str]] = set()
    customers: set[str] = set()
    for ef in read:
        for fact in ef.facts:
            if isinstance(fact, ErpPayment | ErpRefund):
                if isinstance(fact, ErpPayment):
                    payments.add(fact.stripe_payment_id)
                else:
                    refunds.add(fact.stripe_refund_id)
                if fact.charge_id:
                    charges.add(fact.charge_id)
                if fact.payment_intent_id:
                    intents.add(fact.payment_intent_id)
                if fact.stripe_invoice_id:
                    invoices.add(fact.stripe_invoice_id)
            elif isinstance(fact, ErpCreditNote):
                notes.add(fact.stripe_credit_note_id)
                refunds.update(fact.refund_ids)
                if fact.stripe_invoice_id:
                    invoices.add(fact.stripe_invoice_id)
            elif isinstance(fact, HoldRequest):
                hold_keys.add((fact.stripe_customer_id, fact.stripe_invoice_id))
            elif isinstance(fact, ChargeSeen):
                charges.add(fact.charge_id)
                intents.add(fact.payment_intent_id)
            else:
                customers.add(fact.stripe_customer_id)
    return fact_store.FactKeys(payments, charges, intents, refunds, notes, invoices, hold_keys, customers)


def _fold(fold: FactsFold, ef: EventFacts) -> tuple[list[Effect], list[str]]:
    """One event's facts applied to the fold; what they changed and the invoices to lock."""
    effects: list[Effect] = []
    invoices: list[str] = []
    for fact in ef.facts:
        if isinstance(fact, ErpPayment):
            if fact.stripe_invoice_id:
                invoices.append(fact.stripe_invoice_id)
            effects.extend(fold.apply_payment(fact))
        elif isinstance(fact, ErpRefund):
            refund = fold.resolve_refund(fact)
            if refund.stripe_invoice_id:
                invoices.append(refund.stripe_invoice_id)
                ef.refund_invoices.append(refund.stripe_invoice_id)
            effects.extend(fold.apply_refund(refund))
        elif isinstance(fact, ErpCreditNote):
            if fact.stripe_invoice_id:
                invoices.append(fact.stripe_invoice_id)
            effects.extend(fold.apply_credit_note(fact))
        elif isinstance(fact, HoldRequest):
            invoices.append(fact.stripe_invoice_id)
            effects.extend(fold.place_hold(fact))
        elif isinstance(fact, ChargeSeen):
            effects.extend(fold.apply_charge(fact))
        else:
            effects.extend(fold.link_customer(fact.stripe_customer_id, fact.erp_customer_id, fact.created))
    return effects, invoices


async def store_facts(batch: Batch, conn: Conn, read: Sequence[EventFacts]) -> None:
    """Store the events' facts (load, fold, write), then record and announce each event's changes
    in arrival order and note the invoices they touched for settlement."""
    if not any(ef.facts for ef in read):  # e.g. snapshots that only marked their invoice uncollectible
        return
    await batch.later.flush()  # the load reads what the batch's held writes change
    loaded = await fact_store.load(conn, _keys(read))
    fold = FactsFold(loaded.facts, zone=batch.policy.ledger_zone)
    decided = [_fold(fold, ef) for ef in read]
    # Invoices learnt only now (a refund's, from its payment) are locked before anything is written.
    to_lock = sorted({i for _, invoices in decided for i in invoices} - batch.locked)
    await store.lock_many(conn, to_lock)
    batch.locked.update(to_lock)
    written = await fact_store.write(conn, fold, loaded.erp_ids, later=batch.later)
    erp_ids = {**loaded.erp_ids, **written.erp_ids}
    for ef, (effects, _) in zip(read, decided, strict=True):
        with ef.item.consuming():
            for effect in effects:
                await _announce(batch, ef.item, effect, written, erp_ids)
        if ef.settles is not None:
            for invoice_id in sorted({*ef.settles, *ef.refund_invoices}):
                batch.settle_later(ef.item.ctx, ef.item.event, invoice_id)


async def _announce(
    batch: Batch, item: BatchItem, effect: Effect, written: fact_store.Written, erp_ids: dict[tuple[str, str], str]
) -> None:
    """The audit rows and domain events of one change, when the write made it."""
    ctx, event = item.ctx, item.event
    if isinstance(effect, PaymentStored):
        p = effect.payment
        if ("payment", p.stripe_payment_id) not in written.erp_ids:
            return
        erp_id = erp_ids["payment", p.stripe_payment_id]
        verb = "applied" if effect.inserted else f"updated from {p.source}"
        batch.record(
            event,
            "payment",
            p.stripe_payment_id,
            f"{verb}: {p.amount} {p.currency} to {p.stripe_invoice_id} ({p.method})",
        )
        if p.stripe_invoice_id:
            batch.record(event, "invoice", p.stripe_invoice_id, f"payment {erp_id} {verb}")
        await ctx.emit("payment_applied", announce.payment_applied(PaymentWrite(erp_id, effect.inserted), p))
    elif isinstance(effect, RefundStored):
        r = effect.refund
        if ("refund", r.stripe_refund_id) not in written.erp_ids:
            return
        erp_id = erp_ids["refund", r.stripe_refund_id]
        verb = "recorded" if effect.inserted else f"now {effect.status}"
        batch.record(event, "refund", r.stripe_refund_id, f"{verb}: {r.amount} {r.currency}")
        if r.stripe_invoice_id:
            batch.record(event, "invoice", r.stripe_invoice_id, f"refund {erp_id} {verb}")
        write = RefundWrite(erp_id, effect.inserted, effect.status, effect.stripe_invoice_id)
        await ctx.emit("refund_recorded", announce.refund_recorded(write, r))
    elif isinstance(effect, MemoSynced):
        memo = effect.memo
        if ("memo", memo.memo_key) not in written.erp_ids:
            return
        erp_id = erp_ids["memo", memo.memo_key]
        await ctx.emit(
            "credit_memo_changed",
            announce.credit_memo_changed(
                erp_id, memo.memo_key, "refund", memo.stripe_invoice_id, memo.amount, memo.currency, memo.status
            ),
        )
        if effect.change is not None:
            batch.record(event, "credit_memo", memo.memo_key, effect.change)
    elif isinstance(effect, NoteStored):
        note = effect.note
        if ("memo", note.stripe_credit_note_id) not in written.erp_ids:
            return
        erp_id = erp_ids["memo", note.stripe_credit_note_id]
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
    elif isinstance(effect, HoldPlaced):
        hold = effect.hold
        if (hold.stripe_customer_id, hold.stripe_invoice_id) not in written.holds:
            return
        if not effect.inserted:
            batch.record(event, "credit_hold", hold.stripe_customer_id, f"reason now: {hold.reason}")
            return
        change = f"placed for {hold.stripe_invoice_id}: {hold.reason}"
        batch.record(event, "credit_hold", hold.stripe_customer_id, change)
        await ctx.emit(
            "credit_hold_changed",
            announce.credit_hold_changed(
                hold.stripe_customer_id, hold.stripe_invoice_id, active=True, reason=hold.reason, code=hold.code
            ),
        )
    elif isinstance(effect, ChargeLinked):
        p = effect.payment
        if ("payment", p.stripe_payment_id) not in written.erp_ids:
            return
        erp_id = erp_ids["payment", p.stripe_payment_id]
        batch.record(
            event, "payment", p.stripe_payment_id, f"charge {p.charge_id} (payment intent {p.payment_intent_id})"
        )
        await ctx.emit("payment_applied", announce.payment_applied(PaymentWrite(erp_id, False), p))
    elif isinstance(effect, CustomerLinked) and effect.stripe_customer_id in written.customers:
        batch.record(event, "customer", effect.stripe_customer_id, f"linked to ERP customer {effect.erp_customer_id}")

"""The rules that store a batch's single facts: payments, refunds, credit notes, credit holds and
customer links, folded over what the store already holds, in arrival order.

Pure: no I/O, no clock. The store loads the facts a batch touches (`StoredFacts`), `FactsFold`
applies the batch's events to them one by one with the rules below, and the store writes the
final state of what changed, set-based. Each step also says what it changed (`Effect`), so the
audit rows and domain events follow in event order once the write has given new records their
ERP ids. The rules (the SQL of the write keeps the same ones as a guard, for two replicas racing):

- payments: a better source (higher `priority`) replaces the amount, time, method and source and
  fills the references it carries; an equal or worse one only fills references still missing.
- charges: a succeeded charge is stored by its payment intent (the first one of an intent stays);
  a payment of that intent from an `invoice_payment` takes its charge id, whichever came first,
  so every payment names its charge in the current API shape too.
- refunds: the status only moves forward (`statuses.REFUND_STATUS_RANK`); a missing invoice,
  customer, charge or payment intent is filled by the first event that has it. A refund that
  names no invoice takes the invoice of a stored payment of its charge or payment intent, and a
  payment that names one gives it to the refunds of its charge or payment intent still without.
- credit notes: (status rank, created) strictly higher replaces the note.
- credit holds: the strongest cause names the hold (lowest (cause rank, reason)), and the earliest
  moment Stripe gives for any of its causes dates it (`hold_dated`).
- customer links: the link of an event at least as new as the stored one, when it differs.
- a refund's credit memo is re-derived (`decide.refund_memo`) whenever its refund, its link to a
  credit note or its invoice may have moved, and written when it differs.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import UTC, tzinfo
from typing import Literal

from services.billing import decide
from services.billing.decide import RefundMemo
from services.billing.holds import HoldRequest
from services.billing.payment_mapping import ChargeSeen, ErpCreditNote, ErpPayment, ErpRefund
from services.billing.records import StoredRefund
from services.billing.stripe_fields import to_date

#: A stored credit note's version: (status rank, Stripe's created).
NoteVersion = tuple[int, int]
#: A stored credit hold's name: (cause rank, reason); the lower wins.
HoldName = tuple[int, str]
HoldKey = tuple[str, str]
#: When a credit hold was placed (unix seconds, or None: unknown) and where that date comes from.
HoldTime = tuple[int | None, str]


@dataclass(frozen=True)
class MemoState:
    """What a refund credit memo's write compares: its status and the references it fills."""

    status: str
    stripe_invoice_id: str | None
    stripe_customer_id: str | None


@dataclass(frozen=True)
class StoredCustomer:
    erp_customer_id: str | None
    version_created: int


@dataclass
class StoredFacts:
    """The stored facts a batch's events touch, keyed by Stripe id (loaded in one statement)."""

    payments: dict[str, ErpPayment] = field(default_factory=dict)
    refunds: dict[str, ErpRefund] = field(default_factory=dict)
    notes: dict[str, NoteVersion] = field(default_factory=dict)
    refund_memos: dict[str, MemoState] = field(default_factory=dict)
    #: Refunds a credit note pays out (their own memo is superseded).
    covered: set[str] = field(default_factory=set)
    #: The stored invoices' customers (a refund without one is its invoice's).
    invoice_customers: dict[str, str] = field(default_factory=dict)
    holds: dict[HoldKey, HoldName] = field(default_factory=dict)
    customers: dict[str, StoredCustomer] = field(default_factory=dict)
    #: Succeeded charges by payment intent: intent -> charge id.
    charges: dict[str, str] = field(default_factory=dict)
    #: The stored holds' placing moments (`hold_dated`).
    hold_times: dict[HoldKey, HoldTime] = field(default_factory=dict)


# -- the single-fact rules ------------------------------------------------------------------------


def merge_payment(stored: ErpPayment | None, new: ErpPayment) -> ErpPayment | None:
    """The payment after `new`; None when it changes nothing. The currency is the first one's."""
    if stored is None:
        return new
    if new.priority <= stored.priority:
        fills = (stored.charge_id is None and new.charge_id is not None) or (
            stored.payment_intent_id is None and new.payment_intent_id is not None
        )
        if not fills:
            return None
        return replace(
            stored,
            charge_id=stored.charge_id or new.charge_id,
            payment_intent_id=stored.payment_intent_id or new.payment_intent_id,
        )
    return replace(
        new,
        stripe_invoice_id=new.stripe_invoice_id or stored.stripe_invoice_id,
        stripe_customer_id=new.stripe_customer_id or stored.stripe_customer_id,
        charge_id=new.charge_id or stored.charge_id,
        payment_intent_id=new.payment_intent_id or stored.payment_intent_id,
        currency=stored.currency,
    )


def merge_refund(stored: ErpRefund | None, new: ErpRefund) -> ErpRefund | None:
    """The refund after `new`; None when it changes nothing. Amount and dates are the first's."""
    if stored is None:
        return new
    forward = new.status_rank > stored.status_rank
    fills = any(
        getattr(stored, name) is None and getattr(new, name) is not None
        for name in ("stripe_invoice_id", "stripe_customer_id", "charge_id", "payment_intent_id")
    )
    if not forward and not fills:
        return None
    return replace(
        stored,
        charge_id=stored.charge_id or new.charge_id,
        payment_intent_id=stored.payment_intent_id or new.payment_intent_id,
        stripe_invoice_id=stored.stripe_invoice_id or new.stripe_invoice_id,
        stripe_customer_id=stored.stripe_customer_id or new.stripe_customer_id,
        status=new.status if forward else stored.status,
        status_rank=max(new.status_rank, stored.status_rank),
        reason=new.reason if new.reason is not None else stored.reason,
    )


def note_wins(stored: NoteVersion | None, new: ErpCreditNote) -> bool:
    """Whether the credit note replaces the stored one: a higher (status rank, created)."""
    return stored is None or (new.status_rank, new.created) > stored


def hold_change(stored: HoldName | None, hold: HoldRequest) -> Literal["placed", "renamed"] | None:
    """Placed when new, renamed when a stronger cause names it, None when it stays as it is."""
    if stored is None:
        return "placed"
    return "renamed" if (hold.cause_rank, hold.reason) < stored else None


def hold_dated(stored: HoldTime | None, hold: HoldRequest) -> HoldTime | None:
    """The hold's new placing moment when this cause dates it earlier (None: it stays). The
    earliest of Stripe's moments wins whatever order the causes arrive in; a moment Stripe gave
    always beats one it did not (a hold stored before its dates were Stripe's)."""
    new: HoldTime = (hold.placed_at or None, hold.date_source if hold.placed_at else "mesh_clock")
    if stored is None:
        return new
    if new[0] is None:
        return None
    if stored[0] is None or new[0] < stored[0] or (stored[1] not in STRIPE_DATE_SOURCES and new[0] != stored[0]):
        return new
    return None


#: Date sources that are Stripe's own (a replay, backfill or late delivery gives the same date).
STRIPE_DATE_SOURCES = ("stripe_transition", "stripe_event")


def customer_link_moves(stored: StoredCustomer | None, erp_customer_id: str, created: int) -> bool:
    """Whether the link is stored: new, or from an event at least as new, naming another ERP id."""
    if stored is None:
        return True
    return created >= stored.version_created and erp_customer_id != stored.erp_customer_id


def memo_write(stored: MemoState | None, memo: RefundMemo) -> MemoState | None:
    """The refund memo's state after writing `memo`; None when the stored one already says it."""
    if stored is None:
        return MemoState(memo.status, memo.stripe_invoice_id, memo.stripe_customer_id)
    new = MemoState(
        memo.status,
        memo.stripe_invoice_id or stored.stripe_invoice_id,
        memo.stripe_customer_id or stored.stripe_customer_id,
    )
    return None if new == stored else new


# -- what each step changed, for the audit rows and domain events ----------------------------------


@dataclass(frozen=True)
class PaymentStored:
    payment: ErpPayment
    inserted: bool


@dataclass(frozen=True)
class RefundStored:
    #: The event's refund, with the invoice it was resolved to.
    refund: ErpRefund
    inserted: bool
    #: The stored refund's status and invoice after this step.
    status: str
    stripe_invoice_id: str | None


@dataclass(frozen=True)
class MemoSynced:
    memo: RefundMemo
    #: The audit row's change text, or None when this step records none (a payment's link).
    change: str | None


@dataclass(frozen=True)
class NoteStored:
    note: ErpCreditNote


@dataclass(frozen=True)
class HoldPlaced:
    hold: HoldRequest
    inserted: bool


@dataclass(frozen=True)
class CustomerLinked:
    stripe_customer_id: str
    erp_customer_id: str


@dataclass(frozen=True)
class ChargeLinked:
    """A stored payment learnt its charge id from a charge of its payment intent."""

    payment: ErpPayment


Effect = PaymentStored | RefundStored | MemoSynced | NoteStored | HoldPlaced | CustomerLinked | ChargeLinked


# -- the fold ---------------------------------------------------------------------------------------


class FactsFold:
    """The batch's events applied in arrival order to the stored facts (a working copy).

    After the fold, `payments`, `refunds`, ... hold the final state, and the `*_changed` sets the
    keys to write: the net effect of the batch, each record written once.
    """

    def __init__(self, stored: StoredFacts, *, zone: tzinfo = UTC) -> None:
        #: The ledger's time zone: the day a refund is dated on.
        self.zone = zone
        self.payments = dict(stored.payments)
        self.refunds = dict(stored.refunds)
        self.notes = dict(stored.notes)
        self.refund_memos = dict(stored.refund_memos)
        self.covered = set(stored.covered)
        self.invoice_customers = stored.invoice_customers
        self.holds = dict(stored.holds)
        self.hold_times = dict(stored.hold_times)
        self.customers = dict(stored.customers)
        self.payments_changed: set[str] = set()
        #: Payments and refunds new in this batch, in the order they arrived (their ERP ids follow it).
        self.payments_created: list[str] = []
        self.refunds_created: list[str] = []
        self.refunds_changed: set[str] = set()
        self.memos_changed: set[str] = set()
        #: Memos new in this batch: what they were created with (later steps move only the state).
        self.memos_created: dict[str, RefundMemo] = {}
        self.notes_changed: dict[str, ErpCreditNote] = {}
        #: Credit notes new in this batch: the first version (its currency and memo text stay).
        self.notes_created: dict[str, ErpCreditNote] = {}
        self.links: set[tuple[str, str]] = set()
        self.holds_changed: dict[HoldKey, HoldRequest] = {}
        self.customers_changed: set[str] = set()
        self.charges = dict(stored.charges)
        #: Charges new in this batch, to store.
        self.charges_created: dict[str, ChargeSeen] = {}

    # -- payments ---------------------------------------------------------------------------------

    def apply_payment(self, payment: ErpPayment) -> list[Effect]:
        """Store the payment; refunds of its charge without an invoice learn it (memos follow)."""
        effects: list[Effect] = []
        if payment.charge_id is None and payment.payment_intent_id in self.charges:
            payment = replace(payment, charge_id=self.charges[payment.payment_intent_id])
        stored = self.payments.get(payment.stripe_payment_id)
        merged = merge_payment(stored, payment)
        if merged is not None:
            if stored is None:
                self.payments_created.append(payment.stripe_payment_id)
            self.payments[payment.stripe_payment_id] = merged
            self.payments_changed.add(payment.stripe_payment_id)
            effects.append(PaymentStored(payment, inserted=stored is None))
        for refund_id in self._link_refunds(payment):
            memo = self._sync_memo(refund_id)
            if memo is not None:
                effects.append(MemoSynced(memo, None))
        return effects

    def apply_charge(self, charge: ChargeSeen) -> list[Effect]:
        """Store a succeeded charge by its intent; the intent's invoice payments take its id.

        Only payments from an `invoice_payment` take it (the legacy ones are keyed by their own
        charge id already), and they take it even over another id: the intent's succeeded charge
        is the payment's charge, so a wrong one (damage a repair re-syncs) is corrected."""
        intent = charge.payment_intent_id
        if intent not in self.charges:
            self.charges[intent] = charge.charge_id
            self.charges_created[charge.charge_id] = charge
        charge_id = self.charges[intent]
        effects: list[Effect] = []
        for pid in sorted(self.payments):
            p = self.payments[pid]
            if p.payment_intent_id != intent or p.charge_id == charge_id:
                continue
            if p.charge_id is not None and p.source != "invoice_payment":
                continue
            linked = replace(p, charge_id=charge_id)
            self.payments[pid] = linked
            self.payments_changed.add(pid)
            effects.append(ChargeLinked(linked))
        return effects

    def _link_refunds(self, p: ErpPayment) -> list[str]:
        invoice = p.stripe_invoice_id
        if not invoice or (not p.charge_id and not p.payment_intent_id):
            return []
        linked = sorted(
            rid
            for rid, r in self.refunds.items()
            if r.stripe_invoice_id is None
            and (
                (p.charge_id is not None and r.charge_id == p.charge_id)
                or (p.payment_intent_id is not None and r.payment_intent_id == p.payment_intent_id)
            )
        )
        for rid in linked:
            self.refunds[rid] = replace(self.refunds[rid], stripe_invoice_id=invoice)
            self.refunds_changed.add(rid)
            memo = self.refund_memos.get(rid)
            if memo is not None and memo.stripe_invoice_id != invoice:
                self.refund_memos[rid] = replace(memo, stripe_invoice_id=invoice)
                self.memos_changed.add(rid)
        return linked

    def invoice_for_payment(self, charge_id: str | None, payment_intent_id: str | None) -> str | None:
        """The invoice of the first payment (by Stripe id) of this charge or payment intent."""
        if not charge_id and not payment_intent_id:
            return None
        for pid in sorted(self.payments):
            p = self.payments[pid]
            if p.stripe_invoice_id is not None and (
                (charge_id is not None and p.charge_id == charge_id)
                or (payment_intent_id is not None and p.payment_intent_id == payment_intent_id)
            ):
                return p.stripe_invoice_id
        return None

    # -- refunds and credit notes -----------------------------------------------------------------

    def resolve_refund(self, refund: ErpRefund) -> ErpRefund:
        """The refund with its invoice: its own, or its payment's."""
        invoice = refund.stripe_invoice_id or self.invoice_for_payment(refund.charge_id, refund.payment_intent_id)
        return replace(refund, stripe_invoice_id=invoice)

    def apply_refund(self, refund: ErpRefund) -> list[Effect]:
        """Store a resolved refund (`resolve_refund`), then bring its credit memo in line."""
        effects: list[Effect] = []
        stored = self.refunds.get(refund.stripe_refund_id)
        merged = merge_refund(stored, refund)
        if merged is not None:
            if stored is None:
                self.refunds_created.append(refund.stripe_refund_id)
            self.refunds[refund.stripe_refund_id] = merged
            self.refunds_changed.add(refund.stripe_refund_id)
            effects.append(RefundStored(refund, stored is None, merged.status, merged.stripe_invoice_id))
        memo = self._sync_memo(refund.stripe_refund_id)
        if memo is not None:
            effects.append(MemoSynced(memo, f"refund credit memo {memo.status}: {memo.amount}"))
        return effects

    def apply_credit_note(self, note: ErpCreditNote) -> list[Effect]:
        """Store the credit note (a newer version only), link its refunds, re-derive their memos."""
        effects: list[Effect] = []
        key = note.stripe_credit_note_id
        stored = self.notes.get(key)
        if note_wins(stored, note):
            if stored is None:
                self.notes_created[key] = note
            self.notes[key] = (note.status_rank, note.created)
            self.notes_changed[key] = note
            effects.append(NoteStored(note))
        for refund_id in note.refund_ids:
            self.links.add((key, refund_id))
            self.covered.add(refund_id)
        for refund_id in note.refund_ids:
            memo = self._sync_memo(refund_id)
            if memo is not None:
                effects.append(MemoSynced(memo, f"refund credit memo {memo.status}"))
        return effects

    def _stored_refund(self, refund_id: str) -> StoredRefund | None:
        r = self.refunds.get(refund_id)
        if r is None:
            return None
        customer = r.stripe_customer_id
        if customer is None and r.stripe_invoice_id is not None:
            customer = self.invoice_customers.get(r.stripe_invoice_id)
        refunded_on = to_date(r.created, self.zone)
        assert refunded_on is not None
        return StoredRefund(
            stripe_refund_id=refund_id,
            stripe_invoice_id=r.stripe_invoice_id,
            stripe_customer_id=customer,
            amount=r.amount,
            currency=r.currency,
            refunded_on=refunded_on,
            status=r.status,
            reason=r.reason,
            covered=refund_id in self.covered,
        )

    def refund_memo(self, refund_id: str) -> RefundMemo:
        """The memo a stored refund calls for now."""
        stored = self._stored_refund(refund_id)
        assert stored is not None, refund_id
        return decide.refund_memo(stored)

    def _sync_memo(self, refund_id: str) -> RefundMemo | None:
        """The refund's memo when writing it changes the stored one (then noted for the write)."""
        stored = self._stored_refund(refund_id)
        if stored is None:
            return None
        memo = decide.refund_memo(stored)
        written = memo_write(self.refund_memos.get(refund_id), memo)
        if written is None:
            return None
        if refund_id not in self.refund_memos:
            self.memos_created[refund_id] = memo
        self.refund_memos[refund_id] = written
        self.memos_changed.add(refund_id)
        return memo

    # -- holds and customers ----------------------------------------------------------------------

    def place_hold(self, hold: HoldRequest) -> list[Effect]:
        key = (hold.stripe_customer_id, hold.stripe_invoice_id)
        change = hold_change(self.holds.get(key), hold)
        known: HoldTime | None = (None, "mesh_clock") if key in self.holds else None
        dated = hold_dated(self.hold_times.get(key, known), hold)
        if dated is not None:
            self.hold_times[key] = dated
            self.holds_changed[key] = hold
        if change is None:
            return []
        self.holds[key] = (hold.cause_rank, hold.reason)
        self.holds_changed[key] = hold
        return [HoldPlaced(hold, inserted=change == "placed")]

    def link_customer(self, customer_id: str, erp_customer_id: str, created: int) -> list[Effect]:
        if not customer_link_moves(self.customers.get(customer_id), erp_customer_id, created):
            return []
        self.customers[customer_id] = StoredCustomer(erp_customer_id, created)
        self.customers_changed.add(customer_id)
        return [CustomerLinked(customer_id, erp_customer_id)]

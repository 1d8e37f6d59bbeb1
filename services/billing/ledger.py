"""An invoice's ledger state (paid, credited, remaining, ERP status, write-off) derived from its
stored facts, now or as of a past day.

Pure on purpose: no I/O, no clock. Everything the ledger shows is a function of the facts handed
in, which is what makes the service order-independent: the store keeps the newest fact of each
kind, and the same facts always give the same ledger, whatever order they arrived in.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Literal

from services.billing.statuses import ERP_STATUS_RANK

ErpStatus = Literal["draft", "open", "paid_in_full", "voided", "written_off"]


@dataclass(frozen=True)
class PaymentFact:
    amount: int
    paid_at: int


@dataclass(frozen=True)
class LedgerFacts:
    """Everything known about one invoice that decides its ERP state."""

    total: int
    stripe_status: str
    stripe_amount_paid: int
    balance_applied: int
    payments: tuple[PaymentFact, ...]
    #: Issued pre-payment credit notes applied to the invoice.
    invoice_credits: int
    uncollectible_seen: bool
    uncollectible_at: int | None
    write_off_enabled: bool


WriteOffState = Literal["none", "active", "reversed", "void"]


@dataclass(frozen=True)
class LedgerState:
    amount_paid: int
    #: Paid according to Stripe's invoice but with no payment object seen (yet).
    unattributed_paid: int
    credits_applied: int
    amount_remaining: int
    erp_status: ErpStatus
    write_off: WriteOffState
    write_off_amount: int


def compute_ledger(f: LedgerFacts) -> LedgerState:
    """The ERP state of an invoice from its facts alone (the same facts give the same state).

    amount_remaining = total - payments - credits, where credits are pre-payment credit notes,
    customer balance applied and an active write-off. Refunds do not touch the invoice: in the
    ERP they are a credit memo settled by a customer refund, and the invoice stays paid.
    """
    real = sum(p.amount for p in f.payments)
    unattributed = max(0, f.stripe_amount_paid - real) if f.stripe_status not in ("void", "deleted", "draft") else 0
    paid = real + unattributed
    base_credits = f.invoice_credits + f.balance_applied
    if f.stripe_status == "draft":
        # Not sent, maybe never sent: nothing is owed on it yet, so nothing counts as receivable.
        return LedgerState(paid, unattributed, base_credits, 0, "draft", "none", 0)
    before_write_off = f.total - paid - base_credits
    write_off_wanted = f.write_off_enabled and f.uncollectible_seen

    def written_off_amount() -> int:
        # What was owed when Stripe gave up: payments after that moment are the later collection.
        cutoff = f.uncollectible_at
        early = sum(p.amount for p in f.payments if cutoff is None or p.paid_at <= cutoff)
        return max(0, f.total - base_credits - early)

    if f.stripe_status in ("void", "deleted"):
        # A voided invoice owes nothing and its write-off (if any) is voided with it.
        state: WriteOffState = "void" if write_off_wanted else "none"
        amount = written_off_amount() if write_off_wanted else 0
        return LedgerState(paid, unattributed, base_credits, 0, "voided", state, amount)
    if f.stripe_status != "draft" and before_write_off <= 0:
        state = "reversed" if write_off_wanted else "none"
        amount = written_off_amount() if write_off_wanted else 0
        return LedgerState(paid, unattributed, base_credits, before_write_off, "paid_in_full", state, amount)
    if write_off_wanted and f.stripe_status != "draft":
        credits = base_credits + before_write_off
        return LedgerState(paid, unattributed, credits, 0, "written_off", "active", before_write_off)
    return LedgerState(paid, unattributed, base_credits, before_write_off, "open", "none", 0)


@dataclass(frozen=True)
class LedgerHistory:
    """An invoice's ledger facts with the moments each became true, to see it as of a past day."""

    facts: LedgerFacts
    invoice_date: date
    #: The issued pre-payment credit notes in `facts.invoice_credits`: (memo date, amount).
    credits: tuple[tuple[date, int], ...]
    #: When Stripe says the invoice was paid (status_transitions.paid_at), if it says.
    paid_at: int | None
    #: When the newest snapshot's event happened: the stand-in for a paid, void or uncollectible
    #: moment Stripe did not give (a backfilled event happened when the backfill ran).
    status_at: int
    #: When Stripe says the invoice was voided (status_transitions.voided_at), if it says.
    voided_at: int | None = None
    #: Pre-payment credit notes voided since they were issued, with Stripe's voided_at: (memo
    #: date, amount, voided at). They are not in `facts.invoice_credits`, but counted until then.
    voided_credits: tuple[tuple[date, int, int], ...] = ()
    #: The earliest event that said the invoice is uncollectible: when Stripe records no
    #: `marked_uncollectible_at`, the write-off counts from it (as its memo is dated).
    uncollectible_event_at: int | None = None


def ledger_as_of(h: LedgerHistory, as_of: date, zone: tzinfo = UTC) -> LedgerState | None:
    """The ledger at the end of `as_of` (a day in the ledger's `zone`) from the facts true by
    then; None when the invoice was no receivable then (a draft, deleted, or dated later).

    An ageing as of a month end must not lose an invoice to a payment that came on the 3rd of
    the next month. After the last fact this is exactly `compute_ledger(h.facts)`. What is not
    recorded is approximated on the side of showing more owed: a void Stripe gave no moment for
    counts from the newest snapshot's event, and a credit note voided at a moment not recorded
    counts as never issued.
    """
    f = h.facts
    if f.stripe_status in ("draft", "deleted") or h.invoice_date > as_of:
        return None
    cutoff = int(datetime.combine(as_of + timedelta(days=1), time.min, tzinfo=zone).timestamp()) - 1
    payments = tuple(p for p in f.payments if p.paid_at <= cutoff)
    marked_at = next(t for t in (f.uncollectible_at, h.uncollectible_event_at, h.status_at) if t is not None)
    uncollectible = f.uncollectible_seen and marked_at <= cutoff
    paid_at = h.paid_at if h.paid_at is not None else h.status_at
    voided_at = h.voided_at if h.voided_at is not None else h.status_at
    status = f.stripe_status
    not_yet = {"void": voided_at > cutoff, "paid": paid_at > cutoff, "uncollectible": not uncollectible}
    if not_yet.get(status, False):
        status = "uncollectible" if uncollectible else "open"
    # A payment counts from its own moment; what Stripe calls paid beyond every payment seen
    # (paid out of band, or its payment object not here yet) counts from Stripe's paid_at.
    beyond = max(0, f.stripe_amount_paid - sum(p.amount for p in f.payments)) if paid_at <= cutoff else 0
    then = replace(
        f,
        stripe_status=status,
        stripe_amount_paid=sum(p.amount for p in payments) + beyond,
        payments=payments,
        invoice_credits=sum(amount for day, amount in h.credits if day <= as_of)
        + sum(amount for day, amount, voided_at in h.voided_credits if day <= as_of and voided_at > cutoff),
        uncollectible_seen=uncollectible,
    )
    return compute_ledger(then)


def forward_status(stored: str | None, derived: ErpStatus) -> ErpStatus:
    """ERP statuses only move forward (draft -> open -> written off -> paid in full / voided).

    A draft is derived only while Stripe's newest snapshot is a draft, and snapshots only move
    forward, so Stripe never finalized it: a stored `open` beside it is what the mapping before
    drafts stored (or damage), never a later state, and it goes back to draft."""
    if stored is None or stored not in ERP_STATUS_RANK or (derived == "draft" and stored == "open"):
        return derived
    if ERP_STATUS_RANK[derived] >= ERP_STATUS_RANK[stored]:
        return derived
    return stored  # type: ignore[return-value]

"""The billing rules that judge stored facts: what an invoice's ledger becomes, whether its
write-off memo and credit holds move, and what a refund's credit memo says.

Pure: no I/O, no clock. The store loads the facts (`records.StoredLedger`, `records.StoredRefund`)
and writes what these functions return, so the rules are here once and can be tested without a
database. Order-independence follows from them: the decisions read every stored fact, never the
order the facts arrived in, and an ERP status only moves forward (`ledger.forward_status`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, date, tzinfo
from typing import Literal

from services.billing.holds import HoldCode, release_code
from services.billing.ledger import ErpStatus, LedgerState, compute_ledger, forward_status
from services.billing.records import StoredLedger, StoredRefund
from services.billing.settings import BillingSettings
from services.billing.stripe_fields import DateSource, to_date

MemoStatus = Literal["issued", "reversed", "void", "superseded"]

#: The write-off memo's status for each write-off state the ledger derives.
_WRITE_OFF_MEMO_STATUS: dict[str, MemoStatus] = {"active": "issued", "reversed": "reversed", "void": "void"}


@dataclass(frozen=True)
class WriteOffMemo:
    """The write-off credit memo an invoice's ledger calls for (written when it differs)."""

    memo_key: str
    stripe_invoice_id: str
    stripe_customer_id: str
    amount: int
    currency: str
    memo_date: date
    status: MemoStatus
    memo: str
    line_description: str
    date_source: DateSource = "stripe_transition"


@dataclass(frozen=True)
class Settlement:
    """An invoice's ledger re-derived from its stored facts, and what follows from it."""

    invoice: StoredLedger
    state: LedgerState
    status: ErpStatus
    #: The stored ledger differs: save it, record it, announce it.
    moved: bool
    write_off: WriteOffMemo | None
    #: Why the invoice's active credit holds are released, when they are.
    release_reason: str | None
    #: The same as a code (`holds.HoldCode`).
    release_code: HoldCode | None = None
    #: When Stripe says the invoice was paid or voided (`release_moment`): the holds' release time.
    release_at: int | None = None
    release_date_source: DateSource | None = None

    @property
    def history(self) -> str:
        s = self.state
        return (
            f"ledger: {self.status}, paid {s.amount_paid}, credits {s.credits_applied}, remaining {s.amount_remaining}"
        )


def settle(invoice: StoredLedger, policy: BillingSettings) -> Settlement:
    """The invoice's ledger under the running policy; a stored status never moves back."""
    facts = invoice.facts
    if facts.write_off_enabled != policy.write_off_uncollectible:  # a copy only when it differs (replace is slow)
        facts = replace(facts, write_off_enabled=policy.write_off_uncollectible)
    state = compute_ledger(facts)
    status = forward_status(invoice.erp_status, state.erp_status)
    stored = (invoice.amount_paid, invoice.unattributed_paid, invoice.credits_applied, invoice.amount_remaining)
    new = (state.amount_paid, state.unattributed_paid, state.credits_applied, state.amount_remaining)
    release = None
    at: tuple[int, DateSource] | None = None
    holds = invoice.has_active_holds or invoice.has_released_holds
    if policy.release_hold_on_pay and status in ("paid_in_full", "voided") and holds:
        release = f"invoice {invoice.stripe_invoice_id} {status.replace('_', ' ')}"
        at = release_moment(invoice, status)
    return Settlement(
        invoice,
        state,
        status,
        moved=stored != new or invoice.erp_status != status,
        write_off=write_off_memo(invoice, state, policy.ledger_zone),
        release_reason=release,
        release_code=release_code(status) if release is not None else None,
        release_at=at[0] if at else None,
        release_date_source=at[1] if at else None,
    )


def release_moment(invoice: StoredLedger, status: ErpStatus) -> tuple[int, DateSource]:
    """When the invoice was paid or voided, by Stripe: its own `status_transitions` moment, else
    (paid by payments Stripe has not marked on the invoice yet) its latest payment's, else the
    newest snapshot's event. Derived from the stored facts, so whichever order they arrive in
    the release ends up with the same date (`store.release_holds` re-dates a released hold)."""
    if status == "voided":
        if invoice.voided_at:
            return invoice.voided_at, "stripe_transition"
    elif invoice.paid_at and invoice.facts.stripe_status == "paid":
        return invoice.paid_at, "stripe_transition"
    elif invoice.facts.payments:
        return max(p.paid_at for p in invoice.facts.payments), "stripe_transition"
    return invoice.status_at, "stripe_event"


def write_off_moment(invoice: StoredLedger, zone: tzinfo) -> tuple[date, DateSource]:
    """The day an invoice became uncollectible, by Stripe: `marked_uncollectible_at`, else the
    earliest event that said so (a legacy invoice closed or forgiven records no moment), else (Stripe
    gave nothing) the day the mesh was notified. The ageing (`ledger.ledger_as_of`) applies the
    write-off from the same moment, so the memo and `GetCustomerBalance(as_of)` agree."""
    if invoice.facts.uncollectible_at:
        day = to_date(invoice.facts.uncollectible_at, zone)
        assert day is not None
        return day, "stripe_transition"
    if invoice.uncollectible_event_at:
        day = to_date(invoice.uncollectible_event_at, zone)
        assert day is not None
        return day, "stripe_event"
    return invoice.uncollectible_notified_on or invoice.transaction_date, "notified"


_WRITE_OFF_DATED = {
    "stripe_transition": "the day Stripe marked it uncollectible",
    "stripe_event": "the day of Stripe's event that closed it (Stripe records no moment for that)",
    "notified": "the day the mesh was notified (Stripe recorded no moment)",
}


def write_off_memo(invoice: StoredLedger, state: LedgerState, zone: tzinfo = UTC) -> WriteOffMemo | None:
    """The write-off memo matching the ledger, dated by Stripe (`write_off_moment`)."""
    if state.write_off == "none":
        return None
    notified, source = write_off_moment(invoice, zone)
    invoice_id = invoice.stripe_invoice_id
    return WriteOffMemo(
        memo_key=f"wo_{invoice_id}",
        stripe_invoice_id=invoice_id,
        stripe_customer_id=invoice.stripe_customer_id,
        amount=state.write_off_amount,
        currency=invoice.currency,
        memo_date=notified,
        status=_WRITE_OFF_MEMO_STATUS[state.write_off],
        memo=f"Bad debt write-off of an uncollectible invoice, dated {notified.isoformat()}: "
        + _WRITE_OFF_DATED[source],
        line_description=f"Write-off of invoice {invoice_id} (receivable and income reversed)",
        date_source=source,
    )


@dataclass(frozen=True)
class RefundMemo:
    """The credit memo a refund calls for (the refund's customer refund settles it)."""

    memo_key: str
    stripe_invoice_id: str | None
    stripe_customer_id: str | None
    amount: int
    currency: str
    memo_date: date
    status: MemoStatus
    reason: str | None
    memo: str
    line_description: str


def refund_memo_status(refund_status: str, covered: bool) -> MemoStatus:
    """Void when the refund failed or was cancelled; superseded when a credit note already
    carries it (its amount must not be credited twice); issued otherwise."""
    if refund_status in ("failed", "canceled"):
        return "void"
    if covered:
        return "superseded"
    return "issued"


def refund_memo(refund: StoredRefund) -> RefundMemo:
    refund_id = refund.stripe_refund_id
    return RefundMemo(
        memo_key=refund_id,
        stripe_invoice_id=refund.stripe_invoice_id,
        stripe_customer_id=refund.stripe_customer_id,
        amount=refund.amount,
        currency=refund.currency,
        memo_date=refund.refunded_on,
        status=refund_memo_status(refund.status, refund.covered),
        reason=refund.reason,
        memo=f"Refund {refund_id}, settled by its customer refund",
        line_description=f"Refund {refund_id}",
    )

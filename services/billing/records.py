"""What the billing store hands back: typed, frozen records instead of database rows.

The API and the decision code read these by attribute, so a renamed or missing column fails
when the record is built (in the store, next to its SQL), not as a KeyError deep in a handler.
Money is integer minor units beside its currency.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import date, datetime
from typing import Any, TypeVar

from services.billing.ledger import LedgerFacts, LedgerHistory

R = TypeVar("R")

#: (record_type, record_id, stripe_event_id, event_type, change): one audit row.
HistoryRow = tuple[str, str, str, str, str]


def from_row(cls: type[R], row: Any) -> R:
    """A record from a row holding (at least) a column for each of its fields, by name."""
    return cls(**{f.name: row[f.name] for f in fields(cls)})  # type: ignore[arg-type]


def column_list(cls: type[Any], alias: str = "") -> str:
    """`a.x, a.y, ...` for a record's fields, so a query selects exactly what the record holds."""
    prefix = f"{alias}." if alias else ""
    return ", ".join(prefix + f.name for f in fields(cls))


# -- reads for the API ---------------------------------------------------------------------------


@dataclass(frozen=True)
class InvoiceRecord:
    erp_invoice_id: str
    stripe_invoice_id: str
    stripe_customer_id: str
    erp_customer_id: str | None
    subscription_id: str | None
    number: str | None
    erp_status: str
    stripe_status: str
    transaction_date: date
    due_date: date
    currency: str
    subtotal: int
    discount_total: int
    tax: int
    total: int
    amount_paid: int
    credits_applied: int
    amount_remaining: int
    unattributed_paid: int
    lines_complete: bool
    api_shape: str


@dataclass(frozen=True)
class InvoiceLineRecord:
    line_no: int
    kind: str
    erp_item_id: str
    item_mapped: bool
    stripe_price_id: str | None
    stripe_line_id: str | None
    description: str
    quantity: int
    unit_amount: int | None
    unit_amount_decimal: str | None
    amount: int
    discount_amount: int
    recognized_amount: int
    period_start: date | None
    period_end: date | None
    proration: bool
    revenue_account: str | None
    discount_id: str | None
    coupon_id: str | None
    stripe_product_id: str | None
    tax_amount: int


@dataclass(frozen=True)
class RevenueEntryRecord:
    line_no: int
    period: date
    amount: int


@dataclass(frozen=True)
class PaymentRecord:
    erp_payment_id: str
    stripe_payment_id: str
    stripe_invoice_id: str | None
    erp_invoice_id: str | None
    #: The payment's customer, or its invoice's.
    customer: str | None
    amount: int
    currency: str
    paid_at: int
    paid_on: date
    method: str
    charge_id: str | None
    payment_intent_id: str | None
    #: Where `paid_at` comes from (`stripe_fields.DateSource`); None for rows stored before it was kept.
    date_source: str | None = None


@dataclass(frozen=True)
class CreditMemoLineRecord:
    line_no: int
    description: str
    quantity: int
    unit_amount: int | None
    amount: int
    invoice_line_item: str | None


@dataclass(frozen=True)
class CreditMemoRecord:
    erp_credit_memo_id: str
    memo_key: str
    kind: str
    stripe_invoice_id: str | None
    erp_invoice_id: str | None
    #: The memo's customer, or its invoice's.
    customer: str | None
    amount: int
    currency: str
    memo_date: date
    status: str
    applied_to: str
    memo: str | None
    number: str | None
    #: Where `memo_date` comes from (`stripe_fields.DateSource`).
    date_source: str | None = None


@dataclass(frozen=True)
class RefundRecord:
    erp_refund_id: str
    stripe_refund_id: str
    stripe_invoice_id: str | None
    erp_invoice_id: str | None
    #: The refund's customer, or its invoice's.
    customer: str | None
    amount: int
    currency: str
    stripe_created: int
    refunded_on: date
    status: str
    charge_id: str | None
    #: The credit note carrying the refund when there is one, else the refund's own memo.
    erp_credit_memo_id: str | None


@dataclass(frozen=True)
class Receivable:
    """What an open invoice still owes, and since when it is due (for ageing)."""

    currency: str
    due_date: date
    amount_remaining: int


@dataclass(frozen=True)
class ReceivableHistory:
    """An invoice dated by an ageing's day, with the dated facts to see its ledger as of then."""

    currency: str
    due_date: date
    history: LedgerHistory


@dataclass(frozen=True)
class HoldRecord:
    stripe_customer_id: str
    stripe_invoice_id: str
    reason: str
    placed_at: datetime
    released_at: datetime | None
    release_reason: str | None
    reason_code: str
    release_reason_code: str | None
    #: Where `placed_at` / `released_at` come from (`stripe_fields.DateSource`, or mesh_clock).
    placed_date_source: str | None = None
    released_date_source: str | None = None


@dataclass(frozen=True)
class UnmappedPriceRecord:
    stripe_price_id: str
    last_invoice_id: str
    invoices_seen: int
    first_seen_at: datetime
    last_seen_at: datetime


@dataclass(frozen=True)
class HistoryRecord:
    stripe_event_id: str
    event_type: str
    record_type: str
    record_id: str
    change: str
    recorded_at: datetime


# -- what the batch reads before it decides ------------------------------------------------------


@dataclass(frozen=True)
class StoredLedger:
    """An invoice as stored, with every fact its ledger is derived from (`decide.settle`)."""

    stripe_invoice_id: str
    erp_invoice_id: str
    stripe_customer_id: str
    currency: str
    total: int
    lines_complete: bool
    transaction_date: date
    uncollectible_notified_on: date | None
    erp_status: str
    amount_paid: int
    unattributed_paid: int
    credits_applied: int
    amount_remaining: int
    has_active_holds: bool
    #: The facts, with write-off as the running policy says (`decide.settle` sets it).
    facts: LedgerFacts
    #: Stripe's own moments (`status_transitions`), when it recorded them: what dates a hold's
    #: release and a write-off.
    paid_at: int | None = None
    voided_at: int | None = None
    #: The newest snapshot's event time: the stand-in for a moment the invoice does not record.
    status_at: int = 0
    #: The earliest event that said the invoice is uncollectible (when Stripe records no
    #: `marked_uncollectible_at`, e.g. a legacy forgiven invoice).
    uncollectible_event_at: int | None = None
    #: Holds of this invoice the ledger released (`decide.settle` re-dates them from the facts).
    has_released_holds: bool = False


@dataclass(frozen=True)
class StoredRefund:
    """A refund as stored, with what decides its credit memo (`decide.refund_memo`)."""

    stripe_refund_id: str
    stripe_invoice_id: str | None
    #: The refund's customer, or its invoice's.
    stripe_customer_id: str | None
    amount: int
    currency: str
    refunded_on: date
    status: str
    reason: str | None
    #: A credit note carries the refund.
    covered: bool


@dataclass(frozen=True)
class PaymentWrite:
    """What storing a payment changed, for its domain event."""

    erp_payment_id: str
    inserted: bool


@dataclass(frozen=True)
class RefundWrite:
    """What storing a refund changed, for its domain event."""

    erp_refund_id: str
    inserted: bool
    status: str
    stripe_invoice_id: str | None

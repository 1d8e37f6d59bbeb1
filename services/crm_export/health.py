"""A client's health signals, from the Stripe facts kept about its customer: pure.

Payment facts and subscription statuses are stored as they arrive; the signals are computed
from them whenever they are read, so they never disagree with the facts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from services.crm_export.records import InvoicePayment

PAYMENT_FAILED = "PAYMENT_FAILED"
SUBSCRIPTION_PAST_DUE = "SUBSCRIPTION_PAST_DUE"
SUBSCRIPTION_CANCELED = "SUBSCRIPTION_CANCELED"

PAST_DUE_STATUSES = frozenset({"past_due", "unpaid"})
LIVE_SUBSCRIPTION_STATUSES = frozenset({"incomplete", "trialing", "active", "paused", "past_due", "unpaid"})


@dataclass(frozen=True)
class Health:
    signals: tuple[str, ...]
    failing_invoice_ids: tuple[str, ...]


def health_signals(subscription_statuses: Iterable[str], payments: Iterable[InvoicePayment]) -> list[str]:
    """The client's signals: payment failed (an invoice failed and is still unpaid), a
    subscription past due, or every subscription cancelled (a churned client)."""
    statuses = list(subscription_statuses)
    signals = []
    if any(p.failed and not p.paid for p in payments):
        signals.append(PAYMENT_FAILED)
    if any(s in PAST_DUE_STATUSES for s in statuses):
        signals.append(SUBSCRIPTION_PAST_DUE)
    if statuses and not any(s in LIVE_SUBSCRIPTION_STATUSES for s in statuses):
        signals.append(SUBSCRIPTION_CANCELED)
    return signals


def health_from(statuses: list[str], payments: list[InvoicePayment]) -> Health:
    """Health from one customer's (or one client's) subscription statuses and payment facts,
    the payments in the store's invoice order (failing ids are listed in it)."""
    return Health(
        signals=tuple(health_signals(statuses, payments)),
        failing_invoice_ids=tuple(p.invoice_id for p in payments if p.failed and not p.paid),
    )


def changed_health(
    before: Mapping[str, Health], after: Mapping[str, Health], watched: Mapping[str, int]
) -> list[tuple[str, int, Health]]:
    """The watched customers whose health differs from before the batch, in id order, each with
    the source (the event) that last touched what it is computed from: that event announces it."""
    return [
        (customer_id, source, after[customer_id])
        for customer_id, source in sorted(watched.items())
        if after[customer_id] != before[customer_id]
    ]

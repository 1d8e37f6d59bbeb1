"""When a customer goes on credit hold: Stripe has given up collecting one of their invoices.

Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from services.billing.invoice_mapping import ErpInvoice
from services.billing.stripe_fields import DateSource, Json, as_dict, opt_int, ref_id

#: Why a hold is placed or released, as a code beside the free text (the contract's `HoldReason`).
HoldCode = Literal["final_payment_failure", "subscription_delinquent", "manual", "invoice_paid", "invoice_voided"]


@dataclass(frozen=True)
class HoldRequest:
    stripe_customer_id: str
    stripe_invoice_id: str
    reason: str
    #: 1 for the invoice's own final failure, 2 for a subscription state: the lower names the hold.
    cause_rank: int = 1
    #: The reason as a code: it follows the cause that names the hold.
    code: HoldCode = "final_payment_failure"
    #: When Stripe says the cause happened (unix seconds): the hold is placed then, whenever the
    #: mesh hears of it; of several causes the earliest dates the hold.
    placed_at: int = 0
    date_source: DateSource = "stripe_event"


def release_code(erp_status: str) -> HoldCode:
    """Why an invoice's holds are released, as a code: it was paid in full, or voided."""
    return "invoice_voided" if erp_status == "voided" else "invoice_paid"


def hold_from_invoice(inv: ErpInvoice, event_created: int) -> HoldRequest | None:
    """`invoice.payment_failed` with no next attempt: Stripe has given up retrying. The invoice
    records no moment for a failed attempt, so the event's time dates the hold."""
    if not inv.final_payment_failure or not inv.stripe_customer_id:
        return None
    return HoldRequest(
        inv.stripe_customer_id,
        inv.stripe_invoice_id,
        f"final payment attempt failed (attempt {inv.attempt_count}); Stripe will not retry",
        placed_at=event_created,
        date_source="stripe_event",
    )


def hold_from_subscription(obj: Json, event_type: str, event_created: int) -> HoldRequest | None:
    """A subscription that ended up unpaid, paused or cancelled because payment failed: dated by
    Stripe's `canceled_at` for a cancellation, else by the event (a subscription records no
    moment for becoming unpaid or paused)."""
    customer = ref_id(obj.get("customer"))
    invoice = ref_id(obj.get("latest_invoice"))
    status = obj.get("status")
    if not customer or not invoice:
        return None
    cancel_reason = as_dict(obj.get("cancellation_details")).get("reason")
    if status in ("unpaid", "paused") or (event_type.endswith(".deleted") and cancel_reason == "payment_failed"):
        canceled_at = opt_int(obj.get("canceled_at")) if event_type.endswith(".deleted") else None
        return HoldRequest(
            customer,
            invoice,
            f"subscription {obj.get('id')} {status} after final payment failure",
            cause_rank=2,
            code="subscription_delinquent",
            placed_at=canceled_at or event_created,
            date_source="stripe_transition" if canceled_at else "stripe_event",
        )
    return None

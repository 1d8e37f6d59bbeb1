"""The domain events billing announces (`syncmesh.billing.v1.events`), built from its records.

Pure: each function turns what changed into the message; the handlers and the settlement emit
them under their subject, with the event that caused the change.
"""

from __future__ import annotations

from syncmesh.billing.v1 import billing_service_pb2, events_pb2
from syncmesh.type.v1 import money_pb2

from services.billing.decide import Settlement
from services.billing.payment_mapping import ErpPayment, ErpRefund
from services.billing.records import PaymentWrite, RefundWrite


def money(amount: int, currency: str) -> money_pb2.Money:
    return money_pb2.Money(amount_minor=amount, currency=currency)


def invoice_changed(s: Settlement) -> events_pb2.InvoiceChanged:
    invoice = s.invoice
    return events_pb2.InvoiceChanged(
        erp_invoice_id=invoice.erp_invoice_id,
        stripe_invoice_id=invoice.stripe_invoice_id,
        stripe_customer_id=invoice.stripe_customer_id,
        status=s.status,
        total=money(invoice.total, invoice.currency),
        amount_remaining=money(s.state.amount_remaining, invoice.currency),
        lines_complete=invoice.lines_complete,
    )


def credit_memo_changed(
    erp_credit_memo_id: str,
    memo_key: str,
    kind: str,
    invoice_id: str | None,
    amount: int,
    currency: str,
    status: str,
) -> events_pb2.CreditMemoChanged:
    return events_pb2.CreditMemoChanged(
        erp_credit_memo_id=erp_credit_memo_id,
        source_id=memo_key,
        kind=kind,
        stripe_invoice_id=invoice_id or "",
        amount=money(amount, currency),
        status=status,
    )


#: The hold codes (`holds.HoldCode`) as the contract's enum.
HOLD_CODE_TO_PB: dict[str, int] = {
    "final_payment_failure": billing_service_pb2.HOLD_REASON_FINAL_PAYMENT_FAILURE,
    "subscription_delinquent": billing_service_pb2.HOLD_REASON_SUBSCRIPTION_DELINQUENT,
    "manual": billing_service_pb2.HOLD_REASON_MANUAL,
    "invoice_paid": billing_service_pb2.HOLD_REASON_INVOICE_PAID,
    "invoice_voided": billing_service_pb2.HOLD_REASON_INVOICE_VOIDED,
}


def hold_reason(code: str | None) -> int:
    return HOLD_CODE_TO_PB.get(code or "", billing_service_pb2.HOLD_REASON_UNSPECIFIED)


def credit_hold_changed(
    customer_id: str, invoice_id: str, *, active: bool, reason: str, code: str | None
) -> events_pb2.CreditHoldChanged:
    return events_pb2.CreditHoldChanged(
        stripe_customer_id=customer_id,
        stripe_invoice_id=invoice_id,
        active=active,
        reason=reason,
        reason_code=hold_reason(code),  # type: ignore[arg-type]
    )


def payment_applied(written: PaymentWrite, payment: ErpPayment) -> events_pb2.PaymentApplied:
    return events_pb2.PaymentApplied(
        erp_payment_id=written.erp_payment_id,
        stripe_payment_id=payment.stripe_payment_id,
        stripe_invoice_id=payment.stripe_invoice_id or "",
        amount=money(payment.amount, payment.currency),
        charge_id=payment.charge_id or "",
        payment_intent_id=payment.payment_intent_id or "",
    )


def refund_recorded(written: RefundWrite, refund: ErpRefund) -> events_pb2.RefundRecorded:
    return events_pb2.RefundRecorded(
        erp_refund_id=written.erp_refund_id,
        stripe_refund_id=refund.stripe_refund_id,
        stripe_invoice_id=written.stripe_invoice_id or "",
        amount=money(refund.amount, refund.currency),
        status=written.status,
    )

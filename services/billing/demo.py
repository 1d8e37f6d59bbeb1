"""What `syncmesh up --demo` prints for billing: the invoices, payments and credit memos recorded."""

from __future__ import annotations

import grpc
from syncmesh.billing.v1 import billing_service_pb2 as pb
from syncmesh.billing.v1 import billing_service_pb2_grpc as pb_grpc
from syncmesh.type.v1 import money_pb2

_STATUS = {
    pb.INVOICE_STATUS_OPEN: "open",
    pb.INVOICE_STATUS_PAID_IN_FULL: "paid in full",
    pb.INVOICE_STATUS_VOIDED: "voided",
    pb.INVOICE_STATUS_WRITTEN_OFF: "written off",
}
_ZERO_DECIMAL = {
    "bif",
    "clp",
    "djf",
    "gnf",
    "jpy",
    "kmf",
    "krw",
    "mga",
    "pyg",
    "rwf",
    "ugx",
    "vnd",
    "vuv",
    "xaf",
    "xof",
    "xpf",
}


def show(m: money_pb2.Money) -> str:
    """Minor units as text without floats: 123456 usd -> 1234.56 USD, 500 jpy -> 500 JPY."""
    cur = m.currency.upper()
    if m.currency in _ZERO_DECIMAL:
        return f"{m.amount_minor} {cur}"
    sign = "-" if m.amount_minor < 0 else ""
    units, cents = divmod(abs(m.amount_minor), 100)
    return f"{sign}{units}.{cents:02d} {cur}"


async def demo_report(channel: grpc.aio.Channel) -> list[str]:
    stub = pb_grpc.BillingServiceStub(channel)  # type: ignore[no-untyped-call]
    lines = ["Billing (ERP ledger):"]
    invoices = await stub.ListInvoices(pb.ListInvoicesRequest(page_size=20))
    for inv in invoices.invoices:
        lines.append(
            f"  invoice {inv.erp_invoice_id} ({inv.stripe_invoice_id}) for {inv.stripe_customer_id}: "
            f"total {show(inv.total)}, paid {show(inv.amount_paid)}, remaining {show(inv.amount_remaining)}, "
            f"{_STATUS.get(inv.status, 'unknown')}{'' if inv.lines_complete else ' (lines incomplete)'}"
        )
    payments = await stub.ListPayments(pb.ListPaymentsRequest(page_size=20))
    for p in payments.payments:
        lines.append(
            f"  payment {p.erp_payment_id} ({p.stripe_payment_id}) {show(p.amount)} on {p.payment_date} "
            f"applied to {p.erp_invoice_id or p.stripe_invoice_id} via {p.method}"
        )
    memos = await stub.ListCreditMemos(pb.ListCreditMemosRequest(page_size=20))
    for m in memos.credit_memos:
        kind = pb.CreditMemoKind.Name(m.kind).removeprefix("CREDIT_MEMO_KIND_").lower()
        lines.append(
            f"  credit memo {m.erp_credit_memo_id} ({kind} {m.source_id}) {show(m.amount)} on {m.memo_date}, {m.status}"
        )
    refunds = await stub.ListRefunds(pb.ListRefundsRequest(page_size=20))
    for r in refunds.refunds:
        lines.append(
            f"  refund {r.erp_refund_id} ({r.stripe_refund_id}) {show(r.amount)} on {r.refund_date}, {r.status}"
        )
    if len(lines) == 1:
        lines.append("  nothing recorded yet")
    return lines

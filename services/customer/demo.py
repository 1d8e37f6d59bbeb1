"""What the customer service recorded, for `syncmesh up --demo` (read over gRPC)."""

from __future__ import annotations

import grpc
from syncmesh.customer.v1 import customer_service_pb2 as pb
from syncmesh.customer.v1 import customer_service_pb2_grpc

from services.common.money import format_money

MAX_SHOWN = 20


async def demo_report(channel: grpc.aio.Channel) -> list[str]:
    """One line per customer: ERP id, Stripe id, name, balance, status (emails are masked)."""
    stub = customer_service_pb2_grpc.CustomerServiceStub(channel)  # type: ignore[no-untyped-call]
    page = await stub.ListCustomers(pb.ListCustomersRequest(page_size=MAX_SHOWN))
    if not page.customers:
        return ["customer: no customers recorded yet"]
    lines = [f"customer: {len(page.customers)}{'+' if page.next_page_token else ''} ERP customer record(s)"]
    for c in page.customers:
        # A zero balance has no meaningful currency (Stripe's default for a customer without one):
        # printed as "none" rather than a "0 EUR" beside invoices in USD.
        balance = format_money(c.balance.amount_minor, c.balance.currency) if c.balance.amount_minor else "none"
        status = "active" if c.active else "inactive (deleted in Stripe)"
        lines.append(
            f"  {c.erp_customer_id:<12} {c.stripe_customer_id or '(not linked)':<20} "
            f"{c.name or '(no name)':<24} {_mask(c.email):<22} balance {balance:<12} {status}"
        )
    return lines


def _mask(email: str) -> str:
    """a***@example.com: enough to recognise a demo customer, without printing addresses."""
    if "@" not in email:
        return "(no email)"
    local, domain = email.split("@", 1)
    return f"{local[:1]}***@{domain}"

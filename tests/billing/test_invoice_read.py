"""GetInvoice reads an invoice and its lines in one statement (`store.get_invoice_with_lines`): the
same record and lines, in line order, as reading the invoice and then its lines, by either id."""

from __future__ import annotations

from services.billing import store
from tests.billing.builders import PRICE_ADDON, InvoiceSpec, LineSpec, invoice_object, stripe_event
from tests.billing.conftest import StartBilling

T0 = 1_750_000_000


async def test_one_statement_reads_what_the_invoice_and_its_lines_hold(start_billing: StartBilling) -> None:
    billing = await start_billing()
    spec = InvoiceSpec(
        invoice_id="in_1RaQReadLines000001",
        lines=[
            LineSpec(),
            LineSpec(price=PRICE_ADDON, unit=1500, quantity=2, description="Priority support"),
            LineSpec(price=PRICE_ADDON, unit=700, quantity=1, description="Extra seat"),
        ],
    )
    await billing.publish(
        stripe_event("invoice.created", invoice_object("basil", spec, status="draft"), created=T0, shape="basil"),
        stripe_event("invoice.finalized", invoice_object("basil", spec), created=T0 + 5, shape="basil"),
    )
    await billing.drained(2)
    conn = await billing.db()
    try:
        record = await store.get_invoice(conn, spec.invoice_id)
        assert record is not None
        lines = await store.invoice_lines(conn, spec.invoice_id)
        assert [line.line_no for line in lines] == sorted(line.line_no for line in lines) and len(lines) == 3
        for invoice_id in (spec.invoice_id, record.erp_invoice_id):
            assert await store.get_invoice_with_lines(conn, invoice_id) == (record, lines)
        assert await store.get_invoice_with_lines(conn, "in_1RaQNoSuchInvoice01") is None
    finally:
        await conn.close()

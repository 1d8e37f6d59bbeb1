"""The price -> item data sheet (gRPC and `syncmesh import items`), unmapped prices, and the demo."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from syncmesh.billing.v1 import billing_service_pb2 as pb

from launcher.cli import main
from services.billing.demo import demo_report
from tests.billing.builders import (
    PRICE_ADDON,
    PRICE_PRO,
    InvoiceSpec,
    LineSpec,
    credit_note_object,
    invoice_object,
    invoice_payment_object,
    stripe_event,
)
from tests.billing.conftest import StartBilling

T0 = 1_750_000_000


async def test_bad_sheet_changes_nothing_and_names_every_line(start_billing: StartBilling) -> None:
    billing = await start_billing()
    sheet = (
        "stripe_price_id,erp_item_id\n"
        f"{PRICE_PRO},SaaS-Pro-Seat\n"
        "price with spaces,X\n"
        f"{PRICE_PRO},Other\n"
        f"{PRICE_ADDON},\n"
        "price_ok,A,extra\n"
    ).encode()
    reply = await billing.stub.ImportItemMappings(pb.ImportItemMappingsRequest(csv=sheet))
    assert not reply.applied
    assert [(p.line, p.field) for p in reply.problems] == [
        (3, "stripe_price_id"),
        (4, "stripe_price_id"),
        (5, "erp_item_id"),
        (6, "row"),
    ]
    assert "already on line 2" in reply.problems[1].message
    conn = await billing.db()
    try:
        assert await conn.fetchval("SELECT count(*) FROM item_mappings") == 0
    finally:
        await conn.close()
    header = await billing.stub.ImportItemMappings(pb.ImportItemMappingsRequest(csv=b"price,item\nprice_1,A\n"))
    assert [(p.line, p.field) for p in header.problems] == [(1, "header")]


async def test_sheet_maps_prices_and_clears_them_from_the_unmapped_list(start_billing: StartBilling) -> None:
    billing = await start_billing()
    spec = InvoiceSpec(
        invoice_id="in_1RaQItems00000001", lines=[LineSpec(), LineSpec(price=PRICE_ADDON, unit=1500, quantity=1)]
    )
    await billing.publish(stripe_event("invoice.finalized", invoice_object("basil", spec), created=T0))
    await billing.drained(1)
    unmapped = await billing.stub.ListUnmappedPrices(pb.ListUnmappedPricesRequest())
    assert sorted(p.stripe_price_id for p in unmapped.prices) == sorted([PRICE_PRO, PRICE_ADDON])

    sheet = f"stripe_price_id,erp_item_id\n{PRICE_PRO},SaaS-Pro-Seat\n".encode()
    dry = await billing.stub.ImportItemMappings(pb.ImportItemMappingsRequest(csv=sheet, dry_run=True))
    assert (dry.rows, dry.created, dry.applied, dry.dry_run) == (1, 1, False, True)
    real = await billing.stub.ImportItemMappings(pb.ImportItemMappingsRequest(csv=sheet))
    assert (real.rows, real.created, real.applied) == (1, 1, True)
    again = await billing.stub.ImportItemMappings(pb.ImportItemMappingsRequest(csv=sheet))
    assert (again.created, again.unchanged) == (0, 1)
    unmapped = await billing.stub.ListUnmappedPrices(pb.ListUnmappedPricesRequest())
    assert [p.stripe_price_id for p in unmapped.prices] == [PRICE_ADDON]

    later = InvoiceSpec(invoice_id="in_1RaQItems00000002", lines=[LineSpec()], created=T0 + 86400 * 30)
    await billing.publish(stripe_event("invoice.finalized", invoice_object("basil", later), created=T0 + 86400 * 30))
    await billing.drained(2)
    inv = (await billing.stub.GetInvoice(pb.GetInvoiceRequest(invoice_id=later.invoice_id))).invoice
    assert (inv.lines[0].erp_item_id, inv.lines[0].item_mapped) == ("SaaS-Pro-Seat", True)


async def test_cli_import_items(
    start_billing: StartBilling, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    billing = await start_billing()
    target = f"127.0.0.1:{billing.runtime.port}"
    good = tmp_path / "items.csv"
    good.write_text(f"stripe_price_id,erp_item_id\n{PRICE_PRO},SaaS-Pro-Seat\n{PRICE_ADDON},Support\n")
    bad = tmp_path / "bad.csv"
    bad.write_text("stripe_price_id,erp_item_id\nprice_a,\n")

    assert await asyncio.to_thread(main, ["import", "items", str(good), "--dry-run", "--target", target]) == 0
    assert "would import 2 mapping(s): 2 new" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["import", "items", str(bad), "--target", target]) == 1
    err = capsys.readouterr().err
    assert "nothing was imported" in err and "line 2: erp_item_id" in err
    assert await asyncio.to_thread(main, ["import", "items", str(good), "--target", target]) == 0
    assert "imported 2 mapping(s): 2 new" in capsys.readouterr().out
    assert await asyncio.to_thread(main, ["import", "items", str(tmp_path / "missing.csv"), "--target", target]) == 2


async def test_demo_report_shows_invoices_payments_and_a_credit_memo(start_billing: StartBilling) -> None:
    billing = await start_billing()
    spec = InvoiceSpec(invoice_id="in_1RaQDemo000000001", percent_off=20)
    total = 14700 - 2940
    await billing.publish(
        stripe_event("invoice.finalized", invoice_object("basil", spec), created=T0),
        stripe_event("invoice.paid", invoice_object("basil", spec, status="paid", amount_paid=total), created=T0 + 5),
        stripe_event(
            "invoice_payment.paid",
            invoice_payment_object(spec, total, payment_id="inpay_demo", intent="pi_demo", paid_at=T0 + 5),
            created=T0 + 5,
        ),
        stripe_event(
            "credit_note.created",
            credit_note_object("basil", spec, note_id="cn_demo", amount=500, created=T0 + 9, note_type="post_payment"),
            created=T0 + 9,
        ),
    )
    await billing.drained(4)
    lines = await demo_report(billing.channel)
    text = "\n".join(lines)
    assert "invoice INV-" in text and "total 117.60 USD" in text and "paid in full" in text
    assert "payment PMT-" in text and "inpay_demo" in text
    assert "credit memo CM-" in text and "credit_note cn_demo" in text and "5.00 USD" in text

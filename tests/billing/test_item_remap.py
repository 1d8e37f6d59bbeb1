"""The runbook for a mapping change, end to end on real NATS and PostgreSQL: invoice lines stored
on the default item, then `syncmesh import items` (ImportItemMappings through the real gRPC
server) re-maps them in its own transaction and says how many; `syncmesh replay billing` re-maps
whatever a mapping left behind and reports exactly those rows; ListUnmappedPrices lists only
prices still unmapped."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from syncmesh.billing.v1 import billing_service_pb2 as pb

from launcher.cli import main
from services.common.settings import Settings
from tests.billing.builders import (
    PRICE_ADDON,
    PRICE_PRO,
    InvoiceSpec,
    LineSpec,
    Shape,
    invoice_object,
    stripe_event,
)
from tests.billing.conftest import Billing, StartBilling, publish

T0 = 1_750_000_000
UNMAPPED = "STRIPE-UNMAPPED"

#: Two invoices, three Pro lines and one add-on line in all.
FIRST = InvoiceSpec(
    invoice_id="in_1RaQRemap00000001", lines=[LineSpec(), LineSpec(price=PRICE_ADDON, unit=1500, quantity=1)]
)
SECOND = InvoiceSpec(
    invoice_id="in_1RaQRemap00000002", lines=[LineSpec(), LineSpec(unit=900, quantity=1)], number="A1B2C3D4-0002"
)


def _sheet(*rows: tuple[str, str]) -> bytes:
    return ("stripe_price_id,erp_item_id\n" + "".join(f"{p},{i}\n" for p, i in rows)).encode()


async def _items(billing: Billing, spec: InvoiceSpec) -> list[tuple[str, bool]]:
    inv = (await billing.stub.GetInvoice(pb.GetInvoiceRequest(invoice_id=spec.invoice_id))).invoice
    return [(line.erp_item_id, line.item_mapped) for line in inv.lines]


async def _unmapped(billing: Billing) -> list[str]:
    reply = await billing.stub.ListUnmappedPrices(pb.ListUnmappedPricesRequest())
    return sorted(p.stripe_price_id for p in reply.prices)


async def _lines_on_default_item(billing: Billing) -> int:
    conn = await billing.db()
    try:
        return int(await conn.fetchval("SELECT count(*) FROM invoice_lines WHERE kind = 'item' AND NOT item_mapped"))
    finally:
        await conn.close()


async def _stored_unmapped(billing: Billing, shape: Shape = "basil") -> None:
    """Both invoices stored on the default item, delivered out of order and one of them twice."""
    first = stripe_event("invoice.finalized", invoice_object(shape, FIRST), created=T0)
    second = stripe_event("invoice.finalized", invoice_object(shape, SECOND), created=T0 + 1)
    await billing.publish(second, first)
    await publish(billing.runtime.bus, first, msg_id=f"{first['id']}#again")  # past JetStream's dedup
    await billing.drained(3)
    assert await _items(billing, FIRST) == [(UNMAPPED, False), (UNMAPPED, False)]
    assert await _items(billing, SECOND) == [(UNMAPPED, False), (UNMAPPED, False)]
    assert await _unmapped(billing) == sorted([PRICE_PRO, PRICE_ADDON])


@pytest.mark.parametrize("shape", ["basil", "legacy"])
async def test_importing_a_mapping_re_maps_the_stored_lines_and_counts_them(
    start_billing: StartBilling, shape: Shape
) -> None:
    billing = await start_billing()
    await _stored_unmapped(billing, shape)

    pro = _sheet((PRICE_PRO, "SaaS-Pro-Seat"))
    dry = await billing.stub.ImportItemMappings(pb.ImportItemMappingsRequest(csv=pro, dry_run=True))
    assert (dry.created, dry.lines_remapped, dry.applied) == (1, 3, False)
    assert await _lines_on_default_item(billing) == 4 and await _unmapped(billing) == sorted([PRICE_PRO, PRICE_ADDON])

    real = await billing.stub.ImportItemMappings(pb.ImportItemMappingsRequest(csv=pro))
    assert (real.created, real.lines_remapped, real.applied) == (1, 3, True)
    assert await _items(billing, FIRST) == [("SaaS-Pro-Seat", True), (UNMAPPED, False)]
    assert await _items(billing, SECOND) == [("SaaS-Pro-Seat", True), ("SaaS-Pro-Seat", True)]
    # The add-on is still billed to the default item: it stays listed, and only it.
    assert await _unmapped(billing) == [PRICE_ADDON]

    again = await billing.stub.ImportItemMappings(pb.ImportItemMappingsRequest(csv=pro))
    assert (again.unchanged, again.lines_remapped) == (1, 0)  # idempotent

    moved = await billing.stub.ImportItemMappings(pb.ImportItemMappingsRequest(csv=_sheet((PRICE_PRO, "Pro-2027"))))
    assert (moved.updated, moved.lines_remapped) == (1, 3)
    assert await _items(billing, SECOND) == [("Pro-2027", True), ("Pro-2027", True)]

    addon = await billing.stub.ImportItemMappings(pb.ImportItemMappingsRequest(csv=_sheet((PRICE_ADDON, "Support"))))
    assert addon.lines_remapped == 1
    assert await _items(billing, FIRST) == [("Pro-2027", True), ("Support", True)]
    assert await _unmapped(billing) == [] and await _lines_on_default_item(billing) == 0

    history = await billing.stub.GetRecordHistory(pb.GetRecordHistoryRequest(record_id=FIRST.invoice_id))
    changes = [e.change for e in history.entries if e.event_type == "item_mappings.imported"]
    assert changes[-1] == f"item mapping imported: line 2 ({PRICE_ADDON}) -> Support"

    # A later event of the invoice keeps the mapped lines (and rewrites none: only items changed).
    paid = invoice_object(shape, FIRST, status="paid", amount_paid=14700 + 1500)
    await billing.publish(stripe_event("invoice.paid", paid, created=T0 + 60))
    await billing.drained(4)
    assert await _items(billing, FIRST) == [("Pro-2027", True), ("Support", True)]


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, settings: Settings) -> Iterator[pytest.MonkeyPatch]:
    """`syncmesh` as an operator runs it, against the test's servers; logging put back after."""
    for name in ("SYNCMESH_STRIPE_API_KEY", "SYNCMESH_STRIPE_API_BASE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SYNCMESH_NATS_URL", settings.nats_url)
    monkeypatch.setenv("SYNCMESH_DATABASE_URL", settings.database_url or "")
    monkeypatch.setenv("SYNCMESH_MODE", "test")
    monkeypatch.setenv("SYNCMESH_LOG_LEVEL", "WARNING")
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield monkeypatch
    root.handlers[:] = handlers
    root.setLevel(level)


async def _syncmesh(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert await asyncio.to_thread(main, argv) == 0
    return capsys.readouterr().out


async def test_the_runbook_import_then_replay_reports_the_lines_it_re_maps(
    start_billing: StartBilling, cli_env: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    billing = await start_billing()
    await _stored_unmapped(billing)
    target = f"127.0.0.1:{billing.runtime.port}"

    # Nothing changed yet: a replay rewrites nothing and says so.
    assert "changed 0 rows in total" in await _syncmesh(["replay", "billing"], capsys)

    # A mapping the lines did not follow (as an import before this fix, or one written by hand,
    # left it): replay re-maps those lines and counts exactly them.
    conn = await billing.db()
    try:
        await conn.execute(
            "INSERT INTO item_mappings (stripe_price_id, erp_item_id) VALUES ($1, 'SaaS-Pro-Seat')", PRICE_PRO
        )
    finally:
        await conn.close()
    out = await _syncmesh(["replay", "billing"], capsys)
    assert "invoice_lines: rows 4 -> 4, changed 3 " in out and "changed 3 rows in total" in out, out
    assert await _items(billing, SECOND) == [("SaaS-Pro-Seat", True), ("SaaS-Pro-Seat", True)]

    # The runbook: import the sheet (it re-maps and says how many), then replay finds nothing left.
    sheet = tmp_path / "prices.csv"
    sheet.write_bytes(_sheet((PRICE_PRO, "SaaS-Pro-Seat"), (PRICE_ADDON, "Support")))
    out = await _syncmesh(["import", "items", str(sheet), "--target", target], capsys)
    assert "imported 2 mapping(s): 1 new, 0 changed, 1 unchanged; re-mapped 1 stored invoice line(s)" in out
    assert await _items(billing, FIRST) == [("SaaS-Pro-Seat", True), ("Support", True)]
    assert await _unmapped(billing) == [] and await _lines_on_default_item(billing) == 0
    out = await _syncmesh(["replay", "billing"], capsys)
    assert "changed 0 rows in total" in out, out
    assert await _items(billing, FIRST) == [("SaaS-Pro-Seat", True), ("Support", True)]

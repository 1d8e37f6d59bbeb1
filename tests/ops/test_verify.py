"""`syncmesh verify [--repair]` against localstripe and the three real services.

The mesh is fed by localstripe's own signed webhooks; then records are damaged behind the
mesh's back (rows changed or deleted in the services' schemas) and Stripe changes without a
webhook (a customer created and one deleted while the endpoint is unreachable). Verify must
report exactly those differences, and --repair must fix exactly those and re-verify clean.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from services.common.bus import STRIPE_STREAM, Bus
from services.common.errors import SettingsError
from services.common.settings import Settings
from syncmesh.cli import main
from syncmesh.ops.stream import message_ids
from syncmesh.ops.verify import REPAIR_ID_PREFIX, Mesh, mask_email, parse_verify_types, repair, verify
from tests.e2e.support import (
    MESH_KEY,
    WEBHOOK_ID,
    RunningMesh,
    catalogue,
    mesh_settings,
    running_mesh,
    stripe_event_count,
    subscribed_customer,
)
from tests.support.signing import TEST_SECRET


@pytest.fixture
async def mesh(settings: Settings, localstripe) -> AsyncIterator[RunningMesh]:
    async with running_mesh(mesh_settings(settings, localstripe)) as running:
        await localstripe.register_webhook(WEBHOOK_ID, running.webhook_url, TEST_SECRET)
        yield running


def view(mesh: RunningMesh) -> Mesh:
    return Mesh(mesh.channels)


def keys(report) -> set[tuple[str, str, str, str]]:
    return {(f.kind, f.stripe_id, f.problem, f.field) for f in report.findings}


async def test_verify_reports_exactly_the_damage_and_repair_fixes_it(
    mesh: RunningMesh, localstripe, ls_client, bus: Bus, monkeypatch, capsys, restore_logging
) -> None:
    client = ls_client
    pro_product, pro = await catalogue(client, "Pro", 1500)
    starter_product, starter = await catalogue(client, "Starter", 900)
    ada, _ = await subscribed_customer(client, pro, name="Ada Lovelace", email="ada@example.com", quantity=2)
    grace, _ = await subscribed_customer(client, starter, name="Grace Hopper", email="grace@example.com")
    alan, _ = await subscribed_customer(client, pro, name="Alan Turing", email="alan@example.com")
    invoices = {inv.customer: inv.id for inv in (await client.v1.invoices.list_async({"limit": 100})).data}
    await mesh.settle(stream_messages=await stripe_event_count(client))

    s = mesh.settings
    clean = await verify(client, view(mesh), s)
    assert clean.clean, "\n".join(clean.lines())
    checked = {kind: summary.checked for kind, summary in clean.summaries.items()}
    assert checked == {"customers": 3, "invoices": 3, "clients": 3, "products": 2, "contracts": 3}

    # -- damage: records changed or lost in the services' own databases --------------------
    db = await asyncpg.connect(s.database_url)
    try:
        await db.execute("UPDATE customer.customers SET name = 'Ada Byron' WHERE stripe_customer_id = $1", ada)
        await db.execute("UPDATE billing.invoices SET total = total + 100 WHERE stripe_invoice_id = $1", invoices[ada])
        await db.execute("DELETE FROM billing.invoices WHERE stripe_invoice_id = $1", invoices[grace])
        await db.execute("DELETE FROM crm_export.contracts WHERE contract_id = $1", invoices[grace])
        await db.execute("DELETE FROM crm_export.products WHERE stripe_product_id = $1", starter_product)
    finally:
        await db.close()
    # -- and Stripe changes the mesh never hears of: the endpoint is unreachable -------------
    await localstripe.register_webhook(WEBHOOK_ID, "http://127.0.0.1:9/unreachable", TEST_SECRET)
    nobody = (await client.v1.customers.create_async({"name": "No Webhook", "email": "nobody@example.com"})).id
    await client.v1.customers.delete_async(alan)

    report = await verify(client, view(mesh), s)
    assert keys(report) == {
        ("customers", ada, "mismatch", "name"),
        ("customers", nobody, "missing", "record"),
        ("customers", alan, "stale", "active"),
        ("invoices", invoices[ada], "mismatch", "total"),
        ("invoices", invoices[grace], "missing", "record"),
        ("clients", nobody, "missing", "record"),
        ("clients", alan, "stale", "deleted"),
        ("products", starter_product, "missing", "record"),
        ("contracts", invoices[grace], "missing", "record"),
    }
    name_row = next(f for f in report.findings if f.field == "name")
    assert (name_row.stripe_value, name_row.mesh_value) == ("Ada Lovelace", "Ada Byron")
    total_row = next(f for f in report.findings if f.field == "total")
    assert int(total_row.mesh_value) == int(total_row.stripe_value) + 100
    assert report.summaries["customers"].missing == 1 and report.summaries["customers"].stale == 1
    assert report.summaries["products"].ok == 1 and pro_product not in {f.stripe_id for f in report.findings}
    text = "\n".join(report.lines())
    assert "9 records differ" in text
    assert "@example.com" not in text

    # -- the command: exit 1 with the table; a narrower run sees only its own types ----------
    monkeypatch.setenv("SYNCMESH_NATS_URL", s.nats_url or "")
    monkeypatch.setenv("SYNCMESH_STRIPE_API_KEY", MESH_KEY)
    monkeypatch.setenv("SYNCMESH_STRIPE_API_BASE", localstripe.url)
    monkeypatch.setenv("SYNCMESH_MODE", "test")
    targets = [
        f"--customer-target={mesh.target('customer')}",
        f"--billing-target={mesh.target('billing')}",
        f"--crm-target={mesh.target('crm-export')}",
    ]
    code = await asyncio.to_thread(main, ["verify", "--types", "products", *targets])
    out = capsys.readouterr().out
    assert code == 1
    assert starter_product in out and "missing" in out and "products: checked 2, ok 1, missing 1" in out
    assert ada not in out  # only products were looked at

    # -- --repair through the command: exactly the differing objects, then re-verified -------
    code = await asyncio.to_thread(main, ["verify", "--repair", "--settle", "60", *targets])
    out = capsys.readouterr().out
    assert code == 0, out
    # ada, nobody, alan, two invoices and a product: grace's invoice is one event for billing and CRM
    assert "repair: published 6 synthetic events" in out
    assert "every repaired record now matches Stripe" in out
    assert "nobody@example.com" not in out
    repaired = {i for i in await message_ids(bus, STRIPE_STREAM) if i.startswith(REPAIR_ID_PREFIX)}
    assert len(repaired) == 6

    after = await verify(client, view(mesh), s)
    assert after.clean, "\n".join(after.lines())
    record = (await mesh.customer.GetCustomer(_customer_request(alan))).customer
    assert not record.active
    code = await asyncio.to_thread(main, ["verify", *targets])
    assert code == 0
    assert "clean: Stripe and the mesh agree" in capsys.readouterr().out


def _customer_request(stripe_id: str):
    from syncmesh.customer.v1 import customer_service_pb2 as pb

    return pb.GetCustomerRequest(stripe_customer_id=stripe_id)


async def test_repair_runs_twice_without_doubling_and_respects_since(
    mesh: RunningMesh, localstripe, ls_client, bus: Bus
) -> None:
    """A second repair of the same damage still applies (its own event ids), and --since
    leaves older objects out."""
    client = ls_client
    _, plan = await catalogue(client, "Solo", 500)
    cus, _ = await subscribed_customer(client, plan, name="Solo One", email="solo@example.com")
    await mesh.settle(stream_messages=await stripe_event_count(client))
    s = mesh.settings
    db = await asyncpg.connect(s.database_url)
    try:
        for attempt in range(2):
            await db.execute(
                "UPDATE customer.customers SET name = $2 WHERE stripe_customer_id = $1", cus, f"Broken {attempt}"
            )
            report = await verify(client, view(mesh), s, types=("customers",))
            assert keys(report) == {("customers", cus, "mismatch", "name")}
            result = await repair(bus, client, view(mesh), s, report, settle_seconds=30)
            assert result.published == 1 and result.after is not None and result.after.clean
            name = await db.fetchval("SELECT name FROM customer.customers WHERE stripe_customer_id = $1", cus)
            assert name == "Solo One"
    finally:
        await db.close()
    later = datetime.now(UTC) + timedelta(days=1)
    future = await verify(client, view(mesh), s, since=later)
    assert all(summary.checked == 0 for summary in future.summaries.values())
    assert future.clean


def test_types_and_masking() -> None:
    assert parse_verify_types("contracts, customers") == ("customers", "contracts")
    assert parse_verify_types(None) == ("customers", "invoices", "clients", "products", "contracts")
    with pytest.raises(SettingsError, match="unknown coupons"):
        parse_verify_types("coupons")
    assert mask_email("grace.hopper@navy.example") == "g***@n***"
    assert "hopper" not in mask_email("grace.hopper@navy.example")

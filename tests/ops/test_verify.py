"""`syncmesh verify [--repair]` against localstripe and the three real services.

The mesh is fed by localstripe's own signed webhooks; then records are damaged behind the
mesh's back (rows changed or deleted in the services' schemas) and Stripe changes without a
webhook (a customer created and one deleted while the endpoint is unreachable). Verify must
report exactly those differences, and --repair must fix exactly those and re-verify clean.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg
import pytest
from syncmesh.billing.v1 import billing_service_pb2 as billing_pb

from launcher.cli import main
from ops.verify import REPAIR_ID_PREFIX, parse_verify_types, repair, verify
from services.billing.verify import compare_credit_note
from services.common.bus import STRIPE_STREAM, Bus
from services.common.errors import SettingsError
from services.common.settings import Settings
from services.common.stream import message_ids
from services.common.verification import Mesh, mask_email
from tests.billing.builders import InvoiceSpec, credit_note_object, stripe_event
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
from tests.support.signing import TEST_SECRET, signed_request


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
    assert checked == {
        "customers": 3,
        "invoices": 3,
        "clients": 3,
        "products": 2,
        "contracts": 3,
        "refunds": 0,
        "payments": 3,
    }
    # localstripe has no credit notes: that type is reported as not verified, never as clean
    assert set(clean.unverified) == {"credit_memos"}
    assert "  credit_memos: NOT VERIFIED: this Stripe API does not serve credit_notes (404)" in clean.lines()

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
    assert "clean for what was verified; not verified: credit_memos" in capsys.readouterr().out
    code = await asyncio.to_thread(main, ["verify", "--types", "customers,invoices", *targets])
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


async def test_refunds_and_credit_memos_are_reconciled(mesh: RunningMesh, ls_client, bus: Bus) -> None:
    """A lost payment record and a refund made in Stripe without a webhook are reported missing
    and repaired; damage to a refund or a credit note's memo is reported with the field; a
    voided note the mesh never heard of is stale."""
    client = ls_client
    _, plan = await catalogue(client, "Refundable", 2500)
    cus, _ = await subscribed_customer(client, plan, name="Refund Me", email="refund@example.com")
    invoice = (await client.v1.invoices.list_async({"customer": cus, "limit": 1})).data[0]
    charge = invoice.charge if isinstance(invoice.charge, str) else str(invoice.charge.id)
    await mesh.settle(stream_messages=await stripe_event_count(client))
    s = mesh.settings

    # a paid invoice whose customer payment record was lost: the invoice still reads as paid
    db = await asyncpg.connect(s.database_url)
    try:
        await db.execute("DELETE FROM billing.payments WHERE stripe_invoice_id = $1", invoice.id)
        await db.execute(
            "UPDATE billing.invoices SET unattributed_paid = amount_paid WHERE stripe_invoice_id = $1", invoice.id
        )
    finally:
        await db.close()
    report = await verify(client, view(mesh), s, types=("invoices",))
    assert keys(report) == {("invoices", invoice.id, "missing", "payment")}
    assert report.findings[0].mesh_value == "2500 without one"
    result = await repair(bus, client, view(mesh), s, report, settle_seconds=30)
    assert result.after is not None and result.after.clean, "\n".join(result.lines())
    payments = (await mesh.billing.ListPayments(billing_pb.ListPaymentsRequest(invoice_id=invoice.id))).payments
    assert [(p.charge_id, p.amount.amount_minor) for p in payments] == [(charge, 2500)]

    # localstripe sends no refund events: the refund exists only in Stripe
    refund = (await client.v1.refunds.create_async({"charge": charge, "amount": 700})).id
    report = await verify(client, view(mesh), s, types=("refunds",))
    assert keys(report) == {("refunds", refund, "missing", "record")}
    result = await repair(bus, client, view(mesh), s, report, settle_seconds=30)
    assert result.published == 1 and result.after is not None and result.after.clean, "\n".join(result.lines())
    refunds = (await mesh.billing.ListRefunds(billing_pb.ListRefundsRequest(invoice_id=invoice.id))).refunds
    assert [(r.stripe_refund_id, r.amount.amount_minor, r.charge_id) for r in refunds] == [(refund, 700, charge)]

    # a credit note on that invoice, delivered as Stripe would (signed, through the gateway)
    now = int(time.time())
    spec = InvoiceSpec(invoice_id=invoice.id, customer=cus, currency="usd")
    note = credit_note_object("basil", spec, note_id="cn_verify_0001", amount=300, created=now)
    body, headers = signed_request(stripe_event("credit_note.created", note, created=now))
    async with aiohttp.ClientSession() as http, http.post(mesh.webhook_url, data=body, headers=headers) as answer:
        assert answer.status == 200, await answer.text()
    await mesh.settle(stream_messages=await mesh.stream_messages())
    assert await compare_credit_note(view(mesh), note) == []

    db = await asyncpg.connect(s.database_url)
    try:
        await db.execute("UPDATE billing.refunds SET status = 'pending' WHERE stripe_refund_id = $1", refund)
        await db.execute("UPDATE billing.credit_memos SET amount = amount + 7 WHERE memo_key = 'cn_verify_0001'")
    finally:
        await db.close()
    report = await verify(client, view(mesh), s, types=("refunds",))
    assert keys(report) == {("refunds", refund, "stale", "status")}
    damaged = await compare_credit_note(view(mesh), note)
    assert [(f.problem, f.field, f.stripe_value, f.mesh_value) for f in damaged] == [
        ("mismatch", "amount", "300", "307")
    ]
    voided = await compare_credit_note(view(mesh), {**note, "status": "void"})
    assert {(f.problem, f.field) for f in voided} == {("stale", "status"), ("mismatch", "amount")}
    unknown = await compare_credit_note(view(mesh), {**note, "id": "cn_never_sent"})
    assert [(f.problem, f.field) for f in unknown] == [("missing", "record")]


def test_types_and_masking() -> None:
    assert parse_verify_types("contracts, customers") == ("customers", "contracts")
    assert parse_verify_types(None) == (
        "customers",
        "invoices",
        "clients",
        "products",
        "contracts",
        "credit_memos",
        "refunds",
        "payments",
        "credit_holds",
    )
    with pytest.raises(SettingsError, match="unknown coupons"):
        parse_verify_types("coupons")
    assert mask_email("grace.hopper@navy.example") == "g***@n***"
    assert "hopper" not in mask_email("grace.hopper@navy.example")


async def test_verify_bounded_by_sample_estimates_the_full_run_and_reports_progress_in_a_log(
    mesh: RunningMesh, ls_client, monkeypatch, capsys
) -> None:
    """Not a terminal (pytest captures stderr): progress is a line per interval, each phase
    names itself with its count and rate; the estimate of the full run comes from a measured
    rate; --sample compares only the most recent objects."""
    import ops.verify
    from services.common import progress

    client = ls_client
    _, pro = await catalogue(client, "Pro", 1500)
    for name in ("Ada", "Grace", "Alan"):
        await subscribed_customer(client, pro, name=name, email=f"{name.lower()}@example.com")
    await mesh.settle(stream_messages=await stripe_event_count(client))
    monkeypatch.setattr(progress, "LINE_SECONDS", 0.0)
    monkeypatch.setattr(ops.verify.Estimate, "MEASURE_OBJECTS", 1)
    said: list[str] = []

    full = await verify(client, view(mesh), mesh.settings, show_progress=True, say=said.append)
    assert full.clean, "\n".join(full.lines())
    (estimate,) = said
    assert estimate.startswith("verify: about ") and "records to compare at" in estimate, estimate
    assert "the full run takes about" in estimate and "--since DATE or --sample N" in estimate
    err = capsys.readouterr().err
    assert "verify customers: 3/3 obj (100 %)" in err, err  # the total is what the mesh holds
    assert " obj/s" in err and "\r" not in err

    sampled = await verify(client, view(mesh), mesh.settings, sample=1)
    assert sampled.summaries["customers"].checked == 1 and sampled.summaries["invoices"].checked == 1
    assert sampled.clean
    assert "a sample: the 1 most recent of each Stripe listing" in sampled.lines()[0]


async def test_an_interrupted_verify_leaves_no_coroutine_unawaited() -> None:
    import gc
    import warnings

    from ops.verify import _gather_limited

    started: list[int] = []

    async def slow() -> None:
        started.append(1)
        await asyncio.sleep(30)

    task = asyncio.ensure_future(_gather_limited([slow] * 10, 2))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]
    assert len(started) == 2


def test_ctrl_c_on_verify_is_one_line(capsys) -> None:
    from ops.common import run_command

    async def work(_settings: Settings) -> int:
        raise KeyboardInterrupt

    assert run_command(work, interrupted="verify interrupted: nothing was written") == 130
    err = capsys.readouterr().err
    assert err.strip() == "syncmesh: verify interrupted: nothing was written"

"""`syncmesh verify` judges drafts, payments' charge ids and credit holds against Stripe, and
`--repair` fixes them: the billing service on real NATS and PostgreSQL, fed a current-shape
lifecycle shuffled and duplicated, then damaged behind its back; Stripe is a loopback stand-in
serving the same objects (listings and retrievals), so the comparison sees exactly them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

from aiohttp import web

from ops.verify import repair, verify
from services.billing.settings import BillingSettings
from services.billing.verify import CHECKS
from services.common.verification import Mesh
from tests.billing.builders import (
    InvoiceSpec,
    charge_object,
    invoice_object,
    invoice_payment_object,
)
from tests.billing.conftest import StartBilling
from tests.billing.test_contract import T0, deliver, ev, paid_lifecycle
from tests.conftest import stripe_client_for

#: The listings the billing checks read (and the repair's companion listing).
LISTINGS = ("invoices", "charges", "refunds", "credit_notes", "invoice_payments")


@asynccontextmanager
async def stripe_standin(objects: dict[str, list[dict[str, Any]]]) -> AsyncIterator[str]:
    """`GET /v1/<listing>` (one page, `invoice` filter) and `GET /v1/<listing>/<id>` over `objects`."""

    async def listing(request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        data = objects.get(kind, [])
        if "invoice" in request.query:
            data = [o for o in data if o.get("invoice") == request.query["invoice"]]
        return web.json_response({"object": "list", "data": data, "has_more": False, "url": f"/v1/{kind}"})

    async def retrieve(request: web.Request) -> web.Response:
        kind, object_id = request.match_info["kind"], request.match_info["id"]
        for obj in objects.get(kind, []):
            if obj["id"] == object_id:
                return web.json_response(obj)
        error = {"type": "invalid_request_error", "message": f"No such object: '{object_id}'"}
        return web.json_response({"error": error}, status=404)

    app = web.Application()
    app.router.add_get("/v1/{kind}", listing)
    app.router.add_get("/v1/{kind}/{id}", retrieve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def keys(report: Any) -> set[tuple[str, str, str, str]]:
    return {(f.kind, f.stripe_id, f.problem, f.field) for f in report.findings}


async def test_verify_finds_and_repairs_drafts_charge_ids_and_holds(start_billing: StartBilling) -> None:
    billing = await start_billing(BillingSettings(credit_hold=True))
    shape = "basil"
    total = 14700
    draft = InvoiceSpec(invoice_id="in_VerifyDraft01", subscription=None)
    paid = InvoiceSpec(invoice_id="in_VerifyPaid001")
    wrong = InvoiceSpec(invoice_id="in_VerifyWrong01")
    failed = InvoiceSpec(invoice_id="in_VerifyFailed1", customer="cus_VerifyHeld01")
    recovered = InvoiceSpec(invoice_id="in_VerifyRecovr1", customer="cus_VerifyHeld02")

    final = invoice_object(shape, failed, attempt_count=4, next_payment_attempt=None)
    final_then_paid = invoice_object(shape, recovered, attempt_count=4, next_payment_attempt=None)
    events = [
        ev("invoice.created", invoice_object(shape, draft, status="draft"), T0, shape),
        *paid_lifecycle(shape, paid, total, charge="ch_3VerifyPaid", intent="pi_3VerifyPaid"),
        *paid_lifecycle(shape, wrong, total, charge="ch_3VerifyWrong", intent="pi_3VerifyWrong"),
        ev("invoice.finalized", invoice_object(shape, failed, next_payment_attempt=T0 + 3600), T0, shape),
        ev("invoice.payment_failed", final, T0 + 86400 * 14, shape),
        *paid_lifecycle(shape, recovered, total, charge="ch_3VerifyRecov", intent="pi_3VerifyRecov"),
        ev("invoice.payment_failed", final_then_paid, T0 + 50, shape),
    ]
    await deliver(billing, events, seed=21)

    def charge(spec: InvoiceSpec, charge_id: str, intent: str) -> dict[str, Any]:
        return charge_object(shape, spec, total, charge_id=charge_id, intent=intent, created=T0 + 99)

    def payment(spec: InvoiceSpec, intent: str) -> dict[str, Any]:
        return invoice_payment_object(spec, total, payment_id=f"inpay_{intent[3:]}", intent=intent, paid_at=T0 + 100)

    declined = {**charge(paid, "ch_3VerifyPaid_declined", "pi_3VerifyPaid"), "status": "failed", "paid": False}
    stripe_objects: dict[str, list[dict[str, Any]]] = {
        "invoices": [
            invoice_object(shape, draft, status="draft"),
            invoice_object(shape, paid, status="paid", amount_paid=total),
            invoice_object(shape, wrong, status="paid", amount_paid=total),
            final,
            {**invoice_object(shape, recovered, status="paid", amount_paid=total), "attempt_count": 4},
        ],
        "charges": [
            declined,
            charge(paid, "ch_3VerifyPaid", "pi_3VerifyPaid"),
            charge(wrong, "ch_3VerifyWrong", "pi_3VerifyWrong"),
            charge(recovered, "ch_3VerifyRecov", "pi_3VerifyRecov"),
        ],
        "invoice_payments": [
            payment(paid, "pi_3VerifyPaid"),
            payment(wrong, "pi_3VerifyWrong"),
            payment(recovered, "pi_3VerifyRecov"),
        ],
    }

    def mesh() -> Mesh:
        """A view of the mesh for one run (a run remembers what it read)."""
        return Mesh({"billing": billing.channel})

    async with stripe_standin(stripe_objects) as url:
        client = stripe_client_for(SimpleNamespace(url=url))
        clean = await verify(client, mesh(), billing.settings, checks=CHECKS)
        assert clean.clean, "\n".join(clean.lines())
        checked = {kind: summary.checked for kind, summary in clean.summaries.items()}
        # every invoice; the three succeeded charges; the holds of the failed and paid invoices
        assert checked == {"invoices": 5, "payments": 3, "credit_holds": 4, "credit_memos": 0, "refunds": 0}

        conn = await billing.db()
        try:
            # what the mapping before drafts stored: the draft as an open receivable
            await conn.execute(
                "UPDATE invoices SET erp_status = 'open', amount_remaining = total WHERE stripe_invoice_id = $1",
                draft.invoice_id,
            )
            # a charge never consumed (as before this change), and one that names another charge
            await conn.execute("UPDATE payments SET charge_id = NULL WHERE stripe_invoice_id = $1", paid.invoice_id)
            await conn.execute("DELETE FROM charges WHERE charge_id = 'ch_3VerifyPaid'")
            await conn.execute(
                "UPDATE payments SET charge_id = 'ch_3SomeoneElse' WHERE stripe_invoice_id = $1", wrong.invoice_id
            )
            # a hold lost, and one the payment never released
            await conn.execute("DELETE FROM credit_holds WHERE stripe_invoice_id = $1", failed.invoice_id)
            await conn.execute(
                "UPDATE credit_holds SET released_at = NULL, release_reason = NULL, release_reason_code = NULL "
                "WHERE stripe_invoice_id = $1",
                recovered.invoice_id,
            )
        finally:
            await conn.close()

        report = await verify(client, mesh(), billing.settings, checks=CHECKS)
        assert keys(report) == {
            ("invoices", draft.invoice_id, "mismatch", "erp_status"),
            ("payments", "ch_3VerifyPaid", "missing", "charge_id"),
            ("payments", "ch_3VerifyWrong", "mismatch", "charge_id"),
            ("credit_holds", failed.invoice_id, "missing", "hold"),
            ("credit_holds", recovered.invoice_id, "stale", "hold"),
        }, "\n".join(report.lines())
        status_row = next(f for f in report.findings if f.field == "erp_status")
        assert (status_row.stripe_value, status_row.mesh_value) == ("draft", "open")

        result = await repair(
            billing.runtime.bus, client, mesh(), billing.settings, report, checks=CHECKS, settle_seconds=30
        )
        assert result.published == 5
        assert result.after is not None and result.after.clean, "\n".join(result.lines())
        assert (await verify(client, mesh(), billing.settings, checks=CHECKS)).clean

    conn = await billing.db()
    try:
        rows = await conn.fetch("SELECT stripe_invoice_id, charge_id, payment_intent_id FROM payments ORDER BY 1")
        assert [tuple(r) for r in rows] == [
            (paid.invoice_id, "ch_3VerifyPaid", "pi_3VerifyPaid"),
            (recovered.invoice_id, "ch_3VerifyRecov", "pi_3VerifyRecov"),
            (wrong.invoice_id, "ch_3VerifyWrong", "pi_3VerifyWrong"),
        ]
        holds = await conn.fetch(
            "SELECT stripe_invoice_id, reason_code, released_at IS NULL AS active, release_reason_code "
            "FROM credit_holds ORDER BY 1"
        )
        assert [tuple(r) for r in holds] == [
            (failed.invoice_id, "final_payment_failure", True, None),
            (recovered.invoice_id, "final_payment_failure", False, "invoice_paid"),
        ]
        status = await conn.fetchval("SELECT erp_status FROM invoices WHERE stripe_invoice_id = $1", draft.invoice_id)
        assert status == "draft"
    finally:
        await conn.close()

"""The services' verify checks without a mesh: the pure comparisons, what the engine learns
from the checks (types, order), the per-run cache, and where the checks may import from.

The end-to-end behaviour (localstripe, the three services, --repair) is tests/ops/test_verify.py.
"""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest
from syncmesh.billing.v1 import billing_service_pb2 as billing_pb
from syncmesh.crm_export.v1 import crm_export_service_pb2 as crm_pb
from syncmesh.customer.v1 import customer_service_pb2 as customer_pb

from ops.verify import CHECKS, VERIFY_TYPES
from services.billing.verify import (
    InvoiceHolds,
    charge_payment_differences,
    hold_differences,
    invoice_differences,
    refund_differences,
)
from services.common.verification import MISMATCH, MISSING, STALE, Mesh
from services.crm_export.verify import subscription_contract_differences
from services.customer.verify import customer_differences

REPO = Path(__file__).resolve().parents[2]
VERIFY_MODULES = ("customer", "billing", "crm_export")


def _problems(differences) -> set[tuple[str, str]]:
    return {(d.problem, d.field) for d in differences}


@pytest.mark.parametrize(
    ("stripe_status", "mesh_status", "problem"),
    [
        # the CRM export's own table: a trial that ended, a subscription that fell behind on payment
        ("active", "trialing", STALE),
        ("past_due", "active", STALE),
        ("past_due", "paused", STALE),
        ("canceled", "active", STALE),
        # the mesh ahead of Stripe (or on another branch of the lifecycle) is not staleness
        ("active", "canceled", MISMATCH),
        ("trialing", "active", MISMATCH),
        ("paused", "unpaid", MISMATCH),
    ],
)
def test_subscription_contracts_are_judged_with_the_crm_exports_ranks(
    stripe_status: str, mesh_status: str, problem: str
) -> None:
    contract = crm_pb.Contract(contract_id="sub_1", status=mesh_status, stripe_customer_id="cus_1")
    obj = {"id": "sub_1", "status": stripe_status, "customer": "cus_1"}
    assert _problems(subscription_contract_differences(obj, contract)) == {(problem, "status")}


def test_invoices_and_refunds_are_judged_with_billings_ranks() -> None:
    invoice = billing_pb.Invoice(
        stripe_invoice_id="in_1",
        stripe_status="open",
        status=billing_pb.INVOICE_STATUS_OPEN,
        stripe_customer_id="cus_1",
        currency="usd",
    )
    obj = {"id": "in_1", "status": "paid", "customer": "cus_1", "currency": "usd"}
    assert _problems(invoice_differences(obj, invoice)) == {(STALE, "stripe_status"), (STALE, "erp_status")}
    assert invoice_differences(obj, None)[0].problem == "missing"

    refund = billing_pb.Refund(stripe_refund_id="re_1", status="pending")
    refund.amount.amount_minor, refund.amount.currency = 700, "usd"
    assert _problems(
        refund_differences({"id": "re_1", "status": "succeeded", "amount": 700, "currency": "usd"}, refund)
    ) == {(STALE, "status")}
    assert _problems(
        refund_differences({"id": "re_1", "status": "pending", "amount": 900, "currency": "eur"}, refund)
    ) == {
        (MISMATCH, "amount"),
        (MISMATCH, "currency"),
    }


def test_drafts_charge_ids_and_holds_are_judged() -> None:
    obj = {"id": "in_1", "status": "draft", "customer": "cus_1", "currency": "usd"}
    draft = billing_pb.Invoice(
        stripe_invoice_id="in_1",
        stripe_status="draft",
        status=billing_pb.INVOICE_STATUS_DRAFT,
        stripe_customer_id="cus_1",
        currency="usd",
    )
    assert invoice_differences(obj, draft) == []
    # a draft shown as an open receivable is ahead of Stripe; a finalized one shown as a draft behind
    assert _problems(invoice_differences(obj, billing_pb.Invoice(**{**_fields(draft), "status": 1}))) == {
        (MISMATCH, "erp_status")
    }
    opened = {**obj, "status": "open"}
    assert _problems(
        invoice_differences(opened, billing_pb.Invoice(**{**_fields(draft), "stripe_status": "open"}))
    ) == {(STALE, "erp_status")}

    charge = {"id": "ch_1", "payment_intent": "pi_1", "status": "succeeded"}
    good = billing_pb.Payment(stripe_payment_id="inpay_1", charge_id="ch_1", payment_intent_id="pi_1")
    assert charge_payment_differences(charge, good) == []
    assert charge_payment_differences(charge, None) == []  # not every charge pays an invoice
    assert _problems(charge_payment_differences(charge, billing_pb.Payment(payment_intent_id="pi_1"))) == {
        (MISSING, "charge_id")
    }
    assert _problems(
        charge_payment_differences(charge, billing_pb.Payment(charge_id="ch_2", payment_intent_id="pi_1"))
    ) == {(MISMATCH, "charge_id")}

    gave_up = {"id": "in_2", "status": "open", "attempt_count": 4, "next_payment_attempt": None}
    active = billing_pb.CreditHold(stripe_invoice_id="in_2", active=True)
    assert _problems(hold_differences(gave_up, InvoiceHolds((), True))) == {(MISSING, "hold")}
    assert hold_differences(gave_up, InvoiceHolds((active,), True)) == []
    paid = {**gave_up, "status": "paid"}
    assert _problems(hold_differences(paid, InvoiceHolds((active,), True))) == {(STALE, "hold")}
    assert hold_differences(paid, InvoiceHolds((active,), False)) == []  # holds stay on payment
    retrying = {**gave_up, "next_payment_attempt": 1_800_000_000}
    assert hold_differences(retrying, InvoiceHolds((), True)) == []


def _fields(message: billing_pb.Invoice) -> dict[str, object]:
    return {f.name: v for f, v in message.ListFields()}


def test_customer_comparison_masks_emails_and_sees_deletions() -> None:
    record = customer_pb.Customer(stripe_customer_id="cus_1", email="ada@example.com", name="Ada", active=True)
    changed = customer_differences({"id": "cus_1", "email": "grace@example.com", "name": "Ada"}, record)
    assert [(d.field, d.stripe_value, d.mesh_value) for d in changed] == [("email", "g***@e***", "a***@e***")]
    assert _problems(customer_differences({"id": "cus_1", "deleted": True}, record)) == {(STALE, "active")}
    assert customer_differences({"id": "cus_2", "deleted": True}, None) == []


def test_the_engine_learns_types_order_and_services_from_the_checks() -> None:
    assert VERIFY_TYPES == (
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
    assert {c.kind: c.service for c in CHECKS} == {
        "customers": "customer",
        "invoices": "billing",
        "credit_memos": "billing",
        "refunds": "billing",
        "payments": "billing",
        "credit_holds": "billing",
        "clients": "crm-export",
        "products": "crm-export",
        "contracts": "crm-export",
    }
    assert {(c.kind, c.source) for c in CHECKS if c.held is not None} == {
        ("customers", "customers"),
        ("clients", "customers"),
        ("products", "products"),
    }


async def test_a_remembered_read_is_shared_and_forgotten_unless_lasting() -> None:
    mesh = Mesh({})
    loads: list[str] = []

    async def load(name: str) -> str:
        loads.append(name)
        await asyncio.sleep(0)
        return name

    first = await asyncio.gather(*(mesh.remembered("refunds", lambda: load("refunds")) for _ in range(5)))
    assert first == ["refunds"] * 5 and loads == ["refunds"]
    await mesh.remembered("settings", lambda: load("settings"), lasting=True)
    mesh.forget_cached()
    await mesh.remembered("refunds", lambda: load("refunds"))
    await mesh.remembered("settings", lambda: load("settings"))
    assert loads == ["refunds", "settings", "refunds"]

    async def failing() -> str:
        raise RuntimeError("unreachable")

    with pytest.raises(RuntimeError):
        await mesh.remembered("products", failing)
    assert await mesh.remembered("products", lambda: load("products")) == "products"  # a failure is not kept


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text("utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.parametrize("service", VERIFY_MODULES)
def test_a_services_checks_import_only_the_runtime_contracts_and_their_own_service(service: str) -> None:
    for module in _imports(REPO / "services" / service / "verify.py"):
        top = module.split(".")[0]
        if top == "services":
            assert module.startswith(("services.common", f"services.{service}")), module
        else:
            assert top not in ("ops", "gateway", "launcher"), module
    for module in _imports(REPO / "services" / "common" / "verification.py"):
        assert module.split(".")[0] not in ("ops", "gateway", "launcher") and not module.startswith(
            tuple(f"services.{s}" for s in VERIFY_MODULES)
        ), module

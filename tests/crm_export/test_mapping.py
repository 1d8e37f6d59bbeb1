"""The pure mapping: both payload shapes, field mappings, versions and health signals."""

from __future__ import annotations

import dataclasses

import pytest

from services.common.errors import ValidationError
from services.common.events import api_shape
from services.crm_export import crm_settings, health, mapping
from services.crm_export.crm_settings import CrmSettings, FieldMapping
from services.crm_export.records import Address, Client, Contract, InvoicePayment, Product, content_hash, plain
from tests.crm_export.support import T0, customer, invoice, product, subscription

MAPPED = CrmSettings(
    customer_field_mappings=(
        FieldMapping("balance", "Stripe Balance"),
        FieldMapping("metadata.segment", "Segment"),
        FieldMapping("address.city", "City"),
        FieldMapping("metadata.missing", "Missing"),
    ),
    product_field_mappings=(FieldMapping("unit_label", "Unit"), FieldMapping("metadata.sku", "SKU")),
)


def test_customer_becomes_client_with_custom_fields_and_empty_missing_paths() -> None:
    client = mapping.client_from_customer(customer(), MAPPED)
    assert (client.stripe_customer_id, client.name, client.email) == ("cus_A", "Ada Lovelace", "ada@example.com")
    assert client.address == Address(line1="1 Main St", city="Paris", postal_code="75001", country="FR")
    assert client.custom_fields == {"Stripe Balance": "-500", "Segment": "smb", "City": "Paris", "Missing": ""}


def test_legacy_customer_without_balance_leaves_the_field_empty() -> None:
    legacy = {
        "id": "cus_L",
        "object": "customer",
        "account_balance": 250,
        "name": None,
        "description": "Old Co",
        "email": None,
        "address": None,
        "shipping": {"address": {"city": "Lyon", "country": "FR"}},
        "metadata": {},
    }
    client = mapping.client_from_customer(legacy, MAPPED)
    assert client.name == "Old Co"  # no name: the description stands in
    assert client.custom_fields["Stripe Balance"] == "" and client.custom_fields["Segment"] == ""
    assert client.address.city == "Lyon"  # falls back to the shipping address


def test_product_mapping() -> None:
    raw = product()
    raw["metadata"] = {"sku": "PRO-1"}
    raw["unit_label"] = None
    p = mapping.product_from_stripe(raw, MAPPED)
    assert (p.stripe_product_id, p.name, p.description, p.active) == ("prod_A", "Pro", "Pro plan", True)
    assert p.custom_fields == {"Unit": "", "SKU": "PRO-1"}
    gone = mapping.product_from_stripe(raw, MAPPED, deleted=True)
    assert gone.deleted and not gone.active


@pytest.mark.parametrize("legacy", [False, True])
def test_paid_invoice_becomes_contract_in_both_shapes(legacy: bool) -> None:
    inv = invoice(legacy=legacy, subscription="sub_9")
    assert api_shape(inv) == ("legacy" if legacy else "basil")
    contract = mapping.contract_from_invoice(inv)
    assert (contract.contract_id, contract.source, contract.stripe_customer_id) == ("in_A", "INVOICE", "cus_A")
    assert (contract.total_minor, contract.discount_minor, contract.currency) == (2900, 100, "usd")
    assert contract.stripe_subscription_id == "sub_9"
    [line] = contract.lines
    assert (line.stripe_product_id, line.quantity, line.amount_minor, line.discount_minor) == ("prod_A", 2, 3000, 100)
    assert (line.start_date, line.end_date) == ("2025-06-15", "2025-07-15")
    assert (contract.start_date, contract.end_date) == ("2025-06-15", "2025-07-15")


def test_localstripe_2017_invoice_line_takes_the_product_from_the_plan() -> None:
    line = {
        "id": "il_1",
        "amount": 3000,
        "currency": "usd",
        "quantity": 2,
        "period": {"start": T0, "end": T0},
        "plan": {"id": "plan_1", "product": "prod_P", "amount": 1500},
        "type": "subscription",
    }
    inv = {
        "id": "in_L",
        "customer": "cus_L",
        "status": "paid",
        "currency": "usd",
        "total": 3000,
        "created": T0,
        "lines": {"data": [line], "has_more": False},
        "discount": None,
        "subscription": "sub_L",
    }
    contract = mapping.contract_from_invoice(inv)
    assert contract.lines[0].stripe_product_id == "prod_P" and contract.discount_minor == 0
    assert contract.stripe_subscription_id == "sub_L"


def test_truncated_lines_are_reported_and_replaced_by_the_full_list() -> None:
    inv = invoice()
    inv["lines"]["has_more"] = True
    lines, truncated = mapping.invoice_lines(inv)
    assert truncated and len(lines) == 1
    extra = dict(lines[0], id="il_extra", amount=500, discount_amounts=[])
    contract = mapping.contract_from_invoice(inv, [lines[0], extra])
    # in the invoice's own order, not line id order
    assert [line.stripe_line_id for line in contract.lines] == ["il_in_A", "il_extra"]


@pytest.mark.parametrize("legacy", [False, True])
def test_subscription_becomes_contract_in_both_shapes(legacy: bool) -> None:
    contract = mapping.contract_from_subscription(subscription(legacy=legacy, quantity=3))
    assert (contract.contract_id, contract.source, contract.status) == ("sub_A", "SUBSCRIPTION", "active")
    assert contract.total_minor == 4500 and contract.currency == "usd"
    [line] = contract.lines
    assert (line.stripe_product_id, line.quantity, line.amount_minor) == ("prod_A", 3, 4500)
    assert (line.start_date, line.end_date) == ("2025-06-15", "2025-07-15")
    assert contract.canceled_at is None


def test_cancelled_subscription_contract_ends_when_the_subscription_ended() -> None:
    contract = mapping.contract_from_subscription(subscription(status="canceled"))
    assert contract.canceled_at == T0 + 86400 and contract.end_date == "2025-06-16"
    assert contract.lines[0].end_date == "2025-06-16"


def test_versions_order_terminal_states_last() -> None:
    active = mapping.subscription_version(subscription(status="active"), T0 + 100)
    canceled = mapping.subscription_version(subscription(status="canceled"), T0)
    assert (canceled.terminal, canceled.ts) > (active.terminal, active.ts)  # nothing leaves canceled
    same_second = [mapping.subscription_version(subscription(status=s), T0) for s in ("incomplete", "active")]
    assert same_second[0].rank < same_second[1].rank
    assert mapping.customer_version(customer(), T0, deleted=True).terminal


def test_health_signals() -> None:
    failed = InvoicePayment("in_1", "cus_A", failed=True, paid=False)
    recovered = InvoicePayment("in_2", "cus_A", failed=True, paid=True)
    assert health.health_signals(["active"], [failed]) == ["PAYMENT_FAILED"]
    assert health.health_signals(["active"], [recovered]) == []
    assert health.health_signals(["past_due", "active"], []) == ["SUBSCRIPTION_PAST_DUE"]
    assert health.health_signals(["canceled", "incomplete_expired"], []) == ["SUBSCRIPTION_CANCELED"]
    assert health.health_signals(["canceled", "active"], []) == []  # an upgrade, not a churn
    assert health.health_signals([], []) == []


def test_imported_invoice_gives_the_payment_facts_events_would() -> None:
    assert mapping.imported_invoice_payment(invoice(status="open", attempt_count=2)) == InvoicePayment(
        "in_A", "cus_A", failed=True, paid=False
    )
    assert mapping.imported_invoice_payment(invoice(status="open", attempt_count=0)) is None
    assert mapping.imported_invoice_payment(invoice()) == InvoicePayment("in_A", "cus_A", False, True)


@pytest.mark.parametrize(
    ("path", "ok"),
    [
        ("balance", True),
        ("metadata.segment", True),
        ("address.city", True),
        ("shipping.address.city", True),
        ("account_balance", True),
        ("metadata", False),
        ("metadata.a.b", False),
        ("address", False),
        ("address.planet", False),
        ("balance.amount", False),
        ("no_such_field", False),
        ("", False),
        ("metadata..x", False),
    ],
)
def test_customer_mapping_paths_are_validated_against_known_fields(path: str, ok: bool) -> None:
    settings = CrmSettings(customer_field_mappings=(FieldMapping(path, "Field"),))
    if ok:
        crm_settings.validate_settings(settings)
    else:
        with pytest.raises(ValidationError) as err:
            crm_settings.validate_settings(settings)
        assert err.value.field == "customer_field_mappings[0].stripe_path"


def test_settings_validation_names_the_field() -> None:
    cases = {
        "contract_sources": CrmSettings(contract_sources=()),
        "days_back": CrmSettings(days_back=0),
        "customer_sync_direction": CrmSettings(customer_sync_direction="PUSH"),
        "import_requests_per_second": CrmSettings(import_requests_per_second=500),
        "customer_field_mappings[1].crm_field": CrmSettings(
            customer_field_mappings=(FieldMapping("balance", "X"), FieldMapping("email", "x"))
        ),
        "product_field_mappings[0].stripe_path": CrmSettings(product_field_mappings=(FieldMapping("balance", "B"),)),
    }
    for field, bad in cases.items():
        with pytest.raises(ValidationError) as err:
            crm_settings.validate_settings(bad)
        assert err.value.field == field
    ok = crm_settings.validate_settings(CrmSettings(contract_sources=("SUBSCRIPTION", "INVOICE", "INVOICE")))
    assert ok.contract_sources == ("INVOICE", "SUBSCRIPTION")


def test_content_hashes_are_those_of_dataclasses_asdict() -> None:
    """Content hashes order versions in the store (stored rows carry them): the fast conversion
    must give exactly what `asdict` gave, or rows written before would compare differently."""
    raw = customer()
    raw["name"] = "Zoë Ünïcode"  # json.dumps escapes non-ASCII: the bytes hashed must not change
    records: list[Client | Product | Contract] = [
        mapping.client_from_customer(raw, MAPPED),
        mapping.product_from_stripe(product(), MAPPED),
        mapping.contract_from_invoice(invoice(subscription="sub_9")),
        mapping.contract_from_invoice(invoice(legacy=True)),
        mapping.contract_from_subscription(subscription(quantity=3)),
    ]
    for record in records:
        assert plain(record) == dataclasses.asdict(record)
        assert record.content_hash() == content_hash(dataclasses.asdict(record))
    contract = records[2]
    assert isinstance(contract, Contract) and contract.lines
    assert isinstance(plain(contract)["lines"][0], dict)

"""The shape check refuses what Stripe never sends, names the field, and passes what it does send."""

from __future__ import annotations

import json
from typing import Any

import pytest

from services.common.errors import MalformedEventError
from services.common.stripe_shapes import check_body, check_object
from tests.support.stripe_events import FIXTURES, fixture


@pytest.mark.parametrize("path", sorted(FIXTURES.rglob("*.json")), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_published_stripe_object_passes(path) -> None:
    obj = json.loads(path.read_text())
    check_object(obj)
    check_body(path.read_bytes())


def _invoice() -> dict[str, Any]:
    invoice = fixture("invoice")
    invoice["lines"] = {"object": "list", "data": [fixture("line_item")], "has_more": False}
    return invoice


@pytest.mark.parametrize(
    ("spoil", "field"),
    [
        (lambda o: o.update(total="4900"), "data.object.total: expected a whole number, got str"),
        (lambda o: o.update(total=49.0), "data.object.total: expected a whole number, got float"),
        (lambda o: o.update(amount_paid=True), "data.object.amount_paid: expected a whole number, got bool"),
        (lambda o: o.pop("created"), "data.object.created: expected a whole number, got nothing"),
        (lambda o: o.update(id=7), "data.object.id: expected a non-empty string, got int"),
        (lambda o: o.update(currency=840), "data.object.currency: expected a string, got int"),
        (lambda o: o["lines"].update(data={"0": {}}), "data.object.lines.data: expected a list, got dict"),
        (lambda o: o.update(lines=[]), "data.object.lines: expected a list object, got list"),
        (lambda o: o["lines"]["data"][0].update(amount="1"), "data.object.lines.data[0].amount: expected a whole"),
        (lambda o: o["lines"]["data"].append("line"), "data.object.lines.data[1]: expected an object, got str"),
        (lambda o: o.update(status_transitions={"paid_at": "today"}), "data.object.status_transitions.paid_at"),
        (lambda o: o.update(total=2**70), "data.object.total: 1180591620717411303424 does not fit in 64 bits"),
    ],
)
def test_a_spoiled_invoice_is_refused_naming_the_field(spoil, field: str) -> None:
    invoice = _invoice()
    check_object(invoice)
    spoil(invoice)
    with pytest.raises(MalformedEventError) as refused:
        check_object(invoice)
    assert str(refused.value).startswith(field)


def test_null_where_stripe_sends_null_is_fine_and_unknown_fields_are_ignored() -> None:
    invoice = _invoice()
    invoice.update(due_date=None, next_payment_attempt=None, number=None, a_field_stripe_adds_tomorrow={"x": 1})
    check_object(invoice)


def test_a_deletion_stub_needs_no_created() -> None:
    """Stripe sends a deleted customer (or product) as {id, object, deleted: true} and nothing else."""
    check_object({"id": "cus_1", "object": "customer", "deleted": True})
    with pytest.raises(MalformedEventError, match="created"):
        check_object({"id": "cus_1", "object": "customer", "deleted": False})


def test_a_nul_byte_anywhere_is_refused() -> None:
    customer = fixture("customer")
    customer["name"] = "Acme\x00Corp"
    with pytest.raises(MalformedEventError, match="NUL"):
        check_body(json.dumps(customer).encode())
    check_body(json.dumps(fixture("customer")).encode())

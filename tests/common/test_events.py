"""Payload shape detection, on Stripe's own examples of both shapes and on localstripe's."""

from __future__ import annotations

from services.common.events import api_shape
from tests.support.stripe_events import fixture


def test_published_examples() -> None:
    assert api_shape(fixture("invoice")) == "basil"
    assert api_shape(fixture("line_item")) == "basil"
    assert api_shape(fixture("invoice", legacy=True)) == "legacy"
    assert api_shape(fixture("line_item", legacy=True)) == "legacy"


def test_standalone_current_invoice_with_null_parent_is_basil() -> None:
    invoice = fixture("invoice")
    invoice["parent"] = None
    assert api_shape(invoice) == "basil"


def test_legacy_invoice_with_a_null_parent_key_is_legacy() -> None:
    invoice = fixture("invoice", legacy=True)
    invoice["parent"] = None
    assert api_shape(invoice) == "legacy"

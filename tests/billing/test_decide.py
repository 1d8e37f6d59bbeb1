"""The billing rules over stored facts (`decide`), without a database."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

import pytest

from services.billing import decide
from services.billing.ledger import LedgerFacts, PaymentFact
from services.billing.records import StoredLedger, StoredRefund
from services.billing.settings import BillingSettings


def stored(**changes: object) -> StoredLedger:
    facts = LedgerFacts(
        total=1000,
        stripe_status="open",
        stripe_amount_paid=0,
        balance_applied=0,
        payments=(),
        invoice_credits=0,
        uncollectible_seen=False,
        uncollectible_at=None,
        write_off_enabled=False,
    )
    base = StoredLedger(
        stripe_invoice_id="in_1",
        erp_invoice_id="INV-0000001",
        stripe_customer_id="cus_1",
        currency="usd",
        total=1000,
        lines_complete=True,
        transaction_date=date(2025, 1, 1),
        uncollectible_notified_on=None,
        erp_status="open",
        amount_paid=0,
        unattributed_paid=0,
        credits_applied=0,
        amount_remaining=1000,
        has_active_holds=False,
        facts=facts,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def test_an_unchanged_ledger_does_not_move() -> None:
    settled = decide.settle(stored(), BillingSettings())
    assert not settled.moved and settled.status == "open" and settled.write_off is None


def test_a_payment_moves_the_ledger_and_releases_holds() -> None:
    invoice = stored(has_active_holds=True)
    invoice = replace(invoice, facts=replace(invoice.facts, stripe_status="paid", payments=(PaymentFact(1000, 5),)))
    settled = decide.settle(invoice, BillingSettings())
    assert settled.moved and settled.status == "paid_in_full" and settled.state.amount_remaining == 0
    assert settled.release_reason == "invoice in_1 paid in full"
    assert decide.settle(invoice, BillingSettings(release_hold_on_pay=False)).release_reason is None


def test_a_stored_status_never_moves_back() -> None:
    settled = decide.settle(stored(erp_status="paid_in_full"), BillingSettings())
    assert settled.status == "paid_in_full"


def test_a_draft_owes_nothing_and_never_comes_back_over_a_later_status() -> None:
    draft = stored(erp_status="draft", amount_remaining=0)
    draft = replace(draft, facts=replace(draft.facts, stripe_status="draft"))
    settled = decide.settle(draft, BillingSettings())
    assert (settled.status, settled.state.amount_remaining, settled.moved) == ("draft", 0, False)
    # what the mapping before drafts stored for one (open, owing its total) is corrected
    settled = decide.settle(replace(draft, erp_status="open", amount_remaining=1000), BillingSettings())
    assert (settled.status, settled.state.amount_remaining, settled.moved) == ("draft", 0, True)
    # a later status is never moved back by a draft
    assert decide.settle(replace(draft, erp_status="paid_in_full"), BillingSettings()).status == "paid_in_full"
    finalized = replace(draft, facts=replace(draft.facts, stripe_status="open"))
    assert decide.settle(finalized, BillingSettings()).status == "open"


def test_holds_are_released_with_a_reason_code() -> None:
    invoice = stored(has_active_holds=True)
    voided = replace(invoice, facts=replace(invoice.facts, stripe_status="void"))
    assert decide.settle(voided, BillingSettings()).release_code == "invoice_voided"
    paid = replace(invoice, facts=replace(invoice.facts, stripe_status="paid", payments=(PaymentFact(1000, 5),)))
    assert decide.settle(paid, BillingSettings()).release_code == "invoice_paid"
    assert decide.settle(invoice, BillingSettings()).release_code is None


def test_write_off_follows_the_policy() -> None:
    invoice = stored(uncollectible_notified_on=date(2025, 2, 3))
    invoice = replace(invoice, facts=replace(invoice.facts, stripe_status="uncollectible", uncollectible_seen=True))
    assert decide.settle(invoice, BillingSettings()).write_off is None
    memo = decide.settle(invoice, BillingSettings(write_off_uncollectible=True)).write_off
    assert memo is not None
    assert (memo.memo_key, memo.status, memo.amount, memo.memo_date) == ("wo_in_1", "issued", 1000, date(2025, 2, 3))


@pytest.mark.parametrize(
    ("status", "covered", "memo"),
    [
        ("succeeded", False, "issued"),
        ("pending", False, "issued"),
        ("succeeded", True, "superseded"),
        ("failed", True, "void"),
        ("canceled", False, "void"),
    ],
)
def test_refund_memo_status(status: str, covered: bool, memo: str) -> None:
    refund = StoredRefund("re_1", "in_1", "cus_1", 500, "usd", date(2025, 1, 2), status, None, covered)
    assert decide.refund_memo(refund).status == memo


def test_the_events_of_one_payment_share_a_lock_whatever_shape_they_come_in() -> None:
    """A charge, its refund and its invoice payment each carry part of the link to the invoice;
    applied at once by two replicas they must take turns, so they share a lock key."""
    from services.billing.invoice_mapping import payment_keys

    charge = {"id": "ch_1", "payment_intent": "pi_1"}
    refund = {"id": "re_1", "charge": "ch_1", "payment_intent": {"id": "pi_1"}}
    invoice_payment = {
        "id": "inpay_1",
        "invoice": "in_1",
        "payment": {"type": "payment_intent", "payment_intent": "pi_1"},
    }
    related = [
        payment_keys("charge.succeeded", charge),
        payment_keys("charge.refunded", charge),
        payment_keys("refund.created", refund),
        payment_keys("charge.refund.updated", refund),
        payment_keys("invoice_payment.paid", invoice_payment),
    ]
    assert all(keys & related[0] for keys in related), related
    assert payment_keys("refund.created", {"id": "re_2", "charge": "ch_2"}).isdisjoint(related[0])
    assert payment_keys("customer.updated", {"id": "cus_1"}) == set()

"""Pure mapping: Stripe's published examples (both shapes) -> ERP records, with realistic values."""

from __future__ import annotations

from datetime import UTC, date, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.billing import invoice_mapping, ledger, payment_mapping, revenue
from services.billing.ledger import LedgerFacts, PaymentFact
from services.billing.settings import BillingSettings, load_billing_settings
from services.common.errors import SettingsError
from tests.billing.builders import (
    COUPON,
    DISCOUNT,
    PRICE_ADDON,
    PRICE_PRO,
    SUBSCRIPTION,
    InvoiceSpec,
    LineSpec,
    charge_object,
    credit_note_object,
    invoice_object,
    invoice_payment_object,
    refund_object,
    ts,
)
from tests.support.stripe_events import fixture

POLICY = BillingSettings()
ITEMS = {PRICE_PRO: "SaaS-Pro-Seat"}


def coupon_spec(**changes: object) -> InvoiceSpec:
    spec = InvoiceSpec(
        lines=[
            LineSpec(),
            LineSpec(price=PRICE_ADDON, unit=1500, quantity=1, description="Priority support add-on"),
        ],
        percent_off=20,
        tax_bps=825,
    )
    for key, value in changes.items():
        setattr(spec, key, value)
    return spec


# -- Stripe's examples as published ----------------------------------------------------------------


def test_published_basil_invoice_maps_its_line_with_proration_from_parent() -> None:
    obj = fixture("invoice")
    inv = invoice_mapping.map_invoice(obj, item_map={}, billing=POLICY)
    assert inv.api_shape == "basil"
    assert inv.subscription_id == "subscription"  # parent.subscription_details.subscription
    assert (inv.subtotal, inv.total, inv.tax, inv.discount_total) == (1000, 1000, 0, 0)
    [line] = inv.lines
    assert line.kind == "item" and line.amount == 1000 and line.quantity == 1
    assert line.proration is True  # parent.invoice_item_details.proration
    assert line.stripe_price_id is None and line.erp_item_id == POLICY.default_item
    assert line.period_start == line.period_end == date(2024, 7, 26)
    assert invoice_mapping.invoice_problems(inv) == []


def test_published_legacy_invoice_maps_price_and_proration_flag() -> None:
    obj = fixture("invoice", legacy=True)
    inv = invoice_mapping.map_invoice(obj, item_map={"price_1PgafmB7WZ01zgkW02Hf9z6c": "Widget"}, billing=POLICY)
    assert inv.api_shape == "legacy" and inv.subscription_id is None
    [line] = inv.lines
    assert (line.erp_item_id, line.item_mapped, line.unit_amount, line.proration) == ("Widget", True, 1000, False)
    assert inv.unmapped_price_ids == ()
    assert invoice_mapping.invoice_problems(inv) == []


def test_published_line_items_agree_across_shapes() -> None:
    basil = fixture("line_item")
    legacy = fixture("line_item", legacy=True)
    basil["pricing"]["price_details"] = {"price": legacy["price"]["id"], "product": legacy["price"]["product"]}
    basil["pricing"]["unit_amount_decimal"] = "1000"
    basil["parent"]["invoice_item_details"]["proration"] = False
    assert (
        invoice_mapping.line_price_id(basil)
        == invoice_mapping.line_price_id(legacy)
        == "price_1PgafmB7WZ01zgkW02Hf9z6c"
    )
    assert invoice_mapping.line_proration(basil) is invoice_mapping.line_proration(legacy) is False
    basil["parent"] = {"type": "subscription_item_details", "subscription_item_details": {"proration": True}}
    assert invoice_mapping.line_proration(basil) is True


# -- a subscription invoice with a coupon, in both shapes ------------------------------------------


@pytest.mark.parametrize("shape", ["basil", "legacy"])
def test_subscription_invoice_with_coupon_and_tax(shape: str) -> None:
    spec = coupon_spec()
    obj = invoice_object(shape, spec)  # type: ignore[arg-type]
    inv = invoice_mapping.map_invoice(obj, item_map=ITEMS, billing=POLICY)
    assert inv.subscription_id == SUBSCRIPTION
    items = [line for line in inv.lines if line.kind == "item"]
    discounts = [line for line in inv.lines if line.kind == "discount"]
    assert [(x.erp_item_id, x.item_mapped, x.quantity, x.unit_amount, x.amount) for x in items] == [
        ("SaaS-Pro-Seat", True, 3, 4900, 14700),
        (POLICY.default_item, False, 1, 1500, 1500),
    ]
    assert inv.unmapped_price_ids == (PRICE_ADDON,)
    # 20% of 14700 and of 1500, negative, one discount line with the discount item.
    [disc] = discounts
    assert (disc.amount, disc.erp_item_id, disc.discount_id) == (-3240, POLICY.discount_item, DISCOUNT)
    assert disc.description == (f"Discount: {COUPON['name']}" if shape == "legacy" else f"Discount: {DISCOUNT}")
    assert [x.discount_amount for x in items] == [2940, 300]
    assert inv.tax == 1069  # 8.25% of 12960, as Stripe rounds it
    assert inv.total == 16200 - 3240 + 1069 == 14029
    assert invoice_mapping.invoice_problems(inv) == []
    assert items[0].period_start == date(2025, 6, 15) and items[0].period_end == date(2025, 7, 14)


def test_both_shapes_give_the_same_erp_lines() -> None:
    spec = coupon_spec()
    basil = invoice_mapping.map_invoice(invoice_object("basil", spec), item_map=ITEMS, billing=POLICY)
    legacy = invoice_mapping.map_invoice(invoice_object("legacy", spec), item_map=ITEMS, billing=POLICY)
    strip = [(x.kind, x.erp_item_id, x.amount, x.quantity, x.unit_amount, x.schedule) for x in basil.lines]
    assert strip == [(x.kind, x.erp_item_id, x.amount, x.quantity, x.unit_amount, x.schedule) for x in legacy.lines]
    assert (basil.total, basil.tax, basil.discount_total) == (legacy.total, legacy.tax, legacy.discount_total)


def test_non_posting_discount_reduces_recognised_revenue() -> None:
    inv = invoice_mapping.map_invoice(invoice_object("basil", coupon_spec()), item_map=ITEMS, billing=POLICY)
    pro = inv.lines[0]
    assert pro.recognized_amount == 14700 - 2940
    # 2025-06-15 .. 2025-07-14: 16 days in June, 14 in July.
    assert [(e.period, e.amount) for e in pro.schedule] == [(date(2025, 6, 1), 6272), (date(2025, 7, 1), 5488)]
    disc = inv.lines[-1]
    assert disc.schedule == () and disc.recognized_amount == 0 and disc.revenue_account is None


def test_posting_discount_posts_to_its_revenue_account() -> None:
    policy = POLICY.with_overrides(discount_posting="posting", discount_account="4910 Coupons")
    inv = invoice_mapping.map_invoice(invoice_object("basil", coupon_spec()), item_map=ITEMS, billing=policy)
    pro, disc = inv.lines[0], inv.lines[-1]
    assert pro.recognized_amount == 14700 and sum(e.amount for e in pro.schedule) == 14700
    assert disc.revenue_account == "4910 Coupons"
    assert [(e.period, e.amount) for e in disc.schedule] == [(date(2025, 6, 1), -3240)]


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("immediate", [(date(2025, 6, 1), 11760)]),
        ("by_period", [(date(2025, 6, 1), 5880), (date(2025, 7, 1), 5880)]),
        ("ratable_by_day", [(date(2025, 6, 1), 6272), (date(2025, 7, 1), 5488)]),
    ],
)
def test_revenue_rules(rule: str, expected: list[tuple[date, int]]) -> None:
    inv = invoice_mapping.map_invoice(
        invoice_object("basil", coupon_spec()), item_map=ITEMS, billing=POLICY.with_overrides(revenue_rule=rule)
    )
    assert [(e.period, e.amount) for e in inv.lines[0].schedule] == expected


def test_zero_decimal_currency_stays_in_whole_yen() -> None:
    spec = InvoiceSpec(currency="jpy", lines=[LineSpec(unit=9800, quantity=3, description="Team plan")], percent_off=15)
    inv = invoice_mapping.map_invoice(invoice_object("basil", spec), item_map={}, billing=POLICY)
    assert inv.currency == "jpy"
    assert [x.amount for x in inv.lines] == [29400, -4410]
    assert inv.total == 24990 and invoice_mapping.invoice_problems(inv) == []
    assert sum(e.amount for e in inv.lines[0].schedule) == 24990


def test_fractional_unit_price_is_kept_as_text_not_float() -> None:
    spec = InvoiceSpec(lines=[LineSpec(unit=1, quantity=1000, description="API calls")])
    obj = invoice_object("basil", spec)
    obj["lines"]["data"][0]["pricing"]["unit_amount_decimal"] = "0.5"
    obj["lines"]["data"][0]["amount"] = 500
    obj.update(subtotal=500, total=500, amount_due=500, amount_remaining=500)
    [line] = invoice_mapping.map_invoice(obj, item_map={}, billing=POLICY).lines
    assert (line.unit_amount, line.unit_amount_decimal, line.amount) == (0, "0.5", 500)


def test_truncated_lines_are_flagged_not_complete() -> None:
    spec = InvoiceSpec(lines=[LineSpec(unit=100 + i, quantity=1) for i in range(25)])
    inv = invoice_mapping.map_invoice(invoice_object("basil", spec), item_map={}, billing=POLICY)
    assert len(inv.lines) == 10 and not inv.lines_complete
    assert invoice_mapping.invoice_problems(inv) == ["lines incomplete: only the first page is known"]


def test_unbalanced_invoice_is_reported() -> None:
    obj = invoice_object("basil", coupon_spec())
    obj["total"] += 1
    assert "total" in invoice_mapping.invoice_problems(invoice_mapping.map_invoice(obj, item_map={}, billing=POLICY))[0]


# -- allocation and schedules ---------------------------------------------------------------------


@given(st.integers(-(10**9), 10**9), st.lists(st.integers(0, 10**6), min_size=1, max_size=40))
@settings(max_examples=200)
def test_allocate_loses_nothing_and_stays_within_a_unit(total: int, weights: list[int]) -> None:
    parts = revenue.allocate(total, weights)
    assert sum(parts) == total
    whole = sum(weights) or len(weights)
    effective = weights if sum(weights) else [1] * len(weights)
    for part, weight in zip(parts, effective, strict=True):
        exact_floor = abs(total) * weight // whole
        assert exact_floor <= abs(part) <= exact_floor + 1


@given(
    st.integers(-(10**8), 10**8),
    st.dates(date(2020, 1, 1), date(2030, 1, 1)),
    st.integers(0, 800),
    st.sampled_from(["immediate", "ratable_by_day", "by_period"]),
)
@settings(max_examples=200)
def test_every_schedule_sums_to_its_line(amount: int, start: date, days: int, rule: str) -> None:
    end = date.fromordinal(start.toordinal() + days)
    entries = revenue.revenue_schedule(amount, rule=rule, start=start, end=end, transaction_date=start)  # type: ignore[arg-type]
    assert sum(e.amount for e in entries) == amount
    assert all(e.period.day == 1 for e in entries)


# -- payments, refunds, credit notes ---------------------------------------------------------------


def test_invoice_payment_from_published_example() -> None:
    spec = coupon_spec()
    obj = invoice_payment_object(
        spec, 13229, payment_id="inpay_1RaQ6", intent="pi_3RaQ6", paid_at=ts("2025-06-15T01:02")
    )
    p = payment_mapping.payment_from_invoice_payment(obj, spec.created)
    assert p is not None
    assert (p.stripe_invoice_id, p.amount, p.currency, p.payment_intent_id, p.method) == (
        spec.invoice_id,
        13229,
        "usd",
        "pi_3RaQ6",
        "payment_intent",
    )
    obj["status"] = "open"
    assert payment_mapping.payment_from_invoice_payment(obj, spec.created) is None


def test_legacy_charge_pays_its_invoice_and_basil_charge_does_not() -> None:
    spec = coupon_spec()
    legacy = charge_object("legacy", spec, 14029, charge_id="ch_3RaQ7", intent="pi_3RaQ7", created=spec.created)
    p = payment_mapping.payment_from_charge(legacy)
    assert p is not None and (p.stripe_invoice_id, p.amount, p.method, p.priority) == (
        spec.invoice_id,
        14029,
        "card",
        2,
    )
    basil = charge_object("basil", spec, 14029, charge_id="ch_3RaQ7", intent="pi_3RaQ7", created=spec.created)
    assert payment_mapping.payment_from_charge(basil) is None


def test_legacy_paid_invoice_names_its_charge_or_out_of_band() -> None:
    spec = coupon_spec()
    obj = invoice_object("legacy", spec, status="paid", amount_paid=14029, charge="ch_3RaQ8")
    inv = invoice_mapping.map_invoice(obj, item_map={}, billing=POLICY)
    p = payment_mapping.payment_from_invoice(inv, obj, spec.created)
    assert p is not None and (p.stripe_payment_id, p.amount) == ("ch_3RaQ8", inv.total)
    obj.update(charge=None, paid_out_of_band=True)
    inv = invoice_mapping.map_invoice(obj, item_map={}, billing=POLICY)
    p = payment_mapping.payment_from_invoice(inv, obj, spec.created)
    assert p is not None and (p.stripe_payment_id, p.method) == (f"oob_{spec.invoice_id}", "out_of_band")


def test_refunds_listed_on_a_charge() -> None:
    spec = coupon_spec()
    refunds = [
        refund_object("re_1", 2000, charge="ch_9", intent="pi_9", currency="usd", created=spec.created + 10),
        refund_object("re_2", 500, charge="ch_9", intent="pi_9", currency="usd", created=spec.created + 20),
    ]
    obj = charge_object("legacy", spec, 14029, charge_id="ch_9", intent="pi_9", created=spec.created, refunds=refunds)
    mapped = payment_mapping.refunds_from_charge(obj)
    assert [(r.stripe_refund_id, r.amount, r.stripe_invoice_id, r.status_rank) for r in mapped] == [
        ("re_1", 2000, spec.invoice_id, 1),
        ("re_2", 500, spec.invoice_id, 1),
    ]


@pytest.mark.parametrize("shape", ["basil", "legacy"])
def test_credit_note_in_both_shapes(shape: str) -> None:
    spec = coupon_spec()
    obj = credit_note_object(
        shape, spec, note_id="cn_1RaQ9", amount=1500, created=spec.created, note_type="post_payment", refund="re_77"
    )  # type: ignore[arg-type]
    note = payment_mapping.map_credit_note(obj, UTC)
    assert (note.amount, note.refund_ids, note.applied_to, note.status_rank) == (1500, ("re_77",), "refund", 0)
    assert [(x.description, x.amount) for x in note.lines] == [("Service credit for downtime", 1500)]
    published = payment_mapping.map_credit_note(fixture("credit_note", legacy=shape == "legacy"), UTC)
    assert published.amount == 1690 and [x.amount for x in published.lines] == [1190, 500]
    assert published.applied_to == "invoice"


# -- ledger ---------------------------------------------------------------------------------------


def facts(**changes: object) -> LedgerFacts:
    base = LedgerFacts(
        total=10000,
        stripe_status="open",
        stripe_amount_paid=0,
        balance_applied=0,
        payments=(),
        invoice_credits=0,
        uncollectible_seen=False,
        uncollectible_at=None,
        write_off_enabled=False,
    )
    return LedgerFacts(**{**base.__dict__, **changes})  # type: ignore[arg-type]


def test_ledger_open_partial_and_paid() -> None:
    assert ledger.compute_ledger(facts()).erp_status == "open"
    partial = ledger.compute_ledger(facts(payments=(PaymentFact(4000, 1),), invoice_credits=1000))
    assert (partial.amount_remaining, partial.erp_status) == (5000, "open")
    paid = ledger.compute_ledger(facts(stripe_status="paid", payments=(PaymentFact(10000, 1),)))
    assert (paid.amount_remaining, paid.erp_status, paid.unattributed_paid) == (0, "paid_in_full", 0)


def test_paid_invoice_without_its_payment_object_is_not_counted_twice() -> None:
    early = ledger.compute_ledger(facts(stripe_status="paid", stripe_amount_paid=10000))
    late = ledger.compute_ledger(
        facts(stripe_status="paid", stripe_amount_paid=10000, payments=(PaymentFact(10000, 5),))
    )
    assert (early.amount_paid, early.unattributed_paid) == (10000, 10000)
    assert (late.amount_paid, late.unattributed_paid) == (10000, 0)


# -- the ledger as of a past day (AR ageing) ---------------------------------------------------

JAN_10, FEB_28, MAR_2, MAR_5 = ts("2026-01-10"), ts("2026-02-28"), ts("2026-03-02"), ts("2026-03-05")


def history(f: LedgerFacts, **changes: object) -> ledger.LedgerHistory:
    base = ledger.LedgerHistory(f, date(2026, 1, 10), (), paid_at=None, status_at=JAN_10)
    return ledger.LedgerHistory(**{**base.__dict__, **changes})  # type: ignore[arg-type]


def owed(h: ledger.LedgerHistory, day: str) -> int | None:
    state = ledger.ledger_as_of(h, date.fromisoformat(day))
    return None if state is None else (state.amount_remaining if state.erp_status == "open" else 0)


def test_a_payment_after_the_day_still_leaves_the_invoice_owed_on_it() -> None:
    paid = history(
        facts(stripe_status="paid", stripe_amount_paid=10000, payments=(PaymentFact(10000, MAR_5 + 3600),)),
        paid_at=MAR_5 + 3600,
        status_at=MAR_5 + 3600,
    )
    assert owed(paid, "2026-01-09") is None  # not yet invoiced
    assert owed(paid, "2026-02-28") == 10000  # the month-end ageing keeps it
    assert owed(paid, "2026-03-05") == 0  # paid during that day
    assert owed(paid, "2026-03-31") == 0
    out_of_band = history(facts(stripe_status="paid", stripe_amount_paid=10000), paid_at=MAR_5, status_at=MAR_5)
    assert (owed(out_of_band, "2026-03-04"), owed(out_of_band, "2026-03-05")) == (10000, 0)


def test_credits_voids_and_write_offs_count_from_their_day() -> None:
    credited = history(facts(invoice_credits=2500), credits=((date(2026, 2, 1), 2500),))
    assert (owed(credited, "2026-01-31"), owed(credited, "2026-02-01")) == (10000, 7500)
    # A credit note issued on Feb 1 and voided on Mar 2: it counted in between.
    credit_voided = history(facts(), voided_credits=((date(2026, 2, 1), 2500, MAR_2),))
    assert [owed(credit_voided, d) for d in ("2026-01-31", "2026-02-28", "2026-03-02")] == [10000, 7500, 10000]
    voided = history(facts(stripe_status="void"), status_at=MAR_2)
    assert (owed(voided, "2026-03-01"), owed(voided, "2026-03-02")) == (10000, 0)
    written_off = history(
        facts(stripe_status="uncollectible", uncollectible_seen=True, uncollectible_at=FEB_28, write_off_enabled=True),
        status_at=FEB_28,
    )
    assert (owed(written_off, "2026-02-27"), owed(written_off, "2026-02-28")) == (10000, 0)
    # Heard of (or backfilled) days after Stripe voided it: Stripe's voided_at decides the day.
    heard_late = history(facts(stripe_status="void"), status_at=MAR_5, voided_at=FEB_28)
    assert (owed(heard_late, "2026-02-27"), owed(heard_late, "2026-02-28"), owed(heard_late, "2026-03-04")) == (
        10000,
        0,
        0,
    )
    kept_open = history(facts(stripe_status="uncollectible", uncollectible_seen=True, uncollectible_at=FEB_28))
    assert owed(kept_open, "2026-03-31") == 10000  # no write-off here: still a receivable
    assert owed(history(facts(stripe_status="draft")), "2026-03-31") is None


_STATUSES = st.sampled_from(["open", "paid", "void", "uncollectible"])
_MOMENTS = st.integers(JAN_10, JAN_10 + 86400 * 400)


@given(
    status=_STATUSES,
    total=st.integers(0, 10**7),
    payments=st.lists(st.tuples(st.integers(0, 10**6), _MOMENTS), max_size=4),
    credits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 10**6)), max_size=3),
    stripe_paid=st.integers(0, 10**7),
    balance=st.integers(0, 10**5),
    marked=st.one_of(st.none(), _MOMENTS),
    paid_at=st.one_of(st.none(), _MOMENTS),
    voided_at=st.one_of(st.none(), _MOMENTS),
    voided_credits=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 10**6), _MOMENTS), max_size=2),
    status_at=_MOMENTS,
    write_off=st.booleans(),
)
@settings(max_examples=300, deadline=None)
def test_as_of_a_day_after_every_fact_is_the_ledger_itself(
    status: str,
    total: int,
    payments: list[tuple[int, int]],
    credits: list[tuple[int, int]],
    stripe_paid: int,
    balance: int,
    marked: int | None,
    paid_at: int | None,
    voided_at: int | None,
    voided_credits: list[tuple[int, int, int]],
    status_at: int,
    write_off: bool,
) -> None:
    dated = tuple((date(2026, 1, 10) + timedelta(days=d), amount) for d, amount in credits)
    f = facts(
        total=total,
        stripe_status=status,
        stripe_amount_paid=stripe_paid,
        balance_applied=balance,
        payments=tuple(PaymentFact(a, t) for a, t in payments),
        invoice_credits=sum(a for _, a in dated),
        uncollectible_seen=status == "uncollectible" or marked is not None,
        uncollectible_at=marked,
        write_off_enabled=write_off,
    )
    since_voided = tuple((date(2026, 1, 10) + timedelta(days=d), amount, at) for d, amount, at in voided_credits)
    h = history(
        f, credits=dated, paid_at=paid_at, status_at=status_at, voided_at=voided_at, voided_credits=since_voided
    )
    assert ledger.ledger_as_of(h, date(2027, 12, 31)) == ledger.compute_ledger(f)
    # and on no day does it owe more than the invoice's total less what was applied at finalising
    for day in (date(2026, 1, 10), date(2026, 6, 1), date(2026, 12, 31)):
        state = ledger.ledger_as_of(h, day)
        assert state is not None and state.amount_remaining <= max(0, total - balance)


def test_write_off_setting_off_leaves_uncollectible_open() -> None:
    state = ledger.compute_ledger(facts(stripe_status="uncollectible", uncollectible_seen=True))
    assert (state.erp_status, state.write_off, state.amount_remaining) == ("open", "none", 10000)


def test_write_off_then_collected_is_reversed_once() -> None:
    off = facts(stripe_status="uncollectible", uncollectible_seen=True, uncollectible_at=100, write_off_enabled=True)
    written = ledger.compute_ledger(off.__class__(**{**off.__dict__, "payments": (PaymentFact(3000, 50),)}))
    assert (written.erp_status, written.write_off, written.write_off_amount) == ("written_off", "active", 7000)
    assert (written.amount_remaining, written.credits_applied) == (0, 7000)
    collected = ledger.compute_ledger(
        off.__class__(
            **{
                **off.__dict__,
                "stripe_status": "paid",
                "stripe_amount_paid": 10000,
                "payments": (PaymentFact(3000, 50), PaymentFact(7000, 200)),
            }
        )
    )
    assert (collected.erp_status, collected.write_off, collected.write_off_amount) == ("paid_in_full", "reversed", 7000)
    assert (collected.amount_paid, collected.credits_applied, collected.amount_remaining) == (10000, 0, 0)


def test_erp_status_only_moves_forward() -> None:
    assert ledger.forward_status("paid_in_full", "open") == "paid_in_full"
    assert ledger.forward_status("written_off", "paid_in_full") == "paid_in_full"
    assert ledger.forward_status(None, "open") == "open"


# -- settings -------------------------------------------------------------------------------------


def test_billing_settings_are_read_and_validated() -> None:
    policy = load_billing_settings(
        {
            "SYNCMESH_BILLING_WRITE_OFF": "true",
            "SYNCMESH_BILLING_CREDIT_HOLD": "yes",
            "SYNCMESH_BILLING_DISCOUNT_ITEMS": "posting",
            "SYNCMESH_BILLING_REVENUE_RULE": "by-period",
            "SYNCMESH_BILLING_DEFAULT_ITEM": "MISC",
        }
    )
    assert (policy.write_off_uncollectible, policy.credit_hold, policy.release_hold_on_pay) == (True, True, True)
    assert (policy.discount_posting, policy.revenue_rule, policy.default_item) == ("posting", "by_period", "MISC")
    assert load_billing_settings({}) == BillingSettings()
    for name, value in [
        ("SYNCMESH_BILLING_WRITE_OFF", "maybe"),
        ("SYNCMESH_BILLING_REVENUE_RULE", "monthly"),
        ("SYNCMESH_BILLING_DISCOUNT_ITEMS", "sometimes"),
        ("SYNCMESH_BILLING_DEFAULT_ITEM", "a,b"),
    ]:
        with pytest.raises(SettingsError, match=name):
            load_billing_settings({name: value})


def test_deleted_draft_is_voided_in_the_erp() -> None:
    obj = {**invoice_object("basil", coupon_spec(), status="draft"), "deleted": True}
    inv = invoice_mapping.map_invoice(obj, item_map={}, billing=POLICY)
    assert (inv.stripe_status, inv.status_rank) == ("deleted", 4)
    state = ledger.compute_ledger(facts(stripe_status=inv.stripe_status, total=inv.total))
    assert (state.erp_status, state.amount_remaining) == ("voided", 0)


# -- every line: quantity x unit amount = amount -----------------------------------------------------


@pytest.mark.parametrize("shape", ["basil", "legacy"])
@pytest.mark.parametrize(
    ("quantity", "amount", "unit", "decimal"),
    [(1, -1730, -1730, None), (3, -1730, -577, "-576.666666666667"), (2, 3100, 1550, None)],
)
def test_a_proration_line_is_rated_by_its_own_amount(shape, quantity, amount, unit, decimal) -> None:
    """A proration charges part of a period: its amount is not the price times the quantity, so
    the ERP line takes amount / quantity as its rate, never the price's 29.00 beside -17.30."""
    spec = InvoiceSpec(lines=[LineSpec(unit=2900, quantity=quantity, proration=True)])
    obj = invoice_object(shape, spec)
    obj["lines"]["data"][0]["amount"] = amount
    [line] = invoice_mapping.map_invoice(obj, item_map=ITEMS, billing=POLICY).lines
    assert line.proration is True
    assert (line.quantity, line.unit_amount, line.unit_amount_decimal, line.amount) == (quantity, unit, decimal, amount)
    exact = Decimal(line.unit_amount if decimal is None else decimal)
    assert abs(quantity * exact - amount) < Decimal("1e-9")


@pytest.mark.parametrize("shape", ["basil", "legacy"])
def test_every_mapped_line_multiplies_out(shape) -> None:
    """quantity x unit amount = amount on every line an ERP receives, in both API shapes."""
    inv = invoice_mapping.map_invoice(invoice_object(shape, coupon_spec()), item_map=ITEMS, billing=POLICY)
    items = [x for x in inv.lines if x.kind == "item"]
    assert items and all(x.quantity * x.unit_amount == x.amount for x in items if x.unit_amount_decimal is None)

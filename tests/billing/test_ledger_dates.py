"""Ledger dates (issue 16, items 1 and 5): service periods are `[start, end)`, every date is a day
in the ledger's time zone (SYNCMESH_LEDGER_TIMEZONE), and holds, write-off memos and payments are
dated by Stripe's own moments, whatever order, however late and however often the events come.

The integration tests run the billing consumer over real NATS and PostgreSQL in both API shapes,
with the deliveries shuffled and duplicated (a redelivery of the same event id, and a copy under
a new event id), and end with two replays of the stream."""

from __future__ import annotations

import calendar
import copy
import random
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from syncmesh.billing.v1 import billing_service_pb2 as pb

from ops.replay import replay
from services.billing import decide, facts, holds, invoice_mapping, payment_mapping, revenue
from services.billing.app import make_definition
from services.billing.holds import HoldRequest
from services.billing.ledger import LedgerFacts, PaymentFact
from services.billing.records import StoredLedger
from services.billing.settings import BillingSettings, load_billing_settings
from services.billing.stripe_fields import service_days
from services.common.errors import SettingsError
from tests.billing.builders import (
    CUSTOMER,
    PRICE_ADDON,
    InvoiceSpec,
    LineSpec,
    Shape,
    charge_object,
    invoice_object,
    invoice_payment_object,
    stripe_event,
    subscription_object,
    ts,
)
from tests.billing.conftest import Billing, StartBilling, assert_invariants, publish
from tests.billing.test_decide import stored

BERLIN = ZoneInfo("Europe/Berlin")
ZONES: list[tzinfo] = [UTC, BERLIN, ZoneInfo("America/Los_Angeles"), ZoneInfo("Asia/Kolkata")]


def at(zone: tzinfo, text: str) -> int:
    """Unix seconds of a wall-clock time in a zone."""
    return int(datetime.fromisoformat(text).replace(tzinfo=zone).timestamp())


# -- pure: periods, the schedule, the allocation, the setting ------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    year=st.integers(2020, 2030),
    month=st.integers(1, 12),
    day=st.integers(1, 28),
    seconds=st.integers(0, 86399),
    zone=st.sampled_from(ZONES),
)
def test_a_monthly_period_has_as_many_days_as_its_month(
    year: int, month: int, day: int, seconds: int, zone: tzinfo
) -> None:
    start_local = datetime(year, month, day, tzinfo=zone) + timedelta(seconds=seconds)
    nxt = (year + 1, 1) if month == 12 else (year, month + 1)
    end_local = start_local.replace(year=nxt[0], month=nxt[1])
    first, last = service_days(int(start_local.timestamp()), int(end_local.timestamp()), zone)
    assert first is not None and last is not None
    assert first == start_local.date() and last == end_local.date() - timedelta(days=1)
    assert (last - first).days + 1 == calendar.monthrange(year, month)[1]


def test_a_period_ends_the_day_before_its_end_instant() -> None:
    # A subscription anchored at 13:45: the day of `end` belongs to the next period.
    assert service_days(ts("2025-06-15T13:45"), ts("2025-07-15T13:45"), UTC) == (date(2025, 6, 15), date(2025, 7, 14))
    # The whole of February, whatever the year.
    assert service_days(ts("2024-02-01"), ts("2024-03-01"), UTC) == (date(2024, 2, 1), date(2024, 2, 29))
    # A period inside one day, or without an end, is that day.
    assert service_days(ts("2025-06-15T01:00"), ts("2025-06-15T02:00"), UTC) == (date(2025, 6, 15),) * 2
    assert service_days(ts("2025-06-15T01:00"), None, UTC) == (date(2025, 6, 15),) * 2
    assert service_days(None, ts("2025-06-15"), UTC) == (None, None)
    # Midnight in Berlin is the evening before in UTC.
    berlin_march = (at(BERLIN, "2025-03-01T00:00"), at(BERLIN, "2025-04-01T00:00"))
    assert service_days(*berlin_march, BERLIN) == (date(2025, 3, 1), date(2025, 3, 31))
    assert service_days(*berlin_march, UTC) == (date(2025, 2, 28), date(2025, 3, 30))


def test_a_mapped_line_spreads_over_exactly_its_service_days() -> None:
    spec = InvoiceSpec(
        invoice_id="in_1RaQPeriodUnit00001",
        lines=[LineSpec(unit=1000, quantity=3, start=ts("2025-06-15T13:45"), end=ts("2025-07-15T13:45"))],
    )
    inv = invoice_mapping.map_invoice(invoice_object("basil", spec), item_map={}, billing=BillingSettings())
    [line] = inv.lines
    assert (line.period_start, line.period_end) == (date(2025, 6, 15), date(2025, 7, 14))
    # 30 days of service: 16 in June and 14 in July (not 16/31 and 15/31).
    assert [(e.period, e.amount) for e in line.schedule] == [(date(2025, 6, 1), 1600), (date(2025, 7, 1), 1400)]
    berlin = invoice_mapping.map_invoice(
        invoice_object("basil", spec), item_map={}, billing=BillingSettings(ledger_zone=BERLIN)
    )
    assert berlin.lines[0].schedule == line.schedule  # 13:45 UTC is the same day in Berlin


@pytest.mark.parametrize("shape", ["basil", "legacy"])
def test_an_invoice_is_dated_by_stripes_accounting_date_in_the_ledger_zone(shape: Shape) -> None:
    spec = InvoiceSpec(invoice_id="in_1RaQDatedUnit000001", created=ts("2025-06-30T21:30"))
    obj = invoice_object(shape, spec)  # effective and finalized an hour after it was drafted
    utc = invoice_mapping.map_invoice(obj, item_map={}, billing=BillingSettings())
    berlin = invoice_mapping.map_invoice(obj, item_map={}, billing=BillingSettings(ledger_zone=BERLIN))
    assert (utc.transaction_date, berlin.transaction_date) == (date(2025, 6, 30), date(2025, 7, 1))
    del obj["effective_at"]  # a payload without it: finalized_at, not the draft's created
    obj["status_transitions"]["finalized_at"] = ts("2025-07-02T08:00")
    assert invoice_mapping.map_invoice(obj, item_map={}, billing=BillingSettings()).transaction_date == date(2025, 7, 2)
    # The invoice's own period is [start, end) too.
    assert (utc.period_start, utc.period_end) == (date(2025, 5, 31), date(2025, 6, 29))


@settings(max_examples=300, deadline=None)
@given(
    amount=st.integers(-(10**9), 10**9),
    start=st.dates(date(2020, 1, 1), date(2030, 12, 31)),
    days=st.integers(1, 800),
)
def test_each_months_share_is_within_one_unit_of_its_days_and_the_schedule_sums_exactly(
    amount: int, start: date, days: int
) -> None:
    end = start + timedelta(days=days - 1)
    schedule = revenue.revenue_schedule(amount, rule="ratable_by_day", start=start, end=end, transaction_date=start)
    assert sum(e.amount for e in schedule) == amount
    assert schedule == revenue.revenue_schedule(
        amount, rule="ratable_by_day", start=start, end=end, transaction_date=start
    )
    by_month = {e.period: e.amount for e in schedule}
    month = revenue.month_start(start)
    covered = 0
    while month <= end:
        last = month.replace(day=calendar.monthrange(month.year, month.month)[1])
        in_month = (min(last, end) - max(month, start)).days + 1
        covered += in_month
        # |share - amount * in_month / days| < 1, in integers.
        assert abs(by_month.get(month, 0) * days - amount * in_month) < days
        month = last + timedelta(days=1)
    assert covered == days


def test_allocation_is_largest_remainder_with_ties_to_the_earlier_part() -> None:
    assert revenue.allocate(100, [1, 1, 1]) == [34, 33, 33]
    assert revenue.allocate(-100, [1, 1, 1]) == [-34, -33, -33]
    assert revenue.allocate(5, [1, 2]) == [2, 3]  # remainders 2/3 and 1/3: the unit goes to the first
    assert revenue.allocate(7, [0, 0]) == [4, 3]
    assert revenue.allocate(3100, [16, 15]) == [1600, 1500]
    with pytest.raises(ValueError):
        revenue.allocate(1, [])


def test_ledger_timezone_setting_is_validated() -> None:
    assert load_billing_settings({}).ledger_zone is UTC
    assert load_billing_settings({"SYNCMESH_LEDGER_TIMEZONE": "Europe/Berlin"}).ledger_zone == BERLIN
    for bad in ("Mars/Olympus_Mons", "../../etc/passwd", "Europe/"):
        with pytest.raises(SettingsError) as raised:
            load_billing_settings({"SYNCMESH_LEDGER_TIMEZONE": bad})
        message = str(raised.value)
        assert "SYNCMESH_LEDGER_TIMEZONE" in message and "\n" not in message


# -- pure: where each date comes from -------------------------------------------------------------------


def _stored(**changes: Any) -> StoredLedger:
    """An uncollectible invoice with write-offs on (`test_decide.stored` otherwise); a change
    naming a `LedgerFacts` field goes to the facts."""
    fact_changes = {k: changes.pop(k) for k in list(changes) if k in LedgerFacts.__dataclass_fields__}
    base = stored(
        erp_invoice_id="INV-1",
        stripe_customer_id=CUSTOMER,
        transaction_date=date(2025, 6, 1),
        uncollectible_notified_on=date(2026, 12, 7),
    )
    uncollectible = {"stripe_status": "uncollectible", "uncollectible_seen": True, "write_off_enabled": True}
    ledger_facts = replace(base.facts, **{**uncollectible, **fact_changes})
    return replace(base, facts=ledger_facts, **changes)


def test_a_write_off_is_dated_by_stripe_and_by_the_notification_only_as_a_last_resort() -> None:
    policy = BillingSettings(write_off_uncollectible=True, ledger_zone=BERLIN)
    marked = at(BERLIN, "2025-07-05T00:30")  # 2025-07-04 in UTC
    memo = decide.settle(_stored(uncollectible_at=marked, uncollectible_event_at=marked + 99999), policy).write_off
    assert memo is not None and (memo.memo_date, memo.date_source) == (date(2025, 7, 5), "stripe_transition")
    memo = decide.settle(_stored(uncollectible_event_at=marked), policy).write_off
    assert memo is not None and (memo.memo_date, memo.date_source) == (date(2025, 7, 5), "stripe_event")
    memo = decide.settle(_stored(), policy).write_off
    assert memo is not None and (memo.memo_date, memo.date_source) == (date(2026, 12, 7), "notified")
    assert "notified" in memo.memo


def test_a_hold_is_released_when_stripe_says_the_invoice_was_paid_or_voided() -> None:
    policy = BillingSettings(credit_hold=True)
    paid = dict(stripe_status="paid", stripe_amount_paid=1000, uncollectible_seen=False, has_active_holds=True)
    s = decide.settle(_stored(**paid, paid_at=5000, status_at=9000, payments=(PaymentFact(1000, 4000),)), policy)
    assert (s.release_at, s.release_date_source) == (5000, "stripe_transition")
    s = decide.settle(_stored(**{**paid, "stripe_status": "open"}, payments=(PaymentFact(1000, 4000),)), policy)
    assert (s.release_at, s.release_date_source) == (4000, "stripe_transition")  # its payment's moment
    void = dict(stripe_status="void", uncollectible_seen=False, has_released_holds=True, status_at=9000)
    s = decide.settle(_stored(**void, voided_at=7000), policy)
    assert (s.release_at, s.release_date_source) == (7000, "stripe_transition")
    s = decide.settle(_stored(**void), policy)
    assert (s.release_at, s.release_date_source) == (9000, "stripe_event")


def test_a_payment_is_dated_by_stripes_paid_at_else_by_its_event_never_by_the_invoices_creation() -> None:
    spec = InvoiceSpec(invoice_id="in_1RaQPaidUnit0000001", created=ts("2025-06-01"))
    obj = invoice_payment_object(spec, 4900, payment_id="inpay_1", intent="pi_1", paid_at=ts("2025-06-03T12:00"))
    paid = payment_mapping.payment_from_invoice_payment(obj, ts("2025-06-09"))
    assert paid is not None and (paid.paid_at, paid.date_source) == (ts("2025-06-03T12:00"), "stripe_transition")
    obj["status_transitions"]["paid_at"] = None
    paid = payment_mapping.payment_from_invoice_payment(obj, ts("2025-06-09"))
    assert paid is not None and (paid.paid_at, paid.date_source) == (ts("2025-06-09"), "stripe_event")
    legacy = invoice_object("legacy", spec, status="paid", amount_paid=14700, charge="ch_1")
    legacy["status_transitions"]["paid_at"] = None
    inv = invoice_mapping.map_invoice(legacy, item_map={}, billing=BillingSettings())
    paid = payment_mapping.payment_from_invoice(inv, legacy, ts("2025-06-09"))
    assert paid is not None and (paid.paid_at, paid.date_source) == (ts("2025-06-09"), "stripe_event")


def test_a_subscription_hold_is_dated_by_its_cancellation_else_its_event() -> None:
    spec = InvoiceSpec(invoice_id="in_1RaQSubHoldUnit0001")
    unpaid = subscription_object(spec, status="unpaid", latest_invoice=spec.invoice_id)
    hold = holds.hold_from_subscription(unpaid, "customer.subscription.updated", ts("2025-07-01"))
    assert hold is not None and (hold.placed_at, hold.date_source) == (ts("2025-07-01"), "stripe_event")
    cancelled = subscription_object(spec, status="canceled", latest_invoice=spec.invoice_id)
    cancelled.update(canceled_at=ts("2025-06-30T22:00"), cancellation_details={"reason": "payment_failed"})
    hold = holds.hold_from_subscription(cancelled, "customer.subscription.deleted", ts("2025-07-01"))
    assert hold is not None and (hold.placed_at, hold.date_source) == (ts("2025-06-30T22:00"), "stripe_transition")


def test_the_earliest_cause_dates_a_hold_whatever_order_they_come_in() -> None:
    early = HoldRequest(
        CUSTOMER, "in_1", "subscription unpaid", cause_rank=2, placed_at=100, date_source="stripe_event"
    )
    late = HoldRequest(CUSTOMER, "in_1", "final failure", cause_rank=1, placed_at=200, date_source="stripe_event")
    for order in ([early, late], [late, early], [late, early, late, early]):
        fold = facts.FactsFold(facts.StoredFacts())
        for hold in order:
            fold.place_hold(hold)
        assert fold.holds[CUSTOMER, "in_1"] == (1, "final failure")
        assert fold.hold_times[CUSTOMER, "in_1"] == (100, "stripe_event")
    # A hold stored with the mesh's clock takes Stripe's moment, even a later one.
    stored = facts.StoredFacts(
        holds={(CUSTOMER, "in_1"): (1, "final failure")}, hold_times={(CUSTOMER, "in_1"): (50, "mesh_clock")}
    )
    fold = facts.FactsFold(stored)
    fold.place_hold(late)
    assert fold.hold_times[CUSTOMER, "in_1"] == (200, "stripe_event") and fold.holds_changed


# -- through NATS and PostgreSQL ------------------------------------------------------------------------


async def deliver(billing: Billing, events: list[dict[str, Any]], seed: int) -> None:
    """Every event at least once, shuffled: some redelivered under the same event id (the
    consumer drops the copy), one re-sent under a new event id (applied again)."""
    rng = random.Random(seed)
    copies: list[tuple[dict[str, Any], str]] = [(e, e["id"]) for e in events]
    copies += [(e, f"{e['id']}-redelivered") for e in rng.sample(events, k=max(1, len(events) // 2))]
    resent = copy.deepcopy(rng.choice(events))
    resent["id"] = f"{resent['id']}_resent"
    copies.append((resent, resent["id"]))
    rng.shuffle(copies)
    for evt, msg_id in copies:
        await publish(billing.runtime.bus, evt, msg_id=msg_id)
    await billing.drained(len(copies))


def _ids(events: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    for n, evt in enumerate(events):
        evt["id"] = f"evt_{prefix}_{n:02d}"
    return events


def paid_lifecycle(
    shape: Shape, spec: InvoiceSpec, *, paid_at: int, prefix: str, failed_at: int | None = None
) -> list[dict[str, Any]]:
    """Drafted, finalized, (finally failed,) paid: the paid events come a little after Stripe's
    paid_at, as webhooks do, so a date taken from the event rather than the transition shows."""
    total = sum(line.unit * line.quantity for line in spec.lines)
    paid = invoice_object(shape, spec, status="paid", amount_paid=total, charge=f"ch_{prefix}")
    paid["status_transitions"]["paid_at"] = paid_at
    events = [
        stripe_event("invoice.created", invoice_object(shape, spec, status="draft"), created=spec.created, shape=shape),
        stripe_event("invoice.finalized", invoice_object(shape, spec), created=spec.created + 3600, shape=shape),
        stripe_event("invoice.paid", paid, created=paid_at + 7, shape=shape),
    ]
    if failed_at is not None:
        final = invoice_object(shape, spec, attempt_count=4, next_payment_attempt=None)
        events.append(stripe_event("invoice.payment_failed", final, created=failed_at, shape=shape))
    if shape == "basil":
        payment = invoice_payment_object(
            spec, total, payment_id=f"inpay_{prefix}", intent=f"pi_{prefix}", paid_at=paid_at
        )
        events.append(stripe_event("invoice_payment.paid", payment, created=paid_at + 9, shape=shape))
    else:
        charge = charge_object(shape, spec, total, charge_id=f"ch_{prefix}", intent=f"pi_{prefix}", created=paid_at)
        events.append(stripe_event("charge.succeeded", charge, created=paid_at + 9, shape=shape))
    return _ids(events, prefix)


async def _schedule(conn: asyncpg.Connection, invoice_id: str) -> dict[int, list[tuple[date, int]]]:
    rows = await conn.fetch(
        "SELECT line_no, period, amount FROM revenue_schedule WHERE stripe_invoice_id = $1 ORDER BY line_no, period",
        invoice_id,
    )
    out: dict[int, list[tuple[date, int]]] = {}
    for r in rows:
        out.setdefault(r["line_no"], []).append((r["period"], r["amount"]))
    return out


@pytest.mark.parametrize("seed", [1, 2])
@pytest.mark.parametrize("shape", ["basil", "legacy"])
async def test_a_monthly_period_gets_exactly_its_months_days(
    start_billing: StartBilling, shape: Shape, seed: int
) -> None:
    billing = await start_billing(BillingSettings())
    spec = InvoiceSpec(
        invoice_id=f"in_1RaQPeriod{shape[:3]}{seed:05d}",
        created=ts("2025-07-15T13:45"),
        lines=[
            # Anchored at 13:45 on the 15th: June 15 .. July 14, 30 days.
            LineSpec(unit=4900, quantity=3, start=ts("2025-06-15T13:45"), end=ts("2025-07-15T13:45")),
            # The calendar month of February 2024: 29 days, all of them in February.
            LineSpec(
                price=PRICE_ADDON,
                unit=2900,
                quantity=1,
                description="Add-on",
                start=ts("2024-02-01"),
                end=ts("2024-03-01"),
            ),
        ],
    )
    await deliver(billing, paid_lifecycle(shape, spec, paid_at=spec.created + 5000, prefix=f"per{shape}{seed}"), seed)
    invoice = (await billing.stub.GetInvoice(pb.GetInvoiceRequest(invoice_id=spec.invoice_id))).invoice
    assert [(line.period_start, line.period_end) for line in invoice.lines] == [
        ("2025-06-15", "2025-07-14"),
        ("2024-02-01", "2024-02-29"),
    ]
    conn = await billing.db()
    try:
        await assert_invariants(conn, spec.invoice_id)  # every line's schedule sums exactly to the line
        assert await _schedule(conn, spec.invoice_id) == {
            1: [(date(2025, 6, 1), 14700 * 16 // 30), (date(2025, 7, 1), 14700 * 14 // 30)],
            2: [(date(2024, 2, 1), 2900)],
        }
    finally:
        await conn.close()
    schedule = await billing.stub.GetRevenueSchedule(pb.GetRevenueScheduleRequest(invoice_id=spec.invoice_id))
    assert [[(e.period, e.amount.amount_minor) for e in line.entries] for line in schedule.lines] == [
        [("2025-06-01", 7840), ("2025-07-01", 6860)],
        [("2024-02-01", 2900)],
    ]


@pytest.mark.parametrize("shape", ["basil", "legacy"])
async def test_a_non_utc_ledger_zone_dates_boundary_events_in_that_zone(
    start_billing: StartBilling, shape: Shape
) -> None:
    billing = await start_billing(BillingSettings(ledger_zone=BERLIN))
    # Invoiced at 23:30 UTC on February 28th (March 1st in Berlin) for March in Berlin, paid at
    # 22:30 UTC on March 31st (April 1st in Berlin, summer time).
    created = at(BERLIN, "2025-03-01T00:30") - 3600
    spec = InvoiceSpec(
        invoice_id=f"in_1RaQBerlin{shape[:3]}00001",
        created=created,
        lines=[
            LineSpec(unit=3100, quantity=1, start=at(BERLIN, "2025-03-01T00:00"), end=at(BERLIN, "2025-04-01T00:00"))
        ],
    )
    paid_at = at(BERLIN, "2025-04-01T00:30")
    await deliver(billing, paid_lifecycle(shape, spec, paid_at=paid_at, prefix=f"ber{shape}"), 3)
    invoice = (await billing.stub.GetInvoice(pb.GetInvoiceRequest(invoice_id=spec.invoice_id))).invoice
    assert invoice.transaction_date == "2025-03-01"
    assert [(line.period_start, line.period_end) for line in invoice.lines] == [("2025-03-01", "2025-03-31")]
    conn = await billing.db()
    try:
        assert await _schedule(conn, spec.invoice_id) == {1: [(date(2025, 3, 1), 3100)]}
        await assert_invariants(conn, spec.invoice_id)
    finally:
        await conn.close()
    [payment] = (await billing.stub.ListPayments(pb.ListPaymentsRequest(invoice_id=spec.invoice_id))).payments
    assert (payment.payment_date, payment.date_source) == ("2025-04-01", "stripe_transition")

    async def owed(day: str) -> int:
        request = pb.GetCustomerBalanceRequest(stripe_customer_id=spec.customer, as_of=day)
        return sum(b.open.amount_minor for b in (await billing.stub.GetCustomerBalance(request)).balances)

    # At the end of March 31st in Berlin it was still owed; paid on April 1st there.
    assert (await owed("2025-02-28"), await owed("2025-03-31"), await owed("2025-04-01")) == (0, 3100, 0)


async def _dates(conn: asyncpg.Connection) -> dict[str, list[tuple[Any, ...]]]:
    """Every date the ledger keeps, with where it came from."""
    return {
        "holds": [
            tuple(r)
            for r in await conn.fetch(
                "SELECT stripe_invoice_id, placed_at, placed_date_source, released_at, released_date_source "
                "FROM credit_holds ORDER BY 1"
            )
        ],
        "memos": [
            tuple(r)
            for r in await conn.fetch("SELECT memo_key, memo_date, date_source, status FROM credit_memos ORDER BY 1")
        ],
        "payments": [
            tuple(r)
            for r in await conn.fetch(
                "SELECT stripe_payment_id, paid_at, paid_on, date_source FROM payments ORDER BY 1"
            )
        ],
        "invoices": [
            tuple(r)
            for r in await conn.fetch(
                "SELECT stripe_invoice_id, transaction_date, period_start, period_end, uncollectible_at, "
                "uncollectible_event_at FROM invoices ORDER BY 1"
            )
        ],
        "lines": [
            tuple(r)
            for r in await conn.fetch(
                "SELECT stripe_invoice_id, line_no, period_start, period_end FROM invoice_lines ORDER BY 1, 2"
            )
        ],
    }


def _utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


@pytest.mark.parametrize("seed", [4, 5])
@pytest.mark.parametrize("shape", ["basil", "legacy"])
async def test_holds_write_offs_and_payments_carry_stripes_dates_and_replays_keep_them(
    start_billing: StartBilling, shape: Shape, seed: int
) -> None:
    policy = BillingSettings(credit_hold=True, write_off_uncollectible=True)
    billing = await start_billing(policy)
    t0 = ts("2025-06-15T10:00")
    day = 86400

    # A final payment failure puts the customer on hold; Stripe's paid_at releases it.
    held = InvoiceSpec(invoice_id=f"in_1RaQHeld{shape[:3]}{seed:07d}", created=t0)
    failed_at, paid_at = t0 + 14 * day + 123, t0 + 16 * day + 77
    events = paid_lifecycle(shape, held, paid_at=paid_at, failed_at=failed_at, prefix=f"held{shape}{seed}")

    # Marked uncollectible by Stripe (a transition time), the event a minute later, and a
    # later update of the same state.
    marked = InvoiceSpec(invoice_id=f"in_1RaQMark{shape[:3]}{seed:07d}", created=t0, number="A1B2C3D4-0002")
    marked_at = ts("2025-07-05T23:59:30")
    uncollectible = invoice_object(shape, marked, status="uncollectible", attempt_count=4)
    uncollectible["status_transitions"]["marked_uncollectible_at"] = marked_at
    events += _ids(
        [
            stripe_event("invoice.finalized", invoice_object(shape, marked), created=t0 + 3600, shape=shape),
            stripe_event("invoice.marked_uncollectible", uncollectible, created=marked_at + 60, shape=shape),
            stripe_event("invoice.updated", uncollectible, created=marked_at + 3 * day, shape=shape),
        ],
        f"mark{shape}{seed}",
    )

    # Closed without a transition time (as an older invoice forgiven): the first event dates it.
    forgiven = InvoiceSpec(invoice_id=f"in_1RaQForg{shape[:3]}{seed:07d}", created=t0, number="A1B2C3D4-0003")
    closed_at = ts("2025-07-20T08:00")
    closed = invoice_object(shape, forgiven, status="uncollectible", attempt_count=4)
    events += _ids(
        [
            stripe_event("invoice.finalized", invoice_object(shape, forgiven), created=t0 + 3600, shape=shape),
            stripe_event("invoice.marked_uncollectible", closed, created=closed_at, shape=shape),
            stripe_event("invoice.updated", closed, created=closed_at + 2 * day, shape=shape),
        ],
        f"forg{shape}{seed}",
    )
    await deliver(billing, events, seed)

    [hold] = (await billing.stub.ListCreditHolds(pb.ListCreditHoldsRequest(stripe_customer_id=CUSTOMER))).holds
    assert (hold.stripe_invoice_id, hold.active) == (held.invoice_id, False)
    assert (hold.placed_at, hold.placed_date_source) == (_utc(failed_at).isoformat(), "stripe_event")
    assert (hold.released_at, hold.released_date_source) == (_utc(paid_at).isoformat(), "stripe_transition")

    memos = (await billing.stub.ListCreditMemos(pb.ListCreditMemosRequest(stripe_customer_id=CUSTOMER))).credit_memos
    assert sorted((m.source_id, m.memo_date, m.date_source, m.status) for m in memos) == [
        (f"wo_{forgiven.invoice_id}", "2025-07-20", "stripe_event", "issued"),
        (f"wo_{marked.invoice_id}", "2025-07-05", "stripe_transition", "issued"),
    ]
    [payment] = (await billing.stub.ListPayments(pb.ListPaymentsRequest(invoice_id=held.invoice_id))).payments
    assert (payment.payment_date, payment.date_source) == (_utc(paid_at).date().isoformat(), "stripe_transition")

    # The ageing writes each invoice off on its memo's day, not before.
    async def owed(as_of: str) -> int:
        request = pb.GetCustomerBalanceRequest(stripe_customer_id=CUSTOMER, as_of=as_of)
        return sum(b.open.amount_minor for b in (await billing.stub.GetCustomerBalance(request)).balances)

    total = 3 * 4900
    assert await owed("2025-06-30") == 3 * total  # all three owed
    assert await owed("2025-07-04") == 2 * total  # one paid on July 1st
    assert await owed("2025-07-05") == total  # one written off
    assert await owed("2025-07-19") == total
    assert await owed("2025-07-20") == 0

    conn = await billing.db()
    try:
        for invoice_id in (held.invoice_id, marked.invoice_id, forgiven.invoice_id):
            await assert_invariants(conn, invoice_id)
        before = await _dates(conn)
    finally:
        await conn.close()

    # Replaying the stream twice gives the same dates, and changes nothing at all.
    for _ in range(2):
        report = await replay(make_definition(policy), billing.settings, billing.runtime.bus)
        assert not report.failures and report.changed_rows == 0, report.lines()
        conn = await billing.db()
        try:
            assert await _dates(conn) == before
        finally:
            await conn.close()

"""Invoice lifecycles through real NATS and PostgreSQL (and, for one, the real gateway), read back
over gRPC, with the ledger's invariants checked after each."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import aiohttp
import grpc
import pytest
from syncmesh.billing.v1 import billing_service_pb2 as pb

from gateway.app import Gateway
from services.billing.settings import BillingSettings
from services.common.settings import Settings
from tests.billing.builders import (
    PRICE_ADDON,
    PRICE_PRO,
    InvoiceSpec,
    LineSpec,
    all_lines,
    charge_object,
    credit_note_object,
    invoice_object,
    invoice_payment_object,
    refund_object,
    stripe_event,
    subscription_object,
)
from tests.billing.conftest import StartBilling, assert_invariants, stripe_lines_server
from tests.conftest import eventually
from tests.support.signing import signed_request

T0 = 1_750_000_000  # 2025-06-15T15:06:40Z


def coupon_spec(invoice_id: str = "in_1RaQ5pB7WZ01zgkWCoupon01") -> InvoiceSpec:
    return InvoiceSpec(
        invoice_id=invoice_id,
        lines=[LineSpec(), LineSpec(price=PRICE_ADDON, unit=1500, quantity=1, description="Priority support")],
        percent_off=20,
        tax_bps=825,
    )


async def post_webhook(gateway: Gateway, evt: dict) -> None:
    body, headers = signed_request(evt)
    url = f"http://127.0.0.1:{gateway.port}/webhooks/stripe"
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as resp:
        assert resp.status == 200, await resp.text()


async def test_subscription_invoice_with_coupon_paid_then_refunded_twice_through_the_gateway(
    start_billing: StartBilling, settings: Settings
) -> None:
    billing = await start_billing()
    gateway = Gateway(settings, port=0, host="127.0.0.1")
    await gateway.start()
    await gateway.bus.wait_ready(10)
    spec = coupon_spec()
    total = 14029
    paid_at = T0 + 60
    refunds = [
        refund_object("re_3RaQ1RefundA", 2000, charge="ch_3RaQ1", intent="pi_3RaQ1", currency="usd", created=T0 + 600),
        refund_object("re_3RaQ1RefundB", 1500, charge="ch_3RaQ1", intent="pi_3RaQ1", currency="usd", created=T0 + 900),
    ]
    paid = invoice_object("basil", spec, status="paid", amount_paid=total)
    events = [
        stripe_event("invoice.created", invoice_object("basil", spec, status="draft"), created=T0),
        stripe_event("invoice.finalized", invoice_object("basil", spec), created=T0 + 30),
        stripe_event("invoice.paid", paid, created=paid_at),
        stripe_event("invoice.payment_succeeded", paid, created=paid_at),
        stripe_event(
            "invoice_payment.paid",
            invoice_payment_object(spec, total, payment_id="inpay_1RaQ1", intent="pi_3RaQ1", paid_at=paid_at),
            created=paid_at,
        ),
        stripe_event(
            "charge.succeeded",
            charge_object("basil", spec, total, charge_id="ch_3RaQ1", intent="pi_3RaQ1", created=paid_at),
            created=paid_at,
        ),
        stripe_event("refund.created", refunds[0], created=T0 + 600),
        stripe_event(
            "charge.refunded",
            charge_object(
                "basil", spec, total, charge_id="ch_3RaQ1", intent="pi_3RaQ1", created=paid_at, refunds=refunds[:1]
            ),
            created=T0 + 600,
        ),
        stripe_event("refund.created", refunds[1], created=T0 + 900),
        stripe_event(
            "charge.refunded",
            charge_object(
                "basil", spec, total, charge_id="ch_3RaQ1", intent="pi_3RaQ1", created=paid_at, refunds=refunds
            ),
            created=T0 + 900,
        ),
    ]
    try:
        for evt in events:
            await post_webhook(gateway, evt)
        await billing.drained(len(events))
    finally:
        await gateway.stop()

    reply = await billing.stub.GetInvoice(pb.GetInvoiceRequest(invoice_id=spec.invoice_id))
    inv = reply.invoice
    assert inv.status == pb.INVOICE_STATUS_PAID_IN_FULL and inv.stripe_status == "paid"
    assert (inv.total.amount_minor, inv.amount_paid.amount_minor, inv.amount_remaining.amount_minor) == (
        total,
        total,
        0,
    )
    assert (inv.discount.amount_minor, inv.tax.amount_minor, inv.subtotal.amount_minor) == (3240, 1069, 16200)
    assert [(x.kind, x.amount.amount_minor) for x in inv.lines] == [
        (pb.LINE_KIND_ITEM, 14700),
        (pb.LINE_KIND_ITEM, 1500),
        (pb.LINE_KIND_DISCOUNT, -3240),
    ]
    assert inv.lines[0].stripe_price_id == PRICE_PRO and not inv.lines[0].item_mapped
    payments = (await billing.stub.ListPayments(pb.ListPaymentsRequest(invoice_id=inv.erp_invoice_id))).payments
    assert [(p.stripe_payment_id, p.amount.amount_minor, p.payment_date) for p in payments] == [
        ("inpay_1RaQ1", total, "2025-06-15")
    ]
    refund_list = (await billing.stub.ListRefunds(pb.ListRefundsRequest(invoice_id=spec.invoice_id))).refunds
    assert [(r.stripe_refund_id, r.amount.amount_minor, r.status) for r in refund_list] == [
        ("re_3RaQ1RefundA", 2000, "succeeded"),
        ("re_3RaQ1RefundB", 1500, "succeeded"),
    ]
    assert all(r.erp_credit_memo_id.startswith("CM-") for r in refund_list)
    memos = (await billing.stub.ListCreditMemos(pb.ListCreditMemosRequest(invoice_id=spec.invoice_id))).credit_memos
    assert sorted((m.kind, m.amount.amount_minor, m.status, m.applied_to) for m in memos) == [
        (pb.CREDIT_MEMO_KIND_REFUND, 1500, "issued", "refund"),
        (pb.CREDIT_MEMO_KIND_REFUND, 2000, "issued", "refund"),
    ]
    conn = await billing.db()
    try:
        await assert_invariants(conn, spec.invoice_id)
        outbox = await conn.fetch("SELECT subject FROM outbox")
    finally:
        await conn.close()
    subjects = {r["subject"] for r in outbox}
    assert {
        "syncmesh.billing.invoice_changed",
        "syncmesh.billing.payment_applied",
        "syncmesh.billing.refund_recorded",
        "syncmesh.billing.credit_memo_changed",
    } <= subjects
    history = (await billing.stub.GetRecordHistory(pb.GetRecordHistoryRequest(record_id=inv.erp_invoice_id))).entries
    assert {h.stripe_event_id for h in history} >= {events[0]["id"], events[2]["id"], events[4]["id"]}
    schedule = await billing.stub.GetRevenueSchedule(pb.GetRevenueScheduleRequest(invoice_id=spec.invoice_id))
    assert [(e.period, e.amount.amount_minor) for e in schedule.lines[0].entries] == [
        ("2025-06-01", 6272),
        ("2025-07-01", 5488),
    ]


async def test_voided_invoice(start_billing: StartBilling) -> None:
    billing = await start_billing()
    spec = InvoiceSpec(invoice_id="in_1RaQVoid000000001", subscription=None)
    await billing.publish(
        stripe_event("invoice.created", invoice_object("legacy", spec, status="draft"), created=T0, shape="legacy"),
        stripe_event("invoice.finalized", invoice_object("legacy", spec), created=T0 + 5, shape="legacy"),
        stripe_event("invoice.voided", invoice_object("legacy", spec, status="void"), created=T0 + 50, shape="legacy"),
    )
    await billing.drained(3)
    inv = (await billing.stub.GetInvoice(pb.GetInvoiceRequest(invoice_id=spec.invoice_id))).invoice
    assert (inv.status, inv.api_shape, inv.amount_remaining.amount_minor) == (pb.INVOICE_STATUS_VOIDED, "legacy", 0)
    balance = await billing.stub.GetCustomerBalance(pb.GetCustomerBalanceRequest(stripe_customer_id=spec.customer))
    assert list(balance.balances) == []
    conn = await billing.db()
    try:
        await assert_invariants(conn, spec.invoice_id)
    finally:
        await conn.close()


@pytest.mark.parametrize("write_off", [True, False])
async def test_uncollectible_invoice_then_paid_later(start_billing: StartBilling, write_off: bool) -> None:
    billing = await start_billing(BillingSettings(write_off_uncollectible=write_off))
    spec = coupon_spec("in_1RaQUncollectible01")
    total = 14029
    uncollectible = invoice_object("basil", spec, status="uncollectible", attempt_count=4)
    uncollectible["status_transitions"]["marked_uncollectible_at"] = T0 + 86400 * 20
    await billing.publish(
        stripe_event("invoice.finalized", invoice_object("basil", spec), created=T0),
        stripe_event("invoice.marked_uncollectible", uncollectible, created=T0 + 86400 * 20),
    )
    await billing.drained(2)
    inv = (await billing.stub.GetInvoice(pb.GetInvoiceRequest(invoice_id=spec.invoice_id))).invoice
    memos = (await billing.stub.ListCreditMemos(pb.ListCreditMemosRequest(invoice_id=spec.invoice_id))).credit_memos
    if write_off:
        assert (inv.status, inv.amount_remaining.amount_minor, inv.credits_applied.amount_minor) == (
            pb.INVOICE_STATUS_WRITTEN_OFF,
            0,
            total,
        )
        [memo] = memos
        assert (memo.kind, memo.amount.amount_minor, memo.status) == (pb.CREDIT_MEMO_KIND_WRITE_OFF, total, "issued")
        # Dated by Stripe's marked_uncollectible_at, not the day the mesh was told.
        assert (memo.memo_date, memo.date_source) == ("2025-07-05", "stripe_transition")
    else:
        assert (inv.status, inv.amount_remaining.amount_minor) == (pb.INVOICE_STATUS_OPEN, total)
        assert list(memos) == []
        balance = await billing.stub.GetCustomerBalance(
            pb.GetCustomerBalanceRequest(stripe_customer_id=spec.customer, as_of="2025-08-01")
        )
        [usd] = balance.balances
        # Due 2025-06-15 (charge automatically): 47 days past due on 2025-08-01.
        assert (usd.open.amount_minor, usd.days_31_60.amount_minor, usd.current.amount_minor) == (total, total, 0)

    paid_at = T0 + 86400 * 40
    paid = invoice_object("basil", spec, status="paid", amount_paid=total)
    paid["status_transitions"]["marked_uncollectible_at"] = T0 + 86400 * 20
    await billing.publish(
        stripe_event("invoice.paid", paid, created=paid_at),
        stripe_event(
            "invoice_payment.paid",
            invoice_payment_object(spec, total, payment_id="inpay_1RaQLate", intent="pi_3RaQLate", paid_at=paid_at),
            created=paid_at,
        ),
    )
    await billing.drained(4)
    inv = (await billing.stub.GetInvoice(pb.GetInvoiceRequest(invoice_id=spec.invoice_id))).invoice
    assert (inv.status, inv.amount_paid.amount_minor, inv.credits_applied.amount_minor) == (
        pb.INVOICE_STATUS_PAID_IN_FULL,
        total,
        0,
    )
    memos = (
        await billing.stub.ListCreditMemos(
            pb.ListCreditMemosRequest(invoice_id=spec.invoice_id, include_superseded=True)
        )
    ).credit_memos
    assert [(m.kind, m.status, m.amount.amount_minor) for m in memos] == (
        [(pb.CREDIT_MEMO_KIND_WRITE_OFF, "reversed", total)] if write_off else []
    )

    # The ageing as it stood on each day (due 2025-06-15, uncollectible 07-05, paid 07-25):
    # owed until written off or paid, whatever has happened since.
    async def aged(day: str) -> list[tuple[int, int, int]]:
        request = pb.GetCustomerBalanceRequest(stripe_customer_id=spec.customer, as_of=day)
        balances = (await billing.stub.GetCustomerBalance(request)).balances
        return [(b.open.amount_minor, b.days_1_30.amount_minor, b.days_31_60.amount_minor) for b in balances]

    assert await aged("2025-06-14") == []  # not invoiced yet
    assert await aged("2025-07-01") == [(total, total, 0)]
    assert await aged("2025-07-10") == ([] if write_off else [(total, total, 0)])
    assert await aged("2025-07-24") == ([] if write_off else [(total, 0, total)])
    assert await aged("2025-07-25") == []
    assert await aged(datetime.now(UTC).date().isoformat()) == []
    conn = await billing.db()
    try:
        await assert_invariants(conn, spec.invoice_id)
    finally:
        await conn.close()


async def test_a_void_heard_of_late_ages_from_stripes_voided_at(start_billing: StartBilling) -> None:
    """A void the mesh hears of weeks after Stripe made it (a backfill, a redrive, a long outage)
    is dated by Stripe's status_transitions.voided_at: the ageing of a day in between shows
    nothing owed, where dating it by the event would have shown the whole invoice."""
    billing = await start_billing(BillingSettings())
    spec = coupon_spec("in_1RaQVoidedLate01")
    voided_at = T0 + 86400 * 10  # 2025-06-25
    voided = invoice_object("basil", spec, status="void")
    voided["status_transitions"]["voided_at"] = voided_at
    await billing.publish(stripe_event("invoice.finalized", invoice_object("basil", spec), created=T0))
    await billing.drained(1)
    total = (await billing.stub.GetInvoice(pb.GetInvoiceRequest(invoice_id=spec.invoice_id))).invoice
    owed = total.amount_remaining.amount_minor
    assert owed > 0
    await billing.publish(stripe_event("invoice.voided", voided, created=T0 + 86400 * 60))  # heard 2025-08-14
    await billing.drained(2)

    async def open_on(day: str) -> list[int]:
        request = pb.GetCustomerBalanceRequest(stripe_customer_id=spec.customer, as_of=day)
        return [b.open.amount_minor for b in (await billing.stub.GetCustomerBalance(request)).balances]

    assert await open_on("2025-06-24") == [owed]
    assert await open_on("2025-06-25") == []
    assert await open_on("2025-07-31") == []  # a month-end between the void and the event
    assert await open_on(datetime.now(UTC).date().isoformat()) == []


async def test_backfilled_basil_invoice_gets_its_payment_from_the_invoice_payments_listing(
    start_billing: StartBilling,
) -> None:
    """In current API versions a paid invoice names no charge: backfilled alone it reads paid with
    nothing behind it, and the backfill's invoice_payments listing supplies the payment."""
    from ops.backfill import KINDS, synthesise_event

    billing = await start_billing()
    spec = coupon_spec("in_1RaQBackfilled0001")
    total, listed_at = 14029, T0 + 86400 * 90
    paid = invoice_object("basil", spec, status="paid", amount_paid=total)
    payment = invoice_payment_object(
        spec, total, payment_id="inpay_1RaQBackfill", intent="pi_3RaQBf", paid_at=T0 + 3700
    )
    await billing.publish(
        synthesise_event(KINDS["invoices"], paid, listed_at=listed_at, api_version="2025-03-31.basil")
    )
    await billing.drained(1)
    inv = (await billing.stub.GetInvoice(pb.GetInvoiceRequest(invoice_id=spec.invoice_id))).invoice
    assert (inv.status, inv.unattributed_paid.amount_minor) == (pb.INVOICE_STATUS_PAID_IN_FULL, total)
    event = synthesise_event(KINDS["invoice_payments"], payment, listed_at=listed_at, api_version="2025-03-31.basil")
    assert event["type"] == "invoice_payment.paid"
    await billing.publish(event)
    await billing.drained(2)
    inv = (await billing.stub.GetInvoice(pb.GetInvoiceRequest(invoice_id=spec.invoice_id))).invoice
    payments = (await billing.stub.ListPayments(pb.ListPaymentsRequest(invoice_id=spec.invoice_id))).payments
    assert (inv.unattributed_paid.amount_minor, inv.amount_paid.amount_minor) == (0, total)
    assert [(p.stripe_payment_id, p.amount.amount_minor, p.payment_date) for p in payments] == [
        ("inpay_1RaQBackfill", total, "2025-06-15")
    ]


async def test_final_payment_failure_puts_customer_on_hold_until_paid(start_billing: StartBilling) -> None:
    billing = await start_billing(BillingSettings(credit_hold=True))
    spec = coupon_spec("in_1RaQHold0000000001")
    total = 14029
    retrying = invoice_object("basil", spec, attempt_count=1, next_payment_attempt=T0 + 86400 * 3)
    final = invoice_object("basil", spec, attempt_count=4, next_payment_attempt=None)
    await billing.publish(
        stripe_event("invoice.finalized", invoice_object("basil", spec), created=T0),
        stripe_event("invoice.payment_failed", retrying, created=T0 + 10),
    )
    await billing.drained(2)
    holds = await billing.stub.ListCreditHolds(pb.ListCreditHoldsRequest(stripe_customer_id=spec.customer))
    assert list(holds.holds) == []  # Stripe will retry: no hold yet

    await billing.publish(stripe_event("invoice.payment_failed", final, created=T0 + 86400 * 14))
    await billing.drained(3)
    [hold] = (await billing.stub.ListCreditHolds(pb.ListCreditHoldsRequest(active_only=True))).holds
    assert (hold.stripe_invoice_id, hold.active) == (spec.invoice_id, True)
    assert "final payment attempt failed" in hold.reason
    balance = await billing.stub.GetCustomerBalance(pb.GetCustomerBalanceRequest(stripe_customer_id=spec.customer))
    assert balance.on_credit_hold

    paid_at = T0 + 86400 * 16
    await billing.publish(
        stripe_event("invoice.paid", invoice_object("basil", spec, status="paid", amount_paid=total), created=paid_at),
        stripe_event(
            "invoice_payment.paid",
            invoice_payment_object(spec, total, payment_id="inpay_1RaQHold", intent="pi_3RaQHold", paid_at=paid_at),
            created=paid_at,
        ),
    )
    await billing.drained(5)
    [hold] = (await billing.stub.ListCreditHolds(pb.ListCreditHoldsRequest(stripe_customer_id=spec.customer))).holds
    assert not hold.active and hold.released_at and "paid in full" in hold.release_reason
    assert not (await billing.stub.ListCreditHolds(pb.ListCreditHoldsRequest(active_only=True))).holds
    history = (await billing.stub.GetRecordHistory(pb.GetRecordHistoryRequest(record_id=spec.customer))).entries
    assert [h.change.split(":")[0].split(" ")[0] for h in history] == ["placed", "released"]
    conn = await billing.db()
    try:
        await assert_invariants(conn, spec.invoice_id)
        # As if the hold had been placed ten days ago and released five days ago: an ageing as of
        # a day in between shows it, one before or after does not.
        await conn.execute(
            "UPDATE credit_holds SET placed_at = now() - interval '10 days', released_at = now() - interval '5 days'"
        )
    finally:
        await conn.close()
    today = datetime.now(UTC).date()
    held = []
    for days_ago in (12, 7, 3, 0):
        request = pb.GetCustomerBalanceRequest(
            stripe_customer_id=spec.customer, as_of=(today - timedelta(days=days_ago)).isoformat()
        )
        held.append((await billing.stub.GetCustomerBalance(request)).on_credit_hold)
    assert held == [False, True, False, False]


async def test_subscription_unpaid_after_final_failure_holds_the_customer(start_billing: StartBilling) -> None:
    billing = await start_billing(BillingSettings(credit_hold=True))
    spec = coupon_spec("in_1RaQSubHold0000001")
    await billing.publish(
        stripe_event("invoice.finalized", invoice_object("basil", spec), created=T0),
        stripe_event(
            "customer.subscription.updated",
            subscription_object(spec, status="unpaid", latest_invoice=spec.invoice_id),
            created=T0 + 86400 * 15,
        ),
    )
    await billing.drained(2)
    [hold] = (await billing.stub.ListCreditHolds(pb.ListCreditHoldsRequest(active_only=True))).holds
    assert hold.stripe_customer_id == spec.customer and "unpaid" in hold.reason


async def test_invoice_with_25_lines_fetches_the_rest_from_stripe(
    start_billing: StartBilling, settings: Settings
) -> None:
    spec = InvoiceSpec(
        invoice_id="in_1RaQMany0000000001",
        lines=[
            LineSpec(price=f"price_1RaQSeat{i:02d}", unit=1000 + 10 * i, quantity=1 + i % 3, description=f"Seat {i}")
            for i in range(25)
        ],
        percent_off=10,
        tax_bps=700,
    )
    lines = all_lines("basil", spec)
    async with stripe_lines_server({spec.invoice_id: lines}) as (url, calls):
        billing = await start_billing(stripe_api_key="sk_test_lines", stripe_api_base=url)
        await billing.publish(stripe_event("invoice.finalized", invoice_object("basil", spec), created=T0))
        await billing.drained(1)
    assert len(calls) == 1 and "limit=100" in calls[0]
    inv = (await billing.stub.GetInvoice(pb.GetInvoiceRequest(invoice_id=spec.invoice_id))).invoice
    assert inv.lines_complete
    items = [x for x in inv.lines if x.kind == pb.LINE_KIND_ITEM]
    assert [x.description for x in items] == [f"Seat {i}" for i in range(25)]
    assert sum(x.amount.amount_minor for x in inv.lines) + inv.tax.amount_minor == inv.total.amount_minor
    unmapped = await billing.stub.ListUnmappedPrices(pb.ListUnmappedPricesRequest(page_size=10))
    assert len(unmapped.prices) == 10 and unmapped.next_page_token
    conn = await billing.db()
    try:
        await assert_invariants(conn, spec.invoice_id)
    finally:
        await conn.close()


async def test_truncated_invoice_without_api_key_is_never_complete(start_billing: StartBilling) -> None:
    billing = await start_billing()
    spec = InvoiceSpec(invoice_id="in_1RaQTrunc000000001", lines=[LineSpec(unit=500 + i) for i in range(12)])
    await billing.publish(stripe_event("invoice.finalized", invoice_object("basil", spec), created=T0))
    await billing.drained(1)
    inv = (await billing.stub.GetInvoice(pb.GetInvoiceRequest(invoice_id=spec.invoice_id))).invoice
    assert not inv.lines_complete and len(inv.lines) == 10
    conn = await billing.db()
    try:
        with pytest.raises(AssertionError, match="incomplete"):
            await assert_invariants(conn, spec.invoice_id)
    finally:
        await conn.close()


async def test_zero_decimal_currency_jpy(start_billing: StartBilling) -> None:
    billing = await start_billing()
    spec = InvoiceSpec(
        invoice_id="in_1RaQYen00000000001",
        currency="jpy",
        lines=[LineSpec(unit=9800, quantity=3, description="チームプラン")],
        percent_off=15,
        tax_bps=1000,
    )
    total = 29400 - 4410 + 2499
    await billing.publish(
        stripe_event("invoice.finalized", invoice_object("basil", spec), created=T0),
        stripe_event("invoice.paid", invoice_object("basil", spec, status="paid", amount_paid=total), created=T0 + 9),
        stripe_event(
            "invoice_payment.paid",
            invoice_payment_object(spec, total, payment_id="inpay_1RaQYen", intent="pi_3RaQYen", paid_at=T0 + 9),
            created=T0 + 9,
        ),
    )
    await billing.drained(3)
    inv = (await billing.stub.GetInvoice(pb.GetInvoiceRequest(invoice_id=spec.invoice_id))).invoice
    assert (inv.currency, inv.total.amount_minor, inv.tax.amount_minor) == ("jpy", total, 2499)
    assert inv.total.currency == "jpy" and inv.status == pb.INVOICE_STATUS_PAID_IN_FULL
    conn = await billing.db()
    try:
        await assert_invariants(conn, spec.invoice_id)
    finally:
        await conn.close()


async def test_legacy_charge_payment_and_refund_are_counted_once(start_billing: StartBilling) -> None:
    billing = await start_billing()
    spec = coupon_spec("in_1RaQLegacy00000001")
    total = 14029
    refund = refund_object(
        "re_3RaQLeg", 4000, charge="ch_3RaQLeg", intent="pi_3RaQLeg", currency="usd", created=T0 + 99
    )
    paid = invoice_object("legacy", spec, status="paid", amount_paid=total, charge="ch_3RaQLeg")
    charge = charge_object("legacy", spec, total, charge_id="ch_3RaQLeg", intent="pi_3RaQLeg", created=T0 + 9)
    refunded = charge_object(
        "legacy", spec, total, charge_id="ch_3RaQLeg", intent="pi_3RaQLeg", created=T0 + 9, refunds=[refund]
    )
    await billing.publish(
        stripe_event("charge.refunded", refunded, created=T0 + 99, shape="legacy"),  # before anything else
        stripe_event("invoice.payment_succeeded", paid, created=T0 + 9, shape="legacy"),
        stripe_event("charge.succeeded", charge, created=T0 + 9, shape="legacy"),
        stripe_event("invoice.paid", paid, created=T0 + 9, shape="legacy"),
        stripe_event("invoice.finalized", invoice_object("legacy", spec), created=T0, shape="legacy"),
    )
    await billing.drained(5)
    inv = (await billing.stub.GetInvoice(pb.GetInvoiceRequest(invoice_id=spec.invoice_id))).invoice
    assert (inv.status, inv.amount_paid.amount_minor, inv.unattributed_paid.amount_minor) == (
        pb.INVOICE_STATUS_PAID_IN_FULL,
        total,
        0,
    )
    [payment] = (await billing.stub.ListPayments(pb.ListPaymentsRequest(invoice_id=spec.invoice_id))).payments
    assert (payment.stripe_payment_id, payment.method) == ("ch_3RaQLeg", "card")  # the charge's details won
    [r] = (await billing.stub.ListRefunds(pb.ListRefundsRequest(stripe_customer_id=spec.customer))).refunds
    assert (r.stripe_refund_id, r.amount.amount_minor, r.stripe_invoice_id) == ("re_3RaQLeg", 4000, spec.invoice_id)
    conn = await billing.db()
    try:
        await assert_invariants(conn, spec.invoice_id)
    finally:
        await conn.close()


async def test_credit_note_reduces_what_is_owed_and_voiding_restores_it(start_billing: StartBilling) -> None:
    billing = await start_billing()
    spec = coupon_spec("in_1RaQCredit00000001")
    note = credit_note_object("basil", spec, note_id="cn_1RaQCn01", amount=2029, created=T0 + 100)
    await billing.publish(
        stripe_event("invoice.finalized", invoice_object("basil", spec), created=T0),
        stripe_event("credit_note.created", note, created=T0 + 100),
    )
    await billing.drained(2)
    inv = (await billing.stub.GetInvoice(pb.GetInvoiceRequest(invoice_id=spec.invoice_id))).invoice
    assert (inv.credits_applied.amount_minor, inv.amount_remaining.amount_minor) == (2029, 12000)
    [memo] = (await billing.stub.ListCreditMemos(pb.ListCreditMemosRequest(invoice_id=spec.invoice_id))).credit_memos
    assert (memo.kind, memo.status, memo.applied_to, memo.lines[0].description) == (
        pb.CREDIT_MEMO_KIND_CREDIT_NOTE,
        "issued",
        "invoice",
        "Service credit for downtime",
    )
    voided_at = T0 + 86400 * 20  # 2025-07-05
    voided = credit_note_object(
        "basil", spec, note_id="cn_1RaQCn01", amount=2029, created=T0 + 100, status="void", voided_at=voided_at
    )
    await billing.publish(stripe_event("credit_note.voided", voided, created=voided_at))
    await billing.drained(3)
    inv = (await billing.stub.GetInvoice(pb.GetInvoiceRequest(invoice_id=spec.invoice_id))).invoice
    assert (inv.credits_applied.amount_minor, inv.amount_remaining.amount_minor) == (0, 14029)

    # An ageing as of a day before the void still counts the credit; from that day, it does not.
    async def open_on(day: str) -> list[int]:
        request = pb.GetCustomerBalanceRequest(stripe_customer_id=spec.customer, as_of=day)
        return [b.open.amount_minor for b in (await billing.stub.GetCustomerBalance(request)).balances]

    assert await open_on("2025-06-30") == [12000]
    assert await open_on("2025-07-05") == [14029]
    conn = await billing.db()
    try:
        await assert_invariants(conn, spec.invoice_id)
    finally:
        await conn.close()


async def test_objects_before_sync_start_are_skipped_and_counted(start_billing: StartBilling) -> None:
    billing = await start_billing(sync_start=datetime(2025, 7, 1, tzinfo=UTC))
    old = coupon_spec("in_1RaQOld000000000001")
    await billing.publish(stripe_event("invoice.finalized", invoice_object("basil", old), created=T0 + 86400 * 30))
    await billing.drained(1)
    conn = await billing.db()
    try:
        outcomes = await conn.fetch("SELECT outcome FROM processed_events")
        assert [r["outcome"] for r in outcomes] == ["skipped: before SYNCMESH_SYNC_START"]
        assert await conn.fetchval("SELECT count(*) FROM invoices") == 0
    finally:
        await conn.close()


async def test_bad_arguments_are_refused_naming_the_field(start_billing: StartBilling) -> None:
    billing = await start_billing()
    with pytest.raises(grpc.aio.AioRpcError) as bad_date:
        await billing.stub.ListInvoices(pb.ListInvoicesRequest(from_date="15/06/2025"))
    assert bad_date.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "from_date" in str(bad_date.value.details())
    with pytest.raises(grpc.aio.AioRpcError) as bad_token:
        await billing.stub.ListPayments(pb.ListPaymentsRequest(page_token="garbage"))
    assert "page_token" in str(bad_token.value.details())
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await billing.stub.GetInvoice(pb.GetInvoiceRequest(invoice_id="in_nope"))
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as no_customer:
        await billing.stub.GetCustomerBalance(pb.GetCustomerBalanceRequest())
    assert "stripe_customer_id" in str(no_customer.value.details())
    with pytest.raises(grpc.aio.AioRpcError) as bad_as_of:
        await billing.stub.GetCustomerBalance(
            pb.GetCustomerBalanceRequest(stripe_customer_id="cus_NffrFeUfNV2Hib", as_of="2025-02-30")
        )
    assert bad_as_of.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "as_of" in str(bad_as_of.value.details())


async def test_stripe_refusing_the_lines_request_stores_nothing_and_dead_letters(
    start_billing: StartBilling,
) -> None:
    spec = InvoiceSpec(invoice_id="in_1RaQGone0000000001", lines=[LineSpec(unit=700 + i) for i in range(11)])
    async with stripe_lines_server({}) as (url, calls):  # answers 404 for every invoice
        billing = await start_billing(stripe_api_key="sk_test_lines", stripe_api_base=url)
        await billing.publish(stripe_event("invoice.finalized", invoice_object("basil", spec), created=T0))
        assert billing.runtime.consumer is not None
        await eventually(lambda: billing.runtime.consumer.dead_lettered == 1, timeout=20)  # type: ignore[union-attr]
    assert len(calls) == billing.settings.max_deliver
    conn = await billing.db()
    try:
        assert await conn.fetchval("SELECT count(*) FROM invoices") == 0
    finally:
        await conn.close()


async def test_failed_refund_voids_its_credit_memo(start_billing: StartBilling) -> None:
    billing = await start_billing()
    refund = refund_object("re_3RaQFail", 900, charge="ch_3RaQFail", intent="pi_3RaQFail", currency="usd", created=T0)
    failed = {**refund, "status": "failed", "failure_reason": "expired_or_canceled_card"}
    await billing.publish(
        stripe_event("refund.updated", failed, created=T0 + 99),
        stripe_event("refund.created", refund, created=T0),
    )
    await billing.drained(2)
    [memo] = (await billing.stub.ListCreditMemos(pb.ListCreditMemosRequest(include_superseded=True))).credit_memos
    assert (memo.kind, memo.status, memo.amount.amount_minor) == (pb.CREDIT_MEMO_KIND_REFUND, "void", 900)
    [r] = (await billing.stub.ListRefunds(pb.ListRefundsRequest())).refunds
    assert r.status == "failed"


async def test_list_invoices_filters_and_pages(start_billing: StartBilling) -> None:
    billing = await start_billing()
    day = 86400
    specs = [
        InvoiceSpec(invoice_id=f"in_1RaQList{i:010d}", created=T0 + i * 10 * day, customer=f"cus_RaQList{i % 2}")
        for i in range(5)
    ]
    events = [stripe_event("invoice.finalized", invoice_object("basil", s), created=s.created) for s in specs]
    events.append(
        stripe_event("invoice.voided", invoice_object("basil", specs[0], status="void"), created=specs[0].created + 5)
    )
    await billing.publish(*events)
    await billing.drained(len(events))
    seen: list[str] = []
    token = ""
    while True:
        page = await billing.stub.ListInvoices(pb.ListInvoicesRequest(page_size=2, page_token=token))
        seen += [i.stripe_invoice_id for i in page.invoices]
        token = page.next_page_token
        if not token:
            break
    assert seen == [s.invoice_id for s in specs]
    # A token belongs to the list and filters it came from; reused elsewhere it is refused, not misread.
    first = await billing.stub.ListInvoices(pb.ListInvoicesRequest(page_size=2))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await billing.stub.ListInvoices(
            pb.ListInvoicesRequest(page_size=2, page_token=first.next_page_token, stripe_customer_id="cus_RaQList0")
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in (refused.value.details() or "")
    open_for_0 = await billing.stub.ListInvoices(
        pb.ListInvoicesRequest(stripe_customer_id="cus_RaQList0", status=pb.INVOICE_STATUS_OPEN)
    )
    assert [i.stripe_invoice_id for i in open_for_0.invoices] == [specs[2].invoice_id, specs[4].invoice_id]
    ranged = await billing.stub.ListInvoices(pb.ListInvoicesRequest(from_date="2025-06-25", to_date="2025-07-05"))
    assert [i.stripe_invoice_id for i in ranged.invoices] == [specs[1].invoice_id, specs[2].invoice_id]

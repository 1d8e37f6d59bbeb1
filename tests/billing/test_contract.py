"""Issue 16's billing contract, through real NATS and PostgreSQL in both API shapes: drafts, every
payment's charge and payment intent, discount/coupon/product ids and tax on lines, credit hold
reason codes, superseded credit memos and unknown customers.

Every lifecycle is published shuffled, with some events delivered again under the same event id
(as a redelivery past JetStream's dedup window) and some re-sent under a new id (as the sweeper or
a backfill would); several seeds go into one stream at once, so the consumer sees them in batches.
"""

from __future__ import annotations

import random
from typing import Any

import grpc
import pytest
from syncmesh.billing.v1 import billing_service_pb2 as pb
from syncmesh.billing.v1 import events_pb2

from services.billing.settings import BillingSettings
from tests.billing.builders import (
    COUPON,
    DISCOUNT,
    PRICE_ADDON,
    InvoiceSpec,
    LineSpec,
    Shape,
    charge_object,
    credit_note_object,
    invoice_object,
    invoice_payment_object,
    refund_object,
    stripe_event,
    subscription_object,
)
from tests.billing.conftest import Billing, StartBilling, assert_invariants, publish

T0 = 1_750_000_000  # 2025-06-15T15:06:40Z
SHAPES: tuple[Shape, ...] = ("basil", "legacy")
PRODUCT = "prod_RaQ4wProSeats"  # the builders' product of both prices


def shuffled(events: list[dict[str, Any]], rng: random.Random) -> list[tuple[dict[str, Any], str | None]]:
    """The events in a random order, some twice: (event, the message id to publish it under)."""
    order: list[tuple[dict[str, Any], str | None]] = [(e, None) for e in events]
    rng.shuffle(order)
    for n in range(rng.randint(2, 5)):
        evt = rng.choice(events)
        again = (
            (evt, f"{evt['id']}-redelivered-{n}") if rng.random() < 0.5 else ({**evt, "id": f"{evt['id']}_{n}"}, None)
        )
        order.insert(rng.randint(0, len(order)), again)
    return order


async def deliver(billing: Billing, events: list[dict[str, Any]], seed: int) -> int:
    """Publish the events shuffled and duplicated, wait until all are consumed; how many were sent."""
    sent = shuffled(events, random.Random(seed))
    for evt, msg_id in sent:
        await publish(billing.runtime.bus, evt, msg_id=msg_id)
    await billing.drained(len(sent))
    return len(sent)


def ev(event_type: str, obj: dict[str, Any], created: int, shape: Shape) -> dict[str, Any]:
    return stripe_event(event_type, obj, created=created, shape=shape)


async def invoice(billing: Billing, invoice_id: str) -> pb.Invoice:
    return (await billing.stub.GetInvoice(pb.GetInvoiceRequest(invoice_id=invoice_id))).invoice


def paid_lifecycle(shape: Shape, spec: InvoiceSpec, total: int, *, charge: str, intent: str) -> list[dict[str, Any]]:
    """Finalized and paid, with the payment as each shape sends it: basil an `invoice_payment`
    naming only the intent and a `charge.succeeded` naming no invoice (after a failed charge of
    the same intent); legacy an invoice naming its charge and a charge naming its invoice."""
    paid_at = T0 + 100
    if shape == "basil":
        failed = {
            **charge_object(shape, spec, total, charge_id=f"{charge}_declined", intent=intent, created=T0 + 50),
            "status": "failed",
            "paid": False,
        }
        return [
            ev("invoice.finalized", invoice_object(shape, spec), T0, shape),
            ev("charge.failed", failed, T0 + 50, shape),
            ev("invoice.paid", invoice_object(shape, spec, status="paid", amount_paid=total), paid_at, shape),
            ev(
                "invoice_payment.paid",
                invoice_payment_object(spec, total, payment_id=f"inpay_{charge[3:]}", intent=intent, paid_at=paid_at),
                paid_at,
                shape,
            ),
            ev(
                "charge.succeeded",
                charge_object(shape, spec, total, charge_id=charge, intent=intent, created=paid_at - 1),
                paid_at - 1,
                shape,
            ),
        ]
    paid = invoice_object(shape, spec, status="paid", amount_paid=total, charge=charge)
    paid["payment_intent"] = intent
    return [
        ev("invoice.finalized", invoice_object(shape, spec), T0, shape),
        ev("invoice.paid", paid, paid_at, shape),
        ev(
            "charge.succeeded",
            charge_object(shape, spec, total, charge_id=charge, intent=intent, created=paid_at - 1),
            paid_at - 1,
            shape,
        ),
    ]


# -- drafts ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
async def test_a_draft_is_never_open_aged_or_in_a_balance(start_billing: StartBilling, shape: Shape) -> None:
    billing = await start_billing()
    total = 14700  # 3 x 49.00
    events: list[dict[str, Any]] = []
    drafts, opened, paid = [], [], []
    for n in range(3):
        draft = InvoiceSpec(invoice_id=f"in_Draft{shape}{n}", subscription=None)
        events += [
            ev("invoice.created", invoice_object(shape, draft, status="draft"), T0, shape),
            ev("invoice.updated", invoice_object(shape, draft, status="draft"), T0 + 2, shape),
        ]
        late = InvoiceSpec(invoice_id=f"in_Opened{shape}{n}")
        events += [
            ev("invoice.created", invoice_object(shape, late, status="draft"), T0, shape),
            ev("invoice.finalized", invoice_object(shape, late), T0 + 5, shape),
            # a draft snapshot heard of after the invoice was finalized: it must not move it back
            ev("invoice.updated", invoice_object(shape, late, status="draft"), T0 + 3, shape),
        ]
        done = InvoiceSpec(invoice_id=f"in_Paid{shape}{n}")
        events += [
            ev("invoice.created", invoice_object(shape, done, status="draft"), T0, shape),
            ev("invoice.finalized", invoice_object(shape, done), T0 + 5, shape),
            ev("invoice.paid", invoice_object(shape, done, status="paid", amount_paid=total), T0 + 10, shape),
            ev("invoice.updated", invoice_object(shape, done, status="draft"), T0 + 11, shape),
        ]
        drafts.append(draft.invoice_id)
        opened.append(late.invoice_id)
        paid.append(done.invoice_id)
    await deliver(billing, events, seed=16)

    for invoice_id in drafts:
        inv = await invoice(billing, invoice_id)
        assert (inv.status, inv.stripe_status, inv.amount_remaining.amount_minor) == (
            pb.INVOICE_STATUS_DRAFT,
            "draft",
            0,
        )
    assert {(await invoice(billing, i)).status for i in opened} == {pb.INVOICE_STATUS_OPEN}
    assert {(await invoice(billing, i)).status for i in paid} == {pb.INVOICE_STATUS_PAID_IN_FULL}

    listed = await billing.stub.ListInvoices(pb.ListInvoicesRequest(status=pb.INVOICE_STATUS_OPEN))
    assert sorted(i.stripe_invoice_id for i in listed.invoices) == sorted(opened)
    listed = await billing.stub.ListInvoices(pb.ListInvoicesRequest(status=pb.INVOICE_STATUS_DRAFT))
    assert sorted(i.stripe_invoice_id for i in listed.invoices) == sorted(drafts)

    customer = InvoiceSpec().customer
    for as_of in ("", "2025-12-31"):  # as it stands, and an ageing run as of a past day
        balance = await billing.stub.GetCustomerBalance(
            pb.GetCustomerBalanceRequest(stripe_customer_id=customer, as_of=as_of)
        )
        assert [(b.open_invoices, b.open.amount_minor) for b in balance.balances] == [(3, 3 * total)], as_of
    conn = await billing.db()
    try:
        for invoice_id in drafts + opened + paid:
            await assert_invariants(conn, invoice_id)
    finally:
        await conn.close()


# -- charge ids --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
async def test_every_payment_names_its_charge_and_intent_in_any_order(
    start_billing: StartBilling, shape: Shape
) -> None:
    billing = await start_billing()
    total = 14700
    events: list[dict[str, Any]] = []
    expected = {}
    for n in range(4):
        spec = InvoiceSpec(invoice_id=f"in_Charge{shape}{n}")
        charge, intent = f"ch_3Pay{shape}{n}", f"pi_3Pay{shape}{n}"
        events += paid_lifecycle(shape, spec, total, charge=charge, intent=intent)
        expected[spec.invoice_id] = [(charge, intent, total)]
    await deliver(billing, events, seed=3)

    for invoice_id, wanted in expected.items():
        payments = (await billing.stub.ListPayments(pb.ListPaymentsRequest(invoice_id=invoice_id))).payments
        assert [(p.charge_id, p.payment_intent_id, p.amount.amount_minor) for p in payments] == wanted, invoice_id
        inv = await invoice(billing, invoice_id)
        assert (inv.status, inv.unattributed_paid.amount_minor) == (pb.INVOICE_STATUS_PAID_IN_FULL, 0)
    # and the domain event says so: the newest announcement of each payment names both ids
    conn = await billing.db()
    try:
        rows = await conn.fetch("SELECT payload FROM outbox WHERE subject LIKE '%.payment_applied' ORDER BY id")
    finally:
        await conn.close()
    announced: dict[str, tuple[str, str, int]] = {}
    for row in rows:
        applied = events_pb2.PaymentApplied.FromString(row["payload"])
        announced[applied.stripe_invoice_id] = (
            applied.charge_id,
            applied.payment_intent_id,
            applied.amount.amount_minor,
        )
    assert {i: [a] for i, a in announced.items()} == expected


# -- lines -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
async def test_lines_name_discount_coupon_product_and_their_own_tax(start_billing: StartBilling, shape: Shape) -> None:
    billing = await start_billing()
    spec = InvoiceSpec(
        invoice_id=f"in_Lines{shape}",
        lines=[LineSpec(), LineSpec(price=PRICE_ADDON, unit=1500, quantity=1, description="Priority support")],
        percent_off=20,
        tax_bps=825,
    )
    line_taxes = [970, 99]  # 8.25 % of (14700 - 2940) and of (1500 - 300)

    def taxed(obj: dict[str, Any]) -> dict[str, Any]:
        for line, tax in zip(obj["lines"]["data"], line_taxes, strict=True):
            if shape == "basil":
                line["taxes"] = [
                    {
                        "amount": tax,
                        "tax_behavior": "exclusive",
                        "taxability_reason": "standard_rated",
                        "taxable_amount": line["amount"],
                        "type": "tax_rate_details",
                        "tax_rate_details": {"tax_rate": "txr_1RaQ5qSalesTaxCA"},
                    }
                ]
            else:
                line["tax_amounts"] = [
                    {"amount": tax, "inclusive": False, "tax_rate": "txr_1RaQ5qSalesTaxCA", "taxable_amount": 0}
                ]
        if shape == "basil":  # an expanded discount names its coupon under `source`
            obj["discounts"] = [
                {"id": DISCOUNT, "object": "discount", "source": {"type": "coupon", "coupon": "SUMMER20"}}
            ]
        return obj

    total = 14029
    events = [
        ev("invoice.finalized", taxed(invoice_object(shape, spec)), T0, shape),
        ev("invoice.paid", taxed(invoice_object(shape, spec, status="paid", amount_paid=total)), T0 + 10, shape),
    ]
    await deliver(billing, events, seed=7)
    inv = await invoice(billing, spec.invoice_id)
    assert inv.tax.amount_minor == sum(line_taxes)
    items = [
        (line.stripe_price_id, line.stripe_product_id, line.tax_amount.amount_minor, line.tax_amount.currency)
        for line in inv.lines
        if line.kind == pb.LINE_KIND_ITEM
    ]
    assert items == [(spec.lines[0].price, PRODUCT, 970, "usd"), (PRICE_ADDON, PRODUCT, 99, "usd")]
    discounts = [
        (line.stripe_discount_id, line.stripe_coupon_id, line.amount.amount_minor)
        for line in inv.lines
        if line.kind == pb.LINE_KIND_DISCOUNT
    ]
    assert discounts == [(DISCOUNT, COUPON["id"], -3240)]
    conn = await billing.db()
    try:
        await assert_invariants(conn, spec.invoice_id)
    finally:
        await conn.close()


# -- credit holds --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
async def test_credit_holds_carry_reason_codes_placed_and_released(start_billing: StartBilling, shape: Shape) -> None:
    billing = await start_billing(BillingSettings(credit_hold=True))
    total = 14700

    def spec(name: str) -> InvoiceSpec:
        return InvoiceSpec(invoice_id=f"in_Hold{name}{shape}", customer=f"cus_Hold{name}{shape}")

    def failed(s: InvoiceSpec) -> list[dict[str, Any]]:
        final = invoice_object(shape, s, attempt_count=4, next_payment_attempt=None)
        return [
            ev("invoice.finalized", invoice_object(shape, s, next_payment_attempt=T0 + 3600), T0, shape),
            ev("invoice.payment_failed", final, T0 + 86400 * 14, shape),
        ]

    paid, voided, unpaid, both = spec("Paid"), spec("Void"), spec("Unpaid"), spec("Both")
    events = [
        *failed(paid),
        ev("invoice.paid", invoice_object(shape, paid, status="paid", amount_paid=total), T0 + 86400 * 16, shape),
        *failed(voided),
        ev("invoice.voided", invoice_object(shape, voided, status="void"), T0 + 86400 * 20, shape),
        ev("invoice.finalized", invoice_object(shape, unpaid), T0, shape),
        ev(
            "customer.subscription.updated",
            subscription_object(unpaid, status="unpaid", latest_invoice=unpaid.invoice_id),
            T0 + 86400 * 15,
            shape,
        ),
        *failed(both),
        ev(
            "customer.subscription.updated",
            subscription_object(both, status="unpaid", latest_invoice=both.invoice_id),
            T0 + 86400 * 15,
            shape,
        ),
    ]
    await deliver(billing, events, seed=11)

    async def hold(s: InvoiceSpec) -> pb.CreditHold:
        [found] = (await billing.stub.ListCreditHolds(pb.ListCreditHoldsRequest(stripe_customer_id=s.customer))).holds
        return found

    got = {s.invoice_id: await hold(s) for s in (paid, voided, unpaid, both)}
    assert {i: (h.reason_code, h.active, h.release_reason_code) for i, h in got.items()} == {
        paid.invoice_id: (pb.HOLD_REASON_FINAL_PAYMENT_FAILURE, False, pb.HOLD_REASON_INVOICE_PAID),
        voided.invoice_id: (pb.HOLD_REASON_FINAL_PAYMENT_FAILURE, False, pb.HOLD_REASON_INVOICE_VOIDED),
        unpaid.invoice_id: (pb.HOLD_REASON_SUBSCRIPTION_DELINQUENT, True, pb.HOLD_REASON_UNSPECIFIED),
        # the invoice's own final failure names the hold, whichever came first
        both.invoice_id: (pb.HOLD_REASON_FINAL_PAYMENT_FAILURE, True, pb.HOLD_REASON_UNSPECIFIED),
    }
    # the free text stays beside the code
    assert "final payment attempt failed" in got[paid.invoice_id].reason
    assert "paid in full" in got[paid.invoice_id].release_reason
    assert "voided" in got[voided.invoice_id].release_reason
    assert "unpaid" in got[unpaid.invoice_id].reason
    policy = await billing.stub.ListCreditHolds(pb.ListCreditHoldsRequest(page_size=1))
    assert (policy.credit_hold_enabled, policy.release_on_pay) == (True, True)


# -- credit memos and balances ------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
async def test_credit_memos_leave_superseded_out_unless_asked(start_billing: StartBilling, shape: Shape) -> None:
    """A refund carried by a post-payment credit note has its own memo superseded, and a voided
    note credits nothing: the default list sums to the credit outstanding (the note and the
    other refund), each counted once; the flag shows the history too."""
    billing = await start_billing()
    spec = InvoiceSpec(invoice_id=f"in_Memos{shape}")
    total, charge, intent = 14700, f"ch_3Memo{shape}", f"pi_3Memo{shape}"
    carried = refund_object(f"re_Carried{shape}", 2000, charge=charge, intent=intent, currency="usd", created=T0 + 200)
    alone = refund_object(f"re_Alone{shape}", 500, charge=charge, intent=intent, currency="usd", created=T0 + 300)
    note = credit_note_object(
        shape,
        spec,
        note_id=f"cn_Memo{shape}",
        amount=2000,
        created=T0 + 210,
        note_type="post_payment",
        refund=carried["id"],
    )
    # A credit note issued, then voided: it no longer credits anything, so it is history too.
    voided = credit_note_object(
        shape, spec, note_id=f"cn_Void{shape}", amount=700, created=T0 + 400, note_type="post_payment"
    )
    voided_later = {**voided, "status": "void", "voided_at": T0 + 500}
    events = [
        *paid_lifecycle(shape, spec, total, charge=charge, intent=intent),
        ev("refund.created", carried, T0 + 200, shape),
        ev("refund.created", alone, T0 + 300, shape),
        ev("credit_note.created", note, T0 + 210, shape),
        ev("credit_note.created", voided, T0 + 400, shape),
        ev("credit_note.voided", voided_later, T0 + 500, shape),
    ]
    await deliver(billing, events, seed=5)

    async def memos(**flags: Any) -> dict[str, tuple[str, int]]:
        request = pb.ListCreditMemosRequest(invoice_id=spec.invoice_id, **flags)
        listed = (await billing.stub.ListCreditMemos(request)).credit_memos
        return {m.source_id: (m.status, m.amount.amount_minor) for m in listed}

    default = await memos()
    assert default == {note["id"]: ("issued", 2000), alone["id"]: ("issued", 500)}
    assert sum(amount for _, amount in default.values()) == 2500
    assert await memos(include_superseded=True) == {
        **default,
        carried["id"]: ("superseded", 2000),
        voided["id"]: ("void", 700),
    }
    one_page = (
        await billing.stub.ListCreditMemos(pb.ListCreditMemosRequest(invoice_id=spec.invoice_id, page_size=1))
    ).credit_memos
    assert [m.status for m in one_page] == ["issued"]


async def test_the_balance_of_a_customer_never_seen_is_not_found(start_billing: StartBilling) -> None:
    billing = await start_billing()
    spec = InvoiceSpec(invoice_id="in_KnownCustomer01", customer="cus_KnownOnlyByDraft")
    await deliver(billing, [ev("invoice.created", invoice_object("basil", spec, status="draft"), T0, "basil")], seed=1)
    known = await billing.stub.GetCustomerBalance(pb.GetCustomerBalanceRequest(stripe_customer_id=spec.customer))
    assert (known.stripe_customer_id, list(known.balances)) == (spec.customer, [])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await billing.stub.GetCustomerBalance(pb.GetCustomerBalanceRequest(stripe_customer_id="cus_NeverSeen000"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "cus_NeverSeen000" in (err.value.details() or "")

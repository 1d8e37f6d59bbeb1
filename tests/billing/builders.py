"""Realistic Stripe billing objects for the billing tests, built from Stripe's published examples.

Every object starts as `fixture(name)` (current shape) or `fixture(name, legacy=True)` (before
2025-03-31) and has its placeholders (`obj_123`, `currency`, random integers, 1234567890
timestamps) replaced by consistent values: a 3-seat subscription with a 20% coupon and US sales
tax, the way Stripe bills it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from google.protobuf.timestamp_pb2 import Timestamp
from syncmesh.events.v1 import envelope_pb2

from services.common.events import StripeEvent, parse_event, to_envelope
from tests.support.stripe_events import LEGACY_API_VERSION, event, fixture

Shape = Literal["basil", "legacy"]
Json = dict[str, Any]


def ts(day: str) -> int:
    """Unix seconds of an ISO date or date-time (UTC)."""
    parsed = datetime.fromisoformat(day)
    return int((parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).timestamp())


PERIOD_START = ts("2025-06-15")
PERIOD_END = ts("2025-07-15")
CUSTOMER = "cus_RtB3mXq9LkP2aZ"
SUBSCRIPTION = "sub_1RaQ5nB7WZ01zgkWp0Ms4Kd2"
PRICE_PRO = "price_1RaQ4xB7WZ01zgkWProSeat"
PRICE_ADDON = "price_1RaQ4yB7WZ01zgkWAddOn01"
DISCOUNT = "di_1RaQ5oB7WZ01zgkWs20Off00"
COUPON = {"id": "SUMMER20", "object": "coupon", "name": "Summer 20% off", "percent_off": 20, "duration": "once"}


@dataclass
class LineSpec:
    price: str = PRICE_PRO
    unit: int = 4900
    quantity: int = 3
    description: str = "3 x Pro seat (at $49.00 / month)"
    start: int = PERIOD_START
    end: int = PERIOD_END
    proration: bool = False
    discountable: bool = True


@dataclass
class InvoiceSpec:
    invoice_id: str = "in_1RaQ5pB7WZ01zgkWInv00001"
    customer: str = CUSTOMER
    currency: str = "usd"
    created: int = PERIOD_START
    lines: list[LineSpec] = field(default_factory=lambda: [LineSpec()])
    #: Percent off (whole percent) from DISCOUNT/COUPON, allocated to discountable lines.
    percent_off: int = 0
    #: Exclusive tax rate in basis points on the discounted subtotal.
    tax_bps: int = 0
    subscription: str | None = SUBSCRIPTION
    number: str = "A1B2C3D4-0001"
    #: Lines the event carries before `has_more` (Stripe puts 10 in webhooks).
    page: int = 10


def _alloc_discounts(spec: InvoiceSpec) -> list[int]:
    """Stripe computes each line's discount as round(line amount * percent)."""
    return [
        (line.unit * line.quantity * spec.percent_off + 50) // 100 if line.discountable else 0 for line in spec.lines
    ]


def line_object(shape: Shape, spec: InvoiceSpec, index: int, line: LineSpec, discount: int) -> Json:
    obj = fixture("line_item", legacy=shape == "legacy")
    amount = line.unit * line.quantity
    obj.update(
        id=f"il_{spec.invoice_id[3:]}_{index:03d}",
        invoice=spec.invoice_id,
        amount=amount,
        currency=spec.currency,
        description=line.description,
        quantity=line.quantity,
        period={"start": line.start, "end": line.end},
        discountable=line.discountable,
        discount_amounts=[{"amount": discount, "discount": DISCOUNT}] if discount else [],
        discounts=[DISCOUNT] if discount else [],
    )
    if shape == "legacy":
        price = obj["price"]
        price.update(
            id=line.price,
            currency=spec.currency,
            unit_amount=line.unit,
            unit_amount_decimal=str(line.unit),
            type="recurring",
            recurring={"interval": "month", "interval_count": 1, "usage_type": "licensed"},
            product="prod_RaQ4wProSeats",
            created=spec.created - 86400 * 30,
        )
        obj.update(
            proration=line.proration,
            proration_details={"credited_items": None},
            subscription=spec.subscription,
            type="subscription" if spec.subscription else "invoiceitem",
            invoice_item=None if spec.subscription else f"ii_{index:05d}",
            amount_excluding_tax=amount,
            unit_amount_excluding_tax=str(line.unit),
        )
    else:
        obj["pricing"] = {
            "type": "price_details",
            "price_details": {"price": line.price, "product": "prod_RaQ4wProSeats"},
            "unit_amount_decimal": str(line.unit),
        }
        details = {
            "invoice_item": None,
            "proration": line.proration,
            "proration_details": {"credited_items": None},
            "subscription": spec.subscription,
            "subscription_item": f"si_RaQ5n{index:03d}",
        }
        obj["parent"] = {
            "type": "subscription_item_details",
            "subscription_item_details": details,
            "invoice_item_details": None,
        }
        obj.update(subtotal=amount, taxes=[], pretax_credit_amounts=[], subscription=spec.subscription)
    return obj


def invoice_object(
    shape: Shape,
    spec: InvoiceSpec,
    *,
    status: str = "open",
    amount_paid: int = 0,
    next_payment_attempt: int | None = None,
    attempt_count: int = 0,
    charge: str | None = None,
) -> Json:
    """The invoice as Stripe sends it in an event: the first `spec.page` lines, with has_more."""
    obj = fixture("invoice", legacy=shape == "legacy")
    discounts = _alloc_discounts(spec)
    lines = [line_object(shape, spec, i + 1, line, discounts[i]) for i, line in enumerate(spec.lines)]
    subtotal = sum(line["amount"] for line in lines)
    discount_total = sum(discounts)
    tax = ((subtotal - discount_total) * spec.tax_bps + 5000) // 10000
    total = subtotal - discount_total + tax
    transitions: dict[str, int | None] = {
        "finalized_at": None,
        "marked_uncollectible_at": None,
        "paid_at": None,
        "voided_at": None,
    }
    if status != "draft":
        transitions["finalized_at"] = spec.created + 3600
    if status == "paid":
        transitions["paid_at"] = spec.created + 3700
    obj.update(
        id=spec.invoice_id,
        customer=spec.customer,
        currency=spec.currency,
        created=spec.created,
        effective_at=spec.created + 3600 if status != "draft" else None,
        due_date=None,
        number=spec.number if status != "draft" else None,
        status=status,
        status_transitions=transitions,
        billing_reason="subscription_cycle" if spec.subscription else "manual",
        period_start=spec.created - 86400 * 30,
        period_end=spec.created,
        subtotal=subtotal,
        subtotal_excluding_tax=subtotal,
        total=total,
        total_excluding_tax=total - tax,
        amount_due=total,
        amount_paid=amount_paid,
        amount_remaining=max(0, total - amount_paid),
        attempt_count=attempt_count,
        attempted=attempt_count > 0,
        next_payment_attempt=next_payment_attempt,
        webhooks_delivered_at=spec.created,
        total_discount_amounts=[{"amount": discount_total, "discount": DISCOUNT}] if discount_total else [],
        discounts=[DISCOUNT] if discount_total else [],
        lines={
            "object": "list",
            "data": lines[: spec.page],
            "has_more": len(lines) > spec.page,
            "total_count": len(lines),
            "url": f"/v1/invoices/{spec.invoice_id}/lines",
        },
        last_finalization_error=None,
        from_invoice=None,
    )
    if shape == "legacy":
        obj.update(
            subscription=spec.subscription,
            subscription_details={"metadata": {}},
            discount={"id": DISCOUNT, "object": "discount", "coupon": COUPON} if discount_total else None,
            tax=tax if tax else None,
            total_tax_amounts=[{"amount": tax, "inclusive": False, "tax_rate": "txr_1RaQ5qSalesTaxCA"}] if tax else [],
            charge=charge,
            paid=status == "paid",
            paid_out_of_band=False,
            payment_intent=None,
        )
    else:
        obj.update(
            parent={
                "type": "subscription_details",
                "subscription_details": {"subscription": spec.subscription, "metadata": {}},
                "quote_details": None,
            }
            if spec.subscription
            else None,
            total_taxes=[
                {
                    "amount": tax,
                    "tax_behavior": "exclusive",
                    "taxability_reason": "standard_rated",
                    "taxable_amount": subtotal - discount_total,
                    "type": "tax_rate_details",
                    "tax_rate_details": {"tax_rate": "txr_1RaQ5qSalesTaxCA"},
                }
            ]
            if tax
            else [],
            amount_overpaid=0,
            shipping_cost=None,
            total_pretax_credit_amounts=[],
        )
    return obj


def all_lines(shape: Shape, spec: InvoiceSpec) -> list[Json]:
    discounts = _alloc_discounts(spec)
    return [line_object(shape, spec, i + 1, line, discounts[i]) for i, line in enumerate(spec.lines)]


def invoice_payment_object(spec: InvoiceSpec, amount: int, *, payment_id: str, intent: str, paid_at: int) -> Json:
    obj = fixture("invoice_payment")
    obj.update(
        id=payment_id,
        invoice=spec.invoice_id,
        currency=spec.currency,
        amount_paid=amount,
        amount_requested=amount,
        created=paid_at,
        livemode=False,
        status="paid",
        payment={"type": "payment_intent", "payment_intent": intent},
        status_transitions={"canceled_at": None, "paid_at": paid_at},
    )
    return obj


def charge_object(
    shape: Shape,
    spec: InvoiceSpec,
    amount: int,
    *,
    charge_id: str,
    intent: str,
    created: int,
    refunds: list[Json] | None = None,
) -> Json:
    obj = fixture("charge", legacy=shape == "legacy")
    refunded = sum(r["amount"] for r in refunds or [])
    obj.update(
        id=charge_id,
        amount=amount,
        amount_captured=amount,
        amount_refunded=refunded,
        refunded=refunded == amount,
        captured=True,
        currency=spec.currency,
        customer=spec.customer,
        created=created,
        payment_intent=intent,
        status="succeeded",
        paid=True,
        balance_transaction=f"txn_{charge_id[3:]}",
        refunds={"object": "list", "data": refunds or [], "has_more": False, "url": f"/v1/charges/{charge_id}/refunds"},
        source=None,
        transfer_data=None,
    )
    if shape == "legacy":
        obj["invoice"] = spec.invoice_id
    return obj


def refund_object(refund_id: str, amount: int, *, charge: str, intent: str, currency: str, created: int) -> Json:
    obj = fixture("refund")
    obj.update(
        id=refund_id,
        amount=amount,
        charge=charge,
        payment_intent=intent,
        currency=currency,
        created=created,
        status="succeeded",
        reason="requested_by_customer",
        balance_transaction=f"txn_{refund_id[3:]}",
    )
    return obj


def credit_note_object(
    shape: Shape,
    spec: InvoiceSpec,
    *,
    note_id: str,
    amount: int,
    created: int,
    note_type: str = "pre_payment",
    status: str = "issued",
    refund: str | None = None,
    voided_at: int | None = None,
) -> Json:
    obj = fixture("credit_note", legacy=shape == "legacy")
    line = {
        **obj["lines"]["data"][1],
        "id": f"cnli_{note_id[3:]}_1",
        "amount": amount,
        "unit_amount": amount,
        "unit_amount_decimal": str(amount),
        "description": "Service credit for downtime",
        "pretax_credit_amounts": [],
    }
    obj.update(
        id=note_id,
        invoice=spec.invoice_id,
        customer=spec.customer,
        currency=spec.currency,
        amount=amount,
        subtotal=amount,
        subtotal_excluding_tax=amount,
        total=amount,
        total_excluding_tax=amount,
        created=created,
        effective_at=created,
        status=status,
        type=note_type,
        voided_at=(voided_at or created) if status == "void" else None,
        number=f"{spec.number}-CN-01",
        lines={"object": "list", "data": [line], "has_more": False, "url": f"/v1/credit_notes/{note_id}/lines"},
        pretax_credit_amounts=[],
        shipping_cost=None,
        tax_amounts=[],
    )
    if shape == "legacy":
        obj["refund"] = refund
    else:
        obj.update(
            refunds=[{"amount_refunded": amount, "refund": refund, "type": "refund"}] if refund else [],
            post_payment_amount=amount if note_type == "post_payment" else 0,
            pre_payment_amount=amount if note_type == "pre_payment" else 0,
            total_taxes=[],
        )
    return obj


def subscription_object(spec: InvoiceSpec, *, status: str, latest_invoice: str) -> Json:
    obj = fixture("subscription")
    obj.update(id=spec.subscription, customer=spec.customer, status=status, latest_invoice=latest_invoice)
    return obj


def stripe_event(
    event_type: str,
    obj: Json,
    *,
    created: int,
    shape: Shape = "basil",
    event_id: str | None = None,
) -> Json:
    kwargs: dict[str, Any] = {"created": created, "id": event_id}
    if shape == "legacy":
        kwargs["api_version"] = LEGACY_API_VERSION
    return event(event_type, json.loads(json.dumps(obj)), **kwargs)


def envelope_for(evt: Json, *, received_at: int | None = None) -> tuple[StripeEvent, envelope_pb2.StripeEventEnvelope]:
    parsed = parse_event(json.dumps(evt).encode())
    env = envelope_pb2.StripeEventEnvelope()
    env.ParseFromString(
        to_envelope(
            parsed,
            source=envelope_pb2.EVENT_SOURCE_WEBHOOK,
            received_at=datetime.fromtimestamp(received_at, tz=UTC) if received_at else None,
        )
    )
    return parsed, env


def timestamp(seconds: int) -> Timestamp:
    return Timestamp(seconds=seconds)

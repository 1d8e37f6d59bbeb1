"""The side-by-side stream (section 8): customer, product, price, invoice and charge events as
whole customer journeys, the same bytes for the peer and for the mesh.

Adapted from the peer harness's `gen_events.py` (peers/stripe-sync-engine, written for the
issue-20 comparison): every 10 customers a product and two prices; per customer
`customer.created`, `customer.updated` (+2 s), `invoice.created` / `finalized` / `paid`
(+3/+4/+5 s), `charge.succeeded` (+5 s), and for a quarter of them `charge.refunded` (+40 s).
Every event of one object has its own `created` second, so the right final state is known
whatever the delivery order: every invoice paid, every customer updated, every refunded charge
refunded. Objects are shaped like API-version 2020-08-27 objects (what the peer pins); the
payloads are synthetic. Deterministic for a seed.
"""

# ruff: noqa: E501

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass
from typing import Any

API_VERSION = "2020-08-27"
ALNUM = string.ascii_letters + string.digits


def rid(rng, prefix, tag, n=14):
    return f"{prefix}_{tag}{''.join(rng.choice(ALNUM) for _ in range(n))}"


def event(rng, tag, etype, created, obj, prev=None):
    data = {"object": obj}
    if prev is not None:
        data["previous_attributes"] = prev
    return {
        "id": rid(rng, "evt", tag, 20),
        "object": "event",
        "api_version": API_VERSION,
        "created": created,
        "data": data,
        "livemode": False,
        "pending_webhooks": 2,
        "request": {"id": rid(rng, "req", tag, 12), "idempotency_key": None},
        "type": etype,
    }


FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Radia", "Linus", "Frances", "Donald"]
LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Thompson", "Perlman", "Torvalds", "Allen", "Knuth"]
CITIES = [("Berlin", "DE", "10115"), ("Austin", "US", "78701"), ("Lyon", "FR", "69001"), ("Osaka", "JP", "530-0001")]


def customer_obj(rng, cid, created, name, email):
    return {
        "id": cid,
        "object": "customer",
        "address": None,
        "balance": 0,
        "created": created,
        "currency": None,
        "default_currency": None,
        "default_source": None,
        "delinquent": False,
        "description": None,
        "discount": None,
        "email": email,
        "invoice_prefix": "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(8)),
        "invoice_settings": {
            "custom_fields": None,
            "default_payment_method": None,
            "footer": None,
            "rendering_options": None,
        },
        "livemode": False,
        "metadata": {},
        "name": name,
        "next_invoice_sequence": 1,
        "phone": None,
        "preferred_locales": [],
        "shipping": None,
        "tax_exempt": "none",
        "test_clock": None,
    }


def product_obj(rng, pid, created, idx):
    return {
        "id": pid,
        "object": "product",
        "active": True,
        "attributes": [],
        "created": created,
        "default_price": None,
        "description": f"Plan {idx} with seats, storage and support",
        "images": [],
        "livemode": False,
        "marketing_features": [{"name": "Priority support"}, {"name": "SSO"}],
        "metadata": {"plan_code": f"plan_{idx}"},
        "name": f"Plan {idx}",
        "package_dimensions": None,
        "shippable": None,
        "statement_descriptor": None,
        "tax_code": None,
        "type": "service",
        "unit_label": "seat",
        "updated": created,
        "url": None,
    }


def price_obj(pid, product, created, interval, amount):
    return {
        "id": pid,
        "object": "price",
        "active": True,
        "billing_scheme": "per_unit",
        "created": created,
        "currency": "usd",
        "custom_unit_amount": None,
        "livemode": False,
        "lookup_key": None,
        "metadata": {},
        "nickname": f"{interval}ly",
        "product": product,
        "recurring": {
            "aggregate_usage": None,
            "interval": interval,
            "interval_count": 1,
            "trial_period_days": None,
            "usage_type": "licensed",
        },
        "tax_behavior": "unspecified",
        "tiers_mode": None,
        "transform_quantity": None,
        "type": "recurring",
        "unit_amount": amount,
        "unit_amount_decimal": str(amount),
    }


def invoice_obj(rng, tag, iid, cust, price, created, status, charge_id, pi_id, qty, sub_id):
    amount = price["unit_amount"] * qty
    paid = status == "paid"
    line = {
        "id": rid(rng, "il", tag),
        "object": "line_item",
        "amount": amount,
        "currency": "usd",
        "description": f"{qty} x {price['product']} (at ${price['unit_amount'] / 100:.2f} / {price['recurring']['interval']})",
        "discount_amounts": [],
        "discountable": True,
        "discounts": [],
        "livemode": False,
        "metadata": {},
        "period": {"end": created + 2592000, "start": created},
        "price": price,
        "proration": False,
        "quantity": qty,
        "subscription": sub_id,
        "subscription_item": rid(rng, "si", tag),
        "tax_amounts": [],
        "tax_rates": [],
        "type": "subscription",
    }
    return {
        "id": iid,
        "object": "invoice",
        "account_country": "US",
        "account_name": "Peer Bench Inc",
        "account_tax_ids": None,
        "amount_due": amount,
        "amount_paid": amount if paid else 0,
        "amount_remaining": 0 if paid else amount,
        "application_fee_amount": None,
        "attempt_count": 1 if paid else 0,
        "attempted": paid,
        "auto_advance": not paid,
        "automatic_tax": {"enabled": False, "status": None},
        "billing_reason": "subscription_create",
        "charge": charge_id if paid else None,
        "collection_method": "charge_automatically",
        "created": created,
        "currency": "usd",
        "custom_fields": [{"name": "PO number", "value": f"PO-{rng.randint(1000, 9999)}"}],
        "customer": cust["id"],
        "customer_address": None,
        "customer_email": cust["email"],
        "customer_name": cust["name"],
        "customer_phone": None,
        "customer_shipping": None,
        "customer_tax_exempt": "none",
        "customer_tax_ids": [],
        "default_payment_method": None,
        "default_source": None,
        "default_tax_rates": [],
        "description": None,
        "discount": None,
        "discounts": [],
        "due_date": None,
        "ending_balance": 0 if status != "draft" else None,
        "footer": None,
        "hosted_invoice_url": None if status == "draft" else f"https://invoice.example.invalid/i/{iid}",
        "invoice_pdf": None if status == "draft" else f"https://invoice.example.invalid/i/{iid}/pdf",
        "last_finalization_error": None,
        "lines": {
            "object": "list",
            "data": [line],
            "has_more": False,
            "total_count": 1,
            "url": f"/v1/invoices/{iid}/lines",
        },
        "livemode": False,
        "metadata": {},
        "next_payment_attempt": None,
        "number": None if status == "draft" else f"{cust['invoice_prefix']}-0001",
        "on_behalf_of": None,
        "paid": paid,
        "paid_out_of_band": False,
        "payment_intent": pi_id if status != "draft" else None,
        "payment_settings": {"payment_method_options": None, "payment_method_types": None},
        "period_end": created,
        "period_start": created,
        "post_payment_credit_notes_amount": 0,
        "pre_payment_credit_notes_amount": 0,
        "quote": None,
        "receipt_number": None,
        "starting_balance": 0,
        "statement_descriptor": None,
        "status": status,
        "status_transitions": {
            "finalized_at": None if status == "draft" else created + 1,
            "marked_uncollectible_at": None,
            "paid_at": created + 2 if paid else None,
            "voided_at": None,
        },
        "subscription": sub_id,
        "subtotal": amount,
        "tax": None,
        "total": amount,
        "total_discount_amounts": [],
        "total_tax_amounts": [],
        "transfer_data": None,
        "webhooks_delivered_at": None if status == "draft" else created + 1,
    }


def charge_obj(rng, tag, ch_id, cust, inv_id, pi_id, amount, created, refund=None):
    city, country, postal = rng.choice(CITIES)
    return {
        "id": ch_id,
        "object": "charge",
        "amount": amount,
        "amount_captured": amount,
        "amount_refunded": amount if refund else 0,
        "application": None,
        "application_fee": None,
        "application_fee_amount": None,
        "balance_transaction": rid(rng, "txn", tag),
        "billing_details": {
            "address": {
                "city": city,
                "country": country,
                "line1": None,
                "line2": None,
                "postal_code": postal,
                "state": None,
            },
            "email": cust["email"],
            "name": cust["name"],
            "phone": None,
        },
        "calculated_statement_descriptor": "PEERBENCH",
        "captured": True,
        "created": created,
        "currency": "usd",
        "customer": cust["id"],
        "description": "Subscription creation",
        "destination": None,
        "dispute": None,
        "disputed": False,
        "failure_balance_transaction": None,
        "failure_code": None,
        "failure_message": None,
        "fraud_details": {},
        "invoice": inv_id,
        "livemode": False,
        "metadata": {},
        "on_behalf_of": None,
        "order": None,
        "outcome": {
            "network_status": "approved_by_network",
            "reason": None,
            "risk_level": "normal",
            "risk_score": rng.randint(0, 60),
            "seller_message": "Payment complete.",
            "type": "authorized",
        },
        "paid": True,
        "payment_intent": pi_id,
        "payment_method": rid(rng, "pm", tag),
        "payment_method_details": {
            "card": {
                "brand": "visa",
                "checks": {"address_line1_check": None, "address_postal_code_check": "pass", "cvc_check": "pass"},
                "country": country,
                "exp_month": rng.randint(1, 12),
                "exp_year": 2030,
                "fingerprint": rid(rng, "fp", tag, 10)[3:],
                "funding": "credit",
                "installments": None,
                "last4": f"{rng.randint(0, 9999):04d}",
                "mandate": None,
                "network": "visa",
                "three_d_secure": None,
                "wallet": None,
            },
            "type": "card",
        },
        "receipt_email": cust["email"],
        "receipt_number": None,
        "receipt_url": f"https://pay.example.invalid/receipts/{ch_id}",
        "refunded": bool(refund),
        "refunds": {
            "object": "list",
            "data": [refund] if refund else [],
            "has_more": False,
            "total_count": 1 if refund else 0,
            "url": f"/v1/charges/{ch_id}/refunds",
        },
        "review": None,
        "shipping": None,
        "source": None,
        "source_transfer": None,
        "statement_descriptor": None,
        "statement_descriptor_suffix": None,
        "status": "succeeded",
        "transfer_data": None,
        "transfer_group": None,
    }


def generate(n, tag, seed, base, customer_ids=None):
    rng = random.Random(seed)
    timeline: list[tuple[int, int, dict[str, Any]]] = []  # (created, seq, event)
    seq = 0
    exp = dict(
        customers=0,
        customers_updated=0,
        products=0,
        prices=0,
        invoices=0,
        invoices_paid=0,
        charges=0,
        charges_refunded=0,
    )
    prices: list[dict[str, Any]] = []
    j = 0
    while len(timeline) < n:
        s = base + j  # one new customer journey per second
        if j % 10 == 0:
            prod_id = rid(rng, "prod", tag)
            pidx = j // 10
            timeline.append(
                (s - 1, seq, event(rng, tag, "product.created", s - 1, product_obj(rng, prod_id, s - 1, pidx)))
            )
            seq += 1
            exp["products"] += 1
            prices = []
            for interval, amount in (("month", 2500 + 100 * (pidx % 7)), ("year", 25000 + 1000 * (pidx % 7))):
                pr = price_obj(rid(rng, "price", tag), prod_id, s, interval, amount)
                prices.append(pr)
                timeline.append((s, seq, event(rng, tag, "price.created", s, pr)))
                seq += 1
                exp["prices"] += 1
        first, last = rng.choice(FIRST), rng.choice(LAST)
        name = f"{first} {last}"
        cid = customer_ids[j] if customer_ids else rid(rng, "cus", tag)
        email = f"{first.lower()}.{last.lower()}.{j}@example.invalid"
        cust = customer_obj(rng, cid, s, name, email)
        timeline.append((s, seq, event(rng, tag, "customer.created", s, cust)))
        seq += 1
        exp["customers"] += 1
        city, country, postal = rng.choice(CITIES)
        upd = dict(cust)
        upd.update(
            phone=f"+1555{rng.randint(1000000, 9999999)}",
            address={
                "city": city,
                "country": country,
                "line1": f"{rng.randint(1, 200)} Main St",
                "line2": None,
                "postal_code": postal,
                "state": None,
            },
            metadata={"tier": rng.choice(["free", "pro", "team"]), "crm_id": f"crm-{j}"},
        )
        timeline.append(
            (
                s + 2,
                seq,
                event(rng, tag, "customer.updated", s + 2, upd, prev={"phone": None, "address": None, "metadata": {}}),
            )
        )
        seq += 1
        exp["customers_updated"] += 1
        price = rng.choice(prices)
        qty = rng.randint(1, 5)
        iid, ch_id, pi_id, sub_id = rid(rng, "in", tag), rid(rng, "ch", tag), rid(rng, "pi", tag), rid(rng, "sub", tag)
        for k, (etype, status) in enumerate(
            (("invoice.created", "draft"), ("invoice.finalized", "open"), ("invoice.paid", "paid"))
        ):
            t = s + 3 + k
            inv = invoice_obj(rng, tag, iid, upd, price, s + 3, status, ch_id, pi_id, qty, sub_id)
            prev = None if k == 0 else {"status": "draft" if k == 1 else "open"}
            timeline.append((t, seq, event(rng, tag, etype, t, inv, prev=prev)))
            seq += 1
        exp["invoices"] += 1
        exp["invoices_paid"] += 1
        amount = price["unit_amount"] * qty
        ch = charge_obj(rng, tag, ch_id, upd, iid, pi_id, amount, s + 5)
        timeline.append((s + 5, seq, event(rng, tag, "charge.succeeded", s + 5, ch)))
        seq += 1
        exp["charges"] += 1
        if rng.random() < 0.25:
            refund = {
                "id": rid(rng, "re", tag),
                "object": "refund",
                "amount": amount,
                "balance_transaction": rid(rng, "txn", tag),
                "charge": ch_id,
                "created": s + 40,
                "currency": "usd",
                "metadata": {},
                "payment_intent": pi_id,
                "reason": "requested_by_customer",
                "receipt_number": None,
                "source_transfer_reversal": None,
                "status": "succeeded",
                "transfer_reversal": None,
            }
            chr_ = charge_obj(rng, tag, ch_id, upd, iid, pi_id, amount, s + 5, refund=refund)
            timeline.append(
                (
                    s + 40,
                    seq,
                    event(rng, tag, "charge.refunded", s + 40, chr_, prev={"amount_refunded": 0, "refunded": False}),
                )
            )
            seq += 1
            exp["charges_refunded"] += 1
        j += 1
    timeline.sort(key=lambda x: (x[0], x[1]))
    return [e for _, _, e in timeline], exp


@dataclass(frozen=True)
class Stream:
    """One run's events (compact JSON bodies, in `created` order) and the rows they must leave."""

    tag: str
    bodies: list[bytes]
    ids: list[str]
    types: list[str]
    expected: dict[str, int]


def stream(n: int, tag: str, seed: int, base: int) -> Stream:
    """About `n` events (whole journeys are kept); every object id carries `tag`."""
    if not tag.isalnum():
        raise ValueError("tag must be letters and digits")
    events, expected = generate(n, tag, seed, base)
    return Stream(
        tag=tag,
        bodies=[json.dumps(e, separators=(",", ":")).encode() for e in events],
        ids=[e["id"] for e in events],
        types=[e["type"] for e in events],
        expected=expected,
    )

"""Helpers for the CRM-export tests: Stripe-shaped objects (from Stripe's published examples,
placeholders replaced), publishing events, and reading the view back over gRPC."""

from __future__ import annotations

import json
from typing import Any

import grpc
from syncmesh.crm_export.v1 import crm_export_service_pb2 as pb
from syncmesh.crm_export.v1 import crm_export_service_pb2_grpc as pb_grpc
from syncmesh.events.v1 import envelope_pb2

from services.common.bus import Bus
from services.common.events import parse_event, to_envelope
from tests.support.stripe_events import event, fixture

T0 = 1_750_000_000  # 2025-06-15: recent enough for any days-back window used in the tests


def customer(cid: str = "cus_A", *, name: str = "Ada Lovelace", email: str = "ada@example.com", **extra: Any) -> dict:
    obj = fixture("customer")
    obj.update(
        id=cid,
        name=name,
        email=email,
        created=T0,
        balance=-500,
        address={
            "line1": "1 Main St",
            "line2": None,
            "city": "Paris",
            "state": None,
            "postal_code": "75001",
            "country": "FR",
        },
        metadata={"segment": "smb"},
    )
    obj.update(extra)
    return obj


def product(pid: str = "prod_A", *, name: str = "Pro", active: bool = True) -> dict:
    obj = fixture("product")
    obj.update(id=pid, name=name, description=f"{name} plan", active=active, created=T0, updated=T0)
    return obj


def invoice(
    iid: str = "in_A",
    *,
    customer_id: str = "cus_A",
    legacy: bool = False,
    status: str = "paid",
    product_id: str = "prod_A",
    amount: int = 3000,
    quantity: int = 2,
    subscription: str | None = None,
    email: str = "ada@example.com",
    attempt_count: int = 1,
) -> dict:
    """A paid (or open) invoice with one line, in the basil or the legacy shape."""
    obj = fixture("invoice", legacy=legacy)
    line = obj["lines"]["data"][0]
    line.update(
        id=f"il_{iid}",
        invoice=iid,
        amount=amount,
        quantity=quantity,
        currency="usd",
        period={"start": T0, "end": T0 + 30 * 86400},
        discount_amounts=[{"amount": 100, "discount": "di_1"}],
    )
    if legacy:
        line["price"]["product"] = product_id
        line["subscription"] = subscription
        obj["subscription"] = subscription
        obj["paid"] = status == "paid"
    else:
        line["parent"] = {
            "type": "invoice_item_details",
            "invoice_item_details": {
                "invoice_item": "ii_1",
                "proration": False,
                "proration_details": {"credited_items": None},
                "subscription": subscription,
            },
        }
        line["pricing"] = {
            "type": "price_details",
            "price_details": {"price": "price_1", "product": product_id},
            "unit_amount_decimal": str(amount // quantity),
        }
        line["subtotal"] = amount
        obj["parent"] = (
            {"type": "subscription_details", "subscription_details": {"subscription": subscription, "metadata": {}}}
            if subscription
            else None
        )
        obj["amount_overpaid"] = 0
    obj.update(
        id=iid,
        customer=customer_id,
        customer_email=email,
        status=status,
        total=amount - 100,
        subtotal=amount,
        amount_paid=amount - 100 if status == "paid" else 0,
        created=T0,
        period_start=T0,
        period_end=T0,
        attempt_count=attempt_count,
        attempted=attempt_count > 0,
        total_discount_amounts=[{"amount": 100, "discount": "di_1"}],
    )
    return obj


def subscription(
    sid: str = "sub_A",
    *,
    customer_id: str = "cus_A",
    status: str = "active",
    legacy: bool = False,
    product_id: str = "prod_A",
    quantity: int = 2,
    unit_amount: int = 1500,
) -> dict:
    obj = fixture("subscription", legacy=legacy)
    item = obj["items"]["data"][0]
    item["price"].update(product=product_id, unit_amount=unit_amount, currency="usd")
    item["plan"].update(product=product_id, amount=unit_amount, currency="usd", id="plan_1")
    item.update(id=f"si_{sid}", subscription=sid, quantity=quantity)
    if legacy:
        obj.update(current_period_start=T0, current_period_end=T0 + 30 * 86400)
    else:
        item.update(current_period_start=T0, current_period_end=T0 + 30 * 86400)
    canceled = status in ("canceled", "incomplete_expired")
    obj.update(
        id=sid,
        customer=customer_id,
        status=status,
        created=T0,
        start_date=T0,
        currency="usd",
        canceled_at=T0 + 86400 if canceled else None,
        ended_at=T0 + 86400 if canceled else None,
        cancel_at=None,
    )
    return obj


async def publish(bus: Bus, evt: dict) -> None:
    parsed = parse_event(json.dumps(evt).encode())
    await bus.publish(parsed.subject, to_envelope(parsed, source=envelope_pb2.EVENT_SOURCE_WEBHOOK), msg_id=parsed.id)


def stub(port: int) -> tuple[grpc.aio.Channel, pb_grpc.CrmExportServiceStub]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return channel, pb_grpc.CrmExportServiceStub(channel)


async def view(api: pb_grpc.CrmExportServiceStub) -> dict[str, Any]:
    """Every client, product and contract, from ExportSnapshot, keyed by id (for comparisons)."""
    clients, products, contracts = {}, {}, {}
    async for item in api.ExportSnapshot(pb.ExportSnapshotRequest()):
        kind = item.WhichOneof("item")
        if kind == "client":
            clients[item.client.client_id] = item.client
        elif kind == "product":
            products[item.product.stripe_product_id] = item.product
        else:
            contracts[item.contract.contract_id] = item.contract
    return {"clients": clients, "products": products, "contracts": contracts}


__all__ = ["event", "fixture"]

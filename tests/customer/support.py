"""Helpers for the customer service's tests: Stripe customer objects in both shapes, running
events through the real handler on a real database, publishing envelopes to real NATS."""

from __future__ import annotations

import json
import uuid
from typing import Any

import asyncpg
from syncmesh.events.v1 import envelope_pb2

from services.common.bus import Bus
from services.common.consumer import BatchItem, HandlerContext
from services.common.events import parse_event, to_envelope
from services.common.settings import Settings
from services.customer.handlers import apply
from tests.support.stripe_events import event, fixture


def new_customer_id() -> str:
    return "cus_" + uuid.uuid4().hex[:14]


def current_customer(stripe_id: str | None = None, **fields: Any) -> dict[str, Any]:
    """Stripe's current-shape example customer with its placeholders replaced."""
    obj = fixture("customer")
    obj.update(
        id=stripe_id or new_customer_id(),
        created=1_700_000_000,
        email="Ada.Lovelace@Example.com",
        name="Ada Lovelace",
        phone="+44 20 7946 0000",
        description="Analytical Engines Ltd",
        currency="gbp",
        balance=-2500,
        address={
            "city": "London",
            "country": "GB",
            "line1": "12 St James's Square",
            "line2": None,
            "postal_code": "SW1Y 4JH",
            "state": None,
        },
        metadata={"netsuite_subsidiary": "UK"},
    )
    obj.pop("discount", None)
    obj.update(fields)
    return obj


def legacy_customer(stripe_id: str | None = None, **fields: Any) -> dict[str, Any]:
    """A customer in the pre-2019-10-17 shape (as localstripe still sends): `account_balance`,
    `sources` and `subscriptions` lists, no `balance`."""
    cid = stripe_id or new_customer_id()
    obj: dict[str, Any] = {
        "id": cid,
        "object": "customer",
        "account_balance": 1200,
        "created": 1_500_000_000,
        "currency": "usd",
        "default_source": None,
        "delinquent": True,
        "description": None,
        "discount": None,
        "email": "grace@navy.example",
        "livemode": False,
        "metadata": {"legacy_id": 42},
        "shipping": None,
        "sources": {"object": "list", "data": [], "has_more": False, "url": f"/v1/customers/{cid}/sources"},
        "subscriptions": {"object": "list", "data": [], "has_more": False, "url": f"/v1/customers/{cid}/subscriptions"},
    }
    obj.update(fields)
    return obj


def customer_event(event_type: str, obj: dict[str, Any], *, created: int, id: str | None = None) -> dict[str, Any]:
    return event(event_type, obj, created=created, id=id)


async def run_handler(conn: asyncpg.Connection, settings: Settings, evt: dict[str, Any]) -> HandlerContext:
    """The handler inside a transaction, exactly as the consumer calls it (minus the dedup)."""
    parsed = parse_event(json.dumps(evt).encode())
    ctx = HandlerContext(
        conn=conn,
        service="customer",
        settings=settings,
        envelope=envelope_pb2.StripeEventEnvelope(event_id=parsed.id, event_type=parsed.type),
    )
    async with conn.transaction():
        await apply(conn, [BatchItem.alone(ctx, parsed)])
    return ctx


async def publish(bus: Bus, evt: dict[str, Any]) -> None:
    parsed = parse_event(json.dumps(evt).encode())
    await bus.publish(parsed.subject, to_envelope(parsed, source=envelope_pb2.EVENT_SOURCE_WEBHOOK), msg_id=parsed.id)


async def close_client(client: object) -> None:
    """Close an SDK client's aiohttp session (the SDK has no public close on StripeClient)."""
    await client._requestor._client.close_async()  # type: ignore[attr-defined]

"""An invoice with more lines than an event carries: the rest is fetched from Stripe (here
localstripe, through the official SDK); without a key the event is retried, never recorded short."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest
from syncmesh.events.v1 import envelope_pb2

from services.common import db
from services.common.consumer import BatchItem, HandlerContext
from services.common.errors import RetryableError
from services.common.events import parse_event
from services.common.settings import Settings
from services.crm_export import store
from services.crm_export.app import DEFINITION
from services.crm_export.handlers import apply
from tests.conftest import stripe_client_for
from tests.crm_export.support import event

MIGRATIONS = [("runtime", db.RUNTIME_MIGRATIONS), ("crm-export", DEFINITION.migrations)]


async def _apply(conn: asyncpg.Connection, settings: Settings, evt: dict[str, Any]) -> None:
    parsed = parse_event(json.dumps(evt).encode())
    async with conn.transaction():
        ctx = HandlerContext(
            conn=conn,
            service="crm-export",
            settings=settings,
            envelope=envelope_pb2.StripeEventEnvelope(event_id=parsed.id),
        )
        await apply(conn, [BatchItem.alone(ctx, parsed)])


async def test_lines_beyond_the_first_page_are_fetched(localstripe: Any, database_url: str) -> None:
    client = stripe_client_for(localstripe)
    card = await client.v1.payment_methods.create_async(
        {"type": "card", "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"}}
    )
    customer = await client.v1.customers.create_async(
        {"name": "Many Lines", "payment_method": card.id, "invoice_settings": {"default_payment_method": card.id}}
    )
    product = await client.v1.products.create_async({"name": "Base"})
    plan = await client.v1.plans.create_async(
        {"product": product.id, "amount": 1000, "currency": "usd", "interval": "month"}
    )
    await client.v1.subscriptions.create_async({"customer": customer.id, "items": [{"plan": plan.id}]})
    for i in range(12):
        await client.v1.invoice_items.create_async(
            {"customer": customer.id, "amount": 100 + i, "currency": "usd", "description": f"item {i}"}
        )
    inv = await client.v1.invoices.create_async({"customer": customer.id})
    paid = (await client.v1.invoices.pay_async(inv.id)).to_dict()
    paid["lines"]["data"] = paid["lines"]["data"][:10]  # as a webhook carries it
    paid["lines"]["has_more"] = True
    evt = event("invoice.paid", paid, created=paid["created"])

    pool = await db.create_pool(database_url, DEFINITION.schema)
    try:
        await db.migrate(pool, DEFINITION.schema, MIGRATIONS)
        async with pool.acquire() as conn:
            with pytest.raises(RetryableError, match="SYNCMESH_STRIPE_API_KEY"):
                await _apply(conn, Settings(mode="test"), evt)
            assert await store.get_contract(conn, inv.id) is None  # nothing recorded short

            keyed = Settings(mode="test", stripe_api_key="sk_test_localstripe", stripe_api_base=localstripe.url)
            await _apply(conn, keyed, evt)
            record = await store.get_contract(conn, inv.id)
    finally:
        await pool.close()
    assert record is not None and len(record.contract.lines) == 13
    assert sum(line.amount_minor for line in record.contract.lines) == 1000 + sum(100 + i for i in range(12))

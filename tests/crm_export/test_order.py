"""Order-independence and idempotency: any order and any duplication of a lifecycle's events,
through the real handler and store against PostgreSQL, ends in the same view."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from services.common import db
from services.common.consumer import HandlerContext
from services.common.events import StripeEvent, parse_event
from services.common.settings import Settings
from services.crm_export import mapping, store
from services.crm_export.app import DEFINITION
from services.crm_export.handlers import handle
from syncmesh.events.v1 import envelope_pb2
from tests.crm_export.support import T0, customer, event, invoice, product, subscription

TABLES = "stripe_customers, clients, products, contracts, contract_lines, subscriptions, invoice_payments, outbox"
MIGRATIONS = [("runtime", db.RUNTIME_MIGRATIONS), ("crm-export", DEFINITION.migrations)]


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(database_url, DEFINITION.schema)
    await db.migrate(pool, DEFINITION.schema, MIGRATIONS)
    async with pool.acquire() as conn, conn.transaction():
        current = (await store.current_settings(conn)).settings
        both = mapping.CrmSettings(
            contract_sources=(mapping.INVOICE, mapping.SUBSCRIPTION),
            days_back=current.days_back,
            customer_field_mappings=(mapping.FieldMapping("metadata.segment", "Segment"),),
        )
        await store.save_settings(conn, both, changed_by="test")
    yield pool
    await pool.close()


def lifecycle() -> list[StripeEvent]:
    """One customer's month, with two events in the same second as Stripe sends them."""
    raw = [
        event("customer.created", customer(metadata={"segment": "smb"}), created=T0),
        event("customer.updated", customer(name="Ada King", metadata={"segment": "mid"}), created=T0 + 50),
        event("customer.updated", customer(name="Ada Queen", metadata={"segment": "ent"}), created=T0 + 90),
        event("product.created", product(), created=T0),
        event("product.updated", product(name="Pro 2", active=False), created=T0 + 70),
        event("customer.subscription.created", subscription(status="incomplete"), created=T0 + 10),
        event("customer.subscription.updated", subscription(status="active", quantity=3), created=T0 + 10),
        event("customer.subscription.updated", subscription(status="past_due", quantity=3), created=T0 + 60),
        event("customer.subscription.deleted", subscription(status="canceled", quantity=3), created=T0 + 80),
        event("invoice.paid", invoice("in_1", subscription="sub_A"), created=T0 + 10),
        event("invoice.payment_succeeded", invoice("in_1", subscription="sub_A"), created=T0 + 10),
        event("invoice.payment_failed", invoice("in_2", status="open", legacy=True), created=T0 + 60),
        event("invoice.payment_failed", invoice("in_3", status="open"), created=T0 + 61),
        event("invoice.paid", invoice("in_3"), created=T0 + 75),
    ]
    return [parse_event(json.dumps(e).encode()) for e in raw]


async def apply_all(pool: asyncpg.Pool, events: list[StripeEvent]) -> dict[str, Any]:
    async with pool.acquire() as conn:
        await conn.execute(f"TRUNCATE {TABLES}")
    for evt in events:
        async with pool.acquire() as conn, conn.transaction():
            ctx = HandlerContext(
                conn=conn,
                service="crm-export",
                settings=Settings(mode="test"),
                envelope=envelope_pb2.StripeEventEnvelope(event_id=evt.id),
            )
            await handle(ctx, evt)
    async with pool.acquire() as conn:
        return {
            "clients": await store.list_clients(conn, after="", limit=100),
            "products": await store.list_products(conn, after="", limit=100),
            "contracts": await store.list_contracts(conn, store.ContractFilter(), after="", limit=100),
        }


EVENTS = lifecycle()


@hsettings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations(range(len(EVENTS))), repeats=st.lists(st.integers(0, len(EVENTS) - 1), max_size=5))
async def test_any_order_and_duplication_gives_the_same_view(
    pool: asyncpg.Pool, order: list[int], repeats: list[int]
) -> None:
    expected = await apply_all(pool, EVENTS)
    [client] = expected["clients"]
    assert (client.name, client.custom_fields) == ("Ada Queen", {"Segment": "ent"})
    assert client.health.signals == (mapping.PAYMENT_FAILED, mapping.SUBSCRIPTION_CANCELED)
    assert client.health.failing_invoice_ids == ("in_2",)
    [prod] = expected["products"]
    assert (prod.name, prod.active) == ("Pro 2", False)
    contracts = {r.contract.contract_id: r.contract for r in expected["contracts"]}
    assert contracts["sub_A"].status == "canceled" and contracts["sub_A"].lines[0].quantity == 3
    assert set(contracts) == {"in_1", "in_3", "sub_A"}

    shuffled = [EVENTS[i] for i in order] + [EVENTS[i] for i in repeats]
    assert await apply_all(pool, shuffled) == expected


@pytest.mark.parametrize("update_first", [False, True], ids=["in-order", "update-first"])
async def test_create_and_update_in_one_stripe_second_keep_the_update(pool: asyncpg.Pool, update_first: bool) -> None:
    """Stripe stamps a create and its immediate update with the same second; the update is newer."""
    created = event("customer.created", customer(name="Ada", metadata={"segment": "smb"}), created=T0)
    updated = event("customer.updated", customer(name="Ada Lovelace", metadata={"segment": "ent"}), created=T0)
    pair = [parse_event(json.dumps(e).encode()) for e in (created, updated)]
    view = await apply_all(pool, pair[::-1] if update_first else pair)
    [client] = view["clients"]
    assert (client.name, client.custom_fields) == ("Ada Lovelace", {"Segment": "ent"})

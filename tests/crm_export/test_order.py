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
from syncmesh.crm_export.v1 import events_pb2
from syncmesh.events.v1 import envelope_pb2

from services.common import db
from services.common.consumer import BatchItem, HandlerContext
from services.common.events import StripeEvent, parse_event
from services.common.settings import Settings
from services.crm_export import crm_settings, health, messages, store
from services.crm_export.app import DEFINITION
from services.crm_export.handlers import apply
from tests.crm_export.support import T0, customer, event, invoice, product, subscription

TABLES = "stripe_customers, clients, products, contracts, contract_lines, subscriptions, invoice_payments, outbox"
MIGRATIONS = [("runtime", db.RUNTIME_MIGRATIONS), ("crm-export", DEFINITION.migrations)]


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(database_url, DEFINITION.schema)
    await db.migrate(pool, DEFINITION.schema, MIGRATIONS)
    async with pool.acquire() as conn, conn.transaction():
        current = (await store.current_settings(conn)).settings
        both = crm_settings.CrmSettings(
            contract_sources=(crm_settings.INVOICE, crm_settings.SUBSCRIPTION),
            days_back=current.days_back,
            customer_field_mappings=(crm_settings.FieldMapping("metadata.segment", "Segment"),),
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


def _context(conn: asyncpg.Connection, evt: StripeEvent) -> HandlerContext:
    return HandlerContext(
        conn=conn,
        service="crm-export",
        settings=Settings(mode="test"),
        envelope=envelope_pb2.StripeEventEnvelope(event_id=evt.id),
    )


async def apply_all(pool: asyncpg.Pool, events: list[StripeEvent], batch: int = 1) -> dict[str, Any]:
    """One event per transaction (a batch of one), or `batch` at a time, through `apply`."""
    async with pool.acquire() as conn:
        await conn.execute(f"TRUNCATE {TABLES}")
    for start in range(0, len(events), batch):
        chunk = events[start : start + batch]
        async with pool.acquire() as conn, conn.transaction():
            if batch == 1:
                await apply(conn, [BatchItem.alone(_context(conn, chunk[0]), chunk[0])])
            else:
                await apply(conn, [BatchItem.alone(_context(conn, e), e) for e in chunk])
    async with pool.acquire() as conn:
        return {
            "clients": await store.list_clients(conn, after="", limit=100),
            "products": await store.list_products(conn, after="", limit=100),
            "contracts": await store.list_contracts(conn, store.ContractFilter(), after="", limit=100),
        }


def _without_health(client: Any) -> Any:
    """A client as announced, less its health (then current, and announced on its own when it changes)."""
    client.ClearField("health_signals")
    client.ClearField("failing_invoice_ids")
    return client


def _own_fields(contract: Any) -> Any:
    """A contract as announced, less what it joins from other records (its client, its products'
    names): those were current when it was announced, and those records announce their own."""
    contract.ClearField("client_id")
    contract.ClearField("waiting_for_client")
    for line in contract.line_items:
        line.ClearField("product_name")
    return contract


async def last_announced(pool: asyncpg.Pool) -> dict[str, Any]:
    """The newest domain event announced for each client, contract and customer's health."""
    out: dict[str, Any] = {}
    async with pool.acquire() as conn:
        for row in await conn.fetch("SELECT message_type, payload FROM outbox ORDER BY id"):
            kind = row["message_type"].rsplit(".", 1)[-1]
            if kind == "ClientUpserted":
                client = events_pb2.ClientUpserted.FromString(row["payload"]).client
                out[f"client {client.client_id}"] = _without_health(client)
            elif kind == "ContractUpserted":
                contract = events_pb2.ContractUpserted.FromString(row["payload"]).contract
                out[f"contract {contract.contract_id}"] = _own_fields(contract)
            elif kind == "ClientHealthChanged":
                health = events_pb2.ClientHealthChanged.FromString(row["payload"])
                out[f"health {health.stripe_customer_id}"] = list(health.health_signals)
    return out


EVENTS = lifecycle()


@hsettings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(order=st.permutations(range(len(EVENTS))), repeats=st.lists(st.integers(0, len(EVENTS) - 1), max_size=5))
async def test_any_order_and_duplication_gives_the_same_view(
    pool: asyncpg.Pool, order: list[int], repeats: list[int]
) -> None:
    expected = await apply_all(pool, EVENTS)
    [client] = expected["clients"]
    assert (client.name, client.custom_fields) == ("Ada Queen", {"Segment": "ent"})
    assert client.health.signals == (health.PAYMENT_FAILED, health.SUBSCRIPTION_CANCELED)
    assert client.health.failing_invoice_ids == ("in_2",)
    [prod] = expected["products"]
    assert (prod.name, prod.active) == ("Pro 2", False)
    contracts = {r.contract.contract_id: r.contract for r in expected["contracts"]}
    assert contracts["sub_A"].status == "canceled" and contracts["sub_A"].lines[0].quantity == 3
    assert set(contracts) == {"in_1", "in_3", "sub_A"}

    shuffled = [EVENTS[i] for i in order] + [EVENTS[i] for i in repeats]
    assert await apply_all(pool, shuffled) == expected


@hsettings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    order=st.permutations(range(len(EVENTS))),
    repeats=st.lists(st.integers(0, len(EVENTS) - 1), max_size=5),
    batch=st.integers(2, len(EVENTS) + 5),
)
async def test_batches_give_the_view_and_announce_its_newest_state(
    pool: asyncpg.Pool, order: list[int], repeats: list[int], batch: int
) -> None:
    """A batch announces each record once, so it may skip states one-at-a-time delivery would have
    announced on the way; the view is the same, and the last word announced about each record
    (its own fields, and its health) is its final state."""
    shuffled = [EVENTS[i] for i in order] + [EVENTS[i] for i in repeats]
    one_at_a_time = await apply_all(pool, shuffled)
    view = await apply_all(pool, shuffled, batch)
    assert view == one_at_a_time
    announced = await last_announced(pool)
    [client] = view["clients"]
    assert announced[f"client {client.client_id}"] == _without_health(messages.client_pb(client))
    assert announced[f"health {client.stripe_customer_id}"] == list(messages.health_signals_pb(client.health))
    for record in view["contracts"]:
        assert announced[f"contract {record.contract.contract_id}"] == _own_fields(messages.contract_pb(record))


@pytest.mark.parametrize("batch", [1, 2], ids=["one-at-a-time", "one-batch"])
async def test_a_bare_deletion_keeps_what_is_known_of_the_customer(pool: asyncpg.Pool, batch: int) -> None:
    """Stripe's customer.deleted may carry only {id, object, deleted}: the client keeps its name and
    e-mail and is marked deleted, also when its creation is in the same batch."""
    created = event("customer.created", customer(name="Ada", metadata={"segment": "smb"}), created=T0)
    deleted = event("customer.deleted", {"id": "cus_A", "object": "customer", "deleted": True}, created=T0 + 5)
    pair = [parse_event(json.dumps(e).encode()) for e in (created, deleted)]
    [client] = (await apply_all(pool, pair, batch))["clients"]
    assert (client.name, client.email, client.deleted) == ("Ada", "ada@example.com", True)

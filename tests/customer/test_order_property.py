"""Order-independence and idempotency as properties: any order and any duplication of one
customer's created/updated/deleted events leaves the same record, through the real handler
and store on PostgreSQL."""

from __future__ import annotations

import itertools
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from services.common.settings import Settings
from tests.conftest import stripe_client_for
from tests.customer.support import current_customer, customer_event, new_customer_id, run_handler

T0 = 1_700_000_000
_run = itertools.count()

#: Compared fields: everything the record says about the customer, not when it was written.
FIELDS = (
    "email", "email_lower", "name", "phone", "description", "address", "currency", "balance_minor",
    "delinquent", "metadata", "livemode", "active", "deleted_at", "stripe_created",
    "version_created", "version_rank",
)  # fmt: skip


@st.composite
def lifecycles(draw: st.DrawFn) -> list[tuple[str, int, dict[str, Any]]]:
    """created, 0-3 updates, maybe deleted; Stripe-realistic times with no same-rank ties.

    An update may share its second with the creation, and the deletion with the last update
    (settled by rank); two updates never share a second (that tie needs the API, tested below).
    """
    steps: list[tuple[str, int, dict[str, Any]]] = []
    t = T0
    steps.append(("customer.created", t, {"name": "v0", "email": "v0@example.com", "balance": 0}))
    for i in range(1, draw(st.integers(0, 3)) + 1):
        t += draw(st.integers(0 if i == 1 else 1, 3))
        steps.append(
            (
                "customer.updated",
                t,
                {
                    "name": f"v{i}",
                    "email": f"V{i}@Example.com",
                    "balance": draw(st.integers(-10_000, 10_000)),
                    "metadata": {"step": str(i)},
                    "delinquent": draw(st.booleans()),
                },
            )
        )
    if draw(st.booleans()):
        t += draw(st.integers(0, 3))
        steps.append(("customer.deleted", t, dict(steps[-1][2])))
    return steps


def build(stripe_id: str, tag: str, steps: list[tuple[str, int, dict[str, Any]]]) -> list[dict[str, Any]]:
    return [
        customer_event(kind, current_customer(stripe_id, **fields), created=created, id=f"evt_{tag}_{i}")
        for i, (kind, created, fields) in enumerate(steps)
    ]


async def final(conn: asyncpg.Connection, stripe_id: str) -> tuple[dict[str, Any], set[str]]:
    row = await conn.fetchrow("SELECT * FROM customers WHERE stripe_customer_id = $1", stripe_id)
    assert row is not None
    events = await conn.fetch(
        "SELECT stripe_event_id FROM customer_history WHERE erp_customer_id = $1", row["erp_customer_id"]
    )
    # Event ids differ between the two runs only by their tag.
    return {f: row[f] for f in FIELDS} | {"last": row["last_event_id"].rsplit("_", 1)[1]}, {
        e["stripe_event_id"].rsplit("_", 1)[1] for e in events
    }


@hsettings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=lifecycles(), data=st.data())
async def test_any_order_and_duplication_gives_the_same_record(
    conn: asyncpg.Connection, settings: Settings, steps: list[tuple[str, int, dict[str, Any]]], data: st.DataObject
) -> None:
    run = next(_run)
    in_order_id, shuffled_id = new_customer_id(), new_customer_id()
    for evt in build(in_order_id, f"o{run}", steps):
        await run_handler(conn, settings, evt)

    events = build(shuffled_id, f"s{run}", steps)
    duplicated = events + data.draw(st.lists(st.sampled_from(events), max_size=4), label="duplicates")
    for evt in data.draw(st.permutations(duplicated), label="order"):
        await run_handler(conn, settings, evt)

    assert await final(conn, shuffled_id) == await final(conn, in_order_id)
    expected_deleted = steps[-1][0] == "customer.deleted"
    shuffled, _ = await final(conn, shuffled_id)
    assert shuffled["active"] is not expected_deleted
    assert shuffled["name"] == steps[-1][2]["name"]


@pytest.fixture
def localstripe_settings(settings: Settings, localstripe: Any) -> Settings:
    return settings.with_overrides(stripe_api_key="sk_test_x", stripe_api_base=localstripe.url)


@hsettings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_same_second_updates_are_settled_by_stripe_in_any_order(
    conn: asyncpg.Connection, localstripe_settings: Settings, localstripe: Any, data: st.DataObject
) -> None:
    """Two updates in one second: with an API key, the customer Stripe holds now wins."""
    client = stripe_client_for(localstripe)
    created = await client.v1.customers.create_async({"email": "tie@example.com", "name": "Stripe Now"})
    stripe_id = created.id
    run = next(_run)
    obj = created.to_dict()
    events = [
        customer_event("customer.created", {**obj, "name": "v0"}, created=T0, id=f"evt_k{run}_0"),
        customer_event("customer.updated", {**obj, "name": "tie-a"}, created=T0 + 1, id=f"evt_k{run}_1"),
        customer_event("customer.updated", {**obj, "name": "tie-b"}, created=T0 + 1, id=f"evt_k{run}_2"),
    ]
    duplicated = events + data.draw(st.lists(st.sampled_from(events), max_size=3), label="duplicates")
    for evt in data.draw(st.permutations(duplicated), label="order"):
        await run_handler(conn, localstripe_settings, evt)
    row = await conn.fetchrow("SELECT * FROM customers WHERE stripe_customer_id = $1", stripe_id)
    assert row["name"] == "Stripe Now"
    outcomes = await conn.fetch(
        "SELECT outcome FROM customer_history WHERE erp_customer_id = $1", row["erp_customer_id"]
    )
    assert "tie_refetched" in {o["outcome"] for o in outcomes}


async def test_tie_with_a_deleted_stripe_customer_marks_it_inactive(
    conn: asyncpg.Connection, localstripe_settings: Settings, localstripe: Any
) -> None:
    client = stripe_client_for(localstripe)
    created = await client.v1.customers.create_async({"email": "gone@example.com"})
    await client.v1.customers.delete_async(created.id)
    obj = created.to_dict()
    await run_handler(conn, localstripe_settings, customer_event("customer.updated", {**obj, "name": "a"}, created=T0))
    await run_handler(conn, localstripe_settings, customer_event("customer.updated", {**obj, "name": "b"}, created=T0))
    assert await conn.fetchval("SELECT active FROM customers WHERE stripe_customer_id = $1", created.id) is False

"""Same-second ties of one customer, through real NATS and PostgreSQL with localstripe as Stripe:
the state fetched from Stripe to settle the tie wins over every state the tied events carried,
in any order and with duplicates, and a later second still wins over it."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from syncmesh.crm_export.v1 import crm_export_service_pb2 as pb
from syncmesh.events.v1 import envelope_pb2

from services.common.bus import Bus
from services.common.events import parse_event, to_envelope
from services.common.service import ServiceRuntime
from services.common.settings import Settings
from services.crm_export import mapping
from services.crm_export.app import DEFINITION
from services.crm_export.records import content_hash
from tests.conftest import eventually, stripe_client_for
from tests.crm_export.support import T0, event, stub


@pytest.fixture
async def tie_runtime(settings: Settings, localstripe: Any) -> AsyncIterator[ServiceRuntime]:
    """The service with a Stripe key, so it settles ties by asking localstripe."""
    keyed = settings.with_overrides(stripe_api_key="sk_test_x", stripe_api_base=localstripe.url)
    rt = ServiceRuntime(DEFINITION, keyed, port=0)
    await rt.start()
    await rt.wait_ready(20)
    yield rt
    await rt.stop()


def _hash(obj: dict[str, Any]) -> str:
    """The content hash the store orders a kept customer's states by (decide._customer)."""
    return content_hash(mapping.stripe_customer(obj).raw)


def _stale_emails(base: dict[str, Any], above: str, n: int) -> list[str]:
    """E-mails whose states hash above Stripe's present one: the states a content-hash tie-break
    would keep over the refetched one (so the test fails whenever the hash decides)."""
    out: list[str] = []
    i = 0
    while len(out) < n:
        email = f"stale-{i}@example.com"
        if _hash({**base, "email": email}) > above:
            out.append(email)
        i += 1
    return out


async def _publish(bus: Bus, evt: dict[str, Any], *, copy: int = 0) -> None:
    """Publish an event; `copy` > 0 sends a repeat under another message id, as a redelivery beyond
    JetStream's dedup window does, so it reaches the service (which must skip it by event id)."""
    parsed = parse_event(json.dumps(evt).encode())
    envelope = to_envelope(parsed, source=envelope_pb2.EVENT_SOURCE_WEBHOOK)
    await bus.publish(parsed.subject, envelope, msg_id=f"{parsed.id}#{copy}" if copy else parsed.id)


async def _stored_email(settings: Settings, customer_id: str) -> tuple[str, bool]:
    conn = await asyncpg.connect(settings.database_url)
    try:
        row = await conn.fetchrow("SELECT email, v_settled FROM crm_export.stripe_customers WHERE id = $1", customer_id)
        assert row is not None
        return row["email"], row["v_settled"]
    finally:
        await conn.close()


async def test_a_tie_ends_on_stripe_s_present_email_in_both_orders_with_duplicates(
    tie_runtime: ServiceRuntime, settings: Settings, localstripe: Any
) -> None:
    client = stripe_client_for(localstripe)
    customers = []
    for name in ("First", "Second"):
        created = await client.v1.customers.create_async({"email": f"now-{name.lower()}@example.com", "name": name})
        present = (await client.v1.customers.retrieve_async(created.id)).to_dict()
        customers.append((created.id, present))

    published = 0
    for n, (_, present) in enumerate(customers):
        stale_a, stale_b = _stale_emails(present, _hash(present), 2)
        a = event("customer.updated", {**present, "email": stale_a}, created=T0 + 1, id=f"evt_tie_{n}_a")
        b = event("customer.updated", {**present, "email": stale_b}, created=T0 + 1, id=f"evt_tie_{n}_b")
        # The first customer's events arrive a, b; the second's b, a; then each one again.
        order = [a, b] if n == 0 else [b, a]
        for copy, evt in enumerate(order + order):
            await _publish(tie_runtime.bus, evt, copy=copy // 2)
            published += 1

    await eventually(lambda: tie_runtime.consumer.handled + tie_runtime.consumer.duplicates >= published)
    channel, api = stub(tie_runtime.port)
    async with channel:
        for customer_id, present in customers:
            got = (await api.GetClient(pb.GetClientRequest(client_id=customer_id))).client
            assert got.email == present["email"], customer_id
            assert await _stored_email(settings, customer_id) == (present["email"], True)

        # A later second wins over a settled state, without asking Stripe.
        customer_id, present = customers[0]
        later = event("customer.updated", {**present, "email": "later@example.com"}, created=T0 + 2)
        await _publish(tie_runtime.bus, later)
        await eventually(lambda: tie_runtime.consumer.handled + tie_runtime.consumer.duplicates > published)
        got = (await api.GetClient(pb.GetClientRequest(client_id=customer_id))).client
        assert got.email == "later@example.com"
        assert await _stored_email(settings, customer_id) == ("later@example.com", False)

"""Customer events one per batch through the consumer's real runner: the audit rows held for the
COMMIT leave the records parameters do, a round trip fewer per applied event."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.common import db
from services.common.embedded import PostgresServer
from services.common.settings import Settings
from services.customer.app import DEFINITION
from tests.customer.support import current_customer, customer_event
from tests.support.batches import migrated_pool, one_by_one, records

T0 = 1_750_000_000


@pytest.fixture
async def pools(pg_server: PostgresServer) -> AsyncIterator[list[asyncpg.Pool]]:
    made = [await migrated_pool(pg_server, "customer", DEFINITION.migrations) for _ in range(2)]
    try:
        yield made
    finally:
        for pool in made:
            await pool.close()


async def test_held_audit_rows_leave_the_records_parameters_do(
    pools: list[asyncpg.Pool], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    odd = "O'Brien \\ \u2028 -- $1 🎉"
    events = []
    for n, stripe_id in enumerate(["cus_heldA", "cus_heldB"]):
        obj = current_customer(stripe_id, name=odd, email=f"{stripe_id}@example.com")
        events.append(customer_event("customer.created", obj, created=T0 + n, id=f"evt_c{n}"))
        obj = current_customer(stripe_id, name=f"{odd} 2", email=f"{stripe_id}@example.com")
        events.append(customer_event("customer.updated", obj, created=T0 + 10 + n, id=f"evt_u{n}"))
        events.append(customer_event("customer.updated", obj, created=T0 + 5 + n, id=f"evt_s{n}"))  # stale
    events.append(customer_event("customer.deleted", {"id": "cus_heldA", "object": "customer"}, created=T0 + 20))
    held = await one_by_one(pools[0], settings, "customer", DEFINITION.apply, events)
    with monkeypatch.context() as m:
        m.setattr(db, "literals_allowed", lambda conn: False)
        plain = await one_by_one(pools[1], settings, "customer", DEFINITION.apply, events)
    assert await records(pools[0], "customer") == await records(pools[1], "customer")
    print(f"customer: statements per batch, held {held} (sum {sum(held)}), plain {plain} (sum {sum(plain)})")
    assert sum(held) < sum(plain)

"""CRM export's events one per batch through the consumer's real runner: the upserts held for the
COMMIT (or the flush before the announcement's reads) leave the records parameters do."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.common import db
from services.common.embedded import PostgresServer
from services.common.settings import Settings
from services.crm_export.app import DEFINITION
from tests.crm_export.support import T0, customer, invoice, product
from tests.support.batches import migrated_pool, one_by_one, records
from tests.support.stripe_events import event


@pytest.fixture
async def pools(pg_server: PostgresServer) -> AsyncIterator[list[asyncpg.Pool]]:
    made = [await migrated_pool(pg_server, "crm_export", DEFINITION.migrations) for _ in range(2)]
    try:
        yield made
    finally:
        for pool in made:
            await pool.close()


async def test_held_upserts_leave_the_records_parameters_do(
    pools: list[asyncpg.Pool], settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    odd = "O'Brien \\ \u2028 -- $1 🎉"
    events = [
        event("customer.created", customer("cus_A", name=odd), created=T0, id="evt_1"),
        event("product.created", product("prod_A", name=odd), created=T0 + 1, id="evt_2"),
        event("invoice.paid", invoice("in_A"), created=T0 + 2, id="evt_3"),
        event("customer.updated", customer("cus_A", name=f"{odd} 2"), created=T0 + 3, id="evt_4"),
        event("customer.updated", customer("cus_A", name=f"{odd} 1"), created=T0 + 1, id="evt_5"),  # stale
        event("invoice.payment_failed", invoice("in_B", status="open"), created=T0 + 4, id="evt_6"),
    ]
    held = await one_by_one(pools[0], settings, "crm_export", DEFINITION.apply, events)
    with monkeypatch.context() as m:
        m.setattr(db, "literals_allowed", lambda conn: False)
        plain = await one_by_one(pools[1], settings, "crm_export", DEFINITION.apply, events)
    assert await records(pools[0], "crm_export") == await records(pools[1], "crm_export")
    print(f"crm_export: statements per batch, held {held} (sum {sum(held)}), plain {plain} (sum {sum(plain)})")
    assert sum(held) < sum(plain)

"""A batch of one through the consumer's real runner: the writes it holds for its COMMIT
(`db.Deferred`) leave exactly the records the same writes sent one by one with parameters do, in
fewer round trips."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.billing.app import make_definition
from services.common import db
from services.common.embedded import PostgresServer
from services.common.settings import Settings
from tests.billing.test_order_independence import SCENARIOS
from tests.support.batches import migrated_pool, one_by_one, records


@pytest.fixture
async def pools(pg_server: PostgresServer) -> AsyncIterator[list[asyncpg.Pool]]:
    made = [await migrated_pool(pg_server, "billing", make_definition().migrations) for _ in range(2)]
    try:
        yield made
    finally:
        for pool in made:
            await pool.close()


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
async def test_writes_held_for_commit_leave_the_records_parameters_do(
    pools: list[asyncpg.Pool], settings: Settings, scenario: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every scenario of the order-independence test, one event per batch, once with the writes
    held as literals for COMMIT and once with every statement sent with parameters: the same
    records, row for row, audit rows and ERP numbers included; and the held batches cost fewer
    round trips."""
    policy, events = SCENARIOS[scenario]
    apply = make_definition(policy).apply
    held = await one_by_one(pools[0], settings, "billing", apply, events)
    with monkeypatch.context() as m:
        m.setattr(db, "literals_allowed", lambda conn: False)
        plain = await one_by_one(pools[1], settings, "billing", apply, events)
    assert await records(pools[0], "billing") == await records(pools[1], "billing")
    print(f"{scenario}: statements per batch, held {held} (sum {sum(held)}), plain {plain} (sum {sum(plain)})")
    assert sum(held) < sum(plain)

"""A batch of one through the consumer's real runner: how many round trips it costs, and that the
writes it holds for its COMMIT (`db.Deferred`) leave exactly the records the same writes sent one
by one with parameters do."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest
from opentelemetry import context as otel_context

from services.billing.app import make_definition
from services.billing.settings import BillingSettings
from services.common import db
from services.common.consumer import BatchRunner, Delivery, Received
from services.common.embedded import PostgresServer
from services.common.settings import Settings
from tests.billing.builders import envelope_for
from tests.billing.test_order_independence import SCENARIOS

#: The billing tables whose rows a batch writes, with the columns the clock fills left out.
_CLOCK = {"updated_at", "created_at", "imported_at", "first_seen_at", "last_seen_at", "recorded_at", "id"}


async def _database(pg_server: PostgresServer) -> str:
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(pg_server.dsn())
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = pg_server.dsn(name)
    pool = await db.create_pool(url, "billing")
    try:
        sources = [("runtime", db.RUNTIME_MIGRATIONS), ("billing", make_definition().migrations)]
        await db.migrate(pool, "billing", sources)
    finally:
        await pool.close()
    return url


@pytest.fixture
async def pools(pg_server: PostgresServer) -> AsyncIterator[list[asyncpg.Pool]]:
    """Two migrated billing databases, each with a pool of one connection as the service makes it."""
    made = [await db.create_pool(await _database(pg_server), "billing", max_size=1) for _ in range(2)]
    try:
        yield made
    finally:
        for pool in made:
            await pool.close()


def _delivery(evt: dict[str, Any]) -> Delivery:
    parsed, envelope = envelope_for(evt, received_at=evt["created"])
    msg = SimpleNamespace(subject=f"stripe.{parsed.type}", headers={}, data=b"")
    return Delivery(Received(msg), parsed, envelope, otel_context.Context())  # type: ignore[arg-type]


async def _run_one_by_one(
    pool: asyncpg.Pool, settings: Settings, policy: BillingSettings, events: list[dict[str, Any]]
) -> list[int]:
    """Each event a batch of its own (as at a trickle); the statements each batch sent."""
    runner = BatchRunner(service="billing", settings=settings, apply=make_definition(policy).apply)
    counts = []
    async with pool.acquire() as conn:
        sent: list[str] = []
        conn.add_query_logger(lambda record: sent.append(record.query))
        for evt in events:
            sent.clear()
            d = _delivery(evt)
            await runner.run(conn, [d])
            assert d.received.outcome is not None and d.received.outcome.value in ("applied", "skipped"), d.received
            counts.append(len(sent))
    return counts


async def _records(pool: asyncpg.Pool) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    async with pool.acquire() as conn:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'billing' "
            "AND table_type = 'BASE TABLE' AND table_name <> ALL($1::text[]) ORDER BY table_name",
            [t for t in db.RUNTIME_TABLES if t != "processed_events"],
        )
        for t in tables:
            name = t["table_name"]
            columns = [
                r["column_name"]
                for r in await conn.fetch(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = 'billing' "
                    "AND table_name = $1 ORDER BY ordinal_position",
                    name,
                )
                if r["column_name"] not in _CLOCK
                and not (name == "processed_events" and r["column_name"].endswith("_at"))
            ]
            listed = ", ".join(f'"{c}"' for c in columns)
            rows = await conn.fetch(f"SELECT {listed} FROM {name} ORDER BY {listed}")
            out[name] = [tuple(json.dumps(v, default=str) for v in r.values()) for r in rows]
    return out


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
async def test_writes_held_for_commit_leave_the_records_parameters_do(
    pools: list[asyncpg.Pool], settings: Settings, scenario: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every scenario of the order-independence test, one event per batch, once with the writes
    held as literals for COMMIT and once with every statement sent with parameters: the same
    records, row for row, audit rows and ERP numbers included; and the held batches cost fewer
    round trips."""
    policy, events = SCENARIOS[scenario]
    held = await _run_one_by_one(pools[0], settings, policy, events)
    with monkeypatch.context() as m:
        m.setattr(db, "literals_allowed", lambda conn: False)
        plain = await _run_one_by_one(pools[1], settings, policy, events)
    assert await _records(pools[0]) == await _records(pools[1])
    print(f"{scenario}: statements per batch, held {held} (sum {sum(held)}), plain {plain} (sum {sum(plain)})")
    assert sum(held) < sum(plain)

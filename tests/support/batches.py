"""A service's applier through the consumer's real runner, one event per batch (as at a trickle),
on a database of its own: how many statements each batch sends, and the rows it leaves, to
compare the writes a batch holds for its COMMIT (`db.Deferred`) with the same writes sent one by
one with parameters."""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
from opentelemetry import context as otel_context

from services.common import db
from services.common.consumer import BatchApplier, BatchRunner, Delivery, Received
from services.common.embedded import PostgresServer
from services.common.settings import Settings
from tests.billing.builders import envelope_for

#: Columns the clock or a serial fills: left out of `records`.
CLOCK_COLUMNS = frozenset(
    {
        "updated_at",
        "created_at",
        "imported_at",
        "first_seen_at",
        "last_seen_at",
        "recorded_at",
        "processed_at",
        "changed_at",
        "id",
    }
)


async def migrated_pool(pg_server: PostgresServer, schema: str, migrations: Path) -> asyncpg.Pool:
    """A new database with the runtime's and the service's migrations, and a pool of one
    connection as the service makes it."""
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(pg_server.dsn())
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    pool = await db.create_pool(pg_server.dsn(name), schema, max_size=1)
    await db.migrate(pool, schema, [("runtime", db.RUNTIME_MIGRATIONS), (schema, migrations)])
    return pool


def delivery(evt: dict[str, Any]) -> Delivery:
    parsed, envelope = envelope_for(evt, received_at=evt["created"])
    msg = SimpleNamespace(subject=f"stripe.{parsed.type}", headers={}, data=b"")
    return Delivery(Received(msg), parsed, envelope, otel_context.Context())  # type: ignore[arg-type]


async def one_by_one(
    pool: asyncpg.Pool, settings: Settings, service: str, apply: BatchApplier, events: Sequence[dict[str, Any]]
) -> list[int]:
    """Each event a batch of its own; the statements each batch sent (each a round trip)."""
    runner = BatchRunner(service=service, settings=settings, apply=apply)
    counts = []
    async with pool.acquire() as conn:
        sent: list[str] = []
        conn.add_query_logger(lambda record: sent.append(record.query))
        for evt in events:
            sent.clear()
            d = delivery(evt)
            await runner.run(conn, [d])
            outcome = d.received.outcome
            assert outcome is not None and outcome.value in ("applied", "skipped"), (evt["type"], d.received)
            counts.append(len(sent))
    return counts


async def records(pool: asyncpg.Pool, schema: str) -> dict[str, list[tuple[str, ...]]]:
    """Every row of the service's own tables and its idempotency record (outcomes), as text,
    without the columns the clock fills."""
    out = {}
    skipped = [t for t in db.RUNTIME_TABLES if t != "processed_events"]
    async with pool.acquire() as conn:
        tables = await conn.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = $1 "
            "AND table_type = 'BASE TABLE' AND table_name <> ALL($2::text[]) ORDER BY table_name",
            schema,
            skipped,
        )
        for t in tables:
            name = t["table_name"]
            columns = [
                r["column_name"]
                for r in await conn.fetch(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = $1 "
                    "AND table_name = $2 ORDER BY ordinal_position",
                    schema,
                    name,
                )
                if r["column_name"] not in CLOCK_COLUMNS
                and not (name == "processed_events" and r["column_name"].endswith("_at"))
            ]
            listed = ", ".join(f'"{c}"::text' for c in columns)
            rows = await conn.fetch(f"SELECT {listed} FROM {name} ORDER BY {listed}")
            out[name] = [tuple(json.dumps(v) for v in r.values()) for r in rows]
    return out

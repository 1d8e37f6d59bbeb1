"""Writes held for the batch's COMMIT (`db.Deferred`): every value reads back exactly as the same
write with parameters leaves it, a value without an exact literal falls back to parameters in
order, and a held write that fails at COMMIT leaves the batch to the one-by-one pass."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, date, datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest
from opentelemetry import context as otel_context

from services.common import db
from services.common.consumer import HOLD_UP_TO, BatchItem, BatchRunner, Delivery, Outcome, Received
from services.common.db import Conn
from services.common.settings import Settings
from tests.billing.builders import envelope_for, stripe_event

ODD_TEXT = [
    "",
    "it's",
    "''",
    "\\",
    "\\x27'; DROP TABLE t;--",
    "$1 $2 -- not a comment",
    "/* not a comment */",
    "line\nbreak\r\ttab",
    "é ü 中文 🎉 \u2028\u2029",
    '"quoted" {braces} [brackets], NULL',
    "NULL",
]
_INFINITIES = (datetime.max.replace(tzinfo=UTC), datetime.min.replace(tzinfo=UTC))
ZONES = [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8)), timezone(timedelta(hours=14))]

_TABLE = """
CREATE TEMP TABLE odd (
    n integer, t text, i integer, b bigint, f boolean, d date, ts timestamptz, j jsonb, by bytea,
    ts_ text[], bs bigint[], is_ integer[], ds date[], fs boolean[], tss timestamptz[]
)
"""
_INSERT = (
    "INSERT INTO pg_temp.odd (n, t, i, b, f, d, ts, j, by, ts_, bs, is_, ds, fs, tss) "
    "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10::text[], $11::bigint[], $12::integer[], $13::date[], "
    "$14::boolean[], $15::timestamptz[])"
)


def _rows() -> list[tuple[Any, ...]]:
    """Each odd value in a row of its own, NULLs and empty arrays included."""
    rows: list[tuple[Any, ...]] = []
    ints = [0, 1, -1, 2**31 - 1, -(2**31)]
    bigs = [0, -1, 2**63 - 1, -(2**63), -(2**31) - 1, 2**31]
    times = [datetime(2024, 2, 29, 23, 59, 59, 999_999, tzinfo=z) for z in ZONES]
    times += [datetime(1, 1, 2, tzinfo=UTC), datetime(9999, 12, 31, 23, 59, 59, 999_998, tzinfo=UTC)]
    times += [datetime.max.replace(tzinfo=UTC), datetime.min.replace(tzinfo=UTC)]  # asyncpg's infinities
    days = [date(1, 1, 1), date(1, 1, 2), date(2024, 2, 29), date(9999, 12, 30), date(9999, 12, 31)]
    for n in range(max(len(ODD_TEXT), len(bigs), len(times))):
        rows.append(
            (
                n,
                ODD_TEXT[n % len(ODD_TEXT)],
                ints[n % len(ints)],
                bigs[n % len(bigs)],
                n % 2 == 0,
                days[n % len(days)],
                times[n % len(times)],
                {"text": ODD_TEXT[n % len(ODD_TEXT)], "n": bigs[n % len(bigs)], "nested": [None, True, 1.5]},
                bytes(range(256))[n:],
                [*ODD_TEXT[n:], None],
                bigs[: n % len(bigs)],
                [None, *ints],
                [*days, None],
                [True, False, None],
                times[: n % 3],
            )
        )
    rows.append((len(rows), *([None] * 14)))
    rows.append((len(rows), "", 0, 0, False, days[0], times[0], {}, b"", [], [], [], [], [], []))
    return rows


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    for type_name in ("json", "jsonb"):  # as the runtime's pool does
        await connection.set_type_codec(type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await connection.execute(_TABLE)
    try:
        yield connection
    finally:
        await connection.close()


async def _read(conn: asyncpg.Connection) -> list[tuple[Any, ...]]:
    """Each row as PostgreSQL prints it (asyncpg reads `infinity` as `date.max`) and as asyncpg reads it."""
    return [tuple(r) for r in await conn.fetch("SELECT o::text AS printed, o.* FROM pg_temp.odd o ORDER BY n")]


async def test_held_writes_read_back_as_parameters_leave_them(conn: asyncpg.Connection) -> None:
    """Text (quotes, backslashes, SQL and comment fragments, `$n`, line breaks, unicode), the
    extreme ints and bigints, booleans, dates, timestamptz in several zones, jsonb, bytea,
    arrays with NULLs and empty ones, NULL itself: written as literals with COMMIT and with
    parameters, they read back the same, and as given."""
    rows = _rows()
    async with conn.transaction():
        await conn.executemany(_INSERT, rows)
    by_parameters = await _read(conn)
    await conn.execute("TRUNCATE pg_temp.odd")
    later = db.Deferred(conn, hold=True)
    await conn.execute("BEGIN")
    held = [(*r[:7], None if r[7] is None else db.Jsonb(r[7]), *r[8:]) for r in rows]
    await later.executemany(_INSERT, held[:3])
    for row in held[3:]:
        await later.execute(_INSERT, *row)
    sql = later.pending
    assert sql is not None and await _read(conn) == []  # held: nothing sent yet
    await conn.execute(f"{sql}; COMMIT")
    assert await _read(conn) == by_parameters
    columns = (0, 1, 2, 3, 4, 7, 8)  # n, t, i, b, f, j, by; and the instants, but asyncpg's infinities
    assert [[r[1 + c] for c in columns] for r in by_parameters] == [[r[c] for c in columns] for r in rows]
    finite = [(r[6], g[7]) for r, g in zip(rows, by_parameters, strict=True) if r[6] not in (None, *_INFINITIES)]
    assert all(given == read for given, read in finite) and len(finite) > 5


@pytest.mark.parametrize(
    "value",
    [-(2**63), 2**63 - 1, -1, "it's \\ -- x", datetime(2000, 1, 1, 12, tzinfo=timezone(timedelta(hours=-3)))],
)
async def test_a_literal_is_its_value_in_any_position(conn: asyncpg.Connection, value: object) -> None:
    """Before a cast (`::` binds tighter than unary minus), inside an expression and alone."""
    literal = db.sql_literal(value)
    assert literal is not None
    assert await conn.fetchval(f"SELECT {literal}") == value
    if isinstance(value, int):
        assert await conn.fetchval(f"SELECT {literal}::bigint") == value
        assert await conn.fetchval(f"SELECT ARRAY[{literal}]::bigint[]") == [value]


def test_values_without_an_exact_literal_have_none() -> None:
    assert db.sql_literal("a\x00b") is None
    assert db.sql_literal(["a", "b\x00"]) is None
    assert db.sql_literal(datetime(2024, 1, 1)) is None  # naive: which zone it is in is the caller's
    assert db.sql_literal(datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1)))) is None  # before year 1 in UTC
    assert db.sql_literal(1.5) is None
    assert db.sql_literal({"a": 1}) is None  # json, jsonb or hstore: only `db.Jsonb` says
    assert db.sql_literal(db.Jsonb({"a": {1, 2}})) is None  # not JSON
    assert db.sql_literal(db.Jsonb("a string")) == "'\"a string\"'::jsonb"
    assert db.sql_literal([[1]]) is None
    assert db.render("SELECT $1, $2", ["a", "\x00"]) is None
    assert db.render("SELECT $2 -- $1\n, '$1'", ["x\nSELECT 1", 2]) == "SELECT 2  \n, '$1'"


async def test_a_value_without_a_literal_runs_with_parameters_after_what_was_held(conn: asyncpg.Connection) -> None:
    """The held writes are sent first, so the write with parameters sees them; a NUL, which
    PostgreSQL's text cannot hold, fails as it does with parameters."""
    later = db.Deferred(conn, hold=True)
    async with conn.transaction():
        await later.execute("INSERT INTO pg_temp.odd (n, t) VALUES ($1, $2)", 1, "held")
        await later.execute("UPDATE pg_temp.odd SET ts = $1, j = $2 WHERE n = 1", datetime(2024, 1, 1), db.Jsonb([1]))
        assert later.pending is None
        assert await conn.fetchval("SELECT t FROM pg_temp.odd WHERE ts IS NOT NULL") == "held"
    with pytest.raises(asyncpg.PostgresError) as held:
        async with conn.transaction():
            await later.execute("INSERT INTO pg_temp.odd (n, t) VALUES ($1, $2)", 2, "a\x00b")
    with pytest.raises(type(held.value)):
        await conn.execute("INSERT INTO pg_temp.odd (n, t) VALUES ($1, $2)", 2, "a\x00b")


async def test_nothing_is_held_where_literals_are_not_safe(conn: asyncpg.Connection) -> None:
    await conn.execute("SET standard_conforming_strings = off")
    later = db.Deferred(conn, hold=True)
    assert not later.holds
    await later.execute("INSERT INTO pg_temp.odd (n, t) VALUES ($1, $2)", 1, "\\'")
    assert later.pending is None and await conn.fetchval("SELECT t FROM pg_temp.odd") == "\\'"


# -- a held write that fails at COMMIT ---------------------------------------------------------------


_TOY_INSERT = "INSERT INTO toy_rows (event_id, value) VALUES ($1, $2)"


async def _apply(conn: Conn, items: Sequence[BatchItem]) -> None:
    """Each event's write held for COMMIT: a row keyed by its event id, whose value must not be
    negative (the `bad` event's is)."""
    for item in items:
        with item.consuming():
            value = -1 if item.event.object_id == "cus_bad" else 1
            await item.ctx.later.execute("INSERT INTO toy_rows (event_id, value) VALUES ($1, $2)", item.event.id, value)


def _delivery(customer: str, n: int) -> Delivery:
    evt = stripe_event("customer.updated", {"id": customer, "object": "customer"}, created=1_750_000_000 + n)
    parsed, envelope = envelope_for(evt)
    msg = SimpleNamespace(subject="stripe.customer.updated", headers={}, data=b"")
    return Delivery(Received(msg), parsed, envelope, otel_context.Context())  # type: ignore[arg-type]


async def test_a_held_write_failing_at_commit_leaves_the_batch_to_the_one_by_one_pass(
    database_url: str, settings: Settings
) -> None:
    """The whole batch is rolled back (nothing of it, its claims included, is left); the pass
    that follows applies each message alone, nothing held, so the failure is charged to the
    message whose write failed and the others are written."""
    pool = await db.create_pool(database_url, "toy", max_size=1)
    try:
        await db.migrate(pool, "toy", [("runtime", db.RUNTIME_MIGRATIONS)])
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE toy_rows (event_id text PRIMARY KEY, value integer CHECK (value >= 0))")
            sent: list[str] = []
            conn.add_query_logger(lambda record: sent.append(record.query))
            runner = BatchRunner(service="toy", settings=settings, apply=_apply, count_failures=True)
            batch = [_delivery("cus_a", 1), _delivery("cus_bad", 2), _delivery("cus_c", 3)]
            await runner.run(conn, batch)
            assert [d.received.outcome for d in batch] == [Outcome.APPLIED, Outcome.FAILED_RETRYABLE, Outcome.APPLIED]
            assert "toy_rows_value_check" in batch[1].received.detail
            assert batch[1].received.failures == 1
            written = {r["event_id"] for r in await conn.fetch("SELECT event_id FROM toy_rows")}
            assert written == {batch[0].event.id, batch[2].event.id}
            claimed = {r["event_id"] for r in await conn.fetch("SELECT event_id FROM processed_events")}
            assert claimed == written
            # The first try sent the rows with its COMMIT; the pass sent each with parameters.
            with_commit = [q for q in sent if "toy_rows" in q and q.rstrip().endswith("COMMIT")]
            assert len(with_commit) == 1 and "'cus_bad'" not in with_commit[0] and "(-1)" in with_commit[0]
            assert sum(1 for q in sent if q == _TOY_INSERT) == 3
    finally:
        await pool.close()


async def test_a_batch_larger_than_hold_up_to_sends_its_writes_at_once(database_url: str, settings: Settings) -> None:
    """Literals cost per value what holding saves per batch: past `HOLD_UP_TO` events nothing is
    held, and the rows are the same."""
    pool = await db.create_pool(database_url, "toy", max_size=1)
    try:
        await db.migrate(pool, "toy", [("runtime", db.RUNTIME_MIGRATIONS)])
        async with pool.acquire() as conn:
            await conn.execute("CREATE TABLE toy_rows (event_id text PRIMARY KEY, value integer CHECK (value >= 0))")
            sent: list[str] = []
            conn.add_query_logger(lambda record: sent.append(record.query))
            runner = BatchRunner(service="toy", settings=settings, apply=_apply)
            for size in (HOLD_UP_TO, HOLD_UP_TO + 1):
                sent.clear()
                batch = [_delivery(f"cus_{size}_{n}", n) for n in range(size)]
                await runner.run(conn, batch)
                assert {d.received.outcome for d in batch} == {Outcome.APPLIED}
                with_parameters = sum(1 for q in sent if q == _TOY_INSERT)
                assert with_parameters == (0 if size == HOLD_UP_TO else size), (size, sent)
            assert await conn.fetchval("SELECT count(*) FROM toy_rows") == 2 * HOLD_UP_TO + 1
    finally:
        await pool.close()

"""A batch's payments and refunds through the real applier on real PostgreSQL: ERP ids follow the
order the records arrived in and are drawn only for records written, and the statements a batch
costs do not grow with its size."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from services.billing.app import make_definition
from services.common import db
from services.common.consumer import BatchItem, HandlerContext
from services.common.settings import Settings
from tests.billing.builders import (
    PRICE_ADDON,
    PRICE_PRO,
    InvoiceSpec,
    LineSpec,
    envelope_for,
    invoice_object,
    invoice_payment_object,
    refund_object,
    stripe_event,
)

T0 = 1_750_000_000


@pytest.fixture
async def conn(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    definition = make_definition()
    pool = await db.create_pool(database_url, "billing")
    try:
        await db.migrate(pool, "billing", [("runtime", db.RUNTIME_MIGRATIONS), ("billing", definition.migrations)])
    finally:
        await pool.close()
    connection = await asyncpg.connect(database_url, server_settings={"search_path": "billing"})
    for type_name in ("json", "jsonb"):  # as the runtime's pool does
        await connection.set_type_codec(type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await connection.execute(
        "TRUNCATE record_history, credit_memo_lines, credit_memos, refunds, payments, processed_events, outbox"
    )
    for sequence in ("erp_payment_seq", "erp_refund_seq", "erp_credit_memo_seq"):
        await connection.execute(f"ALTER SEQUENCE {sequence} RESTART")
    try:
        yield connection
    finally:
        await connection.close()


def paid(name: str, n: int) -> dict[str, Any]:
    spec = InvoiceSpec(invoice_id=f"in_{name}")
    obj = invoice_payment_object(spec, 1000, payment_id=f"inpay_{name}", intent=f"pi_{name}", paid_at=T0 + n)
    return stripe_event("invoice_payment.paid", obj, created=T0 + n)


def refunded(name: str, n: int) -> dict[str, Any]:
    obj = refund_object(f"re_{name}", 300, charge=f"ch_{name}", intent=f"pi_{name}", currency="usd", created=T0 + n)
    return stripe_event("refund.created", obj, created=T0 + n)


async def apply(conn: asyncpg.Connection, settings: Settings, events: list[dict[str, Any]], again: int = 0) -> None:
    """One batch of these events (under new event ids when `again`)."""
    items = []
    outgoing: list[Any] = []  # as the consumer does: the batch's domain events are written together
    for evt in events:
        parsed, envelope = envelope_for({**evt, "id": f"{evt['id']}_{again}"}, received_at=evt["created"])
        ctx = HandlerContext(conn=conn, service="billing", settings=settings, envelope=envelope, outgoing=outgoing)
        items.append(BatchItem.alone(ctx, parsed))
    async with conn.transaction():
        await make_definition().apply(conn, items)


async def erp_ids(conn: asyncpg.Connection, table: str, key: str, erp: str) -> dict[str, str]:
    return {r[0]: r[1] for r in await conn.fetch(f"SELECT {key}, {erp} FROM {table}")}


async def test_erp_ids_follow_arrival_and_a_repeated_batch_draws_none(
    conn: asyncpg.Connection, settings: Settings
) -> None:
    # Refunds first: they learn their invoice from the payments of their payment intents.
    batch = [refunded("b", 1), refunded("a", 2), paid("b", 3), paid("a", 4)]
    await apply(conn, settings, batch)
    await apply(conn, settings, batch, again=1)
    await apply(conn, settings, [paid("c", 5)])
    assert await erp_ids(conn, "payments", "stripe_payment_id", "erp_payment_id") == {
        "inpay_b": "PMT-0000001",
        "inpay_a": "PMT-0000002",
        "inpay_c": "PMT-0000003",
    }
    assert await erp_ids(conn, "refunds", "stripe_refund_id", "erp_refund_id") == {
        "re_b": "RFD-0000001",
        "re_a": "RFD-0000002",
    }
    assert await erp_ids(conn, "credit_memos", "memo_key", "erp_credit_memo_id") == {
        "re_b": "CM-0000001",
        "re_a": "CM-0000002",
    }
    linked = await conn.fetch("SELECT m.stripe_invoice_id FROM credit_memos m ORDER BY memo_key")
    assert [r[0] for r in linked] == ["in_a", "in_b"]
    lines = await conn.fetch("SELECT memo_key, amount FROM credit_memo_lines ORDER BY memo_key")
    assert [tuple(r) for r in lines] == [("re_a", 300), ("re_b", 300)]


async def test_a_batchs_statements_do_not_grow_with_its_size(conn: asyncpg.Connection, settings: Settings) -> None:
    statements: list[str] = []
    conn.add_query_logger(lambda record: statements.append(record.query))
    counts = []
    for size, first in ((1, 0), (2, 100), (12, 200)):  # the first warms the connection's type cache
        statements.clear()
        names = [f"n{first + i}" for i in range(size)]
        await apply(conn, settings, [e for i, name in enumerate(names) for e in (refunded(name, i), paid(name, i))])
        counts.append(len(statements))
    # BEGIN, the locks, one read of the facts, payments, refunds, refund memos and their lines,
    # the ledgers' read, the audit rows, COMMIT (no read of invoice snapshots: the batch has none).
    assert counts[1:] == [10, 10], counts


def finalized(name: str, n: int) -> dict[str, Any]:
    spec = InvoiceSpec(invoice_id=f"in_{name}", lines=[LineSpec(), LineSpec(price=PRICE_ADDON, unit=1500)])
    return stripe_event("invoice.finalized", invoice_object("basil", spec), created=T0 + n)


async def test_unmapped_prices_count_each_invoice_and_name_the_last(
    conn: asyncpg.Connection, settings: Settings
) -> None:
    """A batch's lines are written in one statement per table: a price seen on several invoices of
    one batch counts each of them (as when the pairs were written one at a time), and the audit
    rows keep the order they were noted in."""
    await conn.execute("TRUNCATE unmapped_prices, invoices CASCADE")
    await apply(conn, settings, [finalized("b", 1), finalized("a", 2)])
    await apply(conn, settings, [finalized("c", 3)])
    rows = await conn.fetch("SELECT stripe_price_id, last_invoice_id, invoices_seen FROM unmapped_prices ORDER BY 1")
    assert [tuple(r) for r in rows] == sorted([(PRICE_PRO, "in_c", 3), (PRICE_ADDON, "in_c", 3)])
    lines = await conn.fetch("SELECT stripe_invoice_id, line_no, stripe_price_id FROM invoice_lines ORDER BY 1, 2")
    assert [tuple(r) for r in lines] == [
        (f"in_{name}", n, price) for name in "abc" for n, price in ((1, PRICE_PRO), (2, PRICE_ADDON))
    ]
    assert await conn.fetchval("SELECT count(*) FROM revenue_schedule") > 0
    history = await conn.fetch("SELECT record_id, change FROM record_history ORDER BY id")
    assert [r[0] for r in history] == ["in_a", "in_a", "in_b", "in_b", "in_a", "in_b", "in_c", "in_c", "in_c"]
    assert [r[1].split(" ")[0] for r in history[:2]] == ["created", "2"]

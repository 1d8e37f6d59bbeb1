"""The billing service's SQL for invoices, their ledgers and the API's reads; typed records out.

What an invoice's ledger, write-off memo and credit hold releases become is decided in `decide`
(pure) from what is read here, and the store writes the result. The single facts of the event
path (payments, refunds, credit notes, holds, customer links) are read and written set-based by
`fact_store`, after `facts` decided them. Every record is keyed by the Stripe id of what it
represents; invoice snapshots carry their version (`snapshots.InvoiceVersion`) in the WHERE of
their upsert, so an older snapshot never overwrites a newer one, whichever replica writes it.

Writers of one invoice serialise on a transaction-scoped advisory lock keyed by the invoice id,
so two replicas never recompute the same invoice from half of each other's facts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from typing import Any, TypeVar

from services.billing.decide import Settlement, WriteOffMemo
from services.billing.invoice_mapping import ErpInvoice, invoice_problems
from services.billing.ledger import LedgerFacts, LedgerHistory, PaymentFact
from services.billing.records import (
    CreditMemoLineRecord,
    CreditMemoRecord,
    HistoryRecord,
    HistoryRow,
    HoldRecord,
    InvoiceLineRecord,
    InvoiceRecord,
    PaymentRecord,
    Receivable,
    ReceivableHistory,
    RefundRecord,
    RevenueEntryRecord,
    StoredLedger,
    UnmappedPriceRecord,
    column_list,
    from_row,
)
from services.billing.snapshots import SnapshotFold, StoredSnapshot
from services.common.db import Conn, Writes

R = TypeVar("R")


async def lock_many(conn: Conn, keys: Sequence[str]) -> None:
    """The invoices' advisory locks, in one statement, taken in the order given (callers sort them)."""
    if keys:
        await conn.execute(
            "SELECT count(pg_advisory_xact_lock(hashtext('billing:' || k))) FROM unnest($1::text[]) AS k", list(keys)
        )


async def add_history(conn: Writes, rows: Sequence[HistoryRow]) -> None:
    """(record_type, record_id, stripe_event_id, event_type, change) rows, in one statement, ids
    in the order given (a replay writes thousands per batch: one statement is one plan and one
    executor run, where a row per execution cost PostgreSQL each again)."""
    if rows:
        columns = list(zip(*rows, strict=True))
        await conn.execute(
            "INSERT INTO record_history (record_type, record_id, stripe_event_id, event_type, change) "
            "SELECT t, r, e, y, c FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[]) "
            "WITH ORDINALITY AS h(t, r, e, y, c, n) ORDER BY n",
            *columns,
        )


# -- customers and items ------------------------------------------------------------------------


async def load_item_map(conn: Conn, price_ids: Sequence[str]) -> dict[str, str]:
    if not price_ids:
        return {}
    rows = await conn.fetch(
        "SELECT stripe_price_id, erp_item_id FROM item_mappings WHERE stripe_price_id = ANY($1::text[])",
        list(price_ids),
    )
    return {r["stripe_price_id"]: r["erp_item_id"] for r in rows}


async def lock_many_and_load_item_map(conn: Conn, keys: Sequence[str], price_ids: Sequence[str]) -> dict[str, str]:
    """`lock_many` then `load_item_map`, in one round trip when there are both (an invoice event's
    batch: at a trickle every event is a batch, and each round trip is a share of its CPU). The
    item mappings are not under those locks, so reading them in the same statement changes
    nothing."""
    if not keys or not price_ids:
        await lock_many(conn, keys)
        return await load_item_map(conn, price_ids)
    row = await conn.fetchrow(
        "SELECT (SELECT count(pg_advisory_xact_lock(hashtext('billing:' || k))) FROM unnest($1::text[]) AS k) "
        "AS locked, ARRAY(SELECT stripe_price_id FROM item_mappings WHERE stripe_price_id = ANY($2::text[]) "
        "ORDER BY stripe_price_id) AS prices, ARRAY(SELECT erp_item_id FROM item_mappings "
        "WHERE stripe_price_id = ANY($2::text[]) ORDER BY stripe_price_id) AS items",
        list(keys),
        list(price_ids),
    )
    assert row is not None
    return dict(zip(row["prices"], row["items"], strict=True))


async def note_unmapped(conn: Writes, seen: Iterable[tuple[str, str]]) -> None:
    """(price id, invoice id) pairs: prices whose lines were written without an ERP item. Each
    distinct pair counts one invoice seen, and the price's last invoice is the greatest id, as
    when the pairs were written one at a time in order; one statement, one row per price."""
    per_price: dict[str, list[str]] = {}
    for price_id, invoice_id in sorted(set(seen)):  # in key order, so concurrent batches cannot deadlock
        per_price.setdefault(price_id, []).append(invoice_id)
    if per_price:
        await conn.execute(
            """
            INSERT INTO unmapped_prices (stripe_price_id, last_invoice_id, invoices_seen)
            SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])
            ON CONFLICT (stripe_price_id) DO UPDATE
               SET last_seen_at = now(), last_invoice_id = EXCLUDED.last_invoice_id,
                   invoices_seen = unmapped_prices.invoices_seen + EXCLUDED.invoices_seen
            """,
            list(per_price),
            [invoices[-1] for invoices in per_price.values()],
            [len(invoices) for invoices in per_price.values()],
        )


@dataclass(frozen=True)
class ImportCounts:
    created: int
    updated: int
    unchanged: int
    #: Stored invoice lines whose ERP item the sheet changed (would change, in a dry run).
    lines_remapped: int = 0


async def import_item_mappings(conn: Conn, rows: Sequence[tuple[str, str]], *, write: bool) -> ImportCounts:
    """Count (and unless `write` is False, apply) a validated data sheet, in the caller's
    transaction: the stored lines of its prices are re-mapped with it (a mapping that left them
    on the default item would leave the ledger saying what the sheet contradicts), and a mapped
    price leaves the unmapped list."""
    existing = await load_item_map(conn, [p for p, _ in rows])
    created = sum(1 for p, _ in rows if p not in existing)
    updated = sum(1 for p, item in rows if p in existing and existing[p] != item)
    unchanged = len(rows) - created - updated
    remapped = await _remap_imported_lines(conn, rows, write=write)
    if write and rows:
        await conn.executemany(
            """
            INSERT INTO item_mappings (stripe_price_id, erp_item_id) VALUES ($1, $2)
            ON CONFLICT (stripe_price_id) DO UPDATE SET erp_item_id = EXCLUDED.erp_item_id, imported_at = now()
             WHERE item_mappings.erp_item_id IS DISTINCT FROM EXCLUDED.erp_item_id
            """,
            sorted(rows),
        )
        await conn.execute("DELETE FROM unmapped_prices WHERE stripe_price_id = ANY($1::text[])", [p for p, _ in rows])
    return ImportCounts(created, updated, unchanged, remapped)


#: Item lines of these (price, item) pairs that do not carry that item yet.
_LINES_TO_REMAP = """
    FROM invoice_lines l JOIN unnest($1::text[], $2::text[]) AS m(stripe_price_id, erp_item_id)
      ON l.stripe_price_id = m.stripe_price_id
   WHERE l.kind = 'item' AND (l.erp_item_id <> m.erp_item_id OR NOT l.item_mapped)
"""


async def _remap_imported_lines(conn: Conn, rows: Sequence[tuple[str, str]], *, write: bool) -> int:
    """Point the stored lines of the sheet's prices at their new items; how many changed (would
    change, unless `write`). The invoices' advisory locks are taken first, in id order as every
    batch takes them, so the import neither deadlocks with nor interleaves a batch writing the
    same invoices. Each changed invoice's history says which lines moved to which item."""
    if not rows:
        return 0
    args = [p for p, _ in rows], [i for _, i in rows]
    invoice_ids = [r[0] for r in await conn.fetch(f"SELECT DISTINCT l.stripe_invoice_id {_LINES_TO_REMAP}", *args)]
    if not write or not invoice_ids:
        return int(await conn.fetchval(f"SELECT count(*) {_LINES_TO_REMAP}", *args) or 0)
    await lock_many(conn, sorted(invoice_ids))
    changed = await conn.fetch(
        """
        UPDATE invoice_lines l SET erp_item_id = m.erp_item_id, item_mapped = true
          FROM unnest($1::text[], $2::text[]) AS m(stripe_price_id, erp_item_id)
         WHERE l.stripe_price_id = m.stripe_price_id
           AND l.kind = 'item' AND (l.erp_item_id <> m.erp_item_id OR NOT l.item_mapped)
        RETURNING l.stripe_invoice_id, l.line_no, l.stripe_price_id, l.erp_item_id
        """,
        *args,
    )
    by_invoice: dict[str, list[str]] = {}
    for r in sorted(changed, key=lambda r: (r["stripe_invoice_id"], r["line_no"])):
        by_invoice.setdefault(r["stripe_invoice_id"], []).append(
            f"line {r['line_no']} ({r['stripe_price_id']}) -> {r['erp_item_id']}"
        )
    await add_history(
        conn,
        [
            ("invoice", invoice_id, "", "item_mappings.imported", "item mapping imported: " + "; ".join(moved))
            for invoice_id, moved in by_invoice.items()
        ],
    )
    return len(changed)


_REMAP_LINES = """
    UPDATE invoice_lines l SET erp_item_id = m.erp_item_id, item_mapped = true
      FROM item_mappings m
     WHERE l.stripe_invoice_id = ANY($1::text[]) AND l.kind = 'item'
       AND l.stripe_price_id = m.stripe_price_id
       AND (l.erp_item_id <> m.erp_item_id OR NOT l.item_mapped)
"""


async def remap_lines(conn: Conn, invoice_ids: Sequence[str]) -> int:
    """Point these invoices' stored item lines at their prices' current ERP items; how many
    changed. Every batch runs it for the invoices it touched (whose locks it holds), so a replay
    re-maps what a mapping written since left behind (an invoice's lines are only rewritten by
    a newer snapshot), and reports exactly those lines."""
    if not invoice_ids:
        return 0
    status = await conn.execute(_REMAP_LINES, list(invoice_ids))
    return int(status.split()[-1])


async def remap_lines_later(later: Writes, invoice_ids: Sequence[str]) -> None:
    """`remap_lines` where nobody reads how many changed (a batch: it may go with its COMMIT)."""
    if invoice_ids:
        await later.execute(_REMAP_LINES, list(invoice_ids))


# -- invoices -----------------------------------------------------------------------------------


async def stored_snapshots(conn: Conn, invoice_ids: Sequence[str]) -> dict[str, StoredSnapshot]:
    """What decides whether new snapshots apply, for many invoices in one round trip.

    The caller holds the invoices' advisory locks, so reading first and writing after is safe;
    the version guard in `write_snapshots` still backs it up."""
    rows = await conn.fetch(
        "SELECT stripe_invoice_id, status_rank, version_created, version_paid, version_attempts, version_event_id, "
        "lines_complete, lines_hash FROM invoices WHERE stripe_invoice_id = ANY($1::text[])",
        list(invoice_ids),
    )
    return {
        r["stripe_invoice_id"]: StoredSnapshot(
            version=(
                r["status_rank"],
                r["version_created"],
                r["version_paid"],
                r["version_attempts"],
                r["version_event_id"],
            ),
            lines_complete=bool(r["lines_complete"]),
            lines_hash=r["lines_hash"],
        )
        for r in rows
    }


async def write_snapshots(conn: Writes, folds: Sequence[SnapshotFold]) -> None:
    """Write the net effect of folded snapshots: headers, then lines, a few statements in all."""
    headers = []
    lines_only = []
    for fold in folds:
        balanced = not invoice_problems(fold.lines) if fold.lines is not None else None
        if fold.header is not None:
            inv, (_, event_created, _, _, event_id) = fold.header
            headers.append(
                (
                    inv.stripe_invoice_id,
                    inv.stripe_customer_id,
                    inv.subscription_id,
                    inv.number,
                    inv.stripe_status,
                    inv.status_rank,
                    event_created,
                    inv.stripe_amount_paid,
                    inv.attempt_count,
                    event_id,
                    inv.api_shape,
                    inv.billing_reason,
                    inv.collection_method,
                    inv.currency,
                    inv.created,
                    inv.transaction_date,
                    inv.due_date,
                    inv.period_start,
                    inv.period_end,
                    inv.subtotal,
                    inv.discount_total,
                    inv.tax,
                    inv.tax_inclusive,
                    inv.total,
                    inv.amount_due,
                    inv.stripe_amount_paid,
                    inv.stripe_amount_remaining,
                    inv.balance_applied,
                    inv.attempt_count,
                    inv.next_payment_attempt,
                    inv.paid_at,
                    inv.voided_at,
                    fold.lines_complete,
                    fold.lines_hash,
                    bool(balanced),
                    fold.lines is not None,
                )
            )
        elif fold.lines is not None:
            lines_only.append((fold.lines.stripe_invoice_id, fold.lines_complete, fold.lines_hash, balanced))
    if headers:
        await conn.executemany(
            """
            INSERT INTO invoices (
                stripe_invoice_id, stripe_customer_id, subscription_id, number, stripe_status, status_rank,
                version_created, version_paid, version_attempts, version_event_id, api_shape, billing_reason,
                collection_method, currency, stripe_created, transaction_date, due_date, period_start, period_end,
                subtotal, discount_total, tax, tax_inclusive, total, amount_due, stripe_amount_paid,
                stripe_amount_remaining, balance_applied, attempt_count, next_payment_attempt, paid_at, voided_at,
                lines_complete, lines_hash, balanced
            ) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20,
                      $21, $22, $23, $24, $25, $26, $27, $28, $29, $30, $31, $32, $33, $34, $35)
            ON CONFLICT (stripe_invoice_id) DO UPDATE SET
                stripe_customer_id = EXCLUDED.stripe_customer_id, subscription_id = EXCLUDED.subscription_id,
                number = EXCLUDED.number, stripe_status = EXCLUDED.stripe_status,
                status_rank = EXCLUDED.status_rank, version_created = EXCLUDED.version_created,
                version_paid = EXCLUDED.version_paid, version_attempts = EXCLUDED.version_attempts,
                version_event_id = EXCLUDED.version_event_id, api_shape = EXCLUDED.api_shape,
                billing_reason = EXCLUDED.billing_reason, collection_method = EXCLUDED.collection_method,
                currency = EXCLUDED.currency, stripe_created = EXCLUDED.stripe_created,
                transaction_date = EXCLUDED.transaction_date, due_date = EXCLUDED.due_date,
                period_start = EXCLUDED.period_start, period_end = EXCLUDED.period_end,
                subtotal = EXCLUDED.subtotal, discount_total = EXCLUDED.discount_total, tax = EXCLUDED.tax,
                tax_inclusive = EXCLUDED.tax_inclusive, total = EXCLUDED.total, amount_due = EXCLUDED.amount_due,
                stripe_amount_paid = EXCLUDED.stripe_amount_paid,
                stripe_amount_remaining = EXCLUDED.stripe_amount_remaining,
                balance_applied = EXCLUDED.balance_applied, attempt_count = EXCLUDED.attempt_count,
                next_payment_attempt = EXCLUDED.next_payment_attempt, paid_at = EXCLUDED.paid_at,
                voided_at = EXCLUDED.voided_at,
                -- The fold decided the lines: complete never becomes incomplete, and the hash and
                -- balance change only with them ($36: the lines were rewritten).
                lines_complete = invoices.lines_complete OR EXCLUDED.lines_complete,
                lines_hash = EXCLUDED.lines_hash,
                balanced = CASE WHEN $36 THEN EXCLUDED.balanced ELSE invoices.balanced END,
                updated_at = now()
            WHERE (EXCLUDED.status_rank, EXCLUDED.version_created, EXCLUDED.version_paid,
                   EXCLUDED.version_attempts, EXCLUDED.version_event_id)
                > (invoices.status_rank, invoices.version_created, invoices.version_paid,
                   invoices.version_attempts, invoices.version_event_id)
            """,
            headers,
        )
    if lines_only:
        await conn.executemany(
            "UPDATE invoices SET lines_complete = $2, lines_hash = $3, balanced = $4 WHERE stripe_invoice_id = $1",
            lines_only,
        )
    rewritten = [fold.lines for fold in folds if fold.lines is not None]
    if rewritten:
        await _replace_lines(conn, rewritten)


async def _replace_lines(conn: Writes, invoices: Sequence[ErpInvoice]) -> None:
    """The invoices' lines and revenue schedules (which cascade from the lines), rewritten: one
    statement per table, whatever the number of lines."""
    await conn.execute(
        "DELETE FROM invoice_lines WHERE stripe_invoice_id = ANY($1::text[])", [i.stripe_invoice_id for i in invoices]
    )
    rows = [
        (
            inv.stripe_invoice_id,
            line.line_no,
            line.kind,
            line.stripe_line_id,
            line.stripe_price_id,
            line.discount_id,
            line.erp_item_id,
            line.item_mapped,
            line.description,
            line.quantity,
            line.unit_amount,
            line.unit_amount_decimal,
            line.amount,
            line.discount_amount,
            line.recognized_amount,
            inv.currency,
            line.period_start,
            line.period_end,
            line.proration,
            line.revenue_account,
            line.coupon_id,
            line.stripe_product_id,
            line.tax_amount,
        )
        for inv in invoices
        for line in inv.lines
    ]
    if rows:
        await conn.execute(
            """
            INSERT INTO invoice_lines (stripe_invoice_id, line_no, kind, stripe_line_id, stripe_price_id, discount_id,
                erp_item_id, item_mapped, description, quantity, unit_amount, unit_amount_decimal, amount,
                discount_amount, recognized_amount, currency, period_start, period_end, proration, revenue_account,
                coupon_id, stripe_product_id, tax_amount)
            SELECT * FROM unnest($1::text[], $2::integer[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::text[], $8::boolean[], $9::text[], $10::bigint[], $11::bigint[], $12::text[], $13::bigint[],
                $14::bigint[], $15::bigint[], $16::text[], $17::date[], $18::date[], $19::boolean[], $20::text[],
                $21::text[], $22::text[], $23::bigint[])
            """,
            *(list(column) for column in zip(*rows, strict=True)),
        )
    entries = [
        (inv.stripe_invoice_id, line.line_no, entry.period, entry.amount, inv.currency)
        for inv in invoices
        for line in inv.lines
        for entry in line.schedule
    ]
    if entries:
        await conn.execute(
            "INSERT INTO revenue_schedule (stripe_invoice_id, line_no, period, amount, currency) "
            "SELECT * FROM unnest($1::text[], $2::integer[], $3::date[], $4::bigint[], $5::text[])",
            *(list(column) for column in zip(*entries, strict=True)),
        )


async def note_uncollectible(
    conn: Writes, invoice_id: str, *, notified_on: date, at: int | None, event_at: int | None = None
) -> None:
    """Stripe gave up on this invoice: remember it (Stripe's moment, the earliest event that said
    so, and the earliest day we were told), whatever snapshot ends up newest."""
    # LEAST ignores NULLs, so a first value seeds each column and an earlier one replaces it.
    await conn.execute(
        """
        UPDATE invoices SET uncollectible_seen = true,
               uncollectible_at = LEAST(uncollectible_at, $3),
               uncollectible_notified_on = LEAST(uncollectible_notified_on, $2),
               uncollectible_event_at = LEAST(uncollectible_event_at, $4)
         WHERE stripe_invoice_id = $1
        """,
        invoice_id,
        notified_on,
        at,
        event_at,
    )


#: An invoice record's columns: the invoice's own, and its ERP customer from `customers`.
_INVOICE_COLUMNS = ", ".join(("c." if f.name == "erp_customer_id" else "i.") + f.name for f in fields(InvoiceRecord))


async def get_invoice(conn: Conn, invoice_id: str) -> InvoiceRecord | None:
    """By Stripe id (in_...) or ERP id (INV-...)."""
    row = await conn.fetchrow(
        f"""
        SELECT {_INVOICE_COLUMNS} FROM invoices i
          LEFT JOIN customers c ON c.stripe_customer_id = i.stripe_customer_id
         WHERE i.stripe_invoice_id = $1 OR i.erp_invoice_id = $1
        """,
        invoice_id,
    )
    return None if row is None else from_row(InvoiceRecord, row)


#: An invoice's lines in line order, as one array column of anonymous rows (asyncpg decodes each to
#: a tuple in `InvoiceLineRecord`'s field order).
_INVOICE_LINE_ROWS = f"""
    ARRAY(SELECT ROW({column_list(InvoiceLineRecord, "l")}) FROM invoice_lines l
           WHERE l.stripe_invoice_id = i.stripe_invoice_id ORDER BY l.line_no) AS invoice_line_rows"""


async def get_invoice_with_lines(conn: Conn, invoice_id: str) -> tuple[InvoiceRecord, list[InvoiceLineRecord]] | None:
    """`get_invoice` and its `invoice_lines` in one statement: a point read (GetInvoice) holds its pooled
    connection for one round trip, not two, and pays one statement's span and parse instead of two."""
    row = await conn.fetchrow(
        f"""
        SELECT {_INVOICE_COLUMNS}, {_INVOICE_LINE_ROWS} FROM invoices i
          LEFT JOIN customers c ON c.stripe_customer_id = i.stripe_customer_id
         WHERE i.stripe_invoice_id = $1 OR i.erp_invoice_id = $1
        """,
        invoice_id,
    )
    if row is None:
        return None
    return from_row(InvoiceRecord, row), [InvoiceLineRecord(*line) for line in row["invoice_line_rows"]]


async def invoice_lines(conn: Conn, invoice_id: str) -> list[InvoiceLineRecord]:
    rows = await conn.fetch(
        f"SELECT {column_list(InvoiceLineRecord)} FROM invoice_lines WHERE stripe_invoice_id = $1 ORDER BY line_no",
        invoice_id,
    )
    return [from_row(InvoiceLineRecord, r) for r in rows]


async def revenue_entries(conn: Conn, invoice_id: str) -> list[RevenueEntryRecord]:
    rows = await conn.fetch(
        f"SELECT {column_list(RevenueEntryRecord)} FROM revenue_schedule WHERE stripe_invoice_id = $1 "
        "ORDER BY line_no, period",
        invoice_id,
    )
    return [from_row(RevenueEntryRecord, r) for r in rows]


#: The payments of invoice `i`, in one stable order, as two parallel arrays (`_ledger_facts`).
_PAYMENT_FACTS = """
    ARRAY(SELECT amount FROM payments p WHERE p.stripe_invoice_id = i.stripe_invoice_id
           ORDER BY stripe_payment_id) AS payment_amounts,
    ARRAY(SELECT paid_at FROM payments p WHERE p.stripe_invoice_id = i.stripe_invoice_id
           ORDER BY stripe_payment_id) AS payment_times"""


async def stored_ledgers(conn: Conn, invoice_ids: Sequence[str]) -> dict[str, StoredLedger]:
    """Each invoice's stored ledger plus every fact it is derived from, in one round trip."""
    rows = await conn.fetch(
        f"""
        SELECT i.*, {_PAYMENT_FACTS},
               (SELECT COALESCE(sum(amount), 0) FROM credit_memos m
                 WHERE m.stripe_invoice_id = i.stripe_invoice_id AND kind = 'credit_note'
                   AND applied_to = 'invoice' AND status = 'issued') AS credit_note_total,
               EXISTS (SELECT 1 FROM credit_holds h
                        WHERE h.stripe_invoice_id = i.stripe_invoice_id AND released_at IS NULL) AS has_active_holds,
               EXISTS (SELECT 1 FROM credit_holds h
                        WHERE h.stripe_invoice_id = i.stripe_invoice_id AND released_at IS NOT NULL
                          AND release_reason LIKE 'invoice %') AS has_released_holds
          FROM invoices i WHERE i.stripe_invoice_id = ANY($1::text[])
        """,
        list(invoice_ids),
    )
    return {
        r["stripe_invoice_id"]: StoredLedger(
            stripe_invoice_id=r["stripe_invoice_id"],
            erp_invoice_id=r["erp_invoice_id"],
            stripe_customer_id=r["stripe_customer_id"],
            currency=r["currency"],
            total=r["total"],
            lines_complete=r["lines_complete"],
            transaction_date=r["transaction_date"],
            uncollectible_notified_on=r["uncollectible_notified_on"],
            erp_status=r["erp_status"],
            amount_paid=r["amount_paid"],
            unattributed_paid=r["unattributed_paid"],
            credits_applied=r["credits_applied"],
            amount_remaining=r["amount_remaining"],
            has_active_holds=r["has_active_holds"],
            facts=_ledger_facts(r, write_off_enabled=False, invoice_credits=int(r["credit_note_total"])),
            paid_at=r["paid_at"],
            voided_at=r["voided_at"],
            status_at=r["version_created"],
            uncollectible_event_at=r["uncollectible_event_at"],
            has_released_holds=r["has_released_holds"],
        )
        for r in rows
    }


async def receivable_histories(conn: Conn, customer: str, as_of: date) -> list[ReceivableHistory]:
    """The customer's invoices dated by `as_of` with every dated fact of their ledgers, in one
    round trip (for `ledger.ledger_as_of`)."""
    rows = await conn.fetch(
        f"""
        SELECT i.*, {_PAYMENT_FACTS},
               ARRAY(SELECT memo_date FROM credit_memos m WHERE m.stripe_invoice_id = i.stripe_invoice_id
                        AND kind = 'credit_note' AND applied_to = 'invoice' AND status = 'issued'
                      ORDER BY memo_key) AS credit_dates,
               ARRAY(SELECT amount FROM credit_memos m WHERE m.stripe_invoice_id = i.stripe_invoice_id
                        AND kind = 'credit_note' AND applied_to = 'invoice' AND status = 'issued'
                      ORDER BY memo_key) AS credit_amounts,
               ARRAY(SELECT ARRAY[memo_date - DATE '1970-01-01', amount, voided_at] FROM credit_memos m
                      WHERE m.stripe_invoice_id = i.stripe_invoice_id AND kind = 'credit_note'
                        AND applied_to = 'invoice' AND status = 'void' AND voided_at IS NOT NULL
                      ORDER BY memo_key) AS voided_credits,
               EXISTS (SELECT 1 FROM credit_memos w
                        WHERE w.stripe_invoice_id = i.stripe_invoice_id AND w.kind = 'write_off') AS written_off
          FROM invoices i
         WHERE i.stripe_customer_id = $1 AND i.transaction_date <= $2
           AND i.stripe_status NOT IN ('draft', 'deleted')
        """,
        customer,
        as_of,
    )
    return [ReceivableHistory(r["currency"], r["due_date"], _ledger_history(r)) for r in rows]


def _ledger_history(row: Any) -> LedgerHistory:
    """A `receivable_histories` row as the ledger sees it; an invoice was written off by this
    deployment exactly when it has a write-off memo (whatever the setting says today)."""
    credits = tuple(zip(row["credit_dates"], row["credit_amounts"], strict=True))
    facts = _ledger_facts(row, write_off_enabled=row["written_off"], invoice_credits=sum(a for _, a in credits))
    return LedgerHistory(
        facts,
        row["transaction_date"],
        credits,
        paid_at=row["paid_at"],
        status_at=row["version_created"],
        voided_at=row["voided_at"],
        uncollectible_event_at=row["uncollectible_event_at"],
        voided_credits=tuple(
            (date(1970, 1, 1) + timedelta(days=day), amount, voided_at)
            for day, amount, voided_at in row["voided_credits"]
        ),
    )


def _ledger_facts(row: Any, *, write_off_enabled: bool, invoice_credits: int) -> LedgerFacts:
    return LedgerFacts(
        total=row["total"],
        stripe_status=row["stripe_status"],
        stripe_amount_paid=row["stripe_amount_paid"],
        balance_applied=row["balance_applied"],
        payments=tuple(PaymentFact(a, t) for a, t in zip(row["payment_amounts"], row["payment_times"], strict=True)),
        invoice_credits=invoice_credits,
        uncollectible_seen=row["uncollectible_seen"],
        uncollectible_at=row["uncollectible_at"],
        write_off_enabled=write_off_enabled,
    )


async def save_ledgers(conn: Writes, moved: Sequence[Settlement]) -> None:
    """The re-derived ledgers of the invoices whose ledger moved, in one statement."""
    if moved:
        await conn.executemany(
            """
            UPDATE invoices SET amount_paid = $2, unattributed_paid = $3, credits_applied = $4,
                   amount_remaining = $5, erp_status = $6, updated_at = now()
             WHERE stripe_invoice_id = $1
            """,
            [
                (
                    m.invoice.stripe_invoice_id,
                    m.state.amount_paid,
                    m.state.unattributed_paid,
                    m.state.credits_applied,
                    m.state.amount_remaining,
                    m.status,
                )
                for m in moved
            ],
        )


async def write_write_offs(conn: Conn, memos: Sequence[WriteOffMemo], *, lines: Writes | None = None) -> dict[str, str]:
    """Create or move the write-off credit memos, set-based; the ERP id of each memo that changed
    (by memo key). A memo already as asked is left alone. The changed memos' lines are rewritten
    through `lines` (default `conn`): a batch holds them for its COMMIT."""
    if not memos:
        return {}
    ordered = sorted(memos, key=lambda m: m.memo_key)  # in key order, so concurrent batches cannot deadlock
    rows = await conn.fetch(
        """
        INSERT INTO credit_memos (memo_key, kind, stripe_invoice_id, stripe_customer_id, amount, currency,
                                  memo_date, status, applied_to, reason, memo, date_source)
        SELECT t.memo_key, 'write_off', t.invoice_id, t.customer_id, t.amount, t.currency, t.memo_date, t.status,
               'invoice', 'uncollectible', t.memo, t.date_source
          FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::date[], $7::text[],
                      $8::text[], $9::text[])
            AS t(memo_key, invoice_id, customer_id, amount, currency, memo_date, status, memo, date_source)
        ON CONFLICT (memo_key) DO UPDATE SET amount = EXCLUDED.amount, status = EXCLUDED.status,
               memo_date = EXCLUDED.memo_date, memo = EXCLUDED.memo, date_source = EXCLUDED.date_source,
               updated_at = now()
         WHERE (credit_memos.amount, credit_memos.status, credit_memos.memo_date, credit_memos.date_source)
               IS DISTINCT FROM (EXCLUDED.amount, EXCLUDED.status, EXCLUDED.memo_date, EXCLUDED.date_source)
        RETURNING memo_key, erp_credit_memo_id
        """,
        [m.memo_key for m in ordered],
        [m.stripe_invoice_id for m in ordered],
        [m.stripe_customer_id for m in ordered],
        [m.amount for m in ordered],
        [m.currency for m in ordered],
        [m.memo_date for m in ordered],
        [m.status for m in ordered],
        [m.memo for m in ordered],
        [m.date_source for m in ordered],
    )
    changed = {r["memo_key"]: str(r["erp_credit_memo_id"]) for r in rows}
    if changed:
        lines = conn if lines is None else lines
        await lines.execute("DELETE FROM credit_memo_lines WHERE memo_key = ANY($1::text[])", sorted(changed))
        await lines.executemany(
            "INSERT INTO credit_memo_lines (memo_key, line_no, description, quantity, unit_amount, amount, kind) "
            "VALUES ($1, 1, $2, 1, $3, $3, 'write_off')",
            [(m.memo_key, m.line_description, m.amount) for m in ordered if m.memo_key in changed],
        )
    return changed


# -- credit holds -------------------------------------------------------------------------------


async def release_holds(conn: Conn, releases: Mapping[str, Release]) -> dict[str, list[str]]:
    """Release the active holds of these invoices (invoice id -> reason and Stripe's moment), in
    one statement; returns the customers released now, by invoice.

    A hold this ledger released before is re-dated when the facts now give another moment (the
    invoice's `paid_at` arriving after its payment), so the release date does not depend on the
    order the facts came in; that is not a new release. A hold is never released before it was
    placed."""
    if not releases:
        return {}
    invoice_ids = sorted(releases)
    rows = await conn.fetch(
        """
        UPDATE credit_holds h
           SET released_at = GREATEST(to_timestamp(t.at), h.placed_at), release_reason = t.reason,
               release_reason_code = t.code, released_date_source = t.source
          FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[])
            AS t(invoice_id, reason, at, source, code),
               credit_holds old
         WHERE h.stripe_invoice_id = t.invoice_id
           AND old.stripe_customer_id = h.stripe_customer_id AND old.stripe_invoice_id = h.stripe_invoice_id
           AND (h.released_at IS NULL
                OR (h.release_reason LIKE 'invoice %'
                    AND (h.released_at, h.released_date_source, h.release_reason_code)
                        IS DISTINCT FROM (GREATEST(to_timestamp(t.at), h.placed_at), t.source, t.code)))
        RETURNING h.stripe_invoice_id, h.stripe_customer_id, old.released_at IS NULL AS released_now
        """,
        invoice_ids,
        [releases[i].reason for i in invoice_ids],
        [releases[i].at for i in invoice_ids],
        [releases[i].source for i in invoice_ids],
        [releases[i].code for i in invoice_ids],
    )
    released: dict[str, list[str]] = {}
    for r in sorted(rows, key=lambda r: (r["stripe_invoice_id"], r["stripe_customer_id"])):
        if r["released_now"]:
            released.setdefault(r["stripe_invoice_id"], []).append(r["stripe_customer_id"])
    return released


@dataclass(frozen=True)
class Release:
    """Why an invoice's holds are released, and when Stripe says that happened."""

    reason: str
    at: int
    source: str
    #: The reason as a code (`holds.HoldCode`): invoice_paid or invoice_voided.
    code: str = "invoice_paid"


async def customer_on_hold(conn: Conn, customer_id: str, *, as_of: date | None = None, zone: tzinfo = UTC) -> bool:
    """Whether a hold stands now, or stood at the end of `as_of` (a day in the ledger's `zone`).
    A hold is dated by Stripe's moments for what placed and released it (`facts.hold_dated`,
    `decide.release_moment`); a released hold is never placed again (`facts.hold_change`), so
    each row is one interval."""
    if as_of is None:
        return bool(
            await conn.fetchval(
                "SELECT EXISTS (SELECT 1 FROM credit_holds WHERE stripe_customer_id = $1 AND released_at IS NULL)",
                customer_id,
            )
        )
    day_after = datetime.combine(as_of + timedelta(days=1), time.min, tzinfo=zone)
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM credit_holds WHERE stripe_customer_id = $1 AND placed_at < $2 "
            "AND (released_at IS NULL OR released_at >= $2))",
            customer_id,
            day_after,
        )
    )


# -- reads for the API --------------------------------------------------------------------------


async def list_invoices(
    conn: Conn,
    *,
    customer: str | None,
    status: str | None,
    from_date: date | None,
    to_date: date | None,
    after: tuple[date, str] | None,
    limit: int,
) -> list[InvoiceRecord]:
    return _all(
        InvoiceRecord,
        await conn.fetch(
            f"""
            SELECT {_INVOICE_COLUMNS} FROM invoices i
              LEFT JOIN customers c ON c.stripe_customer_id = i.stripe_customer_id
             WHERE ($1::text IS NULL OR i.stripe_customer_id = $1)
               AND ($2::text IS NULL OR i.erp_status = $2)
               AND ($3::date IS NULL OR i.transaction_date >= $3)
               AND ($4::date IS NULL OR i.transaction_date <= $4)
               AND ($5::date IS NULL OR (i.transaction_date, i.stripe_invoice_id) > ($5, $6))
             ORDER BY i.transaction_date, i.stripe_invoice_id
             LIMIT $7
            """,
            customer,
            status,
            from_date,
            to_date,
            after[0] if after else None,
            after[1] if after else "",
            limit,
        ),
    )


async def list_payments(
    conn: Conn, *, customer: str | None, invoice: str | None, after: tuple[int, str] | None, limit: int
) -> list[PaymentRecord]:
    return _all(
        PaymentRecord,
        await conn.fetch(
            """
            SELECT p.*, i.erp_invoice_id, COALESCE(p.stripe_customer_id, i.stripe_customer_id) AS customer
              FROM payments p LEFT JOIN invoices i ON i.stripe_invoice_id = p.stripe_invoice_id
             WHERE ($1::text IS NULL OR COALESCE(p.stripe_customer_id, i.stripe_customer_id) = $1)
               AND ($2::text IS NULL OR p.stripe_invoice_id = $2)
               AND ($3::bigint IS NULL OR (p.paid_at, p.stripe_payment_id) > ($3, $4))
             ORDER BY p.paid_at, p.stripe_payment_id
             LIMIT $5
            """,
            customer,
            invoice,
            after[0] if after else None,
            after[1] if after else "",
            limit,
        ),
    )


async def list_credit_memos(
    conn: Conn,
    *,
    customer: str | None,
    invoice: str | None,
    after: tuple[date, str] | None,
    limit: int,
    include_superseded: bool = False,
) -> list[CreditMemoRecord]:
    return _all(
        CreditMemoRecord,
        await conn.fetch(
            """
            SELECT m.*, i.erp_invoice_id, COALESCE(m.stripe_customer_id, i.stripe_customer_id) AS customer
              FROM credit_memos m LEFT JOIN invoices i ON i.stripe_invoice_id = m.stripe_invoice_id
             WHERE ($1::text IS NULL OR COALESCE(m.stripe_customer_id, i.stripe_customer_id) = $1)
               AND ($2::text IS NULL OR m.stripe_invoice_id = $2)
               AND ($3::date IS NULL OR (m.memo_date, m.memo_key) > ($3, $4))
               AND ($6 OR m.status = 'issued')
             ORDER BY m.memo_date, m.memo_key
             LIMIT $5
            """,
            customer,
            invoice,
            after[0] if after else None,
            after[1] if after else "",
            limit,
            include_superseded,
        ),
    )


async def memo_lines(conn: Conn, memo_keys: Sequence[str]) -> dict[str, list[CreditMemoLineRecord]]:
    rows = await conn.fetch(
        "SELECT * FROM credit_memo_lines WHERE memo_key = ANY($1::text[]) ORDER BY memo_key, line_no", list(memo_keys)
    )
    out: dict[str, list[CreditMemoLineRecord]] = {}
    for row in rows:
        out.setdefault(row["memo_key"], []).append(from_row(CreditMemoLineRecord, row))
    return out


async def list_refunds(
    conn: Conn, *, customer: str | None, invoice: str | None, after: tuple[int, str] | None, limit: int
) -> list[RefundRecord]:
    return _all(
        RefundRecord,
        await conn.fetch(
            """
            SELECT r.*, i.erp_invoice_id, COALESCE(r.stripe_customer_id, i.stripe_customer_id) AS customer,
                   COALESCE(cm.erp_credit_memo_id, m.erp_credit_memo_id) AS erp_credit_memo_id
              FROM refunds r
              LEFT JOIN invoices i ON i.stripe_invoice_id = r.stripe_invoice_id
              LEFT JOIN credit_memos m ON m.memo_key = r.stripe_refund_id
              LEFT JOIN LATERAL (
                   SELECT c.erp_credit_memo_id FROM credit_note_refunds l
                     JOIN credit_memos c ON c.memo_key = l.credit_note_id
                    WHERE l.refund_id = r.stripe_refund_id ORDER BY c.memo_key LIMIT 1) cm ON true
             WHERE ($1::text IS NULL OR COALESCE(r.stripe_customer_id, i.stripe_customer_id) = $1)
               AND ($2::text IS NULL OR r.stripe_invoice_id = $2)
               AND ($3::bigint IS NULL OR (r.stripe_created, r.stripe_refund_id) > ($3, $4))
             ORDER BY r.stripe_created, r.stripe_refund_id
             LIMIT $5
            """,
            customer,
            invoice,
            after[0] if after else None,
            after[1] if after else "",
            limit,
        ),
    )


async def customer_known(conn: Conn, customer: str) -> bool:
    """Whether the ledger has seen the customer at all: an invoice, a payment, a memo, a hold or
    a link to its ERP customer. A balance of a customer never seen is NOT_FOUND, not empty."""
    return bool(
        await conn.fetchval(
            """
            SELECT EXISTS (SELECT 1 FROM invoices WHERE stripe_customer_id = $1)
                OR EXISTS (SELECT 1 FROM customers WHERE stripe_customer_id = $1)
                OR EXISTS (SELECT 1 FROM payments WHERE stripe_customer_id = $1)
                OR EXISTS (SELECT 1 FROM credit_memos WHERE stripe_customer_id = $1)
                OR EXISTS (SELECT 1 FROM credit_holds WHERE stripe_customer_id = $1)
            """,
            customer,
        )
    )


async def open_receivables(conn: Conn, customer: str) -> list[Receivable]:
    return _all(
        Receivable,
        await conn.fetch(
            """
            SELECT currency, due_date, amount_remaining FROM invoices
             WHERE stripe_customer_id = $1 AND erp_status IN ('open', 'written_off')
               AND stripe_status NOT IN ('draft', 'void', 'deleted') AND amount_remaining > 0
            """,
            customer,
        ),
    )


async def list_holds(
    conn: Conn, *, customer: str | None, active_only: bool, after: tuple[datetime, str, str] | None, limit: int
) -> list[HoldRecord]:
    return _all(
        HoldRecord,
        await conn.fetch(
            """
            SELECT * FROM credit_holds
             WHERE ($1::text IS NULL OR stripe_customer_id = $1)
               AND (NOT $2 OR released_at IS NULL)
               AND ($3::timestamptz IS NULL OR (placed_at, stripe_customer_id, stripe_invoice_id) > ($3, $4, $5))
             ORDER BY placed_at, stripe_customer_id, stripe_invoice_id
             LIMIT $6
            """,
            customer,
            active_only,
            after[0] if after else None,
            after[1] if after else "",
            after[2] if after else "",
            limit,
        ),
    )


async def list_unmapped(conn: Conn, *, after: str | None, limit: int) -> list[UnmappedPriceRecord]:
    return _all(
        UnmappedPriceRecord,
        await conn.fetch(
            "SELECT * FROM unmapped_prices WHERE ($1::text IS NULL OR stripe_price_id > $1) "
            "ORDER BY stripe_price_id LIMIT $2",
            after,
            limit,
        ),
    )


async def resolve_record_id(conn: Conn, record_id: str) -> str:
    """ERP ids (INV-, PMT-, CM-, RFD-) to the Stripe key history is recorded under."""
    for table, erp_col, key_col in (
        ("invoices", "erp_invoice_id", "stripe_invoice_id"),
        ("payments", "erp_payment_id", "stripe_payment_id"),
        ("credit_memos", "erp_credit_memo_id", "memo_key"),
        ("refunds", "erp_refund_id", "stripe_refund_id"),
    ):
        value = await conn.fetchval(f"SELECT {key_col} FROM {table} WHERE {erp_col} = $1", record_id)
        if value is not None:
            return str(value)
    return record_id


async def history(conn: Conn, record_id: str) -> list[HistoryRecord]:
    return _all(
        HistoryRecord, await conn.fetch("SELECT * FROM record_history WHERE record_id = $1 ORDER BY id", record_id)
    )


def _all(cls: type[R], rows: Iterable[Any]) -> list[R]:
    return [from_row(cls, row) for row in rows]

"""All SQL of the customer service.

Order-independence is decided in `handlers` with `mapping.decide` while the records involved
are locked here (`lock_by_stripe_ids`, FOR UPDATE in id order), so no other transaction can
change a record between the decision and the write. `active` only moves from true to false, so
a deleted customer stays deleted whatever arrives after. Records are never deleted (a trigger
refuses it). Writes of Stripe state take a whole batch of records per statement.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from services.common.db import Conn, Writes
from services.customer.mapping import (
    Address,
    CustomerRecord,
    ImportProblem,
    MappingRow,
    Version,
    assigned_number,
    format_erp_id,
    normalize_email,
    unix_to_datetime,
)

SERVICE = "customer"

_COLUMNS = """
    erp_customer_id, stripe_customer_id, email, name, phone, description, address, currency,
    balance_minor, delinquent, metadata, livemode, active, deleted_at, stripe_created, origin,
    version_created, version_rank, last_event_id, created_at, updated_at
"""


def _record(row: asyncpg.Record) -> CustomerRecord:
    version = (
        Version(int(row["version_created"]), int(row["version_rank"])) if row["version_created"] is not None else None
    )
    return CustomerRecord(
        erp_customer_id=row["erp_customer_id"],
        stripe_customer_id=row["stripe_customer_id"],
        email=row["email"],
        name=row["name"],
        phone=row["phone"],
        description=row["description"],
        address=Address.from_dict(row["address"]),
        currency=row["currency"],
        balance_minor=int(row["balance_minor"]),
        delinquent=bool(row["delinquent"]),
        metadata=dict(row["metadata"] or {}),
        livemode=bool(row["livemode"]),
        active=bool(row["active"]),
        deleted_at=row["deleted_at"],
        stripe_created=row["stripe_created"],
        origin=row["origin"],
        version=version,
        last_event_id=row["last_event_id"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )


def _maybe(row: asyncpg.Record | None) -> CustomerRecord | None:
    return _record(row) if row is not None else None


# --- reads ------------------------------------------------------------------------------------


async def get_by_stripe_id(conn: Conn, stripe_customer_id: str, *, for_update: bool = False) -> CustomerRecord | None:
    lock = " FOR UPDATE" if for_update else ""
    return _maybe(
        await conn.fetchrow(f"SELECT {_COLUMNS} FROM customers WHERE stripe_customer_id = $1{lock}", stripe_customer_id)
    )


async def get_by_erp_id(conn: Conn, erp_customer_id: str, *, for_update: bool = False) -> CustomerRecord | None:
    lock = " FOR UPDATE" if for_update else ""
    return _maybe(
        await conn.fetchrow(f"SELECT {_COLUMNS} FROM customers WHERE erp_customer_id = $1{lock}", erp_customer_id)
    )


async def find_by_email(conn: Conn, email: str) -> list[CustomerRecord]:
    """Every record whose email equals `email` ignoring case (via the indexed lower-cased copy)."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM customers WHERE email_lower = $1 ORDER BY erp_customer_id LIMIT 50",
        normalize_email(email),
    )
    return [_record(r) for r in rows]


@dataclass(frozen=True)
class ListFilter:
    email: str | None = None
    updated_since: datetime | None = None
    active: bool | None = None


async def list_customers(conn: Conn, *, filters: ListFilter, after: str | None, limit: int) -> list[CustomerRecord]:
    """Records ordered by ERP id, resumed after `after`: keyset paging, so pages stay stable under
    concurrent inserts. Callers ask for one row more than a page to learn whether another follows."""
    clauses = ["($1::text IS NULL OR erp_customer_id > $1)"]
    args: list[Any] = [after]
    if filters.email is not None:
        args.append(normalize_email(filters.email))
        clauses.append(f"email_lower = ${len(args)}")
    if filters.updated_since is not None:
        args.append(filters.updated_since)
        clauses.append(f"updated_at >= ${len(args)}")
    if filters.active is not None:
        args.append(filters.active)
        clauses.append(f"active = ${len(args)}")
    args.append(limit)
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM customers WHERE {' AND '.join(clauses)} ORDER BY erp_customer_id LIMIT ${len(args)}",
        *args,
    )
    return [_record(r) for r in rows]


async def active_erp_ids(conn: Conn) -> list[str]:
    rows = await conn.fetch("SELECT erp_customer_id FROM customers WHERE active ORDER BY erp_customer_id")
    return [r["erp_customer_id"] for r in rows]


@dataclass(frozen=True)
class HistoryRow:
    stripe_event_id: str | None
    action: str
    stripe_customer_id: str | None
    event_created: datetime | None
    outcome: str
    recorded_at: datetime


async def history(conn: Conn, erp_customer_id: str) -> list[HistoryRow]:
    rows = await conn.fetch(
        "SELECT stripe_event_id, action, stripe_customer_id, event_created, outcome, recorded_at "
        "FROM customer_history WHERE erp_customer_id = $1 ORDER BY id",
        erp_customer_id,
    )
    return [HistoryRow(**dict(r)) for r in rows]


# --- writes of Stripe state -------------------------------------------------------------------


async def seen_events(conn: Conn, stripe_event_ids: Sequence[str]) -> set[str]:
    """Which of these events already reached a record (a replay then changes nothing)."""
    rows = await conn.fetch(
        "SELECT stripe_event_id FROM customer_history WHERE stripe_event_id = ANY($1::text[])", list(stripe_event_ids)
    )
    return {r["stripe_event_id"] for r in rows}


async def lock_by_stripe_ids(conn: Conn, stripe_customer_ids: Sequence[str]) -> dict[str, CustomerRecord]:
    """The records of these Stripe customers, locked for the transaction.

    Locked in id order, so two replicas handling overlapping batches cannot deadlock.
    """
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM customers WHERE stripe_customer_id = ANY($1::text[]) "
        "ORDER BY stripe_customer_id FOR UPDATE",
        sorted(set(stripe_customer_ids)),
    )
    return {r["stripe_customer_id"]: _record(r) for r in rows}


async def seen_and_locked(
    conn: Conn, stripe_event_ids: Sequence[str], stripe_customer_ids: Sequence[str]
) -> tuple[set[str], datetime, dict[str, CustomerRecord]]:
    """`seen_events` and `lock_by_stripe_ids` in one round trip: which of these events already
    reached a record, the transaction's time (now(): the same throughout a transaction, what
    every write of it is stamped with), and the records of these customers, locked (in id
    order) for the transaction.

    A batch's first statements, whose answers do not depend on each other: at a trickle every
    event is a batch of its own and pays each round trip whole (the service's CPU for it, and
    PostgreSQL's). The records of customers whose events turn out to be seen are locked too,
    which changes nothing but when another transaction waits.
    """
    rows = await conn.fetch(
        "SELECT head.now, head.seen, c.* FROM (SELECT now() AS now, ARRAY(SELECT stripe_event_id "
        "FROM customer_history WHERE stripe_event_id = ANY($1::text[])) AS seen) AS head "
        f"LEFT JOIN LATERAL (SELECT {_COLUMNS} FROM customers WHERE stripe_customer_id = ANY($2::text[]) "
        "ORDER BY stripe_customer_id FOR UPDATE) AS c ON true",
        list(stripe_event_ids),
        sorted(set(stripe_customer_ids)),
    )
    now = rows[0]["now"]
    assert isinstance(now, datetime)
    records = {r["stripe_customer_id"]: _record(r) for r in rows if r["stripe_customer_id"] is not None}
    return set(rows[0]["seen"]), now, records


async def transaction_time(conn: Conn) -> datetime:
    """now(): the time every write of this transaction is stamped with."""
    value = await conn.fetchval("SELECT now()")
    assert isinstance(value, datetime)
    return value


async def allocate_erp_ids(conn: Conn, count: int) -> list[str]:
    """The next `count` free CUST-000123 ids, in order; numbers an import already took are skipped.

    Each round draws the numbers and learns which of them are taken in one statement (the id is
    spelled in SQL as `format_erp_id` spells it: six digits at least, zero-padded)."""
    out: list[str] = []
    while len(out) < count:
        rows = await conn.fetch(
            "SELECT n, EXISTS (SELECT 1 FROM customers "
            "WHERE erp_customer_id = 'CUST-' || lpad(n::text, greatest(6, length(n::text)), '0')) AS taken "
            "FROM (SELECT nextval('erp_customer_number') AS n FROM generate_series(1, $1::int)) AS s ORDER BY n",
            count - len(out),
        )
        out.extend(format_erp_id(int(r["n"])) for r in rows if not r["taken"])
    return out


_RECORD_ARRAYS = """
    unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::jsonb[],
           $9::text[], $10::bigint[], $11::boolean[], $12::jsonb[], $13::boolean[], $14::boolean[],
           $15::timestamptz[], $16::timestamptz[], $17::text[], $18::bigint[], $19::smallint[], $20::text[],
           $21::timestamptz[], $22::timestamptz[])
    AS r(erp_customer_id, stripe_customer_id, email, email_lower, name, phone, description, address,
         currency, balance_minor, delinquent, metadata, livemode, active, deleted_at, stripe_created, origin,
         version_created, version_rank, last_event_id, created_at, updated_at)
"""


def _record_columns(records: Sequence[CustomerRecord]) -> list[list[Any]]:
    """The records as 22 column arrays, in `_RECORD_ARRAYS` order."""
    return [
        [r.erp_customer_id for r in records],
        [r.stripe_customer_id for r in records],
        [r.email for r in records],
        [normalize_email(r.email) for r in records],
        [r.name for r in records],
        [r.phone for r in records],
        [r.description for r in records],
        [r.address.as_dict() if r.address else None for r in records],
        [r.currency for r in records],
        [r.balance_minor for r in records],
        [r.delinquent for r in records],
        [r.metadata for r in records],
        [r.livemode for r in records],
        [r.active for r in records],
        [r.deleted_at for r in records],
        [r.stripe_created for r in records],
        [r.origin for r in records],
        [r.version.created if r.version else None for r in records],
        [r.version.rank if r.version else None for r in records],
        [r.last_event_id for r in records],
        [r.created_at for r in records],
        [r.updated_at for r in records],
    ]


async def insert_records(conn: Conn, records: Sequence[CustomerRecord]) -> set[str]:
    """Insert new records for Stripe customers; returns the Stripe ids inserted (one another
    transaction linked first is left out, and the caller retries)."""
    if not records:
        return set()
    rows = await conn.fetch(
        f"""
        INSERT INTO customers (
            erp_customer_id, stripe_customer_id, email, email_lower, name, phone, description, address,
            currency, balance_minor, delinquent, metadata, livemode, active, deleted_at, stripe_created, origin,
            version_created, version_rank, last_event_id, created_at, updated_at)
        SELECT * FROM {_RECORD_ARRAYS}
        ON CONFLICT (stripe_customer_id) DO NOTHING
        RETURNING stripe_customer_id
        """,
        *_record_columns(records),
    )
    return {r["stripe_customer_id"] for r in rows}


async def update_records(conn: Conn, records: Sequence[CustomerRecord]) -> int:
    """Write the Stripe-side state of records the caller holds locked (`lock_by_stripe_ids`) and
    has already passed through the version rules (`mapping.applied_record`); returns the rows
    written.

    Defence in depth: a record whose stored version is newer than the one written is left as it
    is (and not counted), even if a caller skipped the rules.
    """
    if not records:
        return 0
    status = await conn.execute(
        f"""
        UPDATE customers c SET
            email = r.email, email_lower = r.email_lower, name = r.name, phone = r.phone,
            description = r.description, address = r.address, currency = r.currency,
            balance_minor = r.balance_minor, delinquent = r.delinquent, metadata = r.metadata,
            livemode = r.livemode, active = r.active, deleted_at = r.deleted_at, stripe_created = r.stripe_created,
            version_created = r.version_created, version_rank = r.version_rank, last_event_id = r.last_event_id,
            updated_at = r.updated_at
        FROM {_RECORD_ARRAYS}
        WHERE c.erp_customer_id = r.erp_customer_id AND c.stripe_customer_id = r.stripe_customer_id
          AND (c.version_created IS NULL
               OR (c.version_created, c.version_rank) <= (r.version_created, r.version_rank))
        """,
        *_record_columns(sorted(records, key=lambda r: r.erp_customer_id)),
    )
    return int(status.split()[-1])


@dataclass(frozen=True)
class HistoryEntry:
    erp_customer_id: str
    stripe_customer_id: str | None
    action: str
    outcome: str
    stripe_event_id: str | None = None
    event_created: int | None = None


async def add_history(conn: Writes, entries: Sequence[HistoryEntry]) -> None:
    """Append audit rows in the given order; an event already recorded is not recorded twice."""
    if not entries:
        return
    await conn.execute(
        "INSERT INTO customer_history (erp_customer_id, stripe_customer_id, stripe_event_id, action, "
        "event_created, outcome) SELECT a, b, c, d, e, f FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], "
        "$5::timestamptz[], $6::text[]) WITH ORDINALITY AS h(a, b, c, d, e, f, n) ORDER BY n "
        "ON CONFLICT DO NOTHING",
        [e.erp_customer_id for e in entries],
        [e.stripe_customer_id for e in entries],
        [e.stripe_event_id for e in entries],
        [e.action for e in entries],
        [unix_to_datetime(e.event_created) for e in entries],
        [e.outcome for e in entries],
    )


async def record_history(
    conn: Conn,
    *,
    erp_customer_id: str,
    stripe_customer_id: str | None,
    action: str,
    outcome: str,
    stripe_event_id: str | None = None,
    event_created: int | None = None,
) -> None:
    await add_history(
        conn, [HistoryEntry(erp_customer_id, stripe_customer_id, action, outcome, stripe_event_id, event_created)]
    )


# --- link changes made through the API --------------------------------------------------------


async def set_erp_contact(conn: Conn, erp_customer_id: str, *, email: str | None, name: str | None) -> None:
    """Record an ERP-side email/name change (pushed to Stripe by the sync that follows)."""
    await conn.execute(
        "UPDATE customers SET email = COALESCE($2, email), email_lower = COALESCE($3, email_lower), "
        "name = COALESCE($4, name), updated_at = now() WHERE erp_customer_id = $1",
        erp_customer_id,
        email,
        normalize_email(email),
        name,
    )


async def link(conn: Conn, erp_customer_id: str, stripe_customer_id: str) -> CustomerRecord:
    """Link an unlinked record; the caller checked that nobody holds the Stripe customer."""
    row = await conn.fetchrow(
        f"UPDATE customers SET stripe_customer_id = $2, updated_at = now() "
        f"WHERE erp_customer_id = $1 AND stripe_customer_id IS NULL RETURNING {_COLUMNS}",
        erp_customer_id,
        stripe_customer_id,
    )
    if row is None:
        raise RuntimeError(f"{erp_customer_id} was linked concurrently")
    return _record(row)


async def unlink(conn: Conn, erp_customer_id: str) -> CustomerRecord:
    """Clear the link; the Stripe state stays as history of what the customer was.

    The version key is cleared too: it belonged to the old Stripe customer, and a new link
    starts a new lifecycle.
    """
    row = await conn.fetchrow(
        f"UPDATE customers SET stripe_customer_id = NULL, version_created = NULL, version_rank = NULL, "
        f"updated_at = now() WHERE erp_customer_id = $1 RETURNING {_COLUMNS}",
        erp_customer_id,
    )
    assert row is not None
    return _record(row)


# --- the mapping import ---------------------------------------------------------------------


#: The import's steps as the caller's progress names them (`ImportStep` gets the name and rows done).
IMPORT_STEPS = (
    "reading the file",
    "copying rows",
    "checking links",
    "writing customers",
    "queueing events",
    "committing",
)
ImportStep = Callable[[str, int], None]
#: Rows per COPY: small enough that progress moves every second or so on a large sheet.
IMPORT_COPY_CHUNK = 10_000


def _no_step(_step: str, _rows_done: int) -> None:
    return None


@dataclass
class ImportOutcome:
    created: int = 0
    linked: int = 0
    unchanged: int = 0
    problems: list[ImportProblem] | None = None
    new_links: list[tuple[str, str]] | None = None


async def import_mappings(
    conn: Conn,
    rows: Sequence[MappingRow],
    *,
    apply: bool,
    step: ImportStep = _no_step,
    outcome_text: str = "applied",
) -> ImportOutcome:
    """Check `rows` against existing links and, if `apply` and nothing conflicts, write them;
    each new link's history says `outcome_text` (who imported it, from the caller's identity).

    Runs in the caller's transaction: the caller commits only a clean, non-dry-run import. The
    rows go to a temporary table by COPY and are checked and applied with a few set-based
    statements, so 100,000 rows take seconds, not a round trip each. While applying, the table
    is locked against concurrent writers (the event consumer waits), so the checks still hold
    when the rows are written.
    """
    if apply:
        await conn.execute("LOCK TABLE customers IN SHARE ROW EXCLUSIVE MODE")
    await conn.execute(
        "CREATE TEMP TABLE import_rows (line integer NOT NULL, stripe_customer_id text NOT NULL, "
        "erp_customer_id text NOT NULL, email text, email_lower text, kind text) ON COMMIT DROP"
    )
    step("copying rows", 0)
    for start in range(0, len(rows), IMPORT_COPY_CHUNK):
        chunk = rows[start : start + IMPORT_COPY_CHUNK]
        await conn.copy_records_to_table(
            "import_rows",
            records=[
                (r.line, r.stripe_customer_id, r.erp_customer_id, r.email, normalize_email(r.email)) for r in chunk
            ],
            columns=["line", "stripe_customer_id", "erp_customer_id", "email", "email_lower"],
        )
        step("copying rows", start + len(chunk))
    step("checking links", len(rows))
    await conn.execute("CREATE INDEX ON import_rows (erp_customer_id)")
    await conn.execute("CREATE INDEX ON import_rows (stripe_customer_id)")
    await conn.execute("ANALYZE import_rows")
    conflicts = await conn.fetch(
        """
        SELECT t.line, 'stripe_customer_id' AS field,
               t.stripe_customer_id || ' is already linked to ' || c.erp_customer_id
                   || ': unlink ' || c.erp_customer_id || ' first' AS reason
        FROM import_rows t JOIN customers c ON c.stripe_customer_id = t.stripe_customer_id
        WHERE c.erp_customer_id <> t.erp_customer_id
        UNION ALL
        SELECT t.line, 'erp_customer_id',
               t.erp_customer_id || ' is already linked to ' || c.stripe_customer_id
                   || ': clear the link (UnlinkCustomer) before linking it to another Stripe customer'
        FROM import_rows t JOIN customers c ON c.erp_customer_id = t.erp_customer_id
        WHERE c.stripe_customer_id IS NOT NULL AND c.stripe_customer_id <> t.stripe_customer_id
        """
    )
    outcome = ImportOutcome(problems=sorted(ImportProblem(r["line"], r["field"], r["reason"]) for r in conflicts))
    await conn.execute("UPDATE import_rows SET kind = 'create'")
    await conn.execute(
        "UPDATE import_rows t SET kind = CASE WHEN c.stripe_customer_id IS NULL THEN 'link' ELSE 'unchanged' END "
        "FROM customers c WHERE c.erp_customer_id = t.erp_customer_id"
    )
    counts = {
        r["kind"]: int(r["n"]) for r in await conn.fetch("SELECT kind, count(*) AS n FROM import_rows GROUP BY kind")
    }
    outcome.created = counts.get("create", 0)
    outcome.linked = counts.get("link", 0)
    outcome.unchanged = counts.get("unchanged", 0)
    if outcome.problems or not apply:
        return outcome

    step("writing customers", len(rows))
    await conn.execute(
        """
        INSERT INTO customers (erp_customer_id, stripe_customer_id, email, email_lower, origin)
        SELECT erp_customer_id, stripe_customer_id, email, email_lower, 'import' FROM import_rows WHERE kind = 'create'
        """
    )
    await conn.execute(
        """
        UPDATE customers c SET stripe_customer_id = t.stripe_customer_id,
            email = COALESCE(c.email, t.email), email_lower = COALESCE(c.email_lower, t.email_lower),
            updated_at = now()
        FROM import_rows t WHERE t.kind = 'link' AND c.erp_customer_id = t.erp_customer_id
        """
    )
    await conn.execute(
        """
        INSERT INTO customer_history (erp_customer_id, stripe_customer_id, action, outcome)
        SELECT erp_customer_id, stripe_customer_id, 'import.linked', $1::text
        FROM import_rows WHERE kind IN ('create', 'link') ORDER BY line
        """,
        outcome_text,
    )
    highest = max((n for n in (assigned_number(r.erp_customer_id) for r in rows) if n is not None), default=0)
    if highest:
        # Assigned ids must never collide with imported ones of the same form.
        await conn.execute(
            "SELECT setval('erp_customer_number', GREATEST($1::bigint, (SELECT last_value FROM erp_customer_number)))",
            highest,
        )
    new_links = await conn.fetch(
        "SELECT erp_customer_id, stripe_customer_id FROM import_rows WHERE kind IN ('create', 'link') ORDER BY line"
    )
    outcome.new_links = [(r["erp_customer_id"], r["stripe_customer_id"]) for r in new_links]
    return outcome

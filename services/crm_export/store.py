"""All SQL of the CRM-export service; reads return typed records, never rows.

For a batch it reads, in bulk, what the decision needs (`stored_facts`, `health_by_customer`)
and writes what it decided (`write_changes`). Which rows win is decided in decide.py; every
upsert of a Stripe-derived row still carries its version `(v_terminal, v_ts, v_rank, v_settled,
content_hash)` and replaces the stored row only when the new version is strictly greater (or,
for two states Stripe settled for one version, is Stripe's later answer), so a replica that wrote
between the read and the write is never overwritten with older state.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import asyncpg

from services.common.db import Conn, Deferred, Jsonb
from services.common.errors import ConflictError
from services.crm_export import decide, mapping
from services.crm_export.crm_settings import CrmSettings, FieldMapping
from services.crm_export.decide import BatchChanges, BatchKeys, Guarded, KeptCustomer, StoredFacts, StoredVersion
from services.crm_export.health import Health, health_from
from services.crm_export.records import (
    Address,
    Client,
    Contract,
    ContractLine,
    InvoicePayment,
    Product,
    StripeCustomer,
    SubscriptionState,
    Version,
)

# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class SettingsVersion:
    version: int
    settings: CrmSettings
    changed_at: datetime
    changed_by: str


def _mappings(raw: Any) -> tuple[FieldMapping, ...]:
    return tuple(FieldMapping(m["stripe_path"], m["crm_field"]) for m in raw or [])


def _settings_row(row: asyncpg.Record) -> SettingsVersion:
    return SettingsVersion(
        version=row["version"],
        settings=CrmSettings(
            contract_sources=tuple(row["contract_sources"]),
            days_back=row["days_back"],
            customer_sync_direction=row["customer_sync_direction"],
            customer_field_mappings=_mappings(row["customer_field_mappings"]),
            product_field_mappings=_mappings(row["product_field_mappings"]),
            import_requests_per_second=row["import_requests_per_second"],
        ),
        changed_at=row["changed_at"],
        changed_by=row["changed_by"],
    )


async def current_settings(conn: Conn) -> SettingsVersion:
    row = await conn.fetchrow("SELECT * FROM settings_versions ORDER BY version DESC LIMIT 1")
    assert row is not None  # the migration inserts version 1
    return _settings_row(row)


async def settings_history(conn: Conn) -> list[SettingsVersion]:
    return [_settings_row(r) for r in await conn.fetch("SELECT * FROM settings_versions ORDER BY version DESC")]


async def save_settings(
    conn: Conn, settings: CrmSettings, *, changed_by: str, expected_version: int = 0
) -> SettingsVersion:
    """Record a new settings version (call inside a transaction). Concurrent updates queue on
    the table lock, so versions are gap-free and `expected_version` is checked reliably."""
    await conn.execute("LOCK TABLE settings_versions IN SHARE ROW EXCLUSIVE MODE")
    current = await conn.fetchval("SELECT max(version) FROM settings_versions")
    if expected_version and expected_version != current:
        raise ConflictError(
            f"settings are at version {current}, not {expected_version}: read them again and reapply your change"
        )
    row = await conn.fetchrow(
        """
        INSERT INTO settings_versions (version, contract_sources, days_back, customer_sync_direction,
            customer_field_mappings, product_field_mappings, import_requests_per_second, changed_by)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *
        """,
        current + 1,
        list(settings.contract_sources),
        settings.days_back,
        settings.customer_sync_direction,
        [{"stripe_path": m.stripe_path, "crm_field": m.crm_field} for m in settings.customer_field_mappings],
        [{"stripe_path": m.stripe_path, "crm_field": m.crm_field} for m in settings.product_field_mappings],
        settings.import_requests_per_second,
        changed_by,
    )
    assert row is not None  # RETURNING gives the inserted row
    return _settings_row(row)


# ---------------------------------------------------------------- the batch: load and write

_KEY_COLUMNS = {
    decide.CUSTOMERS: "id",
    decide.CLIENTS: "client_id",
    decide.PRODUCTS: "stripe_product_id",
    decide.CONTRACTS: "contract_id",
    decide.SUBSCRIPTIONS: "id",
}


async def stored_facts(
    conn: Conn, settings: CrmSettings, keys: BatchKeys, health_of: Iterable[str] = ()
) -> tuple[StoredFacts, dict[str, Health]]:
    """The stored versions of every row the batch may replace, the kept Stripe customers, and the
    health of the customers in `health_of` (`health_by_customer`), in one statement (whatever
    the number of tables and rows): at a trickle every event is a batch of its own, and the
    health read of its own was a round trip per event."""
    selects: list[str] = []
    args: list[list[str]] = []
    for table in decide.GUARDED_TABLES:
        wanted = keys.rows.get(table)
        if not wanted:
            continue
        args.append(sorted(wanted))
        raw = "raw" if table == decide.CUSTOMERS else "NULL::jsonb"
        selects.append(
            f"SELECT '{table}' AS t, {_KEY_COLUMNS[table]} AS k, v_terminal, v_ts, v_rank, v_settled, content_hash, "
            f"{raw} AS raw, NULL::text AS status, NULL::text AS invoice_id, NULL::boolean AS failed, "
            f"NULL::boolean AS paid FROM {table} WHERE {_KEY_COLUMNS[table]} = ANY(${len(args)}::text[])"
        )
    ids = sorted(set(health_of))
    if ids:
        args.append(ids)
        selects.append(_HEALTH_FACTS.format(n=len(args), versions=", NULL" * 6))
    versions: dict[str, dict[str, StoredVersion]] = {table: {} for table in decide.GUARDED_TABLES}
    customers: dict[str, KeptCustomer] = {}
    health_rows: list[asyncpg.Record] = []
    if selects:
        order = " ORDER BY invoice_id NULLS FIRST" if ids else ""
        for r in await conn.fetch(" UNION ALL ".join(selects) + order, *args):
            if r["t"] == _HEALTH:
                health_rows.append(r)
                continue
            versions[r["t"]][r["k"]] = StoredVersion(
                r["v_terminal"], r["v_ts"], r["v_rank"], r["content_hash"], r["v_settled"]
            )
            if r["t"] == decide.CUSTOMERS:
                version = Version(r["v_terminal"], r["v_ts"], r["v_rank"], r["v_settled"])
                customers[r["k"]] = KeptCustomer(r["raw"], version)
    return StoredFacts(settings, versions, customers), _health_of(ids, health_rows)


#: decide.supersedes in SQL: strictly newer, or Stripe's later answer for one settled version.
_GUARD = (
    "((EXCLUDED.v_terminal, EXCLUDED.v_ts, EXCLUDED.v_rank, EXCLUDED.v_settled, EXCLUDED.content_hash)"
    " > (t.v_terminal, t.v_ts, t.v_rank, t.v_settled, t.content_hash)"
    " OR (EXCLUDED.v_settled AND t.v_settled"
    " AND (EXCLUDED.v_terminal, EXCLUDED.v_ts, EXCLUDED.v_rank) = (t.v_terminal, t.v_ts, t.v_rank)"
    " AND EXCLUDED.content_hash <> t.content_hash))"
)
#: The version columns every guarded upsert sets.
_SET_VERSION = (
    "v_terminal = EXCLUDED.v_terminal, v_ts = EXCLUDED.v_ts, v_rank = EXCLUDED.v_rank, "
    "v_settled = EXCLUDED.v_settled, content_hash = EXCLUDED.content_hash"
)


def _v(row: Guarded[Any]) -> tuple[bool, int, int, bool, str]:
    return (row.version.terminal, row.version.ts, row.version.rank, row.version.settled, row.content)


_UPSERT_CUSTOMER = f"""
    INSERT INTO stripe_customers AS t (id, email, deleted, raw, v_terminal, v_ts, v_rank, v_settled, content_hash)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
    ON CONFLICT (id) DO UPDATE SET email = EXCLUDED.email, deleted = EXCLUDED.deleted, raw = EXCLUDED.raw,
        {_SET_VERSION}
    WHERE {_GUARD}
"""


def _customer_args(row: Guarded[StripeCustomer]) -> tuple[Any, ...]:
    customer = row.record
    return (customer.id, customer.email, customer.deleted, customer.raw, *_v(row))


_UPSERT_CLIENT = f"""
    INSERT INTO clients AS t (client_id, origin, stripe_customer_id, name, email, line1, line2, city, state,
        postal_code, country, custom_fields, deleted, v_terminal, v_ts, v_rank, v_settled, content_hash)
    VALUES ($1, 'STRIPE', $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)
    ON CONFLICT (client_id) DO UPDATE SET name = EXCLUDED.name, email = EXCLUDED.email,
        line1 = EXCLUDED.line1, line2 = EXCLUDED.line2, city = EXCLUDED.city, state = EXCLUDED.state,
        postal_code = EXCLUDED.postal_code, country = EXCLUDED.country, custom_fields = EXCLUDED.custom_fields,
        deleted = EXCLUDED.deleted, {_SET_VERSION}, updated_at = now()
    WHERE {_GUARD}
"""


def _client_args(row: Guarded[Client]) -> tuple[Any, ...]:
    client = row.record
    a = client.address
    return (
        client.stripe_customer_id,
        client.name,
        client.email,
        a.line1,
        a.line2,
        a.city,
        a.state,
        a.postal_code,
        a.country,
        client.custom_fields,
        client.deleted,
        *_v(row),
    )


_UPSERT_PRODUCT = f"""
    INSERT INTO products AS t (stripe_product_id, name, description, active, custom_fields, deleted, raw,
        v_terminal, v_ts, v_rank, v_settled, content_hash)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
    ON CONFLICT (stripe_product_id) DO UPDATE SET name = EXCLUDED.name, description = EXCLUDED.description,
        active = EXCLUDED.active, custom_fields = EXCLUDED.custom_fields, deleted = EXCLUDED.deleted,
        raw = EXCLUDED.raw, {_SET_VERSION}, updated_at = now()
    WHERE {_GUARD}
"""


def _product_args(row: Guarded[Product]) -> tuple[Any, ...]:
    p = row.record
    return (p.stripe_product_id, p.name, p.description, p.active, p.custom_fields, p.deleted, row.raw, *_v(row))


def _date(iso: str) -> date | None:
    return date.fromisoformat(iso) if iso else None


_UPSERT_CONTRACT = f"""
    INSERT INTO contracts AS t (contract_id, source, stripe_customer_id, customer_email, status, currency,
        total_minor, discount_minor, start_date, end_date, created, canceled_at, stripe_subscription_id,
        v_terminal, v_ts, v_rank, v_settled, content_hash)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18)
    ON CONFLICT (contract_id) DO UPDATE SET source = EXCLUDED.source,
        stripe_customer_id = EXCLUDED.stripe_customer_id, customer_email = EXCLUDED.customer_email,
        status = EXCLUDED.status, currency = EXCLUDED.currency, total_minor = EXCLUDED.total_minor,
        discount_minor = EXCLUDED.discount_minor, start_date = EXCLUDED.start_date,
        end_date = EXCLUDED.end_date, created = EXCLUDED.created, canceled_at = EXCLUDED.canceled_at,
        stripe_subscription_id = EXCLUDED.stripe_subscription_id, {_SET_VERSION},
        updated_at = now()
    WHERE {_GUARD}
"""


def _contract_args(row: Guarded[Contract]) -> tuple[Any, ...]:
    c = row.record
    return (
        c.contract_id,
        c.source,
        c.stripe_customer_id,
        c.customer_email,
        c.status,
        c.currency,
        c.total_minor,
        c.discount_minor,
        _date(c.start_date),
        _date(c.end_date),
        c.created,
        c.canceled_at,
        c.stripe_subscription_id,
        *_v(row),
    )


_INSERT_CONTRACT_LINE = """
    INSERT INTO contract_lines (contract_id, stripe_line_id, stripe_product_id, description, quantity,
        start_date, end_date, amount_minor, discount_minor, currency, ordinal)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
"""


def _line_args(contract_id: str, ordinal: int, line: ContractLine) -> tuple[Any, ...]:
    """`ordinal`: the line's place in its contract (an invoice's own line order), read back in it."""
    return (
        contract_id,
        line.stripe_line_id,
        line.stripe_product_id,
        line.description,
        line.quantity,
        _date(line.start_date),
        _date(line.end_date),
        line.amount_minor,
        line.discount_minor,
        line.currency,
        ordinal,
    )


_UPSERT_SUBSCRIPTION = f"""
    INSERT INTO subscriptions AS t (id, stripe_customer_id, status, v_terminal, v_ts, v_rank, v_settled, content_hash)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
    ON CONFLICT (id) DO UPDATE SET stripe_customer_id = EXCLUDED.stripe_customer_id, status = EXCLUDED.status,
        {_SET_VERSION}
    WHERE {_GUARD}
"""


def _subscription_args(row: Guarded[SubscriptionState]) -> tuple[Any, ...]:
    state = row.record
    return (state.id, state.stripe_customer_id, state.status, *_v(row))


_UPSERT_PAYMENT = """
    INSERT INTO invoice_payments AS t (invoice_id, stripe_customer_id, failed, paid) VALUES ($1, $2, $3, $4)
    ON CONFLICT (invoice_id) DO UPDATE SET failed = t.failed OR EXCLUDED.failed, paid = t.paid OR EXCLUDED.paid
"""


def _jsonb(args: tuple[Any, ...], *positions: int) -> tuple[Any, ...]:
    """`args` with those at `positions` (0-based) marked as jsonb for a held write (`db.Jsonb`)."""
    return tuple(Jsonb(a) if n in positions and a is not None else a for n, a in enumerate(args))


async def write_changes(conn: Deferred, changes: BatchChanges) -> None:
    """The batch's rows, a statement per row (a pipeline at once, or held: `db.Deferred`: no
    row count is read); the WHERE guards still hold against a replica that wrote meanwhile. A
    changed contract's lines are replaced."""
    if changes.customers.rows:
        await conn.executemany(_UPSERT_CUSTOMER, [_jsonb(_customer_args(row), 3) for row in changes.customers.rows])
    if changes.subscriptions.rows:
        await conn.executemany(_UPSERT_SUBSCRIPTION, [_subscription_args(row) for row in changes.subscriptions.rows])
    if changes.payments:
        await conn.executemany(
            _UPSERT_PAYMENT, [(p.invoice_id, p.stripe_customer_id, p.failed, p.paid) for p in changes.payments]
        )
    if changes.clients.rows:
        await conn.executemany(_UPSERT_CLIENT, [_jsonb(_client_args(row), 9) for row in changes.clients.rows])
    if changes.products.rows:
        await conn.executemany(_UPSERT_PRODUCT, [_jsonb(_product_args(row), 4, 6) for row in changes.products.rows])
    if changes.contracts.rows:
        await conn.executemany(_UPSERT_CONTRACT, [_contract_args(row) for row in changes.contracts.rows])
    changed = sorted(changes.contracts.changed)
    if changed:
        contracts = changes.contracts.records()
        await conn.execute("DELETE FROM contract_lines WHERE contract_id = ANY($1::text[])", changed)
        await conn.executemany(
            _INSERT_CONTRACT_LINE,
            [_line_args(c, ordinal, line) for c in changed for ordinal, line in enumerate(contracts[c].lines, 1)],
        )


# ---------------------------------------------------------------- settings changes


async def rebuild_stripe_clients(conn: Conn, settings: CrmSettings) -> list[str]:
    """Bring Stripe clients in line with new settings (mappings, direction) from the kept
    customers; return the ids of clients whose content changed."""
    if not settings.pulls_customers:
        return []
    changed = []
    rows = await conn.fetch("SELECT raw, v_terminal, v_ts, v_rank, v_settled FROM stripe_customers ORDER BY id")
    for row in rows:
        client = mapping.client_from_customer(row["raw"], settings, deleted=row["v_terminal"])
        existing = await conn.fetchval(
            "SELECT content_hash FROM clients WHERE client_id = $1", client.stripe_customer_id
        )
        if existing == client.content_hash():
            continue
        await conn.execute("DELETE FROM clients WHERE client_id = $1 AND origin = 'STRIPE'", client.stripe_customer_id)
        version = Version(row["v_terminal"], row["v_ts"], row["v_rank"], row["v_settled"])
        guarded = Guarded(client.stripe_customer_id, version, client.content_hash(), client, source=0)
        await conn.execute(_UPSERT_CLIENT, *_client_args(guarded))
        changed.append(client.stripe_customer_id)
    return changed


async def rebuild_products(conn: Conn, settings: CrmSettings) -> list[str]:
    """Recompute product custom fields after the product mappings changed."""
    changed = []
    for row in await conn.fetch("SELECT stripe_product_id, raw, deleted, content_hash FROM products ORDER BY 1"):
        product = mapping.product_from_stripe(row["raw"], settings, deleted=row["deleted"])
        if product.content_hash() != row["content_hash"]:
            await conn.execute(
                "UPDATE products SET custom_fields = $2, content_hash = $3, updated_at = now() "
                "WHERE stripe_product_id = $1",
                product.stripe_product_id,
                product.custom_fields,
                product.content_hash(),
            )
            changed.append(product.stripe_product_id)
    return changed


# ---------------------------------------------------------------- health


async def health_for(conn: Conn, stripe_customer_ids: Sequence[str]) -> Health:
    """One client's health from all of its Stripe customers together."""
    ids = sorted(set(stripe_customer_ids))
    if not ids:
        return Health((), ())
    rows = await _health_rows(conn, ids)
    statuses = [r["status"] for r in rows if r["invoice_id"] is None]
    payments = [
        InvoicePayment(r["invoice_id"], r["k"], r["failed"], r["paid"]) for r in rows if r["invoice_id"] is not None
    ]
    return health_from(statuses, payments)


async def health_by_customer(conn: Conn, stripe_customer_ids: Iterable[str]) -> dict[str, Health]:
    """Each Stripe customer's own health, for many customers in one round trip."""
    ids = sorted(set(stripe_customer_ids))
    if not ids:
        return {}
    return _health_of(ids, await _health_rows(conn, ids))


async def _health_rows(conn: Conn, ids: list[str]) -> list[asyncpg.Record]:
    return await conn.fetch(_HEALTH_FACTS.format(n=1, versions="") + " ORDER BY invoice_id NULLS FIRST", ids)


#: `t` of the health rows `_HEALTH_FACTS` adds to a read.
_HEALTH = "health"

#: The customers' (`${n}`) subscription statuses and invoice payments, as rows of `t` = 'health'
#: (`versions`: nothing, or the NULLs that stand for the version columns of `stored_facts`'s rows); the
#: caller orders by invoice_id NULLS FIRST. It is read before and after each batch that touches
#: health, and at a trickle every event is a batch.
_HEALTH_FACTS = (
    "SELECT 'health' AS t, stripe_customer_id AS k{versions}, status, NULL::text AS invoice_id, "
    "NULL::boolean AS failed, NULL::boolean AS paid FROM subscriptions WHERE stripe_customer_id = ANY(${n}::text[]) "
    "UNION ALL SELECT 'health', stripe_customer_id{versions}, NULL, invoice_id, failed, paid FROM invoice_payments "
    "WHERE stripe_customer_id = ANY(${n}::text[])"
)


def _health_of(ids: Sequence[str], rows: Iterable[asyncpg.Record]) -> dict[str, Health]:
    """Each of `ids`'s health from its `_HEALTH_FACTS` rows (statuses first, then payments by id)."""
    by_status: dict[str, list[str]] = {i: [] for i in ids}
    by_payment: dict[str, list[InvoicePayment]] = {i: [] for i in ids}
    for r in rows:
        if r["invoice_id"] is None:
            by_status[r["k"]].append(r["status"])
        else:
            by_payment[r["k"]].append(InvoicePayment(r["invoice_id"], r["k"], r["failed"], r["paid"]))
    return {i: health_from(by_status[i], by_payment[i]) for i in ids}


# ---------------------------------------------------------------- CRM clients


@dataclass(frozen=True)
class CrmClient:
    crm_client_id: str
    name: str
    email: str
    stripe_customer_id: str


async def upsert_crm_clients(conn: Conn, clients: Sequence[CrmClient]) -> None:
    await conn.executemany(
        """
        INSERT INTO clients (client_id, origin, crm_client_id, stripe_customer_id, name, email)
        VALUES ('crm_' || $1, 'CRM', $1, NULLIF($2, ''), $3, $4)
        ON CONFLICT (client_id) DO UPDATE SET stripe_customer_id = EXCLUDED.stripe_customer_id,
            name = EXCLUDED.name, email = EXCLUDED.email, updated_at = now()
        """,
        [
            (c.crm_client_id, c.stripe_customer_id, c.name, c.email)
            for c in sorted(clients, key=lambda c: c.crm_client_id)
        ],
    )


# ---------------------------------------------------------------- reads


@dataclass(frozen=True)
class ClientRecord:
    client_id: str
    origin: str
    stripe_customer_id: str
    crm_client_id: str
    name: str
    email: str
    address: Address
    custom_fields: dict[str, str]
    deleted: bool
    health: Health


@dataclass(frozen=True)
class ContractRecord:
    contract: Contract
    client_id: str
    product_names: dict[str, str] = field(default_factory=dict)


async def _stripe_ids_of(conn: Conn, row: asyncpg.Record) -> list[str]:
    ids = [row["stripe_customer_id"]] if row["stripe_customer_id"] else []
    if row["origin"] == "CRM" and row["email"]:
        ids += [
            r["id"]
            for r in await conn.fetch("SELECT id FROM stripe_customers WHERE lower(email) = lower($1)", row["email"])
        ]
    return sorted(set(ids))


async def _client_record(conn: Conn, row: asyncpg.Record) -> ClientRecord:
    return _record(row, await health_for(conn, await _stripe_ids_of(conn, row)))


def _record(row: asyncpg.Record, health: Health) -> ClientRecord:
    return ClientRecord(
        client_id=row["client_id"],
        origin=row["origin"],
        stripe_customer_id=row["stripe_customer_id"] or "",
        crm_client_id=row["crm_client_id"] or "",
        name=row["name"],
        email=row["email"],
        address=Address(row["line1"], row["line2"], row["city"], row["state"], row["postal_code"], row["country"]),
        custom_fields=dict(row["custom_fields"]),
        deleted=row["deleted"],
        health=health,
    )


async def list_clients(conn: Conn, *, after: str, limit: int) -> list[ClientRecord]:
    rows = await conn.fetch("SELECT * FROM clients WHERE client_id > $1 ORDER BY client_id LIMIT $2", after, limit)
    return [await _client_record(conn, r) for r in rows]


async def get_client(conn: Conn, client_id: str) -> ClientRecord | None:
    row = await conn.fetchrow("SELECT * FROM clients WHERE client_id = $1", client_id)
    return await _client_record(conn, row) if row else None


async def get_stripe_client(conn: Conn, stripe_customer_id: str) -> ClientRecord | None:
    return (await stripe_clients(conn, [stripe_customer_id])).get(stripe_customer_id)


async def stripe_clients(conn: Conn, stripe_customer_ids: Sequence[str]) -> dict[str, ClientRecord]:
    """Clients that come from Stripe customers, by customer id, in three round trips."""
    rows = await conn.fetch(
        "SELECT * FROM clients WHERE client_id = ANY($1::text[]) AND origin = 'STRIPE'", sorted(stripe_customer_ids)
    )
    health = await health_by_customer(conn, [r["client_id"] for r in rows])
    return {r["client_id"]: _record(r, health[r["client_id"]]) for r in rows}


def _product(row: asyncpg.Record) -> Product:
    return Product(
        stripe_product_id=row["stripe_product_id"],
        name=row["name"],
        description=row["description"],
        active=row["active"],
        custom_fields=dict(row["custom_fields"]),
        deleted=row["deleted"],
    )


async def list_products(conn: Conn, *, after: str, limit: int) -> list[Product]:
    rows = await conn.fetch(
        "SELECT * FROM products WHERE stripe_product_id > $1 ORDER BY stripe_product_id LIMIT $2", after, limit
    )
    return [_product(r) for r in rows]


async def get_product(conn: Conn, product_id: str) -> Product | None:
    row = await conn.fetchrow("SELECT * FROM products WHERE stripe_product_id = $1", product_id)
    return _product(row) if row else None


def _iso(value: date | None) -> str:
    return value.isoformat() if value else ""


async def _contract_records(conn: Conn, rows: Sequence[asyncpg.Record]) -> list[ContractRecord]:
    ids = [r["contract_id"] for r in rows]
    lines: dict[str, list[ContractLine]] = {i: [] for i in ids}
    names: dict[str, dict[str, str]] = {i: {} for i in ids}
    for line in await conn.fetch(
        """
        SELECT l.*, p.name AS product_name FROM contract_lines l
        LEFT JOIN products p ON p.stripe_product_id = l.stripe_product_id
        WHERE l.contract_id = ANY($1) ORDER BY l.contract_id, l.ordinal, l.stripe_line_id
        """,
        ids,
    ):
        lines[line["contract_id"]].append(
            ContractLine(
                stripe_line_id=line["stripe_line_id"],
                stripe_product_id=line["stripe_product_id"],
                description=line["description"],
                quantity=line["quantity"],
                start_date=_iso(line["start_date"]),
                end_date=_iso(line["end_date"]),
                amount_minor=line["amount_minor"],
                discount_minor=line["discount_minor"],
                currency=line["currency"],
            )
        )
        if line["product_name"] is not None:
            names[line["contract_id"]][line["stripe_product_id"]] = line["product_name"]
    return [
        ContractRecord(
            contract=Contract(
                contract_id=r["contract_id"],
                source=r["source"],
                stripe_customer_id=r["stripe_customer_id"],
                customer_email=r["customer_email"],
                status=r["status"],
                currency=r["currency"],
                total_minor=r["total_minor"],
                discount_minor=r["discount_minor"],
                start_date=_iso(r["start_date"]),
                end_date=_iso(r["end_date"]),
                created=r["created"],
                canceled_at=r["canceled_at"],
                stripe_subscription_id=r["stripe_subscription_id"],
                lines=tuple(lines[r["contract_id"]]),
            ),
            client_id=r["client_id"] or "",
            product_names=names[r["contract_id"]],
        )
        for r in rows
    ]


@dataclass(frozen=True)
class ContractFilter:
    client_id: str = ""
    source: str = ""
    start_date: date | None = None
    end_date: date | None = None
    waiting_only: bool = False


async def list_contracts(conn: Conn, flt: ContractFilter, *, after: str, limit: int) -> list[ContractRecord]:
    rows = await conn.fetch(
        """
        SELECT k.*, cc.client_id FROM contracts k JOIN contract_clients cc USING (contract_id)
        WHERE k.contract_id > $1
          AND ($2 = '' OR cc.client_id = $2)
          AND ($3 = '' OR k.source = $3)
          AND ($4::date IS NULL OR k.end_date IS NULL OR k.end_date >= $4)
          AND ($5::date IS NULL OR k.start_date IS NULL OR k.start_date <= $5)
          AND (NOT $6 OR cc.client_id IS NULL)
        ORDER BY k.contract_id LIMIT $7
        """,
        after,
        flt.client_id,
        flt.source,
        flt.start_date,
        flt.end_date,
        flt.waiting_only,
        limit,
    )
    return await _contract_records(conn, rows)


async def get_contract(conn: Conn, contract_id: str) -> ContractRecord | None:
    return (await get_contracts(conn, [contract_id])).get(contract_id)


async def get_contracts(conn: Conn, contract_ids: Sequence[str]) -> dict[str, ContractRecord]:
    rows = await conn.fetch(
        "SELECT k.*, cc.client_id FROM contracts k JOIN contract_clients cc USING (contract_id) "
        "WHERE k.contract_id = ANY($1::text[]) ORDER BY k.contract_id",
        sorted(contract_ids),
    )
    return {r.contract.contract_id: r for r in await _contract_records(conn, rows)}


# ---------------------------------------------------------------- import runs


@dataclass(frozen=True)
class ImportRun:
    run_id: str
    days_back: int
    cutoff: int
    resumed: bool


@dataclass(frozen=True)
class Checkpoint:
    phase: str
    starting_after: str | None
    done: int
    finished: bool


async def open_import_run(conn: Conn, *, run_id: str, days_back: int, cutoff: int, restart: bool) -> ImportRun:
    """The running import to continue, or a new one. Call inside a transaction."""
    running = await conn.fetchrow("SELECT * FROM import_runs WHERE status = 'running' FOR UPDATE")
    if running is not None and not restart and running["days_back"] == days_back:
        return ImportRun(running["run_id"], running["days_back"], running["cutoff"], resumed=True)
    if running is not None:
        await conn.execute(
            "UPDATE import_runs SET status = 'abandoned', finished_at = now() WHERE run_id = $1", running["run_id"]
        )
    await conn.execute(
        "INSERT INTO import_runs (run_id, status, days_back, cutoff) VALUES ($1, 'running', $2, $3)",
        run_id,
        days_back,
        cutoff,
    )
    return ImportRun(run_id, days_back, cutoff, resumed=False)


async def checkpoint(conn: Conn, run_id: str, phase: str) -> Checkpoint:
    row = await conn.fetchrow("SELECT * FROM import_checkpoints WHERE run_id = $1 AND phase = $2", run_id, phase)
    if row is None:
        return Checkpoint(phase, None, 0, False)
    return Checkpoint(phase, row["starting_after"], row["done"], row["finished"])


async def save_checkpoint(conn: Conn, run_id: str, cp: Checkpoint) -> None:
    await conn.execute(
        """
        INSERT INTO import_checkpoints (run_id, phase, starting_after, done, finished) VALUES ($1, $2, $3, $4, $5)
        ON CONFLICT (run_id, phase) DO UPDATE SET starting_after = EXCLUDED.starting_after, done = EXCLUDED.done,
            finished = EXCLUDED.finished
        """,
        run_id,
        cp.phase,
        cp.starting_after,
        cp.done,
        cp.finished,
    )


async def finish_import_run(conn: Conn, run_id: str) -> None:
    await conn.execute("UPDATE import_runs SET status = 'finished', finished_at = now() WHERE run_id = $1", run_id)

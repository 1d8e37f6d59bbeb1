"""PostgreSQL: one asyncpg pool per service, confined to the service's own schema, and ordered
SQL migrations applied at start-up.

Migrations run under a transaction-spanning advisory lock keyed by schema, so any number of
replicas can start at once: one applies, the others wait and then find nothing to do. Each
applied file is recorded with a checksum; editing a file after it shipped is refused at
start-up, because replicas would otherwise disagree about what the schema is.

The runtime's own tables (idempotency record, outbox) are migration source `runtime`, applied
before the service's files, so every service has them without copying them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from services.common.errors import SettingsError

log = logging.getLogger(__name__)

#: A connection inside a transaction, whether taken straight from a pool or not.
Conn = asyncpg.Connection | asyncpg.pool.PoolConnectionProxy

RUNTIME_MIGRATIONS = Path(__file__).parent / "migrations"
#: The runtime's own tables in every service's schema (its migrations above): not the service's
#: records, so tools that compare a service's records (replay) leave them out.
RUNTIME_TABLES = ("processed_events", "outbox", "delivery_failures", "schema_migrations", "audit_log")
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
_SCHEMA = re.compile(r"^[a-z][a-z0-9_]{0,62}$")


@dataclass(frozen=True)
class Migration:
    source: str
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(source: str, folder: Path) -> list[Migration]:
    migrations = []
    for path in sorted(folder.glob("*.sql")):
        match = _FILE.match(path.name)
        if not match:
            raise SettingsError(f"migration file {path} is not named NNNN_name.sql")
        migrations.append(Migration(source, int(match.group(1)), match.group(2), path.read_text("utf-8")))
    versions = [m.version for m in migrations]
    if len(set(versions)) != len(versions):
        raise SettingsError(f"two migrations in {folder} share a version number")
    return migrations


async def _init_connection(conn: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await conn.set_type_codec(type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _no_session_reset(conn: asyncpg.Connection) -> None:
    """What a connection is reset with when it goes back to the pool, beyond asyncpg's own
    rollback of an open transaction: nothing.

    asyncpg's default sends `RESET ALL; CLOSE ALL; UNLISTEN *; pg_advisory_unlock_all()` on
    every release: one more round trip per read and per consumed batch (a tenth of a read's CPU).
    The mesh leaves no session state on a pooled connection: locks are transaction-scoped
    (`pg_advisory_xact_lock`), nothing LISTENs, SETs or holds a cursor outside a transaction, and
    the one session lock (the CRM import's) is released explicitly, its connection terminated
    if that fails.
    """


async def create_pool(
    dsn: str, schema: str, *, min_size: int = 1, max_size: int = 10, connect_timeout: float = 5.0
) -> asyncpg.Pool:
    """A pool whose connections see only `schema` (and pg_catalog) by default."""
    if not _SCHEMA.match(schema):
        raise ValueError(f"bad schema name {schema!r}")
    conn = await asyncpg.connect(dsn, timeout=connect_timeout)
    try:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    except asyncpg.UniqueViolationError:
        pass  # a concurrent replica created it between the check and the create
    finally:
        await conn.close()
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        init=_init_connection,
        reset=_no_session_reset,
        server_settings={"search_path": schema, "application_name": f"syncmesh-{schema}"},
        command_timeout=30,
        timeout=connect_timeout,
    )
    assert pool is not None
    return pool


async def migrate(pool: asyncpg.Pool, schema: str, sources: Iterable[tuple[str, Path]]) -> list[Migration]:
    """Apply every migration not yet recorded, in order; return those applied now."""
    wanted: list[Migration] = [m for source, folder in sources for m in load_migrations(source, folder)]
    applied_now: list[Migration] = []
    async with pool.acquire() as conn, conn.transaction():
        # Held until commit: replicas starting together apply the migrations exactly once.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"syncmesh-migrate:{schema}")
        await conn.execute(
            """
            CREATE TABLE IF NOT EXISTS schema_migrations (
                source text NOT NULL,
                version integer NOT NULL,
                name text NOT NULL,
                checksum text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now(),
                PRIMARY KEY (source, version)
            )
            """
        )
        rows = await conn.fetch("SELECT source, version, checksum FROM schema_migrations")
        done = {(r["source"], r["version"]): r["checksum"] for r in rows}
        for migration in wanted:
            key = (migration.source, migration.version)
            if key in done:
                if done[key] != migration.checksum:
                    raise SettingsError(
                        f"migration {migration.source}/{migration.version:04d}_{migration.name}.sql was "
                        "changed after it was applied: add a new migration instead of editing this one"
                    )
                continue
            try:
                await conn.execute(migration.sql)
            except asyncpg.PostgresError as exc:
                if unreachable(exc):
                    raise
                # The database answered: the file is wrong for it, and retrying cannot help.
                raise SettingsError(
                    f"migration {migration.source}/{migration.version:04d}_{migration.name}.sql failed: "
                    f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else exc}; nothing of it "
                    "was applied: fix it (or the database) and restart"
                ) from None
            await conn.execute(
                "INSERT INTO schema_migrations (source, version, name, checksum) VALUES ($1, $2, $3, $4)",
                migration.source,
                migration.version,
                migration.name,
                migration.checksum,
            )
            applied_now.append(migration)
            log.info("applied migration %s/%04d_%s", migration.source, migration.version, migration.name)
    return applied_now


#: What PostgreSQL being unreachable looks like to a client: no connection, a connection lost,
#: a server shutting down or starting up, only a standby to be found (a failover in progress, with
#: `target_session_attrs=read-write`), or a standby that refuses writes. An error of this kind
#: says nothing about the statement or the event, only that the database is not there to take it.
UNREACHABLE: tuple[type[Exception], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.ReadOnlySQLTransactionError,
    asyncpg.TooManyConnectionsError,
    asyncpg.exceptions.TargetServerAttributeNotMatched,
)


#: Unreachable, or refusing: what a loop that waits for the database rides out.
UNAVAILABLE: tuple[type[Exception], ...] = (*UNREACHABLE, asyncpg.PostgresError)


def unreachable(exc: BaseException) -> bool:
    return isinstance(exc, UNREACHABLE)


async def ping(pool: asyncpg.Pool, timeout: float = 1.0) -> bool:
    try:
        async with pool.acquire(timeout=timeout) as conn:
            await conn.fetchval("SELECT 1", timeout=timeout)
        return True
    except UNAVAILABLE:
        return False


def record(row: asyncpg.Record | None) -> dict[str, Any] | None:
    return dict(row) if row is not None else None

"""PostgreSQL: one asyncpg pool per service, confined to the service's own schema, and ordered
SQL migrations applied at start-up.

Migrations run under a transaction-spanning advisory lock keyed by schema, so any number of
replicas can start at once: one applies, the others wait and then find nothing to do. Each
applied file is recorded with a checksum; editing a file after it shipped is refused at
start-up, because replicas would otherwise disagree about what the schema is.

The runtime's own tables (idempotency record, outbox) are migration source `runtime`, applied
before the service's files, so every service has them without copying them: they live in each
service's schema, so each service's role reaches its own copy and no other.

Database identities (SECURITY.md): the schemas and everything in them belong to the migration
role (`MIGRATION_ROLE`), the only one that changes their shape; each service runs as its own
login role (`runtime_role(schema)`, e.g. `syncmesh_billing`) with USAGE on its schema and
SELECT/INSERT/UPDATE/DELETE on its tables, nothing else. `provision_roles` sets that up from
the schema's name; `grant_runtime` (run again after every migration) keeps it true for new tables.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import asyncpg
from opentelemetry import context as otel_context
from opentelemetry import trace

from services.common.errors import SettingsError

log = logging.getLogger(__name__)
_tracer = trace.get_tracer(__name__)

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


class UntracedTransaction:
    """`conn.transaction()` whose BEGIN and COMMIT (ROLLBACK, or SAVEPOINT and RELEASE when nested)
    get no span of their own: every other statement inside keeps its asyncpg span.

    For the consumer's batch, whose own span ("<service> apply batch") runs from BEGIN to COMMIT,
    so the commit's time is in that span already; at a trickle, where every event is a batch of
    its own, the two spans were a fifth of the spans per event (~20 us of CPU each).
    """

    __slots__ = ("_transaction",)

    def __init__(self, conn: Conn) -> None:
        self._transaction = conn.transaction()

    async def __aenter__(self) -> None:
        with Untraced():
            await self._transaction.__aenter__()

    async def __aexit__(self, *exc: Any) -> None:
        with Untraced():
            await self._transaction.__aexit__(*exc)


class Untraced:
    """While entered, the instrumentations make no span (asyncpg's statements included): for
    transaction control whose time an enclosing span already covers."""

    __slots__ = ("_token",)

    def __enter__(self) -> None:
        self._token = otel_context.attach(otel_context.set_value(otel_context._SUPPRESS_INSTRUMENTATION_KEY, True))

    def __exit__(self, *exc: object) -> None:
        otel_context.detach(self._token)


def literals_allowed(conn: Conn) -> bool:
    """Whether values may be written into SQL as literals (`text_literal`, `bytea_literal`) on
    this connection: only with standard_conforming_strings on, where nothing but a quote is
    special inside a string literal, backslashes included.

    Literals let a statement share a simple-query round trip with others (BEGIN and the batch's
    claim; the batch's last writes and COMMIT): parameters need the extended protocol, one
    statement per round trip. At a trickle, where every event is a batch of its own, each round
    trip is a wake-up of the service and of a PostgreSQL backend.
    """
    return bool(conn.get_settings().standard_conforming_strings == "on")


def text_literal(value: str) -> str | None:
    """A string as a standard SQL literal ('' for each quote); None for one PostgreSQL's text
    cannot hold (a NUL), which then has to travel as a parameter."""
    if "\x00" in value:
        return None
    return "'" + value.replace("'", "''") + "'"


def bytea_literal(value: bytes) -> str:
    """Bytes as a bytea literal in hex form (`'\\x0a1b'::bytea`): hex digits need no escaping."""
    return "'\\x" + value.hex() + "'::bytea"


@dataclass(frozen=True, slots=True)
class Jsonb:
    """A jsonb parameter of a held write (`Deferred`): a literal can only be exact knowing that
    (a dict may be json or hstore, a str a JSON string or a text). Its literal is the pool's
    codec's text (`json.dumps`) cast to jsonb; with parameters it goes as the value itself."""

    value: object


#: What asyncpg sends as `infinity` and `-infinity` for a timestamptz (and `date.max`, `date.min`
#: for a date): a literal says the same.
_LAST_INSTANT = datetime.max.replace(tzinfo=UTC)
_FIRST_INSTANT = datetime.min.replace(tzinfo=UTC)


def sql_literal(value: object) -> str | None:
    """A Python value as the SQL literal asyncpg's parameter would stand for, or None where no
    literal here is exact (a NUL in a text, a naive datetime, a float, a nested list...): the
    statement then travels with parameters.

    None -> NULL; bool -> true/false; int -> its digits (a negative one in parentheses, since `::`
    binds tighter than unary minus: `-9223372036854775808::bigint` overflows); str -> a quoted
    text (`text_literal`); bytes -> hex bytea; a timezone-aware datetime -> its UTC instant as
    `timestamptz`; a date -> `date` (the greatest and least of each `infinity` and `-infinity`,
    as asyncpg sends them); `Jsonb` -> `jsonb` (the pool's codec: `json.dumps`); a list or
    tuple of those (no lists inside) -> `ARRAY[...]`, empty `'{}'`. Arrays and untyped
    scalars take their type from the statement (`$1::bigint[]`, a column), as parameters do.
    """
    if value is None:
        return "NULL"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        digits = str(int(value))
        return f"({digits})" if value < 0 else digits
    if isinstance(value, str):
        return text_literal(value)
    if isinstance(value, bytes):
        return bytea_literal(value)
    if isinstance(value, datetime):
        if value.utcoffset() is None:
            return None
        try:
            instant = value.astimezone(UTC)
        except OverflowError:  # beyond year 1..9999 in UTC: asyncpg refuses it too
            return None
        if instant in (_LAST_INSTANT, _FIRST_INSTANT):  # asyncpg's +-infinity
            return f"'{'' if instant == _LAST_INSTANT else '-'}infinity'::timestamptz"
        return f"'{instant.isoformat()}'::timestamptz"
    if isinstance(value, date):
        if value in (date.max, date.min):  # asyncpg's +-infinity
            return f"'{'' if value == date.max else '-'}infinity'::date"
        return f"'{value.isoformat()}'::date"
    if isinstance(value, Jsonb):
        try:
            quoted = text_literal(json.dumps(value.value))
        except (TypeError, ValueError):  # not JSON: the parameter's codec refuses it too
            return None
        return None if quoted is None else f"{quoted}::jsonb"
    if isinstance(value, list | tuple):
        if not value:
            return "'{}'"
        elements = []
        for element in value:
            if isinstance(element, list | tuple):
                return None
            if (literal := sql_literal(element)) is None:
                return None
            elements.append(literal)
        return "ARRAY[" + ", ".join(elements) + "]"
    return None


def values_literal(rows: Iterable[Sequence[object]]) -> str | None:
    """Rows as a VALUES list of SQL literals (`sql_literal`), `(a, b), (c, d)`; None when a value
    has no exact literal. Untyped literals take their types from where the list goes (an INSERT's
    columns, a FROM's use), as parameters take theirs from the statement."""
    out = []
    for row in rows:
        literals = [sql_literal(value) for value in row]
        if any(literal is None for literal in literals):
            return None
        out.append("(" + ", ".join(literal for literal in literals if literal is not None) + ")")
    return ", ".join(out)


#: What `render` looks at in a statement: a quoted string or identifier (kept as it is), a comment
#: (dropped: a text substituted into one could end it with a newline), a parameter `$n`.
_TOKENS = re.compile(r"'[^']*'|\"[^\"]*\"|--[^\n]*|/\*.*?\*/|\$(\d+)", re.DOTALL)


def render(query: str, args: Sequence[object]) -> str | None:
    """`query` with each `$n` replaced by the literal of `args[n-1]` (`sql_literal`), for a simple
    query; None when a value has no exact literal."""
    literals = []
    for value in args:
        if (literal := sql_literal(value)) is None:
            return None
        literals.append(literal)

    def token(match: re.Match[str]) -> str:
        text = match.group(0)
        if match.group(1) is not None:
            return literals[int(match.group(1)) - 1]
        return " " if text.startswith(("--", "/*")) else text

    return _TOKENS.sub(token, query).strip()


class Deferred:
    """Writes whose outcome nobody reads (audit rows, an UPDATE whose row count is unused), held
    back to travel with the batch's COMMIT, or together in one simple query at the next `flush`,
    instead of a round trip each.

    A service's batch applier writes through the one the consumer gives it (`HandlerContext.later`)
    and calls `flush` before a statement of its own that reads what the held writes changed: held
    writes run in the order they were given, but after every statement sent straight on the
    connection meanwhile. Held only at the top level of the consumer's batch with literals allowed
    (`literals_allowed`): in a savepoint (the one-by-one pass after a failure, replay), in a dry
    run, on a connection that writes literals unsafely, or for a value without an exact literal
    (`render`), a write runs at once with its parameters, after those held before it.

    A held write that fails fails the batch at its COMMIT (or at the flush): the transaction is
    rolled back whole and the consumer applies the batch's messages one by one, where nothing is
    held, so the failure is charged to the message that wrote it.
    """

    __slots__ = ("_conn", "_held", "_templates", "holds")

    def __init__(self, conn: Conn, *, hold: bool = False) -> None:
        self._conn = conn
        self._held: list[str] = []
        #: The held statements as written, with their `$n` (what a span may show: no values).
        self._templates: list[str] = []
        #: Whether writes are held at all (else each runs at once).
        self.holds = hold and literals_allowed(conn)

    async def execute(self, query: str, *args: object) -> None:
        """Run `query` with `args`, now or with the batch's last round trip."""
        if self.holds and (sql := render(query, args)) is not None:
            self._held.append(sql)
            self._templates.append(query)
            return
        await self.flush()
        await self._conn.execute(query, *_values(args))

    async def executemany(self, query: str, rows: Sequence[Sequence[object]]) -> None:
        """`execute` for each row of arguments (held as one statement per row)."""
        if not rows:
            return
        if self.holds:
            rendered = [render(query, row) for row in rows]
            if all(sql is not None for sql in rendered):
                self._held.extend(sql for sql in rendered if sql is not None)
                self._templates.append(query)
                return
        await self.flush()
        await self._conn.executemany(query, [_values(row) for row in rows])

    @property
    def pending(self) -> str | None:
        """The held writes as one simple query (None when there are none); `clear` once sent."""
        return ";\n".join(self._held) if self._held else None

    def clear(self) -> None:
        self._held.clear()
        self._templates.clear()

    async def flush(self) -> None:
        """Send the held writes now, in one round trip: before a statement that reads them.

        Under a span of its own whose `db.statement` is the statements as written, with their
        `$n`: what was sent carries the values as literals (e-mails, names, addresses), which
        asyncpg's instrumentation would put in the span, where a parameter's value never appears
        (tests/security/test_no_leaks.py)."""
        if (sql := self.pending) is not None:
            attributes: dict[str, str | int] = {
                "db.system": "postgresql",
                "db.operation": "held writes",
                "db.statement": ";\n".join(dict.fromkeys(t.strip() for t in self._templates)),
                "syncmesh.statements": len(self._held),
            }
            self.clear()
            span = _tracer.start_as_current_span("held writes", kind=trace.SpanKind.CLIENT, attributes=attributes)
            with span, Untraced():
                await self._conn.execute(sql)


def _values(args: Sequence[object]) -> tuple[object, ...]:
    """Arguments as asyncpg takes them (`Jsonb` unwrapped)."""
    return tuple(a.value if isinstance(a, Jsonb) else a for a in args)


#: Where a write whose outcome is not read may go: straight to the connection or held
#: (`Deferred`).
Writes = Conn | Deferred


async def create_pool(
    dsn: str, schema: str, *, min_size: int = 1, max_size: int = 10, connect_timeout: float = 5.0
) -> asyncpg.Pool:
    """A pool whose connections see only `schema` (and pg_catalog) by default."""
    if not _SCHEMA.match(schema):
        raise ValueError(f"bad schema name {schema!r}")
    conn = await asyncpg.connect(dsn, timeout=connect_timeout)
    try:
        # Checked first: a service's own role may not create schemas, and needs not when its
        # schema is there (made by the migration role).
        if not await _schema_exists(conn, schema):
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    except asyncpg.UniqueViolationError:
        pass  # a concurrent replica created it between the check and the create
    except asyncpg.InsufficientPrivilegeError:
        pass  # a service's own role: `pending_migrations` says to run migrate
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
    wanted = _wanted(sources)
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


def _wanted(sources: Iterable[tuple[str, Path]]) -> list[Migration]:
    return [m for source, folder in sources for m in load_migrations(source, folder)]


def migration_file(migration: Migration) -> str:
    """How a migration is named to people: `billing/0003_credit_note_voided_at.sql`."""
    return f"{migration.source}/{migration.version:04d}_{migration.name}.sql"


async def _schema_exists(conn: Conn, schema: str) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", schema))


async def pending_migrations(pool: asyncpg.Pool, schema: str, sources: Iterable[tuple[str, Path]]) -> list[Migration]:
    """The migrations this build has that `schema` lacks, read-only (a service's own role may
    run it); SettingsError when an applied one was edited since."""
    wanted = _wanted(sources)
    async with pool.acquire() as conn:
        # A schema this role may not even look into (its grants not made yet) is as good as missing.
        usable = await conn.fetchval(
            """
            SELECT CASE WHEN n.oid IS NULL THEN false ELSE has_schema_privilege(n.oid, 'USAGE') END
            FROM (SELECT 1) one LEFT JOIN pg_namespace n ON n.nspname = $1
            """,
            schema,
        )
        table = await conn.fetchval("SELECT to_regclass($1)::text", f"{schema}.schema_migrations") if usable else None
        if table is None:
            return wanted
        rows = await conn.fetch(f"SELECT source, version, checksum FROM {schema}.schema_migrations")
    done = {(r["source"], r["version"]): r["checksum"] for r in rows}
    for migration in wanted:
        checksum = done.get((migration.source, migration.version))
        if checksum is not None and checksum != migration.checksum:
            raise SettingsError(
                f"migration {migration_file(migration)} was changed after it was applied: "
                "add a new migration instead of editing this one"
            )
    return [m for m in wanted if (m.source, m.version) not in done]


async def may_migrate(pool: asyncpg.Pool, schema: str) -> bool:
    """Whether this connection's role may change `schema`'s shape: it owns the schema (or is a
    member of its owner, a superuser included), or the schema is missing and it may create it.
    True is the single-role set-up of before (and of tests); False is a service's own role."""
    async with pool.acquire() as conn:
        return bool(
            await conn.fetchval(
                """
                SELECT CASE WHEN n.oid IS NULL
                            THEN has_database_privilege(current_database(), 'CREATE')
                            ELSE pg_has_role(current_user, n.nspowner, 'USAGE') END
                FROM (SELECT 1) one LEFT JOIN pg_namespace n ON n.nspname = $1
                """,
                schema,
            )
        )


async def migrate_as(
    dsn: str, schema: str, sources: Iterable[tuple[str, Path]], *, connect_timeout: float = 5.0
) -> list[Migration]:
    """The migration step, under the migration role's URL: create the schema if it is missing,
    apply what is pending, and grant the service's own role (when it exists) what it may do on
    the tables as they now are. Returns the migrations applied now."""
    pool = await create_pool(dsn, schema, min_size=1, max_size=1, connect_timeout=connect_timeout)
    try:
        applied = await migrate(pool, schema, sources)
        async with pool.acquire() as conn:
            await grant_runtime(conn, schema)
        return applied
    finally:
        await pool.close()


#: The role that owns every service's schema and runs the migrations.
MIGRATION_ROLE = "syncmesh_migrator"


def runtime_role(schema: str) -> str:
    """The login role a service runs as: `billing` -> `syncmesh_billing`."""
    if not _SCHEMA.match(schema):
        raise ValueError(f"bad schema name {schema!r}")
    return f"syncmesh_{schema}"


def scram_verifier(password: str, *, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (as psql's \\password sends
    it): the password itself never crosses the wire nor lands in a server log."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", hashlib.sha256).digest()

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode("ascii")

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


async def _login_role(conn: Conn, role: str, password: str) -> None:
    """Create `role` (a login with no other attribute) or set its password."""
    verifier = scram_verifier(password).replace("'", "''")
    exists = await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", role)
    verb = "ALTER" if exists else "CREATE"
    await conn.execute(
        f"{verb} ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS PASSWORD '{verifier}'"
    )


async def provision_roles(
    conn: Conn,
    schema: str,
    *,
    runtime_password: str | None,
    migration_password: str | None = None,
    migration_role: str = MIGRATION_ROLE,
) -> str:
    """Set up the database identities for one service's schema, as a superuser (or a role with
    CREATEROLE that owns the database); safe to run again. Returns the service's role.

    - the migration role (password set when given) may create schemas in this database and owns
      `schema` and everything in it (objects another role made are handed over);
    - the service's role (`runtime_role`, password set when given) gets what `grant_runtime` grants;
    - PUBLIC loses every right on `schema` and CREATE on `public`.
    A role whose password is None must exist already (Kubernetes: CloudNativePG's `managed.roles`).
    """
    role = runtime_role(schema)
    if migration_password is not None:
        await _login_role(conn, migration_role, migration_password)
    if runtime_password is not None:
        await _login_role(conn, role, runtime_password)
    database = await conn.fetchval("SELECT current_database()")
    await conn.execute(f'GRANT CONNECT, CREATE ON DATABASE "{database}" TO {migration_role}')
    await conn.execute(f'GRANT CONNECT ON DATABASE "{database}" TO {role}')
    await conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    if await _schema_exists(conn, schema):
        await conn.execute(f"ALTER SCHEMA {schema} OWNER TO {migration_role}")
    else:
        await conn.execute(f"CREATE SCHEMA {schema} AUTHORIZATION {migration_role}")
    # Tables, views and sequences a former single role made: the migration role must own them to
    # change them later. Sequences a column owns follow their table.
    others = await conn.fetch(
        """
        SELECT c.relname, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm', 'S')
          AND c.relowner <> (SELECT oid FROM pg_roles WHERE rolname = $2)
          AND NOT (c.relkind = 'S' AND EXISTS (
              SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype IN ('a', 'i')))
        """,
        schema,
        migration_role,
    )
    for row in others:
        kind = {"v": "VIEW", "m": "MATERIALIZED VIEW", "S": "SEQUENCE"}.get(row["relkind"], "TABLE")
        await conn.execute(f'ALTER {kind} {schema}."{row["relname"]}" OWNER TO {migration_role}')
    functions = await conn.fetch(
        """
        SELECT p.oid::regprocedure::text AS signature FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = $1 AND p.proowner <> (SELECT oid FROM pg_roles WHERE rolname = $2)
        """,
        schema,
        migration_role,
    )
    for row in functions:
        await conn.execute(f"ALTER FUNCTION {row['signature']} OWNER TO {migration_role}")
    await conn.execute(f"REVOKE ALL ON SCHEMA {schema} FROM PUBLIC")
    await grant_runtime(conn, schema, owner=migration_role)
    return role


async def grant_runtime(conn: Conn, schema: str, *, owner: str | None = None) -> bool:
    """Grant the service's role (when it exists) USAGE on `schema` and SELECT, INSERT, UPDATE,
    DELETE on its tables (its sequences too), now and for tables `owner` (default: this
    connection's role) creates later; `schema_migrations` is read-only to it and `audit_log`
    append-only (INSERT and SELECT). No CREATE, no
    TRUNCATE, no REFERENCES or TRIGGER: the shape of the schema is the migration role's.
    Returns whether the role exists."""
    role = runtime_role(schema)
    if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", role):
        return False
    owner = owner or str(await conn.fetchval("SELECT current_user"))
    dml = "SELECT, INSERT, UPDATE, DELETE"
    later = f"ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA {schema}"
    for statement in (
        f"GRANT USAGE ON SCHEMA {schema} TO {role}",
        f"GRANT {dml} ON ALL TABLES IN SCHEMA {schema} TO {role}",
        f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA {schema} TO {role}",
        f"{later} GRANT {dml} ON TABLES TO {role}",
        f"{later} GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO {role}",
    ):
        await conn.execute(statement)
    if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{schema}.schema_migrations"):
        await conn.execute(f"REVOKE INSERT, UPDATE, DELETE ON {schema}.schema_migrations FROM {role}")
    # The audit trail is append-only to the service: a compromised process can add to it but
    # cannot rewrite or erase who did what (SECURITY.md).
    if await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{schema}.audit_log"):
        await conn.execute(f"REVOKE UPDATE, DELETE ON {schema}.audit_log FROM {role}")
    return True


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

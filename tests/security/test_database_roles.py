"""Least privilege in PostgreSQL (issue 17, SECURITY.md "Database identities"), on a real server.

The embedded PostgreSQL refuses a connection without a password; each service's role may read
and write its own schema's rows and nothing else (no other schema, no DDL); the migration role
creates and upgrades a schema through the `migrate` command, which fails with one line naming a
broken file; and a service started under its own role, after migrate, consumes an event end to end.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import quote, urlsplit

import asyncpg
import pytest

from services.billing.app import DEFINITION as BILLING
from services.common import db
from services.common.bus import Bus
from services.common.embedded import PostgresServer
from services.common.errors import SettingsError
from services.common.service import ServiceRuntime, migrate
from services.common.settings import Settings, load_settings
from services.customer.app import DEFINITION as CUSTOMER
from tests.conftest import eventually
from tests.customer.support import current_customer, publish
from tests.support.stripe_events import event

ROOT = Path(__file__).resolve().parents[2]
#: Billing's newest migration file, as `migrate` names it (whatever number later work adds).
LATEST_BILLING = f"billing/{sorted(BILLING.migrations.glob('*.sql'))[-1].name}"


@dataclass(frozen=True)
class Roles:
    """A fresh database with the billing and customer identities provisioned in it."""

    database: str
    admin_url: str
    migration_url: str
    migration_password_file: Path
    service_urls: dict[str, str]

    def url_for(self, role: str, password: str) -> str:
        parts = urlsplit(self.admin_url)
        return f"postgresql://{role}:{quote(password, safe='')}@{parts.hostname}:{parts.port}/{self.database}"


@pytest.fixture
async def roles(pg_server: PostgresServer, database_url: str, tmp_path: Path) -> AsyncIterator[Roles]:
    """Roles are per server, grants per database: each test provisions its own passwords."""
    database = urlsplit(database_url).path.lstrip("/")
    passwords = {name: uuid.uuid4().hex for name in ("migrator", "billing", "customer")}
    conn = await asyncpg.connect(database_url)
    try:
        for definition in (BILLING, CUSTOMER):
            await db.provision_roles(
                conn,
                definition.schema,
                runtime_password=passwords[definition.name],
                migration_password=passwords["migrator"],
            )
    finally:
        await conn.close()
    password_file = tmp_path / "migrator.password"
    password_file.write_text(passwords["migrator"] + "\n")
    password_file.chmod(0o600)
    base = Roles(database, database_url, "", password_file, {})
    yield replace(
        base,
        migration_url=base.url_for(db.MIGRATION_ROLE, passwords["migrator"]),
        service_urls={d.name: base.url_for(db.runtime_role(d.schema), passwords[d.name]) for d in (BILLING, CUSTOMER)},
    )


def _migrate_cli(roles: Roles, package: str, *, syncmesh: bool = False) -> subprocess.CompletedProcess[str]:
    """`python -m services.<package> migrate` (or `syncmesh migrate <service>`, as the Kubernetes init
    container runs it), configured as that container is: the URL without a password, the password
    from a file."""
    parts = urlsplit(roles.migration_url)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SYNCMESH_")},
        "SYNCMESH_MIGRATION_DATABASE_URL": (
            f"postgresql://{db.MIGRATION_ROLE}@{parts.hostname}:{parts.port}/{roles.database}"
        ),
        "SYNCMESH_MIGRATION_DATABASE_PASSWORD_FILE": str(roles.migration_password_file),
        "SYNCMESH_LOG_LEVEL": "WARNING",
    }
    return subprocess.run(
        [sys.executable, "-m", "launcher.cli", "migrate", package.replace("_", "-")]
        if syncmesh
        else [sys.executable, "-m", f"services.{package}", "migrate"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


async def test_a_connection_without_a_password_or_with_a_wrong_one_is_refused(pg_server: PostgresServer) -> None:
    for url in (
        f"postgresql://postgres@{pg_server.host}:{pg_server.port}/postgres",
        f"postgresql://postgres:wrong@{pg_server.host}:{pg_server.port}/postgres",
    ):
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(url, timeout=5)
    assert (pg_server.password_file.stat().st_mode & 0o777) == 0o600
    conn = await asyncpg.connect(pg_server.dsn(), timeout=5)  # the superuser's password works
    await conn.close()


async def test_a_data_directory_made_before_passwords_requires_them_after_a_restart(
    own_postgres: PostgresServer,
) -> None:
    """`./.syncmesh/postgres` from an `up` of before trusted everyone: it is converted, not left open."""
    server = own_postgres
    hba = server.pgdata / "pg_hba.conf"
    server.stop()
    hba.write_text(hba.read_text().replace("scram-sha-256", "trust"))
    server.password_file.unlink()
    await asyncio.to_thread(server.start)
    with pytest.raises(asyncpg.InvalidPasswordError):
        await asyncpg.connect(f"postgresql://postgres@{server.host}:{server.port}/postgres", timeout=5)
    conn = await asyncpg.connect(server.dsn(), timeout=5)
    await conn.close()


async def test_the_migrate_command_creates_the_schema_then_finds_nothing_to_do(roles: Roles) -> None:
    first = await asyncio.to_thread(_migrate_cli, roles, "billing")
    assert first.returncode == 0, first.stderr
    assert "billing: applied runtime/0001_runtime.sql" in first.stdout
    assert f"billing: applied {LATEST_BILLING}" in first.stdout
    again = await asyncio.to_thread(_migrate_cli, roles, "billing")
    assert again.returncode == 0, again.stderr
    assert "nothing to apply" in again.stdout
    owner = await _fetchval(roles.admin_url, "SELECT tableowner FROM pg_tables WHERE schemaname = 'billing' LIMIT 1")
    assert owner == db.MIGRATION_ROLE
    # Neither the password nor the URL holding it is ever printed.
    password = roles.migration_password_file.read_text().strip()
    assert password not in first.stdout + first.stderr + again.stdout + again.stderr


async def test_migrate_upgrades_a_schema_and_names_a_broken_file_in_one_line(
    roles: Roles, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    older = tmp_path / "older"
    older.mkdir()
    for path in sorted(BILLING.migrations.glob("*.sql"))[:-1]:
        shutil.copy(path, older / path.name)
    settings = Settings(migration_database_url=roles.migration_url, log_level="WARNING")
    assert await asyncio.to_thread(migrate, replace(BILLING, migrations=older), settings) == 0
    capsys.readouterr()

    assert await asyncio.to_thread(migrate, BILLING, settings) == 0  # the build's newer file only
    assert capsys.readouterr().out.splitlines() == [f"billing: applied {LATEST_BILLING}"]

    broken = tmp_path / "broken"
    shutil.copytree(BILLING.migrations, broken)
    (broken / "0099_broken.sql").write_text("ALTER TABLE no_such_table ADD COLUMN x integer;\n")
    assert await asyncio.to_thread(migrate, replace(BILLING, migrations=broken), settings) == 1
    out = capsys.readouterr()
    assert out.out == ""
    lines = out.err.strip().splitlines()
    assert len(lines) == 1, out.err
    assert lines[0].startswith("billing: migrate failed: migration billing/0099_broken.sql failed")


async def test_a_service_role_has_dml_on_its_own_schema_and_nothing_more(roles: Roles) -> None:
    for package in ("billing", "customer"):
        result = await asyncio.to_thread(_migrate_cli, roles, package, syncmesh=package == "customer")
        assert result.returncode == 0, result.stderr
        assert f"{package}: applied runtime/0001_runtime.sql" in result.stdout

    conn = await asyncpg.connect(roles.service_urls["billing"])
    try:
        # Its own rows: read, insert, update, delete (the runtime's tables live in its schema).
        async with conn.transaction():
            await conn.execute("INSERT INTO billing.processed_events (event_id, event_type) VALUES ('e1', 't')")
            await conn.execute("UPDATE billing.processed_events SET outcome = 'skipped: x' WHERE event_id = 'e1'")
            assert await conn.fetchval("SELECT count(*) FROM billing.processed_events") == 1
            await conn.execute("DELETE FROM billing.processed_events WHERE event_id = 'e1'")
            await conn.execute(
                "INSERT INTO billing.outbox (subject, message_type, msg_id, payload) VALUES ('s', 't', 'm', '')"
            )
            assert await conn.fetchval("SELECT count(*) FROM billing.audit_log") == 0
            await conn.execute(
                "INSERT INTO billing.audit_log (event_id, called_at, method, identity, outcome) "
                "VALUES ('a1', now(), '/m', 'who', 'OK')"
            )
        refused = [
            "SELECT count(*) FROM customer.customers",
            "SELECT count(*) FROM customer.processed_events",
            "INSERT INTO customer.processed_events (event_id, event_type) VALUES ('e2', 't')",
            "CREATE TABLE billing.sneaky (id integer)",
            "CREATE SCHEMA sneaky",
            "CREATE TABLE public.sneaky (id integer)",
            "DROP TABLE billing.outbox",
            "ALTER TABLE billing.outbox ADD COLUMN sneaky integer",
            "TRUNCATE billing.processed_events",
            "CREATE INDEX ON billing.outbox (subject)",
            "INSERT INTO billing.schema_migrations (source, version, name, checksum) VALUES ('x', 1, 'x', 'x')",
            "DELETE FROM billing.schema_migrations",
            "UPDATE billing.audit_log SET identity = 'someone else'",
            "DELETE FROM billing.audit_log",
        ]
        for statement in refused:
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(statement)
    finally:
        await conn.close()


@pytest.mark.parametrize("state", ["missing", "ungranted", "empty", "behind"])
async def test_a_service_under_its_own_role_refuses_a_schema_behind_its_build(
    roles: Roles, settings: Settings, tmp_path: Path, state: str
) -> None:
    """Whatever the schema lacks (all of it, the grants, its migrations, the newest one), the service
    says in one line to run migrate, instead of retrying forever or failing on its first query."""
    if state == "missing":  # roles made (CloudNativePG's managed.roles), migrate never run
        await _execute(roles.admin_url, "DROP SCHEMA billing CASCADE")
    elif state == "ungranted":
        await _execute(roles.admin_url, f"REVOKE USAGE ON SCHEMA billing FROM {db.runtime_role('billing')}")
    elif state == "behind":
        older = tmp_path / "older"
        older.mkdir()
        for path in sorted(BILLING.migrations.glob("*.sql"))[:-1]:
            shutil.copy(path, older / path.name)
        await db.migrate_as(roles.migration_url, "billing", replace(BILLING, migrations=older).migration_sources)
    own = settings.with_overrides(database_url=roles.service_urls["billing"])
    runtime = ServiceRuntime(BILLING, own, port=0)
    await runtime.start()
    try:
        with pytest.raises(SettingsError, match=r"run `python -m services.billing migrate`") as refused:
            await runtime.wait_ready(20)
    finally:
        await runtime.stop()
    first = "runtime/0001_runtime.sql" if state != "behind" else LATEST_BILLING
    assert f"first {first}" in str(refused.value)


async def test_a_service_under_its_own_role_consumes_an_event_after_migrate(roles: Roles, settings: Settings) -> None:
    result = await asyncio.to_thread(_migrate_cli, roles, "customer")
    assert result.returncode == 0, result.stderr
    own = settings.with_overrides(database_url=roles.service_urls["customer"])
    runtime = ServiceRuntime(CUSTOMER, own, port=0)
    await runtime.start()
    bus = Bus(own, name="test-publisher")
    await bus.start()
    try:
        await runtime.wait_ready(20)
        customer = current_customer()
        await publish(bus, event("customer.created", customer))

        async def recorded() -> bool:
            found = await _fetchval(
                roles.admin_url,
                f"SELECT count(*) FROM customer.customers WHERE stripe_customer_id = '{customer['id']}'",
            )
            return bool(found)

        await eventually(recorded, timeout=15)
        user = await _fetchval(
            roles.admin_url,
            "SELECT string_agg(DISTINCT usename, ',') FROM pg_stat_activity "
            "WHERE application_name = 'syncmesh-customer'",
        )
        assert user == db.runtime_role("customer")
    finally:
        await bus.close()
        await runtime.stop()


def test_database_password_file_is_put_into_the_url_and_refused_twice(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("p@ss/word\n")
    settings = load_settings(
        {
            "SYNCMESH_DATABASE_URL": "postgresql://syncmesh_billing@a:5432,b:5432/syncmesh?target_session_attrs=read-write",
            "SYNCMESH_DATABASE_PASSWORD_FILE": str(secret),
        },
        local_mesh=False,
    )
    assert settings.database_url == (
        "postgresql://syncmesh_billing:p%40ss%2Fword@a:5432,b:5432/syncmesh?target_session_attrs=read-write"
    )
    with pytest.raises(SettingsError) as refused:
        load_settings(
            {"SYNCMESH_DATABASE_URL": "postgresql://u:old@h/db", "SYNCMESH_DATABASE_PASSWORD_FILE": str(secret)},
            local_mesh=False,
        )
    assert "p@ss" not in str(refused.value) and "old" not in str(refused.value)


async def _execute(url: str, statement: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(statement)
    finally:
        await conn.close()


async def _fetchval(url: str, query: str) -> object:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(query)
    finally:
        await conn.close()


@pytest.fixture(autouse=True)
def _no_stray_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in ("SYNCMESH_MIGRATION_DATABASE_URL", "SYNCMESH_DATABASE_PASSWORD"):
        monkeypatch.delenv(name, raising=False)
    yield

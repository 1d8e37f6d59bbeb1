"""Handler + store on a real PostgreSQL: each rule of the issue, one test that breaks with it."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import pytest
from syncmesh.customer.v1 import events_pb2

from services.common.errors import PermanentError
from services.common.settings import Settings
from services.customer import store
from tests.customer.support import current_customer, customer_event, legacy_customer, new_customer_id, run_handler

T0 = 1_700_000_000


async def record(conn: asyncpg.Connection, stripe_id: str) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT * FROM customers WHERE stripe_customer_id = $1", stripe_id)
    assert row is not None
    return row


async def outbox(conn: asyncpg.Connection) -> list[tuple[str, bytes]]:
    return [(r["subject"], r["payload"]) for r in await conn.fetch("SELECT subject, payload FROM outbox ORDER BY id")]


async def test_created_assigns_erp_ids_from_the_sequence(conn: asyncpg.Connection, settings: Settings) -> None:
    first, second = current_customer(), legacy_customer()
    await run_handler(conn, settings, customer_event("customer.created", first, created=T0))
    await run_handler(conn, settings, customer_event("customer.created", second, created=T0))
    assert (await record(conn, first["id"]))["erp_customer_id"] == "CUST-000001"
    assert (await record(conn, second["id"]))["erp_customer_id"] == "CUST-000002"
    assert (await record(conn, second["id"]))["balance_minor"] == 1200


async def test_assigned_ids_skip_numbers_already_taken(conn: asyncpg.Connection, settings: Settings) -> None:
    await conn.execute("INSERT INTO customers (erp_customer_id, origin) VALUES ('CUST-000001', 'import')")
    obj = current_customer()
    await run_handler(conn, settings, customer_event("customer.created", obj, created=T0))
    assert (await record(conn, obj["id"]))["erp_customer_id"] == "CUST-000002"


async def test_older_event_never_overwrites_newer_state(conn: asyncpg.Connection, settings: Settings) -> None:
    obj = current_customer()
    newer = customer_event("customer.updated", {**obj, "name": "Newer"}, created=T0 + 10)
    older = customer_event("customer.updated", {**obj, "name": "Older"}, created=T0 + 5)
    await run_handler(conn, settings, newer)
    ctx = await run_handler(conn, settings, older)
    row = await record(conn, obj["id"])
    assert row["name"] == "Newer" and row["last_event_id"] == newer["id"]
    assert ctx.emitted == []  # a stale event publishes nothing
    outcomes = {r["stripe_event_id"]: r["outcome"] for r in await conn.fetch("SELECT * FROM customer_history")}
    assert outcomes == {newer["id"]: "applied", older["id"]: "stale"}


async def test_same_second_updated_beats_created(conn: asyncpg.Connection, settings: Settings) -> None:
    obj = current_customer()
    await run_handler(conn, settings, customer_event("customer.updated", {**obj, "name": "Renamed"}, created=T0))
    await run_handler(conn, settings, customer_event("customer.created", {**obj, "name": "Original"}, created=T0))
    assert (await record(conn, obj["id"]))["name"] == "Renamed"


async def test_deleted_always_wins_and_record_stays(conn: asyncpg.Connection, settings: Settings) -> None:
    obj = current_customer()
    await run_handler(conn, settings, customer_event("customer.deleted", obj, created=T0 + 3))
    # Same second: an update does not resurrect it; later seconds neither.
    await run_handler(conn, settings, customer_event("customer.updated", {**obj, "name": "Late"}, created=T0 + 3))
    await run_handler(conn, settings, customer_event("customer.updated", {**obj, "name": "Later"}, created=T0 + 9))
    row = await record(conn, obj["id"])
    assert row["active"] is False
    assert row["deleted_at"] == datetime.fromtimestamp(T0 + 3, tz=UTC)
    with pytest.raises(asyncpg.RaiseError, match="never erased"):
        await conn.execute("DELETE FROM customers WHERE stripe_customer_id = $1", obj["id"])
    assert await conn.fetchval("SELECT count(*) FROM customers") == 1


async def test_tie_without_api_key_later_consumed_wins(conn: asyncpg.Connection, settings: Settings) -> None:
    obj = current_customer()
    await run_handler(conn, settings, customer_event("customer.updated", {**obj, "name": "First"}, created=T0))
    second = customer_event("customer.updated", {**obj, "name": "Second"}, created=T0)
    await run_handler(conn, settings, second)
    assert (await record(conn, obj["id"]))["name"] == "Second"
    outcome = await conn.fetchval("SELECT outcome FROM customer_history WHERE stripe_event_id = $1", second["id"])
    assert outcome == "tie_later_wins"


async def test_replayed_event_changes_nothing_and_emits_nothing(conn: asyncpg.Connection, settings: Settings) -> None:
    obj = current_customer()
    evt = customer_event("customer.created", obj, created=T0)
    first = await run_handler(conn, settings, evt)
    before = await record(conn, obj["id"])
    again = await run_handler(conn, settings, evt)
    assert len(first.emitted) == 2 and again.emitted == []
    assert await record(conn, obj["id"]) == before
    assert await conn.fetchval("SELECT count(*) FROM customer_history") == 1


async def test_email_is_kept_as_written_and_compared_lower_cased(conn: asyncpg.Connection, settings: Settings) -> None:
    obj = current_customer(email="Mixed.Case@Example.COM")
    await run_handler(conn, settings, customer_event("customer.created", obj, created=T0))
    row = await record(conn, obj["id"])
    assert (row["email"], row["email_lower"]) == ("Mixed.Case@Example.COM", "mixed.case@example.com")
    found = await store.find_by_email(conn, "mixed.case@EXAMPLE.com")
    assert [f.stripe_customer_id for f in found] == [obj["id"]]
    await conn.execute("SET enable_seqscan = off")
    plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN SELECT * FROM customers WHERE email_lower = 'x'"))
    await conn.execute("RESET enable_seqscan")
    assert "customers_email_lower" in plan


async def test_email_change_in_stripe_keeps_the_link(conn: asyncpg.Connection, settings: Settings) -> None:
    obj = current_customer(email="old@example.com")
    await run_handler(conn, settings, customer_event("customer.created", obj, created=T0))
    erp_id = (await record(conn, obj["id"]))["erp_customer_id"]
    await run_handler(
        conn, settings, customer_event("customer.updated", {**obj, "email": "new@example.com"}, created=T0 + 1)
    )
    row = await record(conn, obj["id"])
    assert (row["erp_customer_id"], row["email_lower"]) == (erp_id, "new@example.com")


async def test_domain_events_for_new_and_deleted_customers(conn: asyncpg.Connection, settings: Settings) -> None:
    obj = current_customer()
    await run_handler(conn, settings, customer_event("customer.created", obj, created=T0))
    await run_handler(conn, settings, customer_event("customer.updated", {**obj, "name": "B"}, created=T0 + 1))
    await run_handler(conn, settings, customer_event("customer.deleted", {**obj, "name": "B"}, created=T0 + 2))
    subjects = [s for s, _ in await outbox(conn)]
    assert subjects == [
        "syncmesh.customer.customer_upserted",
        "syncmesh.customer.customer_linked",
        "syncmesh.customer.customer_upserted",
        "syncmesh.customer.customer_upserted",
        "syncmesh.customer.customer_deactivated",
    ]
    payloads = await outbox(conn)
    created = events_pb2.CustomerUpserted.FromString(payloads[0][1])
    assert created.created and created.customer.erp_customer_id == "CUST-000001"
    assert created.customer.balance.amount_minor == -2500
    linked = events_pb2.CustomerLinked.FromString(payloads[1][1])
    assert linked.source == events_pb2.LINK_SOURCE_STRIPE_EVENT and linked.stripe_customer_id == obj["id"]
    gone = events_pb2.CustomerDeactivated.FromString(payloads[4][1])
    assert gone.deactivated_at.seconds == T0 + 2


async def test_customers_created_before_sync_start_are_skipped_unless_known(
    conn: asyncpg.Connection, settings: Settings
) -> None:
    late = settings.with_overrides(sync_start=datetime.fromtimestamp(T0 + 1000, tz=UTC))
    unknown = current_customer(created=T0)
    ctx = await run_handler(conn, late, customer_event("customer.updated", unknown, created=T0 + 2000))
    assert ctx.skipped_reason == "before SYNCMESH_SYNC_START"
    assert await conn.fetchval("SELECT count(*) FROM customers") == 0

    known = current_customer(created=T0)
    await conn.execute(
        "INSERT INTO customers (erp_customer_id, stripe_customer_id, origin) VALUES ('NS-1', $1, 'import')", known["id"]
    )
    ctx = await run_handler(conn, late, customer_event("customer.updated", known, created=T0 + 2000))
    assert ctx.skipped_reason is None
    assert (await record(conn, known["id"]))["name"] == "Ada Lovelace"


async def test_not_a_customer_is_a_permanent_error(conn: asyncpg.Connection, settings: Settings) -> None:
    with pytest.raises(PermanentError, match="customer id"):
        await run_handler(
            conn, settings, customer_event("customer.updated", {"object": "customer", "id": "x"}, created=T0)
        )


async def test_imported_mapping_is_filled_in_by_events(conn: asyncpg.Connection, settings: Settings) -> None:
    stripe_id = new_customer_id()
    await conn.execute(
        "INSERT INTO customers (erp_customer_id, stripe_customer_id, origin) VALUES ('NS-7', $1, 'import')", stripe_id
    )
    await run_handler(conn, settings, customer_event("customer.updated", current_customer(stripe_id), created=T0))
    row = await record(conn, stripe_id)
    assert row["erp_customer_id"] == "NS-7" and row["name"] == "Ada Lovelace"


async def test_store_guard_refuses_older_state_on_its_own(conn: asyncpg.Connection, settings: Settings) -> None:
    """Defence in depth: even a caller that skipped `decide` cannot write older state."""
    from services.customer.mapping import Version, applied_record, customer_from_stripe

    obj = current_customer()
    await run_handler(conn, settings, customer_event("customer.updated", obj, created=T0 + 10))
    held = (await store.lock_by_stripe_ids(conn, [obj["id"]]))[obj["id"]]
    at = datetime.fromtimestamp(T0, tz=UTC)
    older = applied_record(held, customer_from_stripe({**obj, "name": "Older"}), Version(T0, 1), "evt_old", at, at)
    assert await store.update_records(conn, [older]) == 0
    same = applied_record(held, customer_from_stripe({**obj, "name": "Tie"}), Version(T0 + 10, 1), "evt_s", at, at)
    assert await store.update_records(conn, [same]) == 1  # an equal version is a tie the caller settled
    assert (await record(conn, obj["id"]))["name"] == "Tie"


async def test_bare_deletion_keeps_what_is_known(conn: asyncpg.Connection, settings: Settings) -> None:
    """Stripe's deleted customer is `{id, object, deleted: true}`; it must not blank the record."""
    obj = current_customer()
    await run_handler(conn, settings, customer_event("customer.created", obj, created=T0))
    stub = {"id": obj["id"], "object": "customer", "deleted": True}
    await run_handler(conn, settings, customer_event("customer.deleted", stub, created=T0 + 5))
    row = await record(conn, obj["id"])
    assert row["active"] is False
    assert (row["email"], row["name"]) == (obj["email"], obj["name"])

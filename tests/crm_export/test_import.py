"""The initial import against localstripe (objects made with the official SDK), crash and
resume, re-runs, the 429 path, and the import view against the live-event view."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import grpc
import pytest
import stripe
from aiohttp import web
from syncmesh.crm_export.v1 import crm_export_service_pb2 as pb
from syncmesh.crm_export.v1.crm_export_service_pb2_grpc import add_CrmExportServiceServicer_to_server

from gateway.app import Gateway
from services.common import db
from services.common.embedded import PostgresServer
from services.common.errors import SettingsError
from services.common.service import ServiceRuntime
from services.common.settings import Settings
from services.crm_export import crm_settings, store
from services.crm_export.api import CrmExportServicer
from services.crm_export.app import DEFINITION
from services.crm_export.health import SUBSCRIPTION_CANCELED
from services.crm_export.importer import Importer, ImportOptions, TokenBucket
from tests.conftest import eventually, stripe_client_for
from tests.crm_export.support import stub
from tests.support.signing import TEST_SECRET

BOTH = (crm_settings.INVOICE, crm_settings.SUBSCRIPTION)
MIGRATIONS = [("runtime", db.RUNTIME_MIGRATIONS), ("crm-export", DEFINITION.migrations)]


async def make_pool(url: str) -> asyncpg.Pool:
    pool = await db.create_pool(url, DEFINITION.schema)
    await db.migrate(pool, DEFINITION.schema, MIGRATIONS)
    return pool


async def set_sources(pool: asyncpg.Pool, sources: tuple[str, ...], **changes: Any) -> None:
    async with pool.acquire() as conn, conn.transaction():
        current = (await store.current_settings(conn)).settings
        await store.save_settings(
            conn, dataclasses.replace(current, contract_sources=sources, **changes), changed_by="test"
        )


@pytest.fixture
async def fresh_database(pg_server: PostgresServer) -> str:
    name = f"t_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(pg_server.dsn())
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return pg_server.dsn(name)


async def seed(client: stripe.StripeClient, *, customers: int, subscribed: int) -> dict[str, int]:
    """Customers, products with plans, subscriptions (each invoices and charges at once) and a
    one-off paid invoice, as a small SaaS account looks."""
    plans = []
    for name, amount in (("Starter", 1900), ("Pro", 4900), ("Team", 9900)):
        product = await client.v1.products.create_async({"name": name, "description": f"{name} plan"})
        plan = await client.v1.plans.create_async(
            {"product": product.id, "amount": amount, "currency": "usd", "interval": "month"}
        )
        plans.append(plan.id)
    ids = []
    for i in range(customers):
        params: dict[str, Any] = {
            "name": f"Customer {i:03d}",
            "email": f"c{i}@example.com",
            "metadata": {"segment": "smb" if i % 2 else "ent"},
        }
        if i < subscribed:
            card = await client.v1.payment_methods.create_async(
                {
                    "type": "card",
                    "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"},
                }
            )
            params.update(payment_method=card.id, invoice_settings={"default_payment_method": card.id})
        customer = await client.v1.customers.create_async(params)  # type: ignore[arg-type]
        ids.append(customer.id)
        if i < subscribed:
            await client.v1.subscriptions.create_async(
                {"customer": customer.id, "items": [{"plan": plans[i % 3], "quantity": 1 + i % 4}]}
            )
    # one cancelled subscription and a one-off paid invoice
    subs = await client.v1.subscriptions.list_async({"customer": ids[0]})
    await client.v1.subscriptions.cancel_async(subs.data[0].id)
    await client.v1.invoice_items.create_async(
        {"customer": ids[1], "amount": 700, "currency": "usd", "description": "Onboarding"}
    )
    one_off = await client.v1.invoices.create_async({"customer": ids[1]})
    await client.v1.invoices.pay_async(one_off.id)
    return {"customers": customers, "products": 3, "subscriptions": subscribed}


async def read_view(pool: asyncpg.Pool) -> dict[str, Any]:
    async with pool.acquire() as conn:
        return {
            "clients": await store.list_clients(conn, after="", limit=1000),
            "products": await store.list_products(conn, after="", limit=1000),
            "contracts": await store.list_contracts(conn, store.ContractFilter(), after="", limit=1000),
        }


def importer_for(pool: asyncpg.Pool, localstripe: Any, **options: Any) -> Importer:
    return Importer(
        pool, api_key="sk_test_localstripe", api_base=localstripe.url, mode="test", options=ImportOptions(**options)
    )


async def run_to_end(importer: Importer, **kwargs: Any) -> list[Any]:
    return [p async for p in importer.run(**kwargs)]


@pytest.fixture
def import_settings(settings: Settings, localstripe: Any) -> Settings:
    return settings.with_overrides(stripe_api_key="sk_test_localstripe", stripe_api_base=localstripe.url)


@pytest.fixture
async def small_page_runtime(import_settings: Settings) -> AsyncIterator[ServiceRuntime]:
    """The service with 5-object pages, so an import has many checkpoints to crash between."""
    definition = dataclasses.replace(
        DEFINITION,
        register_grpc=lambda server, rt: add_CrmExportServiceServicer_to_server(
            CrmExportServicer(rt, import_options=ImportOptions(page_size=5, requests_per_second=100)), server
        ),
    )
    rt = ServiceRuntime(definition, import_settings, port=0)
    await rt.start()
    await rt.wait_ready(20)
    yield rt
    await rt.stop()


async def test_import_crash_half_way_then_resume_equals_a_clean_import(
    small_page_runtime: ServiceRuntime, localstripe: Any, fresh_database: str
) -> None:
    made = await seed(stripe_client_for(localstripe), customers=23, subscribed=12)
    await set_sources(small_page_runtime.pool, BOTH)
    channel, api = stub(small_page_runtime.port)
    async with channel:
        # Ctrl-C half-way through the customers: the call is cancelled mid-stream.
        call = api.RunImport(pb.RunImportRequest(days_back=30))
        seen = []
        async for progress in call:
            seen.append(progress)
            if progress.phase == pb.IMPORT_PHASE_CUSTOMERS and progress.phase_done >= 10:
                call.cancel()
                break
        await asyncio.sleep(0.3)  # let the server unwind (the batch in flight rolls back)
        async with small_page_runtime.pool.acquire() as conn:
            clients_after_crash = await conn.fetchval("SELECT count(*) FROM clients")
        assert 10 <= clients_after_crash < made["customers"]

        resumed = [p async for p in api.RunImport(pb.RunImportRequest(days_back=30))]
        assert all(p.resumed for p in resumed) and resumed[-1].finished
        assert resumed[0].run_id == seen[0].run_id
        first_customer_batch = next(p for p in resumed if p.phase == pb.IMPORT_PHASE_CUSTOMERS)
        assert first_customer_batch.phase_done > 10  # continued after the checkpoint, not from 0

        after_resume = await read_view(small_page_runtime.pool)
        # Nothing doubled: exactly one contract_upserted per contract, one client_upserted per client.
        async with small_page_runtime.pool.acquire() as conn:
            per_subject: dict[str, int] = dict(
                await conn.fetch("SELECT subject, count(*) FROM outbox GROUP BY subject")
            )
        assert per_subject["syncmesh.crm_export.client_upserted"] == made["customers"]
        assert per_subject["syncmesh.crm_export.contract_upserted"] == len(after_resume["contracts"])

        # Re-running changes nothing already right.
        rerun = [p async for p in api.RunImport(pb.RunImportRequest(days_back=30))]
        assert not rerun[0].resumed and rerun[-1].finished
        assert await read_view(small_page_runtime.pool) == after_resume
        async with small_page_runtime.pool.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM outbox") == sum(per_subject.values())

    clean_pool = await make_pool(fresh_database)
    try:
        await set_sources(clean_pool, BOTH)
        await run_to_end(importer_for(clean_pool, localstripe, requests_per_second=100), days_back=30)
        clean = await read_view(clean_pool)
    finally:
        await clean_pool.close()
    assert after_resume == clean
    assert len(clean["clients"]) == made["customers"] and len(clean["products"]) == made["products"]
    sources = [r.contract.source for r in clean["contracts"]]
    assert sources.count(crm_settings.SUBSCRIPTION) == made["subscriptions"]
    assert sources.count(crm_settings.INVOICE) == made["subscriptions"] + 1  # each subscription's + the one-off
    contracts = {r.contract.contract_id: r for r in clean["contracts"]}
    one_off = next(r for r in clean["contracts"] if any(line.description == "Onboarding" for line in r.contract.lines))
    assert one_off.contract.source == crm_settings.INVOICE and one_off.client_id
    canceled = [c for c in contracts.values() if c.contract.status == "canceled"]
    assert len(canceled) == 1
    [churned] = [c for c in clean["clients"] if SUBSCRIPTION_CANCELED in c.health.signals]
    assert churned.stripe_customer_id == canceled[0].contract.stripe_customer_id


async def test_import_rate_against_localstripe(localstripe: Any, database_url: str) -> None:
    await seed(stripe_client_for(localstripe), customers=60, subscribed=30)
    pool = await make_pool(database_url)
    try:
        await set_sources(pool, BOTH)
        started = time.perf_counter()
        progress = await run_to_end(importer_for(pool, localstripe, requests_per_second=100), days_back=30)
        elapsed = time.perf_counter() - started
    finally:
        await pool.close()
    objects = progress[-1].total_done
    rate = objects / elapsed
    print(
        f"\nimport rate against localstripe: {objects} objects in {elapsed:.2f}s = {rate:.0f} objects/s "
        f"({progress[-1].requests} requests)"
    )
    assert objects == 60 + 3 + 31 + 30  # customers, products, paid invoices, subscriptions
    assert rate > 20


async def test_import_honours_retry_after_on_429_and_sends_the_created_filter(database_url: str) -> None:
    calls: list[tuple[str, dict[str, str], float]] = []

    def listing(data: list[dict[str, Any]], url: str) -> web.Response:
        return web.json_response({"object": "list", "data": data, "has_more": False, "url": url})

    async def customers(request: web.Request) -> web.Response:
        calls.append((request.path, dict(request.query), time.monotonic()))
        if len([c for c in calls if c[0] == "/v1/customers"]) == 1:
            return web.json_response(
                {"error": {"type": "invalid_request_error", "code": "rate_limit", "message": "Too many requests"}},
                status=429,
                headers={"Retry-After": "1"},
            )
        return listing(
            [
                {
                    "id": "cus_R1",
                    "object": "customer",
                    "name": "Rita",
                    "email": "r@example.com",
                    "created": 1_750_000_000,
                    "balance": 0,
                    "metadata": {},
                }
            ],
            "/v1/customers",
        )

    async def empty(request: web.Request) -> web.Response:
        calls.append((request.path, dict(request.query), time.monotonic()))
        return listing([], request.path)

    app = web.Application()
    app.router.add_get("/v1/customers", customers)
    for path in ("/v1/products", "/v1/invoices", "/v1/subscriptions"):
        app.router.add_get(path, empty)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    pool = await make_pool(database_url)
    try:
        importer = Importer(
            pool,
            api_key="sk_test_x",
            api_base=f"http://127.0.0.1:{port}",
            mode="test",
            options=ImportOptions(server_filters=True, requests_per_second=50),
        )
        now = int(time.time())
        progress = await run_to_end(importer, days_back=7)
        async with pool.acquire() as conn:
            names = [r["name"] for r in await conn.fetch("SELECT name FROM clients")]
    finally:
        await pool.close()
        await runner.cleanup()
    customer_calls = [c for c in calls if c[0] == "/v1/customers"]
    assert len(customer_calls) == 2 and customer_calls[1][2] - customer_calls[0][2] >= 0.95
    assert progress[-1].rate_limited == 1 and progress[-1].finished
    assert names == ["Rita"]
    invoice_query = next(q for path, q, _ in calls if path == "/v1/invoices")
    assert abs(int(invoice_query["created[gte]"]) - (now - 7 * 86400)) <= 5
    assert "created[gte]" not in customer_calls[1][1]  # customers are pulled whole


async def test_token_bucket_spaces_requests() -> None:
    bucket = TokenBucket(rate=20, capacity=1)
    started = time.monotonic()
    for _ in range(11):
        await bucket.acquire()
    assert time.monotonic() - started >= 0.45  # 10 waits of 1/20 s after the first token


async def test_stripe_key_checks(database_url: str, settings: Settings) -> None:
    pool = await make_pool(database_url)
    try:
        with pytest.raises(SettingsError, match=r"publishable key.*secret key \(sk_…\) or a restricted key \(rk_…\)"):
            Importer(pool, api_key="pk_test_123", api_base=None, mode="test")
        with pytest.raises(SettingsError, match="test-mode key but SYNCMESH_MODE=live"):
            Importer(pool, api_key="sk_test_123", api_base=None, mode="live")
        Importer(pool, api_key="rk_live_123", api_base=None, mode="live")
    finally:
        await pool.close()
    rt = ServiceRuntime(DEFINITION, settings.with_overrides(stripe_api_key=None), port=0)
    await rt.start()
    try:
        await rt.wait_ready(20)
        channel, api = stub(rt.port)
        async with channel:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                async for _ in api.RunImport(pb.RunImportRequest()):
                    pass
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "SYNCMESH_STRIPE_API_KEY" in err.value.details()
    finally:
        await rt.stop()


async def test_import_view_equals_live_event_view(
    import_settings: Settings, localstripe: Any, fresh_database: str
) -> None:
    """The same Stripe data, once through localstripe's webhooks -> gateway -> NATS -> service,
    once through the import into another database: the same clients, products and contracts."""
    gateway = Gateway(import_settings, port=0, host="127.0.0.1")
    await gateway.start()
    rt = ServiceRuntime(DEFINITION, import_settings, port=0)
    await rt.start()
    try:
        await rt.wait_ready(20)
        await set_sources(rt.pool, BOTH)
        await localstripe.register_webhook("crm", f"http://127.0.0.1:{gateway.port}/webhooks/stripe", TEST_SECRET)
        client = stripe_client_for(localstripe)
        made = await seed(client, customers=6, subscribed=4)
        await eventually(lambda: _settled(rt, made), timeout=30)
        live = await read_view(rt.pool)
    finally:
        await rt.stop()
        await gateway.stop()
    pool = await make_pool(fresh_database)
    try:
        await set_sources(pool, BOTH)
        await run_to_end(importer_for(pool, localstripe), days_back=30)
        imported = await read_view(pool)
    finally:
        await pool.close()
    assert len(imported["clients"]) == 6 and len(imported["contracts"]) == 4 + 5
    assert live == imported


async def _settled(rt: ServiceRuntime, made: dict[str, int]) -> bool:
    view = await read_view(rt.pool)
    if len(view["clients"]) < made["customers"] or len(view["contracts"]) < 2 * made["subscriptions"] + 1:
        return False
    idle = rt.consumer is not None and rt.consumer._idle.is_set()
    return idle


async def test_cli_import_shows_progress_and_reports_the_count(
    small_page_runtime: ServiceRuntime, localstripe: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from launcher.cli import main

    await seed(stripe_client_for(localstripe), customers=4, subscribed=2)
    target = f"127.0.0.1:{small_page_runtime.port}"
    code = await asyncio.to_thread(main, ["import", "crm", "--days-back", "30", "--target", target])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "imported 12 objects" in out  # 4 customers, 3 products, 3 paid invoices, 2 subscriptions
    assert "importing" in err  # the tqdm bar
    code = await asyncio.to_thread(main, ["import", "crm", "--days-back", "0", "--target", "127.0.0.1:1"])
    assert code == 1 and "import failed: UNAVAILABLE" in capsys.readouterr().err

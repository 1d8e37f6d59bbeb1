"""ERP -> Stripe sync against localstripe, and portal sessions against recorded Stripe
responses (localstripe has no billing portal), through the running service's gRPC API."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from aiohttp import web
from syncmesh.customer.v1 import customer_service_pb2 as pb
from syncmesh.customer.v1 import customer_service_pb2_grpc

from services.common.embedded import free_port
from services.common.service import ServiceRuntime
from services.common.settings import Settings
from tests.conftest import stripe_client_for
from tests.customer.conftest import start_runtime, stop_runtime
from tests.customer.support import close_client
from tests.customer.test_import import do_import
from tests.support.stripe_events import FIXTURES

Stub = customer_service_pb2_grpc.CustomerServiceStub


@pytest.fixture
async def stripe_api(localstripe: Any) -> AsyncIterator[Any]:
    client = stripe_client_for(localstripe)
    yield client
    await close_client(client)


@pytest.fixture
async def synced_runtime(settings: Settings, localstripe: Any) -> AsyncIterator[ServiceRuntime]:
    rt = await start_runtime(settings.with_overrides(stripe_api_key="sk_test_x", stripe_api_base=localstripe.url))
    yield rt
    if rt.stripe is not None:
        await close_client(rt.stripe)
    await stop_runtime(rt)


@pytest.fixture
async def sync_stub(synced_runtime: ServiceRuntime) -> AsyncIterator[Stub]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{synced_runtime.port}") as channel:
        yield customer_service_pb2_grpc.CustomerServiceStub(channel)


async def unlinked(stub: Stub, erp_id: str, email: str = "") -> None:
    """An ERP customer without a Stripe link (imported, then its link cleared)."""
    placeholder = f"cus_Placeholder{erp_id.replace('-', '')}"
    assert (await do_import(stub, f"{placeholder},{erp_id},{email}\n")).applied
    await stub.UnlinkCustomer(pb.UnlinkCustomerRequest(erp_customer_id=erp_id))


async def stripe_emails(stripe_api: Any, email: str) -> list[dict[str, Any]]:
    page = await stripe_api.v1.customers.list_async({"email": email})
    return [c.to_dict() for c in page.data]


async def test_sync_creates_a_stripe_customer_and_links_it(sync_stub: Stub, stripe_api: Any) -> None:
    await unlinked(sync_stub, "NS-1", "new.buyer@example.com")
    response = await sync_stub.SyncCustomerToStripe(
        pb.SyncCustomerToStripeRequest(erp_customer_id="NS-1", name="New Buyer")
    )
    assert response.action == pb.SYNC_ACTION_CREATED
    created = await stripe_emails(stripe_api, "new.buyer@example.com")
    assert len(created) == 1 and created[0]["metadata"] == {"erp_customer_id": "NS-1"}
    assert created[0]["name"] == "New Buyer"
    assert response.customer.stripe_customer_id == created[0]["id"]
    history = await sync_stub.GetCustomerHistory(pb.GetCustomerHistoryRequest(erp_customer_id="NS-1"))
    assert history.entries[-1].action == "sync.linked"


async def test_sync_finds_the_stripe_customer_by_email_ignoring_case(sync_stub: Stub, stripe_api: Any) -> None:
    existing = await stripe_api.v1.customers.create_async({"email": "found@example.com"})
    await unlinked(sync_stub, "NS-2", "Found@Example.com")
    response = await sync_stub.SyncCustomerToStripe(pb.SyncCustomerToStripeRequest(erp_customer_id="NS-2"))
    assert response.action == pb.SYNC_ACTION_LINKED_BY_EMAIL
    assert response.customer.stripe_customer_id == existing.id
    assert len(await stripe_emails(stripe_api, "found@example.com")) == 1  # nothing created


async def test_several_stripe_customers_with_the_email_is_an_error_listing_them(
    sync_stub: Stub, stripe_api: Any
) -> None:
    a = await stripe_api.v1.customers.create_async({"email": "twice@example.com"})
    b = await stripe_api.v1.customers.create_async({"email": "twice@example.com"})
    await unlinked(sync_stub, "NS-3", "twice@example.com")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sync_stub.SyncCustomerToStripe(pb.SyncCustomerToStripeRequest(erp_customer_id="NS-3"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert a.id in err.value.details() and b.id in err.value.details()
    got = await sync_stub.GetCustomer(pb.GetCustomerRequest(erp_customer_id="NS-3"))
    assert got.customer.stripe_customer_id == ""


async def test_linked_customer_stays_on_its_stripe_customer_when_its_email_changes(
    sync_stub: Stub, stripe_api: Any
) -> None:
    mine = await stripe_api.v1.customers.create_async({"email": "old@example.com"})
    other = await stripe_api.v1.customers.create_async({"email": "new@example.com"})
    assert (await do_import(sync_stub, f"{mine.id},NS-4,old@example.com\n")).applied
    response = await sync_stub.SyncCustomerToStripe(
        pb.SyncCustomerToStripeRequest(erp_customer_id="NS-4", email="new@example.com")
    )
    assert response.action == pb.SYNC_ACTION_UPDATED_LINKED
    assert response.customer.stripe_customer_id == mine.id != other.id
    assert (await stripe_api.v1.customers.retrieve_async(mine.id)).email == "new@example.com"  # pushed


async def test_no_link_and_no_email_is_invalid_argument(sync_stub: Stub) -> None:
    await unlinked(sync_stub, "NS-5")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await sync_stub.SyncCustomerToStripe(pb.SyncCustomerToStripeRequest(erp_customer_id="NS-5"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith("email:")
    assert "add an email" in err.value.details() and "import" in err.value.details()


async def test_mass_sync_streams_a_result_per_customer_and_goes_on(sync_stub: Stub) -> None:
    await unlinked(sync_stub, "NS-6", "six@example.com")
    await unlinked(sync_stub, "NS-7")  # no email: fails
    await unlinked(sync_stub, "NS-8", "eight@example.com")
    results = [
        r
        async for r in sync_stub.MassSyncCustomersToStripe(
            pb.MassSyncCustomersToStripeRequest(erp_customer_ids=["NS-6", "NS-7", "NS-404", "NS-8"])
        )
    ]
    assert [(r.erp_customer_id, r.ok, r.error_code) for r in results] == [
        ("NS-6", True, ""),
        ("NS-7", False, "INVALID_ARGUMENT"),
        ("NS-404", False, "NOT_FOUND"),
        ("NS-8", True, ""),
    ]
    assert all(r.stripe_customer_id.startswith("cus_") for r in results if r.ok)


async def test_stripe_unreachable_is_unavailable(settings: Settings) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    rt = await start_runtime(settings.with_overrides(stripe_api_key="sk_test_x", stripe_api_base=dead))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{rt.port}") as channel:
            stub = customer_service_pb2_grpc.CustomerServiceStub(channel)
            await unlinked(stub, "NS-9", "nine@example.com")
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.SyncCustomerToStripe(pb.SyncCustomerToStripeRequest(erp_customer_id="NS-9"))
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "Stripe could not" in err.value.details()
    finally:
        if rt.stripe is not None:
            await close_client(rt.stripe)
        await stop_runtime(rt)


# --- customer portal, against recorded Stripe responses ------------------------------------

NOT_CONFIGURED = {
    "error": {
        "message": (
            "No configuration provided and your test mode default configuration has not been created. "
            "Provide a configuration or create your default by saving your customer portal settings in "
            "test mode at https://dashboard.stripe.com/test/settings/billing/portal."
        ),
        "type": "invalid_request_error",
    }
}


@pytest.fixture
async def recorded_portal() -> AsyncIterator[dict[str, Any]]:
    """A loopback stand-in for POST /v1/billing_portal/sessions serving Stripe's recorded shapes."""
    state: dict[str, Any] = {"configured": True, "requests": []}
    session = json.loads((FIXTURES / "openapi-fixtures3" / "billing_portal.session.json").read_text())

    async def create(request: web.Request) -> web.Response:
        form = await request.post()
        state["requests"].append(dict(form))
        if not state["configured"]:
            return web.json_response(NOT_CONFIGURED, status=400)
        body = {
            **session,
            "customer": form["customer"],
            "livemode": False,
            "created": state["created"],
            "return_url": form.get("return_url"),
            "url": "https://billing.stripe.com/p/session/test_recorded",
        }
        return web.json_response(body)

    app = web.Application()
    app.router.add_post("/v1/billing_portal/sessions", create)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    state["url"] = f"http://127.0.0.1:{port}"
    state["created"] = int(time.time())
    yield state
    await runner.cleanup()


@pytest.fixture
async def portal_stub(settings: Settings, recorded_portal: dict[str, Any]) -> AsyncIterator[Stub]:
    rt = await start_runtime(
        settings.with_overrides(stripe_api_key="sk_test_x", stripe_api_base=recorded_portal["url"])
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{rt.port}") as channel:
            stub = customer_service_pb2_grpc.CustomerServiceStub(channel)
            assert (await do_import(stub, "cus_Portal0001,NS-P1,portal@example.com\n")).applied
            yield stub
    finally:
        if rt.stripe is not None:
            await close_client(rt.stripe)
        await stop_runtime(rt)


async def test_portal_session_url_with_expiry(portal_stub: Stub, recorded_portal: dict[str, Any]) -> None:
    response = await portal_stub.CreatePortalSession(
        pb.CreatePortalSessionRequest(erp_customer_id="NS-P1", return_url="https://erp.example.com/customers/NS-P1")
    )
    assert response.url == "https://billing.stripe.com/p/session/test_recorded"
    assert response.session_id == "bps_1Pgc7HB7WZ01zgkWNs8s9Auh"
    assert response.stripe_customer_id == "cus_Portal0001"
    assert response.expires_at.seconds - response.created_at.seconds == 300
    assert response.created_at.seconds == recorded_portal["created"]
    assert recorded_portal["requests"] == [
        {"customer": "cus_Portal0001", "return_url": "https://erp.example.com/customers/NS-P1"}
    ]


async def test_portal_not_configured_says_what_to_do(portal_stub: Stub, recorded_portal: dict[str, Any]) -> None:
    recorded_portal["configured"] = False
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await portal_stub.CreatePortalSession(pb.CreatePortalSessionRequest(stripe_customer_id="cus_Portal0001"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "Stripe Dashboard > Settings > Billing > Customer portal" in err.value.details()
    assert "Traceback" not in err.value.details()


async def test_portal_needs_a_linked_customer_and_a_valid_return_url(portal_stub: Stub) -> None:
    await portal_stub.UnlinkCustomer(pb.UnlinkCustomerRequest(erp_customer_id="NS-P1"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await portal_stub.CreatePortalSession(pb.CreatePortalSessionRequest(erp_customer_id="NS-P1"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "not linked" in err.value.details()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await portal_stub.CreatePortalSession(
            pb.CreatePortalSessionRequest(erp_customer_id="NS-P1", return_url="javascript:alert(1)")
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and err.value.details().startswith("return_url")

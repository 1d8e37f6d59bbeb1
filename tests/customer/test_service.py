"""The running service: envelopes published to real NATS (or webhooks posted to the real
gateway), read back over gRPC; both payload shapes."""

from __future__ import annotations

import time

import grpc
import pytest
from syncmesh.customer.v1 import customer_service_pb2 as pb
from syncmesh.customer.v1 import customer_service_pb2_grpc, events_pb2

from gateway.app import Gateway
from services.common.bus import EVENTS_STREAM
from services.common.service import ServiceRuntime
from services.common.settings import Settings
from tests.conftest import eventually
from tests.customer.support import current_customer, customer_event, legacy_customer, publish
from tests.gateway.test_gateway import post
from tests.support.signing import signed_request

Stub = customer_service_pb2_grpc.CustomerServiceStub


async def find(stub: Stub, **query: str) -> pb.FindCustomerResponse | None:
    try:
        return await stub.FindCustomer(pb.FindCustomerRequest(**query))
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return None
        raise


async def test_webhook_through_gateway_is_findable_within_a_second(
    runtime: ServiceRuntime, stub: Stub, settings: Settings
) -> None:
    gateway = Gateway(settings, port=0, host="127.0.0.1")
    await gateway.start()
    try:
        await gateway.bus.wait_ready(10)
        obj = current_customer()
        started = time.monotonic()
        status, _ = await post(
            gateway, *signed_request(customer_event("customer.created", obj, created=int(time.time())))
        )
        assert status == 200
        found = await eventually(lambda: find(stub, stripe_customer_id=obj["id"]), timeout=5, interval=0.02)
        elapsed = time.monotonic() - started
    finally:
        await gateway.stop()
    assert elapsed < 1.0, f"took {elapsed:.2f}s"
    customer = found.customer
    assert customer.erp_customer_id.startswith("CUST-") and len(customer.erp_customer_id) == 11
    assert customer.email == "Ada.Lovelace@Example.com"
    assert customer.balance.amount_minor == -2500 and customer.balance.currency == "gbp"
    assert customer.billing_address.postal_code == "SW1Y 4JH"
    assert customer.active and customer.metadata == {"netsuite_subsidiary": "UK"}


async def test_current_and_legacy_shapes_through_nats(runtime: ServiceRuntime, stub: Stub) -> None:
    current = current_customer()
    legacy = legacy_customer()
    await publish(runtime.bus, customer_event("customer.created", current, created=1_700_000_100))
    await publish(runtime.bus, customer_event("customer.created", legacy, created=1_500_000_100))
    got_legacy = await eventually(lambda: find(stub, stripe_customer_id=legacy["id"]))
    got_current = await eventually(lambda: find(stub, stripe_customer_id=current["id"]))
    assert got_legacy.customer.balance.amount_minor == 1200
    assert got_legacy.customer.balance.currency == "usd"
    assert got_legacy.customer.delinquent is True
    assert got_legacy.customer.metadata == {"legacy_id": "42"}
    assert got_current.customer.balance.amount_minor == -2500
    ids = {got_legacy.customer.erp_customer_id, got_current.customer.erp_customer_id}
    assert ids == {"CUST-000001", "CUST-000002"}


async def test_find_by_email_is_case_insensitive_and_ambiguity_lists_candidates(
    runtime: ServiceRuntime, stub: Stub
) -> None:
    first = current_customer(email="Twin@Example.com")
    await publish(runtime.bus, customer_event("customer.created", first, created=1_700_000_000))
    found = await eventually(lambda: find(stub, email="twin@EXAMPLE.com"))
    assert found.matched_by == pb.MATCHED_BY_EMAIL
    assert found.customer.stripe_customer_id == first["id"]

    second = current_customer(email="twin@example.com")
    await publish(runtime.bus, customer_event("customer.created", second, created=1_700_000_000))
    await eventually(lambda: find(stub, stripe_customer_id=second["id"]))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.FindCustomer(pb.FindCustomerRequest(email="TWIN@example.com"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    first_erp = (await find(stub, stripe_customer_id=first["id"])).customer.erp_customer_id
    second_erp = (await find(stub, stripe_customer_id=second["id"])).customer.erp_customer_id
    assert first_erp in err.value.details() and second_erp in err.value.details()

    # The Stripe id comes first: with it, the ambiguous email does not matter.
    by_id = await stub.FindCustomer(pb.FindCustomerRequest(stripe_customer_id=second["id"], email="twin@example.com"))
    assert by_id.matched_by == pb.MATCHED_BY_STRIPE_CUSTOMER_ID
    assert by_id.customer.stripe_customer_id == second["id"]


async def test_deleted_customer_is_inactive_with_history_and_domain_events(runtime: ServiceRuntime, stub: Stub) -> None:
    obj = current_customer()
    created = customer_event("customer.created", obj, created=1_700_000_000)
    deleted = customer_event("customer.deleted", obj, created=1_700_000_500)
    await publish(runtime.bus, deleted)  # out of order: the deletion first
    await publish(runtime.bus, created)

    async def both_seen() -> pb.GetCustomerHistoryResponse | None:
        try:
            got = await stub.GetCustomerHistory(pb.GetCustomerHistoryRequest(stripe_customer_id=obj["id"]))
        except grpc.aio.AioRpcError:
            return None
        return got if len(got.entries) == 2 else None

    history = await eventually(both_seen)
    assert {e.stripe_event_id for e in history.entries} == {created["id"], deleted["id"]}
    assert {e.outcome for e in history.entries} == {"applied", "stale"}
    customer = (await stub.GetCustomer(pb.GetCustomerRequest(stripe_customer_id=obj["id"]))).customer
    assert not customer.active
    assert customer.deleted_at.seconds == 1_700_000_500
    assert customer.last_stripe_event_id == deleted["id"]

    msg = await eventually(lambda: _last(runtime, "syncmesh.customer.customer_deactivated"))
    deactivated = events_pb2.CustomerDeactivated.FromString(msg.data)
    assert deactivated.erp_customer_id == customer.erp_customer_id
    assert deactivated.meta.stripe_event_id == deleted["id"]


async def _last(runtime: ServiceRuntime, subject: str):
    try:
        return await runtime.bus.js.get_msg(EVENTS_STREAM, subject=subject)
    except Exception:
        return None


async def test_list_customers_pages_and_filters(runtime: ServiceRuntime, stub: Stub) -> None:
    objs = [current_customer(email=f"user{i}@example.com") for i in range(5)]
    for i, obj in enumerate(objs):
        await publish(runtime.bus, customer_event("customer.created", obj, created=1_700_000_000 + i))
    gone = objs[0]
    await publish(runtime.bus, customer_event("customer.deleted", gone, created=1_700_001_000))

    async def all_in() -> bool:
        page = await stub.ListCustomers(pb.ListCustomersRequest(page_size=500, active=pb.ACTIVE_FILTER_INACTIVE))
        return len(page.customers) == 1

    await eventually(all_in)
    seen: list[str] = []
    token = ""
    while True:
        page = await stub.ListCustomers(pb.ListCustomersRequest(page_size=2, page_token=token))
        seen += [c.erp_customer_id for c in page.customers]
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(seen) and len(seen) == 5 and len(set(seen)) == 5
    active = await stub.ListCustomers(pb.ListCustomersRequest(active=pb.ACTIVE_FILTER_ACTIVE))
    assert len(active.customers) == 4 and gone["id"] not in {c.stripe_customer_id for c in active.customers}
    by_email = await stub.ListCustomers(pb.ListCustomersRequest(email="USER3@example.com"))
    assert [c.stripe_customer_id for c in by_email.customers] == [objs[3]["id"]]
    future = pb.ListCustomersRequest()
    future.updated_since.FromSeconds(int(time.time()) + 3600)
    assert list((await stub.ListCustomers(future)).customers) == []

    first = await stub.ListCustomers(pb.ListCustomersRequest(page_size=2))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.ListCustomers(pb.ListCustomersRequest(page_size=2, page_token=first.next_page_token, email="x@y.z"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in err.value.details()


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (pb.GetCustomerRequest(), "erp_customer_id"),
        (pb.GetCustomerRequest(erp_customer_id="CUST-1", stripe_customer_id="cus_1"), "erp_customer_id"),
        (pb.GetCustomerRequest(stripe_customer_id="acct_123"), "stripe_customer_id"),
        (pb.GetCustomerRequest(erp_customer_id="has space"), "erp_customer_id"),
    ],
    ids=["none", "both", "bad-stripe-id", "bad-erp-id"],
)
async def test_get_customer_validates_arguments(stub: Stub, request_: pb.GetCustomerRequest, field: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.GetCustomer(request_)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field)


async def test_unknown_customer_is_not_found(stub: Stub) -> None:
    for request_ in (
        pb.GetCustomerRequest(erp_customer_id="CUST-999999"),
        pb.GetCustomerRequest(stripe_customer_id="cus_nope"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetCustomer(request_)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.FindCustomer(pb.FindCustomerRequest(email="nobody@example.com"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_unlink_keeps_the_record_and_a_stripe_event_then_gets_a_new_record(
    runtime: ServiceRuntime, stub: Stub
) -> None:
    obj = current_customer()
    await publish(runtime.bus, customer_event("customer.created", obj, created=1_700_000_000))
    first = await eventually(lambda: find(stub, stripe_customer_id=obj["id"]))
    erp_id = first.customer.erp_customer_id
    unlinked = await stub.UnlinkCustomer(pb.UnlinkCustomerRequest(erp_customer_id=erp_id, reason="wrong customer"))
    assert unlinked.previous_stripe_customer_id == obj["id"] and unlinked.customer.stripe_customer_id == ""
    assert unlinked.customer.name == "Ada Lovelace"  # the record stays, with what it was
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stub.UnlinkCustomer(pb.UnlinkCustomerRequest(erp_customer_id=erp_id))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    history = await stub.GetCustomerHistory(pb.GetCustomerHistoryRequest(erp_customer_id=erp_id))
    assert [e.action for e in history.entries] == ["customer.created", "unlink"]
    assert history.entries[1].outcome == "applied: wrong customer"

    # Every Stripe customer has an ERP record: the next event for it gets a fresh one.
    await publish(runtime.bus, customer_event("customer.updated", obj, created=1_700_000_001))
    again = await eventually(lambda: find(stub, stripe_customer_id=obj["id"]))
    assert again.customer.erp_customer_id != erp_id

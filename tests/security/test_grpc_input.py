"""Bad gRPC input is INVALID_ARGUMENT naming the field, never INTERNAL or UNKNOWN (issue 17).

Each case the issue lists, through the real services on real NATS and PostgreSQL: a NUL byte
in a string, a CSV cell over the csv module's field limit, bytes that are not a message, a
1 MB id (whose echo used to overflow gRPC's metadata limit), an import refusing a conflicting
row, an http:// portal return URL. The field violation is machine-readable as well
(google.rpc.BadRequest in the status details).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from syncmesh.billing.v1 import billing_service_pb2 as billing_pb
from syncmesh.billing.v1 import billing_service_pb2_grpc as billing_grpc
from syncmesh.customer.v1 import customer_service_pb2 as customer_pb
from syncmesh.customer.v1 import customer_service_pb2_grpc as customer_grpc

from services.common.settings import Settings
from tests.security.grpc_mesh import Mesh, field_violations, raw_method, running_mesh


@pytest.fixture
async def mesh(settings: Settings) -> AsyncIterator[Mesh]:
    async with running_mesh(settings.with_overrides(portal_return_hosts=("example.com",))) as m:
        yield m


async def _refused(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call  # type: ignore[misc]
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
    assert len(error.details() or "") <= 400
    return error


async def test_a_nul_byte_in_any_string_names_the_field(mesh: Mesh) -> None:
    customer = customer_grpc.CustomerServiceStub(mesh.channels["customer"])
    cases = [
        (customer.FindCustomer(customer_pb.FindCustomerRequest(email="a\x00@example.com")), "email"),
        (customer.UnlinkCustomer(customer_pb.UnlinkCustomerRequest(erp_customer_id="CUST-1\x00")), "erp_customer_id"),
        (
            customer.SyncCustomerToStripe(customer_pb.SyncCustomerToStripeRequest(erp_customer_id="C\x00")),
            "erp_customer_id",
        ),
        (
            customer.MassSyncCustomersToStripe(
                customer_pb.MassSyncCustomersToStripeRequest(erp_customer_ids=["CUST-1", "CUST\x002"])
            ).read(),
            "erp_customer_ids[1]",
        ),
    ]
    for call, field in cases:
        error = await _refused(call)
        assert field in (error.details() or "")
        assert (field, "contains a NUL byte (\\x00): remove it") in field_violations(error)


async def test_nul_bytes_and_oversized_cells_in_a_csv_are_import_problems(mesh: Mesh) -> None:
    billing = billing_grpc.BillingServiceStub(mesh.channels["billing"])
    nul = await billing.ImportItemMappings(
        billing_pb.ImportItemMappingsRequest(csv=b"stripe_price_id,erp_item_id\nprice_1,ITEM\x00A\n")
    )
    assert not nul.applied and [p.field for p in nul.problems] == ["erp_item_id"]
    huge = b'stripe_price_id,erp_item_id\nprice_1,"' + b"x" * 200_000 + b'"\n'
    over = await billing.ImportItemMappings(billing_pb.ImportItemMappingsRequest(csv=huge))
    assert not over.applied and "field larger than field limit" in over.problems[0].message

    customer = customer_grpc.CustomerServiceStub(mesh.channels["customer"])

    async def sheet(data: bytes) -> customer_pb.ImportCustomerMappingsResponse:
        async def chunks() -> AsyncIterator[customer_pb.ImportCustomerMappingsRequest]:
            yield customer_pb.ImportCustomerMappingsRequest(csv_chunk=data)

        return await customer.ImportCustomerMappings(chunks())  # type: ignore[no-any-return]

    for data in (b"cus_A1,CUST-1\x00\n", b'cus_A1,"' + b"y" * 200_000 + b'"\n'):
        refused = await sheet(data)
        assert not refused.applied and refused.problem_count == 1, refused


async def test_bytes_that_are_not_a_message_are_invalid_argument(mesh: Mesh) -> None:
    for path in ("/syncmesh.customer.v1.CustomerService/GetCustomer", "/syncmesh.billing.v1.BillingService/GetInvoice"):
        call = raw_method(
            mesh.channels["customer" if "customer" in path else "billing"],
            path,
            client_streaming=False,
            server_streaming=False,
        )
        error = await _refused(call(b"\xff\xff\xff\xff"))  # type: ignore[operator]
        assert field_violations(error)[0][0] == "request"


async def test_a_one_megabyte_id_is_refused_without_echoing_it(mesh: Mesh) -> None:
    customer = customer_grpc.CustomerServiceStub(mesh.channels["customer"])
    billing = billing_grpc.BillingServiceStub(mesh.channels["billing"])
    huge = "A" * 1_000_000
    for call in (
        customer.GetCustomer(customer_pb.GetCustomerRequest(erp_customer_id=huge)),
        billing.GetInvoice(billing_pb.GetInvoiceRequest(invoice_id=huge)),
        billing.ListInvoices(billing_pb.ListInvoicesRequest(from_date="2" * 10_000)),
    ):
        error = await _refused(call)
        assert huge[:1000] not in (error.details() or "")


async def test_an_import_that_refuses_a_conflicting_row_reports_nothing_created(mesh: Mesh) -> None:
    customer = customer_grpc.CustomerServiceStub(mesh.channels["customer"])

    async def sheet(data: bytes) -> customer_pb.ImportCustomerMappingsResponse:
        async def chunks() -> AsyncIterator[customer_pb.ImportCustomerMappingsRequest]:
            yield customer_pb.ImportCustomerMappingsRequest(csv_chunk=data)

        return await customer.ImportCustomerMappings(chunks())  # type: ignore[no-any-return]

    first = await sheet(b"cus_Conflict1,CUST-C1\n")
    assert first.applied and first.created == 1
    second = await sheet(b"cus_Fresh1,CUST-F1\ncus_Conflict1,CUST-C2\n")
    assert not second.applied and second.problem_count >= 1
    assert (second.created, second.linked) == (0, 0)
    missing = customer.GetCustomer(customer_pb.GetCustomerRequest(erp_customer_id="CUST-F1"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await missing
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_portal_return_urls_must_be_https_to_a_configured_host(mesh: Mesh) -> None:
    customer = customer_grpc.CustomerServiceStub(mesh.channels["customer"])
    for url in ("http://example.com/back", "https://evil.example.net/back", "https://[::1/x", "javascript:alert(1)"):
        error = await _refused(
            customer.CreatePortalSession(
                customer_pb.CreatePortalSessionRequest(erp_customer_id="CUST-1", return_url=url)
            )
        )
        assert field_violations(error)[0][0] == "return_url"
    allowed = customer.CreatePortalSession(
        customer_pb.CreatePortalSessionRequest(erp_customer_id="CUST-404", return_url="https://example.com/back")
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await allowed
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND  # past the URL check


async def test_a_timestamp_out_of_range_names_the_field(mesh: Mesh) -> None:
    from google.protobuf.timestamp_pb2 import Timestamp

    customer = customer_grpc.CustomerServiceStub(mesh.channels["customer"])
    for stamp in (Timestamp(seconds=2**62), Timestamp(nanos=-5), Timestamp(seconds=-(2**40))):
        error = await _refused(customer.ListCustomers(customer_pb.ListCustomersRequest(updated_since=stamp)))
        assert field_violations(error)[0][0] == "updated_since"
    listed = await customer.ListCustomers(customer_pb.ListCustomersRequest(updated_since=Timestamp(seconds=0)))
    assert listed is not None

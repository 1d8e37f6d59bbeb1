"""How `syncmesh verify` judges the customer service: Stripe's customers against its records.

    Stripe listing   record read                          compared
    customers        GetCustomer(stripe id)               email (masked in reports), name, active

A customer Stripe deleted must read as inactive here; one the service still holds as active but
Stripe no longer lists is offered to the engine's reverse check (`held`), which retrieves it and
reports the record stale if Stripe deleted it.
"""

from __future__ import annotations

from typing import Any

from syncmesh.customer.v1 import customer_service_pb2 as customer_pb
from syncmesh.customer.v1 import customer_service_pb2_grpc

from services.common.verification import (
    MISMATCH,
    RPC_TIMEOUT,
    STALE,
    Check,
    Difference,
    Held,
    Mesh,
    StripeObject,
    differ,
    mask_email,
    missing_record,
    text,
)

#: The deployable whose gRPC API holds the records.
SERVICE = "customer"


def _stub(mesh: Mesh) -> customer_service_pb2_grpc.CustomerServiceStub:
    return customer_service_pb2_grpc.CustomerServiceStub(mesh.channel(SERVICE))  # type: ignore[no-untyped-call]


async def read_customer(mesh: Mesh, obj: StripeObject) -> customer_pb.Customer | None:
    request = customer_pb.GetCustomerRequest(stripe_customer_id=str(obj["id"]))
    reply = await mesh.call(SERVICE, _stub(mesh).GetCustomer(request, timeout=RPC_TIMEOUT))
    return None if reply is None else reply.customer


def customer_differences(obj: StripeObject, record: customer_pb.Customer | None) -> list[Difference]:
    deleted = bool(obj.get("deleted"))
    if record is None:
        return [] if deleted else [missing_record()]  # deleted and never known: nothing to keep in step
    if deleted:
        return [differ(STALE, "active", False, True)] if record.active else []
    out: list[Difference] = []
    if not record.active:
        out.append(differ(MISMATCH, "active", True, False))
    stripe_email = text(obj.get("email")).strip()
    if stripe_email.lower() != record.email.strip().lower():
        out.append(differ(MISMATCH, "email", mask_email(stripe_email), mask_email(record.email)))
    if text(obj.get("name")) != record.name:
        out.append(differ(MISMATCH, "name", obj.get("name"), record.name))
    return out


async def active_customers(mesh: Mesh) -> list[Held]:
    """Every customer the service holds as active, with Stripe's creation time when it has it."""
    stub = _stub(mesh)
    records: list[Any] = await mesh.every_page(
        SERVICE,
        lambda token: stub.ListCustomers(
            customer_pb.ListCustomersRequest(page_size=500, page_token=token, active=customer_pb.ACTIVE_FILTER_ACTIVE),
            timeout=RPC_TIMEOUT,
        ),
        "customers",
    )
    return [
        Held(r.stripe_customer_id, r.stripe_created_at.seconds if r.HasField("stripe_created_at") else 0)
        for r in records
        if r.stripe_customer_id
    ]


CUSTOMERS: Check[customer_pb.Customer] = Check(
    kind="customers",
    source="customers",
    service=SERVICE,
    position=10,
    read=read_customer,
    compare=customer_differences,
    held=active_customers,
)

#: What `syncmesh verify` checks in this service.
CHECKS: tuple[Check[Any], ...] = (CUSTOMERS,)

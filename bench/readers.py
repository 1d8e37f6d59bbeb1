"""gRPC point reads of the services, found by name so the bench runs before every service exists.

`GetCustomer` (customer service, by Stripe customer id) and `GetInvoice` (billing, by Stripe
invoice id) are the reads the issue's targets name; a service that is missing, or whose stubs
lack the method, simply has no reader and the figures that need it say so.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import grpc


@dataclass(frozen=True)
class ReadSpec:
    service: str
    module: str
    stub: str
    method: str
    request: str
    field: str
    #: The event type after which the record must be readable.
    created_by: str


SPECS = (
    ReadSpec(
        "customer",
        "syncmesh.customer.v1.customer_service_pb2",
        "CustomerServiceStub",
        "GetCustomer",
        "GetCustomerRequest",
        "stripe_customer_id",
        "customer.created",
    ),
    ReadSpec(
        "billing",
        "syncmesh.billing.v1.billing_service_pb2",
        "BillingServiceStub",
        "GetInvoice",
        "GetInvoiceRequest",
        "invoice_id",
        "invoice.created",
    ),
)


class Reader:
    """One unary Get RPC bound to a channel: `await reader.read(id)` -> found or not."""

    def __init__(self, spec: ReadSpec, channel: grpc.aio.Channel) -> None:
        messages = importlib.import_module(spec.module)
        stubs = importlib.import_module(spec.module + "_grpc")
        self.spec = spec
        self._request: Any = getattr(messages, spec.request)
        if spec.field not in self._request.DESCRIPTOR.fields_by_name:
            raise LookupError(f"{spec.request} has no field {spec.field}")
        self._call: Any = getattr(getattr(stubs, spec.stub)(channel), spec.method)

    @property
    def name(self) -> str:
        return f"{self.spec.service}.{self.spec.method}"

    async def read(self, object_id: str, timeout: float = 5.0) -> bool:
        try:
            await self._call(self._request(**{self.spec.field: object_id}), timeout=timeout)
            return True
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise


def readers(ports: dict[str, int]) -> tuple[dict[str, Reader], list[grpc.aio.Channel], list[str]]:
    """Readers for the running services (name -> gRPC port), the channels to close, and why not others."""
    found: dict[str, Reader] = {}
    channels: list[grpc.aio.Channel] = []
    missing: list[str] = []
    for spec in SPECS:
        if spec.service not in ports:
            missing.append(f"{spec.method}: {spec.service} service not running")
            continue
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{ports[spec.service]}")
        try:
            found[spec.created_by] = Reader(spec, channel)
            channels.append(channel)
        except (ImportError, AttributeError, LookupError) as exc:
            missing.append(f"{spec.method}: {exc}")
    return found, channels, missing

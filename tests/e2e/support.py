"""The whole mesh in one test process, on a localstripe that delivers signed webhooks to it.

Gateway + customer + billing + crm-export on the test's NATS and PostgreSQL (each service in its
own schema of the test's database), the services pointed at localstripe for the API calls they
make (tie re-fetches, line paging). The gateway gets no Stripe key, so its periodic sweeper
stays off: tests decide what reaches the mesh.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import stripe
from syncmesh.billing.v1 import billing_service_pb2_grpc
from syncmesh.crm_export.v1 import crm_export_service_pb2_grpc
from syncmesh.customer.v1 import customer_service_pb2_grpc

from gateway.app import Gateway
from launcher.localstripe_process import LocalStripe
from services.common.bus import STRIPE_STREAM
from services.common.service import ServiceRuntime
from services.common.settings import Settings
from tests.conftest import eventually

MESH_KEY = "sk_test_mesh_e2e"
WEBHOOK_ID = "syncmesh-e2e"


def definitions() -> dict[str, Any]:
    """Every service of the roster (services/registry.py), by name."""
    from services import registry

    return {d.name: d for d in registry.definitions()}


@dataclass
class RunningMesh:
    settings: Settings
    gateway: Gateway
    runtimes: dict[str, ServiceRuntime]
    channels: dict[str, grpc.aio.Channel] = field(default_factory=dict)

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.port}/webhooks/stripe"

    def target(self, service: str) -> str:
        return f"127.0.0.1:{self.runtimes[service].port}"

    @property
    def customer(self) -> customer_service_pb2_grpc.CustomerServiceStub:
        return customer_service_pb2_grpc.CustomerServiceStub(self.channels["customer"])  # type: ignore[no-untyped-call]

    @property
    def billing(self) -> billing_service_pb2_grpc.BillingServiceStub:
        return billing_service_pb2_grpc.BillingServiceStub(self.channels["billing"])  # type: ignore[no-untyped-call]

    @property
    def crm(self) -> crm_export_service_pb2_grpc.CrmExportServiceStub:
        return crm_export_service_pb2_grpc.CrmExportServiceStub(self.channels["crm-export"])  # type: ignore[no-untyped-call]

    async def stream_messages(self) -> int:
        info = await self.gateway.bus.js.stream_info(STRIPE_STREAM)
        return int(info.state.messages)

    async def drained(self) -> bool:
        """Every service has consumed and acked everything in the stream it subscribes to."""
        for rt in self.runtimes.values():
            if rt.consumer is None:
                return False
            info = await rt.bus.js.consumer_info(STRIPE_STREAM, rt.consumer.durable)
            if info.num_pending or info.num_ack_pending:
                return False
        return True

    async def settle(self, *, stream_messages: int | None = None, timeout: float = 60.0) -> None:
        """Wait for `stream_messages` in the stream (when given), then for every consumer to drain."""
        if stream_messages is not None:

            async def arrived() -> bool:
                return await self.stream_messages() >= stream_messages

            await eventually(arrived, timeout=timeout, interval=0.1)
        await eventually(self.drained, timeout=timeout, interval=0.1)


def mesh_settings(settings: Settings, localstripe: LocalStripe) -> Settings:
    return settings.with_overrides(stripe_api_key=MESH_KEY, stripe_api_base=localstripe.url)


@contextlib.asynccontextmanager
async def running_mesh(settings: Settings) -> AsyncIterator[RunningMesh]:
    """Start the gateway (without a Stripe key: no sweeper) and the three services."""
    gateway = Gateway(settings.with_overrides(stripe_api_key=None, stripe_api_base=None), port=0, host="127.0.0.1")
    runtimes = {name: ServiceRuntime(d, settings, port=0) for name, d in definitions().items()}
    mesh = RunningMesh(settings, gateway, runtimes)
    await gateway.start()
    try:
        for rt in runtimes.values():
            await rt.start()
        for rt in runtimes.values():
            await rt.wait_ready(30)
        await gateway.bus.wait_ready(10)
        mesh.channels = {name: grpc.aio.insecure_channel(f"127.0.0.1:{rt.port}") for name, rt in runtimes.items()}
        yield mesh
    finally:
        for channel in mesh.channels.values():
            await channel.close()
        for rt in runtimes.values():
            await rt.stop()
        await gateway.stop()


async def stripe_event_count(client: stripe.StripeClient) -> int:
    """How many events localstripe has made (each is delivered once to every webhook)."""
    count = 0
    params: dict[str, Any] = {"limit": 100}
    while True:
        page = await client.v1.events.list_async(params)  # type: ignore[arg-type]
        count += len(page.data)
        if not page.has_more or not page.data:
            return count
        params = {"limit": 100, "starting_after": page.data[-1].id}


async def card(client: stripe.StripeClient) -> str:
    pm = await client.v1.payment_methods.create_async(
        {"type": "card", "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"}}
    )
    return str(pm.id)


async def subscribed_customer(
    client: stripe.StripeClient, plan_id: str, *, name: str, email: str, quantity: int = 1, **extra: Any
) -> tuple[str, str]:
    """A customer with a card and a subscription (localstripe invoices and charges it at once)."""
    pm = await card(client)
    customer = await client.v1.customers.create_async(
        {
            "name": name,
            "email": email,
            "payment_method": pm,
            "invoice_settings": {"default_payment_method": pm},
            **extra,
        }
    )
    sub = await client.v1.subscriptions.create_async(
        {"customer": customer.id, "items": [{"plan": plan_id, "quantity": quantity}]}
    )
    return str(customer.id), str(sub.id)


async def catalogue(client: stripe.StripeClient, name: str, amount: int) -> tuple[str, str]:
    product = await client.v1.products.create_async({"name": name, "description": f"{name} plan"})
    plan = await client.v1.plans.create_async(
        {"product": product.id, "amount": amount, "currency": "usd", "interval": "month"}
    )
    return str(product.id), str(plan.id)

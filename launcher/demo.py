"""`syncmesh up --demo`: a realistic Stripe scenario driven through localstripe, then a report of
what every service recorded, read back over gRPC.

localstripe plays Stripe: the official `stripe` SDK creates customers, products, plans and
subscriptions on it (subscriptions invoice and charge at once), and localstripe delivers the
resulting signed webhooks to the gateway, exactly as Stripe would. Nothing is written to the
mesh's database except through that path.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import stripe

from gateway.app import Gateway
from launcher.localstripe_process import LocalStripe
from services import registry
from services.common.grpc_client import aio_channel
from services.common.service import ServiceRuntime
from services.common.settings import Settings

DEMO_KEY = "sk_test_syncmesh_demo"


def start_stand_in(data_dir: Path) -> LocalStripe:
    stand_in = LocalStripe(data_dir)
    stand_in.start()
    return stand_in


def demo_settings(settings: Settings, stand_in: LocalStripe) -> Settings:
    """Point the services' Stripe API calls (tie re-fetches, line paging) at the stand-in."""
    return settings.with_overrides(stripe_api_key=DEMO_KEY, stripe_api_base=stand_in.url)


async def drive_scenario(client: stripe.StripeClient) -> dict[str, Any]:
    """Customers, a catalogue, subscriptions (invoiced and paid at once), an e-mail change, a
    cancellation and a deleted customer: a month of a small SaaS business in a few seconds."""
    catalogue = {}
    for name, amount in (("Starter", 1900), ("Pro", 4900)):
        product = await client.v1.products.create_async({"name": name, "description": f"{name} plan"})
        plan = await client.v1.plans.create_async(
            {
                "product": product.id,
                "amount": amount,
                "currency": "usd",
                "interval": "month",
                "id": f"{name.lower()}-monthly",
            }
        )
        catalogue[name] = plan.id
    people = [
        ("Ada Lovelace", "ada@example.com", "Pro", 3),
        ("Grace Hopper", "grace@example.com", "Starter", 1),
        ("Alan Turing", "alan@example.com", "Pro", 1),
    ]
    customers = []
    for name, email, plan_name, seats in people:
        card = await client.v1.payment_methods.create_async(
            {"type": "card", "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"}}
        )
        stripe_customer = await client.v1.customers.create_async(
            {
                "name": name,
                "email": email,
                "payment_method": card.id,
                "invoice_settings": {"default_payment_method": card.id},
                "metadata": {"segment": "smb"},
            }
        )
        subscription = await client.v1.subscriptions.create_async(
            {"customer": stripe_customer.id, "items": [{"plan": catalogue[plan_name], "quantity": seats}]}
        )
        customers.append((stripe_customer, subscription))
    ada, _ = customers[0]
    await client.v1.customers.update_async(ada.id, {"email": "ada@analytical.example", "metadata": {"segment": "ent"}})
    _, grace_subscription = customers[1]
    await client.v1.subscriptions.cancel_async(grace_subscription.id)
    lead = await client.v1.customers.create_async({"name": "Short-lived Lead", "email": "lead@example.com"})
    await client.v1.customers.delete_async(lead.id)
    return {"customers": len(customers) + 1, "subscriptions": len(customers), "ada": ada.id}


async def refund_and_notify(client: stripe.StripeClient, customer_id: str, gateway_url: str, secret: str) -> str:
    """Partly refund a customer's first charge on localstripe, then deliver `charge.refunded`.

    localstripe refunds but sends no refund events, so the demo sends the one Stripe would: the
    charge as localstripe now holds it, in an event signed with the endpoint's secret by the
    official SDK's helper, through the gateway like any webhook.
    """
    invoices = await client.v1.invoices.list_async({"customer": customer_id, "limit": 1})
    invoice = invoices.data[0]
    charge_ref: Any = invoice.to_dict().get("charge")  # a 2017-era field: the current Invoice type lacks it
    charge_id = str(charge_ref if isinstance(charge_ref, str) else charge_ref["id"])
    await client.v1.refunds.create_async({"charge": charge_id, "amount": 4900})
    charge = (await client.v1.charges.retrieve_async(charge_id)).to_dict()
    charge["invoice"] = charge.get("invoice") or invoice.id  # Stripe links invoice charges; localstripe does not
    event = {
        "id": f"evt_demo_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "api_version": "2017-08-15",
        "created": int(time.time()),
        "data": {"object": charge},
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": None, "idempotency_key": None},
        "type": "charge.refunded",
    }
    body = json.dumps(event).encode()
    signature = stripe.WebhookSignature.generate_signature_header(body.decode(), secret)
    async with (
        aiohttp.ClientSession() as http,
        http.post(gateway_url, data=body, headers={"Stripe-Signature": signature}) as resp,
    ):
        resp.raise_for_status()
    return charge_id


async def run_demo(settings: Settings, gateway: Gateway, runtimes: list[ServiceRuntime], stand_in: LocalStripe) -> None:
    started = time.monotonic()
    await stand_in.register_webhook(
        "syncmesh-demo", f"http://127.0.0.1:{gateway.port}/webhooks/stripe", settings.webhook_secrets[0]
    )
    http_client = stripe.AIOHTTPClient()
    client = stripe.StripeClient(
        DEMO_KEY, base_addresses={"api": stand_in.url}, http_client=http_client, max_network_retries=0
    )
    print("demo: driving a scenario through localstripe (Stripe stand-in)…", flush=True)
    webhook_url = f"http://127.0.0.1:{gateway.port}/webhooks/stripe"
    try:
        made = await drive_scenario(client)
        await refund_and_notify(client, made["ada"], webhook_url, settings.webhook_secrets[0])
    finally:
        await http_client.close_async()  # type: ignore[no-untyped-call]
    print(
        f"demo: created {made['customers']} customers and {made['subscriptions']} subscriptions in "
        f"{time.monotonic() - started:.1f}s; waiting for the mesh to settle…",
        flush=True,
    )
    await _settle(runtimes)
    print(f"demo: webhook to queryable in every service after {time.monotonic() - started:.1f}s\n", flush=True)
    for rt in runtimes:
        report_module = registry.hook(rt.definition.demo)
        if report_module is None:
            continue
        async with aio_channel(settings, f"127.0.0.1:{rt.port}") as channel:
            lines: list[str] = await report_module.demo_report(channel)
        print(f"== {rt.definition.name} ({rt.definition.grpc_service_name}) ==")
        for line in lines:
            print(f"  {line}")
        print(flush=True)
    # Whichever service answers GetCustomer (the launcher names no service: services/registry.py).
    lookup = next((rt for rt in runtimes if rt.definition.grpc_service_name.endswith(".CustomerService")), None)
    if lookup is not None:
        request = json.dumps({"stripe_customer_id": made["ada"]})
        print("Look one up yourself (in another terminal, in this folder, while the demo runs):")
        print(f"  syncmesh call {lookup.definition.name} GetCustomer '{request}'")
        print(
            f"  grpcurl -plaintext -d '{request}' 127.0.0.1:{lookup.port} "
            f"{lookup.definition.grpc_service_name}/GetCustomer\n"
        )
    sys.stdout.flush()


async def _settle(runtimes: list[ServiceRuntime], quiet_for: float = 1.5, timeout: float = 60.0) -> None:
    """Wait until no service has handled anything new for `quiet_for` seconds."""
    if not runtimes:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: tuple[int, ...] = ()
    quiet_since = loop.time()
    while loop.time() < deadline:
        now = tuple((rt.consumer.handled + rt.consumer.duplicates) if rt.consumer else 0 for rt in runtimes)
        if now != last:
            last, quiet_since = now, loop.time()
        elif loop.time() - quiet_since >= quiet_for and any(now):
            return
        await asyncio.sleep(0.1)

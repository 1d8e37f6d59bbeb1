"""Live updates through real NATS and PostgreSQL: events in, the view out over gRPC."""

from __future__ import annotations

import asyncpg
import grpc
import pytest
from syncmesh.crm_export.v1 import crm_export_service_pb2 as pb
from syncmesh.crm_export.v1 import events_pb2

from services.common.service import ServiceRuntime
from services.common.settings import Settings
from services.crm_export.demo import demo_report
from tests.conftest import eventually
from tests.crm_export.support import T0, customer, event, invoice, product, publish, stub, subscription, view


async def _update_settings(api, **changes) -> pb.CrmExportSettings:  # type: ignore[no-untyped-def]
    current = (await api.GetSettings(pb.GetSettingsRequest())).settings
    wanted = pb.CrmExportSettings()
    wanted.CopyFrom(current)
    for key, value in changes.items():
        field = getattr(wanted, key)
        if isinstance(value, list):
            del field[:]
            field.extend(value)
        else:
            setattr(wanted, key, value)
    return (await api.UpdateSettings(pb.UpdateSettingsRequest(settings=wanted, changed_by="test"))).settings


async def test_customer_product_and_paid_invoice_become_client_product_and_contract(
    runtime: ServiceRuntime, settings: Settings
) -> None:
    channel, api = stub(runtime.port)
    async with channel:
        await _update_settings(
            api,
            customer_field_mappings=[
                pb.FieldMapping(stripe_path="balance", crm_field="Stripe Balance"),
                pb.FieldMapping(stripe_path="metadata.segment", crm_field="Segment"),
                pb.FieldMapping(stripe_path="metadata.tier", crm_field="Tier"),
            ],
        )
        await publish(runtime.bus, event("customer.created", customer(), created=T0))
        await publish(runtime.bus, event("product.created", product(), created=T0))
        await publish(runtime.bus, event("invoice.paid", invoice(), created=T0 + 5))
        snapshot = await eventually(lambda: _view_with(api, contracts=1, clients=1, products=1))
        client = snapshot["clients"]["cus_A"]
        assert client.name == "Ada Lovelace" and client.stripe_customer_id == "cus_A"
        assert client.origin == pb.CLIENT_ORIGIN_STRIPE
        assert (client.address.line1, client.address.city, client.address.country) == ("1 Main St", "Paris", "FR")
        assert dict(client.custom_fields) == {"Stripe Balance": "-500", "Segment": "smb", "Tier": ""}
        contract = snapshot["contracts"]["in_A"]
        assert contract.source == pb.CONTRACT_SOURCE_INVOICE and contract.client_id == "cus_A"
        assert (contract.total.amount_minor, contract.total.currency) == (2900, "usd")
        assert contract.discount.amount_minor == 100
        [line] = contract.line_items
        assert (line.stripe_product_id, line.product_name, line.quantity) == ("prod_A", "Pro", 2)
        assert (line.amount.amount_minor, line.discount.amount_minor) == (3000, 100)
        assert (line.start_date, line.end_date) == ("2025-06-15", "2025-07-15")

        # A later update wins; a stale one, arriving after it, changes nothing.
        await publish(runtime.bus, event("customer.updated", customer(name="Ada King"), created=T0 + 60))
        await publish(runtime.bus, event("customer.updated", customer(name="Stale Name"), created=T0 + 30))
        await eventually(lambda: runtime.consumer.handled >= 5)
        got = (await api.GetClient(pb.GetClientRequest(client_id="cus_A"))).client
        assert got.name == "Ada King"

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.GetClient(pb.GetClientRequest(client_id="cus_missing"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND

        report = await demo_report(channel)
        assert any(line.startswith("client cus_A 'Ada King': healthy") for line in report), report
        assert "product prod_A 'Pro' (active)" in report
        assert any(line.startswith("contract in_A (invoice, paid) for cus_A: 29.00 USD") for line in report), report

    names = await _outbox_subjects(settings)
    assert {
        "syncmesh.crm_export.client_upserted",
        "syncmesh.crm_export.product_upserted",
        "syncmesh.crm_export.contract_upserted",
        "syncmesh.crm_export.settings_changed",
    } <= set(names)
    # the stale update emitted nothing: 2 client events (create, rename), not 3
    assert names.count("syncmesh.crm_export.client_upserted") == 2


async def _view_with(api, **counts: int):  # type: ignore[no-untyped-def]
    snapshot = await view(api)
    return snapshot if all(len(snapshot[k]) >= n for k, n in counts.items()) else None


async def _outbox_subjects(settings: Settings) -> list[str]:
    conn = await asyncpg.connect(settings.database_url)
    try:
        return [r["subject"] for r in await conn.fetch("SELECT subject FROM crm_export.outbox ORDER BY id")]
    finally:
        await conn.close()


async def _outbox_messages(settings: Settings, subject: str) -> list[bytes]:
    conn = await asyncpg.connect(settings.database_url)
    try:
        rows = await conn.fetch("SELECT payload FROM crm_export.outbox WHERE subject = $1 ORDER BY id", subject)
        return [r["payload"] for r in rows]
    finally:
        await conn.close()


async def test_contracts_from_both_sources_follow_the_subscription_and_its_cancellation(
    runtime: ServiceRuntime, settings: Settings
) -> None:
    channel, api = stub(runtime.port)
    async with channel:
        await _update_settings(api, contract_sources=[pb.CONTRACT_SOURCE_INVOICE, pb.CONTRACT_SOURCE_SUBSCRIPTION])
        await publish(runtime.bus, event("customer.created", customer(), created=T0))
        await publish(
            runtime.bus, event("customer.subscription.created", subscription(status="incomplete"), created=T0)
        )
        # a legacy-shaped paid invoice for the subscription
        await publish(
            runtime.bus,
            event(
                "invoice.payment_succeeded",
                invoice("in_S", legacy=True, subscription="sub_A"),
                created=T0 + 1,
                api_version="2024-06-20",
            ),
        )
        await publish(
            runtime.bus,
            event("customer.subscription.updated", subscription(status="active", quantity=3), created=T0 + 1),
        )
        await eventually(lambda: _view_with(api, contracts=2))
        sub = (await api.GetContract(pb.GetContractRequest(contract_id="sub_A"))).contract
        assert sub.source == pb.CONTRACT_SOURCE_SUBSCRIPTION and sub.status == "active"
        assert sub.total.amount_minor == 4500 and sub.line_items[0].quantity == 3
        inv = (await api.GetContract(pb.GetContractRequest(contract_id="in_S"))).contract
        assert inv.stripe_subscription_id == "sub_A" and inv.total.amount_minor == 2900

        only_subs = await api.ListContracts(pb.ListContractsRequest(source=pb.CONTRACT_SOURCE_SUBSCRIPTION))
        assert [c.contract_id for c in only_subs.contracts] == ["sub_A"]
        by_client = await api.ListContracts(pb.ListContractsRequest(client_id="cus_A", page_size=1))
        assert len(by_client.contracts) == 1 and by_client.next_page_token
        rest = await api.ListContracts(
            pb.ListContractsRequest(client_id="cus_A", page_size=1, page_token=by_client.next_page_token)
        )
        assert {by_client.contracts[0].contract_id, rest.contracts[0].contract_id} == {"in_S", "sub_A"}
        outside = await api.ListContracts(pb.ListContractsRequest(start_date="2026-01-01"))
        assert list(outside.contracts) == []

        # Past due then cancelled: the contract follows; the client carries the health signals.
        await publish(
            runtime.bus, event("customer.subscription.updated", subscription(status="past_due"), created=T0 + 100)
        )
        await eventually(lambda: _has_signal(api, pb.HEALTH_SIGNAL_SUBSCRIPTION_PAST_DUE))
        await publish(
            runtime.bus, event("customer.subscription.deleted", subscription(status="canceled"), created=T0 + 200)
        )
        # a late "active" update must not resurrect a cancelled subscription
        await publish(
            runtime.bus, event("customer.subscription.updated", subscription(status="active"), created=T0 + 300)
        )
        await eventually(lambda: _has_signal(api, pb.HEALTH_SIGNAL_SUBSCRIPTION_CANCELED))
        await eventually(lambda: runtime.consumer.handled >= 7)
        sub = (await api.GetContract(pb.GetContractRequest(contract_id="sub_A"))).contract
        assert sub.status == "canceled" and sub.canceled_at.seconds == T0 + 86400
        assert sub.end_date == "2025-06-16"
        client = (await api.GetClient(pb.GetClientRequest(client_id="cus_A"))).client
        assert list(client.health_signals) == [pb.HEALTH_SIGNAL_SUBSCRIPTION_CANCELED]

        # Payment failed on an invoice -> signal; paid later -> cleared.
        await publish(runtime.bus, event("invoice.payment_failed", invoice("in_F", status="open"), created=T0 + 400))
        await eventually(lambda: _has_signal(api, pb.HEALTH_SIGNAL_PAYMENT_FAILED))
        client = (await api.GetClient(pb.GetClientRequest(client_id="cus_A"))).client
        assert list(client.failing_invoice_ids) == ["in_F"]
        await publish(runtime.bus, event("invoice.paid", invoice("in_F"), created=T0 + 500))
        await eventually(lambda: _lacks_signal(api, pb.HEALTH_SIGNAL_PAYMENT_FAILED))

    health = [
        events_pb2.ClientHealthChanged.FromString(p)
        for p in await _outbox_messages(settings, "syncmesh.crm_export.client_health_changed")
    ]
    assert [list(h.health_signals) for h in health][-1] == [pb.HEALTH_SIGNAL_SUBSCRIPTION_CANCELED]
    assert any(pb.HEALTH_SIGNAL_PAYMENT_FAILED in h.health_signals for h in health)


async def _has_signal(api, signal) -> bool:  # type: ignore[no-untyped-def]
    client = (await api.GetClient(pb.GetClientRequest(client_id="cus_A"))).client
    return signal in client.health_signals


async def _lacks_signal(api, signal) -> bool:  # type: ignore[no-untyped-def]
    return not await _has_signal(api, signal)


async def test_disabled_customer_sync_attaches_contracts_to_crm_clients(runtime: ServiceRuntime) -> None:
    channel, api = stub(runtime.port)
    async with channel:
        await _update_settings(api, customer_sync_direction=pb.CUSTOMER_SYNC_DIRECTION_DISABLED)
        await publish(runtime.bus, event("customer.created", customer("cus_E", email="Eve@Example.com"), created=T0))
        await publish(
            runtime.bus,
            event("invoice.paid", invoice("in_E", customer_id="cus_E", email="eve@example.com"), created=T0),
        )
        await publish(
            runtime.bus,
            event("invoice.paid", invoice("in_G", customer_id="cus_G", email="gus@example.com"), created=T0),
        )
        await eventually(lambda: runtime.consumer.handled >= 3)
        snapshot = await view(api)
        assert snapshot["clients"] == {}  # no client is created from Stripe
        waiting = await api.ListContracts(pb.ListContractsRequest(waiting_for_client=True))
        assert sorted(c.contract_id for c in waiting.contracts) == ["in_E", "in_G"]
        assert all(c.waiting_for_client and not c.client_id for c in waiting.contracts)

        await api.ImportCrmClients(
            pb.ImportCrmClientsRequest(
                clients=[
                    pb.CrmClient(crm_client_id="17", name="Eve Corp", email="eve@example.com"),
                    pb.CrmClient(crm_client_id="18", name="Gus Ltd", stripe_customer_id="cus_G"),
                ]
            )
        )
        by_email = (await api.GetContract(pb.GetContractRequest(contract_id="in_E"))).contract
        by_id = (await api.GetContract(pb.GetContractRequest(contract_id="in_G"))).contract
        assert (by_email.client_id, by_email.waiting_for_client) == ("crm_17", False)
        assert by_id.client_id == "crm_18"
        assert list((await api.ListContracts(pb.ListContractsRequest(waiting_for_client=True))).contracts) == []
        eve = (await api.GetClient(pb.GetClientRequest(client_id="crm_17"))).client
        assert eve.origin == pb.CLIENT_ORIGIN_CRM and eve.name == "Eve Corp"

        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.ImportCrmClients(
                pb.ImportCrmClientsRequest(
                    clients=[
                        pb.CrmClient(crm_client_id="19", name="Fine", email="fine@example.com"),
                        pb.CrmClient(crm_client_id="20", name="Bad", email="not-an-email"),
                    ]
                )
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "clients[1].email" in err.value.details()
        with pytest.raises(grpc.aio.AioRpcError):
            await api.GetClient(pb.GetClientRequest(client_id="crm_19"))  # all-or-nothing

        # Switching to PULL builds clients from the customers already seen.
        await _update_settings(api, customer_sync_direction=pb.CUSTOMER_SYNC_DIRECTION_PULL)
        assert (await api.GetClient(pb.GetClientRequest(client_id="cus_E"))).client.name == "Ada Lovelace"

"""How `syncmesh verify` judges the CRM export against Stripe.

    Stripe listing   reported as   record read                  compared
    customers        clients       GetClient(stripe id)         name, email (masked), deleted
    products         products      ListProducts (once per run)  name, active, deleted
    invoices         contracts     GetContract(in_...) of a     status, customer, total
                                   paid invoice
    subscriptions    contracts     GetContract(sub_...)         status, customer

What the CRM export keeps depends on its settings: with customer sync DISABLED it takes its
clients from the CRM, so clients leave the report; contracts are checked only for the sources
it makes them of. Subscription statuses are judged with the rank table the service applies
events with (services.crm_export.statuses).
"""

from __future__ import annotations

from typing import Any

from syncmesh.crm_export.v1 import crm_export_service_pb2 as crm_pb
from syncmesh.crm_export.v1 import crm_export_service_pb2_grpc

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
    ref,
    status_difference,
    text,
)
from services.crm_export.statuses import SUBSCRIPTION_RANK

#: The deployable whose gRPC API holds the records.
SERVICE = "crm-export"


def _stub(mesh: Mesh) -> crm_export_service_pb2_grpc.CrmExportServiceStub:
    return crm_export_service_pb2_grpc.CrmExportServiceStub(mesh.channel(SERVICE))  # type: ignore[no-untyped-call]


async def crm_settings(mesh: Mesh) -> crm_pb.CrmExportSettings:
    """The export's settings, read once for the whole run (a repair does not change them)."""

    async def load() -> crm_pb.CrmExportSettings:
        reply = await mesh.call(SERVICE, _stub(mesh).GetSettings(crm_pb.GetSettingsRequest(), timeout=RPC_TIMEOUT))
        assert reply is not None
        settings: crm_pb.CrmExportSettings = reply.settings
        return settings

    return await mesh.remembered("crm-export:settings", load, lasting=True)


# -- clients -------------------------------------------------------------------------------------


async def read_client(mesh: Mesh, obj: StripeObject) -> crm_pb.Client | None:
    request = crm_pb.GetClientRequest(client_id=str(obj["id"]))
    reply = await mesh.call(SERVICE, _stub(mesh).GetClient(request, timeout=RPC_TIMEOUT))
    return None if reply is None else reply.client


def client_differences(obj: StripeObject, client: crm_pb.Client | None) -> list[Difference]:
    deleted = bool(obj.get("deleted"))
    if client is None:
        return [] if deleted else [missing_record()]
    if deleted:
        return [differ(STALE, "deleted", True, False)] if not client.deleted else []
    out: list[Difference] = []
    if client.deleted:
        out.append(differ(MISMATCH, "deleted", False, True))
    # The CRM names a client after the customer's name, else its description, else its id.
    expected_name = text(obj.get("name")) or text(obj.get("description")) or str(obj["id"])
    if expected_name != client.name:
        out.append(differ(MISMATCH, "name", expected_name, client.name))
    stripe_email = text(obj.get("email")).strip()
    if stripe_email.lower() != client.email.strip().lower():
        out.append(differ(MISMATCH, "email", mask_email(stripe_email), mask_email(client.email)))
    return out


async def clients_disabled_because(mesh: Mesh) -> str | None:
    if (await crm_settings(mesh)).customer_sync_direction == crm_pb.CUSTOMER_SYNC_DIRECTION_DISABLED:
        return "the CRM export takes its clients from the CRM (customer sync DISABLED)"
    return None


async def live_clients(mesh: Mesh) -> list[Held]:
    """Clients made from Stripe customers and not deleted; the CRM keeps no Stripe creation time."""
    stub = _stub(mesh)
    clients: list[crm_pb.Client] = await mesh.every_page(
        SERVICE,
        lambda token: stub.ListClients(crm_pb.ListClientsRequest(page_size=500, page_token=token), timeout=RPC_TIMEOUT),
        "clients",
    )
    return [
        Held(c.stripe_customer_id, None) for c in clients if c.origin == crm_pb.CLIENT_ORIGIN_STRIPE and not c.deleted
    ]


CLIENTS: Check[crm_pb.Client] = Check(
    kind="clients",
    source="customers",
    service=SERVICE,
    position=30,
    read=read_client,
    compare=client_differences,
    disabled_because=clients_disabled_because,
    omit_when_disabled=True,
    held=live_clients,
)


# -- products ------------------------------------------------------------------------------------


async def all_products(mesh: Mesh) -> dict[str, crm_pb.Product]:
    """Every product the CRM export holds, by Stripe id, read once per run."""

    async def load() -> dict[str, crm_pb.Product]:
        stub = _stub(mesh)
        products: list[crm_pb.Product] = await mesh.every_page(
            SERVICE,
            lambda token: stub.ListProducts(
                crm_pb.ListProductsRequest(page_size=500, page_token=token), timeout=RPC_TIMEOUT
            ),
            "products",
        )
        return {p.stripe_product_id: p for p in products}

    return await mesh.remembered("crm-export:products", load)


async def read_product(mesh: Mesh, obj: StripeObject) -> crm_pb.Product | None:
    return (await all_products(mesh)).get(str(obj["id"]))


def product_differences(obj: StripeObject, product: crm_pb.Product | None) -> list[Difference]:
    deleted = bool(obj.get("deleted"))
    if product is None:
        return [] if deleted else [missing_record()]
    if deleted:
        return [differ(STALE, "deleted", True, False)] if not product.deleted else []
    out: list[Difference] = []
    if product.deleted:
        out.append(differ(MISMATCH, "deleted", False, True))
    if text(obj.get("name")) != product.name:
        out.append(differ(MISMATCH, "name", obj.get("name"), product.name))
    if bool(obj.get("active")) != product.active:
        out.append(differ(MISMATCH, "active", bool(obj.get("active")), product.active))
    return out


async def live_products(mesh: Mesh) -> list[Held]:
    """Products not deleted here; with no Stripe creation time, only looked at without --since."""
    return [Held(product_id, None) for product_id, p in (await all_products(mesh)).items() if not p.deleted]


PRODUCTS: Check[crm_pb.Product] = Check(
    kind="products",
    source="products",
    service=SERVICE,
    position=40,
    read=read_product,
    compare=product_differences,
    held=live_products,
)


# -- contracts -----------------------------------------------------------------------------------


async def read_contract(mesh: Mesh, obj: StripeObject) -> crm_pb.Contract | None:
    request = crm_pb.GetContractRequest(contract_id=str(obj["id"]))
    reply = await mesh.call(SERVICE, _stub(mesh).GetContract(request, timeout=RPC_TIMEOUT))
    return None if reply is None else reply.contract


def invoice_contract_differences(obj: StripeObject, contract: crm_pb.Contract | None) -> list[Difference]:
    if contract is None:
        return [missing_record()]
    out: list[Difference] = []
    if contract.status != "paid":
        out.append(differ(STALE, "status", "paid", contract.status))
    customer = ref(obj.get("customer"))
    if customer != contract.stripe_customer_id:
        out.append(differ(MISMATCH, "customer", customer, contract.stripe_customer_id))
    total = obj.get("total")
    if isinstance(total, int) and total != contract.total.amount_minor:
        out.append(differ(MISMATCH, "total", total, contract.total.amount_minor))
    return out


def subscription_contract_differences(obj: StripeObject, contract: crm_pb.Contract | None) -> list[Difference]:
    if contract is None:
        return [missing_record()]
    out = status_difference(SUBSCRIPTION_RANK, text(obj.get("status")), contract.status)
    customer = ref(obj.get("customer"))
    if customer != contract.stripe_customer_id:
        out.append(differ(MISMATCH, "customer", customer, contract.stripe_customer_id))
    return out


def _paid(obj: StripeObject) -> bool:
    return obj.get("status") == "paid" or obj.get("paid") is True


async def invoice_contracts_disabled_because(mesh: Mesh) -> str | None:
    if crm_pb.CONTRACT_SOURCE_INVOICE not in (await crm_settings(mesh)).contract_sources:
        return "the CRM export makes no contracts of invoices"
    return None


async def subscription_contracts_disabled_because(mesh: Mesh) -> str | None:
    if crm_pb.CONTRACT_SOURCE_SUBSCRIPTION not in (await crm_settings(mesh)).contract_sources:
        return "the CRM export makes no contracts of subscriptions"
    return None


INVOICE_CONTRACTS: Check[crm_pb.Contract] = Check(
    kind="contracts",
    source="invoices",
    service=SERVICE,
    position=50,
    read=read_contract,
    compare=invoice_contract_differences,
    applies=_paid,
    disabled_because=invoice_contracts_disabled_because,
)
SUBSCRIPTION_CONTRACTS: Check[crm_pb.Contract] = Check(
    kind="contracts",
    source="subscriptions",
    service=SERVICE,
    position=50,
    read=read_contract,
    compare=subscription_contract_differences,
    disabled_because=subscription_contracts_disabled_because,
)

#: What `syncmesh verify` checks in this service.
CHECKS: tuple[Check[Any], ...] = (CLIENTS, PRODUCTS, INVOICE_CONTRACTS, SUBSCRIPTION_CONTRACTS)

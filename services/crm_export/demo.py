"""What the CRM-export service recorded, read over gRPC, for `syncmesh up --demo`."""

from __future__ import annotations

import grpc
from syncmesh.crm_export.v1 import crm_export_service_pb2 as pb
from syncmesh.crm_export.v1 import crm_export_service_pb2_grpc

from services.common.money import format_money

_SIGNALS = {
    pb.HEALTH_SIGNAL_PAYMENT_FAILED: "payment failed",
    pb.HEALTH_SIGNAL_SUBSCRIPTION_PAST_DUE: "subscription past due",
    pb.HEALTH_SIGNAL_SUBSCRIPTION_CANCELED: "churned (all subscriptions cancelled)",
}
_SOURCES = {pb.CONTRACT_SOURCE_INVOICE: "invoice", pb.CONTRACT_SOURCE_SUBSCRIPTION: "subscription"}


def _money(m: object) -> str:
    return format_money(int(getattr(m, "amount_minor", 0)), str(getattr(m, "currency", "")))


async def demo_report(channel: grpc.aio.Channel) -> list[str]:
    api = crm_export_service_pb2_grpc.CrmExportServiceStub(channel)  # type: ignore[no-untyped-call]
    settings = (await api.GetSettings(pb.GetSettingsRequest())).settings
    sources = " + ".join(_SOURCES.get(s, "?") for s in settings.contract_sources)
    lines = [f"settings v{settings.version}: contracts from {sources}, days back {settings.days_back}"]
    clients, products, contracts = [], [], []
    async for item in api.ExportSnapshot(pb.ExportSnapshotRequest()):
        kind = item.WhichOneof("item")
        if kind == "client":
            clients.append(item.client)
        elif kind == "product":
            products.append(item.product)
        elif kind == "contract":
            contracts.append(item.contract)
    lines.append(f"{len(clients)} clients, {len(products)} products, {len(contracts)} contracts (one snapshot)")
    for c in clients:
        state = "deleted" if c.deleted else ", ".join(_SIGNALS[s] for s in c.health_signals) or "healthy"
        fields = ", ".join(f"{k}={v or '—'}" for k, v in sorted(c.custom_fields.items()))
        lines.append(f"client {c.client_id} {c.name!r}: {state}" + (f" [{fields}]" if fields else ""))
    for p in products:
        lines.append(f"product {p.stripe_product_id} {p.name!r} ({'active' if p.active else 'inactive'})")
    for k in contracts:
        items = "; ".join(
            f"{line.quantity} x {line.product_name or line.stripe_product_id or line.description}"
            for line in k.line_items
        )
        owner = k.client_id or "waiting for a client"
        lines.append(
            f"contract {k.contract_id} ({_SOURCES.get(k.source, '?')}, {k.status}) for {owner}: "
            f"{_money(k.total)}, {k.start_date}..{k.end_date}: {items}"
        )
    return lines

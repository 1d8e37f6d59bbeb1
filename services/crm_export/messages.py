"""Records -> protobuf messages, shared by the gRPC API and the domain events so a client looks
the same whichever way another team receives it."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp
from syncmesh.crm_export.v1 import crm_export_service_pb2 as pb
from syncmesh.type.v1 import money_pb2

from services.crm_export.crm_settings import DISABLED, INVOICE, PULL, SUBSCRIPTION, CrmSettings, FieldMapping
from services.crm_export.health import PAYMENT_FAILED, SUBSCRIPTION_CANCELED, SUBSCRIPTION_PAST_DUE, Health
from services.crm_export.records import Product
from services.crm_export.store import ClientRecord, ContractRecord, SettingsVersion

SOURCE_TO_PB = {
    INVOICE: pb.CONTRACT_SOURCE_INVOICE,
    SUBSCRIPTION: pb.CONTRACT_SOURCE_SUBSCRIPTION,
}
SOURCE_FROM_PB = {v: k for k, v in SOURCE_TO_PB.items()}
DIRECTION_TO_PB = {
    PULL: pb.CUSTOMER_SYNC_DIRECTION_PULL,
    DISABLED: pb.CUSTOMER_SYNC_DIRECTION_DISABLED,
}
DIRECTION_FROM_PB = {v: k for k, v in DIRECTION_TO_PB.items()}
SIGNAL_TO_PB = {
    PAYMENT_FAILED: pb.HEALTH_SIGNAL_PAYMENT_FAILED,
    SUBSCRIPTION_PAST_DUE: pb.HEALTH_SIGNAL_SUBSCRIPTION_PAST_DUE,
    SUBSCRIPTION_CANCELED: pb.HEALTH_SIGNAL_SUBSCRIPTION_CANCELED,
}
ORIGIN_TO_PB = {"STRIPE": pb.CLIENT_ORIGIN_STRIPE, "CRM": pb.CLIENT_ORIGIN_CRM}


def _ts(seconds: int | None) -> Timestamp | None:
    return Timestamp(seconds=seconds) if seconds else None


def settings_pb(version: SettingsVersion) -> pb.CrmExportSettings:
    s = version.settings
    changed = Timestamp()
    changed.FromDatetime(version.changed_at.astimezone(UTC) if version.changed_at.tzinfo else version.changed_at)
    return pb.CrmExportSettings(
        version=version.version,
        contract_sources=[SOURCE_TO_PB[x] for x in s.contract_sources],
        days_back=s.days_back,
        customer_sync_direction=DIRECTION_TO_PB[s.customer_sync_direction],
        customer_field_mappings=[
            pb.FieldMapping(stripe_path=m.stripe_path, crm_field=m.crm_field) for m in s.customer_field_mappings
        ],
        product_field_mappings=[
            pb.FieldMapping(stripe_path=m.stripe_path, crm_field=m.crm_field) for m in s.product_field_mappings
        ],
        import_requests_per_second=s.import_requests_per_second,
        changed_at=changed,
        changed_by=version.changed_by,
    )


def settings_from_pb(message: pb.CrmExportSettings) -> CrmSettings:
    """Unvalidated: enum zero values become '' so validate_settings names the field."""
    return CrmSettings(
        contract_sources=tuple(SOURCE_FROM_PB.get(x, f"unspecified ({x})") for x in message.contract_sources),
        days_back=message.days_back,
        customer_sync_direction=DIRECTION_FROM_PB.get(message.customer_sync_direction, ""),
        customer_field_mappings=tuple(
            FieldMapping(m.stripe_path, m.crm_field) for m in message.customer_field_mappings
        ),
        product_field_mappings=tuple(FieldMapping(m.stripe_path, m.crm_field) for m in message.product_field_mappings),
        import_requests_per_second=message.import_requests_per_second,
    )


def health_signals_pb(health: Health) -> list[pb.HealthSignal]:
    return [SIGNAL_TO_PB[s] for s in health.signals]


def client_pb(record: ClientRecord) -> pb.Client:
    a = record.address
    return pb.Client(
        client_id=record.client_id,
        origin=ORIGIN_TO_PB[record.origin],
        stripe_customer_id=record.stripe_customer_id,
        crm_client_id=record.crm_client_id,
        name=record.name,
        email=record.email,
        address=pb.Address(
            line1=a.line1, line2=a.line2, city=a.city, state=a.state, postal_code=a.postal_code, country=a.country
        ),
        custom_fields=record.custom_fields,
        health_signals=health_signals_pb(record.health),
        failing_invoice_ids=list(record.health.failing_invoice_ids),
        deleted=record.deleted,
    )


def product_pb(product: Product) -> pb.Product:
    return pb.Product(
        stripe_product_id=product.stripe_product_id,
        name=product.name,
        description=product.description,
        active=product.active,
        custom_fields=product.custom_fields,
        deleted=product.deleted,
    )


def _money(amount: int, currency: str) -> money_pb2.Money:
    return money_pb2.Money(amount_minor=amount, currency=currency)


def contract_pb(record: ContractRecord) -> pb.Contract:
    c = record.contract
    return pb.Contract(
        contract_id=c.contract_id,
        source=SOURCE_TO_PB[c.source],
        stripe_customer_id=c.stripe_customer_id,
        client_id=record.client_id,
        waiting_for_client=not record.client_id,
        status=c.status,
        line_items=[
            pb.ContractLineItem(
                stripe_line_id=line.stripe_line_id,
                stripe_product_id=line.stripe_product_id,
                product_name=record.product_names.get(line.stripe_product_id, ""),
                description=line.description,
                quantity=line.quantity,
                start_date=line.start_date,
                end_date=line.end_date,
                amount=_money(line.amount_minor, line.currency),
                discount=_money(line.discount_minor, line.currency),
            )
            for line in c.lines
        ],
        total=_money(c.total_minor, c.currency),
        discount=_money(c.discount_minor, c.currency),
        start_date=c.start_date,
        end_date=c.end_date,
        created=_ts(c.created),
        canceled_at=_ts(c.canceled_at),
        stripe_subscription_id=c.stripe_subscription_id if c.source == INVOICE else "",
    )


def now_ts() -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(datetime.now(UTC))
    return ts

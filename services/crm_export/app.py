"""The CRM-export service as the shared runtime runs it (`syncmesh serve crm-export`)."""

from __future__ import annotations

from pathlib import Path

from syncmesh.crm_export.v1.crm_export_service_pb2_grpc import add_CrmExportServiceServicer_to_server

from services.common.service import ServiceDefinition
from services.crm_export.api import POLICY, CrmExportServicer
from services.crm_export.handlers import apply

DEFINITION = ServiceDefinition(
    name="crm-export",
    schema="crm_export",
    migrations=Path(__file__).parent / "migrations",
    subjects=(
        "stripe.customer.*",
        "stripe.product.*",
        "stripe.invoice.paid",
        "stripe.invoice.payment_succeeded",
        "stripe.invoice.payment_failed",
        "stripe.customer.subscription.*",
    ),
    apply=apply,
    grpc_service_name="syncmesh.crm_export.v1.CrmExportService",
    register_grpc=lambda server, runtime: add_CrmExportServiceServicer_to_server(  # type: ignore[no-untyped-call]
        CrmExportServicer(runtime), server
    ),
    grpc_policy=POLICY,
    default_port=50053,
    cli="services.crm_export.cli",
    demo="services.crm_export.demo",
    verify="services.crm_export.verify",
)

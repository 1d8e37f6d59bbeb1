"""The customer service as the runtime runs it (`syncmesh serve customer`)."""

from __future__ import annotations

from pathlib import Path

from syncmesh.customer.v1.customer_service_pb2_grpc import add_CustomerServiceServicer_to_server

from services.common.service import ServiceDefinition
from services.customer.api import POLICY, CustomerServicer
from services.customer.handlers import apply

DEFINITION = ServiceDefinition(
    name="customer",
    schema="customer",
    migrations=Path(__file__).parent / "migrations",
    subjects=("stripe.customer.created", "stripe.customer.updated", "stripe.customer.deleted"),
    apply=apply,
    grpc_service_name="syncmesh.customer.v1.CustomerService",
    register_grpc=lambda server, runtime: add_CustomerServiceServicer_to_server(  # type: ignore[no-untyped-call]
        CustomerServicer(runtime), server
    ),
    grpc_policy=POLICY,
    default_port=50051,
    cli="services.customer.cli",
    demo="services.customer.demo",
    verify="services.customer.verify",
)

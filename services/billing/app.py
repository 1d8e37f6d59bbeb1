"""The billing deployable: what `syncmesh serve billing` runs."""

from __future__ import annotations

from pathlib import Path

from syncmesh.billing.v1.billing_service_pb2_grpc import add_BillingServiceServicer_to_server

from services.billing.api import POLICY, BillingServicer
from services.billing.batch import make_applier
from services.billing.settings import BillingSettings, load_billing_settings
from services.common.service import ServiceDefinition

SUBJECTS = (
    "stripe.invoice.*",
    "stripe.invoice_payment.*",
    "stripe.charge.*",
    "stripe.refund.*",
    "stripe.credit_note.*",
    "stripe.customer.subscription.*",
    "stripe.customer.created",
    "stripe.customer.updated",
)


def make_definition(billing: BillingSettings | None = None) -> ServiceDefinition:
    """The service under a billing policy (from SYNCMESH_BILLING_* when not given)."""
    policy = billing if billing is not None else load_billing_settings()
    return ServiceDefinition(
        name="billing",
        schema="billing",
        migrations=Path(__file__).parent / "migrations",
        subjects=SUBJECTS,
        apply=make_applier(policy),
        fetch_ahead=True,
        grpc_service_name="syncmesh.billing.v1.BillingService",
        register_grpc=lambda server, runtime: add_BillingServiceServicer_to_server(  # type: ignore[no-untyped-call]
            BillingServicer(runtime, policy, zone=policy.ledger_zone), server
        ),
        grpc_policy=POLICY,
        default_port=50052,
        cli="services.billing.cli",
        demo="services.billing.demo",
        verify="services.billing.verify",
    )


DEFINITION = make_definition()

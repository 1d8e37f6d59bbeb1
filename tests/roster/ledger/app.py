"""The toy fourth service's definition: the runtime's test service (tests/common/toy_service.py)
under a name, port and hooks of its own, as a real service's app.py would declare them."""

from __future__ import annotations

from dataclasses import replace

from tests.common import toy_service

DEFINITION = replace(
    toy_service.DEFINITION,
    name="ledger",
    schema="ledger",
    grpc_service_name="syncmesh.ledger.v1.LedgerService",
    default_port=50054,
    cli="tests.roster.ledger.cli",
    demo="tests.roster.ledger.demo",
    verify="tests.roster.ledger.verify",  # absent on purpose: verify checks are optional
)

"""`syncmesh import crm --days-back N`: run the CRM-export service's initial import from
Stripe, with a progress bar fed by the streamed RunImport progress.

Ctrl-C cancels the call; the service stops after rolling back the batch in flight, and the
next `syncmesh import crm` resumes from the last committed checkpoint (`--restart` starts over).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import grpc
from syncmesh.crm_export.v1 import crm_export_service_pb2 as pb
from syncmesh.crm_export.v1 import crm_export_service_pb2_grpc

from services.common.grpc_client import Listening, default_target
from services.common.grpc_client import channel as client_channel
from services.common.progress import progress
from services.common.settings import load_settings

PHASE_NAMES = {
    pb.IMPORT_PHASE_CUSTOMERS: "customers",
    pb.IMPORT_PHASE_PRODUCTS: "products",
    pb.IMPORT_PHASE_INVOICES: "invoices",
    pb.IMPORT_PHASE_SUBSCRIPTIONS: "subscriptions",
    pb.IMPORT_PHASE_DONE: "done",
}


def register(sub: Any, groups: dict[str, Any]) -> None:
    parser = groups["import"].add_parser(
        "crm",
        help="pull customers, products and contracts from Stripe into the CRM-export view",
        description=(
            "Initial import for the CRM export: customers, then products, then contracts (paid invoices "
            "and/or subscriptions, per the service's settings). Resumes an interrupted import."
        ),
    )
    parser.add_argument(
        "--days-back", type=int, default=0, help="days of invoices to pull (default: the service's settings)"
    )
    parser.add_argument("--restart", action="store_true", help="start over instead of resuming an interrupted import")
    parser.add_argument("--target", default=None, help="crm-export gRPC address (default 127.0.0.1:<port>)")
    parser.set_defaults(func=import_crm)


def import_crm(args: argparse.Namespace) -> int:
    if not 0 <= args.days_back <= 3650:
        print("syncmesh: --days-back must be between 1 and 3650", file=sys.stderr)
        return 2
    settings = load_settings()
    target = args.target or default_target(settings, _definition())
    last: pb.RunImportResponse | None = None
    with (
        client_channel(settings, target) as channel,
        progress(total=None, desc="importing", unit="objects") as bar,
    ):
        api = crm_export_service_pb2_grpc.CrmExportServiceStub(channel)  # type: ignore[no-untyped-call]
        call = api.RunImport(pb.RunImportRequest(days_back=args.days_back, restart=args.restart))
        try:
            for step in call:
                if last is None and step.resumed:
                    bar.write("resuming the interrupted import from its checkpoint", file=sys.stderr)
                bar.set_description(f"importing {PHASE_NAMES.get(step.phase, '?')}")
                bar.update(step.total_done - bar.n)
                bar.set_postfix(requests=step.requests, rate_limited=step.rate_limited)
                last = step
        except KeyboardInterrupt:
            call.cancel()
            bar.write(
                "interrupted: run `syncmesh import crm` again to resume from the last checkpoint", file=sys.stderr
            )
            return 130
        except grpc.RpcError as exc:
            bar.write(f"syncmesh: import failed: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
    if last is None or not last.finished:
        print("syncmesh: the import stopped before finishing; run it again to resume", file=sys.stderr)
        return 1
    print(f"imported {last.total_done} objects ({last.requests} Stripe requests, {last.rate_limited} rate-limited)")
    return 0


def _definition() -> Listening:
    """This service's definition, imported only when a command runs (it loads the handlers)."""
    from services.crm_export.app import DEFINITION

    return DEFINITION

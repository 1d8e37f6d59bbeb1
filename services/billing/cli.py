"""`syncmesh import items FILE.csv [--dry-run]`: the price -> item data sheet, through gRPC."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import grpc
from syncmesh.billing.v1 import billing_service_pb2, billing_service_pb2_grpc
from tqdm import tqdm

from services.common.grpc_client import Listening, aio_channel, default_target
from services.common.settings import Settings, load_settings


def register(sub: Any, groups: dict[str, Any]) -> None:
    items = groups["import"].add_parser(
        "items",
        help="import the Stripe price -> ERP item mapping (CSV: stripe_price_id,erp_item_id), all or nothing",
    )
    items.add_argument("file", type=Path, help="CSV file with the header stripe_price_id,erp_item_id")
    items.add_argument("--dry-run", action="store_true", help="validate and report without changing anything")
    items.add_argument("--target", default=None, help="billing gRPC address (default 127.0.0.1:SYNCMESH_BILLING_PORT)")
    items.set_defaults(func=import_items)


def import_items(args: argparse.Namespace) -> int:
    path: Path = args.file
    try:
        data = path.read_bytes()
    except OSError as exc:
        print(f"syncmesh: cannot read {path}: {exc.strerror}", file=sys.stderr)
        return 2
    settings = load_settings()
    target = args.target or default_target(settings, _definition())
    try:
        reply = asyncio.run(_send(settings, target, data, args.dry_run))
    except grpc.aio.AioRpcError as exc:
        print(f"syncmesh: billing service at {target} refused the import: {exc.details()}", file=sys.stderr)
        return 1
    for line in report_lines(reply, path):
        print(line, file=sys.stderr if reply.problems else sys.stdout)
    return 1 if reply.problems else 0


async def _send(
    settings: Settings, target: str, data: bytes, dry_run: bool
) -> billing_service_pb2.ImportItemMappingsResponse:
    with tqdm(total=1, desc="importing items", unit="file", disable=not sys.stderr.isatty()) as bar:
        async with aio_channel(settings, target) as channel:
            stub = billing_service_pb2_grpc.BillingServiceStub(channel)  # type: ignore[no-untyped-call]
            reply: billing_service_pb2.ImportItemMappingsResponse = await stub.ImportItemMappings(
                billing_service_pb2.ImportItemMappingsRequest(csv=data, dry_run=dry_run), timeout=60
            )
        bar.update(1)
    return reply


def report_lines(reply: billing_service_pb2.ImportItemMappingsResponse, path: Path) -> list[str]:
    if reply.problems:
        lines = [f"{path}: {len(reply.problems)} problem(s); nothing was imported"]
        lines += [f"  line {p.line}: {p.field}: {p.message}" for p in reply.problems]
        return lines
    verb = "would import" if reply.dry_run else "imported"
    remapped = "would re-map" if reply.dry_run else "re-mapped"
    return [
        f"{path}: {verb} {reply.rows} mapping(s): {reply.created} new, {reply.updated} changed, "
        f"{reply.unchanged} unchanged; {remapped} {reply.lines_remapped} stored invoice line(s)"
    ]


def _definition() -> Listening:
    """This service's definition, imported only when a command runs (it loads the handlers)."""
    from services.billing.app import DEFINITION

    return DEFINITION

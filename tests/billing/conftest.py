"""Running the billing service for tests: real NATS, real PostgreSQL, gRPC on a free port."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import grpc
import pytest
from aiohttp import web
from syncmesh.billing.v1 import billing_service_pb2_grpc
from syncmesh.events.v1 import envelope_pb2

from services.billing.app import make_definition
from services.billing.settings import BillingSettings
from services.common.bus import Bus
from services.common.events import parse_event, to_envelope
from services.common.service import ServiceRuntime
from services.common.settings import Settings
from tests.conftest import eventually


class Billing:
    """A started billing service plus what a test needs to drive and read it."""

    def __init__(self, runtime: ServiceRuntime, channel: grpc.aio.Channel, settings: Settings) -> None:
        self.runtime = runtime
        self.channel = channel
        self.stub = billing_service_pb2_grpc.BillingServiceStub(channel)
        self.settings = settings

    async def publish(self, *events: dict[str, Any]) -> None:
        for evt in events:
            await publish(self.runtime.bus, evt)

    async def drained(self, count: int | None = None) -> None:
        """Wait until the consumer has nothing pending or unacked (and has seen `count` events)."""

        async def settled() -> bool:
            assert self.runtime.consumer is not None
            info = await self.runtime.bus.js.consumer_info("STRIPE", self.runtime.consumer.durable)
            seen = self.runtime.consumer.handled + self.runtime.consumer.duplicates
            return info.num_pending == 0 and info.num_ack_pending == 0 and (count is None or seen >= count)

        await eventually(settled, timeout=20)

    async def db(self) -> asyncpg.Connection:
        assert self.settings.database_url
        return await asyncpg.connect(self.settings.database_url, server_settings={"search_path": "billing"})


async def publish(bus: Bus, evt: dict[str, Any], *, msg_id: str | None = None) -> None:
    parsed = parse_event(json.dumps(evt).encode())
    await bus.publish(
        parsed.subject, to_envelope(parsed, source=envelope_pb2.EVENT_SOURCE_WEBHOOK), msg_id=msg_id or parsed.id
    )


StartBilling = Callable[..., Awaitable[Billing]]


@pytest.fixture
async def start_billing(settings: Settings) -> AsyncIterator[StartBilling]:
    """Start the service under a billing policy (and optional settings overrides)."""
    started: list[tuple[ServiceRuntime, grpc.aio.Channel]] = []

    async def start(policy: BillingSettings | None = None, **overrides: Any) -> Billing:
        run_settings = settings.with_overrides(**overrides) if overrides else settings
        runtime = ServiceRuntime(make_definition(policy or BillingSettings()), run_settings, port=0)
        await runtime.start()
        await runtime.wait_ready(20)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}")
        started.append((runtime, channel))
        return Billing(runtime, channel, run_settings)

    yield start
    for runtime, channel in started:
        await channel.close()
        # Bus.close() drains NATS, which waits its full 5 s timeout behind the consumer's pull
        # subscription (reported in the billing report); the tests have nothing left to flush.
        with contextlib.suppress(Exception):
            await runtime.bus.nc.close()
        await runtime.stop()


@asynccontextmanager
async def stripe_lines_server(
    lines_by_invoice: dict[str, list[dict[str, Any]]],
) -> AsyncIterator[tuple[str, list[str]]]:
    """A loopback stand-in for `GET /v1/invoices/{id}/lines`, paged like Stripe (limit, starting_after)."""
    calls: list[str] = []

    async def list_lines(request: web.Request) -> web.Response:
        invoice_id = request.match_info["invoice"]
        calls.append(request.path_qs)
        if not request.headers.get("Authorization", "").startswith("Bearer sk_test_"):
            return web.json_response({"error": {"type": "invalid_request_error", "message": "no key"}}, status=401)
        if invoice_id not in lines_by_invoice:
            return web.json_response(
                {"error": {"type": "invalid_request_error", "message": f"No such invoice: '{invoice_id}'"}}, status=404
            )
        lines = lines_by_invoice[invoice_id]
        limit = int(request.query.get("limit", "10"))
        after = request.query.get("starting_after")
        start = next((i + 1 for i, line in enumerate(lines) if line["id"] == after), 0) if after else 0
        page = lines[start : start + limit]
        return web.json_response(
            {
                "object": "list",
                "data": page,
                "has_more": start + limit < len(lines),
                "url": f"/v1/invoices/{invoice_id}/lines",
            }
        )

    app = web.Application()
    app.router.add_get("/v1/invoices/{invoice}/lines", list_lines)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}", calls
    finally:
        await runner.cleanup()


async def assert_invariants(conn: asyncpg.Connection, invoice_id: str) -> asyncpg.Record:
    """The ledger's rules for one invoice; returns the invoice row."""
    inv = await conn.fetchrow("SELECT * FROM invoices WHERE stripe_invoice_id = $1", invoice_id)
    assert inv is not None, f"no invoice {invoice_id}"
    lines = await conn.fetch("SELECT * FROM invoice_lines WHERE stripe_invoice_id = $1", invoice_id)
    items = sum(r["amount"] for r in lines if r["kind"] == "item")
    discounts = sum(r["amount"] for r in lines if r["kind"] == "discount")
    assert inv["lines_complete"], "invoice lines are incomplete"
    assert inv["total"] == items + discounts + inv["tax"], "total != lines + discounts + tax"
    assert inv["balanced"]
    paid = await conn.fetchval("SELECT COALESCE(sum(amount), 0) FROM payments WHERE stripe_invoice_id = $1", invoice_id)
    assert inv["amount_paid"] == paid + inv["unattributed_paid"]
    credits = await conn.fetchval(
        "SELECT COALESCE(sum(amount), 0) FROM credit_memos WHERE stripe_invoice_id = $1 AND status = 'issued' "
        "AND applied_to = 'invoice'",
        invoice_id,
    )
    assert inv["credits_applied"] == credits + inv["balance_applied"]
    if inv["erp_status"] == "draft":
        assert inv["amount_remaining"] == 0, "a draft owes nothing until Stripe finalizes it"
    elif inv["erp_status"] != "voided":
        assert inv["amount_remaining"] == inv["total"] - inv["amount_paid"] - inv["credits_applied"]
    for line in lines:
        scheduled = await conn.fetchval(
            "SELECT COALESCE(sum(amount), 0) FROM revenue_schedule WHERE stripe_invoice_id = $1 AND line_no = $2",
            invoice_id,
            line["line_no"],
        )
        assert scheduled == line["recognized_amount"], f"line {line['line_no']} schedule != recognised"
    return inv

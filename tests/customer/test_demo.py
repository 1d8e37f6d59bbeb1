from __future__ import annotations

import grpc

from services.common.service import ServiceRuntime
from services.customer.demo import demo_report
from tests.conftest import eventually
from tests.customer.support import current_customer, customer_event, publish


async def test_demo_prints_customers_with_their_erp_ids(runtime: ServiceRuntime) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{runtime.port}") as channel:
        assert await demo_report(channel) == ["customer: no customers recorded yet"]
        obj = current_customer()
        await publish(runtime.bus, customer_event("customer.created", obj, created=1_700_000_000))
        lines = await eventually(lambda: _ready(channel))
    assert lines[0] == "customer: 1 ERP customer record(s)"
    assert "CUST-000001" in lines[1] and obj["id"] in lines[1] and "Ada Lovelace" in lines[1]
    assert "-25.00 GBP" in lines[1] and "A***@Example.com" in lines[1]  # money one way, as everywhere
    assert "Ada.Lovelace@" not in "\n".join(lines)


async def _ready(channel: grpc.aio.Channel) -> list[str] | None:
    lines = await demo_report(channel)
    return lines if len(lines) > 1 else None

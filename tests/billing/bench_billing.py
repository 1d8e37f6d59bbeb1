"""Events per second one billing replica processes: `python -m tests.billing.bench_billing [--invoices N]`.

Starts a private nats-server and PostgreSQL (the embedded ones `syncmesh up` uses), pre-fills
the STRIPE stream with whole basil invoice lifecycles (finalized, paid, payment_succeeded,
invoice_payment.paid, and for one invoice in five a refund: refund.created + charge.refunded),
each invoice with two priced lines, a 20% coupon and sales tax, then starts ONE billing
replica and times the drain: from the moment its consumer exists until JetStream reports
nothing pending and nothing awaiting an ack. Then it checks that every event was recorded once
and every invoice is paid in full. Prints the figure; asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
from syncmesh.events.v1 import envelope_pb2

from services.billing.app import make_definition
from services.billing.settings import BillingSettings
from services.common.bus import STRIPE_STREAM, Bus
from services.common.embedded import NatsServer, PostgresServer
from services.common.events import parse_event, to_envelope
from services.common.service import ServiceRuntime
from services.common.settings import Settings
from tests.billing.builders import (
    PRICE_ADDON,
    InvoiceSpec,
    LineSpec,
    charge_object,
    invoice_object,
    invoice_payment_object,
    refund_object,
    stripe_event,
)

T0 = 1_750_000_000


def lifecycle(n: int) -> list[dict[str, Any]]:
    spec = InvoiceSpec(
        invoice_id=f"in_bench{n:08d}",
        customer=f"cus_bench{n % 997:05d}",
        lines=[LineSpec(quantity=1 + n % 5), LineSpec(price=PRICE_ADDON, unit=1500, quantity=1)],
        percent_off=20,
        tax_bps=825,
        created=T0 + n,
    )
    draft = invoice_object("basil", spec)
    total = draft["total"]
    paid = invoice_object("basil", spec, status="paid", amount_paid=total)
    t = T0 + n
    events = [
        stripe_event("invoice.finalized", draft, created=t),
        stripe_event("invoice.paid", paid, created=t + 60),
        stripe_event("invoice.payment_succeeded", paid, created=t + 60),
        stripe_event(
            "invoice_payment.paid",
            invoice_payment_object(spec, total, payment_id=f"inpay_b{n}", intent=f"pi_b{n}", paid_at=t + 60),
            created=t + 60,
        ),
    ]
    if n % 5 == 0:
        refund = refund_object(f"re_b{n}", 1000, charge=f"ch_b{n}", intent=f"pi_b{n}", currency="usd", created=t + 900)
        events += [
            stripe_event("refund.created", refund, created=t + 900),
            stripe_event(
                "charge.refunded",
                charge_object(
                    "basil", spec, total, charge_id=f"ch_b{n}", intent=f"pi_b{n}", created=t + 60, refunds=[refund]
                ),
                created=t + 900,
            ),
        ]
    for i, evt in enumerate(events):
        evt["id"] = f"evt_bench_{n:08d}_{i}"
    return events


async def prefill(bus: Bus, events: list[dict[str, Any]]) -> float:
    started = time.perf_counter()
    sem = asyncio.Semaphore(64)

    async def one(evt: dict[str, Any]) -> None:
        parsed = parse_event(json.dumps(evt, separators=(",", ":")).encode())
        async with sem:
            await bus.publish(
                parsed.subject, to_envelope(parsed, source=envelope_pb2.EVENT_SOURCE_WEBHOOK), msg_id=parsed.id
            )

    await asyncio.gather(*(one(e) for e in events))
    return len(events) / (time.perf_counter() - started)


async def bench(invoices: int, data: Path) -> None:
    nats = NatsServer(data / "nats")
    pg = PostgresServer(data / "pg")
    nats.start()
    pg.start()
    try:
        pg.ensure_database("bench")
        settings = Settings(
            nats_url=nats.url,
            database_url=pg.dsn("bench"),
            mode="test",
            publish_timeout_seconds=10.0,
        )
        events = [e for n in range(invoices) for e in lifecycle(n)]
        avg = sum(len(json.dumps(e)) for e in events[:200]) // 200
        bus = Bus(settings, name="bench-fill")
        await bus.start(wait=10)
        await bus.wait_ready(10)
        rate = await prefill(bus, events)
        await bus.close()
        print(f"pre-filled {len(events)} events ({invoices} invoices, ~{avg} B each) at {rate:.0f}/s")

        runtime = ServiceRuntime(make_definition(BillingSettings()), settings, port=0)
        await runtime.start()
        while runtime.consumer is None:  # noqa: ASYNC110 (the runtime offers no event for it)
            await asyncio.sleep(0.005)
        started = time.perf_counter()
        while True:
            try:
                info = await runtime.bus.js.consumer_info(STRIPE_STREAM, runtime.consumer.durable)
                if info.num_pending == 0 and info.num_ack_pending == 0 and runtime.consumer.handled >= len(events):
                    break
            except Exception:  # consumer not bound yet
                pass
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - started
        conn = await asyncpg.connect(pg.dsn("bench"), server_settings={"search_path": "billing"})
        try:
            processed = await conn.fetchval("SELECT count(*) FROM processed_events")
            paid = await conn.fetchval("SELECT count(*) FROM invoices WHERE erp_status = 'paid_in_full'")
            payments = await conn.fetchval("SELECT count(*) FROM payments")
        finally:
            await conn.close()
        await runtime.bus.nc.close()
        await runtime.stop()
        assert processed == len(events), (processed, len(events))
        assert paid == invoices == payments, (paid, invoices, payments)
        print(
            f"one billing replica drained {len(events)} events in {elapsed:.2f}s: "
            f"{len(events) / elapsed:.0f} events/s (batch {settings.fetch_batch}); "
            f"{paid} invoices paid in full, {payments} payments, each event recorded once"
        )
    finally:
        nats.stop()
        pg.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--invoices", type=int, default=2000, help="invoice lifecycles (about 4.4 events each)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="billing-bench-") as tmp:
        asyncio.run(bench(args.invoices, Path(tmp)))


if __name__ == "__main__":
    main()

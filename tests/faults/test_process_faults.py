"""Faults against real processes: `syncmesh serve` and `syncmesh gateway` run as subprocesses,
exactly as deployed, and each test ends by checking the exact expected ledger (nothing lost,
nothing doubled).

- a service SIGKILLed in the middle of a batch of 2,000 events, then restarted;
- NATS stopped while webhooks arrive: the gateway answers 503, Stripe-style retries succeed
  after NATS restarts, and what JetStream held before the stop is still there;
- a duplicate storm: every event of whole customer and invoice lifecycles three times,
  shuffled, through the gateway into all three services.

Recovery is bounded by SYNCMESH_ACK_WAIT_SECONDS=2: messages a killed process had fetched but
not acked come back after two seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import grpc
import nats
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from syncmesh.billing.v1 import billing_service_pb2 as billing_pb
from syncmesh.billing.v1 import billing_service_pb2_grpc
from syncmesh.crm_export.v1 import crm_export_service_pb2 as crm_pb
from syncmesh.crm_export.v1 import crm_export_service_pb2_grpc
from syncmesh.customer.v1 import customer_service_pb2 as customer_pb
from syncmesh.customer.v1 import customer_service_pb2_grpc
from syncmesh.customer.v1 import events_pb2 as customer_events_pb2
from syncmesh.events.v1 import envelope_pb2

from services.common.bus import EVENTS_STREAM, STRIPE_STREAM
from services.common.embedded import NatsServer, free_port
from services.common.events import parse_event, to_envelope
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
from tests.conftest import eventually
from tests.support.signing import TEST_SECRET, signed_request
from tests.support.stripe_events import fixture

GRPC_NAMES = {
    "customer": "syncmesh.customer.v1.CustomerService",
    "billing": "syncmesh.billing.v1.BillingService",
    "crm-export": "syncmesh.crm_export.v1.CrmExportService",
}
SCHEMAS = {"customer": "customer", "billing": "billing", "crm-export": "crm_export"}


# -- processes -------------------------------------------------------------------------------


@dataclass
class Proc:
    """One `python -m launcher.cli ...` process with its own log file."""

    name: str
    args: list[str]
    env: dict[str, str]
    log_path: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "launcher.cli", *self.args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""


@dataclass
class Mesh:
    nats_url: str
    database_url: str
    tmp: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, Proc] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("SYNCMESH_", "OTEL_"))}
        return {
            **base,
            "SYNCMESH_NATS_URL": self.nats_url,
            "SYNCMESH_DATABASE_URL": self.database_url,
            "SYNCMESH_WEBHOOK_SECRETS": TEST_SECRET,
            "SYNCMESH_MODE": "test",
            "SYNCMESH_ACK_WAIT_SECONDS": "2",
            "SYNCMESH_MAX_DELIVER": "20",
            "SYNCMESH_SHUTDOWN_GRACE_SECONDS": "2",
            "SYNCMESH_LOG_LEVEL": "WARNING",
            "OTEL_TRACES_EXPORTER": "none",
            **self.extra_env,
        }

    def add(self, name: str) -> Proc:
        port = free_port()
        args = ["gateway", "--port", str(port)] if name == "gateway" else ["serve", name, "--port", str(port)]
        proc = Proc(name, args, self.env(), self.tmp / f"{name}.log", port)
        self.procs[name] = proc
        proc.start()
        return proc

    async def ready(self, name: str, timeout: float = 60.0) -> None:
        proc = self.procs[name]

        async def check() -> bool:
            assert proc.process is not None
            if proc.process.poll() is not None:
                raise AssertionError(f"{name} exited with {proc.process.returncode}:\n{proc.log_tail()}")
            if name == "gateway":
                return await gateway_status(proc.port, "/readyz") == 200
            return await serving(proc.port, GRPC_NAMES[name])

        await eventually(check, timeout=timeout, interval=0.1)

    def stop_all(self) -> None:
        """SIGTERM to all at once (each drains in parallel), SIGKILL to any still up after 5 s."""
        for proc in self.procs.values():
            if proc.process is not None and proc.process.poll() is None:
                proc.process.terminate()
        for proc in self.procs.values():
            if proc.process is not None:
                try:
                    proc.process.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.procs['gateway'].port}/webhooks/stripe"

    def channel(self, name: str) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(f"127.0.0.1:{self.procs[name].port}")


async def serving(port: int, name: str) -> bool:
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=name), timeout=1
            )
            return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.aio.AioRpcError:
        return False


async def gateway_status(port: int, path: str) -> int:
    try:
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}{path}") as resp:
            return resp.status
    except aiohttp.ClientError:
        return 0


@pytest.fixture
def make_mesh(tmp_path: Path, database_url: str) -> Iterator[Any]:
    made: list[Mesh] = []

    def make(nats_url: str, **extra_env: str) -> Mesh:
        mesh = Mesh(nats_url, database_url, tmp_path, dict(extra_env))
        made.append(mesh)
        return mesh

    yield make
    for mesh in made:
        mesh.stop_all()


# -- reading state without touching stream config ----------------------------------------------


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(database_url)
    yield conn
    await conn.close()


async def count(conn: asyncpg.Connection, sql: str, *args: Any) -> int:
    try:
        return int(await conn.fetchval(sql, *args))
    except asyncpg.UndefinedTableError:
        return 0  # the service has not migrated yet


async def stream_state(nats_url: str, stream: str, subjects: str | None = None) -> Any:
    """The stream's state, on a connection of its own (a Bus would rewrite the stream config)."""
    nc = await nats.connect(nats_url, connect_timeout=2, allow_reconnect=False)
    try:
        return (await nc.jetstream().stream_info(stream, subjects_filter=subjects)).state
    finally:
        await nc.close()


async def consumers_drained(nats_url: str, durables: list[str]) -> bool:
    try:
        nc = await nats.connect(nats_url, connect_timeout=2, allow_reconnect=False)
    except Exception:
        return False
    try:
        js = nc.jetstream()
        for durable in durables:
            try:
                info = await js.consumer_info(STRIPE_STREAM, durable)
            except Exception:
                return False
            if info.num_pending or info.num_ack_pending:
                return False
        return True
    finally:
        await nc.close()


async def publish_direct(nats_url: str, events: list[dict[str, Any]]) -> None:
    """Events published as the gateway would, straight to JetStream (the stream must exist)."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        acks = []
        for evt in events:
            parsed = parse_event(json.dumps(evt).encode())
            body = to_envelope(parsed, source=envelope_pb2.EVENT_SOURCE_WEBHOOK)
            acks.append(js.publish(parsed.subject, body, headers={"Nats-Msg-Id": parsed.id}))
            if len(acks) == 200:
                await asyncio.gather(*acks)
                acks = []
        await asyncio.gather(*acks)
    finally:
        await nc.close()


async def wait_stream(nats_url: str, timeout: float = 30.0) -> None:
    async def exists() -> bool:
        try:
            await stream_state(nats_url, STRIPE_STREAM)
            return True
        except Exception:
            return False

    await eventually(exists, timeout=timeout, interval=0.1)


# -- events ------------------------------------------------------------------------------------

T0 = 1_750_000_000


def customer_object(i: int, name: str, **metadata: str) -> dict[str, Any]:
    obj = fixture("customer")
    obj.update(id=f"cus_fault{i:04d}", name=name, email=f"c{i}@example.com", metadata=metadata, created=T0)
    return obj


@dataclass(frozen=True)
class Lifecycle:
    """One customer with one invoice: created, renamed, invoiced, paid, partly refunded."""

    i: int
    events: list[dict[str, Any]]
    total: int

    @property
    def customer(self) -> str:
        return f"cus_fault{self.i:04d}"

    @property
    def invoice(self) -> str:
        return f"in_fault{self.i:04d}"

    @property
    def name(self) -> str:
        return f"Customer {self.i} Ltd"


REFUND = 2000


def lifecycle(i: int) -> Lifecycle:
    tc = T0 + i * 10
    t1 = T0 + 100_000 + i * 10
    spec = InvoiceSpec(
        invoice_id=f"in_fault{i:04d}",
        customer=f"cus_fault{i:04d}",
        subscription=f"sub_fault{i:04d}",
        number=f"FAULT-{i:04d}",
        created=t1,
        lines=[LineSpec(), LineSpec(price=PRICE_ADDON, unit=1500, quantity=1, description="Priority support")],
        percent_off=20,
        tax_bps=825,
    )
    paid = invoice_object("basil", spec, status="paid", amount_paid=0)
    total = int(paid["total"])
    paid = invoice_object("basil", spec, status="paid", amount_paid=total)
    charge, intent = f"ch_fault{i:04d}", f"pi_fault{i:04d}"
    refund = refund_object(f"re_fault{i:04d}", REFUND, charge=charge, intent=intent, currency="usd", created=t1 + 600)
    events = [
        stripe_event("customer.created", customer_object(i, f"Customer {i}"), created=tc),
        stripe_event("customer.updated", customer_object(i, f"Customer {i} Ltd"), created=tc + 5),
        stripe_event("invoice.created", invoice_object("basil", spec, status="draft"), created=t1),
        stripe_event("invoice.finalized", invoice_object("basil", spec), created=t1 + 1),
        stripe_event("invoice.paid", paid, created=t1 + 60),
        stripe_event("invoice.payment_succeeded", paid, created=t1 + 60),
        stripe_event(
            "invoice_payment.paid",
            invoice_payment_object(spec, total, payment_id=f"inpay_fault{i:04d}", intent=intent, paid_at=t1 + 60),
            created=t1 + 60,
        ),
        stripe_event(
            "charge.succeeded",
            charge_object("basil", spec, total, charge_id=charge, intent=intent, created=t1 + 60),
            created=t1 + 60,
        ),
        stripe_event("refund.created", refund, created=t1 + 600),
        stripe_event(
            "charge.refunded",
            charge_object("basil", spec, total, charge_id=charge, intent=intent, created=t1 + 60, refunds=[refund]),
            created=t1 + 600,
        ),
    ]
    for n, evt in enumerate(events):
        evt["id"] = f"evt_fault_{i:04d}_{n:02d}"
    return Lifecycle(i, events, total)


#: Events per lifecycle each service consumes (by its subjects).
PER_LIFECYCLE = {"customer": 2, "billing": 10, "crm-export": 4}


async def processed(db: asyncpg.Connection, service: str) -> int:
    return await count(db, f"SELECT count(*) FROM {SCHEMAS[service]}.processed_events")


async def wait_processed(db: asyncpg.Connection, nats_url: str, expected: dict[str, int], timeout: float) -> None:
    async def done() -> bool:
        for service, n in expected.items():
            if await processed(db, service) != n:
                return False
        return await consumers_drained(nats_url, list(expected))

    await eventually(done, timeout=timeout, interval=0.2)


async def assert_exact_records(mesh: Mesh, db: asyncpg.Connection, lifecycles: list[Lifecycle]) -> None:
    """Every service holds exactly one correct record per lifecycle, and nothing else."""
    n = len(lifecycles)
    assert await count(db, "SELECT count(*) FROM customer.customers") == n
    assert await count(db, "SELECT count(*) FROM billing.invoices") == n
    assert await count(db, "SELECT count(*) FROM billing.refunds") == n
    assert await count(db, "SELECT count(*) FROM crm_export.clients") == n
    assert await count(db, "SELECT count(*) FROM crm_export.contracts") == n
    async with mesh.channel("customer") as c, mesh.channel("billing") as b, mesh.channel("crm-export") as r:
        customers = customer_service_pb2_grpc.CustomerServiceStub(c)  # type: ignore[no-untyped-call]
        billing = billing_service_pb2_grpc.BillingServiceStub(b)  # type: ignore[no-untyped-call]
        crm = crm_export_service_pb2_grpc.CrmExportServiceStub(r)  # type: ignore[no-untyped-call]
        for life in lifecycles:
            record = (
                await customers.GetCustomer(customer_pb.GetCustomerRequest(stripe_customer_id=life.customer))
            ).customer
            assert (record.name, record.email, record.active) == (life.name, f"c{life.i}@example.com", True)
            invoice = (await billing.GetInvoice(billing_pb.GetInvoiceRequest(invoice_id=life.invoice))).invoice
            assert invoice.status == billing_pb.INVOICE_STATUS_PAID_IN_FULL and invoice.stripe_status == "paid"
            assert (invoice.total.amount_minor, invoice.amount_paid.amount_minor) == (life.total, life.total)
            kinds = Counter(line.kind for line in invoice.lines)
            assert invoice.amount_remaining.amount_minor == 0
            assert kinds == {billing_pb.LINE_KIND_ITEM: 2, billing_pb.LINE_KIND_DISCOUNT: 1}
            payments = (await billing.ListPayments(billing_pb.ListPaymentsRequest(invoice_id=life.invoice))).payments
            assert sum(p.amount.amount_minor for p in payments) == life.total
            refunds = (await billing.ListRefunds(billing_pb.ListRefundsRequest(invoice_id=life.invoice))).refunds
            assert [r.amount.amount_minor for r in refunds] == [REFUND]
            client = (await crm.GetClient(crm_pb.GetClientRequest(client_id=life.customer))).client
            assert (client.name, client.deleted) == (life.name, False)
            contract = (await crm.GetContract(crm_pb.GetContractRequest(contract_id=life.invoice))).contract
            assert (contract.status, contract.total.amount_minor) == ("paid", life.total)


# -- (a) SIGKILL in the middle of a batch ------------------------------------------------------


def renames(customers: int) -> list[dict[str, Any]]:
    """Five events per customer (created, then four renames with a new ERP link each), each
    changing the customer service's record and the billing service's customer link."""
    events = []
    for i in range(customers):
        for step in range(5):
            name = f"Final {i}" if step == 4 else f"Name {i}.{step}"
            kind = "customer.created" if step == 0 else "customer.updated"
            obj = customer_object(i, name, erp_customer_id=f"NS-{i}-{step}")
            evt = stripe_event(kind, obj, created=T0 + step)
            evt["id"] = f"evt_kill_{i:04d}_{step}"
            events.append(evt)
    return events


async def test_sigkill_mid_batch_then_restart_leaves_the_exact_ledger(
    make_mesh: Any, nats_url: str, db: asyncpg.Connection
) -> None:
    # Enough that a service draining ~6,000 events/s is still busy when the poll below sees 300.
    customers = 800
    events = renames(customers)
    assert len(events) == 4000
    mesh = make_mesh(nats_url, SYNCMESH_FETCH_BATCH="100")
    for name in ("customer", "billing"):
        mesh.add(name)
    await wait_stream(nats_url)
    await publish_direct(nats_url, events)

    # Kill each service while it is busy: some batches committed, the next fetched and in flight.
    running = {"customer", "billing"}

    async def kill_when_busy() -> bool:
        for name in sorted(running):
            if await processed(db, name) >= 300:
                mesh.procs[name].kill()
                running.discard(name)
        return not running

    await eventually(kill_when_busy, timeout=60, interval=0.01)
    before = {name: await processed(db, name) for name in ("customer", "billing")}
    assert all(n < 4000 for n in before.values()), f"killed too late to test anything: {before}"
    nc = await nats.connect(nats_url)
    try:
        unacked = {name: (await nc.jetstream().consumer_info(STRIPE_STREAM, name)).num_ack_pending for name in before}
    finally:
        await nc.close()
    assert any(unacked.values()), "a batch was fetched and not acked when the process died"

    for name in ("customer", "billing"):
        mesh.procs[name].start()
    await wait_processed(db, nats_url, {"customer": 4000, "billing": 4000}, timeout=90)

    published = {e["id"] for e in events}
    for schema in ("customer", "billing"):
        ids = {r["event_id"] for r in await db.fetch(f"SELECT event_id FROM {schema}.processed_events")}
        assert ids == published  # every event once: the table's key makes a second time impossible
    rows = await db.fetch("SELECT stripe_customer_id, name, active FROM customer.customers")
    assert sorted((r["stripe_customer_id"], r["name"], r["active"]) for r in rows) == sorted(
        (f"cus_fault{i:04d}", f"Final {i}", True) for i in range(customers)
    )
    # One history row per event handled (the customer service records stale ones too; billing
    # only changes): a handler run twice would have left two.
    for table in ("customer.customer_history", "billing.record_history"):
        history = Counter(r["stripe_event_id"] for r in await db.fetch(f"SELECT stripe_event_id FROM {table}"))
        assert set(history.values()) == {1}, table
        assert set(history) == published if table.startswith("customer") else set(history) <= published
    links = await db.fetch("SELECT stripe_customer_id, erp_customer_id FROM billing.customers")
    assert sorted((r["stripe_customer_id"], r["erp_customer_id"]) for r in links) == sorted(
        (f"cus_fault{i:04d}", f"NS-{i}-4") for i in range(customers)
    )

    # Announcements: one per state a record actually took, none doubled. After the restart the
    # killed batch comes back only after ack_wait, behind newer events of the same customers,
    # so some older states arrive stale and are (rightly) never announced.
    outbox = await db.fetch("SELECT subject, msg_id, payload FROM customer.outbox")
    by_subject = Counter(r["subject"] for r in outbox)
    applied = await count(db, "SELECT count(*) FROM customer.customer_history WHERE outcome <> 'stale'")
    assert by_subject == {
        "syncmesh.customer.customer_upserted": applied,
        "syncmesh.customer.customer_linked": customers,
    }
    states: Counter[tuple[str, str]] = Counter()
    for row in outbox:
        if row["subject"].endswith("customer_upserted"):
            message = customer_events_pb2.CustomerUpserted.FromString(row["payload"])
            states[(message.customer.stripe_customer_id, message.customer.name)] += 1
    assert set(states.values()) == {1}, "a record state announced twice"
    assert {(f"cus_fault{i:04d}", f"Final {i}") for i in range(customers)} <= set(states)

    async def relayed() -> bool:
        unpublished = await count(db, "SELECT count(*) FROM customer.outbox WHERE published_at IS NULL")
        state = await stream_state(nats_url, EVENTS_STREAM, "syncmesh.customer.>")
        return unpublished == 0 and int(state.messages) > 0

    await eventually(relayed, timeout=30, interval=0.2)
    state = await stream_state(nats_url, EVENTS_STREAM, "syncmesh.customer.>")
    assert int(state.messages) == len(outbox)


# -- (b) NATS stopped while webhooks arrive ---------------------------------------------------


async def deliver_until_accepted(
    http: aiohttp.ClientSession, url: str, evt: dict[str, Any], deadline: float, note: Callable[[int], None]
) -> None:
    """Stripe's retries, compressed: the same body and signature until a 2xx (or `deadline`, on
    the loop's clock); `note` hears each attempt's status (0: no answer)."""
    body, headers = signed_request(evt)
    delay = 0.2
    loop = asyncio.get_running_loop()
    while loop.time() < deadline:
        try:
            async with http.post(url, data=body, headers=headers) as resp:
                note(resp.status)
                if 200 <= resp.status < 300:
                    return
        except aiohttp.ClientError:
            note(0)
        await asyncio.sleep(delay)
        delay = min(delay * 2, 1.0)
    raise AssertionError(f"{evt['id']} never accepted")


async def stripe_like_delivery(
    http: aiohttp.ClientSession, url: str, evt: dict[str, Any], statuses: list[int], deadline: float
) -> None:
    await deliver_until_accepted(http, url, evt, deadline, statuses.append)


async def test_nats_stopped_while_webhooks_arrive(make_mesh: Any, own_nats: NatsServer, db: asyncpg.Connection) -> None:
    before, during = [lifecycle(i) for i in range(8)], [lifecycle(i) for i in range(8, 16)]
    mesh = make_mesh(own_nats.url, SYNCMESH_PUBLISH_TIMEOUT_SECONDS="0.5")
    for name in ("gateway", "customer", "billing", "crm-export"):
        mesh.add(name)
    for name in mesh.procs:
        await mesh.ready(name)
    loop = asyncio.get_running_loop()
    async with aiohttp.ClientSession() as http:
        first: list[int] = []
        for life in before:
            for evt in life.events:
                await stripe_like_delivery(http, mesh.webhook_url, evt, first, loop.time() + 10)
        assert set(first) == {200}
        assert int((await stream_state(own_nats.url, STRIPE_STREAM)).messages) == 80

        own_nats.stop()
        await eventually(lambda: _status_is(mesh, "/readyz", 503), timeout=15)
        attempts: dict[str, list[int]] = {}
        deliveries = []
        for life in during:
            for evt in life.events:
                attempts[evt["id"]] = []
                deliveries.append(
                    asyncio.create_task(
                        stripe_like_delivery(http, mesh.webhook_url, evt, attempts[evt["id"]], loop.time() + 60)
                    )
                )
        # Every event is refused at least once while NATS is down, then NATS comes back.
        await eventually(lambda: all(a and a[0] == 503 for a in attempts.values()), timeout=20)
        own_nats.start()
        await asyncio.gather(*deliveries)
    assert all(a[0] == 503 and a[-1] == 200 for a in attempts.values())
    assert not any(s not in (200, 503) for a in attempts.values() for s in a)

    # What was on disk before the stop survived it; the retries added exactly the rest.
    state = await stream_state(own_nats.url, STRIPE_STREAM)
    assert int(state.messages) == 160 and int(state.first_seq) == 1
    lives = before + during
    await wait_processed(db, own_nats.url, {s: n * len(lives) for s, n in PER_LIFECYCLE.items()}, timeout=60)
    await assert_exact_records(mesh, db, lives)


async def _status_is(mesh: Mesh, path: str, status: int) -> bool:
    return await gateway_status(mesh.procs["gateway"].port, path) == status


# -- (c) a duplicate storm through the gateway -------------------------------------------------


async def test_duplicate_storm_through_the_gateway_gives_the_exact_records(
    make_mesh: Any, nats_url: str, db: asyncpg.Connection
) -> None:
    lives = [lifecycle(i) for i in range(20)]
    deliveries = [evt for life in lives for evt in life.events] * 3
    random.Random(1729).shuffle(deliveries)
    # A 1 s JetStream dedup window, so the repeats sent in later rounds reach the services
    # (as Stripe's retries hours apart do): only the services' idempotency stands between a
    # repeat and a double effect.
    mesh = make_mesh(nats_url, SYNCMESH_STREAM_DUPLICATE_WINDOW_SECONDS="1")
    for name in ("gateway", "customer", "billing", "crm-export"):
        mesh.add(name)
    for name in mesh.procs:
        await mesh.ready(name)
    statuses: list[int] = []
    semaphore = asyncio.Semaphore(16)
    async with aiohttp.ClientSession() as http:

        async def send(evt: dict[str, Any]) -> None:
            async with semaphore:
                body, headers = signed_request(evt)
                async with http.post(mesh.webhook_url, data=body, headers=headers) as resp:
                    statuses.append(resp.status)

        third = len(deliveries) // 3
        for round_no in range(3):
            await asyncio.gather(*(send(e) for e in deliveries[round_no * third : (round_no + 1) * third]))
            await asyncio.sleep(1.2)  # let the dedup window pass (not an assertion)
    assert statuses == [200] * len(deliveries)
    in_stream = int((await stream_state(nats_url, STRIPE_STREAM)).messages)
    assert 200 < in_stream <= 600, "repeats reached the stream, so the services saw them"

    await wait_processed(db, nats_url, {s: n * len(lives) for s, n in PER_LIFECYCLE.items()}, timeout=60)
    await assert_exact_records(mesh, db, lives)
    # The customer service announced each customer's two states once each, whatever arrived when.
    outbox = Counter(r["subject"] for r in await db.fetch("SELECT subject FROM customer.outbox"))
    assert outbox["syncmesh.customer.customer_linked"] == len(lives)
    assert len(lives) <= outbox["syncmesh.customer.customer_upserted"] <= 2 * len(lives)

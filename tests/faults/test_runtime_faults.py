"""Faults against the shared runtime with real processes: PostgreSQL stopped mid-stream, two
replicas on one durable consumer, webhook floods of bad requests beside good ones."""

from __future__ import annotations

import asyncio
import io
import json
import random

import aiohttp
import asyncpg
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from syncmesh.events.v1 import envelope_pb2

from gateway.app import Gateway
from services.common.bus import STRIPE_STREAM, Bus
from services.common.embedded import PostgresServer
from services.common.events import parse_event, to_envelope
from services.common.service import ServiceRuntime
from services.common.settings import Settings
from tests.common import toy_service
from tests.conftest import eventually
from tests.support.signing import sign, signed_request
from tests.support.stripe_events import event, fixture


def customer_event(customer_id: str) -> dict:
    obj = fixture("customer")
    obj["id"] = customer_id
    obj["metadata"] = {}
    return event("customer.updated", obj)


async def publish(bus: Bus, evt: dict) -> None:
    parsed = parse_event(json.dumps(evt).encode())
    await bus.publish(parsed.subject, to_envelope(parsed, source=envelope_pb2.EVENT_SOURCE_WEBHOOK), msg_id=parsed.id)


async def applied(dsn: str) -> dict[str, int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT object_id, times_applied FROM toy.toy_records")
        return {r["object_id"]: r["times_applied"] for r in rows}
    finally:
        await conn.close()


async def health(port: int, name: str) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=name), timeout=2)
        return int(reply.status)


async def test_postgres_stopped_while_consuming_then_catches_up(
    own_postgres: PostgresServer, settings: Settings
) -> None:
    settings = settings.with_overrides(database_url=own_postgres.url)
    rt = ServiceRuntime(toy_service.DEFINITION, settings, port=0)
    await rt.start()
    try:
        await rt.wait_ready(20)
        for i in range(20):
            await publish(rt.bus, customer_event(f"cus_pg_{i}"))
        await eventually(lambda: _count(own_postgres.url, 20), timeout=20)

        own_postgres.stop()
        name = toy_service.DEFINITION.grpc_service_name
        await eventually(lambda: _status_is(rt.port, name, health_pb2.HealthCheckResponse.NOT_SERVING), timeout=15)
        for i in range(20, 60):  # arrive while the database is down
            await publish(rt.bus, customer_event(f"cus_pg_{i}"))
        await asyncio.sleep(1.0)

        own_postgres.start()
        await eventually(lambda: _status_is(rt.port, name, health_pb2.HealthCheckResponse.SERVING), timeout=30)
        final = await eventually(lambda: _count(own_postgres.url, 60), timeout=60)
        assert set(final.values()) == {1}, "every event applied exactly once"
    finally:
        await rt.stop()


async def test_a_database_outage_longer_than_every_retry_dead_letters_nothing(
    own_postgres: PostgresServer, settings: Settings
) -> None:
    """An unavailable database is not a poison message. With two attempts allowed (0.5 s of
    backoff between them), PostgreSQL stays down for eight seconds while events wait: before,
    every one of them went to the dead-letter stream ("gave up after 2 attempts: database: ...");
    now they wait, the consumer fetches nothing meanwhile, and each is applied once."""
    settings = settings.with_overrides(database_url=own_postgres.url, max_deliver=2)
    rt = ServiceRuntime(toy_service.DEFINITION, settings, port=0)
    await rt.start()
    try:
        await rt.wait_ready(20)
        await publish(rt.bus, customer_event("cus_before"))
        await eventually(lambda: _count(own_postgres.url, 1), timeout=20)
        own_postgres.stop()
        for i in range(30):
            await publish(rt.bus, customer_event(f"cus_outage_{i}"))
        await asyncio.sleep(8)
        own_postgres.start()
        final = await eventually(lambda: _count(own_postgres.url, 31), timeout=60)
        assert set(final.values()) == {1}, "every event applied exactly once"
        assert rt.consumer is not None and rt.consumer.dead_lettered == 0
    finally:
        await rt.stop()


async def _count(dsn: str, expected: int) -> dict[str, int] | None:
    try:
        rows = await applied(dsn)
    except (OSError, asyncpg.PostgresError):
        return None
    return rows if len(rows) == expected else None


async def _status_is(port: int, name: str, status: int) -> bool:
    try:
        return await health(port, name) == status
    except grpc.aio.AioRpcError:
        return False


async def test_two_replicas_share_the_work_without_double_effects(settings: Settings) -> None:
    replicas = [ServiceRuntime(toy_service.DEFINITION, settings, port=0) for _ in range(2)]
    for rt in replicas:
        await rt.start()
    try:
        for rt in replicas:
            await rt.wait_ready(20)
        events = [customer_event(f"cus_r_{i % 50}") for i in range(300)]
        events += random.Random(7).sample(events, 100)  # redeliveries from Stripe: same ids again
        for evt in events:
            await publish(replicas[0].bus, evt)

        async def all_done() -> bool:
            conn = await asyncpg.connect(settings.database_url)
            try:
                return int(await conn.fetchval("SELECT count(*) FROM toy.processed_events")) == 300
            finally:
                await conn.close()

        await eventually(all_done, timeout=60)
        final = await applied(settings.database_url)
        assert len(final) == 50 and sum(final.values()) == 300  # 6 distinct events per object, each once
        assert all(rt.consumer.handled > 0 for rt in replicas), "both replicas took part"
    finally:
        for rt in replicas:
            await rt.stop()


async def test_flood_of_bad_webhooks_does_not_disturb_good_ones(settings: Settings) -> None:
    gw = Gateway(settings, port=0, host="127.0.0.1")
    await gw.start()
    try:
        await gw.bus.wait_ready(10)
        url = f"http://127.0.0.1:{gw.port}/webhooks/stripe"
        good = [signed_request(customer_event(f"cus_g_{i}")) for i in range(50)]
        bad: list[tuple[bytes, dict[str, str], int]] = []
        for i in range(150):
            body = json.dumps(customer_event(f"cus_b_{i}")).encode()
            bad.append((body, {"Stripe-Signature": sign(body, "whsec_attacker")}, 400))
        huge = b"{" + b" " * (settings.max_body_bytes + 10) + b"}"
        bad += [(huge, {"Stripe-Signature": sign(huge)}, 413)] * 20
        jobs = [(b, h, 200) for b, h in good] + bad
        random.Random(3).shuffle(jobs)
        async with aiohttp.ClientSession() as http:

            async def send(body: bytes, headers: dict[str, str]) -> int:
                # A stream, not bytes: aiohttp warns on a bytes body over 1 MB; same bytes on the wire.
                async with http.post(url, data=io.BytesIO(body), headers=headers) as resp:
                    return resp.status

            statuses = await asyncio.gather(*(send(b, h) for b, h, _ in jobs))
        assert statuses == [expected for _, _, expected in jobs]
        info = await gw.bus.js.stream_info(STRIPE_STREAM)
        assert info.state.messages == 50
    finally:
        await gw.stop()

"""PostgreSQL failover while the services write: the primary SIGKILLed mid-delivery, the
synchronous standby promoted one second or one minute later.

The services are given both hosts in libpq's form with `target_session_attrs=read-write`, as
they would be given CloudNativePG's `-rw` service, and must find the new primary by themselves.
The outage is a dependency being unavailable, not a poison message: with SYNCMESH_MAX_DELIVER
at 3, a single event dead-lettered for it fails the test. Health must say NOT_SERVING while
the database is gone, and every ledger must come out exact, every event applied once, every
domain event announced once.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import nats
import pytest

from services.common.bus import DLQ_STREAM
from services.common.embedded import PostgresPair
from tests.clusters.delivery import deliver_steadily, domain_events_once
from tests.conftest import eventually
from tests.faults.test_process_faults import (
    GRPC_NAMES,
    PER_LIFECYCLE,
    Mesh,
    assert_exact_records,
    lifecycle,
    serving,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SERVICES = tuple(PER_LIFECYCLE)
#: How soon after the promotion every service is SERVING and consuming again: the bound this
#: test holds the runtime to (database health is checked every second; reconnects back off to 5 s).
RECONNECT_BOUND_SECONDS = 10.0


async def _all_processed(pair: PostgresPair, total: int) -> bool:
    try:
        conn = await asyncpg.connect(pair.url, timeout=2)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    try:
        for service, per in PER_LIFECYCLE.items():
            schema = service.replace("-", "_")
            if await conn.fetchval(f"SELECT count(*) FROM {schema}.processed_events") != per * total:
                return False
            if await conn.fetchval(f"SELECT count(*) FROM {schema}.outbox WHERE published_at IS NULL"):
                return False
        return True
    finally:
        await conn.close()


@pytest.mark.parametrize("promote_after", [1.0, 60.0], ids=["promoted-after-1s", "promoted-after-60s"])
async def test_standby_promoted_while_services_write(
    pg_pair: PostgresPair, nats_url: str, tmp_path: Path, promote_after: float
) -> None:
    mesh = Mesh(nats_url, pg_pair.url, tmp_path, {"SYNCMESH_MAX_DELIVER": "3"})
    try:
        for name in ("gateway", *SERVICES):
            mesh.add(name)
        for name in mesh.procs:
            await mesh.ready(name, timeout=60)
        lives = [lifecycle(i) for i in range(80)]
        sending = asyncio.create_task(deliver_steadily(mesh.webhook_url, lives, rate=40))
        await asyncio.sleep(4)  # some of every service's work committed, more arriving
        pg_pair.primary.kill()
        died = time.monotonic()

        not_serving: set[str] = set()

        async def watch() -> None:
            while True:
                for service in SERVICES:
                    if not await serving(mesh.procs[service].port, GRPC_NAMES[service]):
                        not_serving.add(service)
                await asyncio.sleep(0.2)

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(promote_after)
        pg_pair.standby.promote()
        promoted = time.monotonic()

        async def all_serving() -> bool:
            return all([await serving(mesh.procs[s].port, GRPC_NAMES[s]) for s in SERVICES])

        await eventually(all_serving, timeout=60, interval=0.1)
        back_after = time.monotonic() - promoted
        watcher.cancel()
        attempts = await sending
        await eventually(lambda: _all_processed(pg_pair, len(lives)), timeout=120, interval=0.2)
        drained_after = time.monotonic() - promoted

        assert not_serving == set(SERVICES), f"health said SERVING without a database: {not_serving}"
        assert back_after <= RECONNECT_BOUND_SECONDS, f"services came back {back_after:.1f} s after the promotion"
        assert all(a[-1][1] == 200 for a in attempts.values()), "the gateway needs no database"
        nc = await nats.connect(nats_url)
        try:
            dead = (await nc.jetstream().stream_info(DLQ_STREAM)).state.messages
        finally:
            await nc.close()
        assert dead == 0, f"{dead} events dead-lettered for a database outage"
        conn = await asyncpg.connect(pg_pair.url)
        try:
            for service, per in PER_LIFECYCLE.items():
                ids = [
                    r[0] for r in await conn.fetch(f"SELECT event_id FROM {service.replace('-', '_')}.processed_events")
                ]
                assert len(ids) == len(set(ids)) == per * len(lives)
            await assert_exact_records(mesh, conn, lives)
            await domain_events_once(nats_url.split(","), conn)
        finally:
            await conn.close()
        print(
            f"\n[primary SIGKILLed, standby promoted {promote_after:.0f} s later] {len(attempts)} webhooks at "
            f"40/s, all 200; every service NOT_SERVING in between and SERVING {back_after:.1f} s after the "
            f"promotion ({promoted - died + back_after:.1f} s after the kill); all applied "
            f"{drained_after:.1f} s after the promotion; dead-lettered 0, lost 0, doubled 0, announced twice 0"
        )
    finally:
        mesh.stop_all()

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


async def _shortfall(pair: PostgresPair, total: int) -> str:
    """What is still missing ("" when every service applied every event and announced it)."""
    try:
        conn = await asyncpg.connect(pair.url, timeout=2)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"no connection: {exc}"
    try:
        missing = []
        for service, per in PER_LIFECYCLE.items():
            schema = service.replace("-", "_")
            applied = await conn.fetchval(f"SELECT count(*) FROM {schema}.processed_events")
            unpublished = await conn.fetchval(f"SELECT count(*) FROM {schema}.outbox WHERE published_at IS NULL")
            if applied != per * total or unpublished:
                missing.append(f"{service}: {applied} of {per * total} applied, {unpublished} outbox rows unpublished")
        return "; ".join(missing)
    finally:
        await conn.close()


async def _all_processed(pair: PostgresPair, total: int) -> bool:
    return not await _shortfall(pair, total)


async def _dead_letters(nats_url: str) -> int:
    nc = await nats.connect(nats_url)
    try:
        return (await nc.jetstream().stream_info(DLQ_STREAM)).state.messages
    finally:
        await nc.close()


def _warnings(mesh: Mesh) -> str:
    """Each process's distinct warnings and errors, counted: what a failure here needs to be read."""
    out = []
    for name, proc in mesh.procs.items():
        seen: dict[str, int] = {}
        text = proc.log_path.read_text(errors="replace") if proc.log_path.exists() else ""
        for line in text.splitlines():
            if '"INFO"' in line or '"DEBUG"' in line:
                continue
            message = line.split('"message": ', 1)[-1][:240]
            seen[message] = seen.get(message, 0) + 1
        out += [f"{name} x{n}: {m}" for m, n in sorted(seen.items(), key=lambda kv: -kv[1])[:15]]
    return "\n".join(out)


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
        try:
            await eventually(lambda: _all_processed(pg_pair, len(lives)), timeout=120, interval=0.2)
        except AssertionError:
            raise AssertionError(
                f"not all applied 120 s after the promotion: {await _shortfall(pg_pair, len(lives))}; "
                f"dead-lettered {await _dead_letters(nats_url)}\n{_warnings(mesh)}"
            ) from None
        drained_after = time.monotonic() - promoted

        assert not_serving == set(SERVICES), f"health said SERVING without a database: {not_serving}"
        assert back_after <= RECONNECT_BOUND_SECONDS, f"services came back {back_after:.1f} s after the promotion"
        assert all(a[-1][1] == 200 for a in attempts.values()), "the gateway needs no database"
        dead = await _dead_letters(nats_url)
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

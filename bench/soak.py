"""7. Soak (only with --soak, never in CI): an hour at 300 webhooks/s while a service, NATS and
PostgreSQL are each killed (SIGKILL) and restarted in turn every 5 minutes.

Webhooks are retried Stripe-style through the outages (backoff up to a minute). At the end,
once every service has drained, each event the gateway answered 2xx must be in the idempotency
record of every service subscribed to it (nothing lost; the record is keyed by event id, so
nothing can be applied twice), and the resident memory of every process, sampled each
interval, must stay flat.
"""

from __future__ import annotations

import asyncio
import time

import asyncpg

from bench.consumer import subject_matches
from bench.env import definition
from bench.events import workload
from bench.loadgen import run_in_process
from bench.stats import fmt
from bench.suite import Mesh, Suite
from services.common.events import subject_for

TITLE = "7. Soak"
RATE = 300.0
SOAK_RETRIES = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)


async def _chaos(suite: Suite, mesh: Mesh, interval: float, stop: asyncio.Event, log: list[str]) -> None:
    victims = [*mesh.services, "nats", "postgres"]
    turn = 0
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), interval)
            return
        except TimeoutError:
            pass
        victim = victims[turn % len(victims)]
        turn += 1
        began = time.monotonic()
        if victim == "nats":
            suite.env.nats.kill()
            await asyncio.sleep(1)
            suite.env.nats.start()
        elif victim == "postgres":
            suite.env.pg.kill()
            await asyncio.sleep(1)
            suite.env.pg.start()
        else:
            mesh.services[victim].kill()
            await asyncio.sleep(1)
            mesh.services[victim] = await suite.env.start_service(victim, mesh.database)
        entry = f"killed and restarted {victim} ({time.monotonic() - began:.1f} s)"
        log.append(entry)
        suite.say(f"    soak: {entry}")


async def run(suite: Suite) -> None:
    if not suite.ready_services():
        suite.skip(TITLE, "no service can be loaded yet")
        return
    mesh = await suite.start_mesh()
    await suite.mesh_idle(TITLE)
    duration = suite.config.soak_minutes * 60
    interval = min(300.0, duration / 4)
    stop = asyncio.Event()
    chaos_log: list[str] = []
    memory: dict[str, list[tuple[int, int]]] = {}  # name -> (pid, RSS KiB); a restart starts afresh
    delivered: list[tuple[str, str]] = []  # (event id, type) answered 2xx in the end
    failed = 0
    chaos = asyncio.get_running_loop().create_task(_chaos(suite, mesh, interval, stop, chaos_log))
    started = time.monotonic()
    next_sample = started + interval / 2
    async with suite.measuring(TITLE):
        try:
            while time.monotonic() - started < duration:
                events = workload(int(RATE * 60), tag=suite.tag())
                result = await run_in_process(
                    mesh.url, events, RATE, retry_delays=SOAK_RETRIES, drain_timeout=120, connections=64
                )
                mesh.webhooks_sent += len(events)
                for event, outcome in zip(events, result.outcomes, strict=True):
                    if outcome.delivered:
                        delivered.append((event.id, event.type))
                    else:
                        failed += 1
                suite.say(
                    f"    soak {(time.monotonic() - started) / 60:.1f} min: {len(delivered):,} delivered, "
                    f"{failed} never delivered, {result.retries} retries"
                )
                if time.monotonic() >= next_sample:
                    _sample(mesh, memory)
                    next_sample += interval
        finally:
            stop.set()
            await chaos
    await suite.mesh_idle(TITLE, 180)
    _sample(mesh, memory)
    lost = suite.figure(TITLE, "soak.lost", "events answered 2xx but missing from a service", "events", target=0)
    suite.record(lost, await _lost(suite, mesh, delivered))
    undelivered = suite.figure(TITLE, "soak.undelivered", "webhooks never answered 2xx after retries", "webhooks")
    suite.record(undelivered, failed)
    for name, pairs in memory.items():
        samples = [rss for pid, rss in pairs if pid == pairs[-1][0]]  # the last incarnation only
        if len(samples) >= 2 and samples[0]:
            figure = suite.figure(TITLE, f"soak.memory.{name}", f"{name}: RSS growth over the soak", "%", target=10)
            suite.record(figure, (samples[-1] - samples[0]) / samples[0] * 100)
            figure.notes.append("RSS samples (MiB): " + ", ".join(fmt(s / 1024) for s in samples))
    suite.note(TITLE, "; ".join(chaos_log) or "no fault injected (soak shorter than one interval)")


def _sample(mesh: Mesh, memory: dict[str, list[tuple[int, int]]]) -> None:
    for name, proc in mesh.processes().items():
        if proc.alive:
            memory.setdefault(name, []).append((proc.pid, proc.rss_kib()))


async def _lost(suite: Suite, mesh: Mesh, delivered: list[tuple[str, str]]) -> int:
    conn = await asyncpg.connect(suite.env.pg.dsn(mesh.database))
    missing = 0
    try:
        for name in mesh.services:
            spec = definition(name)
            wanted = {
                eid for eid, etype in delivered if any(subject_matches(p, subject_for(etype)) for p in spec.subjects)
            }
            rows = await conn.fetch(
                f"SELECT event_id FROM {spec.schema}.processed_events WHERE event_id = ANY($1::text[])", list(wanted)
            )
            gone = len(wanted) - len(rows)
            missing += gone
            if gone:
                suite.note(TITLE, f"{name}: {gone} of {len(wanted)} delivered events missing")
    finally:
        await conn.close()
    return missing

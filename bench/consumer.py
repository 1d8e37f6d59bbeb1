"""3. Consumer throughput: how fast each service drains a pre-filled STRIPE stream.

The stream is filled with N envelopes (whole lifecycles, as the gateway would publish them);
then each service starts in its own process on a fresh database with a fresh durable and is
timed from the moment its consumer appears until JetStream reports nothing pending and nothing
awaiting an ack (consumer_info num_pending / num_ack_pending). The count of rows in its
idempotency record afterwards must equal the events it subscribes to: nothing lost, nothing
applied twice. The toy service of the runtime's tests (with every subject) gives the runtime's
own ceiling, before any real handler work.

Then a trickle: the same service on a fresh database gets its events one at a time, each published
only once the one before is acked, so every event is a batch of its own (concurrency 1, where most
Stripe accounts live): its CPU per event there is what a whole transaction, an ack, the spans and
the outbox relay cost per event when nothing amortises them. nats-server's and PostgreSQL's CPU
per event meanwhile are noted beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import asyncpg
from nats.aio.msg import Msg
from syncmesh.events.v1 import envelope_pb2

from bench.env import BenchEnv, MeshProcess, definition
from bench.events import BenchEvent, workload
from bench.procs import TICK, cpu_jiffies, tree_jiffies
from bench.profile import Hotspots, recording
from bench.stats import fmt
from bench.suite import Suite
from services.common.bus import STRIPE_STREAM
from services.common.events import parse_event, subject_for, to_envelope

TITLE = "3. Consumer throughput"


def subject_matches(pattern: str, subject: str) -> bool:
    """NATS subject matching: `*` is one token, `>` the rest."""
    want = pattern.split(".")
    have = subject.split(".")
    for i, token in enumerate(want):
        if token == ">":
            return len(have) > i
        if i >= len(have) or (token != "*" and token != have[i]):
            return False
    return len(want) == len(have)


def matching(spec: str, events: list[BenchEvent]) -> int:
    subjects = definition(spec).subjects
    return sum(1 for e in events if any(subject_matches(p, subject_for(e.type)) for p in subjects))


async def fill(suite: Suite, events: list[BenchEvent]) -> float:
    """Pre-fill STRIPE (set-up: without per-message fsync, then back to the shipped config)."""
    env = suite.env
    await env.reset_stream()
    await env.restart_nats(sync_always=False)
    try:
        rate = await env.prefill(events)
    finally:
        await env.restart_nats(sync_always=True)
    return rate


@dataclass
class Drain:
    rate: float
    seconds: float
    finished: bool
    acked: int
    #: The service process's own CPU (user + system) per event drained, in milliseconds: unlike
    #: events/s it does not fall when the rest of the machine takes a core, so it is the figure to
    #: compare between runs of one machine (and, beside the yardstick, between machines).
    cpu_ms_per_event: float | None = None
    #: py-spy's view of the service while it drained (with --profile).
    hotspots: Hotspots | None = None


async def timed_drain(
    suite: Suite, spec: str, database: str, expected: int, deadline: float, *, profile: Path | None = None
) -> Drain:
    """Start `spec` on `database` with a fresh durable; time it from first sight to fully acked.
    With `profile`, py-spy records the service meanwhile (its raw samples are written there)."""
    env = suite.env
    durable = definition(spec).name
    await env.delete_durable(durable)
    proc = await env.start_service(spec, database, wait=False)
    spots: list[Hotspots] = []
    try:
        async with contextlib.AsyncExitStack() as stack:
            if profile is not None:
                spots = await stack.enter_async_context(recording(proc.pid, profile))
            result = await _until_drained(env, proc, spec, durable, expected, deadline)
        return replace(result, hotspots=spots[0] if spots else None)
    finally:
        env.stop(proc)


async def _until_drained(
    env: BenchEnv, proc: MeshProcess, spec: str, durable: str, expected: int, deadline: float
) -> Drain:
    spawned = time.monotonic()
    first: tuple[float, int] | None = None
    cpu_first = 0
    acked = 0
    while True:
        info = await env.consumer_info(durable)
        now = time.monotonic()
        if not proc.alive:
            raise RuntimeError(f"{spec} exited:\n{proc.tail()}")
        if info is None:
            if now - spawned > 60:
                raise RuntimeError(f"{spec} created no consumer within 60 s:\n{proc.tail()}")
            await asyncio.sleep(0.02)
            continue
        acked = info.ack_floor.consumer_seq if info.ack_floor else 0
        if first is None:
            first = (now, acked)
            cpu_first = cpu_jiffies(proc.pid, children=False)
        # A consumer just made can report nothing pending before the server has counted its
        # filtered backlog (seen once at first sight: "1275 events in 0.00 s"): done only once
        # every event was acked, too.
        if info.num_pending == 0 and info.num_ack_pending == 0 and acked >= expected:
            seconds = max(now - first[0], 1e-9)
            drained = expected - first[1]
            cpu_ms = (cpu_jiffies(proc.pid, children=False) - cpu_first) * 1000 / TICK
            per_event = cpu_ms / drained if drained > 0 else None
            return Drain(drained / seconds, seconds, True, expected, per_event)
        if now - first[0] > deadline:
            seconds = now - first[0]
            return Drain((acked - first[1]) / seconds, seconds, False, acked)
        await asyncio.sleep(0.02)


@dataclass
class Trickle:
    """CPU per event (ms) at a trickle: the service's own, and what it cost nats-server and
    PostgreSQL (nats-server's includes storing the event the bench publishes, as it would store
    the gateway's; the bench learns of each ack by a plain subscription, not by polling)."""

    service: float
    nats: float
    postgres: float
    events: int


async def trickle(suite: Suite, spec: str, events: list[BenchEvent]) -> Trickle | None:
    """The service's own CPU per event (ms) when each event is its own batch, and nats-server's
    and PostgreSQL's meanwhile; None when the workload has too few of its events."""
    env = suite.env
    assert env.bus is not None
    subjects = definition(spec).subjects
    mine = [e for e in events if any(subject_matches(p, subject_for(e.type)) for p in subjects)]
    if len(mine) < 40:
        return None
    await env.reset_stream()
    durable = definition(spec).name
    database = await env.fresh_database("trickle")
    proc = await env.start_service(spec, database)
    acks: asyncio.Queue[bytes] = asyncio.Queue()

    async def on_ack(msg: Msg) -> None:
        acks.put_nowait(msg.data)

    # A copy of each of the service's acks: polling consumer_info every millisecond instead cost
    # nats-server more than the service's own traffic.
    sub = await env.bus.nc.subscribe(f"$JS.ACK.{STRIPE_STREAM}.{durable}.>", cb=on_ack)
    await env.bus.nc.flush()
    try:

        async def one(event: BenchEvent) -> None:
            parsed = parse_event(event.body)
            envelope = to_envelope(parsed, source=envelope_pb2.EVENT_SOURCE_WEBHOOK)
            assert env.bus is not None
            await env.bus.js.publish(parsed.subject, envelope, headers={"Nats-Msg-Id": event.id})
            deadline = time.monotonic() + 10
            while (left := deadline - time.monotonic()) > 0:
                with contextlib.suppress(TimeoutError):
                    if await asyncio.wait_for(acks.get(), left) in (b"", b"+ACK"):
                        return
            raise RuntimeError(f"{spec} did not ack a trickled event within 10 s:\n{proc.tail()}")

        for event in mine[:20]:  # warm: connections, prepared statements
            await one(event)
        assert env.nats.process is not None and env.pg.process is not None
        nats_pid, pg_pid = env.nats.process.pid, env.pg.process.pid
        before = (cpu_jiffies(proc.pid, children=False), cpu_jiffies(nats_pid, children=False), tree_jiffies(pg_pid))
        for event in mine[20:]:
            await one(event)
        await asyncio.sleep(0.2)  # the relay marks what it published a tenth of a second later
        after = (cpu_jiffies(proc.pid, children=False), cpu_jiffies(nats_pid, children=False), tree_jiffies(pg_pid))
        n = len(mine) - 20
        service, nats, postgres = ((b - a) * 1000 / TICK / n for a, b in zip(before, after, strict=True))
        return Trickle(service, nats, postgres, n)
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        env.stop(proc)
        await env.drop_database(database)


async def drain(
    suite: Suite, spec: str, expected: int, deadline: float, *, profile: Path | None = None
) -> tuple[Drain, str]:
    """Drain on a fresh database; what it measured and what happened."""
    env = suite.env
    database = await env.fresh_database("drain")
    try:
        result = await timed_drain(suite, spec, database, expected, deadline, profile=profile)
        if not result.finished:
            return result, f"not drained within {deadline:.0f} s; {result.acked} of {expected} acked"
        rows = await _processed(env.pg.dsn(database), definition(spec).schema)
        check = "ok" if rows == expected else f"MISMATCH: {rows} rows in processed_events for {expected} events"
        return result, f"{expected} events in {result.seconds:.2f} s; idempotency record {check}"
    finally:
        await env.drop_database(database)


async def _processed(dsn: str, schema: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval(f"SELECT count(*) FROM {schema}.processed_events"))
    finally:
        await conn.close()


async def run(suite: Suite) -> None:
    count = int(suite.config.pick(20_000, 2_000))
    deadline = suite.config.pick(30, 20)
    specs = ["toy", *suite.ready_services()]
    events = workload(count, tag=suite.tag(), duplicate_rate=0.0)
    types = Counter(e.type for e in events)
    suite.say(f"  pre-filling STRIPE with {count:,} events")
    rate = await fill(suite, events)
    suite.note(
        TITLE,
        f"stream pre-filled with {count:,} distinct events ({fmt(rate)}/s, fill without per-message fsync); "
        + ", ".join(f"{t} {n}" for t, n in types.most_common()),
    )
    async with suite.measuring(TITLE):
        for index, spec in enumerate(specs):
            expected = matching(spec, events)
            target = 5000.0 if spec != "toy" else None
            label = "toy service (runtime only, all subjects)" if spec == "toy" else f"{spec} service"
            figure = suite.figure(
                TITLE, f"consumer.{spec}", f"{label} drain", "events/s", target=target, direction="min"
            )
            cpu = suite.figure(TITLE, f"consumer.{spec}.cpu", f"{label}: its own CPU per event", "ms")
            if expected == 0:
                suite.note(TITLE, f"{spec} subscribes to none of the generated event types; not measured")
                continue
            last = 0.0
            for run_no in suite.runs():
                # Later runs only if they leave time for one run of every spec still to come.
                if run_no and suite.remaining() < last * (1 + len(specs) - index - 1):
                    suite.note(TITLE, f"{spec}: stopped after {run_no} run(s) to stay within the time budget")
                    break
                suite.say(f"  {spec} run {run_no + 1}: draining {expected:,} events")
                began = time.monotonic()
                profile = (
                    suite.env.data_dir / f"profile-drain-{spec}.txt" if suite.config.profile and not run_no else None
                )
                result, detail = await drain(suite, spec, expected, deadline, profile=profile)
                last = time.monotonic() - began
                if result.hotspots is not None:
                    suite.note(TITLE, f"profile of {spec} draining (py-spy): " + "; ".join(result.hotspots.lines()))
                suite.record(figure, result.rate)
                if result.finished and result.cpu_ms_per_event is not None:
                    suite.record(cpu, result.cpu_ms_per_event)
                figure.notes.append(f"run {run_no + 1}: {detail}")
    await _trickles(suite, specs, int(suite.config.pick(1_800, 600)))
    for name, status in suite.services().items():
        if status != "ok":
            suite.note(TITLE, f"{name} not measured: {status}")


async def _trickles(suite: Suite, specs: list[str], count: int) -> None:
    """Each service's CPU per event at a trickle (one run each: a few seconds per service)."""
    async with suite.measuring(TITLE):
        for spec in specs:
            if spec == "toy" or suite.remaining() <= 0:
                continue
            # Fresh ids for each service: JetStream would drop an id published within its
            # duplicate window, purge or not.
            events = workload(count, tag=suite.tag(), duplicate_rate=0.0)
            figure = suite.figure(
                TITLE, f"consumer.{spec}.trickle_cpu", f"{spec} service at a trickle: its own CPU per event", "ms"
            )
            suite.say(f"  {spec}: a trickle, every event its own batch")
            cpu = await trickle(suite, spec, events)
            if cpu is not None:
                suite.record(figure, cpu.service)
                suite.note(
                    TITLE,
                    f"{spec} at a trickle ({cpu.events} events, one batch each), CPU per event: the service "
                    f"{cpu.service:.2f} ms, nats-server {cpu.nats:.2f} ms, PostgreSQL {cpu.postgres:.2f} ms",
                )

"""2. Webhook to queryable: from sending a webhook until every service has committed it and a
gRPC read returns it, with the gateway and all three services running.

Commits are seen in each service's idempotency record (`<schema>.processed_events`, written in
the same transaction as the records): one query every ~2 ms asks, for every event still in
flight, which services have committed it. Once all services subscribed to the event's subject
have, the records it created are read over gRPC (`GetCustomer` after customer.created,
`GetInvoice` after invoice.created) until found. The latency is from the webhook's scheduled
send time to the later of the two; duplicates (already recorded) are left out. Resolution is
the poll period (~2-5 ms), always rounding up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import time
from dataclasses import dataclass, field

import asyncpg

from bench.consumer import subject_matches
from bench.env import definition
from bench.events import BenchEvent, workload
from bench.loadgen import Outcome, count_for, run_in_process
from bench.procs import TICK
from bench.profile import Hotspots, recording
from bench.readers import Reader, readers
from bench.stats import fmt, percentile
from bench.suite import Mesh, Suite
from services.common.events import subject_for

TITLE = "2. Webhook to queryable"


@dataclass
class Track:
    event: BenchEvent
    due: float
    schemas: set[str]
    reader: Reader | None
    committed: float = math.nan
    readable: float = math.nan
    seen: set[str] = field(default_factory=set)

    @property
    def done_at(self) -> float:
        if math.isnan(self.committed):
            return math.nan
        return self.committed if self.reader is None else self.readable


class Prober:
    """Watches events from their 2xx answer until committed everywhere and readable."""

    def __init__(self, pool: asyncpg.Pool, schemas: dict[str, tuple[str, ...]], read: dict[str, Reader]) -> None:
        self.pool = pool
        self.schemas = schemas  # schema -> subjects
        self.read = read
        self.pending: dict[str, Track] = {}
        self.tracks: list[Track] = []
        self.read_errors = 0
        self._stop = asyncio.Event()
        self._reads: set[asyncio.Task[None]] = set()
        self.polls = 0

    def expect(self, event: BenchEvent, due: float) -> None:
        subject = subject_for(event.type)
        schemas = {s for s, subjects in self.schemas.items() if any(subject_matches(p, subject) for p in subjects)}
        track = Track(event, due, schemas, self.read.get(event.type))
        self.tracks.append(track)
        if not schemas:
            return
        self.pending[event.id] = track

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        union = " UNION ALL ".join(
            f"SELECT '{schema}' AS s, event_id FROM {schema}.processed_events WHERE event_id = ANY($1::text[])"
            for schema in self.schemas
        )
        async with self.pool.acquire() as conn:
            while not self._stop.is_set():
                waiting = [eid for eid, t in self.pending.items() if math.isnan(t.committed)]
                if waiting:
                    asked = loop.time()
                    for row in await conn.fetch(union, waiting):
                        track = self.pending.get(row["event_id"])
                        if track is None or not math.isnan(track.committed):
                            continue
                        track.seen.add(row["s"])
                        if track.schemas <= track.seen:
                            track.committed = asked
                            self._after_commit(track)
                    self.polls += 1
                await asyncio.sleep(0.002)

    def _after_commit(self, track: Track) -> None:
        if track.reader is None:
            self.pending.pop(track.event.id, None)
            return
        task = asyncio.get_running_loop().create_task(self._read_until_found(track))
        self._reads.add(task)
        task.add_done_callback(self._reads.discard)

    async def _read_until_found(self, track: Track) -> None:
        assert track.reader is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while loop.time() < deadline:
            try:
                if await track.reader.read(track.event.object_id):
                    track.readable = loop.time()
                    break
            except Exception:
                self.read_errors += 1
            await asyncio.sleep(0.002)
        self.pending.pop(track.event.id, None)

    async def settle(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.pending and loop.time() < deadline:  # noqa: ASYNC110 - polling a dict filled elsewhere
            await asyncio.sleep(0.05)
        self._stop.set()
        for task in list(self._reads):
            task.cancel()
        await asyncio.gather(*self._reads, return_exceptions=True)


async def measure(
    suite: Suite, mesh: Mesh, read: dict[str, Reader], rate: float, seconds: float, *, profile: bool = False
) -> tuple[dict[str, float], str]:
    schemas = {definition(name).schema: tuple(definition(name).subjects) for name in mesh.services}
    events = workload(count_for(rate, seconds), tag=suite.tag())
    pool = await asyncpg.create_pool(suite.env.pg.dsn(mesh.database), min_size=1, max_size=2)
    assert pool is not None
    prober = Prober(pool, schemas, read)
    poller = asyncio.get_running_loop().create_task(prober.run())

    def on_answer(index: int, outcome: Outcome) -> None:
        event = events[index]
        if outcome.first_ok and not event.duplicate:
            prober.expect(event, outcome.due)

    spots: dict[str, list[Hotspots]] = {}
    try:
        async with contextlib.AsyncExitStack() as stack:
            for name, proc in mesh.processes().items() if profile else ():
                output = suite.env.data_dir / f"profile-{rate:.0f}-{name}.txt"
                spots[name] = await stack.enter_async_context(recording(proc.pid, output))
            started = time.monotonic()
            cpu_before = suite.process_cpu()
            result = await run_in_process(mesh.url, events, rate, on_answer=on_answer)
            mesh.webhooks_sent += len(events)
            await prober.settle(timeout=20)
            elapsed = time.monotonic() - started
            cpu = cpu_per_webhook(cpu_before, suite.process_cpu(), len(events))
        for name, found in spots.items():
            if found:
                suite.note(TITLE, f"profile of {name} at {rate:.0f}/s (py-spy): " + "; ".join(found[0].lines()))
    finally:
        prober._stop.set()
        await asyncio.gather(poller, return_exceptions=True)
        await pool.close()
    done = [(t.done_at - t.due) * 1000 for t in prober.tracks if t.schemas and not math.isnan(t.done_at)]
    read_only = [(t.readable - t.due) * 1000 for t in prober.tracks if t.reader and not math.isnan(t.readable)]
    commit_only = [(t.committed - t.due) * 1000 for t in prober.tracks if t.schemas and not math.isnan(t.committed)]
    tracked = sum(1 for t in prober.tracks if t.schemas)
    return {
        "p50": percentile(done, 50),
        "p99": percentile(done, 99),
        "commit_p99": percentile(commit_only, 99),
        "read_p50": percentile(read_only, 50),
        "read_p99": percentile(read_only, 99),
        "reads": float(len(read_only)),
        "tracked": float(tracked),
        "complete": float(len(done)),
        "read_errors": float(prober.read_errors),
        "polls_per_s": prober.polls / max(elapsed, 1e-9),
        "gateway_p99": result.summary()["p99_ms"],
        "non_2xx": float(result.first_non_2xx),
    }, cpu


def cpu_per_webhook(before: dict[str, int], after: dict[str, int], webhooks: int) -> str:
    """Each process's CPU per webhook sent, in ms: at a paced rate a service pays per batch as
    well as per event, so this differs from its drain cost (section 3) by what small batches cost."""
    parts = []
    for name, jiffies in before.items():
        if name in after and after[name] >= jiffies and webhooks:
            ms = (after[name] - jiffies) * 1000 / TICK / webhooks
            parts.append(f"{name.split(' (pid')[0]} {ms:.2f}")
    return ", ".join(parts)


async def run(suite: Suite) -> None:
    services = suite.ready_services()
    if not services:
        suite.skip(TITLE, "no service can be loaded yet (see the notes of section 3)")
        return
    mesh = await suite.start_mesh()
    read, channels, missing = readers({name: proc.port for name, proc in mesh.services.items()})
    seconds = suite.config.pick(15, 5)
    figures = {
        (500, "p50"): suite.figure(
            TITLE, "e2e.p50@500", "webhook -> committed everywhere + read, p50 at 500/s", "ms", target=10
        ),
        (500, "p99"): suite.figure(
            TITLE, "e2e.p99@500", "webhook -> committed everywhere + read, p99 at 500/s", "ms", target=50
        ),
        (1000, "p50"): suite.figure(
            TITLE, "e2e.p50@1000", "webhook -> committed everywhere + read, p50 at 1,000/s", "ms"
        ),
        (1000, "p99"): suite.figure(
            TITLE, "e2e.p99@1000", "webhook -> committed everywhere + read, p99 at 1,000/s", "ms", target=100
        ),
    }
    try:
        async with suite.measuring(TITLE):
            for run_no in suite.runs():
                if not suite.another_run(TITLE, run_no):
                    break
                for rate in (500, 1000):
                    suite.say(
                        f"  run {run_no + 1}: {rate}/s for {seconds:.0f} s through gateway + {', '.join(services)}"
                    )
                    m, cpu = await measure(
                        suite, mesh, read, rate, seconds, profile=suite.config.profile and rate == 500 and not run_no
                    )
                    suite.record(figures[(rate, "p50")], m["p50"])
                    suite.record(figures[(rate, "p99")], m["p99"])
                    figures[(rate, "p99")].notes.append(
                        f"run {run_no + 1}: {int(m['complete'])} of {int(m['tracked'])} events complete; "
                        f"commit-only p99 {fmt(m['commit_p99'])} ms; "
                        f"gRPC-read events {int(m['reads'])} (p50 {fmt(m['read_p50'])}, "
                        f"p99 {fmt(m['read_p99'])} ms); gateway 2xx p99 {fmt(m['gateway_p99'])} ms; "
                        f"non-2xx {int(m['non_2xx'])}; read errors {int(m['read_errors'])}; "
                        f"{fmt(m['polls_per_s'])} commit polls/s; CPU ms per webhook: {cpu}"
                    )
                    if not mesh.memory_steady:
                        mesh.memory_steady = {name: proc.rss_kib() for name, proc in mesh.processes().items()}
                        mesh.memory_steady_after = mesh.webhooks_sent
    finally:
        for channel in channels:
            await channel.close()
    suite.note(TITLE, "gRPC reads used: " + (", ".join(r.name for r in read.values()) or "none"))
    if missing:
        suite.note(TITLE, "without a gRPC read (latency to commit only): " + json.dumps(missing))

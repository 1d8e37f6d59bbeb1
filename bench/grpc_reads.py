"""4. gRPC reads: GetCustomer / GetInvoice latency while ingest runs at 200/s, and a read flood.

Reads are open loop (latency from each read's due time), alternating between the readers
available, for ids of records known to exist (seeded through the gateway first), sent from
processes of their own (bench/read_load.py) so that the bench's webhook sender cannot delay them.
Webhooks keep arriving at 200/s meanwhile, signed before the reads start, so the services are
writing while they answer. Each run measures, in this order:

- issue 20's point: 500 reads/s, target p99 <= 20 ms;
- issue 8's point: 1,000 reads/s, target p99 <= 10 ms;
- a flood: 3,000 reads/s for 10 s, well past what the services answer, from two processes.
  Issue 20 wants it shed with RESOURCE_EXHAUSTED (`SYNCMESH_GRPC_MAX_CONCURRENT_RPCS`) rather
  than queued for seconds: answered/s, the refusals and how long they took, and the answered
  reads' p99. The flood's latencies are from when each read was sent, beside how late the
  generator sent them (a 2-core machine also runs the services): from the due time they would
  measure the generator.
"""

from __future__ import annotations

import asyncio
import time

from bench.events import workload
from bench.loadgen import OpenLoop, count_for, due_times, signed
from bench.read_load import READ_TIMEOUT_SECONDS, ReadLoad, Reads
from bench.readers import readers
from bench.stats import Figure, fmt, percentile
from bench.suite import Suite

TITLE = "4. gRPC reads under ingest"
INGEST_RATE = 200.0
#: (reads/s, p99 target in ms, figure key suffix, whose target)
POINTS = ((500.0, 20.0, ".500", "issue 20"), (1000.0, 10.0, "", "issue 8"))
FLOOD_RATE = 3000.0
FLOOD_PROCESSES = 2


async def run(suite: Suite) -> None:
    if not suite.ready_services():
        suite.skip(TITLE, "no service can be loaded yet")
        return
    mesh = await suite.start_mesh()
    ports = {name: proc.port for name, proc in mesh.services.items()}
    read, channels, missing = readers(ports)
    if not read:
        suite.skip(TITLE, "no GetCustomer/GetInvoice reader available: " + "; ".join(missing))
        for channel in channels:
            await channel.close()
        return
    seconds = suite.config.pick(8, 3)
    flood_seconds = suite.config.pick(10, 2)
    points = [
        (
            rate,
            suite.figure(
                TITLE,
                f"grpc.p99{suffix}",
                f"GetCustomer/GetInvoice p99 at {rate:,.0f}/s, ingest 200/s ({whose})",
                "ms",
                target=target,
            ),
            suite.figure(
                TITLE, f"grpc.p50{suffix}", f"GetCustomer/GetInvoice p50 at {rate:,.0f}/s, ingest 200/s", "ms"
            ),
        )
        for rate, target, suffix, whose in POINTS
    ]
    flood = f"flood of {FLOOD_RATE:,.0f} reads/s for {flood_seconds:.0f} s, ingest 200/s"
    answered = suite.figure(TITLE, "grpc.flood.answered", f"{flood}: answered", "reads/s")
    shed = suite.figure(TITLE, "grpc.flood.shed", f"{flood}: refused with RESOURCE_EXHAUSTED", "reads")
    shed_p99 = suite.figure(TITLE, "grpc.flood.shed_p99", f"{flood}: RESOURCE_EXHAUSTED p99 from send", "ms")
    answered_p99 = suite.figure(TITLE, "grpc.flood.p99", f"{flood}: answered reads' p99 from send", "ms")
    # Neither answered nor refused: CANCELLED is grpc's core refusing a call its server had not
    # taken yet (its backlog of pending calls full: the service never saw it), DEADLINE_EXCEEDED
    # a call with no answer within the reader's 5 s. Each was queued, not shed with RESOURCE_EXHAUSTED.
    unanswered = suite.figure(
        TITLE, "grpc.flood.unanswered", f"{flood}: neither answered nor RESOURCE_EXHAUSTED", "reads"
    )
    load: ReadLoad | None = None
    try:
        suite.say("  seeding records through the gateway (1,500 webhooks at 500/s)")
        seed = workload(1500, tag=suite.tag())
        requests = signed(seed)
        loop = asyncio.get_running_loop()
        await OpenLoop(mesh.url).run(requests, due_times(len(requests), 500, loop.time() + 0.2), rate=500)
        mesh.webhooks_sent += len(seed)
        plan = {c: [e.object_id for e in seed if e.type == c and not e.duplicate] for c in read}
        await suite.mesh_idle(TITLE)  # the seed, and anything before it, fully consumed
        for created_by, reader in read.items():
            found = await reader.read(plan[created_by][0])
            if not found:
                suite.note(TITLE, f"{reader.name} did not find {plan[created_by][0]} after seeding")
        load = ReadLoad(ports, plan, FLOOD_PROCESSES)
        await load.ready()
        suite.generators["gRPC readers (load generator)"] = load.pids
        async with suite.measuring(TITLE):
            for run_no in suite.runs():
                if not suite.another_run(TITLE, run_no):
                    break
                for rate, p99, p50 in points:
                    await suite.mesh_idle(TITLE)
                    suite.say(
                        f"  run {run_no + 1}: reads at {rate:,.0f}/s + webhooks at {INGEST_RATE:.0f}/s, {seconds:.0f} s"
                    )
                    reads = await _reads_with_ingest(suite, load, rate, seconds, processes=1)
                    suite.record(p50, percentile(reads.answered, 50))
                    suite.record(p99, percentile(reads.answered, 99))
                    p99.notes.append(f"run {run_no + 1}: {_describe(reads)}")
                await suite.mesh_idle(TITLE)
                suite.say(f"  run {run_no + 1}: {flood}, from {FLOOD_PROCESSES} processes")
                reads = await _reads_with_ingest(suite, load, FLOOD_RATE, flood_seconds, processes=FLOOD_PROCESSES)
                suite.record(answered, len(reads.answered) / max(reads.seconds, 1e-9))
                suite.record(shed, len(reads.shed))
                suite.record(unanswered, reads.count - len(reads.answered) - len(reads.shed))
                scheduled = count_for(FLOOD_RATE, flood_seconds)
                if reads.count < scheduled:  # the readers were starved: the flood measured them too
                    suite.note(
                        TITLE,
                        f"run {run_no + 1}: only {reads.count:,} of the flood's {scheduled:,} reads had an outcome "
                        f"{READ_TIMEOUT_SECONDS + 2:.0f} s after the last was due; the others were still inside the "
                        "starved reader processes, counted nowhere",
                    )
                _record_if_any(suite, shed_p99, reads.shed_sent)
                _record_if_any(suite, answered_p99, reads.answered_sent)
                answered.notes.append(
                    f"run {run_no + 1}: {_describe(reads)}; answered in {fmt(reads.seconds)} s; from the due time: "
                    f"answered p99 {fmt(percentile(reads.answered, 99))} ms, "
                    f"RESOURCE_EXHAUSTED p99 {fmt(percentile(reads.shed, 99))} ms"
                )
    finally:
        suite.generators.pop("gRPC readers (load generator)", None)
        if load is not None:
            load.close()
        for channel in channels:
            await channel.close()
    suite.note(
        TITLE, "readers: " + ", ".join(r.name for r in read.values()) + (f"; missing: {missing}" if missing else "")
    )


def _record_if_any(suite: Suite, figure: Figure, values: list[float]) -> None:
    if values:
        suite.record(figure, percentile(values, 99))


def _describe(reads: Reads) -> str:
    codes = ", ".join(f"{n} {code}" for code, n in sorted(reads.codes.items(), key=lambda item: -item[1]))
    return (
        f"{reads.count} reads offered: {codes}; answered p50/p99 from send "
        f"{fmt(percentile(reads.answered_sent, 50))}/{fmt(percentile(reads.answered_sent, 99))} ms; "
        f"max {fmt(max(reads.answered) if reads.answered else float('nan'))} ms from due; "
        f"generator lag p99 {fmt(percentile(reads.lag, 99))} ms"
    )


async def _reads_with_ingest(suite: Suite, load: ReadLoad, rate: float, seconds: float, *, processes: int) -> Reads:
    """`rate` reads/s for `seconds` while webhooks arrive at 200/s, both on one schedule."""
    assert suite.mesh is not None
    ingest_count = count_for(INGEST_RATE, seconds + 0.5)
    requests = signed(workload(ingest_count, tag=suite.tag()))  # signed before anything is due
    start_at = time.monotonic() + 0.3
    # The bench's loop clock is time.monotonic (asyncio's default), as is the readers'.
    ingest = asyncio.create_task(
        OpenLoop(suite.mesh.url).run(requests, due_times(ingest_count, INGEST_RATE, start_at), rate=INGEST_RATE)
    )
    try:
        reads = await load.run(rate, count_for(rate, seconds), start_at, processes=processes)
    finally:
        await ingest
    suite.mesh.webhooks_sent += ingest_count
    return reads

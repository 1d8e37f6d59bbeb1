"""4. gRPC reads: GetCustomer / GetInvoice latency at 1,000 requests/s while ingest runs at 200/s.

Reads are open loop too (due every 1 ms, latency from the due time), alternating between the
readers available, over one HTTP/2 channel per service, for ids of records known to exist
(seeded through the gateway first). Webhooks keep arriving at 200/s meanwhile, so the services
are writing while they answer.
"""

from __future__ import annotations

import asyncio
import random

import grpc

from bench.events import workload
from bench.loadgen import count_for, due_times, open_loop, run_in_process
from bench.readers import Reader, readers
from bench.stats import fmt, percentile
from bench.suite import Suite

TITLE = "4. gRPC reads under ingest"
READ_RATE = 1000.0
INGEST_RATE = 200.0


async def run(suite: Suite) -> None:
    if not suite.ready_services():
        suite.skip(TITLE, "no service can be loaded yet")
        return
    mesh = await suite.start_mesh()
    read, channels, missing = readers({name: proc.port for name, proc in mesh.services.items()})
    if not read:
        suite.skip(TITLE, "no GetCustomer/GetInvoice reader available: " + "; ".join(missing))
        for channel in channels:
            await channel.close()
        return
    seconds = suite.config.pick(15, 5)
    p99 = suite.figure(TITLE, "grpc.p99", "GetCustomer/GetInvoice p99 at 1,000/s, ingest 200/s", "ms", target=10)
    p50 = suite.figure(TITLE, "grpc.p50", "GetCustomer/GetInvoice p50 at 1,000/s, ingest 200/s", "ms")
    try:
        suite.say("  seeding records through the gateway (1,500 webhooks at 500/s)")
        seed = workload(1500, tag=suite.tag())
        await run_in_process(mesh.url, seed, 500)
        mesh.webhooks_sent += len(seed)
        ids = {
            created_by: [e.object_id for e in seed if e.type == created_by and not e.duplicate] for created_by in read
        }
        await suite.mesh_idle(TITLE)  # the seed, and anything before it, fully consumed
        for created_by, reader in read.items():
            found = await reader.read(ids[created_by][0])
            if not found:
                suite.note(TITLE, f"{reader.name} did not find {ids[created_by][0]} after seeding")
        plan = [(reader, ids[created_by]) for created_by, reader in read.items() if ids[created_by]]
        rng = random.Random(7)
        async with suite.measuring(TITLE):
            for run_no in suite.runs():
                if not suite.another_run(TITLE, run_no):
                    break
                suite.say(
                    f"  run {run_no + 1}: reads at {READ_RATE:.0f}/s + webhooks at {INGEST_RATE:.0f}/s, {seconds:.0f} s"
                )
                latencies, errors, missing_reads, shed, lag = await _reads_with_ingest(suite, plan, seconds, rng)
                suite.record(p50, percentile(latencies, 50))
                suite.record(p99, percentile(latencies, 99))
                p99.notes.append(
                    f"run {run_no + 1}: {len(latencies)} reads answered, {errors} errors, {missing_reads} NOT_FOUND, "
                    f"{shed} shed (RESOURCE_EXHAUSTED); "
                    f"max {fmt(max(latencies) if latencies else float('nan'))} ms; generator lag p99 {fmt(lag)} ms"
                )
    finally:
        for channel in channels:
            await channel.close()
    suite.note(
        TITLE, "readers: " + ", ".join(r.name for r in read.values()) + (f"; missing: {missing}" if missing else "")
    )


async def _reads_with_ingest(
    suite: Suite, plan: list[tuple[Reader, list[str]]], seconds: float, rng: random.Random
) -> tuple[list[float], int, int, int, float]:
    assert suite.mesh is not None
    loop = asyncio.get_running_loop()
    n = count_for(READ_RATE, seconds)
    dues = due_times(n, READ_RATE, loop.time() + 0.2)
    targets = [(plan[i % len(plan)][0], rng.choice(plan[i % len(plan)][1])) for i in range(n)]
    latencies: list[float] = []
    lags: list[float] = []
    counts = {"errors": 0, "not_found": 0, "shed": 0}

    async def fire(i: int) -> None:
        reader, object_id = targets[i]
        lags.append((loop.time() - dues[i]) * 1000)
        try:
            found = await reader.read(object_id)
        except grpc.aio.AioRpcError as exc:
            # RESOURCE_EXHAUSTED: refused at once past SYNCMESH_GRPC_MAX_CONCURRENT_RPCS, not an error.
            counts["shed" if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED else "errors"] += 1
            return
        except Exception:
            counts["errors"] += 1
            return
        if not found:
            counts["not_found"] += 1
        latencies.append((loop.time() - dues[i]) * 1000)

    ingest = loop.create_task(
        run_in_process(suite.mesh.url, workload(count_for(INGEST_RATE, seconds + 0.5), tag=suite.tag()), INGEST_RATE)
    )
    await open_loop(dues, fire, drain_timeout=15)
    await ingest
    suite.mesh.webhooks_sent += count_for(INGEST_RATE, seconds + 0.5)
    return latencies, counts["errors"], counts["not_found"], counts["shed"], percentile(lags, 99)

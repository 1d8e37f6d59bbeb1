"""9. Idle mesh: the CPU the mesh burns with no traffic, and whether the first event after a
quiet spell waits longer than one in a warm trickle.

An idle mesh is where most Stripe accounts spend most of their time, so what it does while
nothing happens is paid around the clock. The section starts its own mesh as deployed (the
gateway and every service as their own processes, each with its Prometheus metrics server on,
`SYNCMESH_METRICS_PORT=0`, and the services with a gRPC tokens file), lets it settle after a few
webhooks, and then, with no traffic at all, measures for ~30 s each process's time on a CPU
(`/proc/<pid>/task/*/schedstat`: nanoseconds, where 10 ms ticks would round an idle process to
nothing) and its wake-ups (context switches of all its threads). nats-server and PostgreSQL are
shown apart: PostgreSQL's backends serving the mesh's database (what the mesh makes it do) apart
from its own background processes (checkpointer, walwriter, autovacuum, ...: the deployment's
settings, not ours), and nats-server beside its own figure measured for a few seconds before
the mesh started (with only the bench's connection), so what the mesh makes it do is the
difference.

Then the latency: a webhook after the quiet spell, and a few more each after a few seconds of
quiet, timed from its due time until every service subscribed to it has committed it (seen in
its `processed_events`, polled every ~2 ms as section 2 does), against the same for webhooks
at a warm trickle (20/s), so "no added latency for the first event after a quiet spell" is a
figure: the median after a quiet spell minus the median at a trickle.
"""

from __future__ import annotations

import asyncio
import math
import os
import statistics
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from bench.env import MeshProcess, definition
from bench.events import workload
from bench.loadgen import OpenLoop, Outcome, signed
from bench.procs import command_line, descendants, on_cpu_ns, wakeups
from bench.queryable import Prober
from bench.stats import fmt
from bench.suite import Mesh, Suite

TITLE = "9. Idle mesh"
#: The issue's target for the mesh's own processes, plus what they make nats-server and
#: PostgreSQL do, with no traffic.
TARGET_CORES = 0.01
#: "No added latency": the median after a quiet spell may exceed the trickle's by this much,
#: which is below what one more round trip to NATS or PostgreSQL would add on this machine.
TARGET_ADDED_MS = 1.0
TRICKLE_RATE = 20.0


@dataclass(frozen=True)
class Usage:
    cpu_ns: int
    wakeups: int


#: A group of processes measured together, by the pids it has at the time of the sample.
Group = Callable[[], list[int]]


def groups(suite: Suite, mesh: Mesh | None) -> dict[str, Group]:
    """What is measured, by name: each mesh process, nats-server, PostgreSQL in two parts."""
    out: dict[str, Group] = {}
    if mesh is not None:
        for name, proc in mesh.processes().items():
            out[name] = _single(proc)
    nats = suite.env.nats.process
    if nats is not None:
        out["nats-server"] = lambda: [nats.pid]
    pg = suite.env.pg.process
    if pg is not None:
        root = pg.pid
        database = f" {mesh.database} " if mesh is not None else None

        def serving_mesh() -> list[int]:
            if database is None:
                return []
            return [pid for pid in descendants(root) if database in f"{command_line(pid)} "]

        def its_own() -> list[int]:
            mine = set(serving_mesh())
            return [root, *(pid for pid in descendants(root) if pid not in mine)]

        out["PostgreSQL: backends serving the mesh"] = serving_mesh
        out["PostgreSQL: its own processes"] = its_own
    return out


def _single(proc: MeshProcess) -> Group:
    return lambda: [proc.pid] if proc.alive else []


def sample(groups: dict[str, Group]) -> dict[str, dict[int, Usage]]:
    return {name: {pid: Usage(on_cpu_ns(pid), wakeups(pid)) for pid in pids()} for name, pids in groups.items()}


def usage_between(
    before: dict[str, dict[int, Usage]], after: dict[str, dict[int, Usage]], seconds: float
) -> dict[str, tuple[float, float]]:
    """Per group: (cores, wake-ups per second); a process born meanwhile counts from zero."""
    out = {}
    for name, now in after.items():
        then = before.get(name, {})
        cpu = sum(u.cpu_ns - then.get(pid, Usage(0, 0)).cpu_ns for pid, u in now.items())
        woke = sum(u.wakeups - then.get(pid, Usage(0, 0)).wakeups for pid, u in now.items())
        out[name] = (max(0, cpu) / 1e9 / seconds, max(0, woke) / seconds)
    return out


async def measure_quiet(suite: Suite, groups_: dict[str, Group], seconds: float) -> dict[str, tuple[float, float]]:
    loop = asyncio.get_running_loop()
    before, started = sample(groups_), loop.time()
    await asyncio.sleep(seconds)
    return usage_between(before, sample(groups_), loop.time() - started)


def describe(use: dict[str, tuple[float, float]]) -> str:
    return "; ".join(f"{name} {cores:.4f} cores, {woke:.1f} wake-ups/s" for name, (cores, woke) in use.items())


async def start_idle_mesh(suite: Suite) -> Mesh:
    """The mesh as deployed: metrics servers on (their samplers are idle work too), gRPC callers
    authenticated from a tokens file."""
    await suite.stop_mesh()
    env = suite.env
    await env.reset_stream()
    database = await env.fresh_database("idle")
    tokens = env.data_dir / "idle-grpc-tokens"
    tokens.write_text(f"{os.urandom(16).hex()} bench-idle admin\n", encoding="utf-8")
    tokens.chmod(0o600)
    extra = {"SYNCMESH_METRICS_PORT": "0"}
    gateway = await env.start_gateway(env=extra)
    services = {
        name: await env.start_service(name, database, env={**extra, "SYNCMESH_GRPC_TOKENS_FILE": str(tokens)})
        for name in suite.ready_services()
    }
    return Mesh(gateway, services, database)


async def send_and_track(
    suite: Suite, mesh: Mesh, gaps: list[float], trickle: int
) -> tuple[list[float], list[float], int]:
    """Send one webhook after each of `gaps` (seconds of quiet before it), then `trickle` at
    TRICKLE_RATE; latencies (ms, due -> committed everywhere) of the quiet ones and of the
    trickle's (its first fifth, still warming up, left out), and how many never completed."""
    events = [e for e in workload(len(gaps) + trickle + 20, tag=suite.tag(), duplicate_rate=0.0) if not e.duplicate]
    events = events[: len(gaps) + trickle]
    loop = asyncio.get_running_loop()
    dues, at = [], loop.time() + 0.2
    for gap in gaps:
        at += gap
        dues.append(at)
    at += 1.0
    dues += [at + i / TRICKLE_RATE for i in range(len(events) - len(gaps))]
    schemas = {definition(name).schema: tuple(definition(name).subjects) for name in mesh.services}
    pool = await asyncpg.create_pool(suite.env.pg.dsn(mesh.database), min_size=1, max_size=2)
    assert pool is not None
    prober = Prober(pool, schemas, {})
    poller = loop.create_task(prober.run())
    due_of: dict[str, float] = {}

    def on_answer(index: int, outcome: Outcome) -> None:
        if outcome.first_ok:
            prober.expect(events[index], outcome.due)
            due_of[events[index].id] = outcome.due

    try:
        sender = OpenLoop(mesh.url, connections=4, on_answer=on_answer)
        await sender.run(signed(events), dues, rate=TRICKLE_RATE)
        await prober.settle(timeout=10)
    finally:
        prober._stop.set()
        await asyncio.gather(poller, return_exceptions=True)
        await pool.close()
    latency = {t.event.id: (t.committed - t.due) * 1000 for t in prober.tracks if t.schemas}
    quiet_ids = [e.id for e in events[: len(gaps)]]
    warm_ids = [e.id for e in events[len(gaps) :]][trickle // 5 :]
    quiet = [latency[i] for i in quiet_ids if i in latency and not math.isnan(latency[i])]
    warm = [latency[i] for i in warm_ids if i in latency and not math.isnan(latency[i])]
    lost = sum(1 for v in latency.values() if math.isnan(v))
    return quiet, warm, lost


async def run(suite: Suite) -> None:
    if not suite.ready_services():
        suite.skip(TITLE, "no service can be loaded yet")
        return
    quiet_seconds = suite.config.pick(30, 15)
    baseline_seconds = suite.config.pick(8, 4)
    mesh_cores = suite.figure(
        TITLE,
        "idle.mesh",
        "idle: the mesh's processes + what they make nats-server and PostgreSQL do",
        "cores",
        target=TARGET_CORES,
    )
    all_cores = suite.figure(TITLE, "idle.all", "idle: every process (mesh, nats-server, PostgreSQL)", "cores")
    quiet_fig = suite.figure(
        TITLE, "idle.first.p50", "first webhook after a quiet spell -> committed everywhere, median", "ms"
    )
    warm_fig = suite.figure(
        TITLE,
        "idle.trickle.p50",
        f"webhook at a warm trickle ({TRICKLE_RATE:.0f}/s) -> committed everywhere, median",
        "ms",
    )
    added_fig = suite.figure(
        TITLE,
        "idle.added",
        "added latency after a quiet spell (median quiet - median trickle)",
        "ms",
        target=TARGET_ADDED_MS,
    )
    async with suite.measuring(TITLE):
        await suite.stop_mesh()
        suite.say(f"  nats-server and PostgreSQL alone for {baseline_seconds:.0f} s (no mesh)")
        baseline = await measure_quiet(suite, groups(suite, None), baseline_seconds)
        suite.say("  starting the mesh (metrics on, gRPC tokens file) and warming it up")
        mesh = await start_idle_mesh(suite)  # a failed start leaves its processes to env.close()
        try:
            await send_and_track(suite, mesh, [0.0], 40)
            await asyncio.sleep(5)  # the relay's marks and any start-up work are done
            suite.say(f"  no traffic for {quiet_seconds:.0f} s")
            idle = await measure_quiet(suite, groups(suite, mesh), quiet_seconds)
            gaps = [0.0, *([suite.config.pick(4, 3)] * int(suite.config.pick(4, 2)))]
            suite.say(f"  {len(gaps)} webhooks after quiet spells, then a trickle at {TRICKLE_RATE:.0f}/s")
            quiet, warm, lost = await send_and_track(suite, mesh, gaps, int(suite.config.pick(60, 30)))
        finally:
            for proc in mesh.processes().values():
                suite.env.stop(proc)
    own = sum(idle[name][0] for name in mesh.processes())
    nats_added = max(0.0, idle.get("nats-server", (0.0, 0.0))[0] - baseline.get("nats-server", (0.0, 0.0))[0])
    pg_mesh = idle.get("PostgreSQL: backends serving the mesh", (0.0, 0.0))[0]
    suite.record(mesh_cores, own + nats_added + pg_mesh)
    mesh_cores.notes.append(
        f"the mesh's processes {own:.4f}, nats-server's share {nats_added:.4f} (its idle figure less its own "
        f"before the mesh started), PostgreSQL's backends serving the mesh {pg_mesh:.4f}"
    )
    suite.record(all_cores, sum(cores for cores, _ in idle.values()))
    suite.note(TITLE, f"with no traffic for {quiet_seconds:.0f} s, each process: " + describe(idle))
    suite.note(
        TITLE,
        f"before the mesh started ({baseline_seconds:.0f} s, only the bench connected): "
        + describe(baseline)
        + "; PostgreSQL's own processes (checkpointer, walwriter, autovacuum launcher, ...) and nats-server's "
        "own housekeeping follow the deployment's settings, not the mesh's",
    )
    quiet_median = statistics.median(quiet) if quiet else math.nan
    warm_median = statistics.median(warm) if warm else math.nan
    suite.record(quiet_fig, quiet_median)
    suite.record(warm_fig, warm_median)
    suite.record(added_fig, quiet_median - warm_median)
    quiet_fig.notes.append(
        f"each after {', '.join(f'{g:g}' for g in gaps[1:])} s of quiet, the first after the {quiet_seconds:.0f} s "
        f"above: {', '.join(fmt(v) for v in quiet)} ms"
    )
    warm_fig.notes.append(
        f"{len(warm)} webhooks after the trickle's first fifth; max {fmt(max(warm, default=math.nan))} ms; "
        f"{lost} never seen committed"
    )

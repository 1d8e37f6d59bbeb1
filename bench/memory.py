"""6. Memory: resident memory of each process at steady state and after 100,000 events.

RSS (VmRSS from /proc/<pid>/status) of the gateway and each service, sampled once the mesh has
warmed up (after the first latency run, or a warm-up here) and again after 100,000 webhooks
in total have gone through the gateway and every service has drained them; nats-server's RSS
and PostgreSQL's PSS summed over all its processes (shared buffers counted once) beside them.
Growth above 10% between the two samples suggests something accumulates per event.
"""

from __future__ import annotations

import time

from bench.events import workload
from bench.loadgen import run_in_process
from bench.procs import pss_tree_kib, rss_kib
from bench.stats import fmt
from bench.suite import Mesh, Suite

TITLE = "6. Memory"
RATE = 800.0
CHUNK = 8000


def snapshot(suite: Suite, mesh: Mesh) -> dict[str, int]:
    sizes = {name: proc.rss_kib() for name, proc in mesh.processes().items()}
    env = suite.env
    if env.nats.process is not None:
        sizes["nats-server"] = rss_kib(env.nats.process.pid)
    if env.pg.process is not None:
        sizes["postgresql (PSS, all processes)"] = pss_tree_kib(env.pg.process.pid)
    return sizes


async def run(suite: Suite) -> None:
    if not suite.ready_services():
        suite.skip(TITLE, "no service can be loaded yet")
        return
    mesh = await suite.start_mesh()
    total = int(suite.config.pick(100_000, 10_000))
    budget = min(suite.config.pick(180, 30), max(20.0, suite.remaining() - 60))
    if not mesh.memory_steady:
        suite.say("  warming up (2,000 webhooks at 500/s)")
        await run_in_process(mesh.url, workload(2000, tag=suite.tag()), 500)
        mesh.webhooks_sent += 2000
        await suite.mesh_idle(TITLE)
        mesh.memory_steady = snapshot(suite, mesh)
        mesh.memory_steady_after = mesh.webhooks_sent
    else:
        mesh.memory_steady.update({k: v for k, v in snapshot(suite, mesh).items() if k not in mesh.memory_steady})
    async with suite.measuring(TITLE):
        started = time.monotonic()
        suite.say(f"  {mesh.webhooks_sent:,} webhooks so far; topping up to {total:,} at {RATE:.0f}/s")
        while mesh.webhooks_sent < total and time.monotonic() - started < budget:
            count = min(CHUNK, total - mesh.webhooks_sent)
            result = await run_in_process(mesh.url, workload(count, tag=suite.tag()), RATE)
            mesh.webhooks_sent += count
            suite.say(f"    {mesh.webhooks_sent:,} sent ({fmt(result.achieved_rate)}/s answered 2xx)")
        complete = await suite.mesh_idle(TITLE, 120)
    after = snapshot(suite, mesh)
    for name, before_kib in mesh.memory_steady.items():
        if name not in after or not before_kib:
            continue
        growth = (after[name] - before_kib) / before_kib * 100
        target = 10.0 if name in mesh.processes() else None
        figure = suite.figure(TITLE, f"memory.{name}", f"{name}: RSS growth, steady -> after", "%", target=target)
        suite.record(figure, growth)
        figure.notes.append(
            f"{before_kib / 1024:.1f} MiB after {mesh.memory_steady_after:,} webhooks -> "
            f"{after[name] / 1024:.1f} MiB after {mesh.webhooks_sent:,}"
        )
    if mesh.webhooks_sent < total:
        suite.note(TITLE, f"only {mesh.webhooks_sent:,} of {total:,} webhooks sent within the {budget:.0f} s budget")
    if not complete:
        suite.note(TITLE, "RSS 'after' sampled with the backlog still draining")

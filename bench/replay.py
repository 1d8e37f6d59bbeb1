"""5. Replay: 100,000 events (10% duplicates, shuffled) rebuilt by one service, then again; and
the same stream through the operator tool, `syncmesh replay SERVICE` (ops/replay.py).

The stream is filled with events the service subscribes to (90% distinct, 10% resent copies,
in random order: a rebuild from history is never in order), and the service drains it with a
fresh durable on an empty database. Then its durable is deleted and it replays the same stream
over the records it built: every event is already in its idempotency record, so no row may
change. Rows changed are counted from PostgreSQL's own statistics (n_tup_ins/upd/del of the
service's tables) and checked against a checksum of every table's content.

The operator tool is what an operator runs to rebuild after a mapping change: it reads the
stream with its own ephemeral consumer (no durable, no acks) and re-applies every event through
the runtime's `BatchRunner`, forgetting each event id first. It is run as its own process, as
`syncmesh replay NAME` would be, first on an empty database (a rebuild) and then over what it
built (every event re-applied: the tool itself must report 0 changed rows). Its CPU per event is
its own process's, read with `wait4`, beside PostgreSQL's and nats-server's over the same span.
`wait4`'s usage of a process includes that of the children it reaped, so with `--workers` the
figure is the tool's whole CPU, the parent's and every worker's (the tool reaps each worker).
`--replay-workers 1,2,1,2` runs the tool once per value, in that order, on the same stream (each
a rebuild on a fresh database and again): an interleaved comparison in one window.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg

from bench.consumer import fill, subject_matches, timed_drain
from bench.env import definition
from bench.events import BenchEvent, EventFactory
from bench.procs import TICK, cpu_jiffies, tree_jiffies
from bench.stats import fmt
from bench.suite import Suite
from services import registry
from services.common.events import subject_for

TITLE = "5. Replay"


def replay_events(spec: str, count: int, tag: str, seed: int = 5) -> list[BenchEvent]:
    """`count` events for `spec`'s subjects: 90% distinct, 10% resent copies, shuffled."""
    subjects = definition(spec).subjects
    factory = EventFactory(seed, tag=tag)
    distinct: list[BenchEvent] = []
    want = count - count // 10
    while len(distinct) < want:
        for event in factory.workload(5000, duplicate_rate=0.0, reorder_rate=0.0):
            if any(subject_matches(p, subject_for(event.type)) for p in subjects):
                distinct.append(event)
    distinct = distinct[:want]
    rng = random.Random(seed)
    copies = [
        BenchEvent(e.id, e.type, e.object_id, e.customer_id, e.body, duplicate=True)
        for e in rng.choices(distinct, k=count - want)
    ]
    everything = distinct + copies
    rng.shuffle(everything)
    return everything


#: The relay marks outbox rows published after commit; a replay that finds rows the previous
#: process had not relayed yet updates them. That is delivery bookkeeping, not a record change.
BOOKKEEPING = {"outbox"}


async def table_state(dsn: str, schema: str) -> dict[str, tuple[int, str]]:
    """Per table: (rows inserted+updated+deleted since stats reset, checksum of its content)."""
    conn = await asyncpg.connect(dsn)
    try:
        stats = {
            r["relname"]: int(r["changed"])
            for r in await conn.fetch(
                "SELECT relname, n_tup_ins + n_tup_upd + n_tup_del AS changed FROM pg_stat_user_tables "
                "WHERE schemaname = $1",
                schema,
            )
        }
        state = {}
        for table in sorted(stats):
            if table == "schema_migrations":
                continue
            columns = "t.id, t.subject, t.msg_id, t.payload" if table in BOOKKEEPING else "t"
            digest = await conn.fetchval(
                f"SELECT md5(coalesce(string_agg(({columns})::text, '|' ORDER BY ({columns})::text), '')) "
                f'FROM {schema}."{table}" t'
            )
            state[table] = (stats[table], str(digest))
        return state
    finally:
        await conn.close()


def compare(before: dict[str, tuple[int, str]], after: dict[str, tuple[int, str]]) -> tuple[int, list[str]]:
    """Rows changed in record tables, and a line per table that changed at all."""
    changed = 0
    lines = []
    for table in sorted(set(before) | set(after)):
        rows_before, digest_before = before.get(table, (0, ""))
        rows_after, digest_after = after.get(table, (0, ""))
        delta = rows_after - rows_before
        if table not in BOOKKEEPING:
            changed += delta
        if delta or digest_before != digest_after:
            content = "content identical" if digest_before == digest_after else "content DIFFERENT"
            lines.append(f"{table}: {delta} row changes, {content}")
    return changed, lines


async def run(suite: Suite) -> None:
    ready = suite.ready_services()
    spec = suite.config.replay_service or ("billing" if "billing" in ready else (ready[0] if ready else "toy"))
    count = suite.config.replay_events
    deadline = suite.config.pick(120, 60)
    first = suite.figure(
        TITLE, "replay.time", f"{spec}: replay {count:,} events (10% duplicates, shuffled)", "s", target=20
    )
    rate = suite.figure(TITLE, "replay.rate", f"{spec}: replay rate", "events/s")
    cpu = suite.figure(TITLE, "replay.cpu", f"{spec}: its own CPU per event replayed", "ms")
    again = suite.figure(TITLE, "replay.changed", f"{spec}: rows changed by replaying again", "rows", target=0)
    again_time = suite.figure(TITLE, "replay.again_time", f"{spec}: replay again (all duplicates)", "s")
    await suite.stop_mesh()
    env = suite.env
    schema = definition(spec).schema
    async with suite.measuring(TITLE):
        for run_no in suite.runs(1):
            if not suite.another_run(TITLE, run_no):
                break
            events = replay_events(spec, count, suite.tag())
            suite.say(f"  run {run_no + 1}: filling STRIPE with {count:,} events for {spec}")
            fill_rate = await fill(suite, events)
            database = await env.fresh_database("replay")
            try:
                suite.say(f"  run {run_no + 1}: {spec} replays them (deadline {deadline:.0f} s)")
                result = await timed_drain(suite, spec, database, count, deadline)
                suite.record(rate, result.rate)
                if not result.finished:
                    projected = count / result.rate if result.rate else float("inf")
                    suite.record(first, projected)
                    first.notes.append(
                        f"run {run_no + 1}: stopped at the {deadline:.0f} s deadline with {result.acked:,} "
                        f"of {count:,} acked; time shown is projected from the rate; replay-again not measured"
                    )
                    continue
                suite.record(first, result.seconds)
                if result.cpu_ms_per_event is not None:
                    suite.record(cpu, result.cpu_ms_per_event)
                await asyncio.sleep(1.0)  # PostgreSQL flushes table statistics within a second
                state_before = await table_state(env.pg.dsn(database), schema)
                suite.say(f"  run {run_no + 1}: replaying again over the built records")
                second = await timed_drain(suite, spec, database, count, deadline)
                await asyncio.sleep(1.0)
                changed, lines = compare(state_before, await table_state(env.pg.dsn(database), schema))
                suite.record(again_time, second.seconds)
                suite.record(again, changed)
                again.notes.append(
                    f"run {run_no + 1}: {'; '.join(lines) or 'no table changed'}; second pass "
                    f"{'complete' if second.finished else 'incomplete'} at {fmt(second.rate)} events/s; "
                    f"stream filled at {fmt(fill_rate)}/s"
                )
            finally:
                await env.drop_database(database)
            await run_tool_section(suite, spec, count, deadline)
        await env.reset_stream()


@dataclass
class ToolRun:
    """One `syncmesh replay` process: its wall time, CPU and what it reported."""

    seconds: float
    cpu_ms: float
    postgres_cpu_ms: float
    nats_cpu_ms: float
    messages: int
    changed_rows: int
    failures: int
    exit_code: int
    output: str
    workers: int

    def per_event(self, cpu_ms: float) -> float | None:
        return cpu_ms / self.messages if self.messages else None


def _reported(pattern: str, text: str) -> int:
    match = re.search(pattern, text)
    return int(match.group(1)) if match else -1


def _run_process(
    argv: list[str], env: dict[str, str], out_path: Path, log_path: Path, deadline: float
) -> tuple[float, int, float]:
    """Run to the end (killed at `deadline`); wall seconds, exit code and its own CPU in ms
    (wait4's rusage: this child's alone, whatever else the bench reaps meanwhile)."""
    with log_path.open("w") as stderr, out_path.open("w") as stdout:
        started = time.monotonic()
        proc = subprocess.Popen(argv, env=env, stdout=stdout, stderr=stderr)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - started > deadline:
                proc.kill()
            time.sleep(0.02)
        seconds = time.monotonic() - started
    proc.returncode = code = os.waitstatus_to_exitcode(status)
    return seconds, code, (usage.ru_utime + usage.ru_stime) * 1000


async def run_tool(suite: Suite, spec: str, database: str, deadline: float, workers: int | None = None) -> ToolRun:
    """`syncmesh replay SPEC` on `database`, as its own process; its CPU from wait4, so nothing
    else the bench reaps is counted."""
    env = suite.env
    log_path = env.data_dir / f"replay-tool-{database}.log"
    argv = [sys.executable, "-m", "launcher.cli", "replay", spec]
    if workers is not None:
        argv += ["--workers", str(workers)]
    child_env = env.child_env(SYNCMESH_DATABASE_URL=env.pg.dsn(database))
    pg_pid = env.pg.process.pid if env.pg.process is not None else None
    nats_pid = env.nats.process.pid if env.nats.process is not None else None
    pg_before = tree_jiffies(pg_pid) if pg_pid else 0
    nats_before = cpu_jiffies(nats_pid, children=False) if nats_pid else 0
    out_path = env.data_dir / f"replay-tool-{database}.out"
    seconds, code, cpu_ms = await asyncio.to_thread(_run_process, argv, child_env, out_path, log_path, deadline)
    pg_ms = ((tree_jiffies(pg_pid) - pg_before) * 1000 / TICK) if pg_pid else 0.0
    nats_ms = ((cpu_jiffies(nats_pid, children=False) - nats_before) * 1000 / TICK) if nats_pid else 0.0
    text = out_path.read_text()
    return ToolRun(
        seconds=seconds,
        cpu_ms=cpu_ms,
        postgres_cpu_ms=pg_ms,
        nats_cpu_ms=nats_ms,
        messages=_reported(r"replayed (\d+) messages", text),
        changed_rows=_reported(r"changed (\d+) rows in total", text),
        failures=_reported(r"(\d+) events FAILED", text),
        exit_code=code,
        output=text,
        workers=_reported(r"with (\d+) workers?", text),
    )


async def run_tool_section(suite: Suite, spec: str, count: int, deadline: float) -> None:
    """The operator tool on the stream the service just drained: a rebuild, then again; once per
    `--replay-workers` value, in order."""
    if spec not in registry.names():
        suite.note(TITLE, f"the operator tool replays registered services only; {spec} not measured")
        return
    choices = suite.config.replay_workers
    for workers in choices:
        # One value (the usual run): the figures as they always were; several: a set per value.
        key, label = ("", "") if len(set(choices)) == 1 else (f".w{workers}", f" --workers {workers}")
        if not await _tool_pair(suite, spec, count, deadline, workers, key, label):
            return


async def _tool_pair(
    suite: Suite, spec: str, count: int, deadline: float, workers: int | None, key: str, label: str
) -> bool:
    """A rebuild on a fresh database and the tool again over it; False if a run failed."""
    tool = f"`syncmesh replay {spec}{label}`"
    rebuild = suite.figure(
        TITLE, f"replay.tool.time{key}", f"{tool}: {count:,} events on an empty database", "s", target=20
    )
    rate = suite.figure(TITLE, f"replay.tool.rate{key}", f"{tool}: rate", "events/s")
    cpu = suite.figure(TITLE, f"replay.tool.cpu{key}", f"{tool}: its own CPU per event (workers included)", "ms")
    again = suite.figure(TITLE, f"replay.tool.changed{key}", f"{tool} again: rows it reports changed", "rows", target=0)
    again_time = suite.figure(TITLE, f"replay.tool.again_time{key}", f"{tool} again", "s")
    env = suite.env
    database = await env.fresh_database("replay_tool")
    try:
        for run_label, figure_time in (("rebuild", rebuild), ("again", again_time)):
            suite.say(f"  {tool} ({run_label}) on {database}")
            result = await run_tool(suite, spec, database, deadline, workers)
            if result.exit_code != 0 or result.messages <= 0:
                suite.note(
                    TITLE,
                    f"{tool} ({run_label}) exited {result.exit_code} after {result.seconds:.1f} s: "
                    + " | ".join(result.output.strip().splitlines()[-5:]),
                )
                return False
            suite.record(figure_time, result.seconds)
            per_event = {
                name: f"{ms / result.messages:.3f}"
                for name, ms in (
                    ("tool", result.cpu_ms),
                    ("postgresql", result.postgres_cpu_ms),
                    ("nats-server", result.nats_cpu_ms),
                )
            }
            figure_time.notes.append(
                f"{run_label}: {result.messages:,} messages in {result.seconds:.2f} s "
                f"({fmt(result.messages / result.seconds)}/s) with {result.workers} workers; CPU ms per event "
                + ", ".join(f"{k} {v}" for k, v in per_event.items())
                + f"; tool reports {result.changed_rows} rows changed, {max(result.failures, 0)} failures"
            )
            if run_label == "rebuild":
                suite.record(rate, result.messages / result.seconds)
                if (value := result.per_event(result.cpu_ms)) is not None:
                    suite.record(cpu, value)
            else:
                suite.record(again, result.changed_rows)
    finally:
        await env.drop_database(database)
    return True

"""5. Replay: 100,000 events (10% duplicates, shuffled) rebuilt by one service, then again.

The stream is filled with events the service subscribes to (90% distinct, 10% resent copies,
in random order: a rebuild from history is never in order), and the service drains it with a
fresh durable on an empty database. Then its durable is deleted and it replays the same stream
over the records it built: every event is already in its idempotency record, so no row may
change. Rows changed are counted from PostgreSQL's own statistics (n_tup_ins/upd/del of the
service's tables) and checked against a checksum of every table's content.
"""

from __future__ import annotations

import asyncio
import random

import asyncpg

from bench.consumer import fill, subject_matches, timed_drain
from bench.env import definition
from bench.events import BenchEvent, EventFactory
from bench.stats import fmt
from bench.suite import Suite
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
        await env.reset_stream()

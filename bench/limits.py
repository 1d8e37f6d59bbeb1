"""The physical limits every other figure sits under: disk fsync rate, JetStream's durable
publish rate, PostgreSQL's synchronous commit rate, and how fast this machine runs Python today.

With `sync_interval: always`, nats-server writes and fsyncs every message before acking it, one
message at a time, so durable ingest can never beat the fsync rate of the disk under the
stream; a synchronous PostgreSQL commit is one WAL flush, so a transaction per event is capped
the same way (hence batch transactions in the consumer). Knowing these ceilings says whether a
missed target is the code's fault or the machine's.

The Python reference (parse the bench's 3 KB events and wrap them in the envelope, the work the
gateway does per webhook after verifying it, in one process with nothing else running) is there
because the same VM has run the same code at speeds 1.5x apart on different days: compare
figures between reports only after comparing this one.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from datetime import UTC, datetime

import asyncpg
import nats
import nats.errors
from google.protobuf.timestamp_pb2 import Timestamp
from nats.js.api import StorageType, StreamConfig
from syncmesh.events.v1 import envelope_pb2

from bench.events import workload
from bench.suite import Suite
from services.common.embedded import NatsCluster
from services.common.events import StripeEvent, parse_event, to_envelope

TITLE = "0. Physical limits of this machine"


def fsync_rate(folder: str, seconds: float) -> float:
    """Serial 4 KB append + fsync per second on the disk holding the bench's data."""
    path = os.path.join(folder, "fsync-probe")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        block = b"x" * 4096
        count = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            os.write(fd, block)
            os.fsync(fd)
            count += 1
        return count / (time.perf_counter() - started)
    finally:
        os.close(fd)
        os.unlink(path)


_ID = re.compile(r"^evt_[A-Za-z0-9_]{1,255}$")
_TYPE = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+){1,5}$")


def yardstick_envelope(body: bytes) -> bytes:
    """What `parse_event` + `to_envelope` did when the yardstick was introduced (standard-library
    JSON, the same checks, a frozen dataclass, a timestamped envelope), copied here: the
    yardstick measures the machine, so it must not get faster when the project's own event code
    does (orjson halved that code's cost on 2026-12-06, which would have read as a faster
    machine). Measured against that code in one process: within 2 %."""
    data = json.loads(body)
    if not isinstance(data, dict) or data.get("object") != "event":
        raise ValueError("not an event")
    event_id, event_type, created = data.get("id"), data.get("type"), data.get("created")
    if not (isinstance(event_id, str) and _ID.match(event_id) and isinstance(event_type, str)):
        raise ValueError("bad id or type")
    if not (_TYPE.match(event_type) and isinstance(created, int) and not isinstance(created, bool) and created > 0):
        raise ValueError("bad type or created")
    livemode, payload = data.get("livemode"), data.get("data")
    if not isinstance(livemode, bool) or not isinstance(payload, dict) or not isinstance(payload.get("object"), dict):
        raise ValueError("bad livemode or data")
    previous = payload.get("previous_attributes")
    if previous is not None and not isinstance(previous, dict):
        raise ValueError("bad previous_attributes")
    api_version, account = data.get("api_version") or "", data.get("account") or ""
    if not isinstance(api_version, str) or not isinstance(account, str):
        raise ValueError("bad api_version or account")
    event = StripeEvent(
        id=event_id,
        type=event_type,
        created=created,
        livemode=livemode,
        api_version=api_version,
        account=account,
        object=payload["object"],
        previous_attributes=previous,
        raw=bytes(body),
    )
    received = Timestamp()
    received.FromDatetime(datetime.now(UTC))
    return envelope_pb2.StripeEventEnvelope(
        event_id=event.id,
        event_type=event.type,
        created=Timestamp(seconds=event.created),
        livemode=event.livemode,
        api_version=event.api_version,
        account=event.account,
        payload=event.raw,
        received_at=received,
        source=envelope_pb2.EVENT_SOURCE_WEBHOOK,
    ).SerializeToString()


def python_reference_rate(seconds: float) -> float:
    """Events parsed and enveloped per second by one Python process (a CPU yardstick)."""
    bodies = [e.body for e in workload(500, tag="yardstick")]
    count = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for body in bodies:
            yardstick_envelope(body)
        count += len(bodies)
    return count / (time.perf_counter() - started)


async def nats_durable_publish_rate(suite: Suite, count: int) -> float:
    """Pipelined JetStream publishes of ~3 KB envelopes, all acked, with per-message fsync."""
    bus = suite.env.bus
    assert bus is not None
    events = workload(count, tag=suite.tag(), duplicate_rate=0.0)
    payloads = [
        (e.subject, to_envelope(parse_event(e.body), source=envelope_pb2.EVENT_SOURCE_WEBHOOK), e.id) for e in events
    ]
    started = time.perf_counter()
    futures = [await bus.js.publish_async(s, p, headers={"Nats-Msg-Id": i}) for s, p, i in payloads]
    for future in futures:
        await future
    return count / (time.perf_counter() - started)


async def nats_cluster_publish_rate(suite: Suite, count: int) -> float:
    """The same publishes to a stream of three replicas on a 3-node JetStream cluster (loopback,
    every node on this machine and its disk, `sync_interval: always` on each): what one stream
    leader sustains when each message must be on a majority of disks before it is acked."""
    cluster = NatsCluster(suite.env.data_dir / "nats-cluster")
    cluster.start()
    try:
        nc = await nats.connect(servers=cluster.url.split(","))
        try:
            js = nc.jetstream(timeout=10)
            config = StreamConfig(name="BENCH_R3", subjects=["stripe.>"], num_replicas=3, storage=StorageType.FILE)
            for _ in range(60):  # the cluster elects its meta leader first (about 5 s)
                try:
                    await js.add_stream(config)
                    break
                except (nats.errors.Error, TimeoutError):
                    await asyncio.sleep(0.5)
            events = workload(count, tag=suite.tag(), duplicate_rate=0.0)
            payloads = [
                (e.subject, to_envelope(parse_event(e.body), source=envelope_pb2.EVENT_SOURCE_WEBHOOK), e.id)
                for e in events
            ]
            started = time.perf_counter()
            futures = [await js.publish_async(s, p, headers={"Nats-Msg-Id": i}) for s, p, i in payloads]
            for future in futures:
                await future
            return count / (time.perf_counter() - started)
        finally:
            await nc.close()
    finally:
        cluster.stop()


async def pg_commit_rate(dsn: str, seconds: float) -> float:
    """One-row INSERT transactions per second, synchronous_commit on: one WAL flush each."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE TABLE IF NOT EXISTS bench_commit_probe (id bigserial PRIMARY KEY, v text)")
        count = 0
        started = time.perf_counter()
        while time.perf_counter() - started < seconds:
            await conn.execute("INSERT INTO bench_commit_probe (v) VALUES ('x')")
            count += 1
        await conn.execute("DROP TABLE bench_commit_probe")
        return count / (time.perf_counter() - started)
    finally:
        await conn.close()


_PATTERN_SCHEMA = """
CREATE TABLE bench_processed (event_id text PRIMARY KEY, event_type text NOT NULL);
CREATE TABLE bench_records (object_id text PRIMARY KEY, last_event_id text NOT NULL, times integer NOT NULL DEFAULT 1);
CREATE TABLE bench_outbox (id bigserial PRIMARY KEY, subject text NOT NULL, payload bytea NOT NULL);
"""


async def pg_pattern_rate(dsn: str, events: int, *, set_based: bool, batch: int = 256) -> float:
    """Events/s through the consumer's database pattern, without NATS or a handler.

    Per message (what the runtime does today): one transaction per batch, and for each event a
    savepoint, the idempotency insert, one record upsert and one outbox insert, each its own
    round trip. Set-based: the same rows for the whole batch in three statements (unnest
    arrays), rows sorted by key. The gap between the two is the room a set-based batch path in
    the runtime would have.
    """
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("DROP TABLE IF EXISTS bench_processed, bench_records, bench_outbox")
        await conn.execute(_PATTERN_SCHEMA)
        ids = [f"evt_pattern_{i:08d}" for i in range(events)]
        started = time.perf_counter()
        for start in range(0, events, batch):
            chunk = ids[start : start + batch]
            async with conn.transaction():
                if set_based:
                    fresh = await conn.fetch(
                        "INSERT INTO bench_processed (event_id, event_type) "
                        "SELECT unnest($1::text[]), 'customer.updated' ON CONFLICT DO NOTHING RETURNING event_id",
                        chunk,
                    )
                    keys = sorted(r["event_id"] for r in fresh)
                    await conn.execute(
                        "INSERT INTO bench_records (object_id, last_event_id) SELECT k, k FROM unnest($1::text[]) k "
                        "ON CONFLICT (object_id) DO UPDATE SET last_event_id = excluded.last_event_id, "
                        "times = bench_records.times + 1",
                        keys,
                    )
                    await conn.execute(
                        "INSERT INTO bench_outbox (subject, payload) SELECT 'syncmesh.bench.x', convert_to(k, 'UTF8') "
                        "FROM unnest($1::text[]) k",
                        keys,
                    )
                else:
                    for event_id in chunk:
                        async with conn.transaction():
                            fresh_one = await conn.fetchval(
                                "INSERT INTO bench_processed (event_id, event_type) VALUES ($1, 'customer.updated') "
                                "ON CONFLICT DO NOTHING RETURNING true",
                                event_id,
                            )
                            if fresh_one:
                                await conn.execute(
                                    "INSERT INTO bench_records (object_id, last_event_id) VALUES ($1, $1) "
                                    "ON CONFLICT (object_id) DO UPDATE SET last_event_id = excluded.last_event_id, "
                                    "times = bench_records.times + 1",
                                    event_id,
                                )
                                await conn.execute(
                                    "INSERT INTO bench_outbox (subject, payload) VALUES ('syncmesh.bench.x', $1)",
                                    event_id.encode(),
                                )
        rate = events / (time.perf_counter() - started)
        await conn.execute("DROP TABLE bench_processed, bench_records, bench_outbox")
        return rate
    finally:
        await conn.close()


async def run(suite: Suite) -> None:
    env = suite.env
    yardstick = suite.figure(
        TITLE, "limits.python", "Python reference: 3 KB events parsed + enveloped, one process", "events/s"
    )
    fsync = suite.figure(TITLE, "limits.fsync", "disk: 4 KB write + fsync, serial", "/s")
    publish = suite.figure(TITLE, "limits.nats", "JetStream durable publish, pipelined (no gateway)", "msgs/s")
    publish_r3 = suite.figure(
        TITLE, "limits.nats_r3", "JetStream durable publish, 3 replicas on a 3-node loopback cluster", "msgs/s"
    )
    commit = suite.figure(TITLE, "limits.pg", "PostgreSQL one-row commits, serial", "commits/s")
    per_event = suite.figure(
        TITLE, "limits.pg_per_event", "PostgreSQL, consumer pattern per event (savepoint + 3 statements)", "events/s"
    )
    set_based = suite.figure(
        TITLE, "limits.pg_set_based", "PostgreSQL, same rows set-based (3 statements per 256)", "events/s"
    )
    seconds = suite.config.pick(2.0, 1.0)
    async with suite.measuring(TITLE):
        for run_no in suite.runs():
            if not suite.another_run(TITLE, run_no):
                break
            suite.say(f"  limits run {run_no + 1}")
            suite.record(yardstick, python_reference_rate(seconds))
            suite.record(fsync, fsync_rate(str(env.data_dir), seconds))
            suite.record(publish, await nats_durable_publish_rate(suite, int(suite.config.pick(3000, 1500))))
            suite.record(publish_r3, await nats_cluster_publish_rate(suite, int(suite.config.pick(3000, 1500))))
            suite.record(commit, await pg_commit_rate(env.pg.dsn(), seconds))
            n = int(suite.config.pick(5120, 2560))
            suite.record(per_event, await pg_pattern_rate(env.pg.dsn(), n, set_based=False))
            suite.record(set_based, await pg_pattern_rate(env.pg.dsn(), n, set_based=True))
    await env.reset_stream()
    suite.note(
        TITLE,
        "nats-server with sync_interval: always fsyncs each message before acking it, one at a time "
        "(strace shows one fsync per publish), so durable ingest is capped near the JetStream figure "
        "above whatever the gateway does. On a cluster the stream's leader appends through its Raft log, "
        "which writes (and fsyncs) what arrived together as one batch on each node: docs/scaling.md "
        "reads the two figures side by side.",
    )

"""The benchmark's own arithmetic: open-loop schedules, percentiles, verdicts and the report.

No timing assertions: the suite prints figures, it never asserts on speed.
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bench.events import BENCH_SECRET, EventFactory, sign
from bench.loadgen import LoadResult, OpenLoop, Outcome, StripeRetries, count_for, due_times, open_loop
from bench.report import Report, render, write
from bench.stats import Figure, Target, percentile
from gateway.verify import verify_signature
from services.common.events import parse_event


def test_due_times_are_evenly_spaced_from_the_start() -> None:
    assert due_times(4, 500.0, 10.0) == pytest.approx([10.0, 10.002, 10.004, 10.006])


def test_shares_of_a_split_schedule_interleave_into_the_whole() -> None:
    whole = due_times(10, 1000.0, 5.0)
    shares = [due_times(len(range(k, 10, 3)), 1000.0, 5.0, offset=k, step=3) for k in range(3)]
    assert sorted(t for share in shares for t in share) == pytest.approx(whole)


def test_count_for_rate_and_duration() -> None:
    assert count_for(500, 10) == 5000
    assert count_for(1000, 0.0001) == 1


def test_rate_must_be_positive() -> None:
    with pytest.raises(ValueError):
        due_times(3, 0, 0.0)


async def test_open_loop_starts_late_calls_without_waiting_for_slow_ones() -> None:
    loop = asyncio.get_running_loop()
    now = loop.time()
    dues = [now - 1.0, now - 1.0, now + 0.01]  # two already overdue: both start at once
    started: list[int] = []

    async def fire(i: int) -> None:
        started.append(i)
        await asyncio.sleep(0.05 if i == 0 else 0)

    await open_loop(dues, fire)
    assert sorted(started) == [0, 1, 2] and started[:2] == [0, 1]


def test_latency_counts_from_the_due_time_not_the_send_time() -> None:
    late = Outcome(due=1.0, sent=1.5, first_status=200, first_done=1.6, final_status=200, attempts=1)
    failed = Outcome(due=1.0, sent=1.0, first_status=503, first_done=1.1, final_status=200, attempts=2)
    result = LoadResult(offered_rate=100, outcomes=[late, failed])
    assert result.first_latencies_ms == pytest.approx([600.0])
    assert result.send_lags_ms == pytest.approx([500.0, 0.0])
    assert (result.first_5xx, result.retries, result.undelivered) == (1, 1, 0)


def test_percentile_is_nearest_rank() -> None:
    values = list(range(1, 101))
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile([7.0], 99) == 7.0
    assert math.isnan(percentile([], 50))


def test_figure_median_range_and_verdict() -> None:
    figure = Figure("k", "p99", "ms", Target(10, "max"), values=[12.0, 8.0, 9.0])
    assert (figure.median, figure.low, figure.high) == (9.0, 8.0, 12.0)
    assert figure.verdict() == "met"
    assert Figure("k", "rate", "/s", Target(2000, "min"), values=[1500.0]).verdict() == "NOT met"
    assert Figure("k", "x", "ms", Target(1, "max")).verdict() == "not measured"


def test_report_shows_each_figure_beside_its_target(tmp_path: Path) -> None:
    report = Report(datetime(2026, 1, 2, 3, 4, tzinfo=UTC), "quick", {"cores": "2"}, {"Python": "3.11"})
    section = report.section("1. Gateway ingest")
    section.figures.append(Figure("a", "2xx p99 at 500/s", "ms", Target(10, "max"), values=[4.0, 6.0, 5.0]))
    section.notes.append("a note")
    text = render(report)
    assert "| 2xx p99 at 500/s | 5.00 [4.00-6.00] ms (3 runs) | <= 10.0 ms | met |" in text
    assert "- cores: 2" in text and "a note" in text
    path = write(report, tmp_path)
    assert path.name == "2026-01-02.md" and path.read_text() == text
    assert write(report, tmp_path) == path  # rewritten after each measurement, in place
    second = Report(datetime(2026, 1, 2, 9, 30, tzinfo=UTC), "full", {}, {})
    assert write(second, tmp_path).name == "2026-01-02-0930.md"  # the first run's report is kept
    assert path.read_text() == text


def test_generated_events_are_valid_signed_stripe_events() -> None:
    events = EventFactory(3, tag="t1").workload(300)
    assert len(events) == 300
    assert any(e.duplicate for e in events)
    for e in events[:50]:
        parsed = parse_event(e.body)
        assert parsed.id == e.id and parsed.type == e.type
        verify_signature(e.body, sign(e.body), (BENCH_SECRET,), tolerance=300)
    first = json.loads(events[0].body)
    assert first["data"]["object"]["id"] == events[0].object_id
    types = {e.type for e in events}
    assert {"customer.created", "invoice.created", "invoice.paid"} <= types


def test_same_seed_and_tag_give_the_same_events_and_another_tag_new_ids() -> None:
    a = EventFactory(1, tag="x1").workload(50)
    b = EventFactory(1, tag="x1").workload(50)
    c = EventFactory(1, tag="x2").workload(50)
    assert [e.body for e in a] == [e.body for e in b]
    assert not {e.id for e in a} & {e.id for e in c}


def test_the_yardstick_does_the_work_the_event_code_does_with_its_own_frozen_copy() -> None:
    """The yardstick keeps its own copy of the event code as it was (standard-library JSON), so
    it measures the machine; the copy must still build the envelope the real code builds."""
    from syncmesh.events.v1 import envelope_pb2

    from bench.events import workload
    from bench.limits import yardstick_envelope
    from services.common.events import parse_event, to_envelope

    for event in workload(50, tag="ys"):
        frozen, real = envelope_pb2.StripeEventEnvelope(), envelope_pb2.StripeEventEnvelope()
        frozen.ParseFromString(yardstick_envelope(event.body))
        real.ParseFromString(to_envelope(parse_event(event.body), source=envelope_pb2.EVENT_SOURCE_WEBHOOK))
        frozen.ClearField("received_at")
        real.ClearField("received_at")
        assert frozen == real


def test_idle_usage_counts_a_process_born_meanwhile_from_zero() -> None:
    """A PostgreSQL backend forked during the idle window (a pool reconnecting) is the mesh's
    doing too: its whole time counts, where a process known before counts its difference."""
    from bench.idle import Usage, usage_between

    before = {"pg": {10: Usage(cpu_ns=1_000_000_000, wakeups=100)}}
    after = {"pg": {10: Usage(cpu_ns=1_500_000_000, wakeups=150), 11: Usage(cpu_ns=500_000_000, wakeups=50)}}
    cores, wakeups = usage_between(before, after, seconds=10.0)["pg"]
    assert cores == pytest.approx(0.1) and wakeups == pytest.approx(10.0)


def test_stripe_retries_double_and_reach_past_the_overload_whatever_the_jitter() -> None:
    """The compressed Stripe schedule: delays doubling, jittered, and its last attempt never before
    `past` seconds after the first answer, so an event shed at an overload's start is retried after it."""
    schedule = StripeRetries.reaching(60.0, retries=4, jitter=0.2)
    assert schedule.unit * (1 + 2 + 4 + 8) == pytest.approx(schedule.span)
    rng = random.Random(1)
    totals = []
    for _ in range(2000):
        delays = schedule.delays(rng)
        assert len(delays) == 4
        for k, delay in enumerate(delays):
            assert schedule.unit * 2**k * 0.8 <= delay <= schedule.unit * 2**k * 1.2
        totals.append(sum(delays))
    assert min(totals) >= 60.0 and max(totals) <= schedule.longest
    assert len({round(t, 6) for t in totals}) > 1900  # jittered: events shed together come back apart
    with pytest.raises(ValueError):
        StripeRetries(span=10.0, jitter=1.0)
    # With a first retry after the load (Stripe's comes minutes later), nothing comes back during it.
    late = StripeRetries.reaching(120.0, retries=4, jitter=0.1, first=60.0)
    for _ in range(2000):
        delays = late.delays(rng)
        assert len(delays) == 5 and delays[0] >= 60.0 and 120.0 <= sum(delays) <= late.longest


@pytest.mark.parametrize("lean", [False, True], ids=["aiohttp", "lean"])
async def test_a_sender_retries_on_its_schedule_and_an_event_always_refused_is_counted_lost(
    lean: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """'Never delivered' is a real figure: a gateway that keeps refusing leaves events undelivered,
    with the answer to their last attempt; one that recovers gets every event delivered. The
    retries wait the schedule's delays, not the answer's Retry-After (Stripe ignores it)."""
    from aiohttp import web

    slept: list[float] = []
    real_sleep = asyncio.sleep

    async def recording_sleep(delay: float, *args: object) -> None:
        slept.append(delay)
        await real_sleep(delay)

    monkeypatch.setattr(asyncio, "sleep", recording_sleep)

    answers: dict[bytes, list[float]] = {}
    refuse_forever = {b'{"n": 0}'}

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        loop = asyncio.get_running_loop()
        answers.setdefault(body, []).append(loop.time())
        if body in refuse_forever or len(answers[body]) < 3:
            return web.Response(status=503, headers={"Retry-After": "30"})
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        requests = [(f'{{"n": {n}}}'.encode(), "t=1,v1=x") for n in range(3)]
        loop = asyncio.get_running_loop()
        schedule = StripeRetries(span=0.3, retries=3, jitter=0.2)
        sender = OpenLoop(f"http://127.0.0.1:{port}/", connections=4, retry_delays=schedule, lean=lean)
        result = await sender.run(requests, [loop.time()] * 3, rate=100)
    finally:
        await runner.cleanup()
    assert result.undelivered == 1 and result.undelivered_by_status() == {503: 1}
    assert [o.attempts for o in result.outcomes] == [4, 3, 3]
    # 7 retries (3 + 2 + 2), each after one of the schedule's delays: never the 30 s of Retry-After.
    retry_waits = [d for d in slept if d >= schedule.unit * (1 - schedule.jitter)]
    assert len(retry_waits) == 7 and max(retry_waits) <= schedule.unit * 4 * (1 + schedule.jitter)


async def test_the_lean_client_posts_reuses_its_connections_and_reports_no_answer_as_0() -> None:
    """Http1Pool: the status of each answer, the body sent whole with its signature, connections
    kept alive (two of them for 20 posts two at a time), and 0 when nothing answers in time."""
    from aiohttp import web

    from bench.loadgen import Http1Pool, closed_loop

    seen: list[tuple[bytes, str | None]] = []
    peers: set[object] = set()
    hang = asyncio.Event()

    async def handler(request: web.Request) -> web.Response:
        body = await request.read()
        seen.append((body, request.headers.get("Stripe-Signature")))
        peers.add(request.transport)
        if body == b"hang":
            await hang.wait()
        return web.Response(status=200 if body.startswith(b"ok") else 503, text="x" * (len(body) % 7))

    app = web.Application()
    app.router.add_post("/hook", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        requests = [(b"ok %d" % n if n % 4 else b"no %d" % n, f"t=1,v1={n}") for n in range(20)]
        result = await closed_loop(url, requests, 2)
        assert result.statuses == {200: 15, 503: 5} and result.ok == 15 and result.refused == 5
        assert sorted(seen) == sorted(requests)
        assert len(peers) == 2
        pool = Http1Pool(url, 1)
        assert await pool.post(b"hang", "t=1,v1=h", 0.2) == 0
        pool.close()
    finally:
        hang.set()
        await runner.cleanup()

"""1. Gateway ingest: verified, durably published webhooks per second, 2xx latency, a burst,
and what happens past saturation.

The gateway runs alone in its own process (`syncmesh gateway`) against the embedded
nats-server (`sync_interval: always`); no service consumes, so only verification and durable
publishing are measured. Load is open loop from this process (or several, with --clients).

Past saturation (issue 20): first the rate the gateway sustains is measured (closed loop, fewer
webhooks at once than its shedding limit, so nothing is shed), then twice that is offered for
60 s. The gateway must keep answering 2xx at >= 90 % of the sustained rate, shed the rest fast
(503 in milliseconds, never a timeout), and every shed event must be delivered by the sender's
Stripe-like retries afterwards. How fast a shed is answered is seen from two senders: the load
generator itself, whose own lateness on two shared cores is part of what it measures, and a
probe, a process of its own sending only 20 webhooks/s, whose answers are the gateway's side
(accept, parse, the event loop's backlog, the handler) without the generator's lag.
"""

from __future__ import annotations

import asyncio
import math
import time

from bench.events import workload
from bench.loadgen import (
    LoadResult,
    OpenLoop,
    Retries,
    SenderProcesses,
    StripeRetries,
    closed_loop,
    count_for,
    due_times,
    run_in_process,
    signed,
)
from bench.peer import drive
from bench.peer_events import stream
from bench.procs import TICK, cpu_jiffies
from bench.stats import fmt, percentile
from bench.suite import Suite

TITLE = "1. Gateway ingest"


#: The saturation run's sender: more connections than the gateway's default shedding limit
#: (SYNCMESH_GATEWAY_MAX_IN_FLIGHT, 128), so the queue forms at the gateway and not in the
#: sender's connection pool.
SATURATION_CONNECTIONS = 2048
#: The sustained rate is measured closed loop with this many webhooks at once: half the default
#: shedding limit, so the gateway is kept busy without shedding.
CAPACITY_CONCURRENCY = 64
#: Past saturation the sender offers this multiple of the sustained rate (unless --ingest-rate)...
OVERLOAD = 2.0
#: ...and the gateway must keep answering 2xx at this share of the sustained rate.
PLATEAU_SHARE = 0.9
#: The probe: a sender process of its own, light enough never to be late itself.
PROBE_RATE = 20.0
#: Slack after the last retry can have been answered, for the client timeout of that attempt.
DRAIN_SLACK = 20.0


#: Jitter of each retry delay: enough to pull apart events refused in the same instant, small
#: enough to keep the saturation run within the section's share of the time budget.
RETRY_JITTER = 0.1


def retries_past(seconds: float, overload: float = 1.0) -> StripeRetries:
    """Stripe's schedule compressed so that a refused event's first retry comes after the load
    of `seconds` (Stripe's first retry comes minutes later, after any overload of seconds), and its
    last once the load, offered at `overload` times the sustained rate, has ended and its backlog
    could have been worked off at the sustained rate ((overload - 1) x `seconds` more, and at least
    one more `seconds` even if nothing was overloaded): even an event refused at the load's very
    start is still retried once the gateway has caught up, as Stripe's 3 days always outlast an
    overload (bench/README.md, "Retries")."""
    seconds = max(seconds, 10.0)
    return StripeRetries.reaching(seconds * max(overload, 2.0), jitter=RETRY_JITTER, first=seconds)


async def offer(
    suite: Suite,
    url: str,
    rate: float,
    seconds: float,
    *,
    retries: Retries,
    connections: int = 256,
    probe: bool = False,
) -> tuple[LoadResult, LoadResult | None]:
    """Open-loop load at `rate` for `seconds`, from this process or --clients processes, retried
    on `retries`; with `probe`, also PROBE_RATE/s from a probe process, starting at the same
    instant. Returns the load's result and the probe's."""
    loop = asyncio.get_running_loop()
    longest = retries.longest if isinstance(retries, StripeRetries) else sum(retries)
    drain = longest + DRAIN_SLACK
    groups: list[SenderProcesses] = []
    if probe:
        groups.append(
            SenderProcesses(
                url,
                rate=PROBE_RATE,
                duration=seconds,
                processes=1,
                tag=f"{suite.tag()}probe",
                connections=16,
                retry_delays=retries,
                drain_timeout=drain,
                lean=True,
            )
        )
    clients = suite.config.clients
    if clients > 1:
        groups.append(
            SenderProcesses(
                url,
                rate=rate,
                duration=seconds,
                processes=clients,
                tag=suite.tag(),
                connections=max(1, connections // clients),
                retry_delays=retries,
                drain_timeout=drain,
                lean=True,
            )
        )
    try:
        for group in groups:
            await loop.run_in_executor(None, group.ready)
        # Built and signed before the start is set: at 2x the sustained rate that takes seconds.
        requests = None if clients > 1 else signed(workload(count_for(rate, seconds), tag=suite.tag()))
        start = time.monotonic() + 0.5  # the loop clock of asyncio's default loop, and of the senders
        for group in groups:
            group.go(start)
        if requests is not None:
            sender = OpenLoop(url, connections=connections, retry_delays=retries, lean=True)
            result = await sender.run(requests, due_times(len(requests), rate, start), rate=rate, drain_timeout=drain)
        results = [await loop.run_in_executor(None, group.collect) for group in groups]
    finally:
        for group in groups:
            await loop.run_in_executor(None, group.close)
    probed = results.pop(0) if probe else None
    if requests is None:
        result = results[0]
    return result, probed


def shed_answers(result: LoadResult) -> tuple[int, float, int]:
    """First attempts answered 503 (shed, or NATS unavailable): how many, their p99 from the due
    time in ms, and how many first attempts got no answer at all (timeouts, refused connections)."""
    shed = [(o.first_done - o.due) * 1000 for o in result.outcomes if o.first_status == 503]
    unanswered = sum(1 for o in result.outcomes if o.first_status == 0)
    return len(shed), percentile(shed, 99), unanswered


def answered_after_send_ms(result: LoadResult, status: int | None) -> list[float]:
    """First attempts' time from leaving the sender to their answer: for 503s (`status` 503), or
    2xx (`status` None). Unlike the time from the due time, this leaves out the sender's lag."""
    if status is None:
        return [(o.first_done - o.sent) * 1000 for o in result.outcomes if o.first_ok]
    return [(o.first_done - o.sent) * 1000 for o in result.outcomes if o.first_status == status]


def sent_rate(result: LoadResult) -> float:
    """First attempts per second as the sender actually sent them (first due to last send): below
    the offered rate when the sender itself could not keep up."""
    sent = [o.sent for o in result.outcomes if not math.isnan(o.sent)]
    if not sent:
        return math.nan
    return len(sent) / max(max(sent) - min(o.due for o in result.outcomes), 1e-9)


def undelivered_detail(result: LoadResult) -> str:
    tally = result.undelivered_by_status()
    if not tally:
        return "none"
    return ", ".join(f"{n} last answered {status or 'nothing (timeout)'}" for status, n in sorted(tally.items()))


def describe(result: LoadResult) -> str:
    s = result.summary()
    shed, shed_p99, unanswered = shed_answers(result)
    return (
        f"{int(s['requests'])} sent at {fmt(result.offered_rate)}/s "
        f"(first attempts left at {fmt(sent_rate(result))}/s): "
        f"{fmt(s['achieved_rate'])}/s first attempts answered 2xx, "
        f"{fmt(result.ok_rate_during_load)}/s 2xx while the load lasted (retries included), "
        f"p50 {fmt(s['p50_ms'])} ms, p99 {fmt(s['p99_ms'])} ms, max {fmt(s['max_ms'])} ms; "
        f"generator lag p99 {fmt(s['send_lag_p99_ms'])} ms; first-attempt non-2xx {int(s['first_non_2xx'])} "
        f"(503 {shed}, p99 {fmt(shed_p99)} ms from due, "
        f"{fmt(percentile(answered_after_send_ms(result, 503), 99))} ms from send; no answer {unanswered}), "
        f"retries {int(s['retries'])}, never delivered {int(s['undelivered'])} ({undelivered_detail(result)}), "
        f"last delivery {fmt(result.last_delivery)} s after the first due time"
    )


def describe_probe(probe: LoadResult) -> str:
    s = probe.summary()
    return (
        f"probe ({len(probe.outcomes)} at {fmt(PROBE_RATE)}/s, own process): 503 {probe.first_5xx}, "
        f"p50 / p99 {fmt(percentile(answered_after_send_ms(probe, 503), 50))} / "
        f"{fmt(percentile(answered_after_send_ms(probe, 503), 99))} ms from send; "
        f"2xx p50 / p99 {fmt(percentile(answered_after_send_ms(probe, None), 50))} / "
        f"{fmt(percentile(answered_after_send_ms(probe, None), 99))} ms from send; "
        f"its own lag p99 {fmt(s['send_lag_p99_ms'])} ms; never delivered {probe.undelivered}"
    )


async def run(suite: Suite) -> None:
    env = suite.env
    cfg = suite.config
    sustained_s = cfg.ingest_seconds or cfg.pick(60, 10)
    latency_s = cfg.pick(15, 5)
    burst_n = 10_000
    capacity_n = int(cfg.pick(15_000, 5_000))
    capacity = suite.figure(
        TITLE,
        "ingest.capacity",
        f"sustained ingest: 2xx/s closed loop, {CAPACITY_CONCURRENCY} at once (nothing shed)",
        "webhooks/s",
        target=2000,
        direction="min",
    )
    offered_what = f"{fmt(cfg.ingest_rate)}/s" if cfg.ingest_rate else f"{OVERLOAD:g}x the sustained rate"
    sustained = suite.figure(
        TITLE,
        "ingest.sustained",
        f"past saturation: 2xx/s while offered {offered_what} for {sustained_s:.0f} s (retries included)",
        "webhooks/s",
    )
    plateau = suite.figure(
        TITLE,
        "ingest.plateau",
        "past saturation: 2xx/s as a share of the sustained rate (same run)",
        "%",
        target=PLATEAU_SHARE * 100,
        direction="min",
    )
    lat = {
        500: suite.figure(TITLE, "ingest.p99@500", "2xx p99 at 500/s", "ms", target=10),
        1000: suite.figure(TITLE, "ingest.p99@1000", "2xx p99 at 1,000/s", "ms", target=25),
    }
    p50 = {
        500: suite.figure(TITLE, "ingest.p50@500", "2xx p50 at 500/s", "ms"),
        1000: suite.figure(TITLE, "ingest.p50@1000", "2xx p50 at 1,000/s", "ms"),
    }
    # A shed answer's time, three ways: from the due time (what Stripe would see, the generator's
    # lag included), from when the generator sent it, and from the probe (the gateway's side).
    shed_fast = suite.figure(TITLE, "ingest.shed_p99", "past saturation: 503 answers, p99 from due time", "ms")
    shed_sent = suite.figure(
        TITLE, "ingest.shed_sent_p99", "past saturation: 503 answers, p99 from the generator's send", "ms"
    )
    sender_lag = suite.figure(TITLE, "ingest.sender_lag_p99", "past saturation: the generator's own lag, p99", "ms")
    # The gateway side: at most 128 webhooks in hand at ~0.6 ms of CPU each is ~80 ms of admitted
    # work ahead of any request; a shed answer should not wait longer than that.
    probe_shed = suite.figure(
        TITLE,
        "ingest.probe_shed_p99",
        f"past saturation: 503 answers to the probe ({PROBE_RATE:g}/s, own process), p99 from send",
        "ms",
        target=100,
    )
    probe_ok = suite.figure(
        TITLE, "ingest.probe_ok_p99", "past saturation: 2xx answers to the probe, p99 from send", "ms"
    )
    # CPU per attempt does not fall when a neighbour takes a core, unlike rates and latencies (an
    # attempt that timed out in the sender may never have reached the gateway: see its note).
    saturated_cpu = suite.figure(
        TITLE,
        "ingest.saturated_cpu",
        "past saturation: gateway CPU per attempt sent (first attempts and retries)",
        "ms",
    )
    no_answer = suite.figure(
        TITLE, "ingest.no_answer", "past saturation: first attempts with no answer (timeouts)", "", target=0
    )
    lost = suite.figure(
        TITLE,
        "ingest.lost",
        "past saturation: events never delivered after the sender's retries (probe included)",
        "",
        target=0,
    )
    # Since the gateway sheds past SYNCMESH_GATEWAY_MAX_IN_FLIGHT (issue 20), a burst beyond it is
    # answered 503 in part by design; what must hold is that the sender's retries deliver it all.
    burst_5xx = suite.figure(
        TITLE, "ingest.burst5xx", f"first-attempt 5xx (shed) answers to a burst of {burst_n:,}", ""
    )
    burst_lost = suite.figure(
        TITLE, "ingest.burst_lost", f"burst of {burst_n:,}: events never delivered after retries", "", target=0
    )
    burst_time = suite.figure(TITLE, "ingest.burst_time", f"time to absorb a burst of {burst_n:,}", "s")
    gateway_cpu = suite.figure(TITLE, "ingest.gateway_cpu", "gateway CPU per webhook at 500/s", "ms")
    # Closed loop, as the side by side with the peer sends (section 8): at concurrency 1 every
    # webhook pays the gateway's per-request and per-wake-up costs alone, at 32 they are shared.
    closed_cpu = {
        c: suite.figure(
            TITLE, f"ingest.gateway_cpu_c{c}", f"gateway CPU per webhook, closed loop, concurrency {c}", "ms"
        )
        for c in (1, 32)
    }
    closed_n = int(cfg.pick(3000, 1000))

    await env.reset_stream()
    gateway = await env.start_gateway(cfg.gateway_max_in_flight)
    if cfg.gateway_max_in_flight is not None:
        suite.note(TITLE, f"gateway shedding limit set to {cfg.gateway_max_in_flight} (--gateway-max-in-flight)")
    url = f"http://127.0.0.1:{gateway.port}/webhooks/stripe"
    saturation_retries = retries_past(sustained_s, OVERLOAD)
    # The burst's backlog takes burst_n / sustained rate to work off: at least 20 s of retries.
    burst_retries = retries_past(20.0)
    try:
        suite.say("  warming up the gateway (2 s at 200/s)")
        await offer(suite, url, 200, 2, retries=retries_past(2))
        async with suite.measuring(TITLE):
            for run_no in suite.runs():
                if not suite.another_run(TITLE, run_no):
                    break
                for rate in (500, 1000):
                    suite.say(f"  run {run_no + 1}: open loop at {rate}/s for {latency_s:.0f} s")
                    cpu_before = cpu_jiffies(gateway.pid, children=False)
                    result, _ = await offer(suite, url, rate, latency_s, retries=retries_past(latency_s))
                    if rate == 500:
                        cpu_ms = (cpu_jiffies(gateway.pid, children=False) - cpu_before) / TICK * 1000
                        suite.record(gateway_cpu, cpu_ms / max(1, len(result.outcomes)))
                    suite.record(p50[rate], result.summary()["p50_ms"])
                    suite.record(lat[rate], result.summary()["p99_ms"])
                    lat[rate].notes.append(f"run {run_no + 1}: {describe(result)}")
                for concurrency, figure in closed_cpu.items():
                    suite.say(f"  run {run_no + 1}: closed loop, concurrency {concurrency}, {closed_n:,} webhooks")
                    bodies = stream(closed_n, suite.tag(), run_no * 100 + concurrency, 1_700_000_000).bodies
                    cpu_before = cpu_jiffies(gateway.pid, children=False)
                    answered = await drive(url, bodies, concurrency)
                    cpu_ms = (cpu_jiffies(gateway.pid, children=False) - cpu_before) / TICK * 1000
                    suite.record(figure, cpu_ms / max(1, len(bodies)))
                    figure.notes.append(
                        f"run {run_no + 1}: {answered.ok} of {len(bodies)} answered 2xx in {answered.seconds:.2f} s, "
                        f"p50 {fmt(answered.p50)} ms, p99 {fmt(answered.p99)} ms"
                    )
                suite.say(
                    f"  run {run_no + 1}: sustained rate, closed loop, {CAPACITY_CONCURRENCY} at once, "
                    f"{capacity_n:,} webhooks"
                )
                requests = signed(workload(capacity_n, tag=suite.tag()))
                closed = await closed_loop(url, requests, CAPACITY_CONCURRENCY)
                rate_sustained = closed.rate
                suite.record(capacity, rate_sustained)
                capacity.notes.append(
                    f"run {run_no + 1}: {closed.ok} of {len(requests)} answered 2xx in {closed.seconds:.2f} s, "
                    f"p50 {fmt(percentile(closed.latencies_ms, 50))} ms, "
                    f"p99 {fmt(percentile(closed.latencies_ms, 99))} ms; not 2xx {closed.refused}"
                )
                offered = cfg.ingest_rate or round(OVERLOAD * rate_sustained)
                saturation_retries = retries_past(sustained_s, offered / max(rate_sustained, 1e-9))
                suite.say(
                    f"  run {run_no + 1}: past saturation, offered {offered:.0f}/s for {sustained_s:.0f} s "
                    f"(sustained {rate_sustained:.0f}/s), then Stripe-like retries"
                )
                cpu_before = cpu_jiffies(gateway.pid, children=False)
                result, probed = await offer(
                    suite,
                    url,
                    offered,
                    sustained_s,
                    connections=SATURATION_CONNECTIONS,
                    retries=saturation_retries,
                    probe=True,
                )
                assert probed is not None
                cpu_ms = (cpu_jiffies(gateway.pid, children=False) - cpu_before) / TICK * 1000
                answers = sum(o.attempts for o in (*result.outcomes, *probed.outcomes))
                suite.record(saturated_cpu, cpu_ms / max(1, answers))
                saturated_cpu.notes.append(
                    f"run {run_no + 1}: {cpu_ms / 1000:.1f} s of gateway CPU for {answers} attempts "
                    f"({len(result.outcomes) + len(probed.outcomes)} events, "
                    f"{result.count(lambda o: o.delivered) + probed.count(lambda o: o.delivered)} delivered)"
                )
                during = result.ok_rate_during_load
                suite.record(sustained, during)
                suite.record(plateau, 100 * during / max(rate_sustained, 1e-9))
                shed, shed_p99, unanswered = shed_answers(result)
                if shed:
                    suite.record(shed_fast, shed_p99)
                    suite.record(shed_sent, percentile(answered_after_send_ms(result, 503), 99))
                suite.record(sender_lag, result.summary()["send_lag_p99_ms"])
                if probed.first_5xx:
                    suite.record(probe_shed, percentile(answered_after_send_ms(probed, 503), 99))
                suite.record(probe_ok, percentile(answered_after_send_ms(probed, None), 99))
                suite.record(no_answer, unanswered)
                suite.record(lost, result.undelivered + probed.undelivered)
                sustained.notes.append(f"run {run_no + 1}: {describe(result)}")
                sustained.notes.append(f"run {run_no + 1}: {describe_probe(probed)}")
                plateau.notes.append(
                    f"run {run_no + 1}: {fmt(during)}/s answered 2xx while offered {fmt(offered)}/s, "
                    f"against {fmt(rate_sustained)}/s sustained"
                )
                burst_retries = retries_past(max(20.0, burst_n / max(rate_sustained, 1.0)))
                suite.say(f"  run {run_no + 1}: burst of {burst_n:,} due at once")
                events = workload(burst_n, tag=suite.tag())
                burst = await run_in_process(
                    url,
                    events,
                    math.inf,
                    burst=True,
                    connections=1000,
                    timeout=120,
                    drain_timeout=burst_retries.longest + DRAIN_SLACK,
                    retry_delays=burst_retries,
                    lean=True,
                )
                suite.record(burst_5xx, burst.first_5xx)
                suite.record(burst_lost, burst.undelivered)
                done = [o.first_done for o in burst.outcomes if not math.isnan(o.first_done)]
                suite.record(burst_time, (max(done) - burst.outcomes[0].due) if done else math.nan)
                burst_5xx.notes.append(f"run {run_no + 1}: {describe(burst)}")
                await env.reset_stream()  # keep the stream small: its size is not under test here
    finally:
        env.stop(gateway)
    suite.note(
        TITLE,
        "Latency is from each request's scheduled send time to its answer; 'generator lag' is how late "
        "the generator itself started a request (a large lag means the figure is limited by the sender "
        "sharing the 2 cores, not by the gateway alone).",
    )
    suite.note(
        TITLE,
        f"Retries are Stripe's exponential backoff with jitter, compressed (bench/README.md): past saturation "
        f"{saturation_retries.describe()}; the burst {burst_retries.describe()}. Retry-After is not honoured, "
        "as Stripe does not.",
    )

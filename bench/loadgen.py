"""Open-loop webhook load: requests leave on a fixed schedule, whatever the server does.

A closed-loop generator (send, wait, send) slows down when the server slows down and so hides
exactly the queueing it should measure ("coordinated omission"). Here request `i` is due at
`t0 + i / rate`; the latency of a request is measured from that due time, not from when the
generator got round to sending it, so a stalled server or a stalled generator both show up as
latency. How late the generator itself was (`send_lag`) is recorded too, so a figure limited by
the generator rather than the gateway can be told apart.

Answers other than 2xx are retried the way Stripe does (exponential backoff, re-signed, a few
times), with the delays compressed from hours to fractions of a second; retries are counted
separately and never mixed into the first-attempt latency.

One Python process can drive about as many requests per second as one core allows; for higher
rates `run_processes` splits the schedule across several processes (process k sends requests
k, k+n, k+2n, ...), each building and signing its own share of the workload.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import multiprocessing.connection
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import aiohttp

from bench.events import BENCH_SECRET, BenchEvent, sign, workload
from bench.stats import percentile

#: Compressed Stripe retry schedule: Stripe waits minutes to hours; a benchmark cannot.
RETRY_DELAYS = (0.2, 0.5, 1.0)


def due_times(count: int, rate: float, start: float = 0.0, *, offset: int = 0, step: int = 1) -> list[float]:
    """When each request is due: request `offset + k * step` of an overall `rate`/s schedule.

    `step`/`offset` give one process's share of a schedule split across processes: together the
    shares interleave into exactly the single-process schedule.
    """
    if rate <= 0:
        raise ValueError("rate must be positive")
    return [start + (offset + k * step) / rate for k in range(count)]


def count_for(rate: float, duration: float) -> int:
    """Requests in `duration` seconds at `rate`/s (at least one)."""
    return max(1, math.floor(rate * duration + 1e-9))


@dataclass
class Outcome:
    """What happened to one webhook."""

    due: float
    sent: float = math.nan
    first_status: int = 0  # 0: no answer (connection error or timeout)
    first_done: float = math.nan
    final_status: int = 0
    attempts: int = 0

    @property
    def first_ok(self) -> bool:
        return 200 <= self.first_status < 300

    @property
    def delivered(self) -> bool:
        return 200 <= self.final_status < 300


@dataclass
class LoadResult:
    offered_rate: float
    outcomes: list[Outcome] = field(default_factory=list)
    started: float = 0.0
    finished: float = 0.0

    def merge(self, other: LoadResult) -> None:
        self.outcomes.extend(other.outcomes)
        self.finished = max(self.finished, other.finished)

    @property
    def first_latencies_ms(self) -> list[float]:
        return [(o.first_done - o.due) * 1000 for o in self.outcomes if o.first_ok]

    @property
    def send_lags_ms(self) -> list[float]:
        return [(o.sent - o.due) * 1000 for o in self.outcomes if not math.isnan(o.sent)]

    def count(self, predicate: Callable[[Outcome], bool]) -> int:
        return sum(1 for o in self.outcomes if predicate(o))

    @property
    def first_5xx(self) -> int:
        return self.count(lambda o: o.first_status >= 500)

    @property
    def first_non_2xx(self) -> int:
        return self.count(lambda o: not o.first_ok)

    @property
    def retries(self) -> int:
        return sum(max(0, o.attempts - 1) for o in self.outcomes)

    @property
    def undelivered(self) -> int:
        return self.count(lambda o: not o.delivered)

    @property
    def achieved_rate(self) -> float:
        """First-attempt 2xx answers per second, over the whole run (first due to last answer)."""
        ok = [o for o in self.outcomes if o.first_ok]
        if not ok:
            return 0.0
        first_due = min(o.due for o in self.outcomes)
        last = max(o.first_done for o in ok)
        return len(ok) / max(last - first_due, 1e-9)

    def summary(self) -> dict[str, float]:
        lat = self.first_latencies_ms
        lags = self.send_lags_ms
        return {
            "requests": float(len(self.outcomes)),
            "achieved_rate": self.achieved_rate,
            "p50_ms": percentile(lat, 50),
            "p99_ms": percentile(lat, 99),
            "max_ms": max(lat) if lat else math.nan,
            "send_lag_p99_ms": percentile(lags, 99),
            "first_non_2xx": float(self.first_non_2xx),
            "first_5xx": float(self.first_5xx),
            "retries": float(self.retries),
            "undelivered": float(self.undelivered),
        }


async def open_loop(
    dues: Sequence[float], fire: Callable[[int], Awaitable[None]], *, drain_timeout: float = 30.0
) -> None:
    """Start `fire(i)` at `dues[i]` (loop clock) without waiting for earlier ones to finish.

    The loop wakes for the next due time and starts everything that is due by then, so a late
    wake-up sends a small batch rather than drifting the schedule. Returns once every call has
    finished, or after `drain_timeout` once the last was started (the rest are cancelled).
    """
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()
    i = 0
    n = len(dues)
    while i < n:
        now = loop.time()
        while i < n and dues[i] <= now:
            task: asyncio.Task[None] = loop.create_task(fire(i))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        if i < n:
            await asyncio.sleep(max(0.0, dues[i] - loop.time()))
    if tasks:
        _done, pending = await asyncio.wait(set(tasks), timeout=drain_timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


class OpenLoop:
    """Sends signed webhooks to `url` on an open-loop schedule over a pooled aiohttp session."""

    def __init__(
        self,
        url: str,
        *,
        connections: int = 256,
        secret: str = BENCH_SECRET,
        timeout: float = 10.0,
        retry_delays: Sequence[float] = RETRY_DELAYS,
        on_answer: Callable[[int, Outcome], None] | None = None,
    ) -> None:
        self.url = url
        self.connections = connections
        self.secret = secret
        self.timeout = timeout
        self.retry_delays = tuple(retry_delays)
        self.on_answer = on_answer

    async def run(
        self,
        requests: Sequence[tuple[bytes, str]],
        dues: Sequence[float],
        *,
        rate: float,
        drain_timeout: float = 30.0,
    ) -> LoadResult:
        """Send `requests[i]` (body, signature) at `dues[i]` (loop-clock seconds, i.e. monotonic)."""
        loop = asyncio.get_running_loop()
        result = LoadResult(offered_rate=rate, outcomes=[Outcome(due=d) for d in dues])
        connector = aiohttp.TCPConnector(limit=self.connections, limit_per_host=self.connections)
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            result.started = loop.time()

            async def fire(i: int) -> None:
                await self._deliver(session, i, requests[i], result.outcomes[i])

            await open_loop(dues, fire, drain_timeout=drain_timeout)
            result.finished = loop.time()
        return result

    async def _post(self, session: aiohttp.ClientSession, body: bytes, signature: str) -> int:
        headers = {"Stripe-Signature": signature, "Content-Type": "application/json"}
        try:
            async with session.post(self.url, data=body, headers=headers) as response:
                await response.read()
                return response.status
        except (aiohttp.ClientError, TimeoutError, OSError):
            return 0

    async def _deliver(
        self, session: aiohttp.ClientSession, index: int, request: tuple[bytes, str], outcome: Outcome
    ) -> None:
        loop = asyncio.get_running_loop()
        body, signature = request
        outcome.sent = loop.time()
        status = await self._post(session, body, signature)
        outcome.first_status = outcome.final_status = status
        outcome.first_done = loop.time()
        outcome.attempts = 1
        if self.on_answer is not None:
            self.on_answer(index, outcome)
        for delay in self.retry_delays:
            if 200 <= outcome.final_status < 300:
                return
            await asyncio.sleep(delay)
            # Stripe signs every attempt afresh, with a new timestamp.
            outcome.final_status = await self._post(session, body, sign(body, self.secret))
            outcome.attempts += 1


def signed(events: Sequence[BenchEvent], secret: str = BENCH_SECRET) -> list[tuple[bytes, str]]:
    """Sign every body up front: signing is the sender's cost, not the gateway's."""
    now = int(time.time())
    return [(e.body, sign(e.body, secret, timestamp=now)) for e in events]


async def run_in_process(
    url: str,
    events: Sequence[BenchEvent],
    rate: float,
    *,
    connections: int = 256,
    lead: float = 0.2,
    on_answer: Callable[[int, Outcome], None] | None = None,
    drain_timeout: float = 30.0,
    timeout: float = 10.0,
    retry_delays: Sequence[float] = RETRY_DELAYS,
    burst: bool = False,
) -> LoadResult:
    """Open-loop load from this process; returns when every request is answered or given up.

    `burst` makes every request due at the same instant (a backlog released at once).
    """
    requests = signed(events)
    loop = asyncio.get_running_loop()
    start = loop.time() + lead
    dues = [start] * len(requests) if burst else due_times(len(requests), rate, start)
    sender = OpenLoop(url, connections=connections, on_answer=on_answer, timeout=timeout, retry_delays=retry_delays)
    return await sender.run(requests, dues, rate=rate, drain_timeout=drain_timeout)


# -- several processes ------------------------------------------------------------------------


def _worker(
    conn: multiprocessing.connection.Connection,
    url: str,
    count: int,
    tag: str,
    rate: float,
    offset: int,
    step: int,
    connections: int,
    duplicate_rate: float,
) -> None:
    events = workload(count, tag=tag, duplicate_rate=duplicate_rate)
    requests = signed(events)
    conn.send(("ready", len(requests)))
    start_at: float = conn.recv()
    # time.monotonic is CLOCK_MONOTONIC, shared by every process on the machine, and is what
    # asyncio's default loop clock reads: the processes agree on when request i is due.
    dues = due_times(len(requests), rate, start_at, offset=offset, step=step)

    async def go() -> LoadResult:
        return await OpenLoop(url, connections=connections).run(requests, dues, rate=rate / step)

    result = asyncio.run(go())
    conn.send(("done", result))
    conn.close()


def run_processes(
    url: str,
    *,
    rate: float,
    duration: float,
    processes: int,
    tag: str,
    connections: int = 128,
    duplicate_rate: float = 0.05,
    lead: float = 0.5,
    timeout: float = 300.0,
) -> LoadResult:
    """Open-loop load from `processes` spawned processes sharing one schedule (blocking call)."""
    total = count_for(rate, duration)
    ctx = multiprocessing.get_context("spawn")
    pipes = []
    procs = []
    for k in range(processes):
        share = len(range(k, total, processes))
        parent, child = ctx.Pipe()
        proc = ctx.Process(
            target=_worker,
            args=(child, url, share, f"{tag}p{k}", rate, k, processes, connections, duplicate_rate),
            daemon=True,
        )
        proc.start()
        pipes.append(parent)
        procs.append(proc)
    try:
        for pipe in pipes:
            if not pipe.poll(timeout):
                raise TimeoutError("load generator process did not get ready")
            pipe.recv()
        start_at = time.monotonic() + lead
        for pipe in pipes:
            pipe.send(start_at)
        merged = LoadResult(offered_rate=rate, started=start_at)
        for pipe in pipes:
            if not pipe.poll(timeout):
                raise TimeoutError("load generator process did not finish")
            _tag, part = pipe.recv()
            merged.merge(part)
        merged.offered_rate = rate
        return merged
    finally:
        for proc in procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()

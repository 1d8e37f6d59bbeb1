"""Open-loop webhook load: requests leave on a fixed schedule, whatever the server does.

A closed-loop generator (send, wait, send) slows down when the server slows down and so hides
exactly the queueing it should measure ("coordinated omission"). Here request `i` is due at
`t0 + i / rate`; the latency of a request is measured from that due time, not from when the
generator got round to sending it, so a stalled server or a stalled generator both show up as
latency. How late the generator itself was (`send_lag`) is recorded too, so a figure limited by
the generator rather than the gateway can be told apart.

Answers other than 2xx are retried the way Stripe does, re-signed each time: by default a few
quick fixed delays (sections that never expect a refusal), and where the gateway is pushed past
saturation `StripeRetries`, Stripe's exponential backoff with jitter compressed from 3 days into
a span that reaches past the overload (bench/README.md, "Retries"). Retries are counted
separately and never mixed into the first-attempt latency. `Retry-After` is ignored, as Stripe
ignores it.

One Python process can drive about as many requests per second as one core allows; for higher
rates `run_processes` splits the schedule across several processes (process k sends requests
k, k+n, k+2n, ...), each building and signing its own share of the workload.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import multiprocessing.connection
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import aiohttp

from bench.events import BENCH_SECRET, BenchEvent, sign, workload
from bench.stats import percentile

#: Quick fixed retries for sections that do not push the gateway past its shedding limit (a
#: refusal there is a fault to see, not load to spread); past saturation use `StripeRetries`.
RETRY_DELAYS = (0.2, 0.5, 1.0)

#: Stripe's retry span in live mode: "up to three days, with an exponential back off".
STRIPE_RETRY_SPAN_SECONDS = 3 * 24 * 3600


@dataclass(frozen=True)
class StripeRetries:
    """Stripe's retries, compressed: exponential backoff with jitter over `span` seconds.

    Stripe retries a refused event for up to 3 days with exponential backoff and does not publish
    the intervals (nor honour Retry-After). A benchmark cannot wait 3 days, so the whole schedule is
    scaled into `span`: `retries` delays doubling from one to the next (1, 2, 4, ... units, summing
    to `span`), each stretched or shrunk by up to `jitter` at random, so that events refused
    together do not all come back in the same instant (a schedule without jitter keeps a burst
    synchronised: it is refused again as a burst at every retry).

    What must survive the compression is Stripe's reach: its retries outlast any overload a
    webhook endpoint rides out, so an event it gives up on was lost by the endpoint, not by the
    schedule. `reaching(past)` therefore builds the schedule whose last attempt always comes at
    least `past` seconds after the first answer, jitter included: with `past` the length of the
    offered overload, an event refused at its very start is still retried after it has ended.
    """

    span: float
    retries: int = 4
    jitter: float = 0.2
    #: A first retry this long (before jitter) ahead of the doubling ones: Stripe's first retry
    #: comes minutes after a refusal, after any overload of seconds, so a refused event does not
    #: come back while the load it was refused in still lasts (0: none).
    first: float = 0.0

    def __post_init__(self) -> None:
        if self.span <= 0 or self.retries < 1 or not 0 <= self.jitter < 1 or not 0 <= self.first < self.span:
            raise ValueError("span must be positive, retries at least 1, jitter in [0, 1), first in [0, span)")

    @classmethod
    def reaching(cls, past: float, *, retries: int = 4, jitter: float = 0.2, first: float = 0.0) -> StripeRetries:
        """The schedule whose shortest total (every delay at its lowest jitter) is `past` seconds,
        with a first retry no sooner than `first` seconds (jitter included) if given."""
        return cls(span=past / (1 - jitter), retries=retries, jitter=jitter, first=first / (1 - jitter))

    @property
    def unit(self) -> float:
        """The first doubling delay before jitter; each next one is twice the one before."""
        return (self.span - self.first) / (2**self.retries - 1)

    @property
    def longest(self) -> float:
        """The latest the last attempt can come after the first answer (every delay at its highest)."""
        return self.span * (1 + self.jitter)

    @property
    def scale(self) -> float:
        """How many real seconds of Stripe's schedule one second of this one stands for."""
        return STRIPE_RETRY_SPAN_SECONDS / self.span

    def nominal(self) -> list[float]:
        """The delays before jitter."""
        return ([self.first] if self.first else []) + [self.unit * 2**k for k in range(self.retries)]

    def delays(self, rng: random.Random) -> list[float]:
        """One event's delays: before retry 1, 2, ..., each after the answer to the attempt before."""
        return [delay * rng.uniform(1 - self.jitter, 1 + self.jitter) for delay in self.nominal()]

    def describe(self) -> str:
        nominal = ", ".join(f"{delay:.3g}" for delay in self.nominal())
        return (
            f"{len(self.nominal())} retries after {nominal} s (each +-{self.jitter:.0%} at random; "
            f"the last {self.span * (1 - self.jitter):.0f}-{self.longest:.0f} s after the first answer; "
            f"Stripe's 3 days compressed {self.scale:,.0f}x)"
        )


Retries = Sequence[float] | StripeRetries


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
    #: When the last attempt was answered (the 2xx, or the refusal the sender gave up after).
    last_done: float = math.nan

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

    def undelivered_by_status(self) -> dict[int, int]:
        """Events never delivered, by the answer to their last attempt (0: none, a timeout)."""
        tally: dict[int, int] = {}
        for o in self.outcomes:
            if not o.delivered:
                tally[o.final_status] = tally.get(o.final_status, 0) + 1
        return tally

    @property
    def ok_rate_during_load(self) -> float:
        """2xx answers per second, first attempts and retries alike, while requests were still
        falling due (first to last due time): what the server delivered during the load itself."""
        if not self.outcomes:
            return math.nan
        first, last = min(o.due for o in self.outcomes), max(o.due for o in self.outcomes)
        if last <= first:
            return math.nan
        ok = sum(1 for o in self.outcomes if o.delivered and first <= o.last_done <= last)
        return ok / (last - first)

    @property
    def last_delivery(self) -> float:
        """Seconds from the first due time to the last 2xx, retries included (nan if none)."""
        done = [o.last_done for o in self.outcomes if o.delivered and not math.isnan(o.last_done)]
        if not done:
            return math.nan
        return max(done) - min(o.due for o in self.outcomes)

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


class Http1Pool:
    """Just enough HTTP/1.1 client for a load generator: keep-alive POSTs of prepared bodies over
    at most `limit` connections, the status code read and the body skipped.

    aiohttp's client costs ~120-150 us of CPU a request on this VM (its connector, a response
    object, header multidicts, timers); this costs a fraction of that. On two cores shared with
    the gateway, every microsecond the generator spends is taken from the server it measures, and
    its own lateness (the generator lag) is added to every answer it times: a leaner sender lets
    the saturation run offer what it says it offers.
    """

    def __init__(self, url: str, limit: int) -> None:
        parts = urlsplit(url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 80
        self.head = f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        self._slots = asyncio.Semaphore(limit)
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def post(self, body: bytes, signature: str, timeout: float) -> int:
        """POST `body`; its status, or 0 for no answer (refused, reset, or not within `timeout`)."""
        conn = None
        try:
            async with asyncio.timeout(timeout), self._slots:
                conn = self._idle.pop() if self._idle else await asyncio.open_connection(self.host, self.port)
                reader, writer = conn
                writer.write(
                    f"{self.head}Stripe-Signature: {signature}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body
                )
                head = await reader.readuntil(b"\r\n\r\n")
                status = int(head[9:12])
                lower = head.lower()
                at = lower.find(b"\r\ncontent-length:")
                if at < 0 or b"\r\nconnection: close" in lower:
                    writer.close()  # no length to skip by, or the server closes: not reusable
                    conn = None
                    return status
                length = int(lower[at + 17 : lower.index(b"\r\n", at + 2)])
                if length:
                    await reader.readexactly(length)
                self._idle.append(conn)
                conn = None
                return status
        except (OSError, TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            return 0
        finally:
            if conn is not None:  # interrupted mid-exchange: its state is unknown
                conn[1].close()

    def close(self) -> None:
        for _reader, writer in self._idle:
            writer.close()
        self._idle.clear()


class OpenLoop:
    """Sends signed webhooks to `url` on an open-loop schedule over pooled keep-alive connections
    (aiohttp's client, or with `lean` the generator's own `Http1Pool`)."""

    def __init__(
        self,
        url: str,
        *,
        connections: int = 256,
        secret: str = BENCH_SECRET,
        timeout: float = 10.0,
        retry_delays: Retries = RETRY_DELAYS,
        on_answer: Callable[[int, Outcome], None] | None = None,
        seed: int = 20,
        lean: bool = False,
    ) -> None:
        self.url = url
        self.connections = connections
        self.secret = secret
        self.timeout = timeout
        self.retry_delays = retry_delays if isinstance(retry_delays, StripeRetries) else tuple(retry_delays)
        self.on_answer = on_answer
        self.lean = lean
        # Seeded: two runs of the same load draw the same jitter.
        self._rng = random.Random(seed)
        self._post: Callable[[bytes, str], Awaitable[int]] = self._post_unset

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

        async def fire(i: int) -> None:
            await self._deliver(i, requests[i], result.outcomes[i])

        if self.lean:
            pool = Http1Pool(self.url, self.connections)
            self._post = lambda body, signature: pool.post(body, signature, self.timeout)
            try:
                result.started = loop.time()
                await open_loop(dues, fire, drain_timeout=drain_timeout)
                result.finished = loop.time()
            finally:
                pool.close()
            return result
        connector = aiohttp.TCPConnector(limit=self.connections, limit_per_host=self.connections)
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            self._post = lambda body, signature: self._post_aiohttp(session, body, signature)
            result.started = loop.time()
            await open_loop(dues, fire, drain_timeout=drain_timeout)
            result.finished = loop.time()
        return result

    async def _post_unset(self, body: bytes, signature: str) -> int:
        raise RuntimeError("OpenLoop posts only inside run()")

    async def _post_aiohttp(self, session: aiohttp.ClientSession, body: bytes, signature: str) -> int:
        headers = {"Stripe-Signature": signature, "Content-Type": "application/json"}
        try:
            async with session.post(self.url, data=body, headers=headers) as response:
                await response.read()
                return response.status
        except (aiohttp.ClientError, TimeoutError, OSError):
            return 0

    async def _deliver(self, index: int, request: tuple[bytes, str], outcome: Outcome) -> None:
        loop = asyncio.get_running_loop()
        body, signature = request
        outcome.sent = loop.time()
        status = await self._post(body, signature)
        outcome.first_status = outcome.final_status = status
        outcome.first_done = outcome.last_done = loop.time()
        outcome.attempts = 1
        if self.on_answer is not None:
            self.on_answer(index, outcome)
        if outcome.delivered:
            return
        schedule = self.retry_delays
        delays = schedule.delays(self._rng) if isinstance(schedule, StripeRetries) else schedule
        for delay in delays:
            # Retry-After is not honoured: Stripe keeps its own schedule whatever the answer says.
            await asyncio.sleep(delay)
            # Stripe signs every attempt afresh, with a new timestamp.
            outcome.final_status = await self._post(body, sign(body, self.secret))
            outcome.last_done = loop.time()
            outcome.attempts += 1
            if outcome.delivered:
                return


@dataclass
class ClosedLoop:
    """What a closed loop got: 2xx answers, how long it took, every status, the 2xx latencies."""

    ok: int = 0
    seconds: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else math.nan

    @property
    def refused(self) -> int:
        return sum(n for status, n in self.statuses.items() if not 200 <= status < 300)


async def closed_loop(
    url: str, requests: Sequence[tuple[bytes, str]], concurrency: int, *, timeout: float = 30.0
) -> ClosedLoop:
    """`concurrency` senders over `Http1Pool`, each posting the next request once answered: the
    rate a server sustains when it is never offered more than it can take (nothing is retried)."""
    pool = Http1Pool(url, concurrency)
    result = ClosedLoop()
    position = 0

    async def sender() -> None:
        nonlocal position
        while position < len(requests):
            body, signature = requests[position]
            position += 1
            began = time.perf_counter()
            status = await pool.post(body, signature, timeout)
            result.statuses[status] = result.statuses.get(status, 0) + 1
            if 200 <= status < 300:
                result.ok += 1
                result.latencies_ms.append((time.perf_counter() - began) * 1000)

    began = time.perf_counter()
    try:
        await asyncio.gather(*(sender() for _ in range(concurrency)))
    finally:
        pool.close()
    result.seconds = time.perf_counter() - began
    return result


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
    retry_delays: Retries = RETRY_DELAYS,
    burst: bool = False,
    start: float | None = None,
    lean: bool = False,
) -> LoadResult:
    """Open-loop load from this process; returns when every request is answered or given up.

    `burst` makes every request due at the same instant (a backlog released at once); `start`
    (loop clock, i.e. time.monotonic) overrides `lead`, to start together with another process.
    """
    requests = signed(events)
    loop = asyncio.get_running_loop()
    if start is None:
        start = loop.time() + lead
    dues = [start] * len(requests) if burst else due_times(len(requests), rate, start)
    sender = OpenLoop(
        url, connections=connections, on_answer=on_answer, timeout=timeout, retry_delays=retry_delays, lean=lean
    )
    return await sender.run(requests, dues, rate=rate, drain_timeout=drain_timeout)


# -- several processes ------------------------------------------------------------------------


@dataclass(frozen=True)
class Share:
    """One sender process's part of a schedule: requests `offset`, `offset + step`, ... of it."""

    url: str
    count: int
    tag: str
    rate: float
    offset: int
    step: int
    connections: int
    duplicate_rate: float
    retry_delays: Retries
    drain_timeout: float
    timeout: float
    lean: bool = False


def _worker(conn: multiprocessing.connection.Connection, share: Share) -> None:
    events = workload(share.count, tag=share.tag, duplicate_rate=share.duplicate_rate)
    requests = signed(events)
    conn.send(("ready", len(requests)))
    start_at: float = conn.recv()
    # time.monotonic is CLOCK_MONOTONIC, shared by every process on the machine, and is what
    # asyncio's default loop clock reads: the processes agree on when request i is due.
    dues = due_times(len(requests), share.rate, start_at, offset=share.offset, step=share.step)

    async def go() -> LoadResult:
        sender = OpenLoop(
            share.url,
            connections=share.connections,
            retry_delays=share.retry_delays,
            timeout=share.timeout,
            seed=share.offset,
            lean=share.lean,
        )
        return await sender.run(requests, dues, rate=share.rate / share.step, drain_timeout=share.drain_timeout)

    result = asyncio.run(go())
    conn.send(("done", result))
    conn.close()


class SenderProcesses:
    """Open-loop senders in spawned processes of their own, sharing one schedule.

    Blocking calls (run them in an executor from a loop): `ready` spawns the processes and waits
    until each has built and signed its share, `go(start_at)` starts them all at one monotonic
    instant (which a sender in the calling process can share), `collect` waits for their results.
    """

    def __init__(
        self,
        url: str,
        *,
        rate: float,
        duration: float,
        processes: int,
        tag: str,
        connections: int = 128,
        duplicate_rate: float = 0.05,
        retry_delays: Retries = RETRY_DELAYS,
        drain_timeout: float = 30.0,
        timeout: float = 10.0,
        lean: bool = False,
    ) -> None:
        self.rate = rate
        self.total = count_for(rate, duration)
        self.shares = [
            Share(
                url,
                len(range(k, self.total, processes)),
                f"{tag}p{k}",
                rate,
                k,
                processes,
                connections,
                duplicate_rate,
                retry_delays,
                drain_timeout,
                timeout,
                lean,
            )
            for k in range(processes)
        ]
        self._pipes: list[multiprocessing.connection.Connection] = []
        self._procs: list[multiprocessing.process.BaseProcess] = []
        self.started = math.nan

    def ready(self, timeout: float = 300.0) -> None:
        ctx = multiprocessing.get_context("spawn")
        for share in self.shares:
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, share), daemon=True)
            proc.start()
            self._pipes.append(parent)
            self._procs.append(proc)
        for pipe in self._pipes:
            if not pipe.poll(timeout):
                raise TimeoutError("load generator process did not get ready")
            pipe.recv()

    def go(self, start_at: float) -> None:
        self.started = start_at
        for pipe in self._pipes:
            pipe.send(start_at)

    def collect(self, timeout: float = 300.0) -> LoadResult:
        merged = LoadResult(offered_rate=self.rate, started=self.started)
        for pipe in self._pipes:
            if not pipe.poll(timeout):
                raise TimeoutError("load generator process did not finish")
            _tag, part = pipe.recv()
            merged.merge(part)
        merged.offered_rate = self.rate
        return merged

    def close(self) -> None:
        for proc in self._procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()


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
    retry_delays: Retries = RETRY_DELAYS,
    drain_timeout: float = 30.0,
) -> LoadResult:
    """Open-loop load from `processes` spawned processes sharing one schedule (blocking call)."""
    senders = SenderProcesses(
        url,
        rate=rate,
        duration=duration,
        processes=processes,
        tag=tag,
        connections=connections,
        duplicate_rate=duplicate_rate,
        retry_delays=retry_delays,
        drain_timeout=drain_timeout,
    )
    try:
        senders.ready(timeout)
        senders.go(time.monotonic() + lead)
        return senders.collect(timeout)
    finally:
        senders.close()

"""Open-loop gRPC point reads from processes of their own, so the bench's loop never delays them.

Section 4 used to send its reads from the bench's own event loop, beside the webhook sender and
its signing: a stall there (signing a few thousand webhooks takes a few hundred milliseconds)
became seconds of read "latency" (generator lag p99 2.9 s in a busy window) that no server
caused. Here each reader process opens its own channels, warms them up, says it is ready, and
sends its share of one schedule (read `i` due at `start + i / rate`; process k of n sends reads
k, k+n, ...) on the machine-wide monotonic clock the bench shares with it.

Every read's outcome comes back: its latency from its due time (open loop: the figure the targets
are about, a late generator included), from when it was actually sent (what the server and the
network took), how late it was sent, and its status (OK, NOT_FOUND, RESOURCE_EXHAUSTED...).
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import multiprocessing.connection
import time
from dataclasses import dataclass, field
from typing import Any

#: A read not answered in this long counts as DEADLINE_EXCEEDED (no answer).
READ_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class Schedule:
    rate: float
    count: int
    start_at: float  # time.monotonic() of read 0's due time
    offset: int = 0
    step: int = 1


@dataclass
class Reads:
    """The outcomes of one schedule's reads (merged over its processes)."""

    rate: float
    #: Latency from the due time (ms), of reads answered OK or NOT_FOUND.
    answered: list[float] = field(default_factory=list)
    #: The same reads' latency from when they were sent (ms).
    answered_sent: list[float] = field(default_factory=list)
    #: RESOURCE_EXHAUSTED refusals: latency from the due time and from the send (ms).
    shed: list[float] = field(default_factory=list)
    shed_sent: list[float] = field(default_factory=list)
    #: How late each read was sent (ms): the generator's own lag.
    lag: list[float] = field(default_factory=list)
    codes: dict[str, int] = field(default_factory=dict)
    #: Seconds from the first due time until the last answer.
    seconds: float = 0.0

    def merge(self, other: Reads) -> None:
        for name in ("answered", "answered_sent", "shed", "shed_sent", "lag"):
            getattr(self, name).extend(getattr(other, name))
        for code, n in other.codes.items():
            self.codes[code] = self.codes.get(code, 0) + n
        self.seconds = max(self.seconds, other.seconds)

    @property
    def count(self) -> int:
        return sum(self.codes.values())


def _worker(conn: multiprocessing.connection.Connection, ports: dict[str, int], plan: dict[str, list[str]]) -> None:
    import grpc

    from bench.readers import readers

    async def serve() -> None:
        read, channels, _missing = readers(ports)
        targets = [(read[created_by], ids) for created_by, ids in plan.items() if created_by in read and ids]
        for reader, ids in targets:  # connect and warm up before any schedule starts
            for object_id in ids[:20]:
                await reader.read(object_id)
        conn.send("ready")
        loop = asyncio.get_running_loop()
        while True:
            schedule: Schedule | None = await loop.run_in_executor(None, conn.recv)
            if schedule is None:
                break
            conn.send(await _run(schedule, targets, grpc))
        for channel in channels:
            await channel.close()

    asyncio.run(serve())
    conn.close()


async def _run(schedule: Schedule, targets: list[Any], grpc: Any) -> Reads:
    result = Reads(rate=schedule.rate)
    tasks: set[asyncio.Task[None]] = set()

    async def fire(i: int, due: float) -> None:
        reader, ids = targets[i % len(targets)]
        object_id = ids[(i * 7919) % len(ids)]
        sent = time.monotonic()
        result.lag.append((sent - due) * 1000)
        try:
            code = "OK" if await reader.read(object_id, timeout=READ_TIMEOUT_SECONDS) else "NOT_FOUND"
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
        except Exception as exc:  # a broken channel must not stop the schedule
            code = type(exc).__name__
        done = time.monotonic()
        result.codes[code] = result.codes.get(code, 0) + 1
        if code in ("OK", "NOT_FOUND"):
            result.answered.append((done - due) * 1000)
            result.answered_sent.append((done - sent) * 1000)
        elif code == "RESOURCE_EXHAUSTED":
            result.shed.append((done - due) * 1000)
            result.shed_sent.append((done - sent) * 1000)

    # Like bench.loadgen.open_loop, on time.monotonic (the clock shared with the bench's process).
    for i in range(schedule.offset, schedule.count, schedule.step):
        due = schedule.start_at + i / schedule.rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(fire(i, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        # Every read ends by its own deadline; a little more for a starved process to see it end.
        await asyncio.wait(set(tasks), timeout=READ_TIMEOUT_SECONDS + 2)
    result.seconds = time.monotonic() - schedule.start_at
    return result


class ReadLoad:
    """`processes` reader processes for the running services (name -> gRPC port) and record ids
    (created-by event type -> ids), kept for several schedules; `close()` stops them."""

    def __init__(self, ports: dict[str, int], plan: dict[str, list[str]], processes: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self._pipes: list[multiprocessing.connection.Connection] = []
        self._procs: list[Any] = []
        for _ in range(processes):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, ports, plan), daemon=True)
            proc.start()
            self._pipes.append(parent)
            self._procs.append(proc)

    async def ready(self, timeout: float = 60.0) -> None:
        for pipe in self._pipes:
            if not await asyncio.to_thread(pipe.poll, timeout):
                raise TimeoutError("a gRPC reader process did not get ready")
            pipe.recv()

    async def run(self, rate: float, count: int, start_at: float, *, processes: int = 1) -> Reads:
        """Send `count` reads at `rate`/s from `start_at` (time.monotonic) from the first `processes`."""
        used = self._pipes[:processes]
        for k, pipe in enumerate(used):
            pipe.send(Schedule(rate, count, start_at, offset=k, step=len(used)))
        merged = Reads(rate=rate)
        deadline = count / rate + READ_TIMEOUT_SECONDS + 60
        for pipe in used:
            if not await asyncio.to_thread(pipe.poll, deadline):
                raise TimeoutError("a gRPC reader process did not finish its schedule")
            merged.merge(pipe.recv())
        return merged

    @property
    def pids(self) -> list[int]:
        return [proc.pid for proc in self._procs if proc.pid is not None]

    def close(self) -> None:
        for pipe in self._pipes:
            with contextlib.suppress(BrokenPipeError, OSError):
                pipe.send(None)
        for proc in self._procs:
            proc.join(5)
            if proc.is_alive():
                proc.kill()

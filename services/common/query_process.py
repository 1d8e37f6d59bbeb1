"""`serve` as two processes: one consumes, one answers gRPC (`SYNCMESH_GRPC_QUERY_PROCESS`).

Why: a point read waited behind ingest in a process that does both. grpc.aio takes each new call
from its completion queue on a turn of the event loop (one `request_call` outstanding at a time),
so while the loop works through a consumer batch, calls wait inside grpc before any interceptor
sees them; and the kernel shares the process's CPU between ingest and reads. Measured with a
scratch harness (bench/results/HISTORY.md, 2026-12-07 22:51-23:06, a machine other work kept
saturated): nearly all of a slow read's time passed before the interceptor saw it (the servicer
itself took 2-5 ms at p50); a process that only served gRPC, beside the consuming one, answered
the same reads with about a third of the p99 in one window and a quarter less in another; a
separate pool for reads inside the consuming process changed nothing. With this module (and
`CONSUMER_NICENESS`), bench section 4 alternating with main (23:27-23:31): p50 19 and 7 ms
against 233 and 66 ms, p99 888 and 235 ms against 1,369 and 1,036 ms at 500 reads/s.

How: `serve` forks before any event loop or thread exists (the service's modules imported,
logging set up, nothing connected). The child is the query process: a ServiceRuntime that serves
the whole gRPC API, health, reflection, authentication and audit on the service's port, with a
pool and a NATS connection of its own (its health means what it always meant: its database and
NATS answer), and no consumer. The parent consumes (consumer, outbox relay, metrics) and serves no
gRPC. A read-only replica of the API is what CQRS would deploy separately; here one `syncmesh
serve` still runs one service on one port, so a Deployment runs it as before (two processes in the
container). `syncmesh up`, which runs every runtime in its own process, does not split them.

Life cycle: SIGTERM or SIGINT to the parent is passed on to the query process, and the parent
returns once both have stopped in order. A query process that ends on its own stops the parent
too (exit code 1, or the child's), so an orchestrator restarts the whole; a parent that is gone
(SIGKILLed) is noticed by the query process's health watcher within a second, and it stops.
The domain events that gRPC calls commit in the query process (audit records, settings changes,
imports) are announced by the consuming process's outbox relay on its poll (every few seconds),
not at once: the relay to wake lives in the other process. Background tasks of a service
(`ServiceDefinition.background`) run in the consuming process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any, Protocol

from services.common.errors import SettingsError
from services.common.settings import Settings

log = logging.getLogger(__name__)

#: How much lower the consuming process's CPU priority is than the query process's (nice(2)
#: increment; 10 weighs ~9:1 under the kernel's fair scheduler). When the CPU is short, a read
#: waiting for it goes first and ingest waits, which JetStream absorbs: the events stay in the
#: stream until the consumer gets to them. Measured on the 2-core bench machine, interleaved in
#: one window (bench/results/HISTORY.md, 2026-12-07 23:04-23:06, the machine saturated by other
#: work): at 500 reads/s under 200 webhooks/s, p99 262-1,278 ms with the consuming process at +10
#: against 1,070-3,283 ms without, p50 13-218 against 65-997 ms (4 runs each). Within a Kubernetes
#: pod it ranks only the pod's own two processes.
CONSUMER_NICENESS = 10

#: How long the parent waits for the query process after passing a stop on, beyond its gRPC grace.
STOP_MARGIN_SECONDS = 10.0


class Runtime(Protocol):
    """What this module needs of a services.common.service.ServiceRuntime (which builds on it, so
    it is not imported here)."""

    failed: asyncio.Event
    failure: str | None
    settings: Settings

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


#: services.common.service.run_until_signalled: start, wait for a signal or a failure, stop.
Run = Callable[
    [Callable[[], Coroutine[Any, Any, None]], Callable[[], Coroutine[Any, Any, None]], asyncio.Event | None],
    Coroutine[Any, Any, int],
]


def serve_split(name: str, query: Callable[[int], Runtime], consuming: Callable[[], Runtime], run: Run) -> int:
    """Run service `name` as a consuming process (this one: `consuming()`) and a query process
    (forked: `query(parent pid)`), each through `run`; the exit code."""
    parent = os.getpid()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child's own exit code is what tests see
        os._exit(_query_process(name, query, parent, run))
    os.nice(CONSUMER_NICENESS)
    runtime = consuming()
    code = asyncio.run(_consume(name, runtime, child, run))
    if runtime.failure is not None:
        print(f"{name}: cannot start: {runtime.failure}", file=sys.stderr)
    return code


def _query_process(name: str, query: Callable[[int], Runtime], parent: int, run: Run) -> int:
    code = 1
    try:
        runtime = query(parent)
        code = asyncio.run(run(runtime.start, runtime.stop, runtime.failed))
        if runtime.failure is not None:
            print(f"{name} (query process): cannot start: {runtime.failure}", file=sys.stderr)
    except SettingsError as exc:  # e.g. the port is in use: one line, as `main_for` prints it
        print(f"{name}: configuration error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        log.exception("%s query process failed", name)
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
    return code


async def _consume(name: str, runtime: Runtime, child: int, run: Run) -> int:
    """The parent's life: run_until_signalled over the consuming runtime, also ended by the query
    process's end; the child's exit code when it ended first with one."""
    ended = asyncio.ensure_future(asyncio.to_thread(_exit_code, child))
    failed = asyncio.Event()
    ended.add_done_callback(lambda _: failed.set())

    async def watch_failure() -> None:
        await runtime.failed.wait()
        failed.set()

    watcher = asyncio.ensure_future(watch_failure())

    async def stop() -> None:
        if not ended.done():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)
        await runtime.stop()
        grace = min(runtime.settings.shutdown_grace_seconds, 5.0) + STOP_MARGIN_SECONDS
        try:
            await asyncio.wait_for(asyncio.shield(ended), grace)
        except TimeoutError:
            log.error("%s query process did not stop in %.0f s: killed", name, grace)
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
            await ended

    try:
        code = await run(runtime.start, stop, failed)
    except BaseException:
        if not ended.done():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)
            await ended
        raise
    finally:
        watcher.cancel()
    if ended.done() and runtime.failure is None and code != 0:
        child_code = ended.result()
        log.error("%s query process ended with exit code %d: stopping", name, child_code)
        return child_code if child_code > 0 else 1
    return code


def _exit_code(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)

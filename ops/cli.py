"""The operator commands: `syncmesh dlq|sweep|backfill|replay|verify`.

Each command parses its options, reads settings, opens what it needs, calls one function of
this package (which the tests drive directly) and prints the report. Failures the operator can
act on (bad settings, Stripe or NATS unreachable, an unknown dead letter) print one line that
says what to do next and exit non-zero; nothing here prints a traceback for them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from ops.common import EXIT_FAILED, run_command, target_option
from services import registry
from services.common.errors import ConflictError, NotFoundError, SettingsError
from services.common.settings import Settings

log = logging.getLogger("ops")

# -- dlq ---------------------------------------------------------------------------------------


def _cmd_dlq_list(args: argparse.Namespace) -> int:
    from ops import dlq
    from ops.common import connected_bus

    async def work(settings: Settings) -> int:
        async with connected_bus(settings) as bus:
            entries = await dlq.list_dead_letters(bus, service=args.service, limit=args.limit)
        if args.json:
            for entry in entries:
                print(json.dumps(entry.summary()))
            return 0
        if not entries:
            print("no dead letters" + (f" for {args.service}" if args.service else ""))
            return 0
        print(f"{'SEQ':>6}  {'SERVICE':<10} {'EVENT TYPE':<34} {'EVENT ID':<30} {'ATT':>3}  {'WHEN':<20} REASON")
        for e in entries:
            s = e.summary()
            when = str(s["dead_lettered_at"])[:19]
            reason = str(s["reason"]).replace("\n", " ")
            reason = reason if len(reason) <= 80 else reason[:77] + "..."
            print(
                f"{s['sequence']:>6}  {s['service']!s:<10} {s['event_type'] or s['subject']!s:<34} "
                f"{s['event_id'] or '-'!s:<30} {s['attempts']:>3}  {when:<20} {reason}"
            )
        print(f"{len(entries)} dead letters; `syncmesh dlq show SEQ` for one, `syncmesh dlq redrive SEQ` once fixed")
        return 0

    return run_command(work)


def _cmd_dlq_show(args: argparse.Namespace) -> int:
    from ops import dlq
    from ops.common import connected_bus

    async def work(settings: Settings) -> int:
        async with connected_bus(settings) as bus:
            entry = await dlq.get_dead_letter(bus, args.sequence)
        print(dlq.describe(entry))
        return 0

    return run_command(work)


async def _selected(bus: Any, args: argparse.Namespace) -> list[int]:
    from ops import dlq

    if args.all:
        return [e.sequence for e in await dlq.list_dead_letters(bus, service=args.service)]
    if args.service:
        raise SettingsError("--service only goes with --all; with sequence numbers, the numbers say which")
    if not args.sequences:
        raise SettingsError("say which dead letters: sequence numbers (see `syncmesh dlq list`) or --all")
    return list(args.sequences)


def _cmd_dlq_redrive(args: argparse.Namespace) -> int:
    from ops import dlq
    from ops.common import connected_bus
    from services.common.progress import progress

    async def work(settings: Settings) -> int:
        failed = 0
        async with connected_bus(settings) as bus:
            sequences = await _selected(bus, args)
            bar = progress(total=len(sequences), desc="redrive", unit="msg", enabled=len(sequences) > 1)
            try:
                for seq in sequences:
                    try:
                        result = await dlq.redrive(bus, seq)
                    except (NotFoundError, ConflictError) as exc:
                        failed += 1
                        print(f"syncmesh: {exc}", file=sys.stderr)
                        continue
                    finally:
                        bar.update(1)
                    note = " (already redriven: JetStream had it)" if result.duplicate else ""
                    print(f"redrove {seq}: {result.event_id} -> {result.subject}{note}")
            finally:
                bar.close()
        if not sequences:
            print("no dead letters to redrive")
        return EXIT_FAILED if failed else 0

    return run_command(work)


def _cmd_dlq_discard(args: argparse.Namespace) -> int:
    from ops import dlq
    from ops.common import connected_bus

    async def work(settings: Settings) -> int:
        failed = 0
        async with connected_bus(settings) as bus:
            sequences = await _selected(bus, args)
            if args.all and not args.yes:
                raise SettingsError(f"--all would discard {len(sequences)} dead letters for good: add --yes to confirm")
            for seq in sequences:
                try:
                    entry = await dlq.discard(bus, seq)
                except NotFoundError as exc:
                    failed += 1
                    print(f"syncmesh: {exc}", file=sys.stderr)
                    continue
                print(f"discarded {seq}: {entry.letter.service} {entry.event_type or '-'} {entry.event_id or '-'}")
        return EXIT_FAILED if failed else 0

    return run_command(work)


# -- sweep -------------------------------------------------------------------------------------


def _cmd_sweep(args: argparse.Namespace) -> int:
    from gateway.sweeper import load_sweep_settings, sweep
    from ops.common import connected_bus, parse_since
    from services.common.stripe_api import close_stripe_client, make_stripe_client

    async def work(settings: Settings) -> int:
        if args.since:
            since = parse_since("--since", args.since)
        else:
            from datetime import UTC, datetime, timedelta

            since = datetime.now(UTC) - timedelta(hours=load_sweep_settings(settings).lookback_hours)
        client = make_stripe_client(settings, max_network_retries=0)
        if client is None:
            raise SettingsError("SYNCMESH_STRIPE_API_KEY must be set: the sweep reads Stripe's Events API")
        try:
            async with connected_bus(settings) as bus:
                report = await sweep(
                    bus, client, settings, since=since, requests_per_second=args.rate, show_progress=True
                )
        finally:
            await close_stripe_client(client)
        print("\n".join(report.lines()))
        return 0

    return run_command(work)


# -- backfill ----------------------------------------------------------------------------------


def _cmd_backfill(args: argparse.Namespace) -> int:
    from ops.backfill import backfill, checkpoint_location, parse_types
    from ops.common import connected_bus, parse_since
    from services.common.stripe_api import close_stripe_client, make_stripe_client

    async def work(settings: Settings) -> int:
        since = parse_since("--since", args.since)
        types = parse_types(args.types) if args.types else None  # None: the defaults, skipping unserved ones
        checkpoint = checkpoint_location(args.checkpoint)
        print(f"backfill: checkpoint {checkpoint} (a rerun with the same --since resumes from it)", file=sys.stderr)
        client = make_stripe_client(settings, max_network_retries=0)
        if client is None:
            raise SettingsError("SYNCMESH_STRIPE_API_KEY must be set: the backfill lists objects through Stripe's API")
        try:
            async with connected_bus(settings) as bus:
                report = await backfill(
                    bus,
                    client,
                    settings,
                    since=since,
                    types=types,
                    checkpoint_path=checkpoint,
                    restart=args.restart,
                    requests_per_second=args.rate,
                    show_progress=True,
                )
        finally:
            await close_stripe_client(client)
        print("\n".join(report.lines()))
        return 0

    return run_command(work)


# -- replay ------------------------------------------------------------------------------------


def _cmd_replay(args: argparse.Namespace) -> int:
    from ops.common import connected_bus, parse_since
    from ops.replay import BATCH_SIZE, ReplayWorkerError, default_workers, replay
    from services.common.service import tune_gc

    tune_gc()  # a long batch run, like a service's: collections less often (see tune_gc)

    async def work(settings: Settings) -> int:
        definition = registry.by_name(args.service)
        if args.dry_run:
            settings = settings.with_overrides(dry_run=True)
        since = parse_since("--since", args.since) if args.since else None
        if args.workers is not None and args.workers < 1:
            raise SettingsError("--workers must be at least 1")
        async with connected_bus(settings) as bus:
            try:
                report = await replay(
                    definition,
                    settings,
                    bus,
                    since=since,
                    emit_events=args.emit_events,
                    show_progress=True,
                    batch_size=args.batch_size or BATCH_SIZE,
                    workers=args.workers or default_workers(),
                )
            except ReplayWorkerError as exc:
                print(f"syncmesh: {exc}", file=sys.stderr)
                return EXIT_FAILED
        print("\n".join(report.lines()))
        return EXIT_FAILED if report.failures else 0

    return run_command(
        work,
        interrupted="replay interrupted, no report: each batch committed stays (every event as it was or "
        "re-applied); run it again to finish",
    )


# -- registration ------------------------------------------------------------------------------


def register(sub: Any, groups: dict[str, Any]) -> None:
    """Add the operator commands to the top-level `syncmesh` parser."""
    del groups  # the operator commands are top-level; they add nothing to shared groups

    dlq = sub.add_parser("dlq", help="list, inspect, redrive or discard dead letters")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True, metavar="ACTION")

    ls = dlq_sub.add_parser("list", help="dead letters, oldest first, with reason and attempts")
    ls.add_argument("--service", choices=registry.names(), help="only this service's")
    ls.add_argument("--limit", type=int, default=None, help="show at most N")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    ls.set_defaults(func=_cmd_dlq_list)

    show = dlq_sub.add_parser("show", help="one dead letter in full, with the Stripe event it carries")
    show.add_argument("sequence", type=int, help="its sequence number (from `syncmesh dlq list`)")
    show.set_defaults(func=_cmd_dlq_show)

    for name, func, text in (
        ("redrive", _cmd_dlq_redrive, "send dead letters back through their services (once the cause is fixed)"),
        ("discard", _cmd_dlq_discard, "delete dead letters for good (each is logged first)"),
    ):
        action = dlq_sub.add_parser(name, help=text)
        action.add_argument("sequences", type=int, nargs="*", metavar="SEQ", help="sequence numbers")
        action.add_argument("--all", action="store_true", help="every dead letter (of --service, if given)")
        action.add_argument("--service", choices=registry.names(), help="with --all")
        if name == "discard":
            action.add_argument("--yes", action="store_true", help="confirm --all")
        action.set_defaults(func=func)

    sweep = sub.add_parser("sweep", help="publish Stripe events (Events API, <= 30 days) the mesh never received")
    sweep.add_argument(
        "--since",
        default=None,
        help="start: ISO date/time, unix seconds or a look-back like 72h or 7d "
        "(default SYNCMESH_SWEEP_LOOKBACK_HOURS, 72h); at most 30 days back",
    )
    sweep.add_argument("--rate", type=float, default=20.0, help="Stripe requests per second (default 20)")
    sweep.set_defaults(func=_cmd_sweep)

    backfill = sub.add_parser("backfill", help="rebuild history older than the Events API by listing objects")
    backfill.add_argument("--since", required=True, help="objects created since: ISO date, unix seconds, or 400d")
    backfill.add_argument(
        "--types",
        default=None,
        help="comma-separated: customers,products,prices,plans,subscriptions,invoices,invoice_payments,charges,"
        "refunds,credit_notes (default all but plans)",
    )
    backfill.add_argument(
        "--checkpoint",
        default=None,
        help="progress file; a rerun with the same --since resumes from it (default: SYNCMESH_BACKFILL_CHECKPOINT, "
        "else .syncmesh/backfill-checkpoint.json beside the mesh `syncmesh up` runs in this folder)",
    )
    backfill.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start over")
    backfill.add_argument(
        "--rate", type=float, default=20.0, help="Stripe requests per second (default 20; test mode allows 25)"
    )
    backfill.set_defaults(func=_cmd_backfill)

    replay = sub.add_parser("replay", help="rebuild one service's records from the STRIPE stream; shows what changed")
    replay.add_argument("service", choices=registry.names())
    replay.add_argument("--since", default=None, help="only events received since (ISO, unix seconds, or 7d)")
    replay.add_argument(
        "--emit-events",
        action="store_true",
        help="also publish the domain events the handlers emit (off: subscribers would see history as new)",
    )
    replay.add_argument(
        "--dry-run", action="store_true", help="compute and report what would change, write nothing (SYNCMESH_DRY_RUN)"
    )
    replay.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="events applied per transaction (default 1000; smaller holds row locks for less time)",
    )
    replay.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes applying parts of the stream side by side (default: one per core, at most 4; "
        "1: all in this process, in stream order)",
    )
    replay.set_defaults(func=_cmd_replay)

    verify = sub.add_parser("verify", help="compare Stripe with the ERP and CRM records; --repair re-syncs differences")
    verify.add_argument("--repair", action="store_true", help="re-sync exactly the differing objects, then re-verify")
    verify.add_argument(
        "--types",
        default=None,
        help="comma-separated: customers,invoices,clients,products,contracts,credit_memos,refunds",
    )
    verify.add_argument("--since", default=None, help="only objects created since: ISO date, unix seconds, or 30d")
    verify.add_argument(
        "--sample",
        type=int,
        default=None,
        metavar="N",
        help="compare only the N most recent objects of each type (and N records Stripe does not list, at random)",
    )
    verify.add_argument("--rate", type=float, default=20.0, help="Stripe requests per second (default 20)")
    verify.add_argument(
        "--settle", type=float, default=60.0, help="--repair: seconds to wait for the mesh (default 60)"
    )
    for name in registry.names():
        flag = "--" + target_option(name).replace("_", "-")
        verify.add_argument(flag, default=None, help=f"{name} gRPC address (default 127.0.0.1:<port>)")
    verify.set_defaults(func=_cmd_verify)


def _cmd_verify(args: argparse.Namespace) -> int:
    from ops.verify import command

    return command(args)

"""Reconcile: compare what Stripe holds (read through its API) with what the mesh recorded
(read over each service's gRPC API), and optionally re-sync exactly the objects that differ.

Every other tool trusts events; this one trusts nothing but the two end states. It is what
proves, after an outage, a backfill or a bug fix, that the ERP and CRM say what Stripe says.

This module is the engine; what is compared lives next to each service, as a sequence of
`Check`s (services/<svc>/verify.py: which Stripe listing, how the service's record is read, and
the pure comparison). The engine lists each Stripe listing the checks need once, runs every
check that applies to each object, writes the report (ops/verify_report.py) and repairs.

The other direction is checked too where Stripe's lists cannot show it: a record a check says
the service holds as live (`Check.held`: customers, clients, products) whose object Stripe no
longer lists is retrieved by id, and if Stripe deleted it the record is reported stale.

A Stripe stand-in may not serve every listing (localstripe has no credit notes): a listing that
answers 404 leaves its types out of the check, and the report says so on a line of its own,
never as "clean" for them.

Each difference is one row: `missing` (Stripe has it, the mesh has no record), `stale` (the
mesh holds an earlier lifecycle state: a status behind Stripe's, a deletion it never saw) or
`mismatch` (a value differs). Customer e-mails are masked in the report.

`--repair` re-syncs exactly the objects of those rows: each is turned into a Stripe-shaped
event by the backfill's own synthesis (`ops.backfill.synthesise_event`; invoices with
all their lines) and published by the gateway's own path (`services.common.publish.publish_event`),
so it goes through the services' usual handlers, guards and idempotency record. Only the event id
differs from the backfill's: the backfill id is a hash of the content alone, which the
services (and JetStream) would deduplicate if that content had been applied once before and
the record was damaged afterwards; a repair id adds the run's time. `created` is the time of
the repair, so the version guards take Stripe's present state over whatever the record holds.
A check's `companions` name what is re-synced along with an object (an invoice's payments).
Then the repaired objects are fetched from Stripe again and re-verified until they match or
`settle_seconds` pass (the services apply events asynchronously).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

import stripe
from syncmesh.events.v1 import envelope_pb2

from ops.backfill import BACKFILL_ID_PREFIX, KINDS, KindReport, complete_invoice_lines, synthesise_event
from ops.verify_report import KindSummary, RepairReport, VerifyReport
from services.common.bus import Bus
from services.common.errors import MalformedEventError, NotServedError, SettingsError, UpstreamError
from services.common.events import StripeEvent, parse_event
from services.common.grpc_client import aio_channel, default_target
from services.common.progress import progress
from services.common.settings import Settings
from services.common.stripe_pages import RateLimiter, list_pages
from services.common.verification import Check, Companion, Held, Mesh
from services.registry import by_name, definitions, hook

log = logging.getLogger(__name__)

#: Every service's checks, as each service's definition names them (its `verify` module); the
#: engine below takes them as a parameter, so tests can run it on a few.
CHECKS: tuple[Check[Any], ...] = tuple(
    check for definition in definitions() if (module := hook(definition.verify)) for check in module.CHECKS
)
REPAIR_ID_PREFIX = "evt_vr_"
#: The reverse phase says how long it will take when that is at least this long.
REVERSE_WARN_SECONDS = 10.0


def verify_types(checks: Sequence[Check[Any]]) -> tuple[str, ...]:
    """The reported types of `checks`, in the order they are reported."""
    ordered = sorted(checks, key=lambda c: c.position)
    return tuple(dict.fromkeys(c.kind for c in ordered))


#: What can be verified, in the order they are reported.
VERIFY_TYPES: tuple[str, ...] = verify_types(CHECKS)


def parse_verify_types(raw: str | None, checks: Sequence[Check[Any]] = CHECKS) -> tuple[str, ...]:
    known = verify_types(checks)
    if not raw:
        return known
    wanted = [t.strip() for t in raw.split(",") if t.strip()]
    unknown = [t for t in wanted if t not in known]
    if unknown or not wanted:
        raise SettingsError(f"--types: unknown {', '.join(unknown) or '(none)'}; choose from {', '.join(known)}")
    return tuple(t for t in known if t in wanted)


def _positions(checks: Sequence[Check[Any]]) -> dict[str, int]:
    return {kind: i for i, kind in enumerate(verify_types(checks))}


# -- listing Stripe ------------------------------------------------------------------------------


async def _retrieve(client: stripe.StripeClient, source: str, object_id: str, *, livemode: bool) -> dict[str, Any]:
    """The object as Stripe holds it now; a deletion stub when Stripe says it is gone.

    Stripe answers a deleted customer or product with `{"id", "object", "deleted": true}` (some
    stand-ins with 404); either way the stub is what a repair publishes as its deletion.
    """
    service = getattr(client.v1, KINDS[source].service)
    stub = {"id": object_id, "object": source.rstrip("s"), "deleted": True, "livemode": livemode}
    try:
        obj = await service.retrieve_async(object_id)
    except stripe.InvalidRequestError as exc:
        if exc.http_status == 404:
            return stub
        raise UpstreamError(f"Stripe could not return {object_id}: {str(exc).splitlines()[0]}") from exc
    except stripe.StripeError as exc:
        raise UpstreamError(f"Stripe could not return {object_id}: {str(exc).splitlines()[0]}") from exc
    data: dict[str, Any] = obj.to_dict(for_json=True)
    return {**stub, **data} if data.get("deleted") else data


async def _gather_limited(jobs: Iterable[Callable[[], Awaitable[None]]], limit: int) -> None:
    """Run `jobs` (factories: a coroutine is made only when its turn comes, so a Ctrl-C that
    cancels the rest leaves no coroutine un-awaited behind) at most `limit` at a time."""
    semaphore = asyncio.Semaphore(limit)

    async def run(job: Callable[[], Awaitable[None]]) -> None:
        async with semaphore:
            await job()

    await asyncio.gather(*(run(job) for job in jobs))


def _duration(seconds: float) -> str:
    """`5400` -> `1 h 30 min`: how an estimate reads."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 90 else f"{minutes // 60} h {minutes % 60:02d} min"


class Estimate:
    """The full run's length, from the rate measured on its first objects: said once, early,
    so an operator facing an 80-minute run can stop it and bound it instead of waiting."""

    #: Measure at least this long (or this many objects) before estimating.
    MEASURE_SECONDS = 2.0
    MEASURE_OBJECTS = 200

    def __init__(self, say: Callable[[str], None] | None, expected: int, reverse_rate: float) -> None:
        self.say = say
        self.expected = expected
        self.reverse_rate = reverse_rate
        self.started = time.monotonic()
        self.done = 0
        self.said = False

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started
        return self.done / elapsed if elapsed > 0 else 0.0

    def update(self, n: int) -> None:
        self.done += n
        if self.said or self.say is None or self.expected <= 0:
            return
        if self.done < self.MEASURE_OBJECTS and time.monotonic() - self.started < self.MEASURE_SECONDS:
            return
        self.said = True
        rate = self.rate()
        if rate <= 0:
            return
        forward = max(0, self.expected - self.done) / rate + (time.monotonic() - self.started)
        reverse = self.expected / self.reverse_rate
        self.say(
            f"verify: about {self.expected:,} records to compare at {rate:,.0f}/s measured: the full run takes about "
            f"{_duration(forward)}, plus up to {_duration(reverse)} "
            f"to look up records Stripe no longer lists (--rate {self.reverse_rate:g}/s); "
            "bound it with --since DATE or --sample N"
        )


# -- verifying ------------------------------------------------------------------------------------


async def _active_checks(report: VerifyReport, mesh: Mesh, checks: Sequence[Check[Any]]) -> list[Check[Any]]:
    """The checks of the report's types that the services' present settings make meaningful;
    a kind whose check says to leave it out then leaves the report (types and summaries)."""
    active: list[Check[Any]] = []
    for check in sorted((c for c in checks if c.kind in report.types), key=lambda c: c.position):
        reason = await check.disabled_because(mesh)
        if reason is None:
            active.append(check)
        elif check.omit_when_disabled:
            log.info("%s not verified: %s", check.kind, reason)
            report.types = tuple(t for t in report.types if t != check.kind)
            report.summaries.pop(check.kind, None)
        else:
            log.debug("%s from %s not verified: %s", check.kind, check.source, reason)
    return [c for c in active if c.kind in report.types]


async def verify(
    client: stripe.StripeClient,
    mesh: Mesh,
    settings: Settings,
    *,
    checks: Sequence[Check[Any]] = CHECKS,
    types: Sequence[str] | None = None,
    since: datetime | None = None,
    requests_per_second: float = 20.0,
    concurrency: int = 16,
    show_progress: bool = False,
    sample: int | None = None,
    say: Callable[[str], None] | None = None,
) -> VerifyReport:
    """List Stripe's objects and compare each with the mesh's records; nothing is written.

    `sample`: compare only the `sample` most recent objects of each Stripe listing, and look up
    at most `sample` (picked at random) of the records Stripe did not list. `say` gets the
    estimate of the full run once the first objects have given a rate."""
    start = since
    if settings.sync_start is not None and (start is None or settings.sync_start > start):
        start = settings.sync_start  # the services deliberately skip objects created earlier
    known = verify_types(checks)
    report = VerifyReport(types=tuple(t for t in known if types is None or t in types), since=start, sample=sample)
    for kind in report.types:
        report.summaries[kind] = KindSummary()
    active = await _active_checks(report, mesh, checks)
    limiter = RateLimiter(requests_per_second)
    since_ts = int(start.timestamp()) if start is not None else None
    want_live = settings.mode == "live"
    listed: dict[str, set[str]] = {}
    held = await _held_records(report, mesh, active, since=start)
    expected: dict[str, int] = {}
    for check, records in held.items():
        expected[check.source] = max(expected.get(check.source, 0), len(records))
    total_expected = sum(expected.values())
    estimate = Estimate(say, total_expected if sample is None else 0, requests_per_second)

    for source in dict.fromkeys(c.source for c in active):
        source_checks = [c for c in active if c.source == source]
        listing = KINDS[source]
        call = getattr(client.v1, listing.service).list_async
        seen = listed.setdefault(source, set())
        total = expected.get(source) or None
        if sample is not None and total is not None:
            total = min(total, sample)
        bar = progress(total=total, desc=f"verify {source}", unit="obj", enabled=show_progress)
        try:
            async for objects, _last in list_pages(
                call, {"limit": 100, **dict(listing.params)}, what=source, limiter=limiter, created_gte=since_ts
            ):
                objects = [o for o in objects if bool(o.get("livemode", False)) == want_live]
                if sample is not None:
                    objects = objects[: max(0, sample - len(seen))]
                seen.update(str(o["id"]) for o in objects)
                jobs = [
                    _check_job(report, check, mesh, obj)
                    for obj in objects
                    for check in source_checks
                    if check.applies(obj)
                ]
                await _gather_limited(jobs, concurrency)
                if bar.total is not None and bar.n + len(objects) > bar.total:
                    bar.total = None  # the mesh held fewer than Stripe lists: no end to promise
                bar.update(len(objects))
                estimate.update(len(objects))
                if sample is not None and len(seen) >= sample:
                    break
            bar.total = bar.n  # listed to the end: the mesh's count was only the estimate
        except NotServedError as exc:
            for check in source_checks:
                report.unverified[check.kind] = str(exc).split(":")[0]
                report.summaries.pop(check.kind, None)
            log.warning("%s", exc)
        finally:
            bar.close()

    await _reverse_checks(
        report,
        client,
        mesh,
        active,
        listed,
        held,
        since=start,
        concurrency=concurrency,
        want_live=want_live,
        limiter=limiter,
        sample=sample,
        show_progress=show_progress,
        say=say,
        rate=requests_per_second,
    )
    report.sort_findings(_positions(checks))
    return report


def _check_job(
    report: VerifyReport, check: Check[Any], mesh: Mesh, obj: dict[str, Any]
) -> Callable[[], Awaitable[None]]:
    async def job() -> None:
        report.add(check.kind, await check.run(mesh, obj), obj)

    return job


async def _held_records(
    report: VerifyReport, mesh: Mesh, checks: Sequence[Check[Any]], *, since: datetime | None
) -> dict[Check[Any], list[Held]]:
    """What the mesh holds as live, per check that can say: read once, up front, both to size
    the forward phase (its bars' totals and the estimate) and for the reverse phase."""
    held: dict[Check[Any], list[Held]] = {}
    for check in checks:
        if check.held is None or check.kind not in report.types:
            continue
        records = list(await check.held(mesh))
        if since is not None:
            records = [h for h in records if not (h.created and h.created < since.timestamp())]
        held[check] = records
    return held


async def _reverse_checks(
    report: VerifyReport,
    client: stripe.StripeClient,
    mesh: Mesh,
    checks: Sequence[Check[Any]],
    listed: dict[str, set[str]],
    held_by_check: dict[Check[Any], list[Held]],
    *,
    since: datetime | None,
    concurrency: int,
    want_live: bool,
    limiter: RateLimiter,
    sample: int | None = None,
    show_progress: bool = False,
    say: Callable[[str], None] | None = None,
    rate: float = 20.0,
) -> None:
    """Records the mesh holds as live whose Stripe object was not listed: deleted in Stripe?

    Checks are asked in report order, so a record without a Stripe creation time (a client)
    can follow its customer into a --since window. One Stripe request per record, at the
    limiter's rate: the slow phase when the mesh holds many records Stripe does not list."""
    candidates: dict[tuple[str, str], list[Check[Any]]] = {}
    for check in checks:
        for held in held_by_check.get(check, []):
            key = (check.source, held.stripe_id)
            if not held.stripe_id or held.stripe_id in listed.get(check.source, set()):
                continue
            if since is not None and held.created is None and key not in candidates:
                continue
            candidates.setdefault(key, []).append(check)
    chosen = list(candidates.items())
    if sample is not None and len(chosen) > sample:
        chosen = random.sample(chosen, sample)
    if say is not None and len(chosen) / rate >= REVERSE_WARN_SECONDS:
        say(
            f"verify: {len(chosen):,} records the mesh holds were not in Stripe's listings: looking each up at "
            f"--rate {rate:g}/s takes about {_duration(len(chosen) / rate)}; bound it with --since DATE or --sample N"
        )
    bar = progress(total=len(chosen), desc="verify: records Stripe did not list", unit="obj", enabled=show_progress)

    def one(source: str, object_id: str, checks: list[Check[Any]]) -> Callable[[], Awaitable[None]]:
        async def job() -> None:
            await limiter.wait()
            obj = await _retrieve(client, source, object_id, livemode=want_live)
            bar.update(1)
            if not obj.get("deleted"):
                return  # it exists and was merely outside the window
            for check in checks:
                report.add(check.kind, await check.run(mesh, obj), obj)

        return job

    try:
        await _gather_limited((one(s, i, cs) for (s, i), cs in chosen), concurrency)
    finally:
        bar.close()


# -- repair ------------------------------------------------------------------------------------


def repair_event(source: str, obj: dict[str, Any], *, run: str, listed_at: int, api_version: str | None) -> StripeEvent:
    """The backfill's event for this object, under an id of its own for this repair run."""
    body = synthesise_event(KINDS[source], obj, listed_at=listed_at, api_version=api_version or "")
    body["id"] = f"{REPAIR_ID_PREFIX}{run}_{str(body['id']).removeprefix(BACKFILL_ID_PREFIX)}"
    return parse_event(json.dumps(body).encode())


def _companions_needed(report: VerifyReport, checks: Sequence[Check[Any]]) -> dict[tuple[str, str], list[Companion]]:
    """Per repaired object, what must be re-synced with it because a finding says it was lost."""
    needed: dict[tuple[str, str], list[Companion]] = {}
    for f in report.findings:
        for check in checks:
            if check.kind != f.kind or check.source != f.source[0]:
                continue
            for companion in check.companions:
                if companion.field == f.field and companion not in needed.get(f.source, []):
                    needed.setdefault(f.source, []).append(companion)
    return needed


async def repair(
    bus: Bus,
    client: stripe.StripeClient,
    mesh: Mesh,
    settings: Settings,
    report: VerifyReport,
    *,
    checks: Sequence[Check[Any]] = CHECKS,
    settle_seconds: float = 60.0,
    requests_per_second: float = 20.0,
    show_progress: bool = False,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> RepairReport:
    """Re-sync exactly the objects behind `report`'s findings, then re-verify them."""
    from services.common.publish import publish_event  # at call time, as gateway.app imports the sweeper

    result = RepairReport(before=report)
    if report.clean:
        return result
    limiter = RateLimiter(requests_per_second)
    started = now()
    run = started.strftime("%Y%m%d%H%M%S%f")  # two runs never share ids, even within a second
    targets = list(report.objects.items())
    companions = _companions_needed(report, checks)
    bar = progress(total=len(targets), desc="repair", unit="obj", enabled=show_progress)
    try:
        for (source, object_id), obj in targets:
            bar.update(1)
            if source == "invoices" and not obj.get("deleted"):
                await complete_invoice_lines(client, obj, limiter, KindReport())
            try:
                event = repair_event(
                    source, obj, run=run, listed_at=int(now().timestamp()), api_version=stripe.api_version
                )
            except MalformedEventError as exc:
                result.not_publishable += 1
                log.error("%s %s cannot be published as an event: %s", source, object_id, exc)
                continue
            events = [event]
            for companion in companions.get((source, object_id), []):
                events += [
                    repair_event(
                        companion.listing, o, run=run, listed_at=int(now().timestamp()), api_version=stripe.api_version
                    )
                    for o in await _companion_objects(client, companion, object_id, limiter)
                ]
            for event in events:
                if await publish_event(bus, event, source=envelope_pb2.EVENT_SOURCE_RECONCILE):
                    result.duplicates += 1
                else:
                    result.published += 1
    finally:
        bar.close()
    log.info("repair published %d events for %d findings", result.published, len(report.findings))
    result.after = await reverify(
        client,
        mesh,
        report,
        checks=checks,
        livemode=settings.mode == "live",
        settle_seconds=settle_seconds,
        requests_per_second=requests_per_second,
    )
    result.settled_seconds = (now() - started).total_seconds()
    return result


async def _companion_objects(
    client: stripe.StripeClient, companion: Companion, object_id: str, limiter: RateLimiter
) -> list[dict[str, Any]]:
    """The companion listing's objects that belong to `object_id`; none when this Stripe API
    does not serve that listing (the object is then re-synced alone)."""
    listing = KINDS[companion.listing]
    found: list[dict[str, Any]] = []
    try:
        async for objects, _last in list_pages(
            getattr(client.v1, listing.service).list_async,
            {"limit": 100, companion.parent_param: object_id, **dict(listing.params)},
            what=f"{companion.listing} of {object_id}",
            limiter=limiter,
        ):
            found.extend(objects)
    except NotServedError:
        log.info("this Stripe API does not list %s; %s is re-synced alone", companion.listing, object_id)
    return found


async def reverify(
    client: stripe.StripeClient,
    mesh: Mesh,
    report: VerifyReport,
    *,
    checks: Sequence[Check[Any]] = CHECKS,
    livemode: bool,
    settle_seconds: float,
    requests_per_second: float = 20.0,
    interval: float = 0.5,
) -> VerifyReport:
    """Fetch the objects of `report` from Stripe again and compare until they match or time runs out."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settle_seconds
    kinds_of: dict[tuple[str, str], set[str]] = {}
    for f in report.findings:
        kinds_of.setdefault(f.source, set()).add(f.kind)
    limiter = RateLimiter(requests_per_second)
    current: dict[tuple[str, str], dict[str, Any]] = {}
    for key in kinds_of:
        await limiter.wait()
        current[key] = await _retrieve(client, key[0], key[1], livemode=livemode)
    wanted = [c for c in checks if any(c.kind in kinds for kinds in kinds_of.values())]
    active = [c for c in wanted if await c.disabled_because(mesh) is None]
    while True:
        mesh.forget_cached()  # re-read: the repair changes them
        after = VerifyReport(types=report.types, since=report.since)
        for key, kinds in kinds_of.items():
            obj = current[key]
            for check in active:
                if check.source == key[0] and check.kind in kinds and check.applies(obj):
                    after.add(check.kind, await check.run(mesh, obj), obj)
        if after.clean or loop.time() >= deadline:
            after.sort_findings(_positions(checks))
            return after
        await asyncio.sleep(interval)


# -- the command ---------------------------------------------------------------------------------


def command(args: Any, checks: Sequence[Check[Any]] = CHECKS) -> int:
    """`syncmesh verify [--repair] [--types ...] [--since DATE]`: 0 when clean, 1 when not."""
    from ops.common import EXIT_FAILED, connected_bus, parse_since, run_command, target_option
    from services.common.stripe_api import close_stripe_client, make_stripe_client

    async def work(settings: Settings) -> int:
        since = parse_since("--since", args.since) if args.since else None
        if args.sample is not None and args.sample < 1:
            raise SettingsError("--sample must be 1 or more (objects per type)")
        types = parse_verify_types(args.types, checks)
        client = make_stripe_client(settings, max_network_retries=0)
        if client is None:
            raise SettingsError("SYNCMESH_STRIPE_API_KEY must be set: verify reads Stripe's objects through its API")
        services = sorted({c.service for c in checks if c.kind in types})
        targets = {s: getattr(args, target_option(s), None) or default_target(settings, by_name(s)) for s in services}
        channels = {s: aio_channel(settings, t) for s, t in targets.items()}
        try:
            mesh = Mesh(channels, targets)
            report = await verify(
                client,
                mesh,
                settings,
                checks=checks,
                types=types,
                since=since,
                requests_per_second=args.rate,
                show_progress=True,
                sample=args.sample,
                say=lambda line: print(line, file=sys.stderr, flush=True),
            )
            print("\n".join(report.lines()))
            if report.clean or not args.repair:
                return 0 if report.clean else EXIT_FAILED
            async with connected_bus(settings) as bus:
                result = await repair(
                    bus,
                    client,
                    mesh,
                    settings,
                    report,
                    checks=checks,
                    settle_seconds=args.settle,
                    requests_per_second=args.rate,
                    show_progress=True,
                )
            print("\n".join(result.lines()))
            return 0 if result.after is not None and result.after.clean else EXIT_FAILED
        finally:
            for channel in channels.values():
                await channel.close()
            await close_stripe_client(client)

    return run_command(
        work, interrupted="verify interrupted: nothing was written; bound the next run with --since DATE or --sample N"
    )

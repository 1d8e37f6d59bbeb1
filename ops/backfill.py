"""Backfill: rebuild history older than Stripe's Events API by listing the objects themselves.

Each listed object becomes one Stripe-shaped event whose type follows the object's state (a
paid invoice becomes `invoice.paid`, a canceled subscription `customer.subscription.deleted`,
...), published like any other event (`gateway.app.publish_event`, EVENT_SOURCE_BACKFILL), so
the services apply it through their usual handlers, guards and idempotency record.

Running it twice changes nothing: the event id is a hash of the event type and the object's
content (`evt_bf_<hex>`), so an unchanged object yields the same id. Ids already in the STRIPE
stream are skipped before publishing (read from the stream itself, as JetStream's dedup window
is only minutes long), and a repeat that slipped through is still a no-op for every service.
An object that changed since the last run gets a new id and is applied, as it should be; the
services' version guards keep an older state from overwriting a newer one.

`created` of a synthesised event is the time of the listing: the object is known to be in this
state at that moment, no earlier.

Invoices carry ALL their lines: Stripe embeds the first ten, and the rest are fetched page by
page from the invoice's line items (losing line 11 onwards is a known failure of other sync
tools). Paid invoice payments are listed too: in current API versions they are the only link
between an invoice and the money that paid it.

Resumable: after every page the last object id of that type is written to a checkpoint file;
a rerun with the same start date continues after it. The checkpoint is removed when every type
is done. Requests are capped per second and a 429 waits as Stripe asks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import stripe
from syncmesh.events.v1 import envelope_pb2

from services.common.bus import STRIPE_STREAM, Bus
from services.common.errors import MalformedEventError, NotServedError, SettingsError
from services.common.events import parse_event
from services.common.progress import progress
from services.common.settings import LOCAL_MESH_FILE, Settings
from services.common.stream import message_ids
from services.common.stripe_pages import RateLimiter, list_pages

log = logging.getLogger(__name__)

BACKFILL_ID_PREFIX = "evt_bf_"
DEFAULT_CHECKPOINT = Path(".syncmesh/backfill-checkpoint.json")
#: Where the checkpoint goes when no local mesh runs in the current folder (a Kubernetes Job:
#: a path on a volume that outlives the pod).
CHECKPOINT_VARIABLE = "SYNCMESH_BACKFILL_CHECKPOINT"


def checkpoint_location(option: str | None, env: Mapping[str, str] | None = None, folder: Path | None = None) -> Path:
    """Where this backfill keeps its checkpoint, absolute: `--checkpoint`, else
    `SYNCMESH_BACKFILL_CHECKPOINT`, else `.syncmesh/` beside the local mesh `syncmesh up` runs
    in this folder (or the checkpoint an earlier run left there). Anywhere else the current
    folder is no place for it (a read-only container, a folder the next run is not started
    from), so the operator is asked to name one."""
    env = os.environ if env is None else env
    here = Path.cwd() if folder is None else folder
    chosen = option or (env.get(CHECKPOINT_VARIABLE) or "").strip()
    if chosen:
        return (here / Path(chosen).expanduser()).resolve()
    local = here / DEFAULT_CHECKPOINT
    if (here / LOCAL_MESH_FILE).exists() or local.exists():
        return local.resolve()
    raise SettingsError(
        f"no local mesh in {here} (no {LOCAL_MESH_FILE}): say where the backfill keeps its checkpoint, "
        f"with --checkpoint PATH or {CHECKPOINT_VARIABLE} (in Kubernetes, a file on a volume that outlives the pod)"
    )


CHECKPOINT_VERSION = 1


def _invoice_type(obj: dict[str, Any]) -> str:
    attempts = obj.get("attempt_count")
    if (
        obj.get("status") == "open"
        and isinstance(attempts, int)
        and attempts > 0
        and not obj.get("next_payment_attempt")
    ):
        # Stripe tried and will not try again: what its own `invoice.payment_failed` said, and
        # what puts the customer on credit hold (a re-synced or backfilled invoice places it too).
        return "invoice.payment_failed"
    return {
        "paid": "invoice.paid",
        "void": "invoice.voided",
        "uncollectible": "invoice.marked_uncollectible",
        "open": "invoice.finalized",
        "draft": "invoice.created",
    }.get(str(obj.get("status")), "invoice.updated")


def _customer_type(obj: dict[str, Any]) -> str:
    return "customer.deleted" if obj.get("deleted") else "customer.updated"


def _subscription_type(obj: dict[str, Any]) -> str:
    ended = obj.get("status") in ("canceled", "incomplete_expired")
    return "customer.subscription.deleted" if ended else "customer.subscription.updated"


def _charge_type(obj: dict[str, Any]) -> str:
    if obj.get("refunded") or (obj.get("amount_refunded") or 0) > 0:
        return "charge.refunded"
    return {"succeeded": "charge.succeeded", "failed": "charge.failed", "pending": "charge.pending"}.get(
        str(obj.get("status")), "charge.updated"
    )


def _credit_note_type(obj: dict[str, Any]) -> str:
    return "credit_note.voided" if obj.get("status") == "void" else "credit_note.created"


def _fixed(event_type: str, deleted_type: str | None = None) -> Callable[[dict[str, Any]], str]:
    def choose(obj: dict[str, Any]) -> str:
        return deleted_type if deleted_type and obj.get("deleted") else event_type

    return choose


@dataclass(frozen=True)
class ObjectKind:
    """One listable kind of Stripe object and how its events are named."""

    name: str
    #: Attribute of `client.v1` holding the list call.
    service: str
    event_type: Callable[[dict[str, Any]], str]
    params: tuple[tuple[str, Any], ...] = ()


#: In dependency order, so a service sees a customer before that customer's invoices.
KINDS: dict[str, ObjectKind] = {
    kind.name: kind
    for kind in (
        ObjectKind("customers", "customers", _customer_type),
        ObjectKind("products", "products", _fixed("product.updated", "product.deleted")),
        ObjectKind("prices", "prices", _fixed("price.updated", "price.deleted")),
        ObjectKind("plans", "plans", _fixed("plan.updated", "plan.deleted")),
        # Stripe leaves canceled subscriptions out unless asked for all.
        ObjectKind("subscriptions", "subscriptions", _subscription_type, (("status", "all"),)),
        ObjectKind("invoices", "invoices", _invoice_type),
        # Since API version 2025-03-31 (basil) charges no longer name their invoice and invoices
        # no longer name their charge: an invoice's payments are these objects, and without them
        # a backfilled invoice would read as paid with no customer payment behind it.
        ObjectKind("invoice_payments", "invoice_payments", _fixed("invoice_payment.paid"), (("status", "paid"),)),
        ObjectKind("charges", "charges", _charge_type),
        ObjectKind("refunds", "refunds", _fixed("refund.created")),
        ObjectKind("credit_notes", "credit_notes", _credit_note_type),
    )
}
#: `plans` is the pre-2018 name for prices (every plan is also a price); list it only when asked.
DEFAULT_TYPES: tuple[str, ...] = tuple(name for name in KINDS if name != "plans")


def parse_types(raw: str | None) -> tuple[str, ...]:
    if not raw:
        return DEFAULT_TYPES
    wanted = [t.strip() for t in raw.split(",") if t.strip()]
    unknown = [t for t in wanted if t not in KINDS]
    if unknown:
        raise SettingsError(f"--types: unknown {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    return tuple(name for name in KINDS if name in wanted)  # dependency order, whatever was typed


def synthesise_event(kind: ObjectKind, obj: dict[str, Any], *, listed_at: int, api_version: str) -> dict[str, Any]:
    """A Stripe-shaped event for one listed object, with an id that depends only on its content."""
    event_type = kind.event_type(obj)
    canonical = json.dumps({"type": event_type, "object": obj}, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:40]
    return {
        "id": f"{BACKFILL_ID_PREFIX}{digest}",
        "object": "event",
        "api_version": api_version,
        "created": listed_at,
        "data": {"object": obj},
        "livemode": bool(obj.get("livemode", False)),
        "pending_webhooks": 0,
        "request": {"id": None, "idempotency_key": None},
        "type": event_type,
    }


@dataclass
class Checkpoint:
    """Progress of one backfill (per type: last object id done, finished or not), on disk."""

    path: Path
    since: int
    types: dict[str, dict[str, Any]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path, since: int, *, restart: bool) -> Checkpoint:
        if restart or not path.exists():
            return cls(path=path, since=since)
        try:
            data = json.loads(path.read_text("utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise SettingsError(
                f"checkpoint {path} cannot be read ({exc}): fix or delete it, or pass --restart"
            ) from None
        if data.get("version") != CHECKPOINT_VERSION or data.get("since") != since:
            started = data.get("since")
            shown = datetime.fromtimestamp(started, tz=UTC).isoformat() if isinstance(started, int) else "?"
            raise SettingsError(
                f"checkpoint {path} belongs to a backfill since {shown}: rerun with --since {shown} to "
                "resume it, or pass --restart to start this one from scratch"
            )
        return cls(path=path, since=since, types=dict(data.get("types") or {}))

    def state(self, kind: str) -> dict[str, Any]:
        return self.types.setdefault(kind, {"last_id": None, "done": False, "published": 0})

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(self.path.suffix + ".tmp")
        body = {"version": CHECKPOINT_VERSION, "since": self.since, "types": self.types}
        tmp.write_text(json.dumps(body, indent=2, sort_keys=True), "utf-8")
        os.replace(tmp, self.path)  # a crash leaves the old checkpoint or the new one, never half

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


@dataclass
class KindReport:
    listed: int = 0
    already_in_stream: int = 0
    published: int = 0
    duplicates: int = 0
    wrong_mode: int = 0
    malformed: int = 0
    extra_line_pages: int = 0
    resumed_after: str | None = None
    #: Why this type was skipped: the Stripe API answered its listing with 404 (a stand-in such as
    #: localstripe, which has no prices, refunds or credit notes to list).
    not_served: str | None = None


@dataclass
class BackfillReport:
    since: datetime
    kinds: dict[str, KindReport] = field(default_factory=dict)
    checkpoint_removed: bool = False
    checkpoint: Path | None = None

    @property
    def published(self) -> int:
        return sum(k.published for k in self.kinds.values())

    @property
    def listed(self) -> int:
        return sum(k.listed for k in self.kinds.values())

    def lines(self) -> list[str]:
        out = [f"backfilled Stripe objects created since {self.since.isoformat()}"]
        for name, k in self.kinds.items():
            extra = []
            if k.resumed_after:
                extra.append(f"resumed after {k.resumed_after}")
            if k.duplicates:
                extra.append(f"{k.duplicates} duplicates")
            if k.wrong_mode:
                extra.append(f"{k.wrong_mode} skipped: other mode than SYNCMESH_MODE")
            if k.malformed:
                extra.append(f"{k.malformed} not publishable (see log)")
            if k.extra_line_pages:
                extra.append(f"{k.extra_line_pages} extra line pages fetched")
            suffix = f" ({'; '.join(extra)})" if extra else ""
            if k.not_served:
                out.append(f"  {name}: NOT SERVED, skipped: {k.not_served}")
                continue
            out.append(
                f"  {name}: listed {k.listed}, already in stream {k.already_in_stream}, published {k.published}{suffix}"
            )
        out.append(f"  total: listed {self.listed}, published {self.published}")
        if self.checkpoint is not None:
            state = "removed: every type is done" if self.checkpoint_removed else "kept: rerun with the same --since"
            out.append(f"  checkpoint: {self.checkpoint} ({state})")
        return out


async def complete_invoice_lines(
    client: stripe.StripeClient, invoice: dict[str, Any], limiter: RateLimiter, report: KindReport
) -> None:
    """Replace the invoice's embedded first page of lines by all of its lines."""
    lines = invoice.get("lines")
    if not isinstance(lines, dict) or not lines.get("has_more"):
        return
    invoice_id = str(invoice["id"])
    collected: list[dict[str, Any]] = []

    async def fetch(params: dict[str, Any]) -> Any:
        return await client.v1.invoices.line_items.list_async(invoice_id, params)  # type: ignore[arg-type]

    async for objects, _last in list_pages(fetch, {"limit": 100}, what=f"lines of {invoice_id}", limiter=limiter):
        report.extra_line_pages += 1
        collected.extend(objects)
    lines["data"] = collected
    lines["has_more"] = False
    lines["total_count"] = len(collected)


async def backfill(
    bus: Bus,
    client: stripe.StripeClient,
    settings: Settings,
    *,
    since: datetime,
    types: Sequence[str] | None = None,
    checkpoint_path: Path = DEFAULT_CHECKPOINT,
    restart: bool = False,
    requests_per_second: float = 20.0,
    show_progress: bool = False,
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> BackfillReport:
    from services.common.publish import publish_event  # at call time, as gateway.app imports the sweeper

    # The default types are whatever the API serves of them (a stand-in lacks some); a type asked
    # for by name must be there.
    skip_not_served = types is None
    types = DEFAULT_TYPES if types is None else types
    since_ts = int(since.timestamp())
    checkpoint = Checkpoint.load(checkpoint_path, since_ts, restart=restart)
    report = BackfillReport(since=since, checkpoint=checkpoint_path)
    limiter = RateLimiter(requests_per_second)
    seen = await message_ids(bus, STRIPE_STREAM, prefix=BACKFILL_ID_PREFIX)
    want_live = settings.mode == "live"
    api_version = stripe.api_version

    for name in types:
        kind = KINDS[name]
        state = checkpoint.state(name)
        kind_report = report.kinds.setdefault(name, KindReport())
        if state.get("done"):
            kind_report.resumed_after = "(already done)"
            continue
        kind_report.resumed_after = state.get("last_id")
        call = getattr(client.v1, kind.service).list_async
        bar = progress(total=None, desc=name, unit="obj", enabled=show_progress)
        try:
            async for objects, last_id in list_pages(
                call,
                {"limit": 100, **dict(kind.params)},
                what=name,
                limiter=limiter,
                created_gte=since_ts,
                starting_after=state.get("last_id"),
            ):
                listed_at = int(now().timestamp())
                for obj in objects:
                    kind_report.listed += 1
                    bar.update(1)
                    if bool(obj.get("livemode", False)) != want_live:
                        kind_report.wrong_mode += 1
                        continue
                    if name == "invoices":
                        await complete_invoice_lines(client, obj, limiter, kind_report)
                    body = synthesise_event(kind, obj, listed_at=listed_at, api_version=api_version)
                    if body["id"] in seen:
                        kind_report.already_in_stream += 1
                        continue
                    try:
                        event = parse_event(json.dumps(body).encode())
                    except MalformedEventError as exc:
                        kind_report.malformed += 1
                        log.error("%s %s cannot be published as an event: %s", name, obj.get("id"), exc)
                        continue
                    duplicate = await publish_event(bus, event, source=envelope_pb2.EVENT_SOURCE_BACKFILL)
                    seen.add(event.id)
                    if duplicate:
                        kind_report.duplicates += 1
                    else:
                        kind_report.published += 1
                        state["published"] = int(state.get("published", 0)) + 1
                state["last_id"] = last_id
                checkpoint.save()
        except NotServedError as exc:
            if kind_report.listed or not skip_not_served:
                raise  # asked for by name, or it listed a page and then vanished: something to look at
            kind_report.not_served = str(exc)
            log.warning("backfill skips %s: %s", name, exc)
        finally:
            bar.close()
        state["done"] = True
        checkpoint.save()
        if kind_report.wrong_mode:
            log.warning(
                "backfill skipped %d %s whose livemode does not match SYNCMESH_MODE=%s",
                kind_report.wrong_mode,
                name,
                settings.mode,
            )
    checkpoint.remove()
    report.checkpoint_removed = True
    return report

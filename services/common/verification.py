"""What every service's reconciliation check shares: how one is described, how it reads the
service's records over gRPC, and what a difference looks like.

`syncmesh verify` (ops/verify.py) lists Stripe's objects and hands each one to the checks that
apply to it; the checks themselves live next to the service they judge (services/<svc>/verify.py),
because only that service knows what its records should say for a given Stripe object. This
module is the common ground between the two, so neither a service nor the runtime has to import
the operator tools:

- `Check`: one reported type against one Stripe listing, split into the gRPC `read` of the
  service's record and the pure `compare` of the Stripe object with it.
- `Difference` (what a comparison says) and `Finding` (a difference placed in the report).
- `Mesh`: the services' gRPC channels as verify reads them, with one place for NOT_FOUND,
  unreachable services, paged List RPCs and per-run caches.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import grpc

from services.common.errors import SettingsError, UpstreamError

#: The three kinds of difference, in the order a report weighs them.
MISSING, STALE, MISMATCH = "missing", "stale", "mismatch"
#: Seconds one verify RPC may take before the service counts as not answering.
RPC_TIMEOUT = 15.0

StripeObject = dict[str, Any]
RecordT = TypeVar("RecordT")
T = TypeVar("T")


# -- what a comparison says ------------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    """One field on which a service's record disagrees with Stripe, values already printable."""

    problem: str
    field: str
    stripe_value: str
    mesh_value: str


@dataclass(frozen=True)
class Finding:
    """One difference between Stripe and the mesh, placed: which type, which Stripe object."""

    kind: str
    stripe_id: str
    problem: str
    field: str
    stripe_value: str
    mesh_value: str
    #: Which Stripe object a repair re-syncs: (Stripe listing, object id).
    source: tuple[str, str]


def show(value: object) -> str:
    """A value as a report cell: `-` for nothing, booleans as Stripe writes them."""
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def differ(problem: str, field: str, stripe_value: object, mesh_value: object) -> Difference:
    return Difference(problem, field, show(stripe_value), show(mesh_value))


def missing_record() -> Difference:
    """Stripe has the object; the service holds no record of it."""
    return Difference(MISSING, "record", "exists", "none")


def text(value: object) -> str:
    return "" if value is None else str(value)


def ref(value: object) -> str:
    """The id of a Stripe reference, expanded (an object) or not (an id)."""
    if isinstance(value, dict):
        return text(value.get("id"))
    return text(value)


def mask_email(value: str) -> str:
    """Enough of an address to tell two apart in a report, not enough to leak it."""
    if "@" not in value:
        return value
    local, _, domain = value.partition("@")
    return f"{local[:1]}***@{domain[:1]}***"


def status_difference(
    rank: Mapping[str, int], stripe_status: str, mesh_status: str, field: str = "status"
) -> list[Difference]:
    """A status that differs is stale when the service ranks its own behind Stripe's.

    `rank` is the table the service itself applies events with, so "stale" means exactly what
    the service would let a newer event overwrite; anything else is a mismatch.
    """
    if stripe_status == mesh_status:
        return []
    behind = rank.get(mesh_status, -1) < rank.get(stripe_status, -1)
    return [differ(STALE if behind else MISMATCH, field, stripe_status, mesh_status)]


class MoneyRecord(Protocol):
    amount_minor: int
    currency: str


def money_differences(obj: StripeObject, amount: object, money: MoneyRecord) -> list[Difference]:
    """Amount (minor units) and currency of a Stripe object against a record's Money."""
    out = []
    if isinstance(amount, int) and amount != money.amount_minor:
        out.append(differ(MISMATCH, "amount", amount, money.amount_minor))
    currency = text(obj.get("currency")).lower()
    if currency != money.currency.lower():
        out.append(differ(MISMATCH, "currency", currency, money.currency))
    return out


# -- reading the services --------------------------------------------------------------------


class Mesh:
    """The services' gRPC APIs, as verify reads them; one channel per service, by service name."""

    def __init__(self, channels: Mapping[str, grpc.aio.Channel], targets: Mapping[str, str] | None = None) -> None:
        self.channels = dict(channels)
        self.targets = dict(targets or {})
        self._cache: dict[str, asyncio.Future[Any]] = {}
        self._lasting: set[str] = set()

    def channel(self, service: str) -> grpc.aio.Channel:
        channel = self.channels.get(service)
        if channel is None:
            raise SettingsError(f"no connection to the {service} service was given")
        return channel

    async def call(self, service: str, rpc: Awaitable[T]) -> T | None:
        """One RPC; None when the record does not exist, UpstreamError when the service cannot answer."""
        try:
            return await rpc
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return None
            where = self.targets.get(service, "")
            at = f" at {where}" if where else ""
            raise UpstreamError(
                f"the {service} service{at} did not answer ({exc.code().name}: {exc.details()}): "
                "check that it runs and is SERVING"
            ) from exc

    async def every_page(self, service: str, ask: Callable[[str], Awaitable[Any]], field: str) -> list[Any]:
        """Every item of a paged List RPC: `ask(page_token)` makes the call, `field` holds the items."""
        out: list[Any] = []
        token = ""
        while True:
            reply = await self.call(service, ask(token))
            assert reply is not None
            out.extend(getattr(reply, field))
            token = reply.next_page_token
            if not token:
                return out

    async def remembered(self, key: str, load: Callable[[], Awaitable[T]], *, lasting: bool = False) -> T:
        """`load()`'s answer, fetched once per run however many objects ask at the same time.

        For what is read whole rather than per object (every refund, every product, a
        service's settings). `forget_cached` drops all but the `lasting` ones, so a
        re-verification after a repair reads the records again.
        """
        future = self._cache.get(key)
        if future is None:
            future = asyncio.ensure_future(load())
            self._cache[key] = future
            if lasting:
                self._lasting.add(key)
        try:
            value: T = await asyncio.shield(future)
        except Exception:
            if self._cache.get(key) is future:
                del self._cache[key]  # a failed read is not remembered
            raise
        return value

    def forget_cached(self) -> None:
        self._cache = {k: v for k, v in self._cache.items() if k in self._lasting}


# -- describing a check ----------------------------------------------------------------------


@dataclass(frozen=True)
class Held:
    """A record the service holds as live, for the reverse check (deleted in Stripe since?)."""

    stripe_id: str
    #: Stripe's creation time (unix seconds); 0 when the record does not say; None when the
    #: service never knows it: such a record is looked at under a --since window only when
    #: another check already looks at the same Stripe object.
    created: int | None


@dataclass(frozen=True)
class Companion:
    """Objects of another Stripe listing that a repair re-syncs along with the object itself,
    when a finding on `field` says they were lost (e.g. an invoice's payments)."""

    field: str
    #: The Stripe listing (a backfill kind name) they come from.
    listing: str
    #: The list parameter naming the object they belong to.
    parent_param: str


async def _always(_mesh: Mesh) -> str | None:
    return None


def _every_object(_obj: StripeObject) -> bool:
    return True


@dataclass(frozen=True)
class Check(Generic[RecordT]):
    """One reported type compared against one Stripe listing.

    `read` fetches the service's record for one Stripe object (None: it holds none) and
    `compare` says, without any I/O, how the two differ; the engine lists Stripe, runs them and
    writes the report.
    """

    #: The type as reported (`--types`), e.g. "clients".
    kind: str
    #: The Stripe listing it is checked against (a backfill kind name), also what a repair re-syncs.
    source: str
    #: The service whose gRPC API holds the records (its deployable name).
    service: str
    #: Place of `kind` in the report: rows and summaries are printed in ascending order.
    position: int
    read: Callable[[Mesh, StripeObject], Awaitable[RecordT | None]]
    compare: Callable[[StripeObject, RecordT | None], list[Difference]]
    #: Which listed objects this check looks at (e.g. paid invoices only).
    applies: Callable[[StripeObject], bool] = _every_object
    #: None when the service keeps this kind under its present settings, else why it does not.
    disabled_because: Callable[[Mesh], Awaitable[str | None]] = _always
    #: True: when disabled, the kind leaves the report altogether instead of showing 0 checked.
    omit_when_disabled: bool = False
    #: The records the service holds as live, when Stripe's listing cannot show their deletion.
    held: Callable[[Mesh], Awaitable[list[Held]]] | None = None
    companions: tuple[Companion, ...] = ()

    async def run(self, mesh: Mesh, obj: StripeObject) -> list[Finding]:
        """Read the record of one Stripe object and compare: the findings for it, if any."""
        oid = str(obj.get("id", ""))
        return [
            Finding(self.kind, oid, d.problem, d.field, d.stripe_value, d.mesh_value, (self.source, oid))
            for d in self.compare(obj, await self.read(mesh, obj))
        ]

"""The initial import: pull customers, then products, then contracts from the Stripe API.

- Official SDK, async auto-paging; every request passes a token bucket (Stripe allows 25
  requests/s in test mode, 100 live) and a 429 is waited out as its `Retry-After` says, in the
  HTTP layer, so auto-paging continues where it stopped.
- Each batch of objects commits in one transaction with the phase's checkpoint (the last
  object id, Stripe's `starting_after`), so a crash or Ctrl-C loses at most the batch in
  flight, and resuming continues after the last committed object: nothing is skipped and
  nothing doubles (the upserts are idempotent besides).
- Objects go through the same load, decision and write as live events
  (`handlers.apply_objects`), versioned by the moment they were read, so re-running changes
  nothing already right and a replayed older event cannot undo what the import saw.
- Days back limits invoices (`created[gte]`, fixed when the run starts so a resumed run pulls the
  same window) and ended subscriptions; customers and products are pulled whole, since a
  recent contract may belong to an old customer.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import asyncpg
import stripe
from google.protobuf.message import Message

from services.common import outbox
from services.common.db import Conn
from services.common.errors import ConflictError, UpstreamError
from services.common.settings import Mode, check_stripe_api_key
from services.common.stripe_api import TracedAIOHTTPClient, upstream_error
from services.crm_export import handlers, mapping, store
from services.crm_export.crm_settings import CrmSettings
from services.crm_export.decide import Incoming, Kind
from services.crm_export.fetch import StripeFetcher
from services.crm_export.handlers import Emit
from services.crm_export.statuses import TERMINAL_SUBSCRIPTION_STATUSES

log = logging.getLogger(__name__)

SERVICE = "crm-export"
CUSTOMERS, PRODUCTS, INVOICES, SUBSCRIPTIONS = "customers", "products", "invoices", "subscriptions"
PHASES = (CUSTOMERS, PRODUCTS, INVOICES, SUBSCRIPTIONS)
_LOCK_KEY = "syncmesh-crm-export-import"


class TokenBucket:
    """At most `rate` acquisitions per second on average, bursts up to `capacity`."""

    def __init__(
        self,
        rate: float,
        capacity: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.capacity = capacity if capacity is not None else max(1.0, rate)
        self.tokens = self.capacity
        self.clock = clock
        self.updated = clock()
        self._lock = asyncio.Lock()

    async def acquire(self) -> None:
        async with self._lock:
            while True:
                now = self.clock()
                self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
                self.updated = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                await asyncio.sleep((1 - self.tokens) / self.rate)


def retry_after_seconds(headers: Mapping[str, str] | None, attempt: int) -> float:
    """Stripe's `Retry-After` (seconds or an HTTP date), else exponential backoff."""
    fallback = min(30.0, 0.5 * (1 << min(attempt, 10)))
    raw = None
    if headers is not None:
        raw = str(headers.get("Retry-After") or headers.get("retry-after") or "")
    if not raw:
        return fallback
    try:
        return float(max(0.0, min(60.0, float(raw))))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return fallback
    return float(max(0.0, min(60.0, (when - datetime.now(UTC)).total_seconds())))


@dataclass
class RequestStats:
    requests: int = 0
    rate_limited: int = 0


class RateLimitedHTTPClient(TracedAIOHTTPClient):
    """The SDK's aiohttp client behind a token bucket, waiting out 429s before the SDK sees them."""

    def __init__(self, bucket: TokenBucket, stats: RequestStats, *, max_429_retries: int = 8) -> None:
        super().__init__()
        self.bucket = bucket
        self.stats = stats
        self.max_429_retries = max_429_retries

    async def request_async(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any = None
    ) -> tuple[bytes, int, Mapping[str, str]]:
        attempt = 0
        while True:
            await self.bucket.acquire()
            self.stats.requests += 1
            content, status, response_headers = await super().request_async(method, url, headers, post_data)
            if status != 429 or attempt >= self.max_429_retries:
                return content, status, response_headers
            delay = retry_after_seconds(response_headers, attempt)
            self.stats.rate_limited += 1
            attempt += 1
            log.warning("Stripe answered 429; waiting %.1fs as Retry-After asks (attempt %d)", delay, attempt)
            await asyncio.sleep(delay)


@dataclass(frozen=True)
class ImportOptions:
    #: Objects per page and per committed batch (Stripe's maximum page is 100).
    page_size: int = 100
    #: Send Stripe's server-side filters (`created[gte]`). None: yes for the real Stripe API, no
    #: when a base address override points at a stand-in (localstripe refuses them); the same
    #: filters are applied client-side either way.
    server_filters: bool | None = None
    #: Overrides the persisted settings' requests per second (tests).
    requests_per_second: float | None = None
    max_429_retries: int = 8


@dataclass(frozen=True)
class Progress:
    run_id: str
    phase: str
    phase_done: int
    total_done: int
    resumed: bool
    finished: bool
    requests: int
    rate_limited: int


class Importer:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        api_key: str | None,
        api_base: str | None,
        mode: Mode,
        options: ImportOptions = ImportOptions(),
        on_commit: Callable[[], None] | None = None,
        now: Callable[[], int] = lambda: int(time.time()),
    ) -> None:
        if not api_key:
            raise ConflictError(
                "the import needs a Stripe key: set SYNCMESH_STRIPE_API_KEY to a secret (sk_…) or restricted "
                "(rk_…) key with read access to customers, products, invoices and subscriptions"
            )
        check_stripe_api_key(api_key, mode, variable="SYNCMESH_STRIPE_API_KEY")
        self.pool = pool
        self.api_key = api_key
        self.api_base = api_base
        self.options = options
        self.server_filters = options.server_filters if options.server_filters is not None else api_base is None
        self.on_commit = on_commit
        self.now = now
        self.stats = RequestStats()

    def _client(self, requests_per_second: float) -> tuple[stripe.StripeClient, RateLimitedHTTPClient]:
        http = RateLimitedHTTPClient(
            TokenBucket(requests_per_second), self.stats, max_429_retries=self.options.max_429_retries
        )
        base = {"api": self.api_base} if self.api_base else None
        client = stripe.StripeClient(
            self.api_key,
            base_addresses=base,  # type: ignore[arg-type]
            http_client=http,
            max_network_retries=2,
        )
        return client, http

    async def run(self, *, days_back: int = 0, restart: bool = False) -> AsyncIterator[Progress]:
        """Import, yielding progress after every committed batch; one import at a time."""
        async with self.pool.acquire() as lock_conn:
            if not await lock_conn.fetchval("SELECT pg_try_advisory_lock(hashtext($1))", _LOCK_KEY):
                raise ConflictError("an import is already running: wait for it to finish, then run again to check")
            try:
                async for progress in self._run(days_back=days_back, restart=restart):
                    yield progress
            finally:
                try:
                    await lock_conn.execute("SELECT pg_advisory_unlock(hashtext($1))", _LOCK_KEY)
                except BaseException:
                    lock_conn.terminate()  # a session lock must never go back to the pool
                    raise

    async def _run(self, *, days_back: int, restart: bool) -> AsyncIterator[Progress]:
        async with self.pool.acquire() as conn:
            settings = (await store.current_settings(conn)).settings
        days = days_back or settings.days_back
        async with self.pool.acquire() as conn, conn.transaction():
            run = await store.open_import_run(
                conn, run_id=uuid.uuid4().hex, days_back=days, cutoff=self.now() - days * 86400, restart=restart
            )
        rps = self.options.requests_per_second or settings.import_requests_per_second
        client, http = self._client(rps)
        fetcher = StripeFetcher(client)
        log.info(
            "import %s %s (days back %d, %s req/s)", run.run_id, "resumed" if run.resumed else "started", days, rps
        )
        total = 0
        try:
            for phase in PHASES:
                async with self.pool.acquire() as conn:
                    cp = await store.checkpoint(conn, run.run_id, phase)
                if not cp.finished:
                    async for committed in self._phase(client, fetcher, run, cp, settings):
                        cp = committed
                        yield self._progress(run, phase, cp.done, total + cp.done, finished=False)
                    async with self.pool.acquire() as conn:
                        cp = replace(cp, finished=True)
                        await store.save_checkpoint(conn, run.run_id, cp)
                total += cp.done
                yield self._progress(run, phase, cp.done, total, finished=False)
            async with self.pool.acquire() as conn:
                await store.finish_import_run(conn, run.run_id)
            yield self._progress(run, "done", 0, total, finished=True)
        finally:
            await http.close_async()  # type: ignore[no-untyped-call]

    def _progress(self, run: store.ImportRun, phase: str, done: int, total: int, *, finished: bool) -> Progress:
        return Progress(
            run_id=run.run_id,
            phase=phase,
            phase_done=done,
            total_done=total,
            resumed=run.resumed,
            finished=finished,
            requests=self.stats.requests,
            rate_limited=self.stats.rate_limited,
        )

    async def _list(self, client: stripe.StripeClient, phase: str, params: dict[str, Any]) -> Any:
        v1 = client.v1
        if phase == CUSTOMERS:
            return await v1.customers.list_async(params)  # type: ignore[arg-type]
        if phase == PRODUCTS:
            return await v1.products.list_async(params)  # type: ignore[arg-type]
        if phase == INVOICES:
            return await v1.invoices.list_async(params)  # type: ignore[arg-type]
        return await v1.subscriptions.list_async({**params, "status": "all"})  # type: ignore[arg-type]

    async def _phase(
        self,
        client: stripe.StripeClient,
        fetcher: StripeFetcher,
        run: store.ImportRun,
        cp: store.Checkpoint,
        settings: CrmSettings,
    ) -> AsyncIterator[store.Checkpoint]:
        params: dict[str, Any] = {"limit": self.options.page_size}
        if phase_is_dated(cp.phase) and self.server_filters:
            params["created"] = {"gte": run.cutoff}
        try:
            page = await self._list(client, cp.phase, {**params, **_after(cp)})
        except stripe.InvalidRequestError as exc:
            if cp.starting_after is None:
                raise upstream_error(exc, f"list {cp.phase}") from exc
            # The checkpoint's object is gone from Stripe: start the phase over (idempotent).
            log.warning("import checkpoint %s no longer exists; restarting the %s phase", cp.starting_after, cp.phase)
            cp = store.Checkpoint(cp.phase, None, 0, False)
            page = await self._list(client, cp.phase, params)
        except stripe.StripeError as exc:
            raise upstream_error(exc, f"list {cp.phase}") from exc
        batch: list[dict[str, Any]] = []
        observed = self.now()
        try:
            async for obj in page.auto_paging_iter():
                if not batch:
                    observed = self.now()
                batch.append(obj.to_dict())
                if len(batch) >= self.options.page_size:
                    cp = await self._commit(fetcher, run, cp, batch, settings, observed)
                    batch = []
                    yield cp
        except stripe.StripeError as exc:
            raise upstream_error(exc, f"list {cp.phase}") from exc
        if batch:
            cp = await self._commit(fetcher, run, cp, batch, settings, observed)
            yield cp

    async def _commit(
        self,
        fetcher: StripeFetcher,
        run: store.ImportRun,
        cp: store.Checkpoint,
        batch: list[dict[str, Any]],
        settings: CrmSettings,
        observed: int,
    ) -> store.Checkpoint:
        incoming = [x for x in (imported(cp.phase, obj, observed, run.cutoff) for obj in batch) if x is not None]
        async with self.pool.acquire() as conn, conn.transaction():
            sources = handlers.Sources(emits=[_outbox_emitter(conn)], spans=[contextlib.nullcontext])
            # An imported object is Stripe's present state: there are no same-second ties to settle.
            await handlers.apply_objects(conn, incoming, settings, sources, fetcher, settle_ties=False)
            cp = store.Checkpoint(cp.phase, str(batch[-1]["id"]), cp.done + len(batch), False)
            await store.save_checkpoint(conn, run.run_id, cp)
        if self.on_commit is not None:
            self.on_commit()
        return cp


def imported(phase: str, obj: dict[str, Any], observed: int, cutoff: int) -> Incoming | None:
    """A listed object as an object to apply, versioned by the moment it was read; None when it
    is outside the days-back window."""
    deleted = bool(obj.get("deleted"))
    if phase == CUSTOMERS:
        return Incoming(Kind.CUSTOMER, obj, observed, deleted=deleted)
    if phase == PRODUCTS:
        return Incoming(Kind.PRODUCT, obj, observed, deleted=deleted)
    if phase == INVOICES:
        created = obj.get("created")
        if isinstance(created, int) and created < cutoff:
            return None
        return Incoming(Kind.PAID_INVOICE if mapping.invoice_is_paid(obj) else Kind.PAYMENT_FACTS, obj, observed)
    if subscription_ended_before(obj, cutoff):
        return None
    return Incoming(Kind.SUBSCRIPTION, obj, observed)


def phase_is_dated(phase: str) -> bool:
    return phase == INVOICES


def subscription_ended_before(subscription: Mapping[str, Any], cutoff: int) -> bool:
    ended = subscription.get("ended_at") or subscription.get("canceled_at")
    return subscription.get("status") in TERMINAL_SUBSCRIPTION_STATUSES and isinstance(ended, int) and ended < cutoff


def _after(cp: store.Checkpoint) -> dict[str, str]:
    return {"starting_after": cp.starting_after} if cp.starting_after else {}


def _outbox_emitter(conn: Conn) -> Emit:
    async def emit(event_name: str, message: Message) -> None:
        await outbox.add_event(conn, service=SERVICE, event_name=event_name, message=message)

    return emit


__all__ = ["ImportOptions", "Importer", "Progress", "TokenBucket", "UpstreamError", "retry_after_seconds"]

"""Paging through Stripe list endpoints politely: a request rate cap, patience on 429, and
resumption from a known object id.

Stripe allows 25 reads per second in test mode and 100 in live mode, shared with everything
else using the key; a backfill that ignores that starves the account's real traffic. Each
page request waits its turn at the configured rate; a 429 waits `Retry-After` (or backs off
exponentially) and tries again; so do connection failures and 5xx answers, a few times.

Pages are fetched by hand (`starting_after` = the last id seen) rather than with the SDK's
auto-paging iterator, because the caller must be able to throttle every request and record
the last id of each finished page in order to resume after an interruption.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import stripe

from services.common.errors import NotServedError, UpstreamError

log = logging.getLogger(__name__)

ListCall = Callable[[dict[str, Any]], Awaitable[Any]]

#: Retries of a page on 429, network failures and 5xx before giving up with an UpstreamError.
MAX_ATTEMPTS = 8


class RateLimiter:
    """At most `per_second` requests per second, spaced evenly (0 or less: no limit)."""

    def __init__(self, per_second: float) -> None:
        self.interval = 1.0 / per_second if per_second > 0 else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if self.interval == 0:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._next > now:
            await asyncio.sleep(self._next - now)
        self._next = max(now, self._next) + self.interval


def retry_after_seconds(exc: stripe.StripeError, attempt: int) -> float:
    """Stripe's `Retry-After` when it gives one (capped at a minute), else 0.5 s doubling."""
    headers: Mapping[str, str] = exc.headers or {}
    for key, value in headers.items():
        if key.lower() == "retry-after":
            try:
                return max(0.0, min(60.0, float(value)))
            except ValueError:
                break
    return float(min(30.0, 0.5 * 2 ** (attempt - 1)))


async def _request(
    call: ListCall,
    params: dict[str, Any],
    *,
    limiter: RateLimiter,
    what: str,
    max_attempts: int,
    retry_server_errors: bool = True,
) -> Any:
    attempt = 0
    while True:
        attempt += 1
        await limiter.wait()
        try:
            return await call(dict(params))
        except stripe.RateLimitError as exc:
            if attempt >= max_attempts:
                raise UpstreamError(f"Stripe kept refusing to list {what} (rate limited): lower --rate") from exc
            delay = retry_after_seconds(exc, attempt)
            log.warning("rate limited while listing %s; waiting %.1fs", what, delay)
            await asyncio.sleep(delay)
        except (stripe.APIConnectionError, stripe.APIError) as exc:
            status = getattr(exc, "http_status", None)
            if isinstance(exc, stripe.APIError) and status is not None and (status < 500 or not retry_server_errors):
                raise
            if attempt >= max_attempts:
                raise UpstreamError(f"Stripe could not list {what}: {str(exc).splitlines()[0]}") from exc
            delay = retry_after_seconds(exc, attempt)
            log.warning("listing %s failed (%s); retrying in %.1fs", what, type(exc).__name__, delay)
            await asyncio.sleep(delay)


async def list_pages(
    call: ListCall,
    params: Mapping[str, Any],
    *,
    what: str,
    limiter: RateLimiter,
    created_gte: int | None = None,
    starting_after: str | None = None,
    max_attempts: int = MAX_ATTEMPTS,
) -> AsyncIterator[tuple[list[dict[str, Any]], str]]:
    """Yield (objects as JSON-ready dicts, last id of the page) for every page of a listing.

    `created_gte` is sent as `created[gte]` and also checked here on each object: a Stripe
    stand-in that refuses the filter (localstripe does) gets one warning and the full list,
    filtered on this side, rather than a failed run.
    """
    base = dict(params)
    server_filter = created_gte is not None
    cursor = starting_after
    first = True
    while True:
        request = dict(base)
        if server_filter:
            request["created"] = {"gte": created_gte}
        if cursor is not None:
            request["starting_after"] = cursor
        probing = first and server_filter
        try:
            # The first filtered request is not retried on 5xx: a stand-in that cannot filter
            # answers 500, and falling back to filtering here is correct whatever the cause.
            page = await _request(
                call,
                request,
                limiter=limiter,
                what=what,
                max_attempts=max_attempts,
                retry_server_errors=not probing,
            )
        except (stripe.InvalidRequestError, stripe.APIError) as exc:
            status = getattr(exc, "http_status", None)
            if probing and status in (400, 500):
                log.warning(
                    "the Stripe API refused to filter %s by created (%s); listing all and filtering here",
                    what,
                    str(exc).splitlines()[0],
                )
                server_filter = False
                continue
            if status == 404:
                raise NotServedError(f"this Stripe API does not serve {what} (404): leave it out of --types") from exc
            raise UpstreamError(f"Stripe could not list {what}: {str(exc).splitlines()[0]}") from exc
        except stripe.AuthenticationError as exc:
            raise UpstreamError(
                "Stripe refused the API key (SYNCMESH_STRIPE_API_KEY): check it is current and may read " + what
            ) from exc
        except stripe.PermissionError as exc:
            raise UpstreamError(
                f"the API key may not read {what}: give the restricted key read access to it, or leave it out"
            ) from exc
        first = False
        data = list(page.data)
        objects = [obj.to_dict(for_json=True) for obj in data]
        if created_gte is not None:
            objects = [o for o in objects if not isinstance(o.get("created"), int) or o["created"] >= created_gte]
        if not data:
            return
        last_id = str(data[-1].id)
        yield objects, last_id
        if not page.has_more:
            return
        cursor = last_id

"""The one place a Stripe API client is made, so every caller gets the same key checks, base
address override (for localstripe or a recorded stand-in), async HTTP client and retries.
"""

from __future__ import annotations

import asyncio
import contextlib

import stripe

from services.common.errors import UpstreamError
from services.common.settings import Settings, check_stripe_api_key


def make_stripe_client(
    settings: Settings, *, max_network_retries: int = 2, http_client: stripe.HTTPClient | None = None
) -> stripe.StripeClient | None:
    """A client for `settings.stripe_api_key`, or None when no key is configured.

    Pass `http_client` (a `stripe.AIOHTTPClient`) when the caller will close it on shutdown.
    """
    if not settings.stripe_api_key:
        return None
    check_stripe_api_key(settings.stripe_api_key, settings.mode, variable="SYNCMESH_STRIPE_API_KEY")
    base = {"api": settings.stripe_api_base} if settings.stripe_api_base else None
    return stripe.StripeClient(
        settings.stripe_api_key,
        base_addresses=base,  # type: ignore[arg-type]
        http_client=http_client or stripe.AIOHTTPClient(),
        max_network_retries=max_network_retries,
    )


_shared: dict[tuple[str, str | None, int], stripe.StripeClient] = {}


def stripe_client_for(settings: Settings) -> stripe.StripeClient | None:
    """The process's client for this key and base address, or None when no key is configured.

    Shared by every handler, runtime and API call in the process, so its HTTP session (and
    connection pool) is reused; one per event loop, because an aiohttp session cannot cross
    loops. `close_stripe_clients()` closes them at shutdown.
    """
    if not settings.stripe_api_key:
        return None
    key = (settings.stripe_api_key, settings.stripe_api_base, id(asyncio.get_running_loop()))
    client = _shared.get(key)
    if client is None:
        client = make_stripe_client(settings)
        assert client is not None
        _shared[key] = client
    return client


async def close_stripe_clients() -> None:
    """Close every shared client's HTTP session (process shutdown, and between tests)."""
    clients = list(_shared.values())
    _shared.clear()
    for client in clients:
        await close_stripe_client(client)


async def close_stripe_client(client: stripe.StripeClient | None) -> None:
    """Close the client's HTTP session (the SDK offers no public close on StripeClient)."""
    http = getattr(getattr(client, "_requestor", None), "_client", None)
    close = getattr(http, "close_async", None)
    if close is not None:
        with contextlib.suppress(Exception):
            await close()


def upstream_error(exc: stripe.StripeError, doing: str) -> UpstreamError:
    """A Stripe failure as an UpstreamError that says what was being done, without the key."""
    message = getattr(exc, "user_message", None) or str(exc).split("\n")[0]
    return UpstreamError(f"Stripe could not {doing}: {message}")

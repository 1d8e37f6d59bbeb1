"""The one place a Stripe API client is made, so every caller gets the same key checks, base
address override (for localstripe or a recorded stand-in), async HTTP client, retries and spans.

Every HTTP request to Stripe is a client span joined to the current trace (the event being
handled, the gRPC call, the tool's run): `stripe GET /v1/customers/{id}`, with the method, the
path with its object ids replaced by `{id}` (ids would make every span name unique and put
customer ids into span names), the status code and Stripe's `Request-Id`, the one thing Stripe
support asks for. Each retry of the SDK is a span of its own. No trace context is sent to Stripe.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import stripe
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from services.common.errors import UpstreamError
from services.common.settings import Settings, check_stripe_api_key

#: A Stripe object id as a path segment: a lowercase prefix (`cus_`, `in_`, `sub_sched_`), then
#: letters and digits with at least one digit or capital. Collection names (`billing_portal`,
#: `credit_notes`) are lowercase words only, so they stay.
_OBJECT_ID = re.compile(r"^[a-z]+(?:_[a-z]+)*_(?=[A-Za-z0-9]*[A-Z0-9])[A-Za-z0-9]+$")

_tracer = trace.get_tracer(__name__)


def span_path(path: str) -> str:
    """`/v1/customers/cus_Nff1/balance_transactions` -> `/v1/customers/{id}/balance_transactions`."""
    return "/".join("{id}" if _OBJECT_ID.match(part) else part for part in path.split("/"))


class TracedAIOHTTPClient(stripe.AIOHTTPClient):
    """The SDK's aiohttp client, each request a client span (see the module's docstring)."""

    async def request_async(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any = None
    ) -> tuple[bytes, int, Mapping[str, str]]:
        parts = urlsplit(url)
        path = span_path(parts.path)
        verb = method.upper()
        attributes: dict[str, str | int] = {
            "http.request.method": verb,
            "url.path": path,
            "server.address": parts.hostname or "",
            "peer.service": "stripe",
        }
        if parts.port:
            attributes["server.port"] = parts.port
        with _tracer.start_as_current_span(
            f"stripe {verb} {path}", kind=SpanKind.CLIENT, attributes=attributes, record_exception=True
        ) as span:
            content, status, response_headers = await super().request_async(method, url, headers, post_data)
            span.set_attribute("http.response.status_code", status)
            request_id = _header(response_headers, "Request-Id")
            if request_id:
                span.set_attribute("stripe.request_id", request_id)
            if status >= 400:
                span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
            return content, status, response_headers


def _header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name.lower():
            return str(value)
    return None


def make_stripe_client(
    settings: Settings, *, max_network_retries: int = 2, http_client: stripe.HTTPClient | None = None
) -> stripe.StripeClient | None:
    """A client for `settings.stripe_api_key`, or None when no key is configured.

    Pass `http_client` (a `TracedAIOHTTPClient`) when the caller will close it on shutdown.
    """
    if not settings.stripe_api_key:
        return None
    check_stripe_api_key(settings.stripe_api_key, settings.mode, variable="SYNCMESH_STRIPE_API_KEY")
    base = {"api": settings.stripe_api_base} if settings.stripe_api_base else None
    return stripe.StripeClient(
        settings.stripe_api_key,
        base_addresses=base,  # type: ignore[arg-type]
        http_client=http_client or TracedAIOHTTPClient(),
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

"""Fetching from Stripe what an event or a listed object left out, in a batch's load step.

Stripe truncates nested lists to their first page (an invoice's `lines`, a subscription's
`items`: 10 entries, `has_more: true`). Several connectors silently lost entry 11 onwards; here
the rest is fetched, and without a Stripe key the event is retried (then dead-lettered with a
reason saying what to configure) rather than recorded incomplete. A customer is fetched as
Stripe holds it now to settle a same-second tie (see decide.py), only when a key is set.
"""

from __future__ import annotations

from typing import Any, Protocol

import stripe

from services.common.errors import RetryableError
from services.common.stripe_api import upstream_error


class Fetcher(Protocol):
    async def invoice_lines(self, invoice_id: str) -> list[dict[str, Any]]: ...

    async def subscription_items(self, subscription_id: str) -> list[dict[str, Any]]: ...

    async def current_customer(self, customer_id: str) -> dict[str, Any]: ...


class StripeFetcher:
    def __init__(self, client: stripe.StripeClient) -> None:
        self.client = client

    async def invoice_lines(self, invoice_id: str) -> list[dict[str, Any]]:
        try:
            page = await self.client.v1.invoices.line_items.list_async(invoice_id, {"limit": 100})
            return [line.to_dict() async for line in page.auto_paging_iter()]
        except stripe.StripeError as exc:
            raise upstream_error(exc, f"list the lines of invoice {invoice_id}") from exc

    async def subscription_items(self, subscription_id: str) -> list[dict[str, Any]]:
        try:
            page = await self.client.v1.subscription_items.list_async({"subscription": subscription_id, "limit": 100})
            return [item.to_dict() async for item in page.auto_paging_iter()]
        except stripe.StripeError as exc:
            raise upstream_error(exc, f"list the items of subscription {subscription_id}") from exc

    async def current_customer(self, customer_id: str) -> dict[str, Any]:
        try:
            current = await self.client.v1.customers.retrieve_async(customer_id)
        except stripe.StripeError as exc:
            raise upstream_error(exc, "fetch a customer to settle a same-second tie") from exc
        return dict(current.to_dict())


class NoFetcher:
    """Used when no Stripe key is configured: truncated lists cannot be completed."""

    async def invoice_lines(self, invoice_id: str) -> list[dict[str, Any]]:
        raise RetryableError(
            f"invoice {invoice_id} has more lines than the event carries: set SYNCMESH_STRIPE_API_KEY so "
            "crm-export can fetch them, then redrive this event"
        )

    async def subscription_items(self, subscription_id: str) -> list[dict[str, Any]]:
        raise RetryableError(
            f"subscription {subscription_id} has more items than the event carries: set SYNCMESH_STRIPE_API_KEY "
            "so crm-export can fetch them, then redrive this event"
        )

    async def current_customer(self, customer_id: str) -> dict[str, Any]:
        raise RetryableError(f"customer {customer_id}: settling a same-second tie needs SYNCMESH_STRIPE_API_KEY")

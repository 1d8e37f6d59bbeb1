"""ERP -> Stripe: "Sync to Stripe" for one customer, and customer-portal sessions.

The lookup priority is the PayPack connector's: the linked Stripe customer id first, then the
email. Once linked, a customer stays on its Stripe customer even when its email changes (the
new email is pushed to Stripe, never used to re-link); moving to another Stripe customer takes
an explicit UnlinkCustomer first, and then an email to find or create the new one.

Stripe calls happen outside any database transaction (a slow Stripe must not hold row locks);
the link is then written in a short transaction that re-checks nobody linked in between.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import stripe
from syncmesh.customer.v1 import customer_service_pb2 as pb
from syncmesh.customer.v1 import events_pb2

from services.common.auth import caller
from services.common.errors import ConflictError, NotFoundError, UpstreamError, ValidationError
from services.common.outbox import add_event
from services.common.stripe_api import upstream_error
from services.customer import store
from services.customer.mapping import CustomerRecord, normalize_email

log = logging.getLogger(__name__)

#: Stripe returns no expiry for portal sessions, only that they are short-lived; the link
#: must be opened within this window.
PORTAL_SESSION_TTL = timedelta(minutes=5)

PORTAL_NOT_CONFIGURED = (
    "the Stripe customer portal is not configured for this account: configure and save it in "
    "Stripe Dashboard > Settings > Billing > Customer portal (in the same test/live mode as the "
    "API key), then try again"
)


def applied_by(reason: str = "") -> str:
    """A history outcome naming who did it: the authenticated caller (never the request), when
    there is one; and why, when a reason was given."""
    identity = caller()
    applied = f"applied by {identity.name}" if identity is not None else "applied"
    return f"{applied}: {reason}" if reason else applied


@dataclass(frozen=True)
class SyncResult:
    record: CustomerRecord
    action: int  # pb.SyncAction


def _require_client(client: stripe.StripeClient | None) -> stripe.StripeClient:
    if client is None:
        raise ConflictError(
            "SYNCMESH_STRIPE_API_KEY is not set on the customer service: set a secret (sk_) or restricted (rk_) "
            "key to sync customers to Stripe"
        )
    return client


def _data(obj: Any) -> dict[str, Any]:
    return dict(obj.to_dict())


async def sync_customer(
    pool: asyncpg.Pool,
    client: stripe.StripeClient | None,
    erp_customer_id: str,
    *,
    email: str | None = None,
    name: str | None = None,
) -> SyncResult:
    """Sync one ERP customer to Stripe; raises the mesh's errors with what to do."""
    async with pool.acquire() as conn, conn.transaction():
        record = await store.get_by_erp_id(conn, erp_customer_id, for_update=True)
        if record is None:
            raise NotFoundError(f"no customer with ERP id {erp_customer_id}")
        if email is not None or name is not None:
            await store.set_erp_contact(conn, erp_customer_id, email=email, name=name)
            record = await store.get_by_erp_id(conn, erp_customer_id)
            assert record is not None
    if not record.active:
        raise ConflictError(f"{erp_customer_id} is inactive (its Stripe customer was deleted): it cannot be synced")
    if record.stripe_customer_id is None and not record.email:
        raise ValidationError(
            "email",
            f"{erp_customer_id} has no Stripe link and no email: add an email to the customer, "
            "or import its Stripe customer id with `syncmesh import customers`",
        )
    client = _require_client(client)

    if record.stripe_customer_id is not None:
        # Linked: stay on it whatever the email says, and push the ERP email/name to Stripe.
        params: dict[str, Any] = {}
        if record.email:
            params["email"] = record.email
        if record.name:
            params["name"] = record.name
        try:
            await client.v1.customers.update_async(record.stripe_customer_id, params)  # type: ignore[arg-type]
        except stripe.InvalidRequestError as exc:
            if exc.http_status == 404:
                raise ConflictError(
                    f"{erp_customer_id} is linked to {record.stripe_customer_id}, which Stripe no longer has: "
                    "unlink it (UnlinkCustomer), then sync again to find or create a Stripe customer by email"
                ) from exc
            raise upstream_error(exc, f"update {record.stripe_customer_id}") from exc
        except stripe.StripeError as exc:
            raise upstream_error(exc, f"update {record.stripe_customer_id}") from exc
        return SyncResult(record, pb.SYNC_ACTION_UPDATED_LINKED)

    assert record.email is not None
    candidates = await _stripe_customers_with_email(client, record.email)
    if len(candidates) > 1:
        raise ConflictError(
            f"{len(candidates)} Stripe customers have the email of {erp_customer_id} "
            f"({', '.join(sorted(candidates))}): import the right Stripe customer id for it instead of guessing"
        )
    if candidates:
        stripe_id = candidates[0]
        action = pb.SYNC_ACTION_LINKED_BY_EMAIL
    else:
        params = {"email": record.email, "metadata": {"erp_customer_id": erp_customer_id}}
        if record.name:
            params["name"] = record.name
        try:
            created = await client.v1.customers.create_async(
                params,  # type: ignore[arg-type]
                # A retried RPC must not create a second customer; any change to the record
                # (an unlink, a new email) makes a new key.
                options={"idempotency_key": f"syncmesh-customer-{erp_customer_id}-{record.updated_at.timestamp():.6f}"},
            )
        except stripe.StripeError as exc:
            raise upstream_error(exc, "create a customer") from exc
        stripe_id = str(created.id)
        action = pb.SYNC_ACTION_CREATED

    async with pool.acquire() as conn, conn.transaction():
        current = await store.get_by_erp_id(conn, erp_customer_id, for_update=True)
        assert current is not None
        if current.stripe_customer_id is not None:
            raise ConflictError(f"{erp_customer_id} was linked to {current.stripe_customer_id} meanwhile")
        holder = await store.get_by_stripe_id(conn, stripe_id, for_update=True)
        if holder is not None:
            raise ConflictError(
                f"the Stripe customer with this email ({stripe_id}) is already linked to {holder.erp_customer_id}: "
                f"unlink {holder.erp_customer_id} first, or import the right mapping"
            )
        linked = await store.link(conn, erp_customer_id, stripe_id)
        await store.record_history(
            conn,
            erp_customer_id=erp_customer_id,
            stripe_customer_id=stripe_id,
            action="sync.linked",
            outcome=applied_by(),
        )
        await add_event(
            conn,
            service=store.SERVICE,
            event_name="customer_linked",
            message=events_pb2.CustomerLinked(
                erp_customer_id=erp_customer_id, stripe_customer_id=stripe_id, source=events_pb2.LINK_SOURCE_SYNC
            ),
        )
    log.info("linked %s to %s (%s)", erp_customer_id, stripe_id, pb.SyncAction.Name(action))
    return SyncResult(linked, action)


async def _stripe_customers_with_email(client: stripe.StripeClient, email: str) -> list[str]:
    """Stripe customers whose email equals `email` ignoring case.

    Stripe's `email` list filter is case-sensitive, so both the ERP's spelling and the
    lower-cased form are asked for, and the answers are compared case-insensitively.
    """
    wanted = normalize_email(email)
    found: set[str] = set()
    for spelling in dict.fromkeys([email.strip(), wanted or ""]):
        if not spelling:
            continue
        try:
            page = await client.v1.customers.list_async({"email": spelling, "limit": 100})
        except stripe.StripeError as exc:
            raise upstream_error(exc, "list customers by email") from exc
        for customer in page.data:
            data = _data(customer)
            if normalize_email(data.get("email")) == wanted and not data.get("deleted"):
                found.add(str(data["id"]))
    return sorted(found)


@dataclass(frozen=True)
class PortalSession:
    url: str
    session_id: str
    stripe_customer_id: str
    created_at: datetime
    expires_at: datetime


async def create_portal_session(
    client: stripe.StripeClient | None, stripe_customer_id: str, return_url: str | None
) -> PortalSession:
    client = _require_client(client)
    params: dict[str, Any] = {"customer": stripe_customer_id}
    if return_url:
        params["return_url"] = return_url
    try:
        session = await client.v1.billing_portal.sessions.create_async(params)  # type: ignore[arg-type]
    except stripe.InvalidRequestError as exc:
        message = (exc.user_message or str(exc)).lower()
        if "configuration" in message or "customer portal settings" in message:
            raise ConflictError(PORTAL_NOT_CONFIGURED) from exc
        if exc.http_status == 404:
            raise ConflictError(f"Stripe has no customer {stripe_customer_id}: it may have been deleted") from exc
        raise upstream_error(exc, "create a customer portal session") from exc
    except stripe.StripeError as exc:
        raise upstream_error(exc, "create a customer portal session") from exc
    data = _data(session)
    created = datetime.fromtimestamp(int(data.get("created") or 0), tz=UTC)
    url = data.get("url")
    if not isinstance(url, str) or not url:
        raise UpstreamError("Stripe answered the portal session request without a URL")
    return PortalSession(
        url=url,
        session_id=str(data.get("id", "")),
        stripe_customer_id=stripe_customer_id,
        created_at=created,
        expires_at=created + PORTAL_SESSION_TTL,
    )

"""Stripe webhook verification: signature (with rotation and tolerance), then shape and mode.

The signature is checked with the official `stripe` SDK against the raw bytes, before any JSON
parsing, against every configured secret in turn: during a secret rotation Stripe signs with
both, and either may be the one this deployment knows.
"""

from __future__ import annotations

import stripe

from services.common.errors import SignatureError
from services.common.events import StripeEvent, check_mode, parse_event


def verify_signature(body: bytes, header: str | None, secrets: tuple[str, ...], tolerance: int) -> None:
    if not header:
        raise SignatureError("missing Stripe-Signature header")
    last: stripe.SignatureVerificationError | None = None
    for secret in secrets:
        try:
            stripe.WebhookSignature.verify_header(body, header, secret, tolerance=tolerance)
            return
        except stripe.SignatureVerificationError as exc:
            last = exc
    reason = str(last).split("\n")[0] if last else "no webhook secret configured"
    if "timestamp outside the tolerance" in reason.lower():
        raise SignatureError("signature timestamp outside the tolerance zone")
    if "unable to extract timestamp" in reason.lower():
        raise SignatureError("malformed Stripe-Signature header")
    raise SignatureError("no valid signature for any configured webhook secret")


def verify_event(
    body: bytes, header: str | None, *, secrets: tuple[str, ...], tolerance: int, mode: str
) -> StripeEvent:
    """Everything a webhook must pass before it may be published; raises EventError subclasses."""
    verify_signature(body, header, secrets, tolerance)
    event = parse_event(body)
    check_mode(event, mode)
    return event

"""Stripe webhook verification: signature (with rotation and tolerance), then shape and mode.

The signature is checked with the official `stripe` SDK against the raw bytes, before any JSON
parsing, against every configured secret in turn: during a secret rotation Stripe signs with
both, and either may be the one this deployment knows.

The endpoint is public, so what reaches the SDK is bounded first: a header of a sane size with
a few entries and one timestamp, a body that is UTF-8 text (the SDK decodes it before it checks
the HMAC, and a stranger's bytes must get a 400, not a 500). The SDK refuses a signature older
than the tolerance but not one dated in the future; a timestamp further ahead than the same
tolerance is refused here like a stale one, so a captured request signed with a clock set
forward cannot be replayed for years.
"""

from __future__ import annotations

import time

from stripe import SignatureVerificationError, WebhookSignature

from services.common.errors import MalformedEventError, SignatureError
from services.common.events import StripeEvent, check_mode, parse_event

#: Stripe's header is `t=...,v1=...` with one v1 per active secret (two during a rotation) and
#: perhaps a v0: about 150 bytes a secret. Anything far beyond that is not Stripe.
MAX_SIGNATURE_HEADER_BYTES = 2048
MAX_SIGNATURE_ENTRIES = 16


def _timestamp(header: str) -> int:
    """The header's one `t=` value; SignatureError when the header is not Stripe's shape."""
    if len(header) > MAX_SIGNATURE_HEADER_BYTES:
        raise SignatureError(f"malformed Stripe-Signature header (longer than {MAX_SIGNATURE_HEADER_BYTES} bytes)")
    entries = header.split(",")
    if len(entries) > MAX_SIGNATURE_ENTRIES:
        raise SignatureError(f"malformed Stripe-Signature header (more than {MAX_SIGNATURE_ENTRIES} entries)")
    stamps = [value for key, _, value in (e.strip().partition("=") for e in entries) if key == "t"]
    if len(stamps) != 1 or not stamps[0].isdigit() or len(stamps[0]) > 12:
        raise SignatureError("malformed Stripe-Signature header")
    return int(stamps[0])


def verify_signature(
    body: bytes, header: str | None, secrets: tuple[str, ...], tolerance: int, *, now: float | None = None
) -> None:
    if not header:
        raise SignatureError("missing Stripe-Signature header")
    signed_at = _timestamp(header)
    if signed_at > (time.time() if now is None else now) + tolerance:
        raise SignatureError("signature timestamp outside the tolerance zone")
    try:
        body.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedEventError("body is not UTF-8 text, so it cannot be a Stripe event") from None
    last: SignatureVerificationError | None = None
    for secret in secrets:
        try:
            WebhookSignature.verify_header(body, header, secret, tolerance=tolerance)
            return
        except SignatureVerificationError as exc:
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

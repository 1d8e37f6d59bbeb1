"""Signing test webhooks exactly as Stripe does, with the official SDK's own helper."""

from __future__ import annotations

import json
from typing import Any

import stripe

TEST_SECRET = "whsec_test_suite_primary"
ROTATED_SECRET = "whsec_test_suite_rotated"


def sign(body: bytes, secret: str = TEST_SECRET, timestamp: int | None = None) -> str:
    return str(stripe.WebhookSignature.generate_signature_header(body.decode(), secret, timestamp=timestamp))


def signed_request(event: dict[str, Any], secret: str = TEST_SECRET) -> tuple[bytes, dict[str, str]]:
    body = json.dumps(event).encode()
    return body, {"Stripe-Signature": sign(body, secret), "Content-Type": "application/json"}

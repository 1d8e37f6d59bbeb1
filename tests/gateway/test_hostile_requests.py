"""Strangers on the public endpoint get a 4xx (or a closed connection), never a 500 or a traceback.

Each case is one an attacker inside or outside the cluster can send without knowing a secret
(or with a secret but a broken event): the gateway answers it, counts it in /metrics, logs no
ERROR, and publishes nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from dataclasses import replace

import aiohttp
import pytest

from gateway.app import Gateway
from services.common.settings import Settings
from tests.conftest import eventually
from tests.gateway.test_gateway import customer_created, post, stream_messages
from tests.support.signing import TEST_SECRET, sign


@pytest.fixture
async def gateway(settings: Settings):
    gw = Gateway(replace(settings, webhook_read_timeout_seconds=0.5), port=0, host="127.0.0.1")
    await gw.start()
    await gw.bus.wait_ready(10)
    yield gw
    await gw.stop()


@pytest.fixture
def errors_logged(caplog: pytest.LogCaptureFixture):
    """The ERROR records (any logger, aiohttp's included) a case leaves behind."""
    caplog.set_level(logging.WARNING)
    return lambda: [r for r in caplog.records if r.levelno >= logging.ERROR]


async def outcome_count(gw: Gateway, outcome: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{gw.port}/metrics") as resp:
        text = await resp.text()
    line = next(x for x in text.splitlines() if x.startswith(f'syncmesh_gateway_requests_total{{outcome="{outcome}"}}'))
    return float(line.split()[-1])


def hand_signed(body: bytes, timestamp: int, secret: str = TEST_SECRET) -> str:
    """Stripe's scheme, for bodies the SDK's helper cannot sign (it decodes them as text first)."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "hmac-signed"])
async def test_a_body_that_is_not_utf8_is_400(gateway: Gateway, nats_url: str, errors_logged, signed: bool) -> None:
    body = b'{"id": "evt_1", "object": "event", "x": "\xff\xfe"}'
    header = hand_signed(body, int(time.time())) if signed else "t=1,v1=00"
    status, payload = await post(gateway, body, {"Stripe-Signature": header})
    assert status == 400 and "UTF-8" in payload["error"]
    assert errors_logged() == [] and await stream_messages(nats_url) == 0


@pytest.mark.parametrize(
    "header",
    [
        ",".join(["t=1"] + ["v1=00"] * 1000),
        "t=1," + "v1=" + "a" * 5000,
        "t=1,t=2,v1=00",
        "t=99999999999999999999,v1=00",
        "v1=00",
    ],
    ids=["1000-entries", "5KB", "two-timestamps", "20-digit-timestamp", "no-timestamp"],
)
async def test_a_hostile_signature_header_is_400(gateway: Gateway, nats_url: str, errors_logged, header: str) -> None:
    body = json.dumps(customer_created()).encode()
    status, payload = await post(gateway, body, {"Stripe-Signature": header})
    assert status == 400 and "Stripe-Signature" in payload["error"]
    assert errors_logged() == [] and await stream_messages(nats_url) == 0


async def test_a_header_line_beyond_http_limits_is_400_counted_not_logged(
    gateway: Gateway, nats_url: str, errors_logged
) -> None:
    """1,000 full-length signatures (70 KB) exceed aiohttp's 8 KB header line: aiohttp answers 400
    itself, and the gateway turns its ERROR traceback into a count."""
    body = json.dumps(customer_created()).encode()
    header = ",".join(["t=1"] + [f"v1={'0' * 64}"] * 1000)
    status, _ = await post(gateway, body, {"Stripe-Signature": header})
    assert status == 400
    assert await outcome_count(gateway, "bad_http") == 1
    assert errors_logged() == [] and await stream_messages(nats_url) == 0


@pytest.mark.parametrize("ahead", [3600, 10 * 365 * 86400], ids=["an-hour", "ten-years"])
async def test_a_signature_dated_in_the_future_is_refused_like_a_stale_one(
    gateway: Gateway, nats_url: str, ahead: int
) -> None:
    body = json.dumps(customer_created()).encode()
    header = sign(body, timestamp=int(time.time()) + ahead)
    status, payload = await post(gateway, body, {"Stripe-Signature": header})
    assert (status, payload["error"]) == (400, "signature timestamp outside the tolerance zone")
    assert await stream_messages(nats_url) == 0


async def test_a_signature_a_little_ahead_is_accepted(gateway: Gateway) -> None:
    """Clocks drift: a timestamp within the tolerance ahead is Stripe's, not an attack."""
    body = json.dumps(customer_created()).encode()
    status, _ = await post(gateway, body, {"Stripe-Signature": sign(body, timestamp=int(time.time()) + 60)})
    assert status == 200


@pytest.mark.parametrize(
    "created",
    [2**63, 10**18, 253_402_300_800],
    ids=["2^63", "10^18", "year-10000"],
)
async def test_a_signed_event_created_beyond_any_date_is_400(
    gateway: Gateway, nats_url: str, errors_logged, created: int
) -> None:
    evt = customer_created()
    evt["created"] = created
    body = json.dumps(evt).encode()
    status, payload = await post(gateway, body, {"Stripe-Signature": sign(body)})
    assert status == 400 and "created" in payload["error"]
    assert errors_logged() == [] and await stream_messages(nats_url) == 0


@pytest.mark.parametrize("exact_path", [False, True], ids=["orjson", "stdlib-for-20-digits"])
async def test_a_signed_body_nested_100000_deep_is_400(
    gateway: Gateway, nats_url: str, errors_logged, exact_path: bool
) -> None:
    nested = "[" * 100_000 + "]" * 100_000
    big = ', "n": 123456789012345678901' if exact_path else ""
    body = f'{{"id": "evt_deep", "object": "event", "deep": {nested}{big}}}'.encode()
    status, payload = await post(gateway, body, {"Stripe-Signature": sign(body)})
    assert (status, payload["error"]) == (400, "body is not JSON")
    assert errors_logged() == [] and await stream_messages(nats_url) == 0


async def _raw_request(port: int, declared: int, sent: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /webhooks/stripe HTTP/1.1\r\nHost: 127.0.0.1\r\nStripe-Signature: t=1,v1=00\r\n"
        + f"Content-Type: application/json\r\nContent-Length: {declared}\r\n\r\n".encode()
        + sent
    )
    await writer.drain()
    return reader, writer


async def test_a_body_sent_too_slowly_is_408_after_the_read_timeout(
    gateway: Gateway, nats_url: str, errors_logged
) -> None:
    started = time.monotonic()
    reader, writer = await _raw_request(gateway.port, 1000, b"{")
    try:
        status_line = await asyncio.wait_for(reader.readline(), 5)
    finally:
        writer.close()
    assert status_line.split()[1] == b"408"
    assert 0.4 < time.monotonic() - started < 3
    assert await outcome_count(gateway, "timeout") == 1
    assert errors_logged() == [] and await stream_messages(nats_url) == 0


async def _counted(gw: Gateway, outcome: str) -> bool:
    return await outcome_count(gw, outcome) == 1


async def test_a_client_that_disconnects_mid_body_is_counted_not_logged(
    gateway: Gateway, nats_url: str, errors_logged
) -> None:
    _, writer = await _raw_request(gateway.port, 1000, b'{"id": "evt_')
    writer.close()
    await writer.wait_closed()
    assert await eventually(lambda: _counted(gateway, "aborted"))
    assert errors_logged() == [] and await stream_messages(nats_url) == 0

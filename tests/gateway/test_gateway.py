"""Every gateway outcome, against a real nats-server."""

from __future__ import annotations

import io
import json
import time

import aiohttp
import nats
import pytest
from syncmesh.events.v1 import envelope_pb2

from gateway.app import Gateway
from services.common.bus import STRIPE_STREAM
from services.common.embedded import NatsServer
from services.common.settings import Settings
from tests.conftest import eventually
from tests.support.signing import ROTATED_SECRET, TEST_SECRET, sign, signed_request
from tests.support.stripe_events import event, fixture


@pytest.fixture
async def gateway(settings: Settings):
    gw = Gateway(settings, port=0, host="127.0.0.1")
    await gw.start()
    await gw.bus.wait_ready(10)
    yield gw
    await gw.stop()


async def post(gw: Gateway, body: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    url = f"http://127.0.0.1:{gw.port}/webhooks/stripe"
    # A stream, not bytes: aiohttp warns on a bytes body over 1 MB (the oversized-body test's); same bytes on the wire.
    async with aiohttp.ClientSession() as http, http.post(url, data=io.BytesIO(body), headers=headers) as resp:
        try:
            payload = await resp.json(content_type=None)
        except json.JSONDecodeError:
            payload = {}
        return resp.status, payload


async def stream_messages(url: str) -> int:
    nc = await nats.connect(url)
    try:
        info = await nc.jetstream().stream_info(STRIPE_STREAM)
        return int(info.state.messages)
    finally:
        await nc.close()


def customer_created() -> dict:
    return event("customer.created", fixture("customer"))


async def test_valid_event_is_published_with_envelope_and_msg_id(gateway: Gateway, nats_url: str) -> None:
    evt = customer_created()
    status, payload = await post(gateway, *signed_request(evt))
    assert (status, payload) == (200, {"received": True, "duplicate": False})
    nc = await nats.connect(nats_url)
    try:
        msg = await nc.jetstream().get_msg(STRIPE_STREAM, subject="stripe.customer.created")
    finally:
        await nc.close()
    assert msg.headers["Nats-Msg-Id"] == evt["id"]
    assert "traceparent" in msg.headers
    envelope = envelope_pb2.StripeEventEnvelope.FromString(msg.data)
    assert envelope.event_id == evt["id"]
    assert envelope.event_type == "customer.created"
    assert envelope.source == envelope_pb2.EVENT_SOURCE_WEBHOOK
    assert json.loads(envelope.payload) == evt


async def test_same_event_twice_is_200_both_times_and_one_message(gateway: Gateway, nats_url: str) -> None:
    body, headers = signed_request(customer_created())
    assert (await post(gateway, body, headers))[0] == 200
    status, payload = await post(gateway, body, headers)
    assert status == 200 and payload["duplicate"] is True
    assert await stream_messages(nats_url) == 1


async def test_rotated_secret_is_accepted(gateway: Gateway, settings: Settings) -> None:
    rotated = Gateway(settings.with_overrides(webhook_secrets=(TEST_SECRET, ROTATED_SECRET)), port=0, host="127.0.0.1")
    await rotated.start()
    try:
        await rotated.bus.wait_ready(10)
        status, _ = await post(rotated, *signed_request(customer_created(), secret=ROTATED_SECRET))
        assert status == 200
    finally:
        await rotated.stop()


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda body, headers: (body, {}), "missing Stripe-Signature"),
        (lambda body, headers: (body, {"Stripe-Signature": sign(body, "whsec_wrong")}), "no valid signature"),
        (lambda body, headers: (body + b" ", headers), "no valid signature"),
        (
            lambda body, headers: (body, {"Stripe-Signature": sign(body, TEST_SECRET, int(time.time()) - 301)}),
            "tolerance",
        ),
        (lambda body, headers: (body, {"Stripe-Signature": "garbage"}), "malformed Stripe-Signature"),
    ],
    ids=["missing", "wrong-secret", "tampered-body", "stale-timestamp", "garbled-header"],
)
async def test_bad_signatures_are_400_and_publish_nothing(gateway: Gateway, nats_url: str, mutate, reason) -> None:
    body, headers = signed_request(customer_created())
    status, payload = await post(gateway, *mutate(body, headers))
    assert status == 400
    assert reason in payload["error"]
    assert await stream_messages(nats_url) == 0


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (json.dumps({"object": "customer", "id": "cus_1"}).encode(), "not a Stripe event"),
        (json.dumps({**event("customer.created", {"id": "cus_1"}), "id": "nope"}).encode(), "event id"),
        (json.dumps({**event("customer.created", {"id": "cus_1"}), "data": {}}).encode(), "data.object"),
    ],
    ids=["not-json", "array", "not-event", "bad-id", "no-object"],
)
async def test_malformed_events_are_400_and_publish_nothing(gateway: Gateway, nats_url: str, body, reason) -> None:
    status, payload = await post(gateway, body, {"Stripe-Signature": sign(body)})
    assert status == 400
    assert reason in payload["error"]
    assert await stream_messages(nats_url) == 0


async def test_wrong_mode_is_refused(gateway: Gateway, nats_url: str) -> None:
    status, payload = await post(
        gateway, *signed_request(event("customer.created", fixture("customer"), livemode=True))
    )
    assert status == 400 and "live-mode event refused" in payload["error"]
    assert await stream_messages(nats_url) == 0


async def test_oversized_body_is_413(gateway: Gateway, settings: Settings, nats_url: str) -> None:
    big = customer_created()
    big["data"]["object"]["metadata"] = {"blob": "x" * (settings.max_body_bytes + 1)}
    status, _ = await post(gateway, *signed_request(big))
    assert status == 413
    assert await stream_messages(nats_url) == 0


async def test_health_ready_and_metrics(gateway: Gateway) -> None:
    await post(gateway, *signed_request(customer_created()))
    await post(gateway, b"{}", {"Stripe-Signature": "t=1,v1=00"})
    async with aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{gateway.port}"
        async with http.get(f"{base}/healthz") as resp:
            assert resp.status == 200
        async with http.get(f"{base}/readyz") as resp:
            assert resp.status == 200
        async with http.get(f"{base}/metrics") as resp:
            text = await resp.text()
    assert 'syncmesh_gateway_requests_total{outcome="accepted"} 1.0' in text
    assert 'syncmesh_gateway_requests_total{outcome="bad_signature"} 1.0' in text
    assert "syncmesh_gateway_publish_seconds_count 1.0" in text


async def test_503_while_nats_is_down_then_200_for_stripes_retry(own_nats: NatsServer, settings: Settings) -> None:
    gw = Gateway(settings.with_overrides(nats_url=own_nats.url), port=0, host="127.0.0.1")
    await gw.start()
    try:
        await gw.bus.wait_ready(10)
        body, headers = signed_request(customer_created())
        own_nats.stop()
        await eventually(lambda: not gw.bus.is_connected(), timeout=10)
        status, payload = await post(gw, body, headers)
        assert status == 503 and "retry" in payload["error"]
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{gw.port}/readyz") as resp:
            assert resp.status == 503
        own_nats.start()
        await eventually(gw.bus.is_ready, timeout=15)
        status, _ = await post(gw, body, headers)  # Stripe's retry: same body, same signature
        assert status == 200
        assert await stream_messages(own_nats.url) == 1
    finally:
        await gw.stop()


async def test_gateway_starts_before_nats_and_answers_503(tmp_path, settings: Settings) -> None:
    server = NatsServer(tmp_path / "late-nats")
    gw = Gateway(settings.with_overrides(nats_url=server.url), port=0, host="127.0.0.1")
    await gw.start()
    try:
        status, _ = await post(gw, *signed_request(customer_created()))
        assert status == 503
        server.start()
        await eventually(gw.bus.is_ready, timeout=20)
        status, _ = await post(gw, *signed_request(customer_created()))
        assert status == 200
    finally:
        await gw.stop()
        server.kill()

"""Past saturation the gateway sheds at once (503 + Retry-After) instead of queueing into
timeouts, and still answers 2xx only after JetStream's ack: against a real nats-server."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import nats
import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from gateway.app import Gateway
from services.common.bus import STRIPE_STREAM
from services.common.settings import Settings
from services.common.tracing import setup_tracing
from tests.support.signing import signed_request
from tests.support.stripe_events import event, fixture


async def _post(gw: Gateway, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, str], float]:
    began = time.perf_counter()
    url = f"http://127.0.0.1:{gw.port}/webhooks/stripe"
    async with aiohttp.ClientSession() as http, http.post(url, data=body, headers=headers) as resp:
        await resp.read()
        return resp.status, dict(resp.headers), time.perf_counter() - began


async def _stored(nats_url: str, event_id: str) -> bool:
    """Whether the stream holds a message with this event's id (its Nats-Msg-Id)."""
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        info = await js.stream_info(STRIPE_STREAM)
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            msg = await js.get_msg(STRIPE_STREAM, seq)
            if msg.headers and msg.headers.get("Nats-Msg-Id") == event_id:
                return True
        return False
    finally:
        await nc.close()


def _webhook_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER and s.name == "POST /webhooks/stripe"]


async def _metric(gw: Gateway, name: str) -> str:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{gw.port}/metrics") as resp:
        text = await resp.text()
    return next((line for line in text.splitlines() if line.startswith(name)), "")


async def test_past_the_limit_a_webhook_is_shed_at_once_and_published_only_when_retried(
    settings: Settings, nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    exporter = InMemorySpanExporter()
    setup_tracing("test", extra_processor=SimpleSpanProcessor(exporter))
    gw = Gateway(settings.with_overrides(gateway_max_in_flight=1), port=0, host="127.0.0.1")
    await gw.start()
    try:
        await gw.bus.wait_ready(10)
        release = asyncio.Event()
        held = asyncio.Event()
        publish = gw.bus.publish

        async def held_publish(*args: Any, **kwargs: Any) -> Any:
            if not release.is_set():
                held.set()
                await release.wait()
            return await publish(*args, **kwargs)

        monkeypatch.setattr(gw.bus, "publish", held_publish)
        first = event("customer.created", fixture("customer"))
        second = event("customer.created", fixture("customer"))
        assert first["id"] != second["id"]
        waiting = asyncio.create_task(_post(gw, *signed_request(first)))
        await asyncio.wait_for(held.wait(), 10)
        assert "syncmesh_gateway_webhooks_in_flight 1.0" in await _metric(gw, "syncmesh_gateway_webhooks_in_flight")

        body, headers = signed_request(second)
        # Bounded: without shedding this request would wait behind the held publish.
        status, answer_headers, seconds = await asyncio.wait_for(_post(gw, body, headers), 3)
        assert status == 503
        assert answer_headers.get("Retry-After") == "1"
        assert seconds < 0.5, f"shedding took {seconds:.3f} s: it must not wait"
        assert not waiting.done()  # the first is still held: it was never answered early
        # Only webhooks are counted and shed: health and metrics answer while the limit is reached.
        async with aiohttp.ClientSession() as http:
            for path in ("/healthz", "/readyz", "/metrics"):
                async with http.get(f"http://127.0.0.1:{gw.port}{path}") as resp:
                    assert resp.status == 200, path
        # A shed webhook gets no HTTP span (it is shed before the span is made); the held one has one.
        assert not _webhook_spans(exporter)
        assert 'outcome="shed"} 1.0' in await _metric(gw, 'syncmesh_gateway_requests_total{outcome="shed"}')

        release.set()
        status, _headers, _seconds = await asyncio.wait_for(waiting, 10)
        assert status == 200
        spans = _webhook_spans(exporter)
        assert [s.attributes and s.attributes["http.response.status_code"] for s in spans] == [200]
        assert not await _stored(nats_url, second["id"])  # nothing was published for the shed one

        status, _headers, _seconds = await _post(gw, *signed_request(second))  # the sender's retry
        assert status == 200
        assert await _stored(nats_url, second["id"])
        assert await _stored(nats_url, first["id"])
    finally:
        await gw.stop()


def test_the_limit_is_a_setting_with_a_default() -> None:
    from services.common.settings import load_settings

    assert Settings().gateway_max_in_flight == 128
    assert load_settings({"SYNCMESH_GATEWAY_MAX_IN_FLIGHT": "7"}, local_mesh=False).gateway_max_in_flight == 7

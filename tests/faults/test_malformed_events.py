"""A signed but malformed event reaches the stream (the gateway checks the signature and the event
envelope, not the object's field types): every service that consumes it dead-letters it at once,
on its first delivery, with the field at fault, and stores nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest
from syncmesh.events.v1 import dead_letter_pb2, envelope_pb2

from services.common.bus import DLQ_STREAM
from services.common.events import parse_event, to_envelope
from services.common.service import ServiceRuntime
from services.common.settings import Settings
from services.registry import definitions
from tests.conftest import eventually
from tests.support.stripe_events import event, fixture


def _invoice_paid(**changes: Any) -> dict[str, Any]:
    invoice = fixture("invoice")
    invoice.update(id="in_malformed", customer="cus_malformed", currency="usd", status="paid")
    invoice["lines"] = {"object": "list", "data": [fixture("line_item")], "has_more": False}
    invoice.update(changes)
    return event("invoice.paid", invoice)


def _customer_created(name: str) -> dict[str, Any]:
    customer = fixture("customer")
    customer.update(id="cus_nul", name=name, email="nul@example.com")
    return event("customer.created", customer)


def _without_created() -> dict[str, Any]:
    evt = _invoice_paid()
    del evt["data"]["object"]["created"]
    return evt


CASES = [
    (_invoice_paid(total="4900"), "data.object.total: expected a whole number, got str"),
    (_invoice_paid(lines={"object": "list", "data": "not a list"}), "data.object.lines.data: expected a list"),
    (_without_created(), "data.object.created: expected a whole number, got nothing"),
    (_customer_created("Acme\x00Corp"), "a string holds a NUL character"),
]


@pytest.fixture
async def services(settings: Settings):
    runtimes = [ServiceRuntime(d, settings, port=0) for d in definitions()]
    for rt in runtimes:
        await rt.start()
    for rt in runtimes:
        await rt.wait_ready(30)
    yield runtimes
    for rt in runtimes:
        await rt.stop()


async def test_every_service_dead_letters_a_malformed_event_at_once(services: list[ServiceRuntime]) -> None:
    bus = services[0].bus
    expected: dict[str, set[str]] = {}
    for evt, reason in CASES:
        parsed = parse_event(json.dumps(evt).encode())
        await bus.publish(
            parsed.subject, to_envelope(parsed, source=envelope_pb2.EVENT_SOURCE_WEBHOOK), msg_id=parsed.id
        )
        for rt in services:
            if any(_matches(s, parsed.subject) for s in rt.definition.subjects):
                expected.setdefault(rt.definition.name, set()).add(reason)
    assert set(expected) == {rt.definition.name for rt in services}, "every service gets at least one case"

    async def all_dead() -> bool:
        return all(rt.consumer is not None and rt.consumer.dead_lettered == len(expected[rt.definition.name])
                   for rt in services)  # fmt: skip

    await eventually(all_dead, timeout=30)
    for rt in services:
        name = rt.definition.name
        subject = f"dlq.{name.replace('-', '_')}"
        sub = await bus.js.pull_subscribe(subject, stream=DLQ_STREAM)
        letters = [
            dead_letter_pb2.DeadLetter.FromString(m.data) for m in await sub.fetch(len(expected[name]), timeout=5)
        ]
        await sub.unsubscribe()
        assert {letter.attempts for letter in letters} == {1}, f"{name}: dead-lettered on the first delivery"
        reasons = [letter.reason for letter in letters]
        for reason in expected[name]:
            assert any(reason in r for r in reasons), f"{name}: no letter says {reason!r}: {reasons}"
        # Nothing stored: an undecodable message is not even claimed as processed.
        assert await rt.pool.fetchval("SELECT count(*) FROM processed_events") == 0


def _matches(pattern: str, subject: str) -> bool:
    p, s = pattern.split("."), subject.split(".")
    return len(p) == len(s) and all(a in ("*", b) for a, b in zip(p, s, strict=True))

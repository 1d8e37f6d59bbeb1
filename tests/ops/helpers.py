"""Shared by the operator-tool tests: publishing events and reading the STRIPE stream back."""

from __future__ import annotations

import json
from typing import Any

from syncmesh.events.v1 import envelope_pb2

from services.common.bus import STRIPE_STREAM, Bus
from services.common.events import parse_event, to_envelope
from services.common.stream import StreamReader
from tests.support.stripe_events import event, fixture


def customer_event(customer_id: str, *, created: int | None = None, name: str = "Acme", **metadata: object) -> dict:
    obj = fixture("customer")
    obj["id"] = customer_id
    obj["name"] = name
    obj["metadata"] = {k: str(v) for k, v in metadata.items()}
    return event("customer.updated", obj, created=created)


async def publish(bus: Bus, evt: dict, *, msg_id: str | None = None, source: int = envelope_pb2.EVENT_SOURCE_WEBHOOK):
    parsed = parse_event(json.dumps(evt).encode())
    return await bus.publish(parsed.subject, to_envelope(parsed, source=source), msg_id=msg_id or parsed.id)


async def stripe_messages(bus: Bus) -> list[dict[str, Any]]:
    """Every message of the STRIPE stream: subject, msg id, decoded envelope and payload."""
    out = []
    async for batch in StreamReader(bus, STRIPE_STREAM).batches():
        for msg in batch:
            env = envelope_pb2.StripeEventEnvelope.FromString(msg.data)
            out.append(
                {
                    "subject": msg.subject,
                    "msg_id": (msg.headers or {}).get("Nats-Msg-Id"),
                    "envelope": env,
                    "payload": json.loads(env.payload),
                }
            )
    return out


async def stop_runtime(rt: Any) -> None:
    """Stop a ServiceRuntime without waiting out Bus.close()'s 5 s drain timeout.

    The consumer never unsubscribes its pull subscription, so the drain waits on its pending
    queue until the timeout (reported to the lead); closing the connection first skips that.
    Only for runtimes whose outbox the test has already seen drained.
    """
    if rt.consumer is not None:
        await rt.consumer.stop(2)
    if rt.bus._nc is not None:
        await rt.bus._nc.close()
    await rt.stop()

"""The ack policy with the database and NATS faked: every outcome has one verdict, a batch that
cannot reach PostgreSQL is nak'd whole (nothing acked), and a dead letter that cannot be
published is nak'd, never dropped."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any, cast

import pytest
from nats.aio.msg import Msg
from syncmesh.events.v1 import envelope_pb2

from services.common.consumer import ACK_POLICY, Consumer, Outcome, Verdict, receive
from services.common.errors import PublishError
from services.common.events import parse_event, to_envelope
from services.common.settings import Settings
from tests.common.test_service_runtime import customer_event


class FakeMsg:
    """What the consumer reads of a NATS message, recording how it was settled."""

    def __init__(self, data: bytes, *, delivered: int = 1, sequence: int = 1) -> None:
        self.data = data
        self.subject = "stripe.customer.updated"
        self.headers: dict[str, str] = {"Nats-Msg-Id": f"msg-{sequence}"}
        self.metadata = SimpleNamespace(num_delivered=delivered, sequence=SimpleNamespace(stream=sequence))
        self.settled: list[str] = []

    async def ack(self) -> None:
        self.settled.append("ack")

    async def nak(self, delay: float | None = None) -> None:
        self.settled.append("nak")


class DownPool:
    """A pool whose database is gone."""

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[Any]:
        raise OSError("connection refused")
        yield


class FailingBus:
    settings = Settings(mode="test")

    async def publish(self, *args: Any, **kwargs: Any) -> None:
        raise PublishError("NATS is gone")


def envelope(customer_id: str) -> bytes:
    parsed = parse_event(json.dumps(customer_event(customer_id)).encode())
    return to_envelope(parsed, source=envelope_pb2.EVENT_SOURCE_WEBHOOK)


def consumer(pool: Any = None, bus: Any = None, **overrides: Any) -> Consumer:
    async def never(_conn: Any, _items: Any) -> None:
        raise AssertionError("not called")

    settings = Settings(mode="test").with_overrides(**overrides)
    return Consumer(service="customer", bus=bus or FailingBus(), pool=pool, apply=never, subjects=(), settings=settings)


def test_every_outcome_has_one_verdict() -> None:
    assert set(ACK_POLICY) == set(Outcome)
    assert {o for o, v in ACK_POLICY.items() if v is Verdict.ACK} == {
        Outcome.APPLIED,
        Outcome.DUPLICATE,
        Outcome.SKIPPED,
    }


async def test_database_down_naks_the_whole_batch_and_acks_nothing() -> None:
    msgs = [FakeMsg(envelope(f"cus_down{i}"), sequence=i) for i in range(3)]
    c = consumer(DownPool())
    batch = receive(cast(list[Msg], msgs), "test")
    await c._apply_batch(batch)
    assert [m.settled for m in msgs] == [["nak"]] * 3
    assert {r.outcome for r in batch.received} == {Outcome.DATABASE_UNAVAILABLE}
    assert c.handled == 0 and c.dead_lettered == 0


@pytest.mark.parametrize("delivered", [1, 5])
async def test_a_dead_letter_that_cannot_be_published_is_nakd(delivered: int) -> None:
    junk = FakeMsg(b"\xff not an envelope")
    exhausted = FakeMsg(envelope("cus_exhausted"), delivered=delivered)
    c = consumer(DownPool(), max_deliver=5)
    await c._apply_batch(receive(cast(list[Msg], [junk, exhausted]), "test"))
    assert junk.settled == ["nak"] and exhausted.settled == ["nak"]
    assert c.dead_lettered == 0

"""Bus.publish through its AckInbox (one reply subscription, a future per message): each publish
gets its own ack, a second copy is reported as a duplicate, and what JetStream does not ack is a
PublishError, never a hang or another message's ack."""

from __future__ import annotations

import asyncio

import pytest
from nats.protocol.command import hpub_cmd

from services.common.bus import STRIPE_STREAM, AckInbox, Bus, hpub_command
from services.common.errors import PublishError
from services.common.settings import Settings


@pytest.fixture
async def bus(settings: Settings):
    bus = Bus(settings.with_overrides(publish_timeout_seconds=1.0), name="test-publish")
    await bus.start(wait=10)
    await bus.wait_ready(10)
    yield bus
    await bus.close()


async def test_concurrent_publishes_each_get_their_own_ack_and_a_resend_is_a_duplicate(bus: Bus) -> None:
    ids = [f"evt_ack{i}" for i in range(50)]
    acks = await asyncio.gather(*(bus.publish("stripe.customer.created", i.encode(), msg_id=i) for i in ids))
    assert {a.stream for a in acks} == {STRIPE_STREAM}
    assert sorted(a.seq for a in acks) == list(range(1, 51))  # 50 different acks, none shared
    assert not any(a.duplicate for a in acks)
    stored = await bus.js.get_msg(STRIPE_STREAM, seq=acks[7].seq)
    assert stored.data == ids[7].encode()  # the ack a publish got is its own message's

    again = await bus.publish("stripe.customer.created", b"resent", msg_id=ids[3])
    assert again.duplicate and again.seq == acks[3].seq
    assert not bus._acks or not bus._acks.waiting  # every future settled and forgotten


async def test_a_publish_no_stream_takes_is_a_publish_error(bus: Bus) -> None:
    with pytest.raises(PublishError):
        await bus.publish("nowhere.at.all", b"x", msg_id="evt_lost")
    assert bus._acks is not None and not bus._acks.waiting


async def test_an_ack_that_never_comes_is_a_publish_error_within_the_timeout(bus: Bus) -> None:
    assert bus._acks is not None
    bus._acks.prefix += "elsewhere."  # replies go where nobody listens: no ack ever arrives
    with pytest.raises(PublishError):
        await bus.publish("stripe.customer.created", b"x", msg_id="evt_unacked", timeout=0.2)
    assert not bus._acks.waiting


def test_the_hpub_written_directly_is_the_one_nats_py_would_write() -> None:
    headers = {"Nats-Msg-Id": "evt_1", "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
    block = b"NATS/1.0\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items()) + b"\r\n"
    expected = hpub_cmd("stripe.customer.created", "_INBOX_gw.x.7", block, b"payload")
    assert hpub_command("stripe.customer.created", "_INBOX_gw.x.7", headers, b"payload") == expected
    # Not plain: left to nats-py's publish, which checks or cleans it.
    assert hpub_command("stripe.*", "r", headers, b"") is None
    assert hpub_command("stripe.x", "r", {"Syncmesh-Reason": "two\r\nlines"}, b"") is None
    assert hpub_command("stripe.x", "r", {"bad key": "v"}, b"") is None


async def test_a_header_value_with_a_line_break_is_published_through_nats_py_and_cleaned(bus: Bus) -> None:
    ack = await bus.publish("stripe.customer.created", b"x", msg_id="evt_lines", headers={"Syncmesh-Why": "a\r\nb"})
    stored = await bus.js.get_msg(STRIPE_STREAM, seq=ack.seq)
    assert stored.headers is not None
    assert stored.headers["Nats-Msg-Id"] == "evt_lines"
    assert "\n" not in stored.headers["Syncmesh-Why"]


async def test_a_nats_py_without_the_fields_the_direct_path_uses_still_publishes_through_js_publish(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A nats-py other than the one the direct path was written against (pyproject allows <3):
    the bus opens no AckInbox and publishes through nats-py's own `js.publish`, acks awaited."""
    monkeypatch.setattr(AckInbox, "fits", staticmethod(lambda nc: False))
    bus = Bus(settings.with_overrides(publish_timeout_seconds=1.0), name="test-publish-fallback")
    await bus.start(wait=10)
    try:
        await bus.wait_ready(10)
        assert bus._acks is None
        ack = await bus.publish("stripe.customer.created", b"fallback", msg_id="evt_fallback")
        stored = await bus.js.get_msg(STRIPE_STREAM, seq=ack.seq)
        assert stored.data == b"fallback" and not ack.duplicate
        assert (await bus.publish("stripe.customer.created", b"again", msg_id="evt_fallback")).duplicate
    finally:
        await bus.close()


async def test_a_pipelined_batch_says_which_messages_jetstream_stored(bus: Bus) -> None:
    """The outbox relay's publish: in order, each message its own ack; one no stream takes is not
    acked and does not take another's ack; a second copy is stored already, so it counts as acked."""
    first = await bus.publish("stripe.customer.created", b"before", msg_id="evt_batch_0")
    acked = await bus.publish_batch(
        [
            ("stripe.customer.created", b"one", "evt_batch_1", {}),
            ("nowhere.at.all", b"lost", "evt_batch_lost", {}),
            (
                "stripe.customer.updated",
                b"two",
                "evt_batch_2",
                {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"},
            ),
            ("stripe.customer.created", b"resent", "evt_batch_0", {}),
        ]
    )
    assert acked == [True, False, True, True]
    one = await bus.js.get_msg(STRIPE_STREAM, seq=first.seq + 1)
    two = await bus.js.get_msg(STRIPE_STREAM, seq=first.seq + 2)
    assert (one.data, two.data) == (b"one", b"two")  # stored in the order sent, the resend dropped
    assert two.headers is not None and two.headers["Nats-Msg-Id"] == "evt_batch_2"
    assert bus._acks is not None and not bus._acks.waiting

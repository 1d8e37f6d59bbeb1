"""The side-by-side section's own arithmetic (bench/peer.py): the stream it sends both systems
and the rows it expects them to hold. No npm, no peer, no timing: the section itself runs only
under scripts/bench."""

from __future__ import annotations

from collections import Counter

from bench.events import BENCH_SECRET, sign
from bench.peer import per_event
from bench.peer_events import stream
from bench.procs import TICK
from gateway.verify import verify_event


def test_the_stream_is_deterministic_and_its_expectations_match_its_events() -> None:
    first = stream(600, "t1", 5, 1_700_000_000)
    assert first == stream(600, "t1", 5, 1_700_000_000)
    assert len(first.bodies) >= 600 and len(set(first.ids)) == len(first.ids)
    types = Counter(first.types)
    assert first.expected["customers"] == types["customer.created"] == types["customer.updated"]
    assert first.expected["invoices_paid"] == types["invoice.paid"] == types["charge.succeeded"]
    assert first.expected["charges_refunded"] == types["charge.refunded"]
    assert first.expected["products"] == types["product.created"]
    assert first.expected["prices"] == types["price.created"] == 2 * types["product.created"]
    assert all(b"t1" in body for body in first.bodies)


def test_every_event_passes_the_gateways_verification_when_signed_as_the_bench_signs() -> None:
    run = stream(60, "t2", 1, 1_700_000_000)
    for body in run.bodies:
        event = verify_event(body, sign(body), secrets=(BENCH_SECRET,), tolerance=300, mode="test")
        assert event.id in run.ids


def test_cpu_per_event_is_per_process_in_milliseconds_and_ignores_a_counter_gone_backwards() -> None:
    before = {"gateway (pid 1)": 0, "nats-server": 10, "gone": 5}
    after = {"gateway (pid 1)": 2 * TICK, "nats-server": 10 + TICK, "gone": 0}
    assert per_event(before, after, 1000) == {"gateway": 2.0, "nats-server": 1.0}

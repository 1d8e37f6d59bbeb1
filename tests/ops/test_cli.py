"""The commands as an operator types them: options, settings from the environment, output
and exit codes. Each runs in a worker thread, as `syncmesh` runs its own event loop."""

from __future__ import annotations

import argparse
import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from ops import register
from services.common import progress
from services.common.bus import Bus
from services.common.consumer import Consumer
from services.common.errors import SettingsError
from services.common.settings import Settings
from tests.ops import record_toy
from tests.ops.helpers import customer_event, publish, stripe_messages
from tests.ops.test_dlq import _as_msg


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="syncmesh")
    sub = p.add_subparsers(dest="command", required=True)
    register(sub, {})
    return p


async def run(argv: list[str]) -> int:
    """As `launcher.cli.main` does: configuration errors exit 2 with the message."""
    args = parser().parse_args(argv)

    def call() -> int:
        try:
            return int(args.func(args))
        except SettingsError as exc:
            print(f"syncmesh: configuration error: {exc}")
            return 2

    return await asyncio.to_thread(call)


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, settings: Settings, restore_logging) -> pytest.MonkeyPatch:
    for name in ("SYNCMESH_STRIPE_API_KEY", "SYNCMESH_STRIPE_API_BASE", "SYNCMESH_SWEEP_LOOKBACK_HOURS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SYNCMESH_NATS_URL", settings.nats_url)
    monkeypatch.setenv("SYNCMESH_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("SYNCMESH_MODE", "test")
    monkeypatch.setenv("SYNCMESH_LOG_LEVEL", "WARNING")
    monkeypatch.setattr(progress, "LINE_SECONDS", 0.0)  # stderr is not a terminal: a line per update
    return monkeypatch


async def dead_letter(bus: Bus, service: str, customer_id: str) -> str:
    async def never(_conn, _items) -> None:
        raise AssertionError

    evt = customer_event(customer_id)
    ack = await publish(bus, evt)
    consumer = Consumer(service=service, bus=bus, pool=None, apply=never, subjects=(), settings=bus.settings)
    await consumer.dead_letter(await _as_msg(bus, ack.seq), f"permanent: {customer_id} is unmappable", 2)
    return evt["id"]


async def test_dlq_commands(env, bus: Bus, capsys: pytest.CaptureFixture[str]) -> None:
    first = await dead_letter(bus, "customer", "cus_one")
    await dead_letter(bus, "billing", "cus_two")

    assert await run(["dlq", "list"]) == 0
    out = capsys.readouterr().out
    assert first in out and "cus_one is unmappable" in out and "2 dead letters" in out
    assert await run(["dlq", "list", "--service", "billing", "--json"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1 and '"service": "billing"' in lines[0]

    assert await run(["dlq", "show", "1"]) == 0
    assert first in capsys.readouterr().out
    assert await run(["dlq", "show", "99"]) == 1
    assert "no dead letter with sequence 99" in capsys.readouterr().err

    assert await run(["dlq", "discard", "--all"]) == 2
    assert "add --yes" in capsys.readouterr().out
    assert await run(["dlq", "redrive"]) == 2
    assert "sequence numbers" in capsys.readouterr().out

    assert await run(["dlq", "redrive", "--all", "--service", "customer"]) == 0
    assert f"redrove 1: {first} -> stripe.customer.updated" in capsys.readouterr().out
    assert await run(["dlq", "discard", "--all", "--yes"]) == 0
    assert "discarded 2: billing customer.updated" in capsys.readouterr().out
    assert await run(["dlq", "list"]) == 0
    assert "no dead letters" in capsys.readouterr().out


async def test_sweep_and_backfill_commands(env, localstripe, ls_client, bus: Bus, tmp_path, capsys) -> None:
    assert await run(["sweep"]) == 2
    assert "SYNCMESH_STRIPE_API_KEY must be set" in capsys.readouterr().out

    env.setenv("SYNCMESH_STRIPE_API_KEY", "sk_test_cli")
    env.setenv("SYNCMESH_STRIPE_API_BASE", localstripe.url)
    await ls_client.v1.customers.create_async({"name": "One"})
    await ls_client.v1.customers.create_async({"name": "Two"})

    assert await run(["sweep", "--since", "2h"]) == 0
    swept = capsys.readouterr()
    assert "found in Stripe's Events API: 2" in swept.out and "published now: 2" in swept.out
    assert "events: 2 evt in 00:0" in swept.err, swept.err  # progress, as a log line
    assert await run(["sweep", "--since", (datetime.now(UTC) - timedelta(days=45)).date().isoformat()]) == 0
    out = capsys.readouterr().out
    assert "missing from the stream: 0" in out and "clamped to 30 days" in out

    checkpoint = tmp_path / "cp.json"
    argv = ["backfill", "--since", "1d", "--types", "customers", "--checkpoint", str(checkpoint), "--rate", "50"]
    assert await run(argv) == 0
    first = capsys.readouterr()
    assert "customers: listed 2, already in stream 0, published 2" in first.out
    assert "customers: 2 obj in 00:0" in first.err  # progress, as a log line
    assert f"backfill: checkpoint {checkpoint}" in first.err  # says where, before it starts
    assert f"  checkpoint: {checkpoint} (removed: every type is done)" in first.out
    assert await run(argv) == 0
    assert "customers: listed 2, already in stream 2, published 0" in capsys.readouterr().out
    assert len(await stripe_messages(bus)) == 4
    assert await run(["backfill", "--since", "1d", "--types", "coupons"]) == 2
    assert "unknown coupons" in capsys.readouterr().out
    assert await run(["backfill", "--since", "1d", "--types", "credit_notes", "--checkpoint", str(checkpoint)]) == 1
    assert "leave it out of --types" in capsys.readouterr().err  # localstripe has no credit notes


async def test_replay_command(env, bus: Bus, capsys) -> None:
    env.setattr("services.registry.by_name", lambda name: record_toy.DEFINITION)
    await publish(bus, customer_event("cus_r", name="Replayed", created=10))
    assert await run(["replay", "customer"]) == 0
    replayed = capsys.readouterr()
    out = replayed.out
    assert "replayed 1 messages into customer" in out and "toy_customers: rows 0 -> 1" in out
    assert "replay record-toy: 1/1 msg (100 %)" in replayed.err or "/1 msg (100 %)" in replayed.err, replayed.err
    assert await run(["replay", "customer", "--since", "1h"]) == 0
    assert "changed 0 rows in total" in capsys.readouterr().out

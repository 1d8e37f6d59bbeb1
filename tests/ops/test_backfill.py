"""Backfill against localstripe (objects created through the official SDK, no webhooks) and
against a recorded-Stripe stand-in for what localstripe lacks (invoices with more than ten
lines, 429 answers)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import stripe
from aiohttp import web
from aiohttp.test_utils import TestServer
from syncmesh.events.v1 import envelope_pb2

from ops.backfill import KINDS, backfill, parse_types, synthesise_event
from services.common.bus import Bus
from services.common.errors import SettingsError
from services.common.settings import Settings
from services.common.stripe_pages import RateLimiter
from tests.ops.helpers import stripe_messages
from tests.support.stripe_events import fixture

TYPES = ("customers", "products", "plans", "subscriptions", "invoices", "charges")


async def subscribed_customer(client: stripe.StripeClient, plan_id: str, name: str) -> str:
    customer = await client.v1.customers.create_async({"name": name})
    pm = await client.v1.payment_methods.create_async(
        {"type": "card", "card": {"number": "4242424242424242", "exp_month": 12, "exp_year": 2030, "cvc": "123"}}
    )
    await client.v1.payment_methods.attach_async(pm.id, {"customer": customer.id})
    await client.v1.customers.update_async(customer.id, {"invoice_settings": {"default_payment_method": pm.id}})
    sub = await client.v1.subscriptions.create_async({"customer": customer.id, "items": [{"plan": plan_id}]})
    return str(sub.id)


@pytest.fixture
async def history(ls_client) -> dict[str, str]:
    """Two customers, a product and plan, one active and one canceled subscription, each with
    its paid invoice and charge."""
    client = ls_client
    product = await client.v1.products.create_async({"name": "Pro"})
    plan = await client.v1.plans.create_async(
        {"product": product.id, "amount": 1500, "currency": "usd", "interval": "month"}
    )
    active = await subscribed_customer(client, plan.id, "Active Ltd")
    canceled = await subscribed_customer(client, plan.id, "Gone GmbH")
    await client.v1.subscriptions.cancel_async(canceled)
    return {"active": active, "canceled": canceled}


def backfill_settings(settings: Settings, localstripe) -> Settings:
    return settings.with_overrides(stripe_api_key="sk_test_backfill", stripe_api_base=localstripe.url)


async def test_backfill_publishes_one_event_per_object_and_twice_changes_nothing(
    localstripe, ls_client, history, settings: Settings, bus: Bus, tmp_path: Path
) -> None:
    s = backfill_settings(settings, localstripe)
    client = ls_client
    checkpoint = tmp_path / "checkpoint.json"
    since = datetime.now(UTC) - timedelta(days=1)
    first = await backfill(bus, client, s, since=since, types=TYPES, checkpoint_path=checkpoint)

    assert {name: k.published for name, k in first.kinds.items()} == {
        "customers": 2,
        "products": 1,
        "plans": 1,
        "subscriptions": 2,
        "invoices": 2,
        "charges": 2,
    }
    assert first.checkpoint_removed and not checkpoint.exists()
    messages = await stripe_messages(bus)
    assert Counter(m["subject"] for m in messages) == {
        "stripe.customer.updated": 2,
        "stripe.product.updated": 1,
        "stripe.plan.updated": 1,
        "stripe.customer.subscription.updated": 1,
        "stripe.customer.subscription.deleted": 1,
        "stripe.invoice.paid": 2,
        "stripe.charge.succeeded": 2,
    }
    for m in messages:
        env = m["envelope"]
        assert env.source == envelope_pb2.EVENT_SOURCE_BACKFILL
        assert m["msg_id"] == env.event_id and env.event_id.startswith("evt_bf_")
        assert env.livemode is False and m["payload"]["livemode"] is False
        assert abs(m["payload"]["created"] - time.time()) < 60  # the time of the listing
    deleted = next(m for m in messages if m["subject"] == "stripe.customer.subscription.deleted")
    assert deleted["payload"]["data"]["object"]["id"] == history["canceled"]

    await asyncio.sleep(0.1)
    second = await backfill(bus, client, s, since=since, types=TYPES, checkpoint_path=checkpoint)
    assert second.published == 0
    assert {name: k.already_in_stream for name, k in second.kinds.items()} == {
        name: k.listed for name, k in first.kinds.items()
    }
    assert len(await stripe_messages(bus)) == len(messages)


async def test_backfill_resumes_from_its_checkpoint(
    localstripe, ls_client, settings: Settings, bus: Bus, tmp_path: Path
) -> None:
    client = ls_client
    ids = [(await client.v1.customers.create_async({"name": f"C{i}"})).id for i in range(3)]
    listed = [c.id for c in (await client.v1.customers.list_async({"limit": 100})).data]
    assert sorted(listed) == sorted(ids)
    since = datetime.now(UTC) - timedelta(days=1)
    checkpoint = tmp_path / "cp.json"
    # An earlier run finished products and stopped after the first page of one customer.
    checkpoint.write_text(
        json.dumps(
            {
                "version": 1,
                "since": int(since.timestamp()),
                "types": {
                    "customers": {"last_id": listed[0], "done": False, "published": 1},
                    "products": {"last_id": None, "done": True, "published": 0},
                },
            }
        )
    )
    s = backfill_settings(settings, localstripe)
    report = await backfill(bus, client, s, since=since, types=("customers", "products"), checkpoint_path=checkpoint)
    assert report.kinds["customers"].resumed_after == listed[0]
    assert report.kinds["customers"].published == 2
    assert report.kinds["products"].resumed_after == "(already done)"
    published = {m["payload"]["data"]["object"]["id"] for m in await stripe_messages(bus)}
    assert published == set(listed[1:])

    checkpoint.write_text(json.dumps({"version": 1, "since": 12345, "types": {}}))
    with pytest.raises(SettingsError, match="--restart"):
        await backfill(bus, client, s, since=since, types=("customers",), checkpoint_path=checkpoint)
    restarted = await backfill(
        bus, client, s, since=since, types=("customers",), checkpoint_path=checkpoint, restart=True
    )
    assert restarted.kinds["customers"].listed == 3 and restarted.kinds["customers"].published == 1  # listed[0]


def test_event_type_follows_state_and_id_follows_content() -> None:
    invoice = fixture("invoice")
    kinds = {"invoices": KINDS["invoices"]}
    for status, expected in [
        ("paid", "invoice.paid"),
        ("void", "invoice.voided"),
        ("uncollectible", "invoice.marked_uncollectible"),
        ("open", "invoice.finalized"),
        ("draft", "invoice.created"),
    ]:
        invoice["status"] = status
        assert synthesise_event(kinds["invoices"], invoice, listed_at=1, api_version="v")["type"] == expected
    charge = fixture("charge") | {"status": "succeeded", "refunded": False, "amount_refunded": 0}
    assert synthesise_event(KINDS["charges"], charge, listed_at=1, api_version="v")["type"] == "charge.succeeded"
    charge["amount_refunded"] = 100
    assert synthesise_event(KINDS["charges"], charge, listed_at=1, api_version="v")["type"] == "charge.refunded"
    paid = synthesise_event(KINDS["invoice_payments"], fixture("invoice_payment"), listed_at=1, api_version="v")
    assert paid["type"] == "invoice_payment.paid" and dict(KINDS["invoice_payments"].params) == {"status": "paid"}
    assert list(KINDS).index("invoices") < list(KINDS).index("invoice_payments")  # the invoice is known first
    note = fixture("credit_note") | {"status": "void"}
    assert synthesise_event(KINDS["credit_notes"], note, listed_at=1, api_version="v")["type"] == "credit_note.voided"
    customer = fixture("customer")
    a = synthesise_event(KINDS["customers"], customer, listed_at=1, api_version="v")
    b = synthesise_event(KINDS["customers"], dict(reversed(customer.items())), listed_at=999, api_version="v")
    assert a["id"] == b["id"]  # same content, any key order, any listing time
    customer["name"] = "Renamed"
    assert synthesise_event(KINDS["customers"], customer, listed_at=1, api_version="v")["id"] != a["id"]
    assert parse_types("invoices, customers") == ("customers", "invoices")
    assert "plans" not in parse_types(None)
    with pytest.raises(SettingsError, match="unknown coupons"):
        parse_types("coupons")


# -- what localstripe cannot do: recorded Stripe shapes on a loopback server -------------------


class RecordedStripe:
    """GET /v1/invoices (429 first, as a busy account sees) and its invoice's 12 lines, 5 a page."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.lines = []
        for i in range(12):
            line = fixture("line_item")
            line.update({"id": f"il_{i:02d}", "amount": 100 + i, "currency": "usd", "invoice": "in_recorded"})
            self.lines.append(line)
        invoice = fixture("invoice")
        invoice.update(
            {
                "id": "in_recorded",
                "status": "open",
                "livemode": False,
                "created": int(time.time()),
                "currency": "usd",
                "lines": {
                    "object": "list",
                    "data": self.lines[:10],
                    "has_more": True,
                    "total_count": 12,
                    "url": "/v1/invoices/in_recorded/lines",
                },
            }
        )
        self.invoice = invoice

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/invoices", self.invoices)
        app.router.add_get("/v1/invoices/{id}/lines", self.invoice_lines)
        return app

    async def invoices(self, request: web.Request) -> web.Response:
        self.calls["invoices"] += 1
        if self.calls["invoices"] == 1:
            error = {"error": {"type": "invalid_request_error", "code": "rate_limit", "message": "Too many requests"}}
            return web.json_response(error, status=429, headers={"Retry-After": "0.2"})
        assert request.query["created[gte]"].isdigit()
        return web.json_response({"object": "list", "data": [self.invoice], "has_more": False, "url": "/v1/invoices"})

    async def invoice_lines(self, request: web.Request) -> web.Response:
        self.calls["lines"] += 1
        after = request.query.get("starting_after")
        start = 0 if after is None else next(i for i, line in enumerate(self.lines) if line["id"] == after) + 1
        page = self.lines[start : start + 5]
        return web.json_response(
            {"object": "list", "data": page, "has_more": start + 5 < len(self.lines), "url": "/v1/invoices/x/lines"}
        )


async def test_invoice_gets_all_its_lines_and_429_is_waited_out(
    settings: Settings, bus: Bus, tmp_path: Path, track_stripe
) -> None:
    recorded = RecordedStripe()
    server = TestServer(recorded.app(), host="127.0.0.1")
    await server.start_server()
    try:
        client = track_stripe(
            stripe.StripeClient(
                "sk_test_recorded",
                base_addresses={"api": str(server.make_url("")).rstrip("/")},
                http_client=stripe.AIOHTTPClient(),
                max_network_retries=0,
            )
        )
        started = time.monotonic()
        report = await backfill(
            bus,
            client,
            settings,
            since=datetime.now(UTC) - timedelta(days=1),
            types=("invoices",),
            checkpoint_path=tmp_path / "cp.json",
        )
        assert time.monotonic() - started >= 0.2  # waited as Retry-After asked
    finally:
        await server.close()
    assert recorded.calls == {"invoices": 2, "lines": 3}
    assert report.kinds["invoices"].published == 1 and report.kinds["invoices"].extra_line_pages == 3
    [message] = await stripe_messages(bus)
    assert message["subject"] == "stripe.invoice.finalized"
    lines = message["payload"]["data"]["object"]["lines"]
    assert [line["id"] for line in lines["data"]] == [f"il_{i:02d}" for i in range(12)]
    assert lines["has_more"] is False and lines["total_count"] == 12


async def test_rate_limiter_spaces_requests() -> None:
    limiter = RateLimiter(50)
    started = time.monotonic()
    for _ in range(6):
        await limiter.wait()
    assert time.monotonic() - started >= 5 / 50 * 0.9
    unlimited = RateLimiter(0)
    started = time.monotonic()
    for _ in range(100):
        await unlimited.wait()
    assert time.monotonic() - started < 0.05


async def test_backfill_with_the_default_types_skips_what_the_api_does_not_list(
    localstripe, ls_client, history, settings: Settings, bus: Bus, tmp_path: Path, caplog
) -> None:
    """localstripe has no prices, invoice payments, refunds or credit notes to list (404): the default
    run backfills what it can, says which types it skipped and why, and fails nothing."""
    report = await backfill(
        bus,
        ls_client,
        backfill_settings(settings, localstripe),
        since=datetime.now(UTC) - timedelta(days=1),
        checkpoint_path=tmp_path / "checkpoint.json",
    )
    skipped = {name for name, k in report.kinds.items() if k.not_served}
    assert "prices" in skipped and "customers" not in skipped
    assert report.kinds["customers"].published == 2 and report.kinds["invoices"].published == 2
    assert all("404" in (report.kinds[name].not_served or "") for name in skipped)
    lines = "\n".join(report.lines())
    assert "  prices: NOT SERVED, skipped: this Stripe API does not serve prices (404)" in lines
    assert any("backfill skips prices" in r.getMessage() for r in caplog.records)
    assert report.checkpoint_removed


@pytest.mark.unit
def test_the_checkpoint_goes_beside_the_local_mesh_or_where_it_is_told(tmp_path: Path) -> None:
    from ops.backfill import CHECKPOINT_VARIABLE, checkpoint_location
    from services.common.errors import SettingsError

    with pytest.raises(SettingsError, match=f"--checkpoint PATH or {CHECKPOINT_VARIABLE}"):
        checkpoint_location(None, {}, tmp_path)  # no local mesh: never the current folder by default
    assert not list(tmp_path.iterdir())
    assert checkpoint_location(None, {CHECKPOINT_VARIABLE: "/data/cp.json"}, tmp_path) == Path("/data/cp.json")
    assert checkpoint_location("cp.json", {CHECKPOINT_VARIABLE: "/data/cp.json"}, tmp_path) == tmp_path / "cp.json"
    (tmp_path / ".syncmesh").mkdir()
    (tmp_path / ".syncmesh" / "mesh.json").write_text("{}")
    assert checkpoint_location(None, {}, tmp_path) == tmp_path / ".syncmesh" / "backfill-checkpoint.json"

"""Whole invoice lifecycles, shuffled and duplicated (same id, and re-sent under a new id), with
several events in the same second, through the real handler and store on real PostgreSQL: the
final ledger is always the one the in-order delivery gives."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.billing.app import make_definition
from services.billing.settings import BillingSettings
from services.common import db
from services.common.consumer import BatchItem, HandlerContext
from services.common.settings import Settings
from tests.billing.builders import (
    PRICE_ADDON,
    InvoiceSpec,
    LineSpec,
    charge_object,
    credit_note_object,
    envelope_for,
    invoice_object,
    invoice_payment_object,
    refund_object,
    stripe_event,
    subscription_object,
)

T0 = 1_750_000_000
TOTAL = 14029


def _spec(invoice_id: str) -> InvoiceSpec:
    return InvoiceSpec(
        invoice_id=invoice_id,
        lines=[LineSpec(), LineSpec(price=PRICE_ADDON, unit=1500, quantity=1, description="Priority support")],
        percent_off=20,
        tax_bps=825,
    )


def _ids(events: list[dict[str, Any]], prefix: str) -> list[dict[str, Any]]:
    for n, evt in enumerate(events):
        evt["id"] = f"evt_{prefix}_{n:02d}"
    return events


def paid_refunded_credited() -> tuple[BillingSettings, list[dict[str, Any]]]:
    """Basil: coupon invoice, a retried failure, paid (three events in one second), refunded twice,
    the second refund carried by a post-payment credit note."""
    spec = _spec("in_propPaid0001")
    paid = invoice_object("basil", spec, status="paid", amount_paid=TOTAL)
    updated = copy.deepcopy(paid)
    updated["metadata"] = {"crm_synced": "yes"}
    refunds = [
        refund_object("re_propA", 2000, charge="ch_prop1", intent="pi_prop1", currency="usd", created=T0 + 600),
        refund_object("re_propB", 1500, charge="ch_prop1", intent="pi_prop1", currency="usd", created=T0 + 900),
    ]
    charge = charge_object("basil", spec, TOTAL, charge_id="ch_prop1", intent="pi_prop1", created=T0 + 60)
    return BillingSettings(), _ids(
        [
            stripe_event("invoice.created", invoice_object("basil", spec, status="draft"), created=T0),
            stripe_event("invoice.finalized", invoice_object("basil", spec), created=T0 + 1),
            stripe_event(
                "invoice.payment_failed",
                invoice_object("basil", spec, attempt_count=1, next_payment_attempt=T0 + 86400),
                created=T0 + 1,
            ),
            stripe_event("invoice.paid", paid, created=T0 + 60),
            stripe_event("invoice.payment_succeeded", paid, created=T0 + 60),
            stripe_event("invoice.updated", updated, created=T0 + 60),
            stripe_event(
                "invoice_payment.paid",
                invoice_payment_object(spec, TOTAL, payment_id="inpay_prop1", intent="pi_prop1", paid_at=T0 + 60),
                created=T0 + 60,
            ),
            stripe_event("charge.succeeded", charge, created=T0 + 60),
            stripe_event("refund.created", refunds[0], created=T0 + 600),
            stripe_event(
                "charge.refunded",
                charge_object(
                    "basil", spec, TOTAL, charge_id="ch_prop1", intent="pi_prop1", created=T0 + 60, refunds=refunds
                ),
                created=T0 + 900,
            ),
            stripe_event("refund.created", refunds[1], created=T0 + 900),
            stripe_event(
                "credit_note.created",
                credit_note_object(
                    "basil",
                    spec,
                    note_id="cn_propB",
                    amount=1500,
                    created=T0 + 900,
                    note_type="post_payment",
                    refund="re_propB",
                ),
                created=T0 + 900,
            ),
        ],
        "paid",
    )


def written_off_then_collected() -> tuple[BillingSettings, list[dict[str, Any]]]:
    """Basil: final failure (credit hold), uncollectible (write-off), then collected."""
    spec = _spec("in_propWoff0001")
    marked = T0 + 86400 * 20
    uncollectible = invoice_object("basil", spec, status="uncollectible", attempt_count=4)
    uncollectible["status_transitions"]["marked_uncollectible_at"] = marked
    paid = invoice_object("basil", spec, status="paid", amount_paid=TOTAL, attempt_count=4)
    paid["status_transitions"]["marked_uncollectible_at"] = marked
    return BillingSettings(write_off_uncollectible=True, credit_hold=True), _ids(
        [
            stripe_event("invoice.finalized", invoice_object("basil", spec), created=T0),
            stripe_event(
                "invoice.payment_failed", invoice_object("basil", spec, attempt_count=4), created=T0 + 86400 * 14
            ),
            stripe_event(
                "customer.subscription.updated",
                subscription_object(spec, status="unpaid", latest_invoice=spec.invoice_id),
                created=T0 + 86400 * 14,
            ),
            stripe_event("invoice.marked_uncollectible", uncollectible, created=marked),
            stripe_event("invoice.paid", paid, created=T0 + 86400 * 40),
            stripe_event(
                "invoice_payment.paid",
                invoice_payment_object(
                    spec, TOTAL, payment_id="inpay_propW", intent="pi_propW", paid_at=T0 + 86400 * 40
                ),
                created=T0 + 86400 * 40,
            ),
        ],
        "woff",
    )


def legacy_credit_then_charge() -> tuple[BillingSettings, list[dict[str, Any]]]:
    """Legacy: pre-payment credit note, paid by charge (invoice.paid names it), refunded."""
    spec = _spec("in_propLegacy01")
    due = TOTAL - 2029
    paid = invoice_object("legacy", spec, status="paid", amount_paid=due, charge="ch_propL")
    paid.update(amount_due=due, pre_payment_credit_notes_amount=2029)
    refund = refund_object("re_propL", 1000, charge="ch_propL", intent="pi_propL", currency="usd", created=T0 + 500)
    charge = charge_object("legacy", spec, due, charge_id="ch_propL", intent="pi_propL", created=T0 + 100)
    refunded = charge_object(
        "legacy", spec, due, charge_id="ch_propL", intent="pi_propL", created=T0 + 100, refunds=[refund]
    )
    note = credit_note_object("legacy", spec, note_id="cn_propL", amount=2029, created=T0 + 50)
    return BillingSettings(discount_posting="posting", revenue_rule="by_period"), _ids(
        [
            stripe_event("invoice.finalized", invoice_object("legacy", spec), created=T0, shape="legacy"),
            stripe_event("credit_note.created", note, created=T0 + 50, shape="legacy"),
            stripe_event("invoice.paid", paid, created=T0 + 100, shape="legacy"),
            stripe_event("invoice.payment_succeeded", paid, created=T0 + 100, shape="legacy"),
            stripe_event("charge.succeeded", charge, created=T0 + 100, shape="legacy"),
            stripe_event("charge.refunded", refunded, created=T0 + 500, shape="legacy"),
            stripe_event("refund.created", refund, created=T0 + 500, shape="legacy"),
        ],
        "legacy",
    )


def truncated_then_whole() -> tuple[BillingSettings, list[dict[str, Any]]]:
    """The newest snapshot carries only the first page of lines (and there is no API key to page
    through the rest); an older one carries them all: the ledger keeps the newest header and the
    whole lines, whichever came first."""
    spec = _spec("in_propTrunc01")
    truncated = dataclasses.replace(spec, page=1)
    paid = invoice_object("basil", truncated, status="paid", amount_paid=TOTAL)
    return BillingSettings(), _ids(
        [
            stripe_event("invoice.finalized", invoice_object("basil", spec), created=T0),
            stripe_event("invoice.paid", paid, created=T0 + 60),
            stripe_event("invoice.payment_succeeded", paid, created=T0 + 60),
        ],
        "trunc",
    )


SCENARIOS = {
    "truncated_then_whole": truncated_then_whole(),
    "paid_refunded_credited": paid_refunded_credited(),
    "written_off_then_collected": written_off_then_collected(),
    "legacy_credit_then_charge": legacy_credit_then_charge(),
}

TABLES = (
    "record_history",
    "credit_holds",
    "credit_note_refunds",
    "credit_memo_lines",
    "credit_memos",
    "refunds",
    "payments",
    "charges",
    "revenue_schedule",
    "invoice_lines",
    "invoices",
    "unmapped_prices",
    "customers",
    "processed_events",
    "outbox",
)

#: The ledger, without what is assigned on arrival (ERP ids, wall-clock times, counters).
LEDGER_QUERIES = {
    "invoices": "SELECT * FROM invoices ORDER BY stripe_invoice_id",
    "invoice_lines": "SELECT * FROM invoice_lines ORDER BY stripe_invoice_id, line_no",
    "revenue_schedule": "SELECT * FROM revenue_schedule ORDER BY stripe_invoice_id, line_no, period",
    "payments": "SELECT * FROM payments ORDER BY stripe_payment_id",
    "charges": "SELECT charge_id, payment_intent_id, stripe_created FROM charges ORDER BY charge_id",
    "refunds": "SELECT * FROM refunds ORDER BY stripe_refund_id",
    "credit_memos": "SELECT * FROM credit_memos ORDER BY memo_key",
    "credit_memo_lines": "SELECT * FROM credit_memo_lines ORDER BY memo_key, line_no",
    "credit_note_refunds": "SELECT * FROM credit_note_refunds ORDER BY credit_note_id, refund_id",
    "credit_holds": "SELECT stripe_customer_id, stripe_invoice_id, reason, released_at IS NOT NULL AS released "
    "FROM credit_holds ORDER BY 1, 2",
}
VOLATILE = {
    "erp_invoice_id",
    "erp_payment_id",
    "erp_refund_id",
    "erp_credit_memo_id",
    "created_at",
    "updated_at",
    "version_event_id",
}


@dataclass(frozen=True)
class Delivery:
    index: int
    #: Re-sent under a new event id (as a sweeper or backfill would), not deduplicated by id.
    fresh_id: bool = False


async def _apply(
    conn: asyncpg.Connection,
    settings: Settings,
    policy: BillingSettings,
    evts: list[Delivery],
    events: list[dict[str, Any]],
    batch: int = 1,
) -> dict[str, list[dict[str, Any]]]:
    definition = make_definition(policy)
    apply = definition.apply
    await conn.execute(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY")
    if batch > 1:
        await _apply_in_batches(conn, settings, definition, evts, events, batch)
    for n, delivery in enumerate(evts if batch == 1 else []):
        async with conn.transaction():
            claimed = await _claim(conn, settings, events, delivery, n)
            if claimed is not None:
                await apply(conn, [claimed])
    ledger: dict[str, list[dict[str, Any]]] = {}
    for name, query in LEDGER_QUERIES.items():
        rows = await conn.fetch(query)
        ledger[name] = [{k: v for k, v in dict(r).items() if k not in VOLATILE} for r in rows]
    return ledger


async def _apply_in_batches(
    conn: asyncpg.Connection,
    settings: Settings,
    definition: Any,
    evts: list[Delivery],
    events: list[dict[str, Any]],
    size: int,
) -> None:
    """As the consumer does: claim a batch's ids, then the applier on the new ones."""
    for start in range(0, len(evts), size):
        async with conn.transaction():
            claimed = [
                await _claim(conn, settings, events, d, n) for n, d in enumerate(evts[start : start + size], start)
            ]
            await definition.apply(conn, [item for item in claimed if item is not None])


async def _claim(
    conn: asyncpg.Connection, settings: Settings, events: list[dict[str, Any]], delivery: Delivery, n: int
) -> BatchItem | None:
    """Record the delivery's event id as processed; its handler context, or None for a repeat."""
    evt = events[delivery.index]
    if delivery.fresh_id:
        evt = {**evt, "id": f"{evt['id']}_again{n}"}
    parsed, envelope = envelope_for(evt, received_at=evt["created"])
    fresh = await conn.fetchval(
        "INSERT INTO processed_events (event_id, event_type) VALUES ($1, $2) ON CONFLICT DO NOTHING RETURNING true",
        parsed.id,
        parsed.type,
    )
    if not fresh:
        return None
    ctx = HandlerContext(conn=conn, service="billing", settings=settings, envelope=envelope)
    return BatchItem.alone(ctx, parsed)


def run(
    database_url: str, settings: Settings, scenario: str, deliveries: list[Delivery], batch: int = 1
) -> dict[str, Any]:
    policy, events = SCENARIOS[scenario]

    async def go() -> dict[str, Any]:
        conn = await asyncpg.connect(database_url, server_settings={"search_path": "billing"})
        for type_name in ("json", "jsonb"):  # as the runtime's pool does
            await conn.set_type_codec(type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
        try:
            return await _apply(conn, settings, policy, deliveries, events, batch)
        finally:
            await conn.close()

    return asyncio.run(go())


@st.composite
def shuffled(draw: st.DrawFn, size: int) -> list[Delivery]:
    order = [Delivery(i) for i in draw(st.permutations(list(range(size))))]
    extra = draw(
        st.lists(st.tuples(st.integers(0, size - 1), st.booleans(), st.integers(0, size)), min_size=1, max_size=4)
    )
    for index, fresh, position in extra:
        order.insert(min(position, len(order)), Delivery(index, fresh))
    return order


@pytest.fixture
async def migrated(database_url: str) -> str:
    pool = await db.create_pool(database_url, "billing")
    try:
        await db.migrate(
            pool, "billing", [("runtime", db.RUNTIME_MIGRATIONS), ("billing", make_definition().migrations)]
        )
    finally:
        await pool.close()
    return database_url


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_any_order_and_duplication_gives_the_same_ledger(migrated: str, settings: Settings, scenario: str) -> None:
    size = len(SCENARIOS[scenario][1])
    expected = run(migrated, settings, scenario, [Delivery(i) for i in range(size)])
    assert expected["invoices"] and expected["invoices"][0]["lines_complete"]

    @settings_for_lifecycles
    @given(deliveries=shuffled(size), batch=st.sampled_from([1, 1, 2, 3, 5, 64]))
    def check(deliveries: list[Delivery], batch: int) -> None:
        """Handled one event at a time, or by the batch handler in batches of `batch`."""
        assert run(migrated, settings, scenario, deliveries, batch) == expected

    check()


settings_for_lifecycles = settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


def test_expected_ledgers_are_what_finance_expects(migrated: str, settings: Settings) -> None:
    """The in-order ledgers themselves, so the property above cannot pass on a wrong ledger."""
    paid = run(migrated, settings, "paid_refunded_credited", [Delivery(i) for i in range(12)])
    [inv] = paid["invoices"]
    assert (inv["erp_status"], inv["amount_paid"], inv["amount_remaining"], inv["unattributed_paid"]) == (
        "paid_in_full",
        TOTAL,
        0,
        0,
    )
    assert inv["version_paid"] == TOTAL and inv["stripe_status"] == "paid"
    # the current shape's invoice payment names only its intent: the charge event gives the charge id
    assert [(p["charge_id"], p["payment_intent_id"]) for p in paid["payments"]] == [("ch_prop1", "pi_prop1")]
    memos = {m["memo_key"]: (m["kind"], m["status"], m["amount"]) for m in paid["credit_memos"]}
    assert memos == {
        "cn_propB": ("credit_note", "issued", 1500),
        "re_propA": ("refund", "issued", 2000),
        "re_propB": ("refund", "superseded", 1500),  # carried by the credit note's memo
    }
    woff = run(migrated, settings, "written_off_then_collected", [Delivery(i) for i in range(6)])
    [inv] = woff["invoices"]
    assert (inv["erp_status"], inv["credits_applied"], inv["amount_paid"]) == ("paid_in_full", 0, TOTAL)
    [memo] = woff["credit_memos"]
    assert (memo["kind"], memo["status"], memo["amount"]) == ("write_off", "reversed", TOTAL)
    [hold] = woff["credit_holds"]
    assert hold["released"]
    legacy = run(migrated, settings, "legacy_credit_then_charge", [Delivery(i) for i in range(7)])
    [inv] = legacy["invoices"]
    assert (inv["erp_status"], inv["credits_applied"], inv["amount_paid"], inv["amount_remaining"]) == (
        "paid_in_full",
        2029,
        TOTAL - 2029,
        0,
    )
    assert [(p["stripe_payment_id"], p["charge_id"], p["payment_intent_id"]) for p in legacy["payments"]] == [
        ("ch_propL", "ch_propL", "pi_propL")
    ]
    assert [(r["stripe_refund_id"], r["stripe_invoice_id"]) for r in legacy["refunds"]] == [
        ("re_propL", "in_propLegacy01")
    ]

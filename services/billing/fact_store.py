"""The SQL of a batch's single facts (`facts`): one read of what the batch touches, set-based writes
of what the fold changed.

The read is one statement whatever the batch holds. Each write is one statement per kind of
record (two more for credit memo lines), in key order so concurrent batches cannot deadlock, and
sends only the records the fold changed, so an event that changes nothing costs nothing and an
ERP id is drawn from its sequence only for a record that is written. The rules are decided in
`facts`; each write keeps the same rule in its WHERE as a guard, in case another replica wrote
the record since it was read. A record the guard refuses is left out of what is returned, and so
out of what is recorded and announced, as the one-event-at-a-time upserts did.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.billing.facts import FactsFold, HoldKey, MemoState, StoredCustomer, StoredFacts
from services.billing.payment_mapping import ErpPayment, ErpRefund
from services.billing.stripe_fields import to_date
from services.common.db import Conn, Writes


@dataclass(frozen=True)
class FactKeys:
    """What a batch's events name, for `load`: the records themselves, and the charges and
    payment intents whose payments give a refund its invoice (those with one) or whose refunds
    learn it from a payment (those without)."""

    payment_ids: Collection[str] = ()
    charge_ids: Collection[str] = ()
    payment_intent_ids: Collection[str] = ()
    refund_ids: Collection[str] = ()
    note_ids: Collection[str] = ()
    invoice_ids: Collection[str] = ()
    holds: Collection[HoldKey] = ()
    customer_ids: Collection[str] = ()


@dataclass
class Loaded:
    facts: StoredFacts
    #: ERP ids of the stored records, by (table, key): ("payment" | "refund" | "memo", Stripe key).
    erp_ids: dict[tuple[str, str], str] = field(default_factory=dict)


_LOAD = """
WITH p AS (SELECT * FROM payments
            WHERE stripe_payment_id = ANY($1::text[])
               OR (stripe_invoice_id IS NOT NULL
                   AND (charge_id = ANY($2::text[]) OR payment_intent_id = ANY($3::text[])))),
     r AS (SELECT * FROM refunds
            WHERE stripe_refund_id = ANY($4::text[])
               OR (stripe_invoice_id IS NULL
                   AND (charge_id = ANY($2::text[]) OR payment_intent_id = ANY($3::text[])))),
     inv AS (SELECT stripe_invoice_id FROM p UNION SELECT stripe_invoice_id FROM r
             UNION SELECT unnest($6::text[]))
SELECT
  (SELECT json_agg(json_build_array(stripe_payment_id, erp_payment_id, stripe_invoice_id, stripe_customer_id,
                                    charge_id, payment_intent_id, amount, currency, paid_at, method, source,
                                    priority)) FROM p) AS payments,
  (SELECT json_agg(json_build_array(stripe_refund_id, erp_refund_id, charge_id, payment_intent_id,
                                    stripe_invoice_id, stripe_customer_id, amount, currency, status, status_rank,
                                    stripe_created, reason)) FROM r) AS refunds,
  (SELECT json_agg(json_build_array(memo_key, erp_credit_memo_id, kind, status, stripe_invoice_id,
                                    stripe_customer_id, status_rank, version_created))
     FROM credit_memos WHERE memo_key IN (SELECT stripe_refund_id FROM r) OR memo_key = ANY($5::text[])) AS memos,
  (SELECT json_agg(DISTINCT refund_id) FROM credit_note_refunds
    WHERE refund_id IN (SELECT stripe_refund_id FROM r) OR refund_id = ANY($4::text[])) AS covered,
  (SELECT json_agg(json_build_array(stripe_invoice_id, stripe_customer_id)) FROM invoices
    WHERE stripe_invoice_id IN (SELECT stripe_invoice_id FROM inv)) AS invoices,
  (SELECT json_agg(json_build_array(h.stripe_customer_id, h.stripe_invoice_id, h.cause_rank, h.reason,
                                    extract(epoch FROM h.placed_at)::bigint, h.placed_date_source))
     FROM credit_holds h JOIN unnest($7::text[], $8::text[]) AS k(customer_id, invoice_id)
       ON h.stripe_customer_id = k.customer_id AND h.stripe_invoice_id = k.invoice_id) AS holds,
  (SELECT json_agg(json_build_array(stripe_customer_id, erp_customer_id, version_created)) FROM customers
    WHERE stripe_customer_id = ANY($9::text[])) AS customers,
  (SELECT json_agg(json_build_array(payment_intent_id, charge_id) ORDER BY stripe_created, charge_id) FROM charges
    WHERE payment_intent_id = ANY($3::text[]) OR charge_id = ANY($2::text[])) AS charges
"""


async def load(conn: Conn, keys: FactKeys) -> Loaded:
    """The stored facts the batch touches, in one statement."""
    holds = sorted(keys.holds)
    row = await conn.fetchrow(
        _LOAD,
        sorted(keys.payment_ids),
        sorted(keys.charge_ids),
        sorted(keys.payment_intent_ids),
        sorted(keys.refund_ids),
        sorted(keys.note_ids),
        sorted(keys.invoice_ids),
        [c for c, _ in holds],
        [i for _, i in holds],
        sorted(keys.customer_ids),
    )
    assert row is not None
    loaded = Loaded(StoredFacts())
    facts, erp_ids = loaded.facts, loaded.erp_ids
    for pid, erp_id, invoice, customer, charge, intent, amount, currency, paid_at, method, source, prio in _rows(
        row["payments"]
    ):
        facts.payments[pid] = ErpPayment(
            pid, invoice, customer, charge, intent, amount, currency, paid_at, method, source, prio
        )
        erp_ids["payment", pid] = erp_id
    for rid, erp_id, charge, intent, invoice, customer, amount, currency, status, rank, created, reason in _rows(
        row["refunds"]
    ):
        facts.refunds[rid] = ErpRefund(
            rid, charge, intent, invoice, customer, amount, currency, status, rank, created, reason
        )
        erp_ids["refund", rid] = erp_id
    for key, erp_id, kind, status, invoice, customer, rank, created in _rows(row["memos"]):
        erp_ids["memo", key] = erp_id
        if kind == "refund":
            facts.refund_memos[key] = MemoState(status, invoice, customer)
        elif kind == "credit_note":
            facts.notes[key] = (rank, created)
    facts.covered.update(_rows(row["covered"]))
    facts.invoice_customers.update((i, c) for i, c in _rows(row["invoices"]))
    for c, i, rank, reason, placed_at, source in _rows(row["holds"]):
        facts.holds[c, i] = (rank, reason)
        facts.hold_times[c, i] = (placed_at, source or "mesh_clock")
    facts.customers.update((c, StoredCustomer(erp, created)) for c, erp, created in _rows(row["customers"]))
    for intent, charge in _rows(row["charges"]):
        facts.charges.setdefault(intent, charge)
    return loaded


def _rows(value: str | list[Any] | None) -> list[Any]:
    """A json_agg column: decoded by the pool's codec already, or text without one."""
    if isinstance(value, str):
        return list(json.loads(value))
    return value or []


@dataclass
class Written:
    """What the writes changed: the ERP ids of the records written, and the holds and customers."""

    erp_ids: dict[tuple[str, str], str] = field(default_factory=dict)
    holds: set[HoldKey] = field(default_factory=set)
    customers: set[str] = field(default_factory=set)


async def write(
    conn: Conn, fold: FactsFold, known: Mapping[tuple[str, str], str], *, later: Writes | None = None
) -> Written:
    """The fold's net effect: each changed record written once; `known` are the ERP ids of the
    stored records (`Loaded.erp_ids`). What no statement here reads back (new charges, credit
    note links, memo lines) goes through `later` (default `conn`): a batch holds it for its
    COMMIT; a later `load` flushes it first (`handlers.store_facts`)."""
    later = conn if later is None else later
    written = Written()
    await _write_charges(later, fold)
    await _write_payments(conn, fold, written, known)
    await _write_refunds(conn, fold, written, known)
    await _write_notes(conn, fold, written, known, later)
    await _write_refund_memos(conn, fold, written, known, later)
    await _write_holds(conn, fold, written)
    await _write_customers(conn, fold, written)
    return written


def _numbered(key: str, prefix: str, sequence: str) -> str:
    """A CTE `ids` giving each new row of `t` its ERP id, drawn in the order the batch created
    them (`new_order`), so ids are numbered as one event at a time would number them while the
    rows are written in key order (so concurrent batches cannot deadlock). The format is the
    column default's."""
    return f"""ids AS (
            SELECT {key}, '{prefix}-' || lpad(nextval('{sequence}')::text, 7, '0') AS erp_id
              FROM (SELECT {key} FROM t WHERE new_order IS NOT NULL ORDER BY new_order) AS o)"""


def _numbering(
    keys: Sequence[str], created: Sequence[str], table: str, known: Mapping[tuple[str, str], str]
) -> tuple[list[int | None], list[str | None]]:
    """The `new_order` and `known_erp_id` columns of `_numbered`: a new row's place in the
    batch's creation order, a stored row's ERP id (its insert loses to the stored row)."""
    order = {key: n for n, key in enumerate(created)}
    return [order.get(k) for k in keys], [known.get((table, k)) for k in keys]


#: What a payment's source of higher priority rewrites (a charge over an invoice's own fields);
#: its references are filled apart, from whichever source names them.
_BY_PRIORITY = ",\n            ".join(
    f"{c} = CASE WHEN EXCLUDED.priority > payments.priority THEN EXCLUDED.{c} ELSE payments.{c} END"
    for c in ("amount", "paid_at", "paid_on", "method", "source", "date_source")
)


async def _write_payments(conn: Conn, fold: FactsFold, written: Written, known: Mapping[tuple[str, str], str]) -> None:
    ps = [fold.payments[k] for k in sorted(fold.payments_changed)]
    if not ps:
        return
    rows = await conn.fetch(
        f"""
        WITH t AS (
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[],
                                 $7::text[], $8::bigint[], $9::date[], $10::text[], $11::text[], $12::integer[],
                                 $13::integer[], $14::text[], $15::text[])
                AS t(stripe_payment_id, stripe_invoice_id, stripe_customer_id, charge_id, payment_intent_id, amount,
                     currency, paid_at, paid_on, method, source, priority, new_order, known_erp_id, date_source)),
        {_numbered("stripe_payment_id", "PMT", "erp_payment_seq")}
        INSERT INTO payments (erp_payment_id, stripe_payment_id, stripe_invoice_id, stripe_customer_id, charge_id,
            payment_intent_id, amount, currency, paid_at, paid_on, method, source, priority, date_source)
        SELECT COALESCE(ids.erp_id, t.known_erp_id), t.stripe_payment_id, t.stripe_invoice_id, t.stripe_customer_id,
               t.charge_id, t.payment_intent_id, t.amount, t.currency, t.paid_at, t.paid_on, t.method, t.source,
               t.priority, t.date_source
          FROM t LEFT JOIN ids USING (stripe_payment_id) ORDER BY t.stripe_payment_id
        ON CONFLICT (stripe_payment_id) DO UPDATE SET
            stripe_invoice_id = COALESCE(EXCLUDED.stripe_invoice_id, payments.stripe_invoice_id),
            stripe_customer_id = COALESCE(EXCLUDED.stripe_customer_id, payments.stripe_customer_id),
            charge_id = COALESCE(EXCLUDED.charge_id, payments.charge_id),
            payment_intent_id = COALESCE(EXCLUDED.payment_intent_id, payments.payment_intent_id),
            {_BY_PRIORITY},
            priority = GREATEST(EXCLUDED.priority, payments.priority)
        WHERE EXCLUDED.priority > payments.priority
           -- a reference still missing is filled (a charge id from its intent's charge), and an
           -- invoice payment takes the charge id of its intent's succeeded charge (`facts`)
           OR (EXCLUDED.charge_id IS NOT NULL AND payments.charge_id IS DISTINCT FROM EXCLUDED.charge_id
               AND (payments.charge_id IS NULL OR payments.source = 'invoice_payment'))
           OR (payments.payment_intent_id IS NULL AND EXCLUDED.payment_intent_id IS NOT NULL)
        RETURNING stripe_payment_id, erp_payment_id
        """,
        [p.stripe_payment_id for p in ps],
        [p.stripe_invoice_id for p in ps],
        [p.stripe_customer_id for p in ps],
        [p.charge_id for p in ps],
        [p.payment_intent_id for p in ps],
        [p.amount for p in ps],
        [p.currency for p in ps],
        [p.paid_at for p in ps],
        [to_date(p.paid_at, fold.zone) for p in ps],
        [p.method for p in ps],
        [p.source for p in ps],
        [p.priority for p in ps],
        *_numbering([p.stripe_payment_id for p in ps], fold.payments_created, "payment", known),
        [p.date_source for p in ps],
    )
    written.erp_ids.update((("payment", r["stripe_payment_id"]), r["erp_payment_id"]) for r in rows)


async def _write_charges(conn: Writes, fold: FactsFold) -> None:
    """Succeeded charges new in this batch; a charge never changes, so the first write stays."""
    charges = [fold.charges_created[k] for k in sorted(fold.charges_created)]
    if charges:
        await conn.execute(
            "INSERT INTO charges (charge_id, payment_intent_id, stripe_customer_id, stripe_created) "
            "SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[]) ON CONFLICT DO NOTHING",
            [c.charge_id for c in charges],
            [c.payment_intent_id for c in charges],
            [c.stripe_customer_id for c in charges],
            [c.created for c in charges],
        )


async def _write_refunds(conn: Conn, fold: FactsFold, written: Written, known: Mapping[tuple[str, str], str]) -> None:
    rs = [fold.refunds[k] for k in sorted(fold.refunds_changed)]
    if not rs:
        return
    rows = await conn.fetch(
        f"""
        WITH t AS (
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::bigint[],
                                 $7::text[], $8::text[], $9::integer[], $10::bigint[], $11::date[], $12::text[],
                                 $13::integer[], $14::text[])
                AS t(stripe_refund_id, charge_id, payment_intent_id, stripe_invoice_id, stripe_customer_id, amount,
                     currency, status, status_rank, stripe_created, refunded_on, reason, new_order, known_erp_id)),
        {_numbered("stripe_refund_id", "RFD", "erp_refund_seq")}
        INSERT INTO refunds (erp_refund_id, stripe_refund_id, charge_id, payment_intent_id, stripe_invoice_id,
            stripe_customer_id, amount, currency, status, status_rank, stripe_created, refunded_on, reason)
        SELECT COALESCE(ids.erp_id, t.known_erp_id), t.stripe_refund_id, t.charge_id, t.payment_intent_id,
               t.stripe_invoice_id, t.stripe_customer_id, t.amount, t.currency, t.status, t.status_rank,
               t.stripe_created, t.refunded_on, t.reason
          FROM t LEFT JOIN ids USING (stripe_refund_id) ORDER BY t.stripe_refund_id
        ON CONFLICT (stripe_refund_id) DO UPDATE SET
            charge_id = COALESCE(refunds.charge_id, EXCLUDED.charge_id),
            payment_intent_id = COALESCE(refunds.payment_intent_id, EXCLUDED.payment_intent_id),
            stripe_invoice_id = COALESCE(refunds.stripe_invoice_id, EXCLUDED.stripe_invoice_id),
            stripe_customer_id = COALESCE(refunds.stripe_customer_id, EXCLUDED.stripe_customer_id),
            status = CASE WHEN EXCLUDED.status_rank > refunds.status_rank THEN EXCLUDED.status ELSE refunds.status END,
            status_rank = GREATEST(EXCLUDED.status_rank, refunds.status_rank),
            reason = COALESCE(EXCLUDED.reason, refunds.reason)
        WHERE EXCLUDED.status_rank > refunds.status_rank
           OR (refunds.stripe_invoice_id IS NULL AND EXCLUDED.stripe_invoice_id IS NOT NULL)
           OR (refunds.stripe_customer_id IS NULL AND EXCLUDED.stripe_customer_id IS NOT NULL)
           OR (refunds.charge_id IS NULL AND EXCLUDED.charge_id IS NOT NULL)
           OR (refunds.payment_intent_id IS NULL AND EXCLUDED.payment_intent_id IS NOT NULL)
        RETURNING stripe_refund_id, erp_refund_id
        """,
        [r.stripe_refund_id for r in rs],
        [r.charge_id for r in rs],
        [r.payment_intent_id for r in rs],
        [r.stripe_invoice_id for r in rs],
        [r.stripe_customer_id for r in rs],
        [r.amount for r in rs],
        [r.currency for r in rs],
        [r.status for r in rs],
        [r.status_rank for r in rs],
        [r.created for r in rs],
        [to_date(r.created, fold.zone) for r in rs],
        [r.reason for r in rs],
        *_numbering([r.stripe_refund_id for r in rs], fold.refunds_created, "refund", known),
    )
    written.erp_ids.update((("refund", r["stripe_refund_id"]), r["erp_refund_id"]) for r in rows)


async def _write_notes(
    conn: Conn, fold: FactsFold, written: Written, known: Mapping[tuple[str, str], str], later: Writes
) -> None:
    links = sorted(fold.links)
    if links:
        await later.execute(
            "INSERT INTO credit_note_refunds (credit_note_id, refund_id) "
            "SELECT * FROM unnest($1::text[], $2::text[]) ON CONFLICT DO NOTHING",
            [n for n, _ in links],
            [r for _, r in links],
        )
    keys = sorted(fold.notes_changed)
    if not keys:
        return
    notes = [fold.notes_changed[k] for k in keys]
    #: A note created in this batch keeps its first version's currency and memo text.
    first = [fold.notes_created.get(k, n) for k, n in zip(keys, notes, strict=True)]
    rows = await conn.fetch(
        f"""
        WITH t AS (
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[],
                                 $7::date[], $8::text[], $9::integer[], $10::text[], $11::text[], $12::text[],
                                 $13::text[], $14::bigint[], $15::bigint[], $16::integer[], $17::text[])
                AS t(memo_key, invoice_id, customer_id, number, amount, currency, memo_date, status, status_rank,
                     applied_to, note_type, reason, memo, version_created, voided_at, new_order, known_erp_id)),
        {_numbered("memo_key", "CM", "erp_credit_memo_seq")}
        INSERT INTO credit_memos (erp_credit_memo_id, memo_key, kind, stripe_invoice_id, stripe_customer_id, number,
                                  amount, currency, memo_date, status, status_rank, applied_to, note_type, reason,
                                  memo, version_created, voided_at)
        SELECT COALESCE(ids.erp_id, t.known_erp_id), t.memo_key, 'credit_note', t.invoice_id, t.customer_id,
               t.number, t.amount, t.currency, t.memo_date, t.status, t.status_rank, t.applied_to, t.note_type,
               t.reason, t.memo, t.version_created, t.voided_at
          FROM t LEFT JOIN ids USING (memo_key) ORDER BY t.memo_key
        ON CONFLICT (memo_key) DO UPDATE SET
            stripe_invoice_id = EXCLUDED.stripe_invoice_id, stripe_customer_id = EXCLUDED.stripe_customer_id,
            number = EXCLUDED.number, amount = EXCLUDED.amount, memo_date = EXCLUDED.memo_date,
            status = EXCLUDED.status, status_rank = EXCLUDED.status_rank, applied_to = EXCLUDED.applied_to,
            note_type = EXCLUDED.note_type, reason = EXCLUDED.reason, version_created = EXCLUDED.version_created,
            voided_at = EXCLUDED.voided_at, updated_at = now()
        WHERE (EXCLUDED.status_rank, EXCLUDED.version_created)
            > (credit_memos.status_rank, credit_memos.version_created)
        RETURNING memo_key, erp_credit_memo_id
        """,
        keys,
        [n.stripe_invoice_id for n in notes],
        [n.stripe_customer_id for n in notes],
        [n.number for n in notes],
        [n.amount for n in notes],
        [f.currency for f in first],
        [n.memo_date for n in notes],
        [n.status for n in notes],
        [n.status_rank for n in notes],
        [n.applied_to for n in notes],
        [n.note_type for n in notes],
        [n.reason for n in notes],
        [f"Stripe credit note {f.number or f.stripe_credit_note_id}" for f in first],
        [n.created for n in notes],
        [n.voided_at for n in notes],
        *_numbering(keys, list(fold.notes_created), "memo", known),
    )
    changed = sorted(r["memo_key"] for r in rows)
    written.erp_ids.update((("memo", r["memo_key"]), r["erp_credit_memo_id"]) for r in rows)
    if not changed:
        return
    await later.execute("DELETE FROM credit_memo_lines WHERE memo_key = ANY($1::text[])", changed)
    lines = [(key, line) for key in changed for line in fold.notes_changed[key].lines]
    if lines:
        await later.execute(
            "INSERT INTO credit_memo_lines (memo_key, line_no, description, quantity, unit_amount, amount, "
            "invoice_line_item, kind) SELECT * FROM unnest($1::text[], $2::integer[], $3::text[], $4::bigint[], "
            "$5::bigint[], $6::bigint[], $7::text[], $8::text[])",
            [key for key, _ in lines],
            [line.line_no for _, line in lines],
            [line.description for _, line in lines],
            [line.quantity for _, line in lines],
            [line.unit_amount for _, line in lines],
            [line.amount for _, line in lines],
            [line.invoice_line_item for _, line in lines],
            [line.kind for _, line in lines],
        )


async def _write_refund_memos(
    conn: Conn, fold: FactsFold, written: Written, known: Mapping[tuple[str, str], str], later: Writes
) -> None:
    keys = sorted(fold.memos_changed)
    if not keys:
        return
    states = [fold.refund_memos[k] for k in keys]
    # What a memo new in this batch was created with; an existing one moves only its state (its
    # row's other values are what it would be created with now, for the insert's constraints).
    created = [fold.memos_created.get(k) or fold.refund_memo(k) for k in keys]
    rows = await conn.fetch(
        f"""
        WITH t AS (
            SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::date[],
                                 $7::text[], $8::text[], $9::text[], $10::integer[], $11::text[])
                AS t(memo_key, invoice_id, customer_id, amount, currency, memo_date, status, reason, memo,
                     new_order, known_erp_id)),
        {_numbered("memo_key", "CM", "erp_credit_memo_seq")}
        INSERT INTO credit_memos (erp_credit_memo_id, memo_key, kind, stripe_invoice_id, stripe_customer_id, amount,
                                  currency, memo_date, status, applied_to, reason, memo)
        SELECT COALESCE(ids.erp_id, t.known_erp_id), t.memo_key, 'refund', t.invoice_id, t.customer_id, t.amount,
               t.currency, t.memo_date, t.status, 'refund', t.reason, t.memo
          FROM t LEFT JOIN ids USING (memo_key) ORDER BY t.memo_key
        ON CONFLICT (memo_key) DO UPDATE SET status = EXCLUDED.status,
               stripe_invoice_id = COALESCE(EXCLUDED.stripe_invoice_id, credit_memos.stripe_invoice_id),
               stripe_customer_id = COALESCE(EXCLUDED.stripe_customer_id, credit_memos.stripe_customer_id),
               updated_at = now()
         WHERE (credit_memos.status, credit_memos.stripe_invoice_id, credit_memos.stripe_customer_id)
               IS DISTINCT FROM (EXCLUDED.status,
                                 COALESCE(EXCLUDED.stripe_invoice_id, credit_memos.stripe_invoice_id),
                                 COALESCE(EXCLUDED.stripe_customer_id, credit_memos.stripe_customer_id))
        RETURNING memo_key, erp_credit_memo_id, (xmax = 0) AS inserted
        """,
        keys,
        [s.stripe_invoice_id for s in states],
        [s.stripe_customer_id for s in states],
        [m.amount for m in created],
        [m.currency for m in created],
        [m.memo_date for m in created],
        [s.status for s in states],
        [m.reason for m in created],
        [m.memo for m in created],
        *_numbering(keys, list(fold.memos_created), "memo", known),
    )
    written.erp_ids.update((("memo", r["memo_key"]), r["erp_credit_memo_id"]) for r in rows)
    new = [fold.memos_created[r["memo_key"]] for r in rows if r["inserted"] and r["memo_key"] in fold.memos_created]
    if new:
        await later.execute(
            "INSERT INTO credit_memo_lines (memo_key, line_no, description, quantity, unit_amount, amount, kind) "
            "SELECT k, 1, d, 1, a, a, 'refund' FROM unnest($1::text[], $2::text[], $3::bigint[]) AS t(k, d, a)",
            [m.memo_key for m in new],
            [m.line_description for m in new],
            [m.amount for m in new],
        )


#: The guards of a hold's write (`facts.hold_change`, `facts.hold_dated`): a stronger cause names
#: it; an earlier moment of Stripe's dates it, as does any of Stripe's over one it did not give.
_STRONGER = "(EXCLUDED.cause_rank, EXCLUDED.reason) < (credit_holds.cause_rank, credit_holds.reason)"
_EARLIER = (
    "(EXCLUDED.placed_date_source <> 'mesh_clock' AND (EXCLUDED.placed_at < credit_holds.placed_at"
    " OR credit_holds.placed_date_source IS NULL"
    " OR credit_holds.placed_date_source NOT IN ('stripe_transition', 'stripe_event')))"
)


async def _write_holds(conn: Conn, fold: FactsFold, written: Written) -> None:
    keys = sorted(fold.holds_changed)
    if not keys:
        return
    holds = [fold.holds_changed[k] for k in keys]
    # A hold is dated by Stripe's moment for its earliest cause (`facts.hold_dated`); only a hold
    # Stripe gave no moment for falls back to the mesh's clock, and says so.
    rows = await conn.fetch(
        f"""
        INSERT INTO credit_holds (stripe_customer_id, stripe_invoice_id, reason, cause_rank, reason_code, placed_at,
                                  placed_date_source)
        SELECT t.c, t.i, t.reason, t.rank, t.code, COALESCE(to_timestamp(t.at), now()),
               CASE WHEN t.at IS NULL THEN 'mesh_clock' ELSE t.source END
          FROM unnest($1::text[], $2::text[], $3::text[], $4::integer[], $5::text[], $6::bigint[], $7::text[])
            AS t(c, i, reason, rank, code, at, source)
        ON CONFLICT (stripe_customer_id, stripe_invoice_id) DO UPDATE
           SET reason = CASE WHEN {_STRONGER} THEN EXCLUDED.reason ELSE credit_holds.reason END,
               cause_rank = CASE WHEN {_STRONGER} THEN EXCLUDED.cause_rank ELSE credit_holds.cause_rank END,
               reason_code = CASE WHEN {_STRONGER} THEN EXCLUDED.reason_code ELSE credit_holds.reason_code END,
               placed_at = CASE WHEN {_EARLIER} THEN EXCLUDED.placed_at ELSE credit_holds.placed_at END,
               placed_date_source = CASE WHEN {_EARLIER} THEN EXCLUDED.placed_date_source
                                         ELSE credit_holds.placed_date_source END
         WHERE {_STRONGER} OR {_EARLIER}
        RETURNING stripe_customer_id, stripe_invoice_id
        """,
        [h.stripe_customer_id for h in holds],
        [h.stripe_invoice_id for h in holds],
        [fold.holds[k][1] for k in keys],
        [fold.holds[k][0] for k in keys],
        [h.code for h in holds],
        [fold.hold_times[k][0] for k in keys],
        [fold.hold_times[k][1] for k in keys],
    )
    written.holds.update((r["stripe_customer_id"], r["stripe_invoice_id"]) for r in rows)


async def _write_customers(conn: Conn, fold: FactsFold, written: Written) -> None:
    keys = sorted(fold.customers_changed)
    if not keys:
        return
    rows = await conn.fetch(
        """
        INSERT INTO customers (stripe_customer_id, erp_customer_id, version_created)
        SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[])
        ON CONFLICT (stripe_customer_id) DO UPDATE
           SET erp_customer_id = COALESCE(EXCLUDED.erp_customer_id, customers.erp_customer_id),
               version_created = EXCLUDED.version_created, updated_at = now()
         WHERE EXCLUDED.version_created >= customers.version_created
        RETURNING stripe_customer_id
        """,
        keys,
        [fold.customers[k].erp_customer_id for k in keys],
        [fold.customers[k].version_created for k in keys],
    )
    written.customers.update(r["stripe_customer_id"] for r in rows)

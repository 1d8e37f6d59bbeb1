"""Invoice snapshots (the `invoice.*` events, which carry the whole invoice) -> the ERP ledger.

Stripe sends the invoice entire with every event, so a batch's snapshots of one invoice are
folded in memory (`snapshots.fold_snapshots`: the decisions one write per event would make, in
arrival order) and only their net effect is written: one read of the stored versions, then one
statement each for the headers, the lines and the revenue schedules, whatever the batch size.
What a snapshot says beyond the invoice itself (a payment, a credit hold) is stored with the
other snapshots' (`handlers.store_facts`: load, fold, write), an uncollectible mark at once, and
the ledger is re-derived once per invoice at the end of the batch (`settlement.settle_noted`).
What the batch notes travels in its `Batch`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import stripe

from services.billing import handlers, holds, invoice_mapping, payment_mapping, snapshots, store
from services.billing.batch_state import Batch
from services.billing.handlers import notified_on
from services.billing.invoice_mapping import ErpInvoice
from services.billing.settings import BillingSettings
from services.billing.snapshots import InvoiceVersion
from services.common.consumer import BatchItem, HandlerContext
from services.common.db import Conn
from services.common.errors import PermanentError, RetryableError
from services.common.stripe_api import upstream_error

log = logging.getLogger(__name__)

#: Invoice events whose object is not a stored invoice.
_NOT_A_RECORD = ("invoice.upcoming", "invoice.will_be_due")


def is_snapshot_event(event_type: str) -> bool:
    """`invoice.*` (not `invoice_payment.*`, whose object is a payment)."""
    return event_type.startswith("invoice.")


@dataclass(slots=True)
class LinesMemo:
    """The last lines mapped for one invoice in a batch and what they were mapped from. It holds
    the mapped invoice, never a snapshot: a snapshot holding itself through it would be a cycle,
    and would keep the batch's parsed events alive until the next full garbage collection."""

    inputs: bytes | None = None
    mapped: ErpInvoice | None = None


@dataclass
class Snapshot:
    """An invoice event's invoice, read: its header mapped, its lines mapped when first asked for
    (`mapped`), which the fold does only for a snapshot whose lines it may write."""

    item: BatchItem
    obj: dict[str, Any]
    #: The invoice without its lines (`invoice_mapping.map_header`).
    inv: ErpInvoice
    version: InvoiceVersion
    raw_lines: list[dict[str, Any]]
    policy: BillingSettings
    #: The batch's price -> ERP item map, holding every price of `raw_lines` that has one.
    item_map: Mapping[str, str]
    #: What the invoice's snapshots in this batch last mapped lines from, and those lines (shared
    #: by them, `apply_snapshots`): a snapshot whose lines say the same is not mapped again.
    lines_memo: LinesMemo = field(default_factory=lambda: LinesMemo(), repr=False)
    _mapped: ErpInvoice | None = field(default=None, repr=False)

    def mapped(self) -> ErpInvoice:
        """The whole invoice: lines, discount lines and revenue schedules (mapped once).

        An invoice's snapshots in one batch mostly carry the same lines (created, finalized, paid,
        payment_succeeded): mapping them cost a sixth of billing's CPU per event drained, over and
        over. When what the lines are mapped from is the same as for the invoice's last mapped
        snapshot (`invoice_mapping.lines_inputs`), those lines are taken as they are: the same
        tuple, so `snapshots.fold_snapshots` also takes their fingerprint as it is."""
        if self._mapped is None:
            inputs = invoice_mapping.lines_inputs(self.inv, self.obj, self.raw_lines)
            memo = self.lines_memo
            if inputs is not None and memo.mapped is not None and memo.inputs == inputs:
                self._mapped = invoice_mapping.with_lines(self.inv, memo.mapped)
            else:
                self._mapped = invoice_mapping.map_lines(
                    self.inv, self.obj, self.raw_lines, item_map=self.item_map, billing=self.policy
                )
            memo.inputs, memo.mapped = inputs, self._mapped
        return self._mapped

    def candidate(self) -> snapshots.Candidate:
        return snapshots.Candidate(self.inv, self.version, self.mapped)


async def read_snapshot(batch: Batch, item: BatchItem) -> Snapshot | None:
    """The event's invoice, its header mapped; None (with the reason recorded) when it changes no
    invoice."""
    ctx, event = item.ctx, item.event
    obj = event.object
    if event.type in _NOT_A_RECORD or not obj.get("id"):
        ctx.skip(f"{event.type} carries no invoice record")
        return None
    if obj.get("object") not in (None, "invoice"):
        raise PermanentError(f"{event.type} does not carry an invoice")
    if ctx.before_sync_start(obj.get("created")):
        ctx.skip("before SYNCMESH_SYNC_START")
        return None
    if event.type == "invoice.deleted":
        obj = {**obj, "deleted": True}
    raw_lines, complete = await fetch_all_lines(ctx, obj)
    if invoice_mapping.more_lines(obj):
        # The batch read the items of the prices the event's own lines name (`batch._apply`);
        # lines fetched from Stripe may name others.
        await handlers.item_map(batch, ctx.conn, invoice_mapping.invoice_price_ids(raw_lines))
    inv = invoice_mapping.map_header(obj, raw_lines=raw_lines, lines_complete=complete, billing=batch.policy)
    if not inv.stripe_customer_id:
        raise PermanentError(f"invoice {inv.stripe_invoice_id} has no customer")
    version = snapshots.snapshot_version(inv, event_created=event.created, event_id=event.id)
    return Snapshot(item, obj, inv, version, raw_lines, batch.policy, batch.item_map)


async def fetch_all_lines(ctx: HandlerContext, obj: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """The invoice's lines; all of them when the event holds only the first page.

    Without an API key the first page is kept but the invoice is marked incomplete, so it can
    never pass for a whole invoice; a Stripe failure is retried (and dead-lettered in the end).
    """
    lines = obj.get("lines") if isinstance(obj.get("lines"), dict) else {}
    assert isinstance(lines, dict)
    data = [x for x in lines.get("data") or [] if isinstance(x, dict)]
    if not invoice_mapping.more_lines(obj):
        return data, True
    client = ctx.stripe
    if client is None:
        log.warning("invoice %s has more lines than its event holds and no Stripe API key is set", obj.get("id"))
        return data, False
    invoice_id = str(obj["id"])
    fetched: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 100}
    try:
        while True:
            page = await client.v1.invoices.line_items.list_async(invoice_id, params)  # type: ignore[arg-type]
            fetched.extend(item.to_dict() for item in page.data)
            if not page.has_more or not page.data:
                break
            params = {"limit": 100, "starting_after": page.data[-1].id}
    except stripe.StripeError as exc:
        raise RetryableError(str(upstream_error(exc, f"list the lines of invoice {invoice_id}"))) from exc
    return fetched, True


async def apply_snapshots(batch: Batch, conn: Conn, read: Sequence[Snapshot]) -> None:
    """Fold each invoice's snapshots, write the net effect, then what each snapshot says besides."""
    if not read:
        return
    by_invoice: dict[str, list[Snapshot]] = {}
    for snap in read:
        same = by_invoice.setdefault(snap.inv.stripe_invoice_id, [])
        if same:
            snap.lines_memo = same[0].lines_memo
        same.append(snap)
    await batch.later.flush()
    stored = await store.stored_snapshots(conn, sorted(by_invoice))
    folds = []
    unmapped: list[tuple[str, str]] = []
    for invoice_id, snaps in sorted(by_invoice.items()):
        fold = snapshots.fold_snapshots(stored.get(invoice_id), [s.candidate() for s in snaps])
        folds.append(fold)
        for snap, step in zip(snaps, fold.steps, strict=True):
            _record_step(batch, snap, step)
            if step.lines_replaced:
                unmapped.extend((price_id, invoice_id) for price_id in snap.mapped().unmapped_price_ids)
        last = snaps[-1].item
        batch.settle_later(last.ctx, last.event, invoice_id, changed=any(step.applied for step in fold.steps))
    # Held (`Batch.later`), in this order: what reads the invoices next (the facts' load, the
    # settlement) flushes them first; nothing of the batch reads the lines or unmapped prices.
    await store.write_snapshots(batch.later, folds)
    # Lines follow the current price -> item sheet whether or not they were rewritten: a replay
    # after a mapping change rewrites none (its snapshots are not newer than the stored ones).
    await store.remap_lines_later(batch.later, sorted(by_invoice))
    await store.note_unmapped(batch.later, unmapped)
    beyond = []
    for snap in read:
        if _says_more(snap, batch.policy):
            with snap.item.consuming():
                beyond.append(await _beyond_the_invoice(batch, snap))
    await handlers.store_facts(batch, conn, beyond)


def _record_step(batch: Batch, snap: Snapshot, step: snapshots.SnapshotStep) -> None:
    inv, event = snap.inv, snap.item.event
    if step.applied:
        verb = "created" if step.created else "updated"
        change = f"{verb} from Stripe status {inv.stripe_status}, total {inv.total} {inv.currency}"
        batch.record(event, "invoice", inv.stripe_invoice_id, change)
    if step.lines_replaced:
        whole = snap.mapped()
        problems = invoice_mapping.invoice_problems(whole)
        note = f"; does not balance: {'; '.join(problems)}" if problems else ""
        batch.record(event, "invoice", inv.stripe_invoice_id, f"{len(whole.lines)} lines written{note}")
        if problems:
            log.warning("invoice %s: %s", inv.stripe_invoice_id, "; ".join(problems))


def _says_more(snap: Snapshot, billing: BillingSettings) -> bool:
    inv = snap.inv
    return (
        inv.uncollectible
        or payment_mapping.payment_from_invoice(inv, snap.obj, snap.item.event.created) is not None
        or (snap.item.event.type == "invoice.payment_failed" and billing.credit_hold)
    )


async def _beyond_the_invoice(batch: Batch, snap: Snapshot) -> handlers.EventFacts:
    """An uncollectible mark (stored at once), a (legacy) payment, a credit hold: the last two are
    facts of their own, stored with the other snapshots' (`handlers.store_facts`)."""
    ctx, event, inv = snap.item.ctx, snap.item.event, snap.inv
    if inv.uncollectible:
        await store.note_uncollectible(
            batch.later,
            inv.stripe_invoice_id,
            notified_on=notified_on(ctx, event, batch.policy.ledger_zone),
            at=inv.uncollectible_at,
            event_at=event.created or None,
        )
    facts = handlers.EventFacts(snap.item)
    payment = payment_mapping.payment_from_invoice(inv, snap.obj, event.created)
    if payment is not None:
        facts.facts.append(payment)
    if event.type == "invoice.payment_failed" and batch.policy.credit_hold:
        hold = holds.hold_from_invoice(inv, event.created)
        if hold is not None:
            facts.facts.append(hold)
    return facts

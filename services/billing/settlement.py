"""The end of a batch: every invoice its events touched, re-derived once from its stored facts.

Load, decide, write: the facts of all the noted invoices are read in one statement, each
invoice's ledger, write-off memo and hold release are decided by pure code (`decide.settle`),
and what changed is written set-based. Then each invoice's audit rows and domain events follow,
in invoice order, attributed to the event that last touched it. Deferring this to the end of the
batch leaves the ledger as one-at-a-time delivery would, and announces each invoice's newest
state once per batch rather than every step towards it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from services.billing import announce, decide, store
from services.billing.batch_state import Batch, Settle
from services.common.db import Conn

#: What a write-off memo's status means, in its audit row.
_WRITE_OFF_CHANGE = {"issued": "written off", "reversed": "write-off reversed (invoice collected)", "void": "voided"}


async def settle_noted(batch: Batch, conn: Conn) -> None:
    """Re-derive every noted invoice's ledger; save, record and announce what moved."""
    if not batch.settle:
        return
    await batch.later.flush()  # the ledgers are derived from everything the batch wrote
    stored = await store.stored_ledgers(conn, sorted(batch.settle))
    settlements = [decide.settle(stored[invoice_id], batch.policy) for invoice_id in sorted(stored)]
    # Nothing of the batch reads the ledgers, nor the memos' lines, after this: they go with COMMIT.
    await store.save_ledgers(batch.later, [s for s in settlements if s.moved])
    memo_ids = await store.write_write_offs(
        conn, [s.write_off for s in settlements if s.write_off is not None], lines=batch.later
    )
    released = await store.release_holds(
        conn,
        {
            s.invoice.stripe_invoice_id: store.Release(
                s.release_reason, s.release_at, s.release_date_source, s.release_code or "invoice_paid"
            )
            for s in settlements
            if s.release_reason is not None and s.release_at is not None and s.release_date_source is not None
        },
    )
    # Invoices not stored yet settle with these facts when their snapshot arrives.
    for settlement in settlements:
        invoice_id = settlement.invoice.stripe_invoice_id
        await _announce(batch, batch.settle[invoice_id], settlement, memo_ids, released.get(invoice_id, []))
    batch.settle.clear()


async def _announce(
    batch: Batch, by: Settle, s: decide.Settlement, memo_ids: Mapping[str, str], released: Sequence[str]
) -> None:
    """The audit rows and domain events of one settled invoice, in the order it changed."""
    ctx, event = by.ctx, by.event
    invoice_id = s.invoice.stripe_invoice_id
    if s.moved:
        batch.record(event, "invoice", invoice_id, s.history)
    if s.moved or by.changed:
        await ctx.emit("invoice_changed", announce.invoice_changed(s))
    memo = s.write_off
    if memo is not None and memo.memo_key in memo_ids:
        erp_id = memo_ids[memo.memo_key]
        batch.record(event, "credit_memo", memo.memo_key, f"{_WRITE_OFF_CHANGE[memo.status]}: {memo.amount}")
        batch.record(event, "invoice", invoice_id, f"write-off {erp_id} {memo.status}")
        await ctx.emit(
            "credit_memo_changed",
            announce.credit_memo_changed(
                erp_id, memo.memo_key, "write_off", invoice_id, memo.amount, memo.currency, memo.status
            ),
        )
    for customer in released:
        reason = s.release_reason or ""
        batch.record(event, "credit_hold", customer, f"released: {reason}")
        await ctx.emit(
            "credit_hold_changed",
            announce.credit_hold_changed(customer, invoice_id, active=False, reason=reason, code=s.release_code),
        )

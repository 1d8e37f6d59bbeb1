"""The billing consumer's applier: a batch of events (or one, as a batch of one) -> the ledger.

Invoice snapshots are folded per invoice and written set-based (`invoices`); every other event
is read into the facts it carries, and those are loaded, folded and written set-based together
(`handlers`, `facts`, `fact_store`); every invoice touched is then re-derived once
(`decide.settle`). Order does not matter between the three (each stores facts, the derivation
reads them all), which is what lets a batch be split this way and still leave the ledger
one-at-a-time delivery would. The shared work is done once: the invoices' locks are taken
together up front (in id order, so replicas cannot deadlock), item mappings are read once, and
the audit rows are written in one statement at the end. The payments the batch concerns are
locked with them (`payment_keys`): a charge, its refund and its invoice payment applied by two
replicas at once would otherwise each miss the other's link to the invoice. What the batch accumulates is one
explicit `Batch` value, created here and passed to every step.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.billing import handlers, invoice_mapping, invoices, settlement, store
from services.billing.batch_state import Batch
from services.billing.settings import BillingSettings
from services.common.consumer import BatchApplier, BatchItem
from services.common.db import Conn, Deferred


def make_applier(policy: BillingSettings) -> BatchApplier:
    """The consumer's batch applier, bound to the billing policy the process was started with."""

    async def apply(conn: Conn, items: Sequence[BatchItem]) -> None:
        await _apply(Batch(policy, items[0].ctx.later if items else Deferred(conn)), conn, items)

    return apply


async def _apply(batch: Batch, conn: Conn, items: Sequence[BatchItem]) -> None:
    keys = sorted(
        {key for item in items if (key := invoice_mapping.invoice_key(item.event.type, item.event.object))}
        | {key for item in items for key in invoice_mapping.payment_keys(item.event.type, item.event.object)}
    )
    prices = sorted({p for item in items for p in _price_ids(item)})
    batch.item_map.update(await store.lock_many_and_load_item_map(conn, keys, prices))
    batch.prices.update(prices)
    batch.locked.update(keys)
    snapshots = []
    facts = []
    for item in items:
        with item.consuming():
            if invoices.is_snapshot_event(item.event.type):
                snapshot = await invoices.read_snapshot(batch, item)
                if snapshot is not None:
                    snapshots.append(snapshot)
            elif (read := handlers.read_event(batch, item)) is not None:
                facts.append(read)
    await handlers.store_facts(batch, conn, facts)
    await invoices.apply_snapshots(batch, conn, snapshots)
    await settlement.settle_noted(batch, conn)
    await store.add_history(batch.later, batch.history)


def _price_ids(item: BatchItem) -> list[str]:
    """The prices of an invoice event's lines as the event carries them (no API call)."""
    if not invoices.is_snapshot_event(item.event.type):
        return []
    lines = item.event.object.get("lines")
    data = lines.get("data") if isinstance(lines, dict) else None
    return invoice_mapping.invoice_price_ids([x for x in data or [] if isinstance(x, dict)])

"""What one batch accumulates while its events are applied, passed explicitly to each step.

A batch takes its invoices' locks once, reads item mappings once, writes its audit rows in one
statement and re-derives each touched invoice once at the end; this value carries what that
needs from the first event to the last. It is created per batch (`batch.make_applier`) and handed
to every handler as an argument, so nothing about a batch lives in hidden context.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.billing.records import HistoryRow
from services.billing.settings import BillingSettings
from services.common.consumer import HandlerContext
from services.common.db import Deferred
from services.common.events import StripeEvent


@dataclass
class Settle:
    """An invoice to re-derive at the end of the batch, with the event that last touched it."""

    ctx: HandlerContext
    event: StripeEvent
    #: A snapshot of the invoice changed it: announce it even when its ledger did not move.
    changed: bool = False


@dataclass
class Batch:
    """The running policy and what the batch's events have noted so far."""

    policy: BillingSettings
    #: Writes nobody reads back before COMMIT (audit rows, the ledgers' updates, lines...): held
    #: to go with the batch's COMMIT (`db.Deferred`). Each step that reads what such a write
    #: changed flushes it first (`invoices.apply_snapshots`, `handlers.store_facts`,
    #: `settlement.settle_noted`).
    later: Deferred
    locked: set[str] = field(default_factory=set)
    prices: set[str] = field(default_factory=set)
    item_map: dict[str, str] = field(default_factory=dict)
    history: list[HistoryRow] = field(default_factory=list)
    settle: dict[str, Settle] = field(default_factory=dict)

    def record(self, event: StripeEvent, record_type: str, record_id: str, change: str) -> None:
        """An audit row for this event, written with the batch's others in one statement."""
        self.history.append((record_type, record_id, event.id, event.type, change))

    def settle_later(self, ctx: HandlerContext, event: StripeEvent, invoice_id: str, *, changed: bool = False) -> None:
        """Re-derive the invoice's ledger at the end of the batch (its facts are all stored by then)."""
        earlier = self.settle.get(invoice_id)
        self.settle[invoice_id] = Settle(ctx, event, changed or (earlier is not None and earlier.changed))

"""The order in which each status of billing's records may move: defined here once.

Stripe never promises delivery order, so a record keeps the highest-ranked status it has seen:
a late event of a lower rank never moves it back. The billing service ranks its snapshots with
these tables and `syncmesh verify` judges Stripe's state against the ledger's with the same
ones, so the two cannot disagree about what "newer" means.
"""

from __future__ import annotations

#: Stripe invoice statuses only move forward; a snapshot of a lower rank never overwrites a higher.
STRIPE_STATUS_RANK: dict[str, int] = {"draft": 0, "open": 1, "uncollectible": 2, "paid": 3, "void": 3, "deleted": 4}
#: ERP statuses only move forward too: a paid invoice is never re-opened by a late event, and an
#: open one never goes back to draft (a draft is no receivable: not open, not aged, not owed).
ERP_STATUS_RANK: dict[str, int] = {"draft": 0, "open": 1, "written_off": 2, "paid_in_full": 3, "voided": 3}
REFUND_STATUS_RANK: dict[str, int] = {"pending": 0, "requires_action": 0, "succeeded": 1, "failed": 2, "canceled": 2}
CREDIT_NOTE_STATUS_RANK: dict[str, int] = {"issued": 0, "void": 1}

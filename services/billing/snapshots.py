"""Invoice snapshots: which of several (in arrival order) the ledger keeps.

Stripe sends the whole invoice with every `invoice.*` event and never promises their order, so
each snapshot carries a version and only a greater one replaces what is stored: statuses move
forward, and a repeated or older event changes nothing. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from services.billing.invoice_mapping import ErpInvoice, lines_fingerprint

#: (status rank, event created, amount paid, attempts, event id): a later snapshot wins only when
#: it is greater, so statuses move forward and a repeated or older event changes nothing.
InvoiceVersion = tuple[int, int, int, int, str]


def snapshot_version(inv: ErpInvoice, *, event_created: int, event_id: str) -> InvoiceVersion:
    return (inv.status_rank, event_created, inv.stripe_amount_paid, inv.attempt_count, event_id)


@dataclass(frozen=True)
class StoredSnapshot:
    """What the ledger already holds for an invoice that decides what a new snapshot may change."""

    version: InvoiceVersion
    lines_complete: bool
    lines_hash: str | None


@dataclass(frozen=True)
class SnapshotStep:
    """What one snapshot did when applied after the ones before it."""

    applied: bool
    lines_replaced: bool
    created: bool


@dataclass(frozen=True)
class Candidate:
    """A snapshot as the fold sees it: its invoice without lines (`invoice_mapping.map_header`),
    its version, and how to map its lines, which the fold asks for only when it may write them
    (mapping lines, discounts and revenue schedules costs several times the header, and most of
    a replay's snapshots are older than what is stored)."""

    header: ErpInvoice
    version: InvoiceVersion
    #: The whole invoice, lines included (pure; the caller maps it once).
    mapped: Callable[[], ErpInvoice]


@dataclass(frozen=True)
class SnapshotFold:
    """The net effect of an invoice's snapshots on the ledger, and each one's step."""

    #: The newest snapshot (its header: no lines) and its version, when one is newer than what is stored.
    header: tuple[ErpInvoice, InvoiceVersion] | None
    #: The snapshot whose lines the ledger ends with, when the lines change.
    lines: ErpInvoice | None
    lines_complete: bool
    lines_hash: str | None
    steps: tuple[SnapshotStep, ...]


def fold_snapshots(stored: StoredSnapshot | None, snapshots: Sequence[Candidate]) -> SnapshotFold:
    """Apply one invoice's snapshots in turn, in memory: the same decisions one write per event
    would make. A newer snapshot replaces the header; the lines are rewritten only when they
    differ, and a truncated snapshot never replaces complete lines. A snapshot's lines are
    mapped only when they could be written (`Candidate.mapped`)."""
    version = stored.version if stored else None
    complete = stored.lines_complete if stored else False
    lines_hash = stored.lines_hash if stored else None
    header: tuple[ErpInvoice, InvoiceVersion] | None = None
    lines: ErpInvoice | None = None
    steps = []
    #: The last lines fingerprinted and their fingerprint: a snapshot given the very same lines
    #: (`invoices.Snapshot.mapped`) with the same completeness and currency has the same one.
    last: tuple[ErpInvoice, str] | None = None
    for snap in snapshots:
        inv, v = snap.header, snap.version
        exists = version is not None
        applied = version is None or v > version
        wanted = (applied and (inv.lines_complete or not complete)) or (
            not applied and inv.lines_complete and not complete
        )
        mapped = snap.mapped() if wanted else None
        fingerprint = None
        if mapped is not None:
            if last is not None and _same_fingerprint(last[0], mapped):
                fingerprint = last[1]
            else:
                fingerprint = lines_fingerprint(mapped)
                last = (mapped, fingerprint)
        replaced = mapped is not None and (not exists or lines_hash != fingerprint)
        steps.append(SnapshotStep(applied, replaced, created=not exists))
        if applied:
            header, version = (inv, v), v
        if applied or replaced:
            complete = complete or inv.lines_complete
        if replaced:
            lines, lines_hash = mapped, fingerprint
    return SnapshotFold(header, lines, complete, lines_hash, tuple(steps))


def _same_fingerprint(a: ErpInvoice, b: ErpInvoice) -> bool:
    """Whether `lines_fingerprint` must give `b` what it gave `a`: what it hashes is the same (the
    lines compared by identity, which is cheap and never wrongly true)."""
    return a.lines is b.lines and a.lines_complete == b.lines_complete and a.currency == b.currency

"""The snapshot fold maps an invoice's lines only for the snapshots whose lines it may write.

A replay folds mostly snapshots older than what is stored (history, out of order), and mapping
lines, discounts and revenue schedules costs several times the header: those must not be mapped.
What the fold decides is unchanged (the batch and order-independence tests hold it to that).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, cast

import pytest

from services.billing import invoice_mapping, invoices, snapshots
from services.billing.invoice_mapping import ErpInvoice
from services.billing.settings import BillingSettings
from services.common.consumer import BatchItem
from tests.billing.builders import InvoiceSpec, LineSpec, invoice_object

POLICY = BillingSettings()


def _candidate(status: str, created: int, event_id: str, asked: list[str]) -> snapshots.Candidate:
    obj = invoice_object("basil", InvoiceSpec(lines=[LineSpec(), LineSpec(unit=1500)]), status=status)
    raw, complete = invoice_mapping.raw_invoice_lines(obj)
    header = invoice_mapping.map_header(obj, raw_lines=raw, lines_complete=complete, billing=POLICY)

    def mapped() -> ErpInvoice:
        asked.append(event_id)
        return invoice_mapping.map_lines(header, obj, raw, item_map={}, billing=POLICY)

    version = snapshots.snapshot_version(header, event_created=created, event_id=event_id)
    return snapshots.Candidate(header, version, mapped)


def test_the_header_is_the_whole_mapping_but_its_lines() -> None:
    obj = invoice_object("legacy", InvoiceSpec(lines=[LineSpec(), LineSpec(unit=1500)], percent_off=20, tax_bps=825))
    whole = invoice_mapping.map_invoice(obj, item_map={}, billing=POLICY)
    raw, complete = invoice_mapping.raw_invoice_lines(obj)
    header = invoice_mapping.map_header(obj, raw_lines=raw, lines_complete=complete, billing=POLICY)
    assert header.lines == () and header.unmapped_price_ids == ()
    assert replace(whole, lines=(), unmapped_price_ids=()) == header
    assert invoice_mapping.map_lines(header, obj, raw, item_map={}, billing=POLICY) == whole


def test_snapshots_older_than_the_stored_one_are_not_mapped() -> None:
    asked: list[str] = []
    newest = _candidate("paid", 300, "evt_3", asked)
    stored = snapshots.StoredSnapshot(
        version=newest.version, lines_complete=True, lines_hash=invoice_mapping.lines_fingerprint(newest.mapped())
    )
    asked.clear()
    fold = snapshots.fold_snapshots(
        stored, [_candidate("open", 200, "evt_2", asked), _candidate("draft", 100, "evt_1", asked), newest]
    )
    assert asked == []  # the equal one (a repeat) and the older ones: none is mapped
    assert fold.header is None and fold.lines is None
    assert [(s.applied, s.lines_replaced) for s in fold.steps] == [(False, False)] * 3


def test_only_the_snapshots_that_apply_are_mapped_each_once() -> None:
    asked: list[str] = []
    stored = snapshots.StoredSnapshot(version=(1, 150, 0, 0, "evt_s"), lines_complete=True, lines_hash="stored")
    draft = _candidate("draft", 100, "evt_1", asked)
    paid = _candidate("paid", 300, "evt_3", asked)
    fold = snapshots.fold_snapshots(stored, [draft, paid, _candidate("open", 200, "evt_2", asked)])
    assert asked == ["evt_3"]
    assert fold.header is not None and fold.header[0] is paid.header and fold.header[0].lines == ()
    assert fold.lines is not None and len(fold.lines.lines) == 2
    assert [(s.applied, s.lines_replaced) for s in fold.steps] == [(False, False), (True, True), (False, False)]


def _snapshot(spec: InvoiceSpec, status: str, created: int, event_id: str) -> invoices.Snapshot:
    obj = invoice_object("basil", spec, status=status)
    raw, complete = invoice_mapping.raw_invoice_lines(obj)
    header = invoice_mapping.map_header(obj, raw_lines=raw, lines_complete=complete, billing=POLICY)
    version = snapshots.snapshot_version(header, event_created=created, event_id=event_id)
    return invoices.Snapshot(cast(BatchItem, None), obj, header, version, raw, POLICY, {})


def test_an_invoices_snapshots_with_the_same_lines_map_them_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Snapshots of one invoice in one batch share the lines mapped for the last one whose lines
    were mapped from the same inputs; lines that changed are mapped again. Either way each
    snapshot's whole invoice, and the fold, are what mapping it on its own gives."""
    two = InvoiceSpec(lines=[LineSpec(), LineSpec(unit=1500)])
    three = InvoiceSpec(lines=[LineSpec(), LineSpec(unit=1500), LineSpec(unit=700)])
    batch = [
        _snapshot(two, "draft", 100, "evt_1"),
        _snapshot(two, "open", 200, "evt_2"),
        _snapshot(three, "open", 250, "evt_3"),
        _snapshot(three, "paid", 300, "evt_4"),
    ]
    for snap in batch[1:]:
        snap.lines_memo = batch[0].lines_memo  # as `invoices.apply_snapshots` shares it
    alone = [invoice_mapping.map_lines(s.inv, s.obj, s.raw_lines, item_map={}, billing=POLICY) for s in batch]
    mapped: list[int] = []
    real = invoice_mapping.map_lines

    def counting(header: ErpInvoice, *args: Any, **kwargs: Any) -> ErpInvoice:
        mapped.append(len(header.lines))
        return real(header, *args, **kwargs)

    monkeypatch.setattr(invoice_mapping, "map_lines", counting)
    fold = snapshots.fold_snapshots(None, [s.candidate() for s in batch])
    assert len(mapped) == 2  # evt_1 (two lines) and evt_3 (three): evt_2 and evt_4 took theirs
    assert [s.mapped() for s in batch] == alone
    assert batch[1].mapped().lines is batch[0].mapped().lines
    assert [(s.applied, s.lines_replaced) for s in fold.steps] == [
        (True, True),
        (True, False),
        (True, True),
        (True, False),
    ]
    assert fold.lines == alone[2] and fold.lines_hash == invoice_mapping.lines_fingerprint(alone[3])

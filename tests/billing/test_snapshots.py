"""The snapshot fold maps an invoice's lines only for the snapshots whose lines it may write.

A replay folds mostly snapshots older than what is stored (history, out of order), and mapping
lines, discounts and revenue schedules costs several times the header: those must not be mapped.
What the fold decides is unchanged (the batch and order-independence tests hold it to that).
"""

from __future__ import annotations

from dataclasses import replace

from services.billing import invoice_mapping, snapshots
from services.billing.invoice_mapping import ErpInvoice
from services.billing.settings import BillingSettings
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

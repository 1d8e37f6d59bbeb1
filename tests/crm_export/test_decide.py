"""The batch decision on its own, without a database: ties, bare deletions, who announces."""

from __future__ import annotations

import pytest

from services.crm_export import decide
from services.crm_export.crm_settings import INVOICE, SUBSCRIPTION, CrmSettings
from services.crm_export.decide import Fetched, Incoming, KeptCustomer, Kind, StoredFacts, StoredVersion
from services.crm_export.records import Version, content_hash
from tests.crm_export.support import T0, customer, invoice, subscription

BOTH = CrmSettings(contract_sources=(INVOICE, SUBSCRIPTION))


def _stored(**customers: KeptCustomer) -> StoredFacts:
    versions = {
        decide.CUSTOMERS: {
            cid: StoredVersion(k.version.terminal, k.version.ts, k.version.rank, k.content_hash, k.version.settled)
            for cid, k in customers.items()
        }
    }
    return StoredFacts(BOTH, versions, customers)


def _updated(source: int, name: str) -> Incoming:
    obj = customer(name=name)
    return Incoming(Kind.CUSTOMER, obj, T0, source, event_type="customer.updated")


def test_a_same_second_tie_is_settled_by_stripe_s_present_state() -> None:
    kept = KeptCustomer(customer(name="Ada"), Version(False, T0, 1))
    batch = [_updated(0, "Ada King")]
    assert decide.unsettled_tie(batch, {"cus_A": kept}, {}) == 0
    with pytest.raises(decide.UnsettledTie):
        decide.decide(batch, _stored(cus_A=kept), Fetched(), settle_ties=True)

    now = customer(name="Ada Queen")
    assert decide.unsettled_tie(batch, {"cus_A": kept}, {0: now}) is None
    changes = decide.decide(batch, _stored(cus_A=kept), Fetched(current_customers={0: now}), settle_ties=True)
    [client] = changes.clients.rows
    assert client.record.name == "Ada Queen" and changes.clients.changed == {"cus_A": 0}

    # Without a Stripe key the content hash decides, the same whatever the order.
    plain = decide.decide(batch, _stored(cus_A=kept), Fetched(), settle_ties=False)
    newer = content_hash(batch[0].obj) > content_hash(kept.raw)
    assert bool(plain.customers.rows) == newer


def _hashing_above(name_of: str, above: str) -> str:
    """A name whose customer state hashes above `above`: a tie-break by hash would keep it."""
    return next(n for i in range(1000) if content_hash(customer(name=(n := f"{name_of} {i}"))) > above)


def test_stripe_s_answer_outranks_every_tied_state_whatever_their_hashes() -> None:
    now = customer(name="Ada Now")
    stale = customer(name=_hashing_above("Stale", content_hash(now)))
    kept = KeptCustomer(stale, Version(False, T0, 1))
    batch = [_updated(0, "Ada Tied")]
    changes = decide.decide(batch, _stored(cus_A=kept), Fetched(current_customers={0: now}), settle_ties=True)
    [row] = changes.customers.rows
    assert row.record.raw["name"] == "Ada Now" and row.version == Version(False, T0, 1, settled=True)
    [client] = changes.clients.rows
    assert client.record.name == "Ada Now" and client.version.settled

    # Settled, it is asked again on the next tie (Stripe may have moved on within that second),
    # and Stripe's later answer replaces its earlier one; an event of that second alone does not.
    settled = KeptCustomer(now, Version(False, T0, 1, settled=True))
    assert decide.unsettled_tie(batch, {"cus_A": settled}, {}) == 0
    moved = customer(name="Ada Moved")
    again = decide.decide(batch, _stored(cus_A=settled), Fetched(current_customers={0: moved}), settle_ties=True)
    assert [r.record.raw["name"] for r in again.customers.rows] == ["Ada Moved"]
    same = decide.decide(batch, _stored(cus_A=settled), Fetched(current_customers={0: now}), settle_ties=True)
    assert same.customers.rows == []

    # A later second still wins over a settled state.
    later = Incoming(Kind.CUSTOMER, customer(name="Ada Later"), T0 + 1, 0, event_type="customer.updated")
    after = decide.decide([later], _stored(cus_A=settled), Fetched(), settle_ties=True)
    assert [r.record.raw["name"] for r in after.customers.rows] == ["Ada Later"]


def test_a_customer_deleted_in_stripe_meanwhile_ends_deleted_and_later_ties_are_not_asked() -> None:
    kept = KeptCustomer(customer(name="Ada"), Version(False, T0, 1))
    batch = [_updated(0, "Ada King"), _updated(1, "Ada Queen")]
    gone = {"id": "cus_A", "object": "customer", "deleted": True}
    assert decide.unsettled_tie(batch, {"cus_A": kept}, {0: gone}) is None  # now final: no second tie
    changes = decide.decide(batch, _stored(cus_A=kept), Fetched(current_customers={0: gone}), settle_ties=True)
    [row] = changes.customers.rows
    assert row.version.terminal and row.record.deleted and row.record.email == "ada@example.com"


def test_a_bare_deletion_keeps_what_the_batch_already_knows() -> None:
    created = Incoming(Kind.CUSTOMER, customer(name="Ada"), T0, 0, event_type="customer.created")
    stub = {"id": "cus_A", "object": "customer", "deleted": True}
    deleted = Incoming(Kind.CUSTOMER, stub, T0 + 5, 1, deleted=True, event_type="customer.deleted")
    changes = decide.decide([created, deleted], _stored(), Fetched(), settle_ties=False)
    [client] = changes.clients.rows
    assert (client.record.name, client.record.deleted, client.source) == ("Ada", True, 1)


def test_health_is_announced_by_the_last_event_that_touched_it_and_payment_facts_fold() -> None:
    failed = Incoming(Kind.FAILED_PAYMENT, invoice("in_1", status="open"), T0, 0)
    paid = Incoming(Kind.PAID_INVOICE, invoice("in_1"), T0 + 5, 1)
    sub = Incoming(Kind.SUBSCRIPTION, subscription(status="past_due"), T0 + 9, 2)
    changes = decide.decide([failed, paid, sub], _stored(), Fetched(), settle_ties=False)
    assert changes.watched == {"cus_A": 2}
    [payment] = changes.payments
    assert (payment.failed, payment.paid) == (True, True)
    assert set(changes.contracts.changed) == {"in_1", "sub_A"}


def test_a_row_no_newer_than_the_stored_one_is_neither_written_nor_announced() -> None:
    sub = Incoming(Kind.SUBSCRIPTION, subscription(status="active"), T0, 0)
    first = decide.decide([sub], _stored(), Fetched(), settle_ties=False)
    [row] = first.subscriptions.rows
    stored = StoredFacts(
        BOTH, {decide.SUBSCRIPTIONS: {"sub_A": StoredVersion(True, T0 - 1, 7, "x")}}, {}
    )  # cancelled before: terminal outranks a later live status
    again = decide.decide([sub], stored, Fetched(), settle_ties=False)
    assert row.key == "sub_A" and again.subscriptions.rows == [] and again.subscriptions.changed == {}


def test_live_events_that_change_nothing_say_why() -> None:
    assert decide.from_event("customer.subscription.trial_will_end", subscription(), T0, 0) == (
        "trial reminders change no record"
    )
    assert decide.from_event("invoice.voided", invoice(), T0, 0) == "invoice.voided changes no customer-success record"

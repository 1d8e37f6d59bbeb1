"""The single-fact rules (`facts`), without a database: newer state wins, statuses only move
forward, and where the house claims it, any order or duplication of a batch's events leaves the
same stored facts."""

from __future__ import annotations

from dataclasses import replace
from datetime import date

from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from services.billing import facts
from services.billing.facts import FactsFold, MemoState, StoredCustomer, StoredFacts
from services.billing.holds import HoldRequest
from services.billing.payment_mapping import ChargeSeen, ErpCreditNote, ErpPayment, ErpRefund

PROPERTY = hsettings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
INVOICE, CUSTOMER, CHARGE, INTENT = "in_1", "cus_1", "ch_1", "pi_1"


def payment(source: str = "invoice_payment", priority: int = 3, **changes: object) -> ErpPayment:
    base = ErpPayment(
        stripe_payment_id="inpay_1",
        stripe_invoice_id=INVOICE,
        stripe_customer_id=CUSTOMER,
        charge_id=CHARGE,
        payment_intent_id=INTENT,
        amount=1000,
        currency="usd",
        paid_at=1_700_000_000 + priority,
        method="card",
        source=source,
        priority=priority,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


RANKS = {"pending": 0, "succeeded": 1, "failed": 2}


def refund(refund_id: str = "re_1", status: str = "succeeded", **changes: object) -> ErpRefund:
    base = ErpRefund(
        stripe_refund_id=refund_id,
        charge_id=CHARGE,
        payment_intent_id=None,
        stripe_invoice_id=None,
        stripe_customer_id=None,
        amount=300,
        currency="usd",
        status=status,
        status_rank=RANKS[status],
        created=1_700_000_100,
        reason="requested_by_customer",
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def note(status: str = "issued", created: int = 1_700_000_200, refund_ids: tuple[str, ...] = ()) -> ErpCreditNote:
    return ErpCreditNote(
        stripe_credit_note_id="cn_1",
        stripe_invoice_id=INVOICE,
        stripe_customer_id=CUSTOMER,
        number="CN-1",
        amount=300,
        currency="usd",
        status=status,
        status_rank={"issued": 0, "void": 1}[status],
        note_type="post_payment",
        created=created,
        memo_date=date(2023, 11, 14),
        refund_ids=refund_ids,
        out_of_band_amount=0,
        reason=None,
    )


#: A customer link: (customer, ERP customer, event created).
Fact = ErpPayment | ErpRefund | ErpCreditNote | HoldRequest | ChargeSeen | tuple[str, str, int]


def apply(fold: FactsFold, fact: Fact) -> None:
    if isinstance(fact, ErpPayment):
        fold.apply_payment(fact)
    elif isinstance(fact, ErpRefund):
        fold.apply_refund(fold.resolve_refund(fact))
    elif isinstance(fact, ErpCreditNote):
        fold.apply_credit_note(fact)
    elif isinstance(fact, HoldRequest):
        fold.place_hold(fact)
    elif isinstance(fact, ChargeSeen):
        fold.apply_charge(fact)
    else:
        customer_id, erp_id, created = fact
        fold.link_customer(customer_id, erp_id, created)


def folded(events: list[Fact], stored: StoredFacts | None = None) -> FactsFold:
    """The events folded in this order over the stored facts (none but the invoice's customer)."""
    fold = FactsFold(stored or StoredFacts(invoice_customers={INVOICE: CUSTOMER}))
    for event in events:
        apply(fold, event)
    return fold


def stored_after(events: list[Fact], stored: StoredFacts | None = None) -> StoredFacts:
    """Every stored fact after folding the events in this order."""
    fold = folded(events, stored)
    return StoredFacts(
        fold.payments,
        fold.refunds,
        fold.notes,
        fold.refund_memos,
        fold.covered,
        fold.invoice_customers,
        fold.holds,
        fold.customers,
        charges=fold.charges,
    )


def any_order(events: list[Fact]) -> st.SearchStrategy[list[Fact]]:
    """A permutation of the events with any of them delivered again."""
    return st.permutations(events).flatmap(
        lambda order: st.lists(st.sampled_from(order), max_size=4).flatmap(
            lambda again: st.permutations([*order, *again])
        )
    )


# -- the single-fact rules ----------------------------------------------------------------------------


def test_a_better_source_replaces_a_payment_and_a_worse_one_changes_nothing() -> None:
    charge = payment("charge", 2, stripe_invoice_id=None, amount=900)
    better = facts.merge_payment(charge, payment(currency="eur"))
    assert better == payment(currency="usd")  # the currency stays the first one's
    assert facts.merge_payment(payment(), charge) is None
    assert facts.merge_payment(payment(), payment(amount=5)) is None  # an equal source: the first stays


def test_a_better_payment_without_references_keeps_the_stored_ones() -> None:
    merged = facts.merge_payment(payment("charge", 2), payment(stripe_invoice_id=None, charge_id=None))
    assert merged is not None and merged.stripe_invoice_id == INVOICE and merged.charge_id == CHARGE


def test_a_refund_status_only_moves_forward_and_references_fill_once() -> None:
    stored = refund(status="succeeded")
    assert facts.merge_refund(stored, refund(status="pending")) is None
    failed = facts.merge_refund(stored, refund(status="failed", amount=1, reason=None))
    assert failed == refund(status="failed")  # amount is the first's; a missing reason keeps the stored one
    filled = facts.merge_refund(stored, refund(status="pending", stripe_invoice_id="in_2"))
    assert filled == refund(status="succeeded", stripe_invoice_id="in_2")
    assert facts.merge_refund(refund(stripe_invoice_id="in_2"), refund(stripe_invoice_id="in_3")) is None


def test_credit_notes_holds_and_customer_links_keep_the_newer() -> None:
    assert facts.note_wins(None, note())
    assert facts.note_wins((0, 1_700_000_200), note("void"))
    assert not facts.note_wins((1, 1_700_000_200), note("issued", created=1_800_000_000))
    assert not facts.note_wins((0, 1_700_000_200), note())
    final = HoldRequest(CUSTOMER, INVOICE, "final payment attempt failed")
    subscription = HoldRequest(CUSTOMER, INVOICE, "subscription unpaid", cause_rank=2)
    assert facts.hold_change(None, subscription) == "placed"
    assert facts.hold_change((2, subscription.reason), final) == "renamed"
    assert facts.hold_change((1, final.reason), subscription) is None
    assert facts.customer_link_moves(StoredCustomer("ERP-1", 10), "ERP-2", 10)
    assert not facts.customer_link_moves(StoredCustomer("ERP-1", 10), "ERP-2", 9)
    assert not facts.customer_link_moves(StoredCustomer("ERP-1", 10), "ERP-1", 11)


def test_a_refund_memo_is_written_only_when_it_says_something_new() -> None:
    fold = FactsFold(StoredFacts(refunds={"re_1": refund()}, refund_memos={"re_1": MemoState("issued", None, None)}))
    memo = fold.refund_memo("re_1")
    assert memo.status == "issued"
    assert facts.memo_write(MemoState("issued", None, None), memo) is None
    assert facts.memo_write(MemoState("issued", "in_9", "cus_9"), memo) is None  # references are only filled
    assert facts.memo_write(MemoState("void", None, None), memo) == MemoState("issued", None, None)


# -- a fold over stored facts -----------------------------------------------------------------------------


def test_a_payment_gives_its_invoice_to_a_refund_that_came_first_and_its_memo() -> None:
    stored = StoredFacts(
        refunds={"re_1": refund()},
        refund_memos={"re_1": MemoState("issued", None, None)},
        invoice_customers={INVOICE: CUSTOMER},
    )
    fold = FactsFold(stored)
    effects = fold.apply_payment(payment())
    assert fold.refunds["re_1"].stripe_invoice_id == INVOICE
    assert fold.refund_memos["re_1"] == MemoState("issued", INVOICE, CUSTOMER)
    assert fold.payments_changed == {"inpay_1"} and fold.refunds_changed == {"re_1"} and fold.memos_changed == {"re_1"}
    assert [type(e).__name__ for e in effects] == ["PaymentStored", "MemoSynced"]
    assert fold.apply_payment(payment()) == []  # again: nothing changes


def test_a_refund_takes_the_invoice_of_its_charges_first_payment() -> None:
    fold = FactsFold(StoredFacts(payments={"py_b": payment(stripe_payment_id="py_b", stripe_invoice_id="in_b")}))
    fold.apply_payment(payment(stripe_payment_id="py_a", stripe_invoice_id="in_a"))
    assert fold.resolve_refund(refund()).stripe_invoice_id == "in_a"
    assert fold.resolve_refund(refund(charge_id=None, payment_intent_id="pi_x")).stripe_invoice_id is None
    assert fold.resolve_refund(refund(stripe_invoice_id="in_own")).stripe_invoice_id == "in_own"


def test_a_fold_that_changes_nothing_writes_nothing() -> None:
    stored = StoredFacts(
        payments={"inpay_1": payment()},
        refunds={"re_1": refund(stripe_invoice_id=INVOICE)},
        refund_memos={"re_1": MemoState("issued", INVOICE, CUSTOMER)},
        invoice_customers={INVOICE: CUSTOMER},
        notes={"cn_1": (0, 1_700_000_200)},
        covered=set(),
        holds={(CUSTOMER, INVOICE): (1, "final")},
        customers={CUSTOMER: StoredCustomer("ERP-1", 5)},
    )
    fold = FactsFold(stored)
    for fact in (payment("charge", 2), refund(status="pending"), note(), HoldRequest(CUSTOMER, INVOICE, "later", 2)):
        apply(fold, fact)
    apply(fold, (CUSTOMER, "ERP-1", 6))
    changed = (fold.payments_changed, fold.refunds_changed, fold.memos_changed, fold.notes_changed)
    assert changed == (set(), set(), set(), {}) and not fold.holds_changed and not fold.customers_changed


# -- order and duplication --------------------------------------------------------------------------------

#: A payment as each source tells it (the best one names everything the others do), two refunds
#: of its charge moving through their statuses, a credit note that pays one of them out and is
#: then voided, two causes of one credit hold, and customer links of distinct ERP ids.
WORLD: list[Fact] = [
    payment("invoice", 1, stripe_payment_id="inpay_1", charge_id=None, payment_intent_id=None),
    payment("charge", 2, stripe_payment_id="inpay_1", payment_intent_id=None),
    payment("invoice_payment", 3, stripe_payment_id="inpay_1"),
    refund("re_1", "pending"),
    refund("re_1", "succeeded", stripe_customer_id=CUSTOMER),
    refund("re_2", "succeeded"),
    refund("re_2", "failed", stripe_invoice_id=INVOICE),
    note("issued", refund_ids=("re_1",)),
    note("void", refund_ids=("re_1",)),
    HoldRequest(CUSTOMER, INVOICE, "subscription unpaid", cause_rank=2),
    HoldRequest(CUSTOMER, INVOICE, "final payment attempt failed"),
    (CUSTOMER, "ERP-1", 10),
    (CUSTOMER, "ERP-2", 20),
    (CUSTOMER, "ERP-3", 30),
]


@PROPERTY
@given(order=any_order(WORLD))
def test_any_order_and_duplication_leaves_the_same_stored_facts(order: list[Fact]) -> None:
    assert stored_after(order) == stored_after(WORLD)


@PROPERTY
@given(order=any_order(WORLD))
def test_the_newest_state_wins_whatever_the_order(order: list[Fact]) -> None:
    after = stored_after(order)
    assert after.payments == {"inpay_1": payment()}
    assert after.refunds == {
        "re_1": refund("re_1", "succeeded", stripe_customer_id=CUSTOMER, stripe_invoice_id=INVOICE),
        "re_2": refund("re_2", "failed", stripe_invoice_id=INVOICE),
    }
    assert after.notes == {"cn_1": (1, 1_700_000_200)}
    assert after.refund_memos == {
        "re_1": MemoState("superseded", INVOICE, CUSTOMER),
        "re_2": MemoState("void", INVOICE, CUSTOMER),
    }
    assert after.covered == {"re_1"}
    assert after.holds == {(CUSTOMER, INVOICE): (1, "final payment attempt failed")}
    assert after.customers == {CUSTOMER: StoredCustomer("ERP-3", 30)}


@PROPERTY
@given(order=any_order(WORLD), split=st.integers(min_value=0, max_value=len(WORLD) + 4))
def test_a_batch_split_anywhere_leaves_what_one_batch_would(order: list[Fact], split: int) -> None:
    """The second batch folds over what the first one stored (what its load would read)."""
    assert stored_after(order[split:], stored_after(order[:split])) == stored_after(WORLD)


#: The current API shape: the invoice payment names only its intent, the succeeded charge only its
#: intent and id; a legacy payment keyed by its own charge keeps it; another intent is untouched.
CHARGES_WORLD: list[Fact] = [
    payment("invoice_payment", 3, stripe_payment_id="inpay_2", charge_id=None, payment_intent_id="pi_2"),
    ChargeSeen("ch_2", "pi_2", CUSTOMER, 1_700_000_050),
    payment("invoice_payment", 3, stripe_payment_id="inpay_3", charge_id=None, payment_intent_id="pi_3"),
    payment("charge", 2, stripe_payment_id="ch_4", charge_id="ch_4", payment_intent_id="pi_4"),
    ChargeSeen("ch_4", "pi_4", CUSTOMER, 1_700_000_060),
]


@PROPERTY
@given(order=any_order(CHARGES_WORLD), split=st.integers(min_value=0, max_value=len(CHARGES_WORLD) + 4))
def test_an_invoice_payment_takes_its_intents_charge_whichever_came_first(order: list[Fact], split: int) -> None:
    after = stored_after(order[split:], stored_after(order[:split]))
    assert after.payments == {
        "inpay_2": payment(
            "invoice_payment", 3, stripe_payment_id="inpay_2", charge_id="ch_2", payment_intent_id="pi_2"
        ),
        "inpay_3": payment("invoice_payment", 3, stripe_payment_id="inpay_3", charge_id=None, payment_intent_id="pi_3"),
        "ch_4": payment("charge", 2, stripe_payment_id="ch_4", charge_id="ch_4", payment_intent_id="pi_4"),
    }
    assert after.charges == {"pi_2": "ch_2", "pi_4": "ch_4"}


def test_a_charge_corrects_the_wrong_charge_of_an_invoice_payment_only() -> None:
    stored = StoredFacts(
        payments={
            "inpay_5": payment(stripe_payment_id="inpay_5", charge_id="ch_wrong", payment_intent_id="pi_5"),
            "ch_6": payment("charge", 2, stripe_payment_id="ch_6", charge_id="ch_6", payment_intent_id="pi_6"),
        }
    )
    fold = folded([ChargeSeen("ch_5", "pi_5", None, 1), ChargeSeen("ch_other", "pi_6", None, 1)], stored)
    assert fold.payments["inpay_5"].charge_id == "ch_5" and fold.payments["ch_6"].charge_id == "ch_6"
    assert fold.payments_changed == {"inpay_5"}

"""What a batch of Stripe objects changes in the customer-success view: the one decision, pure.

A batch (live events, or a page of imported objects) is applied in three steps: the handler
loads in bulk what the batch touches (`keys_of` says what), fetches from Stripe what the
payloads left out (`fetches_needed`, `unsettled_tie`), then `decide` folds the objects over the
stored facts in arrival order and returns the rows to write and the records to announce. Every
rule lives here:

- newest state wins: each row carries a version `(terminal, ts, rank, settled, content_hash)`
  (see mapping.py) and replaces the stored row only when strictly greater, so any order and any
  repetition of events, and any interleaving of import and live events, ends in the same rows
  (the store's upserts repeat the comparison, against a replica that wrote meanwhile);
- statuses only move forward: a terminal state (deleted customer, cancelled subscription, paid
  invoice) outranks every live one, and payment facts (failed, paid) only ever turn on;
- ties: two events of one kind in one Stripe second cannot be ordered from their payloads, so
  with a Stripe key the customer is taken as Stripe holds it now (the same whatever the arrival
  order) and that state is marked settled: it outranks every state of that second an event
  brought (whatever their content hashes), and a later answer from Stripe replaces an earlier
  one (`supersedes`); a later second still wins over it. Without a key, and for everything
  else, the content hash decides;
- a bare `customer.deleted` ({id, deleted}) keeps what is known of the customer;
- each changed client, product and contract, and each changed health, is announced once, in
  its newest state, by the event that brought that state (so the domain event continues that
  event's trace); health by the last event that touched what it is computed from.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, Protocol, TypeVar

from services.crm_export import mapping
from services.crm_export.crm_settings import INVOICE, SUBSCRIPTION, CrmSettings
from services.crm_export.records import (
    Client,
    Contract,
    InvoicePayment,
    Product,
    StripeCustomer,
    SubscriptionState,
    Version,
    content_hash,
)


class Kind(enum.Enum):
    CUSTOMER = "customer"
    PRODUCT = "product"
    PAID_INVOICE = "paid invoice"
    FAILED_PAYMENT = "failed payment"
    #: An imported invoice: what it says about payment health (see mapping.imported_invoice_payment).
    PAYMENT_FACTS = "payment facts"
    SUBSCRIPTION = "subscription"


@dataclass(frozen=True)
class Incoming:
    """One Stripe object to apply, versioned by `ts` (the event's `created`, or the moment the
    import read it); `source` numbers the event (or emit) that announces what it changes."""

    kind: Kind
    obj: Mapping[str, Any]
    ts: int
    source: int = 0
    deleted: bool = False
    event_type: str | None = None

    @property
    def id(self) -> str:
        return str(self.obj.get("id") or "")


CUSTOMER_EVENTS = frozenset({"customer.created", "customer.updated", "customer.deleted"})
PRODUCT_EVENTS = frozenset({"product.created", "product.updated", "product.deleted"})
PAID_EVENTS = frozenset({"invoice.paid", "invoice.payment_succeeded"})
SUBSCRIPTION_PREFIX = "customer.subscription."


def from_event(event_type: str, obj: Mapping[str, Any], created: int, source: int) -> Incoming | str:
    """A live event as an object to apply, or why it changes no record."""
    if event_type.startswith(SUBSCRIPTION_PREFIX):
        if event_type == "customer.subscription.trial_will_end":
            return "trial reminders change no record"
        deleted = event_type.endswith(".deleted")
        return Incoming(Kind.SUBSCRIPTION, obj, created, source, deleted=deleted)
    if event_type in CUSTOMER_EVENTS:
        deleted = event_type == "customer.deleted"
        return Incoming(Kind.CUSTOMER, obj, created, source, deleted=deleted, event_type=event_type)
    if event_type in PRODUCT_EVENTS:
        deleted = event_type == "product.deleted"
        return Incoming(Kind.PRODUCT, obj, created, source, deleted=deleted, event_type=event_type)
    if event_type in PAID_EVENTS:
        return Incoming(Kind.PAID_INVOICE, obj, created, source)
    if event_type == "invoice.payment_failed":
        return Incoming(Kind.FAILED_PAYMENT, obj, created, source)
    return f"{event_type} changes no customer-success record"


# ---------------------------------------------------------------- what to load


#: The tables of version-guarded rows (their names in the store).
CUSTOMERS = "stripe_customers"
CLIENTS = "clients"
PRODUCTS = "products"
CONTRACTS = "contracts"
SUBSCRIPTIONS = "subscriptions"
GUARDED_TABLES = (CUSTOMERS, CLIENTS, PRODUCTS, CONTRACTS, SUBSCRIPTIONS)


@dataclass(frozen=True)
class BatchKeys:
    """The stored rows a batch may replace, by table, and the customers whose health it may change."""

    rows: Mapping[str, frozenset[str]]
    health: frozenset[str]


def keys_of(incoming: Sequence[Incoming], settings: CrmSettings) -> BatchKeys:
    rows: dict[str, set[str]] = {table: set() for table in GUARDED_TABLES}
    health: set[str] = set()
    for inc in incoming:
        if inc.kind is Kind.CUSTOMER:
            rows[CUSTOMERS].add(inc.id)
            if settings.pulls_customers:
                rows[CLIENTS].add(inc.id)
        elif inc.kind is Kind.PRODUCT:
            rows[PRODUCTS].add(inc.id)
        elif inc.kind is Kind.SUBSCRIPTION:
            rows[SUBSCRIPTIONS].add(inc.id)
            health.add(mapping.customer_id_of(inc.obj))
            if SUBSCRIPTION in settings.contract_sources:
                rows[CONTRACTS].add(inc.id)
        else:
            health.add(mapping.customer_id_of(inc.obj))
            if inc.kind is Kind.PAID_INVOICE and INVOICE in settings.contract_sources:
                rows[CONTRACTS].add(inc.id)
    return BatchKeys({table: frozenset(keys) for table, keys in rows.items()}, frozenset(health))


class ListKind(enum.Enum):
    INVOICE_LINES = "invoice lines"
    SUBSCRIPTION_ITEMS = "subscription items"


@dataclass(frozen=True)
class Fetch:
    """A list Stripe truncated to its first page in the payload, to fetch whole."""

    index: int
    what: ListKind
    object_id: str


def fetches_needed(incoming: Sequence[Incoming], settings: CrmSettings) -> list[Fetch]:
    """The truncated lists the batch's contracts need (an invoice's lines, a subscription's items):
    recording a contract short would lose entries 11 onwards."""
    out = []
    for index, inc in enumerate(incoming):
        if inc.kind is Kind.PAID_INVOICE and INVOICE in settings.contract_sources:
            if mapping.invoice_is_paid(inc.obj) and mapping.invoice_lines(inc.obj)[1]:
                out.append(Fetch(index, ListKind.INVOICE_LINES, inc.id))
        elif (
            inc.kind is Kind.SUBSCRIPTION
            and SUBSCRIPTION in settings.contract_sources
            and mapping.subscription_items(inc.obj)[1]
        ):
            out.append(Fetch(index, ListKind.SUBSCRIPTION_ITEMS, mapping.subscription_state(inc.obj).id))
    return out


# ---------------------------------------------------------------- stored facts


@dataclass(frozen=True)
class StoredVersion:
    """A stored row's version; None parts (a row not written by a guarded upsert) never compare
    lower than anything, as SQL's NULL comparison never lets the guard pass."""

    terminal: bool | None
    ts: int | None
    rank: int | None
    content_hash: str | None
    settled: bool | None = False


@dataclass(frozen=True)
class KeptCustomer:
    """A Stripe customer as Stripe last sent it, and that state's version."""

    raw: dict[str, Any]
    version: Version

    @functools.cached_property
    def content_hash(self) -> str:
        return content_hash(self.raw)


@dataclass(frozen=True)
class StoredFacts:
    """What the store holds of the records a batch touches, read before the batch is decided."""

    settings: CrmSettings
    versions: Mapping[str, Mapping[str, StoredVersion]]
    customers: Mapping[str, KeptCustomer]


@dataclass(frozen=True)
class Fetched:
    """What Stripe answered in the load step, by position in the batch."""

    lists: Mapping[int, list[dict[str, Any]]] = field(default_factory=dict)
    current_customers: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)


# ---------------------------------------------------------------- ties


def is_tie(kept: Version, version: Version) -> bool:
    """Two states of one customer that cannot be ordered: same second, same kind, neither final.

    A kept state Stripe settled still ties with an event of its second: Stripe may have changed
    the customer again within that second after it answered, so it is asked again."""
    return (kept.terminal, kept.ts, kept.rank) == (version.terminal, version.ts, version.rank) and not version.terminal


def _customer_version(inc: Incoming) -> Version:
    return mapping.customer_version(inc.obj, inc.ts, deleted=inc.deleted, event_type=inc.event_type)


def unsettled_tie(
    incoming: Sequence[Incoming], kept: Mapping[str, KeptCustomer], current: Mapping[int, Mapping[str, Any]]
) -> int | None:
    """The position of the first customer event that ties with the state kept before it and has
    no answer from Stripe yet (None when every tie is settled).

    Follows only the versions of `decide`'s fold: the state kept after an event is the newer of
    the two, and a tie settled by a customer Stripe has since deleted becomes final.
    """
    versions = {customer_id: k.version for customer_id, k in kept.items()}
    for index, inc in enumerate(incoming):
        if inc.kind is not Kind.CUSTOMER:
            continue
        version = _customer_version(inc)
        before = versions.get(inc.id)
        if before is not None and is_tie(before, version):
            if index not in current:
                return index
            version = replace(version, terminal=version.terminal or bool(current[index].get("deleted")), settled=True)
        if before is None or _order(version) > _order(before):
            versions[inc.id] = version
    return None


def _order(version: Version) -> tuple[bool, int, int, bool]:
    return (version.terminal, version.ts, version.rank, version.settled)


#: A row's full order: (terminal, ts, rank, settled, content hash).
Order = tuple[bool, int, int, bool, str]


def supersedes(new: Order, old: Order) -> bool:
    """Whether a row replaces another: strictly newer, or both settled by Stripe for the same
    version with different content (Stripe's later answer is its more recent state; the store's
    guard says the same in SQL, see store._GUARD)."""
    if new[3] and old[3] and new[:4] == old[:4]:
        return new[4] != old[4]
    return new > old


# ---------------------------------------------------------------- the decision


R = TypeVar("R")


@dataclass(frozen=True)
class Guarded(Generic[R]):
    """One row for a version-guarded upsert: its key, version and content hash, the record it
    holds (and for products Stripe's object as sent), and the source that announces it."""

    key: str
    version: Version
    content: str
    record: R
    source: int
    raw: Mapping[str, Any] | None = None

    @property
    def order(self) -> Order:
        return (self.version.terminal, self.version.ts, self.version.rank, self.version.settled, self.content)


@dataclass(frozen=True)
class TableChanges(Generic[R]):
    """One table's rows to write (only those newer than the stored ones, in key order) and the
    keys whose content really changed, each with the source that announces it."""

    rows: list[Guarded[R]]
    changed: Mapping[str, int]

    def records(self) -> dict[str, R]:
        return {row.key: row.record for row in self.rows}


@dataclass(frozen=True)
class BatchChanges:
    """What the batch changes; `watched`: the customers whose health may change, each with the
    source that last touched what it is computed from."""

    customers: TableChanges[StripeCustomer]
    clients: TableChanges[Client]
    products: TableChanges[Product]
    contracts: TableChanges[Contract]
    subscriptions: TableChanges[SubscriptionState]
    payments: list[InvoicePayment]
    watched: Mapping[str, int]


class UnsettledTie(Exception):
    """`decide` met a tie the load step should have settled with Stripe (see `unsettled_tie`)."""


def decide(incoming: Sequence[Incoming], stored: StoredFacts, fetched: Fetched, *, settle_ties: bool) -> BatchChanges:
    """The batch folded over the stored facts, in arrival order."""
    settings = stored.settings
    kept = dict(stored.customers)
    customers: list[Guarded[StripeCustomer]] = []
    clients: list[Guarded[Client]] = []
    products: list[Guarded[Product]] = []
    contracts: list[Guarded[Contract]] = []
    subscriptions: list[Guarded[SubscriptionState]] = []
    payments: list[InvoicePayment] = []
    watched: dict[str, int] = {}
    for index, inc in enumerate(incoming):
        obj, ts, source = inc.obj, inc.ts, inc.source
        if inc.kind is Kind.CUSTOMER:
            current = fetched.current_customers.get(index) if settle_ties else None
            row, client_obj, deleted = _customer(inc, kept.get(inc.id), current, settle_ties)
            k = kept.get(inc.id)
            if k is None or supersedes(row.order, (*_order(k.version), k.content_hash)):
                kept[inc.id] = KeptCustomer(row.record.raw, row.version)
            customers.append(row)
            if settings.pulls_customers:
                client = mapping.client_from_customer(client_obj, settings, deleted=deleted)
                clients.append(_row(client.stripe_customer_id, row.version, client, source))
        elif inc.kind is Kind.PRODUCT:
            product = mapping.product_from_stripe(obj, settings, deleted=inc.deleted)
            version = mapping.product_version(obj, ts, deleted=inc.deleted, event_type=inc.event_type)
            products.append(_row(product.stripe_product_id, version, product, source, dict(obj)))
        elif inc.kind is Kind.PAID_INVOICE:
            if not mapping.invoice_is_paid(obj):
                continue
            watched[mapping.customer_id_of(obj)] = source
            payments.append(mapping.invoice_payment(obj, failed=False))
            if INVOICE in settings.contract_sources:
                lines = fetched.lists[index] if index in fetched.lists else mapping.invoice_lines(obj)[0]
                contract = mapping.contract_from_invoice(obj, lines)
                version = mapping.invoice_contract_version(ts)
                contracts.append(_row(contract.contract_id, version, contract, source))
        elif inc.kind is Kind.FAILED_PAYMENT or inc.kind is Kind.PAYMENT_FACTS:
            payment = (
                mapping.invoice_payment(obj, failed=True)
                if inc.kind is Kind.FAILED_PAYMENT
                else mapping.imported_invoice_payment(obj)
            )
            if payment is None:
                continue
            watched[payment.stripe_customer_id] = source
            payments.append(payment)
        else:
            state = mapping.subscription_state(obj, deleted=inc.deleted)
            version = mapping.subscription_version(obj, ts, deleted=inc.deleted)
            watched[state.stripe_customer_id] = source
            content = content_hash([state.stripe_customer_id, state.status])
            subscriptions.append(Guarded(state.id, version, content, state, source))
            if SUBSCRIPTION in settings.contract_sources:
                items = fetched.lists[index] if index in fetched.lists else mapping.subscription_items(obj)[0]
                contract = mapping.contract_from_subscription({**obj, "status": state.status}, items)
                contracts.append(_row(contract.contract_id, version, contract, source))
    versions = stored.versions
    return BatchChanges(
        customers=_applied(customers, versions.get(CUSTOMERS, {})),
        clients=_applied(clients, versions.get(CLIENTS, {})),
        products=_applied(products, versions.get(PRODUCTS, {})),
        contracts=_applied(contracts, versions.get(CONTRACTS, {})),
        subscriptions=_applied(subscriptions, versions.get(SUBSCRIPTIONS, {})),
        payments=fold_payments(payments),
        watched=watched,
    )


def _customer(
    inc: Incoming, kept: KeptCustomer | None, current: Mapping[str, Any] | None, settle_ties: bool
) -> tuple[Guarded[StripeCustomer], Mapping[str, Any], bool]:
    """The customer's row after `inc`, the object its client is mapped from, and whether it is deleted."""
    obj, deleted = inc.obj, inc.deleted
    if deleted and "email" not in obj and kept is not None:
        # A bare deletion stub: keep what is known about the customer, flip it to deleted.
        obj = {**kept.raw, **obj}
    version = mapping.customer_version(obj, inc.ts, deleted=deleted, event_type=inc.event_type)
    if settle_ties and kept is not None and is_tie(kept.version, version):
        if current is None:
            raise UnsettledTie(f"{inc.id}: a same-second tie reached the decision without Stripe's answer")
        obj = current
        if obj.get("deleted"):  # deleted in Stripe meanwhile: keep what is known, mark it deleted
            deleted = True
            obj = {**kept.raw, **obj}
            version = mapping.customer_version(obj, inc.ts, deleted=True, event_type=inc.event_type)
        version = replace(version, settled=True)
    customer = mapping.stripe_customer(obj, deleted=deleted)
    return Guarded(customer.id, version, content_hash(customer.raw), customer, inc.source), obj, deleted


class _HasContentHash(Protocol):
    def content_hash(self) -> str: ...


Hashed = TypeVar("Hashed", bound=_HasContentHash)


def _row(
    key: str, version: Version, record: Hashed, source: int, raw: Mapping[str, Any] | None = None
) -> Guarded[Hashed]:
    return Guarded(key, version, record.content_hash(), record, source, raw)


def newest(rows: Iterable[Guarded[R]]) -> dict[str, Guarded[R]]:
    """Per key, the row the guard keeps when the rows are written in this order (the first of
    equals: later equal rows are not newer; of two states Stripe settled for one version, the
    later answer)."""
    out: dict[str, Guarded[R]] = {}
    for row in rows:
        kept = out.get(row.key)
        if kept is None or supersedes(row.order, kept.order):
            out[row.key] = row
    return out


def _newer(row: Guarded[Any], stored: StoredVersion | None) -> bool:
    if stored is None:
        return True
    if (
        stored.terminal is None
        or stored.ts is None
        or stored.rank is None
        or stored.settled is None
        or stored.content_hash is None
    ):
        return False  # SQL compares a NULL version as unknown: the guard never passes
    return supersedes(row.order, (stored.terminal, stored.ts, stored.rank, stored.settled, stored.content_hash))


def _applied(candidates: Iterable[Guarded[R]], stored: Mapping[str, StoredVersion]) -> TableChanges[R]:
    """The newest row of each key where it is newer than the stored one, in key order, and the
    keys whose content that changes (with the source announcing each)."""
    wanted = newest(candidates)
    applied = [row for key, row in sorted(wanted.items()) if _newer(row, stored.get(key))]
    changed = {
        row.key: row.source for row in applied if row.key not in stored or stored[row.key].content_hash != row.content
    }
    return TableChanges(applied, changed)


def fold_payments(payments: Iterable[InvoicePayment]) -> list[InvoicePayment]:
    """Payment facts only accumulate (failed once, paid once): one per invoice, folded by OR, in
    invoice order."""
    folded: dict[str, InvoicePayment] = {}
    for p in payments:
        kept = folded.get(p.invoice_id)
        if kept is not None:
            p = replace(kept, failed=kept.failed or p.failed, paid=kept.paid or p.paid)
        folded[p.invoice_id] = p
    return [p for _, p in sorted(folded.items())]


def announced_products(changes: BatchChanges) -> list[tuple[Product, int]]:
    """Changed products in id order, each with the source announcing it."""
    products = changes.products.records()
    return [(products[key], source) for key, source in sorted(changes.products.changed.items())]

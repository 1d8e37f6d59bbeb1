"""The records of the customer-success view (clients, products, contracts, and the Stripe facts
health is computed from) and their version keys: plain frozen values, no I/O.

A version `(terminal, ts, rank, settled)` plus the record's content hash orders the states of one record
(see mapping.py for how each kind gets its version); `content_hash` is what the store compares,
so it must stay byte-for-byte what `dataclasses.asdict` gave when rows were first written.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, is_dataclass
from typing import Any


@dataclass(frozen=True)
class Version:
    terminal: bool
    ts: int
    rank: int = 0
    #: The state was fetched from Stripe to settle a same-second tie: it is what Stripe held
    #: after every event of that second, so it outranks whatever those events carried (their
    #: content hashes only order them arbitrarily); a later second still outranks it.
    settled: bool = False


@dataclass(frozen=True)
class Address:
    line1: str = ""
    line2: str = ""
    city: str = ""
    state: str = ""
    postal_code: str = ""
    country: str = ""


@dataclass(frozen=True)
class StripeCustomer:
    """What the service keeps of every Stripe customer, whatever the sync direction."""

    id: str
    email: str
    deleted: bool
    raw: dict[str, Any]


@dataclass(frozen=True)
class Client:
    stripe_customer_id: str
    name: str
    email: str
    address: Address
    custom_fields: dict[str, str]
    deleted: bool

    def content_hash(self) -> str:
        return content_hash(plain(self))


@dataclass(frozen=True)
class Product:
    stripe_product_id: str
    name: str
    description: str
    active: bool
    custom_fields: dict[str, str]
    deleted: bool

    def content_hash(self) -> str:
        return content_hash(plain(self))


@dataclass(frozen=True)
class ContractLine:
    stripe_line_id: str
    stripe_product_id: str
    description: str
    quantity: int
    start_date: str
    end_date: str
    amount_minor: int
    discount_minor: int
    currency: str


@dataclass(frozen=True)
class Contract:
    contract_id: str
    source: str
    stripe_customer_id: str
    customer_email: str
    status: str
    currency: str
    total_minor: int
    discount_minor: int
    start_date: str
    end_date: str
    created: int
    canceled_at: int | None
    stripe_subscription_id: str
    lines: tuple[ContractLine, ...] = field(default=())

    def content_hash(self) -> str:
        return content_hash(plain(self))


@dataclass(frozen=True)
class SubscriptionState:
    """A subscription's status, kept for health signals whatever the contract source."""

    id: str
    stripe_customer_id: str
    status: str


@dataclass(frozen=True)
class InvoicePayment:
    """Payment facts about one invoice; both flags only ever turn on, so any order agrees."""

    invoice_id: str
    stripe_customer_id: str
    failed: bool
    paid: bool


def content_hash(data: object) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def plain(value: Any) -> Any:
    """`dataclasses.asdict` for these frozen records, less the deep copy and the field lookups it
    makes on every value (7.6 % of the service's CPU per event before): the same dicts, lists and
    values, so content hashes, which order versions in the store, are unchanged."""
    if is_dataclass(value) and not isinstance(value, type):
        return {name: plain(item) for name, item in vars(value).items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(item) for item in value)
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    return value

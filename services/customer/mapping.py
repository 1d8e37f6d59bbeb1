"""Stripe customer -> ERP customer record, and the rules that need no database: the version
key that makes event order irrelevant, id and email formats, and the CSV mapping data sheet.

Pure on purpose: no I/O and no clock, so every rule here is unit-tested in microseconds and the
store and handlers cannot disagree about what a field means.

Both payload shapes are accepted. Before API 2019-10-17 the balance was `account_balance`, and
customers of that era (and localstripe, which still speaks it) carry `sources` and
`subscriptions` lists; current ("basil" and later) customers carry `balance`. Everything else
the ERP keeps has the same name in both.
"""

from __future__ import annotations

import csv
import enum
import io
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from services.common.grpc_input import quote, string_problem

#: Event types this service consumes, ranked so that at one Stripe second a later step of the
#: lifecycle beats an earlier one: created < updated < deleted (a deleted state always wins).
EVENT_RANKS: dict[str, int] = {"customer.created": 0, "customer.updated": 1, "customer.deleted": 2}

STRIPE_CUSTOMER_ID = re.compile(r"^cus_[A-Za-z0-9]{1,250}$")
#: ERP ids assigned here are CUST-<6+ digits>; imported ones may be any NetSuite-style entity id.
ERP_CUSTOMER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,63}$")
ASSIGNED_ERP_ID = re.compile(r"^CUST-(\d{6,})$")
#: Deliberately loose: the ERP only needs something Stripe will accept, not RFC 5322.
EMAIL = re.compile(r"^[^@\s,;]+@[^@\s,;]+\.[^@\s,;]+$")
MAX_EMAIL_LENGTH = 512


def format_erp_id(number: int) -> str:
    return f"CUST-{number:06d}"


def assigned_number(erp_customer_id: str) -> int | None:
    """The sequence number inside an id of the assigned form, so imports can move the sequence past it."""
    match = ASSIGNED_ERP_ID.match(erp_customer_id)
    return int(match.group(1)) if match else None


def normalize_email(email: str | None) -> str | None:
    """The form emails are compared in (case-insensitively, as mail providers do in practice)."""
    if email is None:
        return None
    stripped = email.strip()
    return stripped.lower() if stripped else None


def email_problem(email: str) -> str | None:
    if len(email) > MAX_EMAIL_LENGTH:
        return f"longer than {MAX_EMAIL_LENGTH} characters"
    if not EMAIL.match(email.strip()):
        return "not an email address (expected name@example.com)"
    return None


@dataclass(frozen=True, order=True)
class Version:
    """Which Stripe state is newer: the event's `created`, then the lifecycle rank."""

    created: int
    rank: int


class Decision(enum.Enum):
    APPLY = "applied"
    STALE = "stale"
    #: Same second and same rank, and a Stripe API key is configured: ask Stripe.
    TIE_REFETCH = "tie_refetched"
    #: Same second and same rank without an API key: the later-consumed event wins.
    TIE_LATER_WINS = "tie_later_wins"


def decide(stored: Version | None, incoming: Version, *, can_refetch: bool) -> Decision:
    """Whether an incoming event's state replaces the stored one.

    Stripe's `created` has one-second resolution, so two events can tie. Ties between lifecycle
    steps are settled by rank (created < updated < deleted). Ties of equal rank (two updates in
    one second) are settled by Stripe itself when an API key is configured: the current object
    is fetched and applied, which every arrival order agrees on. Without a key, the
    later-consumed event wins: the one case where arrival order can show through.
    """
    if stored is None or incoming > stored:
        return Decision.APPLY
    if incoming < stored:
        return Decision.STALE
    return Decision.TIE_REFETCH if can_refetch else Decision.TIE_LATER_WINS


@dataclass(frozen=True)
class Address:
    line1: str | None = None
    line2: str | None = None
    city: str | None = None
    state: str | None = None
    postal_code: str | None = None
    country: str | None = None

    def as_dict(self) -> dict[str, str | None]:
        return {
            "line1": self.line1,
            "line2": self.line2,
            "city": self.city,
            "state": self.state,
            "postal_code": self.postal_code,
            "country": self.country,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Address | None:
        if not data:
            return None
        address = cls(**{k: _text(data.get(k)) for k in ("line1", "line2", "city", "state", "postal_code", "country")})
        return None if address == cls() else address


@dataclass(frozen=True)
class StripeCustomerState:
    """What the ERP keeps of one Stripe customer, as one event (or a re-fetch) tells it."""

    stripe_customer_id: str
    email: str | None
    name: str | None
    phone: str | None
    description: str | None
    address: Address | None
    currency: str | None
    balance_minor: int
    delinquent: bool
    metadata: dict[str, str]
    livemode: bool
    stripe_created: int | None
    deleted: bool

    @property
    def email_lower(self) -> str | None:
        return normalize_email(self.email)


class MappingError(ValueError):
    """The Stripe object cannot be mapped at all (not a customer): retrying cannot help."""


def payload_shape(obj: dict[str, Any]) -> str:
    """'legacy' for pre-2019-10-17 customers (account_balance, sources), 'current' otherwise."""
    if "account_balance" in obj and "balance" not in obj:
        return "legacy"
    if "sources" in obj and "balance" not in obj:
        return "legacy"
    return "current"


def customer_from_stripe(obj: dict[str, Any], *, deleted: bool = False) -> StripeCustomerState:
    """Map a Stripe customer object (either shape) to the state the ERP keeps."""
    if obj.get("object") not in ("customer", None):
        raise MappingError(f"expected a customer object, got {obj.get('object')!r}")
    stripe_id = obj.get("id")
    if not isinstance(stripe_id, str) or not STRIPE_CUSTOMER_ID.match(stripe_id):
        raise MappingError("customer id missing or not of the form cus_…")
    balance = obj.get("account_balance") if payload_shape(obj) == "legacy" else obj.get("balance")
    if balance is None:
        balance = 0
    if not isinstance(balance, int) or isinstance(balance, bool):
        raise MappingError("customer balance is not an integer number of minor units")
    currency = _text(obj.get("currency"))
    metadata_raw = obj.get("metadata") or {}
    if not isinstance(metadata_raw, dict):
        raise MappingError("customer metadata is not an object")
    created = obj.get("created")
    return StripeCustomerState(
        stripe_customer_id=stripe_id,
        email=_text(obj.get("email")),
        name=_text(obj.get("name")),
        phone=_text(obj.get("phone")),
        description=_text(obj.get("description")),
        address=Address.from_dict(obj.get("address") if isinstance(obj.get("address"), dict) else None),
        currency=currency.lower() if currency else None,
        balance_minor=balance,
        delinquent=bool(obj.get("delinquent") or False),
        metadata={str(k): "" if v is None else str(v) for k, v in metadata_raw.items()},
        livemode=bool(obj.get("livemode") or False),
        stripe_created=created if isinstance(created, int) and not isinstance(created, bool) else None,
        deleted=deleted or bool(obj.get("deleted") or False),
    )


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text if text != "" else None


@dataclass(frozen=True)
class CustomerRecord:
    """The ERP customer record as stored."""

    erp_customer_id: str
    stripe_customer_id: str | None
    email: str | None
    name: str | None
    phone: str | None
    description: str | None
    address: Address | None
    currency: str | None
    balance_minor: int
    delinquent: bool
    metadata: dict[str, str]
    livemode: bool
    active: bool
    deleted_at: datetime | None
    stripe_created: datetime | None
    origin: str
    version: Version | None
    last_event_id: str | None
    created_at: datetime
    updated_at: datetime

    def state(self) -> StripeCustomerState | None:
        """The Stripe-side state held, to compare with an incoming one (None if unlinked)."""
        if self.stripe_customer_id is None:
            return None
        return StripeCustomerState(
            stripe_customer_id=self.stripe_customer_id,
            email=self.email,
            name=self.name,
            phone=self.phone,
            description=self.description,
            address=self.address,
            currency=self.currency,
            balance_minor=self.balance_minor,
            delinquent=self.delinquent,
            metadata=dict(self.metadata),
            livemode=self.livemode,
            stripe_created=int(self.stripe_created.timestamp()) if self.stripe_created else None,
            deleted=not self.active,
        )


def unix_to_datetime(value: int | None) -> datetime | None:
    return datetime.fromtimestamp(value, tz=UTC) if value is not None else None


# --- record transitions ---------------------------------------------------------------------
# The handler folds a batch's events over the records in memory (under the records' row locks)
# and the store writes the results in a few statements; these two functions are the whole of
# what an applied event does to a record.


def new_record(
    erp_customer_id: str,
    state: StripeCustomerState,
    version: Version,
    event_id: str,
    event_time: datetime,
    now: datetime,
) -> CustomerRecord:
    """The record a Stripe event creates (`store.insert_records` writes it)."""
    return CustomerRecord(
        erp_customer_id=erp_customer_id,
        stripe_customer_id=state.stripe_customer_id,
        email=state.email,
        name=state.name,
        phone=state.phone,
        description=state.description,
        address=state.address,
        currency=state.currency,
        balance_minor=state.balance_minor,
        delinquent=state.delinquent,
        metadata=dict(state.metadata),
        livemode=state.livemode,
        active=not state.deleted,
        deleted_at=event_time if state.deleted else None,
        stripe_created=unix_to_datetime(state.stripe_created),
        origin="stripe_event",
        version=version,
        last_event_id=event_id,
        created_at=now,
        updated_at=now,
    )


def applied_record(
    record: CustomerRecord,
    state: StripeCustomerState,
    version: Version,
    event_id: str,
    event_time: datetime,
    now: datetime,
) -> CustomerRecord:
    """The record after `state` passed the version rules (`decide`; `store.update_records` writes it):
    `active` only turns false, `deleted_at` keeps the earliest deletion seen."""
    deleted_at = record.deleted_at
    if state.deleted:
        deleted_at = min(deleted_at, event_time) if deleted_at is not None else event_time
    return CustomerRecord(
        erp_customer_id=record.erp_customer_id,
        stripe_customer_id=record.stripe_customer_id,
        email=state.email,
        name=state.name,
        phone=state.phone,
        description=state.description,
        address=state.address,
        currency=state.currency,
        balance_minor=state.balance_minor,
        delinquent=state.delinquent,
        metadata=dict(state.metadata),
        livemode=state.livemode,
        active=record.active and not state.deleted,
        deleted_at=deleted_at,
        stripe_created=unix_to_datetime(state.stripe_created) or record.stripe_created,
        origin=record.origin,
        version=version,
        last_event_id=event_id,
        created_at=record.created_at,
        updated_at=now,
    )


# --- the CSV mapping data sheet ------------------------------------------------------------

HEADER = ("stripe_customer_id", "erp_customer_id", "email")


@dataclass(frozen=True)
class MappingRow:
    line: int
    stripe_customer_id: str
    erp_customer_id: str
    email: str | None


@dataclass(frozen=True, order=True)
class ImportProblem:
    line: int
    field: str
    reason: str


@dataclass
class ParsedSheet:
    rows: list[MappingRow] = field(default_factory=list)
    problems: list[ImportProblem] = field(default_factory=list)
    #: Data lines read (blank lines and the header excluded), good or bad.
    data_rows: int = 0


def parse_mapping_csv(text: str) -> ParsedSheet:
    """Check every row of a `stripe_customer_id,erp_customer_id[,email]` sheet.

    Every problem is collected (not just the first) with its 1-based file line, so an operator
    fixes the sheet in one pass. A first line naming the columns is skipped.
    """
    sheet = ParsedSheet()
    seen_stripe: dict[str, int] = {}
    seen_erp: dict[str, int] = {}
    reader = csv.reader(io.StringIO(text, newline=""))
    records = iter(reader)
    while True:
        try:
            record = next(records)
        except StopIteration:
            break
        except csv.Error as exc:  # e.g. a cell over the csv module's field size limit
            sheet.problems.append(ImportProblem(reader.line_num, "row", f"not readable as CSV: {exc}"))
            break
        line = reader.line_num
        if not record or all(not cell.strip() for cell in record):
            continue
        cells = [cell.strip() for cell in record]
        unstorable = next(((i, p) for i, c in enumerate(cells) if (p := string_problem(c))), None)
        if unstorable is not None:
            sheet.data_rows += 1
            column = HEADER[unstorable[0]] if unstorable[0] < len(HEADER) else "row"
            sheet.problems.append(ImportProblem(line, column, unstorable[1]))
            continue
        if line == 1 and cells[0].lower() == HEADER[0]:
            if [c.lower() for c in cells] not in (list(HEADER[:2]), list(HEADER)):
                sheet.problems.append(
                    ImportProblem(line, "row", "header must be stripe_customer_id,erp_customer_id[,email]")
                )
            continue
        sheet.data_rows += 1
        if len(cells) not in (2, 3):
            sheet.problems.append(
                ImportProblem(
                    line,
                    "row",
                    f"expected 2 or 3 columns (stripe_customer_id,erp_customer_id[,email]), got {len(cells)}",
                )
            )
            continue
        stripe_id, erp_id = cells[0], cells[1]
        email = cells[2] if len(cells) == 3 and cells[2] else None
        problems_before = len(sheet.problems)
        if not STRIPE_CUSTOMER_ID.match(stripe_id):
            sheet.problems.append(
                ImportProblem(line, "stripe_customer_id", f"{quote(stripe_id)} is not a Stripe customer id (cus_…)")
            )
        elif stripe_id in seen_stripe:
            sheet.problems.append(
                ImportProblem(line, "stripe_customer_id", f"{stripe_id} also appears on line {seen_stripe[stripe_id]}")
            )
        else:
            seen_stripe[stripe_id] = line
        if not ERP_CUSTOMER_ID.match(erp_id):
            sheet.problems.append(
                ImportProblem(
                    line,
                    "erp_customer_id",
                    f"{quote(erp_id)} is not an ERP customer id (1-64 letters, digits, - _ . /)",
                )
            )
        elif erp_id in seen_erp:
            sheet.problems.append(
                ImportProblem(line, "erp_customer_id", f"{erp_id} also appears on line {seen_erp[erp_id]}")
            )
        else:
            seen_erp[erp_id] = line
        if email is not None:
            reason = email_problem(email)
            if reason:
                sheet.problems.append(ImportProblem(line, "email", reason))
        if len(sheet.problems) == problems_before:
            sheet.rows.append(MappingRow(line, stripe_id, erp_id, email))
    return sheet

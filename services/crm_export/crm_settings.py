"""The service's settings (contract sources, sync direction, custom-field mappings) and their
validation: pure, so the API can refuse a bad update before anything is written.

The known Stripe fields are the union of the current and the legacy customer/product shapes,
so a mapping written for either API version is accepted.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from services.common.errors import ValidationError

INVOICE = "INVOICE"
SUBSCRIPTION = "SUBSCRIPTION"
CONTRACT_SOURCES = (INVOICE, SUBSCRIPTION)
PULL = "PULL"
DISABLED = "DISABLED"
SYNC_DIRECTIONS = (PULL, DISABLED)

# Known Stripe fields a mapping may point at: a leaf (scalar) path, or `metadata.<key>`.
# Union of the current and the legacy customer/product shapes (localstripe's `account_balance`,
# `business_vat_id` included), so a mapping written for either is accepted.
_ADDRESS_LEAVES = frozenset({"city", "country", "line1", "line2", "postal_code", "state"})
CUSTOMER_FIELDS: Mapping[str, frozenset[str] | None] = {
    "id": None,
    "name": None,
    "email": None,
    "phone": None,
    "description": None,
    "balance": None,
    "account_balance": None,
    "business_vat_id": None,
    "created": None,
    "currency": None,
    "delinquent": None,
    "default_source": None,
    "invoice_prefix": None,
    "next_invoice_sequence": None,
    "livemode": None,
    "tax_exempt": None,
    "test_clock": None,
    "address": _ADDRESS_LEAVES,
    "shipping": frozenset({"name", "phone"} | {f"address.{leaf}" for leaf in _ADDRESS_LEAVES}),
    "invoice_settings": frozenset({"default_payment_method", "footer"}),
}
PRODUCT_FIELDS: Mapping[str, frozenset[str] | None] = {
    "id": None,
    "name": None,
    "description": None,
    "active": None,
    "created": None,
    "updated": None,
    "default_price": None,
    "livemode": None,
    "shippable": None,
    "statement_descriptor": None,
    "tax_code": None,
    "type": None,
    "unit_label": None,
    "url": None,
    "caption": None,
    "package_dimensions": frozenset({"height", "length", "weight", "width"}),
}
MAX_MAPPINGS = 50
MAX_FIELD_NAME = 100


@dataclass(frozen=True)
class FieldMapping:
    stripe_path: str
    crm_field: str


@dataclass(frozen=True)
class CrmSettings:
    contract_sources: tuple[str, ...] = (INVOICE,)
    days_back: int = 365
    customer_sync_direction: str = PULL
    customer_field_mappings: tuple[FieldMapping, ...] = (FieldMapping("balance", "Stripe Balance"),)
    product_field_mappings: tuple[FieldMapping, ...] = ()
    import_requests_per_second: int = 20

    @property
    def pulls_customers(self) -> bool:
        return self.customer_sync_direction == PULL


def validate_settings(settings: CrmSettings) -> CrmSettings:
    """Check every field; return the settings normalised (sources deduplicated and sorted).

    Raises ValidationError naming the field, so a bad update changes nothing.
    """
    if not settings.contract_sources:
        raise ValidationError("contract_sources", "choose INVOICE, SUBSCRIPTION or both")
    for source in settings.contract_sources:
        if source not in CONTRACT_SOURCES:
            raise ValidationError("contract_sources", f"{source!r} is not INVOICE or SUBSCRIPTION")
    if not 1 <= settings.days_back <= 3650:
        raise ValidationError("days_back", f"{settings.days_back} is out of range: use 1 to 3650 days")
    if settings.customer_sync_direction not in SYNC_DIRECTIONS:
        raise ValidationError("customer_sync_direction", "must be PULL or DISABLED")
    if not 1 <= settings.import_requests_per_second <= 100:
        raise ValidationError(
            "import_requests_per_second",
            f"{settings.import_requests_per_second} is out of range: Stripe allows 25/s in test mode and 100/s live",
        )
    _validate_mappings("customer_field_mappings", settings.customer_field_mappings, CUSTOMER_FIELDS, "customer")
    _validate_mappings("product_field_mappings", settings.product_field_mappings, PRODUCT_FIELDS, "product")
    sources = tuple(s for s in CONTRACT_SOURCES if s in settings.contract_sources)
    return CrmSettings(
        contract_sources=sources,
        days_back=settings.days_back,
        customer_sync_direction=settings.customer_sync_direction,
        customer_field_mappings=settings.customer_field_mappings,
        product_field_mappings=settings.product_field_mappings,
        import_requests_per_second=settings.import_requests_per_second,
    )


def _validate_mappings(
    name: str, mappings: Sequence[FieldMapping], known: Mapping[str, frozenset[str] | None], kind: str
) -> None:
    if len(mappings) > MAX_MAPPINGS:
        raise ValidationError(name, f"at most {MAX_MAPPINGS} mappings")
    seen: set[str] = set()
    for i, mapping in enumerate(mappings):
        where = f"{name}[{i}]"
        crm_field = mapping.crm_field.strip()
        if not crm_field or len(crm_field) > MAX_FIELD_NAME or crm_field != mapping.crm_field:
            raise ValidationError(
                f"{where}.crm_field", f"give a custom field name of 1 to {MAX_FIELD_NAME} characters, no outer spaces"
            )
        if crm_field.lower() in seen:
            raise ValidationError(f"{where}.crm_field", f"{crm_field!r} is mapped twice: keep one mapping per field")
        seen.add(crm_field.lower())
        problem = path_problem(mapping.stripe_path, known, kind)
        if problem:
            raise ValidationError(f"{where}.stripe_path", problem)


def path_problem(path: str, known: Mapping[str, frozenset[str] | None], kind: str) -> str | None:
    """Why `path` cannot be mapped on a Stripe `kind`, or None when it can."""
    head, _, rest = path.partition(".")
    if not path or any(not part for part in path.split(".")):
        return f"{path!r} is not a dotted path such as 'balance' or 'metadata.segment'"
    if head == "metadata":
        if not rest or "." in rest:
            return f"{path!r}: name one metadata key, as in 'metadata.segment'"
        return None
    if head not in known:
        return f"{path!r}: the Stripe {kind} has no field {head!r} (known: metadata.<key>, {', '.join(sorted(known))})"
    leaves = known[head]
    if leaves is None:
        return f"{path!r}: {head!r} has no sub-fields" if rest else None
    if not rest:
        return f"{path!r} is an object: map one of its fields, e.g. {head}.{sorted(leaves)[0]}"
    if rest not in leaves:
        return f"{path!r}: {head!r} has no field {rest!r} (known: {', '.join(sorted(leaves))})"
    return None

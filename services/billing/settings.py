"""The billing service's own settings (`SYNCMESH_BILLING_*`), validated once at start-up.

They are accounting policy, not plumbing: whether bad debt is written off, whether customers go
on credit hold, how discounts post and how revenue is recognised. Finance decides them, so a
wrong value must stop the process with a message that names the variable and the choices,
instead of quietly booking entries under a policy nobody chose.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, tzinfo
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.common.errors import SettingsError

RevenueRule = Literal["immediate", "ratable_by_day", "by_period"]
DiscountPosting = Literal["posting", "non_posting"]

REVENUE_RULES: tuple[RevenueRule, ...] = ("immediate", "ratable_by_day", "by_period")
DISCOUNT_POSTINGS: tuple[DiscountPosting, ...] = ("posting", "non_posting")


@dataclass(frozen=True)
class BillingSettings:
    write_off_uncollectible: bool = False
    credit_hold: bool = False
    release_hold_on_pay: bool = True
    discount_posting: DiscountPosting = "non_posting"
    discount_account: str = "4900 Sales Discounts"
    discount_item: str = "STRIPE-DISCOUNT"
    revenue_rule: RevenueRule = "ratable_by_day"
    default_item: str = "STRIPE-UNMAPPED"
    #: The zone the books close in (SYNCMESH_LEDGER_TIMEZONE): every ledger date (service periods,
    #: revenue months, payments, memos, holds, an ageing's as_of) is a day in this zone.
    ledger_zone: tzinfo = UTC

    def with_overrides(self, **changes: object) -> BillingSettings:
        return replace(self, **changes)  # type: ignore[arg-type]


_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw == "":
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise SettingsError(f"{name}={raw!r} must be true or false")


def _text(env: Mapping[str, str], name: str, default: str) -> str:
    raw = (env.get(name) or "").strip()
    if raw == "":
        return default
    if len(raw) > 200 or any(ch in raw for ch in "\n\r\t,"):
        raise SettingsError(f"{name}={raw[:40]!r} must be a single ERP name or id (no commas, tabs or newlines)")
    return raw


def ledger_zone(env: Mapping[str, str], name: str = "SYNCMESH_LEDGER_TIMEZONE") -> tzinfo:
    """The ledger's time zone, an IANA name (default UTC): read once here so the mapping code gets
    it as a value and never touches the time zone database itself."""
    raw = (env.get(name) or "").strip()
    if raw in ("", "UTC", "Etc/UTC"):
        return UTC
    try:
        return ZoneInfo(raw)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise SettingsError(f"{name}={raw[:60]!r} is not an IANA time zone (e.g. UTC, Europe/Berlin)") from None


def load_billing_settings(env: Mapping[str, str] | None = None) -> BillingSettings:
    """Read and validate the SYNCMESH_BILLING_* variables; SettingsError names the first bad one."""
    env = os.environ if env is None else env
    posting = (env.get("SYNCMESH_BILLING_DISCOUNT_ITEMS") or "non_posting").strip().lower().replace("-", "_")
    if posting not in DISCOUNT_POSTINGS:
        raise SettingsError(f"SYNCMESH_BILLING_DISCOUNT_ITEMS={posting!r} must be posting or non_posting")
    rule = (env.get("SYNCMESH_BILLING_REVENUE_RULE") or "ratable_by_day").strip().lower().replace("-", "_")
    if rule not in REVENUE_RULES:
        raise SettingsError(f"SYNCMESH_BILLING_REVENUE_RULE={rule!r} must be one of {', '.join(REVENUE_RULES)}")
    return BillingSettings(
        write_off_uncollectible=_bool(env, "SYNCMESH_BILLING_WRITE_OFF", False),
        credit_hold=_bool(env, "SYNCMESH_BILLING_CREDIT_HOLD", False),
        release_hold_on_pay=_bool(env, "SYNCMESH_BILLING_CREDIT_HOLD_RELEASE_ON_PAY", True),
        discount_posting="posting" if posting == "posting" else "non_posting",
        discount_account=_text(env, "SYNCMESH_BILLING_DISCOUNT_ACCOUNT", "4900 Sales Discounts"),
        discount_item=_text(env, "SYNCMESH_BILLING_DISCOUNT_ITEM", "STRIPE-DISCOUNT"),
        revenue_rule=rule,
        default_item=_text(env, "SYNCMESH_BILLING_DEFAULT_ITEM", "STRIPE-UNMAPPED"),
        ledger_zone=ledger_zone(env),
    )

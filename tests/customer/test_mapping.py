"""The pure rules: mapping both payload shapes, the version key, ids, emails, the CSV sheet."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from services.customer import messages
from services.customer.mapping import (
    Address,
    Decision,
    MappingError,
    Version,
    assigned_number,
    customer_from_stripe,
    decide,
    format_erp_id,
    normalize_email,
    parse_mapping_csv,
    payload_shape,
)
from tests.customer.support import current_customer, legacy_customer


def test_current_shape_maps_every_kept_field() -> None:
    state = customer_from_stripe(current_customer("cus_Current1"))
    assert payload_shape(current_customer()) == "current"
    assert state.stripe_customer_id == "cus_Current1"
    assert state.email == "Ada.Lovelace@Example.com" and state.email_lower == "ada.lovelace@example.com"
    assert (state.name, state.phone, state.description) == (
        "Ada Lovelace",
        "+44 20 7946 0000",
        "Analytical Engines Ltd",
    )
    assert state.address == Address(line1="12 St James's Square", city="London", postal_code="SW1Y 4JH", country="GB")
    assert (state.balance_minor, state.currency) == (-2500, "gbp")
    assert isinstance(state.balance_minor, int)
    assert state.metadata == {"netsuite_subsidiary": "UK"}
    assert state.stripe_created == 1_700_000_000 and not state.deleted and not state.delinquent


def test_stripe_example_with_only_placeholders_maps_to_empty_fields() -> None:
    from tests.support.stripe_events import fixture

    state = customer_from_stripe(fixture("customer"))
    assert state.email is None and state.name is None and state.address is None  # all-null address
    assert state.balance_minor == 0 and state.currency == "usd"


def test_legacy_shape_uses_account_balance() -> None:
    obj = legacy_customer("cus_Legacy1")
    assert payload_shape(obj) == "legacy"
    state = customer_from_stripe(obj)
    assert state.balance_minor == 1200 and state.currency == "usd"
    assert state.delinquent is True
    assert state.metadata == {"legacy_id": "42"}
    assert state.address is None


def test_current_shape_ignores_a_stray_account_balance() -> None:
    obj = current_customer(account_balance=999)
    assert customer_from_stripe(obj).balance_minor == -2500


def test_deleted_flag_from_event_type_or_object() -> None:
    assert customer_from_stripe(current_customer(), deleted=True).deleted
    assert customer_from_stripe({"id": "cus_Gone1", "object": "customer", "deleted": True}).deleted


@pytest.mark.parametrize(
    "obj",
    [
        {"id": "in_123", "object": "invoice"},
        {"object": "customer"},
        {"id": "cus_1", "object": "customer", "balance": 1.5},
        {"id": "cus_1", "object": "customer", "metadata": ["x"]},
    ],
    ids=["not-customer", "no-id", "float-balance", "bad-metadata"],
)
def test_unmappable_objects_are_refused(obj: dict) -> None:
    with pytest.raises(MappingError):
        customer_from_stripe(obj)


def test_version_key_orders_by_created_then_rank() -> None:
    assert decide(None, Version(5, 0), can_refetch=False) is Decision.APPLY
    assert decide(Version(5, 1), Version(6, 0), can_refetch=False) is Decision.APPLY
    assert decide(Version(6, 0), Version(5, 2), can_refetch=False) is Decision.STALE
    # Same second: updated beats created, deleted beats both.
    assert decide(Version(5, 0), Version(5, 1), can_refetch=False) is Decision.APPLY
    assert decide(Version(5, 2), Version(5, 1), can_refetch=False) is Decision.STALE
    assert decide(Version(5, 1), Version(5, 2), can_refetch=False) is Decision.APPLY
    # Same second, same rank: ask Stripe when possible, else the later-consumed wins.
    assert decide(Version(5, 1), Version(5, 1), can_refetch=True) is Decision.TIE_REFETCH
    assert decide(Version(5, 1), Version(5, 1), can_refetch=False) is Decision.TIE_LATER_WINS


def test_erp_ids_and_emails() -> None:
    assert format_erp_id(123) == "CUST-000123"
    assert format_erp_id(1234567) == "CUST-1234567"
    assert assigned_number("CUST-000123") == 123
    assert assigned_number("NS-77") is None and assigned_number("CUST-12") is None
    assert normalize_email("  Ada@Example.COM ") == "ada@example.com"
    assert normalize_email("   ") is None and normalize_email(None) is None


def test_csv_sheet_good_rows_with_header_bom_free_and_blank_lines() -> None:
    sheet = parse_mapping_csv(
        "stripe_customer_id,erp_customer_id,email\ncus_A1,CUST-000001,a@example.com\n\ncus_B2,NS-22,\ncus_C3,NS-33\n"
    )
    assert sheet.problems == []
    assert [(r.line, r.stripe_customer_id, r.erp_customer_id, r.email) for r in sheet.rows] == [
        (2, "cus_A1", "CUST-000001", "a@example.com"),
        (4, "cus_B2", "NS-22", None),
        (5, "cus_C3", "NS-33", None),
    ]
    assert sheet.data_rows == 3


def test_csv_sheet_reports_every_problem_with_its_line() -> None:
    sheet = parse_mapping_csv(
        "\n".join(
            [
                "cus_A1,CUST-1",  # 1 fine (no header)
                "acct_1,CUST-2",  # 2 bad stripe id
                "cus_A1,CUST-3",  # 3 stripe id repeated
                "cus_B2,CUST-1",  # 4 erp id repeated
                "cus_C3,has space",  # 5 bad erp id
                "cus_D4,CUST-5,not-an-email",  # 6 bad email
                "cus_E5",  # 7 too few columns
                "cus_F6,CUST-6,a@b.co,extra",  # 8 too many
            ]
        )
    )
    found = {(p.line, p.field) for p in sheet.problems}
    assert found == {
        (2, "stripe_customer_id"),
        (3, "stripe_customer_id"),
        (4, "erp_customer_id"),
        (5, "erp_customer_id"),
        (6, "email"),
        (7, "row"),
        (8, "row"),
    }
    assert "line 1" in next(p.reason for p in sheet.problems if p.line == 3)
    assert [r.line for r in sheet.rows] == [1]
    assert sheet.data_rows == 8


@given(
    when=st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30)),
    offset_minutes=st.none() | st.integers(min_value=-23 * 60, max_value=23 * 60),
)
def test_timestamps_are_those_of_from_datetime(when: datetime, offset_minutes: int | None) -> None:
    """The announcements' timestamps are built without `Timestamp.FromDatetime`: the same
    seconds and nanos for naive (UTC) and aware datetimes, before 1970 too."""
    value = when if offset_minutes is None else when.replace(tzinfo=timezone(timedelta(minutes=offset_minutes)))
    expected = Timestamp()
    expected.FromDatetime(value)
    assert messages.timestamp(value) == expected
    assert messages.timestamp(None) is None

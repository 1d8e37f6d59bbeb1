"""Paging: tokens round-trip typed keys, stay bound to the filters they were issued for, and
anything else a client sends as a token is refused naming the field, never read as "start over"."""

from __future__ import annotations

import base64
import json
from datetime import UTC, date, datetime
from typing import Any

import pytest

from services.common import paging
from services.common.errors import ValidationError

SCOPE = {"list": "invoices", "customer": "cus_1", "from": date(2025, 1, 31), "active": None}


def _forge(payload: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode()


def test_page_size_defaults_and_bounds() -> None:
    assert paging.page_size(0) == 50
    assert paging.page_size(1) == 1
    assert paging.page_size(500) == 500
    assert paging.page_size(0, default=100, maximum=1000) == 100
    assert paging.page_size(1000, default=100, maximum=1000) == 1000


@pytest.mark.parametrize(("raw", "maximum"), [(-1, 500), (501, 500), (1001, 1000), (-(2**31), 500)])
def test_page_size_out_of_range_names_the_field_and_the_range(raw: int, maximum: int) -> None:
    with pytest.raises(ValidationError) as err:
        paging.page_size(raw, field="limit", maximum=maximum)
    assert err.value.field == "limit"
    assert f"1 to {maximum}" in err.value.message and "0 for the default 50" in err.value.message


def test_empty_token_is_the_first_page() -> None:
    assert paging.decode_token("", kinds=(str,), scope=SCOPE) is None


@pytest.mark.parametrize(
    ("key", "kinds"),
    [
        (("cus_1",), (str,)),
        ((1_700_000_000, "py_1"), (int, str)),
        ((date(2025, 1, 31), "in_1"), (date, str)),
        ((datetime(2025, 1, 31, 12, 30, 1, 123456, tzinfo=UTC), "cus_1", "in_1"), (datetime, str, str)),
        (("ünïcødé/+=?&",), (str,)),
    ],
)
def test_round_trip_keeps_each_column_and_its_type(key: tuple[Any, ...], kinds: tuple[paging.KeyKind, ...]) -> None:
    token = paging.encode_token(key, scope=SCOPE)
    decoded = paging.decode_token(token, kinds=kinds, scope=SCOPE)
    assert decoded == list(key)
    assert decoded is not None and [type(v) for v in decoded] == [type(v) for v in key]
    assert token.isascii() and " " not in token


def test_scope_is_only_a_digest_so_filters_do_not_leak_into_tokens() -> None:
    token = paging.encode_token(("CUST-1",), scope={"email": "someone@example.com"})
    assert "someone" not in base64.urlsafe_b64decode(token).decode()


def test_scope_order_does_not_matter_but_every_value_does() -> None:
    token = paging.encode_token(("k",), scope={"a": 1, "b": "x"})
    assert paging.decode_token(token, kinds=(str,), scope={"b": "x", "a": 1}) == ["k"]
    for other in ({"a": 2, "b": "x"}, {"a": 1}, {"a": 1, "b": "x", "c": None}, None):
        with pytest.raises(ValidationError) as err:
            paging.decode_token(token, kinds=(str,), scope=other)
        assert err.value.field == "page_token" and "same filters" in err.value.message


def test_token_without_scope_only_fits_requests_without_scope() -> None:
    token = paging.encode_token(("k",))
    assert paging.decode_token(token, kinds=(str,)) == ["k"]
    with pytest.raises(ValidationError, match="same filters"):
        paging.decode_token(token, kinds=(str,), scope={"list": "clients"})


@pytest.mark.parametrize(
    "token",
    [
        "garbage",
        "garbage!",
        "%%%%",
        "ü",
        base64.urlsafe_b64encode(b"\xff\xfe\xfd").decode(),
        _forge(["in_1"]),
        _forge("in_1"),
        _forge({"key": ["in_1"]}),
        _forge({"scope": "x"}),
        _forge({"key": "in_1", "scope": "x"}),
        base64.urlsafe_b64encode(b"[" * 100_000).decode(),
    ],
)
def test_garbage_is_refused_naming_the_field(token: str) -> None:
    with pytest.raises(ValidationError) as err:
        paging.decode_token(token, kinds=(str,), field="page_token")
    assert err.value.field == "page_token" and "next_page_token" in err.value.message


@pytest.mark.parametrize(
    ("key", "kinds"),
    [
        (("in_1",), (str, str)),  # too few columns
        (("in_1", "x"), (str,)),  # too many
        ((5, "py_1"), (str, str)),  # int where text is expected
        (("5", "py_1"), (int, str)),  # text where an int is expected
        (("2025-01-31T10:00:00+00:00", "in_1"), (date, str)),  # a timestamp is not a date
        (("yesterday", "in_1"), (date, str)),
        (("not a time", "cus_1", "in_1"), (datetime, str, str)),
    ],
)
def test_wrong_shape_or_types_are_refused(key: tuple[Any, ...], kinds: tuple[paging.KeyKind, ...]) -> None:
    token = paging.encode_token(key, scope=SCOPE)
    with pytest.raises(ValidationError, match="next_page_token"):
        paging.decode_token(token, kinds=kinds, scope=SCOPE)


def test_a_forged_bool_is_not_an_int() -> None:
    token = paging.encode_token(("x",), scope=SCOPE)
    payload = json.loads(base64.urlsafe_b64decode(token))
    payload["key"] = [True]
    with pytest.raises(ValidationError):
        paging.decode_token(_forge(payload), kinds=(int,), scope=SCOPE)


def test_keys_and_scopes_that_cannot_be_tokens_fail_loudly() -> None:
    with pytest.raises(TypeError):
        paging.encode_token((1.5,))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        paging.encode_token(("k",), scope={"x": object()})


def test_next_page_splits_the_probe_row_off() -> None:
    rows = [("a", 1), ("b", 2), ("c", 3)]
    page, token = paging.next_page(rows, 2, lambda r: (r[0],), scope=SCOPE)
    assert page == rows[:2]
    assert paging.decode_token(token, kinds=(str,), scope=SCOPE) == ["b"]


@pytest.mark.parametrize("fetched", [0, 1, 2])
def test_next_page_has_no_token_when_nothing_follows(fetched: int) -> None:
    rows = [("a", 1), ("b", 2)][:fetched]
    page, token = paging.next_page(rows, 2, lambda r: (r[0],))
    assert page == rows and token == ""


def test_walking_pages_visits_every_key_once() -> None:
    keys = [f"k{i:03d}" for i in range(23)]

    def fetch(after: list[Any] | None, limit: int) -> list[str]:
        start = keys.index(after[0]) + 1 if after else 0
        return keys[start : start + limit]

    seen: list[str] = []
    token = ""
    for _ in range(len(keys)):
        after = paging.decode_token(token, kinds=(str,), scope=SCOPE)
        page, token = paging.next_page(fetch(after, 5 + 1), 5, lambda k: (k,), scope=SCOPE)
        seen += page
        if not token:
            break
    assert seen == keys

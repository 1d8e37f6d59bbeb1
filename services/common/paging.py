"""Paging of the services' gRPC list RPCs: page-size limits and opaque page tokens.

Every list RPC pages by keyset: rows are ordered by a unique key and the next page starts
after the last key of this one, so a client walking the pages neither skips nor repeats rows
while new ones are being inserted. The token carries that last key plus a digest of the
request's filters (its scope): the same token sent with other filters would silently skip or
repeat rows, so it is refused instead. Only a digest travels, so a filter such as a customer's
email never ends up inside a token that clients may log.

Tokens are opaque to clients but neither secret nor signed: whatever comes out of one is
checked like any other untrusted argument (shape and types) before it can reach SQL.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import date, datetime
from typing import Any, TypeVar

from services.common.errors import ValidationError

Key = str | int | date
"""One column of a keyset position; a `datetime` is a `date`, and both travel as ISO text."""
KeyKind = type[str] | type[int] | type[date] | type[datetime]

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500

NOT_A_TOKEN = "is not a page token this service issued: pass next_page_token back unchanged, or start without one"
OTHER_SCOPE = "was issued for other filters: send the same filters as the first page, or start without a token"

T = TypeVar("T")


def page_size(
    raw: int, *, field: str = "page_size", default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE
) -> int:
    """The number of rows to return. 0 means `default` because proto3 cannot tell an unset
    int32 from 0; anything past `maximum` is refused rather than clamped, so a client never
    mistakes a short page for the end of the list."""
    if raw < 0 or raw > maximum:
        raise ValidationError(field, f"{raw} is out of range: use 1 to {maximum}, or 0 for the default {default}")
    return raw or default


def encode_token(key: Sequence[Key], *, scope: Mapping[str, Any] | None = None) -> str:
    """The token to resume after `key`; pass the same `scope` the request's decode used."""
    payload = {"key": [_plain(v) for v in key], "scope": _digest(scope)}
    return base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode()


def decode_token(
    token: str, *, kinds: Sequence[KeyKind], scope: Mapping[str, Any] | None = None, field: str = "page_token"
) -> list[Any] | None:
    """The key to resume after, typed by `kinds` column by column, or None for the first page.

    Anything that is not a token we issued for a key of this shape is refused (rather than
    read as "start over"), because a client that silently restarts would loop forever."""
    if not token:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(token.encode()))
        raw_key, digest = payload["key"], payload["scope"]
        if not isinstance(raw_key, list) or len(raw_key) != len(kinds):
            raise ValueError("wrong key shape")
        key = [_typed(value, kind) for value, kind in zip(raw_key, kinds, strict=True)]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise ValidationError(field, NOT_A_TOKEN) from None
    if digest != _digest(scope):
        raise ValidationError(field, OTHER_SCOPE)
    return key


def next_page(
    rows: Sequence[T], limit: int, key: Callable[[T], Sequence[Key]], *, scope: Mapping[str, Any] | None = None
) -> tuple[list[T], str]:
    """Split rows fetched with LIMIT `limit` + 1 into the page and its next_page_token.

    The extra row only proves that a next page exists, so the token is empty exactly when the
    list is exhausted and a client never has to fetch a final empty page."""
    page = list(rows[:limit])
    return page, encode_token(key(page[-1]), scope=scope) if len(rows) > limit else ""


def _plain(value: object) -> object:
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str | int):
        return value
    raise TypeError(f"cannot put a {type(value).__name__} in a page token")


def _digest(scope: Mapping[str, Any] | None) -> str:
    canonical = json.dumps(dict(scope or {}), sort_keys=True, separators=(",", ":"), default=_plain)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _typed(value: object, kind: KeyKind) -> Key:
    if kind is datetime and isinstance(value, str):
        return datetime.fromisoformat(value)
    if kind is date and isinstance(value, str):
        return date.fromisoformat(value)
    if kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is str and isinstance(value, str):
        return value
    raise ValueError(f"{value!r} is not a {kind.__name__}")

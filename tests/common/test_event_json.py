"""How event bodies are read: orjson for speed, exactly what the standard library would read, and
never a float where the body had an integer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from services.common.errors import MalformedEventError
from services.common.events import load_json, parse_event
from tests.support.stripe_events import FIXTURES, event, fixture


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (1 == 1.0 in Python; not here)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


@pytest.mark.parametrize("path", sorted(FIXTURES.rglob("*.json")), ids=lambda p: str(p.relative_to(FIXTURES)))
def test_every_published_stripe_example_reads_as_the_standard_library_reads_it(path: Path) -> None:
    body = path.read_bytes()
    assert _same(load_json(body), json.loads(body))


def test_an_integer_beyond_64_bits_stays_an_exact_integer() -> None:
    invoice = fixture("invoice")
    invoice["amount_due"] = 2**70 + 1  # orjson alone would return 1.1805916207174113e+21
    parsed = parse_event(json.dumps(event("invoice.finalized", invoice)).encode())
    assert parsed.object["amount_due"] == 2**70 + 1
    assert type(parsed.object["amount_due"]) is int


def test_a_long_digit_run_inside_a_string_reads_the_same() -> None:
    customer = fixture("customer")
    customer["description"] = "ref 123456789012345678901234567890"
    body = json.dumps(event("customer.updated", customer)).encode()
    assert _same(load_json(body), json.loads(body))


@pytest.mark.parametrize(
    "body",
    [
        b'{"object": "event", "amount": NaN}',
        b'{"object": "event", "amount": Infinity}',
        # the same, on the standard library's path (a 20-digit number elsewhere in the body)
        b'{"object": "event", "n": 123456789012345678901, "amount": NaN}',
        b'{"object": "event", "n": 123456789012345678901, "amount": -Infinity}',
        b'{"object": "event", "name": "\xff"}',
        b'{"object": "event", "n": 123456789012345678901, "name": "\xff"}',
        b'{"object": "event"',
        b"",
    ],
)
def test_what_is_not_json_is_refused_on_both_paths(body: bytes) -> None:
    with pytest.raises(MalformedEventError, match="body is not JSON"):
        parse_event(body)

"""Realistic, signed Stripe events: whole customer/invoice lifecycles, some duplicated, some reordered.

Objects are built from Stripe's own published example objects (`tests/fixtures/stripe`,
through `tests.support.stripe_events`' loader) with the placeholders replaced: real-looking ids,
amounts drawn from a skewed distribution, currencies, increasing timestamps, invoice numbers and
status transitions. Compact JSON puts a customer event near 1.5 KB and an invoice event near
4.5 KB, so a lifecycle averages about 3 KB, as production traffic does.

Generation is deterministic for a seed, so several load-generator processes can each build their
own share of the same workload without shipping bodies between processes. Nested parts of the
example objects that never change are shared between events (json.dumps does not care), which
keeps building 100,000 events to a few seconds.
"""

from __future__ import annotations

import json
import random
import string
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import stripe

from tests.support.stripe_events import CURRENT_API_VERSION, fixture

BENCH_SECRET = "whsec_bench_suite_signing_secret"
_ALNUM = string.ascii_letters + string.digits
CURRENCIES = ("usd", "usd", "usd", "eur", "eur", "gbp", "cad", "jpy")
# Invoice totals in minor units: most are a few tens of dollars, a few are large contracts.
_AMOUNT_STEPS = (900, 1500, 2900, 4900, 9900, 19900, 49900, 120000, 499900)


@dataclass(frozen=True)
class BenchEvent:
    """One webhook as Stripe would send it: body bytes plus what the bench needs to track it."""

    id: str
    type: str
    object_id: str
    customer_id: str
    body: bytes
    duplicate: bool = False

    @property
    def subject(self) -> str:
        return f"stripe.{self.type}"


def sign(body: bytes, secret: str = BENCH_SECRET, timestamp: int | None = None) -> str:
    """The `Stripe-Signature` header, computed by the official SDK exactly as Stripe does."""
    return str(stripe.WebhookSignature.generate_signature_header(body.decode(), secret, timestamp=timestamp))


class _Templates:
    """Stripe's example objects, loaded once, placeholders cleared."""

    def __init__(self) -> None:
        self.customer = fixture("customer")
        self.customer["discount"] = None  # the example's discount is all placeholders
        self.invoice = fixture("invoice")
        for placeholder in ("from_invoice", "last_finalization_error", "shipping_cost"):
            self.invoice[placeholder] = None
        self.invoice["amount_overpaid"] = 0
        self.line = fixture("line_item")


class EventFactory:
    """Builds lifecycles of events for one load generator (one `stream` of a seeded workload)."""

    def __init__(self, seed: int = 1, *, tag: str = "b0", start: int | None = None) -> None:
        if not tag.isalnum():
            raise ValueError("tag must be letters and digits (it goes into Stripe-style ids)")
        self.rng = random.Random(f"{seed}:{tag}")
        self.tag = tag
        self.t = _Templates()
        self.clock = start if start is not None else int(time.time()) - 3600
        self._seq = 0

    # -- ids ----------------------------------------------------------------------------------

    def _rand(self, n: int) -> str:
        return "".join(self.rng.choices(_ALNUM, k=n))

    def _id(self, prefix: str, n: int = 24) -> str:
        # Unique across generator processes and runs: the tag (one per run and process) and a
        # sequence lead the random part, the way Stripe's ids carry a shard prefix.
        self._seq += 1
        head = f"{self.tag}{self._seq:07d}"
        return f"{prefix}_{head}{self._rand(max(4, n - len(head)))}"

    def _tick(self, max_step: int = 3) -> int:
        self.clock += self.rng.randint(0, max_step)
        return self.clock

    # -- objects ------------------------------------------------------------------------------

    def _customer(self, cid: str, created: int) -> dict[str, Any]:
        obj = dict(self.t.customer)
        first = self.rng.choice(("Ada", "Grace", "Alan", "Edsger", "Barbara", "Ken", "Radia", "Leslie"))
        last = self.rng.choice(("Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Thompson", "Perlman"))
        obj.update(
            id=cid,
            created=created,
            currency=self.rng.choice(CURRENCIES),
            email=f"{first.lower()}.{last.lower()}.{self._rand(5).lower()}@example.com",
            name=f"{first} {last}",
            description=f"Bench customer {cid[-6:]}",
            invoice_prefix=self._rand(8).upper(),
            address={
                "city": "Springfield",
                "country": "US",
                "line1": f"{self.rng.randint(1, 999)} Main St",
                "line2": None,
                "postal_code": f"{self.rng.randint(10000, 99999)}",
                "state": "IL",
            },
            metadata={"crm_segment": self.rng.choice(("smb", "mid", "enterprise"))},
            invoice_settings=dict(self.t.customer["invoice_settings"]),
        )
        return obj

    def _lines(self, invoice_id: str, currency: str, period: tuple[int, int]) -> tuple[list[dict[str, Any]], int]:
        lines = []
        total = 0
        for _ in range(self.rng.choice((1, 1, 1, 2, 3))):
            quantity = self.rng.choice((1, 1, 1, 2, 5, 10))
            unit = self.rng.choice(_AMOUNT_STEPS)
            amount = unit * quantity
            total += amount
            line = dict(self.t.line)
            line.update(
                id=self._id("il"),
                invoice=invoice_id,
                amount=amount,
                subtotal=amount,
                currency=currency,
                quantity=quantity,
                description=f"{quantity} x Pro plan seat",
                period={"start": period[0], "end": period[1]},
                parent={
                    "invoice_item_details": None,
                    "subscription_item_details": {
                        "invoice_item": None,
                        "proration": False,
                        "proration_details": {"credited_items": None},
                        "subscription": None,
                        "subscription_item": self._id("si", 14),
                    },
                    "type": "subscription_item_details",
                },
                pricing={
                    "price_details": {"price": self._id("price"), "product": self._id("prod", 14)},
                    "type": "price_details",
                    "unit_amount_decimal": str(unit),
                },
            )
            lines.append(line)
        return lines, total

    def _invoice(self, customer: dict[str, Any], created: int) -> dict[str, Any]:
        iid = self._id("in")
        currency = customer["currency"]
        period = (created - 30 * 86400, created)
        lines, total = self._lines(iid, currency, period)
        subscription = self._id("sub")
        for line in lines:
            line["parent"]["subscription_item_details"]["subscription"] = subscription
        obj = dict(self.t.invoice)
        obj.update(
            id=iid,
            created=created,
            currency=currency,
            customer=customer["id"],
            customer_email=customer["email"],
            customer_name=customer["name"],
            amount_due=total,
            amount_paid=0,
            amount_remaining=total,
            subtotal=total,
            subtotal_excluding_tax=total,
            total=total,
            total_excluding_tax=total,
            billing_reason="subscription_cycle",
            auto_advance=True,
            due_date=None,
            effective_at=None,
            next_payment_attempt=None,
            number=None,
            period_start=period[0],
            period_end=period[1],
            status="draft",
            status_transitions={
                "finalized_at": None,
                "marked_uncollectible_at": None,
                "paid_at": None,
                "voided_at": None,
            },
            webhooks_delivered_at=None,
            lines={"data": lines, "has_more": False, "object": "list", "url": f"/v1/invoices/{iid}/lines"},
            parent={
                "quote_details": None,
                "subscription_details": {"metadata": {}, "subscription": subscription},
                "type": "subscription_details",
            },
        )
        return obj

    def _event(
        self, event_type: str, obj: dict[str, Any], created: int, previous: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        data: dict[str, Any] = {"object": obj}
        if previous is not None:
            data["previous_attributes"] = previous
        return {
            "id": self._id("evt"),
            "object": "event",
            "api_version": CURRENT_API_VERSION,
            "created": created,
            "data": data,
            "livemode": False,
            "pending_webhooks": 1,
            "request": {"id": f"req_{self._rand(14)}", "idempotency_key": self._rand(36)},
            "type": event_type,
        }

    # -- lifecycles ---------------------------------------------------------------------------

    def lifecycle(self) -> list[dict[str, Any]]:
        """One customer's life: created, card attached, then one or two invoices from draft to settled."""
        cid = self._id("cus", 14)
        created = self._tick()
        customer = self._customer(cid, created)
        events = [self._event("customer.created", customer, created)]
        updated = dict(customer)
        pm = self._id("pm")
        updated["invoice_settings"] = {**customer["invoice_settings"], "default_payment_method": pm}
        events.append(
            self._event(
                "customer.updated",
                updated,
                self._tick(),
                previous={"invoice_settings": {"default_payment_method": None}},
            )
        )
        for _ in range(self.rng.choice((1, 1, 1, 2))):
            events.extend(self._invoice_events(updated))
        return events

    def _invoice_events(self, customer: dict[str, Any]) -> list[dict[str, Any]]:
        created = self._tick()
        draft = self._invoice(customer, created)
        events = [self._event("invoice.created", draft, created)]
        finalized_at = self._tick(60)
        opened = dict(draft)
        opened.update(
            status="open",
            number=f"{customer['invoice_prefix']}-{self.rng.randint(1, 9999):04d}",
            effective_at=finalized_at,
            hosted_invoice_url=f"https://invoice.stripe.com/i/acct_bench/test_{self._rand(40)}",
            status_transitions={**draft["status_transitions"], "finalized_at": finalized_at},
        )
        events.append(
            self._event("invoice.finalized", opened, finalized_at, previous={"status": "draft", "number": None})
        )
        fate = self.rng.random()
        if fate < 0.05:  # voided before payment
            voided_at = self._tick(600)
            voided = dict(opened)
            voided.update(
                status="void",
                amount_remaining=0,
                status_transitions={**opened["status_transitions"], "voided_at": voided_at},
            )
            events.append(self._event("invoice.voided", voided, voided_at, previous={"status": "open"}))
            return events
        current = opened
        if fate < 0.15:  # the first attempt fails, the retry succeeds
            failed = dict(opened)
            failed.update(attempt_count=1, attempted=True, next_payment_attempt=self._tick(5) + 3 * 86400)
            events.append(self._event("invoice.payment_failed", failed, self.clock, previous={"attempt_count": 0}))
            current = failed
        paid_at = self._tick(5)
        paid = dict(current)
        paid.update(
            status="paid",
            attempted=True,
            attempt_count=current["attempt_count"] + 1,
            amount_paid=current["amount_due"],
            amount_remaining=0,
            next_payment_attempt=None,
            status_transitions={**current["status_transitions"], "paid_at": paid_at},
        )
        previous = {"status": "open", "amount_paid": 0, "amount_remaining": current["amount_due"]}
        # One payment gives invoice.paid and invoice.payment_succeeded in the same second.
        events.append(self._event("invoice.paid", paid, paid_at, previous=previous))
        events.append(self._event("invoice.payment_succeeded", paid, paid_at, previous=previous))
        return events

    # -- workloads ----------------------------------------------------------------------------

    def workload(self, count: int, *, duplicate_rate: float = 0.05, reorder_rate: float = 0.2) -> list[BenchEvent]:
        """`count` webhooks: interleaved lifecycles, `duplicate_rate` of them resent, some swapped.

        Stripe delivers at least once and in no guaranteed order: a duplicate is the same event
        (same id and body) sent again a little later; reordering swaps an event with one a few
        places ahead, across lifecycles as well as within one.
        """
        out: list[BenchEvent] = []
        pending: list[BenchEvent] = []
        live: list[Iterator[dict[str, Any]]] = []
        while len(out) + len(pending) < count:
            while len(live) < 8:
                live.append(iter(self.lifecycle()))
            source = self.rng.randrange(len(live))
            raw = next(live[source], None)
            if raw is None:
                live.pop(source)
                continue
            event = _encode(raw)
            out.append(event)
            if self.rng.random() < duplicate_rate:
                pending.append(
                    BenchEvent(event.id, event.type, event.object_id, event.customer_id, event.body, duplicate=True)
                )
            if pending and self.rng.random() < 0.3:
                out.append(pending.pop(0))
        out.extend(pending)
        out = out[:count]
        for i in range(len(out) - 1):
            if self.rng.random() < reorder_rate:
                j = min(len(out) - 1, i + self.rng.randint(1, 4))
                out[i], out[j] = out[j], out[i]
        return out


def _encode(event: dict[str, Any]) -> BenchEvent:
    obj = event["data"]["object"]
    customer = obj["id"] if obj.get("object") == "customer" else str(obj.get("customer", ""))
    body = json.dumps(event, separators=(",", ":")).encode()
    return BenchEvent(id=event["id"], type=event["type"], object_id=obj["id"], customer_id=customer, body=body)


def workload(count: int, *, tag: str, seed: int = 1, duplicate_rate: float = 0.05) -> list[BenchEvent]:
    return EventFactory(seed, tag=tag).workload(count, duplicate_rate=duplicate_rate)


def size_summary(events: list[BenchEvent]) -> dict[str, float]:
    sizes = sorted(len(e.body) for e in events)
    if not sizes:
        return {"median": 0.0, "mean": 0.0, "max": 0.0}
    return {"median": float(sizes[len(sizes) // 2]), "mean": sum(sizes) / len(sizes), "max": float(sizes[-1])}

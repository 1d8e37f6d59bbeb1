"""What a batch changes in the customer-success view: written together, announced once.

A batch's events are mapped one at a time, in arrival order, but their rows are written when
the batch (of events, or of imported objects) ends: each table's newest row per key (the row
the version guard would keep whatever the order, see store.newest) in one pipelined statement,
after one read of the stored versions. Each changed client, contract, product and health is
then announced once, in its newest state, through the emit of the event that brought that
state (so the domain event continues that event's trace). Health is compared with what it was
before the batch began.

Reads the handlers make one at a time (the kept Stripe customer, for a deletion stub or a
same-second tie) are answered from a bulk read up front, followed through the batch's own
writes in memory.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import Message
from syncmesh.crm_export.v1 import events_pb2

from services.common.db import Conn
from services.crm_export import mapping, messages, store
from services.crm_export.mapping import (
    Client,
    Contract,
    InvoicePayment,
    Product,
    StripeCustomer,
    SubscriptionState,
    Version,
)

Emit = Callable[[str, Message], Awaitable[None]]


@dataclass
class _Rows:
    """A table's pending rows, each with the emit of the event that brought it."""

    rows: list[tuple[store.Guarded, Emit]] = field(default_factory=list)

    def add(self, row: store.Guarded, emit: Emit) -> None:
        self.rows.append((row, emit))

    def newest(self) -> tuple[list[store.Guarded], dict[str, Emit]]:
        """The rows the guard keeps, and for each key the emit of the event that brought it."""
        winners = store.newest(row for row, _ in self.rows)
        emits = {row.key: emit for row, emit in self.rows if winners[row.key] is row}
        self.rows.clear()
        return list(winners.values()), emits


async def _no_emit(name: str, message: Message) -> None:
    """Stripe customers and subscriptions are kept, not announced (clients and health are)."""


class Changes:
    def __init__(self) -> None:
        self._customers = _Rows()
        self._clients = _Rows()
        self._products = _Rows()
        self._contracts = _Rows()
        self._subscriptions = _Rows()
        self._payments: list[InvoicePayment] = []
        self._health: dict[str, Emit] = {}
        self._health_before: dict[str, store.Health] = {}
        #: Stripe customers as kept, read once and then followed through the batch's own writes.
        self._kept: dict[str, tuple[dict[str, Any], Version] | None] = {}

    async def prefetch(self, conn: Conn, *, customers: Iterable[str], health: Iterable[str]) -> None:
        """Read up front, in bulk, what the batch's events will ask for one at a time."""
        wanted = sorted({c for c in customers if c} - self._kept.keys())
        kept = await store.stripe_customer_versions(conn, wanted)
        self._kept.update({c: kept.get(c) for c in wanted})
        missing = sorted({c for c in health if c} - self._health_before.keys())
        self._health_before.update(await store.health_by_customer(conn, missing))

    # -- what the handlers ask and tell ---------------------------------------------------------

    async def kept_customer(self, conn: Conn, customer_id: str) -> tuple[dict[str, Any], Version] | None:
        if customer_id not in self._kept:
            self._kept[customer_id] = await store.stripe_customer_version(conn, customer_id)
        return self._kept[customer_id]

    def keep_customer(self, customer: StripeCustomer, version: Version) -> None:
        row = store.customer_row(customer, version)
        kept = self._kept.get(customer.id)
        if kept is None or row.order > (kept[1].terminal, kept[1].ts, kept[1].rank, mapping.content_hash(kept[0])):
            self._kept[customer.id] = (customer.raw, version)
        self._customers.add(row, _no_emit)

    def client(self, client: Client, version: Version, emit: Emit) -> None:
        self._clients.add(store.client_row(client, version), emit)

    def product(self, product: Product, raw: dict[str, Any], version: Version, emit: Emit) -> None:
        self._products.add(store.product_row(product, raw, version), emit)

    def contract(self, contract: Contract, version: Version, emit: Emit) -> None:
        self._contracts.add(store.contract_row(contract, version), emit)

    def subscription(self, state: SubscriptionState, version: Version) -> None:
        self._subscriptions.add(store.subscription_row(state, version), _no_emit)

    def payment(self, payment: InvoicePayment) -> None:
        self._payments.append(payment)

    async def health_may_change(self, conn: Conn, customer_id: str, emit: Emit) -> None:
        """Call before changing what the customer's health is computed from."""
        if customer_id not in self._health_before:
            self._health_before[customer_id] = await store.health_for(conn, [customer_id])
        self._health[customer_id] = emit

    # -- the end of the batch ---------------------------------------------------------------------

    async def commit(self, conn: Conn) -> None:
        """Write every pending row, then announce what changed, each record once."""
        customers, _ = self._customers.newest()
        await store.write_customers(conn, customers)
        subscriptions, _ = self._subscriptions.newest()
        await store.write_subscriptions(conn, subscriptions)
        await store.record_invoice_payments(conn, self._payments)
        self._payments.clear()
        rows, client_emits = self._clients.newest()
        changed_clients = await store.write_clients(conn, rows)
        rows, product_emits = self._products.newest()
        products = {row.key: row.record for row in rows}
        changed_products = await store.write_products(conn, rows)
        rows, contract_emits = self._contracts.newest()
        changed_contracts = await store.write_contracts(conn, rows)

        clients = await store.stripe_clients(conn, sorted(changed_clients))
        for client_id in sorted(changed_clients):
            client = events_pb2.ClientUpserted(client=messages.client_pb(clients[client_id]))
            await client_emits[client_id]("client_upserted", client)
        for product_id in sorted(changed_products):
            product = events_pb2.ProductUpserted(product=messages.product_pb(products[product_id]))
            await product_emits[product_id]("product_upserted", product)
        contracts = await store.get_contracts(conn, sorted(changed_contracts))
        for contract_id in sorted(changed_contracts):
            contract = events_pb2.ContractUpserted(contract=messages.contract_pb(contracts[contract_id]))
            await contract_emits[contract_id]("contract_upserted", contract)
        await self._announce_health(conn)

    async def _announce_health(self, conn: Conn) -> None:
        after = await store.health_by_customer(conn, list(self._health))
        for customer_id, emit in sorted(self._health.items()):
            health = after[customer_id]
            if health != self._health_before[customer_id]:
                await emit(
                    "client_health_changed",
                    events_pb2.ClientHealthChanged(
                        stripe_customer_id=customer_id,
                        health_signals=messages.health_signals_pb(health),
                        failing_invoice_ids=list(health.failing_invoice_ids),
                    ),
                )
                self._health_before[customer_id] = health
        self._health.clear()

"""What a batch changed in the customer-success view, announced once per record at its end.

Several events of one batch often touch one record (a customer created then updated, an invoice
paid then its payment succeeding). Re-reading the record after every change to announce it cost
more round trips than the changes themselves, so a batch notes what changed and, at its end,
reads every changed client, contract and health in a few statements and announces each once,
in its newest state, through the emit of the event that last changed it (so the domain event
continues that event's trace). Health is compared with what it was before the batch began.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from google.protobuf.message import Message

from services.common.db import Conn
from services.crm_export import messages, store
from services.crm_export.mapping import Version
from syncmesh.crm_export.v1 import events_pb2

Emit = Callable[[str, Message], Awaitable[None]]


class Changes:
    def __init__(self) -> None:
        self._clients: dict[str, Emit] = {}
        self._contracts: dict[str, Emit] = {}
        self._health: dict[str, Emit] = {}
        self._health_before: dict[str, store.Health] = {}
        #: Stripe customers as kept, read once and then followed through the batch's own writes.
        self._customers: dict[str, tuple[dict[str, Any], Version] | None] = {}

    async def prefetch(self, conn: Conn, *, customers: Iterable[str], health: Iterable[str]) -> None:
        """Read up front, in bulk, what the batch's events will ask for one at a time."""
        wanted = sorted({c for c in customers if c} - self._customers.keys())
        kept = await store.stripe_customer_versions(conn, wanted)
        self._customers.update({c: kept.get(c) for c in wanted})
        missing = sorted({c for c in health if c} - self._health_before.keys())
        self._health_before.update(await store.health_by_customer(conn, missing))

    async def kept_customer(self, conn: Conn, customer_id: str) -> tuple[dict[str, Any], Version] | None:
        if customer_id not in self._customers:
            self._customers[customer_id] = await store.stripe_customer_version(conn, customer_id)
        return self._customers[customer_id]

    def customer_kept(self, customer_id: str, raw: dict[str, Any], version: Version) -> None:
        self._customers[customer_id] = (raw, version)

    async def health_may_change(self, conn: Conn, customer_id: str, emit: Emit) -> None:
        """Call before changing what the customer's health is computed from."""
        if customer_id not in self._health_before:
            self._health_before[customer_id] = await store.health_for(conn, [customer_id])
        self._health[customer_id] = emit

    def client_changed(self, client_id: str, emit: Emit) -> None:
        self._clients[client_id] = emit

    def contract_changed(self, contract_id: str, emit: Emit) -> None:
        self._contracts[contract_id] = emit

    async def announce(self, conn: Conn) -> None:
        """Read what changed, in bulk, and emit each record's newest state once."""
        clients = await store.stripe_clients(conn, list(self._clients))
        for client_id, emit in sorted(self._clients.items()):
            record = clients[client_id]
            await emit("client_upserted", events_pb2.ClientUpserted(client=messages.client_pb(record)))
        contracts = await store.get_contracts(conn, list(self._contracts))
        for contract_id, emit in sorted(self._contracts.items()):
            contract = contracts[contract_id]
            await emit("contract_upserted", events_pb2.ContractUpserted(contract=messages.contract_pb(contract)))
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
        self._clients.clear()
        self._contracts.clear()
        self._health.clear()

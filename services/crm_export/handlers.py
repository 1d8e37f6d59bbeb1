"""Stripe objects -> the customer-success view, a whole batch at a time: load, decide, write.

Order and duplication do not matter (the rules are in decide.py). A batch, of live events
(`apply`) or of objects the initial import listed (`apply_objects`), is applied in four steps:

1. load: the settings (versioned; a change made meanwhile applies from the next batch, as it
   would from the next event), then in bulk what the batch touches, in one statement: the stored
   versions of the rows it may replace, the kept Stripe customers and the health of the
   customers it may change;
2. fetch: what the payloads left out (truncated lines and items) and, with a Stripe key, the
   customers of same-second ties as Stripe holds them now, each in the consume span of its
   event (every event's span is entered once, here, in arrival order);
3. decide: one pure function over the stored facts and the new objects;
4. write: a pipelined statement per table, then each changed record is announced once, in its
   newest state, through the emit of the event that brought it.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import Message
from syncmesh.crm_export.v1 import events_pb2

from services.common.consumer import BatchItem
from services.common.db import Conn, Deferred
from services.crm_export import decide, messages, store
from services.crm_export.crm_settings import CrmSettings
from services.crm_export.decide import BatchChanges, Fetched, Incoming, ListKind, StoredFacts
from services.crm_export.fetch import Fetcher, NoFetcher, StripeFetcher
from services.crm_export.health import Health, changed_health

Emit = Callable[[str, Message], Awaitable[None]]
Span = Callable[[], contextlib.AbstractContextManager[Any]]


@dataclass(frozen=True)
class Sources:
    """Where a batch's objects came from, by `Incoming.source`: the emit that announces what
    each changed, and the span of each source (a live event's consume span). Every span is
    entered once, in order, in the fetch step, so each event keeps its span and a failing
    Stripe call is charged to the event that needed it."""

    emits: Sequence[Emit]
    spans: Sequence[Span]


async def apply(conn: Conn, items: Sequence[BatchItem]) -> None:
    """The consumer's applier: a batch of live events, in arrival order."""
    incoming: list[Incoming] = []
    spans: list[Span] = []
    for source, item in enumerate(items):
        event = item.event
        created = event.object.get("created")
        if item.ctx.before_sync_start(created if isinstance(created, int) else None):
            found: Incoming | str = "before SYNCMESH_SYNC_START"
        else:
            found = decide.from_event(event.type, event.object, event.created, source)
        if isinstance(found, str):
            spans.append(functools.partial(_skipping, item, found))
        else:
            incoming.append(found)
            spans.append(item.consuming)
    client = items[0].ctx.stripe if items else None
    fetcher: Fetcher = StripeFetcher(client) if client is not None else NoFetcher()
    sources = Sources([item.ctx.emit for item in items], spans)
    later = items[0].ctx.later if items else None
    await apply_objects(conn, incoming, None, sources, fetcher, settle_ties=client is not None, later=later)


@contextlib.contextmanager
def _skipping(item: BatchItem, reason: str) -> Iterator[None]:
    """The consume span of an event that changes nothing, marked with why."""
    with item.consuming():
        item.ctx.skip(reason)
        yield


async def apply_objects(
    conn: Conn,
    incoming: Sequence[Incoming],
    settings: CrmSettings | None,
    sources: Sources,
    fetcher: Fetcher,
    *,
    settle_ties: bool,
    later: Deferred | None = None,
) -> None:
    """Load what the objects touch, fetch what they left out, decide, write, announce.

    `settings`: those the objects are applied under; None reads the current ones (the live
    path: a change made meanwhile applies from the next batch, as it would from the next event).
    `later`: where the writes go (the consumer's batch holds them for its COMMIT, or until the
    announcement reads the records back); None, at once.
    """
    if not incoming:
        for span in sources.spans:
            with span():
                pass
        return
    if settings is None:
        settings = (await store.current_settings(conn)).settings
    keys = decide.keys_of(incoming, settings)
    stored, health_before = await store.stored_facts(conn, settings, keys, keys.health)
    fetched = await _fetch(incoming, stored, fetcher, sources, settle_ties=settle_ties)
    changes = decide.decide(incoming, stored, fetched, settle_ties=settle_ties)
    later = Deferred(conn) if later is None else later
    await store.write_changes(later, changes)
    await _announce(conn, later, changes, health_before, sources.emits)


async def _fetch(
    incoming: Sequence[Incoming], stored: StoredFacts, fetcher: Fetcher, sources: Sources, *, settle_ties: bool
) -> Fetched:
    """Each source's Stripe calls inside its span, in arrival order: the truncated lists its
    contracts need, and the customer of a same-second tie (the next tie is only known once the
    ones before it are settled, see decide.unsettled_tie)."""
    lists_wanted = {wanted.index: wanted for wanted in decide.fetches_needed(incoming, stored.settings)}
    by_source: dict[int, list[int]] = {}
    for index, inc in enumerate(incoming):
        by_source.setdefault(inc.source, []).append(index)
    lists: dict[int, list[dict[str, Any]]] = {}
    current: dict[int, dict[str, Any]] = {}
    next_tie = decide.unsettled_tie(incoming, stored.customers, current) if settle_ties else None
    for source, span in enumerate(sources.spans):
        with span():
            for index in by_source.get(source, ()):
                wanted = lists_wanted.get(index)
                if wanted is not None and wanted.what is ListKind.INVOICE_LINES:
                    lists[index] = await fetcher.invoice_lines(wanted.object_id)
                elif wanted is not None:
                    lists[index] = await fetcher.subscription_items(wanted.object_id)
                if index == next_tie:
                    current[index] = await fetcher.current_customer(incoming[index].id)
                    next_tie = decide.unsettled_tie(incoming, stored.customers, current)
    return Fetched(lists, current)


async def _announce(
    conn: Conn, later: Deferred, changes: BatchChanges, health_before: dict[str, Health], emits: Sequence[Emit]
) -> None:
    """Each changed client, product and contract once, then each changed health, in id order.
    The records and health are read back as written: the held writes are sent first."""
    if changes.clients.changed or changes.contracts.changed or changes.watched:
        await later.flush()
    changed_clients = changes.clients.changed
    if changed_clients:
        clients = await store.stripe_clients(conn, sorted(changed_clients))
        for client_id, source in sorted(changed_clients.items()):
            client = events_pb2.ClientUpserted(client=messages.client_pb(clients[client_id]))
            await emits[source]("client_upserted", client)
    for record, source in decide.announced_products(changes):
        await emits[source]("product_upserted", events_pb2.ProductUpserted(product=messages.product_pb(record)))
    changed_contracts = changes.contracts.changed
    if changed_contracts:
        contracts = await store.get_contracts(conn, sorted(changed_contracts))
        for contract_id, source in sorted(changed_contracts.items()):
            contract = events_pb2.ContractUpserted(contract=messages.contract_pb(contracts[contract_id]))
            await emits[source]("contract_upserted", contract)
    if changes.watched:
        after = await store.health_by_customer(conn, changes.watched)
        for customer_id, source, health in changed_health(health_before, after, changes.watched):
            await emits[source](
                "client_health_changed",
                events_pb2.ClientHealthChanged(
                    stripe_customer_id=customer_id,
                    health_signals=messages.health_signals_pb(health),
                    failing_invoice_ids=list(health.failing_invoice_ids),
                ),
            )

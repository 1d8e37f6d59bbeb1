"""gRPC API of the CRM-export service: settings, the initial import, and reads of the
customer-success view (lists, single records, and a consistent snapshot for bulk export)."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date
from typing import TypeVar

import grpc
from google.protobuf.message import Message
from syncmesh.crm_export.v1 import crm_export_service_pb2 as pb
from syncmesh.crm_export.v1 import crm_export_service_pb2_grpc as pb_grpc
from syncmesh.crm_export.v1 import events_pb2

from services.common import outbox, paging
from services.common.auth import Policy, Role, caller
from services.common.db import Conn
from services.common.errors import ConflictError, NotFoundError, SettingsError, ValidationError
from services.common.grpc_input import quote
from services.common.service import ServiceRuntime
from services.crm_export import crm_settings, messages, store
from services.crm_export.importer import SERVICE, Importer, ImportOptions

#: The least role each method needs (services.common.auth): reads for readers; the import, CRM
#: clients and the bulk export of every client's personal data for operators; the settings,
#: which change how everything is exported, for admins.
POLICY: Policy = {
    "GetSettings": Role.READER,
    "UpdateSettings": Role.ADMIN,
    "ListSettingsVersions": Role.READER,
    "RunImport": Role.OPERATOR,
    "ListClients": Role.READER,
    "GetClient": Role.READER,
    "ImportCrmClients": Role.OPERATOR,
    "ListProducts": Role.READER,
    "ListContracts": Role.READER,
    "GetContract": Role.READER,
    "ExportSnapshot": Role.OPERATOR,
}

DEFAULT_PAGE = 100
MAX_PAGE = 1000
MAX_CRM_CLIENTS = 10_000
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_PHASES = {
    "customers": pb.IMPORT_PHASE_CUSTOMERS,
    "products": pb.IMPORT_PHASE_PRODUCTS,
    "invoices": pb.IMPORT_PHASE_INVOICES,
    "subscriptions": pb.IMPORT_PHASE_SUBSCRIPTIONS,
    "done": pb.IMPORT_PHASE_DONE,
}
T = TypeVar("T")


def _iso(field: str, raw: str) -> date | None:
    if not raw:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise ValidationError(field, f"{quote(raw)} is not an ISO date such as 2025-01-31") from None


class CrmExportServicer(pb_grpc.CrmExportServiceServicer):
    def __init__(self, runtime: ServiceRuntime, *, import_options: ImportOptions | None = None) -> None:
        self.runtime = runtime
        self.import_options = import_options or ImportOptions()

    def _wake_relay(self) -> None:
        if self.runtime.relay is not None:
            self.runtime.relay.wake()

    async def _read(self, work: Callable[[Conn], Awaitable[T]]) -> T:
        async with self.runtime.pool.acquire() as conn:
            return await work(conn)

    # ------------------------------------------------------------ settings

    async def GetSettings(
        self, request: pb.GetSettingsRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSettingsResponse:
        current = await self._read(store.current_settings)
        return pb.GetSettingsResponse(settings=messages.settings_pb(current))

    async def UpdateSettings(
        self, request: pb.UpdateSettingsRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateSettingsResponse:
        if not request.HasField("settings"):
            raise ValidationError("settings", "send the complete new settings (read them with GetSettings first)")
        if request.expected_version < 0:
            raise ValidationError("expected_version", "must be 0 (no check) or a version from GetSettings")
        if len(request.changed_by) > 200:
            raise ValidationError("changed_by", "at most 200 characters")
        # Who changed the settings is the authenticated caller, never what the request claims;
        # with authentication off there is no one to name, and the claim is kept as such.
        identity = caller()
        if identity is not None:
            changed_by = identity.name
        else:
            changed_by = f"unverified: {request.changed_by}" if request.changed_by else "unverified"
        wanted = crm_settings.validate_settings(messages.settings_from_pb(request.settings))
        async with self.runtime.pool.acquire() as conn, conn.transaction():
            before = await store.current_settings(conn)
            saved = await store.save_settings(
                conn, wanted, changed_by=changed_by, expected_version=request.expected_version
            )

            async def emit(name: str, message: Message) -> None:
                await outbox.add_event(conn, service=SERVICE, event_name=name, message=message)

            await emit("settings_changed", events_pb2.SettingsChanged(settings=messages.settings_pb(saved)))
            old = before.settings
            if (old.customer_field_mappings, old.customer_sync_direction) != (
                wanted.customer_field_mappings,
                wanted.customer_sync_direction,
            ):
                for client_id in await store.rebuild_stripe_clients(conn, wanted):
                    record = await store.get_stripe_client(conn, client_id)
                    assert record is not None
                    await emit("client_upserted", events_pb2.ClientUpserted(client=messages.client_pb(record)))
            if old.product_field_mappings != wanted.product_field_mappings:
                for product_id in await store.rebuild_products(conn, wanted):
                    product = await store.get_product(conn, product_id)
                    assert product is not None
                    await emit("product_upserted", events_pb2.ProductUpserted(product=messages.product_pb(product)))
        self._wake_relay()
        return pb.UpdateSettingsResponse(settings=messages.settings_pb(saved))

    async def ListSettingsVersions(
        self, request: pb.ListSettingsVersionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSettingsVersionsResponse:
        history = await self._read(store.settings_history)
        return pb.ListSettingsVersionsResponse(versions=[messages.settings_pb(v) for v in history])

    # ------------------------------------------------------------ import

    async def RunImport(
        self, request: pb.RunImportRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.RunImportResponse]:
        if not 0 <= request.days_back <= 3650:
            raise ValidationError("days_back", f"{request.days_back} is out of range: 1 to 3650, or 0 for the settings")
        settings = self.runtime.settings
        try:
            importer = Importer(
                self.runtime.pool,
                api_key=settings.stripe_api_key,
                api_base=settings.stripe_api_base,
                mode=settings.mode,
                options=self.import_options,
                on_commit=self._wake_relay,
            )
        except SettingsError as exc:
            raise ConflictError(str(exc)) from exc
        async for progress in importer.run(days_back=request.days_back, restart=request.restart):
            yield pb.RunImportResponse(
                run_id=progress.run_id,
                phase=_PHASES[progress.phase],
                phase_done=progress.phase_done,
                total_done=progress.total_done,
                resumed=progress.resumed,
                finished=progress.finished,
                requests=progress.requests,
                rate_limited=progress.rate_limited,
            )

    # ------------------------------------------------------------ clients and products

    async def ListClients(
        self, request: pb.ListClientsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListClientsResponse:
        limit = paging.page_size(request.page_size, default=DEFAULT_PAGE, maximum=MAX_PAGE)
        scope = {"list": "clients"}
        after = paging.decode_token(request.page_token, kinds=(str,), scope=scope)
        rows = await self._read(lambda conn: store.list_clients(conn, after=after[0] if after else "", limit=limit + 1))
        records, token = paging.next_page(rows, limit, lambda r: (r.client_id,), scope=scope)
        return pb.ListClientsResponse(clients=[messages.client_pb(r) for r in records], next_page_token=token)

    async def GetClient(self, request: pb.GetClientRequest, context: grpc.aio.ServicerContext) -> pb.GetClientResponse:
        if not request.client_id:
            raise ValidationError("client_id", "give a client id (a Stripe customer id, or crm_<id>)")
        record = await self._read(lambda conn: store.get_client(conn, request.client_id))
        if record is None:
            raise NotFoundError(f"no client {request.client_id}")
        return pb.GetClientResponse(client=messages.client_pb(record))

    async def ImportCrmClients(
        self, request: pb.ImportCrmClientsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ImportCrmClientsResponse:
        if not request.clients or len(request.clients) > MAX_CRM_CLIENTS:
            raise ValidationError("clients", f"send 1 to {MAX_CRM_CLIENTS} clients per call")
        seen: set[str] = set()
        clients = []
        for i, c in enumerate(request.clients):
            where = f"clients[{i}]"
            if not c.crm_client_id or len(c.crm_client_id) > 200:
                raise ValidationError(f"{where}.crm_client_id", "give the CRM's id for this client (1 to 200 chars)")
            if c.crm_client_id in seen:
                raise ValidationError(f"{where}.crm_client_id", "appears twice in this request")
            seen.add(c.crm_client_id)
            if not c.name.strip():
                raise ValidationError(f"{where}.name", "give the client's name")
            if c.email and not _EMAIL.match(c.email):
                raise ValidationError(f"{where}.email", "not an email address")
            if c.stripe_customer_id and not c.stripe_customer_id.startswith("cus_"):
                raise ValidationError(f"{where}.stripe_customer_id", "a Stripe customer id starts with cus_")
            if not (c.email or c.stripe_customer_id):
                raise ValidationError(where, "give an email or a Stripe customer id, or no contract can attach")
            clients.append(store.CrmClient(c.crm_client_id, c.name.strip(), c.email, c.stripe_customer_id))
        async with self.runtime.pool.acquire() as conn, conn.transaction():
            await store.upsert_crm_clients(conn, clients)
        return pb.ImportCrmClientsResponse(imported=len(clients))

    async def ListProducts(
        self, request: pb.ListProductsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListProductsResponse:
        limit = paging.page_size(request.page_size, default=DEFAULT_PAGE, maximum=MAX_PAGE)
        scope = {"list": "products"}
        after = paging.decode_token(request.page_token, kinds=(str,), scope=scope)
        rows = await self._read(
            lambda conn: store.list_products(conn, after=after[0] if after else "", limit=limit + 1)
        )
        products, token = paging.next_page(rows, limit, lambda p: (p.stripe_product_id,), scope=scope)
        return pb.ListProductsResponse(products=[messages.product_pb(p) for p in products], next_page_token=token)

    # ------------------------------------------------------------ contracts

    async def ListContracts(
        self, request: pb.ListContractsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListContractsResponse:
        limit = paging.page_size(request.page_size, default=DEFAULT_PAGE, maximum=MAX_PAGE)
        start, end = _iso("start_date", request.start_date), _iso("end_date", request.end_date)
        if start and end and start > end:
            raise ValidationError("end_date", "is before start_date")
        source = ""
        if request.source:
            if request.source not in messages.SOURCE_FROM_PB:
                raise ValidationError("source", "use CONTRACT_SOURCE_INVOICE or CONTRACT_SOURCE_SUBSCRIPTION")
            source = messages.SOURCE_FROM_PB[request.source]
        flt = store.ContractFilter(
            client_id=request.client_id,
            source=source,
            start_date=start,
            end_date=end,
            waiting_only=request.waiting_for_client,
        )
        scope = {"list": "contracts", **dataclasses.asdict(flt)}
        after = paging.decode_token(request.page_token, kinds=(str,), scope=scope)
        rows = await self._read(
            lambda conn: store.list_contracts(conn, flt, after=after[0] if after else "", limit=limit + 1)
        )
        records, token = paging.next_page(rows, limit, lambda r: (r.contract.contract_id,), scope=scope)
        return pb.ListContractsResponse(contracts=[messages.contract_pb(r) for r in records], next_page_token=token)

    async def GetContract(
        self, request: pb.GetContractRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetContractResponse:
        if not request.contract_id:
            raise ValidationError("contract_id", "give the Stripe invoice (in_…) or subscription (sub_…) id")
        record = await self._read(lambda conn: store.get_contract(conn, request.contract_id))
        if record is None:
            raise NotFoundError(f"no contract {request.contract_id}")
        return pb.GetContractResponse(contract=messages.contract_pb(record))

    # ------------------------------------------------------------ snapshot

    async def ExportSnapshot(
        self, request: pb.ExportSnapshotRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ExportSnapshotResponse]:
        """Everything from one REPEATABLE READ snapshot: a CRM's bulk import never sees a
        contract whose client or product was written after the export began."""
        async with self.runtime.pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
            after = ""
            while True:
                clients = await store.list_clients(conn, after=after, limit=DEFAULT_PAGE)
                for client in clients:
                    yield pb.ExportSnapshotResponse(client=messages.client_pb(client))
                if len(clients) < DEFAULT_PAGE:
                    break
                after = clients[-1].client_id
            after = ""
            while True:
                products = await store.list_products(conn, after=after, limit=DEFAULT_PAGE)
                for product in products:
                    yield pb.ExportSnapshotResponse(product=messages.product_pb(product))
                if len(products) < DEFAULT_PAGE:
                    break
                after = products[-1].stripe_product_id
            after = ""
            everything = store.ContractFilter()
            while True:
                contracts = await store.list_contracts(conn, everything, after=after, limit=DEFAULT_PAGE)
                for contract in contracts:
                    yield pb.ExportSnapshotResponse(contract=messages.contract_pb(contract))
                if len(contracts) < DEFAULT_PAGE:
                    break
                after = contracts[-1].contract.contract_id


__all__ = ["CrmExportServicer", "ImportOptions"]

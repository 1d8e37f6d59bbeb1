"""The CustomerService gRPC API: reads, link changes, the mapping import, sync to Stripe and
portal links. Every argument is validated here, naming the field and what to do about it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC
from typing import TYPE_CHECKING
from urllib.parse import urlparse

import grpc
from syncmesh.customer.v1 import customer_service_pb2 as pb
from syncmesh.customer.v1 import customer_service_pb2_grpc, events_pb2

from services.common import outbox, paging
from services.common.auth import Policy, Role
from services.common.errors import ConflictError, NotFoundError, SyncMeshError, ValidationError
from services.common.grpc_input import quote
from services.common.grpc_server import current_trace_id, status_for
from services.customer import store, stripe_sync
from services.customer.mapping import (
    ERP_CUSTOMER_ID,
    STRIPE_CUSTOMER_ID,
    CustomerRecord,
    ImportProblem,
    email_problem,
    parse_mapping_csv,
)
from services.customer.messages import customer_message, history_message, timestamp

if TYPE_CHECKING:
    from services.common.service import ServiceRuntime

log = logging.getLogger(__name__)

#: The least role each method needs (services.common.auth): reads for readers; changes to links,
#: writes to Stripe and billing-portal links (a bearer link into a customer's billing) for operators.
POLICY: Policy = {
    "GetCustomer": Role.READER,
    "FindCustomer": Role.READER,
    "ListCustomers": Role.READER,
    "GetCustomerHistory": Role.READER,
    "UnlinkCustomer": Role.OPERATOR,
    "ImportCustomerMappings": Role.OPERATOR,
    "ImportCustomerMappingsWithProgress": Role.OPERATOR,
    "SyncCustomerToStripe": Role.OPERATOR,
    "MassSyncCustomersToStripe": Role.OPERATOR,
    "CreatePortalSession": Role.OPERATOR,
}

MAX_IMPORT_BYTES = 256 * 1024 * 1024
#: While one step of an import runs long, its progress is sent again this often.
PROGRESS_HEARTBEAT_SECONDS = 2.0
MAX_PROBLEMS_REPORTED = 1000
MAX_MASS_SYNC = 10_000


def _check_erp_id(field: str, value: str) -> str:
    if not ERP_CUSTOMER_ID.match(value):
        raise ValidationError(field, "not an ERP customer id (1-64 letters, digits, - _ . /, e.g. CUST-000123)")
    return value


def _check_stripe_id(field: str, value: str) -> str:
    if not STRIPE_CUSTOMER_ID.match(value):
        raise ValidationError(field, "not a Stripe customer id (cus_…)")
    return value


def _check_email(field: str, value: str) -> str:
    problem = email_problem(value)
    if problem:
        raise ValidationError(field, problem)
    return value.strip()


def _one_id(erp_customer_id: str, stripe_customer_id: str) -> tuple[str | None, str | None]:
    if bool(erp_customer_id) == bool(stripe_customer_id):
        raise ValidationError("erp_customer_id", "set exactly one of erp_customer_id and stripe_customer_id")
    if erp_customer_id:
        return _check_erp_id("erp_customer_id", erp_customer_id), None
    return None, _check_stripe_id("stripe_customer_id", stripe_customer_id)


def _check_return_url(url: str, allowed_hosts: tuple[str, ...]) -> None:
    """A portal return URL must be https (the portal session is a bearer link to a customer's
    billing) and, when `SYNCMESH_PORTAL_RETURN_HOSTS` is set, point at one of those hosts."""
    try:
        parsed = urlparse(url)
        host = parsed.hostname
    except ValueError:
        raise ValidationError("return_url", "is not a URL: send an absolute https:// URL") from None
    if parsed.scheme != "https" or not host:
        raise ValidationError("return_url", "must be an absolute https:// URL")
    if allowed_hosts and host.lower() not in allowed_hosts:
        raise ValidationError("return_url", f"host {quote(host)} is not allowed (SYNCMESH_PORTAL_RETURN_HOSTS)")


class CustomerServicer(customer_service_pb2_grpc.CustomerServiceServicer):
    def __init__(self, runtime: ServiceRuntime) -> None:
        self.runtime = runtime

    def _wake_relay(self) -> None:
        if self.runtime.relay is not None:
            self.runtime.relay.wake()

    async def _resolve(self, erp_customer_id: str, stripe_customer_id: str) -> CustomerRecord:
        erp_id, stripe_id = _one_id(erp_customer_id, stripe_customer_id)
        async with self.runtime.pool.acquire() as conn:
            if erp_id is not None:
                record = await store.get_by_erp_id(conn, erp_id)
                if record is None:
                    raise NotFoundError(f"no customer with ERP id {erp_id}")
            else:
                assert stripe_id is not None
                record = await store.get_by_stripe_id(conn, stripe_id)
                if record is None:
                    raise NotFoundError(f"no customer is linked to Stripe customer {stripe_id}")
        return record

    async def GetCustomer(
        self, request: pb.GetCustomerRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetCustomerResponse:
        record = await self._resolve(request.erp_customer_id, request.stripe_customer_id)
        return pb.GetCustomerResponse(customer=customer_message(record))

    async def FindCustomer(
        self, request: pb.FindCustomerRequest, context: grpc.aio.ServicerContext
    ) -> pb.FindCustomerResponse:
        if not request.stripe_customer_id and not request.email:
            raise ValidationError("stripe_customer_id", "set stripe_customer_id, email, or both")
        stripe_id = (
            _check_stripe_id("stripe_customer_id", request.stripe_customer_id) if request.stripe_customer_id else None
        )
        email = _check_email("email", request.email) if request.email else None
        async with self.runtime.pool.acquire() as conn:
            if stripe_id is not None:
                record = await store.get_by_stripe_id(conn, stripe_id)
                if record is not None:
                    return pb.FindCustomerResponse(
                        customer=customer_message(record), matched_by=pb.MATCHED_BY_STRIPE_CUSTOMER_ID
                    )
            if email is not None:
                matches = await store.find_by_email(conn, email)
                if len(matches) > 1:
                    raise ConflictError(
                        f"{len(matches)} customers have this email: "
                        f"{', '.join(m.erp_customer_id for m in matches)}; look one up by its Stripe or ERP id"
                    )
                if matches:
                    return pb.FindCustomerResponse(
                        customer=customer_message(matches[0]), matched_by=pb.MATCHED_BY_EMAIL
                    )
        looked = " or ".join(
            part for part, given in (("Stripe customer id", stripe_id), ("email", email)) if given is not None
        )
        raise NotFoundError(f"no customer matches this {looked}")

    async def ListCustomers(
        self, request: pb.ListCustomersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListCustomersResponse:
        limit = paging.page_size(request.page_size)
        filters = store.ListFilter(
            email=_check_email("email", request.email) if request.email else None,
            updated_since=request.updated_since.ToDatetime(tzinfo=UTC) if request.HasField("updated_since") else None,
            active={pb.ACTIVE_FILTER_ACTIVE: True, pb.ACTIVE_FILTER_INACTIVE: False}.get(request.active),
        )
        scope = {"list": "customers", **dataclasses.asdict(filters)}
        after = paging.decode_token(request.page_token, kinds=(str,), scope=scope)
        async with self.runtime.pool.acquire() as conn:
            rows = await store.list_customers(conn, filters=filters, after=after[0] if after else None, limit=limit + 1)
        records, token = paging.next_page(rows, limit, lambda r: (r.erp_customer_id,), scope=scope)
        return pb.ListCustomersResponse(customers=[customer_message(r) for r in records], next_page_token=token)

    async def GetCustomerHistory(
        self, request: pb.GetCustomerHistoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetCustomerHistoryResponse:
        record = await self._resolve(request.erp_customer_id, request.stripe_customer_id)
        async with self.runtime.pool.acquire() as conn:
            rows = await store.history(conn, record.erp_customer_id)
        return pb.GetCustomerHistoryResponse(
            erp_customer_id=record.erp_customer_id, entries=[history_message(r) for r in rows]
        )

    async def UnlinkCustomer(
        self, request: pb.UnlinkCustomerRequest, context: grpc.aio.ServicerContext
    ) -> pb.UnlinkCustomerResponse:
        erp_id = _check_erp_id("erp_customer_id", request.erp_customer_id)
        if len(request.reason) > 500:
            raise ValidationError("reason", "at most 500 characters")
        async with self.runtime.pool.acquire() as conn, conn.transaction():
            record = await store.get_by_erp_id(conn, erp_id, for_update=True)
            if record is None:
                raise NotFoundError(f"no customer with ERP id {erp_id}")
            if record.stripe_customer_id is None:
                raise ConflictError(f"{erp_id} is not linked to a Stripe customer")
            previous = record.stripe_customer_id
            unlinked = await store.unlink(conn, erp_id)
            await store.record_history(
                conn,
                erp_customer_id=erp_id,
                stripe_customer_id=previous,
                action="unlink",
                outcome=stripe_sync.applied_by(request.reason),
            )
            await outbox.add_event(
                conn,
                service=store.SERVICE,
                event_name="customer_unlinked",
                message=events_pb2.CustomerUnlinked(
                    erp_customer_id=erp_id, stripe_customer_id=previous, reason=request.reason
                ),
            )
        self._wake_relay()
        return pb.UnlinkCustomerResponse(customer=customer_message(unlinked), previous_stripe_customer_id=previous)

    async def ImportCustomerMappings(
        self, request_iterator: AsyncIterator[pb.ImportCustomerMappingsRequest], context: grpc.aio.ServicerContext
    ) -> pb.ImportCustomerMappingsResponse:
        return await self._import(request_iterator)

    async def ImportCustomerMappingsWithProgress(
        self,
        request_iterator: AsyncIterator[pb.ImportCustomerMappingsWithProgressRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[pb.ImportCustomerMappingsWithProgressResponse]:
        """The import, with a message per step (and per chunk of rows copied), repeated every
        `PROGRESS_HEARTBEAT_SECONDS` while one statement runs long, then the result."""
        queue: asyncio.Queue[pb.ImportCustomerMappingsWithProgressResponse] = asyncio.Queue()
        steps = len(store.IMPORT_STEPS)
        rows = 0

        def step(name: str, rows_done: int) -> None:
            number = store.IMPORT_STEPS.index(name) + 1
            queue.put_nowait(
                pb.ImportCustomerMappingsWithProgressResponse(
                    step=name, step_number=number, steps=steps, rows_done=rows_done, rows=rows
                )
            )

        def sized(count: int) -> None:
            nonlocal rows
            rows = count

        task = asyncio.create_task(self._import(request_iterator, step=step, sized=sized))
        last: pb.ImportCustomerMappingsWithProgressResponse | None = None
        try:
            while not task.done():
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait(
                    {task, getter}, timeout=PROGRESS_HEARTBEAT_SECONDS, return_when=asyncio.FIRST_COMPLETED
                )
                if getter in done:
                    last = getter.result()
                    yield last
                    continue
                getter.cancel()
                if not done and last is not None:
                    yield last  # still at it: say so, so the caller's log keeps moving
            while not queue.empty():
                yield queue.get_nowait()
            result = task.result()
            yield pb.ImportCustomerMappingsWithProgressResponse(
                step="done", step_number=steps, steps=steps, rows_done=result.rows, rows=result.rows, result=result
            )
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _import(
        self,
        request_iterator: AsyncIterator[pb.ImportCustomerMappingsRequest]
        | AsyncIterator[pb.ImportCustomerMappingsWithProgressRequest],
        *,
        step: store.ImportStep = lambda _name, _done: None,
        sized: Callable[[int], None] = lambda _rows: None,
    ) -> pb.ImportCustomerMappingsResponse:
        chunks: list[bytes] = []
        size = 0
        dry_run: bool | None = None
        async for message in request_iterator:
            if dry_run is None:
                dry_run = message.dry_run
            size += len(message.csv_chunk)
            if size > MAX_IMPORT_BYTES:
                raise ValidationError("csv_chunk", f"the file is larger than {MAX_IMPORT_BYTES // 2**20} MiB: split it")
            chunks.append(message.csv_chunk)
        if dry_run is None or size == 0:
            raise ValidationError("csv_chunk", "no CSV data received: send the file's bytes in csv_chunk")
        try:
            text = b"".join(chunks).decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise ValidationError(
                "csv_chunk", f"the file is not UTF-8 (byte {exc.start}): save it as UTF-8 CSV"
            ) from None
        sized(0)
        step("reading the file", 0)
        sheet = parse_mapping_csv(text)
        sized(sheet.data_rows)
        response = pb.ImportCustomerMappingsResponse(dry_run=dry_run, rows=sheet.data_rows)
        if not sheet.rows and not sheet.problems:
            raise ValidationError("csv_chunk", "the file has no data rows")
        if sheet.problems:
            return _with_problems(response, sheet.problems)

        apply = not dry_run
        async with self.runtime.pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            try:
                outcome = await store.import_mappings(
                    conn, sheet.rows, apply=apply, step=step, outcome_text=stripe_sync.applied_by()
                )
                if outcome.problems:  # all or nothing: a refused file created and linked nothing
                    await transaction.rollback()
                    return _with_problems(response, outcome.problems)
                response.created, response.linked, response.unchanged = (
                    outcome.created,
                    outcome.linked,
                    outcome.unchanged,
                )
                if not apply:
                    await transaction.rollback()
                    return response
                step("queueing events", len(sheet.rows))
                links = [
                    (
                        "customer_linked",
                        events_pb2.CustomerLinked(
                            erp_customer_id=erp_id, stripe_customer_id=stripe_id, source=events_pb2.LINK_SOURCE_IMPORT
                        ),
                    )
                    for erp_id, stripe_id in outcome.new_links or []
                ]
                await outbox.add_events(
                    conn,
                    service=store.SERVICE,
                    events=[
                        *links,
                        (
                            "customer_mappings_imported",
                            events_pb2.CustomerMappingsImported(
                                rows=len(sheet.rows), created=outcome.created, linked=outcome.linked
                            ),
                        ),
                    ],
                )
            except BaseException:
                await transaction.rollback()
                raise
            step("committing", len(sheet.rows))
            await transaction.commit()
        self._wake_relay()
        response.applied = True
        log.info(
            "imported %d mappings (%d created, %d linked, %d unchanged)",
            len(sheet.rows),
            response.created,
            response.linked,
            response.unchanged,
        )
        return response

    async def SyncCustomerToStripe(
        self, request: pb.SyncCustomerToStripeRequest, context: grpc.aio.ServicerContext
    ) -> pb.SyncCustomerToStripeResponse:
        erp_id = _check_erp_id("erp_customer_id", request.erp_customer_id)
        email = _check_email("email", request.email) if request.email else None
        if len(request.name) > 256:
            raise ValidationError("name", "at most 256 characters")
        result = await stripe_sync.sync_customer(
            self.runtime.pool, self.runtime.stripe, erp_id, email=email, name=request.name or None
        )
        self._wake_relay()
        return pb.SyncCustomerToStripeResponse(customer=customer_message(result.record), action=result.action)  # type: ignore[arg-type]

    async def MassSyncCustomersToStripe(
        self, request: pb.MassSyncCustomersToStripeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.MassSyncCustomersToStripeResponse]:
        if request.all_active == bool(request.erp_customer_ids):
            raise ValidationError("erp_customer_ids", "give a list of ERP ids, or set all_active (not both)")
        if len(request.erp_customer_ids) > MAX_MASS_SYNC:
            raise ValidationError("erp_customer_ids", f"at most {MAX_MASS_SYNC} ids per call: split the list")
        if request.all_active:
            async with self.runtime.pool.acquire() as conn:
                ids = await store.active_erp_ids(conn)
        else:
            ids = list(dict.fromkeys(request.erp_customer_ids))
        for erp_id in ids:
            try:
                _check_erp_id("erp_customer_ids", erp_id)
                result = await stripe_sync.sync_customer(self.runtime.pool, self.runtime.stripe, erp_id)
            except SyncMeshError as exc:
                mapped = status_for(exc)
                code = mapped[0].name if mapped else grpc.StatusCode.INTERNAL.name
                yield pb.MassSyncCustomersToStripeResponse(
                    erp_customer_id=erp_id, ok=False, error_code=code, error_message=str(exc)
                )
                continue
            except Exception:
                trace_id = current_trace_id()
                log.exception("mass sync failed for %s (trace id %s)", erp_id, trace_id)
                yield pb.MassSyncCustomersToStripeResponse(
                    erp_customer_id=erp_id,
                    ok=False,
                    error_code=grpc.StatusCode.INTERNAL.name,
                    error_message=f"internal error: see the service log for trace id {trace_id}",
                )
                continue
            self._wake_relay()
            yield pb.MassSyncCustomersToStripeResponse(
                erp_customer_id=erp_id,
                ok=True,
                stripe_customer_id=result.record.stripe_customer_id or "",
                action=result.action,  # type: ignore[arg-type]
            )

    async def CreatePortalSession(
        self, request: pb.CreatePortalSessionRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreatePortalSessionResponse:
        if request.return_url:
            _check_return_url(request.return_url, self.runtime.settings.portal_return_hosts)
        record = await self._resolve(request.erp_customer_id, request.stripe_customer_id)
        if record.stripe_customer_id is None:
            raise ConflictError(f"{record.erp_customer_id} is not linked to a Stripe customer: sync it to Stripe first")
        if not record.active:
            raise ConflictError(f"{record.erp_customer_id} is inactive: its Stripe customer was deleted")
        session = await stripe_sync.create_portal_session(
            self.runtime.stripe, record.stripe_customer_id, request.return_url or None
        )
        return pb.CreatePortalSessionResponse(
            url=session.url,
            session_id=session.session_id,
            stripe_customer_id=session.stripe_customer_id,
            created_at=timestamp(session.created_at),
            expires_at=timestamp(session.expires_at),
        )


def _with_problems(
    response: pb.ImportCustomerMappingsResponse, problems: Sequence[ImportProblem]
) -> pb.ImportCustomerMappingsResponse:
    ordered = sorted(problems)
    response.problem_count = len(ordered)
    response.problems.extend(
        pb.ImportProblem(line=p.line, field=p.field, reason=p.reason) for p in ordered[:MAX_PROBLEMS_REPORTED]
    )
    response.applied = False
    return response

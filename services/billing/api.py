"""The billing service's gRPC API: reads of the ERP ledger, and the price -> item data sheet.

Every argument is checked before any query runs, and a bad one is refused naming the field and
what to send instead; the import is all-or-nothing, so a file with one bad line changes nothing.
"""

from __future__ import annotations

import csv
import functools
import io
import re
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, date, datetime, tzinfo
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
from syncmesh.billing.v1 import billing_service_pb2 as pb
from syncmesh.billing.v1 import billing_service_pb2_grpc as pb_grpc
from syncmesh.type.v1 import money_pb2

from services.billing import store
from services.billing.announce import hold_reason
from services.billing.ledger import ledger_as_of
from services.billing.records import InvoiceLineRecord, InvoiceRecord
from services.billing.settings import BillingSettings
from services.common import paging
from services.common.auth import Policy, Role
from services.common.errors import NotFoundError, ValidationError
from services.common.grpc_input import quote, string_problem

#: The list requests filtered by customer and invoice, which share one paging path.
_CustomerInvoicePage = pb.ListPaymentsRequest | pb.ListCreditMemosRequest | pb.ListRefundsRequest
#: A record of one of those lists.
Row = TypeVar("Row")

if TYPE_CHECKING:
    from services.common.service import ServiceRuntime

#: The least role each method needs (services.common.auth): the ledger is read by readers; the
#: price -> item sheet, which changes how every later invoice is booked, by operators.
POLICY: Policy = {
    "GetInvoice": Role.READER,
    "ListInvoices": Role.READER,
    "ListPayments": Role.READER,
    "ListCreditMemos": Role.READER,
    "ListRefunds": Role.READER,
    "GetCustomerBalance": Role.READER,
    "ListCreditHolds": Role.READER,
    "GetRevenueSchedule": Role.READER,
    "ImportItemMappings": Role.OPERATOR,
    "ListUnmappedPrices": Role.READER,
    "GetRecordHistory": Role.READER,
}

MAX_IMPORT_ROWS = 100_000
CSV_HEADER = ["stripe_price_id", "erp_item_id"]
_PRICE_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,255}$")

STATUS_TO_PB = {
    "draft": pb.INVOICE_STATUS_DRAFT,
    "open": pb.INVOICE_STATUS_OPEN,
    "paid_in_full": pb.INVOICE_STATUS_PAID_IN_FULL,
    "voided": pb.INVOICE_STATUS_VOIDED,
    "written_off": pb.INVOICE_STATUS_WRITTEN_OFF,
}
PB_TO_STATUS = {v: k for k, v in STATUS_TO_PB.items()}
MEMO_KIND_TO_PB = {
    "credit_note": pb.CREDIT_MEMO_KIND_CREDIT_NOTE,
    "refund": pb.CREDIT_MEMO_KIND_REFUND,
    "write_off": pb.CREDIT_MEMO_KIND_WRITE_OFF,
}


def _money(amount: int | None, currency: str) -> money_pb2.Money:
    return money_pb2.Money(amount_minor=int(amount or 0), currency=currency)


def _iso(value: date | datetime | None) -> str:
    return value.isoformat() if value is not None else ""


def _date_arg(field: str, raw: str) -> date | None:
    if not raw:
        return None
    try:
        return date.fromisoformat(raw)
    except ValueError:
        raise ValidationError(field, f"{quote(raw)} is not an ISO date: send e.g. 2025-01-31") from None


def _stripe_id(field: str, raw: str, *, required: bool = False) -> str | None:
    value = raw.strip()
    if not value:
        if required:
            raise ValidationError(field, "is required")
        return None
    if not _PRICE_ID.match(value):
        raise ValidationError(field, f"{quote(value)} is not an id (letters, digits, _ - . only)")
    return value


def invoice_message(row: InvoiceRecord, lines: Sequence[InvoiceLineRecord] = ()) -> pb.Invoice:
    cur = row.currency
    return pb.Invoice(
        erp_invoice_id=row.erp_invoice_id,
        stripe_invoice_id=row.stripe_invoice_id,
        stripe_customer_id=row.stripe_customer_id,
        erp_customer_id=row.erp_customer_id or "",
        subscription_id=row.subscription_id or "",
        number=row.number or "",
        status=STATUS_TO_PB.get(row.erp_status, pb.INVOICE_STATUS_UNSPECIFIED),
        stripe_status=row.stripe_status,
        transaction_date=_iso(row.transaction_date),
        due_date=_iso(row.due_date),
        currency=cur,
        subtotal=_money(row.subtotal, cur),
        discount=_money(row.discount_total, cur),
        tax=_money(row.tax, cur),
        total=_money(row.total, cur),
        amount_paid=_money(row.amount_paid, cur),
        credits_applied=_money(row.credits_applied, cur),
        amount_remaining=_money(row.amount_remaining, cur),
        lines_complete=row.lines_complete,
        api_shape=row.api_shape,
        unattributed_paid=_money(row.unattributed_paid, cur),
        lines=[
            pb.InvoiceLine(
                line_no=line.line_no,
                kind=pb.LINE_KIND_DISCOUNT if line.kind == "discount" else pb.LINE_KIND_ITEM,
                erp_item_id=line.erp_item_id,
                item_mapped=line.item_mapped,
                stripe_price_id=line.stripe_price_id or "",
                description=line.description,
                quantity=line.quantity,
                unit_amount=_money(line.unit_amount, cur),
                unit_amount_decimal=line.unit_amount_decimal or "",
                amount=_money(line.amount, cur),
                discount_amount=_money(line.discount_amount, cur),
                recognized_amount=_money(line.recognized_amount, cur),
                period_start=_iso(line.period_start),
                period_end=_iso(line.period_end),
                proration=line.proration,
                revenue_account=line.revenue_account or "",
                stripe_line_id=line.stripe_line_id or "",
                stripe_discount_id=line.discount_id or "",
                stripe_coupon_id=line.coupon_id or "",
                stripe_product_id=line.stripe_product_id or "",
                tax_amount=_money(line.tax_amount, cur),
            )
            for line in lines
        ],
    )


def parse_item_csv(data: bytes) -> tuple[list[tuple[str, str]], list[pb.ImportProblem]]:
    """Rows and every problem, with 1-based file line numbers (the header is line 1)."""
    problems: list[pb.ImportProblem] = []
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return [], [pb.ImportProblem(line=0, field="csv", message=f"not UTF-8 text (byte {exc.start})")]
    reader = csv.reader(io.StringIO(text))
    rows: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    header_done = False
    records = iter(reader)
    while True:
        try:
            record = next(records)
        except StopIteration:
            break
        except csv.Error as exc:  # e.g. a cell over the csv module's field size limit
            problems.append(pb.ImportProblem(line=reader.line_num, field="csv", message=f"not readable as CSV: {exc}"))
            break
        line = reader.line_num
        if not record or all(not cell.strip() for cell in record):
            continue
        cells = [cell.strip() for cell in record]
        unstorable = next(((i, p) for i, c in enumerate(cells) if (p := string_problem(c))), None)
        if unstorable is not None:
            column = CSV_HEADER[unstorable[0]] if unstorable[0] < len(CSV_HEADER) else "row"
            problems.append(pb.ImportProblem(line=line, field=column, message=unstorable[1]))
            header_done = True
            continue
        if not header_done:
            header_done = True
            if [c.lower() for c in cells] != CSV_HEADER:
                problems.append(
                    pb.ImportProblem(
                        line=line,
                        field="header",
                        message=f"must be exactly {','.join(CSV_HEADER)} (got {quote(','.join(cells))})",
                    )
                )
            continue
        if len(cells) != 2:
            problems.append(pb.ImportProblem(line=line, field="row", message=f"has {len(cells)} columns, expected 2"))
            continue
        price, item = cells
        if not _PRICE_ID.match(price):
            problems.append(
                pb.ImportProblem(
                    line=line, field="stripe_price_id", message=f"{quote(price)} is not a Stripe price or plan id"
                )
            )
        elif price in seen:
            problems.append(
                pb.ImportProblem(
                    line=line, field="stripe_price_id", message=f"{price} is already on line {seen[price]}"
                )
            )
        else:
            seen[price] = line
        if not item or len(item) > 200:
            problems.append(pb.ImportProblem(line=line, field="erp_item_id", message="must be 1 to 200 characters"))
        rows.append((price, item))
        if len(rows) > MAX_IMPORT_ROWS:
            problems.append(pb.ImportProblem(line=line, field="csv", message=f"more than {MAX_IMPORT_ROWS} rows"))
            break
    if not header_done:
        problems.append(
            pb.ImportProblem(line=1, field="header", message=f"file is empty: start with {','.join(CSV_HEADER)}")
        )
    elif not rows and not problems:
        problems.append(pb.ImportProblem(line=2, field="row", message="no mappings after the header"))
    return rows, problems


class BillingServicer(pb_grpc.BillingServiceServicer):
    def __init__(self, runtime: ServiceRuntime, policy: BillingSettings | None = None, *, zone: tzinfo = UTC) -> None:
        self.runtime = runtime
        #: The billing policy the process runs under (what ListCreditHolds says about holds).
        self.policy = policy if policy is not None else BillingSettings()
        #: The ledger's time zone (SYNCMESH_LEDGER_TIMEZONE): `as_of` and "today" are days there.
        self.zone = zone

    async def _invoice_key(self, conn: Any, field: str, raw: str) -> str | None:
        """An in_/INV- argument as the Stripe invoice id (NOT_FOUND when unknown)."""
        value = _stripe_id(field, raw)
        if value is None:
            return None
        row = await store.get_invoice(conn, value)
        if row is None:
            raise NotFoundError(f"no invoice {value} (give an ERP id INV-... or a Stripe id in_...)")
        return str(row.stripe_invoice_id)

    async def GetInvoice(
        self, request: pb.GetInvoiceRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetInvoiceResponse:
        invoice_id = _stripe_id("invoice_id", request.invoice_id, required=True)
        assert invoice_id is not None
        async with self.runtime.pool.acquire() as conn:
            found = await store.get_invoice_with_lines(conn, invoice_id)
        if found is None:
            raise NotFoundError(f"no invoice {invoice_id} (give an ERP id INV-... or a Stripe id in_...)")
        row, lines = found
        return pb.GetInvoiceResponse(invoice=invoice_message(row, lines))

    async def ListInvoices(
        self, request: pb.ListInvoicesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListInvoicesResponse:
        customer = _stripe_id("stripe_customer_id", request.stripe_customer_id)
        status = PB_TO_STATUS.get(request.status) if request.status else None
        if request.status and status is None:
            raise ValidationError("status", "unknown status: use DRAFT, OPEN, PAID_IN_FULL, VOIDED or WRITTEN_OFF")
        start = _date_arg("from_date", request.from_date)
        end = _date_arg("to_date", request.to_date)
        if start and end and end < start:
            raise ValidationError("to_date", "is before from_date")
        limit = paging.page_size(request.page_size)
        scope = {"list": "invoices", "customer": customer, "status": status, "from": start, "to": end}
        after = paging.decode_token(request.page_token, kinds=(date, str), scope=scope)
        async with self.runtime.pool.acquire() as conn:
            rows = await store.list_invoices(
                conn,
                customer=customer,
                status=status,
                from_date=start,
                to_date=end,
                after=(after[0], after[1]) if after else None,
                limit=limit + 1,
            )
        page, token = paging.next_page(rows, limit, lambda r: (r.transaction_date, r.stripe_invoice_id), scope=scope)
        return pb.ListInvoicesResponse(invoices=[invoice_message(r) for r in page], next_page_token=token)

    async def _by_customer_and_invoice(
        self,
        request: _CustomerInvoicePage,
        list_name: str,
        kinds: Sequence[paging.KeyKind],
        fetch: Callable[..., Awaitable[list[Row]]],
        key: Callable[[Row], Sequence[paging.Key]],
    ) -> tuple[list[Row], str]:
        """One page of a ledger list filtered by customer and invoice (payments, memos, refunds)."""
        customer = _stripe_id("stripe_customer_id", request.stripe_customer_id)
        limit = paging.page_size(request.page_size)
        scope = {"list": list_name, "customer": customer, "invoice": request.invoice_id.strip()}
        after = paging.decode_token(request.page_token, kinds=kinds, scope=scope)
        async with self.runtime.pool.acquire() as conn:
            invoice = await self._invoice_key(conn, "invoice_id", request.invoice_id)
            rows = await fetch(
                conn, customer=customer, invoice=invoice, after=(after[0], after[1]) if after else None, limit=limit + 1
            )
        return paging.next_page(rows, limit, key, scope=scope)

    async def ListPayments(
        self, request: pb.ListPaymentsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListPaymentsResponse:
        page, token = await self._by_customer_and_invoice(
            request, "payments", (int, str), store.list_payments, lambda r: (r.paid_at, r.stripe_payment_id)
        )
        return pb.ListPaymentsResponse(
            payments=[
                pb.Payment(
                    erp_payment_id=r.erp_payment_id,
                    stripe_payment_id=r.stripe_payment_id,
                    stripe_invoice_id=r.stripe_invoice_id or "",
                    erp_invoice_id=r.erp_invoice_id or "",
                    stripe_customer_id=r.customer or "",
                    amount=_money(r.amount, r.currency),
                    payment_date=_iso(r.paid_on),
                    method=r.method,
                    charge_id=r.charge_id or "",
                    payment_intent_id=r.payment_intent_id or "",
                    date_source=r.date_source or "",
                )
                for r in page
            ],
            next_page_token=token,
        )

    async def ListCreditMemos(
        self, request: pb.ListCreditMemosRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListCreditMemosResponse:
        # Superseded memos (a refund a credit note already carries) only when asked: summing the
        # default list gives the credit outstanding once.
        page, token = await self._by_customer_and_invoice(
            request,
            "credit_memos+superseded" if request.include_superseded else "credit_memos",
            (date, str),
            functools.partial(store.list_credit_memos, include_superseded=request.include_superseded),
            lambda r: (r.memo_date, r.memo_key),
        )
        async with self.runtime.pool.acquire() as conn:
            lines = await store.memo_lines(conn, [r.memo_key for r in page])
        return pb.ListCreditMemosResponse(
            credit_memos=[
                pb.CreditMemo(
                    erp_credit_memo_id=r.erp_credit_memo_id,
                    source_id=r.memo_key,
                    kind=MEMO_KIND_TO_PB[r.kind],
                    stripe_invoice_id=r.stripe_invoice_id or "",
                    erp_invoice_id=r.erp_invoice_id or "",
                    stripe_customer_id=r.customer or "",
                    amount=_money(r.amount, r.currency),
                    memo_date=_iso(r.memo_date),
                    status=r.status,
                    applied_to=r.applied_to,
                    memo=r.memo or "",
                    date_source=r.date_source or "",
                    number=r.number or "",
                    lines=[
                        pb.CreditMemoLine(
                            line_no=line.line_no,
                            description=line.description,
                            quantity=line.quantity,
                            unit_amount=_money(line.unit_amount, r.currency),
                            amount=_money(line.amount, r.currency),
                            invoice_line_item=line.invoice_line_item or "",
                        )
                        for line in lines.get(r.memo_key, [])
                    ],
                )
                for r in page
            ],
            next_page_token=token,
        )

    async def ListRefunds(
        self, request: pb.ListRefundsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRefundsResponse:
        page, token = await self._by_customer_and_invoice(
            request, "refunds", (int, str), store.list_refunds, lambda r: (r.stripe_created, r.stripe_refund_id)
        )
        return pb.ListRefundsResponse(
            refunds=[
                pb.Refund(
                    erp_refund_id=r.erp_refund_id,
                    stripe_refund_id=r.stripe_refund_id,
                    stripe_invoice_id=r.stripe_invoice_id or "",
                    erp_invoice_id=r.erp_invoice_id or "",
                    stripe_customer_id=r.customer or "",
                    amount=_money(r.amount, r.currency),
                    refund_date=_iso(r.refunded_on),
                    status=r.status,
                    charge_id=r.charge_id or "",
                    erp_credit_memo_id=r.erp_credit_memo_id or "",
                )
                for r in page
            ],
            next_page_token=token,
        )

    async def GetCustomerBalance(
        self, request: pb.GetCustomerBalanceRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetCustomerBalanceResponse:
        customer = _stripe_id("stripe_customer_id", request.stripe_customer_id, required=True)
        assert customer is not None
        today = datetime.now(self.zone).date()
        as_of = _date_arg("as_of", request.as_of) or today
        async with self.runtime.pool.acquire() as conn:
            if not await store.customer_known(conn, customer):
                raise NotFoundError(f"no customer {customer} in the ledger (no invoice, payment or link seen)")
            if as_of >= today:  # the ledger as it stands
                rows = [
                    (r.currency, r.due_date, r.amount_remaining) for r in await store.open_receivables(conn, customer)
                ]
            else:  # the ledger as it stood: later payments, credits, voids and write-offs left out
                rows = []
                for r in await store.receivable_histories(conn, customer, as_of):
                    state = ledger_as_of(r.history, as_of, self.zone)
                    if state is not None and state.erp_status == "open" and state.amount_remaining > 0:
                        rows.append((r.currency, r.due_date, state.amount_remaining))
            on_hold = await store.customer_on_hold(
                conn, customer, as_of=None if as_of >= today else as_of, zone=self.zone
            )
        buckets: dict[str, list[int]] = {}
        counts: dict[str, int] = {}
        for currency, due_date, remaining in rows:
            b = buckets.setdefault(currency, [0, 0, 0, 0, 0, 0])
            overdue = (as_of - due_date).days
            index = 1 if overdue <= 0 else 2 if overdue <= 30 else 3 if overdue <= 60 else 4 if overdue <= 90 else 5
            b[0] += remaining
            b[index] += remaining
            counts[currency] = counts.get(currency, 0) + 1
        return pb.GetCustomerBalanceResponse(
            stripe_customer_id=customer,
            as_of=as_of.isoformat(),
            on_credit_hold=on_hold,
            balances=[
                pb.CurrencyBalance(
                    currency=cur,
                    open=_money(b[0], cur),
                    current=_money(b[1], cur),
                    days_1_30=_money(b[2], cur),
                    days_31_60=_money(b[3], cur),
                    days_61_90=_money(b[4], cur),
                    days_over_90=_money(b[5], cur),
                    open_invoices=counts[cur],
                )
                for cur, b in sorted(buckets.items())
            ],
        )

    async def ListCreditHolds(
        self, request: pb.ListCreditHoldsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListCreditHoldsResponse:
        customer = _stripe_id("stripe_customer_id", request.stripe_customer_id)
        limit = paging.page_size(request.page_size)
        scope = {"list": "credit_holds", "customer": customer, "active_only": request.active_only}
        after = paging.decode_token(request.page_token, kinds=(datetime, str, str), scope=scope)
        async with self.runtime.pool.acquire() as conn:
            rows = await store.list_holds(
                conn,
                customer=customer,
                active_only=request.active_only,
                after=(after[0], after[1], after[2]) if after else None,
                limit=limit + 1,
            )
        page, token = paging.next_page(
            rows, limit, lambda r: (r.placed_at, r.stripe_customer_id, r.stripe_invoice_id), scope=scope
        )
        return pb.ListCreditHoldsResponse(
            holds=[
                pb.CreditHold(
                    stripe_customer_id=r.stripe_customer_id,
                    stripe_invoice_id=r.stripe_invoice_id,
                    reason=r.reason,
                    placed_at=_iso(r.placed_at),
                    released_at=_iso(r.released_at),
                    release_reason=r.release_reason or "",
                    active=r.released_at is None,
                    reason_code=hold_reason(r.reason_code),  # type: ignore[arg-type]
                    release_reason_code=hold_reason(r.release_reason_code),  # type: ignore[arg-type]
                    placed_date_source=r.placed_date_source or "",
                    released_date_source=r.released_date_source or "",
                )
                for r in page
            ],
            next_page_token=token,
            credit_hold_enabled=self.policy.credit_hold,
            release_on_pay=self.policy.release_hold_on_pay,
        )

    async def GetRevenueSchedule(
        self, request: pb.GetRevenueScheduleRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetRevenueScheduleResponse:
        invoice_id = _stripe_id("invoice_id", request.invoice_id, required=True)
        assert invoice_id is not None
        async with self.runtime.pool.acquire() as conn:
            row = await store.get_invoice(conn, invoice_id)
            if row is None:
                raise NotFoundError(f"no invoice {invoice_id} (give an ERP id INV-... or a Stripe id in_...)")
            lines = await store.invoice_lines(conn, row.stripe_invoice_id)
            entries = await store.revenue_entries(conn, row.stripe_invoice_id)
        cur = row.currency
        by_line: dict[int, list[pb.RevenueScheduleEntry]] = {}
        for e in entries:
            by_line.setdefault(e.line_no, []).append(
                pb.RevenueScheduleEntry(period=e.period.isoformat(), amount=_money(e.amount, cur))
            )
        return pb.GetRevenueScheduleResponse(
            erp_invoice_id=row.erp_invoice_id,
            stripe_invoice_id=row.stripe_invoice_id,
            lines=[
                pb.LineSchedule(
                    line_no=line.line_no,
                    erp_item_id=line.erp_item_id,
                    line_amount=_money(line.amount, cur),
                    recognized_amount=_money(line.recognized_amount, cur),
                    revenue_account=line.revenue_account or "",
                    entries=by_line.get(line.line_no, []),
                )
                for line in lines
            ],
        )

    async def ImportItemMappings(
        self, request: pb.ImportItemMappingsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ImportItemMappingsResponse:
        rows, problems = parse_item_csv(request.csv)
        if problems:
            return pb.ImportItemMappingsResponse(
                rows=len(rows), problems=problems, dry_run=request.dry_run, applied=False
            )
        write = not request.dry_run
        async with self.runtime.pool.acquire() as conn, conn.transaction():
            counts = await store.import_item_mappings(conn, rows, write=write)
        return pb.ImportItemMappingsResponse(
            rows=len(rows),
            created=counts.created,
            updated=counts.updated,
            unchanged=counts.unchanged,
            dry_run=request.dry_run,
            applied=write,
            lines_remapped=counts.lines_remapped,
        )

    async def ListUnmappedPrices(
        self, request: pb.ListUnmappedPricesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListUnmappedPricesResponse:
        limit = paging.page_size(request.page_size)
        scope = {"list": "unmapped_prices"}
        after = paging.decode_token(request.page_token, kinds=(str,), scope=scope)
        async with self.runtime.pool.acquire() as conn:
            rows = await store.list_unmapped(conn, after=after[0] if after else None, limit=limit + 1)
        page, token = paging.next_page(rows, limit, lambda r: (r.stripe_price_id,), scope=scope)
        return pb.ListUnmappedPricesResponse(
            prices=[
                pb.UnmappedPrice(
                    stripe_price_id=r.stripe_price_id,
                    last_invoice_id=r.last_invoice_id,
                    invoices_seen=r.invoices_seen,
                    first_seen_at=_iso(r.first_seen_at),
                    last_seen_at=_iso(r.last_seen_at),
                )
                for r in page
            ],
            next_page_token=token,
        )

    async def GetRecordHistory(
        self, request: pb.GetRecordHistoryRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetRecordHistoryResponse:
        record_id = _stripe_id("record_id", request.record_id, required=True)
        assert record_id is not None
        async with self.runtime.pool.acquire() as conn:
            key = await store.resolve_record_id(conn, record_id)
            rows = await store.history(conn, key)
        if not rows:
            raise NotFoundError(f"no history for {record_id}")
        return pb.GetRecordHistoryResponse(
            entries=[
                pb.HistoryEntry(
                    stripe_event_id=r.stripe_event_id,
                    event_type=r.event_type,
                    record_type=r.record_type,
                    record_id=r.record_id,
                    change=r.change,
                    recorded_at=_iso(r.recorded_at),
                )
                for r in rows
            ]
        )

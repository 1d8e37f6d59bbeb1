from syncmesh.type.v1 import money_pb2 as _money_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InvoiceStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INVOICE_STATUS_UNSPECIFIED: _ClassVar[InvoiceStatus]
    INVOICE_STATUS_OPEN: _ClassVar[InvoiceStatus]
    INVOICE_STATUS_PAID_IN_FULL: _ClassVar[InvoiceStatus]
    INVOICE_STATUS_VOIDED: _ClassVar[InvoiceStatus]
    INVOICE_STATUS_WRITTEN_OFF: _ClassVar[InvoiceStatus]
    INVOICE_STATUS_DRAFT: _ClassVar[InvoiceStatus]

class LineKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LINE_KIND_UNSPECIFIED: _ClassVar[LineKind]
    LINE_KIND_ITEM: _ClassVar[LineKind]
    LINE_KIND_DISCOUNT: _ClassVar[LineKind]

class CreditMemoKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CREDIT_MEMO_KIND_UNSPECIFIED: _ClassVar[CreditMemoKind]
    CREDIT_MEMO_KIND_CREDIT_NOTE: _ClassVar[CreditMemoKind]
    CREDIT_MEMO_KIND_REFUND: _ClassVar[CreditMemoKind]
    CREDIT_MEMO_KIND_WRITE_OFF: _ClassVar[CreditMemoKind]

class HoldReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HOLD_REASON_UNSPECIFIED: _ClassVar[HoldReason]
    HOLD_REASON_FINAL_PAYMENT_FAILURE: _ClassVar[HoldReason]
    HOLD_REASON_SUBSCRIPTION_DELINQUENT: _ClassVar[HoldReason]
    HOLD_REASON_MANUAL: _ClassVar[HoldReason]
    HOLD_REASON_INVOICE_PAID: _ClassVar[HoldReason]
    HOLD_REASON_INVOICE_VOIDED: _ClassVar[HoldReason]
INVOICE_STATUS_UNSPECIFIED: InvoiceStatus
INVOICE_STATUS_OPEN: InvoiceStatus
INVOICE_STATUS_PAID_IN_FULL: InvoiceStatus
INVOICE_STATUS_VOIDED: InvoiceStatus
INVOICE_STATUS_WRITTEN_OFF: InvoiceStatus
INVOICE_STATUS_DRAFT: InvoiceStatus
LINE_KIND_UNSPECIFIED: LineKind
LINE_KIND_ITEM: LineKind
LINE_KIND_DISCOUNT: LineKind
CREDIT_MEMO_KIND_UNSPECIFIED: CreditMemoKind
CREDIT_MEMO_KIND_CREDIT_NOTE: CreditMemoKind
CREDIT_MEMO_KIND_REFUND: CreditMemoKind
CREDIT_MEMO_KIND_WRITE_OFF: CreditMemoKind
HOLD_REASON_UNSPECIFIED: HoldReason
HOLD_REASON_FINAL_PAYMENT_FAILURE: HoldReason
HOLD_REASON_SUBSCRIPTION_DELINQUENT: HoldReason
HOLD_REASON_MANUAL: HoldReason
HOLD_REASON_INVOICE_PAID: HoldReason
HOLD_REASON_INVOICE_VOIDED: HoldReason

class RevenueScheduleEntry(_message.Message):
    __slots__ = ("period", "amount")
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    period: str
    amount: _money_pb2.Money
    def __init__(self, period: _Optional[str] = ..., amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ...) -> None: ...

class InvoiceLine(_message.Message):
    __slots__ = ("line_no", "kind", "erp_item_id", "item_mapped", "stripe_price_id", "description", "quantity", "unit_amount", "unit_amount_decimal", "amount", "discount_amount", "recognized_amount", "period_start", "period_end", "proration", "revenue_account", "stripe_line_id", "stripe_discount_id", "stripe_coupon_id", "stripe_product_id", "tax_amount")
    LINE_NO_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ERP_ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_MAPPED_FIELD_NUMBER: _ClassVar[int]
    STRIPE_PRICE_ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    UNIT_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    UNIT_AMOUNT_DECIMAL_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    DISCOUNT_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    RECOGNIZED_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    PERIOD_START_FIELD_NUMBER: _ClassVar[int]
    PERIOD_END_FIELD_NUMBER: _ClassVar[int]
    PRORATION_FIELD_NUMBER: _ClassVar[int]
    REVENUE_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    STRIPE_LINE_ID_FIELD_NUMBER: _ClassVar[int]
    STRIPE_DISCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    STRIPE_COUPON_ID_FIELD_NUMBER: _ClassVar[int]
    STRIPE_PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    TAX_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    line_no: int
    kind: LineKind
    erp_item_id: str
    item_mapped: bool
    stripe_price_id: str
    description: str
    quantity: int
    unit_amount: _money_pb2.Money
    unit_amount_decimal: str
    amount: _money_pb2.Money
    discount_amount: _money_pb2.Money
    recognized_amount: _money_pb2.Money
    period_start: str
    period_end: str
    proration: bool
    revenue_account: str
    stripe_line_id: str
    stripe_discount_id: str
    stripe_coupon_id: str
    stripe_product_id: str
    tax_amount: _money_pb2.Money
    def __init__(self, line_no: _Optional[int] = ..., kind: _Optional[_Union[LineKind, str]] = ..., erp_item_id: _Optional[str] = ..., item_mapped: _Optional[bool] = ..., stripe_price_id: _Optional[str] = ..., description: _Optional[str] = ..., quantity: _Optional[int] = ..., unit_amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., unit_amount_decimal: _Optional[str] = ..., amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., discount_amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., recognized_amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., period_start: _Optional[str] = ..., period_end: _Optional[str] = ..., proration: _Optional[bool] = ..., revenue_account: _Optional[str] = ..., stripe_line_id: _Optional[str] = ..., stripe_discount_id: _Optional[str] = ..., stripe_coupon_id: _Optional[str] = ..., stripe_product_id: _Optional[str] = ..., tax_amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ...) -> None: ...

class Invoice(_message.Message):
    __slots__ = ("erp_invoice_id", "stripe_invoice_id", "stripe_customer_id", "erp_customer_id", "subscription_id", "number", "status", "stripe_status", "transaction_date", "due_date", "currency", "subtotal", "discount", "tax", "total", "amount_paid", "credits_applied", "amount_remaining", "lines_complete", "lines", "api_shape", "unattributed_paid")
    ERP_INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    STRIPE_INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    STRIPE_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    ERP_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STRIPE_STATUS_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_DATE_FIELD_NUMBER: _ClassVar[int]
    DUE_DATE_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    SUBTOTAL_FIELD_NUMBER: _ClassVar[int]
    DISCOUNT_FIELD_NUMBER: _ClassVar[int]
    TAX_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_PAID_FIELD_NUMBER: _ClassVar[int]
    CREDITS_APPLIED_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_REMAINING_FIELD_NUMBER: _ClassVar[int]
    LINES_COMPLETE_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    API_SHAPE_FIELD_NUMBER: _ClassVar[int]
    UNATTRIBUTED_PAID_FIELD_NUMBER: _ClassVar[int]
    erp_invoice_id: str
    stripe_invoice_id: str
    stripe_customer_id: str
    erp_customer_id: str
    subscription_id: str
    number: str
    status: InvoiceStatus
    stripe_status: str
    transaction_date: str
    due_date: str
    currency: str
    subtotal: _money_pb2.Money
    discount: _money_pb2.Money
    tax: _money_pb2.Money
    total: _money_pb2.Money
    amount_paid: _money_pb2.Money
    credits_applied: _money_pb2.Money
    amount_remaining: _money_pb2.Money
    lines_complete: bool
    lines: _containers.RepeatedCompositeFieldContainer[InvoiceLine]
    api_shape: str
    unattributed_paid: _money_pb2.Money
    def __init__(self, erp_invoice_id: _Optional[str] = ..., stripe_invoice_id: _Optional[str] = ..., stripe_customer_id: _Optional[str] = ..., erp_customer_id: _Optional[str] = ..., subscription_id: _Optional[str] = ..., number: _Optional[str] = ..., status: _Optional[_Union[InvoiceStatus, str]] = ..., stripe_status: _Optional[str] = ..., transaction_date: _Optional[str] = ..., due_date: _Optional[str] = ..., currency: _Optional[str] = ..., subtotal: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., discount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., tax: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., total: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., amount_paid: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., credits_applied: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., amount_remaining: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., lines_complete: _Optional[bool] = ..., lines: _Optional[_Iterable[_Union[InvoiceLine, _Mapping]]] = ..., api_shape: _Optional[str] = ..., unattributed_paid: _Optional[_Union[_money_pb2.Money, _Mapping]] = ...) -> None: ...

class Payment(_message.Message):
    __slots__ = ("erp_payment_id", "stripe_payment_id", "stripe_invoice_id", "erp_invoice_id", "stripe_customer_id", "amount", "payment_date", "method", "charge_id", "payment_intent_id", "date_source")
    ERP_PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    STRIPE_PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    STRIPE_INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    ERP_INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    STRIPE_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_DATE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    CHARGE_ID_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_INTENT_ID_FIELD_NUMBER: _ClassVar[int]
    DATE_SOURCE_FIELD_NUMBER: _ClassVar[int]
    erp_payment_id: str
    stripe_payment_id: str
    stripe_invoice_id: str
    erp_invoice_id: str
    stripe_customer_id: str
    amount: _money_pb2.Money
    payment_date: str
    method: str
    charge_id: str
    payment_intent_id: str
    date_source: str
    def __init__(self, erp_payment_id: _Optional[str] = ..., stripe_payment_id: _Optional[str] = ..., stripe_invoice_id: _Optional[str] = ..., erp_invoice_id: _Optional[str] = ..., stripe_customer_id: _Optional[str] = ..., amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., payment_date: _Optional[str] = ..., method: _Optional[str] = ..., charge_id: _Optional[str] = ..., payment_intent_id: _Optional[str] = ..., date_source: _Optional[str] = ...) -> None: ...

class CreditMemoLine(_message.Message):
    __slots__ = ("line_no", "description", "quantity", "unit_amount", "amount", "invoice_line_item")
    LINE_NO_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    UNIT_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    INVOICE_LINE_ITEM_FIELD_NUMBER: _ClassVar[int]
    line_no: int
    description: str
    quantity: int
    unit_amount: _money_pb2.Money
    amount: _money_pb2.Money
    invoice_line_item: str
    def __init__(self, line_no: _Optional[int] = ..., description: _Optional[str] = ..., quantity: _Optional[int] = ..., unit_amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., invoice_line_item: _Optional[str] = ...) -> None: ...

class CreditMemo(_message.Message):
    __slots__ = ("erp_credit_memo_id", "source_id", "kind", "stripe_invoice_id", "erp_invoice_id", "stripe_customer_id", "amount", "memo_date", "status", "applied_to", "memo", "lines", "number", "date_source")
    ERP_CREDIT_MEMO_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STRIPE_INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    ERP_INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    STRIPE_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    MEMO_DATE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_TO_FIELD_NUMBER: _ClassVar[int]
    MEMO_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    DATE_SOURCE_FIELD_NUMBER: _ClassVar[int]
    erp_credit_memo_id: str
    source_id: str
    kind: CreditMemoKind
    stripe_invoice_id: str
    erp_invoice_id: str
    stripe_customer_id: str
    amount: _money_pb2.Money
    memo_date: str
    status: str
    applied_to: str
    memo: str
    lines: _containers.RepeatedCompositeFieldContainer[CreditMemoLine]
    number: str
    date_source: str
    def __init__(self, erp_credit_memo_id: _Optional[str] = ..., source_id: _Optional[str] = ..., kind: _Optional[_Union[CreditMemoKind, str]] = ..., stripe_invoice_id: _Optional[str] = ..., erp_invoice_id: _Optional[str] = ..., stripe_customer_id: _Optional[str] = ..., amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., memo_date: _Optional[str] = ..., status: _Optional[str] = ..., applied_to: _Optional[str] = ..., memo: _Optional[str] = ..., lines: _Optional[_Iterable[_Union[CreditMemoLine, _Mapping]]] = ..., number: _Optional[str] = ..., date_source: _Optional[str] = ...) -> None: ...

class Refund(_message.Message):
    __slots__ = ("erp_refund_id", "stripe_refund_id", "stripe_invoice_id", "erp_invoice_id", "stripe_customer_id", "amount", "refund_date", "status", "charge_id", "erp_credit_memo_id")
    ERP_REFUND_ID_FIELD_NUMBER: _ClassVar[int]
    STRIPE_REFUND_ID_FIELD_NUMBER: _ClassVar[int]
    STRIPE_INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    ERP_INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    STRIPE_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    REFUND_DATE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CHARGE_ID_FIELD_NUMBER: _ClassVar[int]
    ERP_CREDIT_MEMO_ID_FIELD_NUMBER: _ClassVar[int]
    erp_refund_id: str
    stripe_refund_id: str
    stripe_invoice_id: str
    erp_invoice_id: str
    stripe_customer_id: str
    amount: _money_pb2.Money
    refund_date: str
    status: str
    charge_id: str
    erp_credit_memo_id: str
    def __init__(self, erp_refund_id: _Optional[str] = ..., stripe_refund_id: _Optional[str] = ..., stripe_invoice_id: _Optional[str] = ..., erp_invoice_id: _Optional[str] = ..., stripe_customer_id: _Optional[str] = ..., amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., refund_date: _Optional[str] = ..., status: _Optional[str] = ..., charge_id: _Optional[str] = ..., erp_credit_memo_id: _Optional[str] = ...) -> None: ...

class CreditHold(_message.Message):
    __slots__ = ("stripe_customer_id", "stripe_invoice_id", "reason", "placed_at", "released_at", "release_reason", "active", "reason_code", "release_reason_code", "placed_date_source", "released_date_source")
    STRIPE_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    STRIPE_INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PLACED_AT_FIELD_NUMBER: _ClassVar[int]
    RELEASED_AT_FIELD_NUMBER: _ClassVar[int]
    RELEASE_REASON_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    REASON_CODE_FIELD_NUMBER: _ClassVar[int]
    RELEASE_REASON_CODE_FIELD_NUMBER: _ClassVar[int]
    PLACED_DATE_SOURCE_FIELD_NUMBER: _ClassVar[int]
    RELEASED_DATE_SOURCE_FIELD_NUMBER: _ClassVar[int]
    stripe_customer_id: str
    stripe_invoice_id: str
    reason: str
    placed_at: str
    released_at: str
    release_reason: str
    active: bool
    reason_code: HoldReason
    release_reason_code: HoldReason
    placed_date_source: str
    released_date_source: str
    def __init__(self, stripe_customer_id: _Optional[str] = ..., stripe_invoice_id: _Optional[str] = ..., reason: _Optional[str] = ..., placed_at: _Optional[str] = ..., released_at: _Optional[str] = ..., release_reason: _Optional[str] = ..., active: _Optional[bool] = ..., reason_code: _Optional[_Union[HoldReason, str]] = ..., release_reason_code: _Optional[_Union[HoldReason, str]] = ..., placed_date_source: _Optional[str] = ..., released_date_source: _Optional[str] = ...) -> None: ...

class HistoryEntry(_message.Message):
    __slots__ = ("stripe_event_id", "event_type", "record_type", "record_id", "change", "recorded_at")
    STRIPE_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    RECORD_TYPE_FIELD_NUMBER: _ClassVar[int]
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    CHANGE_FIELD_NUMBER: _ClassVar[int]
    RECORDED_AT_FIELD_NUMBER: _ClassVar[int]
    stripe_event_id: str
    event_type: str
    record_type: str
    record_id: str
    change: str
    recorded_at: str
    def __init__(self, stripe_event_id: _Optional[str] = ..., event_type: _Optional[str] = ..., record_type: _Optional[str] = ..., record_id: _Optional[str] = ..., change: _Optional[str] = ..., recorded_at: _Optional[str] = ...) -> None: ...

class CurrencyBalance(_message.Message):
    __slots__ = ("currency", "open", "current", "days_1_30", "days_31_60", "days_61_90", "days_over_90", "open_invoices")
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    OPEN_FIELD_NUMBER: _ClassVar[int]
    CURRENT_FIELD_NUMBER: _ClassVar[int]
    DAYS_1_30_FIELD_NUMBER: _ClassVar[int]
    DAYS_31_60_FIELD_NUMBER: _ClassVar[int]
    DAYS_61_90_FIELD_NUMBER: _ClassVar[int]
    DAYS_OVER_90_FIELD_NUMBER: _ClassVar[int]
    OPEN_INVOICES_FIELD_NUMBER: _ClassVar[int]
    currency: str
    open: _money_pb2.Money
    current: _money_pb2.Money
    days_1_30: _money_pb2.Money
    days_31_60: _money_pb2.Money
    days_61_90: _money_pb2.Money
    days_over_90: _money_pb2.Money
    open_invoices: int
    def __init__(self, currency: _Optional[str] = ..., open: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., current: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., days_1_30: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., days_31_60: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., days_61_90: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., days_over_90: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., open_invoices: _Optional[int] = ...) -> None: ...

class UnmappedPrice(_message.Message):
    __slots__ = ("stripe_price_id", "last_invoice_id", "invoices_seen", "first_seen_at", "last_seen_at")
    STRIPE_PRICE_ID_FIELD_NUMBER: _ClassVar[int]
    LAST_INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    INVOICES_SEEN_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEEN_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_AT_FIELD_NUMBER: _ClassVar[int]
    stripe_price_id: str
    last_invoice_id: str
    invoices_seen: int
    first_seen_at: str
    last_seen_at: str
    def __init__(self, stripe_price_id: _Optional[str] = ..., last_invoice_id: _Optional[str] = ..., invoices_seen: _Optional[int] = ..., first_seen_at: _Optional[str] = ..., last_seen_at: _Optional[str] = ...) -> None: ...

class ImportProblem(_message.Message):
    __slots__ = ("line", "field", "message")
    LINE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    line: int
    field: str
    message: str
    def __init__(self, line: _Optional[int] = ..., field: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class GetInvoiceRequest(_message.Message):
    __slots__ = ("invoice_id",)
    INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    invoice_id: str
    def __init__(self, invoice_id: _Optional[str] = ...) -> None: ...

class GetInvoiceResponse(_message.Message):
    __slots__ = ("invoice",)
    INVOICE_FIELD_NUMBER: _ClassVar[int]
    invoice: Invoice
    def __init__(self, invoice: _Optional[_Union[Invoice, _Mapping]] = ...) -> None: ...

class ListInvoicesRequest(_message.Message):
    __slots__ = ("stripe_customer_id", "status", "from_date", "to_date", "page_size", "page_token")
    STRIPE_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FROM_DATE_FIELD_NUMBER: _ClassVar[int]
    TO_DATE_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    stripe_customer_id: str
    status: InvoiceStatus
    from_date: str
    to_date: str
    page_size: int
    page_token: str
    def __init__(self, stripe_customer_id: _Optional[str] = ..., status: _Optional[_Union[InvoiceStatus, str]] = ..., from_date: _Optional[str] = ..., to_date: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListInvoicesResponse(_message.Message):
    __slots__ = ("invoices", "next_page_token")
    INVOICES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    invoices: _containers.RepeatedCompositeFieldContainer[Invoice]
    next_page_token: str
    def __init__(self, invoices: _Optional[_Iterable[_Union[Invoice, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListPaymentsRequest(_message.Message):
    __slots__ = ("stripe_customer_id", "invoice_id", "page_size", "page_token")
    STRIPE_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    stripe_customer_id: str
    invoice_id: str
    page_size: int
    page_token: str
    def __init__(self, stripe_customer_id: _Optional[str] = ..., invoice_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListPaymentsResponse(_message.Message):
    __slots__ = ("payments", "next_page_token")
    PAYMENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    payments: _containers.RepeatedCompositeFieldContainer[Payment]
    next_page_token: str
    def __init__(self, payments: _Optional[_Iterable[_Union[Payment, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListCreditMemosRequest(_message.Message):
    __slots__ = ("stripe_customer_id", "invoice_id", "page_size", "page_token", "include_superseded")
    STRIPE_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SUPERSEDED_FIELD_NUMBER: _ClassVar[int]
    stripe_customer_id: str
    invoice_id: str
    page_size: int
    page_token: str
    include_superseded: bool
    def __init__(self, stripe_customer_id: _Optional[str] = ..., invoice_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., include_superseded: _Optional[bool] = ...) -> None: ...

class ListCreditMemosResponse(_message.Message):
    __slots__ = ("credit_memos", "next_page_token")
    CREDIT_MEMOS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    credit_memos: _containers.RepeatedCompositeFieldContainer[CreditMemo]
    next_page_token: str
    def __init__(self, credit_memos: _Optional[_Iterable[_Union[CreditMemo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListRefundsRequest(_message.Message):
    __slots__ = ("stripe_customer_id", "invoice_id", "page_size", "page_token")
    STRIPE_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    stripe_customer_id: str
    invoice_id: str
    page_size: int
    page_token: str
    def __init__(self, stripe_customer_id: _Optional[str] = ..., invoice_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListRefundsResponse(_message.Message):
    __slots__ = ("refunds", "next_page_token")
    REFUNDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    refunds: _containers.RepeatedCompositeFieldContainer[Refund]
    next_page_token: str
    def __init__(self, refunds: _Optional[_Iterable[_Union[Refund, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetCustomerBalanceRequest(_message.Message):
    __slots__ = ("stripe_customer_id", "as_of")
    STRIPE_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    stripe_customer_id: str
    as_of: str
    def __init__(self, stripe_customer_id: _Optional[str] = ..., as_of: _Optional[str] = ...) -> None: ...

class GetCustomerBalanceResponse(_message.Message):
    __slots__ = ("stripe_customer_id", "as_of", "balances", "on_credit_hold")
    STRIPE_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    AS_OF_FIELD_NUMBER: _ClassVar[int]
    BALANCES_FIELD_NUMBER: _ClassVar[int]
    ON_CREDIT_HOLD_FIELD_NUMBER: _ClassVar[int]
    stripe_customer_id: str
    as_of: str
    balances: _containers.RepeatedCompositeFieldContainer[CurrencyBalance]
    on_credit_hold: bool
    def __init__(self, stripe_customer_id: _Optional[str] = ..., as_of: _Optional[str] = ..., balances: _Optional[_Iterable[_Union[CurrencyBalance, _Mapping]]] = ..., on_credit_hold: _Optional[bool] = ...) -> None: ...

class ListCreditHoldsRequest(_message.Message):
    __slots__ = ("stripe_customer_id", "active_only", "page_size", "page_token")
    STRIPE_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_ONLY_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    stripe_customer_id: str
    active_only: bool
    page_size: int
    page_token: str
    def __init__(self, stripe_customer_id: _Optional[str] = ..., active_only: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListCreditHoldsResponse(_message.Message):
    __slots__ = ("holds", "next_page_token", "credit_hold_enabled", "release_on_pay")
    HOLDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    CREDIT_HOLD_ENABLED_FIELD_NUMBER: _ClassVar[int]
    RELEASE_ON_PAY_FIELD_NUMBER: _ClassVar[int]
    holds: _containers.RepeatedCompositeFieldContainer[CreditHold]
    next_page_token: str
    credit_hold_enabled: bool
    release_on_pay: bool
    def __init__(self, holds: _Optional[_Iterable[_Union[CreditHold, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., credit_hold_enabled: _Optional[bool] = ..., release_on_pay: _Optional[bool] = ...) -> None: ...

class GetRevenueScheduleRequest(_message.Message):
    __slots__ = ("invoice_id",)
    INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    invoice_id: str
    def __init__(self, invoice_id: _Optional[str] = ...) -> None: ...

class LineSchedule(_message.Message):
    __slots__ = ("line_no", "erp_item_id", "line_amount", "recognized_amount", "revenue_account", "entries")
    LINE_NO_FIELD_NUMBER: _ClassVar[int]
    ERP_ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    LINE_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    RECOGNIZED_AMOUNT_FIELD_NUMBER: _ClassVar[int]
    REVENUE_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    line_no: int
    erp_item_id: str
    line_amount: _money_pb2.Money
    recognized_amount: _money_pb2.Money
    revenue_account: str
    entries: _containers.RepeatedCompositeFieldContainer[RevenueScheduleEntry]
    def __init__(self, line_no: _Optional[int] = ..., erp_item_id: _Optional[str] = ..., line_amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., recognized_amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., revenue_account: _Optional[str] = ..., entries: _Optional[_Iterable[_Union[RevenueScheduleEntry, _Mapping]]] = ...) -> None: ...

class GetRevenueScheduleResponse(_message.Message):
    __slots__ = ("erp_invoice_id", "stripe_invoice_id", "lines")
    ERP_INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    STRIPE_INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    erp_invoice_id: str
    stripe_invoice_id: str
    lines: _containers.RepeatedCompositeFieldContainer[LineSchedule]
    def __init__(self, erp_invoice_id: _Optional[str] = ..., stripe_invoice_id: _Optional[str] = ..., lines: _Optional[_Iterable[_Union[LineSchedule, _Mapping]]] = ...) -> None: ...

class ImportItemMappingsRequest(_message.Message):
    __slots__ = ("csv", "dry_run")
    CSV_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    csv: bytes
    dry_run: bool
    def __init__(self, csv: _Optional[bytes] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class ImportItemMappingsResponse(_message.Message):
    __slots__ = ("rows", "created", "updated", "unchanged", "problems", "dry_run", "applied", "lines_remapped")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    LINES_REMAPPED_FIELD_NUMBER: _ClassVar[int]
    rows: int
    created: int
    updated: int
    unchanged: int
    problems: _containers.RepeatedCompositeFieldContainer[ImportProblem]
    dry_run: bool
    applied: bool
    lines_remapped: int
    def __init__(self, rows: _Optional[int] = ..., created: _Optional[int] = ..., updated: _Optional[int] = ..., unchanged: _Optional[int] = ..., problems: _Optional[_Iterable[_Union[ImportProblem, _Mapping]]] = ..., dry_run: _Optional[bool] = ..., applied: _Optional[bool] = ..., lines_remapped: _Optional[int] = ...) -> None: ...

class ListUnmappedPricesRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListUnmappedPricesResponse(_message.Message):
    __slots__ = ("prices", "next_page_token")
    PRICES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    prices: _containers.RepeatedCompositeFieldContainer[UnmappedPrice]
    next_page_token: str
    def __init__(self, prices: _Optional[_Iterable[_Union[UnmappedPrice, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetRecordHistoryRequest(_message.Message):
    __slots__ = ("record_id",)
    RECORD_ID_FIELD_NUMBER: _ClassVar[int]
    record_id: str
    def __init__(self, record_id: _Optional[str] = ...) -> None: ...

class GetRecordHistoryResponse(_message.Message):
    __slots__ = ("entries",)
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[HistoryEntry]
    def __init__(self, entries: _Optional[_Iterable[_Union[HistoryEntry, _Mapping]]] = ...) -> None: ...

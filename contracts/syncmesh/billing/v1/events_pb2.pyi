from syncmesh.billing.v1 import billing_service_pb2 as _billing_service_pb2
from syncmesh.events.v1 import meta_pb2 as _meta_pb2
from syncmesh.type.v1 import money_pb2 as _money_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InvoiceChanged(_message.Message):
    __slots__ = ("meta", "erp_invoice_id", "stripe_invoice_id", "stripe_customer_id", "status", "total", "amount_remaining", "lines_complete")
    META_FIELD_NUMBER: _ClassVar[int]
    ERP_INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    STRIPE_INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    STRIPE_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_REMAINING_FIELD_NUMBER: _ClassVar[int]
    LINES_COMPLETE_FIELD_NUMBER: _ClassVar[int]
    meta: _meta_pb2.EventMeta
    erp_invoice_id: str
    stripe_invoice_id: str
    stripe_customer_id: str
    status: str
    total: _money_pb2.Money
    amount_remaining: _money_pb2.Money
    lines_complete: bool
    def __init__(self, meta: _Optional[_Union[_meta_pb2.EventMeta, _Mapping]] = ..., erp_invoice_id: _Optional[str] = ..., stripe_invoice_id: _Optional[str] = ..., stripe_customer_id: _Optional[str] = ..., status: _Optional[str] = ..., total: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., amount_remaining: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., lines_complete: _Optional[bool] = ...) -> None: ...

class PaymentApplied(_message.Message):
    __slots__ = ("meta", "erp_payment_id", "stripe_payment_id", "stripe_invoice_id", "amount", "charge_id", "payment_intent_id")
    META_FIELD_NUMBER: _ClassVar[int]
    ERP_PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    STRIPE_PAYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    STRIPE_INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    CHARGE_ID_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_INTENT_ID_FIELD_NUMBER: _ClassVar[int]
    meta: _meta_pb2.EventMeta
    erp_payment_id: str
    stripe_payment_id: str
    stripe_invoice_id: str
    amount: _money_pb2.Money
    charge_id: str
    payment_intent_id: str
    def __init__(self, meta: _Optional[_Union[_meta_pb2.EventMeta, _Mapping]] = ..., erp_payment_id: _Optional[str] = ..., stripe_payment_id: _Optional[str] = ..., stripe_invoice_id: _Optional[str] = ..., amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., charge_id: _Optional[str] = ..., payment_intent_id: _Optional[str] = ...) -> None: ...

class CreditMemoChanged(_message.Message):
    __slots__ = ("meta", "erp_credit_memo_id", "source_id", "kind", "stripe_invoice_id", "amount", "status")
    META_FIELD_NUMBER: _ClassVar[int]
    ERP_CREDIT_MEMO_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    STRIPE_INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    meta: _meta_pb2.EventMeta
    erp_credit_memo_id: str
    source_id: str
    kind: str
    stripe_invoice_id: str
    amount: _money_pb2.Money
    status: str
    def __init__(self, meta: _Optional[_Union[_meta_pb2.EventMeta, _Mapping]] = ..., erp_credit_memo_id: _Optional[str] = ..., source_id: _Optional[str] = ..., kind: _Optional[str] = ..., stripe_invoice_id: _Optional[str] = ..., amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., status: _Optional[str] = ...) -> None: ...

class RefundRecorded(_message.Message):
    __slots__ = ("meta", "erp_refund_id", "stripe_refund_id", "stripe_invoice_id", "amount", "status")
    META_FIELD_NUMBER: _ClassVar[int]
    ERP_REFUND_ID_FIELD_NUMBER: _ClassVar[int]
    STRIPE_REFUND_ID_FIELD_NUMBER: _ClassVar[int]
    STRIPE_INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    meta: _meta_pb2.EventMeta
    erp_refund_id: str
    stripe_refund_id: str
    stripe_invoice_id: str
    amount: _money_pb2.Money
    status: str
    def __init__(self, meta: _Optional[_Union[_meta_pb2.EventMeta, _Mapping]] = ..., erp_refund_id: _Optional[str] = ..., stripe_refund_id: _Optional[str] = ..., stripe_invoice_id: _Optional[str] = ..., amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., status: _Optional[str] = ...) -> None: ...

class CreditHoldChanged(_message.Message):
    __slots__ = ("meta", "stripe_customer_id", "stripe_invoice_id", "active", "reason", "reason_code")
    META_FIELD_NUMBER: _ClassVar[int]
    STRIPE_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    STRIPE_INVOICE_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REASON_CODE_FIELD_NUMBER: _ClassVar[int]
    meta: _meta_pb2.EventMeta
    stripe_customer_id: str
    stripe_invoice_id: str
    active: bool
    reason: str
    reason_code: _billing_service_pb2.HoldReason
    def __init__(self, meta: _Optional[_Union[_meta_pb2.EventMeta, _Mapping]] = ..., stripe_customer_id: _Optional[str] = ..., stripe_invoice_id: _Optional[str] = ..., active: _Optional[bool] = ..., reason: _Optional[str] = ..., reason_code: _Optional[_Union[_billing_service_pb2.HoldReason, str]] = ...) -> None: ...

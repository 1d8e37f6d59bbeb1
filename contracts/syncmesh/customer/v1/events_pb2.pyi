import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from syncmesh.customer.v1 import customer_service_pb2 as _customer_service_pb2
from syncmesh.events.v1 import meta_pb2 as _meta_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class LinkSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LINK_SOURCE_UNSPECIFIED: _ClassVar[LinkSource]
    LINK_SOURCE_STRIPE_EVENT: _ClassVar[LinkSource]
    LINK_SOURCE_IMPORT: _ClassVar[LinkSource]
    LINK_SOURCE_SYNC: _ClassVar[LinkSource]
LINK_SOURCE_UNSPECIFIED: LinkSource
LINK_SOURCE_STRIPE_EVENT: LinkSource
LINK_SOURCE_IMPORT: LinkSource
LINK_SOURCE_SYNC: LinkSource

class CustomerUpserted(_message.Message):
    __slots__ = ("meta", "customer", "created")
    META_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    meta: _meta_pb2.EventMeta
    customer: _customer_service_pb2.Customer
    created: bool
    def __init__(self, meta: _Optional[_Union[_meta_pb2.EventMeta, _Mapping]] = ..., customer: _Optional[_Union[_customer_service_pb2.Customer, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class CustomerLinked(_message.Message):
    __slots__ = ("meta", "erp_customer_id", "stripe_customer_id", "source")
    META_FIELD_NUMBER: _ClassVar[int]
    ERP_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    STRIPE_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    meta: _meta_pb2.EventMeta
    erp_customer_id: str
    stripe_customer_id: str
    source: LinkSource
    def __init__(self, meta: _Optional[_Union[_meta_pb2.EventMeta, _Mapping]] = ..., erp_customer_id: _Optional[str] = ..., stripe_customer_id: _Optional[str] = ..., source: _Optional[_Union[LinkSource, str]] = ...) -> None: ...

class CustomerUnlinked(_message.Message):
    __slots__ = ("meta", "erp_customer_id", "stripe_customer_id", "reason")
    META_FIELD_NUMBER: _ClassVar[int]
    ERP_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    STRIPE_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    meta: _meta_pb2.EventMeta
    erp_customer_id: str
    stripe_customer_id: str
    reason: str
    def __init__(self, meta: _Optional[_Union[_meta_pb2.EventMeta, _Mapping]] = ..., erp_customer_id: _Optional[str] = ..., stripe_customer_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CustomerDeactivated(_message.Message):
    __slots__ = ("meta", "erp_customer_id", "stripe_customer_id", "deactivated_at")
    META_FIELD_NUMBER: _ClassVar[int]
    ERP_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    STRIPE_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    DEACTIVATED_AT_FIELD_NUMBER: _ClassVar[int]
    meta: _meta_pb2.EventMeta
    erp_customer_id: str
    stripe_customer_id: str
    deactivated_at: _timestamp_pb2.Timestamp
    def __init__(self, meta: _Optional[_Union[_meta_pb2.EventMeta, _Mapping]] = ..., erp_customer_id: _Optional[str] = ..., stripe_customer_id: _Optional[str] = ..., deactivated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CustomerMappingsImported(_message.Message):
    __slots__ = ("meta", "rows", "created", "linked")
    META_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    LINKED_FIELD_NUMBER: _ClassVar[int]
    meta: _meta_pb2.EventMeta
    rows: int
    created: int
    linked: int
    def __init__(self, meta: _Optional[_Union[_meta_pb2.EventMeta, _Mapping]] = ..., rows: _Optional[int] = ..., created: _Optional[int] = ..., linked: _Optional[int] = ...) -> None: ...

from syncmesh.crm_export.v1 import crm_export_service_pb2 as _crm_export_service_pb2
from syncmesh.events.v1 import meta_pb2 as _meta_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClientUpserted(_message.Message):
    __slots__ = ("meta", "client")
    META_FIELD_NUMBER: _ClassVar[int]
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    meta: _meta_pb2.EventMeta
    client: _crm_export_service_pb2.Client
    def __init__(self, meta: _Optional[_Union[_meta_pb2.EventMeta, _Mapping]] = ..., client: _Optional[_Union[_crm_export_service_pb2.Client, _Mapping]] = ...) -> None: ...

class ClientHealthChanged(_message.Message):
    __slots__ = ("meta", "stripe_customer_id", "health_signals", "failing_invoice_ids")
    META_FIELD_NUMBER: _ClassVar[int]
    STRIPE_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    HEALTH_SIGNALS_FIELD_NUMBER: _ClassVar[int]
    FAILING_INVOICE_IDS_FIELD_NUMBER: _ClassVar[int]
    meta: _meta_pb2.EventMeta
    stripe_customer_id: str
    health_signals: _containers.RepeatedScalarFieldContainer[_crm_export_service_pb2.HealthSignal]
    failing_invoice_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, meta: _Optional[_Union[_meta_pb2.EventMeta, _Mapping]] = ..., stripe_customer_id: _Optional[str] = ..., health_signals: _Optional[_Iterable[_Union[_crm_export_service_pb2.HealthSignal, str]]] = ..., failing_invoice_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ProductUpserted(_message.Message):
    __slots__ = ("meta", "product")
    META_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_FIELD_NUMBER: _ClassVar[int]
    meta: _meta_pb2.EventMeta
    product: _crm_export_service_pb2.Product
    def __init__(self, meta: _Optional[_Union[_meta_pb2.EventMeta, _Mapping]] = ..., product: _Optional[_Union[_crm_export_service_pb2.Product, _Mapping]] = ...) -> None: ...

class ContractUpserted(_message.Message):
    __slots__ = ("meta", "contract")
    META_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_FIELD_NUMBER: _ClassVar[int]
    meta: _meta_pb2.EventMeta
    contract: _crm_export_service_pb2.Contract
    def __init__(self, meta: _Optional[_Union[_meta_pb2.EventMeta, _Mapping]] = ..., contract: _Optional[_Union[_crm_export_service_pb2.Contract, _Mapping]] = ...) -> None: ...

class SettingsChanged(_message.Message):
    __slots__ = ("meta", "settings")
    META_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    meta: _meta_pb2.EventMeta
    settings: _crm_export_service_pb2.CrmExportSettings
    def __init__(self, meta: _Optional[_Union[_meta_pb2.EventMeta, _Mapping]] = ..., settings: _Optional[_Union[_crm_export_service_pb2.CrmExportSettings, _Mapping]] = ...) -> None: ...

import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from syncmesh.type.v1 import money_pb2 as _money_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ContractSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONTRACT_SOURCE_UNSPECIFIED: _ClassVar[ContractSource]
    CONTRACT_SOURCE_INVOICE: _ClassVar[ContractSource]
    CONTRACT_SOURCE_SUBSCRIPTION: _ClassVar[ContractSource]

class CustomerSyncDirection(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CUSTOMER_SYNC_DIRECTION_UNSPECIFIED: _ClassVar[CustomerSyncDirection]
    CUSTOMER_SYNC_DIRECTION_PULL: _ClassVar[CustomerSyncDirection]
    CUSTOMER_SYNC_DIRECTION_DISABLED: _ClassVar[CustomerSyncDirection]

class HealthSignal(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HEALTH_SIGNAL_UNSPECIFIED: _ClassVar[HealthSignal]
    HEALTH_SIGNAL_PAYMENT_FAILED: _ClassVar[HealthSignal]
    HEALTH_SIGNAL_SUBSCRIPTION_PAST_DUE: _ClassVar[HealthSignal]
    HEALTH_SIGNAL_SUBSCRIPTION_CANCELED: _ClassVar[HealthSignal]

class ClientOrigin(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CLIENT_ORIGIN_UNSPECIFIED: _ClassVar[ClientOrigin]
    CLIENT_ORIGIN_STRIPE: _ClassVar[ClientOrigin]
    CLIENT_ORIGIN_CRM: _ClassVar[ClientOrigin]

class ImportPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMPORT_PHASE_UNSPECIFIED: _ClassVar[ImportPhase]
    IMPORT_PHASE_CUSTOMERS: _ClassVar[ImportPhase]
    IMPORT_PHASE_PRODUCTS: _ClassVar[ImportPhase]
    IMPORT_PHASE_INVOICES: _ClassVar[ImportPhase]
    IMPORT_PHASE_SUBSCRIPTIONS: _ClassVar[ImportPhase]
    IMPORT_PHASE_DONE: _ClassVar[ImportPhase]
CONTRACT_SOURCE_UNSPECIFIED: ContractSource
CONTRACT_SOURCE_INVOICE: ContractSource
CONTRACT_SOURCE_SUBSCRIPTION: ContractSource
CUSTOMER_SYNC_DIRECTION_UNSPECIFIED: CustomerSyncDirection
CUSTOMER_SYNC_DIRECTION_PULL: CustomerSyncDirection
CUSTOMER_SYNC_DIRECTION_DISABLED: CustomerSyncDirection
HEALTH_SIGNAL_UNSPECIFIED: HealthSignal
HEALTH_SIGNAL_PAYMENT_FAILED: HealthSignal
HEALTH_SIGNAL_SUBSCRIPTION_PAST_DUE: HealthSignal
HEALTH_SIGNAL_SUBSCRIPTION_CANCELED: HealthSignal
CLIENT_ORIGIN_UNSPECIFIED: ClientOrigin
CLIENT_ORIGIN_STRIPE: ClientOrigin
CLIENT_ORIGIN_CRM: ClientOrigin
IMPORT_PHASE_UNSPECIFIED: ImportPhase
IMPORT_PHASE_CUSTOMERS: ImportPhase
IMPORT_PHASE_PRODUCTS: ImportPhase
IMPORT_PHASE_INVOICES: ImportPhase
IMPORT_PHASE_SUBSCRIPTIONS: ImportPhase
IMPORT_PHASE_DONE: ImportPhase

class FieldMapping(_message.Message):
    __slots__ = ("stripe_path", "crm_field")
    STRIPE_PATH_FIELD_NUMBER: _ClassVar[int]
    CRM_FIELD_FIELD_NUMBER: _ClassVar[int]
    stripe_path: str
    crm_field: str
    def __init__(self, stripe_path: _Optional[str] = ..., crm_field: _Optional[str] = ...) -> None: ...

class CrmExportSettings(_message.Message):
    __slots__ = ("version", "contract_sources", "days_back", "customer_sync_direction", "customer_field_mappings", "product_field_mappings", "import_requests_per_second", "changed_at", "changed_by")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_SOURCES_FIELD_NUMBER: _ClassVar[int]
    DAYS_BACK_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_SYNC_DIRECTION_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_FIELD_MAPPINGS_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_FIELD_MAPPINGS_FIELD_NUMBER: _ClassVar[int]
    IMPORT_REQUESTS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    CHANGED_AT_FIELD_NUMBER: _ClassVar[int]
    CHANGED_BY_FIELD_NUMBER: _ClassVar[int]
    version: int
    contract_sources: _containers.RepeatedScalarFieldContainer[ContractSource]
    days_back: int
    customer_sync_direction: CustomerSyncDirection
    customer_field_mappings: _containers.RepeatedCompositeFieldContainer[FieldMapping]
    product_field_mappings: _containers.RepeatedCompositeFieldContainer[FieldMapping]
    import_requests_per_second: int
    changed_at: _timestamp_pb2.Timestamp
    changed_by: str
    def __init__(self, version: _Optional[int] = ..., contract_sources: _Optional[_Iterable[_Union[ContractSource, str]]] = ..., days_back: _Optional[int] = ..., customer_sync_direction: _Optional[_Union[CustomerSyncDirection, str]] = ..., customer_field_mappings: _Optional[_Iterable[_Union[FieldMapping, _Mapping]]] = ..., product_field_mappings: _Optional[_Iterable[_Union[FieldMapping, _Mapping]]] = ..., import_requests_per_second: _Optional[int] = ..., changed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., changed_by: _Optional[str] = ...) -> None: ...

class GetSettingsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetSettingsResponse(_message.Message):
    __slots__ = ("settings",)
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    settings: CrmExportSettings
    def __init__(self, settings: _Optional[_Union[CrmExportSettings, _Mapping]] = ...) -> None: ...

class UpdateSettingsRequest(_message.Message):
    __slots__ = ("settings", "expected_version", "changed_by")
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHANGED_BY_FIELD_NUMBER: _ClassVar[int]
    settings: CrmExportSettings
    expected_version: int
    changed_by: str
    def __init__(self, settings: _Optional[_Union[CrmExportSettings, _Mapping]] = ..., expected_version: _Optional[int] = ..., changed_by: _Optional[str] = ...) -> None: ...

class UpdateSettingsResponse(_message.Message):
    __slots__ = ("settings",)
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    settings: CrmExportSettings
    def __init__(self, settings: _Optional[_Union[CrmExportSettings, _Mapping]] = ...) -> None: ...

class ListSettingsVersionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListSettingsVersionsResponse(_message.Message):
    __slots__ = ("versions",)
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    versions: _containers.RepeatedCompositeFieldContainer[CrmExportSettings]
    def __init__(self, versions: _Optional[_Iterable[_Union[CrmExportSettings, _Mapping]]] = ...) -> None: ...

class RunImportRequest(_message.Message):
    __slots__ = ("days_back", "restart")
    DAYS_BACK_FIELD_NUMBER: _ClassVar[int]
    RESTART_FIELD_NUMBER: _ClassVar[int]
    days_back: int
    restart: bool
    def __init__(self, days_back: _Optional[int] = ..., restart: _Optional[bool] = ...) -> None: ...

class RunImportResponse(_message.Message):
    __slots__ = ("run_id", "phase", "phase_done", "total_done", "resumed", "finished", "requests", "rate_limited")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    PHASE_DONE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_DONE_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMITED_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    phase: ImportPhase
    phase_done: int
    total_done: int
    resumed: bool
    finished: bool
    requests: int
    rate_limited: int
    def __init__(self, run_id: _Optional[str] = ..., phase: _Optional[_Union[ImportPhase, str]] = ..., phase_done: _Optional[int] = ..., total_done: _Optional[int] = ..., resumed: _Optional[bool] = ..., finished: _Optional[bool] = ..., requests: _Optional[int] = ..., rate_limited: _Optional[int] = ...) -> None: ...

class Address(_message.Message):
    __slots__ = ("line1", "line2", "city", "state", "postal_code", "country")
    LINE1_FIELD_NUMBER: _ClassVar[int]
    LINE2_FIELD_NUMBER: _ClassVar[int]
    CITY_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    POSTAL_CODE_FIELD_NUMBER: _ClassVar[int]
    COUNTRY_FIELD_NUMBER: _ClassVar[int]
    line1: str
    line2: str
    city: str
    state: str
    postal_code: str
    country: str
    def __init__(self, line1: _Optional[str] = ..., line2: _Optional[str] = ..., city: _Optional[str] = ..., state: _Optional[str] = ..., postal_code: _Optional[str] = ..., country: _Optional[str] = ...) -> None: ...

class Client(_message.Message):
    __slots__ = ("client_id", "origin", "stripe_customer_id", "crm_client_id", "name", "email", "address", "custom_fields", "health_signals", "failing_invoice_ids", "deleted")
    class CustomFieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    STRIPE_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    CRM_CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_FIELDS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_SIGNALS_FIELD_NUMBER: _ClassVar[int]
    FAILING_INVOICE_IDS_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    origin: ClientOrigin
    stripe_customer_id: str
    crm_client_id: str
    name: str
    email: str
    address: Address
    custom_fields: _containers.ScalarMap[str, str]
    health_signals: _containers.RepeatedScalarFieldContainer[HealthSignal]
    failing_invoice_ids: _containers.RepeatedScalarFieldContainer[str]
    deleted: bool
    def __init__(self, client_id: _Optional[str] = ..., origin: _Optional[_Union[ClientOrigin, str]] = ..., stripe_customer_id: _Optional[str] = ..., crm_client_id: _Optional[str] = ..., name: _Optional[str] = ..., email: _Optional[str] = ..., address: _Optional[_Union[Address, _Mapping]] = ..., custom_fields: _Optional[_Mapping[str, str]] = ..., health_signals: _Optional[_Iterable[_Union[HealthSignal, str]]] = ..., failing_invoice_ids: _Optional[_Iterable[str]] = ..., deleted: _Optional[bool] = ...) -> None: ...

class Product(_message.Message):
    __slots__ = ("stripe_product_id", "name", "description", "active", "custom_fields", "deleted")
    class CustomFieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STRIPE_PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    CUSTOM_FIELDS_FIELD_NUMBER: _ClassVar[int]
    DELETED_FIELD_NUMBER: _ClassVar[int]
    stripe_product_id: str
    name: str
    description: str
    active: bool
    custom_fields: _containers.ScalarMap[str, str]
    deleted: bool
    def __init__(self, stripe_product_id: _Optional[str] = ..., name: _Optional[str] = ..., description: _Optional[str] = ..., active: _Optional[bool] = ..., custom_fields: _Optional[_Mapping[str, str]] = ..., deleted: _Optional[bool] = ...) -> None: ...

class ContractLineItem(_message.Message):
    __slots__ = ("stripe_line_id", "stripe_product_id", "product_name", "description", "quantity", "start_date", "end_date", "amount", "discount")
    STRIPE_LINE_ID_FIELD_NUMBER: _ClassVar[int]
    STRIPE_PRODUCT_ID_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    START_DATE_FIELD_NUMBER: _ClassVar[int]
    END_DATE_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    DISCOUNT_FIELD_NUMBER: _ClassVar[int]
    stripe_line_id: str
    stripe_product_id: str
    product_name: str
    description: str
    quantity: int
    start_date: str
    end_date: str
    amount: _money_pb2.Money
    discount: _money_pb2.Money
    def __init__(self, stripe_line_id: _Optional[str] = ..., stripe_product_id: _Optional[str] = ..., product_name: _Optional[str] = ..., description: _Optional[str] = ..., quantity: _Optional[int] = ..., start_date: _Optional[str] = ..., end_date: _Optional[str] = ..., amount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., discount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ...) -> None: ...

class Contract(_message.Message):
    __slots__ = ("contract_id", "source", "stripe_customer_id", "client_id", "waiting_for_client", "status", "line_items", "total", "discount", "start_date", "end_date", "created", "canceled_at", "stripe_subscription_id")
    CONTRACT_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    STRIPE_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    WAITING_FOR_CLIENT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LINE_ITEMS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    DISCOUNT_FIELD_NUMBER: _ClassVar[int]
    START_DATE_FIELD_NUMBER: _ClassVar[int]
    END_DATE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    CANCELED_AT_FIELD_NUMBER: _ClassVar[int]
    STRIPE_SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    contract_id: str
    source: ContractSource
    stripe_customer_id: str
    client_id: str
    waiting_for_client: bool
    status: str
    line_items: _containers.RepeatedCompositeFieldContainer[ContractLineItem]
    total: _money_pb2.Money
    discount: _money_pb2.Money
    start_date: str
    end_date: str
    created: _timestamp_pb2.Timestamp
    canceled_at: _timestamp_pb2.Timestamp
    stripe_subscription_id: str
    def __init__(self, contract_id: _Optional[str] = ..., source: _Optional[_Union[ContractSource, str]] = ..., stripe_customer_id: _Optional[str] = ..., client_id: _Optional[str] = ..., waiting_for_client: _Optional[bool] = ..., status: _Optional[str] = ..., line_items: _Optional[_Iterable[_Union[ContractLineItem, _Mapping]]] = ..., total: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., discount: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., start_date: _Optional[str] = ..., end_date: _Optional[str] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., canceled_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., stripe_subscription_id: _Optional[str] = ...) -> None: ...

class ListClientsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListClientsResponse(_message.Message):
    __slots__ = ("clients", "next_page_token")
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    clients: _containers.RepeatedCompositeFieldContainer[Client]
    next_page_token: str
    def __init__(self, clients: _Optional[_Iterable[_Union[Client, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetClientRequest(_message.Message):
    __slots__ = ("client_id",)
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    def __init__(self, client_id: _Optional[str] = ...) -> None: ...

class GetClientResponse(_message.Message):
    __slots__ = ("client",)
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    client: Client
    def __init__(self, client: _Optional[_Union[Client, _Mapping]] = ...) -> None: ...

class CrmClient(_message.Message):
    __slots__ = ("crm_client_id", "name", "email", "stripe_customer_id")
    CRM_CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    STRIPE_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    crm_client_id: str
    name: str
    email: str
    stripe_customer_id: str
    def __init__(self, crm_client_id: _Optional[str] = ..., name: _Optional[str] = ..., email: _Optional[str] = ..., stripe_customer_id: _Optional[str] = ...) -> None: ...

class ImportCrmClientsRequest(_message.Message):
    __slots__ = ("clients",)
    CLIENTS_FIELD_NUMBER: _ClassVar[int]
    clients: _containers.RepeatedCompositeFieldContainer[CrmClient]
    def __init__(self, clients: _Optional[_Iterable[_Union[CrmClient, _Mapping]]] = ...) -> None: ...

class ImportCrmClientsResponse(_message.Message):
    __slots__ = ("imported",)
    IMPORTED_FIELD_NUMBER: _ClassVar[int]
    imported: int
    def __init__(self, imported: _Optional[int] = ...) -> None: ...

class ListProductsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListProductsResponse(_message.Message):
    __slots__ = ("products", "next_page_token")
    PRODUCTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    products: _containers.RepeatedCompositeFieldContainer[Product]
    next_page_token: str
    def __init__(self, products: _Optional[_Iterable[_Union[Product, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListContractsRequest(_message.Message):
    __slots__ = ("client_id", "source", "start_date", "end_date", "waiting_for_client", "page_size", "page_token")
    CLIENT_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    START_DATE_FIELD_NUMBER: _ClassVar[int]
    END_DATE_FIELD_NUMBER: _ClassVar[int]
    WAITING_FOR_CLIENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    client_id: str
    source: ContractSource
    start_date: str
    end_date: str
    waiting_for_client: bool
    page_size: int
    page_token: str
    def __init__(self, client_id: _Optional[str] = ..., source: _Optional[_Union[ContractSource, str]] = ..., start_date: _Optional[str] = ..., end_date: _Optional[str] = ..., waiting_for_client: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListContractsResponse(_message.Message):
    __slots__ = ("contracts", "next_page_token")
    CONTRACTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    contracts: _containers.RepeatedCompositeFieldContainer[Contract]
    next_page_token: str
    def __init__(self, contracts: _Optional[_Iterable[_Union[Contract, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetContractRequest(_message.Message):
    __slots__ = ("contract_id",)
    CONTRACT_ID_FIELD_NUMBER: _ClassVar[int]
    contract_id: str
    def __init__(self, contract_id: _Optional[str] = ...) -> None: ...

class GetContractResponse(_message.Message):
    __slots__ = ("contract",)
    CONTRACT_FIELD_NUMBER: _ClassVar[int]
    contract: Contract
    def __init__(self, contract: _Optional[_Union[Contract, _Mapping]] = ...) -> None: ...

class ExportSnapshotRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExportSnapshotResponse(_message.Message):
    __slots__ = ("client", "product", "contract")
    CLIENT_FIELD_NUMBER: _ClassVar[int]
    PRODUCT_FIELD_NUMBER: _ClassVar[int]
    CONTRACT_FIELD_NUMBER: _ClassVar[int]
    client: Client
    product: Product
    contract: Contract
    def __init__(self, client: _Optional[_Union[Client, _Mapping]] = ..., product: _Optional[_Union[Product, _Mapping]] = ..., contract: _Optional[_Union[Contract, _Mapping]] = ...) -> None: ...

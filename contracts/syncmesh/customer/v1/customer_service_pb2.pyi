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

class CustomerOrigin(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CUSTOMER_ORIGIN_UNSPECIFIED: _ClassVar[CustomerOrigin]
    CUSTOMER_ORIGIN_STRIPE_EVENT: _ClassVar[CustomerOrigin]
    CUSTOMER_ORIGIN_IMPORT: _ClassVar[CustomerOrigin]

class MatchedBy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MATCHED_BY_UNSPECIFIED: _ClassVar[MatchedBy]
    MATCHED_BY_STRIPE_CUSTOMER_ID: _ClassVar[MatchedBy]
    MATCHED_BY_EMAIL: _ClassVar[MatchedBy]

class ActiveFilter(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACTIVE_FILTER_UNSPECIFIED: _ClassVar[ActiveFilter]
    ACTIVE_FILTER_ACTIVE: _ClassVar[ActiveFilter]
    ACTIVE_FILTER_INACTIVE: _ClassVar[ActiveFilter]

class SyncAction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SYNC_ACTION_UNSPECIFIED: _ClassVar[SyncAction]
    SYNC_ACTION_UPDATED_LINKED: _ClassVar[SyncAction]
    SYNC_ACTION_LINKED_BY_EMAIL: _ClassVar[SyncAction]
    SYNC_ACTION_CREATED: _ClassVar[SyncAction]
CUSTOMER_ORIGIN_UNSPECIFIED: CustomerOrigin
CUSTOMER_ORIGIN_STRIPE_EVENT: CustomerOrigin
CUSTOMER_ORIGIN_IMPORT: CustomerOrigin
MATCHED_BY_UNSPECIFIED: MatchedBy
MATCHED_BY_STRIPE_CUSTOMER_ID: MatchedBy
MATCHED_BY_EMAIL: MatchedBy
ACTIVE_FILTER_UNSPECIFIED: ActiveFilter
ACTIVE_FILTER_ACTIVE: ActiveFilter
ACTIVE_FILTER_INACTIVE: ActiveFilter
SYNC_ACTION_UNSPECIFIED: SyncAction
SYNC_ACTION_UPDATED_LINKED: SyncAction
SYNC_ACTION_LINKED_BY_EMAIL: SyncAction
SYNC_ACTION_CREATED: SyncAction

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

class Customer(_message.Message):
    __slots__ = ("erp_customer_id", "stripe_customer_id", "email", "name", "phone", "description", "billing_address", "currency", "balance", "delinquent", "metadata", "livemode", "active", "deleted_at", "stripe_created_at", "created_at", "updated_at", "last_stripe_event_id", "origin")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ERP_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    STRIPE_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PHONE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    BILLING_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CURRENCY_FIELD_NUMBER: _ClassVar[int]
    BALANCE_FIELD_NUMBER: _ClassVar[int]
    DELINQUENT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    LIVEMODE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    DELETED_AT_FIELD_NUMBER: _ClassVar[int]
    STRIPE_CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_STRIPE_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    erp_customer_id: str
    stripe_customer_id: str
    email: str
    name: str
    phone: str
    description: str
    billing_address: Address
    currency: str
    balance: _money_pb2.Money
    delinquent: bool
    metadata: _containers.ScalarMap[str, str]
    livemode: bool
    active: bool
    deleted_at: _timestamp_pb2.Timestamp
    stripe_created_at: _timestamp_pb2.Timestamp
    created_at: _timestamp_pb2.Timestamp
    updated_at: _timestamp_pb2.Timestamp
    last_stripe_event_id: str
    origin: CustomerOrigin
    def __init__(self, erp_customer_id: _Optional[str] = ..., stripe_customer_id: _Optional[str] = ..., email: _Optional[str] = ..., name: _Optional[str] = ..., phone: _Optional[str] = ..., description: _Optional[str] = ..., billing_address: _Optional[_Union[Address, _Mapping]] = ..., currency: _Optional[str] = ..., balance: _Optional[_Union[_money_pb2.Money, _Mapping]] = ..., delinquent: _Optional[bool] = ..., metadata: _Optional[_Mapping[str, str]] = ..., livemode: _Optional[bool] = ..., active: _Optional[bool] = ..., deleted_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., stripe_created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., updated_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_stripe_event_id: _Optional[str] = ..., origin: _Optional[_Union[CustomerOrigin, str]] = ...) -> None: ...

class GetCustomerRequest(_message.Message):
    __slots__ = ("erp_customer_id", "stripe_customer_id")
    ERP_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    STRIPE_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    erp_customer_id: str
    stripe_customer_id: str
    def __init__(self, erp_customer_id: _Optional[str] = ..., stripe_customer_id: _Optional[str] = ...) -> None: ...

class GetCustomerResponse(_message.Message):
    __slots__ = ("customer",)
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    customer: Customer
    def __init__(self, customer: _Optional[_Union[Customer, _Mapping]] = ...) -> None: ...

class FindCustomerRequest(_message.Message):
    __slots__ = ("stripe_customer_id", "email")
    STRIPE_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    stripe_customer_id: str
    email: str
    def __init__(self, stripe_customer_id: _Optional[str] = ..., email: _Optional[str] = ...) -> None: ...

class FindCustomerResponse(_message.Message):
    __slots__ = ("customer", "matched_by")
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    MATCHED_BY_FIELD_NUMBER: _ClassVar[int]
    customer: Customer
    matched_by: MatchedBy
    def __init__(self, customer: _Optional[_Union[Customer, _Mapping]] = ..., matched_by: _Optional[_Union[MatchedBy, str]] = ...) -> None: ...

class ListCustomersRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "email", "updated_since", "active")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    UPDATED_SINCE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    email: str
    updated_since: _timestamp_pb2.Timestamp
    active: ActiveFilter
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., email: _Optional[str] = ..., updated_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., active: _Optional[_Union[ActiveFilter, str]] = ...) -> None: ...

class ListCustomersResponse(_message.Message):
    __slots__ = ("customers", "next_page_token")
    CUSTOMERS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    customers: _containers.RepeatedCompositeFieldContainer[Customer]
    next_page_token: str
    def __init__(self, customers: _Optional[_Iterable[_Union[Customer, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetCustomerHistoryRequest(_message.Message):
    __slots__ = ("erp_customer_id", "stripe_customer_id")
    ERP_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    STRIPE_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    erp_customer_id: str
    stripe_customer_id: str
    def __init__(self, erp_customer_id: _Optional[str] = ..., stripe_customer_id: _Optional[str] = ...) -> None: ...

class HistoryEntry(_message.Message):
    __slots__ = ("stripe_event_id", "action", "stripe_customer_id", "event_created_at", "recorded_at", "outcome")
    STRIPE_EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    STRIPE_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    RECORDED_AT_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    stripe_event_id: str
    action: str
    stripe_customer_id: str
    event_created_at: _timestamp_pb2.Timestamp
    recorded_at: _timestamp_pb2.Timestamp
    outcome: str
    def __init__(self, stripe_event_id: _Optional[str] = ..., action: _Optional[str] = ..., stripe_customer_id: _Optional[str] = ..., event_created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., recorded_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., outcome: _Optional[str] = ...) -> None: ...

class GetCustomerHistoryResponse(_message.Message):
    __slots__ = ("erp_customer_id", "entries")
    ERP_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    erp_customer_id: str
    entries: _containers.RepeatedCompositeFieldContainer[HistoryEntry]
    def __init__(self, erp_customer_id: _Optional[str] = ..., entries: _Optional[_Iterable[_Union[HistoryEntry, _Mapping]]] = ...) -> None: ...

class UnlinkCustomerRequest(_message.Message):
    __slots__ = ("erp_customer_id", "reason")
    ERP_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    erp_customer_id: str
    reason: str
    def __init__(self, erp_customer_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class UnlinkCustomerResponse(_message.Message):
    __slots__ = ("customer", "previous_stripe_customer_id")
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_STRIPE_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    customer: Customer
    previous_stripe_customer_id: str
    def __init__(self, customer: _Optional[_Union[Customer, _Mapping]] = ..., previous_stripe_customer_id: _Optional[str] = ...) -> None: ...

class ImportCustomerMappingsRequest(_message.Message):
    __slots__ = ("dry_run", "csv_chunk")
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    CSV_CHUNK_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    csv_chunk: bytes
    def __init__(self, dry_run: _Optional[bool] = ..., csv_chunk: _Optional[bytes] = ...) -> None: ...

class ImportProblem(_message.Message):
    __slots__ = ("line", "field", "reason")
    LINE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    line: int
    field: str
    reason: str
    def __init__(self, line: _Optional[int] = ..., field: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ImportCustomerMappingsResponse(_message.Message):
    __slots__ = ("applied", "dry_run", "rows", "created", "linked", "unchanged", "problems", "problem_count")
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    LINKED_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_COUNT_FIELD_NUMBER: _ClassVar[int]
    applied: bool
    dry_run: bool
    rows: int
    created: int
    linked: int
    unchanged: int
    problems: _containers.RepeatedCompositeFieldContainer[ImportProblem]
    problem_count: int
    def __init__(self, applied: _Optional[bool] = ..., dry_run: _Optional[bool] = ..., rows: _Optional[int] = ..., created: _Optional[int] = ..., linked: _Optional[int] = ..., unchanged: _Optional[int] = ..., problems: _Optional[_Iterable[_Union[ImportProblem, _Mapping]]] = ..., problem_count: _Optional[int] = ...) -> None: ...

class ImportCustomerMappingsWithProgressRequest(_message.Message):
    __slots__ = ("dry_run", "csv_chunk")
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    CSV_CHUNK_FIELD_NUMBER: _ClassVar[int]
    dry_run: bool
    csv_chunk: bytes
    def __init__(self, dry_run: _Optional[bool] = ..., csv_chunk: _Optional[bytes] = ...) -> None: ...

class ImportCustomerMappingsWithProgressResponse(_message.Message):
    __slots__ = ("step", "step_number", "steps", "rows_done", "rows", "result")
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEP_NUMBER_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    ROWS_DONE_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    step: str
    step_number: int
    steps: int
    rows_done: int
    rows: int
    result: ImportCustomerMappingsResponse
    def __init__(self, step: _Optional[str] = ..., step_number: _Optional[int] = ..., steps: _Optional[int] = ..., rows_done: _Optional[int] = ..., rows: _Optional[int] = ..., result: _Optional[_Union[ImportCustomerMappingsResponse, _Mapping]] = ...) -> None: ...

class SyncCustomerToStripeRequest(_message.Message):
    __slots__ = ("erp_customer_id", "email", "name")
    ERP_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    erp_customer_id: str
    email: str
    name: str
    def __init__(self, erp_customer_id: _Optional[str] = ..., email: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...

class SyncCustomerToStripeResponse(_message.Message):
    __slots__ = ("customer", "action")
    CUSTOMER_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    customer: Customer
    action: SyncAction
    def __init__(self, customer: _Optional[_Union[Customer, _Mapping]] = ..., action: _Optional[_Union[SyncAction, str]] = ...) -> None: ...

class MassSyncCustomersToStripeRequest(_message.Message):
    __slots__ = ("erp_customer_ids", "all_active")
    ERP_CUSTOMER_IDS_FIELD_NUMBER: _ClassVar[int]
    ALL_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    erp_customer_ids: _containers.RepeatedScalarFieldContainer[str]
    all_active: bool
    def __init__(self, erp_customer_ids: _Optional[_Iterable[str]] = ..., all_active: _Optional[bool] = ...) -> None: ...

class MassSyncCustomersToStripeResponse(_message.Message):
    __slots__ = ("erp_customer_id", "ok", "stripe_customer_id", "action", "error_code", "error_message")
    ERP_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    STRIPE_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ERROR_CODE_FIELD_NUMBER: _ClassVar[int]
    ERROR_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    erp_customer_id: str
    ok: bool
    stripe_customer_id: str
    action: SyncAction
    error_code: str
    error_message: str
    def __init__(self, erp_customer_id: _Optional[str] = ..., ok: _Optional[bool] = ..., stripe_customer_id: _Optional[str] = ..., action: _Optional[_Union[SyncAction, str]] = ..., error_code: _Optional[str] = ..., error_message: _Optional[str] = ...) -> None: ...

class CreatePortalSessionRequest(_message.Message):
    __slots__ = ("erp_customer_id", "stripe_customer_id", "return_url")
    ERP_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    STRIPE_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    RETURN_URL_FIELD_NUMBER: _ClassVar[int]
    erp_customer_id: str
    stripe_customer_id: str
    return_url: str
    def __init__(self, erp_customer_id: _Optional[str] = ..., stripe_customer_id: _Optional[str] = ..., return_url: _Optional[str] = ...) -> None: ...

class CreatePortalSessionResponse(_message.Message):
    __slots__ = ("url", "session_id", "stripe_customer_id", "created_at", "expires_at")
    URL_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STRIPE_CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    url: str
    session_id: str
    stripe_customer_id: str
    created_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, url: _Optional[str] = ..., session_id: _Optional[str] = ..., stripe_customer_id: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

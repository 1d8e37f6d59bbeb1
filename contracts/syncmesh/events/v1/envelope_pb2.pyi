import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EventSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EVENT_SOURCE_UNSPECIFIED: _ClassVar[EventSource]
    EVENT_SOURCE_WEBHOOK: _ClassVar[EventSource]
    EVENT_SOURCE_SWEEP: _ClassVar[EventSource]
    EVENT_SOURCE_BACKFILL: _ClassVar[EventSource]
    EVENT_SOURCE_REDRIVE: _ClassVar[EventSource]
    EVENT_SOURCE_RECONCILE: _ClassVar[EventSource]
EVENT_SOURCE_UNSPECIFIED: EventSource
EVENT_SOURCE_WEBHOOK: EventSource
EVENT_SOURCE_SWEEP: EventSource
EVENT_SOURCE_BACKFILL: EventSource
EVENT_SOURCE_REDRIVE: EventSource
EVENT_SOURCE_RECONCILE: EventSource

class StripeEventEnvelope(_message.Message):
    __slots__ = ("event_id", "event_type", "created", "livemode", "api_version", "account", "payload", "received_at", "source")
    EVENT_ID_FIELD_NUMBER: _ClassVar[int]
    EVENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    LIVEMODE_FIELD_NUMBER: _ClassVar[int]
    API_VERSION_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    event_id: str
    event_type: str
    created: _timestamp_pb2.Timestamp
    livemode: bool
    api_version: str
    account: str
    payload: bytes
    received_at: _timestamp_pb2.Timestamp
    source: EventSource
    def __init__(self, event_id: _Optional[str] = ..., event_type: _Optional[str] = ..., created: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., livemode: _Optional[bool] = ..., api_version: _Optional[str] = ..., account: _Optional[str] = ..., payload: _Optional[bytes] = ..., received_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., source: _Optional[_Union[EventSource, str]] = ...) -> None: ...

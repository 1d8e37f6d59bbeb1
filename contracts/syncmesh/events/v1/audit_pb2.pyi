import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from syncmesh.events.v1 import meta_pb2 as _meta_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CallAudited(_message.Message):
    __slots__ = ("meta", "method", "identity", "via", "role", "outcome", "detail", "target_field", "target_id", "called_at", "trace_id")
    META_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    VIA_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_FIELD_NUMBER: _ClassVar[int]
    TARGET_ID_FIELD_NUMBER: _ClassVar[int]
    CALLED_AT_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    meta: _meta_pb2.EventMeta
    method: str
    identity: str
    via: str
    role: str
    outcome: str
    detail: str
    target_field: str
    target_id: str
    called_at: _timestamp_pb2.Timestamp
    trace_id: str
    def __init__(self, meta: _Optional[_Union[_meta_pb2.EventMeta, _Mapping]] = ..., method: _Optional[str] = ..., identity: _Optional[str] = ..., via: _Optional[str] = ..., role: _Optional[str] = ..., outcome: _Optional[str] = ..., detail: _Optional[str] = ..., target_field: _Optional[str] = ..., target_id: _Optional[str] = ..., called_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., trace_id: _Optional[str] = ...) -> None: ...

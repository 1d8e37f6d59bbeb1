"""The audit trail: every audited gRPC call, allowed or refused, stored and announced.

The runtime's interceptor (services.common.grpc_server) hands each call of a method that needs
more than reading (a change, or a bulk read of personal data) to `AuditTrail.record` once it has
ended: who (the identity the connection proved: services.common.auth.caller(), never the
request), what (the method, and the record it was about when the request names one), when (the
call's arrival), and the outcome (OK or the status code). The record goes into the service's
`audit_log` table and, in the same transaction, into the outbox as a `CallAudited` domain event
on `syncmesh.<service>.call_audited`: stored and announced together, or neither.

Recording runs after the call, in its own transaction: a refused call has no transaction to join,
and an allowed one has committed already. So an audit record never holds up or undoes a change;
if the database is gone at that moment (the call itself most likely failed for the same reason),
the record is not stored, and the `syncmesh.audit` log line, always written, remains the trace.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from collections.abc import Callable
from datetime import datetime
from typing import Any

import asyncpg
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from syncmesh.events.v1.audit_pb2 import CallAudited

from services.common.outbox import add_event

log = logging.getLogger(__name__)
audit_log = logging.getLogger("syncmesh.audit")

#: The domain event's name: subject `syncmesh.<service>.call_audited`.
EVENT_NAME = "call_audited"
#: Longest target id and detail kept: enough for any real id or refusal, bounded for a hostile one.
MAX_TARGET_CHARS = 200
MAX_DETAIL_CHARS = 400
#: Audit records written at once, at most: a flood of refused calls (anyone can send them) must
#: not take the connections the service's consumer and its real callers need from its pool.
CONCURRENT_WRITES = 2
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]")


@dataclasses.dataclass(frozen=True)
class AuditEntry:
    method: str
    identity: str
    via: str
    role: str
    outcome: str
    detail: str
    target_field: str
    target_id: str
    called_at: datetime
    trace_id: str


def _clean(value: str, limit: int) -> str:
    """Printable and bounded: a NUL would be refused by PostgreSQL, a megabyte would fill the table."""
    cleaned = _UNPRINTABLE.sub("?", value)
    return cleaned if len(cleaned) <= limit else cleaned[: limit - 1] + "…"


def target_of(request: Any) -> tuple[str, str]:
    """The record a request is about: its first non-empty `*_id` string field, as (field, id).

    Every mutating RPC of the mesh names its record that way (erp_customer_id, client_id...);
    requests about no single record (imports, settings, lists of ids) have none."""
    if not isinstance(request, Message):
        return "", ""
    for field in request.DESCRIPTOR.fields:
        if (
            field.type == FieldDescriptor.TYPE_STRING
            and not field.is_repeated
            and field.name.endswith("_id")
            and getattr(request, field.name)
        ):
            return field.name, _clean(getattr(request, field.name), MAX_TARGET_CHARS)
    return "", ""


def log_entry(entry: AuditEntry) -> None:
    """The log line every audited call gets, stored or not: who, what, outcome."""
    audit_log.info(
        "audit %s by %s: %s",
        entry.method,
        entry.identity,
        entry.outcome,
        extra={
            "audit": {
                "method": entry.method,
                "identity": entry.identity,
                "via": entry.via,
                "role": entry.role,
                "outcome": entry.outcome,
                "target_field": entry.target_field,
                "target_id": entry.target_id,
            }
        },
    )


class AuditTrail:
    """Stores and announces audit records in one service's schema (its pool, once it has one)."""

    def __init__(
        self,
        service: str,
        pool: Callable[[], asyncpg.Pool],
        wake_relay: Callable[[], None],
        *,
        timeout_seconds: float = 5.0,
    ) -> None:
        self.service = service
        self._pool = pool
        self._wake_relay = wake_relay
        self.timeout_seconds = timeout_seconds
        #: Records written from a cancelled call, finished in the background; kept referenced.
        self._pending: set[asyncio.Task[None]] = set()
        self._writers = asyncio.Semaphore(CONCURRENT_WRITES)

    async def record(self, entry: AuditEntry) -> None:
        """Store and announce `entry`; never raises (the call's own outcome stands either way)."""
        try:
            async with asyncio.timeout(self.timeout_seconds), self._writers:
                await self._store(entry)
        except Exception as exc:
            log.error(
                "audit record of %s by %s (%s) not stored: %s: %s",
                entry.method,
                entry.identity,
                entry.outcome,
                type(exc).__name__,
                str(exc)[:200],
            )
            return
        self._wake_relay()

    def record_later(self, entry: AuditEntry) -> None:
        """For a call being cancelled: the record is written by a task of its own."""
        task = asyncio.get_running_loop().create_task(self.record(entry), name=f"audit-{self.service}")
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _store(self, entry: AuditEntry) -> None:
        called_at = Timestamp()
        called_at.FromDatetime(entry.called_at)
        message = CallAudited(
            method=entry.method,
            identity=entry.identity,
            via=entry.via,
            role=entry.role,
            outcome=entry.outcome,
            detail=_clean(entry.detail, MAX_DETAIL_CHARS),
            target_field=entry.target_field,
            target_id=entry.target_id,
            called_at=called_at,
            trace_id=entry.trace_id,
        )
        async with self._pool().acquire() as conn, conn.transaction():
            event_id = await add_event(conn, service=self.service, event_name=EVENT_NAME, message=message)
            await conn.execute(
                "INSERT INTO audit_log (event_id, called_at, method, identity, via, role, outcome, detail, "
                "target_field, target_id, trace_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                event_id,
                entry.called_at,
                entry.method,
                entry.identity,
                entry.via,
                entry.role,
                entry.outcome,
                message.detail,
                entry.target_field,
                entry.target_id,
                entry.trace_id,
            )

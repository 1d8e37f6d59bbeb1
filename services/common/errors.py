"""The mesh's exceptions, one tree, so callers catch exactly what they can handle.

    SyncMeshError
    ├── SettingsError            bad or missing configuration; the process must not start
    ├── EventError               an inbound Stripe event that must change nothing
    │   ├── SignatureError       missing/invalid Stripe-Signature or stale timestamp (HTTP 400)
    │   ├── MalformedEventError  not JSON, or not shaped like a Stripe event (HTTP 400 / dead letter)
    │   └── WrongModeError       livemode does not match SYNCMESH_MODE (HTTP 400)
    ├── PublishError             JetStream did not ack in time; the sender must retry (HTTP 503)
    ├── HandlerError             raised by a service while handling an event
    │   ├── RetryableError       worth another try: nak, retry with backoff, dead-letter after
    │   │   │                    SYNCMESH_MAX_DELIVER failed attempts
    │   │   └── UnavailableError a dependency (Stripe) cannot be reached: retried for as long as
    │   │                        the outage lasts, never dead-lettered for it
    │   └── PermanentError       retrying cannot help: dead-letter at once with the reason
    ├── ValidationError          a request argument is wrong (gRPC INVALID_ARGUMENT naming `field`)
    ├── NotFoundError            the record asked for does not exist (gRPC NOT_FOUND)
    ├── ConflictError            the request contradicts existing state (gRPC FAILED_PRECONDITION)
    ├── UpstreamError            Stripe could not be reached or refused (gRPC UNAVAILABLE)
    │   └── NotServedError       this Stripe API has no such listing (404: a stand-in, not Stripe)
    ├── AuthenticationError      a gRPC caller without a known identity (UNAUTHENTICATED)
    └── PermissionDeniedError    a known caller whose role may not call the method (PERMISSION_DENIED)

Anything else escaping a handler is treated as retryable: after `max_deliver` attempts the
message is dead-lettered with the exception's text, so nothing is ever dropped silently.
"""

from __future__ import annotations


class SyncMeshError(Exception):
    """Base of every error the mesh raises on purpose."""


class SettingsError(SyncMeshError):
    """Configuration is missing or invalid; the message names the variable."""


class EventError(SyncMeshError):
    """An inbound event that must be refused without side effects."""


class SignatureError(EventError):
    pass


class MalformedEventError(EventError):
    pass


class WrongModeError(EventError):
    pass


class PublishError(SyncMeshError):
    """The event bus did not confirm durable storage."""


class HandlerError(SyncMeshError):
    pass


class RetryableError(HandlerError):
    pass


class UnavailableError(RetryableError):
    """A dependency is down, not the event wrong: an outage must never use up a message's attempts,
    however long it lasts (PostgreSQL's own outages are recognised by the runtime itself)."""


class PermanentError(HandlerError):
    pass


class ValidationError(SyncMeshError):
    """A caller's argument is wrong. `field` names it, as gRPC clients need to fix their request."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NotFoundError(SyncMeshError):
    pass


class ConflictError(SyncMeshError):
    pass


class UpstreamError(SyncMeshError):
    pass


class NotServedError(UpstreamError):
    """The Stripe API answered 404 for a whole listing: a stand-in that lacks that resource."""


class AuthenticationError(SyncMeshError):
    """The caller presented no identity, or one the mesh does not know (gRPC UNAUTHENTICATED)."""


class PermissionDeniedError(SyncMeshError):
    """The caller is known but its role may not do this (gRPC PERMISSION_DENIED)."""

-- The audit trail: one row per audited gRPC call (a change, or a bulk read of personal data),
-- allowed or refused, written by the runtime's interceptor in the same transaction as its
-- `syncmesh.<service>.call_audited` domain event (in outbox), so the two never disagree.
-- Who comes from the connection's proven identity, never from the request. Kept, not pruned:
-- deleting audit records is a decision for whoever owns the retention policy.
CREATE TABLE audit_log (
    id bigserial PRIMARY KEY,
    -- The domain event announcing this record (outbox.msg_id, CallAudited.meta.event_id).
    event_id text NOT NULL UNIQUE,
    called_at timestamptz NOT NULL,
    method text NOT NULL,
    identity text NOT NULL,
    -- token, jwt, certificate; '' when the caller proved nothing.
    via text NOT NULL DEFAULT '',
    role text NOT NULL DEFAULT '',
    -- OK, or the gRPC status code the call ended with.
    outcome text NOT NULL,
    detail text NOT NULL DEFAULT '',
    target_field text NOT NULL DEFAULT '',
    target_id text NOT NULL DEFAULT '',
    trace_id text NOT NULL DEFAULT '',
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_called_at ON audit_log (called_at);
CREATE INDEX audit_log_identity ON audit_log (identity, called_at);
CREATE INDEX audit_log_target ON audit_log (target_id, called_at) WHERE target_id <> '';

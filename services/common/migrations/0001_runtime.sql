-- The runtime's own tables, present in every service's schema.

-- Idempotency record: one row per Stripe event (or other message) a service has handled.
-- Inserted in the same transaction as the handler's writes, so "handled" and "written" can
-- never disagree, whatever crashes when.
CREATE TABLE processed_events (
    event_id text PRIMARY KEY,
    event_type text NOT NULL,
    stream_sequence bigint,
    -- 'applied', or 'skipped: <reason>' for events deliberately not applied (counted, not lost).
    outcome text NOT NULL DEFAULT 'applied',
    processed_at timestamptz NOT NULL DEFAULT now()
);

-- Transactional outbox: domain events written with the records they describe, published to
-- NATS after commit by the relay, which marks them published. A crash between commit and
-- publish only delays them.
CREATE TABLE outbox (
    id bigserial PRIMARY KEY,
    subject text NOT NULL,
    message_type text NOT NULL,
    msg_id text NOT NULL UNIQUE,
    payload bytea NOT NULL,
    headers jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;

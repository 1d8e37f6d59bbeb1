CREATE TABLE toy_records (
    object_id text PRIMARY KEY,
    last_event_id text NOT NULL,
    times_applied integer NOT NULL DEFAULT 1
);

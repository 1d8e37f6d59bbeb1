CREATE TABLE toy_customers (
    customer_id text PRIMARY KEY,
    display_name text NOT NULL,
    last_event_created bigint NOT NULL
);

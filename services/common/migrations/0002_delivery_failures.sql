-- Failed attempts per event, counted by the runtime only when the service's applier failed on
-- it. A message's delivery count also grows while PostgreSQL or Stripe is unreachable, and an
-- outage is not the event's fault: it must never turn a good event into a dead letter, however
-- long it lasts. So the dead-letter decision reads this count, not JetStream's.
CREATE TABLE delivery_failures (
    event_id text PRIMARY KEY,
    failures integer NOT NULL,
    last_error text NOT NULL,
    last_failed_at timestamptz NOT NULL DEFAULT now()
);

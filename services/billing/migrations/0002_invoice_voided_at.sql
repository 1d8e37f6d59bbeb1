-- When Stripe voided the invoice (status_transitions.voided_at). GetCustomerBalance as of an
-- earlier day counts a void from this moment; without it, from the newest snapshot's event,
-- which for a backfilled invoice is the day the backfill ran. Invoices stored before this
-- column existed keep NULL (and that stand-in) until their next event.
ALTER TABLE invoices ADD COLUMN voided_at bigint;

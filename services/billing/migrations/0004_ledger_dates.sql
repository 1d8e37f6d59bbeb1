-- Ledger dates come from Stripe, and each record says where its date came from:
-- 'stripe_transition' (the object's own moment: status_transitions.*, voided_at, a charge's or
-- refund's created), 'stripe_event' (the event's created, when the object records none) or
-- 'notified' (the gateway's receipt, only where Stripe gave nothing). Rows stored before this
-- migration were dated by the mesh's clock where they say 'mesh_clock' (or NULL); the next event
-- touching them re-dates them from Stripe.

-- The earliest event that said the invoice is uncollectible (legacy closed/forgiven invoices
-- record no marked_uncollectible_at): dates the write-off memo and the ageing alike.
ALTER TABLE invoices ADD COLUMN uncollectible_event_at bigint;

ALTER TABLE payments ADD COLUMN date_source text;

ALTER TABLE credit_memos ADD COLUMN date_source text NOT NULL DEFAULT 'stripe_transition';
UPDATE credit_memos SET date_source = 'notified' WHERE kind = 'write_off';

ALTER TABLE credit_holds ADD COLUMN placed_date_source text;
ALTER TABLE credit_holds ADD COLUMN released_date_source text;
UPDATE credit_holds SET placed_date_source = 'mesh_clock';
UPDATE credit_holds SET released_date_source = 'mesh_clock' WHERE released_at IS NOT NULL;

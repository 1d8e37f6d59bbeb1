-- When Stripe voided a credit note (credit_note.voided_at). GetCustomerBalance as of a day
-- before that still counts the credit; a void credit note without it (stored before this
-- column existed) counts as never issued, as before.
ALTER TABLE credit_memos ADD COLUMN voided_at bigint;

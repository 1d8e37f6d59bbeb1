-- Contract fields (issue 16): drafts, charge ids in the current API shape, line ids and tax,
-- credit hold reason codes.

-- A draft is not a receivable: a new invoice starts as one until its ledger is derived, and the
-- drafts the old mapping stored as open are corrected (Stripe's newest snapshot is still a draft,
-- so it was never finalized).
ALTER TABLE invoices ALTER COLUMN erp_status SET DEFAULT 'draft';
UPDATE invoices SET erp_status = 'draft', amount_remaining = 0
 WHERE stripe_status = 'draft' AND erp_status = 'open';

-- Succeeded charges by payment intent: in the current API shape `invoice_payment` names only the
-- payment intent and `charge.succeeded` names no invoice; whichever is stored first, the other
-- completes the payment's charge id through this join. A charge's intent never changes.
CREATE TABLE charges (
    charge_id text PRIMARY KEY,
    payment_intent_id text NOT NULL,
    stripe_customer_id text,
    stripe_created bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX charges_intent ON charges (payment_intent_id);

-- Lines: the discount's coupon, the item's product, the line's own tax (minor units).
ALTER TABLE invoice_lines ADD COLUMN coupon_id text;
ALTER TABLE invoice_lines ADD COLUMN stripe_product_id text;
ALTER TABLE invoice_lines ADD COLUMN tax_amount bigint NOT NULL DEFAULT 0;

-- Credit holds: a reason code beside the free text, placed and released.
ALTER TABLE credit_holds ADD COLUMN reason_code text;
ALTER TABLE credit_holds ADD COLUMN release_reason_code text;
UPDATE credit_holds SET reason_code = CASE cause_rank WHEN 1 THEN 'final_payment_failure'
                                                     ELSE 'subscription_delinquent' END;
UPDATE credit_holds SET release_reason_code = CASE WHEN release_reason LIKE '%voided' THEN 'invoice_voided'
                                                   ELSE 'invoice_paid' END
 WHERE released_at IS NOT NULL;
ALTER TABLE credit_holds ALTER COLUMN reason_code SET NOT NULL;

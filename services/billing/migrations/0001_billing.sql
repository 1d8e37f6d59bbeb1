-- The billing service's ERP ledger (NetSuite's record model), kept in step with Stripe.
-- Money: bigint minor units + currency text. Stripe ids are the keys (order-independence);
-- ERP ids are assigned here once, on first sight.

CREATE SEQUENCE erp_invoice_seq;
CREATE SEQUENCE erp_payment_seq;
CREATE SEQUENCE erp_credit_memo_seq;
CREATE SEQUENCE erp_refund_seq;

-- What the customer service knows as the ERP customer, learnt from customer events.
CREATE TABLE customers (
    stripe_customer_id text PRIMARY KEY,
    erp_customer_id text,
    version_created bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Price -> item data sheet, imported all-or-nothing.
CREATE TABLE item_mappings (
    stripe_price_id text PRIMARY KEY,
    erp_item_id text NOT NULL,
    imported_at timestamptz NOT NULL DEFAULT now()
);

-- Prices seen on invoices without a mapping (billed to the default item), for finance to map.
CREATE TABLE unmapped_prices (
    stripe_price_id text PRIMARY KEY,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    last_invoice_id text NOT NULL,
    invoices_seen bigint NOT NULL DEFAULT 1
);

CREATE TABLE invoices (
    stripe_invoice_id text PRIMARY KEY,
    erp_invoice_id text NOT NULL UNIQUE DEFAULT 'INV-' || lpad(nextval('erp_invoice_seq')::text, 7, '0'),
    stripe_customer_id text NOT NULL,
    subscription_id text,
    number text,
    -- The newest Stripe snapshot: (status_rank, event created, amount paid, attempts, event id)
    -- is the version; an older one never overwrites a newer one.
    stripe_status text NOT NULL,
    status_rank integer NOT NULL,
    version_created bigint NOT NULL,
    version_paid bigint NOT NULL,
    version_attempts integer NOT NULL,
    version_event_id text NOT NULL,
    api_shape text NOT NULL,
    billing_reason text,
    collection_method text,
    currency text NOT NULL,
    stripe_created bigint NOT NULL,
    transaction_date date NOT NULL,
    due_date date NOT NULL,
    period_start date,
    period_end date,
    subtotal bigint NOT NULL,
    discount_total bigint NOT NULL,
    tax bigint NOT NULL,
    tax_inclusive bigint NOT NULL,
    total bigint NOT NULL,
    amount_due bigint NOT NULL,
    stripe_amount_paid bigint NOT NULL,
    stripe_amount_remaining bigint NOT NULL,
    balance_applied bigint NOT NULL,
    attempt_count integer NOT NULL,
    next_payment_attempt bigint,
    paid_at bigint,
    lines_complete boolean NOT NULL,
    -- Fingerprint of the mapped lines: an event repeating the same lines rewrites nothing.
    lines_hash text NOT NULL DEFAULT '',
    balanced boolean NOT NULL DEFAULT true,
    -- Uncollectible facts: seen at all, when Stripe says it happened, the day we were told.
    uncollectible_seen boolean NOT NULL DEFAULT false,
    uncollectible_at bigint,
    uncollectible_notified_on date,
    -- Derived ledger state (recomputed from the facts after every change).
    amount_paid bigint NOT NULL DEFAULT 0,
    unattributed_paid bigint NOT NULL DEFAULT 0,
    credits_applied bigint NOT NULL DEFAULT 0,
    amount_remaining bigint NOT NULL DEFAULT 0,
    erp_status text NOT NULL DEFAULT 'open',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX invoices_customer ON invoices (stripe_customer_id, transaction_date);
CREATE INDEX invoices_listing ON invoices (transaction_date, stripe_invoice_id);

CREATE TABLE invoice_lines (
    stripe_invoice_id text NOT NULL REFERENCES invoices ON DELETE CASCADE,
    line_no integer NOT NULL,
    kind text NOT NULL CHECK (kind IN ('item', 'discount')),
    stripe_line_id text,
    stripe_price_id text,
    discount_id text,
    erp_item_id text NOT NULL,
    item_mapped boolean NOT NULL,
    description text NOT NULL,
    quantity bigint NOT NULL,
    unit_amount bigint,
    unit_amount_decimal text,
    amount bigint NOT NULL,
    discount_amount bigint NOT NULL,
    recognized_amount bigint NOT NULL,
    currency text NOT NULL,
    period_start date,
    period_end date,
    proration boolean NOT NULL,
    revenue_account text,
    PRIMARY KEY (stripe_invoice_id, line_no)
);

CREATE TABLE revenue_schedule (
    stripe_invoice_id text NOT NULL,
    line_no integer NOT NULL,
    period date NOT NULL,
    amount bigint NOT NULL,
    currency text NOT NULL,
    PRIMARY KEY (stripe_invoice_id, line_no, period),
    FOREIGN KEY (stripe_invoice_id, line_no) REFERENCES invoice_lines ON DELETE CASCADE
);

-- Customer payments, keyed by the Stripe object that is the payment (invoice_payment, charge,
-- or oob_<invoice> for legacy out-of-band payments). The invoice may arrive later.
CREATE TABLE payments (
    stripe_payment_id text PRIMARY KEY,
    erp_payment_id text NOT NULL UNIQUE DEFAULT 'PMT-' || lpad(nextval('erp_payment_seq')::text, 7, '0'),
    stripe_invoice_id text,
    stripe_customer_id text,
    charge_id text,
    payment_intent_id text,
    amount bigint NOT NULL,
    currency text NOT NULL,
    paid_at bigint NOT NULL,
    paid_on date NOT NULL,
    method text NOT NULL,
    source text NOT NULL,
    priority integer NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payments_invoice ON payments (stripe_invoice_id);
CREATE INDEX payments_charge ON payments (charge_id);
CREATE INDEX payments_intent ON payments (payment_intent_id);

-- Customer refunds, one per Stripe refund id; each is settled against its own credit memo.
CREATE TABLE refunds (
    stripe_refund_id text PRIMARY KEY,
    erp_refund_id text NOT NULL UNIQUE DEFAULT 'RFD-' || lpad(nextval('erp_refund_seq')::text, 7, '0'),
    charge_id text,
    payment_intent_id text,
    stripe_invoice_id text,
    stripe_customer_id text,
    amount bigint NOT NULL,
    currency text NOT NULL,
    status text NOT NULL,
    status_rank integer NOT NULL,
    stripe_created bigint NOT NULL,
    refunded_on date NOT NULL,
    reason text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX refunds_invoice ON refunds (stripe_invoice_id);

-- Credit memos: from credit notes (memo_key cn_...), refunds (re_...) and write-offs (wo_<invoice>).
CREATE TABLE credit_memos (
    memo_key text PRIMARY KEY,
    erp_credit_memo_id text NOT NULL UNIQUE DEFAULT 'CM-' || lpad(nextval('erp_credit_memo_seq')::text, 7, '0'),
    kind text NOT NULL CHECK (kind IN ('credit_note', 'refund', 'write_off')),
    stripe_invoice_id text,
    stripe_customer_id text,
    number text,
    amount bigint NOT NULL,
    currency text NOT NULL,
    memo_date date NOT NULL,
    -- issued | void | reversed (write-off undone by a later payment) | superseded (refund
    -- already carried by its credit note's memo)
    status text NOT NULL,
    status_rank integer NOT NULL DEFAULT 0,
    applied_to text NOT NULL,
    note_type text,
    reason text,
    memo text,
    version_created bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX credit_memos_invoice ON credit_memos (stripe_invoice_id);

CREATE TABLE credit_memo_lines (
    memo_key text NOT NULL REFERENCES credit_memos ON DELETE CASCADE,
    line_no integer NOT NULL,
    description text NOT NULL,
    quantity bigint NOT NULL,
    unit_amount bigint,
    amount bigint NOT NULL,
    invoice_line_item text,
    kind text NOT NULL,
    PRIMARY KEY (memo_key, line_no)
);

-- Which refunds a credit note paid out (so the refund's own memo is not counted again).
CREATE TABLE credit_note_refunds (
    credit_note_id text NOT NULL,
    refund_id text NOT NULL,
    PRIMARY KEY (credit_note_id, refund_id)
);
CREATE INDEX credit_note_refunds_refund ON credit_note_refunds (refund_id);

CREATE TABLE credit_holds (
    stripe_customer_id text NOT NULL,
    stripe_invoice_id text NOT NULL,
    reason text NOT NULL,
    -- When several facts put the same hold on, the strongest cause names it (1 = the invoice's
    -- final payment failure, 2 = the subscription's state), whatever order they came in.
    cause_rank integer NOT NULL,
    placed_at timestamptz NOT NULL DEFAULT now(),
    released_at timestamptz,
    release_reason text,
    PRIMARY KEY (stripe_customer_id, stripe_invoice_id)
);
CREATE INDEX credit_holds_invoice ON credit_holds (stripe_invoice_id);

-- Every change to every record, with the Stripe event behind it.
CREATE TABLE record_history (
    id bigserial PRIMARY KEY,
    record_type text NOT NULL,
    record_id text NOT NULL,
    stripe_event_id text NOT NULL,
    event_type text NOT NULL,
    change text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX record_history_record ON record_history (record_id, id);

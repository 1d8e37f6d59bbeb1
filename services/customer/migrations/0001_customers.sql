-- ERP customer records, one per Stripe customer (and per imported ERP customer), with the
-- Stripe event behind each change.

-- ERP ids are CUST-<number>; a sequence so concurrent replicas never hand out the same one.
CREATE SEQUENCE erp_customer_number;

CREATE TABLE customers (
    erp_customer_id text PRIMARY KEY,
    -- NULL while unlinked; one ERP customer per Stripe customer.
    stripe_customer_id text UNIQUE,
    email text,
    -- Emails compare case-insensitively: lookups use this indexed, lower-cased copy.
    email_lower text,
    name text,
    phone text,
    description text,
    address jsonb,
    currency text,
    -- Stripe's customer balance in minor units of `currency` (negative = credit).
    balance_minor bigint NOT NULL DEFAULT 0,
    delinquent boolean NOT NULL DEFAULT false,
    metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
    livemode boolean NOT NULL DEFAULT false,
    -- A deleted Stripe customer turns the record inactive; it is never erased.
    active boolean NOT NULL DEFAULT true,
    deleted_at timestamptz,
    stripe_created timestamptz,
    origin text NOT NULL CHECK (origin IN ('stripe_event', 'import')),
    -- Version key of the Stripe state held: (event created, lifecycle rank). NULL: none yet.
    version_created bigint,
    version_rank smallint,
    last_event_id text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((version_created IS NULL) = (version_rank IS NULL))
);

CREATE INDEX customers_email_lower ON customers (email_lower) WHERE email_lower IS NOT NULL;
CREATE INDEX customers_updated_at ON customers (updated_at);

-- Deleted customers stay: ERP history (invoices, payments) refers to them.
CREATE FUNCTION customers_refuse_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'customer records are never erased: a deleted Stripe customer is marked inactive';
END
$$;
CREATE TRIGGER customers_never_erased BEFORE DELETE ON customers
    FOR EACH ROW EXECUTE FUNCTION customers_refuse_delete();

-- The audit trail: every Stripe event that reached a record (applied or found stale), and
-- every link change made through the API.
CREATE TABLE customer_history (
    id bigserial PRIMARY KEY,
    erp_customer_id text NOT NULL REFERENCES customers (erp_customer_id),
    stripe_customer_id text,
    stripe_event_id text,
    action text NOT NULL,
    event_created timestamptz,
    outcome text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX customer_history_event ON customer_history (stripe_event_id) WHERE stripe_event_id IS NOT NULL;
CREATE INDEX customer_history_record ON customer_history (erp_customer_id, id);

-- The customer-success view (ClientSuccess's model) kept from Stripe, plus settings and the
-- initial import's checkpoints. Version columns (v_terminal, v_ts, v_rank, content_hash) make
-- every upsert order-independent: a row is replaced only by a strictly greater version.

CREATE TABLE settings_versions (
    version bigint PRIMARY KEY,
    contract_sources text[] NOT NULL,
    days_back integer NOT NULL CHECK (days_back BETWEEN 1 AND 3650),
    customer_sync_direction text NOT NULL CHECK (customer_sync_direction IN ('PULL', 'DISABLED')),
    customer_field_mappings jsonb NOT NULL,
    product_field_mappings jsonb NOT NULL,
    import_requests_per_second integer NOT NULL CHECK (import_requests_per_second BETWEEN 1 AND 100),
    changed_by text NOT NULL DEFAULT '',
    changed_at timestamptz NOT NULL DEFAULT now()
);
INSERT INTO settings_versions (version, contract_sources, days_back, customer_sync_direction,
                               customer_field_mappings, product_field_mappings, import_requests_per_second,
                               changed_by)
VALUES (1, '{INVOICE}', 365, 'PULL', '[{"stripe_path": "balance", "crm_field": "Stripe Balance"}]', '[]', 20,
        'defaults');

-- Every Stripe customer seen, whatever the sync direction: the raw object lets clients be
-- rebuilt when mappings or the direction change, and its email attaches contracts to CRM clients.
CREATE TABLE stripe_customers (
    id text PRIMARY KEY,
    email text NOT NULL DEFAULT '',
    deleted boolean NOT NULL DEFAULT false,
    raw jsonb NOT NULL,
    v_terminal boolean NOT NULL,
    v_ts bigint NOT NULL,
    v_rank integer NOT NULL,
    content_hash text NOT NULL
);
CREATE INDEX stripe_customers_email ON stripe_customers (lower(email)) WHERE email <> '';

CREATE TABLE clients (
    client_id text PRIMARY KEY,
    origin text NOT NULL CHECK (origin IN ('STRIPE', 'CRM')),
    stripe_customer_id text,
    crm_client_id text UNIQUE,
    name text NOT NULL,
    email text NOT NULL DEFAULT '',
    line1 text NOT NULL DEFAULT '',
    line2 text NOT NULL DEFAULT '',
    city text NOT NULL DEFAULT '',
    state text NOT NULL DEFAULT '',
    postal_code text NOT NULL DEFAULT '',
    country text NOT NULL DEFAULT '',
    custom_fields jsonb NOT NULL DEFAULT '{}'::jsonb,
    deleted boolean NOT NULL DEFAULT false,
    v_terminal boolean NOT NULL DEFAULT false,
    v_ts bigint NOT NULL DEFAULT 0,
    v_rank integer NOT NULL DEFAULT 0,
    content_hash text NOT NULL DEFAULT '',
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX clients_stripe_customer ON clients (stripe_customer_id);
CREATE INDEX clients_email ON clients (lower(email)) WHERE email <> '';

CREATE TABLE products (
    stripe_product_id text PRIMARY KEY,
    name text NOT NULL,
    description text NOT NULL DEFAULT '',
    active boolean NOT NULL,
    custom_fields jsonb NOT NULL DEFAULT '{}'::jsonb,
    deleted boolean NOT NULL DEFAULT false,
    raw jsonb NOT NULL,
    v_terminal boolean NOT NULL,
    v_ts bigint NOT NULL,
    v_rank integer NOT NULL,
    content_hash text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE contracts (
    contract_id text PRIMARY KEY,
    source text NOT NULL CHECK (source IN ('INVOICE', 'SUBSCRIPTION')),
    stripe_customer_id text NOT NULL,
    customer_email text NOT NULL DEFAULT '',
    status text NOT NULL,
    currency text NOT NULL,
    total_minor bigint NOT NULL,
    discount_minor bigint NOT NULL,
    start_date date,
    end_date date,
    created bigint NOT NULL,
    canceled_at bigint,
    stripe_subscription_id text NOT NULL DEFAULT '',
    v_terminal boolean NOT NULL,
    v_ts bigint NOT NULL,
    v_rank integer NOT NULL,
    content_hash text NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX contracts_customer ON contracts (stripe_customer_id);

CREATE TABLE contract_lines (
    contract_id text NOT NULL REFERENCES contracts (contract_id) ON DELETE CASCADE,
    stripe_line_id text NOT NULL,
    stripe_product_id text NOT NULL DEFAULT '',
    description text NOT NULL DEFAULT '',
    quantity bigint NOT NULL,
    start_date date,
    end_date date,
    amount_minor bigint NOT NULL,
    discount_minor bigint NOT NULL,
    currency text NOT NULL,
    PRIMARY KEY (contract_id, stripe_line_id)
);

-- Subscription statuses for health signals, kept whatever the contract source.
CREATE TABLE subscriptions (
    id text PRIMARY KEY,
    stripe_customer_id text NOT NULL,
    status text NOT NULL,
    v_terminal boolean NOT NULL,
    v_ts bigint NOT NULL,
    v_rank integer NOT NULL,
    content_hash text NOT NULL
);
CREATE INDEX subscriptions_customer ON subscriptions (stripe_customer_id);

-- Payment facts per invoice; both flags only turn on, so any order of events agrees.
CREATE TABLE invoice_payments (
    invoice_id text PRIMARY KEY,
    stripe_customer_id text NOT NULL,
    failed boolean NOT NULL DEFAULT false,
    paid boolean NOT NULL DEFAULT false
);
CREATE INDEX invoice_payments_customer ON invoice_payments (stripe_customer_id);

-- The client a contract belongs to: a client with its Stripe id (a CRM-linked one first), else
-- a CRM client with the customer's email. NULL: the contract waits for a client.
CREATE VIEW contract_clients AS
SELECT k.contract_id,
       COALESCE(
           (SELECT c.client_id FROM clients c
             WHERE c.stripe_customer_id = k.stripe_customer_id
             ORDER BY (c.origin = 'CRM') DESC, c.client_id LIMIT 1),
           (SELECT c.client_id FROM clients c
             WHERE c.origin = 'CRM' AND c.email <> ''
               AND lower(c.email) = lower(COALESCE(NULLIF(sc.email, ''), k.customer_email))
             ORDER BY c.client_id LIMIT 1)
       ) AS client_id
FROM contracts k
LEFT JOIN stripe_customers sc ON sc.id = k.stripe_customer_id;

CREATE TABLE import_runs (
    run_id text PRIMARY KEY,
    status text NOT NULL CHECK (status IN ('running', 'finished', 'abandoned')),
    days_back integer NOT NULL,
    -- created[gte] for invoices, fixed at the start so a resumed run pulls the same window.
    cutoff bigint NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE UNIQUE INDEX import_runs_one_running ON import_runs ((true)) WHERE status = 'running';

CREATE TABLE import_checkpoints (
    run_id text NOT NULL REFERENCES import_runs (run_id),
    phase text NOT NULL,
    starting_after text,
    done bigint NOT NULL DEFAULT 0,
    finished boolean NOT NULL DEFAULT false,
    PRIMARY KEY (run_id, phase)
);

-- A customer's state fetched from Stripe to settle a same-second tie is marked settled: it
-- outranks every state an event of that second brought, whatever their content hashes (before,
-- the hash broke that tie and a stale state could win). The guarded upserts compare
-- (v_terminal, v_ts, v_rank, v_settled, content_hash); rows written before are unsettled.
ALTER TABLE stripe_customers ADD COLUMN v_settled boolean NOT NULL DEFAULT false;
ALTER TABLE clients ADD COLUMN v_settled boolean NOT NULL DEFAULT false;
ALTER TABLE products ADD COLUMN v_settled boolean NOT NULL DEFAULT false;
ALTER TABLE contracts ADD COLUMN v_settled boolean NOT NULL DEFAULT false;
ALTER TABLE subscriptions ADD COLUMN v_settled boolean NOT NULL DEFAULT false;

-- A contract line's place in its contract: an invoice contract keeps the invoice's line order
-- (it was read back in line id order). Lines stored before keep that id order until their
-- contract is next rewritten.
ALTER TABLE contract_lines ADD COLUMN ordinal integer NOT NULL DEFAULT 0;
UPDATE contract_lines l SET ordinal = n.ordinal
  FROM (SELECT contract_id, stripe_line_id,
               row_number() OVER (PARTITION BY contract_id ORDER BY stripe_line_id) AS ordinal
          FROM contract_lines) n
 WHERE (l.contract_id, l.stripe_line_id) = (n.contract_id, n.stripe_line_id);

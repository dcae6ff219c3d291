-- The rate-limit-governor's per-tenant budget ledger. One row per tenant, locked (FOR UPDATE)
-- for every decision, so any number of governor replicas agree.

CREATE TABLE governor_budgets (
    tenant_id   text        PRIMARY KEY,
    -- Per-minute grant counts of the last 24 h, token bucket, last org usage report, leases.
    state       jsonb       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

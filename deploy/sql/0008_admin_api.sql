-- The admin HTTP API: API tokens, tenant offboarding, and request ids in the audit log.

CREATE TABLE api_tokens (
    id            uuid        PRIMARY KEY,
    name          text        NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    -- SHA-256 (hex) of the whole token, prefix included; the token itself is shown once and never stored.
    token_sha256  text        NOT NULL UNIQUE CHECK (token_sha256 ~ '^[0-9a-f]{64}$'),
    role          text        NOT NULL CHECK (role IN ('admin', 'operator', 'viewer')),
    -- NULL: every tenant, present and future. Otherwise exactly these (they need not exist yet).
    tenants       text[]      CHECK (cardinality(tenants) > 0),
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    text        NOT NULL,
    expires_at    timestamptz,
    -- Refreshed at most once a minute, so reads do not turn into a write per request.
    last_used_at  timestamptz,
    revoked_at    timestamptz,
    revoked_by    text
);

COMMENT ON TABLE api_tokens IS
    'Bearer tokens of the admin API (dpx_...), looked up by hash. Rows are revoked, never deleted.';

-- Offboarding. A deleted tenant keeps its row, its configuration history and its audit trail;
-- applying a document for it again brings it back with the next version number.
ALTER TABLE tenants
    ADD COLUMN deleted_at timestamptz,
    ADD COLUMN deleted_by text;

-- Every service finds tenants and their configuration through config_versions (cdc-ingest's lease
-- supervisor lists the tenants in it; TenantConfigs and fetch_config read versions from it). Making it
-- a view that hides deleted tenants stops them everywhere at once, with no service changing a query,
-- while the history stays in config_history for the admin. The view stays insertable (one base table),
-- so nothing that writes versions through it breaks either.
ALTER TABLE config_versions RENAME TO config_history;

COMMENT ON TABLE config_history IS
    'Every applied configuration of every tenant, deleted ones included, numbered 1, 2, ... per tenant '
    '(numbers are never reused, so a version cached anywhere never changes meaning).';

CREATE VIEW config_versions AS
    SELECT c.tenant_id, c.version, c.document, c.sha256, c.applied_at, c.applied_by
    FROM config_history c
    WHERE NOT EXISTS (SELECT 1 FROM tenants t WHERE t.id = c.tenant_id AND t.deleted_at IS NOT NULL);

COMMENT ON VIEW config_versions IS
    'The configuration versions of the tenants that are not deleted: what services read.';

-- Ties each change to the API request that made it (NULL for the CLI).
ALTER TABLE audit_log ADD COLUMN request_id text;

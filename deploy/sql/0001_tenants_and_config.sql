-- Tenants, their versioned declarative configuration, and the audit log.
-- Written by the admin control plane (`duplex config apply`); read by every service through
-- services.common.tenant_config.load_current.

CREATE TABLE tenants (
    -- metadata.name of the Tenant document: a lowercase DNS label.
    id          text        PRIMARY KEY
                            CHECK (id ~ '^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text        NOT NULL
);

COMMENT ON TABLE tenants IS
    'One row per tenant (connected Salesforce org). Applies lock this row (FOR UPDATE) so that '
    'concurrent applies to one tenant take version numbers one after the other.';

CREATE TABLE config_versions (
    tenant_id   text        NOT NULL REFERENCES tenants (id),
    version     integer     NOT NULL CHECK (version > 0),
    -- The validated document with defaults made explicit; never contains secrets (references only).
    document    jsonb       NOT NULL,
    -- SHA-256 of the canonical JSON (sorted keys, no spaces); equal hash = nothing to apply.
    sha256      text        NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    applied_at  timestamptz NOT NULL DEFAULT now(),
    applied_by  text        NOT NULL,
    PRIMARY KEY (tenant_id, version)
);

COMMENT ON TABLE config_versions IS
    'Every applied configuration of every tenant, numbered 1, 2, ... per tenant; the highest is current.';

CREATE TABLE audit_log (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text        NOT NULL,
    -- No foreign key: the trail must outlive anything it talks about.
    tenant_id   text,
    action      text        NOT NULL,
    detail      jsonb       NOT NULL DEFAULT '{}'::jsonb
);

CREATE INDEX audit_log_tenant_at ON audit_log (tenant_id, at);

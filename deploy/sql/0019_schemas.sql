-- Both sides' schemas, versioned per tenant and object (services/common/schema_store.py).
--
-- Salesforce: what describe said of each object Duplex read, a new version only when it changed,
-- with the changes against the version before (services/common/schema_drift.py). Refreshed on a
-- schedule by cdc-ingest and on demand through the admin API; crm_object_fields (mapping's summary)
-- is rewritten from the same describe, so every service sees it without a restart.
CREATE TABLE crm_schema_objects (
    tenant_id    text        NOT NULL,
    object_name  text        NOT NULL,
    version      integer     NOT NULL,
    described_at timestamptz NOT NULL DEFAULT now(),
    -- The object's fields (services.common.schema.object_document); null once it left the org.
    describe     jsonb,
    -- Selected for Change Data Capture; null when not read (the tenant does not stream).
    cdc_selected boolean,
    -- What changed since the version before ([] for the first).
    changes      jsonb       NOT NULL DEFAULT '[]',
    PRIMARY KEY (tenant_id, object_name, version)
);

-- The org's object list (global describe), one row per tenant, replaced by each refresh.
CREATE TABLE crm_schema_catalogs (
    tenant_id    text        PRIMARY KEY,
    -- [{"name", "label", "custom", "kind": standard|custom|metadata|..., "queryable", "createable",
    --   "updateable", "cdcSelected"}]
    objects      jsonb       NOT NULL,
    listed_at    timestamptz NOT NULL DEFAULT now()
);

-- App objects' fields as their owning service (or an operator) declared them through the admin API.
CREATE TABLE app_schema_objects (
    tenant_id    text        NOT NULL,
    object_name  text        NOT NULL,
    version      integer     NOT NULL,
    fields       jsonb       NOT NULL,
    declared_by  text        NOT NULL,
    declared_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, object_name, version)
);

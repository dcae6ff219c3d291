-- The example app's own tables, in its own schema. Nothing here belongs to Duplex.
CREATE SCHEMA IF NOT EXISTS partners_app;

CREATE TABLE IF NOT EXISTS partners_app.partners (
    id                 text PRIMARY KEY,
    name               text NOT NULL,
    website            text,
    phone              text,
    status             text NOT NULL DEFAULT 'active',
    tier               text,
    industries         text[] NOT NULL DEFAULT '{}',
    annual_revenue     numeric,
    employee_count     integer,
    partner_since      date,
    archived           boolean NOT NULL DEFAULT false,
    notes              text,
    parent_partner_id  text,
    salesforce_id      text,
    crm_modified_at    timestamptz,
    -- The Duplex link this row belongs to, when Duplex created it from a Salesforce record.
    duplex_link_id     text UNIQUE,
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- Transactional outbox: every change to a partner is recorded in the same transaction, and a
-- relay publishes it afterwards, so no change is lost between the database and Kafka.
CREATE TABLE IF NOT EXISTS partners_app.outbox (
    seq            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id       text NOT NULL UNIQUE,
    record_id      text NOT NULL,
    kind           text NOT NULL,
    changed        text[] NOT NULL,
    committed_at   timestamptz NOT NULL,
    -- Set to the origin client of the app-update this change applies, so Duplex knows its echo.
    origin_client  text NOT NULL,
    published_at   timestamptz
);
-- The RecordChanged as of the change (serialised protobuf, tenant left blank): values travel as they
-- were when the change committed, even if the row changed again before the relay ran.
ALTER TABLE partners_app.outbox ADD COLUMN IF NOT EXISTS message bytea;
CREATE INDEX IF NOT EXISTS outbox_unpublished ON partners_app.outbox (seq) WHERE published_at IS NULL;

-- app-updates already applied (events may be delivered more than once).
CREATE TABLE IF NOT EXISTS partners_app.applied_updates (
    event_id    text PRIMARY KEY,
    applied_at  timestamptz NOT NULL DEFAULT now()
);

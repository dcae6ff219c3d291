-- mapping: record links (a record's identity across sides) and references held until their target is linked.
-- Written by the mapping service; the conflict-resolver only fills in crm_record_id when the writer
-- reports the id of a record Duplex created (links.crm_record_id IS NULL until then).

CREATE TABLE links (
    tenant_id       text        NOT NULL,
    -- The configured object pair (ObjectPair.name); changes when a Lead conversion re-points the link.
    object_pair     text        NOT NULL,
    -- Deterministic (uuid5 of the record that first appeared), so a redelivered change finds the same link.
    link_id         text        NOT NULL,
    app_record_id   text,
    crm_record_id   text,
    -- The value Duplex writes to the pair's external-id field when it creates the Salesforce record
    -- ('dx-' || link_id): upserts on it make creates idempotent, and a CDC event carrying it binds
    -- the record to this link before the writer has reported the new id.
    external_id     text        NOT NULL,
    -- After a Salesforce merge in which this link's record lost to a record that already had a
    -- link: the winner's link. The app record stays; it is no longer synced.
    merged_into     text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, link_id)
);

CREATE UNIQUE INDEX links_app_record ON links (tenant_id, object_pair, app_record_id) WHERE app_record_id IS NOT NULL;
CREATE UNIQUE INDEX links_crm_record ON links (tenant_id, object_pair, crm_record_id) WHERE crm_record_id IS NOT NULL;
CREATE UNIQUE INDEX links_external_id ON links (tenant_id, object_pair, external_id);

COMMENT ON TABLE links IS
    'One row per logical record: app id <-> Salesforce id <-> Duplex external id, unique per tenant and pair.';

-- A reference field whose target had no link (or no id on the other side) yet, under rule "hold":
-- re-emitted as its own ChangeMapped once the target is linked on both sides.
CREATE TABLE held_references (
    tenant_id        text        NOT NULL,
    link_id          text        NOT NULL,
    -- The field on the side the change came from (app or Salesforce name).
    field            text        NOT NULL,
    object_pair      text        NOT NULL,
    origin_side      text        NOT NULL CHECK (origin_side IN ('app', 'crm')),
    -- The referenced record: its pair and its id on origin_side.
    target_pair      text        NOT NULL,
    target_record_id text        NOT NULL,
    source_event_id  text        NOT NULL,
    origin_commit_at timestamptz NOT NULL,
    origin_client    text        NOT NULL DEFAULT '',
    mapping_version  integer     NOT NULL,
    held_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, link_id, field)
);

CREATE INDEX held_references_target ON held_references (tenant_id, target_pair, origin_side, target_record_id);

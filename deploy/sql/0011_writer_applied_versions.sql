-- writer: the highest command version applied to Salesforce per link. A replayed or duplicated
-- command at or below it is settled as superseded without a call, so it never overwrites a newer
-- value (the conflict-resolver numbers each link's commands, link_states.version).
-- Raised in the transaction that writes the outcome's sync-log rows.

CREATE TABLE writer_applied_versions (
    tenant_id   text        NOT NULL,
    link_id     text        NOT NULL,
    version     bigint      NOT NULL CHECK (version > 0),
    applied_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, link_id)
);

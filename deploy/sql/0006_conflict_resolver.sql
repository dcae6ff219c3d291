-- conflict-resolver: per-link and per-field sync state, the commands sent, and the events already applied.
-- All rows of one link are read and written in one transaction, the link row locked (FOR UPDATE) first.

CREATE TABLE link_states (
    tenant_id       text        NOT NULL,
    link_id         text        NOT NULL,
    object_pair     text        NOT NULL,
    app_record_id   text,
    crm_record_id   text,
    external_id     text        NOT NULL,
    -- Numbers the write commands sent to Salesforce for this link; outcomes name the version they settle.
    version         bigint      NOT NULL DEFAULT 0 CHECK (version >= 0),
    -- Deleted on that side (by its user or by Duplex): field writes to a deleted record are not sent,
    -- so a late update never resurrects it.
    app_deleted     boolean     NOT NULL DEFAULT false,
    crm_deleted     boolean     NOT NULL DEFAULT false,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, link_id)
);

-- One row per link and mapped field (keyed by the app field name).
CREATE TABLE field_states (
    tenant_id   text        NOT NULL,
    link_id     text        NOT NULL,
    field       text        NOT NULL,
    -- policy.FieldState (truth, pending writes per side, last edit seen per side) with typed values,
    -- plus the Salesforce form of the truth (values are kept in app terms): see state_codec.py.
    state       jsonb       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, link_id, field),
    FOREIGN KEY (tenant_id, link_id) REFERENCES link_states (tenant_id, link_id) ON DELETE CASCADE
);

-- The field values (app terms) of each write command, so that a REJECTED outcome can roll back
-- exactly the pending writes that will never echo.
CREATE TABLE sent_writes (
    tenant_id   text        NOT NULL,
    link_id     text        NOT NULL,
    version     bigint      NOT NULL,
    operation   text        NOT NULL,
    fields      jsonb       NOT NULL,
    sent_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, link_id, version),
    FOREIGN KEY (tenant_id, link_id) REFERENCES link_states (tenant_id, link_id) ON DELETE CASCADE
);

-- Input events already applied (ChangeMapped event ids, 'outcome:<command>:<link>:<version>' for
-- outcomes): a redelivery after a crash changes nothing. Rows older than the input topics'
-- retention (7 days) can never be redelivered and may be deleted.
CREATE TABLE processed_events (
    tenant_id     text        NOT NULL,
    event_id      text        NOT NULL,
    processed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, event_id)
);

CREATE INDEX processed_events_at ON processed_events (processed_at);

-- cdc-ingest's state: where each tenant's stream, polls and backfills have got to, and which
-- replica serves which tenant. Rows are written only after the events they cover were
-- acknowledged by Kafka (acks=all), so a restart resumes after them and loses nothing.

CREATE TABLE replay_checkpoints (
    tenant_id       text        NOT NULL,
    -- The Pub/Sub channel, e.g. /data/ChangeEvents.
    channel         text        NOT NULL,
    -- Opaque Salesforce replay id (8 bytes big-endian in practice); resume is CUSTOM after it.
    replay_id       bytea       NOT NULL,
    -- Commit time of the newest event covered (NULL when only a keepalive moved it): the start
    -- of the polling window when the replay id has expired.
    commit_time     timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, channel)
);

CREATE TABLE poll_cursors (
    tenant_id       text        NOT NULL,
    object          text        NOT NULL,
    -- The (SystemModstamp, Id) tuple of the last record emitted by polling; the next poll reads
    -- strictly after it (minus the configured overlap), so records sharing one timestamp are
    -- never skipped.
    modstamp        timestamptz NOT NULL,
    record_id       text        NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, object)
);

CREATE TABLE backfills (
    tenant_id       text        NOT NULL,
    object          text        NOT NULL,
    -- running | done
    status          text        NOT NULL CHECK (status IN ('running', 'done')),
    -- rest | bulk, chosen from SELECT COUNT() when the backfill started.
    method          text        NOT NULL CHECK (method IN ('rest', 'bulk')),
    -- Bulk 2.0 query job and the locator of the next page not yet emitted (NULL: first page).
    job_id          text,
    locator         text,
    -- Last (SystemModstamp, Id) emitted: REST resumes after it, and so does a bulk backfill
    -- whose job has gone.
    cursor_modstamp timestamptz,
    cursor_id       text,
    emitted         bigint      NOT NULL DEFAULT 0,
    -- When the backfill began reading: the stream that takes over replays events committed
    -- after this (less the overlap).
    started_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, object)
);

CREATE TABLE cdc_replicas (
    replica_id      text        PRIMARY KEY,
    expires_at      timestamptz NOT NULL
);

COMMENT ON TABLE cdc_replicas IS
    'Live cdc-ingest replicas (heartbeat); used to compute each replica''s fair share of tenants.';

CREATE TABLE tenant_leases (
    tenant_id       text        PRIMARY KEY,
    holder          text        NOT NULL,
    expires_at      timestamptz NOT NULL
);

COMMENT ON TABLE tenant_leases IS
    'Which cdc-ingest replica serves which tenant. A lease not renewed by its expiry may be taken '
    'by any replica; checkpoints are written only while the writer holds the lease.';

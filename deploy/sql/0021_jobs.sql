-- Jobs: work an operator or a schedule asks cdc-ingest to do for one object pair, with its state
-- and progress (services/common/jobs.py). The replica serving the tenant claims requested jobs;
-- one interrupted by a moved lease or a crash is claimed again by the next owner (a backfill
-- resumes from its own saved progress in `backfills`, a poll from its cursor, a reconcile from
-- the start).
CREATE TABLE jobs (
    id            bigserial   PRIMARY KEY,
    tenant_id     text        NOT NULL,
    -- poll: read what changed since the object's poll cursor now; backfill: re-read every record;
    -- reconcile: compare Salesforce with what Duplex holds, window by window, and repair what differs.
    kind          text        NOT NULL CHECK (kind IN ('poll', 'backfill', 'reconcile')),
    object_pair   text        NOT NULL,
    -- The pair's Salesforce object when the job was asked for.
    object        text        NOT NULL,
    status        text        NOT NULL DEFAULT 'requested'
                              CHECK (status IN ('requested', 'running', 'succeeded', 'failed')),
    -- operator (admin API), schedule (the pair's schedule), start (a tenant's first backfill).
    trigger       text        NOT NULL CHECK (trigger IN ('operator', 'schedule', 'start')),
    requested_by  text        NOT NULL DEFAULT '',
    -- Records done so far, of `estimated` (Salesforce's count when the job began, NULL until then).
    -- A running backfill's own progress is in `backfills` (saved fenced, page by page); the job
    -- shows it from there and keeps its figures at the end.
    done          bigint      NOT NULL DEFAULT 0 CHECK (done >= 0),
    estimated     bigint      CHECK (estimated >= 0),
    -- What the job found (a reconcile's windows, differences and repairs); shown as it is.
    result        jsonb       NOT NULL DEFAULT '{}',
    error         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz
);

-- At most one job of a kind per pair waits or runs: asking again answers with the one there is.
CREATE UNIQUE INDEX jobs_active ON jobs (tenant_id, kind, object_pair) WHERE status IN ('requested', 'running');
-- Pairs of one object share its backfill (one row of `backfills`): one backfill job per object.
CREATE UNIQUE INDEX jobs_active_backfill ON jobs (tenant_id, object)
    WHERE kind = 'backfill' AND status IN ('requested', 'running');
CREATE INDEX jobs_by_tenant ON jobs (tenant_id, id DESC);
-- The schedule asks for the newest job of a kind per pair.
CREATE INDEX jobs_latest ON jobs (tenant_id, kind, object_pair, created_at DESC);

-- A reconcile compares Salesforce's records with the conflict-resolver's state of the same
-- records, looked up by Salesforce id page by page.
CREATE INDEX link_states_crm_record ON link_states (tenant_id, object_pair, crm_record_id)
    WHERE crm_record_id IS NOT NULL;

-- The sync log, partitioned by day (UTC), so that retention drops a whole day at a time instead of
-- deleting rows one by one (services/common/sync_log_retention.py calls the two functions below).
-- Rows keep their ids (a new sequence goes on from the last); a default partition takes what is
-- logged for a day whose partition does not exist yet, and sync_log_ensure_day moves such rows into
-- the day's partition when it creates it.

ALTER TABLE sync_log RENAME TO sync_log_unpartitioned;
ALTER TABLE sync_log_unpartitioned RENAME CONSTRAINT sync_log_pkey TO sync_log_unpartitioned_pkey;
DROP INDEX sync_log_tenant_at, sync_log_link, sync_log_record;

CREATE SEQUENCE sync_log_ids AS bigint;
SELECT setval('sync_log_ids', COALESCE((SELECT max(id) FROM sync_log_unpartitioned), 0) + 1, false);

CREATE TABLE sync_log (
    id          bigint      NOT NULL DEFAULT nextval('sync_log_ids'),
    at          timestamptz NOT NULL DEFAULT now(),
    tenant_id   text        NOT NULL,
    service     text        NOT NULL,
    -- A short, stable event name: 'write.rejected', 'conflict.decided', 'budget.warning', ...
    event       text        NOT NULL,
    link_id     text,
    record_id   text,
    -- Salesforce's statusCode / errorCode, or Duplex's own reason code.
    code        text,
    message     text,
    detail      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    PRIMARY KEY (id, at)
) PARTITION BY RANGE (at);
ALTER SEQUENCE sync_log_ids OWNED BY sync_log.id;

CREATE TABLE sync_log_default PARTITION OF sync_log DEFAULT;

CREATE INDEX sync_log_tenant_at ON sync_log (tenant_id, at DESC);
CREATE INDEX sync_log_link ON sync_log (tenant_id, link_id, at DESC) WHERE link_id IS NOT NULL;
CREATE INDEX sync_log_record ON sync_log (tenant_id, record_id, at DESC) WHERE record_id IS NOT NULL;

-- Create the partition of one day unless it exists; rows of that day already in the default
-- partition move into it. True when it was created.
CREATE FUNCTION sync_log_ensure_day(day date) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    name text := 'sync_log_p' || to_char(day, 'YYYYMMDD');
    low timestamptz := day::timestamp AT TIME ZONE 'UTC';
    high timestamptz := (day + 1)::timestamp AT TIME ZONE 'UTC';
BEGIN
    IF to_regclass(name) IS NOT NULL THEN
        RETURN false;
    END IF;
    -- No row of the day may land in the default partition between the move and the attach.
    LOCK TABLE sync_log_default IN EXCLUSIVE MODE;
    EXECUTE format('CREATE TABLE %I (LIKE sync_log INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', name);
    EXECUTE format(
        'WITH moved AS (DELETE FROM sync_log_default WHERE at >= %L AND at < %L RETURNING *)'
        ' INSERT INTO %I SELECT * FROM moved', low, high, name);
    EXECUTE format('ALTER TABLE sync_log ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)', name, low, high);
    RETURN true;
END $$;

-- Drop every day's partition before ``day`` and delete the default partition's rows before it;
-- the number of partitions dropped.
CREATE FUNCTION sync_log_drop_before(day date) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    part text;
    dropped integer := 0;
BEGIN
    FOR part IN
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'sync_log'::regclass AND c.relname ~ '^sync_log_p[0-9]{8}$'
          AND to_date(substr(c.relname, 11), 'YYYYMMDD') < day
        ORDER BY c.relname
    LOOP
        EXECUTE format('DROP TABLE %I', part);
        dropped := dropped + 1;
    END LOOP;
    DELETE FROM sync_log_default WHERE at < day::timestamp AT TIME ZONE 'UTC';
    RETURN dropped;
END $$;

-- A partition for each day the log holds rows of, and for today and the week ahead; then the rows.
SELECT sync_log_ensure_day(day) FROM (
    SELECT DISTINCT (at AT TIME ZONE 'UTC')::date AS day FROM sync_log_unpartitioned
    UNION
    SELECT generate_series(0, 7) + (now() AT TIME ZONE 'UTC')::date
) AS days;
INSERT INTO sync_log SELECT * FROM sync_log_unpartitioned;
DROP TABLE sync_log_unpartitioned;

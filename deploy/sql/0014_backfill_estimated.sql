-- How many records a backfill expects: Salesforce's SELECT COUNT() when cdc-ingest began reading
-- (NULL while the backfill is only requested). The admin API reports progress against it: records
-- published of estimated, the rate so far and the time left.
ALTER TABLE backfills ADD COLUMN estimated bigint CHECK (estimated >= 0);

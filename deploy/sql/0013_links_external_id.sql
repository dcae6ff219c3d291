-- links.external_id is 'dx-' || link_id, so it is unique per tenant already. Its index led with
-- (tenant_id, object_pair), the same columns as links_app_record and links_crm_record: while the
-- table's statistics were stale (a new deployment, a tenant's first backfill) the planner costed a
-- scan of those two columns as finding one row, chose this index for lookups by record id, and
-- filtered every link of the pair once per wanted record (measured: 2 s per batch of 500 changes
-- at 20,000 links). Keyed by (tenant_id, external_id), it no longer competes with them.
DROP INDEX links_external_id;
CREATE UNIQUE INDEX links_external_id ON links (tenant_id, external_id);

-- A tenant's quarantine events (pair.quarantined, pair.released), for its health: the admin API's
-- health route and every card of the console's tenants page read them all, with no time bound,
-- since a quarantine lasts until a configuration version or the pair's next change ends it
-- (services/admin/health.py quarantine_events). Without this index that read went through every row
-- the tenant logged, in every day's partition: with 1,000,000 rows over 30 days and 50 tenants, the
-- busiest tenant's 78,000 rows were 40,000 pages of 8 kB and 250 ms (bench console), for the 6 rows
-- wanted; the tenants page read the whole log once and took 2.4 s. Only these events are indexed, a
-- page or so per partition: 0.7 ms. Building it reads the whole log once and holds appends back
-- meanwhile (0.3 s at 1,000,000 rows; a partitioned table cannot be indexed concurrently).
CREATE INDEX sync_log_quarantine ON sync_log (tenant_id, id) WHERE event IN ('pair.quarantined', 'pair.released');

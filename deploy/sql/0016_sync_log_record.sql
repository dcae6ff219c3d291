-- A record's rows without a link (a change refused before mapping linked it, a write Salesforce
-- refused, named by its Salesforce id): the admin API's search and timeline find them by record id.
-- Without this index that lookup read every row the tenant ever logged.
CREATE INDEX sync_log_record ON sync_log (tenant_id, record_id, at DESC) WHERE record_id IS NOT NULL;

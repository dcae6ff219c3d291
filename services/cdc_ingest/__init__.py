"""cdc-ingest: Salesforce changes (Pub/Sub CDC, polling, backfill) onto the crm-changes topic."""

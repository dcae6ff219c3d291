-- The sync log: what happened to each record and tenant, in words a user understands.
-- Every service appends here (decisions, echoes dropped, rejects with Salesforce's error code,
-- gaps repaired, budget warnings); nothing updates or deletes rows.

CREATE TABLE sync_log (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
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
    detail      jsonb       NOT NULL DEFAULT '{}'::jsonb
);

CREATE INDEX sync_log_tenant_at ON sync_log (tenant_id, at DESC);
CREATE INDEX sync_log_link ON sync_log (tenant_id, link_id, at DESC) WHERE link_id IS NOT NULL;

-- writer: commands set aside so that no tenant holds a shared crm-writes partition. A command is
-- parked (a) when its tenant already holds its share of unsettled writes in memory, and then so is
-- every later command of that tenant on that partition until the park has drained, or (b) when it
-- has been held unsettled longer than WRITER_PARK_AFTER_SECONDS (a throttled or slow tenant). The
-- partition's offset moves past a command once its row has committed; the row is deleted in the
-- transaction that logs the command's last outcome. Rows are drained in id order per partition by
-- whichever writer replica owns that partition.

CREATE TABLE writer_parked_commands (
    id            bigserial   PRIMARY KEY,
    tenant_id     text        NOT NULL,
    topic         text        NOT NULL,
    kafka_partition integer     NOT NULL,
    kafka_offset  bigint      NOT NULL,
    record_key    bytea,
    headers       jsonb       NOT NULL DEFAULT '[]',
    timestamp_ms  bigint,
    command       bytea       NOT NULL,
    reason        text        NOT NULL CHECK (reason IN ('overflow', 'held')),
    parked_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX writer_parked_commands_drain ON writer_parked_commands (topic, kafka_partition, tenant_id, id);

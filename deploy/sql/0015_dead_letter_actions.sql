-- What operators did with dead letters (the admin API): replayed one to the topic it came from, or
-- discarded it with a reason. Keyed by the dead letter's place (the logical dead-letter topic, its
-- partition and offset); the record itself stays in Kafka until the topic's retention removes it.
-- A replayed or discarded entry is never replayed again.
CREATE TABLE dead_letter_actions (
    dlq_topic     text        NOT NULL,
    dlq_partition integer     NOT NULL,
    dlq_offset    bigint      NOT NULL,
    tenant_id     text        NOT NULL,
    action        text        NOT NULL CHECK (action IN ('replayed', 'discarded')),
    reason        text,
    actor         text        NOT NULL,
    at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dlq_topic, dlq_partition, dlq_offset)
);

CREATE INDEX dead_letter_actions_tenant ON dead_letter_actions (tenant_id, at DESC);

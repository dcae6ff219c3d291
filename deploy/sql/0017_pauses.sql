-- Pauses (the admin API): a tenant's syncing stopped in one direction, for one object pair or for
-- all of them ('*'), until resumed. The conflict-resolver honours them: what it would send the
-- paused way is held in held_outputs, in the transaction that decided it, and released in id order
-- once the pause ends (services/conflict_resolver/holding.py).
CREATE TABLE sync_pauses (
    tenant_id   text        NOT NULL,
    object_pair text        NOT NULL,
    direction   text        NOT NULL CHECK (direction IN ('to_crm', 'to_app')),
    reason      text,
    actor       text        NOT NULL,
    paused_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, object_pair, direction)
);

-- A Salesforce write command (to_crm) or an app update (to_app), encoded as it would have been
-- published, with its record key. A hold lasts while its pause does and, after a resume, until its
-- rows are all released: a later output of the same pair and direction queues behind them, so no
-- record's outputs overtake each other.
CREATE TABLE held_outputs (
    id          bigserial   PRIMARY KEY,
    tenant_id   text        NOT NULL,
    object_pair text        NOT NULL,
    direction   text        NOT NULL CHECK (direction IN ('to_crm', 'to_app')),
    record_key  bytea       NOT NULL,
    message     bytea       NOT NULL,
    held_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX held_outputs_hold ON held_outputs (tenant_id, object_pair, direction, id);

-- Inputs held by a pause (services/conflict_resolver/holding.py): while an object pair of a tenant
-- is paused both ways (by a pause of the pair, of '*', or the two together), its mapped changes are
-- kept here as they arrived, undecided, instead of being resolved only for every output to be held
-- in held_outputs. A paused tenant then costs the resolver one insert per batch, not a decision per
-- change. After the resume (of either way) they are decided in id order through the same path as
-- live changes, and until the last is gone the pair's later changes queue behind them.
CREATE TABLE held_inputs (
    id          bigserial   PRIMARY KEY,
    tenant_id   text        NOT NULL,
    object_pair text        NOT NULL,
    -- The ChangeMapped's event id: a redelivery of a held change is held once (and one already
    -- decided, found in processed_events, is not held at all).
    event_id    text        NOT NULL,
    -- The ChangeMapped, encoded.
    message     bytea       NOT NULL,
    held_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, event_id)
);

CREATE INDEX held_inputs_hold ON held_inputs (tenant_id, object_pair, id);

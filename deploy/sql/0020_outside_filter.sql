-- Linked records that left their pair's record filter (services/mapping/mapper.py), by the side
-- whose conditions they stopped meeting: their changes are not synced while any row is here
-- (deletes, undeletes and Duplex's own writes coming back excepted). A change from that side that
-- meets its conditions again takes the row away; once none is left, the record is synced whole,
-- as a create would be.
CREATE TABLE outside_filter (
    tenant_id  text        NOT NULL,
    link_id    text        NOT NULL,
    side       text        NOT NULL CHECK (side IN ('app', 'crm')),
    left_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, link_id, side)
);

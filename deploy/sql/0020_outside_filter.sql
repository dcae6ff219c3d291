-- Linked records that left their pair's record filter (services/mapping/mapper.py): not synced
-- while here, whatever later changes carry; a change that matches the filter again takes the row
-- away and syncs the record whole, as a create would.
CREATE TABLE outside_filter (
    tenant_id  text        NOT NULL,
    link_id    text        NOT NULL,
    left_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, link_id)
);

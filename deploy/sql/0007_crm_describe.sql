-- What Salesforce's describe says about each synced object's fields, per tenant.
-- Written by cdc-ingest (the service that already describes every object it reads); read by
-- mapping, which checks string lengths against it and sends read-only fields (formula, system,
-- not updateable) only CRM -> app. Mapping never calls Salesforce itself.

CREATE TABLE crm_object_fields (
    tenant_id    text        NOT NULL,
    object_name  text        NOT NULL,
    -- {"<FieldName>": {"type": "string", "length": 255, "createable": true, "updateable": true,
    --                  "calculated": false, "nillable": true}, ...}
    fields       jsonb       NOT NULL,
    described_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, object_name)
);

COMMENT ON TABLE crm_object_fields IS
    'Salesforce describe per tenant and object (field name -> type, length, createable, updateable, calculated, nillable).';

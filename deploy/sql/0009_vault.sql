-- The vault: tenants' secrets (OAuth tokens, client secrets, private keys) under envelope
-- encryption. Written and read only through services.common.vault; nothing here is readable
-- without the key-encryption keys, which never enter the database (VAULT_KEYS).

CREATE TABLE vault_data_keys (
    tenant_id   text        PRIMARY KEY,
    -- Which key-encryption key wraps this row; `duplex keys rotate` re-wraps rows under the current one.
    kek_id      text        NOT NULL CHECK (kek_id ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'),
    -- AES-256-GCM of the 32-byte data key (48 bytes with the tag), bound to (tenant, kek_id).
    nonce       bytea       NOT NULL CHECK (length(nonce) = 12),
    wrapped_key bytea       NOT NULL CHECK (length(wrapped_key) = 48),
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX vault_data_keys_kek ON vault_data_keys (kek_id);

COMMENT ON TABLE vault_data_keys IS
    'One random 256-bit data key per tenant, stored wrapped by a key-encryption key kept outside the '
    'database. Deleting a row makes every secret of that tenant unreadable (and deletes them).';

CREATE TABLE vault_secrets (
    tenant_id   text        NOT NULL REFERENCES vault_data_keys (tenant_id) ON DELETE CASCADE,
    -- refresh_token, access_token, client_secret, private_key (services.common.vault.Purpose).
    purpose     text        NOT NULL CHECK (purpose ~ '^[a-z][a-z0-9_]*$'),
    -- AES-256-GCM under the tenant's data key, with (tenant, purpose) as associated data: a value
    -- copied into another row fails to decrypt.
    nonce       bytea       NOT NULL CHECK (length(nonce) = 12),
    ciphertext  bytea       NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, purpose)
);

COMMENT ON TABLE vault_secrets IS
    'Tenants'' secrets, one per (tenant, purpose), encrypted under the tenant''s data key.';

-- Salesforce connections: the connect flow of the admin API (OAuth 2.0 web-server flow with PKCE)
-- and what services learn about a tenant's grant. The tokens themselves are in the vault
-- (vault_secrets, purposes refresh_token and access_token), never here.

CREATE TABLE salesforce_connections (
    tenant_id        text        PRIMARY KEY REFERENCES tenants (id),
    -- No row: not_connected. needs_reconnect: Salesforce refused the refresh token (invalid_grant);
    -- error: a refresh failed otherwise (invalid_client, inactive_user...); revoked: by the admin API.
    status           text        NOT NULL CHECK (status IN ('connected', 'needs_reconnect', 'revoked', 'error')),
    -- From the identity URL and the token response of the last connect, never from user input.
    org_id           text,
    user_id          text,
    username         text,
    instance_url     text,
    scopes           text[]      NOT NULL DEFAULT '{}',
    connected_at     timestamptz,
    connected_by     text,
    last_refresh_at  timestamptz,
    last_error       text,
    updated_at       timestamptz NOT NULL DEFAULT now()
);

COMMENT ON TABLE salesforce_connections IS
    'The Salesforce grant of each tenant connected through the admin API: who connected which org '
    'and how its tokens fare. Written by the admin API (connect, revoke) and by services (refreshes).';

-- An authorization started by POST /api/v1/tenants/{tenant}/connection:authorize and not yet
-- completed by the callback. Single use: the callback deletes the row before anything else.
CREATE TABLE oauth_authorizations (
    -- SHA-256 (hex) of the state sent through the browser; the state itself is not stored.
    state_sha256   text        PRIMARY KEY CHECK (state_sha256 ~ '^[0-9a-f]{64}$'),
    tenant_id      text        NOT NULL REFERENCES tenants (id),
    -- The caller who started it: the callback (a browser, without a token) acts in its name.
    principal      text        NOT NULL,
    -- The PKCE verifier, AES-256-GCM under the tenant's vault data key (purpose pkce_verifier).
    verifier_nonce bytea       NOT NULL CHECK (length(verifier_nonce) = 12),
    verifier       bytea       NOT NULL,
    -- What the authorize URL named: the code is exchanged with exactly these.
    client_id      text        NOT NULL,
    login_url      text        NOT NULL,
    redirect_uri   text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    expires_at     timestamptz NOT NULL
);

CREATE INDEX oauth_authorizations_expiry ON oauth_authorizations (expires_at);
CREATE INDEX oauth_authorizations_tenant ON oauth_authorizations (tenant_id);

COMMENT ON TABLE oauth_authorizations IS
    'Pending OAuth authorizations (state → tenant, principal, sealed PKCE verifier); each lives ten '
    'minutes and is deleted by the callback that uses it.';

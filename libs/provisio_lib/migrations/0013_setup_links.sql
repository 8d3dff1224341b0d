-- Self-serve setup (issue 14): one-time capability links an operator gives a customer's
-- IT admin (`provisio setup-link create`), and the one browser session each link turns
-- into when it is first opened. Tokens and session ids are 256-bit random strings stored
-- only as SHA-256 (nothing to brute-force, as for SCIM tokens).
CREATE TABLE setup_links (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    token_hash    bytea NOT NULL UNIQUE,
    prefix        text NOT NULL,              -- the token's first characters: names it in `list`/`revoke`
    scopes        text[] NOT NULL CHECK (scopes <@ ARRAY['sso', 'scim']::text[] AND cardinality(scopes) > 0),
    created_by    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    revoked_at    timestamptz,
    -- Redeemed: the first open binds the link to one browser's setup session.
    redeemed_at   timestamptz,
    session_hash  bytea UNIQUE,
    csrf_token    text
);
CREATE INDEX setup_links_tenant_idx ON setup_links (tenant_id, created_at DESC);

-- RFC 6238 §5.2: a verifier must not accept the same one-time code twice; the last
-- accepted time step (unix time // 30) of each staff account.
ALTER TABLE staff ADD COLUMN totp_last_step bigint;

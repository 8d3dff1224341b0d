-- Safe JIT identity linking (issue 13 §1) and per-connection group handling (§3).
--
-- A SAML identity (connection, NameID) is linked to one user once; later logins through
-- that connection find the user by the link, never by a userName/email claim, so a
-- person in one IdP cannot sign in as a user of another IdP by sending their email.
CREATE TABLE user_identities (
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    connection_id uuid NOT NULL REFERENCES sso_connections (id) ON DELETE CASCADE,
    name_id       text NOT NULL,
    user_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    linked_by     text NOT NULL DEFAULT 'jit' CHECK (linked_by IN ('jit', 'cli')),
    linked_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (connection_id, name_id)
);
-- One identity per user and connection: a NameID change at the IdP moves the link.
CREATE UNIQUE INDEX user_identities_user_key ON user_identities (connection_id, user_id);
CREATE INDEX user_identities_user_idx ON user_identities (user_id);

-- Email domains verified for a connection (`provisio sso domains`): the connection is
-- authoritative for users with an email in them and may adopt them on a first login.
ALTER TABLE sso_connections ADD COLUMN verified_domains text[] NOT NULL DEFAULT '{}';
-- What a `sync` login without a groups attribute means (IdPs omit it when the user has
-- no groups): 'auto' = "no groups" once this connection has sent a groups claim.
ALTER TABLE sso_connections ADD COLUMN groups_absent text NOT NULL DEFAULT 'auto'
    CHECK (groups_absent IN ('auto', 'none', 'unchanged'));
ALTER TABLE sso_connections ADD COLUMN groups_claim_seen boolean NOT NULL DEFAULT false;

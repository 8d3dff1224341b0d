-- The web console (services/console): support staff, their one-time set-password links,
-- and their sessions. Secrets are stored only as hashes: argon2 for passwords, SHA-256
-- for link tokens and session ids (both 256-bit random, so a fast hash is enough).

CREATE TABLE staff (
    id              uuid PRIMARY KEY,
    email           text NOT NULL,
    role            text NOT NULL CHECK (role IN ('support', 'admin')),
    password_hash   text,            -- argon2id; NULL until the set-password link is used
    totp_secret     text,            -- base32 (RFC 6238), optional second factor
    created_at      timestamptz NOT NULL DEFAULT now(),
    password_set_at timestamptz
);
CREATE UNIQUE INDEX staff_email_key ON staff (lower(email));

CREATE TABLE staff_links (
    token_hash bytea PRIMARY KEY,
    staff_id   uuid NOT NULL REFERENCES staff (id) ON DELETE CASCADE,
    purpose    text NOT NULL DEFAULT 'set-password' CHECK (purpose IN ('set-password')),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);
CREATE INDEX staff_links_staff_idx ON staff_links (staff_id);

CREATE TABLE staff_sessions (
    id_hash      bytea PRIMARY KEY,
    staff_id     uuid NOT NULL REFERENCES staff (id) ON DELETE CASCADE,
    csrf_token   text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    source       text
);
CREATE INDEX staff_sessions_staff_idx ON staff_sessions (staff_id);
CREATE INDEX staff_sessions_created_idx ON staff_sessions (created_at);

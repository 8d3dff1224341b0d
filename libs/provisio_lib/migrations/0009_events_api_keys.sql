-- The transactional outbox of identity events (docs/events.md) and the App API's keys.

-- One row per change, written by the provisioner in the same transaction as the change
-- (with the batch's inbox rows, one statement). The feed order is (xid, id): a reader
-- sees a row only once every transaction with a lower xid has ended
-- (xid < pg_snapshot_xmin(pg_current_snapshot())), so no row can later appear behind a
-- cursor a reader has passed, and writers take no shared lock (docs/events.md).
CREATE TABLE events (
    id             bigint GENERATED ALWAYS AS IDENTITY,
    xid            xid8 NOT NULL DEFAULT pg_current_xact_id(),
    event_id       uuid NOT NULL DEFAULT gen_random_uuid(),  -- the receiver's idempotency key
    tenant_id      uuid NOT NULL,
    type           text NOT NULL,
    occurred_at    timestamptz NOT NULL,                     -- when the provisioner applied it
    source         jsonb NOT NULL,                           -- {kind, id, label}
    correlation_id text NOT NULL,
    command_id     uuid NOT NULL,                            -- the command (inbox event_id)
    resource_type  text,
    resource_id    uuid,
    data           jsonb NOT NULL,                           -- the resource after the change
    changes        jsonb,                                    -- field → {before, after} (updates)
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (xid, id)
);
CREATE INDEX events_tenant_idx ON events (tenant_id, xid, id);

-- App API keys: for one tenant (tenant_id) or every tenant (NULL). Stored as SHA-256 like
-- SCIM tokens (provisio_lib.tokens): shown once, never recoverable.
CREATE TABLE api_keys (
    id           uuid PRIMARY KEY,
    name         text NOT NULL,
    tenant_id    uuid REFERENCES tenants (id) ON DELETE CASCADE,
    key_hash     bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    last_used_at timestamptz,
    CONSTRAINT api_keys_name_format CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$')
);
CREATE UNIQUE INDEX api_keys_hash_key ON api_keys (key_hash);
CREATE UNIQUE INDEX api_keys_name_key ON api_keys (name) WHERE revoked_at IS NULL;

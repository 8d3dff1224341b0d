-- Provisio initial schema. Never edit a migration once released: add a new file.

CREATE TABLE tenants (
    id                  uuid PRIMARY KEY,
    name                text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    -- Tenant policies (Splashtop team rules), off by default.
    deprovision         text NOT NULL DEFAULT 'delete' CHECK (deprovision IN ('deactivate', 'delete')),
    one_group_per_user  boolean NOT NULL DEFAULT false,
    immutable_user_name boolean NOT NULL DEFAULT false,
    notify_emails       text[] NOT NULL DEFAULT '{}',
    rate_limit_per_s    integer,
    CONSTRAINT tenants_name_format CHECK (name ~ '^[a-z0-9][a-z0-9-]{0,62}$')
);
CREATE UNIQUE INDEX tenants_name_key ON tenants (name);

CREATE TABLE scim_tokens (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    label        text NOT NULL,
    token_hash   bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz,
    last_used_at timestamptz
);
CREATE UNIQUE INDEX scim_tokens_hash_key ON scim_tokens (token_hash);
CREATE UNIQUE INDEX scim_tokens_label_key ON scim_tokens (tenant_id, label) WHERE revoked_at IS NULL;

CREATE TABLE sso_connections (
    id                  uuid PRIMARY KEY,
    tenant_id           uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name                text NOT NULL,
    preset              text NOT NULL,
    idp_entity_id       text NOT NULL,
    idp_metadata        text NOT NULL,
    jit_mode            text NOT NULL DEFAULT 'create' CHECK (jit_mode IN ('off', 'create', 'sync')),
    app_url             text,
    allow_idp_initiated boolean NOT NULL DEFAULT false,
    attribute_map       jsonb NOT NULL DEFAULT '{}',
    required_attributes text[] NOT NULL DEFAULT '{}',
    sp_cert_pem         text,
    sp_key_pem          text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT sso_connections_name_format CHECK (name ~ '^[a-z0-9][a-z0-9-]{0,62}$')
);
CREATE UNIQUE INDEX sso_connections_name_key ON sso_connections (tenant_id, name);

CREATE TABLE users (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_name    text NOT NULL,
    external_id  text,
    active       boolean NOT NULL DEFAULT true,
    display_name text,
    given_name   text,
    family_name  text,
    email        text,           -- the primary (or first) email, for lookups and JIT matching
    emails       jsonb NOT NULL DEFAULT '[]',
    sso_name     text,
    attributes   jsonb NOT NULL DEFAULT '{}',
    version      bigint NOT NULL DEFAULT 1,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    created_by   text NOT NULL DEFAULT 'scim' CHECK (created_by IN ('scim', 'jit', 'cli'))
);
-- RFC 7643 §4.1.1: userName is caseExact false and unique within the tenant.
CREATE UNIQUE INDEX users_user_name_key ON users (tenant_id, lower(user_name));
CREATE INDEX users_external_id_idx ON users (tenant_id, external_id);
CREATE INDEX users_email_idx ON users (tenant_id, lower(email));
CREATE INDEX users_created_idx ON users (tenant_id, created_at, id);

CREATE TABLE groups (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    display_name text NOT NULL,
    external_id  text,
    attributes   jsonb NOT NULL DEFAULT '{}',
    version      bigint NOT NULL DEFAULT 1,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    created_by   text NOT NULL DEFAULT 'scim' CHECK (created_by IN ('scim', 'jit', 'cli'))
);
CREATE UNIQUE INDEX groups_display_name_key ON groups (tenant_id, lower(display_name));
CREATE INDEX groups_external_id_idx ON groups (tenant_id, external_id);
CREATE INDEX groups_created_idx ON groups (tenant_id, created_at, id);

-- One row per (group, user, source): SCIM and JIT memberships are tracked apart, so JIT
-- removes only what JIT added and never touches what SCIM manages.
CREATE TABLE memberships (
    tenant_id  uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    group_id   uuid NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    source     text NOT NULL CHECK (source IN ('scim', 'jit')),
    added_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (group_id, user_id, source)
);
CREATE INDEX memberships_user_idx ON memberships (user_id);

-- Applied-event inbox: written in the same transaction as the change it records, so a
-- redelivered command is answered from here and never applied twice.
CREATE TABLE inbox (
    event_id   uuid PRIMARY KEY,
    tenant_id  uuid NOT NULL,
    type       text NOT NULL,
    outcome    jsonb NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX inbox_applied_idx ON inbox (applied_at);

-- Append-only audit trail written by the auditor (one row per outcome).
CREATE TABLE audit_log (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id       uuid NOT NULL,
    recorded_at    timestamptz NOT NULL DEFAULT now(),
    occurred_at    timestamptz NOT NULL,
    completed_at   timestamptz NOT NULL,
    tenant_id      uuid NOT NULL,
    source_kind    text NOT NULL,
    source_id      text NOT NULL,
    source_label   text NOT NULL,
    operation      text NOT NULL,
    resource_type  text,
    resource_id    uuid,
    user_name      text,
    changes        jsonb NOT NULL DEFAULT '{}',
    result         text NOT NULL,
    error_code     text,
    error_message  text,
    notes          text[] NOT NULL DEFAULT '{}',
    correlation_id text NOT NULL,
    latency_ms     double precision
);
CREATE UNIQUE INDEX audit_log_event_key ON audit_log (event_id, result);
CREATE INDEX audit_log_tenant_time_idx ON audit_log (tenant_id, completed_at DESC);
CREATE INDEX audit_log_user_idx ON audit_log (tenant_id, lower(user_name), completed_at);
CREATE INDEX audit_log_resource_idx ON audit_log (resource_id);
CREATE INDEX audit_log_correlation_idx ON audit_log (correlation_id);
CREATE INDEX audit_log_source_idx ON audit_log (tenant_id, source_label, completed_at DESC);
CREATE INDEX audit_log_failed_idx ON audit_log (completed_at DESC) WHERE result = 'failed';

-- Webhooks (services/webhook_dispatcher, docs/events.md "Webhooks"): endpoints, one
-- delivery row per (endpoint, event), and every attempt made.

-- An endpoint receives the events of one tenant (tenant_id) or of every tenant (NULL).
-- Its feed cursor (cursor_xid, cursor_id) is the position in the events feed up to which
-- deliveries have been created; the fan-out advances it in the transaction that inserts
-- the deliveries, so no event is skipped or fanned out twice.
CREATE TABLE webhook_endpoints (
    id                   uuid PRIMARY KEY,
    name                 text NOT NULL,
    tenant_id            uuid REFERENCES tenants (id) ON DELETE CASCADE,
    url                  text NOT NULL,
    event_types          text[],                    -- LIKE patterns (user.% …); NULL: every type
    -- The signing secrets (whsec_…). HMAC needs the secret itself, so it is stored, not
    -- hashed; during a rotation's overlap the previous one signs too until it expires.
    secret               text NOT NULL,
    previous_secret      text,
    previous_expires_at  timestamptz,
    status               text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    disabled_at          timestamptz,
    disabled_reason      text,
    failing_since        timestamptz,               -- first failure since the last success
    last_success_at      timestamptz,
    cursor_xid           xid8 NOT NULL,
    cursor_id            bigint NOT NULL DEFAULT 0,
    created_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT webhook_endpoints_name_format CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$')
);
CREATE UNIQUE INDEX webhook_endpoints_name_key ON webhook_endpoints (name);
CREATE INDEX webhook_endpoints_tenant_idx ON webhook_endpoints (tenant_id);

-- One row per event to deliver to an endpoint. The event itself is read from `events`
-- at send time by (event_xid, event_row) (no foreign key: events are pruned in batches
-- that must not touch this table). order_key is the event's resource id, or the nil
-- uuid for an event without a resource: per (endpoint, order_key), a delivery is sent
-- only when no earlier one is still pending and not yet due (docs/events.md).
-- next_attempt_at doubles as the lease of a delivery in flight: the dispatcher that
-- claims it moves it past the request's timeout, so a dispatcher that dies leaves it
-- due again for another.
CREATE TABLE webhook_deliveries (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    endpoint_id      uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_xid        xid8 NOT NULL,
    event_row        bigint NOT NULL,
    event_id         uuid NOT NULL,
    event_type       text NOT NULL,
    event_created_at timestamptz NOT NULL,
    tenant_id        uuid NOT NULL,
    order_key        uuid NOT NULL,
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    done_at          timestamptz,
    last_status      integer,
    last_error       text,
    replay           boolean NOT NULL DEFAULT false
);
-- The sender's claim (an endpoint's pending deliveries in feed order) and its ordering
-- check (an earlier pending delivery of the same resource).
CREATE INDEX webhook_deliveries_pending_idx ON webhook_deliveries (endpoint_id, event_xid, event_row, id)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_order_idx ON webhook_deliveries (endpoint_id, order_key, event_xid, event_row, id)
    WHERE status = 'pending';
CREATE INDEX webhook_deliveries_tenant_idx ON webhook_deliveries (tenant_id, created_at);
CREATE INDEX webhook_deliveries_event_idx ON webhook_deliveries (event_id);
CREATE INDEX webhook_deliveries_done_idx ON webhook_deliveries (created_at) WHERE status <> 'pending';

-- Every attempt: what the receiver answered (status, an excerpt of the body), or why
-- there was no answer (timeout, connection refused, refused address). delivery_id is
-- NULL for `provisio webhook test` pings.
CREATE TABLE webhook_attempts (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    delivery_id  bigint REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    endpoint_id  uuid NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    tenant_id    uuid,
    event_id     uuid NOT NULL,
    event_type   text NOT NULL,
    attempted_at timestamptz NOT NULL DEFAULT now(),
    ok           boolean NOT NULL,
    status_code  integer,
    latency_ms   double precision NOT NULL,
    excerpt      text,
    error        text
);
CREATE INDEX webhook_attempts_delivery_idx ON webhook_attempts (delivery_id);
CREATE INDEX webhook_attempts_tenant_idx ON webhook_attempts (tenant_id, attempted_at DESC);
CREATE INDEX webhook_attempts_endpoint_idx ON webhook_attempts (endpoint_id, attempted_at DESC);

-- An endpoint disabled after failing for a day is mailed to the tenant's notify
-- addresses by the auditor's notifier (its SMTP settings, retries and claim): a
-- notification of kind 'webhook_disabled' carries its own subject and text.
ALTER TABLE notifications DROP CONSTRAINT notifications_kind_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_kind_check
    CHECK (kind IN ('first', 'digest', 'webhook_disabled'));
ALTER TABLE notifications ADD COLUMN body text;

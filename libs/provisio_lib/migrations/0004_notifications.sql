-- Failure notifications (auditor) and audit-log indexes for the support searches.

-- One row per mail to send. Per tenant and window: a 'first' mail, due at once, created
-- with the failure that opened the window, and at most one 'digest', due when the window
-- ends, collecting the failures that came after. Rows are written in the same transaction
-- as the audit rows they report, claimed with FOR UPDATE SKIP LOCKED by the notifier of
-- any auditor, and marked sent in the transaction that holds the claim.
CREATE TABLE notifications (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kind            text NOT NULL CHECK (kind IN ('first', 'digest')),
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'skipped')),
    window_start    timestamptz NOT NULL,
    window_end      timestamptz NOT NULL,
    due_at          timestamptz NOT NULL,
    next_attempt_at timestamptz NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    recipients      text[] NOT NULL DEFAULT '{}',
    subject         text,
    message_id      text
);
-- At most one first mail and one digest per tenant and window, whatever the concurrency.
CREATE UNIQUE INDEX notifications_window_key ON notifications (tenant_id, window_start, kind);
-- The notifier's claim query.
CREATE INDEX notifications_pending_idx ON notifications (next_attempt_at) WHERE status = 'pending';
-- Retention of sent mails.
CREATE INDEX notifications_created_idx ON notifications (created_at);

-- Which audit rows (failures) a notification reports.
CREATE TABLE notification_items (
    notification_id bigint NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    audit_id        bigint NOT NULL REFERENCES audit_log (id) ON DELETE CASCADE,
    PRIMARY KEY (notification_id, audit_id)
);
CREATE INDEX notification_items_audit_idx ON notification_items (audit_id);

-- Searches without a tenant (`provisio audit search --user/--failed/--since`) and retention.
CREATE INDEX audit_log_time_idx ON audit_log (completed_at DESC);
CREATE INDEX audit_log_user_any_idx ON audit_log (lower(user_name), completed_at);
CREATE INDEX audit_log_tenant_failed_idx ON audit_log (tenant_id, completed_at DESC) WHERE result = 'failed';
CREATE INDEX audit_log_source_any_idx ON audit_log (source_label, completed_at DESC);

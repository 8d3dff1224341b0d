-- Admin actions say what kind of actor did them (audit_log.source_kind): 'cli' for an
-- operator at the terminal (source `cli:<OS user>`), 'setup' for a customer's IT admin
-- through a setup link (`setup:<link prefix>`), 'staff' for a console user (the account's
-- id, the email as the label). Before this every one of them was written as 'staff'.
--
-- Backfill by the same rule as provisio_lib.admin.audit.actor_kind, on source_id: the
-- console writes a staff member's account id (a UUID) there, so only rows written with
-- an actor string (the CLI's, a setup link's) change, never a staff member's whose email
-- happens to begin with "cli:". A one-off scan of audit_log; rows are only re-labelled.
UPDATE audit_log
SET source_kind = CASE WHEN source_id LIKE 'setup:%' THEN 'setup' ELSE 'cli' END
WHERE source_kind = 'staff' AND (source_id = 'cli' OR source_id LIKE 'cli:%' OR source_id LIKE 'setup:%');

-- `provisio sso link` goes through the shared admin layer now and records who linked by
-- the same kinds ('jit': the provisioner on a first login).
ALTER TABLE user_identities DROP CONSTRAINT user_identities_linked_by_check;
ALTER TABLE user_identities ADD CONSTRAINT user_identities_linked_by_check
    CHECK (linked_by IN ('jit', 'cli', 'setup', 'staff'));

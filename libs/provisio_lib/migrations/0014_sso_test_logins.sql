-- Test logins (issue 14): an IdP admin signs in through a connection in test mode and
-- sees what Provisio received and what a real login would do, without provisioning.
--
-- A connection made through a setup link starts disabled and can be enabled only after
-- a passed test of its current settings; connections added with `provisio sso add`
-- keep the default (enabled) and work at once, as before.
ALTER TABLE sso_connections ADD COLUMN enabled boolean NOT NULL DEFAULT true;

-- When the settings a test login exercises last changed. Kept by a trigger (not by each
-- writer) so the CLI, the console and any later code path all invalidate earlier tests;
-- enabling, disabling, the app secret and the provisioner's groups_claim_seen do not
-- count. clock_timestamp(), not now(): a test completed inside a long transaction must
-- not look newer than a change committed after it.
ALTER TABLE sso_connections ADD COLUMN changed_at timestamptz NOT NULL DEFAULT clock_timestamp();

CREATE FUNCTION sso_connections_track_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF (NEW.preset, NEW.idp_entity_id, NEW.idp_metadata, NEW.jit_mode, NEW.allow_idp_initiated,
        NEW.attribute_map, NEW.required_attributes, NEW.sp_cert_pem, NEW.sp_key_pem,
        NEW.verified_domains, NEW.groups_absent)
       IS DISTINCT FROM
       (OLD.preset, OLD.idp_entity_id, OLD.idp_metadata, OLD.jit_mode, OLD.allow_idp_initiated,
        OLD.attribute_map, OLD.required_attributes, OLD.sp_cert_pem, OLD.sp_key_pem,
        OLD.verified_domains, OLD.groups_absent) THEN
        NEW.changed_at := clock_timestamp();
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER sso_connections_changed_at BEFORE UPDATE ON sso_connections
    FOR EACH ROW EXECUTE FUNCTION sso_connections_track_change();

CREATE TABLE sso_test_logins (
    id             uuid PRIMARY KEY,
    tenant_id      uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    connection_id  uuid NOT NULL REFERENCES sso_connections (id) ON DELETE CASCADE,
    created_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    completed_at   timestamptz,
    status         text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'passed', 'failed')),
    received       jsonb,            -- issuer, name_id, attributes, groups, algorithms (as received)
    checks         jsonb NOT NULL DEFAULT '[]',  -- [{name, ok, reason}]
    preview        jsonb,            -- what a real login would do (the provisioner's dry run)
    error          text,             -- the plain-language reason of a failed test
    created_by     text NOT NULL,    -- who started it (staff email, setup link, cli)
    return_to      text NOT NULL,    -- where the gateway sends the browser afterwards
    -- The connection's changed_at as the gateway saw it when it verified the response:
    -- a passed test enables the connection only while its settings are still these.
    tested_changed_at timestamptz
);
CREATE INDEX sso_test_logins_connection_idx ON sso_test_logins (connection_id, completed_at DESC);
CREATE INDEX sso_test_logins_created_idx ON sso_test_logins (created_at);

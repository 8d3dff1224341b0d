-- An identity link joins a connection and a user of one tenant, enforced by Postgres
-- itself: a link across tenants would let one tenant's IdP sign in as another tenant's
-- user (the takeover issue 13 closed). Every writer (the provisioner's JIT, the admin
-- layer) already checks it; this makes it true whatever code writes the row.
--
-- A trigger, not composite foreign keys: those would need a unique (tenant_id, id) index
-- on users, one more index on the SCIM write path, for a table written only at first
-- logins and by administrators. Users and connections never change tenant.
CREATE FUNCTION user_identities_same_tenant() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM users WHERE id = NEW.user_id AND tenant_id = NEW.tenant_id)
       OR NOT EXISTS (SELECT 1 FROM sso_connections WHERE id = NEW.connection_id AND tenant_id = NEW.tenant_id)
    THEN
        RAISE EXCEPTION 'an identity link must join a user and a connection of its own tenant'
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END
$$;

-- Rows that break the rule could only come from a bug or a direct write; they grant a
-- sign-in that no administrator of the user's tenant gave, so they go.
DELETE FROM user_identities i
WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.id = i.user_id AND u.tenant_id = i.tenant_id)
   OR NOT EXISTS (SELECT 1 FROM sso_connections c WHERE c.id = i.connection_id AND c.tenant_id = i.tenant_id);

CREATE TRIGGER user_identities_same_tenant
    BEFORE INSERT OR UPDATE OF tenant_id, connection_id, user_id ON user_identities
    FOR EACH ROW EXECUTE FUNCTION user_identities_same_tenant();

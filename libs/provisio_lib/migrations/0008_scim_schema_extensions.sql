-- SCIM schema extensions a tenant declares (issue 13 §4): an RFC 7643 §7 schema
-- document per extension URN (User extensions), from a file or a preset.
CREATE TABLE scim_schema_extensions (
    tenant_id  uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    urn        text NOT NULL,
    preset     text,
    document   jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
-- URNs compare case-insensitively: one declaration per URN and tenant.
CREATE UNIQUE INDEX scim_schema_extensions_key ON scim_schema_extensions (tenant_id, lower(urn));

-- Extension data under a URN the tenant has not declared: kept as sent ('store', the
-- default: Entra sends only what an admin mapped) or refused with a 400 ('reject').
ALTER TABLE tenants ADD COLUMN scim_undeclared_extensions text NOT NULL DEFAULT 'store'
    CONSTRAINT tenants_scim_undeclared_extensions CHECK (scim_undeclared_extensions IN ('store', 'reject'));

-- SAML code exchange: the app that receives the one-time code proves who it is with a
-- per-connection secret (shown once by `provisio sso add`, stored as SHA-256 like SCIM
-- tokens). Additive: connections made before this have none until `provisio sso secret`.
ALTER TABLE sso_connections ADD COLUMN app_secret_hash bytea;

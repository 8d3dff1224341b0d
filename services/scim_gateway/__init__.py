"""SCIM 2.0 gateway (RFC 7643, RFC 7644): reads from Postgres, writes through the provisioner."""

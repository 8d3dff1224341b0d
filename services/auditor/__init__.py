"""The auditor worker: audit trail in Postgres and failure notifications by mail."""

"""The web console: support staff read the audit trail and handle dead letters (docs/console.md)."""

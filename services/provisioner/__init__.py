"""The provisioner worker: applies commands from the command streams to Postgres."""

"""Shared code of the Provisio services: settings, logging, the event contract,
the stream topology, the database pool and migrations. Nothing here imports a service."""

"""Runnable examples of applications using Provisio (not part of the services)."""

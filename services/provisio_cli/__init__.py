"""The ``provisio`` operator CLI."""

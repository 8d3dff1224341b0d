"""A receiving application for Provisio (README.md): run it, read it, copy it."""

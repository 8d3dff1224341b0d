"""``python -m examples.receiver``: the same as ``python examples/receiver/app.py``."""

from .app import main

main()

"""The error every admin operation raises: one sentence, and the CLI's exit code."""

from __future__ import annotations


class AdminError(Exception):
    """One clear line for the operator (CLI) or the support page (console)."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


USAGE = 2  # arguments that do not parse (as click uses)
NOT_FOUND = 1

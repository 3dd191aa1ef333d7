"""The one exception type for user mistakes: the CLI prints it as one line and exits 2."""
from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix: bad input, a bad flag, a missing file.

    `message` says what is wrong (with file:line and field where known);
    `fix` says what to do about it.
    """

    def __init__(self, message: str, fix: str | None = None):
        self.message = message
        self.fix = fix
        super().__init__(message if not fix else f"{message}\n  fix: {fix}")

"""Errors a user can act on.

A DriftscopeError carries a one-line reason and what to do about it. The CLI
prints both and exits with `exit_code`; the library never prints.
"""

from __future__ import annotations


class DriftscopeError(Exception):
    """Bad usage or bad input: shown to the user as one line, exit code 2."""

    exit_code = 2

    def __init__(self, reason: str, hint: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.hint = hint

    def __str__(self) -> str:
        return self.reason if not self.hint else f"{self.reason} ({self.hint})"


class ProbeError(DriftscopeError):
    """A probe suite file is missing, empty or malformed."""


class ModelError(DriftscopeError):
    """A model or adapter folder cannot be loaded."""


class TokenizerMismatch(DriftscopeError):
    """The two tokenizers cannot be compared id for id."""


class OutputError(DriftscopeError, OSError):
    """A file or folder cannot be written where the user asked (also an OSError,
    for callers that catch those around a write)."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, carrying what had been written by then, so the message tells the truth."""

    def __init__(self, written: str = "nothing was written"):
        super().__init__(written)
        self.written = written

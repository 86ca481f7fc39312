"""User-facing errors.

An `AlpacakitError` is something the user can fix: the CLI prints its message (what was
expected, what was found, where, and what to do) without a traceback and exits 2.
"""

from __future__ import annotations


class AlpacakitError(Exception):
    """An error the user can act on. `hint` says what to do about it."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:  # pragma: no cover - formatting only
        return self.message if not self.hint else f"{self.message}\n  fix: {self.hint}"


class DataError(AlpacakitError):
    """A data file is malformed. The message names file:line."""


class ConfigError(AlpacakitError):
    """A config file or override is invalid."""


class TeacherError(AlpacakitError):
    """A teacher (model endpoint or local model) could not be used."""


class BudgetExceeded(AlpacakitError):
    """The next request would exceed --max-cost."""

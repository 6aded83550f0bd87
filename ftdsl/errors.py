"""Exceptions that cross module boundaries. Only these reach the CLI as user errors."""

from __future__ import annotations


class FtdslError(Exception):
    """An error meant for a person: a stable code, a message and an optional hint."""

    def __init__(self, code: str, message: str, hint: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.hint = hint

    def __str__(self) -> str:  # pragma: no cover - trivial
        return f"{self.code}: {self.message}"


class StageError(FtdslError):
    """A stage failed at run time because of its input (bad data, NaN loss, ...): exit 3."""


class ResourceError(FtdslError):
    """Disk full, permission denied, lock timeout: exit 4."""


class UsageError(FtdslError):
    """Bad flags or a missing file: exit 2."""

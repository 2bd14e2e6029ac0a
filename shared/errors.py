"""Retry intent as types, raised by the adapters and interpreted in one place (``workflow``).

``TemporaryError`` says "the world is not ready yet or a call failed in a way worth
retrying; try again after ``delay`` seconds". ``PermanentError`` says "retrying cannot
help". Everything else is a bug or an unknown failure: the queue's own retry and poison
handling deal with it.
"""

from __future__ import annotations


class PatcherError(Exception):
    """Base of the product's own errors."""


class TemporaryError(PatcherError):
    def __init__(self, message: str, *, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class PermanentError(PatcherError):
    pass


class NotFoundError(PermanentError):
    pass


class ConcurrencyError(PatcherError):
    """An optimistic write lost: somebody changed the record (ETag / resourceVersion) first."""


class ConfigError(PatcherError):
    """Configuration or settings are invalid; the message names the field and value."""


class ValidationError(PatcherError):
    """A request or payload is malformed; the message says what is wrong."""

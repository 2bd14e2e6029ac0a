"""Retry intent as types, raised by the adapters and interpreted in one place (``rollout.engine``).

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


class OutcomeUnknownError(TemporaryError):
    """A write whose outcome is unknown: it may have taken effect (a 5xx or 408 after the
    service accepted it, a response that never came). Retrying blindly could do it twice;
    the caller must look at the resource to decide."""


class LeaseLostError(PatcherError):
    """This worker no longer holds the node's lease: another worker may be acting on it,
    so nothing more may be written or done for the node in this invocation."""


class NotFoundError(PermanentError):
    pass


class ConcurrencyError(PatcherError):
    """An optimistic write lost: somebody changed the record (ETag / resourceVersion) first."""


class ConfigError(PatcherError):
    """Configuration or settings are invalid; the message names the field and value."""


class ValidationError(PatcherError):
    """A request or payload is malformed; the message says what is wrong."""

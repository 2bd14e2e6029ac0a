"""ARM's answers as retry intent: a write's ambiguous answer is never a plain retry."""

from __future__ import annotations

import pytest
from azure.core.exceptions import (
    HttpResponseError,
    ServiceRequestError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.core.pipeline.transport import HttpResponse

from shared.adapters.compute import translate_azure_error
from shared.errors import ConcurrencyError, OutcomeUnknownError, PermanentError, TemporaryError


class _Response(HttpResponse):
    def __init__(self, status: int) -> None:
        super().__init__(request=None, internal_response=None)  # type: ignore[arg-type]
        self.status_code = status
        self.reason = "reason"
        self.headers = {"Retry-After": "7"}

    def body(self) -> bytes:
        return b"{}"


def _http(status: int) -> HttpResponseError:
    return HttpResponseError(response=_Response(status))


@pytest.mark.parametrize(
    ("exc", "write", "expected", "ambiguous"),
    [
        (_http(500), True, TemporaryError, True),
        (_http(503), True, TemporaryError, True),
        (_http(408), True, TemporaryError, True),
        (ServiceResponseTimeoutError("read timed out"), True, TemporaryError, True),
        (ServiceResponseError("connection reset"), True, TemporaryError, True),
        (_http(409), True, ConcurrencyError, False),
        (_http(429), True, TemporaryError, False),  # throttled: nothing started
        (_http(400), True, PermanentError, False),
        (_http(403), True, PermanentError, False),
        (ServiceRequestError("connection refused"), True, TemporaryError, False),  # never sent
        (_http(500), False, TemporaryError, False),  # a read may simply be retried
        (ServiceResponseTimeoutError("read timed out"), False, TemporaryError, False),
    ],
)
def test_only_answers_that_leave_a_write_in_doubt_are_outcome_unknown(
    exc: Exception, write: bool, expected: type[Exception], ambiguous: bool
) -> None:
    translated = translate_azure_error(exc, "reimage vmss ['0']", write=write)
    assert isinstance(translated, expected)
    assert isinstance(translated, OutcomeUnknownError) is ambiguous

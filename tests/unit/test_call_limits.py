"""How long an outbound call may take, and what its failures mean for retrying.

The classification is table-driven over the exceptions azure-core and azure-identity
really raise (their types and whether a response came); the timeouts are proved against
silent servers in ``tests/integration/test_call_timeouts.py``.
"""

from __future__ import annotations

from typing import Any

import pytest
from azure.core.exceptions import (
    ClientAuthenticationError,
    HttpResponseError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)

from shared.adapters.compute import translate_azure_error
from shared.app import timeout_problem
from shared.errors import ConfigError, PermanentError, TemporaryError
from shared.settings import AppSettings, storage_options


class FakeResponse:
    """The parts of an azure-core HTTP response HttpResponseError reads."""

    def __init__(self, status: int) -> None:
        self.status_code = status
        self.reason = "Unauthorized"
        self.headers: dict[str, str] = {}
        self.request = None

    def text(self, encoding: str | None = None) -> str:
        return '{"error": {"code": "InvalidAuthenticationToken", "message": "The token is invalid."}}'

    def body(self) -> bytes:
        return self.text().encode()


def _dac_failure() -> ClientAuthenticationError:
    # What DefaultAzureCredential raises when the identity endpoint timed out or answered
    # 5xx: its message lists every credential tried, and there is no response.
    return ClientAuthenticationError(
        message="DefaultAzureCredential failed to retrieve a token from the included credentials.\n"
        "ManagedIdentityCredential: (invalid_scope) 503 ..."
    )


CASES: list[tuple[str, Any, type[Exception]]] = [
    ("read timeout", ServiceResponseTimeoutError("Read timed out. (read timeout=30)"), TemporaryError),
    ("connection dropped mid-answer", ServiceResponseError("Remote end closed connection"), TemporaryError),
    ("connect timeout", ServiceRequestTimeoutError("Connection timed out"), TemporaryError),
    ("connection refused", ServiceRequestError("Connection refused"), TemporaryError),
    ("no token from the identity endpoint", _dac_failure(), TemporaryError),
    ("ARM refused the token (401)", ClientAuthenticationError(response=FakeResponse(401)), PermanentError),
    ("ARM forbids (403)", HttpResponseError(response=FakeResponse(403)), PermanentError),
    ("ARM 503", HttpResponseError(response=FakeResponse(503)), TemporaryError),
]


@pytest.mark.parametrize(("exc", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_azure_failures_are_classified_for_retry(exc: Exception, expected: type[Exception]) -> None:
    translated = translate_azure_error(exc, "get instance vmss/0")
    assert type(translated) is expected
    # The credential's long list of attempted credentials is not carried along.
    assert "DefaultAzureCredential" not in str(translated)


def _settings(**env: str) -> AppSettings:
    base = {"PATCHER_CONFIG_PATH": "x", "AzureWebJobsStorage": "UseDevelopmentStorage=true"}
    return AppSettings.from_env({**base, **env})


def test_timeouts_default_to_10_s_connect_and_30_s_read() -> None:
    s = _settings()
    assert (s.connect_timeout, s.read_timeout) == (10.0, 30.0)
    options = storage_options(s, queue=False)  # what the Table client is built with
    assert options["connection_timeout"] == 10.0 and options["read_timeout"] == 30.0
    assert options["retry_total"] == 1 and options["retry_read"] == 0


@pytest.mark.parametrize("value", ["soon", "-5", "301", "nan", "1e9"])
def test_a_timeout_setting_that_is_no_number_of_seconds_is_refused_without_repeating_it(value: str) -> None:
    with pytest.raises(ConfigError) as exc:
        _settings(PATCHER_READ_TIMEOUT=value)
    assert "PATCHER_READ_TIMEOUT" in str(exc.value)
    assert value not in str(exc.value)


def test_timeouts_that_would_outlive_half_the_lease_are_reported() -> None:
    assert timeout_problem(_settings(), lease=120) is None  # 2 x 10 + 30 = 50 s
    problem = timeout_problem(_settings(PATCHER_READ_TIMEOUT="60"), lease=120)
    assert problem is not None and "leaseDuration" in problem and "80 s" in problem


def test_the_emulator_shorthand_goes_to_the_sdks_which_read_it_as_azurite() -> None:
    from azure.data.tables import TableServiceClient

    from shared.adapters.workqueue import StorageWorkQueue

    settings = _settings()
    assert settings.storage_connection_string == "UseDevelopmentStorage=true"
    queue = StorageWorkQueue.from_settings(settings)
    assert queue._queue.url.startswith("http://127.0.0.1:10001/devstoreaccount1/")
    # TableRunStore.from_settings builds its service client from the same string.
    service = TableServiceClient.from_connection_string(settings.storage_connection_string)
    assert service.url.startswith("http://127.0.0.1:10002/devstoreaccount1")

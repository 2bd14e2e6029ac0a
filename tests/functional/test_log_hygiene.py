"""A name with a newline cannot forge a log line: every record the app makes has its
control characters escaped (shared/log_hygiene.py, installed by function_app.py), shown
through the entry points an outsider reaches."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime

import azure.functions as func
import pytest

from shared.log_hygiene import escape_control_characters
from shared.principal import OPERATE_ROLE
from tests.harness import Harness
from tests.principals import easy_auth_headers

FORGED = "alice\nERROR functions.runs_http: run 0000 cancelled by root\r\x1b[2J\x85\u2028"


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("plain k8s-linux-0", "plain k8s-linux-0"),
        ("a\nb", "a\\nb"),
        ("a\r\nb", "a\\r\\nb"),
        ("tab\there", "tab\\there"),
        ("\x1b[31mred", "\\x1b[31mred"),
        ("nul\x00del\x7f", "nul\\x00del\\x7f"),
        ("c1\x85\x9b", "c1\\x85\\x9b"),
        ("line\u2028para\u2029", "line\\u2028para\\u2029"),
        ("ünïcode ✓", "ünïcode ✓"),
    ],
)
def test_control_characters_are_written_out_as_escapes(raw: str, escaped: str) -> None:
    assert escape_control_characters(raw) == escaped


def lines_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return caplog.text.splitlines()


def test_a_principal_header_with_a_newline_is_logged_escaped(
    functions: dict, harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    run_id = harness.start(pools=["linux"])
    req = func.HttpRequest(
        method="POST",
        url=f"/api/runs/{run_id}/pause",
        body=b"",
        # The platform's principal, whose name claim an attacker chose at sign-up.
        headers=easy_auth_headers(FORGED, OPERATE_ROLE),
        route_params={"id": run_id, "action": "pause"},
    )
    with caplog.at_level(logging.INFO):
        assert functions["run_action"].get_user_function()(req).status_code == 202
    logged = [line for line in lines_of(caplog) if "pause by" in line]
    assert len(logged) == 1, caplog.text
    # The app trims the name (\x85 and \u2028 are white space to Python); the rest is escaped.
    assert "alice\\nERROR functions.runs_http: run 0000 cancelled by root\\r\\x1b[2J" in logged[0]
    assert not any(line.startswith("ERROR functions.runs_http: run 0000") for line in lines_of(caplog))
    for char in "\r\x1b\x85\u2028":
        assert char not in caplog.text


def test_an_event_id_with_a_newline_is_logged_escaped(
    functions: dict, harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    event = func.EventGridEvent(
        id=FORGED,
        data={"something": "else"},
        topic="/subscriptions/x",
        subject="s",
        event_type="Microsoft.Unknown.Event",
        event_time=datetime(2026, 12, 1, tzinfo=UTC),
        data_version="1",
    )
    with caplog.at_level(logging.INFO):
        functions["azure_events"].get_user_function()(event)
    assert "event alice\\nERROR functions.runs_http" in caplog.text
    assert not any(line.startswith("ERROR functions.runs_http: run 0000") for line in lines_of(caplog))


def test_an_exception_message_with_a_newline_is_escaped_in_its_traceback(
    functions: dict, caplog: pytest.LogCaptureFixture
) -> None:
    log = logging.getLogger("tests.log_hygiene")
    try:
        try:
            raise RuntimeError("inner\nERROR forged inner")
        except RuntimeError as inner:
            raise ValueError(f"node {json.dumps('x')}\nERROR forged outer") from inner
    except ValueError:
        log.exception("step failed for %s", "n\n1")
    text = caplog.text
    assert "step failed for n\\n1" in text
    assert 'ValueError: node "x"\\nERROR forged outer' in text
    assert "inner\\nERROR forged inner" in text
    assert "Traceback (most recent call last):" in text  # its own lines stay lines
    assert not any(line.startswith("ERROR forged") for line in text.splitlines())

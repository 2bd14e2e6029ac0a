"""Exporters are installed from the standard settings only, and cost nothing without them."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared import telemetry

REPO = Path(__file__).resolve().parents[2]


def test_without_an_exporter_setting_the_sdk_is_never_imported() -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if k != telemetry.APPINSIGHTS and not k.startswith("OTEL_EXPORTER_OTLP")
    }
    probe = (
        "import sys, function_app, shared.rollout.metrics\n"
        "heavy = [m for m in sys.modules if m.startswith(('opentelemetry.sdk', 'opentelemetry.exporter',"
        " 'azure.monitor'))]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], check=False, cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_connection_string_the_exporter_refuses_is_logged_by_name_and_the_app_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    secret = "InstrumentationKey=not-a-uuid-but-secret"
    with caplog.at_level(logging.ERROR, logger="shared.telemetry"):
        assert telemetry.configure_metrics({telemetry.APPINSIGHTS: secret}) == []
    assert telemetry.APPINSIGHTS in caplog.text and "instrumentation key" in caplog.text.lower()
    assert secret not in caplog.text


def test_no_setting_no_exporter() -> None:
    assert telemetry.configure_metrics({}) == []

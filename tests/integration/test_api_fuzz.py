"""schemathesis against the running app (the sandbox's Functions runner), from the API's
own OpenAPI description: no input reaches a 5xx, every answer matches what the
description says, and every 4xx says why in a JSON error."""

from __future__ import annotations

import os
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import checks
from schemathesis.specs.openapi import checks as openapi_checks

from functions.openapi_http import description
from sandbox.stack import Sandbox

pytestmark = pytest.mark.integration

SCHEMA = schemathesis.openapi.from_dict(description())
# A bounded campaign for every `make test`; `make fuzz` runs a longer one.
EXAMPLES = int(os.environ.get("PATCHER_FUZZ_EXAMPLES", "25"))


def every_4xx_says_why(ctx: Any, response: Any, case: Any) -> bool | None:
    status = response.status_code
    if not 400 <= status < 500 or status in (401, 413):
        return None  # the webhook's 401 and 413 say nothing on purpose (README)
    if (
        not response.content
        and status == 404
        and case.method.lower() not in description()["paths"][case.path]
    ):
        return None  # a method no route takes: the Functions host's own empty 404
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) and body["error"], (
        f"{case.method} {case.formatted_path} answered {status} without a reason: {body!r}"
    )
    return None


@SCHEMA.exclude(path="/gitops/github").parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_no_input_reaches_a_5xx_and_every_answer_is_as_described(case: Any, sandbox: Sandbox) -> None:
    case.call_and_validate(
        base_url=f"{sandbox.functions_url}/api",
        checks=[
            checks.not_a_server_error,
            openapi_checks.status_code_conformance,
            openapi_checks.content_type_conformance,
            openapi_checks.response_schema_conformance,
            every_4xx_says_why,
        ],
        timeout=30,
    )

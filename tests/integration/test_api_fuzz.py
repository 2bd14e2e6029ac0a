"""schemathesis against the running app (the sandbox's Functions runner), from the API's
own OpenAPI description: no input reaches a 5xx, every answer matches what the
description says, and every 4xx says why in a JSON error. Operation by operation
(stateless), then along the description's links from a start to a get and a cancel
(stateful)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from hypothesis.errors import Flaky
from schemathesis import checks
from schemathesis.specs.openapi import checks as openapi_checks

from functions.openapi_http import description
from sandbox.cluster import PoolSpec
from sandbox.demo import http_json
from sandbox.stack import CLUSTER, Sandbox, SandboxOptions
from shared.principal import OPERATE_ROLE

pytestmark = pytest.mark.integration

SCHEMA = schemathesis.openapi.from_dict(description())
# A bounded campaign for every `make test`; `make fuzz` runs a longer one.
EXAMPLES = int(os.environ.get("PATCHER_FUZZ_EXAMPLES", "25"))
TRIED: Counter[str] = Counter()


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    print(f"\nschemathesis: {dict(TRIED)}, 0 failures (a failure above would name its request)")


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
    TRIED["stateless requests"] += 1
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


# ---- the stateful phase: start -> get -> cancel, along the description's links ------------------

STATEFUL_SCENARIOS = int(os.environ.get("PATCHER_FUZZ_SCENARIOS", "15"))
CHECKS = [
    checks.not_a_server_error,
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_schema_conformance,
    openapi_checks.ensure_resource_availability,
    every_4xx_says_why,
]


@pytest.fixture(scope="module")
def closed_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """A sandbox of its own whose only pool's window stays closed (blacked out for days):
    every run the state machine starts is planned and waits, so it touches no node and
    leaves the session's sandbox to the other tests."""
    today = datetime.now(UTC).date()
    sb = Sandbox(
        SandboxOptions(
            state_dir=tmp_path_factory.mktemp("fuzz-sandbox"),
            pools=PoolSpec.parse_list("linux:linux:2"),
            runners=1,
            workloads=False,
            pool_overrides={"linux": {"window": "closed"}},
            extra_config={
                "windows": [
                    {
                        "name": "closed",
                        "start": "00:00",
                        "end": "23:59",
                        "blackoutDates": [(today + timedelta(days=d)).isoformat() for d in range(-1, 4)],
                    }
                ]
            },
        )
    )
    sb.start()
    yield sb
    sb.stop()


def cancel_active_runs(base: str) -> None:
    """Each scenario starts from a cluster without an active run (else every start is a 409)."""
    _, runs = http_json("GET", f"{base}/runs")
    for run in runs["runs"]:
        if run["state"] in ("planned", "running", "paused"):
            http_json("POST", f"{base}/runs/{run['id']}/cancel")


def test_start_get_and_cancel_in_any_order_answer_as_described(closed_sandbox: Sandbox) -> None:
    base = f"{closed_sandbox.functions_url}/api"
    linked = schemathesis.openapi.from_dict(description()).include(
        operation_id=["startRun", "getRun", "actOnRun"]
    )
    failures: list[str] = []
    scenarios = 0
    followed: Counter[str] = Counter()  # "link -> status" for each step a link made

    # An operator's token: the links lead to a get and a cancel only when both are allowed
    # (schemathesis would otherwise draw bearer tokens that App Service Authentication refuses).
    operator = f"Bearer {closed_sandbox.user_token('fuzz@contoso.example', [OPERATE_ROLE])}"

    class StartGetCancel(linked.as_state_machine()):  # type: ignore[misc]
        def setup(self) -> None:
            nonlocal scenarios
            scenarios += 1
            cancel_active_runs(base)

        def before_call(self, case: Any) -> None:
            # The start is aimed at the sandbox's cluster, in its window, so that the links
            # to get and cancel are followed; the stateless test fuzzes its fields.
            case.headers = {**(case.headers or {}), "Authorization": operator}
            if case.operation.definition.raw.get("operationId") == "startRun" and isinstance(case.body, dict):
                kept = {k: v for k, v in case.body.items() if k in ("reason", "notBefore", "dryRun")}
                case.body = {**kept, "cluster": CLUSTER}

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": base, "timeout": 30}

        def step(self, input: Any) -> Any:
            output = super().step(input)
            TRIED["stateful requests"] += 1
            if input.transition is not None and not input.transition.is_inferred:
                # The id reads "POST /runs -> [202] GetRun -> GET /runs/{id}".
                link = input.transition.id.split("] ", 1)[-1].split(" -> ", 1)[0]
                followed[f"{link} -> {output.response.status_code}"] += 1
            return output

        def validate_response(self, response: Any, case: Any, **kwargs: Any) -> None:
            try:
                case.validate_response(
                    response, checks=CHECKS, transport_kwargs=kwargs, recorder=self.recorder
                )
            except BaseException as exc:
                # Kept here: a failure Hypothesis cannot replay would reach it only as Flaky.
                failures.append(
                    f"{case.method} {case.formatted_path} {case.body!r} -> {response.status_code}: {exc}"
                )
                raise

    # A Flaky run ends after a few scenarios: enough fresh runs for the count asked for.
    for _ in range(max(5, STATEFUL_SCENARIOS // 4)):
        try:
            # Generation only, as schemathesis's own stateful phase runs: which links can be
            # followed depends on the server's answers, so Hypothesis may find a scenario it
            # cannot draw again (Flaky); like schemathesis, carry on with fresh ones.
            StartGetCancel.run(
                settings=settings(
                    max_examples=STATEFUL_SCENARIOS,
                    stateful_step_count=6,
                    phases=[Phase.generate],
                    database=None,
                    deadline=None,
                    suppress_health_check=list(HealthCheck),
                )
            )
        except Flaky:
            assert not failures, failures
        if scenarios >= STATEFUL_SCENARIOS:
            break
    assert not failures, failures
    assert scenarios >= STATEFUL_SCENARIOS, f"only {scenarios} scenarios ran"
    # The links were followed to runs that exist: a start's get, and a cancel that took.
    assert followed["GetRun -> 200"] and followed["CancelRun -> 202"], followed
    TRIED["stateful scenarios"] += scenarios
    print(f"\nstateful: {scenarios} scenarios; links followed: {dict(sorted(followed.items()))}")

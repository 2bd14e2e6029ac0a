"""POST /api/plans, called as the host calls it: real HttpRequest objects."""

from __future__ import annotations

import json
from typing import Any

import azure.functions as func

from tests.fakes import transient
from tests.harness import Harness


def post_plan(functions: dict[str, Any], body: Any) -> func.HttpResponse:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = func.HttpRequest(
        method="POST", url="/api/plans", body=raw, headers={"content-type": "application/json"}
    )
    return functions["plans"].get_user_function()(req)


def test_a_plan_answers_waves_and_estimates_and_writes_nothing(functions: dict, harness: Harness) -> None:
    resp = post_plan(functions, {"cluster": "test", "pools": ["linux"]})

    assert resp.status_code == 200
    plan = json.loads(resp.get_body())
    assert [w["nodes"] for w in plan["waves"]] == [["linux-0"], ["linux-1"]]
    assert plan["estimatedSeconds"] == 2 * 20 * 60  # the default Linux estimate, one at a time
    assert plan["pools"]["linux"]["durationSource"] == "default estimate for linux"
    assert harness.store.list_runs() == [] and harness.queue.sent == []
    # The dry run answers the same plan.
    dry = json.loads(
        functions["runs_start"]
        .get_user_function()(
            func.HttpRequest(
                method="POST",
                url="/api/runs",
                body=json.dumps({"cluster": "test", "pools": ["linux"], "dryRun": True}).encode(),
                headers={"content-type": "application/json"},
            )
        )
        .get_body()
    )
    assert dry["waves"] == plan["waves"] and dry["nodes"] == plan["nodes"]


def test_a_bad_plan_request_is_400_with_the_reason(functions: dict, harness: Harness) -> None:
    for body, needle in (
        (b"", "must be JSON"),
        ({"pools": ["linux"]}, "'cluster'"),
        ({"cluster": "nope"}, "unknown cluster"),
        ({"cluster": "test", "pools": ["nope"]}, "unknown pools"),
    ):
        resp = post_plan(functions, body)
        assert resp.status_code == 400, body
        assert needle in json.loads(resp.get_body())["error"]


def test_a_cluster_that_cannot_be_read_now_is_503(functions: dict, harness: Harness) -> None:
    harness.kube.fail_next.append(transient("API server unavailable"))
    resp = post_plan(functions, {"cluster": "test"})
    assert resp.status_code == 503 and "API server unavailable" in json.loads(resp.get_body())["error"]

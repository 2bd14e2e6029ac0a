"""The operator's retry and release of a failed node, and a stalled run, over HTTP: real
HttpRequest objects, as the host passes them."""

from __future__ import annotations

import json
from typing import Any

import azure.functions as func
import pytest

from shared.adapters.kube import ANNOTATION_CORDONED
from shared.rollout.sweeper import sweep
from tests.fakes import make_pod
from tests.harness import Harness
from tests.principals import operator_headers


def post(
    functions: dict[str, Any],
    run_id: str,
    node: str,
    action: str,
    body: Any = None,
    *,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    raw = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else b"")
    req = func.HttpRequest(
        method="POST",
        url=f"/api/runs/{run_id}/nodes/{node}/{action}",
        body=raw,
        headers={"content-type": "application/json", **(headers or {})},
        route_params={"id": run_id, "node": node, "action": action},
    )
    resp = functions["run_node_action"].get_user_function()(req)
    return resp.status_code, json.loads(resp.get_body())


def get_run(functions: dict[str, Any], run_id: str) -> dict[str, Any]:
    req = func.HttpRequest(method="GET", url=f"/api/runs/{run_id}", body=b"", route_params={"id": run_id})
    return json.loads(functions["run_item"].get_user_function()(req).get_body())


@pytest.fixture
def failed_node(harness: Harness) -> str:
    """A run whose linux-0 failed its drain and stays cordoned; with the pool's budget of
    1 it holds linux-1 back, and the run stays open."""
    harness.kube.pods["web/web-1"] = make_pod("web", "web-1", "linux-0")
    harness.kube.blocked.add("web/web-1")
    run_id = harness.start()
    harness.pump(run_id)
    assert harness.node_states(run_id)["linux-0"] == "failed"
    assert harness.node_states(run_id)["linux-1"] == "pending"
    harness.kube.blocked.clear()
    return run_id


def test_release_answers_200_uncordons_and_records_the_authenticated_caller(
    functions: dict, harness: Harness, failed_node: str
) -> None:
    status, body = post(
        functions,
        failed_node,
        "linux-0",
        "release",
        {"reason": "replaced the disk"},
        headers=operator_headers("alice@contoso.com"),
    )
    assert (status, body) == (200, {"id": failed_node, "node": "linux-0", "state": "released"})
    assert not harness.kube.nodes["linux-0"]["spec"].get("unschedulable")
    node = next(n for n in get_run(functions, failed_node)["nodes"] if n["name"] == "linux-0")
    assert node["state"] == "released"
    assert node["history"][-1]["by"] == "alice@contoso.com"
    assert "released by alice@contoso.com: replaced the disk" in node["reason"]
    harness.pump(failed_node)
    assert get_run(functions, failed_node)["state"] == "succeeded"


def test_retry_answers_202_and_records_who_the_key_holder_says_they_are(
    functions: dict, harness: Harness, failed_node: str
) -> None:
    status, body = post(functions, failed_node, "linux-0", "retry", {"requestedBy": "bob"})
    assert (status, body) == (202, {"id": failed_node, "node": "linux-0", "state": "pending"})
    node = harness.store.get_node(failed_node, "linux-0")
    assert node.history[-1]["by"] == "bob (function key)"
    harness.pump(failed_node)
    assert set(harness.node_states(failed_node).values()) == {"succeeded"}


def test_without_a_body_the_caller_is_the_function_key(
    functions: dict, harness: Harness, failed_node: str
) -> None:
    status, _ = post(functions, failed_node, "linux-0", "retry")
    assert status == 202
    assert harness.store.get_node(failed_node, "linux-0").history[-1]["by"] == "function key"


@pytest.mark.parametrize(
    "case",
    [
        ("linux-0", "reboot", 404, "unknown node action 'reboot'"),
        ("ghost", "retry", 404, "ghost"),
        ("linux-1", "retry", 409, "is pending; only a failed node can be retried"),
        ("linux-1", "release", 409, "is pending; only a failed node can be released"),
    ],
)
def test_actions_the_node_does_not_allow_are_refused_and_change_nothing(
    functions: dict, harness: Harness, failed_node: str, case: tuple[str, str, int, str]
) -> None:
    node, action, status, needle = case
    before = harness.node_states(failed_node)
    got, body = post(functions, failed_node, node, action)
    assert got == status and needle in body["error"]
    assert harness.node_states(failed_node) == before


def test_an_unknown_run_is_404(functions: dict, harness: Harness) -> None:
    status, body = post(functions, "0123456789abcdef", "linux-0", "release")
    assert status == 404 and "0123456789abcdef" in body["error"]


def test_release_refuses_a_node_someone_else_cordoned_since(
    functions: dict, harness: Harness, failed_node: str
) -> None:
    harness.kube.nodes["linux-0"]["metadata"]["annotations"].pop(ANNOTATION_CORDONED)
    status, body = post(functions, failed_node, "linux-0", "release")
    assert status == 409 and "cordoned by someone else" in body["error"]
    assert harness.kube.nodes["linux-0"]["spec"]["unschedulable"] is True
    assert harness.node_states(failed_node)["linux-0"] == "failed"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{nope", "not valid JSON"),
        (b"[]", "JSON object"),
        ({"requestedBy": 7}, "'requestedBy' must be a string"),
        ({"force": True}, "unknown fields ['force']"),
    ],
)
def test_a_bad_body_is_400_and_changes_nothing(
    functions: dict, harness: Harness, failed_node: str, body: Any, needle: str
) -> None:
    status, answer = post(functions, failed_node, "linux-0", "retry", body)
    assert status == 400 and needle in answer["error"]
    assert harness.node_states(failed_node)["linux-0"] == "failed"


def test_a_stalled_run_says_so_in_get_and_in_the_list(
    functions: dict, harness: Harness, failed_node: str
) -> None:
    assert get_run(functions, failed_node)["stalled"] is None
    sweep(harness.deps)
    harness.clock.advance(harness.config.workflow.stall_after.total_seconds() + 1)
    sweep(harness.deps)
    stalled = get_run(functions, failed_node)["stalled"]
    assert stalled["since"] and "linux: pool budget of 1 unavailable reached" in stalled["reason"]
    assert "linux-0" in stalled["reason"]
    req = func.HttpRequest(method="GET", url="/api/runs", body=b"")
    listed = json.loads(functions["runs_list"].get_user_function()(req).get_body())["runs"]
    assert listed[0]["stalled"] == stalled
    post(functions, failed_node, "linux-0", "release")
    harness.pump(failed_node)
    assert get_run(functions, failed_node)["stalled"] is None

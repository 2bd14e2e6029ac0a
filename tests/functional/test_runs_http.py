"""The operator HTTP API, called as the host calls it: real HttpRequest objects."""

from __future__ import annotations

import json
from typing import Any

import azure.functions as func

from tests.harness import Harness
from tests.principals import operator_headers


def call(
    functions: dict[str, Any],
    name: str,
    method: str,
    url: str,
    body: Any = None,
    *,
    route_params: dict[str, str] | None = None,
) -> func.HttpResponse:
    raw = body if isinstance(body, bytes) else (json.dumps(body).encode() if body is not None else b"")
    req = func.HttpRequest(
        method=method,
        url=url,
        body=raw,
        headers={"content-type": "application/json"},
        route_params=route_params or {},
    )
    return functions[name].get_user_function()(req)


def test_post_runs_starts_a_run_and_answers_202_with_its_id(functions: dict, harness: Harness) -> None:
    resp = call(functions, "runs_start", "POST", "/api/runs", {"cluster": "test", "reason": "kernel CVE"})
    assert resp.status_code == 202
    run_id = json.loads(resp.get_body())["id"]
    assert resp.headers["Location"] == f"/api/runs/{run_id}"
    harness.pump(run_id)
    got = call(functions, "run_item", "GET", f"/api/runs/{run_id}", route_params={"id": run_id})
    body = json.loads(got.get_body())
    assert body["state"] == "succeeded"
    assert body["pools"]["linux"]["maxUnavailable"] == 1
    assert {n["state"] for n in body["nodes"]} == {"succeeded"}
    listed = json.loads(call(functions, "runs_list", "GET", "/api/runs").get_body())
    assert [r["id"] for r in listed["runs"]] == [run_id]


def test_post_runs_limited_to_pools_and_nodes(functions: dict, harness: Harness) -> None:
    resp = call(
        functions,
        "runs_start",
        "POST",
        "/api/runs",
        {"cluster": "test", "pools": ["win"], "nodes": ["win-1"], "reason": "one node"},
    )
    run_id = json.loads(resp.get_body())["id"]
    body = json.loads(call(functions, "run_item", "GET", "/", route_params={"id": run_id}).get_body())
    assert [n["name"] for n in body["nodes"]] == ["win-1"]
    assert list(body["pools"]) == ["win"]


def test_bad_requests_get_400_with_a_reason(functions: dict, harness: Harness) -> None:
    for body, needle in [
        (b"{not json", "not valid JSON"),
        (b"", "must be JSON"),
        ({"reason": "x"}, "cluster"),
        ({"cluster": "nope"}, "unknown cluster"),
        ({"cluster": "test", "nodes": ["ghost"]}, "ghost"),
    ]:
        resp = call(functions, "runs_start", "POST", "/api/runs", body)
        assert resp.status_code == 400, body
        assert needle in json.loads(resp.get_body())["error"]


def test_a_second_run_on_the_same_cluster_gets_409(functions: dict, harness: Harness) -> None:
    first = json.loads(call(functions, "runs_start", "POST", "/", {"cluster": "test"}).get_body())["id"]
    resp = call(functions, "runs_start", "POST", "/", {"cluster": "test"})
    assert resp.status_code == 409
    assert json.loads(resp.get_body())["activeRun"] == first


def test_pause_resume_cancel_and_unknown_actions(functions: dict, harness: Harness) -> None:
    run_id = json.loads(call(functions, "runs_start", "POST", "/", {"cluster": "test"}).get_body())["id"]
    for action, state in (("pause", "paused"), ("resume", "running"), ("cancel", "cancelled")):
        resp = call(functions, "run_action", "POST", "/", route_params={"id": run_id, "action": action})
        assert resp.status_code == 202, action
        if action != "resume":  # resume of a planned run goes straight to running
            assert json.loads(resp.get_body())["state"] == state
    assert (
        call(
            functions, "run_action", "POST", "/", route_params={"id": run_id, "action": "resume"}
        ).status_code
        == 409
    )
    assert (
        call(
            functions, "run_action", "POST", "/", route_params={"id": run_id, "action": "reboot"}
        ).status_code
        == 404
    )
    assert (
        call(functions, "run_action", "POST", "/", route_params={"id": "nope", "action": "pause"}).status_code
        == 404
    )
    assert call(functions, "run_item", "GET", "/", route_params={"id": "nope"}).status_code == 404


def delete_lock(
    functions: dict[str, Any], cluster: str, *, params: dict[str, str] | None = None, who: str | None = None
) -> func.HttpResponse:
    req = func.HttpRequest(
        method="DELETE",
        url=f"/api/clusters/{cluster}/lock",
        body=b"",
        headers=operator_headers(who) if who else {},
        params=params or {},
        route_params={"name": cluster},
    )
    return functions["cluster_lock"].get_user_function()(req)


def test_delete_lock_frees_a_cluster_whose_run_does_not_exist_and_records_who_asked(
    functions: dict, harness: Harness
) -> None:
    harness.store.claim_cluster("test", "ghost", at=harness.clock.now())
    resp = delete_lock(functions, "test", params={"reason": "a crashed start"}, who="alice@contoso.com")
    assert resp.status_code == 200
    body = json.loads(resp.get_body())
    assert (body["runId"], body["runState"], body["by"]) == ("ghost", "missing", "alice@contoso.com")
    assert harness.store.active_run("test") is None
    (record,) = harness.store.list_records("lock-release")
    assert record["reason"] == "a crashed start" and record["by"] == "alice@contoso.com"
    assert delete_lock(functions, "test").status_code == 404  # nothing left to release


def test_delete_lock_of_a_run_in_progress_needs_force_and_names_the_run(
    functions: dict, harness: Harness
) -> None:
    run_id = json.loads(call(functions, "runs_start", "POST", "/", {"cluster": "test"}).get_body())["id"]
    resp = delete_lock(functions, "test")
    assert resp.status_code == 409
    assert json.loads(resp.get_body())["activeRun"] == run_id
    resp = delete_lock(functions, "test", params={"force": "true"})
    assert resp.status_code == 200
    body = json.loads(resp.get_body())
    assert (body["by"], body["forced"], body["runState"]) == ("function key", True, "running")
    assert harness.store.active_run("test") is None


def test_a_dry_run_answers_what_would_happen_and_writes_nothing(functions: dict, harness: Harness) -> None:
    harness.kube.nodes["win-1"]["spec"]["unschedulable"] = True  # somebody else's cordon
    before = json.dumps(harness.kube.nodes, sort_keys=True)

    resp = call(
        functions,
        "runs_start",
        "POST",
        "/api/runs",
        {"cluster": "test", "reason": "first", "dryRun": True},
    )

    assert resp.status_code == 200
    plan = json.loads(resp.get_body())
    assert plan["dryRun"] is True and plan["wouldStart"] is True and plan["activeRun"] is None
    assert plan["pools"]["linux"]["maxUnavailable"] == 1
    by_name = {n["name"]: n for n in plan["nodes"]}
    first = {"name": "linux-0", "pool": "linux", "action": "patch", "wave": 1}
    assert first.items() <= by_name["linux-0"].items()
    assert by_name["linux-1"]["wave"] == 2  # budget 1: one node of the pool at a time
    assert by_name["win-1"]["action"] == "skip" and "cordoned by someone else" in by_name["win-1"]["reason"]
    # Nothing claimed, stored, queued or touched: a real run can start right after.
    assert json.dumps(harness.kube.nodes, sort_keys=True) == before
    assert harness.store.active_run("test") is None and harness.store.list_runs() == []
    assert harness.queue.sent == []
    assert call(functions, "runs_start", "POST", "/", {"cluster": "test"}).status_code == 202


def test_a_dry_run_on_a_busy_cluster_says_it_would_not_start(functions: dict, harness: Harness) -> None:
    first = json.loads(call(functions, "runs_start", "POST", "/", {"cluster": "test"}).get_body())["id"]
    plan = json.loads(
        call(functions, "runs_start", "POST", "/", {"cluster": "test", "dryRun": True}).get_body()
    )
    assert plan["wouldStart"] is False and plan["activeRun"] == first
    assert [r.id for r in harness.store.list_runs()] == [first]


def test_a_dry_run_flag_that_is_not_a_boolean_is_refused(functions: dict, harness: Harness) -> None:
    resp = call(functions, "runs_start", "POST", "/", {"cluster": "test", "dryRun": "yes"})
    assert resp.status_code == 400 and "dryRun" in json.loads(resp.get_body())["error"]


def test_a_body_nested_thousands_deep_is_refused_with_400_before_parsing(
    functions: dict, harness: Harness
) -> None:
    resp = call(functions, "runs_start", "POST", "/api/runs", b"[" * 5000 + b"]" * 5000)
    assert resp.status_code == 400
    assert "nests deeper than 32 levels" in json.loads(resp.get_body())["error"]
    # Brackets inside strings are text, not nesting.
    resp = call(functions, "runs_start", "POST", "/", {"cluster": "test", "reason": "[" * 100})
    assert resp.status_code == 202


def test_a_run_id_no_table_key_can_be_is_404_not_500(functions: dict, harness: Harness) -> None:
    for run_id in ("../../x", "a#b", "q?x=1", "bell\x07", "x" * 2000):
        got = call(functions, "run_item", "GET", "/", route_params={"id": run_id})
        assert got.status_code == 404, run_id
        assert "not found" in json.loads(got.get_body())["error"]
        acted = call(functions, "run_action", "POST", "/", route_params={"id": run_id, "action": "cancel"})
        assert acted.status_code == 404, run_id


def test_pause_resume_and_cancel_record_who_asked(functions: dict, harness: Harness) -> None:
    run_id = json.loads(call(functions, "runs_start", "POST", "/", {"cluster": "test"}).get_body())["id"]

    def act(action: str, who: str | None) -> dict[str, Any]:
        req = func.HttpRequest(
            method="POST",
            url=f"/api/runs/{run_id}/{action}",
            body=b"",
            headers=operator_headers(who) if who else {},
            route_params={"id": run_id, "action": action},
        )
        resp = functions["run_action"].get_user_function()(req)
        assert resp.status_code == 202
        return json.loads(resp.get_body())

    assert act("pause", "alice@contoso.example")["stateReason"] == "paused by alice@contoso.example"
    assert act("resume", None)["stateReason"] == "resumed by function key"
    assert act("cancel", "bob@contoso.example")["stateReason"] == "cancelled by bob@contoso.example"
    got = json.loads(call(functions, "run_item", "GET", "/", route_params={"id": run_id}).get_body())
    assert got["stateReason"] == "cancelled by bob@contoso.example"

"""Who may do what: the app roles in the principal App Service Authentication sets, checked
by every operator function (real HttpRequest objects, as the host passes them)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest

from shared.principal import OPERATE_ROLE, PRINCIPAL_HEADER, PRINCIPAL_NAME_HEADER, READ_ROLE, ROUTE_ROLES
from tests.fakes import make_pod
from tests.harness import Harness
from tests.principals import easy_auth_headers

READER = easy_auth_headers("rita@contoso.example", READ_ROLE)
OPERATOR = easy_auth_headers("otto@contoso.example", OPERATE_ROLE)


def call(
    functions: dict[str, Any],
    name: str,
    method: str,
    *,
    headers: dict[str, str],
    route_params: dict[str, str] | None = None,
    body: Any = None,
    params: dict[str, str] | None = None,
) -> tuple[int, Any]:
    req = func.HttpRequest(
        method=method,
        url="/api/x",
        body=json.dumps(body).encode() if body is not None else b"",
        headers={"content-type": "application/json", **headers},
        route_params=route_params or {},
        params=params or {},
    )
    resp = functions[name].get_user_function()(req)
    try:
        return resp.status_code, json.loads(resp.get_body())
    except ValueError:
        return resp.status_code, resp.get_body()


@pytest.fixture
def run_with_a_failed_node(harness: Harness) -> str:
    harness.kube.pods["web/web-1"] = make_pod("web", "web-1", "linux-0")
    harness.kube.blocked.add("web/web-1")
    run_id = harness.start()
    harness.pump(run_id)
    assert harness.node_states(run_id)["linux-0"] == "failed"
    harness.kube.blocked.clear()
    return run_id


def test_a_reader_lists_and_shows_runs_but_may_not_act(
    functions: dict, harness: Harness, run_with_a_failed_node: str
) -> None:
    run_id = run_with_a_failed_node
    status, listed = call(functions, "runs_list", "GET", headers=READER)
    assert status == 200 and [r["id"] for r in listed["runs"]] == [run_id]
    status, shown = call(functions, "run_item", "GET", headers=READER, route_params={"id": run_id})
    assert status == 200 and shown["id"] == run_id

    acts = [
        ("runs_start", "POST", {}, {"cluster": "test"}),
        ("run_action", "POST", {"id": run_id, "action": "pause"}, None),
        ("run_action", "POST", {"id": run_id, "action": "cancel"}, None),
        ("run_node_action", "POST", {"id": run_id, "node": "linux-0", "action": "retry"}, None),
        ("run_node_action", "POST", {"id": run_id, "node": "linux-0", "action": "release"}, None),
        ("cluster_lock", "DELETE", {"name": "test"}, None),
    ]
    for name, method, route_params, body in acts:
        status, answer = call(functions, name, method, headers=READER, route_params=route_params, body=body)
        assert status == 403, (name, route_params)
        assert answer["missingRole"] == OPERATE_ROLE
        assert "rita@contoso.example does not hold the app role Patcher.Operate" in answer["error"]
    # Nothing moved: still running, the failed node still failed, the cluster still held.
    assert harness.node_states(run_id)["linux-0"] == "failed"
    assert harness.store.get_run(run_id).state == "running"
    assert len(harness.store.list_runs()) == 1
    assert harness.store.cluster_lock("test") is not None


def test_an_operator_acts_and_is_recorded_as_who_asked(
    functions: dict, harness: Harness, run_with_a_failed_node: str
) -> None:
    run_id = run_with_a_failed_node
    status, answer = call(
        functions, "run_action", "POST", headers=OPERATOR, route_params={"id": run_id, "action": "pause"}
    )
    assert (status, answer["stateReason"]) == (202, "paused by otto@contoso.example")
    status, answer = call(
        functions,
        "run_node_action",
        "POST",
        headers=OPERATOR,
        route_params={"id": run_id, "node": "linux-0", "action": "release"},
        body={"reason": "disk replaced", "requestedBy": "someone else"},
    )
    assert status == 200
    node = next(n for n in harness.store.list_nodes(run_id) if n.name == "linux-0")
    assert node.history[-1]["by"] == "otto@contoso.example"


def test_a_principal_without_any_role_may_not_even_read(functions: dict, harness: Harness) -> None:
    status, answer = call(functions, "runs_list", "GET", headers=easy_auth_headers("nina@contoso.example"))
    assert status == 403 and answer["missingRole"] == READ_ROLE


@pytest.mark.parametrize(
    "headers",
    [
        {},  # a function key alone
        {PRINCIPAL_NAME_HEADER: "mallory"},  # a name the platform did not set with a principal
        {PRINCIPAL_HEADER: "%%%", PRINCIPAL_NAME_HEADER: "mallory"},  # not base64
        {PRINCIPAL_HEADER: "bm90IGpzb24=", PRINCIPAL_NAME_HEADER: "mallory"},  # "not json"
    ],
    ids=["function-key", "name-only", "not-base64", "not-json"],
)
def test_without_a_usable_principal_the_function_key_decided_and_is_who_asked(
    functions: dict, harness: Harness, headers: dict[str, str]
) -> None:
    run_id = harness.start()
    status, answer = call(
        functions, "run_action", "POST", headers=headers, route_params={"id": run_id, "action": "pause"}
    )
    assert (status, answer["stateReason"]) == (202, "paused by function key")


def _http_functions(functions: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(function name, method, route as the description writes it) for every HTTP route."""
    served = []
    for name, function in functions.items():
        for binding in function.get_bindings():
            spec = binding.get_dict_repr()
            if spec.get("type") == "httpTrigger":
                for method in spec["methods"]:
                    served.append((name, str(getattr(method, "value", method)).upper(), f"/{spec['route']}"))
    return served


def test_every_function_checks_the_role_its_route_needs(functions: dict, harness: Harness) -> None:
    roleless = easy_auth_headers("nina@contoso.example")
    checked = 0
    for name, method, route in _http_functions(functions):
        needed = ROUTE_ROLES[(method, route)]
        if needed is None:
            continue
        params = {p: "x" for p in re.findall(r"\{(\w+)\}", route)}
        status, answer = call(functions, name, method, headers=roleless, route_params=params, body={})
        assert (status, answer["missingRole"]) == (403, needed), (name, method, route)
        checked += 1
    assert checked >= 12


def test_no_function_both_reads_and_acts_so_a_read_key_cannot_act(functions: dict) -> None:
    roles: dict[str, set[str | None]] = {}
    for name, method, route in _http_functions(functions):
        roles.setdefault(name, set()).add(ROUTE_ROLES[(method, route)])
    mixed = {name: sorted(map(str, r)) for name, r in roles.items() if len(r) > 1}
    assert not mixed, f"functions serving routes of different roles (their keys would open both): {mixed}"


def test_the_key_recipe_in_infra_readme_sets_each_key_on_exactly_its_functions(functions: dict) -> None:
    readme = (Path(__file__).resolve().parents[2] / "infra" / "README.md").read_text(encoding="utf-8")
    loops = re.findall(r"^\s*for f in ([\w ]+); do$", readme, flags=re.MULTILINE)
    assert len(loops) == 2, loops
    by_role: dict[str | None, set[str]] = {}
    for name, method, route in _http_functions(functions):
        by_role.setdefault(ROUTE_ROLES[(method, route)], set()).add(name)
    assert set(loops[0].split()) == by_role[READ_ROLE]
    assert set(loops[1].split()) == by_role[OPERATE_ROLE]

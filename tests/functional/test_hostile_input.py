"""Hostile input at every entry point, through the functions as the host calls them: each is
refused in its own validation layer with a clear 400 or 404 (HTTP) or dead-lettered with
the reason (queues), never a 5xx or an exception, and nothing of it reaches the store, the
cluster or a log line raw."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import azure.functions as func
import pytest
from azure.functions.queue import QueueMessage

from shared.adapters.workqueue import WorkItem
from shared.config import load_config
from shared.errors import ConfigError
from shared.gitops.service import MemorySyncQueue, use_sync_queue
from tests.functional.test_runs_http import call
from tests.harness import Harness

TWO_MIB = 2 * 1024 * 1024
DEEP = b"[" * 5000 + b"]" * 5000
# Each would end a selector term, a path segment or a log line early.
BAD_NAMES = ["a,b!=c", "a/b", "linux\nERROR forged", "x=y", "..", "bell\x07", "n" * 300]


def reason_of(resp: func.HttpResponse) -> str:
    body = json.loads(resp.get_body())
    assert isinstance(body.get("error"), str) and body["error"]
    return str(body["error"])


# ---- HTTP bodies ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "url"), [("runs_start", "/api/runs"), ("plans", "/api/plans")])
def test_a_2_mib_request_body_is_a_400_before_parsing(
    functions: dict, harness: Harness, name: str, url: str
) -> None:
    body = json.dumps({"cluster": "test", "reason": "x" * TWO_MIB}).encode()
    resp = call(functions, name, "POST", url, body)
    assert resp.status_code == 400
    assert "larger than 1048576 bytes" in reason_of(resp)
    assert harness.store.list_runs() == []


def test_a_2_mib_node_action_body_is_a_400(functions: dict, harness: Harness) -> None:
    run_id = harness.start(pools=["linux"])
    resp = call(
        functions,
        "run_node_action",
        "POST",
        "/",
        json.dumps({"reason": "x" * TWO_MIB}).encode(),
        route_params={"id": run_id, "node": "linux-0", "action": "retry"},
    )
    assert resp.status_code == 400 and "larger than" in reason_of(resp)


@pytest.mark.parametrize("field", ["cluster", "pools", "nodes"])
@pytest.mark.parametrize("bad", BAD_NAMES)
def test_a_name_that_is_no_name_is_a_400_naming_its_format(
    functions: dict, harness: Harness, field: str, bad: str
) -> None:
    body: dict[str, Any] = {"cluster": "test", field: bad if field == "cluster" else [bad]}
    for name in ("runs_start", "plans"):
        resp = call(functions, name, "POST", "/", body)
        assert resp.status_code == 400, (name, bad)
        reason = reason_of(resp)
        assert "is not" in reason or "longer than" in reason, reason
        assert "\n" not in reason and "\x07" not in reason
    # Refused before anything looked at the cluster or wrote a run.
    assert harness.kube.calls == [] and harness.store.list_runs() == []


def test_a_reason_longer_than_1024_characters_is_a_400(functions: dict, harness: Harness) -> None:
    resp = call(functions, "runs_start", "POST", "/", {"cluster": "test", "reason": "r" * 1025})
    assert resp.status_code == 400 and "reason" in reason_of(resp)


# ---- HTTP route parameters ---------------------------------------------------------------------


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_a_route_parameter_that_names_nothing_is_a_404_with_the_reason(
    functions: dict, harness: Harness, bad: str
) -> None:
    run_id = harness.start(pools=["linux"])
    kube_calls = list(harness.kube.calls)
    routes: list[tuple[str, str, dict[str, str]]] = [
        ("run_node_action", "POST", {"id": run_id, "node": bad, "action": "retry"}),
        ("run_node_action", "POST", {"id": bad, "node": "linux-0", "action": "release"}),
        ("run_item", "GET", {"id": bad}),
        ("run_action", "POST", {"id": bad, "action": "cancel"}),
        ("run_timeline", "GET", {"id": bad}),
        ("cluster_lock", "DELETE", {"name": bad}),
        ("gitops_sync_item", "GET", {"delivery": bad}),
    ]
    for name, method, params in routes:
        resp = call(functions, name, method, "/", route_params=params)
        assert resp.status_code == 404, (name, bad)
        assert reason_of(resp).startswith("not found: "), (name, reason_of(resp))
    assert harness.kube.calls == kube_calls


# ---- queue messages ------------------------------------------------------------------------------


def deliver_work(functions: dict[str, Any], body: bytes) -> None:
    functions["node_work"].get_user_function()(QueueMessage(id="m1", body=body, dequeue_count=1))


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (DEEP, "nests deeper than 32 levels"),
        (json.dumps({"v": 1, "kind": "admit", "run": "r" * 70_000}).encode(), "larger than 65536 bytes"),
        (WorkItem(kind="step", run="r1", node="a/b", seq=0).to_json().encode(), "node 'a/b' is not"),
        (WorkItem(kind="step", run="r1", node="n\nERROR x", seq=0).to_json().encode(), "is not"),
        (WorkItem(kind="step", run="r1", node="a,b!=c", seq=0).to_json().encode(), "is not"),
        (WorkItem(kind="admit", run="../x").to_json().encode(), "run '../x' is not"),
    ],
)
def test_a_hostile_work_item_is_dead_lettered_with_the_reason(
    functions: dict, harness: Harness, body: bytes, needle: str
) -> None:
    deliver_work(functions, body)
    assert len(harness.queue.dead) == 1
    dead_body, reason = harness.queue.dead[0]
    assert needle in reason and dead_body == body.decode()
    assert harness.kube.calls == []


@pytest.fixture
def sync_queue() -> Iterator[MemorySyncQueue]:
    queue = MemorySyncQueue()
    use_sync_queue(queue)
    yield queue
    use_sync_queue(None)


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (DEEP, "nests deeper"),
        (b"\xff", "not valid JSON"),
        (json.dumps({"v": 1, "delivery": "d-1", "cluster": "a,b!=c"}).encode(), "cluster 'a,b!=c' is not"),
        (json.dumps({"v": 1, "delivery": "../d", "cluster": "test"}).encode(), "delivery '../d' is not"),
    ],
)
def test_a_hostile_gitops_sync_message_is_dead_lettered_with_the_reason(
    functions: dict, harness: Harness, sync_queue: MemorySyncQueue, body: bytes, needle: str
) -> None:
    functions["gitops_sync"].get_user_function()(QueueMessage(id="g1", body=body, dequeue_count=1))
    assert len(sync_queue.dead) == 1 and needle in sync_queue.dead[0][1]
    assert sync_queue.dead[0][0] == body.decode("utf-8", errors="replace")


# ---- Event Grid ----------------------------------------------------------------------------------


@pytest.mark.parametrize("uri", ["/subscriptions/x/a?api-version=1", "/subscriptions/x/a#b", "/s/x\n/y", "x"])
def test_a_resource_event_whose_uri_is_no_resource_id_is_acknowledged_with_the_reason(
    functions: dict, harness: Harness, caplog: pytest.LogCaptureFixture, uri: str
) -> None:
    event = func.EventGridEvent(
        id="e-1",
        data={"operationName": "Microsoft.Compute/galleries/images/versions/write", "resourceUri": uri},
        topic="/subscriptions/x/resourceGroups/rg-img",
        subject=uri,
        event_type="Microsoft.Resources.ResourceWriteSuccess",
        event_time=datetime(2026, 12, 1, tzinfo=UTC),
        data_version="2",
    )
    with caplog.at_level(logging.INFO):
        assert functions["azure_events"].get_user_function()(event) is None
    assert "event e-1 rejected: resource event's resourceUri is not an ARM resource id" in caplog.text


# ---- configuration ------------------------------------------------------------------------------


def write_config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "patcher.yaml"
    path.write_text(text, encoding="utf-8")
    return path


POOL = "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/vmss"


def a_config(pool: str = "linux", node_selector: str = "{}") -> str:
    return (
        "clusters:\n"
        "  - name: test\n"
        "    kubeconfig: {setting: KUBECONFIG_TEST}\n"
        "    pools:\n"
        f"      - name: {json.dumps(pool)}\n"
        f"        scaleSetId: {POOL}\n"
        f"        nodeSelector: {node_selector}\n"
    )


def test_the_configuration_of_a_config_is_loaded_as_a_baseline(tmp_path: Path) -> None:
    assert load_config(write_config(tmp_path, a_config())).clusters[0].pools[0].name == "linux"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        (a_config(pool="a,b!=c"), "pools[0].name"),
        (a_config(pool="linux\nx"), "pools[0].name"),
        (a_config(node_selector='{"pool": "a,b!=c"}'), "must be Kubernetes label keys and values"),
        (a_config(node_selector='{"a,b": "c"}'), "must be Kubernetes label keys and values"),
        ("[" * 5000 + "]" * 5000, "nests too deeply"),
        ("# padding\n" * 120_000, "larger than 1048576 bytes"),
    ],
    ids=["pool-selector", "pool-newline", "selector-value", "selector-key", "deep", "2-mib"],
)
def test_a_hostile_configuration_is_a_config_error_with_the_reason(
    tmp_path: Path, text: str, needle: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config(write_config(tmp_path, text))
    assert needle in str(exc.value)

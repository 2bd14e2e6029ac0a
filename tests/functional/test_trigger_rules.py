"""The trigger rules through the function handlers, called as the host calls them: an
operator's scheduled or immediate run (`POST /api/runs` with `notBefore`, `immediate`)
and its clear 400s; an image whose version tag cannot be read is refused and its event
acknowledged, never redelivered."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import azure.functions as func
import pytest
from azure.functions.timer import TimerRequest

from shared.app import use_collaborators
from tests.functional.test_runs_http import call
from tests.harness import Harness
from tests.unit.test_intake import DEF, events_config

# The harness's clock starts at 2023-11-14T22:13:20Z.
LATER = "2023-11-15T06:00:00Z"


@pytest.fixture
def events_harness() -> Iterator[Harness]:
    h = Harness({"linux": 1, "win": 1}, nodes_per_pool=2, extra_config=events_config())
    use_collaborators(h.deps)
    yield h
    use_collaborators(None)


def image_version_written(h: Harness, name: str, *, kubelet: str, event_id: str) -> func.EventGridEvent:
    """Publishes a gallery image version tagged with `kubelet` and returns the Event Grid
    event ARM sends for it."""
    version = f"{DEF}/versions/{name}"
    h.compute.image_versions[version.lower()] = {
        "state": "Succeeded",
        "tags": {"kubernetesVersion": kubelet},
    }
    return func.EventGridEvent(
        id=event_id,
        data={"operationName": "Microsoft.Compute/galleries/images/versions/write", "resourceUri": version},
        topic="/subscriptions/x/resourceGroups/rg-img",
        subject=version,
        event_type="Microsoft.Resources.ResourceWriteSuccess",
        event_time=datetime(2026, 12, 1, tzinfo=UTC),
        data_version="2",
    )


def test_a_run_with_not_before_is_planned_deferred_and_says_so(functions: dict, harness: Harness) -> None:
    resp = call(functions, "runs_start", "POST", "/api/runs", {"cluster": "test", "notBefore": LATER})
    assert resp.status_code == 202
    body = json.loads(resp.get_body())
    assert body["state"] == "planned" and body["notBefore"] == "2023-11-15T06:00:00.000Z"
    assert body["stateReason"] == "deferred until 2023-11-15T06:00:00.000Z: notBefore"
    got = json.loads(call(functions, "run_item", "GET", "/", route_params={"id": body["id"]}).get_body())
    assert got["stateReason"] == body["stateReason"] and got["counts"] == {"pending": 4}


def test_an_immediate_run_starts_now(functions: dict, harness: Harness) -> None:
    resp = call(functions, "runs_start", "POST", "/api/runs", {"cluster": "test", "immediate": True})
    assert resp.status_code == 202 and json.loads(resp.get_body())["notBefore"] is None


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"notBefore": "tomorrow"}, "field 'notBefore' is not an ISO 8601 time: 'tomorrow'"),
        ({"notBefore": "2023-11-15T06:00:00"}, "field 'notBefore' must be in UTC (end it with Z)"),
        ({"notBefore": "2023-11-15T06:00:00+02:00"}, "field 'notBefore' must be in UTC (end it with Z)"),
        ({"notBefore": 1700000000}, "field 'notBefore' must be an ISO 8601 UTC time"),
        ({"immediate": "yes"}, "field 'immediate' must be true or false"),
    ],
)
def test_bad_schedule_fields_are_a_400_with_the_reason_and_start_nothing(
    functions: dict, harness: Harness, fields: dict[str, Any], needle: str
) -> None:
    resp = call(functions, "runs_start", "POST", "/api/runs", {"cluster": "test", **fields})
    assert resp.status_code == 400
    assert needle in json.loads(resp.get_body())["error"]
    assert harness.store.list_runs() == [] and harness.store.active_run("test") is None


def test_an_image_with_an_unreadable_version_tag_is_refused_and_acknowledged(
    functions: dict, events_harness: Harness
) -> None:
    event = image_version_written(events_harness, "2026.12.10", kubelet="latest", event_id="img-bad-tag")
    # Returns (the host answers 200): raising would have Event Grid redeliver it for a day.
    assert functions["azure_events"].get_user_function()(event) is None
    record = events_harness.store.get_record("event", "Microsoft.Resources.ResourceWriteSuccess|img-bad-tag")
    assert record["outcome"] == "refused"
    assert "the image's kubelet version 'latest' is not a Kubernetes version" in record["detail"]
    assert events_harness.store.list_runs() == []


def test_the_schedule_timer_looks_again_at_a_refused_image_once_the_control_plane_moved(
    functions: dict, events_harness: Harness
) -> None:
    h = events_harness
    event = image_version_written(h, "2026.12.11", kubelet="v1.32.2", event_id="img-newer")
    functions["azure_events"].get_user_function()(event)
    assert h.store.list_runs() == []  # newer than the API server v1.31.4: refused
    for instances in h.compute.scale_sets.values():
        for iid in instances:  # every node on the current model: the schedule has nothing to do
            h.compute.instance(iid).update(latest=True, image=h.compute.model_image)
    timer = functions["scheduled_patch"].get_user_function()
    timer(TimerRequest())
    assert h.store.list_runs() == []  # the same control plane: still refused
    h.kube.api_version = "v1.32.0"  # the control plane was upgraded
    timer(TimerRequest())
    (run,) = h.store.list_runs()
    assert (run.trigger, run.kubelet_version) == ("image", "v1.32.2")


def test_a_dry_run_says_when_the_run_would_start(functions: dict, harness: Harness) -> None:
    body = {"cluster": "test", "dryRun": True, "notBefore": LATER}
    resp = call(functions, "runs_start", "POST", "/api/runs", body)
    assert resp.status_code == 200
    plan = json.loads(resp.get_body())
    assert plan["notBefore"] == "2023-11-15T06:00:00.000Z"
    assert plan["stateReason"] == "deferred until 2023-11-15T06:00:00.000Z: notBefore"
    assert harness.store.list_runs() == []

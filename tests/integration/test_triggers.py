"""Signals through the local runner's real paths: the Event Grid webhook (both schemas),
the retired Automation hook and the timer, against the sandbox's ARM and Kubernetes API."""

from __future__ import annotations

import json
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from sandbox.events import EventGridPublisher, maintenance_event, to_cloudevent
from sandbox.stack import GALLERY, KUBERNETES_VERSION, Sandbox
from tests.integration.sandbox_helpers import Driver, http_json

pytestmark = pytest.mark.integration


def runs_by(driver: Driver, source: str, *, timeout: float = 60.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, listing = http_json("GET", f"{driver.url}/api/runs")
        found = [r for r in listing["runs"] if r["source"].lower() == source.lower()]
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"no run from {source} within {timeout}s")


def deliver(sandbox: Sandbox, events: list[dict[str, Any]], *, schema: str = "eventgrid") -> int:
    return EventGridPublisher(sandbox.functions_url).deliver(events, schema=schema)  # type: ignore[arg-type]


def schedule(sandbox: Sandbox, start_in: float, length: float) -> tuple[str, datetime, datetime]:
    start = datetime.now(UTC) + timedelta(seconds=start_in)
    end = start + timedelta(seconds=length)
    _, correlation = sandbox.compute.schedule_maintenance_run(
        sandbox.maintenance_configuration_id, start, end
    )
    return correlation, start, end


def test_a_new_gallery_image_version_is_rolled_out_by_its_event(sandbox: Sandbox, driver: Driver) -> None:
    version = "2027.01.01"
    since = time.time()
    version_id = sandbox.compute.publish_image_version(
        sandbox.cluster.resource_group,
        GALLERY,
        "k8s-node-windows",
        version,
        tags={"kubernetesVersion": KUBERNETES_VERSION},
        replicate_seconds=100,
    )
    (summary,) = runs_by(driver, version_id)
    run = driver.wait(summary["id"])
    assert run["trigger"] == "image" and run["state"] == "succeeded", driver.explain(run)
    assert {n["pool"] for n in run["nodes"]} == {"win"} and len(run["nodes"]) == 8
    report = driver.check(run, since=since, image=version)
    assert report.ok, report.violations
    vmss = sandbox.compute.scale_set(sandbox.cluster.resource_group, "vmss-win")
    assert vmss["properties"]["virtualMachineProfile"]["storageProfile"]["imageReference"]["id"] == version_id


def test_an_image_whose_kubelet_is_newer_than_the_api_server_is_refused(
    sandbox: Sandbox, driver: Driver
) -> None:
    before = {r["id"] for r in http_json("GET", f"{driver.url}/api/runs")[1]["runs"]}
    sandbox.compute.publish_image_version(
        sandbox.cluster.resource_group,
        GALLERY,
        "k8s-node-windows",
        "2027.01.02",
        tags={"kubernetesVersion": "1.32.0"},
        replicate_seconds=0,
    )
    time.sleep(3)
    after = {r["id"] for r in http_json("GET", f"{driver.url}/api/runs")[1]["runs"]}
    assert after == before
    log = "".join(p.read_text(errors="replace") for p in sandbox.state_dir.glob("runner-*.log"))
    assert "refused" in log and "newer than the API server" in log


def test_a_pre_maintenance_cloudevent_plans_a_run_that_waits_for_the_window(
    sandbox: Sandbox, driver: Driver
) -> None:
    correlation, start, end = schedule(sandbox, start_in=4, length=3600)
    since = time.time()
    event = maintenance_event("pre", sandbox.maintenance_configuration_id, correlation, start, end)
    assert deliver(sandbox, [to_cloudevent(event)], schema="cloudevents") == 202
    (summary,) = runs_by(driver, correlation)
    run = driver.wait(summary["id"])
    assert run["trigger"] == "maintenance" and run["state"] == "succeeded", driver.explain(run)
    assert {n["pool"] for n in run["nodes"]} == {"win"}
    first_cordon = min(
        r["t"] for r in sandbox.world.history.records() if r["t"] >= since and r["kind"] == "node_cordoned"
    )
    # Nothing started before the window opened (as the event states it, to the second).
    window_start = datetime.fromisoformat(event["data"]["startDateTime"].replace("Z", "+00:00")).timestamp()
    assert first_cordon >= window_start - 0.05
    # A redelivery of the same event, in the other schema, plans nothing more.
    assert deliver(sandbox, [event]) == 202
    time.sleep(1)
    assert len(runs_by(driver, correlation)) == 1


def test_a_post_maintenance_event_leaves_the_window_open_until_its_end(
    sandbox: Sandbox, driver: Driver
) -> None:
    # Update Manager raises the post-event when the updates are installed: the nodes not
    # reached yet still start, up to the window's endDateTime.
    correlation, start, end = schedule(sandbox, start_in=0, length=3600)
    assert (
        deliver(
            sandbox,
            [
                maintenance_event(
                    "pre", sandbox.maintenance_configuration_id, correlation, start, end, pascal_case=True
                )
            ],
        )
        == 202
    )
    (summary,) = runs_by(driver, correlation)
    assert (
        deliver(
            sandbox,
            [maintenance_event("post", sandbox.maintenance_configuration_id, correlation, start, end)],
        )
        == 202
    )
    run = driver.wait(summary["id"])
    assert run["state"] == "succeeded", driver.explain(run)
    assert {n["state"] for n in run["nodes"]} == {"succeeded"}, driver.explain(run)
    # The window ends at the event's endDateTime (which it gives to the second).
    assert abs(datetime.fromisoformat(run["deadline"]).timestamp() - end.timestamp()) < 1
    for name in (n["name"] for n in run["nodes"]):
        assert not sandbox.kube.get("nodes", None, name)["spec"].get("unschedulable")


def test_an_unhealthy_pool_cancels_the_maintenance_run_before_its_cutoff(
    sandbox: Sandbox, driver: Driver
) -> None:
    correlation, start, end = schedule(sandbox, start_in=1800, length=3600)
    sick = driver.nodes_of("win")[:3]

    def not_ready(obj: dict[str, Any]) -> None:
        obj["status"]["conditions"] = [{"type": "Ready", "status": "False", "reason": "KubeletNotReady"}]

    def ready(obj: dict[str, Any]) -> None:
        obj["status"]["conditions"] = [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]

    for name in sick:
        sandbox.kube.mutate("nodes", None, name, not_ready)
    try:
        event = maintenance_event("pre", sandbox.maintenance_configuration_id, correlation, start, end)
        assert deliver(sandbox, [event]) == 202
        deadline = time.monotonic() + 30
        while sandbox.compute.maintenance_run(correlation)["properties"]["status"] != "Cancelled":
            assert time.monotonic() < deadline, sandbox.compute.maintenance_run(correlation)
            time.sleep(0.3)
    finally:
        for name in sick:
            sandbox.kube.mutate("nodes", None, name, ready)


def test_unknown_malformed_and_unvalidated_deliveries_have_documented_outcomes(sandbox: Sandbox) -> None:
    url = f"{sandbox.functions_url}/runtime/webhooks/eventgrid?functionName=azure_events"
    unknown = {
        "id": "u1",
        "eventType": "Microsoft.Storage.BlobCreated",
        "subject": "x",
        "data": {"url": "x"},
        "eventTime": "2026-11-25T10:00:00Z",
        "dataVersion": "1",
        "topic": "/t",
    }
    broken = {
        **unknown,
        "id": "u2",
        "eventType": "Microsoft.Maintenance.PreMaintenanceEvent",
        "data": {"maintenanceConfigurationId": "/x", "startDateTime": "soon", "endDateTime": "later"},
    }
    for event in (unknown, broken):
        assert deliver(sandbox, [event]) == 202  # acknowledged: retrying cannot help
    req = urllib.request.Request(url, data=b"[]", method="POST", headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 400  # no aeg-event-type header
    assert EventGridPublisher(sandbox.functions_url).validate()  # the subscription handshake
    log = "".join(p.read_text(errors="replace") for p in sandbox.state_dir.glob("runner-*.log"))
    assert "event u1" in log and "is not handled" in log
    assert "event u2 rejected" in log and "ISO-8601" in log


def test_the_retired_automation_hook_answers_410_with_the_reason(sandbox: Sandbox, driver: Driver) -> None:
    before = {r["id"] for r in http_json("GET", f"{driver.url}/api/runs")[1]["runs"]}
    context = {
        "SoftwareUpdateConfigurationName": "patch-beta",
        "SoftwareUpdateConfigurationRunId": "8d1f6c3a-0000-4000-8000-000000000001",
        "SoftwareUpdateConfigurationSettings": {"OperatingSystem": 2, "AzureVirtualMachines": []},
    }
    for body in (json.dumps(context), context, {"x": 1}):
        status, answer = http_json("POST", f"{driver.url}/api/automation/update-run", body)
        assert status == 410
        assert "retired" in answer["error"] and "maintenanceConfigurations" in answer["error"]
    assert {r["id"] for r in http_json("GET", f"{driver.url}/api/runs")[1]["runs"]} == before


def test_the_timer_patches_nodes_not_on_the_latest_model(sandbox: Sandbox, driver: Driver) -> None:
    image = driver.new_image(pools=["beta"])
    # Earlier tests may have left other nodes off their pool's model too: the timer takes
    # every node whose instance is not on the latest model, whatever left it there.
    rg = sandbox.cluster.resource_group
    due = {
        str(vm["properties"]["osProfile"]["computerName"]).lower()
        for pool in ("alpha", "beta", "win")
        for vm in sandbox.compute.vms(rg, f"vmss-{pool}")
        if not vm["properties"]["latestModelApplied"]
    }
    assert set(driver.nodes_of("beta")) <= due
    since = time.time()
    status, _ = http_json("POST", f"{driver.url}/admin/functions/scheduled_patch", {})
    assert status in (200, 202)
    deadline = time.monotonic() + 30
    run_id = None
    while run_id is None and time.monotonic() < deadline:
        for r in http_json("GET", f"{driver.url}/api/runs")[1]["runs"]:
            if (
                r["trigger"] == "schedule"
                and r["createdAt"] >= datetime.fromtimestamp(since, UTC).isoformat()[:19]
            ):
                run_id = r["id"]
        time.sleep(0.3)
    assert run_id, "the timer started no run"
    run = driver.wait(run_id)
    assert run["state"] == "succeeded", driver.explain(run)
    assert {n["name"] for n in run["nodes"]} == due
    report = driver.check(run, since=since)
    assert report.ok, report.violations
    for name in driver.nodes_of("beta"):
        node = sandbox.kube.get("nodes", None, name)
        assert node["metadata"]["labels"]["vmss-node-patcher.io/image-version"] == image

"""From signals to runs, with in-memory collaborators: maintenance events, new images,
Automation run contexts, schedules; duplicates and malformed input."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from shared.errors import ValidationError
from shared.triggers.events import (
    POST_MAINTENANCE,
    PRE_MAINTENANCE,
    CaseInsensitive,
    EventEnvelope,
    infer_type,
)
from shared.triggers.intake import Intake
from shared.work import handle_work_item
from tests.fakes import SUB, scale_set_id
from tests.harness import Harness

PAYLOADS = Path(__file__).parent.parent / "payloads"
MC = f"/subscriptions/{SUB}/resourceGroups/rg-m/providers/Microsoft.Maintenance/maintenanceConfigurations/w"
DEF = f"/subscriptions/{SUB}/resourceGroups/rg-img/providers/Microsoft.Compute/galleries/g/images/ubuntu"
ACCOUNT = (
    f"/subscriptions/{SUB}/resourceGroups/rg-auto/providers/Microsoft.Automation/automationAccounts/acct"
)


def events_config() -> dict[str, Any]:
    return {
        "events": {
            "maintenanceConfigurations": [{"maintenanceConfigurationId": MC, "pools": ["test/linux"]}],
            "galleryImages": [{"imageDefinitionId": DEF, "pools": ["test/linux", "test/win"]}],
            "automationAccounts": [ACCOUNT],
        }
    }


@pytest.fixture
def h() -> Harness:
    return Harness({"linux": 1, "win": 1}, nodes_per_pool=2, extra_config=events_config())


def envelope(kind: str | None, data: dict[str, Any], event_id: str = "e1", source: str = "") -> EventEnvelope:
    return EventEnvelope(id=event_id, type=kind, source=source, subject="", data=CaseInsensitive(data))


def maintenance_data(
    h: Harness, *, start_in: float, hours: float = 4.0, pascal: bool = False
) -> dict[str, Any]:
    start = datetime.fromtimestamp(h.clock.now() + start_in, UTC)
    end = datetime.fromtimestamp(h.clock.now() + start_in + hours * 3600, UTC)
    cutoff = datetime.fromtimestamp(h.clock.now() + start_in - 600, UTC)
    data = {
        "correlationId": f"{MC}/providers/microsoft.maintenance/applyupdates/20261128220000",
        "maintenanceConfigurationId": MC,
        "startDateTime": start.isoformat().replace("+00:00", "Z"),
        "endDateTime": end.isoformat().replace("+00:00", "Z"),
        "cancellationCutOffDateTime": cutoff.isoformat().replace("+00:00", "Z"),
        "resourceSubscriptionIds": [SUB],
    }
    return {k[0].upper() + k[1:]: v for k, v in data.items()} if pascal else data


@pytest.mark.parametrize("pascal", [False, True])
def test_a_pre_maintenance_event_plans_a_run_that_waits_for_the_window(h: Harness, pascal: bool) -> None:
    outcome = Intake(h.deps).handle_event(
        envelope(PRE_MAINTENANCE, maintenance_data(h, start_in=1800, pascal=pascal))
    )
    assert outcome.action == "started", outcome.detail
    run_id = outcome.runs[0]
    run = h.store.get_run(run_id)
    assert run.not_before == pytest.approx(h.clock.now() + 1800)
    assert set(h.node_states(run_id)) == {"linux-0", "linux-1"}
    # Nothing starts before the window opens.
    h._collect()
    assert h.pending[0][0] == pytest.approx(h.clock.now() + 1800)
    h.pump(run_id)
    assert set(h.node_states(run_id).values()) == {"succeeded"}
    assert h.clock.now() >= run.not_before


def test_a_redelivered_event_is_a_no_op(h: Harness) -> None:
    event = envelope(PRE_MAINTENANCE, maintenance_data(h, start_in=1800))
    first = Intake(h.deps).handle_event(event)
    second = Intake(h.deps).handle_event(event)
    assert first.action == "started" and second.action == "duplicate"
    assert len(h.store.list_runs()) == 1
    # The same maintenance run delivered under another event id is recognised too.
    third = Intake(h.deps).handle_event(envelope(PRE_MAINTENANCE, maintenance_data(h, start_in=1800), "e2"))
    assert third.action == "duplicate"


def test_an_unhealthy_pool_cancels_the_maintenance_run_with_the_reason(h: Harness) -> None:
    for name in ("linux-0", "linux-1"):
        h.kube.nodes[name]["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    data = maintenance_data(h, start_in=1800)
    outcome = Intake(h.deps).handle_event(envelope(PRE_MAINTENANCE, data))
    assert outcome.action == "cancelled"
    assert "2 nodes NotReady" in outcome.detail
    assert h.compute.arm_calls == [("PUT", data["correlationId"], {"properties": {"status": "Cancel"}})]
    assert h.store.get_record("event", f"{PRE_MAINTENANCE}|e1")["outcome"] == "cancelled"


def test_a_cancelled_maintenance_run_is_announced_with_the_reason(h: Harness) -> None:
    from shared.adapters.notify import Notice

    told: list[Notice] = []
    h.deps.notify = told.append
    for name in ("linux-0", "linux-1"):
        h.kube.nodes[name]["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    data = maintenance_data(h, start_in=1800)
    Intake(h.deps).handle_event(envelope(PRE_MAINTENANCE, data))
    assert [str(n.kind) for n in told] == ["maintenance-run-cancelled"]
    assert "2 nodes NotReady" in told[0].reason and told[0].details["maintenanceRun"] == data["correlationId"]


def test_after_the_cutoff_a_run_that_cannot_proceed_is_not_cancelled(h: Harness) -> None:
    h.kube.api_version = "v1.31.4"
    h.deps.store.claim_cluster("test", "someone-else")
    outcome = Intake(h.deps).handle_event(envelope(PRE_MAINTENANCE, maintenance_data(h, start_in=300)))
    assert outcome.action == "refused" and "cut-off" in outcome.detail
    assert h.compute.arm_calls == []


def test_nodes_that_could_not_finish_before_the_window_ends_are_deferred(h: Harness) -> None:
    # A 30-minute window; a Linux node is estimated at 20 minutes, one at a time.
    outcome = Intake(h.deps).handle_event(
        envelope(PRE_MAINTENANCE, maintenance_data(h, start_in=0, hours=0.5))
    )
    run_id = outcome.runs[0]
    h.reimage_seconds = 1000  # each node takes ~17 minutes here
    h.pump(run_id)
    states = h.node_states(run_id)
    assert sorted(states.values()) == ["deferred", "succeeded"]
    deferred = next(n for n in h.store.list_nodes(run_id) if n.state == "deferred")
    assert "window closes" in deferred.reason


def test_a_post_maintenance_event_leaves_the_window_open_until_its_end(h: Harness) -> None:
    # Update Manager raises it when the updates are installed; the window ends at endDateTime.
    data = maintenance_data(h, start_in=0)
    run_id = Intake(h.deps).handle_event(envelope(PRE_MAINTENANCE, data)).runs[0]
    started = {name for name, state in h.node_states(run_id).items() if state == "admitted"}
    assert started and len(started) < 2  # the window is open: the first node starts at once
    post = {k: v for k, v in data.items() if k != "cancellationCutOffDateTime"} | {"status": "Succeeded"}
    outcome = Intake(h.deps).handle_event(envelope(POST_MAINTENANCE, post, "e1"))  # same id as the pre-event
    assert outcome.action == "noted" and outcome.runs == (run_id,)
    assert "stays open until " + data["endDateTime"][:19] in outcome.detail
    end = datetime.fromisoformat(data["endDateTime"]).timestamp()
    assert h.store.get_run(run_id).deadline == pytest.approx(end)
    h.pump(run_id)
    assert set(h.node_states(run_id).values()) == {"succeeded"}  # the nodes not yet reached start too


def test_the_maintenance_window_ends_at_the_events_end_date_time() -> None:
    mapping = {"maintenanceConfigurations": [{"maintenanceConfigurationId": MC, "pools": ["test/linux"]}]}
    h = Harness({"linux": 1}, nodes_per_pool=3, extra_config={"events": mapping})
    # An hour's window, the post-event at once; a node takes ~22 minutes, estimated at 20:
    # the second still starts after the post-event, the third would end after endDateTime.
    data = maintenance_data(h, start_in=0, hours=1.0)
    run_id = Intake(h.deps).handle_event(envelope(PRE_MAINTENANCE, data)).runs[0]
    post = {k: v for k, v in data.items() if k != "cancellationCutOffDateTime"} | {"status": "Succeeded"}
    Intake(h.deps).handle_event(envelope(POST_MAINTENANCE, post, "e1"))
    h.reimage_seconds = 1300
    h.pump(run_id)
    states = sorted(n.state for n in h.store.list_nodes(run_id))
    assert states == ["deferred", "succeeded", "succeeded"]


def image_event(version_id: str, event_id: str = "img-1") -> EventEnvelope:
    return envelope(
        "Microsoft.Resources.ResourceWriteSuccess",
        {
            "operationName": "Microsoft.Compute/galleries/images/versions/write",
            "resourceUri": version_id,
            "status": "Succeeded",
        },
        event_id,
    )


def test_a_new_image_version_updates_the_models_and_rolls_only_nodes_off_model(h: Harness) -> None:
    version = f"{DEF}/versions/2026.12.01"
    h.compute.image_versions[version.lower()] = {
        "state": "Succeeded",
        "tags": {"kubernetesVersion": "v1.31.4"},
    }
    outcome = Intake(h.deps).handle_event(image_event(version))
    assert outcome.action == "started", outcome.detail
    assert h.compute.model_image == version.lower()
    run_id = outcome.runs[0]
    assert set(h.node_states(run_id)) == {"linux-0", "linux-1", "win-0", "win-1"}
    h.pump(run_id)
    assert set(h.node_states(run_id).values()) == {"succeeded"}
    again = Intake(h.deps).handle_event(image_event(version, "img-2"))
    assert again.action == "duplicate"


def test_an_image_still_replicating_is_looked_at_again_later(h: Harness) -> None:
    version = f"{DEF}/versions/2026.12.02"
    h.compute.image_versions[version.lower()] = {"state": "Creating"}
    outcome = Intake(h.deps).handle_event(image_event(version))
    assert outcome.action == "waiting"
    ((item, delay),) = h.queue.take()
    assert item.kind == "image" and item.ref == version and delay > 0
    h.compute.image_versions[version.lower()]["state"] = "Succeeded"
    assert handle_work_item(h.deps, item, workflow=h.workflow).startswith("started")


def test_an_image_whose_kubelet_breaks_the_skew_policy_is_refused(h: Harness) -> None:
    version = f"{DEF}/versions/2026.12.03"
    h.compute.image_versions[version.lower()] = {
        "state": "Succeeded",
        "tags": {"kubernetesVersion": "1.32.0"},
    }
    outcome = Intake(h.deps).handle_event(image_event(version))
    assert outcome.action == "refused"
    assert "newer than the API server v1.31.4" in outcome.detail
    assert h.store.list_runs() == []


def test_unknown_and_unrelated_events_are_acknowledged_with_a_reason(h: Harness) -> None:
    intake = Intake(h.deps)
    assert intake.handle_event(envelope("Microsoft.Storage.BlobCreated", {"url": "x"})).action == "ignored"
    other = envelope(
        "Microsoft.Resources.ResourceWriteSuccess",
        {
            "operationName": "Microsoft.Network/virtualNetworks/write",
            "resourceUri": "/x",
            "status": "Succeeded",
        },
        "e9",
    )
    assert "not an image version" in intake.handle_event(other).detail
    unmapped = (
        f"/subscriptions/{SUB}/resourceGroups/r/providers/Microsoft.Compute/galleries/g/images/o/versions/1"
    )
    assert intake.handle_event(image_event(unmapped, "e10")).action == "ignored"


def test_malformed_maintenance_events_raise_a_validation_error(h: Harness) -> None:
    data = maintenance_data(h, start_in=0)
    for i, broken in enumerate(
        (
            {**data, "startDateTime": "tomorrow"},
            {**data, "endDateTime": data["startDateTime"]},
            {k: v for k, v in data.items() if k != "endDateTime"},
        )
    ):
        with pytest.raises(ValidationError):
            Intake(h.deps).handle_event(envelope(PRE_MAINTENANCE, broken, f"bad-{i}"))
        # Recorded with the reason, so that a copy of it is a duplicate and "why" has an answer.
        assert h.store.get_record("event", f"{PRE_MAINTENANCE}|bad-{i}")["outcome"] == "rejected"


def test_cloudevents_without_a_type_are_recognised_by_their_data() -> None:
    pre = json.loads((PAYLOADS / "eventgrid-premaintenance.json").read_text())[0]["data"]
    post = json.loads((PAYLOADS / "eventgrid-postmaintenance.json").read_text())[0]["data"]
    image = json.loads((PAYLOADS / "eventgrid-image-version-write.json").read_text())[0]["data"]
    assert infer_type(CaseInsensitive(pre)) == PRE_MAINTENANCE
    assert infer_type(CaseInsensitive(post)) == POST_MAINTENANCE
    assert infer_type(CaseInsensitive(image)) == "Microsoft.Resources.ResourceWriteSuccess"
    assert infer_type(CaseInsensitive({"hello": 1})) is None


def test_the_schedule_patches_only_pools_inside_their_window(h: Harness) -> None:
    hw = pools_in_windows(
        [
            {"name": "always", "start": "00:00", "end": "00:00"},
            {"name": "never", "start": "00:00", "end": "00:01", "days": ["mon"], "blackoutDates": []},
        ],
        linux="always",
        win="never",
        nodes_per_pool=2,
    )
    hw.clock.advance(3 * 86400 + 3600)  # a Thursday afternoon: "never" is closed
    outcomes = Intake(hw.deps).scheduled()
    assert [o.action for o in outcomes] == ["started"]
    assert set(hw.node_states(outcomes[0].runs[0])) == {"linux-0", "linux-1"}


def test_the_schedule_patches_nodes_asking_for_a_reboot_or_too_old() -> None:
    hw = Harness(
        {"linux": 1},
        nodes_per_pool=3,
        pool_linux={"rebootRequiredCondition": "KernelDeadlock", "maxNodeAge": "P30D"},
    )
    for inst in hw.compute.scale_sets[scale_set_id("vmss-linux").lower()]:
        hw.compute.instance(inst)["latest"] = True  # every instance is on the latest model
    hw.kube.nodes["linux-0"]["status"]["conditions"].append({"type": "KernelDeadlock", "status": "True"})
    old = datetime.fromtimestamp(hw.clock.now() - 31 * 86400, UTC).isoformat().replace("+00:00", "Z")
    hw.kube.nodes["linux-2"]["metadata"]["creationTimestamp"] = old
    (outcome,) = Intake(hw.deps).scheduled()
    assert outcome.action == "started"
    assert set(hw.node_states(outcome.runs[0])) == {"linux-0", "linux-2"}


def off_model_harness(nodes: int) -> Harness:
    """Every instance is behind the model: each node is due."""
    return Harness({"linux": 1}, nodes_per_pool=nodes)


@pytest.mark.parametrize(
    ("leave", "why"),
    [
        (lambda n: n["metadata"]["labels"].update({"vmss-node-patcher.io/opt-out": "true"}), "opted out"),
        (lambda n: n["metadata"]["annotations"].update({"vmss-node-patcher.io/opt-out": "yes"}), "opted out"),
        (lambda n: n["spec"].update({"unschedulable": True}), "cordoned by someone else"),
    ],
)
def test_the_schedule_plans_no_run_for_a_node_it_would_leave_alone(leave, why) -> None:  # type: ignore[no-untyped-def]
    h = off_model_harness(1)
    leave(h.kube.nodes["linux-0"])
    (outcome,) = Intake(h.deps).scheduled()
    assert outcome.action == "nothing" and outcome.runs == ()
    assert h.store.list_runs() == []
    assert h.store.active_run("test") is None
    record = h.store.get_record("schedule", "test")
    assert record is not None and record["outcome"] == "nothing"
    assert why in record["left"]["linux-0"]


def test_the_schedule_leaves_opted_out_nodes_out_of_its_run_and_says_why() -> None:
    h = off_model_harness(2)
    h.kube.nodes["linux-1"]["metadata"]["labels"]["vmss-node-patcher.io/opt-out"] = "true"
    (outcome,) = Intake(h.deps).scheduled()
    assert outcome.action == "started"
    assert set(h.node_states(outcome.runs[0])) == {"linux-0"}
    assert "linux-1" in outcome.detail
    record = h.store.get_record("schedule", "test")
    assert record is not None and record["runs"] == list(outcome.runs)
    assert record["left"] == {"linux-1": "opted out with vmss-node-patcher.io/opt-out"}


def test_a_node_on_the_latest_model_is_not_named_as_left() -> None:
    h = off_model_harness(1)
    for inst in h.compute.scale_sets[scale_set_id("vmss-linux").lower()]:
        h.compute.instance(inst)["latest"] = True
    (outcome,) = Intake(h.deps).scheduled()
    assert outcome.action == "nothing"
    record = h.store.get_record("schedule", "test")
    assert record is not None and record["left"] == {}


def pools_in_windows(windows: list[dict[str, Any]], *, linux: str, win: str, nodes_per_pool: int) -> Harness:
    """A harness whose linux and win pools are each bound to one of `windows`."""
    return Harness(
        {"linux": 1, "win": 1},
        nodes_per_pool=nodes_per_pool,
        extra_config={**events_config(), "windows": windows},
        pool_linux={"window": linux},
        pool_win={"window": win},
    )

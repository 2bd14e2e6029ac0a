"""Triggers mean what Azure means: every trigger keeps the pools' windows and blackout
dates (unless a run says immediate), a run can be scheduled, a signal delivered twice at
once is handled once, and the skew guard refuses clearly and looks again when the control
plane moves."""

from __future__ import annotations

import contextlib
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from shared.clock import iso
from shared.errors import TemporaryError, ValidationError
from shared.rollout.model import NodeState, RunState
from shared.rollout.requests import StartRequest
from shared.rollout.service import RunService
from shared.rollout.sweeper import sweep
from shared.triggers import idempotency
from shared.triggers.events import PRE_MAINTENANCE
from shared.triggers.intake import Intake
from tests.harness import Harness
from tests.unit.test_intake import (
    DEF,
    envelope,
    events_config,
    image_event,
    maintenance_data,
    pools_in_windows,
)

PAYLOADS = Path(__file__).parent.parent / "payloads"
# The fake clock starts on Tuesday 2023-11-14 22:13:20 UTC.
SATURDAY_NIGHT = {"name": "sat-night", "days": ["sat"], "start": "22:00", "end": "04:00"}
OPENS = datetime(2023, 11, 18, 22, 0, tzinfo=UTC).timestamp()
CLOSES = datetime(2023, 11, 19, 4, 0, tzinfo=UTC).timestamp()


def windowed(**window: Any) -> Harness:
    """Both pools in the Saturday-night window."""
    cfg = {**events_config(), "windows": [{**SATURDAY_NIGHT, **window}]}
    return Harness(
        {"linux": 1, "win": 1},
        nodes_per_pool=2,
        extra_config=cfg,
        pool_linux={"window": "sat-night"},
        pool_win={"window": "sat-night"},
    )


def admits_queued(h: Harness) -> list[float]:
    return [delay for item, delay in h.queue.sent if item.kind == "admit"]


# ---- windows apply to every trigger ------------------------------------------------------------


def test_an_operator_run_outside_the_window_is_deferred_to_its_opening_with_the_reason() -> None:
    h = windowed()
    run = RunService(h.deps).start(StartRequest(cluster="test", reason="r"))
    assert (run.not_before, run.deadline) == (OPENS, CLOSES)
    assert run.state == RunState.PLANNED
    view = RunService(h.deps).get(run.id)
    assert view["stateReason"] == (
        f"deferred until {iso(OPENS)}: outside the maintenance window sat-night, which opens then"
    )
    assert set(view["counts"]) == {"pending"}  # nothing started
    assert admits_queued(h) == [pytest.approx(OPENS - h.clock.now())]
    h._collect()
    h.clock.advance(OPENS - h.clock.now() - 60)
    h.pump(run.id)  # the queued admission wakes it when the window opens
    assert set(h.node_states(run.id).values()) == {"succeeded"}
    assert h.clock.now() >= OPENS


def test_an_immediate_operator_run_ignores_windows_and_blackouts() -> None:
    h = windowed(blackoutDates=["2023-11-14"])
    run = RunService(h.deps).start(StartRequest(cluster="test", reason="r", immediate=True))
    assert (run.not_before, run.deadline) == (0.0, 0.0)
    assert any(s == "admitted" for s in h.node_states(run.id).values())


def test_a_blackout_date_defers_a_run_to_the_next_occurrence() -> None:
    h = windowed(blackoutDates=["2023-11-18"])
    run = RunService(h.deps).start(StartRequest(cluster="test", reason="r"))
    assert run.not_before == OPENS + 7 * 86400


def test_not_before_is_respected_and_the_window_still_applies() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=2)
    later = h.clock.now() + 7200
    run = RunService(h.deps).start(StartRequest(cluster="test", reason="r", not_before=later))
    assert run.not_before == later and run.deadline == 0.0
    assert run.state_reason == f"deferred until {iso(later)}: notBefore"
    assert h.node_states(run.id) == {"linux-0": "pending", "linux-1": "pending"}
    h.pump(run.id)
    assert set(h.node_states(run.id).values()) == {"succeeded"} and h.clock.now() >= later
    # After a Saturday night's opening, a notBefore inside it starts there and ends with it.
    hw = windowed()
    inside = OPENS + 3600
    run = RunService(hw.deps).start(StartRequest(cluster="test", reason="r", not_before=inside))
    assert (run.not_before, run.deadline) == (inside, CLOSES)


def test_windows_that_are_never_open_together_are_a_clear_refusal() -> None:
    h = pools_in_windows(
        [SATURDAY_NIGHT, {**SATURDAY_NIGHT, "name": "sun", "days": ["sun"]}],
        linux="sat-night",
        win="sun",
        nodes_per_pool=1,
    )
    # Saturday 22:00-04:00 and Sunday 22:00-04:00 never overlap.
    with pytest.raises(ValidationError, match="never open together"):
        RunService(h.deps).start(StartRequest(cluster="test", reason="r"))
    assert h.store.list_runs() == [] and h.store.active_run("test") is None


def test_an_image_event_outside_the_window_plans_a_deferred_run() -> None:
    h = windowed()
    version = f"{DEF}/versions/2026.12.01"
    h.compute.image_versions[version.lower()] = {
        "state": "Succeeded",
        "tags": {"kubernetesVersion": "v1.31.4"},
    }
    outcome = Intake(h.deps).handle_event(image_event(version))
    assert outcome.action == "started" and "deferred until" in outcome.detail
    run = h.store.get_run(outcome.runs[0])
    assert (run.not_before, run.deadline) == (OPENS, CLOSES)
    assert set(h.node_states(run.id).values()) == {"pending"}


def test_a_maintenance_window_outside_the_pools_window_cancels_the_maintenance_run() -> None:
    h = windowed()
    data = maintenance_data(h, start_in=1800)  # Tuesday night: the pools' window is closed
    outcome = Intake(h.deps).handle_event(envelope(PRE_MAINTENANCE, data))
    assert outcome.action == "cancelled" and "does not overlap the pools' windows" in outcome.detail
    assert h.store.list_runs() == []


def test_the_sweeper_leaves_a_deferred_run_to_its_queued_admission() -> None:
    h = windowed()
    run = RunService(h.deps).start(StartRequest(cluster="test", reason="r"))
    h.queue.take()
    h.clock.advance(3600)
    assert run.id not in sweep(h.deps).admitted  # one message per sweep would pile up for days
    h.clock.advance(OPENS - h.clock.now() + 1)
    assert run.id in sweep(h.deps).admitted  # if that admission got lost, the sweeper starts it


# ---- one delivery of a signal at a time -------------------------------------------------------


def test_twin_deliveries_at_once_plan_one_run_and_never_cancel_it() -> None:
    h = Harness({"linux": 1, "win": 1}, nodes_per_pool=2, extra_config=events_config())
    event = envelope(PRE_MAINTENANCE, maintenance_data(h, start_in=1800))
    both_looking = threading.Barrier(2, timeout=2)
    list_nodes = h.kube.list_nodes

    def slow_list_nodes(*args: Any, **kwargs: Any) -> Any:
        # Both deliveries get past their first look before either plans its run.
        if threading.current_thread().name.startswith("twin"):
            with contextlib.suppress(threading.BrokenBarrierError):
                both_looking.wait()
        return list_nodes(*args, **kwargs)

    h.kube.list_nodes = slow_list_nodes  # type: ignore[method-assign]
    answers: list[str] = []

    def deliver() -> None:
        try:
            answers.append(Intake(h.deps).handle_event(event).action)
        except TemporaryError as exc:
            answers.append(f"redeliver: {exc}")

    twins = [threading.Thread(target=deliver, name=f"twin-{i}") for i in range(2)]
    for t in twins:
        t.start()
    for t in twins:
        t.join(10)
    assert sorted(a.split(":")[0] for a in answers) == ["redeliver", "started"], answers
    assert h.compute.arm_calls == []  # nothing cancelled the maintenance run
    (run,) = h.store.list_runs()
    assert run.state == RunState.PLANNED
    # Event Grid's redelivery of the one told to come back finds the outcome.
    assert Intake(h.deps).handle_event(event).action == "duplicate"


def test_a_delivery_that_fails_transiently_gives_its_claim_back() -> None:
    h = Harness({"linux": 1, "win": 1}, nodes_per_pool=2, extra_config=events_config())
    event = envelope(PRE_MAINTENANCE, maintenance_data(h, start_in=1800))
    h.deps.store.claim_cluster("test", "someone-else")  # the cluster cannot take it: cancel

    def arm_unavailable(*args: Any, **kwargs: Any) -> Any:
        raise TemporaryError("ARM answered 503")

    arm_request = h.compute.arm_request
    h.compute.arm_request = arm_unavailable  # type: ignore[method-assign]
    with pytest.raises(TemporaryError):
        Intake(h.deps).handle_event(event)
    h.compute.arm_request = arm_request  # type: ignore[method-assign]
    h.deps.store.release_cluster("test", "someone-else")
    assert Intake(h.deps).handle_event(event).action == "started"  # the redelivery is handled


def test_a_claim_whose_holder_died_is_taken_over_after_its_lease() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=1)
    held = idempotency.claim(h.store, "event", "k", now=h.clock.now())
    assert isinstance(held, idempotency.Claim)
    with pytest.raises(idempotency.InProgressError):
        idempotency.claim(h.store, "event", "k", now=h.clock.now() + 60)
    later = h.clock.now() + idempotency.CLAIM_LEASE_SECONDS + 1
    taken = idempotency.claim(h.store, "event", "k", now=later)
    assert isinstance(taken, idempotency.Claim) and taken.token != held.token
    idempotency.give_back(h.store, held)  # the late holder's give-back leaves the new claim alone
    assert h.store.get_record("event", "k")["token"] == taken.token
    idempotency.finish(h.store, taken, {"outcome": "started"})
    assert idempotency.claim(h.store, "event", "k", now=later) == {"key": "k", "outcome": "started"}


def image_harness() -> Harness:
    return Harness({"linux": 1, "win": 1}, nodes_per_pool=2, extra_config=events_config())


def publish(h: Harness, version: str, kubelet: str) -> str:
    version_id = f"{DEF}/versions/{version}"
    h.compute.image_versions[version_id.lower()] = {
        "state": "Succeeded",
        "tags": {"kubernetesVersion": kubelet},
    }
    return version_id


def test_a_refused_image_is_looked_at_again_when_the_control_plane_moves() -> None:
    h = image_harness()
    version = publish(h, "2026.12.05", "v1.32.1")
    assert Intake(h.deps).handle_event(image_event(version)).action == "refused"
    assert h.store.get_record("image-rolled", version.lower()) is None  # not taken as rolled
    assert Intake(h.deps).recheck_refused_images() == []  # same control plane: nothing to do
    h.kube.api_version = "v1.32.0"
    for node in h.kube.nodes.values():
        node["status"]["nodeInfo"]["kubeletVersion"] = "v1.31.4"
    (outcome,) = Intake(h.deps).recheck_refused_images()
    assert outcome.action == "started", outcome.detail
    assert h.store.get_run(outcome.runs[0]).kubelet_version == "v1.32.1"
    assert Intake(h.deps).recheck_refused_images() == []  # rolled: never again


def test_an_image_more_than_one_minor_above_the_nodes_kubelets_is_refused() -> None:
    h = image_harness()
    h.kube.api_version = "v1.32.3"
    h.kube.nodes["win-1"]["status"]["nodeInfo"]["kubeletVersion"] = "v1.30.8"
    outcome = Intake(h.deps).handle_event(image_event(publish(h, "2026.12.06", "v1.32.1")))
    assert outcome.action == "refused"
    assert "node win-1 runs v1.30.8" in outcome.detail and "one minor version at a time" in outcome.detail
    assert h.store.list_runs() == []


def test_an_unparseable_version_tag_is_refused_with_the_reason() -> None:
    h = image_harness()
    outcome = Intake(h.deps).handle_event(image_event(publish(h, "2026.12.07", "latest")))
    assert outcome.action == "refused" and "'latest' is not a Kubernetes version" in outcome.detail
    assert (
        h.store.get_record("event", "Microsoft.Resources.ResourceWriteSuccess|img-1")["outcome"] == "refused"
    )


def test_a_kubelet_other_than_the_images_tag_after_the_roll_fails_the_node_with_the_reason() -> None:
    h = image_harness()
    outcome = Intake(h.deps).handle_event(image_event(publish(h, "2026.12.08", "v1.31.5")))
    run_id = outcome.runs[0]
    h.pump(run_id)  # the fake nodes come back reporting v1.31.4
    nodes = h.store.list_nodes(run_id)
    # Left cordoned, a failed node holds its pool's budget of 1: the other waits.
    assert sorted(n.state for n in nodes) == ["failed", "failed", "pending", "pending"]
    failed = next(n for n in nodes if n.state == NodeState.FAILED)
    assert "kubelet reports v1.31.4 after the reimage, but the image's tag says v1.31.5" in failed.reason
    assert "left cordoned" in failed.reason
    assert h.kube.nodes[failed.name]["spec"].get("unschedulable") is True


def test_a_kubelet_matching_the_images_tag_after_the_roll_succeeds() -> None:
    h = image_harness()
    outcome = Intake(h.deps).handle_event(image_event(publish(h, "2026.12.09", "1.31.4")))
    h.pump(outcome.runs[0])
    assert set(h.node_states(outcome.runs[0]).values()) == {"succeeded"}

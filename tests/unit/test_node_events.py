"""Every transition of a node tells the cluster: a Kubernetes Event on the Node (its
reason, type and message), and on a node the run holds cordoned the state annotation,
already saying the state the Event announces. Nodes the run never touched (pending ones
admitted, skipped, cancelled or deferred) get the Event only: their objects are not the
run's to write."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from shared.adapters.kube import ANNOTATION_CORDONED, ANNOTATION_STATE, record_events
from shared.adapters.workqueue import WorkItem
from shared.rollout.model import NodeState, RunState
from shared.rollout.service import RunService
from tests.fakes import FakeKube, make_pod
from tests.harness import Harness, admitted_steps


@dataclass(frozen=True)
class Told:
    """One Event as recorded, with the node's state annotation at that moment."""

    reason: str
    type: str
    message: str
    annotation: str | None


def told(h: Harness) -> dict[str, list[Told]]:
    """Record, per node, what every Event said and what the annotation said as it was sent."""
    by_node: dict[str, list[Told]] = {}
    record = h.kube.record_event

    def recording(node: str, *, reason: str, message: str, warning: bool = False, now: float) -> bool:
        annotation = h.kube.nodes[node]["metadata"].get("annotations", {}).get(ANNOTATION_STATE)
        by_node.setdefault(node, []).append(
            Told(reason, "Warning" if warning else "Normal", message, annotation)
        )
        return record(node, reason=reason, message=message, warning=warning, now=now)

    h.kube.record_event = recording  # type: ignore[method-assign]
    return by_node


def reasons(events: list[Told]) -> list[tuple[str, str]]:
    return [(e.reason, e.type) for e in events]


def test_the_main_path_tells_every_transition_with_the_annotation_already_matching() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=1)
    events = told(h)
    run_id = h.start()

    h.pump(run_id)

    assert h.node_states(run_id) == {"linux-0": "succeeded"}
    got = events["linux-0"]
    assert reasons(got) == [
        ("PatchAdmitted", "Normal"),
        ("PatchCordoned", "Normal"),
        ("PatchDrained", "Normal"),
        ("PatchReimaged", "Normal"),
        ("PatchSucceeded", "Normal"),
    ]
    # Not held yet when admitted; from the cordon on, the annotation says the new state.
    assert [e.annotation for e in got] == [None, "draining", "reimaging", "booting", "succeeded"]
    assert all(e.message.startswith(f"run {run_id}: ") for e in got)
    assert got[0].message == f"run {run_id}: budget slot acquired"
    annotations = h.kube.nodes["linux-0"]["metadata"]["annotations"]
    assert ANNOTATION_CORDONED not in annotations and annotations[ANNOTATION_STATE] == "succeeded"


def test_admission_tells_each_node_it_admits_and_each_it_skips() -> None:
    h = Harness({"linux": 3}, nodes_per_pool=3)
    h.kube.nodes["linux-2"]["spec"]["unschedulable"] = True  # somebody else's cordon
    events = told(h)
    run_id = h.start()

    admitted_steps(h)

    assert {n: reasons(e) for n, e in events.items()} == {
        "linux-0": [("PatchAdmitted", "Normal")],
        "linux-1": [("PatchAdmitted", "Normal")],
        "linux-2": [("PatchSkipped", "Normal")],
    }
    assert "cordoned by someone else" in events["linux-2"][0].message
    assert all(e.annotation is None for got in events.values() for e in got)
    assert ANNOTATION_STATE not in h.kube.nodes["linux-2"]["metadata"].get("annotations", {})
    assert h.node_states(run_id)["linux-2"] == "skipped"


def test_a_cancellation_tells_pending_nodes_at_once_and_held_ones_as_they_are_released() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=3)
    h.kube.pods["web/web-1"] = make_pod("web", "web-1", "linux-0")
    h.kube.blocked.add("web/web-1")  # its budget holds linux-0 in its drain
    events = told(h)
    run_id = h.start()
    [first] = admitted_steps(h)
    h.workflow.handle(first)  # linux-0 cordoned, draining; the others wait for the slot
    assert h.node_states(run_id)["linux-0"] == "draining"

    RunService(h.deps).cancel(run_id)

    for name in ("linux-1", "linux-2"):
        assert reasons(events[name]) == [("PatchCancelled", "Normal")]
        assert events[name][0].message == f"run {run_id}: run cancelled before the node started"
        assert events[name][0].annotation is None
    h.pump(run_id)
    assert h.store.get_run(run_id).state == RunState.CANCELLED
    held = events["linux-0"]
    assert reasons(held)[-1] == ("PatchCancelled", "Normal")
    assert held[-1].annotation == "cancelled"  # the uncordon wrote it
    assert h.kube.nodes["linux-0"]["spec"].get("unschedulable") is None
    assert h.node_states(run_id) == {n: "cancelled" for n in ("linux-0", "linux-1", "linux-2")}


def test_a_window_too_short_for_a_node_tells_it_that_it_is_deferred() -> None:
    h = Harness({"linux": 2}, nodes_per_pool=2)
    events = told(h)
    run_id = h.start(deadline=h.clock.now() + 60)  # less than any node takes

    h.pump(run_id)

    assert h.node_states(run_id) == {"linux-0": "deferred", "linux-1": "deferred"}
    for name in ("linux-0", "linux-1"):
        [event] = events[name]
        assert (event.reason, event.type, event.annotation) == ("PatchDeferred", "Normal", None)
        assert event.message == (
            f"run {run_id}: the maintenance window closes before it could finish; left for the next window"
        )


def test_a_drain_that_times_out_under_the_skip_policy_is_told_as_deferred_and_annotated() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=1, pool_linux={"drain": {"timeout": 60, "onTimeout": "skip"}})
    h.kube.pods["web/web-1"] = make_pod("web", "web-1", "linux-0")
    h.kube.blocked.add("web/web-1")
    events = told(h)
    run_id = h.start()

    h.pump(run_id)

    assert h.node_states(run_id) == {"linux-0": "deferred"}
    last = events["linux-0"][-1]
    assert (last.reason, last.type, last.annotation) == ("PatchDeferred", "Warning", "deferred")


def test_a_node_failing_on_its_final_delivery_is_annotated_and_told_as_failed() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=1)
    h.kube.pods["web/web-1"] = make_pod("web", "web-1", "linux-0")
    h.kube.blocked.add("web/web-1")  # holds it cordoned in its drain
    events = told(h)
    run_id = h.start()
    [step] = admitted_steps(h)
    h.workflow.handle(step)
    record = h.store.get_node(run_id, "linux-0")
    assert record.state == NodeState.DRAINING

    def broken(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("a bug in the step")

    h.kube.list_pods_on_node = broken  # type: ignore[method-assign]
    with contextlib.suppress(RuntimeError):
        h.workflow.handle(WorkItem("step", run_id, "linux-0", record.seq), final_attempt=True)

    assert h.node_states(run_id) == {"linux-0": "failed"}
    last = events["linux-0"][-1]
    assert (last.reason, last.type, last.annotation) == ("PatchFailed", "Warning", "failed")


def test_events_for_many_nodes_stop_at_the_first_the_api_server_refuses() -> None:
    kube = FakeKube()
    tried: list[str] = []

    def refusing(node: str, **_kw: Any) -> bool:
        tried.append(node)
        return False

    kube.record_event = refusing  # type: ignore[method-assign]

    record_events(kube, {f"n{i}": "m" for i in range(50)}, reason="PatchCancelled", now=0.0)  # type: ignore[arg-type]

    assert tried == ["n0"]


def test_every_way_out_of_pending_is_one_these_tests_cover() -> None:
    """The table the tests above walk: every transition out of pending is told."""
    told_from_pending = {
        NodeState.ADMITTED: "PatchAdmitted",
        NodeState.SKIPPED: "PatchSkipped",
        NodeState.CANCELLED: "PatchCancelled",
        NodeState.DEFERRED: "PatchDeferred",
    }
    from shared.rollout.model import NODE_TRANSITIONS

    assert set(NODE_TRANSITIONS[NodeState.PENDING]) == set(told_from_pending)

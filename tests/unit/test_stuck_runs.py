"""Runs that cannot get stuck: an unavailable target is admitted without a second slot, a
node our earlier run left cordoned is ours to carry on from, a run that cannot move is
marked stalled, and operators retry or release a failed node."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest

from shared.adapters.kube import ANNOTATION_CORDONED, Node
from shared.errors import NotFoundError
from shared.rollout.budget import PoolObservation, choose_admissions
from shared.rollout.model import NodeState, RunState
from shared.rollout.requests import NodeActionRequest
from shared.rollout.service import NodeActionRefusedError, RunService
from shared.rollout.sweeper import sweep
from tests.fakes import make_pod
from tests.harness import Harness

OPERATOR = NodeActionRequest(by="alice@contoso.com", reason="PDB fixed")


class DisruptionHarness(Harness):
    """Tracks what the budget promises in full: per pool, the most nodes at once that were
    either holding a slot or unavailable in the cluster (NotReady or cordoned), each
    counted once."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.most_unavailable: dict[str, int] = defaultdict(int)

    def _track_budget(self, run_id: str) -> None:
        super()._track_budget(run_id)
        down = {n.name for n in self.store.list_nodes(run_id) if n.state.holds_slot}
        down |= {
            name for name, raw in self.kube.nodes.items() if not Node(raw).ready or Node(raw).unschedulable
        }
        by_pool: dict[str, int] = defaultdict(int)
        for name in down:
            by_pool[name.rsplit("-", 1)[0]] += 1
        for pool, count in by_pool.items():
            self.most_unavailable[pool] = max(self.most_unavailable[pool], count)


def not_ready(h: Harness, name: str) -> None:
    h.kube.nodes[name]["status"]["conditions"] = [{"type": "Ready", "status": "False"}]


def fail_on_drain(h: Harness, node: str) -> None:
    """A PodDisruptionBudget that never lets the node's pod go: the drain times out and the
    node fails, left cordoned (the pool's onTimeout: fail)."""
    h.kube.pods["web/web-1"] = make_pod("web", "web-1", node)
    h.kube.blocked.add("web/web-1")


def unblock(h: Harness) -> None:
    h.kube.blocked.clear()


def stall_harness(**kwargs: Any) -> DisruptionHarness:
    return DisruptionHarness(
        {"linux": 1},
        nodes_per_pool=3,
        maxFailedNodes=3,
        pool_linux={"drain": {"timeout": 60, "onTimeout": "fail"}},
        **kwargs,
    )


def run_failing_on_linux_0(*, nodes_per_pool: int) -> tuple[DisruptionHarness, str]:
    """A harness and the id of a run of linux-0 alone that failed on its drain, which
    is still blocked."""
    h = DisruptionHarness(
        {"linux": 1},
        nodes_per_pool=nodes_per_pool,
        pool_linux={"drain": {"timeout": 60, "onTimeout": "fail"}},
    )
    fail_on_drain(h, "linux-0")
    first = h.start(nodes=["linux-0"])
    h.pump(first)
    assert h.store.get_run(first).state == RunState.FAILED
    return h, first


def test_a_notready_target_with_a_budget_of_one_is_patched_and_the_run_completes() -> None:
    h = DisruptionHarness({"linux": 1}, nodes_per_pool=3)
    not_ready(h, "linux-1")
    run_id = h.start()
    h.pump(run_id)
    assert h.store.get_run(run_id).state == RunState.SUCCEEDED
    assert set(h.node_states(run_id).values()) == {"succeeded"}
    # The NotReady node was counted once, as unavailable, while it was patched.
    assert h.most_unavailable["linux"] == 1
    first = h.store.list_nodes(run_id)[0]
    assert first.name == "linux-1"  # unhealthy first: patching it costs nothing


def test_a_notready_target_is_admitted_even_when_others_fill_the_budget() -> None:
    # Two unavailable targets with a budget of one: both are down already, so patching
    # them disrupts nothing more; the healthy node waits until they are back.
    h = DisruptionHarness({"linux": 1}, nodes_per_pool=3)
    not_ready(h, "linux-0")
    not_ready(h, "linux-2")
    run_id = h.start()
    assert h.node_states(run_id) == {"linux-0": "admitted", "linux-2": "admitted", "linux-1": "pending"}
    h.pump(run_id)
    assert set(h.node_states(run_id).values()) == {"succeeded"}
    assert h.most_unavailable["linux"] == 2  # never more than were down before the run


def test_a_node_an_earlier_failed_run_left_cordoned_is_taken_over_and_patched() -> None:
    h, first = run_failing_on_linux_0(nodes_per_pool=3)
    assert h.kube.nodes["linux-0"]["metadata"]["annotations"][ANNOTATION_CORDONED] == first
    unblock(h)

    second = h.start()
    h.pump(second)
    assert h.store.get_run(second).state == RunState.SUCCEEDED
    assert set(h.node_states(second).values()) == {"succeeded"}
    assert h.most_unavailable["linux"] == 1  # the cordoned node counted once
    node = h.store.get_node(second, "linux-0")
    assert any(
        f"left cordoned by run {first}, taken over by run {second}" in e["reason"] for e in node.history
    )
    assert not h.kube.nodes["linux-0"]["spec"].get("unschedulable")
    assert ANNOTATION_CORDONED not in h.kube.nodes["linux-0"]["metadata"]["annotations"]


def test_a_cordon_naming_a_run_we_do_not_know_is_someone_elses() -> None:
    # Our annotation's prefix is not proof: another installation, or a hand-written copy,
    # must not be taken over. (Guards the take-over above from reaching too far.)
    h = DisruptionHarness({"linux": 2}, nodes_per_pool=2)
    h.kube.nodes["linux-0"]["spec"]["unschedulable"] = True
    h.kube.nodes["linux-0"]["metadata"]["annotations"][ANNOTATION_CORDONED] = "0123456789abcdef"
    run_id = h.start()
    h.pump(run_id)
    assert h.node_states(run_id) == {"linux-0": "skipped", "linux-1": "succeeded"}
    assert h.kube.nodes["linux-0"]["spec"]["unschedulable"] is True


def blocked_run(h: Harness) -> str:
    """linux-0 fails its drain and stays cordoned; with a budget of 1 it fills the pool's
    budget, so the two other nodes can never start."""
    fail_on_drain(h, "linux-0")
    run_id = h.start()
    h.pump(run_id)
    assert h.node_states(run_id) == {"linux-0": "failed", "linux-1": "pending", "linux-2": "pending"}
    unblock(h)
    return run_id


def test_a_run_that_cannot_move_for_stall_after_is_marked_stalled_with_what_blocks_it() -> None:
    h = stall_harness()
    run_id = blocked_run(h)
    stall = h.config.workflow.stall_after.total_seconds()
    sweep(h.deps)  # the idle clock starts
    h.clock.advance(stall - 1)
    assert sweep(h.deps).stalled == []
    run = h.store.get_run(run_id)
    assert not run.stalled_at and run.state == RunState.RUNNING

    h.clock.advance(2)
    assert sweep(h.deps).stalled == [run_id]
    view = RunService(h.deps).get(run_id)
    assert view["stalled"]["since"]
    assert "1 unavailable otherwise: linux-0" in view["stalled"]["reason"]
    assert "stallAfter 600s" in view["stalled"]["reason"]
    stalled_events = [e for e in h.kube.events if e[1] == "PatchRunStalled"]
    assert [e[0] for e in stalled_events] == ["linux-1"]  # the node its pool would start next
    assert "linux-0" in stalled_events[0][2]
    h.clock.advance(stall)
    assert sweep(h.deps).stalled == []  # marked once, not on every sweep
    assert len([e for e in h.kube.events if e[1] == "PatchRunStalled"]) == 1


def stalled_run() -> tuple[DisruptionHarness, str]:
    """A harness and a run the sweeper has marked stalled behind its failed linux-0."""
    h = stall_harness()
    run_id = blocked_run(h)
    sweep(h.deps)
    h.clock.advance(h.config.workflow.stall_after.total_seconds() + 1)
    sweep(h.deps)
    assert h.store.get_run(run_id).stalled_at
    return h, run_id


def test_release_uncordons_the_failed_node_records_who_asked_and_the_run_moves_on() -> None:
    h, run_id = stalled_run()

    answer = RunService(h.deps).release_node(run_id, "linux-0", OPERATOR)
    assert answer["state"] == "released"
    assert not h.kube.nodes["linux-0"]["spec"].get("unschedulable")
    node = h.store.get_node(run_id, "linux-0")
    assert node.history[-1]["by"] == "alice@contoso.com"
    assert "released by alice@contoso.com: PDB fixed" in node.reason
    assert any(e[:2] == ("linux-0", "PatchReleased") for e in h.kube.events)
    h.pump(run_id)
    run = h.store.get_run(run_id)
    assert h.node_states(run_id) == {"linux-0": "released", "linux-1": "succeeded", "linux-2": "succeeded"}
    assert run.state == RunState.SUCCEEDED and "1 released" in run.state_reason
    assert not run.stalled_at  # moving again
    assert h.most_unavailable["linux"] == 1


def test_retry_takes_the_failed_node_up_again_within_its_budget() -> None:
    h = stall_harness()
    run_id = blocked_run(h)
    answer = RunService(h.deps).retry_node(run_id, "linux-0", OPERATOR)
    assert answer == {"id": run_id, "node": "linux-0", "state": "pending"}
    node = h.store.get_node(run_id, "linux-0")
    assert node.history[-1]["by"] == "alice@contoso.com" and node.history[-1]["to"] == "pending"
    assert any(e[:2] == ("linux-0", "PatchRetried") and "alice@contoso.com" in e[2] for e in h.kube.events)
    h.pump(run_id)
    assert h.store.get_run(run_id).state == RunState.SUCCEEDED
    assert set(h.node_states(run_id).values()) == {"succeeded"}
    # linux-0 was retried while still cordoned: counted once, and nothing beside it.
    assert h.most_unavailable["linux"] == 1
    reimaged = [c for c in h.compute.calls if c.startswith(("reimage", "manualupgrade"))]
    assert len(reimaged) == 3


def test_retry_of_a_node_whose_run_has_ended_starts_a_run_for_it() -> None:
    h, first = run_failing_on_linux_0(nodes_per_pool=2)
    unblock(h)
    answer = RunService(h.deps).retry_node(first, "linux-0", OPERATOR)
    second = answer["retriedIn"]
    assert answer["state"] == "failed"  # the ended run's record is left as it was
    h.pump(second)
    assert h.node_states(second) == {"linux-0": "succeeded"}
    assert "retry of linux-0 from run" in h.store.get_run(second).reason
    assert not h.kube.nodes["linux-0"]["spec"].get("unschedulable")


@pytest.mark.parametrize("action", ["retry_node", "release_node"])
def test_only_a_failed_node_can_be_retried_or_released(action: str) -> None:
    h = stall_harness()
    run_id = blocked_run(h)
    service = RunService(h.deps)
    with pytest.raises(NodeActionRefusedError, match=r"linux-1 of run \w+ is pending; only a failed node"):
        getattr(service, action)(run_id, "linux-1", OPERATOR)
    with pytest.raises(NotFoundError):
        getattr(service, action)(run_id, "ghost", OPERATOR)
    with pytest.raises(NotFoundError):
        getattr(service, action)("0000000000000000", "linux-0", OPERATOR)
    assert h.store.get_node(run_id, "linux-0").state == NodeState.FAILED


def test_release_leaves_a_node_someone_cordoned_since_alone() -> None:
    h = stall_harness()
    run_id = blocked_run(h)
    annotations = h.kube.nodes["linux-0"]["metadata"]["annotations"]
    annotations[ANNOTATION_CORDONED] = "someone-else"
    with pytest.raises(NodeActionRefusedError, match="cordoned by run someone-else, not by run"):
        RunService(h.deps).release_node(run_id, "linux-0", OPERATOR)
    assert h.kube.nodes["linux-0"]["spec"]["unschedulable"] is True
    assert h.store.get_node(run_id, "linux-0").state == NodeState.FAILED


def test_a_stalled_run_that_is_cancelled_is_no_longer_shown_stalled() -> None:
    h, run_id = stalled_run()
    RunService(h.deps).cancel(run_id)
    h.pump(run_id)
    view = RunService(h.deps).get(run_id)
    assert view["state"] == "cancelled" and view["stalled"] is None


@pytest.mark.parametrize(
    ("pending", "down", "cluster_limit", "admitted"),
    [
        # A healthy target takes the slot; the unavailable one needs none.
        ([("a", "p"), ("b", "p")], {"a"}, 10, ["a"]),
        ([("b", "p"), ("a", "p")], {"a"}, 10, ["a"]),
        # Both unavailable: both admitted, though the budget (1) is over-full already.
        ([("a", "p"), ("b", "p"), ("c", "p")], {"a", "b"}, 10, ["a", "b"]),
        # The cluster's limit of nodes at once still holds for them: it bounds our work.
        ([("a", "p"), ("b", "p")], {"a", "b"}, 1, ["a"]),
        # Nothing unavailable: one slot, one node.
        ([("a", "p"), ("b", "p")], set(), 10, ["a"]),
    ],
)
def test_choose_admissions_counts_an_unavailable_target_once(
    pending: list[tuple[str, str]], down: set[str], cluster_limit: int, admitted: list[str]
) -> None:
    decision = choose_admissions(
        pending=pending,
        held={},
        max_unavailable={"p": 1},
        observed={"p": PoolObservation(frozenset(down))},
        max_concurrent_nodes=cluster_limit,
    )
    assert decision.admit == admitted

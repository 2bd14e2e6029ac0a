"""The reimage write under crashes, ambiguous answers and a world that moved.

A node must never be reimaged twice in a run, nor with a pod still on it, and no node
may be lost: each test breaks one of those at the moment between the write-ahead claim
and the ARM call, or in the call's answer, and then lets redelivery and the sweeper do
what they do in production.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from shared.adapters.kube import EvictionResult
from shared.adapters.workqueue import WorkItem
from shared.errors import ConcurrencyError, OutcomeUnknownError, TemporaryError
from shared.rollout.model import NodeState
from tests.fakes import make_pod
from tests.harness import Harness, admitted_steps, lead_while_others_drain


class WorkerKilled(BaseException):
    """The process dies: nothing of it runs on (no except, no finally that does I/O)."""


WRITES = ("begin_reimage", "begin_upgrade_to_latest_model")


def _scarce_writes(h: Harness) -> None:
    # One write in the bucket and a slow refill: the nodes that drain together share one.
    h.config = h.config.model_copy(
        update={"workflow": h.config.workflow.model_copy(update={"write_burst": 1, "writes_per_minute": 0.5})}
    )
    h.deps.config = h.config


def _on_latest_model(h: Harness) -> None:
    """Instances already on the scale set's model: the op is ``reimage``, and "on the
    latest model with the expected image" is true before anything runs."""
    for iid in h.instance_to_node:
        h.compute.instance(iid).update(latest=True, image=h.compute.model_image)


def _wrap_writes(h: Harness, around: Callable[[Callable[..., str], Any, list[str]], str]) -> None:
    for name in WRITES:
        real = getattr(h.compute, name)
        setattr(h.compute, name, lambda ref, ids, real=real: around(real, ref, ids))


def _accepted_per_instance(h: Harness) -> Counter[str]:
    """How many operations ARM accepted for each instance (what reimages it)."""
    return Counter(i for op in h.compute.operations.values() for i in op["ids"])


def _settle(h: Harness, run_id: str) -> None:
    """Pump to the end; a killed worker's message comes back once its visibility timeout
    (here: its lease) has passed, and the sweeper runs every 5 minutes."""
    lease = h.config.workflow.lease_duration.total_seconds()
    h.sweep_every = 300.0
    for _ in range(20):
        try:
            h.pump(run_id, max_steps=20000)
            return
        except WorkerKilled:
            assert h.delivering is not None
            h.pending.append((h.clock.now() + lease + 1, h.delivering))
    raise AssertionError("kept dying")


@pytest.mark.parametrize("op", ["reimage", "manualupgrade"])
@pytest.mark.parametrize("kill_at", ["single", "batch"])
def test_a_leader_killed_between_claim_and_write_reimages_every_node_exactly_once(
    op: str, kill_at: str
) -> None:
    h = Harness({"linux": 3}, nodes_per_pool=6)
    _scarce_writes(h)
    if op == "reimage":
        _on_latest_model(h)
    killed: list[list[str]] = []

    def die_before_sending(real: Callable[..., str], ref: Any, ids: list[str]) -> str:
        if not killed and (kill_at == "single" or len(ids) > 1):
            killed.append(ids)
            raise WorkerKilled
        return real(ref, ids)

    _wrap_writes(h, die_before_sending)
    run_id = h.start()
    _settle(h, run_id)
    assert killed, "the kill never happened"
    assert set(h.node_states(run_id).values()) == {"succeeded"}, {
        n.name: n.reason for n in h.store.list_nodes(run_id)
    }
    assert _accepted_per_instance(h) == Counter(list(h.instance_to_node)), h.compute.operations
    for iid in h.instance_to_node:
        assert h.compute.instance(iid)["disk"] == f"disk-{iid}-1"  # one new OS disk each


@pytest.mark.parametrize(
    "answer",
    [
        ConcurrencyError("409 Conflict: an operation is already running on the instance"),
        OutcomeUnknownError("500 InternalServerError (the request may have been accepted)"),
        OutcomeUnknownError("ServiceResponseTimeoutError (the request may have been accepted)"),
    ],
    ids=["409", "500", "timeout"],
)
@pytest.mark.parametrize("op", ["reimage", "manualupgrade"])
def test_a_write_accepted_but_answered_ambiguously_reimages_each_node_once(
    answer: Exception, op: str
) -> None:
    h = Harness({"linux": 3}, nodes_per_pool=6)
    _scarce_writes(h)
    if op == "reimage":
        _on_latest_model(h)
    answered: list[list[str]] = []

    def accept_then_lose_the_answer(real: Callable[..., str], ref: Any, ids: list[str]) -> str:
        token = real(ref, ids)  # ARM took it: the operation runs
        if len(answered) < 2:
            answered.append(ids)
            raise answer
        return token

    _wrap_writes(h, accept_then_lose_the_answer)
    run_id = h.start()
    _settle(h, run_id)
    assert len(answered) == 2
    assert set(h.node_states(run_id).values()) == {"succeeded"}, {
        n.name: n.reason for n in h.store.list_nodes(run_id)
    }
    assert _accepted_per_instance(h) == Counter(list(h.instance_to_node)), h.compute.operations


@pytest.mark.parametrize(
    "refusal",
    [TemporaryError("429 TooManyRequests", delay=5.0), ConcurrencyError("409 Conflict")],
    ids=["429", "409"],
)
def test_a_write_refused_before_anything_started_is_sent_again_and_reimages_once(refusal: Exception) -> None:
    # A 429 says nothing started: released at once. A 409 that was not ours (another
    # operation on the scale set): kept, looked at, found untouched, and sent again.
    h = Harness({"linux": 1}, nodes_per_pool=2)
    refused: list[list[str]] = []

    def refuse_once(real: Callable[..., str], ref: Any, ids: list[str]) -> str:
        if not refused:
            refused.append(ids)
            raise refusal
        return real(ref, ids)

    _wrap_writes(h, refuse_once)
    run_id = h.start()
    _settle(h, run_id)
    assert refused
    assert set(h.node_states(run_id).values()) == {"succeeded"}
    assert _accepted_per_instance(h) == Counter(list(h.instance_to_node))


def _bound_pods_at_write(h: Harness) -> list[tuple[str, list[str]]]:
    """Wrap the writes: record, for each instance written, the non-DaemonSet pods bound to
    its node at that moment."""
    seen: list[tuple[str, list[str]]] = []

    def look(real: Callable[..., str], ref: Any, ids: list[str]) -> str:
        for iid in ids:
            node = h.instance_to_node[iid]
            pods = [
                key
                for key, p in h.kube.pods.items()
                if p["spec"].get("nodeName") == node
                and not any(o.get("kind") == "DaemonSet" for o in p["metadata"].get("ownerReferences", []))
            ]
            seen.append((node, pods))
        return real(ref, ids)

    _wrap_writes(h, look)
    return seen


def test_a_pod_that_lands_after_the_drain_is_evicted_before_the_write() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=1)
    written = _bound_pods_at_write(h)
    real_model_image = h.compute.get_model_image
    landed: list[str] = []

    def pod_lands(ref: Any) -> str:
        # Between "drained" and the write: a pod with a nodeName set lands on it.
        if not landed:
            pod = make_pod("default", "late", "linux-0")
            h.kube.pods["default/late"] = pod
            landed.append("default/late")
        return real_model_image(ref)

    h.compute.get_model_image = pod_lands  # type: ignore[method-assign]
    run_id = h.start()
    _settle(h, run_id)
    assert landed
    assert written and all(not pods for _node, pods in written), written
    node = h.store.get_node(run_id, "linux-0")
    assert node.state == NodeState.SUCCEEDED
    assert any(e["from"] == "reimaging" and e["to"] == "draining" for e in node.history), node.history
    assert "default/late" not in h.kube.pods  # evicted by the second drain


def test_a_node_uncordoned_after_its_drain_is_not_reimaged_and_stays_uncordoned() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=1)
    written = _bound_pods_at_write(h)
    real_model_image = h.compute.get_model_image

    def uncordoned_by_a_person(ref: Any) -> str:
        h.kube.nodes["linux-0"]["spec"].pop("unschedulable", None)
        return real_model_image(ref)

    h.compute.get_model_image = uncordoned_by_a_person  # type: ignore[method-assign]
    run_id = h.start()
    _settle(h, run_id)
    assert written == []
    node = h.store.get_node(run_id, "linux-0")
    assert node.state == NodeState.FAILED
    assert "uncordoned by someone else" in node.reason and "not reimaged" in node.reason
    assert not h.kube.nodes["linux-0"]["spec"].get("unschedulable")


def test_a_batch_peer_given_a_pod_while_the_leader_gathers_leaves_the_batch() -> None:
    h = Harness({"linux": 3}, nodes_per_pool=3)
    run_id = h.start()
    first, *others = admitted_steps(h)
    pacer = h.store.get_pacer(run_id, h.store.get_node(run_id, first.node).scale_set_id)
    pacer.tokens, pacer.updated = 2.0, h.clock.now()  # writes scarce: the first gathers
    h.store.commit(pacer)
    written = _bound_pods_at_write(h)
    peer = next(o.node for o in others)

    def pod_lands_on_a_drained_peer() -> None:
        h.kube.pods["default/late"] = make_pod("default", "late", peer)

    lead_while_others_drain(h, first, others, then=pod_lands_on_a_drained_peer)
    assert written, "the leader wrote nothing"
    assert all(not pods for _node, pods in written), written
    assert peer not in {node for node, _ in written}
    assert h.store.get_node(run_id, peer).state == NodeState.DRAINING
    _settle(h, run_id)
    assert set(h.node_states(run_id).values()) == {"succeeded"}
    assert _accepted_per_instance(h) == Counter(list(h.instance_to_node))


def test_a_worker_whose_lease_was_taken_before_the_write_does_not_write() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=1)
    written = _bound_pods_at_write(h)
    run_id = h.start()
    real_list = h.kube.list_nodes
    taken: list[str] = []

    def lease_taken_meanwhile(*, label_selector: str | None = None) -> Any:
        # The pre-write look took so long that the lease ended and another worker took it.
        if label_selector and not taken:
            h.clock.advance(h.config.workflow.lease_duration.total_seconds())
            other = h.store.get_node(run_id, "linux-0")
            other.lease_owner, other.lease_until = "other-worker", h.clock.now() + 60
            h.store.commit(other)
            taken.append("linux-0")
        return real_list(label_selector=label_selector)

    h.kube.list_nodes = lease_taken_meanwhile  # type: ignore[method-assign]
    for item, _ in h.queue.take():
        outcome = h.workflow.handle(item)
        if item.kind == "step":
            break
    assert taken
    assert outcome == "lease lost"
    assert written == []


def test_a_transient_error_after_a_long_budget_wait_does_not_fail_the_node() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=1, pool_linux={"drain": {"timeout": 3600}})
    h.kube.pods["default/web"] = make_pod("default", "web", "linux-0")
    refusals = [10]  # more refused evictions than maxTransientRetries (4)
    real_evict = h.kube.evict

    def evict(pod: Any, *, grace_period_seconds: int | None = None) -> EvictionResult:
        if refusals[0] > 0:
            refusals[0] -= 1
            if refusals[0] == 0:
                h.kube.fail_next.append(TemporaryError("503 the API server is restarting"))
            return EvictionResult(evicted=False, blocked_reason="PodDisruptionBudget web allows 0")
        return real_evict(pod, grace_period_seconds=grace_period_seconds)

    h.kube.evict = evict  # type: ignore[method-assign]
    run_id = h.start()
    _settle(h, run_id)
    node = h.store.get_node(run_id, "linux-0")
    assert refusals == [0]
    assert node.state == NodeState.SUCCEEDED, node.reason


def test_a_node_started_in_place_by_a_worker_that_died_is_taken_over_by_its_backup_copy() -> None:
    # linux-0's worker admits linux-1 and starts it itself; it dies in that step. The
    # backup copy it queued must find linux-1's lease ended, not "busy", or the node
    # would wait for the sweeper (which this test does not run).
    h = Harness({"linux": 1}, nodes_per_pool=2)
    send = h.queue.send

    def send_then_time_passes(item: WorkItem, *, delay: float = 0.0) -> None:
        send(item, delay=delay)
        if item.kind == "step" and item.node == "linux-1" and delay > 0:
            h._collect()  # its visibility counts from now
            h.clock.advance(0.5)  # the step it starts takes its lease a moment later

    h.queue.send = send_then_time_passes  # type: ignore[method-assign]
    real_cordon = h.kube.cordon
    died: list[str] = []

    def cordon(name: str, **kwargs: Any) -> Any:
        if name == "linux-1" and not died:
            died.append(name)
            raise WorkerKilled
        return real_cordon(name, **kwargs)

    h.kube.cordon = cordon  # type: ignore[method-assign]
    run_id = h.start()
    with pytest.raises(WorkerKilled):
        h.pump(run_id)
    assert died
    h.pump(run_id)
    assert h.node_states(run_id) == {"linux-0": "succeeded", "linux-1": "succeeded"}

"""The step engine and its steps, with in-memory collaborators: outcomes, budgets, retries."""

from __future__ import annotations

import pytest

from shared.adapters.kube import EvictionResult
from shared.adapters.workqueue import WorkItem
from shared.errors import NotFoundError, PermanentError
from shared.rollout.model import NodeState, RunState
from shared.rollout.requests import StartRequest
from shared.rollout.service import RunConflictError, RunService
from shared.rollout.sweeper import sweep
from tests.fakes import make_pod, transient
from tests.harness import Harness, admitted_steps, lead_while_others_drain


def test_every_node_is_patched_and_uncordoned_within_the_pool_budget() -> None:
    h = Harness({"linux": 1, "other": 2}, nodes_per_pool=4)
    run_id = h.start()
    h.pump(run_id)
    assert set(h.node_states(run_id).values()) == {"succeeded"}
    assert h.store.get_run(run_id).state == RunState.SUCCEEDED
    assert h.max_disrupted == {"linux": 1, "other": 2}
    for node in h.kube.nodes.values():
        assert not node["spec"].get("unschedulable")
    reimages = [c for c in h.compute.calls if c.startswith(("reimage", "manualupgrade"))]
    assert len(reimages) == 8
    assert h.store.active_run("test") is None


def test_cluster_limit_caps_nodes_in_flight_across_pools() -> None:
    h = Harness({"a": 3, "b": 3}, nodes_per_pool=3, maxConcurrentNodes=2)
    run_id = h.start()
    held_max = 0
    original = h._track_budget

    def track(rid: str) -> None:
        nonlocal held_max
        original(rid)
        held_max = max(held_max, sum(1 for n in h.store.list_nodes(rid) if n.state.holds_slot))

    h._track_budget = track  # type: ignore[method-assign]
    h.pump(run_id)
    assert held_max == 2
    assert set(h.node_states(run_id).values()) == {"succeeded"}


def test_duplicated_messages_do_no_harm() -> None:
    h = Harness({"linux": 2}, nodes_per_pool=4)
    h.duplicate_every_message = True
    run_id = h.start()
    h.pump(run_id)
    assert set(h.node_states(run_id).values()) == {"succeeded"}
    assert h.max_disrupted["linux"] <= 2
    reimages = [c for c in h.compute.calls if c.startswith(("reimage", "manualupgrade"))]
    assert len(reimages) == 4  # exactly one per node
    assert "stale" in h.outcomes


def test_a_node_cordoned_by_someone_else_is_skipped_and_stays_cordoned() -> None:
    h = Harness({"linux": 2}, nodes_per_pool=2)
    h.kube.nodes["linux-0"]["spec"]["unschedulable"] = True
    run_id = h.start()
    h.pump(run_id)
    states = h.node_states(run_id)
    assert states == {"linux-0": "skipped", "linux-1": "succeeded"}
    assert h.kube.nodes["linux-0"]["spec"]["unschedulable"] is True
    assert "someone else" in h.store.get_node(run_id, "linux-0").reason


def test_a_node_cordoned_by_someone_else_counts_against_the_budget() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=3)
    h.kube.nodes["linux-2"]["spec"]["unschedulable"] = True
    run_id = h.start()
    h.pump(run_id)
    assert h.node_states(run_id) == {"linux-2": "skipped", "linux-0": "pending", "linux-1": "pending"}
    reason = h.store.get_run(run_id).waiting["linux"]
    assert "budget of 1" in reason and "1 unavailable otherwise" in reason
    h.kube.nodes["linux-2"]["spec"].pop("unschedulable")  # its owner uncordons it
    h.workflow.admit(run_id)
    h.pump(run_id)
    assert h.node_states(run_id) == {"linux-2": "skipped", "linux-0": "succeeded", "linux-1": "succeeded"}


def test_an_opted_out_node_is_skipped_untouched() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=2)
    h.kube.nodes["linux-1"]["metadata"]["labels"]["vmss-node-patcher.io/opt-out"] = "true"
    run_id = h.start()
    h.pump(run_id)
    assert h.node_states(run_id)["linux-1"] == "skipped"
    assert not h.kube.nodes["linux-1"]["spec"].get("unschedulable")


@pytest.mark.parametrize(
    ("policy", "state", "cordoned"),
    [("fail", "failed", True), ("skip", "deferred", False)],
)
def test_a_budget_that_never_allows_eviction_ends_by_the_pool_policy(
    policy: str, state: str, cordoned: bool
) -> None:
    h = Harness({"linux": 1}, nodes_per_pool=1, pool_linux={"drain": {"timeout": 60, "onTimeout": policy}})
    h.kube.pods["web/web-1"] = make_pod("web", "web-1", "linux-0")
    h.kube.blocked.add("web/web-1")
    run_id = h.start()
    h.pump(run_id)
    node = h.store.get_node(run_id, "linux-0")
    assert str(node.state) == state
    assert "timed out" in node.reason and "web/web-1" in node.reason
    assert bool(h.kube.nodes["linux-0"]["spec"].get("unschedulable")) is cordoned
    assert not any(c.startswith("reimage") for c in h.compute.calls)


@pytest.mark.parametrize(
    ("pod_kwargs", "drain_options", "expected"),
    [
        ({"empty_dir": True}, {}, "failed"),
        ({"empty_dir": True}, {"deleteEmptyDirData": True}, "succeeded"),
        ({"owner_kind": None}, {}, "failed"),
        ({"owner_kind": None}, {"force": True}, "succeeded"),
        ({"owner_kind": None, "phase": "Succeeded"}, {}, "succeeded"),
        ({"mirror": True, "owner_kind": "Node"}, {}, "succeeded"),
    ],
)
def test_drain_refuses_exactly_what_kubectl_refuses(
    pod_kwargs: dict, drain_options: dict, expected: str
) -> None:
    h = Harness({"linux": 1}, nodes_per_pool=1, pool_linux={"drain": drain_options})
    h.kube.pods["ns/p"] = make_pod("ns", "p", "linux-0", **pod_kwargs)
    run_id = h.start()
    h.pump(run_id)
    assert h.node_states(run_id)["linux-0"] == expected


def test_daemonset_pods_are_not_evicted() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=1)
    h.kube.pods["kube-system/agent"] = make_pod("kube-system", "agent", "linux-0", owner_kind="DaemonSet")
    h.kube.daemonsets.add("kube-system/agent-owner")
    run_id = h.start()
    h.pump(run_id)
    assert h.node_states(run_id)["linux-0"] == "succeeded"
    assert not any(c.startswith("evict kube-system") for c in h.kube.calls)


def test_a_failed_reimage_is_retried_then_succeeds() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=1)
    h.compute.fail_lro = 1
    run_id = h.start()
    h.pump(run_id)
    node = h.store.get_node(run_id, "linux-0")
    assert node.state == NodeState.SUCCEEDED
    assert node.reimage_attempts == 1
    assert any("failed (InternalExecutionError" in step["reason"] for step in node.history)


def test_a_reimage_that_always_fails_fails_the_node_left_cordoned() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=1)
    h.compute.fail_lro = 5
    run_id = h.start()
    h.pump(run_id)
    node = h.store.get_node(run_id, "linux-0")
    assert node.state == NodeState.FAILED
    assert "failed 2 times" in node.reason
    assert h.kube.nodes["linux-0"]["spec"]["unschedulable"] is True
    assert h.store.get_run(run_id).state == RunState.FAILED


def test_transient_errors_are_retried_with_backoff() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=1)
    h.kube.fail_next = [transient("503 ServiceUnavailable"), transient("429", delay=30.0)]
    run_id = h.start()
    h.pump(run_id)
    assert h.node_states(run_id)["linux-0"] == "succeeded"


def test_persistent_transient_errors_fail_the_node_with_the_error() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=1)
    h.compute.fail_next = [transient("500 InternalServerError")] * 20
    run_id = h.start()
    h.pump(run_id)
    node = h.store.get_node(run_id, "linux-0")
    assert node.state == NodeState.FAILED
    assert "gave up after 5 attempts" in node.reason and "500" in node.reason


def test_permanent_errors_fail_at_once() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=1)
    h.compute.fail_next = [PermanentError("403 AuthorizationFailed")]
    run_id = h.start()
    h.pump(run_id)
    assert "AuthorizationFailed" in h.store.get_node(run_id, "linux-0").reason


def test_circuit_breaker_stops_new_nodes_after_max_failed() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=4, maxFailedNodes=1)
    h.compute.fail_lro = 2  # the first node fails both attempts
    run_id = h.start()
    h.pump(run_id)
    states = h.node_states(run_id)
    assert list(states.values()).count("failed") == 1
    assert list(states.values()).count("pending") == 3
    run = h.store.get_run(run_id)
    assert run.state == RunState.FAILED and "maxFailedNodes" in run.state_reason
    assert h.store.active_run("test") is None


def test_cancel_uncordons_nodes_not_yet_reimaged_and_cancels_pending() -> None:
    h = Harness({"linux": 2}, nodes_per_pool=4)
    h.kube.pods["web/slow"] = make_pod("web", "slow", "linux-0")
    h.kube.blocked.add("web/slow")
    run_id = h.start()
    # Let the first two nodes start, then cancel while linux-0 is stuck draining.
    for _ in range(8):
        h._collect()
        if h.pending:
            h.pending.sort(key=lambda p: p[0])
            h.outcomes.append(h.workflow.handle(h.pending.pop(0)[1]))
    RunService(h.deps).cancel(run_id)
    h.kube.blocked.clear()
    h.pump(run_id)
    states = h.node_states(run_id)
    assert states["linux-0"] == "cancelled"
    assert states["linux-2"] == "cancelled" and states["linux-3"] == "cancelled"
    for node in h.kube.nodes.values():
        assert not node["spec"].get("unschedulable"), node["metadata"]["name"]
    assert h.store.get_run(run_id).state == RunState.CANCELLED
    assert h.store.active_run("test") is None


def test_pause_stops_admissions_and_resume_continues() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=3)
    run_id = h.start()  # admits the first node at once
    RunService(h.deps).pause(run_id)
    h.pump(run_id)
    assert sorted(h.node_states(run_id).values()) == ["pending", "pending", "succeeded"]
    RunService(h.deps).resume(run_id)
    h.pump(run_id)
    assert set(h.node_states(run_id).values()) == {"succeeded"}


def test_a_second_run_on_a_busy_cluster_is_refused() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=2)
    first = h.start()
    with pytest.raises(RunConflictError) as err:
        h.start()
    assert err.value.active_run == first


def test_a_stale_message_is_dropped_after_reading_only_its_node() -> None:
    # Most deliveries in a big rollout are such copies; each costs one read, not two.
    h = Harness({"linux": 1}, nodes_per_pool=1)
    run_id = h.start()
    h.pump(run_id)
    runs_read = []
    read_run = h.store.get_run
    h.store.get_run = lambda run: runs_read.append(run) or read_run(run)  # type: ignore[method-assign]
    assert h.workflow.handle(WorkItem("step", run_id, "linux-0", 1)) == "stale"
    assert runs_read == []


def test_the_sweeper_resumes_a_node_whose_message_was_lost() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=1)
    run_id = h.start()  # admits linux-0
    h._collect()
    h.pending.clear()  # the step message for linux-0 is lost
    h.clock.advance(601)
    report = sweep(h.deps)
    assert report.resumed == [f"{run_id}/linux-0"]
    h.pump(run_id)
    assert h.node_states(run_id)["linux-0"] == "succeeded"


def test_the_sweeper_asks_for_an_admission_only_when_a_slot_may_be_free() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=3)
    run_id = h.start()  # admits linux-0: the pool's budget of 1 is full
    h.queue.take()
    assert sweep(h.deps).admitted == []
    assert h.queue.take() == []
    # A slot freed without an admission after it (say, that worker died right there).
    node = h.store.get_node(run_id, "linux-0")
    for state in (NodeState.DRAINING, NodeState.REIMAGING, NodeState.BOOTING, NodeState.SUCCEEDED):
        node.move_to(state, reason="test", at="now")
    h.store.commit(node)
    assert sweep(h.deps).admitted == [run_id]
    assert h.queue.take() == [(WorkItem("admit", run_id), 0.0)]


def test_a_crash_after_the_reimage_request_is_recovered_without_a_second_reimage() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=1)
    original = h.compute.begin_upgrade_to_latest_model

    def crash_after(*args, **kwargs):  # type: ignore[no-untyped-def]
        original(*args, **kwargs)
        raise RuntimeError("worker killed after ARM accepted the request")

    h.compute.begin_upgrade_to_latest_model = crash_after  # type: ignore[method-assign]
    run_id = h.start()
    with pytest.raises(RuntimeError):
        h.pump(run_id)
    h.compute.begin_upgrade_to_latest_model = original  # type: ignore[method-assign]
    # The queue redelivers the same message; the lease was released with the error.
    h.pending.append(
        (h.clock.now(), WorkItem("step", run_id, "linux-0", h.store.get_node(run_id, "linux-0").seq))
    )
    h.pump(run_id)
    node = h.store.get_node(run_id, "linux-0")
    assert node.state == NodeState.SUCCEEDED
    assert len([c for c in h.compute.calls if c.startswith("manualupgrade")]) == 1


def test_unknown_runs_and_nodes_are_dropped_with_a_log() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=1)
    assert h.workflow.handle(WorkItem("step", "nope", "x", 0)) == "unknown"
    with pytest.raises(NotFoundError):
        h.workflow.handle(WorkItem("admit", "nope"))


def test_a_start_request_is_validated() -> None:
    from shared.errors import ValidationError

    for body in ([], {"cluster": 3}, {"cluster": "test", "pools": "linux"}, {"cluster": "test", "extra": 1}):
        with pytest.raises(ValidationError):
            StartRequest.from_json(body)
    h = Harness({"linux": 1}, nodes_per_pool=1)
    with pytest.raises(ValidationError, match="unknown pools"):
        RunService(h.deps).start(StartRequest(cluster="test", reason="x", pools=["nope"]))


def test_nodes_ready_together_share_one_write_when_the_scale_set_limit_bites() -> None:
    h = Harness({"linux": 4}, nodes_per_pool=4)
    h.config = h.config.model_copy(
        update={"workflow": h.config.workflow.model_copy(update={"write_burst": 1, "writes_per_minute": 0.5})}
    )
    h.deps.config = h.config
    run_id = h.start()
    h.pump(run_id)
    assert set(h.node_states(run_id).values()) == {"succeeded"}
    writes = [c for c in h.compute.calls if c.startswith("manualupgrade")]
    assert len(writes) < 4, writes  # the first used the burst; the rest were batched
    assert sum(c.count("'linux") for c in writes) == 4  # every instance exactly once


def test_write_pacer_refills_at_the_configured_rate() -> None:
    from shared.rollout.budget import WritePacer

    pacer = WritePacer.load(None, burst=2, per_minute=6, now=0.0)
    assert pacer.take(0.0) == 0.0 and pacer.take(0.0) == 0.0
    assert pacer.take(0.0) == pytest.approx(10.0)  # one token every 10 s
    assert pacer.take(5.0) == pytest.approx(5.0)
    assert pacer.take(10.0) == 0.0
    restored = WritePacer.load(pacer.state(), burst=2, per_minute=6, now=99.0)
    assert restored.take(10.0) == pytest.approx(10.0)


def test_the_sweeper_leaves_a_node_whose_message_is_not_yet_due() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=1)
    run_id = h.start()
    h._collect()
    h.workflow.handle(h.pending.pop(0)[1])  # admit; the step message is queued
    node = h.store.get_node(run_id, "linux-0")
    node.next_due = h.clock.now() + 900  # e.g. a long back-off or a queue backlog
    h.store.commit(node)
    h.clock.advance(601)
    assert sweep(h.deps).resumed == []
    h.clock.advance(900)
    assert sweep(h.deps).resumed == [f"{run_id}/linux-0"]


def test_the_drain_watches_its_evictions_end_and_moves_on_in_the_same_invocation() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=1)
    h.kube.pods["web/web-1"] = make_pod("web", "web-1", "linux-0")
    run_id = h.start()
    admitted = _first_step(h)
    h.workflow.handle(admitted)
    node = h.store.get_node(run_id, "linux-0")
    # cordon -> drain (evict, watch them go) -> reimage started: one delivery, no re-check.
    assert node.state == NodeState.REIMAGING and node.reimage_token
    assert "wait_for_pods_gone linux-0" in h.kube.calls
    assert [c for c in h.kube.calls if c.startswith("wait_")] == ["wait_for_pods_gone linux-0"]


def test_a_pod_still_terminating_after_the_inline_wait_is_looked_at_again_later() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=1)
    h.kube.pods["web/web-1"] = make_pod("web", "web-1", "linux-0")
    h.kube.wait_for_pods_gone = lambda node, uids, *, timeout: False  # type: ignore[method-assign]
    h.kube.evict = lambda pod, **_: EvictionResult(evicted=True)  # type: ignore[method-assign]
    run_id = h.start()
    h.workflow.handle(_first_step(h))
    node = h.store.get_node(run_id, "linux-0")
    assert node.state == NodeState.DRAINING
    ((item, delay),) = h.queue.take()
    assert item.node == "linux-0" and delay == h.config.workflow.drain_retry_interval.total_seconds()


@pytest.mark.parametrize("late", [0.0, 2.0, 8.0])
def test_a_step_that_arrives_well_after_it_was_due_does_not_hold_its_worker(late: float) -> None:
    from dataclasses import replace

    h = Harness({"linux": 1}, nodes_per_pool=1)
    h.kube.pods["web/web-1"] = make_pod("web", "web-1", "linux-0")
    h.kube.evict = lambda pod, **_: EvictionResult(evicted=True)  # type: ignore[method-assign]  # still terminating
    run_id = h.start()
    item = _first_step(h)
    h.workflow.handle(replace(item, due=h.clock.now() - late))
    assert h.store.get_node(run_id, "linux-0").state == NodeState.DRAINING
    watched = "wait_for_pods_gone linux-0" in h.kube.calls
    # On time (or late by no more than an idle host's polling): watch in place. Well
    # behind: the workers are the bottleneck, so look again through the queue.
    assert watched == (late <= 3.0)
    ((again, delay),) = h.queue.take()
    assert again.node == "linux-0" and delay == h.config.workflow.drain_retry_interval.total_seconds()


def _first_step(h: Harness) -> WorkItem:
    """Deliver admissions until the first node's step item is queued; return it."""
    for _ in range(5):
        for item, _delay in h.queue.take():
            if item.kind == "step":
                return item
            h.workflow.handle(item)
    raise AssertionError("no node was admitted")


def test_the_worker_that_frees_a_slot_starts_the_admitted_node_itself() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=3)
    sent: list[tuple[WorkItem, float]] = []
    send = h.queue.send
    h.queue.send = lambda item, delay=0.0: (sent.append((item, delay)), send(item, delay=delay))  # type: ignore[method-assign]
    run_id = h.start()
    h.pump(run_id)
    assert set(h.node_states(run_id).values()) == {"succeeded"}
    assert h.max_disrupted["linux"] == 1
    # The 2nd and 3rd nodes were started by the worker that finished the node before them,
    # so their queued work items found the step done: dropped as stale, nothing done twice.
    assert h.outcomes.count("stale") == 2
    # Those copies were only there in case that worker died: visible only once the lease
    # its step took (a moment after they were sent) has ended, or they would be "busy".
    lease = h.config.workflow.lease_duration.total_seconds()
    started_here = [d for item, d in sent if item.kind == "step" and item.seq == 1 and item.node != "linux-0"]
    assert len(started_here) == 2 and all(d > lease for d in started_here), sent
    reimages = [c for c in h.compute.calls if c.startswith(("reimage", "manualupgrade"))]
    assert len(reimages) == 3


def test_the_worker_that_frees_a_batchs_slots_starts_the_next_nodes_beside_its_own() -> None:
    h = Harness({"linux": 3}, nodes_per_pool=6, reimage_seconds=60, boot_seconds=30)
    sent: list[tuple[WorkItem, float]] = []
    send = h.queue.send
    h.queue.send = lambda item, delay=0.0: (sent.append((item, delay)), send(item, delay=delay))  # type: ignore[method-assign]
    run_id = h.start()
    _one_batch_of_three(h, run_id, boot=30.0)
    h.pump(run_id)
    assert set(h.node_states(run_id).values()) == {"succeeded"}
    assert h.max_disrupted["linux"] == 3
    # The batch ended in its leader's invocation, which admitted the next three and
    # started them all there: one on its own thread, two beside it.
    assert any("admitted 3; started" in o and "and 2 more beside it" in o for o in h.outcomes), h.outcomes
    lease = h.config.workflow.lease_duration.total_seconds()
    second_wave = {"linux-3", "linux-4", "linux-5"}
    first_items = [
        d for item, d in sent if item.kind == "step" and item.seq == 1 and item.node in second_wave
    ]
    assert len(first_items) == 3 and all(d > lease for d in first_items), sent
    # Their queued copies came after the steps were done: dropped, nothing done twice.
    assert h.outcomes.count("stale") >= 3
    instances = [
        i for c in h.compute.calls if c.startswith(("reimage", "manualupgrade")) for i in c.split("'")[1::2]
    ]
    assert sorted(instances) == [f"linux{i}" for i in range(6)], h.compute.calls


def test_later_reimages_are_first_polled_when_earlier_ones_on_the_scale_set_finished() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=3, reimage_seconds=60)
    run_id = h.start()
    h.pump(run_id)
    assert set(h.node_states(run_id).values()) == {"succeeded"}
    starts = [i for i, c in enumerate(h.compute.calls) if c.startswith(("reimage", "manualupgrade"))]
    assert len(starts) == 3
    ends = [*starts[1:], len(h.compute.calls)]
    polls = [sum(1 for c in h.compute.calls[a:b] if c == "poll") for a, b in zip(starts, ends, strict=True)]
    # The first operation is polled every pollInterval (5 s) for its 60 s; the next ones
    # first at 0.9 x the observed 60 s, so a couple of polls each.
    assert polls[0] >= 10
    assert polls[1] <= 3 and polls[2] <= 3
    pacer = h.store.get_pacer(run_id, h.store.get_node(run_id, "linux-0").scale_set_id)
    assert len(pacer.reimage_took) == 3 and len(pacer.boot_took) == 3


def test_the_pacer_keeps_one_sample_per_batch_and_a_bounded_window() -> None:
    from shared.rollout.model import PacerRecord

    pacer = PacerRecord(run_id="r", scale_set="ss")
    assert pacer.typical("boot") is None
    assert pacer.observe("boot", 90.0, batch="b1")
    assert not pacer.observe("boot", 10.0, batch="b1")  # the batch's first node spoke for it
    assert pacer.observe("reimage", 240.0, batch="b1")
    for i in range(40):
        pacer.observe("boot", 100.0 + i, batch=f"x{i}")
    assert len(pacer.boot_took) == PacerRecord.SAMPLES
    assert pacer.typical("boot") == 132.0  # median of the newest 15: 125..139
    assert pacer.typical("reimage") == 240.0


@pytest.mark.parametrize("tokens", [2.0, None])
def test_nodes_ready_together_share_one_write_when_writes_are_scarce(tokens: float | None) -> None:
    h = Harness({"linux": 3}, nodes_per_pool=3)
    run_id = h.start()
    first, *others = admitted_steps(h)
    assert len(others) == 2
    pacer = h.store.get_pacer(run_id, h.store.get_node(run_id, first.node).scale_set_id)
    pacer.tokens, pacer.updated = tokens, h.clock.now()  # None: a full bucket (10)
    h.store.commit(pacer)
    if tokens is None:
        h.clock.sleep = lambda s: pytest.fail("no gathering while writes are to spare")  # type: ignore[method-assign]
        h.workflow.handle(first)
        writes = [c for c in h.compute.calls if c.startswith(("reimage", "manualupgrade"))]
        assert writes == ["manualupgrade ['linux0']"]
        return
    writes, _, joined = lead_while_others_drain(h, first, others)
    assert all("joining the batch" in outcome for outcome in joined), joined
    assert len(writes) == 1 and all(f"linux{i}" in writes[0] for i in range(3)), writes
    states = {n.name: (n.state, n.reimage_batch) for n in h.store.list_nodes(run_id)}
    assert {s for s, _ in states.values()} == {NodeState.REIMAGING}
    assert len({b for _, b in states.values()}) == 1
    h.pump(run_id)
    assert set(h.node_states(run_id).values()) == {"succeeded"}


def test_the_batch_leader_follows_the_operation_and_wakes_the_others_when_it_ends() -> None:
    h = Harness({"linux": 3}, nodes_per_pool=3, reimage_seconds=60)
    run_id = h.start()
    _one_batch_of_three(h, run_id, boot=None)
    h.pump(run_id)
    nodes = h.store.list_nodes(run_id)
    assert {n.state for n in nodes} == {NodeState.SUCCEEDED}
    assert len({n.reimage_batch for n in nodes}) == 1
    # Handed over to poll at 60 + inlineWait (80 s), the others were woken when the leader
    # saw the end (~60 s), and one poll of theirs confirmed it.
    boots = sorted(n.booting_since - n.reimage_started for n in nodes)
    assert boots[-1] - boots[0] < 5, boots
    assert boots[0] < 65
    assert h.compute.calls.count("poll") <= 3 + 2


def _one_batch_of_three(h: Harness, run_id: str, *, boot: float | None) -> None:
    """Drive the three admitted nodes into one batch (writes scarce, so the first gathers),
    with a reimage of 60 s (and a boot of ``boot``) observed on the scale set before."""
    first, *others = admitted_steps(h)
    pacer = h.store.get_pacer(run_id, h.store.get_node(run_id, first.node).scale_set_id)
    pacer.tokens, pacer.updated = 2.0, h.clock.now()
    pacer.observe("reimage", 60.0, batch="earlier")
    if boot is not None:
        pacer.observe("boot", boot, batch="earlier")
    h.store.commit(pacer)
    lead_while_others_drain(h, first, others)


def _succeeded_at(h: Harness, run_id: str) -> dict[str, float]:
    from datetime import datetime

    return {
        n.name: datetime.fromisoformat(
            next(e["at"] for e in n.history if e["to"] == "succeeded").replace("Z", "+00:00")
        ).timestamp()
        for n in h.store.list_nodes(run_id)
    }


def test_the_batch_leader_watches_the_whole_batch_boot_and_calls_each_node_when_ready() -> None:
    h = Harness({"linux": 3}, nodes_per_pool=3, reimage_seconds=60, boot_seconds=30)
    run_id = h.start()
    _one_batch_of_three(h, run_id, boot=30.0)
    h.pump(run_id)
    nodes = h.store.list_nodes(run_id)
    assert {n.state for n in nodes} == {NodeState.SUCCEEDED}
    assert len({n.reimage_batch for n in nodes}) == 1
    leader = next(n.name for n in nodes if n.leads_batch)
    # One watch for the batch, by the leader; the others waited for its call, not watching.
    assert sum("the batch leader watches" in outcome for outcome in h.outcomes) == 2, h.outcomes
    assert [c for c in h.kube.calls if c.startswith("wait_for_node ")] == []
    watch = next(i for i, c in enumerate(h.kube.calls) if c.startswith("wait_for_nodes "))
    assert "linux-0,linux-1,linux-2" in h.kube.calls[watch]
    # The others were verified from the Node as the watch saw it, not read again.
    peers = {f"get_node {n.name}" for n in nodes if n.name != leader}
    assert peers.isdisjoint(h.kube.calls[watch:]), h.kube.calls[watch:]
    # Their steps ran in the leader's invocation, which then admitted once for them all.
    assert any("2 woken nodes ended" in outcome for outcome in h.outcomes), h.outcomes
    done = _succeeded_at(h, run_id)
    for name, at in done.items():
        assert at - h.booted_at[name] < 2, (name, leader, at - h.booted_at[name])
    assert not any(h.kube.nodes[n]["metadata"]["labels"].get("vmss-node-patcher.io/patching") for n in done)


def test_with_no_boot_seen_yet_the_leader_keeps_watching_until_the_batch_is_up() -> None:
    # The first batch on a scale set: no boot has been timed, so the leader cannot sleep
    # through it; between its watches it comes straight back instead of polling.
    h = Harness({"linux": 3}, nodes_per_pool=3, reimage_seconds=60, boot_seconds=47)
    run_id = h.start()
    _one_batch_of_three(h, run_id, boot=None)
    h.pump(run_id)
    nodes = h.store.list_nodes(run_id)
    assert {n.state for n in nodes} == {NodeState.SUCCEEDED}
    assert sum("(watching again)" in o for o in h.outcomes) >= 2, h.outcomes
    done = _succeeded_at(h, run_id)
    for name, at in done.items():
        assert at - h.booted_at[name] < 1, (name, at - h.booted_at[name])


def test_a_batch_node_looks_itself_when_the_leaders_call_does_not_come() -> None:
    h = Harness({"linux": 3}, nodes_per_pool=3, reimage_seconds=60, boot_seconds=30)
    # The leader's watch sees nothing, for as long as it watches.
    h.kube.wait_for_nodes = lambda *a, **k: (h.clock.sleep(k["timeout"]), iter(()))[1]  # type: ignore[method-assign]
    run_id = h.start()
    _one_batch_of_three(h, run_id, boot=30.0)
    h.pump(run_id)
    nodes = h.store.list_nodes(run_id)
    assert {n.state for n in nodes} == {NodeState.SUCCEEDED}
    peers = [n for n in nodes if not n.leads_batch]
    assert len(peers) == 2
    done = _succeeded_at(h, run_id)
    inline = h.config.workflow.inline_wait.total_seconds()
    for peer in peers:
        # No call came: the node looked itself at typical boot + inlineWait.
        assert 30 + inline - 1 <= done[peer.name] - peer.booting_since <= 30 + inline + 5


def test_more_nodes_coming_than_writes_in_hand_gather_and_stop_once_all_drained() -> None:
    h = Harness({"linux": 12}, nodes_per_pool=12, maxConcurrentNodes=12)
    run_id = h.start()
    first, *others = admitted_steps(h)
    assert len(others) == 11  # more than the full bucket's 10 writes
    writes, slept, _ = lead_while_others_drain(h, first, others)
    assert len(writes) == 1 and writes[0].count("'") == 24, writes  # all twelve instances
    # It looked once more after one batchLinger and, with nothing left draining, claimed.
    assert slept == [h.config.workflow.batch_linger.total_seconds()]
    h.pump(run_id)
    assert set(h.node_states(run_id).values()) == {"succeeded"}


def test_a_wave_refilling_its_slots_one_by_one_shares_writes_even_with_a_full_bucket() -> None:
    """Two nodes of the next wave are draining while twelve of the last one boot and twelve
    wait for their slots: fourteen will want a write within seconds, more than the bucket's
    ten, so the first one ready waits for the second rather than spending a write alone."""
    h = Harness({"linux": 14}, nodes_per_pool=26, maxConcurrentNodes=26)
    run_id = h.start()
    steps = admitted_steps(h)
    assert len(steps) == 14
    run = h.store.get_run(run_id)
    assert "linux" in run.waiting  # twelve pending nodes wait for budget
    first, second, *last_wave = steps
    for item in last_wave:  # as if they were reimaged a wave ago and now boot
        n = h.store.get_node(run_id, item.node)
        n.state, n.reimage_started, n.seq = NodeState.BOOTING, h.clock.now() - 60, n.seq + 1
        h.store.commit(n)
    writes, slept, _ = lead_while_others_drain(h, first, [second])
    assert writes == ["manualupgrade ['linux0', 'linux1']"], writes
    assert slept and slept[0] == h.config.workflow.batch_linger.total_seconds()


def test_drained_nodes_in_another_workers_step_count_as_coming_not_ready() -> None:
    """Twelve drained nodes are mid-step on other workers (leased), so no claim can take
    them now: the first node ready must not count them as company and go alone."""
    h = Harness({"linux": 14}, nodes_per_pool=14, maxConcurrentNodes=14)
    run_id = h.start()
    first, second, *busy = admitted_steps(h)
    assert len(busy) == 12
    for item in busy:
        n = h.store.get_node(run_id, item.node)
        n.state, n.seq = NodeState.REIMAGING, n.seq + 1
        n.lease_owner, n.lease_until = "another-worker", h.clock.now() + 60
        h.store.commit(n)
    writes, _, _ = lead_while_others_drain(h, first, [second])
    assert writes == ["manualupgrade ['linux0', 'linux1']"], writes


def test_a_leader_whose_node_is_up_already_still_calls_the_others() -> None:
    # Boots faster than the typical 30 s: the leader comes back (at 30 - inlineWait) to a
    # Node that is already Ready, and calls the others then rather than leaving them to
    # look for themselves at 30 + inlineWait.
    h = Harness({"linux": 3}, nodes_per_pool=3, reimage_seconds=60, boot_seconds=5)
    run_id = h.start()
    _one_batch_of_three(h, run_id, boot=30.0)
    h.pump(run_id)
    nodes = h.store.list_nodes(run_id)
    assert {n.state for n in nodes} == {NodeState.SUCCEEDED}
    assert any("2 woken nodes ended" in outcome for outcome in h.outcomes), h.outcomes
    inline = h.config.workflow.inline_wait.total_seconds()
    done = _succeeded_at(h, run_id)
    for n in nodes:
        assert done[n.name] - n.booting_since < 30 + inline - 1, (n.name, done[n.name] - n.booting_since)

"""Admission at fleet scale: its cost follows the nodes it changes, not the run's size."""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Collection, Iterable
from typing import Any
from unittest.mock import patch

from shared.adapters.kube import ANNOTATION_CORDONED
from shared.adapters.workqueue import WorkItem
from shared.errors import ConcurrencyError
from shared.rollout.admission import HOLDING_STATES, INLINE_ATTEMPTS, Admission
from shared.rollout.model import NodeState, NodeWork, PacerRecord, Run, RunState
from shared.rollout.service import RunService
from shared.rollout.store.memory import MemoryRunStore
from tests.harness import Harness


class CountingStore(MemoryRunStore):
    """Counts node records read whole (summaries are not records)."""

    def __init__(self) -> None:
        super().__init__()
        self.full_reads = 0
        self.conflicts_left = 0
        self.run_commits = 0
        self.on_conflict: Any = None  # what the worker that won did

    def get_node(self, run_id: str, name: str) -> NodeWork:
        self.full_reads += 1
        return super().get_node(run_id, name)

    def get_nodes(self, run_id: str, names: Iterable[str]) -> list[NodeWork]:
        found = super().get_nodes(run_id, names)
        self.full_reads += len(found)
        return found

    def list_nodes(self, run_id: str, *, states: Collection[NodeState] | None = None) -> list[NodeWork]:
        found = super().list_nodes(run_id, states=states)
        self.full_reads += len(found)
        return found

    def commit(self, *records: Run | NodeWork | PacerRecord) -> None:
        if any(isinstance(r, Run) for r in records):
            self.run_commits += 1
            if self.conflicts_left:
                self.conflicts_left -= 1
                if self.on_conflict:
                    self.on_conflict()
                raise ConcurrencyError("another worker admitted first")
        super().commit(*records)


def counting_harness(pools: dict[str, int], **kwargs: Any) -> tuple[Harness, CountingStore]:
    h = Harness(pools, **kwargs)
    store = CountingStore()
    h.store = h.deps.store = store
    return h, store


def finish(h: Harness, run_id: str, names: list[str]) -> None:
    for name in names:
        node = h.store.get_node(run_id, name)
        for state in (NodeState.DRAINING, NodeState.REIMAGING, NodeState.BOOTING, NodeState.SUCCEEDED):
            node.move_to(state, reason="test", at="now")
        h.store.commit(node)


def planned(h: Harness) -> str:
    """Plan a run but leave its first admission to the test (starting a run admits at once)."""
    with patch.object(RunService, "_admit_now", lambda self, run_id: None):
        return h.start()


def held(h: Harness, run_id: str) -> list[str]:
    return [n.name for n in MemoryRunStore.list_nodes(h.store, run_id) if n.state.holds_slot]


def test_admission_over_a_thousand_pending_nodes_reads_only_what_it_admits() -> None:
    h, store = counting_harness({"big": 100}, nodes_per_pool=1000, maxConcurrentNodes=250)
    run_id = planned(h)
    store.full_reads, h.kube.calls = 0, []
    assert h.workflow.admit(run_id) == "admitted 100"
    assert store.full_reads == 100  # held 0 + admitted 100
    assert "list_nodes" not in h.kube.calls and h.kube.calls.count("unavailable_nodes") == 1
    in_flight = held(h, run_id)
    assert len(in_flight) == 100

    finish(h, run_id, in_flight[:30])
    store.full_reads = 0
    assert h.workflow.admit(run_id) == "admitted 30"
    assert store.full_reads <= 70 + 30  # held + admitted, at most
    assert store.full_reads == 30  # the held ones are seen by their columns alone
    assert len(held(h, run_id)) == 100

    store.full_reads = 0
    assert h.workflow.admit(run_id) == "no slot free"
    assert store.full_reads == 0
    assert "budget of 100" in h.store.get_run(run_id).waiting["big"]


def test_a_pool_seen_through_its_selector_counts_and_skips_what_others_disrupted() -> None:
    h = Harness({"linux": 3}, nodes_per_pool=5, pool_linux={"nodeSelector": {"agentpool": "linux"}})
    for node in h.kube.nodes.values():
        node["metadata"]["labels"]["agentpool"] = "linux"
    h.kube.nodes["linux-1"]["spec"]["unschedulable"] = True  # someone else's cordon
    h.kube.nodes["linux-2"]["status"]["conditions"] = [{"type": "Ready", "status": "False"}]
    run_id = planned(h)
    h.kube.calls = []
    # 3 - 2 unavailable otherwise; the NotReady target, counted among them, needs no slot.
    assert h.workflow.admit(run_id) == "admitted 2"
    assert "list_nodes" not in h.kube.calls
    assert "get_node linux-1" in h.kube.calls  # the only node whose annotations matter
    states = h.node_states(run_id)
    assert states.pop("linux-1") == "skipped"
    assert states.pop("linux-2") == "admitted"
    assert sorted(states.values()) == ["admitted", "pending", "pending"]
    assert "2 unavailable otherwise: linux-1, linux-2" in h.store.get_run(run_id).waiting["linux"]


def test_a_pending_node_this_run_cordoned_counts_once_and_is_not_skipped() -> None:
    h = Harness({"linux": 2}, nodes_per_pool=3, pool_linux={"nodeSelector": {"agentpool": "linux"}})
    for node in h.kube.nodes.values():
        node["metadata"]["labels"]["agentpool"] = "linux"
    run_id = planned(h)
    h.kube.nodes["linux-2"]["spec"]["unschedulable"] = True
    h.kube.nodes["linux-2"]["metadata"]["annotations"][ANNOTATION_CORDONED] = run_id
    # linux-2 fills one of the two slots as unavailable; admitted, it holds that one.
    assert h.workflow.admit(run_id) == "admitted 2"
    states = h.node_states(run_id)
    assert states.pop("linux-2") == "admitted"
    assert sorted(states.values()) == ["admitted", "pending"]


def test_conflicts_are_retried_inline_a_few_times_then_through_the_queue() -> None:
    h, store = counting_harness({"linux": 1}, nodes_per_pool=2)
    run_id = planned(h)
    h.queue.take()
    store.conflicts_left, store.run_commits = 10, 0
    assert "looking again" in h.workflow.admit(run_id)
    assert store.run_commits == INLINE_ATTEMPTS
    assert h.queue.take() == [(WorkItem("admit", run_id), 0.5)]
    assert set(h.node_states(run_id).values()) == {"pending"}
    store.conflicts_left = 0
    assert h.workflow.handle(WorkItem("admit", run_id)) == "admitted 1"


def test_a_conflict_then_success_admits_inline() -> None:
    h, store = counting_harness({"linux": 1}, nodes_per_pool=2)
    run_id = planned(h)
    h.queue.take()
    store.conflicts_left = 1
    assert h.workflow.admit(run_id) == "admitted 1"
    assert [item.kind for item, _ in h.queue.take()] == ["step"]


def test_a_node_that_changed_after_it_was_listed_is_not_admitted_from_the_stale_view() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=2)
    run_id = planned(h)
    original = h.store.get_nodes
    cancelled: list[str] = []

    def cancel_first_then_read(rid: str, names: Iterable[str]) -> list[NodeWork]:
        names = list(names)
        if not cancelled:  # another worker cancels the node between listing and reading
            node = MemoryRunStore.get_node(h.store, rid, names[0])
            node.move_to(NodeState.CANCELLED, reason="cancelled", at="now")
            h.store.commit(node)
            cancelled.append(node.name)
        return original(rid, names)

    h.store.get_nodes = cancel_first_then_read  # type: ignore[method-assign]
    assert h.workflow.admit(run_id) == "admitted 1"
    states = h.node_states(run_id)
    assert states[cancelled[0]] == "cancelled"
    assert list(states.values()).count("admitted") == 1


def test_the_run_closes_by_its_columns_when_the_last_node_ends() -> None:
    h = Harness({"linux": 2}, nodes_per_pool=3)
    run_id = h.start()
    h.pump(run_id)
    run = h.store.get_run(run_id)
    assert run.state == RunState.SUCCEEDED and run.state_reason == "3 succeeded"
    assert h.store.active_run("test") is None


def test_concurrent_workers_never_admit_past_the_budget() -> None:
    h = Harness({"big": 5}, nodes_per_pool=120, maxConcurrentNodes=50)
    run_id = planned(h)
    store = h.store
    worst = [0]
    stop = threading.Event()
    errors: list[BaseException] = []

    def watch() -> None:
        while not stop.is_set():
            worst[0] = max(worst[0], len(store.node_summaries(run_id, states=HOLDING_STATES)))

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(60):
                h.workflow.admit(run_id)
                holding = store.node_summaries(run_id, states=HOLDING_STATES)
                if holding:
                    node = store.get_node(run_id, rng.choice(holding).name)
                    if node.state == NodeState.ADMITTED:
                        node.move_to(NodeState.DRAINING, reason="test", at="now")
                        node.move_to(NodeState.REIMAGING, reason="test", at="now")
                        node.move_to(NodeState.BOOTING, reason="test", at="now")
                        node.move_to(NodeState.SUCCEEDED, reason="test", at="now")
                        with contextlib.suppress(ConcurrencyError):
                            store.commit(node)
        except BaseException as exc:
            errors.append(exc)

    watcher = threading.Thread(target=watch)
    watcher.start()
    workers = [threading.Thread(target=worker, args=(i,)) for i in range(6)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    stop.set()
    watcher.join()
    assert not errors
    assert 0 < worst[0] <= 5
    assert "succeeded" in h.node_states(run_id).values()


def test_a_node_ended_before_another_admission_looked_needs_no_admission_of_its_own() -> None:
    h, store = counting_harness({"linux": 1}, nodes_per_pool=3)
    run_id = planned(h)
    h.queue.take()
    ended_at = h.clock.now()
    h.clock.advance(1)

    def another_admission_looked() -> None:
        run = MemoryRunStore.get_run(store, run_id)
        run.admission_view_at = h.clock.now()
        MemoryRunStore.commit(store, run)

    # Another worker's admission, which looked after this node ended, wins the run record
    # while this one was deciding: one conflict, then a look at the run record suffices.
    store.on_conflict, store.conflicts_left, store.run_commits = another_admission_looked, 1, 0
    assert (
        Admission(h.deps).admit(run_id, ended_at=ended_at) == "another worker admitted after this node ended"
    )
    assert store.run_commits == 1 and h.queue.take() == []
    # Known before deciding: nothing is read beyond the run record.
    reads = store.full_reads
    assert (
        Admission(h.deps).admit(run_id, ended_at=ended_at) == "another worker admitted after this node ended"
    )
    assert store.run_commits == 1 and store.full_reads == reads
    # A node that ended after that look is not covered by it: it admits.
    store.on_conflict = None
    assert Admission(h.deps).admit(run_id, ended_at=h.clock.now()) == "admitted 1"
    assert store.run_commits == 2


def test_an_admission_records_when_it_looked_at_the_slots() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=2)
    run_id = planned(h)
    before = h.clock.now()
    h.clock.advance(5)
    assert h.workflow.admit(run_id) == "admitted 1"
    assert h.store.get_run(run_id).admission_view_at == before + 5

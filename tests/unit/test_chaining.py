"""Steps run beside this invocation (shared/rollout/chaining.py), on their own: a fake
engine stands in for the step engine, so only the chaining's own rules are tested."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from shared.adapters.workqueue import MemoryWorkQueue, WorkItem
from shared.rollout.chaining import START_IN_PLACE, WAKE_THREADS, HeldSteps, StepsBeside
from shared.rollout.engine import Workflow
from tests.harness import Harness


class FakeEngine:
    """Ends the nodes named in ``ends``, raises for those in ``fails``."""

    def __init__(self, *, ends: set[str], fails: set[str], calls: list[tuple[str, bool, Any]]) -> None:
        self.ends, self.fails, self.calls = ends, fails, calls
        self.left_to_admit = 0
        self.lock = threading.Lock()

    def step(self, item: WorkItem, *, called: bool = False, seen: Any = None) -> str:
        with self.lock:
            self.calls.append((item.node, called, seen))
        if item.node in self.fails:
            raise RuntimeError(f"{item.node} broke")
        if item.node in self.ends:
            self.left_to_admit += 1
            return "ended"
        return "moved on"


def step(node: str) -> WorkItem:
    return WorkItem("step", "run-1", node, 3)


@pytest.fixture
def h() -> Harness:
    return Harness({"linux": 1}, nodes_per_pool=1)


@pytest.mark.parametrize("called", [True, False])
def test_steps_beside_count_the_nodes_that_ended_and_run_each_step_once(h: Harness, called: bool) -> None:
    calls: list[tuple[str, bool, Any]] = []
    made: list[bool] = []

    def engine(as_called: bool) -> FakeEngine:
        made.append(as_called)
        return FakeEngine(ends={"a", "c"}, fails=set(), calls=calls)

    beside = StepsBeside(h.deps, called=called, engine=engine)
    assert beside.threads == (WAKE_THREADS if called else START_IN_PLACE)
    for node in "abc":
        beside.start(step(node), seen=None)
    assert beside.finish() == 2
    assert sorted(c[0] for c in calls) == ["a", "b", "c"]
    assert all(c[1] is called for c in calls) and made == [called] * 3
    assert beside.finish() == 0  # nothing left running


def test_a_peer_step_that_fails_beside_its_leader_goes_through_the_queue(h: Harness) -> None:
    calls: list[tuple[str, bool, Any]] = []
    beside = StepsBeside(
        h.deps, called=True, engine=lambda _c: FakeEngine(ends=set(), fails={"b"}, calls=calls)
    )
    beside.start(step("a"))
    beside.start(step("b"))
    assert beside.finish() == 0
    assert h.queue.take() == [(step("b"), 0.0)]


def test_a_started_step_that_fails_is_left_to_its_delayed_queue_copy(h: Harness) -> None:
    calls: list[tuple[str, bool, Any]] = []
    beside = StepsBeside(
        h.deps, called=False, engine=lambda _c: FakeEngine(ends=set(), fails={"a"}, calls=calls)
    )
    beside.start(step("a"))
    assert beside.finish() == 0
    assert h.queue.take() == []


def test_held_steps_keep_only_immediate_steps_and_release_the_first_late() -> None:
    inner = MemoryWorkQueue()
    held = HeldSteps(inner)
    held.send(step("a"))
    held.send(WorkItem("admit", "run-1"))
    held.send(step("b"), delay=7.0)
    held.send(step("c"))
    held.send(step("d"))
    held.dead_letter("{}", reason="bad")
    assert inner.take() == [(WorkItem("admit", "run-1"), 0.0), (step("b"), 7.0)]
    assert inner.dead == [("{}", "bad")]
    here = held.release(delay=35.0, count=2)
    assert here == [step("a"), step("c")]
    assert inner.take() == [(step("a"), 35.0), (step("c"), 35.0), (step("d"), 0.0)]


def test_the_engine_refuses_a_work_item_kind_that_is_not_the_rollouts(h: Harness) -> None:
    image = WorkItem("image", "", ref="/subscriptions/s/x/versions/1.0.0", seq=1)
    with pytest.raises(ValueError, match="not the rollout's"):
        Workflow(h.deps).handle(image)

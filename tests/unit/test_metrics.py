"""The metrics a rollout records: counted once per transition whose write won, with the
cluster and pool as attributes, and durations per disruptive step."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
from opentelemetry import metrics as otel
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from shared.errors import ConcurrencyError
from shared.rollout import metrics
from shared.rollout.model import NodeState, RunState
from shared.rollout.store.memory import MemoryRunStore
from tests.harness import Harness

_reader: InMemoryMetricReader | None = None


@pytest.fixture(scope="module")
def reader() -> InMemoryMetricReader:
    """One in-memory reader for the process: OpenTelemetry takes one global provider."""
    global _reader  # noqa: PLW0603
    if _reader is None:
        _reader = InMemoryMetricReader()
        otel.set_meter_provider(MeterProvider(metric_readers=[_reader]))
    return _reader


class Points:
    """Every point the reader holds, per metric name and attribute set (cumulative)."""

    def __init__(self, reader: InMemoryMetricReader) -> None:
        self.sums: dict[str, dict[frozenset[tuple[str, Any]], float]] = defaultdict(dict)
        self.counts: dict[str, dict[frozenset[tuple[str, Any]], int]] = defaultdict(dict)
        data = reader.get_metrics_data()
        for rm in data.resource_metrics if data else []:
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    for point in metric.data.data_points:
                        key = frozenset(point.attributes.items())
                        if hasattr(point, "bucket_counts"):
                            self.counts[metric.name][key] = point.count
                            self.sums[metric.name][key] = point.sum
                        else:
                            self.sums[metric.name][key] = point.value

    def total(self, name: str, **attrs: Any) -> float:
        want = set(attrs.items())
        return sum(v for k, v in self.sums[name].items() if want <= k)

    def count(self, name: str, **attrs: Any) -> int:
        want = set(attrs.items())
        return sum(v for k, v in self.counts[name].items() if want <= k)


def test_a_rollout_counts_each_node_patched_once_and_times_every_step(reader: InMemoryMetricReader) -> None:
    before = Points(reader)
    h = Harness({"linux": 2, "win": 1}, nodes_per_pool=3)
    run_id = h.start()
    h.pump(run_id)
    assert h.store.get_run(run_id).state == RunState.SUCCEEDED
    after = Points(reader)

    def grew(name: str, **attrs: Any) -> float:
        return after.total(name, **attrs) - before.total(name, **attrs)

    assert grew(metrics.NODES_PATCHED, cluster="test", pool="linux") == 3
    assert grew(metrics.NODES_PATCHED, cluster="test", pool="win") == 3
    assert grew(metrics.RUNS_STARTED, cluster="test") == 1
    assert grew(metrics.RUNS_SUCCEEDED, cluster="test") == 1
    assert grew(metrics.RUNS_FAILED, cluster="test") == 0
    for step in ("draining", "reimaging", "booting"):
        timed = after.count(metrics.STEP_DURATION, pool="linux", step=step) - before.count(
            metrics.STEP_DURATION, pool="linux", step=step
        )
        assert timed >= 3, step
    # The harness's reimage takes 60 s of fake time: the histogram holds those seconds.
    reimaged = after.total(metrics.STEP_DURATION, pool="win", step="reimaging") - before.total(
        metrics.STEP_DURATION, pool="win", step="reimaging"
    )
    assert reimaged >= 3 * 60
    # Low cardinality: no attribute names a node or a run.
    for name in (metrics.NODES_PATCHED, metrics.STEP_DURATION):
        for attrs in after.sums[name]:
            assert {k for k, _ in attrs} <= {"cluster", "pool", "step", "outcome"}


def test_a_failed_node_and_run_are_counted_with_the_step_it_failed_in(reader: InMemoryMetricReader) -> None:
    before = Points(reader)
    h = Harness({"fl": 1}, nodes_per_pool=2, maxFailedNodes=1)
    h.compute.fail_lro = 2  # the first node fails both reimage attempts
    run_id = h.start()
    h.pump(run_id)
    assert h.store.get_run(run_id).state == RunState.FAILED
    after = Points(reader)
    assert (
        after.total(metrics.NODES_FAILED, pool="fl", step="reimaging")
        - before.total(metrics.NODES_FAILED, pool="fl", step="reimaging")
        == 1
    )
    assert after.total(metrics.RUNS_FAILED) - before.total(metrics.RUNS_FAILED) == 1


def test_a_transition_whose_write_lost_is_not_counted_and_the_winner_counts_once(
    reader: InMemoryMetricReader,
) -> None:
    store = MemoryRunStore()
    h = Harness({"race": 1}, nodes_per_pool=1, store=store)
    run_id = h.start()
    h.pump(run_id)
    node = store.get_node(run_id, "race-0")
    assert node.state == NodeState.SUCCEEDED
    # Two workers read the same run; both end it, one write wins.
    first, second = store.get_run(run_id), store.get_run(run_id)
    first.state = second.state = RunState.RUNNING  # as read mid-run
    before = Points(reader).total(metrics.RUNS_FAILED, cluster="test")
    first.move_to(RunState.FAILED, reason="a", at="2026-12-03T00:00:00.000Z")
    second.move_to(RunState.FAILED, reason="b", at="2026-12-03T00:00:00.000Z")
    store.commit(first)
    with pytest.raises(ConcurrencyError):
        store.commit(second)
    store.commit(first)  # written again without a new transition
    assert Points(reader).total(metrics.RUNS_FAILED, cluster="test") - before == 1


def test_the_sweep_sets_nodes_in_flight_per_pool_and_zero_for_idle_ones(reader: InMemoryMetricReader) -> None:
    from shared.rollout.sweeper import sweep

    h = Harness({"busy": 2, "idle": 1}, nodes_per_pool=2)
    run_id = h.start(pools=["busy"])
    # Admit and start the first nodes, then look before they finish.
    for _ in range(3):
        h._collect()
        due = sorted(h.pending, key=lambda p: p[0])
        if due:
            h.pending.remove(due[0])
            h.workflow.handle(due[0][1])
    flying = sum(1 for n in h.store.list_nodes(run_id) if n.state.holds_slot)
    assert flying > 0
    sweep(h.deps)
    points = Points(reader)
    assert points.sums[metrics.NODES_IN_FLIGHT][frozenset({("cluster", "test"), ("pool", "busy")})] == flying
    assert points.sums[metrics.NODES_IN_FLIGHT][frozenset({("cluster", "test"), ("pool", "idle")})] == 0

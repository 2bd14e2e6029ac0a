"""The cost per node: what counts, what a sampled run is, and growth with N."""

from __future__ import annotations

from typing import Any

import pytest

from bench.cost import (
    TARGETS,
    at_production_cadence,
    cost_of,
    cost_per_node,
    growth,
    storage_counts,
    within_targets,
)
from bench.report import cost_rows
from sandbox.azurite import StorageRequest


def _cost(n: int, *, invocations: int, storage: int) -> dict[str, Any]:
    return cost_per_node(
        nodes=n,
        invocations={"node_work": invocations},
        runner_cpu_seconds=0.2 * n,
        storage={"total": storage, "by_service": {"queue": storage}, "queue_receives": storage // 2},
        arm_requests=7 * n,
        kube_requests=20 * n,
    )


def test_storage_requests_are_counted_by_service_with_queue_receives_apart() -> None:
    counted = storage_counts(
        [
            StorageRequest("GET", "/devstoreaccount1/work/messages?numofmessages=32", 200),
            StorageRequest("POST", "/devstoreaccount1/work/messages", 201),
            StorageRequest("DELETE", "/devstoreaccount1/work/messages/abc?popreceipt=x", 204),
            StorageRequest("PATCH", "/devstoreaccount1/runs(PartitionKey='r',RowKey='n')", 204),
            StorageRequest("POST", "/devstoreaccount1/$batch", 202),
            StorageRequest("PUT", "/devstoreaccount1/locks/sweeper?comp=lease", 200),
        ]
    )
    assert counted == {"total": 6, "by_service": {"queue": 3, "table": 2, "blob": 1}, "queue_receives": 1}


def test_cost_is_per_node_patched() -> None:
    cost = _cost(10, invocations=45, storage=600)
    assert cost["invocations_per_node"] == 4.5
    assert cost["storage_per_node"] == 60.0 and cost["queue_receives_per_node"] == 30.0
    assert cost["arm_per_node"] == 7.0 and cost["kube_per_node"] == 20.0
    assert cost["runner_cpu_seconds_per_node"] == pytest.approx(0.2)


def test_a_run_that_did_not_end_has_no_cost() -> None:
    sampled = {"outcome": "sampled", "storage": {"total": 1}, "economy": {}, "runners": {}, "nodes": {}}
    assert cost_of(sampled, scale=0.1) is None


def test_growth_compares_the_largest_fleet_with_the_smallest() -> None:
    small, large = _cost(10, invocations=40, storage=500), _cost(1000, invocations=6000, storage=50000)
    grown = growth({10: small, 1000: large})
    assert grown["invocations_per_node"] == 1.5
    assert grown["storage_per_node"] == 1.0
    assert growth({10: small}) == {}


def test_targets_are_checked_measure_by_measure() -> None:
    assert within_targets(_cost(10, invocations=40, storage=500))
    too_many = int(TARGETS["invocations_per_node"] * 10) + 10
    assert not within_targets(_cost(10, invocations=too_many, storage=500))


def test_the_cost_rows_take_one_complete_run_per_size_and_flag_growth() -> None:
    def rollout(n: int, budget: str, cost: dict[str, Any] | None) -> dict[str, Any]:
        return {"spec": {"n": n, "budget": budget, "scale": 0.1}, "cost": cost, "invariants": {"ok": True}}

    rows = cost_rows(
        [
            rollout(10, "1", _cost(10, invocations=90, storage=500)),
            rollout(10, "10%", _cost(10, invocations=40, storage=500)),
            rollout(100, "1", None),  # sampled
            rollout(100, "10%", _cost(100, invocations=900, storage=5000)),
        ]
    )
    assert [r.measure for r in rows] == ["cost per node N=10", "cost per node N=100"]
    assert "budget 10%" in rows[0].config
    assert rows[1].ratio == "largest 2.25"  # 9 invocations a node against 4
    assert rows[0].ok == "✓" and rows[1].ok == "✗"


def test_a_timer_is_billed_at_production_cadence_over_the_run_in_cloud_time() -> None:
    # 60 wall seconds at scale 0.1 are 600 cloud seconds: production's sweeper (every
    # 2 minutes) fires 5 times, whatever the sandbox's compressed timer did.
    complete = {
        "outcome": "complete",
        "makespan_seconds": 60.0,
        "storage": {"total": 100, "by_service": {"queue": 100}, "queue_receives": 10},
        "economy": {"arm_reads": 50, "arm_writes": 10, "kube_requests": 200},
        "runners": {"invocations_by_function": {"node_work": 40, "sweeper": 30, "runs_start": 1}},
        "nodes": {"done": 10},
    }
    cost = cost_of(complete, scale=0.1)
    assert cost is not None
    assert cost["invocations_by_function"] == {"node_work": 40, "sweeper": 5, "runs_start": 1}
    assert cost["invocations_per_node"] == 4.6
    assert cost["sandbox_timer_invocations"] == {"sweeper": 30}
    once = at_production_cadence({"node_work": 3, "sweeper": 9}, cloud_seconds=10)
    assert once == {"node_work": 3, "sweeper": 1}

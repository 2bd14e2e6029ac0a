"""The benchmark code runs and produces well-formed results (never a timing assertion).

One tiny rollout on the sandbox (4 nodes, budget 2, a very short time scale), the
realistic profile at 6 nodes (budget-aware waves, plan order, one node of the seed's
procedure), planning
at 50 nodes, one cold-start repetition and a few webhook deliveries; then the table,
results.json and results.md are built from what came out.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.__main__ import SECTIONS, run, write
from bench.bound import Durations, WriteLimit, lower_bound
from bench.report import HEADERS, build_rows, markdown, print_table
from bench.rollout import Phases, chain_breakdown, classify_outcome, critical_chain

pytestmark = pytest.mark.integration


def test_the_smoke_profile_runs_and_produces_well_formed_results(tmp_path: Path) -> None:
    results = run("smoke", SECTIONS, runners=2, log=lambda _m: None)
    write(results, tmp_path)

    data = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    assert {"cpus", "cpu_model", "memory_gib", "python", "date"} <= set(data["machine"])
    (rollout,) = data["rollouts"]
    assert "error" not in rollout, rollout.get("error")
    assert rollout["outcome"] == "complete"
    assert rollout["nodes"]["done"] == 4
    assert rollout["bound"]["waves"] == 2
    assert rollout["ratio"] > 0.95  # nothing beats the bound
    assert set(rollout["breakdown_seconds"]) == {
        "queue",
        "drain wait",
        "reimage start",
        "cloud jitter",
        "verify",
    }
    assert rollout["invariants"]["ok"], rollout["invariants"]["violations"]
    economy = rollout["economy"]
    assert economy["arm_writes"] >= 1 and economy["kube_requests"] > 0
    assert economy["cluster_wide_lists_steps"] == 0
    assert rollout["runners"]["node_work_invocations"] > 0
    cost = rollout["cost"]
    assert cost["nodes"] == 4
    assert cost["invocations_by_function"]["node_work"] == rollout["runners"]["node_work_invocations"]
    assert cost["invocations_per_node"] >= cost["invocations_by_function"]["node_work"] / 4
    # Every node's record is written to the table and its steps go through the queue.
    assert {"queue", "table"} <= set(cost["storage_by_service_per_node"])
    assert cost["storage_per_node"] >= cost["queue_receives_per_node"] > 0
    assert cost["runner_cpu_seconds_per_node"] > 0 and cost["arm_per_node"] >= 1

    planning = data["planning"]
    assert planning["planned"] == 50 and planning["plan_seconds"] > 0 and planning["ratio"] > 0
    assert data["coldstart"]["reps"] == 1 and data["coldstart"]["ratio"] > 0
    webhook = data["webhook"]
    assert webhook.get("pending") or (webhook["ok"] and webhook["handler_p50_ms"] > 0)

    aware, plan, seed = data["realistic"]
    for r in (aware, plan):
        assert "error" not in r, r.get("error")
        assert r["outcome"] == "complete" and r["invariants"]["ok"], r["invariants"]
        assert r["workload"]["kind"] == "realistic" and r["workload"]["budgets"] > 0
        assert r["invariants"]["evictions"] >= r["workload"]["pods"] // 2
    assert aware["spec"]["wave_order"] == "budgets" and plan["spec"]["wave_order"] == "plan"
    assert aware["workload"] == plan["workload"]  # the same pods on the same nodes
    assert "error" not in seed, seed.get("error")
    assert seed["sampled_nodes"] == 1 and seed["ratio"] > 0.95
    # The mean is rounded to 0.01 s before it is multiplied.
    assert seed["makespan_seconds"] == pytest.approx(6 * seed["node_seconds_mean"], abs=6 * 0.01)

    rows = build_rows(data)
    # makespan; three realistic rows and the speed-up; economy of the three product runs;
    # cost; planning, cold start, webhook
    assert [r.section for r in rows] == ["makespan"] + ["realistic"] * 4 + ["economy"] * 3 + [
        "cost",
        "planning",
        "cold start",
        "webhook",
    ]
    assert all(len(r.cells()) == len(HEADERS) for r in rows)
    md = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert md == markdown(data)
    assert "| makespan N=4 budget 2 |" in md
    assert "| cost per node N=4 |" in md
    assert "| budget-aware waves vs plan order |" in md and "seed's procedure" in md
    print_table(data)


def test_the_lower_bound_counts_waves_and_waits_for_reimage_writes() -> None:
    durations = Durations(drain=5, reimage=240, boot=90)
    bound = lower_bound(10, 3, durations)
    assert bound.wave_sizes == (3, 3, 3, 1)
    assert bound.cloud_seconds == 4 * 335 and bound.write_wait == 0
    # Short waves of 250 nodes need 3 writes each: the bucket (3 burst, 1 a minute) runs dry.
    fast = lower_bound(1000, 250, Durations(0, 10, 0), WriteLimit(burst=3, per_minute=1, max_batch=100))
    assert fast.writes == 12
    assert fast.write_wait == pytest.approx(3 * 180 - 30, abs=1e-6)
    assert fast.cloud_seconds == pytest.approx(40 + fast.write_wait)


def test_the_breakdown_follows_the_critical_chain_and_sums_to_the_overhead() -> None:
    def node(start: float) -> Phases:
        return Phases(
            admitted=start + 1,
            cordoned=start + 2,
            reimaging=start + 4,
            wiped=start + 5,
            reimaged=start + 15,
            booted=start + 18,
            uncordoned=start + 19,
        )

    phases = {"a": node(0), "b": node(19.5), "c": node(0.5)}
    chain = critical_chain(phases)
    assert chain == ["c", "b"]  # b started when c, the later of the two, finished
    ideal = {"drain": 1.0, "reimage": 10.0, "boot": 3.0}
    out = chain_breakdown(chain, phases, start=0.0, end=40.0, ideal=ideal)
    assert sum(out.values()) == pytest.approx(40 - 2 * 14)
    assert out["drain wait"] == pytest.approx(2 * 1) and out["verify"] == pytest.approx(2 * 1)


def test_outcomes_are_classified() -> None:
    assert classify_outcome("stale") == "dropped (stale)"
    assert classify_outcome("waiting: waiting for 1 pods to terminate") == "wait: drain"
    assert classify_outcome("waiting: manualupgrade in progress") == "wait: LRO poll"
    assert (
        classify_outcome("waiting: pacing writes to scale set x under Compute's limit")
        == "wait: write pacing"
    )
    assert classify_outcome("waiting: transient error, retrying: reimage: 429 OperationNotAllowed") == (
        "wait: throttled (429)"
    )
    assert classify_outcome("booting -> succeeded") == "transition"
    assert classify_outcome("admitted 3") == "admission"


def test_the_realistic_workload_spreads_replicas_and_protects_a_third() -> None:
    from bench.workloads import plan_realistic

    nodes = [f"n{i:03d}" for i in range(100)]
    workloads = plan_realistic(nodes)
    assert plan_realistic(list(reversed(nodes))) == workloads  # the same for the same nodes
    deployments = [w for w in workloads if w.kind == "Deployment"]
    statefulsets = [w for w in workloads if w.kind == "StatefulSet"]
    assert len(deployments) == 300 and len(statefulsets) == 4
    assert all(2 <= len(w.nodes) <= 5 and len(set(w.nodes)) == len(w.nodes) for w in deployments)
    protected = [w for w in deployments if w.protected]
    assert len(protected) == 100 and all(w.disruptions_allowed == 1 for w in protected)
    assert {w.max_unavailable is None for w in protected} == {True, False}  # both kinds of budget
    assert all(len(w.nodes) == 3 and w.min_available == 2 for w in statefulsets)


def test_the_bound_adds_a_wait_for_every_group_of_drains_beyond_the_waves() -> None:
    from bench.bound import with_budget_waits
    from bench.workloads import PlacedWorkload, forced_wait_groups

    spread = PlacedWorkload("Deployment", "a", "web", ("n1", "n2", "n3"), max_unavailable=1)
    assert forced_wait_groups([spread], waves=3) == 0
    assert forced_wait_groups([spread], waves=2) == 1
    strict = PlacedWorkload("StatefulSet", "a", "db", tuple(f"n{i}" for i in range(6)), min_available=4)
    assert forced_wait_groups([spread, strict], waves=1) == 2  # 3 groups of 2 vs 3 of 1: the largest
    unprotected = PlacedWorkload("Deployment", "a", "batch", ("n1", "n2"))
    assert forced_wait_groups([unprotected], waves=1) == 0
    bound = lower_bound(4, 2, Durations(5, 240, 90))
    waited = with_budget_waits(bound, 65.0)
    assert waited.cloud_seconds == bound.cloud_seconds + 65.0 and waited.budget_wait == 65.0
    assert with_budget_waits(waited, 65.0) == waited  # stated, not added twice

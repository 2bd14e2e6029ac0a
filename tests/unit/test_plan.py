"""The plan of a run (shared/rollout/plan.py): waves under the budgets, why each node is due, the
estimates, the windows, the blockers now; and that a run then follows it."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

import pytest

from shared.rollout.plan import build_plan, plan_waves
from shared.rollout.requests import StartRequest
from shared.rollout.service import RunService
from tests.fakes import make_pod, scale_set_id
from tests.harness import Harness


def plan_of(h: Harness, **request: Any) -> dict[str, Any]:
    return RunService(h.deps).preview(StartRequest(cluster="test", reason="plan", **request))


@pytest.mark.parametrize(
    ("pools", "budgets", "max_concurrent", "seconds", "expected"),
    [
        # One pool, one node at a time: one wave per node, back to back.
        ({"a": 3}, {"a": 1}, 10, {"a": 60}, ([["a0"], ["a1"], ["a2"]], 180)),
        # A budget of 2: two nodes a wave.
        ({"a": 3}, {"a": 2}, 10, {"a": 60}, ([["a0", "a1"], ["a2"]], 120)),
        # The cluster's limit cuts across pools, in plan order.
        ({"a": 2, "b": 2}, {"a": 2, "b": 2}, 2, {"a": 60, "b": 60}, ([["a0", "a1"], ["b0", "b1"]], 120)),
        # Pools of different speeds refill their own slots: the slow one does not hold the
        # fast one back (a new wave each time nodes end).
        (
            {"a": 3, "b": 1},
            {"a": 1, "b": 1},
            10,
            {"a": 60, "b": 150},
            ([["a0", "b0"], ["a1"], ["a2"]], 180),
        ),
    ],
)
def test_waves_are_the_admission_rounds_under_budgets_and_the_cluster_limit(
    pools: dict[str, int],
    budgets: dict[str, int],
    max_concurrent: int,
    seconds: dict[str, float],
    expected: tuple[list[list[str]], float],
) -> None:
    waves, ends = expected
    ordered = [(f"{p}{i}", p) for p, n in pools.items() for i in range(n)]
    plan = plan_waves(
        ordered,
        max_unavailable=budgets,
        unavailable={},
        max_concurrent_nodes=max_concurrent,
        node_seconds=seconds,
    )
    assert [list(w.nodes) for w in plan.waves] == waves
    assert plan.duration == ends
    assert plan.never == {}


def test_a_pool_whose_budget_is_taken_by_an_unavailable_node_never_starts() -> None:
    plan = plan_waves(
        [("a0", "a"), ("a1", "a")],
        max_unavailable={"a": 1},
        unavailable={"a": frozenset({"a9"})},
        max_concurrent_nodes=10,
        node_seconds={"a": 60},
    )
    assert plan.waves == []
    assert set(plan.never) == {"a0", "a1"} and "pool budget of 1" in plan.never["a0"]


def test_the_plan_says_why_each_node_is_due() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=3, pool_linux={"rebootRequiredCondition": "KernelDeadlock"})
    for iid in h.compute.scale_sets[scale_set_id("vmss-linux").lower()]:
        h.compute.instance(iid)["latest"] = iid != "linux0"
    h.kube.nodes["linux-1"]["status"]["conditions"].append({"type": "KernelDeadlock", "status": "True"})

    why = {n["name"]: n["why"] for n in plan_of(h)["nodes"]}

    assert why == {
        "linux-0": ["asked for", "off the latest model"],
        "linux-1": ["asked for", "reboot required (condition KernelDeadlock)"],
        "linux-2": ["asked for"],
    }


def test_blockers_now_name_pdbs_at_zero_and_pods_drain_would_refuse_with_their_workload() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=2)
    web = make_pod("shop", "web-7d9c-abcde", "linux-0")
    web["metadata"]["ownerReferences"][0]["name"] = "web-7d9c"
    web["metadata"]["labels"] = {"app": "web"}
    h.kube.replica_set_owners["shop/web-7d9c"] = "Deployment/web"
    cache = make_pod("shop", "cache-0", "linux-0", owner_kind="StatefulSet", empty_dir=True)
    bare = make_pod("default", "debug", "linux-1", owner_kind=None)
    for pod in (web, cache, bare):
        h.kube.pods[f"{pod['metadata']['namespace']}/{pod['metadata']['name']}"] = pod
    h.kube.pdbs.append(
        {
            "metadata": {"namespace": "shop", "name": "web"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}},
            "status": {"disruptionsAllowed": 0, "currentHealthy": 2, "desiredHealthy": 2},
        }
    )

    blockers = {n["name"]: n["blockers"] for n in plan_of(h)["nodes"]}

    assert blockers["linux-0"] == [
        "shop/cache-0 (StatefulSet/cache-0-owner): "
        "Pods with local storage (use deleteEmptyDirData to override)",
        "PodDisruptionBudget shop/web allows 0 disruptions (2/2 healthy): web-7d9c-abcde (Deployment/web)",
    ]
    assert blockers["linux-1"] == [
        "default/debug (no controller): Pods declare no controller (use force to override)"
    ]


def test_the_plan_shows_the_next_window_in_its_own_time_zone_and_whether_it_fits() -> None:
    windows = {
        "windows": [
            # The fake clock starts on Tuesday 2023-11-14 22:13 UTC.
            {
                "name": "short",
                "days": ["sat"],
                "start": "22:00",
                "end": "22:30",
                "timeZone": "Europe/Amsterdam",
            },
            {
                "name": "long",
                "days": ["sat"],
                "start": "22:00",
                "end": "04:00",
                "timeZone": "America/New_York",
            },
        ]
    }
    h = Harness(
        {"linux": 1, "win": 1},
        nodes_per_pool=2,
        extra_config=windows,
        pool_linux={"window": "short"},
        pool_win={"window": "long"},
    )

    # The two windows are never open together: a run would be refused unless immediate.
    refused = plan_of(h)
    assert refused["wouldStart"] is False and "never open together" in refused["refusal"]
    pools = plan_of(h, immediate=True)["pools"]

    short, long = pools["linux"]["window"], pools["win"]["window"]
    assert short["timeZone"] == "Europe/Amsterdam" and short["start"] == "2023-11-18T22:00:00+01:00"
    assert short["open"] is False
    # Two Linux nodes one after the other at the default 20 minutes: 40 minutes, in 30.
    assert short["fits"] is False and short["needs"] == 2400 and short["has"] == 1800
    assert long["start"] == "2023-11-18T22:00:00-05:00" and long["end"] == "2023-11-19T04:00:00-05:00"
    assert long["fits"] is True


def test_estimates_come_from_the_latest_run_once_one_has_measured_them() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=2, reimage_seconds=120)
    before = plan_of(h)
    assert before["pools"]["linux"]["durationSource"] == "default estimate for linux"
    assert before["estimatedSeconds"] == 2 * 1200

    run_id = h.start()
    h.pump(run_id)
    after = plan_of(h)

    pool = after["pools"]["linux"]
    assert pool["durationSource"].startswith(f"measured: median of 2 nodes in run {run_id}")
    assert 120 <= pool["nodeSeconds"] < 300
    assert after["estimatedSeconds"] == pytest.approx(2 * pool["nodeSeconds"], abs=1)


def _waves_of_run(h: Harness, run_id: str) -> list[list[str]]:
    """The run's waves as GET /api/runs/{id} shows them, each in plan order."""
    nodes = RunService(h.deps).get(run_id)["nodes"]
    order = {n.name: n.order for n in h.store.list_nodes(run_id)}
    waves: dict[int, list[str]] = defaultdict(list)
    for node in nodes:
        waves[node["wave"]].append(node["name"])
    return [sorted(names, key=order.__getitem__) for _, names in sorted(waves.items())]


@pytest.mark.parametrize(
    ("pools", "cluster"),
    [
        ({"linux": 1}, {}),
        ({"linux": 2, "win": 1}, {}),
        ({"linux": 2, "win": 2}, {"maxConcurrentNodes": 3}),
    ],
)
def test_a_run_follows_the_waves_of_its_plan_when_nothing_changes_in_between(
    pools: dict[str, int], cluster: dict[str, Any]
) -> None:
    # Every pool estimated as long as the harness's nodes take, as measured estimates would be.
    same = {f"pool_{p}": {"estimatedNodeDuration": 60} for p in pools}
    h = Harness(pools, nodes_per_pool=4, reimage_seconds=60, **same, **cluster)
    plan = plan_of(h)

    run_id = h.start()
    h.pump(run_id)

    assert set(h.node_states(run_id).values()) == {"succeeded"}
    assert _waves_of_run(h, run_id) == [w["nodes"] for w in plan["waves"]]


def test_a_plan_touches_nothing() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=2)
    before = repr(h.kube.nodes)
    build_plan(h.deps, h.config.cluster("test"), StartRequest(cluster="test", reason="plan"))
    assert repr(h.kube.nodes) == before
    assert h.store.list_runs() == [] and h.queue.sent == [] and h.store.active_run("test") is None
    assert [c for c in h.kube.calls if not c.startswith(("list_nodes", "list_pods"))] == []
    assert h.compute.calls == [f"list_instances {scale_set_id('vmss-linux')}"]
    assert datetime.fromtimestamp(h.clock.now(), UTC).year == 2023


def test_a_replica_set_the_app_may_not_read_is_named_as_such_and_the_plan_still_answers() -> None:
    from shared.errors import PermanentError

    h = Harness({"linux": 1}, nodes_per_pool=1)

    def forbidden(namespace: str, name: str) -> str | None:
        raise PermanentError(f'replicasets.apps "{name}" is forbidden')

    h.kube.replica_set_owner = forbidden  # type: ignore[method-assign]
    pod = make_pod("shop", "web-1", "linux-0", owner_kind="ReplicaSet")
    h.kube.pods["shop/web-1"] = pod
    h.kube.pdbs.append(
        {
            "metadata": {"namespace": "shop", "name": "web"},
            "spec": {"selector": {"matchLabels": {"app": "web-1"}}},
            "status": {"disruptionsAllowed": 0},
        }
    )

    [node] = plan_of(h)["nodes"]

    assert node["blockers"] == [
        "PodDisruptionBudget shop/web allows 0 disruptions (?/? healthy): web-1 (ReplicaSet/web-1-owner)"
    ]


def test_a_plan_counts_from_when_its_window_opens() -> None:
    windows = {
        "windows": [{"name": "sat", "days": ["sat"], "start": "22:00", "end": "06:00", "timeZone": "UTC"}]
    }
    h = Harness({"linux": 1}, nodes_per_pool=2, extra_config=windows, pool_linux={"window": "sat"})

    plan = plan_of(h)

    # Tuesday now; the run would wait for Saturday 22:00 UTC and take two 20-minute waves.
    assert plan["wouldStart"] is True and plan["refusal"] is None
    assert plan["notBefore"] == "2023-11-18T22:00:00.000Z" and "deferred until" in plan["stateReason"]
    assert plan["estimatedEnd"] == "2023-11-18T22:40:00.000Z"
    assert plan["waves"][0]["estimatedEnd"] == "2023-11-18T22:20:00.000Z"
    assert plan_of(h, immediate=True)["notBefore"] is None

"""Waves that do not fight the PodDisruptionBudgets: which pending nodes start together."""

from __future__ import annotations

from typing import Any

import pytest

from shared.adapters.kube_objects import Pod
from shared.rollout.admission import Admission
from shared.rollout.budget import DisruptionView, PoolObservation, choose_admissions
from shared.rollout.drain import budgets_on_nodes, disruptions_allowed
from shared.rollout.model import NodeState
from shared.rollout.service import RunService
from shared.rollout.store.memory import MemoryRunStore
from tests.fakes import make_pod, transient
from tests.harness import Harness, admitted_steps


def choose(
    pending: list[str],
    *,
    spends: dict[str, dict[str, int]],
    allowed: dict[str, int],
    held: set[str] = frozenset(),  # type: ignore[assignment]
    draining: tuple[str, ...] = (),
    budget: int = 4,
    unavailable: frozenset[str] = frozenset(),
    aware: bool = True,
) -> Any:
    return choose_admissions(
        pending=[(n, "pool") for n in pending],
        held={"pool": set(held)} if held else {},
        max_unavailable={"pool": budget},
        observed={"pool": PoolObservation(unavailable | frozenset(held))},
        max_concurrent_nodes=10,
        disruptions=DisruptionView(spends=spends, allowed=allowed, draining=draining) if aware else None,
    )


def test_two_nodes_with_replicas_of_one_budget_go_in_different_waves_and_the_slot_goes_to_the_next() -> None:
    spends = {"a": {"shop/web": 1}, "b": {"shop/web": 1}}
    decision = choose(["a", "b", "c"], spends=spends, allowed={"shop/web": 1}, budget=2)
    assert decision.admit == ["a", "c"]
    assert decision.held_back == {
        "b": "PodDisruptionBudget shop/web allows 1 disruptions now, 1 spoken for by nodes draining "
        "or starting before it; 1 of its pods are on this node"
    }
    # In plan order the two fight: b's evictions would be refused until a's pod is back.
    assert choose(["a", "b", "c"], spends=spends, allowed={"shop/web": 1}, budget=2, aware=False).admit == [
        "a",
        "b",
    ]


def test_a_budget_allowing_two_takes_two_of_its_nodes_in_one_wave() -> None:
    spends = {n: {"shop/web": 1} for n in "abc"}
    decision = choose(["a", "b", "c"], spends=spends, allowed={"shop/web": 2})
    assert (decision.admit, list(decision.held_back)) == (["a", "b"], ["c"])


def test_nodes_still_draining_spend_the_budget_and_nodes_past_their_drain_do_not() -> None:
    spends = {"a": {"shop/web": 1}, "b": {"shop/web": 1}}
    draining = choose(["b"], spends=spends, allowed={"shop/web": 1}, held={"a"}, draining=("a",))
    assert (draining.admit, list(draining.held_back)) == ([], ["b"])
    # a's pods are evicted (it is reimaging): the status already counts what that took.
    reimaging = choose(["b"], spends=spends, allowed={"shop/web": 1}, held={"a"})
    assert reimaging.admit == ["b"]


def test_with_nothing_of_ours_in_flight_a_node_starts_even_if_its_budget_allows_nothing() -> None:
    # Holding it back would wait for nothing: its drain waits for the budget, and times out
    # with the reason, as kubectl drain would.
    decision = choose(["a"], spends={"a": {"shop/web": 1}}, allowed={"shop/web": 0})
    assert (decision.admit, decision.held_back) == (["a"], {})
    # Once something of ours is in flight, the same node waits for it.
    decision = choose(["a"], spends={"a": {"shop/web": 1}}, allowed={"shop/web": 0}, held={"x"})
    assert (decision.admit, list(decision.held_back)) == ([], ["a"])


def test_a_node_holding_more_of_a_budgets_pods_than_it_allows_gets_the_budget_to_itself() -> None:
    spends = {"a": {"db/pg": 2}, "b": {"db/pg": 1}}
    decision = choose(["a", "b"], spends=spends, allowed={"db/pg": 1}, held={"x"})
    assert (decision.admit, list(decision.held_back)) == (["a"], ["b"])


def test_unprotected_nodes_deleted_budgets_and_nodes_unavailable_already_are_never_held_back() -> None:
    spends = {"a": {"shop/web": 1}, "b": {"shop/gone": 3}, "d": {"shop/web": 1}}
    decision = choose(
        ["a", "b", "c", "d"], spends=spends, allowed={"shop/web": 1}, unavailable=frozenset({"d"})
    )
    assert decision.admit == ["a", "b", "c", "d"] and decision.held_back == {}


def test_the_pool_budget_still_bounds_a_wave() -> None:
    decision = choose(["a", "b", "c"], spends={}, allowed={}, budget=2)
    assert decision.admit == ["a", "b"] and "pool budget of 2" in decision.waiting["pool"]


def ready_pod(ns: str, name: str, node: str, app: str, **kwargs: Any) -> Pod:
    return Pod(make_pod(ns, name, node, ready=True, labels={"app": app}, **kwargs))


def test_a_nodes_spend_counts_its_ready_evictable_pods_each_budget_selects_in_its_namespace() -> None:
    pdbs = [
        {
            "metadata": {"namespace": "shop", "name": "web"},
            "spec": {"selector": {"matchLabels": {"app": "web"}}},
        },
        {
            "metadata": {"namespace": "db", "name": "all"},
            "spec": {"selector": {}},
            "status": {"disruptionsAllowed": 1},
        },
    ]
    pods = {
        "n1": [
            ready_pod("shop", "web-1", "n1", "web"),
            ready_pod("shop", "web-2", "n1", "web"),
            ready_pod("other", "web-3", "n1", "web"),  # no budget in its namespace
            ready_pod("db", "pg-0", "n1", "pg", owner_kind="StatefulSet"),
            ready_pod("db", "agent", "n1", "agent", owner_kind="DaemonSet"),  # the drain leaves it
        ],
        "n2": [
            Pod(make_pod("shop", "web-4", "n2", labels={"app": "web"})),  # not Ready: spends nothing
            ready_pod("shop", "web-5", "n2", "web", phase="Succeeded"),
        ],
    }
    assert budgets_on_nodes(pods, pdbs) == {"n1": {"shop/web": 2, "db/all": 1}}
    assert disruptions_allowed(pdbs) == {"shop/web": 0, "db/all": 1}


def protect(h: Harness, node: str, app: str, *, allowed: int) -> None:
    pod = make_pod("shop", f"{app}-{node}", node, ready=True, labels={"app": app})
    h.kube.pods[f"shop/{app}-{node}"] = pod
    if not any(p["metadata"]["name"] == app for p in h.kube.pdbs):
        h.kube.pdbs.append(
            {
                "metadata": {"namespace": "shop", "name": app},
                "spec": {"selector": {"matchLabels": {"app": app}}},
                "status": {"disruptionsAllowed": allowed, "currentHealthy": 2, "desiredHealthy": 1},
            }
        )


def test_a_run_records_each_nodes_budgets_and_holds_back_the_node_whose_budget_its_wave_spends() -> None:
    h = Harness({"linux": 3}, nodes_per_pool=3)
    protect(h, "linux-0", "web", allowed=1)
    protect(h, "linux-1", "web", allowed=1)
    run_id = h.start()
    assert {n.name: n.pdb_pods for n in h.store.node_summaries(run_id)} == {
        "linux-0": {"shop/web": 1},
        "linux-1": {"shop/web": 1},
        "linux-2": {},
    }
    sent = h.queue.take()  # the start admitted at once
    assert sorted(item.node for item, _ in sent if item.kind == "step") == ["linux-0", "linux-2"]
    run = h.store.get_run(run_id)
    assert "PodDisruptionBudget shop/web allows 1" in run.waiting["linux-1"]
    shown = {n["name"]: n for n in RunService(h.deps).get(run_id)["nodes"]}
    assert shown["linux-1"]["state"] == "pending" and "shop/web" in shown["linux-1"]["reason"]
    # One delayed look again, however many admissions held it back.
    rechecks = [delay for item, delay in sent if item.kind == "admit"]
    assert rechecks == [pytest.approx(5.0)]
    Admission(h.deps).admit(run_id)  # a node ended, say: still held back, no second look
    assert "linux-1" in h.store.get_run(run_id).waiting
    assert [item for item, _ in h.queue.take() if item.kind == "admit"] == []
    h.clock.advance(5)
    Admission(h.deps).admit(run_id)
    assert [item.kind for item, _ in h.queue.take()] == ["admit"]


def test_a_held_back_node_starts_once_its_budget_allows_again_and_the_run_completes() -> None:
    h = Harness({"linux": 2}, nodes_per_pool=3)
    protect(h, "linux-0", "web", allowed=1)
    protect(h, "linux-1", "web", allowed=1)
    run_id = h.start()
    h.pump(run_id)
    nodes = {n.name: n for n in h.store.list_nodes(run_id)}
    assert all(n.state == NodeState.SUCCEEDED for n in nodes.values())

    def admitted_at(name: str) -> str:
        return next(e["at"] for e in nodes[name].history if e["to"] == "admitted")

    assert admitted_at("linux-0") == admitted_at("linux-2") < admitted_at("linux-1")


def test_plan_order_reads_no_budget_and_starts_the_two_together() -> None:
    h = Harness({"linux": 2}, nodes_per_pool=3, waveOrder="plan")
    protect(h, "linux-0", "web", allowed=1)
    protect(h, "linux-1", "web", allowed=1)
    run_id = h.start()
    assert sorted(s.node for s in admitted_steps(h)) == ["linux-0", "linux-1"]
    assert not any(c.startswith("list_pdbs") for c in h.kube.calls)
    assert all(not n.pdb_pods for n in h.store.node_summaries(run_id))


def test_a_cluster_without_budgets_pays_one_budget_list_at_start_and_none_per_admission() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=3)
    run_id = h.start()
    h.pump(run_id)
    assert [c for c in h.kube.calls if c.startswith("list_pdbs")] == ["list_pdbs *"]


def test_a_run_of_many_nodes_reads_the_pods_of_the_budgets_namespaces_not_every_pod_or_node() -> None:
    h = Harness({"linux": 1}, nodes_per_pool=24)
    protect(h, "linux-0", "web", allowed=1)
    run_id = h.start()
    reads = [c for c in h.kube.calls if c.startswith("list_pods")]
    assert reads == ["list_pods_in shop"]
    assert h.store.get_node(run_id, "linux-0").pdb_pods == {"shop/web": 1}


def test_a_budget_read_that_fails_starts_the_run_in_plan_order() -> None:
    h = Harness({"linux": 2}, nodes_per_pool=3)
    protect(h, "linux-0", "web", allowed=1)
    protect(h, "linux-1", "web", allowed=1)
    h.kube.fail_next = [transient("500 InternalError")]
    run_id = h.start()
    assert sorted(s.node for s in admitted_steps(h)) == ["linux-0", "linux-1"]
    assert all(not n.pdb_pods for n in h.store.node_summaries(run_id))


def test_the_budgets_column_reads_back_from_table_text_memory_maps_and_rows_older_than_it() -> None:
    from shared.rollout.store.base import _pdb_pods, node_columns

    columns = node_columns("node~a", {"state": "pending", "pool": "p", "order": 0, "pdb_pods": {"a/b": 2}})
    assert columns["pdb_pods"] == '{"a/b":2}'
    assert _pdb_pods(columns["pdb_pods"]) == _pdb_pods({"a/b": 2}) == {"a/b": 2}
    assert _pdb_pods(None) == _pdb_pods("{}") == {}
    store = MemoryRunStore()
    h = Harness({"linux": 1}, nodes_per_pool=1, store=store)
    protect(h, "linux-0", "web", allowed=1)
    run_id = h.start()
    assert store.get_node(run_id, "linux-0").pdb_pods == {"shop/web": 1}

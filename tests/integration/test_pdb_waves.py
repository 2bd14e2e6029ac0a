"""Waves chosen so that they do not fight the PodDisruptionBudgets, through the real app,
the real Kubernetes client and the sandbox's API server (its PDB controller, its 429s)."""

from __future__ import annotations

import pytest

from sandbox.stack import Sandbox
from tests.integration.sandbox_helpers import Driver

pytestmark = pytest.mark.integration


def _at(node: dict[str, object], to: str) -> str:
    history = node["history"]
    assert isinstance(history, list)
    return next(str(h["at"]) for h in history if h["to"] == to)


def test_two_nodes_with_replicas_of_one_budget_are_drained_in_different_waves(
    sandbox: Sandbox, driver: Driver
) -> None:
    assert sandbox.kube and sandbox.cluster
    # Two nodes of one pool, named: earlier tests of the session may leave others busy.
    hosts = sorted(driver.nodes_of("alpha")[:2])
    sandbox.cluster.add_deployment("waves", "web", replicas=2, pdb_max_unavailable=1, nodes=hosts)
    placed = sorted(
        p["spec"]["nodeName"] for p in sandbox.kube.list("pods", "waves", label_selector="app=web")
    )
    assert placed == hosts
    try:
        # Each pool's budget is 2 and the cluster's 6: in plan order both would start at once.
        run = driver.wait(driver.start(nodes=hosts))
        assert run["state"] == "succeeded", driver.explain(run)
        nodes = {n["name"]: n for n in run["nodes"]}
        first, second = sorted(hosts, key=lambda n: _at(nodes[n], "admitted"))
        # Started together, the second's evictions would have been refused (429) until the
        # first's replacement was Ready; held back, it starts once the first has drained.
        assert _at(nodes[second], "admitted") >= _at(nodes[first], "reimaging"), driver.explain(run)
        assert not any("disruption budget" in (n.get("lastError") or "") for n in run["nodes"])
    finally:
        sandbox.kube.delete("poddisruptionbudgets.policy", "waves", "web-pdb")
        driver.reset(*hosts)

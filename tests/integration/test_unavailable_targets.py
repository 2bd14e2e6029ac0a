"""With ``maxUnavailable: 1`` (the first-run checklist's), a run cannot get stuck: a NotReady
target is patched without a second slot, a node an earlier run of ours left cordoned is
taken over, and a run held up by a failed node is marked stalled until an operator
releases the node. The whole app over real HTTP: runners, the sweeper's timer, Azurite,
the simulated ARM and API server."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.cluster import PoolSpec, utcnow_iso
from sandbox.demo import http_json
from sandbox.stack import Sandbox, SandboxOptions
from tests.integration.sandbox_helpers import Driver

pytestmark = pytest.mark.integration

POOL = "delta"


@pytest.fixture(scope="module")
def tight(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    """A small sandbox of its own: one pool of 3 with a budget of 1, drains that fail (a
    PodDisruptionBudget that never allows an eviction fails its node), room for a failure
    without the run failing, and a short stallAfter."""
    sb = Sandbox(
        SandboxOptions(
            state_dir=Path(tmp_path_factory.mktemp("tight")),
            pools=PoolSpec.parse_list(f"{POOL}:linux:3"),
            runners=2,
            time_scale=0.01,
            max_unavailable=1,
            max_concurrent_nodes=1,
            max_failed_nodes=3,
            workflow={"stallAfter": 12},
            # Long enough for the shared workloads' PDBs under load (a replica evicted from
            # the previous node must be Ready elsewhere first), short for one that never yields.
            pool_overrides={
                POOL: {"drain": {"timeout": 15, "deleteEmptyDirData": True, "onTimeout": "fail"}}
            },
        )
    )
    sb.start()
    yield sb
    sb.stop()


@pytest.fixture
def driver(tight: Sandbox) -> Driver:
    return Driver(tight)


def not_ready(sandbox: Sandbox, name: str) -> None:
    """The kubelet stops posting status, as the node lifecycle controller then reports it."""
    assert sandbox.kube

    def stop(obj: dict[str, Any]) -> None:
        obj["status"]["conditions"] = [
            {
                "type": "Ready",
                "status": "Unknown",
                "reason": "NodeStatusUnknown",
                "message": "Kubelet stopped posting node status.",
                "lastHeartbeatTime": utcnow_iso(),
                "lastTransitionTime": utcnow_iso(),
            }
        ]

    sandbox.kube.mutate("nodes", None, name, stop)


def stuck_pod_on_one_node(sandbox: Sandbox, name: str) -> str:
    """A Deployment of one replica whose PDB never allows its eviction; its node's name."""
    assert sandbox.cluster and sandbox.kube
    sandbox.cluster.add_deployment("stuck", name, replicas=1, pdb_min_available=1)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pods = sandbox.kube.list("pods", "stuck", label_selector=f"app={name}")
        if pods and pods[0]["spec"].get("nodeName"):
            return str(pods[0]["spec"]["nodeName"])
        time.sleep(0.2)
    raise AssertionError("the stuck pod was never scheduled")


def unstick(sandbox: Sandbox, name: str) -> None:
    """The PDB goes: the pod can be evicted again."""
    assert sandbox.kube
    sandbox.kube.delete("poddisruptionbudgets.policy", "stuck", f"{name}-pdb")


def node_of(run: dict[str, Any], name: str) -> dict[str, Any]:
    return next(n for n in run["nodes"] if n["name"] == name)


def test_a_notready_target_with_max_unavailable_1_is_patched_and_the_run_completes(
    tight: Sandbox, driver: Driver
) -> None:
    image = driver.new_image()
    since = time.time()
    down = driver.nodes_of(POOL)[1]
    not_ready(tight, down)
    run = driver.wait(driver.start(), timeout=120)
    assert run["state"] == "succeeded", driver.explain(run)
    assert run["nodes"][0]["name"] == down  # first: patching it disrupts nothing more
    report = driver.check(run, since=since, image=image)
    assert report.ok, report.violations
    # The NotReady node counted once, cordoned and reimaged or not: never two at once.
    assert report.max_disrupted == {POOL: 1}


def test_a_node_an_earlier_failed_run_left_cordoned_is_taken_over_by_the_next_run(
    tight: Sandbox, driver: Driver
) -> None:
    assert tight.kube
    image = driver.new_image()
    blocked = stuck_pod_on_one_node(tight, "taken")
    try:
        first = driver.wait(driver.start(nodes=[blocked]), timeout=60)
        assert first["state"] == "failed", driver.explain(first)
        assert tight.kube.get("nodes", None, blocked)["spec"]["unschedulable"] is True
    finally:
        unstick(tight, "taken")
    since = time.time()
    second = driver.wait(driver.start(), timeout=120)
    assert second["state"] == "succeeded", driver.explain(second)
    reasons = [h["reason"] for h in node_of(second, blocked)["history"]]
    assert any(f"left cordoned by run {first['id']}, taken over by run {second['id']}" in r for r in reasons)
    report = driver.check(second, since=since, image=image)
    assert report.ok, report.violations
    assert report.max_disrupted == {POOL: 1}


def test_a_run_held_up_by_a_failed_node_is_marked_stalled_until_it_is_released(
    tight: Sandbox, driver: Driver
) -> None:
    assert tight.kube
    driver.new_image()
    blocked = stuck_pod_on_one_node(tight, "held")
    try:
        first = driver.wait(driver.start(nodes=[blocked]), timeout=60)
        assert node_of(first, blocked)["state"] == "failed", driver.explain(first)
    finally:
        unstick(tight, "held")
    others = [n for n in driver.nodes_of(POOL) if n != blocked]
    run_id = driver.start(nodes=others)
    deadline = time.monotonic() + 60
    while (stalled := driver.get(run_id)["stalled"]) is None:
        assert time.monotonic() < deadline, driver.get(run_id)
        time.sleep(0.5)
    assert f"1 unavailable otherwise: {blocked}" in stalled["reason"], stalled
    assert {n["state"] for n in driver.get(run_id)["nodes"]} == {"pending"}
    events = [e for e in tight.kube.list("events", "default") if e.get("reason") == "PatchRunStalled"]
    assert events and events[0]["involvedObject"]["name"] in others

    status, answer = http_json(
        "POST",
        f"{driver.url}/api/runs/{first['id']}/nodes/{blocked}/release",
        {"requestedBy": "ops on call", "reason": "stuck pod moved by hand"},
    )
    assert (status, answer["state"]) == (200, "released"), answer
    assert not tight.kube.get("nodes", None, blocked)["spec"].get("unschedulable")
    run = driver.wait(run_id, timeout=120)
    assert run["state"] == "succeeded" and run["stalled"] is None, driver.explain(run)
    released = node_of(driver.get(first["id"]), blocked)
    assert released["state"] == "released"
    assert released["history"][-1]["by"] == "ops on call (function key)"

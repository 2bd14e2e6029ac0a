"""The invariant checker (sandbox/invariants.py) on hand-made histories: it must be able to fail."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox.invariants import check_history

POOLS = {"n1": "alpha", "n2": "alpha", "n3": "alpha"}
BUDGETS = {"alpha": 2}


def history(*events: tuple[str, dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"t": float(i), "at": f"t{i}", "kind": kind, **fields} for i, (kind, fields) in enumerate(events)]


def wiped(node: str, *, run: str = "r1", pods: list[str] | None = None) -> tuple[str, dict[str, Any]]:
    return ("node_wiped", {"node": node, "run": run, "running_pods": pods or [], "pods": 1})


def failed(node: str) -> tuple[str, dict[str, Any]]:
    return ("reimage_failed", {"computer_name": node.upper(), "error_code": "InternalExecutionError"})


def check(*events: tuple[str, dict[str, Any]]) -> list[str]:
    return check_history(history(*events), node_pools=POOLS, budgets=BUDGETS).violations


def test_a_clean_history_has_no_violations_and_counts_one_reimage_per_node() -> None:
    records = history(
        ("node_cordoned", {"node": "n1"}),
        wiped("n1"),
        ("node_not_ready", {"node": "n1"}),
        ("node_ready", {"node": "n1"}),
        ("node_uncordoned", {"node": "n1"}),
        ("node_cordoned", {"node": "n2"}),
        wiped("n2"),
    )
    report = check_history(records, node_pools=POOLS, budgets=BUDGETS)
    assert report.ok, report.violations
    assert report.reimages == 2
    assert report.reimages_by_node == {("r1", "n1"): 1, ("r1", "n2"): 1}


@pytest.mark.parametrize(
    ("events", "expected"),
    [
        pytest.param(
            [wiped("n1", pods=["apps/web-1"])],
            ["n1 was reimaged with non-DaemonSet pods still on it: ['apps/web-1']"],
            id="pods-bound",
        ),
        pytest.param(
            [wiped("n1"), wiped("n1")],
            ["n1 was reimaged twice by run r1 (2 reimages)"],
            id="twice",
        ),
        pytest.param(
            [wiped("n1", run=""), wiped("n1", run="")],
            ["n1 was reimaged twice (2 reimages)"],
            id="twice-without-run-annotation",
        ),
        pytest.param(
            [wiped("n1"), ("node_uncordoned", {"node": "n1"}), wiped("n1")],
            ["n1 was reimaged twice by run r1 (2 reimages)"],
            id="again-after-the-node-was-back",
        ),
        pytest.param(
            [wiped("n1"), failed("n1"), wiped("n1"), wiped("n1")],
            ["n1 was reimaged twice by run r1 (2 reimages)"],
            id="one-retry-forgiven-not-two",
        ),
        pytest.param(
            [
                ("node_cordoned", {"node": "n1"}),
                ("node_cordoned", {"node": "n2"}),
                ("node_cordoned", {"node": "n3"}),
            ],
            ["3 nodes of pool alpha disrupted at once (budget 2)"],
            id="budget",
        ),
        pytest.param(
            [("pod_deleted", {"namespace": "apps", "name": "web-1", "via": "delete"})],
            ["pod apps/web-1 was deleted outside the Eviction API"],
            id="delete-not-evict",
        ),
    ],
)
def test_each_broken_promise_is_a_violation(
    events: list[tuple[str, dict[str, Any]]], expected: list[str]
) -> None:
    violations = check(*events)
    assert [v.split(": ", 1)[1] for v in violations] == expected


@pytest.mark.parametrize(
    "events",
    [
        pytest.param([wiped("n1"), failed("n1"), wiped("n1")], id="a-failed-reimage-retried"),
        pytest.param([wiped("n1", run="r1"), wiped("n1", run="r2")], id="two-runs-one-each"),
        pytest.param([wiped("n1"), wiped("n2"), wiped("n3")], id="three-nodes"),
    ],
)
def test_what_is_not_a_double_reimage(events: list[tuple[str, dict[str, Any]]]) -> None:
    assert check(*events) == []


def test_reimages_per_node_are_counted_per_run() -> None:
    report = check_history(
        history(wiped("n1", run="r1"), wiped("n1", run="r2"), wiped("n1", run="r2")),
        node_pools=POOLS,
        budgets=BUDGETS,
    )
    assert report.reimages == 3
    assert report.reimages_by_node == {("r1", "n1"): 1, ("r2", "n1"): 2}
    assert len(report.violations) == 1 and "reimaged twice by run r2" in report.violations[0]


def pod(
    *,
    owner: str | None = "ReplicaSet",
    phase: str = "Running",
    terminating: bool = False,
    mirror: bool = False,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"namespace": "apps", "name": "p", "annotations": {}}
    if owner:
        meta["ownerReferences"] = [{"kind": owner, "name": "o", "controller": True}]
    if terminating:
        meta["deletionTimestamp"] = "2026-12-03T10:00:00Z"
    if mirror:
        meta["annotations"]["kubernetes.io/config.mirror"] = "abc"
    return {"metadata": meta, "spec": {"nodeName": "n1"}, "status": {"phase": phase}}


@pytest.mark.parametrize(
    ("case", "dies"),
    [
        pytest.param(pod(), True, id="running-replica"),
        pytest.param(pod(phase="Pending"), True, id="pending-but-bound"),
        pytest.param(pod(phase="Unknown"), True, id="unknown"),
        pytest.param(pod(terminating=True), True, id="terminating-grace-cut-short"),
        pytest.param(pod(owner=None), True, id="bare-pod"),
        pytest.param(pod(owner="StatefulSet"), True, id="statefulset"),
        pytest.param(pod(owner="DaemonSet"), False, id="daemonset-comes-back"),
        pytest.param(pod(owner=None, mirror=True), False, id="mirror-pod"),
        pytest.param(pod(phase="Succeeded"), False, id="finished"),
        pytest.param(pod(phase="Failed"), False, id="failed"),
    ],
)
def test_a_wipe_records_every_non_daemonset_pod_still_bound_to_the_node(
    case: dict[str, Any], dies: bool
) -> None:
    from sandbox.cluster import _dies_with_the_disk

    assert _dies_with_the_disk(case) is dies

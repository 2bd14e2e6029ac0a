"""The simulated API server's rules, read on their own (table-driven, no server, no store):
kubectl's AGE column, the eviction subresource's budget check and the disruption
controller's status, as the Kubernetes code they mirror decides."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox.kube.controllers import budget_status
from sandbox.kube.eviction import budget_refusal
from sandbox.kube.objects import Obj
from sandbox.kube.resources import ResourceType
from sandbox.kube.tables import human_duration

HOUR = 3600


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        # k8s.io/apimachinery/pkg/util/duration TestHumanDuration
        (1, "1s"),
        (70, "70s"),
        (190, "3m10s"),
        (180, "3m"),
        (70 * 60, "70m"),
        (47 * HOUR, "47h"),
        (3 * HOUR + 20 * 60, "3h20m"),
        (49 * HOUR, "2d1h"),
        (48 * HOUR, "2d"),
        ((8 * 24 + 2) * HOUR, "8d"),
        (367 * 24 * HOUR, "367d"),
        ((365 * 2 * 24 + 25) * HOUR, "2y1d"),
        (365 * 3 * 24 * HOUR, "3y"),
        ((365 * 8 * 24 + 2) * HOUR, "8y"),
        (-1, "0s"),
        (-2, "<invalid>"),
    ],
)
def test_age_column_is_human_duration(seconds: int, shown: str) -> None:
    assert human_duration(seconds) == shown


def _pod(*, phase: str = "Running", ready: bool = True, owner: Obj | None = None, **meta: Any) -> Obj:
    metadata: Obj = {"name": "web-1", "namespace": "shop", "uid": "pod-uid", "labels": {"app": "web"}, **meta}
    if owner is not None:
        metadata["ownerReferences"] = [owner]
    return {
        "metadata": metadata,
        "status": {"phase": phase, "conditions": [{"type": "Ready", "status": str(ready)}]},
    }


def _pdb(name: str = "web", *, generation: int = 1, status: Obj | None = None, **spec: Any) -> Obj:
    return {
        "metadata": {"name": name, "namespace": "shop", "generation": generation},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, **spec},
        "status": status if status is not None else {},
    }


def _observed(allowed: int, *, healthy: int = 3, desired: int = 2) -> Obj:
    return {
        "observedGeneration": 1,
        "disruptionsAllowed": allowed,
        "currentHealthy": healthy,
        "desiredHealthy": desired,
    }


@pytest.mark.parametrize(
    ("pod", "budgets", "code", "message"),
    [
        (_pod(), [_pdb(status=_observed(1))], None, None),
        (_pod(), [], None, None),
        (_pod(), [_pdb(status=_observed(0, healthy=2))], 429, "needs 2 healthy pods and has 2 currently"),
        (_pod(), [_pdb(generation=2, status=_observed(1))], 429, "is still being processed by the server."),
        (_pod(), [_pdb("a", status=_observed(1)), _pdb("b", status=_observed(1))], 500, None),
        # canIgnorePDB: not yet running, finished, or already terminating.
        (_pod(phase="Pending"), [_pdb(status=_observed(0))], None, None),
        (_pod(phase="Succeeded"), [_pdb(status=_observed(0))], None, None),
        (_pod(deletionTimestamp="2026-12-03T10:00:00Z"), [_pdb(status=_observed(0))], None, None),
        # An unready pod may go when the budget is healthy anyway, or by AlwaysAllow.
        (_pod(ready=False), [_pdb(status=_observed(0, healthy=2, desired=2))], None, None),
        (_pod(ready=False), [_pdb(status=_observed(0, healthy=1, desired=2))], 429, "needs 2"),
        (
            _pod(ready=False),
            [_pdb(unhealthyPodEvictionPolicy="AlwaysAllow", status=_observed(0, healthy=1, desired=2))],
            None,
            None,
        ),
        # An empty selector matches nothing for eviction.
        (_pod(), [{**_pdb(status=_observed(0)), "spec": {"selector": {}}}], None, None),
    ],
)
def test_eviction_is_refused_as_the_eviction_subresource_refuses(
    pod: Obj, budgets: list[Obj], code: int | None, message: str | None
) -> None:
    refusal = budget_refusal(pod, budgets)
    if code is None:
        assert refusal is None
        return
    assert refusal is not None
    assert refusal.error.code == code
    if code == 429:
        assert refusal.pdb == budgets[0]["metadata"]["name"]
        assert message is not None and message in refusal.error.causes[0]["message"]
        assert refusal.error.retry_after_seconds == (10 if "processed" in message else 0)
    else:
        assert refusal.pdb is None


_RS_UID = "rs-uid"
_REPLICA_SET: Obj = {
    "kind": "ReplicaSet",
    "metadata": {"name": "web-abc", "namespace": "shop", "uid": _RS_UID},
    "spec": {"replicas": 3},
}
_BY_RS: Obj = {"kind": "ReplicaSet", "name": "web-abc", "uid": _RS_UID, "controller": True}


def _find_replica_set(rt: ResourceType, namespace: str, name: str) -> Obj | None:
    return _REPLICA_SET if (rt.kind, namespace, name) == ("ReplicaSet", "shop", "web-abc") else None


@pytest.mark.parametrize(
    ("spec", "pods", "counts", "reason"),
    [
        ({"minAvailable": 2}, [_pod(), _pod(), _pod()], (3, 2, 1), "SufficientPods"),
        ({"minAvailable": 3}, [_pod(), _pod(), _pod(ready=False)], (3, 3, 0), "InsufficientPods"),
        # Percentages of the controller's scale round up.
        ({"maxUnavailable": "50%"}, [_pod(owner=_BY_RS)] * 3, (3, 1, 2), "SufficientPods"),
        ({"minAvailable": "50%"}, [_pod(owner=_BY_RS)] * 3, (3, 2, 1), "SufficientPods"),
        # Pods without a controller leave expectedPods.
        ({"maxUnavailable": 1}, [_pod(), _pod()], (0, 0, 0), "InsufficientPods"),
        # A controller that cannot be found: failSafe.
        (
            {"maxUnavailable": 1},
            [_pod(owner={**_BY_RS, "uid": "another"})],
            (0, 0, 0),
            "SyncFailed",
        ),
    ],
)
def test_budget_status_is_the_disruption_controllers(
    spec: Obj, pods: list[Obj], counts: tuple[int, int, int], reason: str
) -> None:
    """``counts``: expectedPods, desiredHealthy, disruptionsAllowed."""
    status = budget_status(_pdb(**spec), pods, _find_replica_set)
    assert (status["expectedPods"], status["desiredHealthy"], status["disruptionsAllowed"]) == counts
    (condition,) = status["conditions"]
    assert (condition["type"], condition["reason"]) == ("DisruptionAllowed", reason)
    assert condition["status"] == ("True" if reason == "SufficientPods" else "False")

"""The disruption controller, as far as the API shows it: PodDisruptionBudget status.

The store keeps the controller's work queue (the budgets a change may move, from
``budgets_moved_by``) and writes ``budget_status`` through ``/status`` before a
transaction ends, so a reader never sees a budget behind the pods it counts. These
functions read the cluster only through ``find`` (the store's lookup under its lock).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from sandbox.kube.objects import Obj, clone, json_equal, pod_ready, to_iso, utc_now
from sandbox.kube.resources import BY_KEY, PDBS, PODS, SCALED_CONTROLLERS, ResourceType
from sandbox.kube.selectors import LabelSelector, label_selector_from_struct, labels_match

# The store's lookup: (resource type, namespace, name) -> the stored object or None.
Find = Callable[[ResourceType, str, str], Obj | None]


class _ScaleUnknownError(Exception):
    """The disruption controller could not compute a budget's expected pods."""


def pdb_selector(pdb: Obj, *, for_eviction: bool) -> LabelSelector | None:
    selector = label_selector_from_struct((pdb.get("spec") or {}).get("selector"))
    # Eviction treats a nil or empty selector as matching nothing (getPodDisruptionBudgets);
    # the disruption controller treats an empty one as matching everything.
    if selector is None or (for_eviction and not selector):
        return None
    return selector


def budgets_moved_by(
    rt: ResourceType, event_type: str, obj: Obj, old: Obj | None, budgets: Mapping[str, Obj]
) -> set[str]:
    """The budgets (of ``obj``'s namespace, by name) a change may move, as the disruption
    controller's informers queue them."""
    meta = obj["metadata"]
    moved: set[str] = set()
    if rt is PDBS:
        # Its own status writes change nothing it reads; a spec change (or a new budget) does.
        if event_type != "DELETED" and (old is None or not json_equal(old.get("spec"), obj.get("spec"))):
            moved.add(meta["name"])
    elif rt is PODS:
        for pdb in budgets.values():
            selector = pdb_selector(pdb, for_eviction=False)
            if selector is not None and (
                labels_match(selector, obj) or (old is not None and labels_match(selector, old))
            ):
                moved.add(pdb["metadata"]["name"])
    elif rt.key in SCALED_CONTROLLERS.values():
        # A controller's scale is the denominator of every percentage and maxUnavailable.
        moved.update(budgets)
    return moved


def _expected_scale(pods: list[Obj], find: Find) -> int:
    """disruption controller getExpectedScale: the replicas of the pods' controllers, each once.

    Pods without a controller are left out (the controller warns of them with an
    UnmanagedPods Event); a controller it cannot find is an error (``_ScaleUnknownError``).
    """
    scales: dict[str, int] = {}
    for pod in pods:
        ref = next((r for r in pod["metadata"].get("ownerReferences") or [] if r.get("controller")), None)
        if ref is None or str(ref.get("uid")) in scales:
            continue
        found = _controller_scale(pod["metadata"]["namespace"], ref, find)
        if found is None:
            raise _ScaleUnknownError(f'found no controllers for pod "{pod["metadata"]["name"]}"')
        scales[found[0]] = found[1]
    return sum(scales.values())


def _owner_named(namespace: str, kind: str, ref: Obj, find: Find) -> Obj | None:
    if ref.get("kind") != kind:
        return None
    owner = find(BY_KEY[SCALED_CONTROLLERS[kind]], namespace, str(ref.get("name")))
    # The finders check the UID: a controller deleted and created again is another one.
    if owner is None or owner["metadata"]["uid"] != ref.get("uid"):
        return None
    return owner


def _controller_scale(namespace: str, ref: Obj, find: Find) -> tuple[str, int] | None:
    """The finders: the Deployment behind a ReplicaSet, else the ReplicaSet or StatefulSet."""
    controller = _owner_named(namespace, "ReplicaSet", ref, find) or _owner_named(
        namespace, "StatefulSet", ref, find
    )
    if controller is None:
        return None
    if controller["kind"] == "ReplicaSet":
        rs_ref = next(
            (r for r in controller["metadata"].get("ownerReferences") or [] if r.get("controller")), None
        )
        deployment = _owner_named(namespace, "Deployment", rs_ref, find) if rs_ref else None
        if deployment is not None:
            controller = deployment
    return controller["metadata"]["uid"], int((controller.get("spec") or {}).get("replicas", 1))


def _scaled(value: Any, total: int) -> int | None:
    """intstr.GetScaledValueFromIntOrPercent with roundUp=true."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and (m := re.fullmatch(r"(\d+)%", value)):
        return math.ceil(int(m.group(1)) * total / 100)
    return None


def budget_status(pdb: Obj, namespace_pods: Iterable[Obj], find: Find) -> Obj:
    """What the disruption controller's trySync (or, when that fails, failSafe) writes;
    ``namespace_pods``: the pods of the budget's namespace."""
    spec = pdb.get("spec") or {}
    previous = pdb.get("status") or {}
    selector = pdb_selector(pdb, for_eviction=False)
    pods = [] if selector is None else [p for p in namespace_pods if labels_match(selector, p)]
    healthy = len([p for p in pods if not p["metadata"].get("deletionTimestamp") and pod_ready(p)])
    expected, desired = 0, 0
    try:
        if spec.get("maxUnavailable") is not None:
            expected = _expected_scale(pods, find)
            max_unavailable = _scaled(spec["maxUnavailable"], expected)
            if max_unavailable is None:
                raise _ScaleUnknownError(f"invalid value for IntOrString: {spec['maxUnavailable']!r}")
            desired = max(0, expected - max_unavailable)
        elif spec.get("minAvailable") is not None:
            min_available = spec["minAvailable"]
            if isinstance(min_available, int) and not isinstance(min_available, bool):
                desired, expected = min_available, len(pods)
            else:
                expected = _expected_scale(pods, find)
                scaled = _scaled(min_available, expected)
                if scaled is None:
                    raise _ScaleUnknownError(f"invalid value for IntOrString: {min_available!r}")
                desired = scaled
    except _ScaleUnknownError as exc:
        # failSafe: no disruption allowed, the rest of the status as last written.
        status = clone(previous)
        status["disruptionsAllowed"] = 0
        for fld in ("currentHealthy", "desiredHealthy", "expectedPods", "observedGeneration"):
            status.setdefault(fld, 0)
        return _with_condition(status, previous, "SyncFailed", str(exc))
    allowed = healthy - desired
    if expected <= 0 or allowed <= 0:
        allowed = 0
    status = {
        "observedGeneration": pdb["metadata"].get("generation", 1),
        "currentHealthy": healthy,
        "desiredHealthy": desired,
        "expectedPods": expected,
        "disruptionsAllowed": allowed,
    }
    return _with_condition(status, previous, "SufficientPods" if allowed > 0 else "InsufficientPods", "")


def _with_condition(status: Obj, previous: Obj, reason: str, message: str) -> Obj:
    """apimeta.SetStatusCondition for DisruptionAllowed: the transition time moves only
    when the status does."""
    allowed = "True" if reason == "SufficientPods" else "False"
    before = next((c for c in previous.get("conditions") or [] if c.get("type") == "DisruptionAllowed"), None)
    since = before["lastTransitionTime"] if before and before.get("status") == allowed else to_iso(utc_now())
    status["conditions"] = [
        {
            "type": "DisruptionAllowed",
            "status": allowed,
            "reason": reason,
            "message": message,
            "observedGeneration": status["observedGeneration"],
            "lastTransitionTime": since,
        }
    ]
    return status

"""Which pods a drain evicts, skips or refuses: exactly the decisions of ``kubectl drain``.

The filters and their order mirror k8s.io/kubectl/pkg/drain/filters.go: deleted pods
past the skip timeout, DaemonSet-owned pods, mirror pods, pods with local (emptyDir)
storage, unreplicated (bare) pods. A filter that says "do not delete" ends the chain for
that pod; any error refuses the whole drain, listing every offending pod.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.adapters.kube_objects import Pod

FINISHED_PHASES = frozenset({"Succeeded", "Failed"})


@dataclass(frozen=True)
class DrainOptionsView:
    delete_emptydir_data: bool = False
    force: bool = False


@dataclass
class DrainPlan:
    evict: list[Pod] = field(default_factory=list)
    skipped: list[tuple[Pod, str]] = field(default_factory=list)
    refused: list[tuple[Pod, str]] = field(default_factory=list)

    @property
    def refusal_text(self) -> str:
        return "; ".join(f"{p.key} ({p.owner_text}): {why}" for p, why in self.refused)


DAEMONSET_FATAL = "DaemonSet-managed Pods (use --ignore-daemonsets to ignore)"
LOCAL_STORAGE_FATAL = "Pods with local storage (use deleteEmptyDirData to override)"
UNMANAGED_FATAL = "Pods declare no controller (use force to override)"


def plan_drain(
    pods: list[Pod],
    *,
    options: DrainOptionsView,
    daemonset_exists: Callable[[str, str], bool],
) -> DrainPlan:
    """Sort the pods on a node into evict / skip / refuse, as kubectl drain
    --ignore-daemonsets does (the product always ignores DaemonSets: they return with
    the node)."""
    plan = DrainPlan()
    for pod in pods:
        finished = pod.phase in FINISHED_PHASES
        controller = pod.controller
        if controller is not None and controller.get("kind") == "DaemonSet" and not finished:
            if daemonset_exists(pod.namespace, str(controller["name"])):
                plan.skipped.append((pod, "DaemonSet-managed"))
                continue
            if not options.force:
                plan.refused.append((pod, "owning DaemonSet not found (orphan; use force)"))
                continue
            # An orphaned DaemonSet pod is deleted with --force, with a warning.
        if pod.is_mirror:
            plan.skipped.append((pod, "mirror pod"))
            continue
        if pod.has_local_storage and not finished and not options.delete_emptydir_data:
            plan.refused.append((pod, LOCAL_STORAGE_FATAL))
            continue
        if controller is None and not finished and not options.force:
            plan.refused.append((pod, UNMANAGED_FATAL))
            continue
        plan.evict.append(pod)
    return plan


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """metav1.LabelSelector semantics. An empty selector matches everything, as for PDBs
    in policy/v1; a missing one matches nothing."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def blocking_budgets(pods: Sequence[Pod], pdbs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Human-readable list of PodDisruptionBudgets that currently allow no disruption of
    pods we are about to evict, with the pods and their owners."""
    out = []
    for pdb in pdbs:
        status = pdb.get("status") or {}
        if int(status.get("disruptionsAllowed", 0)) > 0:
            continue
        meta = pdb["metadata"]
        hit = [
            p
            for p in pods
            if p.namespace == meta.get("namespace")
            and p.phase not in FINISHED_PHASES | {"Pending"}
            and selector_matches((pdb.get("spec") or {}).get("selector"), p.labels)
        ]
        if hit:
            names = ", ".join(f"{p.name} ({p.owner_text})" for p in hit)
            out.append(
                f"PodDisruptionBudget {meta['namespace']}/{meta['name']} allows 0 disruptions "
                f"({status.get('currentHealthy', '?')}/{status.get('desiredHealthy', '?')} healthy): {names}"
            )
    return out


def budget_key(pdb: Mapping[str, Any]) -> str:
    meta = pdb.get("metadata") or {}
    return f"{meta.get('namespace', 'default')}/{meta.get('name', '')}"


def budgets_on_nodes(
    pods_by_node: Mapping[str, Sequence[Pod]], pdbs: Sequence[Mapping[str, Any]]
) -> dict[str, dict[str, int]]:
    """For each node, the PodDisruptionBudgets its pods count against and how many of its
    pods each: what draining it spends of each budget. Only pods whose eviction spends an
    allowance count: Ready, running, neither DaemonSet-owned nor mirror pods (the drain
    leaves those). A node with no protected pod is absent."""
    by_namespace: dict[str, list[Mapping[str, Any]]] = {}
    for pdb in pdbs:
        by_namespace.setdefault(str((pdb.get("metadata") or {}).get("namespace", "default")), []).append(pdb)
    out: dict[str, dict[str, int]] = {}
    for node, pods in pods_by_node.items():
        spends: dict[str, int] = {}
        for pod in pods:
            controller = pod.controller
            if pod.phase != "Running" or not pod.ready or pod.is_mirror or pod.terminating:
                continue
            if controller is not None and controller.get("kind") == "DaemonSet":
                continue
            for pdb in by_namespace.get(pod.namespace, []):
                if selector_matches((pdb.get("spec") or {}).get("selector"), pod.labels):
                    key = budget_key(pdb)
                    spends[key] = spends.get(key, 0) + 1
        if spends:
            out[node] = spends
    return out


def disruptions_allowed(pdbs: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """Each PodDisruptionBudget's ``status.disruptionsAllowed`` as its controller last set it."""
    return {budget_key(p): int((p.get("status") or {}).get("disruptionsAllowed", 0)) for p in pdbs}

"""The workloads a benchmark's cluster carries.

* light: one ReplicaSet pod per node (evicted, stopped by the kubelet, not recreated) and
  a DaemonSet pod per node; no PodDisruptionBudget. What the makespan rows measure: the
  app's own overheads, with nothing in Kubernetes slowing a drain.
* realistic: what a shared production cluster runs. Hundreds of Deployments of 2 to 5
  replicas spread over distinct nodes, a third of them protected by a budget that allows
  one disruption (``maxUnavailable: 1`` or ``minAvailable: n-1``), a few StatefulSets of 3
  with ``minAvailable: 2``, a DaemonSet on every node. The sandbox's controllers recreate
  every evicted replica, which is Ready only after it is scheduled and started, so two
  nodes holding replicas of one budget cannot be drained at once.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

POD_GRACE = 30  # seconds, the workload pods' terminationGracePeriodSeconds


@dataclass(frozen=True)
class PlacedWorkload:
    """One workload and the nodes its replicas start on, one replica per node."""

    kind: str  # Deployment | StatefulSet
    namespace: str
    name: str
    nodes: tuple[str, ...]
    min_available: int | None = None
    max_unavailable: int | None = None

    @property
    def protected(self) -> bool:
        return self.min_available is not None or self.max_unavailable is not None

    @property
    def disruptions_allowed(self) -> int:
        """What its budget allows with every replica healthy (0 without a budget)."""
        if self.max_unavailable is not None:
            return self.max_unavailable
        if self.min_available is not None:
            return max(0, len(self.nodes) - self.min_available)
        return 0


@dataclass(frozen=True)
class RealisticShape:
    """The realistic workload's proportions; ``for_nodes`` scales them to a fleet (three
    Deployments and one StatefulSet in 25 per node, as at N = 100)."""

    deployments: int = 300
    min_replicas: int = 2
    max_replicas: int = 5
    protected_every: int = 3  # one Deployment in this many has a budget
    statefulsets: int = 4
    statefulset_replicas: int = 3
    namespaces: int = 12
    seed: int = 20261204

    @classmethod
    def for_nodes(cls, n: int) -> RealisticShape:
        return cls(deployments=3 * n, statefulsets=max(1, n // 25))


def plan_realistic(nodes: Sequence[str], shape: RealisticShape | None = None) -> list[PlacedWorkload]:
    """The realistic workload over ``nodes``, the same for the same nodes and shape (a fixed
    seed), so that rows compared side by side carry the same pods on the same nodes."""
    shape = shape or RealisticShape.for_nodes(len(nodes))
    rng = random.Random(shape.seed)
    names = sorted(nodes)
    out: list[PlacedWorkload] = []
    for i in range(shape.deployments):
        replicas = min(len(names), rng.randint(shape.min_replicas, shape.max_replicas))
        hosts = tuple(rng.sample(names, replicas))
        namespace = f"team-{i % shape.namespaces:02d}"
        name = f"svc-{i:03d}"
        if i % shape.protected_every != 0:
            out.append(PlacedWorkload("Deployment", namespace, name, hosts))
        elif (i // shape.protected_every) % 2 == 0:
            out.append(PlacedWorkload("Deployment", namespace, name, hosts, max_unavailable=1))
        else:
            out.append(PlacedWorkload("Deployment", namespace, name, hosts, min_available=replicas - 1))
    for j in range(shape.statefulsets):
        replicas = min(len(names), shape.statefulset_replicas)
        hosts = tuple(rng.sample(names, replicas))
        out.append(PlacedWorkload("StatefulSet", "data", f"db-{j}", hosts, min_available=replicas - 1))
    return out


def forced_wait_groups(workloads: Sequence[PlacedWorkload], waves: int) -> int:
    """How many extra budget-sized groups some budget needs beyond ``waves``: a budget that
    allows ``a`` disruptions over ``k`` nodes needs ``ceil(k / a)`` groups of drains, each
    after the previous group's replacements are Ready. With at most one group per wave
    nothing waits; every group beyond the waves waits at least one replacement inside a
    wave. Waits of different budgets can overlap, so the bound takes the largest."""
    extra = 0
    for w in workloads:
        if w.protected:
            allowed = w.disruptions_allowed
            groups = math.ceil(len(w.nodes) / allowed) if allowed > 0 else len(w.nodes)
            extra = max(extra, groups - waves)
    return max(0, extra)


def add_realistic_workload(sandbox: Any, workloads: Sequence[PlacedWorkload]) -> dict[str, int]:
    """Create ``workloads`` in the sandbox (through its controllers, so that evicted replicas
    come back) and a DaemonSet on every node; answer what was created."""
    cluster = sandbox.cluster
    cluster.add_daemonset("kube-system", "kube-proxy", os_name="linux")
    for w in workloads:
        if w.kind == "StatefulSet":
            cluster.add_statefulset(
                w.namespace,
                w.name,
                replicas=len(w.nodes),
                pdb_min_available=w.min_available,
                pdb_max_unavailable=w.max_unavailable,
                nodes=list(w.nodes),
            )
        else:
            cluster.add_deployment(
                w.namespace,
                w.name,
                replicas=len(w.nodes),
                pdb_min_available=w.min_available,
                pdb_max_unavailable=w.max_unavailable,
                grace=POD_GRACE,
                nodes=list(w.nodes),
            )
    return describe(workloads)


def describe(workloads: Sequence[PlacedWorkload]) -> dict[str, int]:
    return {
        "deployments": sum(1 for w in workloads if w.kind == "Deployment"),
        "statefulsets": sum(1 for w in workloads if w.kind == "StatefulSet"),
        "budgets": sum(1 for w in workloads if w.protected),
        "pods": sum(len(w.nodes) for w in workloads),
        "protected_pods": sum(len(w.nodes) for w in workloads if w.protected),
    }


def add_light_workload(sandbox: Any, *, pods_per_node: int) -> None:
    """A DaemonSet pod and ``pods_per_node`` ReplicaSet pods on every node."""
    kube, cluster = sandbox.kube, sandbox.cluster
    cluster.add_daemonset("kube-system", "kube-proxy", os_name="linux")
    if pods_per_node <= 0:
        return
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "bench"}})
    labels = {"app": "light"}
    template = {"metadata": {"labels": labels}, "spec": {"containers": [{"name": "app", "image": "nginx"}]}}
    nodes = sorted(n["metadata"]["name"] for n in kube.list("nodes"))
    dep = kube.create(
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "light", "namespace": "bench", "labels": labels},
            "spec": {
                "replicas": len(nodes) * pods_per_node,
                "selector": {"matchLabels": labels},
                "template": template,
            },
        }
    )
    rs = kube.create(
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": "light-5d8f7c",
                "namespace": "bench",
                "labels": labels,
                "ownerReferences": [_owner("Deployment", dep)],
            },
            "spec": {
                "replicas": len(nodes) * pods_per_node,
                "selector": {"matchLabels": labels},
                "template": template,
            },
        }
    )
    for i, node in enumerate(nodes):
        for j in range(pods_per_node):
            kube.create(
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {
                        "name": f"light-5d8f7c-{i:04d}{j}",
                        "namespace": "bench",
                        "labels": dict(labels),
                        "ownerReferences": [_owner("ReplicaSet", rs)],
                    },
                    "spec": {
                        "nodeName": node,
                        "containers": [{"name": "app", "image": "nginx"}],
                        "terminationGracePeriodSeconds": POD_GRACE,
                    },
                    "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
                }
            )


def _owner(kind: str, obj: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }

"""Planning a run: which nodes, in what order, under which budgets.

Targets are resolved through ``spec.providerID`` (never by guessing from names), so a
node is in a pool exactly when Kubernetes says its VM is an instance of the pool's scale
set. Order: nodes already unhealthy first (patching them costs no availability), then
round-robin across zones so consecutive admissions never drain one zone at once, then
the pools' order in the configuration.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from shared.adapters.compute import parse_provider_id
from shared.adapters.kube import Node
from shared.clock import iso
from shared.config import ClusterConfig, PoolConfig
from shared.errors import ValidationError
from shared.rollout.budget import resolve_max_unavailable
from shared.rollout.model import NodeWork, PoolBudget, Run

ZONE_LABEL = "topology.kubernetes.io/zone"
# kubeadm labels control-plane nodes with the first; clusters from before 1.24 the second.
CONTROL_PLANE_LABELS = ("node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master")
CONTROL_PLANE_REFUSAL = "a control-plane node; its pool must say controlPlane: true to patch it"


def is_control_plane(node: Node) -> bool:
    return any(label in node.labels for label in CONTROL_PLANE_LABELS)


# Values of the opt-out label (or annotation) that mean "leave this node alone".
OPT_OUT_VALUES = frozenset({"true", "1", "yes"})


@dataclass(frozen=True)
class PlannedNode:
    name: str
    pool: str
    scale_set_id: str
    instance_id: str
    zone: str
    healthy: bool
    control_plane: bool = False
    flexible: bool = False  # an instance of a Flexible scale set: a VM of its own


def map_nodes_to_pools(cluster: ClusterConfig, nodes: Iterable[Node]) -> dict[str, list[PlannedNode]]:
    by_pool: dict[str, list[PlannedNode]] = {p.name: [] for p in cluster.pools}
    for node in nodes:
        ref = parse_provider_id(node.provider_id)
        if ref is None:
            continue
        for pool in cluster.pools:
            if ref.same_scale_set(pool.scale_set_id):
                by_pool[pool.name].append(
                    PlannedNode(
                        name=node.name,
                        pool=pool.name,
                        scale_set_id=pool.scale_set_id,
                        instance_id=ref.instance_id,
                        zone=node.labels.get(ZONE_LABEL, ""),
                        healthy=node.ready and not node.unschedulable,
                        control_plane=is_control_plane(node),
                        flexible=ref.flexible,
                    )
                )
                break
    return by_pool


def opted_out(node: Node, pool: PoolConfig) -> bool:
    label = pool.opt_out_label
    return (
        node.labels.get(label, "").lower() in OPT_OUT_VALUES
        or node.annotations.get(label, "").lower() in OPT_OUT_VALUES
    )


def left_alone(node: Node, pool: PoolConfig) -> str | None:
    """Why a run would skip this node without touching it (opted out, or cordoned: the
    first step's and admission's rules), or None. A planner that starts runs unasked (the
    schedule) leaves such nodes out, or it would plan a run on every tick for nothing."""
    if opted_out(node, pool):
        return f"opted out with {pool.opt_out_label}"
    if node.unschedulable:
        by = f"run {node.cordoned_by}" if node.cordoned_by else "someone else"
        return f"cordoned by {by}; left cordoned and untouched"
    return None


def order_targets(targets: Sequence[PlannedNode], pool_order: Sequence[str]) -> list[PlannedNode]:
    rank = {name: i for i, name in enumerate(pool_order)}
    unhealthy = sorted((t for t in targets if not t.healthy), key=lambda t: (rank[t.pool], t.name))
    healthy = [t for t in targets if t.healthy]
    by_zone: dict[str, list[PlannedNode]] = defaultdict(list)
    for t in sorted(healthy, key=lambda t: (rank[t.pool], t.name)):
        by_zone[t.zone].append(t)
    spread: list[PlannedNode] = []
    queues = [by_zone[z] for z in sorted(by_zone)]
    while any(queues):
        for q in queues:
            if q:
                spread.append(q.pop(0))
    # Within the zone round-robin keep pools in configuration order.
    spread.sort(key=lambda t: rank[t.pool])
    return unhealthy + spread


def plan_run(
    cluster: ClusterConfig,
    nodes: Iterable[Node],
    *,
    reason: str,
    now: float,
    trigger: str = "manual",
    pools: Sequence[str] | None = None,
    only_nodes: Sequence[str] | None = None,
) -> tuple[Run, list[NodeWork]]:
    known_pools = [p.name for p in cluster.pools]
    if pools:
        unknown = sorted(set(pools) - set(known_pools))
        if unknown:
            raise ValidationError(f"unknown pools {unknown} in cluster {cluster.name}; known: {known_pools}")
    chosen_pools = [p for p in known_pools if not pools or p in pools]
    by_pool = map_nodes_to_pools(cluster, nodes)
    candidates = [n for p in chosen_pools for n in by_pool[p]]
    # Control-plane nodes only where the pool opts in (with a budget of 1, by validation):
    # a drained API server or etcd member is not a worker's lost capacity.
    left_out = {
        c.name: CONTROL_PLANE_REFUSAL
        for c in candidates
        if c.control_plane and not cluster.pool(c.pool).control_plane
    }
    candidates = [c for c in candidates if c.name not in left_out]
    if only_nodes:
        wanted = {n.lower() for n in only_nodes}
        refused = sorted(n for n in left_out if n.lower() in wanted)
        if refused:
            raise ValidationError(f"nodes {refused} refused: {CONTROL_PLANE_REFUSAL}")
        missing = sorted(wanted - {c.name.lower() for c in candidates})
        if missing:
            raise ValidationError(f"nodes {missing} are not VMSS nodes of the chosen pools in {cluster.name}")
        candidates = [c for c in candidates if c.name.lower() in wanted]
        left_out = {}
    if not candidates:
        why = f"; left out: {sorted(left_out)} ({CONTROL_PLANE_REFUSAL})" if left_out else ""
        raise ValidationError(f"no nodes to patch in cluster {cluster.name} (pools {chosen_pools}){why}")
    ordered = order_targets(candidates, known_pools)
    at = iso(now)
    run = Run(
        id=Run.new_id(at=now),
        cluster=cluster.name,
        reason=reason,
        created_at=at,
        updated_at=at,
        trigger=trigger,
        max_concurrent_nodes=cluster.max_concurrent_nodes,
        max_failed_nodes=cluster.max_failed_nodes,
        left_out=left_out,
    )
    for pool_name in chosen_pools:
        pool = cluster.pool(pool_name)
        size = len(by_pool[pool_name])
        run.pools[pool_name] = PoolBudget(
            max_unavailable=resolve_max_unavailable(pool.max_unavailable, size),
            size=size,
            spec=pool.max_unavailable,
        )
    work = [
        NodeWork(
            run_id=run.id,
            name=t.name,
            pool=t.pool,
            scale_set_id=t.scale_set_id,
            instance_id=t.instance_id,
            flexible=t.flexible,
            order=i,
            updated_at=at,
            state_since=at,
            reason="waiting for a budget slot",
        )
        for i, t in enumerate(ordered)
    ]
    return run, work

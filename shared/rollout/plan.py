"""What a run would do, before it does it: the plan behind ``POST /api/plans`` and a dry run.

One implementation answers both, and it is built from the same pieces a real run uses, so
that the plan is what the run then follows: ``plan_run`` picks and orders the nodes,
``choose_admissions`` (the admission's own arithmetic) cuts them into waves under the pool
budgets, ``maxConcurrentNodes`` and the nodes already unavailable, and ``plan_drain`` /
``blocking_budgets`` (the drain step's own filters) say what would hold each node up now.

A run admits nodes when it starts and then each time nodes end and free their slots; a
node's wave is one more than the latest wave that has ended when it is admitted. A wave's
estimate runs from its first admission to the end of its slowest node; a node's duration is
the median cordon-to-uncordon time its pool measured in the cluster's latest runs, else
the configured ``estimatedNodeDuration``. Nothing here writes: no claim, no record, no
message, no cordon.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import TYPE_CHECKING, Any

from shared.adapters.compute import Instance, parse_provider_id
from shared.adapters.kube import ANNOTATION_PATCHED_AT, Node
from shared.adapters.kube_objects import Pod
from shared.clock import iso, parse_iso
from shared.config import ClusterConfig, PoolConfig
from shared.errors import NotFoundError, PermanentError
from shared.rollout.budget import PoolObservation, choose_admissions
from shared.rollout.drain import DrainOptionsView, blocking_budgets, plan_drain
from shared.rollout.model import NodeState, NodeWork, Run
from shared.rollout.planner import left_alone, plan_run
from shared.rollout.windows import MaintenanceWindow

if TYPE_CHECKING:
    from shared.rollout.ports import Collaborators
    from shared.rollout.requests import StartRequest

logger = logging.getLogger(__name__)

# The latest ended runs of a cluster looked at for measured node durations: enough to
# find every pool's last rollout, few enough to stay a handful of reads.
MEASURED_RUNS = 5
ASKED_FOR = "asked for"


@dataclass(frozen=True)
class Wave:
    number: int
    nodes: tuple[str, ...]
    starts_after: float  # seconds after the run starts
    duration: float

    @property
    def ends_after(self) -> float:
        return self.starts_after + self.duration


@dataclass
class WavePlan:
    waves: list[Wave] = field(default_factory=list)
    wave_of: dict[str, int] = field(default_factory=dict)
    # Nodes no admission round would ever start (a pool's budget taken by nodes that stay
    # unavailable), with the admission's own reason.
    never: dict[str, str] = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return max((w.ends_after for w in self.waves), default=0.0)

    def pool_end(self, pool_of: Mapping[str, str], pool: str) -> float:
        ends = [w.ends_after for w in self.waves if any(pool_of[n] == pool for n in w.nodes)]
        return max(ends, default=0.0)


def plan_waves(
    ordered: Sequence[tuple[str, str]],
    *,
    max_unavailable: Mapping[str, int],
    unavailable: Mapping[str, frozenset[str]],
    max_concurrent_nodes: int,
    node_seconds: Mapping[str, float],
) -> WavePlan:
    """The waves of ``ordered`` (node, pool) in plan order, as the run's admissions would make
    them if nothing changed meanwhile: one admission when the run starts, then one each time
    nodes end (each node taking its pool's duration) and free their slots. A node's wave is
    one more than the latest wave that has ended when it is admitted (``waves_of_run``)."""
    plan = WavePlan()
    pending = list(ordered)
    observed = {pool: PoolObservation(unavailable.get(pool, frozenset())) for pool in max_unavailable}
    held: dict[str, set[str]] = {}
    running: list[tuple[float, str, str]] = []  # (ends after, node, pool)
    members: dict[int, list[str]] = {}
    starts: dict[int, float] = {}
    ends: dict[int, float] = {}
    latest_ended = 0
    now = 0.0
    # The budgets hold for the whole plan; what changes from one admission to the next is
    # what is pending, held and seen unavailable.
    admit = partial(
        choose_admissions, max_unavailable=max_unavailable, max_concurrent_nodes=max_concurrent_nodes
    )
    while pending:
        decision = admit(pending=pending, held=held, observed=observed)
        if decision.admit:
            admitted = set(decision.admit)
            wave = latest_ended + 1
            for name, pool in pending:
                if name in admitted:
                    plan.wave_of[name] = wave
                    members.setdefault(wave, []).append(name)
                    starts.setdefault(wave, now)
                    ends[wave] = max(ends.get(wave, 0.0), now + node_seconds[pool])
                    held.setdefault(pool, set()).add(name)
                    running.append((now + node_seconds[pool], name, pool))
            pending = [(name, pool) for name, pool in pending if name not in admitted]
        if not pending:
            break
        if not running:
            plan.never = {name: decision.waiting.get(pool, "no budget slot") for name, pool in pending}
            break
        # The next nodes to end free their slots for the next admission.
        now = min(end for end, _, _ in running)
        for entry in [r for r in running if r[0] <= now]:
            running.remove(entry)
            held[entry[2]].discard(entry[1])
            latest_ended = max(latest_ended, plan.wave_of[entry[1]])
    plan.waves = [
        Wave(number=w, nodes=tuple(members[w]), starts_after=starts[w], duration=ends[w] - starts[w])
        for w in sorted(members)
    ]
    return plan


def waves_of_run(nodes: Iterable[NodeWork]) -> dict[str, int]:
    """The waves a run has made: a node's wave is one more than the latest wave that had
    ended when it was admitted. Slots refill one by one as nodes end at slightly different
    moments, so admission rounds fragment; waves counted this way do not, and are the
    plan's when nothing changes in between. Nodes skipped at their first step are in none."""
    events: list[tuple[float, int, str]] = []  # (when, 0 ended / 1 admitted, node)
    for node in nodes:
        if node.state == NodeState.SKIPPED:
            continue
        admitted = next((h["at"] for h in node.history if h.get("to") == str(NodeState.ADMITTED)), None)
        if admitted is None:
            continue
        events.append((parse_iso(admitted), 1, node.name))
        if node.state.terminal:
            ended = next((h["at"] for h in reversed(node.history) if h.get("to") == str(node.state)), None)
            if ended is not None:
                events.append((parse_iso(ended), 0, node.name))
    wave_of: dict[str, int] = {}
    latest_ended = 0
    # At one moment, ends come before admissions: the admission counted those slots.
    for _, kind, name in sorted(events):
        if kind == 1:
            wave_of[name] = latest_ended + 1
        elif name in wave_of:
            latest_ended = max(latest_ended, wave_of[name])
    return wave_of


def due_reasons(node: Node, instance: Instance | None, pool: PoolConfig, *, now: float) -> list[str]:
    """Why the schedule would patch this node (the schedule's own rules): off the latest
    model, older than ``maxNodeAge``, or its ``rebootRequiredCondition`` True."""
    reasons = []
    if instance is not None and not instance.latest_model_applied:
        reasons.append("off the latest model")
    if pool.max_node_age is not None and node_age(node, now) > pool.max_node_age.total_seconds():
        reasons.append(f"older than maxNodeAge ({_duration_text(pool.max_node_age.total_seconds())})")
    if pool.reboot_required_condition and node.condition_true(str(pool.reboot_required_condition)):
        reasons.append(f"reboot required (condition {pool.reboot_required_condition})")
    return reasons


def node_age(node: Node, now: float) -> float:
    """Seconds since the node was last patched by us, else since it was created."""
    stamp = node.annotations.get(ANNOTATION_PATCHED_AT) or node.raw["metadata"].get("creationTimestamp")
    if not stamp:
        return 0.0
    try:
        return now - parse_iso(str(stamp))
    except ValueError:
        return 0.0


def measured_node_seconds(deps: Collaborators, cluster: str) -> dict[str, tuple[float, str, int]]:
    """Per pool: the median cordon-to-uncordon time of its nodes that succeeded in the
    cluster's latest ended run that patched the pool (seconds, run id, samples)."""
    found: dict[str, tuple[float, str, int]] = {}
    runs = [r for r in deps.store.list_runs(cluster=cluster) if r.state.terminal][:MEASURED_RUNS]
    for run in runs:
        took: dict[str, list[float]] = {}
        for node in deps.store.list_nodes(run.id, states=(NodeState.SUCCEEDED,)):
            seconds = _cordon_to_uncordon(node)
            if seconds is not None and node.pool not in found:
                took.setdefault(node.pool, []).append(seconds)
        for pool, samples in took.items():
            samples.sort()
            found[pool] = (samples[len(samples) // 2], run.id, len(samples))
    return found


def _cordon_to_uncordon(node: NodeWork) -> float | None:
    started = next((h["at"] for h in node.history if h.get("to") == str(NodeState.ADMITTED)), None)
    ended = next((h["at"] for h in reversed(node.history) if h.get("to") == str(NodeState.SUCCEEDED)), None)
    if not started or not ended:
        return None
    return max(0.0, parse_iso(ended) - parse_iso(started))


class Blockers:
    """What would hold a node up if it were drained now: PodDisruptionBudgets allowing no
    disruption of its pods, and pods ``kubectl drain`` would refuse, each named with the
    workload that owns it (a ReplicaSet's Deployment)."""

    def __init__(self, kube: Any) -> None:
        self.kube = kube
        self._pdbs: dict[str, list[dict[str, Any]]] = {}
        self._owners: dict[tuple[str, str], str] = {}

    def of(self, pods: list[Pod], pool: PoolConfig) -> list[str]:
        drain_options = pool.drain
        options = DrainOptionsView(
            delete_emptydir_data=drain_options.delete_emptydir_data, force=drain_options.force
        )
        drain = plan_drain(pods, options=options, daemonset_exists=self.kube.daemonset_exists)
        out = [f"{p.key} ({self.workload(p)}): {why}" for p, why in drain.refused]
        for namespace in sorted({p.namespace for p in drain.evict}):
            if namespace not in self._pdbs:
                self._pdbs[namespace] = self.kube.list_pdbs(namespace)
            in_namespace = [p for p in drain.evict if p.namespace == namespace]
            named = [_NamedPod(p.raw, owner=self.workload(p)) for p in in_namespace]
            out += blocking_budgets(named, self._pdbs[namespace])
        return out

    def workload(self, pod: Pod) -> str:
        ref = pod.controller
        if ref is None:
            return "no controller"
        kind, name = str(ref.get("kind")), str(ref.get("name"))
        if kind != "ReplicaSet":
            return f"{kind}/{name}"
        key = (pod.namespace, name)
        if key not in self._owners:
            try:
                owner = self.kube.replica_set_owner(pod.namespace, name)
            except PermanentError as exc:
                # Gone, or not readable (a ClusterRole from before this grant): the plan is
                # worth more with the ReplicaSet's name than not at all.
                if not isinstance(exc, NotFoundError):
                    logger.warning("plan: owner of ReplicaSet %s/%s not read: %s", pod.namespace, name, exc)
                owner = None
            self._owners[key] = owner or f"ReplicaSet/{name}"
        return self._owners[key]


@dataclass(frozen=True)
class _NamedPod(Pod):
    """A pod whose owner text names its workload rather than its ReplicaSet."""

    owner: str = ""

    @property
    def owner_text(self) -> str:
        return self.owner


def window_view(
    pool: PoolConfig, deps: Collaborators, *, now: float, finishes_after: float
) -> dict[str, Any]:
    """The pool's next window occurrence (the open one, else the next), in the window's own
    time zone, and whether the pool's part of the plan fits it when started then."""
    assert pool.window
    window = MaintenanceWindow(deps.config.window(pool.window))
    moment = datetime.fromtimestamp(now, UTC)
    occurrence = window.next_occurrence(moment)
    view: dict[str, Any] = {"name": window.name, "timeZone": str(window.zone)}
    if occurrence is None:
        return view | {"next": None, "fits": False, "why": "no occurrence in the next 400 days"}
    starts = max(occurrence.start, moment)
    left = (occurrence.end - starts).total_seconds()
    return view | {
        "open": occurrence.contains(moment),
        "start": occurrence.start.astimezone(window.zone).isoformat(),
        "end": occurrence.end.astimezone(window.zone).isoformat(),
        "fits": finishes_after <= left,
        "needs": round(finishes_after),
        "has": round(left),
    }


def build_plan(
    deps: Collaborators,
    cluster: ClusterConfig,
    request: StartRequest,
    *,
    timing: Callable[[Run], str | None] | None = None,
) -> dict[str, Any]:
    """The plan of the run ``request`` would start, as JSON. ``timing`` sets the run's
    ``not_before``, ``deadline`` and ``state_reason`` as starting it would (windows,
    blackouts, notBefore), or answers why starting it would be refused; the estimates
    count from when it would start."""
    now = deps.clock.now()
    kube = deps.kube(cluster.name)
    listed = kube.list_nodes()
    run, planned = plan_run(
        cluster,
        listed,
        reason=request.reason,
        now=now,
        trigger=request.trigger,
        pools=request.pools,
        only_nodes=request.nodes,
    )
    refusal = timing(run) if timing is not None else None
    start_at = max(now, run.not_before)
    by_name = {n.name: n for n in listed}
    skip = {w.name: why for w in planned if (why := left_alone(by_name[w.name], cluster.pool(w.pool)))}
    patched = [w for w in planned if w.name not in skip]
    measured = measured_node_seconds(deps, cluster.name)
    durations = _pool_durations(cluster, run, measured)
    waves = plan_waves(
        [(w.name, w.pool) for w in patched],
        max_unavailable={name: b.max_unavailable for name, b in run.pools.items()},
        unavailable=_unavailable(cluster, run, listed),
        max_concurrent_nodes=run.max_concurrent_nodes,
        node_seconds={pool: view["nodeSeconds"] for pool, view in durations.items()},
    )
    instances = _instances(deps, cluster, run)
    pods = kube.list_pods_on_nodes([w.name for w in patched])
    blockers = Blockers(kube)
    nodes = []
    for work in planned:
        node, pool = by_name[work.name], cluster.pool(work.pool)
        view: dict[str, Any] = {"name": work.name, "pool": work.pool, "order": work.order}
        if work.name in skip:
            nodes.append(view | {"action": "skip", "reason": skip[work.name]})
            continue
        ref = parse_provider_id(node.provider_id)
        instance = instances.get(work.pool, {}).get(ref.instance_id if ref else "")
        view |= {
            "action": "patch",
            "wave": waves.wave_of.get(work.name),
            "why": [ASKED_FOR, *due_reasons(node, instance, pool, now=now)],
            "blockers": blockers.of(pods.get(work.name, []), pool),
        }
        if work.name in waves.never:
            view["waiting"] = waves.never[work.name]
        nodes.append(view)
    pool_of = {w.name: w.pool for w in patched}
    pools: dict[str, Any] = {}
    for name, budget in run.pools.items():
        pools[name] = budget.to_json() | durations[name]
        pool = cluster.pool(name)
        if pool.window:
            pools[name]["window"] = window_view(
                pool, deps, now=now, finishes_after=waves.pool_end(pool_of, name)
            )
    active = deps.store.active_run(cluster.name)
    return {
        "dryRun": True,
        "cluster": cluster.name,
        "plannedAt": iso(now),
        "wouldStart": active is None and refusal is None,
        "activeRun": active,
        "refusal": refusal,
        "notBefore": iso(run.not_before) if run.not_before else None,
        "deadline": iso(run.deadline) if run.deadline else None,
        "stateReason": run.state_reason,
        "pools": pools,
        "maxConcurrentNodes": run.max_concurrent_nodes,
        "leftOut": run.left_out,
        "nodes": nodes,
        "waves": [
            {
                "wave": w.number,
                "nodes": list(w.nodes),
                "startsAfter": round(w.starts_after),
                "estimatedSeconds": round(w.duration),
                "estimatedEnd": iso(start_at + w.ends_after),
            }
            for w in waves.waves
        ],
        "estimatedSeconds": round(waves.duration),
        "estimatedEnd": iso(start_at + waves.duration),
        "neverStart": waves.never,
    }


def _pool_durations(
    cluster: ClusterConfig, run: Run, measured: Mapping[str, tuple[float, str, int]]
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name in run.pools:
        pool = cluster.pool(name)
        if name in measured:
            seconds, run_id, samples = measured[name]
            source = f"measured: median of {samples} nodes in run {run_id}"
        else:
            seconds = pool.effective_node_duration.total_seconds()
            source = (
                "configured estimatedNodeDuration"
                if pool.estimated_node_duration is not None
                else f"default estimate for {pool.os}"
            )
        out[name] = {"nodeSeconds": round(seconds, 1), "durationSource": source}
    return out


def _unavailable(cluster: ClusterConfig, run: Run, nodes: Iterable[Node]) -> dict[str, frozenset[str]]:
    """Per pool, its nodes NotReady or cordoned now: admission counts them against the
    budget (a pool with a node selector is seen through the selector, as admission does)."""
    out: dict[str, set[str]] = {name: set() for name in run.pools}
    for node in nodes:
        if node.ready and not node.unschedulable:
            continue
        for name in run.pools:
            pool = cluster.pool(name)
            if pool.node_selector:
                if all(node.labels.get(k) == v for k, v in pool.node_selector.items()):
                    out[name].add(node.name)
            else:
                ref = parse_provider_id(node.provider_id)
                if ref is not None and ref.same_scale_set(pool.scale_set_id):
                    out[name].add(node.name)
    return {name: frozenset(names) for name, names in out.items()}


def _instances(deps: Collaborators, cluster: ClusterConfig, run: Run) -> dict[str, dict[str, Instance]]:
    out = {}
    for name in run.pools:
        pool = cluster.pool(name)
        compute = deps.compute(pool.scale_set["subscription"])
        out[name] = {i.instance_id: i for i in compute.list_instances(pool.scale_set_id)}
    return out


def _duration_text(seconds: float) -> str:
    days, rest = divmod(int(seconds), 86400)
    hours, rest = divmod(rest, 3600)
    minutes = rest // 60
    parts = [f"{days}d" if days else "", f"{hours}h" if hours else "", f"{minutes}m" if minutes else ""]
    return "".join(parts) or f"{int(seconds)}s"


__all__ = [
    "Blockers",
    "Wave",
    "WavePlan",
    "build_plan",
    "due_reasons",
    "node_age",
    "plan_waves",
    "waves_of_run",
]

"""Admission: the only place nodes start, so the only place budgets are enforced.

A node holds a budget slot from ``admitted`` until it ends. Admission counts the slots
held (from the run's node records), adds the pool's nodes that are unavailable for other
reasons (NotReady, or cordoned by someone else), picks the pending nodes that fit, and
commits them together with the run record, conditional on its ETag: two workers admitting
at once cannot both win, so budgets hold across any number of workers.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from shared.budget import PoolObservation, choose_admissions
from shared.clock import iso
from shared.compute import parse_provider_id
from shared.config import PoolConfig
from shared.errors import ConcurrencyError, TemporaryError
from shared.kube import KubeClient, Node
from shared.model import NodeState, NodeWork, Run, RunState
from shared.workqueue import WorkItem

if TYPE_CHECKING:
    from shared.workflow import Collaborators

logger = logging.getLogger(__name__)


class Admission:
    def __init__(self, deps: Collaborators) -> None:
        self.deps = deps

    def admit(self, run_id: str) -> str:
        for _ in range(10):
            try:
                return self._admit_once(run_id)
            except ConcurrencyError:
                continue  # another worker admitted or changed the run first: look again
        raise TemporaryError(f"run {run_id}: admission kept conflicting")

    def _admit_once(self, run_id: str) -> str:
        store, now = self.deps.store, self.deps.clock.now()
        run = store.get_run(run_id)
        nodes = store.list_nodes(run_id)
        at = iso(now)
        if run.state.terminal:
            self.finish_if_done(run, nodes)
            return f"run is {run.state}"
        if run.state == RunState.PAUSED:
            return "run is paused"
        if run.not_before and now < run.not_before:
            self.deps.queue.send(WorkItem("admit", run.id), delay=run.not_before - now)
            return "window not open yet"
        held: dict[str, set[str]] = {}
        for n in nodes:
            if n.state.holds_slot:
                held.setdefault(n.pool, set()).add(n.name)
        failed = sum(1 for n in nodes if n.state == NodeState.FAILED)
        pending = [n for n in nodes if n.state == NodeState.PENDING]
        if failed >= run.max_failed_nodes:
            run.move_to(
                RunState.FAILED,
                reason=f"{failed} nodes failed (maxFailedNodes {run.max_failed_nodes}); no new nodes start",
                at=at,
            )
            store.commit(run)
            self.finish_if_done(run, nodes)
            return "circuit breaker opened"
        cluster = self.deps.config.cluster(run.cluster)
        if run.deadline:
            late = [
                n
                for n in pending
                if now + cluster.pool(n.pool).effective_node_duration.total_seconds() > run.deadline
            ]
            if late:
                # Time only moves forward: a node that cannot finish now never will in this window.
                for n in late:
                    n.move_to(
                        NodeState.DEFERRED,
                        reason="the maintenance window closes before it could finish; "
                        "left for the next window",
                        at=at,
                    )
                    n.seq += 1
                for i in range(0, len(late), 99):
                    store.commit(*late[i : i + 99])
                pending = [n for n in pending if n not in late]
        if not pending:
            self.finish_if_done(run, nodes)
            return "nothing pending"
        kube = self.deps.kube(run.cluster)
        pools_with_room = {n.pool for n in pending}
        observed: dict[str, PoolObservation] = {}
        skip: list[tuple[NodeWork, str]] = []
        pending_names = {n.name: n for n in pending}
        for pool_name in pools_with_room:
            pool = cluster.pool(pool_name)
            elsewhere: set[str] = set()
            for k8s_node in _pool_nodes(kube, pool):
                if k8s_node.name in held.get(pool_name, set()):
                    continue
                if k8s_node.unschedulable or not k8s_node.ready:
                    elsewhere.add(k8s_node.name)
                    if (
                        k8s_node.name in pending_names
                        and k8s_node.unschedulable
                        and k8s_node.cordoned_by != run.id
                    ):
                        skip.append(
                            (
                                pending_names[k8s_node.name],
                                "cordoned by someone else; left cordoned and untouched",
                            )
                        )
            observed[pool_name] = PoolObservation(frozenset(elsewhere))
        skipped_names = {n.name for n, _ in skip}
        decision = choose_admissions(
            pending=[(n.name, n.pool) for n in pending if n.name not in skipped_names],
            held=held,
            max_unavailable={p: b.max_unavailable for p, b in run.pools.items()},
            observed=observed,
            max_concurrent_nodes=run.max_concurrent_nodes,
        )
        changed: list[NodeWork] = []
        for n, why in skip:
            n.move_to(NodeState.SKIPPED, reason=why, at=at)
            n.seq += 1
            changed.append(n)
        admitted = [pending_names[name] for name in decision.admit]
        for n in admitted:
            n.move_to(NodeState.ADMITTED, reason="budget slot acquired", at=at)
            n.seq += 1
            n.updated_at = at
            changed.append(n)
        waiting_changed = decision.waiting != run.waiting
        run.waiting = dict(decision.waiting)
        if not changed:
            if waiting_changed:
                run.updated_at = at
                store.commit(run)
            return "no slot free"
        if run.state == RunState.PLANNED:
            run.move_to(RunState.RUNNING, reason="first nodes admitted", at=at)
        run.fence += 1
        run.updated_at = at
        # One transaction: the run's ETag serialises admissions across all workers.
        for i in range(0, len(changed), 98):
            store.commit(run, *changed[i : i + 98])
        for n in admitted:
            self.deps.queue.send(WorkItem("step", run.id, n.name, n.seq))
        for n, why in skip:
            kube.record_event(n.name, reason="PatchSkipped", message=f"run {run.id}: {why}", now=now)
        return f"admitted {len(admitted)}"

    def finish_if_done(self, run: Run, nodes: list[NodeWork]) -> None:
        if any(not n.state.terminal for n in nodes if n.state != NodeState.PENDING):
            return  # nodes in flight finish first
        if any(n.state == NodeState.PENDING for n in nodes) and not run.state.terminal:
            return
        at = iso(self.deps.clock.now())
        if not run.state.terminal:
            failed = [n.name for n in nodes if n.state == NodeState.FAILED]
            if failed:
                run.move_to(
                    RunState.FAILED, reason=f"{len(failed)} nodes failed: {', '.join(failed[:10])}", at=at
                )
            else:
                counts: dict[str, int] = {}
                for n in nodes:
                    counts[str(n.state)] = counts.get(str(n.state), 0) + 1
                run.move_to(
                    RunState.SUCCEEDED, reason=", ".join(f"{v} {k}" for k, v in sorted(counts.items())), at=at
                )
            self.deps.store.commit(run)
        self.deps.store.release_cluster(run.cluster, run.id)


def _pool_nodes(kube: KubeClient, pool: PoolConfig) -> list[Node]:
    """The pool's nodes: by its node selector when configured (one filtered list), else
    every node whose providerID points into the pool's scale set."""
    if pool.node_selector:
        selector = ",".join(f"{k}={v}" for k, v in sorted(pool.node_selector.items()))
        return kube.list_nodes(label_selector=selector)
    out = []
    for node in kube.list_nodes():
        ref = parse_provider_id(node.provider_id)
        if ref is not None and ref.same_scale_set(pool.scale_set_id):
            out.append(node)
    return out

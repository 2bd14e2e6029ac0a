"""Admission: the only place nodes start, so the only place budgets are enforced.

A node holds a budget slot from ``admitted`` until it ends. Admission counts the slots
held (from the run's node records), adds the pool's nodes that are unavailable for other
reasons (NotReady, or cordoned), picks the pending nodes that fit (a target unavailable
already fits without a slot of its own: it is counted once, as unavailable), and
commits them together with the run record, conditional on its ETag: two workers admitting
at once cannot both win, so budgets hold across any number of workers.

It runs every time a node finishes, so its cost follows the nodes in flight and the slots
to fill, not the size of the run: it lists the nodes holding a slot and the pending ones
by their state and plan columns only, reads whole just the records it is about to write,
and sees each pool through kubectl's STATUS column instead of every Node object.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from shared.adapters.compute import parse_provider_id
from shared.adapters.kube import KubeClient, Node, record_events
from shared.adapters.notify import Notice, NoticeKind
from shared.adapters.workqueue import WorkItem
from shared.clock import iso
from shared.config import ClusterConfig, PoolConfig
from shared.errors import ConcurrencyError, NotFoundError, PermanentError, TemporaryError
from shared.retry import retry_on_conflict
from shared.rollout.budget import DisruptionView, PoolObservation, choose_admissions
from shared.rollout.drain import disruptions_allowed
from shared.rollout.model import NodeState, NodeWork, Run, RunState
from shared.rollout.store.base import NodeSummary, RunStore

if TYPE_CHECKING:
    from shared.rollout.ports import Collaborators

logger = logging.getLogger(__name__)

HOLDING_STATES = frozenset(s for s in NodeState if s.holds_slot)
# Holding a slot, with pods still to evict.
UNDRAINED_STATES = frozenset({NodeState.ADMITTED, NodeState.DRAINING})
# A conflict means another worker admitted just now; after a few, the queue looks again.
INLINE_ATTEMPTS = 6
RETRY_DELAY = 0.5
# Workers' clocks agree to well within this (NTP); it keeps "counted after this node ended"
# on the safe side. Erring only costs another look, never a budget.
CLOCK_MARGIN = 0.2
SKIP_REASON = "cordoned by someone else; left cordoned and untouched"


class Admission:
    def __init__(self, deps: Collaborators) -> None:
        self.deps = deps

    def admit(self, run_id: str, *, ended_at: float | None = None) -> str:
        """Fill the free slots. ``ended_at``: when the node whose slot this is for ended;
        if another worker's admission looked after that, the slot was counted there and
        there is nothing left to do here (the common case when a batch ends together)."""

        def attempt() -> str:
            try:
                return self._admit_once(run_id, ended_at=ended_at)
            except ConcurrencyError:
                if ended_at is not None and self._counted_since(run_id, ended_at):
                    return "another worker admitted after this node ended"
                raise

        # A conflict: another worker admitted or changed the run first. Look again, spread
        # out at random so that workers finishing together do not collide again in step.
        try:
            return retry_on_conflict(
                attempt, attempts=INLINE_ATTEMPTS, sleep=self.deps.clock.sleep, max_pause=0.2
            )
        except ConcurrencyError:
            pass
        # Through the queue, not by raising: the caller's own work is done, and a failed
        # invocation would come back as a stale step and be dropped, leaving the freed
        # slot to the sweeper.
        self.deps.queue.send(WorkItem("admit", run_id), delay=RETRY_DELAY)
        return "admission kept conflicting; looking again shortly"

    def _counted_since(self, run_id: str, ended_at: float) -> bool:
        # One small read instead of another whole admission.
        return _counted(self.deps.store.get_run(run_id), ended_at)

    def _admit_once(self, run_id: str, *, ended_at: float | None = None) -> str:
        store, now = self.deps.store, self.deps.clock.now()
        run = store.get_run(run_id)
        if ended_at is not None and _counted(run, ended_at):
            # Nodes of a batch end together; the first admission to look covers them all.
            return "another worker admitted after this node ended"
        at = iso(now)
        if run.state.terminal:
            self.finish_if_done(run)
            return f"run is {run.state}"
        if run.state == RunState.PAUSED:
            return "run is paused"
        if run.not_before and now < run.not_before:
            self.deps.queue.send(WorkItem("admit", run.id), delay=run.not_before - now)
            return "window not open yet"
        holding = store.node_summaries(run_id, states=HOLDING_STATES)
        held: dict[str, set[str]] = {}
        for h in holding:
            held.setdefault(h.pool, set()).add(h.name)
        failed = len(store.node_summaries(run_id, states=(NodeState.FAILED,)))
        pending = store.pending_nodes(run_id)
        if failed >= run.max_failed_nodes:
            run.move_to(
                RunState.FAILED,
                reason=f"{failed} nodes failed (maxFailedNodes {run.max_failed_nodes}); no new nodes start",
                at=at,
            )
            store.commit(run)
            self._tell(run, NoticeKind.CIRCUIT_BREAKER_OPENED)
            self._tell(run, NoticeKind.RUN_FAILED)
            self._finish(run, in_flight=bool(holding), pending=bool(pending))
            return "circuit breaker opened"
        cluster = self.deps.config.cluster(run.cluster)
        if run.deadline:
            pending = self._defer_late(run, cluster, pending, now=now, at=at)
        if not pending:
            self._finish(run, in_flight=bool(holding), pending=False)
            return "nothing pending"
        kube = self.deps.kube(run.cluster)
        observed, skip = self._observe(run, kube, cluster, pending, held)
        decision = choose_admissions(
            pending=[(n.name, n.pool) for n in pending if n.name not in skip],
            held=held,
            max_unavailable={p: b.max_unavailable for p, b in run.pools.items()},
            observed=observed,
            max_concurrent_nodes=run.max_concurrent_nodes,
            disruptions=_disruptions(run, kube, cluster, pending, holding),
        )
        recheck = bool(decision.held_back) and now >= run.recheck_at
        if recheck:
            # Held back for a budget whose allowance returns when replacements are Ready,
            # which no node of ours ending need announce: look again soon.
            run.recheck_at = now + self.deps.config.workflow.drain_retry_interval.total_seconds()
        records = self._read_pending(run, pending, [*skip, *decision.admit])
        changed: list[NodeWork] = []
        for name, why in skip.items():
            n = records[name]
            n.move_to(NodeState.SKIPPED, reason=why, at=at)
            n.seq += 1
            changed.append(n)
        admitted = [records[name] for name in decision.admit]
        for n in admitted:
            n.move_to(NodeState.ADMITTED, reason="budget slot acquired", at=at)
            n.seq += 1
            n.updated_at = at
            changed.append(n)
        waiting = {**decision.waiting, **decision.held_back}
        waiting_changed = waiting != run.waiting
        run.waiting = waiting
        run.admission_view_at = now  # the slots were listed after this
        if not changed:
            if waiting_changed or recheck:
                run.updated_at = at
                store.commit(run)
            if recheck:
                self.deps.queue.send(WorkItem("admit", run.id), delay=run.recheck_at - now)
            return "no slot free"
        if run.state == RunState.PLANNED:
            run.move_to(RunState.RUNNING, reason="first nodes admitted", at=at)
        if admitted:  # moving again: no longer idle, nor stalled
            run.idle_since, run.stalled_at, run.stalled_reason = 0.0, "", ""
        run.fence += 1
        run.updated_at = at
        # One transaction: the run's ETag serialises admissions across all workers.
        for i in range(0, len(changed), 98):
            store.commit(run, *changed[i : i + 98])
        for n in admitted:
            self.deps.queue.send(WorkItem("step", run.id, n.name, n.seq))
        if recheck:
            self.deps.queue.send(WorkItem("admit", run.id), delay=run.recheck_at - now)
        # After the sends: the steps need not wait for the Events.
        admitted_why = {n.name: f"run {run.id}: {n.reason}" for n in admitted}
        record_events(kube, admitted_why, reason="PatchAdmitted", now=now)
        skipped_why = {name: f"run {run.id}: {why}" for name, why in skip.items()}
        record_events(kube, skipped_why, reason="PatchSkipped", now=now)
        return f"admitted {len(admitted)}"

    def _read_pending(self, run: Run, pending: list[NodeSummary], names: list[str]) -> dict[str, NodeWork]:
        """The records about to be written, read whole. Each must be as it was listed: a
        node that changed since (cancelled, deferred, admitted by another worker) means
        the decision was made on a stale view, so look again."""
        if not names:
            return {}
        listed = {n.name: n for n in pending}
        records = {n.name: n for n in self.deps.store.get_nodes(run.id, names)}
        for name in names:
            record = records.get(name)
            if record is None or record.etag != listed[name].etag:
                raise ConcurrencyError(f"node {name} of run {run.id} changed since it was listed")
        return records

    def _defer_late(
        self, run: Run, cluster: ClusterConfig, pending: list[NodeSummary], *, now: float, at: str
    ) -> list[NodeSummary]:
        """Defer the pending nodes that could not finish before the window closes; returns
        the rest."""
        late = {
            n.name
            for n in pending
            if now + cluster.pool(n.pool).effective_node_duration.total_seconds() > run.deadline
        }
        if not late:
            return pending
        # Time only moves forward: a node that cannot finish now never will in this window.
        # A pool's nodes all become late at once, so this reads the pending records once.
        store = self.deps.store
        records = [n for n in store.list_nodes(run.id, states=(NodeState.PENDING,)) if n.name in late]
        for n in records:
            n.move_to(
                NodeState.DEFERRED,
                reason="the maintenance window closes before it could finish; left for the next window",
                at=at,
            )
            n.seq += 1
        for i in range(0, len(records), 99):
            store.commit(*records[i : i + 99])
        record_events(
            self.deps.kube(run.cluster),
            {n.name: f"run {run.id}: {n.reason}" for n in records},
            reason="PatchDeferred",
            now=now,
        )
        return [n for n in pending if n.name not in late]

    def _observe(
        self,
        run: Run,
        kube: KubeClient,
        cluster: ClusterConfig,
        pending: list[NodeSummary],
        held: dict[str, set[str]],
    ) -> tuple[dict[str, PoolObservation], dict[str, str]]:
        """For each pool with pending nodes, its nodes unavailable for reasons other than
        this run's work (NotReady, or cordoned); and the pending nodes to skip because
        someone else cordoned them (name -> why)."""
        pending_names = {n.name for n in pending}
        observed: dict[str, PoolObservation] = {}
        skip: dict[str, str] = {}
        everywhere: list[Node] | None = None
        for pool_name in sorted({n.pool for n in pending}):
            pool = cluster.pool(pool_name)
            if pool.node_selector:
                unavailable = kube.unavailable_nodes(_selector(pool), ignore=held.get(pool_name, set()))
            else:
                # Only the providerID tells a node's scale set, and only the whole object has
                # it; one cluster-wide look serves every such pool. Node names are unique, so
                # ignoring every node held is ignoring this pool's.
                if everywhere is None:
                    everywhere = kube.unavailable_nodes(ignore=set().union(*held.values()), whole=True)
                unavailable = [n for n in everywhere if _in_scale_set(n, pool)]
            observed[pool_name] = PoolObservation(frozenset(n.name for n in unavailable))
            for node in unavailable:
                if node.name in pending_names and node.unschedulable:
                    whole = node if not pool.node_selector else _read(kube, node.name)
                    if (
                        whole is not None
                        and whole.unschedulable
                        and not cordoned_by_us(self.deps.store, run, whole)
                    ):
                        skip[node.name] = SKIP_REASON
        return observed, skip

    def finish_if_done(self, run: Run, nodes: list[NodeWork] | None = None) -> None:
        """End the run when no node is in flight and none is pending (or the run has ended
        already), and release the cluster. ``nodes`` spares the queries when at hand."""
        if nodes is not None:
            in_flight = any(n.state.holds_slot for n in nodes)
            pending = any(n.state == NodeState.PENDING for n in nodes)
        else:
            store = self.deps.store
            in_flight = store.has_nodes(run.id, states=HOLDING_STATES)
            pending = (
                not in_flight
                and not run.state.terminal
                and store.has_nodes(run.id, states=(NodeState.PENDING,))
            )
        self._finish(run, in_flight=in_flight, pending=pending)

    def _finish(self, run: Run, *, in_flight: bool, pending: bool) -> None:
        if in_flight:
            return  # nodes in flight finish first
        if pending and not run.state.terminal:
            return
        store = self.deps.store
        if not run.state.terminal:
            at = iso(self.deps.clock.now())
            failed = [n.name for n in store.node_summaries(run.id, states=(NodeState.FAILED,))]
            if failed:
                run.move_to(
                    RunState.FAILED, reason=f"{len(failed)} nodes failed: {', '.join(failed[:10])}", at=at
                )
            else:
                counts: dict[str, int] = {}
                for n in store.node_summaries(run.id):
                    counts[str(n.state)] = counts.get(str(n.state), 0) + 1
                run.move_to(
                    RunState.SUCCEEDED, reason=", ".join(f"{v} {k}" for k, v in sorted(counts.items())), at=at
                )
            store.commit(run)
            self._tell(
                run, NoticeKind.RUN_FAILED if run.state == RunState.FAILED else NoticeKind.RUN_SUCCEEDED
            )
        store.release_cluster(run.cluster, run.id)

    def _tell(self, run: Run, kind: NoticeKind) -> None:
        self.deps.notify(Notice(kind, run.state_reason, cluster=run.cluster, run_id=run.id))


def cordoned_by_us(store: RunStore, run: Run, node: Node) -> bool:
    """Whether the node's cordon is ours to carry on from: this run's, or one an earlier run
    of this cluster left when the node failed there (its annotation names the run, and that
    run's record of the node says it ended cordoned by us). A run id we do not know, or a
    node that run still has in flight, is not ours to take over."""
    by = node.cordoned_by
    if not by or by == run.id:
        return bool(by)
    try:
        earlier = store.get_node(by, node.name)
        if not (earlier.state.terminal and earlier.cordoned_by_us):
            return False
        return store.get_run(by).cluster == run.cluster
    except NotFoundError:
        return False


def _counted(run: Run, ended_at: float) -> bool:
    """Whether the latest admission on the run record looked after ``ended_at``."""
    return run.admission_view_at - CLOCK_MARGIN >= ended_at


def _disruptions(
    run: Run, kube: KubeClient, cluster: ClusterConfig, pending: list[NodeSummary], holding: list[NodeSummary]
) -> DisruptionView | None:
    """What the PodDisruptionBudgets allow now against what the pending and draining nodes'
    pods spend of them (as planned): one list of the budgets, and only when a pending node
    has pods they protect, so a cluster without budgets pays nothing."""
    if cluster.wave_order != "budgets" or not any(n.pdb_pods for n in pending):
        return None
    try:
        allowed = disruptions_allowed(kube.list_pdbs())
    except (TemporaryError, PermanentError) as exc:
        # The drains respect the budgets regardless; this wave is merely in plan order.
        logger.warning("run %s: budgets not read (%s); this wave starts in plan order", run.id, exc)
        return None
    draining = [h for h in holding if h.state in UNDRAINED_STATES]
    spends = {n.name: n.pdb_pods for n in [*pending, *draining] if n.pdb_pods}
    return DisruptionView(spends=spends, allowed=allowed, draining=[h.name for h in draining])


def _selector(pool: PoolConfig) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(pool.node_selector.items()))


def _in_scale_set(node: Node, pool: PoolConfig) -> bool:
    ref = parse_provider_id(node.provider_id)
    return ref is not None and ref.same_scale_set(pool.scale_set_id)


def _read(kube: KubeClient, name: str) -> Node | None:
    try:
        return kube.get_node(name)
    except NotFoundError:
        return None  # deleted since it was listed: nothing to skip

"""Run lifecycle for operators: start, inspect, pause, resume, cancel; retry or release a
failed node; release a cluster's lock.

These are the operations behind the HTTP endpoints and the event triggers; they never
touch a node directly. Starting admits the first nodes (or enqueues an "admit" work item for
a window that opens later); the workflow does the rest.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from shared.adapters.kube import MAX_SINGLE_READS, KubeClient, record_events
from shared.adapters.notify import Notice, NoticeKind
from shared.adapters.workqueue import WorkItem
from shared.clock import iso
from shared.config import ClusterConfig
from shared.errors import (
    ConcurrencyError,
    NotFoundError,
    PatcherError,
    PermanentError,
    TemporaryError,
    ValidationError,
)
from shared.retry import retry_on_conflict
from shared.rollout.drain import budgets_on_nodes
from shared.rollout.listing import RunQuery
from shared.rollout.model import NodeState, NodeWork, Run, RunState
from shared.rollout.planner import plan_run
from shared.rollout.ports import Collaborators
from shared.rollout.requests import NodeActionRequest, StartRequest
from shared.rollout.windows import MaintenanceWindow, common_opening

logger = logging.getLogger(__name__)

# A claim that got no answer is looked at again this often before the caller is told.
CLAIM_ATTEMPTS = 3
# Operators' releases of a cluster's lock, one record each (who, when, which run).
LOCK_RELEASE_KIND = "lock-release"


class RunConflictError(ValidationError):
    def __init__(self, message: str, *, active_run: str) -> None:
        super().__init__(message)
        self.active_run = active_run


class NodeActionRefusedError(PatcherError):
    """An operator's retry or release that the node's state does not allow (HTTP 409)."""


class RunService:
    def __init__(self, deps: Collaborators) -> None:
        self.deps = deps

    def _cluster(self, name: str) -> ClusterConfig:
        try:
            return self.deps.config.cluster(name)
        except KeyError:
            known = [c.name for c in self.deps.config.clusters]
            raise ValidationError(f"unknown cluster {name!r}; known: {known}") from None

    def preview(self, request: StartRequest) -> dict[str, Any]:
        """What ``start`` would do with ``request``, from the same plan, and without a
        single write (``shared/rollout/plan.py``): which nodes it would patch in which wave and why,
        which it would leave alone and why, the estimated durations and windows, what would
        block each node now, whether the cluster is free to take it, and when it would start
        and end (``notBefore``, ``deadline``, ``stateReason``: the same windows, blackouts and
        notBefore as ``start``)."""
        from shared.rollout.plan import build_plan

        cluster = self._cluster(request.cluster)

        def timing(run: Run) -> str | None:
            run.not_before, run.deadline = request.not_before, request.deadline
            if not request.immediate:
                try:
                    self._fit_to_windows(run, cluster)
                except ValidationError as exc:
                    return str(exc)  # start would refuse it: the plan says why, and the rest
            return None

        return build_plan(self.deps, cluster, request, timing=timing)

    def start(self, request: StartRequest) -> Run:
        cluster = self._cluster(request.cluster)
        kube = self.deps.kube(cluster.name)
        run, nodes = plan_run(
            cluster,
            kube.list_nodes(),
            reason=request.reason,
            now=self.deps.clock.now(),
            trigger=request.trigger,
            pools=request.pools,
            only_nodes=request.nodes,
        )
        run.not_before, run.deadline, run.source = request.not_before, request.deadline, request.source
        run.kubelet_version = request.kubelet_version
        if cluster.wave_order == "budgets":
            note_budget_pods(kube, nodes, run_id=run.id)
        if not request.immediate:
            self._fit_to_windows(run, cluster)
        active = self._claim(cluster.name, run.id)
        if active is not None:
            raise RunConflictError(
                f"cluster {cluster.name} already has an active run {active}", active_run=active
            )
        try:
            self.deps.store.create_run(run, nodes)
        except Exception:
            self._give_back(cluster.name, run.id)
            raise
        delay = max(0.0, run.not_before - self.deps.clock.now())
        if delay > 0:
            self.deps.queue.send(WorkItem("admit", run.id), delay=delay)
        else:
            self._admit_now(run.id)
        logger.info("run %s planned for %s: %d nodes (%s)", run.id, cluster.name, len(nodes), request.reason)
        self.deps.notify(
            Notice(
                NoticeKind.RUN_STARTED,
                f"{len(nodes)} nodes ({request.trigger}): {request.reason}",
                cluster=cluster.name,
                run_id=run.id,
            )
        )
        return run

    def _fit_to_windows(self, run: Run, cluster: ClusterConfig) -> None:
        """Every trigger's run keeps its pools' maintenance windows and blackout dates: it
        starts when all of them are open (and not before its own ``not_before``) and starts
        no node that could not finish before the first closes. A run that has to wait is
        planned all the same, with the reason, and its first admission is queued for the
        opening (the way a maintenance run waits for its window)."""
        names = sorted({p.window for name in run.pools if (p := cluster.pool(name)).window})
        now = self.deps.clock.now()
        earliest = max(now, run.not_before)
        why = "notBefore" if run.not_before > now else ""
        if names:
            windows = [MaintenanceWindow(self.deps.config.window(n)) for n in names]
            opening = common_opening(windows, datetime.fromtimestamp(earliest, UTC))
            if opening is None:
                raise ValidationError(
                    f"the windows {names} of pools {sorted(run.pools)} are never open together in the "
                    "next 400 days (days, blackout dates); start one run per pool, or say immediate"
                )
            start, end = opening.start.timestamp(), opening.end.timestamp()
            if run.deadline and start >= run.deadline:
                raise ValidationError(
                    f"the run's window ({iso(earliest)} - {iso(run.deadline)}) does not overlap the "
                    f"pools' windows {names}, next open {iso(start)} - {iso(end)}"
                )
            if start > earliest:
                why = f"outside the maintenance window {', '.join(names)}, which opens then"
            run.not_before = max(run.not_before, start)
            run.deadline = min(run.deadline or end, end)
        if why:
            run.state_reason = f"deferred until {iso(run.not_before)}: {why}"

    def _claim(self, cluster: str, run_id: str) -> str | None:
        """Claim the cluster for a new run. A claim that failed without an answer may have
        been written: looking again finds it ours (``claim_cluster`` knows its own). If
        that cannot be told either, the claim is given back before the error goes to the
        caller, so that no lock is left naming a run that will never be written."""
        import tenacity

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(TemporaryError),
            stop=tenacity.stop_after_attempt(CLAIM_ATTEMPTS),
            wait=tenacity.wait_exponential(multiplier=0.2, max=1.0),
            sleep=self.deps.clock.sleep,
            reraise=True,
        )
        try:
            return retrying(self.deps.store.claim_cluster, cluster, run_id, at=self.deps.clock.now())
        except TemporaryError:
            self._give_back(cluster, run_id)
            raise

    def _give_back(self, cluster: str, run_id: str) -> None:
        """Release a claim whose run was not written. If the store fails here too, the
        sweeper releases the lock once it has named a missing run for ``stallAfter``."""
        try:
            self.deps.store.release_cluster(cluster, run_id)
        except Exception:
            logger.exception("cluster %s: could not give back the claim of unwritten run %s", cluster, run_id)

    def release_lock(self, cluster: str, *, by: str, reason: str = "", force: bool = False) -> dict[str, Any]:
        """An operator frees a cluster's lock, for the case nobody foresaw (the sweeper
        frees those naming a missing or finished run by itself). A run still in progress
        keeps its lock unless ``force``: cancelling it ends it without leaving nodes
        cordoned, releasing its lock would let a second run start beside it. Recorded, with
        who asked (``by``), as a ``lock-release`` record."""
        store = self.deps.store
        lock = store.cluster_lock(cluster)
        if lock is None:
            raise NotFoundError(f"cluster {cluster} has no lock")
        try:
            run_state = str(store.get_run(lock.run_id).state)
        except NotFoundError:
            run_state = "missing"
        active = run_state != "missing" and not RunState(run_state).terminal
        if active and not force:
            raise RunConflictError(
                f"run {lock.run_id} is {run_state} on cluster {cluster}; cancel it first "
                f"(POST /api/runs/{lock.run_id}/cancel), or release with force=true",
                active_run=lock.run_id,
            )
        if not store.release_cluster(cluster, lock.run_id):
            # Someone else moved first. Freed by its own run's end (a cancel frees the
            # cluster through a queued admission a moment later), it is what was asked: say
            # there is no lock, as a second ask would. Taken by another run, look again.
            if store.cluster_lock(cluster) is None:
                raise NotFoundError(f"cluster {cluster} has no lock: it was freed meanwhile")
            raise ConcurrencyError(f"the lock of cluster {cluster} changed meanwhile; look again")
        at = iso(self.deps.clock.now())
        record = {
            "at": at,
            "cluster": cluster,
            "runId": lock.run_id,
            "runState": run_state,
            "claimedAt": iso(lock.claimed_at) if lock.claimed_at else None,
            "by": by,
            "reason": reason,
            "forced": active,
        }
        store.put_record(LOCK_RELEASE_KIND, f"{cluster}|{at}|{lock.run_id}", record)
        logger.warning(
            "cluster %s: lock of run %s (%s) released by %s: %s", cluster, lock.run_id, run_state, by, reason
        )
        return record

    def retry_node(self, run_id: str, name: str, request: NodeActionRequest) -> dict[str, Any]:
        """A failed node is patched again. While its run is active the node goes back to
        pending in it and waits for admission like any other (its budget holds; a node
        still cordoned by the run is counted once, as unavailable). A run that has ended
        cannot take nodes up again, so a new run is started for the node: it carries on
        from the cordon the ended run left."""
        store, at = self.deps.store, iso(self.deps.clock.now())
        run = store.get_run(run_id)
        node = store.get_node(run_id, name)
        _refuse_unless_failed(node, "retried")
        if run.state.terminal:
            why = request.says(f"retry of {name} from run {run_id}")
            new_run = self.start(StartRequest(cluster=run.cluster, reason=why, nodes=[name]))
            logger.warning("run %s node %s: %s; in run %s", run_id, name, request.says("retried"), new_run.id)
            return {"id": run_id, "node": name, "state": str(node.state), "retriedIn": new_run.id}

        def back_to_pending() -> NodeWork:
            run, node = store.get_run(run_id), store.get_node(run_id, name)
            _refuse_unless_failed(node, "retried")
            if run.state.terminal:
                raise NodeActionRefusedError(f"run {run_id} ended ({run.state}) meanwhile; retry again")
            node.move_to(NodeState.PENDING, reason=request.says("retried"), at=at, by=request.by)
            node.start_over()
            node.seq += 1
            node.updated_at = at
            run.updated_at = at
            # With the run record: an admission closing the run at this moment conflicts,
            # and looks again, rather than ending the run with this node pending.
            store.commit(run, node)
            return node

        node = retry_on_conflict(back_to_pending, sleep=self.deps.clock.sleep)
        self.deps.queue.send(WorkItem("admit", run_id))
        self._tell_node(run, name, "PatchRetried", request.says("retried"))
        logger.warning("run %s node %s: %s", run_id, name, request.says("retried"))
        return {"id": run_id, "node": name, "state": str(node.state)}

    def release_node(self, run_id: str, name: str, request: NodeActionRequest) -> dict[str, Any]:
        """A failed node that the run left cordoned is uncordoned, unpatched, and marked
        released: its capacity is given back. Only a cordon our annotations say is this
        run's is lifted; a node someone (or another run) has cordoned since is refused."""
        store = self.deps.store
        run = store.get_run(run_id)
        node = store.get_node(run_id, name)
        _refuse_unless_failed(node, "released")
        kube = self.deps.kube(run.cluster)
        try:
            observed = kube.get_node(name)
        except NotFoundError:
            observed = None
        if observed is not None and observed.unschedulable:
            if observed.cordoned_by != run_id:
                by = f"run {observed.cordoned_by}" if observed.cordoned_by else "someone else"
                raise NodeActionRefusedError(
                    f"node {name} is cordoned by {by}, not by run {run_id}; it is not ours to uncordon"
                )
            kube.uncordon(name, state=str(NodeState.RELEASED))
            what = "uncordoned, not patched"
        elif observed is None:
            what = "the Node no longer exists; nothing to uncordon"
        else:
            what = "it was uncordoned already; not patched"
        at, why = iso(self.deps.clock.now()), f"{request.says('released')}; {what}"

        def mark() -> NodeWork:
            node = store.get_node(run_id, name)
            _refuse_unless_failed(node, "released")
            node.move_to(NodeState.RELEASED, reason=why, at=at, by=request.by)
            node.seq += 1
            node.updated_at = at
            store.commit(node)
            return node

        node = retry_on_conflict(mark, sleep=self.deps.clock.sleep)
        if observed is not None:
            self._tell_node(run, name, "PatchReleased", why)
        logger.warning("run %s node %s: %s", run_id, name, why)
        # A slot may have come free for whichever run holds the cluster now (this one, or a
        # later one that this node's cordon was holding up).
        lock = store.cluster_lock(run.cluster)
        if lock is not None:
            self.deps.queue.send(WorkItem("admit", lock.run_id))
        return {"id": run_id, "node": name, "state": str(node.state)}

    def _tell_node(self, run: Run, name: str, reason: str, message: str) -> None:
        """An Event on the Node, so ``kubectl describe node`` shows what the operator did;
        best effort: the record in the run is what counts."""
        try:
            self.deps.kube(run.cluster).record_event(
                name, reason=reason, message=f"run {run.id}: {message}", now=self.deps.clock.now()
            )
        except (TemporaryError, PermanentError) as exc:
            logger.warning("could not record %s on node %s: %s", reason, name, exc)

    def _admit_now(self, run_id: str) -> None:
        """The first admission right away, rather than after a trip round the queue."""
        from shared.rollout.admission import Admission

        try:
            Admission(self.deps).admit(run_id)
        except Exception:
            logger.exception("run %s: first admission failed; the queue will try again", run_id)
            self.deps.queue.send(WorkItem("admit", run_id))

    def get(self, run_id: str) -> dict[str, Any]:
        from shared.rollout.plan import waves_of_run

        run = self.deps.store.get_run(run_id)
        nodes = self.deps.store.list_nodes(run_id)
        waves = waves_of_run(nodes)
        counts: dict[str, int] = {}
        for n in nodes:
            counts[str(n.state)] = counts.get(str(n.state), 0) + 1
        return {
            **self.summary(run),
            "pools": {name: b.to_json() for name, b in run.pools.items()},
            "maxConcurrentNodes": run.max_concurrent_nodes,
            "maxFailedNodes": run.max_failed_nodes,
            "counts": counts,
            "waiting": run.waiting,
            "leftOut": run.left_out,
            "nodes": [_node_view(n, run) | {"wave": waves.get(n.name)} for n in nodes],
        }

    @staticmethod
    def summary(run: Run) -> dict[str, Any]:
        return {
            "id": run.id,
            "cluster": run.cluster,
            "state": str(run.state),
            "stateReason": run.state_reason,
            "reason": run.reason,
            "trigger": run.trigger,
            "notBefore": iso(run.not_before) if run.not_before else None,
            "deadline": iso(run.deadline) if run.deadline else None,
            "source": run.source,
            "kubeletVersion": run.kubelet_version or None,
            "stalled": {"since": run.stalled_at, "reason": run.stalled_reason} if run.stalled_at else None,
            "createdAt": run.created_at,
            "updatedAt": run.updated_at,
            "endedAt": run.ended_at,
        }

    def list_page(self, query: RunQuery) -> dict[str, Any]:
        """GET /api/runs: one page, newest first; ``next`` only when more may follow."""
        page = self.deps.store.list_runs_page(
            cluster=query.cluster, states=query.states, limit=query.page.limit, next=query.page.next
        )
        answer: dict[str, Any] = {"runs": [self.summary(r) for r in page.runs]}
        if page.next:
            answer["next"] = page.next
        return answer

    def pause(self, run_id: str, *, by: str = "operator") -> Run:
        return self._set_state(run_id, RunState.PAUSED, f"paused by {by}")

    def resume(self, run_id: str, *, by: str = "operator") -> Run:
        run = self._set_state(run_id, RunState.RUNNING, f"resumed by {by}")
        self.deps.queue.send(WorkItem("admit", run.id))
        return run

    def cancel(self, run_id: str, *, by: str = "operator") -> Run:
        """Pending nodes are cancelled now; nodes in flight see the cancellation at their
        next step: not yet reimaged -> uncordoned and cancelled, already reimaging ->
        finished and uncordoned (a reimage cannot be stopped halfway)."""
        run = self._set_state(run_id, RunState.CANCELLED, f"cancelled by {by}")
        at = iso(self.deps.clock.now())

        def cancel_pending() -> Sequence[NodeWork]:
            pending = [n for n in self.deps.store.list_nodes(run_id) if n.state == NodeState.PENDING]
            for n in pending:
                n.move_to(NodeState.CANCELLED, reason="run cancelled before the node started", at=at)
                n.seq += 1
            for i in range(0, len(pending), 99):
                self.deps.store.commit(*pending[i : i + 99])
            return pending

        # Exhausted conflicts raise: the operator is told, and the run (already cancelled)
        # stops admitting; a repeated cancel finishes the pending nodes.
        cancelled = retry_on_conflict(cancel_pending, sleep=self.deps.clock.sleep)
        self.deps.queue.send(WorkItem("admit", run.id))  # releases the cluster when nothing is in flight
        self._tell_the_cluster(run, cancelled)
        return run

    def _tell_the_cluster(self, run: Run, cancelled: Sequence[NodeWork]) -> None:
        """The Events of the nodes cancelled before they started (nodes in flight record
        theirs at their next step). Best effort: the run is cancelled whatever the cluster
        answers."""
        if not cancelled:
            return
        try:
            kube = self.deps.kube(run.cluster)
        except (TemporaryError, PermanentError) as exc:
            logger.warning("run %s: not recording the cancellation on its nodes: %s", run.id, exc)
            return
        messages = {n.name: f"run {run.id}: {n.reason}" for n in cancelled}
        record_events(kube, messages, reason="PatchCancelled", now=self.deps.clock.now())

    def _set_state(self, run_id: str, state: RunState, reason: str) -> Run:
        def change() -> Run:
            run = self.deps.store.get_run(run_id)
            if run.state == state:
                return run
            if state not in _allowed(run.state):
                raise ValidationError(f"run {run_id} is {run.state}; cannot become {state}")
            run.move_to(state, reason=reason, at=iso(self.deps.clock.now()))
            self.deps.store.commit(run)
            return run

        try:
            return retry_on_conflict(change, attempts=10, sleep=self.deps.clock.sleep)
        except ConcurrencyError:
            raise ConcurrencyError(f"run {run_id} kept changing; try again") from None


def note_budget_pods(kube: KubeClient, nodes: Sequence[NodeWork], *, run_id: str) -> None:
    """Record on each node which PodDisruptionBudgets its pods count against, for choosing
    waves: one list of the budgets and, when there are any, the pods on the nodes (a list
    per node for a few nodes, else one per namespace that has budgets: never every pod of
    the cluster). A read that fails leaves the waves in plan order, with a warning: the
    order is an optimisation, the drains respect the budgets regardless."""
    try:
        pdbs = kube.list_pdbs()
        if not pdbs:
            return
        names = [n.name for n in nodes]
        if len(names) <= MAX_SINGLE_READS:
            pods = kube.list_pods_on_nodes(names)
        else:
            namespaces = {str((p.get("metadata") or {}).get("namespace", "default")) for p in pdbs}
            pods = kube.list_pods_in_namespaces(namespaces, names)
    except (PermanentError, TemporaryError) as exc:
        logger.warning("run %s: PodDisruptionBudgets not read (%s); its waves follow plan order", run_id, exc)
        return
    spends = budgets_on_nodes(pods, pdbs)
    for node in nodes:
        node.pdb_pods = spends.get(node.name, {})


def _refuse_unless_failed(node: NodeWork, what: str) -> None:
    if node.state != NodeState.FAILED:
        raise NodeActionRefusedError(
            f"node {node.name} of run {node.run_id} is {node.state}; only a failed node can be {what}"
        )


def _node_view(node: NodeWork, run: Run) -> dict[str, Any]:
    view = node.public()
    if node.state == NodeState.PENDING and (why := run.waiting.get(node.name) or run.waiting.get(node.pool)):
        view["reason"] = why
    return view


def _allowed(state: RunState) -> frozenset[RunState]:
    from shared.rollout.model import RUN_TRANSITIONS

    return RUN_TRANSITIONS[state]


__all__ = [
    "NodeActionRefusedError",
    "NodeActionRequest",
    "NotFoundError",
    "RunConflictError",
    "RunService",
    "StartRequest",
]

"""Finds stalled work and resumes it from the recorded state; ends what is over.

Messages can be lost (a send that failed after its state was written, a message deleted
by hand) and workers can die holding a lease. Every node in flight records when it was
last stepped; one that has not been stepped for ``stallAfter`` gets a fresh work item
with a new ``seq`` (which makes any late copy of the old one stale). Runs with pending
nodes and a free slot get an admission pass.

A run always ends and never holds its cluster by mistake, even when a write failed at
the wrong moment: a run whose nodes have all ended is closed here (its closing
admission may have failed once, and nothing else would ever look at it again), and a
cluster's lock is released when it names a run that has ended with nothing in flight, or
a run that still does not exist ``stallAfter`` after the claim (the process died between
claiming the cluster and writing the run, or the claim was written but its answer lost).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from shared.admission import HOLDING_STATES, Admission
from shared.clock import iso, parse_iso
from shared.errors import ConcurrencyError, NotFoundError, TemporaryError
from shared.model import NodeState, NodeWork, Run, RunState
from shared.workflow import Collaborators
from shared.workqueue import WorkItem

logger = logging.getLogger(__name__)


@dataclass
class SweepReport:
    runs_checked: int = 0
    resumed: list[str] = field(default_factory=list)
    admitted: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)  # runs whose nodes had all ended
    released: list[str] = field(default_factory=list)  # "cluster: why" for each lock freed


def sweep(deps: Collaborators) -> SweepReport:
    report = SweepReport()
    now = deps.clock.now()
    stall = deps.config.workflow.stall_after.total_seconds()
    runs = deps.store.list_runs()
    over: set[str] = set()  # ended, with no node in flight
    for run in runs:
        # Only the nodes in flight are read whole: a finished run costs one filtered query.
        in_flight = deps.store.list_nodes(run.id, states=HOLDING_STATES)
        if run.state.terminal and not in_flight:
            over.add(run.id)
            continue  # its lock, if it still has one, is released below
        report.runs_checked += 1
        for node in in_flight:
            last = max(parse_iso(node.updated_at) if node.updated_at else 0.0, node.next_due)
            if now - last < stall or node.lease_until > now:
                continue
            node.seq += 1
            node.lease_owner, node.lease_until = "", 0.0
            node.reason = f"resumed by the sweeper after {now - last:.0f}s without progress"
            node.updated_at = iso(now)
            try:
                deps.store.commit(node)
            except ConcurrencyError:
                continue  # it moved while we looked: not stalled
            deps.queue.send(WorkItem("step", run.id, node.name, node.seq))
            report.resumed.append(f"{run.id}/{node.name}")
            logger.warning("run %s node %s stalled in %s; resumed", run.id, node.name, node.state)
        if run.state not in (RunState.PLANNED, RunState.RUNNING):
            continue
        if run.not_before > now:
            continue  # deferred to its window: its admission is queued for the opening
        if in_flight and not _may_have_free_slots(run, in_flight):
            continue
        if deps.store.has_nodes(run.id, states=(NodeState.PENDING,)):
            deps.queue.send(WorkItem("admit", run.id))
            report.admitted.append(run.id)
        elif not in_flight and _close(deps, run, report):
            over.add(run.id)
    _release_stale_locks(deps, {r.id: r for r in runs}, over, report, now=now, grace=stall)
    return report


def _close(deps: Collaborators, run: Run, report: SweepReport) -> bool:
    """Every node has ended, yet the run is open: the admission that would have closed it
    failed (a Table 503 after the last node finished). Close it now, as it would have;
    whether it is closed."""
    try:
        Admission(deps).finish_if_done(run)
    except (ConcurrencyError, TemporaryError) as exc:
        logger.warning("run %s: could not close it yet (%s); the next sweep looks again", run.id, exc)
        return False
    if run.state.terminal:
        report.closed.append(run.id)
        logger.warning("run %s had every node ended but was still open; closed: %s", run.id, run.state_reason)
    return run.state.terminal


def _release_stale_locks(
    deps: Collaborators,
    runs: dict[str, Run],
    over: set[str],
    report: SweepReport,
    *,
    now: float,
    grace: float,
) -> None:
    """Free each configured cluster whose lock names a run that has ended with no node in
    flight, or a run that still does not exist ``grace`` after the claim (a run being
    written right now looks the same for a moment: its claim comes first)."""
    store = deps.store
    for cluster in deps.config.clusters:
        lock = store.cluster_lock(cluster.name)
        if lock is None:
            continue
        run = runs.get(lock.run_id)
        if run is not None:
            if run.id not in over:  # the loop above looked at its nodes already
                continue
            why = f"run {run.id} is {run.state}"
        else:
            try:
                store.get_run(lock.run_id)  # written since the runs were listed: not stale
                continue
            except NotFoundError:
                pass
            if now - lock.claimed_at < grace:
                continue
            why = f"run {lock.run_id} does not exist"
        try:
            freed = store.release_cluster(cluster.name, lock.run_id)
        except TemporaryError as exc:
            logger.warning("cluster %s: could not release its lock yet (%s)", cluster.name, exc)
            continue
        if freed:
            report.released.append(f"{cluster.name}: {why}")
            logger.warning("cluster %s: released its lock: %s", cluster.name, why)


def _may_have_free_slots(run: Run, in_flight: list[NodeWork]) -> bool:
    """False when the run's own nodes in flight fill every budget: then an admission could
    only find nothing to do, and a large run would pay for its reads every sweep."""
    if len(in_flight) >= run.max_concurrent_nodes:
        return False
    held = Counter(n.pool for n in in_flight)
    return any(held[pool] < budget.max_unavailable for pool, budget in run.pools.items())

"""Finds stalled work and resumes it from the recorded state.

Messages can be lost (a send that failed after its state was written, a message deleted
by hand) and workers can die holding a lease. Every node in flight records when it was
last stepped; one that has not been stepped for ``stallAfter`` gets a fresh work item
with a new ``seq`` (which makes any late copy of the old one stale). Runs with pending
nodes and a free slot get an admission pass, which also closes runs that are done.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

from shared.admission import HOLDING_STATES, Admission
from shared.clock import iso, parse_iso
from shared.errors import ConcurrencyError
from shared.model import NodeState, NodeWork, Run, RunState
from shared.workflow import Collaborators
from shared.workqueue import WorkItem

logger = logging.getLogger(__name__)


@dataclass
class SweepReport:
    runs_checked: int = 0
    resumed: list[str] = field(default_factory=list)
    admitted: list[str] = field(default_factory=list)


def sweep(deps: Collaborators) -> SweepReport:
    report = SweepReport()
    now = deps.clock.now()
    stall = deps.config.workflow.stall_after.total_seconds()
    for run in deps.store.list_runs():
        # Only the nodes in flight are read whole: a finished run costs one filtered query.
        in_flight = deps.store.list_nodes(run.id, states=HOLDING_STATES)
        if run.state.terminal and not in_flight:
            if deps.store.active_run(run.cluster) == run.id:
                Admission(deps).admit(run.id)  # closes the run and releases the cluster
            continue
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
        if (
            run.state in (RunState.PLANNED, RunState.RUNNING)
            and _may_have_free_slots(run, in_flight)
            and deps.store.has_nodes(run.id, states=(NodeState.PENDING,))
        ):
            deps.queue.send(WorkItem("admit", run.id))
            report.admitted.append(run.id)
    return report


def _may_have_free_slots(run: Run, in_flight: list[NodeWork]) -> bool:
    """False when the run's own nodes in flight fill every budget: then an admission could
    only find nothing to do, and a large run would pay for its reads every sweep."""
    if len(in_flight) >= run.max_concurrent_nodes:
        return False
    held = Counter(n.pool for n in in_flight)
    return any(held[pool] < budget.max_unavailable for pool, budget in run.pools.items())

"""Finds stalled work and resumes it from the recorded state; ends what is over.

Messages can be lost (a send that failed after its state was written, a message deleted
by hand) and workers can die holding a lease. Every node in flight records when it was
last stepped; one that has not been stepped for ``stallAfter`` gets a fresh work item
with a new ``seq`` (which makes any late copy of the old one stale). Runs with pending
nodes and a free slot get an admission pass. A run with nodes pending and none in flight
for ``stallAfter`` is marked stalled, with what blocks it, on the run and in an Event.

A run always ends and never holds its cluster by mistake, even when a write failed at
the wrong moment: a run whose nodes have all ended is closed here (its closing
admission may have failed once, and nothing else would ever look at it again), and a
cluster's lock is released when it names a run that has ended with nothing in flight, or
a run that still does not exist ``stallAfter`` after the claim (the process died between
claiming the cluster and writing the run, or the claim was written but its answer lost).

Each sweep reads only the open runs (the store's ``runs~open`` partition: opened before a
run's first record, settled here once it has ended with nothing in flight), however many
ended runs the store holds; then deletes a bounded number of runs and GitOps syncs older
than ``retention``.
"""

from __future__ import annotations

import contextlib
import logging
from collections import Counter
from dataclasses import dataclass, field

from shared.adapters.notify import Notice, NoticeKind
from shared.adapters.workqueue import WorkItem
from shared.clock import iso, parse_iso
from shared.errors import ConcurrencyError, NotFoundError, PermanentError, TemporaryError
from shared.rollout import metrics
from shared.rollout.admission import HOLDING_STATES, Admission
from shared.rollout.model import NodeState, NodeWork, Run, RunState
from shared.rollout.ports import Collaborators

logger = logging.getLogger(__name__)


@dataclass
class SweepReport:
    runs_checked: int = 0
    resumed: list[str] = field(default_factory=list)
    admitted: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)  # runs whose nodes had all ended
    released: list[str] = field(default_factory=list)  # "cluster: why" for each lock freed
    stalled: list[str] = field(default_factory=list)  # runs marked stalled by this sweep
    deleted: list[str] = field(default_factory=list)  # runs past retention, deleted with their records
    # GitOps deliveries past retention: GitOps deletes its own (shared.work.sweep says so here).
    deleted_syncs: list[str] = field(default_factory=list)


def sweep(deps: Collaborators) -> SweepReport:
    report = SweepReport()
    now = deps.clock.now()
    stall = deps.config.workflow.stall_after.total_seconds()
    store = deps.store
    _open_runs_from_before_the_index(deps)
    opened = store.open_runs()
    runs: dict[str, Run] = {}
    over: set[str] = set()  # ended, with no node in flight
    flying = Counter({(c.name, p.name): 0 for c in deps.config.clusters for p in c.pools})
    for run_id, opened_at in opened.items():
        try:
            run = store.get_run(run_id)
        except NotFoundError:
            # Opened by a create that died before writing the run (a run being written right
            # now looks the same for a moment); the create opens it again after its record.
            if now - opened_at >= stall:
                store.settle_run(run_id)
            continue
        runs[run.id] = run
        # Only the nodes in flight are read whole: a finished run costs one filtered query.
        in_flight = store.list_nodes(run.id, states=HOLDING_STATES)
        flying.update((run.cluster, n.pool) for n in in_flight)
        if run.state.terminal and not in_flight:
            _settle(deps, run, over)
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
                store.commit(node)
            except ConcurrencyError:
                continue  # it moved while we looked: not stalled
            deps.queue.send(WorkItem("step", run.id, node.name, node.seq))
            report.resumed.append(f"{run.id}/{node.name}")
            logger.warning("run %s node %s stalled in %s; resumed", run.id, node.name, node.state)
        if run.state not in (RunState.PLANNED, RunState.RUNNING):
            _moving(deps, run)  # paused on purpose: the idle clock starts again on resume
            continue
        if run.not_before > now:
            continue  # deferred to its window: its admission is queued for the opening
        if in_flight and not _may_have_free_slots(run, in_flight):
            _moving(deps, run)
            continue
        if store.has_nodes(run.id, states=(NodeState.PENDING,)):
            deps.queue.send(WorkItem("admit", run.id))
            report.admitted.append(run.id)
            if in_flight or now < run.not_before:
                _moving(deps, run)
            else:
                _watch_idle(deps, run, report, now=now, stall=stall)
        elif not in_flight and _close(deps, run, report):
            _settle(deps, run, over)
    metrics.nodes_in_flight(flying)
    _release_stale_locks(deps, runs, over, report, now=now, grace=stall)
    _expire(deps, report, now=now, keep=set(opened) - over)
    return report


def _settle(deps: Collaborators, run: Run, over: set[str]) -> None:
    """Ended with nothing in flight: nothing can start in it any more (an admission's
    write is conditional on the run's ETag, which its ending changed), so the sweeper
    need not look at it again."""
    over.add(run.id)
    deps.store.settle_run(run.id)


# A store says with this record that the runs recorded before the open-runs partition
# have been taken in, once.
_INDEX_KIND, _INDEX_KEY = "sweeper", "open-runs"
# The runs recorded before the open-runs partition, listed by when they were created.
_OLDER_RUNS = "sweeper-older-run"


def _open_runs_from_before_the_index(deps: Collaborators) -> None:
    """Once per store: open every run written before runs were opened at their creation
    and not over yet, so that none drops out of sight across the upgrade."""
    store = deps.store
    if store.get_record(_INDEX_KIND, _INDEX_KEY) is None:
        for run in store.list_runs():
            if not run.state.terminal or store.has_nodes(run.id, states=HOLDING_STATES):
                store.reopen_run(run)
            # Written again, it gets the columns that filtered listings and retention ask.
            with contextlib.suppress(ConcurrencyError):  # written meanwhile: it has them
                store.commit(run)
            # Its id does not count down with time, so retention finds it through this listing.
            created = parse_iso(run.created_at) if run.created_at else 0.0
            store.put_listed_record(_OLDER_RUNS, run.id, {}, at=created, summary={})
        store.put_record(_INDEX_KIND, _INDEX_KEY, {"at": iso(deps.clock.now())})


# Retention deletes at most this many runs per sweep (each: one query for its row keys
# and one transaction per 100 rows), so a first sweep after a long time stays short.
RETENTION_RUNS_PER_SWEEP = 10


def _expire(deps: Collaborators, report: SweepReport, *, now: float, keep: set[str]) -> None:
    """Delete the runs that ended longer than ``retention`` ago with every record they
    own; never one the sweeper still looks at (``keep``), nor one holding its cluster's
    lock (a cluster no longer configured keeps its lock, and so its run, until released
    by hand)."""
    cutoff = now - deps.config.retention.total_seconds()
    try:
        for run in deps.store.ended_runs(before=iso(cutoff), limit=RETENTION_RUNS_PER_SWEEP):
            if run.id in keep or deps.store.active_run(run.cluster) == run.id:
                continue
            deps.store.delete_run(run.id)
            report.deleted.append(run.id)
            logger.info("run %s (%s, ended %s) is past retention: deleted", run.id, run.cluster, run.ended_at)
        _expire_older_runs(deps, report, before=iso(cutoff), keep=keep)
    except TemporaryError as exc:
        logger.warning("retention: stopped for this sweep (%s); the next one goes on", exc)


def _moving(deps: Collaborators, run: Run) -> None:
    """The run has work in flight (or is paused, or waits for its window): not idle, and
    not stalled any more."""
    if not run.idle_since and not run.stalled_at:
        return
    run.idle_since, run.stalled_at, run.stalled_reason = 0.0, "", ""
    with contextlib.suppress(ConcurrencyError):  # it changed meanwhile: the next sweep looks
        deps.store.commit(run)


def _watch_idle(deps: Collaborators, run: Run, report: SweepReport, *, now: float, stall: float) -> None:
    """Nodes pending, none in flight: it waits for something outside the run (a budget
    filled by nodes that are NotReady, cordoned by someone else, or left cordoned by a
    failed run). Seen so for ``stallAfter``, it is marked stalled with what blocks it and an
    Event on the node each blocked pool would start next, so that it never waits silently."""
    if not run.idle_since:
        run.idle_since = now
        with contextlib.suppress(ConcurrencyError):
            deps.store.commit(run)
        return
    if run.stalled_at or now - run.idle_since < stall:
        return
    blocked = "; ".join(f"{pool}: {why}" for pool, why in sorted(run.waiting.items()))
    run.stalled_at = iso(now)
    run.stalled_reason = (
        f"no node started or in flight for {now - run.idle_since:.0f}s (stallAfter {stall:.0f}s): "
        f"{blocked or 'no pending node could start'}; a node a failed run left cordoned can be released "
        "(POST /api/runs/RUN/nodes/NODE/release) or retried (.../retry)"
    )
    try:
        deps.store.commit(run)
    except ConcurrencyError:
        return  # it changed meanwhile: the next sweep looks again
    report.stalled.append(run.id)
    metrics.run_stalled(run)
    logger.warning("run %s stalled: %s", run.id, run.stalled_reason)
    deps.notify(Notice(NoticeKind.RUN_STALLED, run.stalled_reason, cluster=run.cluster, run_id=run.id))
    first_pending: dict[str, str] = {}
    for node in deps.store.pending_nodes(run.id):
        first_pending.setdefault(node.pool, node.name)
    kube = deps.kube(run.cluster)
    for pool, name in sorted(first_pending.items()):
        why = run.waiting.get(pool, "no slot free")
        try:
            kube.record_event(
                name,
                reason="PatchRunStalled",
                message=f"run {run.id} waits for this node's pool: {why}",
                warning=True,
                now=now,
            )
        except (TemporaryError, PermanentError) as exc:
            logger.warning("run %s: could not record its stall on node %s: %s", run.id, name, exc)


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


def _expire_older_runs(deps: Collaborators, report: SweepReport, *, before: str, keep: set[str]) -> None:
    """Retention for the runs recorded before run ids counted down with time: their ids
    are anywhere in key order, so ``ended_runs`` may not see them."""
    store = deps.store
    for listed in store.listed_before(_OLDER_RUNS, before=parse_iso(before), limit=RETENTION_RUNS_PER_SWEEP):
        try:
            run = store.get_run(str(listed["key"]))
        except NotFoundError:
            store.delete_listed(_OLDER_RUNS, listed)  # deleted already (by ended_runs' way)
            continue
        if not run.ended_at or run.ended_at >= before or run.id in keep:
            continue
        if store.active_run(run.cluster) == run.id:
            continue
        store.delete_run(run.id)
        store.delete_listed(_OLDER_RUNS, listed)
        report.deleted.append(run.id)


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
        if run is None:
            try:
                # Not open (settled by an earlier sweep), or written since the open runs were read.
                run = store.get_run(lock.run_id)
            except NotFoundError:
                run = None
            if run is not None and run.state.terminal and not store.has_nodes(run.id, states=HOLDING_STATES):
                over.add(run.id)
        if run is not None:
            if run.id not in over:
                continue
            why = f"run {run.id} is {run.state}"
        else:
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

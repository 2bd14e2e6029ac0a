"""What an operator charts and alerts on: nodes patched, failed and in flight, runs started,
succeeded, failed and stalled, and how long each disruptive step took.

The instruments are the OpenTelemetry metrics API's, which costs little to import and
records nothing until a meter provider is installed (``shared.telemetry`` does, at
start-up, when an exporter is configured). Transitions are counted where their write
wins (``RunStore.commit``), from the ``unrecorded`` transitions a record collected since
it was read: a step whose commit lost to another worker's is read again and decided
afresh, so a transition counts once however many workers tried it. Attributes are the
cluster, the pool and, where it says something, the step or its outcome: never a node's
or a run's name, which would make a series per node.

The metric names are what Application Insights shows as ``customMetrics.name``; the
alert rules in ``infra/app/monitoring.bicep`` query them (a test imports them from here).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from opentelemetry import metrics as otel

from shared.clock import parse_iso
from shared.rollout.model import NodeState, NodeWork, Run, RunState, Transition

logger = logging.getLogger(__name__)

METER_NAME = "vmss_node_patcher"

NODES_PATCHED = "patcher.nodes.patched"
NODES_FAILED = "patcher.nodes.failed"
NODES_IN_FLIGHT = "patcher.nodes.in_flight"
RUNS_STARTED = "patcher.runs.started"
RUNS_SUCCEEDED = "patcher.runs.succeeded"
RUNS_FAILED = "patcher.runs.failed"
RUNS_STALLED = "patcher.runs.stalled"
STEP_DURATION = "patcher.step.duration"

# The steps that disrupt a node, whose durations are worth a histogram.
TIMED_STEPS = frozenset({str(NodeState.DRAINING), str(NodeState.REIMAGING), str(NodeState.BOOTING)})

_meter = otel.get_meter(METER_NAME)
_nodes_patched = _meter.create_counter(
    NODES_PATCHED, unit="{node}", description="Nodes that ended patched: Ready on the new image, uncordoned"
)
_nodes_failed = _meter.create_counter(
    NODES_FAILED, unit="{node}", description="Nodes that failed; attribute step: the state they failed in"
)
_nodes_in_flight = _meter.create_gauge(
    NODES_IN_FLIGHT,
    unit="{node}",
    description="Nodes admitted, draining, reimaging or booting, as the latest sweep counted them",
)
_runs_started = _meter.create_counter(RUNS_STARTED, unit="{run}", description="Runs written (planned)")
_runs_succeeded = _meter.create_counter(RUNS_SUCCEEDED, unit="{run}", description="Runs that succeeded")
_runs_failed = _meter.create_counter(RUNS_FAILED, unit="{run}", description="Runs that failed")
_runs_stalled = _meter.create_counter(
    RUNS_STALLED,
    unit="{run}",
    description="Runs marked stalled: nodes pending and none in flight for stallAfter",
)
_step_duration = _meter.create_histogram(
    STEP_DURATION,
    unit="s",
    description="Time a node spent draining, reimaging or booting (step), and the state it went to (outcome)",
)

# Which cluster a run belongs to, for node records committed without their run (a node
# record does not carry it). Bounded: a long-lived worker sees many runs.
_CLUSTERS_KEPT = 512
_clusters: OrderedDict[str, str] = OrderedDict()
_clusters_lock = threading.Lock()


def note_run(run: Run) -> None:
    with _clusters_lock:
        _clusters[run.id] = run.cluster
        _clusters.move_to_end(run.id)
        while len(_clusters) > _CLUSTERS_KEPT:
            _clusters.popitem(last=False)


def _cluster(run_id: str, cluster_of: Callable[[str], str]) -> str:
    with _clusters_lock:
        known = _clusters.get(run_id)
    return known or cluster_of(run_id)


def run_started(run: Run) -> None:
    note_run(run)
    _quietly(_runs_started.add, 1, {"cluster": run.cluster, "trigger": run.trigger})


def run_stalled(run: Run) -> None:
    _quietly(_runs_stalled.add, 1, {"cluster": run.cluster})


def nodes_in_flight(counts: Mapping[tuple[str, str], int]) -> None:
    """The sweep's count per (cluster, pool); pools with none in flight are given as 0, so
    a chart falls back to zero rather than keeping the last non-zero value."""
    for (cluster, pool), count in counts.items():
        _quietly(_nodes_in_flight.set, count, {"cluster": cluster, "pool": pool})


def record_committed(records: Iterable[Any], *, cluster_of: Callable[[str], str]) -> None:
    """Count the transitions that a winning write carried, and forget them. Never raises:
    a metric is not worth failing a step whose write is already stored."""
    try:
        runs = [r for r in records if isinstance(r, Run)]
        for run in runs:
            note_run(run)
            for change in _take(run):
                if change.target == RunState.SUCCEEDED:
                    _runs_succeeded.add(1, {"cluster": run.cluster})
                elif change.target == RunState.FAILED:
                    _runs_failed.add(1, {"cluster": run.cluster})
        for node in records:
            if isinstance(node, NodeWork) and node.unrecorded:
                cluster = _cluster(node.run_id, cluster_of)
                for change in _take(node):
                    _node_transition(cluster, node.pool, change)
    except Exception:
        logger.debug("metrics of a commit not recorded", exc_info=True)


def _take(record: Run | NodeWork) -> list[Transition]:
    changes, record.unrecorded = record.unrecorded, []
    return changes


def _node_transition(cluster: str, pool: str, change: Transition) -> None:
    where = {"cluster": cluster, "pool": pool}
    if change.target == NodeState.SUCCEEDED:
        _nodes_patched.add(1, where)
    elif change.target == NodeState.FAILED:
        _nodes_failed.add(1, {**where, "step": change.source})
    if change.source in TIMED_STEPS and change.since:
        seconds = parse_iso(change.at) - parse_iso(change.since)
        if seconds >= 0:
            _step_duration.record(seconds, {**where, "step": change.source, "outcome": change.target})


def _quietly(fn: Callable[..., None], *args: Any) -> None:
    try:
        fn(*args)
    except Exception:
        logger.debug("metric not recorded", exc_info=True)

"""Runs and per-node work: the records, their states, and every allowed transition.

This module is the one place to read to know what a run or a node can go through.
The transition tables are checked on every write (``NodeWork.move_to``), so a step
that tries an undeclared transition fails loudly instead of corrupting a run.

Node lifecycle (one message moves one node forward by one step)::

    pending --admit--> admitted --cordon--> draining --drained--> reimaging --LRO ok--> booting
    booting --verified, uncordoned--> succeeded
    admitted --opted out / cordoned by someone else--> skipped
    draining --timeout or refusal, policy "skip": uncordoned--> deferred
    pending --maintenance window closes before it could finish--> deferred
    pending | admitted | draining --run cancelled: uncordoned--> cancelled
    reimaging --LRO failed, attempts left--> reimaging
    reimaging --a pod landed on it before the write--> draining
    reimaging --uncordoned by someone else before the write, policy "skip"--> deferred
    booting --Ready, but its kubelet is not the release the image's tag names--> failed (left cordoned)
    any step --permanent error, retries exhausted, timeout--> failed (reason kept)
    failed --an operator retries it, run still active--> pending
    failed --an operator releases it: uncordoned--> released
"""

from __future__ import annotations

import enum
import json
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from shared.errors import PatcherError


class NodeState(enum.StrEnum):
    PENDING = "pending"
    ADMITTED = "admitted"
    DRAINING = "draining"
    REIMAGING = "reimaging"
    BOOTING = "booting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    DEFERRED = "deferred"
    CANCELLED = "cancelled"
    RELEASED = "released"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_NODE_STATES

    @property
    def holds_slot(self) -> bool:
        """The node is (or may be) disrupted by us, so it counts against the budget."""
        return self in {NodeState.ADMITTED, NodeState.DRAINING, NodeState.REIMAGING, NodeState.BOOTING}


TERMINAL_NODE_STATES = frozenset(
    {
        NodeState.SUCCEEDED,
        NodeState.FAILED,
        NodeState.SKIPPED,
        NodeState.DEFERRED,
        NodeState.CANCELLED,
        NodeState.RELEASED,
    }
)

NODE_TRANSITIONS: dict[NodeState, frozenset[NodeState]] = {
    # A window that closes before a pending node could finish defers it to the next one.
    NodeState.PENDING: frozenset(
        {NodeState.ADMITTED, NodeState.CANCELLED, NodeState.SKIPPED, NodeState.DEFERRED}
    ),
    NodeState.ADMITTED: frozenset(
        {NodeState.DRAINING, NodeState.SKIPPED, NodeState.FAILED, NodeState.CANCELLED}
    ),
    NodeState.DRAINING: frozenset(
        {NodeState.REIMAGING, NodeState.FAILED, NodeState.DEFERRED, NodeState.CANCELLED}
    ),
    # A failed reimage LRO is retried by going round REIMAGING again (attempt counter).
    # Until the write is sent, the node can still fall back: a pod landed on it since the
    # drain (back to draining), or somebody uncordoned it (deferred or failed by policy).
    NodeState.REIMAGING: frozenset(
        {NodeState.REIMAGING, NodeState.BOOTING, NodeState.FAILED, NodeState.DRAINING, NodeState.DEFERRED}
    ),
    NodeState.BOOTING: frozenset({NodeState.SUCCEEDED, NodeState.FAILED}),
    NodeState.SUCCEEDED: frozenset(),
    # Failed is final unless an operator says otherwise: retried (the run takes it up again
    # from the start, through admission) or released (uncordoned, given back as it is).
    NodeState.FAILED: frozenset({NodeState.PENDING, NodeState.RELEASED}),
    NodeState.SKIPPED: frozenset(),
    NodeState.DEFERRED: frozenset(),
    NodeState.CANCELLED: frozenset(),
    NodeState.RELEASED: frozenset(),
}


class RunState(enum.StrEnum):
    PLANNED = "planned"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in {RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED}


RUN_TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    # A planned run can end without starting a node (its window closed, every node skipped).
    RunState.PLANNED: frozenset(
        {RunState.RUNNING, RunState.PAUSED, RunState.CANCELLED, RunState.SUCCEEDED, RunState.FAILED}
    ),
    RunState.RUNNING: frozenset({RunState.PAUSED, RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED}),
    RunState.PAUSED: frozenset({RunState.RUNNING, RunState.CANCELLED, RunState.FAILED}),
    RunState.SUCCEEDED: frozenset(),
    RunState.FAILED: frozenset(),
    RunState.CANCELLED: frozenset(),
}


# 16**11 ms reach past the year 2500.
_ID_TIME_LIMIT = 16**11 - 1


def newest_first_prefix(at: float) -> str:
    """The leading part of the id of a run created at ``at`` (epoch seconds): ids of runs
    created at or before ``at`` compare greater than or equal to it."""
    return f"{max(0, _ID_TIME_LIMIT - int(at * 1000)):011x}"


class InvalidTransitionError(PatcherError):
    pass


@dataclass(frozen=True)
class Transition:
    """A state change made since the record was read: counted (``shared.rollout.metrics``) once
    the write carrying it wins, never stored."""

    source: str
    target: str
    since: str  # when the state left was entered ("" if never recorded)
    at: str


HISTORY_LIMIT = 40  # keeps a node record far below Table storage's 64 KiB per property


@dataclass
class PoolBudget:
    """A pool's budget as resolved when the run was planned."""

    max_unavailable: int
    size: int
    spec: int | str

    def to_json(self) -> dict[str, Any]:
        return {"maxUnavailable": self.max_unavailable, "size": self.size, "spec": self.spec}


@dataclass
class Run:
    id: str
    cluster: str
    reason: str
    created_at: str
    state: RunState = RunState.PLANNED
    trigger: str = "manual"
    pools: dict[str, PoolBudget] = field(default_factory=dict)
    max_concurrent_nodes: int = 1
    max_failed_nodes: int = 1
    state_reason: str = ""
    updated_at: str = ""
    ended_at: str = ""
    # Fencing token for budget slots: bumped on every admission write.
    fence: int = 0
    # Why pending nodes are not starting: per pool (budget, cluster limit), and per node
    # held out of a wave by a PodDisruptionBudget.
    waiting: dict[str, str] = field(default_factory=dict)
    # Nodes held back by a PodDisruptionBudget are looked at again then (epoch seconds),
    # by one delayed admission however many admissions held them back.
    recheck_at: float = 0.0
    # When the latest admission written looked at the slots held (epoch seconds, the
    # admitter's clock): a node that ended before then had its slot counted.
    admission_view_at: float = 0.0
    # A maintenance window: no node starts before not_before, nor unless it can finish
    # by deadline (epoch seconds; 0 = unbounded).
    not_before: float = 0.0
    deadline: float = 0.0
    # What started it (event id, automation run id, schedule occurrence), for de-duplication.
    source: str = ""
    # Nodes of its pools it will not touch, and why (control-plane nodes of a pool that
    # did not opt in).
    left_out: dict[str, str] = field(default_factory=dict)
    # The kubelet version its nodes must report after the reimage (a node image's tag);
    # "" when nothing says.
    kubelet_version: str = ""
    # Since when the sweeper has seen it with nodes pending, none in flight and none it
    # could start (epoch seconds; 0 while it moves); after ``stallAfter`` of that it is
    # marked stalled, with what blocks it, until a node starts again.
    idle_since: float = 0.0
    stalled_at: str = ""
    stalled_reason: str = ""
    etag: str | None = None
    unrecorded: list[Transition] = field(default_factory=list, repr=False, compare=False)

    @staticmethod
    def new_id(*, at: float) -> str:
        """16 hex digits, the first 11 counting down with the creation time (ms): the
        store's key order is then newest first, so listings page without sorting."""
        return f"{newest_first_prefix(at)}{uuid.uuid4().hex[:5]}"

    def move_to(self, state: RunState, *, reason: str, at: str) -> None:
        if state == self.state:
            return
        if state not in RUN_TRANSITIONS[self.state]:
            raise InvalidTransitionError(f"run {self.id}: {self.state} -> {state} is not allowed")
        self.unrecorded.append(Transition(str(self.state), str(state), self.updated_at, at))
        self.state = state
        self.state_reason = reason
        self.updated_at = at
        # Paused, resumed or ended: whatever it was waiting for, the waiting starts over.
        self.idle_since, self.stalled_at, self.stalled_reason = 0.0, "", ""
        if state.terminal:
            self.ended_at = at


@dataclass
class NodeWork:
    """One node's progress through a run."""

    run_id: str
    name: str
    pool: str
    scale_set_id: str
    instance_id: str  # Flexible: the VM's name
    order: int
    flexible: bool = False  # the scale set's orchestration mode is Flexible
    # PodDisruptionBudget ("ns/name") -> how many of its pods were on the node when the run
    # was planned: what draining it spends of each budget, for choosing waves.
    pdb_pods: dict[str, int] = field(default_factory=dict)
    state: NodeState = NodeState.PENDING
    # Bumped on every persisted step; a message whose seq differs is stale.
    seq: int = 0
    reason: str = ""
    updated_at: str = ""
    state_since: str = ""
    lease_until: float = 0.0
    lease_owner: str = ""
    # When the work item last sent for this node becomes visible: a node only counts as
    # stalled once it is overdue, not while its message waits out a delay or a backlog.
    next_due: float = 0.0
    attempts: int = 0
    # Transient errors in a row; reset by any step that ends without one, so a long
    # PodDisruptionBudget wait (``attempts``) never counts against the retries.
    transient_errors: int = 0
    last_error: str = ""
    cordoned_by_us: bool = False
    drain_started: float = 0.0
    evicted: dict[str, str] = field(default_factory=dict)  # "ns/name" -> uid
    blockers: list[str] = field(default_factory=list)
    boot_id_before: str = ""
    expected_image: str = ""
    reimage_op: str = ""  # "reimage" | "manualupgrade"
    reimage_token: str = ""
    reimage_attempts: int = 0
    reimage_started: float = 0.0
    reimage_batch: str = ""
    reimage_leader: str = ""  # the node whose worker sends the batch's write
    # The instance's OS disk when the reimage was decided: a reimage replaces it, so a
    # different disk is proof the write took even when its answer was lost.
    os_disk_before: str = ""
    # The batch's leader made the request; it alone follows the operation closely and
    # wakes the others when it ends (one poll for the batch, not one per node).
    leads_batch: bool = False
    booting_since: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    etag: str | None = None
    unrecorded: list[Transition] = field(default_factory=list, repr=False, compare=False)

    def move_to(self, state: NodeState, *, reason: str, at: str, by: str = "") -> None:
        """``by``: who asked, for a transition an operator made."""
        if state not in NODE_TRANSITIONS[self.state]:
            raise InvalidTransitionError(f"node {self.name}: {self.state} -> {state} is not allowed")
        entry = {"at": at, "from": str(self.state), "to": str(state), "reason": reason}
        if by:
            entry["by"] = by
        self.unrecorded.append(Transition(str(self.state), str(state), self.state_since, at))
        self.history.append(entry)
        del self.history[:-HISTORY_LIMIT]
        self.state = state
        self.reason = reason
        self.state_since = at
        self.attempts = 0
        self.transient_errors = 0
        self.last_error = ""

    def start_over(self) -> None:
        """Forget the failed attempt's progress, so that the next one begins at the cordon
        and decides its reimage afresh. Whether we hold the node cordoned is kept: the
        cordon is still ours to lift."""
        self.lease_owner, self.lease_until, self.next_due = "", 0.0, 0.0
        self.drain_started, self.evicted, self.blockers = 0.0, {}, []
        self.boot_id_before, self.expected_image, self.os_disk_before = "", "", ""
        self.reimage_op, self.reimage_token, self.reimage_attempts, self.reimage_started = "", "", 0, 0.0
        self.reimage_batch, self.reimage_leader, self.leads_batch = "", "", False
        self.booting_since = 0.0

    def public(self) -> dict[str, Any]:
        where = {"state": str(self.state), "reason": self.reason, "since": self.state_since}
        trouble = {"attempts": self.attempts, "lastError": self.last_error, "blockers": self.blockers}
        return {"name": self.name, "pool": self.pool, **where, **trouble, "history": self.history}


@dataclass
class PacerRecord:
    """Compute's per-scale-set write limit as this run has used it: a token bucket's state."""

    run_id: str
    scale_set: str  # lower-cased scale-set resource id
    tokens: float | None = None  # None: never used (a full bucket)
    updated: float = 0.0
    # How long this scale set's latest reimages and boots took (seconds, newest last):
    # when to look first at the next operation and the next booting node.
    # One sample per batch (its first node to get there), so that a batch's nodes do not
    # all write here: the batch leaders' claims go through this record too.
    reimage_took: list[float] = field(default_factory=list)
    boot_took: list[float] = field(default_factory=list)
    sampled_batches: list[str] = field(default_factory=list)
    # A leader gathering a batch: until then, the scale set's other ready nodes wait for
    # it to claim them instead of each spending a write of their own.
    gathering_by: str = ""
    gathering_until: float = 0.0
    etag: str | None = None

    SAMPLES = 15

    def observe(self, kind: str, seconds: float, *, batch: str) -> bool:
        """Record a duration; False if this batch's was recorded already."""
        key = f"{kind}:{batch}"
        if key in self.sampled_batches:
            return False
        samples = self.reimage_took if kind == "reimage" else self.boot_took
        samples.append(round(seconds, 3))
        del samples[: -self.SAMPLES]
        self.sampled_batches.append(key)
        del self.sampled_batches[: -2 * self.SAMPLES]
        return True

    def typical(self, kind: str) -> float | None:
        """The median of the observed durations, or None before the first one."""
        samples = sorted(self.reimage_took if kind == "reimage" else self.boot_took)
        return samples[len(samples) // 2] if samples else None


def record_to_json(record: Run | NodeWork) -> str:
    data = asdict(record)
    data.pop("etag", None)
    data.pop("unrecorded", None)
    return json.dumps(data, sort_keys=True, default=str)


def run_from_dict(data: dict[str, Any], etag: str | None) -> Run:
    data = dict(data)
    data["state"] = RunState(data["state"])
    data["pools"] = {k: PoolBudget(**v) for k, v in data.get("pools", {}).items()}
    data.pop("etag", None)
    data.pop("pacers", None)  # kept in the run record before pacers had rows of their own
    return Run(**data, etag=etag)


def node_from_dict(data: dict[str, Any], etag: str | None) -> NodeWork:
    data = dict(data)
    data["state"] = NodeState(data["state"])
    data.pop("etag", None)
    return NodeWork(**data, etag=etag)

"""The per-node maintenance workflow: one work item moves one node forward.

Every step first observes reality (the Node, its pods, the scale-set instance, the run
record) and then acts, so a message delivered twice, late or out of order finds the
world already past its step and simply moves on. The rules that make that safe:

* A message carries the node record's ``seq``; a different seq means the message is
  stale (someone already made that step) and it is dropped.
* Before acting, a worker takes the node's lease with an ETag-conditioned write; a
  second delivery of the same message loses that write and is dropped.
* Every transition is persisted (``seq`` + 1) before the next message is sent. If the
  send is lost, the sweeper finds the stalled node and sends it again.
* Nodes only start through ``admit``, which counts the nodes holding a slot and commits
  the admissions conditional on the run record's ETag, so concurrent workers can never
  start more nodes than the budgets allow.
* Long waits (PDBs, LROs, a boot that has just begun) re-enqueue the node with a
  visibility delay; only waits about to end (evicted pods terminating, the Node turning
  Ready, a batch gathering) are spent in place, each bounded well within the lease.

``STEPS`` maps each state to the function that handles it: with ``model``'s transition
tables, that is the whole state machine.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from shared.admission import Admission, cordoned_by_us
from shared.budget import WritePacer
from shared.clock import Clock, iso
from shared.compute import ComputeClient, InstanceRef, LroStatus, image_version, parse_provider_id
from shared.config import ClusterConfig, PatcherConfig, PoolConfig
from shared.drain import DrainOptionsView, Pod, blocking_budgets, plan_drain
from shared.errors import (
    ConcurrencyError,
    LeaseLostError,
    NotFoundError,
    OutcomeUnknownError,
    PermanentError,
    TemporaryError,
)
from shared.kube import ANNOTATION_STATE, LABEL_PATCHING, KubeClient, Node
from shared.model import NodeState, NodeWork, PacerRecord, Run, RunState
from shared.notify import Notice, NoticeKind, Notifier, no_notifications
from shared.retry import backoff, retry_on_conflict
from shared.skew import same_release
from shared.store.base import RunStore
from shared.workqueue import WorkItem, WorkQueue

logger = logging.getLogger(__name__)

MAX_CHAINED_STEPS = 4  # steps that need no waiting run in one invocation, each persisted
# An idle Functions host polls the queue at most every maxPollingInterval (2 s in host.json)
# and visibility is whole seconds: a step item up to about 3 s late is on time.
BACKLOG_AFTER = 3.0


@dataclass
class Collaborators:
    """What a step needs from the outside world; tests pass fakes, the app real clients."""

    store: RunStore
    queue: WorkQueue
    clock: Clock
    config: PatcherConfig
    kube: Callable[[str], KubeClient]  # cluster name -> client
    compute: Callable[[str], ComputeClient]  # subscription id -> client
    notify: Notifier = no_notifications


@dataclass
class StepResult:
    """What a step decided. ``state`` None means "not yet": stay and look again after ``delay``."""

    state: NodeState | None
    reason: str
    delay: float = 0.0
    event: str = ""
    warning: bool = False
    annotate: bool = True


def tell_left_cordoned(deps: Collaborators, cluster: str, node: NodeWork) -> None:
    """A node failed with our cordon on it: somebody has to look at it (after the failure
    is stored, by the worker that stored it)."""
    if node.cordoned_by_us:
        deps.notify(
            Notice(
                NoticeKind.NODE_LEFT_CORDONED,
                node.reason,
                cluster=cluster,
                run_id=node.run_id,
                node=node.name,
            )
        )


def wait(reason: str, delay: float) -> StepResult:
    return StepResult(state=None, reason=reason, delay=delay)


@dataclass
class StepContext:
    run: Run
    node: NodeWork
    cluster: ClusterConfig
    pool: PoolConfig
    kube: KubeClient
    deps: Collaborators
    now: float
    ref: InstanceRef = field(init=False)
    # Start another node's step now (a batch peer whose Node just turned Ready, as the
    # watch saw it); the engine runs it in this invocation, else it goes through the queue.
    wake: Callable[[WorkItem, Node], None] | None = None
    # This node as its batch leader's watch saw it just now: no need to read it again.
    seen: Node | None = None
    # How long after it was due this invocation's work item arrived.
    late: float = 0.0
    # Each invocation waits in place at most once, so it stays within its lease.
    waited_inline: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        ref = parse_provider_id(f"azure://{self.node.scale_set_id}/virtualMachines/{self.node.instance_id}")
        if ref is None:
            raise PermanentError(f"node {self.node.name}: bad scale set id {self.node.scale_set_id}")
        self.ref = replace(ref, flexible=self.node.flexible)

    @property
    def compute(self) -> ComputeClient:
        return self.deps.compute(self.ref.subscription)

    @property
    def timing(self) -> Any:
        return self.deps.config.workflow

    def inline_wait(self) -> float:
        """Seconds this invocation may still wait in place (0 once it has waited)."""
        if self.waited_inline:
            return 0.0
        self.waited_inline = True
        return float(self.timing.inline_wait.total_seconds())

    @property
    def backlogged(self) -> bool:
        """The work item came well after it was due: the workers are behind, and a worker
        waiting in place for one node would hold up the others queued behind it."""
        return self.late > BACKLOG_AFTER

    def after_waiting(self) -> None:
        self.now = self.deps.clock.now()


# ---- the steps ------------------------------------------------------------------------------


def step_admitted(ctx: StepContext) -> StepResult:
    """Cordon (unless someone else did, or the node opted out) and report drain blockers."""
    node, run = ctx.node, ctx.run
    try:
        observed = ctx.kube.get_node(node.name)
    except NotFoundError:
        return StepResult(NodeState.SKIPPED, "node no longer exists in the cluster", event="PatchSkipped")
    ours = observed.cordoned_by == run.id
    if run.state == RunState.CANCELLED:
        if ours:
            ctx.kube.uncordon(node.name, state="cancelled")
        return StepResult(NodeState.CANCELLED, "run cancelled before the node was drained", annotate=False)
    if observed.labels.get(ctx.pool.opt_out_label, "").lower() in ("true", "1", "yes") or (
        observed.annotations.get(ctx.pool.opt_out_label, "").lower() in ("true", "1", "yes")
    ):
        if ours:
            ctx.kube.uncordon(node.name, state="skipped")
        return StepResult(
            NodeState.SKIPPED,
            f"opted out with {ctx.pool.opt_out_label}",
            event="PatchSkipped",
            annotate=False,
        )
    taken_over = ""
    if observed.unschedulable and not ours:
        if not cordoned_by_us(ctx.deps.store, run, observed):
            return StepResult(
                NodeState.SKIPPED,
                "cordoned by someone else before this run; left cordoned and untouched",
                event="PatchSkipped",
                annotate=False,
            )
        # Left cordoned by an earlier run of ours that failed on it: this run carries on from
        # there, and its own annotations say so from now on.
        taken_over = observed.cordoned_by
    if not observed.unschedulable or taken_over:
        ctx.kube.cordon(node.name, run_id=run.id, state=str(NodeState.DRAINING))
    node.cordoned_by_us = True
    node.boot_id_before = observed.boot_id
    node.drain_started = ctx.now
    node.evicted = {}
    pods = ctx.kube.list_pods_on_node(node.name)
    plan = plan_drain(pods, options=_drain_options(ctx.pool), daemonset_exists=ctx.kube.daemonset_exists)
    blockers = [f"refused: {plan.refusal_text}"] if plan.refused else []
    namespaces = sorted({p.namespace for p in plan.evict})
    pdbs = [pdb for ns in namespaces for pdb in ctx.kube.list_pdbs(ns)]
    blockers += blocking_budgets(plan.evict, pdbs)
    node.blockers = blockers
    cordon = f"left cordoned by run {taken_over}, taken over by run" if taken_over else "cordoned by run"
    message = f"{cordon} {run.id}; {len(plan.evict)} pods to evict"
    if blockers:
        message += "; may block: " + " | ".join(blockers)
    return StepResult(NodeState.DRAINING, message, event="PatchCordoned", annotate=False)


def step_draining(ctx: StepContext) -> StepResult:
    """Evict through the Eviction API until only DaemonSet and mirror pods are left."""
    node, pool = ctx.node, ctx.pool
    if ctx.run.state == RunState.CANCELLED:
        ctx.kube.uncordon(node.name, state="cancelled")
        return StepResult(NodeState.CANCELLED, "run cancelled during drain; node uncordoned", annotate=False)
    pods = ctx.kube.list_pods_on_node(node.name)
    plan = plan_drain(pods, options=_drain_options(pool), daemonset_exists=ctx.kube.daemonset_exists)
    elapsed = ctx.now - node.drain_started
    if plan.refused:
        return _drain_gives_up(ctx, f"drain refused: {plan.refusal_text}")
    # A pod we evicted that came back under the same name has a new UID: it is another pod.
    remaining = [p for p in plan.evict if not (p.terminating and node.evicted.get(p.key) == p.uid)]
    terminating = [p for p in plan.evict if p.terminating]
    if not plan.evict:
        return StepResult(NodeState.REIMAGING, f"drained in {elapsed:.0f}s", event="PatchDrained", delay=0.0)
    blocked: list[str] = []
    retry_after: float | None = None
    for pod in remaining:
        if pod.terminating:
            continue
        result = ctx.kube.evict(pod, grace_period_seconds=pool.drain.grace_period_seconds)
        if result.evicted:
            node.evicted[pod.key] = pod.uid
        elif result.blocked_reason:
            blocked.append(f"{pod.key} ({pod.owner_text}): {result.blocked_reason}")
            if result.retry_after:
                retry_after = max(retry_after or 0.0, result.retry_after)
    if elapsed > pool.drain.timeout.total_seconds():
        detail = "; ".join(blocked or node.blockers) or f"{len(terminating)} pods still terminating"
        return _drain_gives_up(ctx, f"drain timed out after {elapsed:.0f}s: {detail}")
    if blocked:
        node.blockers = blocked
        node.attempts += 1
        # Like kubectl drain, keep asking at a steady pace: a PDB frees up as soon as a
        # replacement pod is Ready, and a long back-off would waste the drain timeout.
        interval = ctx.timing.drain_retry_interval.total_seconds()
        delay = backoff(node.attempts, initial=interval, maximum=4 * interval)
        return wait(
            f"eviction refused for {len(blocked)} pods: {'; '.join(blocked)}", max(delay, retry_after or 0)
        )
    inline = 0.0 if ctx.backlogged else ctx.inline_wait()
    if inline > 0:
        gone = ctx.kube.wait_for_pods_gone(node.name, {p.uid for p in plan.evict}, timeout=inline)
        ctx.after_waiting()
        if gone:
            return step_draining(ctx)  # look once more: the drain is complete unless pods came back
    return wait(
        f"waiting for {len(plan.evict)} pods to terminate", ctx.timing.drain_retry_interval.total_seconds()
    )


def _drain_gives_up(ctx: StepContext, why: str) -> StepResult:
    if ctx.pool.drain.on_timeout == "skip":
        ctx.kube.uncordon(ctx.node.name, state=str(NodeState.DEFERRED))
        return StepResult(
            NodeState.DEFERRED,
            f"{why}; uncordoned, will be retried by a later run",
            event="PatchDeferred",
            warning=True,
            annotate=False,
        )
    return StepResult(NodeState.FAILED, f"{why}; left cordoned", event="PatchFailed", warning=True)


def step_reimaging(ctx: StepContext) -> StepResult:
    """Start the reimage (or the upgrade to the latest model) and follow its LRO."""
    node, timing = ctx.node, ctx.timing
    poll = timing.poll_interval.total_seconds()
    if node.reimage_token:
        status = ctx.compute.poll(node.reimage_token)
        if not status.done and node.leads_batch:
            status = _follow_in_place(ctx, status)
        if not status.done:
            if ctx.now - node.reimage_started > ctx.pool.reimage_timeout.total_seconds():
                return _reimage_timed_out(ctx)
            # Only the leader follows the batch's operation closely; the others wait for its
            # call and look themselves now and then, in case it never comes.
            return wait(f"{node.reimage_op} in progress", poll if node.leads_batch else PEER_POLLS * poll)
        if node.leads_batch:
            _wake_peers(ctx)
        if status.succeeded:
            node.booting_since = ctx.now
            _observe(ctx, "reimage", ctx.now - node.reimage_started)
            return StepResult(NodeState.BOOTING, f"{node.reimage_op} succeeded", event="PatchReimaged")
        return _reimage_failed(ctx, status.error)
    if node.reimage_started:
        # Claimed for a write whose operation we do not hold: the worker died around the
        # call, or its answer was lost. Only the instance can say whether it was sent.
        return _settle_claimed_write(ctx)
    if not node.reimage_op:
        instance = ctx.compute.get_instance(ctx.ref)
        node.expected_image = ctx.compute.get_model_image(ctx.ref)
        node.reimage_op = "reimage" if instance.latest_model_applied else "manualupgrade"
        node.os_disk_before = instance.os_disk
    return _start_batch(ctx)


def _reimage_timed_out(ctx: StepContext) -> StepResult:
    node = ctx.node
    return StepResult(
        NodeState.FAILED,
        f"{node.reimage_op} did not finish within {ctx.pool.reimage_timeout}; left cordoned",
        event="PatchFailed",
        warning=True,
    )


# Instances per reimage request; with the pacer and the leader, the claim is one
# 100-entity transaction (Table storage's limit).
MAX_BATCH = 98
# How far ARM's clock may be behind ours when its provisioning time is compared with the
# claim (both are NTP-synchronised): an operation that ended this much before the claim
# still counts as ours, which errs towards "it took" (the boot check then tells).
CLOCK_SKEW = 2.0


def _start_batch(ctx: StepContext) -> StepResult:
    """One ARM write for every node of the scale set that is ready for the same operation.

    Compute allows about 12 writes per scale set at once and 4 a minute after that, so a
    write per node would throttle any large pool. The node whose step runs first leads:
    it takes a token from the run's pacer for the scale set, claims the ready nodes that
    no worker holds (one transaction with the pacer record, bumping their seq so their
    queued messages become stale), checks they are still drained and cordoned by us,
    sends one request for all of them, and hands the operation to each. The claim is the
    write-ahead record: from it until the operation is stored, every node of the batch
    counts as possibly reimaged, and only the instance can release it
    (``_settle_claimed_write``); only an answer that says the request was refused
    releases it at once.
    """
    node, timing = ctx.node, ctx.timing
    poll = timing.poll_interval.total_seconds()
    joining = _gather(ctx)
    if joining is not None:
        return joining
    claimed = None
    for _ in range(3):  # a conflict means another leader or a sample landed first: look again
        claimed = _claim_batch(ctx)
        if claimed is not None:
            break
    if claimed is None:
        return wait("other workers are starting batches on this scale set", min(poll, 1.0))
    if isinstance(claimed, StepResult):
        return claimed
    peers, batch, first_poll, peers_poll = claimed
    own_check, peers = _still_drained(ctx, peers)
    if own_check is not None:
        _hand_over(ctx, peers, batch, token=None, first_poll=0.0)
        _unclaim(node)
        return own_check
    _hold_lease(ctx, "the reimage write")
    instance_ids = [n.instance_id for n in (node, *peers)]
    try:
        if node.reimage_op == "reimage":
            token = ctx.compute.begin_reimage(ctx.ref, instance_ids)
        else:
            token = ctx.compute.begin_upgrade_to_latest_model(ctx.ref, instance_ids)
    except (OutcomeUnknownError, ConcurrencyError) as exc:
        # Maybe accepted (a 5xx or timeout after ARM took it; a 409 that may be our own
        # operation, sent by a worker whose lease ran out): the claim stays, the peers
        # wait for this node, and the instance decides when it is next looked at.
        logger.warning("run %s: batch %s write answered ambiguously: %s", ctx.run.id, batch, exc)
        return wait(f"{node.reimage_op} may have been accepted ({exc}); looking at the instance", poll)
    except (PermanentError, TemporaryError):
        # Refused before anything started (400, 403, 404, 429, or never sent): release.
        _unclaim(node)
        _hand_over(ctx, peers, batch, token=None, first_poll=0.0)
        raise
    node.reimage_token = token
    logger.info(
        "run %s: batch %s led by %s: %s of %d instances",
        ctx.run.id,
        batch,
        node.name,
        node.reimage_op,
        len(instance_ids),
    )
    _hand_over(ctx, peers, batch, token=token, first_poll=peers_poll)
    return wait(
        f"{node.reimage_op} started for {len(instance_ids)} instances ({', '.join(instance_ids)})", first_poll
    )


def _unclaim(node: NodeWork) -> None:
    node.reimage_started, node.reimage_batch, node.reimage_leader, node.leads_batch = 0.0, "", "", False


def _hold_lease(ctx: StepContext, what: str) -> None:
    """The two calls a worker that lost its lease must never make (the reimage write, the
    uncordon) come from the lease's holder, with the lease outlasting the call: renew it,
    conditional on the record's ETag, unless ``leaseMargin`` of it is left. While the lease has
    not ended, no other worker can have taken it; a lost renewal means one has."""
    node, now = ctx.node, ctx.deps.clock.now()
    if node.lease_until - now > ctx.timing.lease_margin.total_seconds():
        return
    node.lease_until = now + ctx.timing.lease_duration.total_seconds()
    try:
        ctx.deps.store.commit(node)
    except ConcurrencyError as exc:
        raise LeaseLostError(f"node {node.name}: lease lost before {what}") from exc


def _still_drained(ctx: StepContext, peers: list[NodeWork]) -> tuple[StepResult | None, list[NodeWork]]:
    """Look at every node of the batch once more just before the write: the gathering,
    the pacing and conflicts can take minutes after a node drained, and a node that was
    uncordoned or given a pod meanwhile must not be reimaged with it. One list of the
    run's cordoned Nodes and one pod list per node still cordoned, made side by side (a
    batch can be a hundred nodes, and the write waits for them). Returns the leader's own
    way out (None if it may go ahead) and the peers that may; the others leave the batch
    here."""
    node, run = ctx.node, ctx.run
    observed = {n.name: n for n in ctx.kube.list_nodes(label_selector=f"{LABEL_PATCHING}={run.id}")}
    members = [node, *peers]
    cordoned = [m.name for m in members if _cordoned_by(observed.get(m.name), run)]
    pods = _pods_on(ctx.kube, cordoned)
    own = _pre_write_problem(ctx, node, pods.get(node.name))
    keep = []
    for peer in peers:
        problem = _pre_write_problem(ctx, peer, pods.get(peer.name))
        if problem is None:
            keep.append(peer)
        else:
            _leave_batch(ctx, peer, problem)
    return own, keep


def _cordoned_by(observed: Node | None, run: Run) -> bool:
    return observed is not None and observed.unschedulable and observed.cordoned_by == run.id


def _pods_on(kube: KubeClient, names: list[str]) -> dict[str, list[Pod]]:
    """Each named node's pods, listed on up to WAKE_THREADS threads at once."""
    if len(names) <= 1:
        return {name: kube.list_pods_on_node(name) for name in names}
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(max_workers=min(WAKE_THREADS, len(names))) as pool:
        return dict(zip(names, pool.map(kube.list_pods_on_node, names), strict=True))


def _pre_write_problem(ctx: StepContext, node: NodeWork, pods: list[Pod] | None) -> StepResult | None:
    """Why ``node`` must not be reimaged now (``pods``: its pods, None if it is no longer
    cordoned by this run), or None."""
    if pods is None:
        # Somebody uncordoned it (the label may be gone with it): honour that, reimage nothing.
        node.cordoned_by_us = False
        why = "uncordoned by someone else after its drain; not reimaged"
        if ctx.pool.drain.on_timeout == "skip":
            return StepResult(
                NodeState.DEFERRED,
                f"{why}; will be retried by a later run",
                event="PatchDeferred",
                warning=True,
            )
        return StepResult(NodeState.FAILED, why, event="PatchFailed", warning=True)
    plan = plan_drain(pods, options=_drain_options(ctx.pool), daemonset_exists=ctx.kube.daemonset_exists)
    if plan.evict or plan.refused:
        names = ", ".join(p.key for p in plan.evict) or plan.refusal_text
        return StepResult(
            NodeState.DRAINING, f"pods landed on it after its drain ({names}); draining again", warning=True
        )
    return None


def _leave_batch(ctx: StepContext, peer: NodeWork, result: StepResult) -> None:
    """A claimed peer that failed the check before the write: out of the batch, into the
    state its check said, with a work item of its own."""
    store, at = ctx.deps.store, iso(ctx.now)

    def leave() -> NodeWork:
        fresh = store.get_node(peer.run_id, peer.name)
        if fresh.reimage_batch != peer.reimage_batch or fresh.state != NodeState.REIMAGING:
            return fresh
        _unclaim(fresh)
        fresh.cordoned_by_us = peer.cordoned_by_us
        assert result.state is not None
        fresh.move_to(result.state, reason=result.reason, at=at)
        fresh.updated_at = at
        fresh.seq += 1
        store.commit(fresh)
        return fresh

    left = retry_on_conflict(leave, sleep=ctx.deps.clock.sleep)
    logger.info("run %s node %s left batch %s: %s", ctx.run.id, peer.name, peer.reimage_batch, result.reason)
    if left.state == NodeState.FAILED and left.reason == result.reason:
        tell_left_cordoned(ctx.deps, ctx.run.cluster, left)
    ctx.kube.record_event(
        peer.name,
        reason=result.event or "PatchDraining",
        message=f"run {ctx.run.id}: {result.reason}",
        warning=result.warning,
        now=ctx.now,
    )
    if left.state.terminal:
        ctx.deps.queue.send(WorkItem("admit", left.run_id))
    else:
        ctx.deps.queue.send(WorkItem("step", left.run_id, left.name, left.seq))


def _settle_claimed_write(ctx: StepContext) -> StepResult:
    """Claimed, but no operation stored: decide from the instance whether the write was
    sent. A batch's peer leaves that to its leader while the leader still holds the claim
    (one look and at most one new write for the batch), and looks itself otherwise."""
    node, poll = ctx.node, ctx.timing.poll_interval.total_seconds()
    if ctx.now - node.reimage_started > ctx.pool.reimage_timeout.total_seconds():
        return _reimage_timed_out(ctx)
    if not node.leads_batch and node.reimage_leader:
        try:
            leader = ctx.deps.store.get_node(node.run_id, node.reimage_leader)
        except NotFoundError:
            leader = None
        if leader is not None and leader.reimage_batch == node.reimage_batch:
            if leader.state == NodeState.REIMAGING and leader.reimage_token:
                node.reimage_token = leader.reimage_token  # its hand-over did not reach us
                return step_reimaging(ctx)
            if leader.state == NodeState.REIMAGING:
                return wait(f"waiting for {leader.name} to settle the batch's write", PEER_POLLS * poll)
    verdict, why = _write_verdict(ctx)
    if verdict == "unsettled":
        return wait(why, poll)
    if verdict == "failed":
        return _reimage_failed(ctx, why)
    if verdict == "took":
        if node.leads_batch:
            _wake_peers(ctx, untracked=True)
        node.booting_since = ctx.now
        return StepResult(NodeState.BOOTING, f"{node.reimage_op} took ({why})", event="PatchReimaged")
    # Never sent: no instance of the batch was touched (one request covers them all).
    logger.warning("run %s node %s: claimed write never sent (%s); sending again", ctx.run.id, node.name, why)
    if node.leads_batch:
        peers = [
            p
            for p in ctx.deps.store.list_nodes(ctx.run.id, states=(NodeState.REIMAGING,))
            if p.reimage_batch == node.reimage_batch and p.name != node.name and not p.reimage_token
        ]
        _hand_over(ctx, peers, node.reimage_batch, token=None, first_poll=0.0)
    _unclaim(node)
    return _start_batch(ctx)


def _write_verdict(ctx: StepContext) -> tuple[str, str]:
    """Did a write claimed at ``reimage_started`` reach this node's instance? "took",
    "failed" (it took and its operation failed), "unsettled" (cannot tell yet) or
    "not sent". Decided from what a reimage changes (the OS disk, the time of the
    instance's last provisioning status, for an upgrade the model flag that was false
    before), never from state that was already true; and "not sent" only when nothing
    has moved: the Node still Ready on the boot it was drained on."""
    node = ctx.node
    instance = ctx.compute.get_instance(ctx.ref)
    state = instance.provisioning_state.lower()
    if state in ("updating", "creating"):
        return "unsettled", f"{node.reimage_op} in progress (operation not tracked)"
    signs = []
    disks_known = bool(instance.os_disk and node.os_disk_before)
    if disks_known and instance.os_disk != node.os_disk_before:
        signs.append("OS disk replaced")
    # The provisioning time speaks only where the disk cannot: an operation that ended
    # just before the claim (the node's previous reimage) would read as this one.
    if (
        not disks_known
        and instance.provisioning_time
        and instance.provisioning_time >= node.reimage_started - CLOCK_SKEW
    ):
        signs.append("instance provisioned since the claim")
    if (
        node.reimage_op == "manualupgrade"
        and instance.latest_model_applied
        and (not node.expected_image or instance.image == node.expected_image)
    ):
        signs.append("instance is on the latest model")
    if signs:
        if state == "failed":
            return "failed", f"instance provisioning failed after the claim ({', '.join(signs)})"
        return "took", ", ".join(signs)
    if ctx.now - node.reimage_started < 2 * ctx.timing.poll_interval.total_seconds():
        return "unsettled", "waiting for the write to show on the instance"
    observed = ctx.kube.get_node(node.name)
    if not observed.ready or (observed.boot_id and observed.boot_id != node.boot_id_before):
        # Something happened to the machine that the instance does not explain: never
        # write again on a guess; the timeout fails the node with the reason.
        return "unsettled", "node rebooted or went NotReady, but the instance shows no reimage"
    return "not sent", "instance unchanged and node still on its boot"


def _gather(ctx: StepContext) -> StepResult | None:
    """Wait for more of the scale set's nodes, so that the writes in hand go round.

    The nodes that will want a write soon are those of the scale set still draining or
    drained, and as many of the pool's pending nodes as its booting ones will free slots
    for (a wave ends over a few seconds, and its slots refill one by one: a write per node
    then would spend the bucket on the first few and make the last ones wait for refills).
    With fewer tokens than such nodes, each write should carry a token's share of them:
    one node gathers (recorded on the pacer), looking every ``batchLinger`` until a
    share is drained or nothing more is draining, at most ``inlineWait``; the others that
    get ready meanwhile step aside until it has claimed them. Returns a wait for those."""
    node, store, linger = ctx.node, ctx.deps.store, ctx.timing.batch_linger.total_seconds()
    if linger <= 0 or _written_alone(ctx):
        return None
    clock, longest = ctx.deps.clock, ctx.timing.inline_wait.total_seconds()
    for _ in range(3):
        now = clock.now()
        pacer = store.get_pacer(ctx.run.id, node.scale_set_id)
        if pacer.gathering_by == node.name:
            return None
        if pacer.gathering_until > now:
            return wait(
                f"joining the batch {pacer.gathering_by} is gathering", pacer.gathering_until - now + linger
            )
        # Columns first: most of a wave's nodes are either not draining yet or in a batch's
        # reimage already, and need only counting. Read whole only the others, for their
        # blockers and lease (and, for a row listed without the batch column, its batch).
        listed = [
            s
            for s in store.node_summaries(
                ctx.run.id, states=(NodeState.ADMITTED, NodeState.DRAINING, NodeState.REIMAGING)
            )
            if s.pool == node.pool
        ]
        admitted = {s.name for s in listed if s.state == NodeState.ADMITTED}
        ours = [
            n
            for n in store.get_nodes(
                ctx.run.id, [s.name for s in listed if s.state != NodeState.ADMITTED and not s.reimage_batch]
            )
            if n.state in (NodeState.DRAINING, NodeState.REIMAGING)
            and n.scale_set_id.lower() == pacer.scale_set
        ]
        started = {s.name for s in listed if s.reimage_batch} | {n.name for n in ours if n.reimage_started}
        blocked = {n.name for n in ours if n.blockers}  # a drain held up by a PDB is not worth waiting for
        # Drained nodes in another worker's step now (about to join a gathering, or to
        # lead) are coming, not ready: the claim passes over a node whose lease is held.
        ready = {n.name for n in ours if n.state == NodeState.REIMAGING and n.lease_until <= now} - started
        coming = (
            admitted
            | ({n.name for n in ours if n.state == NodeState.DRAINING} - blocked)
            | ({n.name for n in ours if n.state == NodeState.REIMAGING} - started - ready - {node.name})
        )
        wanted = len(ready | coming | {node.name}) + _slots_freeing_soon(ctx)
        if wanted <= 1:
            return None
        available = _write_bucket(ctx, pacer, now).available(now)
        share = math.ceil(wanted / max(1.0, math.floor(available)))
        if len(ready | {node.name}) >= share:
            return None  # enough for a write now: waiting would only slow these
        pacer.gathering_by, pacer.gathering_until = node.name, now + longest
        try:
            store.commit(pacer)
        except ConcurrencyError:
            continue
        passed_over = started | blocked
        while True:
            clock.sleep(min(linger, now + longest - clock.now()))
            if clock.now() >= now + longest:
                break
            now_listed = store.node_summaries(
                ctx.run.id, states=(NodeState.ADMITTED, NodeState.DRAINING, NodeState.REIMAGING)
            )
            mine = [
                s
                for s in now_listed
                if s.pool == node.pool and not s.reimage_batch and s.name not in passed_over
            ]
            if len([s for s in mine if s.state == NodeState.REIMAGING]) >= share:
                break  # a token's share is drained: claim them now
            if not any(s.state != NodeState.REIMAGING for s in mine):
                break  # nothing more is draining
        return None
    return None


def _written_alone(ctx: StepContext) -> bool:
    """A Flexible instance is reimaged through its own VM's API (the scale set has no
    batch reimage): a write of its own, with no batch to gather or join."""
    return ctx.ref.flexible and ctx.node.reimage_op == "reimage"


def _slots_freeing_soon(ctx: StepContext) -> int:
    """How many of the pool's pending nodes its booting nodes will let start: they end
    within a boot, and the pending nodes then drain and want writes in the same few
    seconds. Nothing when no node of the pool waits for budget (the run record says so)."""
    pool, store = ctx.node.pool, ctx.deps.store
    if pool not in ctx.run.waiting:
        return 0
    booting = sum(1 for s in store.node_summaries(ctx.run.id, states=(NodeState.BOOTING,)) if s.pool == pool)
    if not booting:
        return 0  # a first wave: nothing frees a slot soon, and the pending nodes need no listing
    # No more pending nodes than that can matter; other pools' may be among those listed,
    # which only errs towards spending writes sooner.
    pending = store.node_summaries(ctx.run.id, states=(NodeState.PENDING,), limit=booting)
    return min(booting, sum(1 for s in pending if s.pool == pool))


def _write_bucket(ctx: StepContext, pacer: PacerRecord, now: float) -> WritePacer:
    """The pacer record's token bucket, with the configured burst and rate."""
    state = None if pacer.tokens is None else [pacer.tokens, pacer.updated]
    timing = ctx.timing
    return WritePacer.load(state, burst=timing.write_burst, per_minute=timing.writes_per_minute, now=now)


def _claim_batch(ctx: StepContext) -> tuple[list[NodeWork], str, float, float] | StepResult | None:
    """Take a write token and claim this node's batch in one transaction with the pacer.
    Returns the peers, the batch id and when the leader and the peers poll first; a wait if the pacer has no
    token; None if the transaction lost to another worker."""
    node, store, timing = ctx.node, ctx.deps.store, ctx.timing
    poll = timing.poll_interval.total_seconds()
    now = ctx.deps.clock.now()
    pacer = store.get_pacer(ctx.run.id, node.scale_set_id)
    bucket = _write_bucket(ctx, pacer, now)
    delay = bucket.take(now)
    if delay > 0:
        return wait(f"pacing writes to scale set {ctx.ref.scale_set} under Compute's limit", delay)
    pacer.tokens, pacer.updated = bucket.state()
    if pacer.gathering_by == node.name:
        pacer.gathering_by, pacer.gathering_until = "", 0.0
    # Poll first when earlier operations on this scale set finished, not every interval:
    # the leader comes back a whole in-place wait ahead of that and follows the end
    # closely; the others wait for its call (or, should it never come, look themselves).
    typical = pacer.typical("reimage")
    inline = timing.inline_wait.total_seconds()
    first_poll = max(poll, typical - inline) if typical else poll
    peers_poll = max(typical + inline, PEER_POLLS * poll) if typical else PEER_POLLS * poll
    peers = [
        n
        for n in store.list_nodes(ctx.run.id, states=(NodeState.REIMAGING,))
        if n.name != node.name
        and not n.reimage_started
        and n.reimage_op == node.reimage_op
        and n.scale_set_id.lower() == pacer.scale_set
        and n.lease_until <= now
    ][: 0 if _written_alone(ctx) else MAX_BATCH - 1]
    batch = uuid.uuid4().hex[:8]
    at = iso(now)
    for n in (node, *peers):
        n.reimage_started, n.reimage_batch, n.leads_batch = now, batch, n is node
        n.reimage_leader = node.name
    for p in peers:
        p.seq += 1
        p.reason, p.updated_at = f"batched with {node.name} into one {node.reimage_op}", at
        p.next_due = now + peers_poll
    try:
        store.commit(pacer, node, *peers)
    except ConcurrencyError:
        _unclaim(node)
        return None
    # Each peer's work item goes out with the claim, not after the write: if this worker
    # dies in between, they still come back (and wait for this node's recovery).
    for p in peers:
        ctx.deps.queue.send(WorkItem("step", p.run_id, p.name, p.seq), delay=peers_poll)
    return peers, batch, first_poll, peers_poll


def _hand_over(
    ctx: StepContext, peers: list[NodeWork], batch: str, *, token: str | None, first_poll: float
) -> None:
    """Give each claimed peer the batch's operation, or release it (token None: the write
    was refused, never sent, or the leader left the batch) with a work item to start over
    at once. A peer's work item for following the operation went out with the claim."""
    store = ctx.deps.store
    for peer in peers:

        def hand(peer: NodeWork = peer) -> NodeWork | None:
            fresh = store.get_node(peer.run_id, peer.name)
            if fresh.reimage_batch != batch or fresh.state != NodeState.REIMAGING:
                return None
            if token is None:
                _unclaim(fresh)
                fresh.seq += 1  # its queued item was for following the write
            else:
                fresh.reimage_token = token
                fresh.next_due = ctx.now + first_poll
            store.commit(fresh)
            return fresh

        handed = retry_on_conflict(hand, sleep=ctx.deps.clock.sleep)
        if handed is not None and token is None:
            ctx.deps.queue.send(WorkItem("step", handed.run_id, handed.name, handed.seq))


def _follow_in_place(ctx: StepContext, status: LroStatus) -> LroStatus:
    """The leader polls the batch's operation a few times in place when it is due to end
    within ``inlineWait`` (ARM has no watch), so the batch moves on within a fraction of
    that wait instead of a poll interval plus a queue trip later."""
    node = ctx.node
    typical = ctx.deps.store.get_pacer(ctx.run.id, node.scale_set_id).typical("reimage")
    if typical is None or typical - (ctx.now - node.reimage_started) > ctx.timing.inline_wait.total_seconds():
        return status
    inline = ctx.inline_wait()
    deadline, every = ctx.now + inline, inline / IN_PLACE_POLLS
    # Sleep to just before the typical end (the queue may have brought us early), then
    # poll at a tenth of the wait: a couple of reads when the operation keeps to time.
    clock = ctx.deps.clock
    clock.sleep(min(deadline, node.reimage_started + typical - every) - clock.now())
    while True:
        status = ctx.compute.poll(node.reimage_token)
        if status.done or clock.now() + every > deadline:
            break
        clock.sleep(every)
    ctx.after_waiting()
    return status


IN_PLACE_POLLS = 10
PEER_POLLS = 4  # a batch's other nodes poll its operation this many times less often


def _wake_peers(ctx: StepContext, *, untracked: bool = False) -> None:
    """The batch's operation ended: send its other nodes their next step now (``untracked``:
    the write took without its operation stored; each peer then looks at its instance)."""
    node = ctx.node
    for peer in ctx.deps.store.list_nodes(ctx.run.id, states=(NodeState.REIMAGING,)):
        if (
            peer.reimage_batch == node.reimage_batch
            and peer.name != node.name
            and (peer.reimage_token or untracked)
        ):
            ctx.deps.queue.send(WorkItem("step", peer.run_id, peer.name, peer.seq))


def _reimage_failed(ctx: StepContext, error: str) -> StepResult:
    node = ctx.node
    op = node.reimage_op
    _unclaim(node)
    node.reimage_attempts += 1
    node.reimage_token = ""
    node.reimage_op = ""  # decided again, with the OS disk to compare against, on the retry
    if node.reimage_attempts >= ctx.timing.max_reimage_attempts:
        return StepResult(
            NodeState.FAILED,
            f"{op} failed {node.reimage_attempts} times ({error}); left cordoned",
            event="PatchFailed",
            warning=True,
        )
    delay = backoff(
        node.reimage_attempts,
        initial=ctx.timing.retry_backoff_initial.total_seconds(),
        maximum=ctx.timing.retry_backoff_max.total_seconds(),
    )
    return StepResult(NodeState.REIMAGING, f"{op} failed ({error}); retrying", delay=delay, warning=True)


def step_booting(ctx: StepContext) -> StepResult:
    """Verify from both sides, then uncordon: the node is Ready with a new boot id and the
    expected image, and the instance succeeded on the latest model."""
    node, poll = ctx.node, ctx.timing.poll_interval.total_seconds()
    observed = ctx.seen if ctx.seen is not None else ctx.kube.get_node(node.name)
    problems = _node_problems(node, observed)
    # The typical boot on this scale set, read once: it times both the look and the next.
    typical = ctx.deps.store.get_pacer(ctx.run.id, node.scale_set_id).typical("boot") if problems else None
    if problems and not observed.ready:
        # Sleep through most of a typical boot on this scale set, and come back with a whole
        # in-place wait ahead of its expected end: the queue's own latency (polling,
        # whole-second visibility) is then spent inside the watch, not after the boot.
        elapsed = ctx.now - node.booting_since
        inline = ctx.timing.inline_wait.total_seconds()
        if _follows_leader(node):
            # The leader watches the whole batch boot and calls this node when it is Ready;
            # a watch per node would hold a worker each. Look only if that call is late.
            call_due = typical + inline if typical else PEER_POLLS * poll
            if elapsed < call_due:
                return wait("; ".join(problems) + " (booting; the batch leader watches)", call_due - elapsed)
        elif (typical or 0.0) - elapsed > inline:
            return wait("; ".join(problems) + " (booting)", (typical or 0.0) - elapsed - inline)
    if node.leads_batch:
        # Calls the others as their Nodes come up, whether or not its own is up already.
        observed = _follow_boots(ctx, observed, ctx.inline_wait())
        ctx.after_waiting()
        problems = _node_problems(node, observed)
    elif problems and not ctx.backlogged and (inline := ctx.inline_wait()) > 0:
        # Watch the Node turn Ready on its new boot rather than polling it.
        observed = ctx.kube.wait_for_node(
            node.name, lambda seen: not _node_problems(node, seen), timeout=inline
        )
        ctx.after_waiting()
        problems = _node_problems(node, observed)
    if not problems:
        instance = ctx.compute.get_instance(ctx.ref)
        if instance.provisioning_state.lower() != "succeeded":
            problems.append(f"instance provisioning state is {instance.provisioning_state}")
        if not instance.latest_model_applied:
            problems.append("instance is not on the latest model")
        if node.expected_image and instance.image != node.expected_image:
            problems.append(f"instance runs {instance.image}, expected {node.expected_image}")
    if (
        not problems
        and ctx.run.kubelet_version
        and not same_release(observed.kubelet_version, ctx.run.kubelet_version)
    ):
        # Ready on its new boot, so this is the kubelet the image brought: waiting cannot
        # change it, and a node on a release the skew guard never approved stays out.
        return StepResult(
            NodeState.FAILED,
            f"kubelet reports {observed.kubelet_version or '(nothing)'} after the reimage, but the "
            f"image's tag says {ctx.run.kubelet_version}; left cordoned",
            event="PatchFailed",
            warning=True,
        )
    if not problems:
        _observe(ctx, "boot", ctx.now - node.booting_since)
        if node.cordoned_by_us and observed.cordoned_by in (ctx.run.id, ""):
            _hold_lease(ctx, "the uncordon")
            ctx.kube.uncordon(node.name, state=str(NodeState.SUCCEEDED), patched_at=iso(ctx.now))
        image = image_version(node.expected_image) or "the new image"
        return StepResult(
            NodeState.SUCCEEDED,
            f"Ready on {image} (boot {observed.boot_id[:8]}); uncordoned",
            event="PatchSucceeded",
            annotate=False,
        )
    timeout = ctx.pool.effective_boot_timeout.total_seconds()
    if ctx.now - node.booting_since > timeout:
        return StepResult(
            NodeState.FAILED,
            f"not verified within {timeout:.0f}s: {'; '.join(problems)}; left cordoned",
            event="PatchFailed",
            warning=True,
        )
    # Its watch is the batch's only one: the batch's Nodes come up together, and a poll
    # interval between watches could miss that by as much, for all of them. So while the
    # boot may end any moment (none timed on this scale set yet, or not twice the typical
    # one gone by), it watches again at once; after that, it polls.
    # Only while its own Node or a peer's may still come up: a Node verified whose instance
    # disagrees gains nothing from a watch, and looking again at once would spin on ARM.
    boot_due = typical is None or ctx.now - node.booting_since < 2 * typical
    node_coming = bool(_node_problems(node, observed)) or _peers_booting(ctx)
    if node.leads_batch and not ctx.backlogged and boot_due and node_coming:
        return wait("; ".join(problems) + " (watching again)", 0.0)
    return wait("; ".join(problems), poll)


def _peers_booting(ctx: StepContext) -> bool:
    """Whether other nodes of this leader's batch have yet to be called (the watch is theirs too)."""
    node = ctx.node
    if not node.reimage_batch:
        return False
    return any(
        p.reimage_batch == node.reimage_batch and p.name != node.name
        for p in ctx.deps.store.list_nodes(ctx.run.id, states=(NodeState.REIMAGING, NodeState.BOOTING))
    )


def _follows_leader(node: NodeWork) -> bool:
    return bool(node.reimage_batch) and not node.leads_batch


def _follow_boots(ctx: StepContext, own: Node, timeout: float) -> Node:
    """The leader watches its batch's Nodes come up (one watch of the run's cordoned
    Nodes) and sends each peer its next step the moment its Node is Ready on the new
    boot, so the batch is verified within moments of booting without a worker held per
    node. Returns the leader's own Node as last seen."""
    node, run = ctx.node, ctx.run
    waiting = {
        p.name: p
        for p in ctx.deps.store.list_nodes(run.id, states=(NodeState.REIMAGING, NodeState.BOOTING))
        if p.reimage_batch == node.reimage_batch and p.name != node.name
    }
    if not waiting:
        if not _node_problems(node, own) or timeout <= 0:
            return own
        return ctx.kube.wait_for_node(node.name, lambda seen: not _node_problems(node, seen), timeout=timeout)
    waiting[node.name] = node
    for seen in ctx.kube.wait_for_nodes(
        waiting,
        lambda seen: not _node_problems(waiting[seen.name], seen),
        label_selector=f"{LABEL_PATCHING}={run.id}",
        timeout=timeout,
    ):
        if seen.name == node.name:
            own = seen
        else:
            peer = waiting[seen.name]
            item = WorkItem("step", run.id, peer.name, peer.seq)
            if ctx.wake is not None:
                ctx.wake(item, seen)
            else:
                ctx.deps.queue.send(item)
    return own


def _observe(ctx: StepContext, kind: str, seconds: float) -> None:
    """Note how long a reimage or boot took on this scale set; best effort (a lost sample
    only makes the next first look less well timed). Only a batch's leader speaks for it:
    it saw the operation end as it happened, the others only when called or looking."""
    if _follows_leader(ctx.node):
        return
    store = ctx.deps.store
    for _ in range(2):
        pacer = store.get_pacer(ctx.run.id, ctx.node.scale_set_id)
        if not pacer.observe(kind, seconds, batch=ctx.node.reimage_batch or ctx.node.name):
            return
        try:
            store.commit(pacer)
            return
        except ConcurrencyError:
            continue


def _node_problems(node: NodeWork, observed: Node) -> list[str]:
    problems = []
    if not observed.ready:
        problems.append("node is not Ready")
    if not observed.boot_id or observed.boot_id == node.boot_id_before:
        problems.append("node has not rebooted (boot id unchanged)")
    expected = image_version(node.expected_image)
    if expected and observed.image_version and observed.image_version.lower() != expected.lower():
        problems.append(f"node reports image {observed.image_version}, expected {expected}")
    return problems


def _drain_options(pool: PoolConfig) -> DrainOptionsView:
    return DrainOptionsView(delete_emptydir_data=pool.drain.delete_emptydir_data, force=pool.drain.force)


STEPS: dict[NodeState, Callable[[StepContext], StepResult]] = {
    NodeState.ADMITTED: step_admitted,
    NodeState.DRAINING: step_draining,
    NodeState.REIMAGING: step_reimaging,
    NodeState.BOOTING: step_booting,
}


# ---- the engine ----------------------------------------------------------------------------


class Workflow:
    def __init__(self, deps: Collaborators, *, admits: bool = True) -> None:
        self.deps = deps
        self.worker_id = uuid.uuid4().hex[:12]
        self._carried_on = False
        # False for peers' steps run inside their batch leader's invocation: it admits once
        # for all of them instead of each of them racing for the run record.
        self.admits = admits
        self.left_to_admit = 0  # nodes that ended here without an admission (admits False)

    # Entry point for the queue trigger.
    def handle(self, item: WorkItem, *, final_attempt: bool = False) -> str:
        self._carried_on = False  # one hand-off per invocation
        if item.kind == "admit":
            return self.admit(item.run)
        if item.kind == "image":
            from shared.intake import Intake

            return Intake(self.deps).image_version(item.ref, attempt=item.seq).describe()
        return self.step(item, final_attempt=final_attempt)

    def step(
        self, item: WorkItem, *, final_attempt: bool = False, called: bool = False, seen: Node | None = None
    ) -> str:
        """``called``: a batch leader's call, which means "now" at whatever seq the node's
        record has reached while waiting for it (its lease still keeps workers apart), with
        the Node as the leader's watch ``seen`` it."""
        store, now = self.deps.store, self.deps.clock.now()
        # The node first: most deliveries are copies already acted on (a leader's call, a
        # start in place), and the node's record alone says so.
        try:
            node = store.get_node(item.run, item.node)
        except NotFoundError as exc:
            return _unknown(item, exc)
        waiting_for_call = called and node.state in (NodeState.REIMAGING, NodeState.BOOTING)
        if node.seq != item.seq and not waiting_for_call:
            return "stale"
        if node.state.terminal or node.state == NodeState.PENDING:
            return "nothing to do"
        if node.lease_owner and node.lease_until > now:
            return "busy"
        try:
            run = store.get_run(item.run)
        except NotFoundError as exc:
            return _unknown(item, exc)
        node.lease_owner, node.lease_until = (
            self.worker_id,
            now + self.deps.config.workflow.lease_duration.total_seconds(),
        )
        try:
            store.commit(node)
        except ConcurrencyError:
            return "lost race"
        try:
            return self._run_steps(run, node, late=now - item.due if item.due else 0.0, seen=seen)
        except LeaseLostError as exc:
            # Another worker holds the node now and carries on from its record.
            logger.warning("run %s node %s: %s", run.id, node.name, exc)
            return "lease lost"
        except Exception as exc:
            self._release_after_crash(node, exc, final_attempt=final_attempt)
            raise

    def _run_steps(self, run: Run, node: NodeWork, *, late: float = 0.0, seen: Node | None = None) -> str:
        cluster = self.deps.config.cluster(run.cluster)
        pool = cluster.pool(node.pool)
        kube = self.deps.kube(run.cluster)
        outcome, ended = "", 0
        woken = _Beside(self.deps, called=True)
        for _ in range(MAX_CHAINED_STEPS):
            looks_at_node = node.state == NodeState.BOOTING
            ctx = StepContext(
                run=run,
                node=node,
                cluster=cluster,
                pool=pool,
                kube=kube,
                deps=self.deps,
                now=self.deps.clock.now(),
                wake=woken.start,
                late=late,
                seen=seen,
            )
            try:
                result = self._guarded(ctx)
            finally:
                ended += woken.finish()
            if looks_at_node:
                seen = None  # the watch's view serves one look, not a later one
            outcome = self._apply(ctx, result)
            if node.state.terminal or result.state is None or result.delay > 0:
                break
            node.seq += 1
            self.deps.store.commit(node)  # persisted step; the lease is still ours
        node.seq += 1
        node.lease_owner, node.lease_until = "", 0.0
        node.next_due = self.deps.clock.now() + result.delay
        self.deps.store.commit(node)
        if node.state == NodeState.FAILED:
            tell_left_cordoned(self.deps, run.cluster, node)
        if ended:
            outcome += f"; {ended} woken nodes ended"
        if node.state.terminal and not self.admits:
            self.left_to_admit += 1
            outcome += "; admission left to the batch leader"
        elif node.state.terminal:
            outcome += f"; then {self._admit_and_carry_on(run.id, ended_at=self.deps.clock.now())}"
        elif ended:
            outcome += f"; then {Admission(self.deps).admit(run.id, ended_at=self.deps.clock.now())}"
        if not node.state.terminal:
            self.deps.queue.send(WorkItem("step", run.id, node.name, node.seq), delay=result.delay)
        return outcome

    def _admit_and_carry_on(self, run_id: str, *, ended_at: float) -> str:
        """Admit into the slot this node freed, then start the first few admitted nodes
        right here (the first on this thread, the others beside it).

        The queue's polling would add a hop to every wave, and an idle host polls least
        often just when a wave ends together. Their work items still go on the queue, but
        only visible once this invocation's lease on them would have expired: if this
        worker dies, the copies take over; if not, they are dropped as stale long after
        the burst of a batch ending together. Only once per invocation, so a chain of
        nodes that end at once cannot run away with it.
        """
        if self._carried_on:
            return Admission(self.deps).admit(run_id, ended_at=ended_at)
        held = _HeldSteps(self.deps.queue)
        try:
            admitted = Admission(replace(self.deps, queue=held)).admit(run_id, ended_at=ended_at)
        finally:
            # Visible only after the leases the steps started here take (a moment after this),
            # so that if this worker dies the copies find those leases expired, not "busy".
            here = held.release(
                delay=self.deps.config.workflow.lease_duration.total_seconds() + CARRY_ON_MARGIN,
                count=START_IN_PLACE,
            )
        if not here:
            return admitted
        self._carried_on = True
        first, *beside = here
        started = _Beside(self.deps, called=False)
        for item in beside:
            started.start(item)
        try:
            outcome = f"{admitted}; started {first.node}: {self.step(first)}"
        except Exception:
            # The delayed copy of the work item retries it; this invocation's own step is done.
            logger.exception("starting node %s right after admission failed", first.node)
            outcome = admitted
        finally:
            started.finish()
        if beside:
            outcome += f"; and {len(beside)} more beside it"
        return outcome

    def _guarded(self, ctx: StepContext) -> StepResult:
        """Run one step; turn the adapters' retry intent into a result (the one place)."""
        node, timing = ctx.node, ctx.timing
        try:
            result = STEPS[node.state](ctx)
            node.transient_errors = 0  # a run of errors ends with any step that gets through
            return result
        except (TemporaryError, ConcurrencyError) as exc:
            # Counted apart from ``attempts`` (evictions a PodDisruptionBudget refused): a long
            # budget wait must not leave the node one hiccup away from failing.
            node.transient_errors += 1
            node.last_error = str(exc)[:500]
            if node.transient_errors > timing.max_transient_retries:
                return self._give_up(ctx, f"gave up after {node.transient_errors} attempts: {exc}")
            delay = backoff(
                node.transient_errors,
                initial=timing.retry_backoff_initial.total_seconds(),
                maximum=timing.retry_backoff_max.total_seconds(),
            )
            server_delay = exc.delay if isinstance(exc, TemporaryError) and exc.delay else 0.0
            return wait(f"transient error, retrying: {exc}", max(delay, server_delay))
        except PermanentError as exc:
            return self._give_up(ctx, str(exc))

    @staticmethod
    def _give_up(ctx: StepContext, why: str) -> StepResult:
        left = "left cordoned" if ctx.node.cordoned_by_us else "not cordoned"
        return StepResult(NodeState.FAILED, f"{why}; {left}", event="PatchFailed", warning=True)

    def _apply(self, ctx: StepContext, result: StepResult) -> str:
        node, at = ctx.node, iso(ctx.now)
        if result.state is None:
            node.reason = result.reason
            node.updated_at = at
            return f"waiting: {result.reason}"
        before = node.state
        node.move_to(result.state, reason=result.reason, at=at)
        node.updated_at = at
        logger.info("run %s node %s: %s -> %s (%s)", ctx.run.id, node.name, before, node.state, result.reason)
        kube = ctx.kube
        if result.annotate and node.cordoned_by_us:
            try:
                kube.annotate_node(node.name, {ANNOTATION_STATE: str(node.state)})
            except (TemporaryError, PermanentError) as exc:
                logger.warning("could not annotate node %s: %s", node.name, exc)
        kube.record_event(
            node.name,
            reason=result.event or f"Patch{str(node.state).capitalize()}",
            message=f"run {ctx.run.id}: {result.reason}",
            warning=result.warning,
            now=ctx.now,
        )
        return f"{before} -> {node.state}"

    def _release_after_crash(self, node: NodeWork, exc: Exception, *, final_attempt: bool) -> None:
        """An unexpected error: let the queue retry, but free the lease and say why on the
        record; on the final delivery, fail the node so the run records why the message
        ends in the poison queue."""
        try:
            fresh = self.deps.store.get_node(node.run_id, node.name)
            if fresh.lease_owner != self.worker_id:
                return
            fresh.lease_owner, fresh.lease_until = "", 0.0
            fresh.last_error = f"{exc.__class__.__name__}: {exc}"[:500]
            if final_attempt and not fresh.state.terminal and fresh.state != NodeState.PENDING:
                fresh.move_to(
                    NodeState.FAILED,
                    reason="work item failed on every delivery and was moved to the poison queue: "
                    + fresh.last_error,
                    at=iso(self.deps.clock.now()),
                )
                fresh.seq += 1
            self.deps.store.commit(fresh)
            if fresh.state == NodeState.FAILED and final_attempt:
                self._tell_the_cluster(fresh)
                tell_left_cordoned(self.deps, self.deps.store.get_run(fresh.run_id).cluster, fresh)
            if fresh.state.terminal:
                self.admit(node.run_id)
        except Exception:
            logger.exception("could not release node %s after an error", node.name)

    def _tell_the_cluster(self, node: NodeWork) -> None:
        """A node failed outside a step (its work item went to the poison queue): the same
        annotation and Event as any other transition, best effort, since the cluster may
        be why it failed."""
        try:
            kube = self.deps.kube(self.deps.store.get_run(node.run_id).cluster)
            if node.cordoned_by_us:
                kube.annotate_node(node.name, {ANNOTATION_STATE: str(NodeState.FAILED)})
            kube.record_event(
                node.name,
                reason="PatchFailed",
                message=f"run {node.run_id}: {node.reason}",
                warning=True,
                now=self.deps.clock.now(),
            )
        except Exception as exc:
            logger.warning("could not record the failure of node %s in the cluster: %s", node.name, exc)

    def admit(self, run_id: str) -> str:
        return Admission(self.deps).admit(run_id)


def _unknown(item: WorkItem, exc: NotFoundError) -> str:
    logger.warning("dropping work item for %s/%s: %s", item.run, item.node, exc)
    return "unknown"


# Peers' steps a batch leader runs at once; each is a few API calls, mostly waiting on I/O.
WAKE_THREADS = 8
# Admitted nodes the worker that freed their slots starts itself. Beyond a few, the other
# workers (already polling, now that the queue is busy) spread the CPU better.
START_IN_PLACE = 4
# How much later than a lease taken now the backup copies of those starts become visible.
CARRY_ON_MARGIN = 5.0


class _Beside:
    """Other nodes' steps run during this invocation, on a few threads, rather than
    through the queue, whose polling would add up to its maximum interval to each. Either
    ``called``: a batch's peers whose Nodes just turned Ready, called by their leader,
    which then admits once for them all (one that fails here goes through the queue); or
    nodes just admitted, started by the worker that freed their slots (one that fails
    here is retried by its delayed queue copy)."""

    def __init__(self, deps: Collaborators, *, called: bool) -> None:
        self.deps, self.called = deps, called
        self.threads = WAKE_THREADS if called else START_IN_PLACE
        self.how = "woken by its batch leader" if called else "started right after admission"
        self.futures: list[Any] = []
        self.pool: Any = None

    def start(self, item: WorkItem, seen: Node | None = None) -> None:
        import concurrent.futures

        if self.pool is None:
            self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=self.threads)
        self.futures.append(self.pool.submit(self._step, item, seen))

    def _step(self, item: WorkItem, seen: Node | None) -> bool:
        workflow = Workflow(self.deps, admits=not self.called)
        # Started by a carry-on already: a node that ends at once here must not start more.
        workflow._carried_on = not self.called
        try:
            outcome = workflow.step(item, called=self.called, seen=seen)
        except Exception:
            logger.exception("step of %s %s failed", item.node, self.how)
            if self.called:
                self.deps.queue.send(item)
            return False
        logger.info("run %s node %s %s: %s", item.run, item.node, self.how, outcome)
        return workflow.left_to_admit > 0

    def finish(self) -> int:
        """Wait for the steps started; how many of their nodes ended (and were left to be
        admitted for)."""
        if self.pool is None:
            return 0
        ended = sum(1 for f in self.futures if f.result())
        self.pool.shutdown()
        self.pool, self.futures = None, []
        return ended


class _HeldSteps:
    """A queue that holds back the steps to start at once until ``release``, and passes
    everything else on."""

    def __init__(self, inner: WorkQueue) -> None:
        self.inner = inner
        self.held: list[WorkItem] = []

    def send(self, item: WorkItem, *, delay: float = 0.0) -> None:
        if item.kind == "step" and delay <= 0:
            self.held.append(item)
        else:
            self.inner.send(item, delay=delay)

    def dead_letter(self, body: str, *, reason: str) -> None:
        self.inner.dead_letter(body, reason=reason)

    def release(self, *, delay: float, count: int) -> list[WorkItem]:
        """Send what was held, the first ``count`` ``delay`` late; returns those."""
        for i, item in enumerate(self.held):
            self.inner.send(item, delay=delay if i < count else 0.0)
        return self.held[:count]

"""One function per node state: what to look at, and what to do about it.

Each reads as a checklist (kured's main loop): observe the Node or the instance, leave
early where the run or someone else says so, act, and say which state comes next.
Batching a scale set's writes and following them in place is ``batching``'s; a step
only calls in at the points where a batch changes what happens to its node.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from shared.adapters.compute import image_version
from shared.clock import iso
from shared.errors import NotFoundError
from shared.retry import backoff
from shared.rollout import batching
from shared.rollout.admission import cordoned_by_us
from shared.rollout.checks import drain_options, node_problems
from shared.rollout.context import StepContext, StepResult, hold_lease, wait
from shared.rollout.drain import blocking_budgets, plan_drain
from shared.rollout.model import NodeState, RunState
from shared.rollout.skew import same_release

logger = logging.getLogger(__name__)


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
    plan = plan_drain(pods, options=drain_options(ctx.pool), daemonset_exists=ctx.kube.daemonset_exists)
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
    plan = plan_drain(pods, options=drain_options(pool), daemonset_exists=ctx.kube.daemonset_exists)
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
            status = batching.follow_in_place(ctx, status)
        if not status.done:
            if ctx.now - node.reimage_started > ctx.pool.reimage_timeout.total_seconds():
                return _reimage_timed_out(ctx)
            # Only the leader follows the batch's operation closely; the others wait for its
            # call and look themselves now and then, in case it never comes.
            return wait(
                f"{node.reimage_op} in progress", poll if node.leads_batch else batching.PEER_POLLS * poll
            )
        if node.leads_batch:
            batching.wake_peers(ctx)
        if status.succeeded:
            node.booting_since = ctx.now
            batching.observe(ctx, "reimage", ctx.now - node.reimage_started)
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
    return batching.start_batch(ctx)


def _reimage_timed_out(ctx: StepContext) -> StepResult:
    node = ctx.node
    return StepResult(
        NodeState.FAILED,
        f"{node.reimage_op} did not finish within {ctx.pool.reimage_timeout}; left cordoned",
        event="PatchFailed",
        warning=True,
    )


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
                return wait(
                    f"waiting for {leader.name} to settle the batch's write", batching.PEER_POLLS * poll
                )
    verdict, why = batching.write_verdict(ctx)
    if verdict == "unsettled":
        return wait(why, poll)
    if verdict == "failed":
        return _reimage_failed(ctx, why)
    if verdict == "took":
        if node.leads_batch:
            batching.wake_peers(ctx, untracked=True)
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
        batching.hand_over(ctx, peers, node.reimage_batch, token=None, first_poll=0.0)
    batching.unclaim(node)
    return batching.start_batch(ctx)


def _reimage_failed(ctx: StepContext, error: str) -> StepResult:
    node = ctx.node
    op = node.reimage_op
    batching.unclaim(node)
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
    problems = node_problems(node, observed)
    # The typical boot on this scale set, read once: it times both the look and the next.
    typical = ctx.deps.store.get_pacer(ctx.run.id, node.scale_set_id).typical("boot") if problems else None
    if problems and not observed.ready:
        # Sleep through most of a typical boot on this scale set, and come back with a whole
        # in-place wait ahead of its expected end: the queue's own latency (polling,
        # whole-second visibility) is then spent inside the watch, not after the boot.
        elapsed = ctx.now - node.booting_since
        inline = ctx.timing.inline_wait.total_seconds()
        if batching.follows_leader(node):
            # The leader watches the whole batch boot and calls this node when it is Ready;
            # a watch per node would hold a worker each. Look only if that call is late.
            call_due = typical + inline if typical else batching.PEER_POLLS * poll
            if elapsed < call_due:
                return wait("; ".join(problems) + " (booting; the batch leader watches)", call_due - elapsed)
        elif (typical or 0.0) - elapsed > inline:
            return wait("; ".join(problems) + " (booting)", (typical or 0.0) - elapsed - inline)
    if node.leads_batch:
        # Calls the others as their Nodes come up, whether or not its own is up already.
        observed = batching.follow_boots(ctx, observed, ctx.inline_wait())
        ctx.after_waiting()
        problems = node_problems(node, observed)
    elif problems and not ctx.backlogged and (inline := ctx.inline_wait()) > 0:
        # Watch the Node turn Ready on its new boot rather than polling it.
        observed = ctx.kube.wait_for_node(
            node.name, lambda seen: not node_problems(node, seen), timeout=inline
        )
        ctx.after_waiting()
        problems = node_problems(node, observed)
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
        batching.observe(ctx, "boot", ctx.now - node.booting_since)
        if node.cordoned_by_us and observed.cordoned_by in (ctx.run.id, ""):
            hold_lease(ctx, "the uncordon")
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
    node_coming = bool(node_problems(node, observed)) or batching.peers_booting(ctx)
    if node.leads_batch and not ctx.backlogged and boot_due and node_coming:
        return wait("; ".join(problems) + " (watching again)", 0.0)
    return wait("; ".join(problems), poll)


STEPS: dict[NodeState, Callable[[StepContext], StepResult]] = {
    NodeState.ADMITTED: step_admitted,
    NodeState.DRAINING: step_draining,
    NodeState.REIMAGING: step_reimaging,
    NodeState.BOOTING: step_booting,
}

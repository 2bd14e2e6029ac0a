"""One scale-set write for many nodes: gathering, claiming, the hand-over between a
batch's leader and its peers, the pacing of writes and the leader's in-place following.

Compute allows about 12 writes per scale set at once and 4 a minute after that, so a
write per node would throttle any large pool. The leader takes a token from the run's
pacer record, claims the ready nodes in one transaction with it, writes once, and hands
the operation to each peer; it then follows the operation and the batch's boots for
them, calling each peer when its Node is Ready. The steps call in through the public
functions here; everything else is this module's own.
"""

from __future__ import annotations

import logging
import math
import uuid

from shared.adapters.compute import LroStatus
from shared.adapters.kube import LABEL_PATCHING, KubeClient, Node
from shared.adapters.kube_objects import Pod
from shared.adapters.workqueue import WorkItem
from shared.clock import iso
from shared.errors import ConcurrencyError, OutcomeUnknownError, PermanentError, TemporaryError
from shared.retry import retry_on_conflict
from shared.rollout.budget import WritePacer
from shared.rollout.chaining import WAKE_THREADS
from shared.rollout.checks import drain_options, node_problems
from shared.rollout.context import StepContext, StepResult, hold_lease, tell_left_cordoned, wait
from shared.rollout.drain import plan_drain
from shared.rollout.model import NodeState, NodeWork, PacerRecord, Run

logger = logging.getLogger(__name__)

# Instances per reimage request; with the pacer and the leader, the claim is one
# 100-entity transaction (Table storage's limit).
MAX_BATCH = 98
# How far ARM's clock may be behind ours when its provisioning time is compared with the
# claim (both are NTP-synchronised): an operation that ended this much before the claim
# still counts as ours, which errs towards "it took" (the boot check then tells).
CLOCK_SKEW = 2.0


def start_batch(ctx: StepContext) -> StepResult:
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
        hand_over(ctx, peers, batch, token=None, first_poll=0.0)
        unclaim(node)
        return own_check
    hold_lease(ctx, "the reimage write")
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
        unclaim(node)
        hand_over(ctx, peers, batch, token=None, first_poll=0.0)
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
    hand_over(ctx, peers, batch, token=token, first_poll=peers_poll)
    return wait(
        f"{node.reimage_op} started for {len(instance_ids)} instances ({', '.join(instance_ids)})", first_poll
    )


def unclaim(node: NodeWork) -> None:
    node.reimage_started, node.reimage_batch, node.reimage_leader, node.leads_batch = 0.0, "", "", False


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
    plan = plan_drain(pods, options=drain_options(ctx.pool), daemonset_exists=ctx.kube.daemonset_exists)
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
        unclaim(fresh)
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


def write_verdict(ctx: StepContext) -> tuple[str, str]:
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
        unclaim(node)
        return None
    # Each peer's work item goes out with the claim, not after the write: if this worker
    # dies in between, they still come back (and wait for this node's recovery).
    for p in peers:
        ctx.deps.queue.send(WorkItem("step", p.run_id, p.name, p.seq), delay=peers_poll)
    return peers, batch, first_poll, peers_poll


def hand_over(
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
                unclaim(fresh)
                fresh.seq += 1  # its queued item was for following the write
            else:
                fresh.reimage_token = token
                fresh.next_due = ctx.now + first_poll
            store.commit(fresh)
            return fresh

        handed = retry_on_conflict(hand, sleep=ctx.deps.clock.sleep)
        if handed is not None and token is None:
            ctx.deps.queue.send(WorkItem("step", handed.run_id, handed.name, handed.seq))


def follow_in_place(ctx: StepContext, status: LroStatus) -> LroStatus:
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


def wake_peers(ctx: StepContext, *, untracked: bool = False) -> None:
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


def peers_booting(ctx: StepContext) -> bool:
    """Whether other nodes of this leader's batch have yet to be called (the watch is theirs too)."""
    node = ctx.node
    if not node.reimage_batch:
        return False
    return any(
        p.reimage_batch == node.reimage_batch and p.name != node.name
        for p in ctx.deps.store.list_nodes(ctx.run.id, states=(NodeState.REIMAGING, NodeState.BOOTING))
    )


def follows_leader(node: NodeWork) -> bool:
    return bool(node.reimage_batch) and not node.leads_batch


def follow_boots(ctx: StepContext, own: Node, timeout: float) -> Node:
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
        if not node_problems(node, own) or timeout <= 0:
            return own
        return ctx.kube.wait_for_node(node.name, lambda seen: not node_problems(node, seen), timeout=timeout)
    waiting[node.name] = node
    for seen in ctx.kube.wait_for_nodes(
        waiting,
        lambda seen: not node_problems(waiting[seen.name], seen),
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


def observe(ctx: StepContext, kind: str, seconds: float) -> None:
    """Note how long a reimage or boot took on this scale set; best effort (a lost sample
    only makes the next first look less well timed). Only a batch's leader speaks for it:
    it saw the operation end as it happened, the others only when called or looking."""
    if follows_leader(ctx.node):
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

"""The step engine: one work item moves one node forward.

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

``steps.STEPS`` maps each state to the function that handles it: with ``model``'s
transition tables, that is the whole state machine. Work items of other kinds than
"step" and "admit" are routed in ``shared.work``.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace

from shared.adapters.kube import ANNOTATION_STATE, Node
from shared.adapters.workqueue import WorkItem
from shared.clock import iso
from shared.errors import ConcurrencyError, LeaseLostError, NotFoundError, PermanentError, TemporaryError
from shared.retry import backoff
from shared.rollout.admission import Admission
from shared.rollout.chaining import CARRY_ON_MARGIN, START_IN_PLACE, HeldSteps, StepsBeside
from shared.rollout.context import StepContext, StepResult, tell_left_cordoned, wait
from shared.rollout.model import NodeState, NodeWork, Run
from shared.rollout.ports import Collaborators
from shared.rollout.steps import STEPS

logger = logging.getLogger(__name__)

MAX_CHAINED_STEPS = 4  # steps that need no waiting run in one invocation, each persisted


class Workflow:
    def __init__(self, deps: Collaborators, *, admits: bool = True) -> None:
        self.deps = deps
        self.worker_id = uuid.uuid4().hex[:12]
        self._carried_on = False
        # False for peers' steps run inside their batch leader's invocation: it admits once
        # for all of them instead of each of them racing for the run record.
        self.admits = admits
        self.left_to_admit = 0  # nodes that ended here without an admission (admits False)

    # The rollout's own kinds of work item; ``shared.work`` routes every kind to its owner.
    def handle(self, item: WorkItem, *, final_attempt: bool = False) -> str:
        self._carried_on = False  # one hand-off per invocation
        if item.kind == "admit":
            return self.admit(item.run)
        if item.kind != "step":
            raise ValueError(f"work item kind {item.kind!r} is not the rollout's (shared.work routes it)")
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
        woken = StepsBeside(self.deps, called=True, engine=self._beside)
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
        held = HeldSteps(self.deps.queue)
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
        started = StepsBeside(self.deps, called=False, engine=self._beside)
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

    def _beside(self, called: bool) -> Workflow:
        """An engine for a step run beside this one (see ``StepsBeside``)."""
        workflow = Workflow(self.deps, admits=not called)
        # Started by a carry-on already: a node that ends at once here must not start more.
        workflow._carried_on = not called
        return workflow

    def admit(self, run_id: str) -> str:
        return Admission(self.deps).admit(run_id)


def _unknown(item: WorkItem, exc: NotFoundError) -> str:
    logger.warning("dropping work item for %s/%s: %s", item.run, item.node, exc)
    return "unknown"

"""What a step is given (``StepContext``) and what it decides (``StepResult``).

Shared by the steps, the batching and the engine, so none of them imports another for
its vocabulary. ``hold_lease`` is here because both the reimage write (batching) and
the uncordon (steps) must come from the lease's holder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from shared.adapters.compute import ComputeClient, InstanceRef, parse_provider_id
from shared.adapters.kube import KubeClient, Node
from shared.adapters.notify import Notice, NoticeKind
from shared.adapters.workqueue import WorkItem
from shared.config import ClusterConfig, PoolConfig
from shared.errors import ConcurrencyError, LeaseLostError, PermanentError
from shared.rollout.model import NodeState, NodeWork, Run
from shared.rollout.ports import Collaborators

# An idle Functions host polls the queue at most every maxPollingInterval (2 s in host.json)
# and visibility is whole seconds: a step item up to about 3 s late is on time.
BACKLOG_AFTER = 3.0


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


def hold_lease(ctx: StepContext, what: str) -> None:
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

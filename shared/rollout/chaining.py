"""Running other nodes' steps inside this invocation instead of through the queue.

The queue's polling would add up to its maximum interval to every hop; two hops are
worth saving: a batch leader calling its peers the moment their Nodes are Ready, and a
worker that freed slots starting the nodes just admitted into them. The engine hands
``StepsBeside`` a way to make an engine for each, so this module does not import it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol

from shared.adapters.kube import Node
from shared.adapters.workqueue import WorkItem, WorkQueue
from shared.rollout.ports import Collaborators

logger = logging.getLogger(__name__)

# Peers' steps a batch leader runs at once; each is a few API calls, mostly waiting on I/O.
WAKE_THREADS = 8
# Admitted nodes the worker that freed their slots starts itself. Beyond a few, the other
# workers (already polling, now that the queue is busy) spread the CPU better.
START_IN_PLACE = 4
# How much later than a lease taken now the backup copies of those starts become visible.
CARRY_ON_MARGIN = 5.0


class BesideEngine(Protocol):
    """What ``StepsBeside`` needs of the engine it runs each step with."""

    left_to_admit: int

    def step(self, item: WorkItem, *, called: bool = False, seen: Node | None = None) -> str: ...


class StepsBeside:
    """Other nodes' steps run during this invocation, on a few threads, rather than
    through the queue, whose polling would add up to its maximum interval to each. Either
    ``called``: a batch's peers whose Nodes just turned Ready, called by their leader,
    which then admits once for them all (one that fails here goes through the queue); or
    nodes just admitted, started by the worker that freed their slots (one that fails
    here is retried by its delayed queue copy)."""

    def __init__(self, deps: Collaborators, *, called: bool, engine: Callable[[bool], BesideEngine]) -> None:
        # ``engine(called)``: a fresh engine for one step run here.
        self.deps, self.called, self.engine = deps, called, engine
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
        workflow = self.engine(self.called)
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


class HeldSteps:
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

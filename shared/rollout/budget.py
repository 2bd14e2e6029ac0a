"""How many nodes of a pool may be disrupted at once, and which pending nodes may start now.

Pure arithmetic over observations; the atomic part (committing admissions conditional on
the run record's ETag) is in ``rollout.admission``.

Waves are chosen so that they do not fight the PodDisruptionBudgets: two nodes drained
together that host replicas of one budget block each other, the second's evictions
answered 429 until the first's replacements are Ready. So a pending node whose pods would
spend more of a budget than it allows now, counting what the nodes draining and the ones
admitted before it in this pass spend, is held back while something of ours is in
flight (its end frees the budget), and the slot goes to the next node in plan order that
fits. With nothing in flight, it starts anyway: its drain waits for the budget as
``kubectl drain`` does, so a budget that never allows a disruption fails the node with
its reason instead of stalling the run silently.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field

from shared.config import PERCENT_RE


def resolve_max_unavailable(spec: int | str, pool_size: int) -> int:
    """A count, or a percentage of the pool rounded down (as Kubernetes rolling updates
    do for maxUnavailable), never below one so that a small pool still progresses."""
    if isinstance(spec, int):
        return spec
    match = PERCENT_RE.match(spec)
    if not match:
        raise ValueError(f"not a count or percentage: {spec!r}")
    return max(1, math.floor(pool_size * int(match.group(1)) / 100))


# Unavailable nodes named in a pool's waiting reason, so that an operator sees what blocks it.
NAMED = 5


@dataclass(frozen=True)
class PoolObservation:
    """Nodes of the pool that are unavailable for reasons other than this run's work."""

    disrupted_elsewhere: frozenset[str]


# Nodes held back by a PodDisruptionBudget named in ``waiting`` (the run record stays small).
NAMED_HELD_BACK = 20


@dataclass(frozen=True)
class DisruptionView:
    """The PodDisruptionBudgets the nodes' pods count against, as planned, and how many
    disruptions each allows now (its status)."""

    spends: Mapping[str, Mapping[str, int]]  # node -> budget ("ns/name") -> its pods there
    allowed: Mapping[str, int]  # budget -> disruptionsAllowed now
    # Nodes of this run holding a slot whose drain has not ended: their pods still need
    # the budgets' allowance.
    draining: Collection[str] = ()

    def spent_by_draining(self) -> dict[str, int]:
        used: dict[str, int] = {}
        for node in self.draining:
            for budget, pods in self.spends.get(node, {}).items():
                used[budget] = used.get(budget, 0) + pods
        return used

    def short(self, node: str, used: Mapping[str, int]) -> str | None:
        """Why draining ``node`` now would fight a budget, or None if it fits. A budget
        fits if what this node spends fits what is left of it, or if nothing else spends
        it and it allows a disruption: a node holding more of a budget's pods than it
        ever allows at once gets the budget to itself, its drain evicting them in turn."""
        for budget, pods in sorted(self.spends.get(node, {}).items()):
            allowed = self.allowed.get(budget)
            if allowed is None:
                continue  # deleted since the plan: it protects nothing now
            taken = used.get(budget, 0)
            if taken + pods <= allowed or (taken == 0 and allowed > 0):
                continue
            return (
                f"PodDisruptionBudget {budget} allows {allowed} disruptions now, "
                f"{taken} spoken for by nodes draining or starting before it; "
                f"{pods} of its pods are on this node"
            )
        return None


@dataclass(frozen=True)
class Admission:
    admit: list[str]
    waiting: dict[str, str]  # pool -> why nothing more starts there now
    # node -> the PodDisruptionBudget that keeps it out of this wave
    held_back: dict[str, str] = field(default_factory=dict)


def choose_admissions(
    *,
    pending: Iterable[tuple[str, str]],  # (node, pool) in plan order
    held: Mapping[str, set[str]],  # pool -> nodes of this run holding a slot
    max_unavailable: Mapping[str, int],
    observed: Mapping[str, PoolObservation],
    max_concurrent_nodes: int,
    disruptions: DisruptionView | None = None,
) -> Admission:
    """The pending nodes that start now, in plan order, within the pool and cluster
    budgets; with ``disruptions``, skipping those whose wave would fight a
    PodDisruptionBudget while something of ours is in flight (see the module's text)."""
    in_flight = sum(len(v) for v in held.values())
    free_cluster = max_concurrent_nodes - in_flight
    free = {
        pool: limit
        - len(held.get(pool, set()))
        - len(observed[pool].disrupted_elsewhere - held.get(pool, set()))
        for pool, limit in max_unavailable.items()
        if pool in observed
    }
    admit: list[str] = []
    waiting: dict[str, str] = {}
    held_back: dict[str, str] = {}
    used = disruptions.spent_by_draining() if disruptions is not None else {}
    for node, pool in pending:
        if free_cluster <= 0:
            waiting.setdefault(pool, f"cluster limit of {max_concurrent_nodes} nodes at once reached")
            continue
        # A target that is unavailable already (NotReady, or left cordoned by an earlier run
        # of ours) is counted among the unavailable: patching it disrupts nothing more, as
        # kured and AKS treat it. Asking it for a slot as well would count it twice, and with
        # a budget of 1 the slot would never come.
        already_unavailable = pool in observed and node in observed[pool].disrupted_elsewhere
        if not already_unavailable and free.get(pool, 0) <= 0:
            elsewhere = sorted(observed[pool].disrupted_elsewhere) if pool in observed else []
            names = f": {', '.join(elsewhere[:NAMED])}{', …' if len(elsewhere) > NAMED else ''}"
            waiting.setdefault(
                pool,
                f"pool budget of {max_unavailable.get(pool)} unavailable reached "
                f"({len(held.get(pool, set()))} ours, {len(elsewhere)} unavailable otherwise"
                f"{names if elsewhere else ''})",
            )
            continue
        if disruptions is not None and not already_unavailable:
            # A node unavailable already has no healthy pods left to spend a budget with.
            short = disruptions.short(node, used)
            if short is not None and (in_flight or admit):
                held_back[node] = short
                continue
            for budget, pods in disruptions.spends.get(node, {}).items():
                used[budget] = used.get(budget, 0) + pods
        admit.append(node)
        if not already_unavailable:
            free[pool] -= 1
        free_cluster -= 1
    named = dict(list(held_back.items())[:NAMED_HELD_BACK])
    return Admission(admit=admit, waiting=waiting, held_back=named)


@dataclass
class WritePacer:
    """A token bucket mirroring Compute's per-scale-set write limit, so that the app
    paces itself instead of collecting 429s (burst, then a steady rate per minute)."""

    burst: float
    per_minute: float
    tokens: float
    updated: float

    @classmethod
    def load(cls, state: list[float] | None, *, burst: int, per_minute: float, now: float) -> WritePacer:
        if not state:
            return cls(float(burst), per_minute, float(burst), now)
        return cls(float(burst), per_minute, state[0], state[1])

    def available(self, now: float) -> float:
        """Tokens in the bucket at ``now``, without taking one."""
        return min(self.burst, self.tokens + max(0.0, now - self.updated) * self.per_minute / 60.0)

    def take(self, now: float) -> float:
        """Take a token: 0.0 if one was free, else the seconds until one will be."""
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.burst, self.tokens + elapsed * self.per_minute / 60.0)
        self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) * 60.0 / self.per_minute

    def state(self) -> list[float]:
        return [self.tokens, self.updated]

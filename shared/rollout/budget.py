"""How many nodes of a pool may be disrupted at once, and which pending nodes may start now.

Pure arithmetic over observations; the atomic part (committing admissions conditional on
the run record's ETag) is in ``workflow.admit``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

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


@dataclass(frozen=True)
class Admission:
    admit: list[str]
    waiting: dict[str, str]  # pool -> why nothing more starts there now


def choose_admissions(
    *,
    pending: Iterable[tuple[str, str]],  # (node, pool) in plan order
    held: Mapping[str, set[str]],  # pool -> nodes of this run holding a slot
    max_unavailable: Mapping[str, int],
    observed: Mapping[str, PoolObservation],
    max_concurrent_nodes: int,
) -> Admission:
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
        admit.append(node)
        if not already_unavailable:
            free[pool] -= 1
        free_cluster -= 1
    return Admission(admit=admit, waiting=waiting)


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

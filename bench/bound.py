"""The lower bound of a rollout's makespan under the sandbox's cloud durations.

A pool with budget ``b`` patches ``n`` nodes in at least ``ceil(n / b)`` waves, and no
node can be faster than drain + reimage + boot. Compute's per-scale-set write limit (a
token bucket: ``burst`` writes, then ``per_minute`` per cloud minute) can delay a wave's
reimage: one write carries up to ``max_batch`` instance ids, so a wave of ``w`` nodes
needs ``ceil(w / max_batch)`` writes, and it cannot start them before the bucket holds
them. Everything here is in cloud seconds; multiply by the time scale for wall time.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any


@dataclass(frozen=True)
class Durations:
    """Cloud seconds, as the sandbox is configured (``ComputeDurations``, ``ClusterTimings``,
    the kubelet's pod termination)."""

    drain: float
    reimage: float
    boot: float

    @property
    def per_node(self) -> float:
        return self.drain + self.reimage + self.boot


@dataclass(frozen=True)
class WriteLimit:
    burst: int = 12
    per_minute: float = 4.0
    max_batch: int = 100


@dataclass(frozen=True)
class Bound:
    waves: int
    wave_sizes: tuple[int, ...]
    writes: int  # the fewest reimage writes the waves need
    write_wait: float  # cloud seconds the write limit adds to the bound
    cloud_seconds: float
    budget_wait: float = 0.0  # cloud seconds the PodDisruptionBudgets force (with_budget_waits)

    def wall(self, scale: float) -> float:
        return self.cloud_seconds * scale

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["wave_sizes"] = list(self.wave_sizes)
        return data


def drain_seconds(pod_grace: float | None, pod_termination: float) -> float:
    """The kubelet stops an evicted pod after min(grace period, termination time); a node
    without evictable pods drains at once."""
    if pod_grace is None:
        return 0.0
    return min(float(pod_grace), float(pod_termination))


def lower_bound(nodes: int, budget: int, durations: Durations, limit: WriteLimit | None = None) -> Bound:
    """Waves of ``budget`` nodes back to back, each waiting for its reimage writes if the
    bucket is short (the bucket refills while earlier waves run)."""
    if nodes < 0 or budget < 1:
        raise ValueError(f"need nodes >= 0 and budget >= 1, got {nodes} and {budget}")
    limit = limit or WriteLimit()
    sizes = [min(budget, nodes - i) for i in range(0, nodes, budget)]
    rate = limit.per_minute / 60.0  # tokens per cloud second
    tokens, stamp, t, wait_total, writes = float(limit.burst), 0.0, 0.0, 0.0, 0
    for size in sizes:
        start = t + durations.drain  # the earliest the wave's reimage can be asked for
        tokens = min(float(limit.burst), tokens + (start - stamp) * rate)
        need = math.ceil(size / limit.max_batch)
        wait = 0.0 if tokens >= need else (need - tokens) / rate
        tokens = tokens + wait * rate - need
        stamp = start + wait
        wait_total += wait
        writes += need
        t = start + wait + durations.reimage + durations.boot
    return Bound(
        waves=len(sizes),
        wave_sizes=tuple(sizes),
        writes=writes,
        write_wait=wait_total,
        cloud_seconds=t,
    )


def with_budget_waits(bound: Bound, seconds: float) -> Bound:
    """``bound`` plus ``seconds`` the budgets force: a budget needing more groups of drains
    than there are waves makes some wave wait for a replacement to be Ready (drain plus the
    replacement's scheduling and start) once per extra group
    (``bench.workloads.forced_wait_groups``)."""
    extra = seconds - bound.budget_wait
    return replace(bound, budget_wait=seconds, cloud_seconds=bound.cloud_seconds + extra)

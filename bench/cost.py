"""What a rollout costs the user, per node patched: the Azure meters it moves.

Functions Consumption bills executions and their memory-seconds, Storage bills
transactions, and ARM and the Kubernetes API have per-identity limits (a request
spent here is one the user's other tools cannot spend). Every figure is counted from
the outside, over the run's span from ``POST /api/runs`` to its end:

* invocations: every function the runners executed (the runners' logs), node steps and
  HTTP alike; the timers' at production's cadence (see ``TIMER_PERIODS``);
* CPU seconds: the runner processes' user + system time (from the OS), the part of
  the memory-seconds bill that grows with the work;
* Storage transactions: every request Azurite answered (its access log), by service;
  queue receives are listed apart, because the host's polling of idle queues follows
  wall time, which the sandbox's time scale compresses (in production the idle polls
  are at most one per queue every ``maxPollingInterval``, 2 s, whatever the run does);
* ARM and Kubernetes requests (the servers' own logs), the token requests left out.

The cost rows compare N = 100 and 1,000 with N = 10 measured in the same run: a ratio
near 1 is a cost per node that does not grow with the fleet.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

# A timer fires on wall time, not on work: the sandbox runs the sweeper every 2 wall
# seconds so that a stalled node is resumed within the compressed time scale, which at
# scale 0.25 is 15 times production's cadence. A timer's invocations are therefore billed
# as production would fire it over the run's span in cloud time: infra/main.bicep's
# default `0 */2 * * * *` for the sweeper. The sandbox's own count is kept apart.
TIMER_PERIODS = {"sweeper": 120.0}

# Per node patched; stated in bench/README.md after measuring (section 3).
TARGETS = {
    "invocations_per_node": 12.0,
    "runner_cpu_seconds_per_node": 1.0,
    "storage_per_node": 120.0,
    "arm_per_node": 12.0,
    "kube_per_node": 40.0,
    # The largest N's figure over N = 10's, for each of the five.
    "growth": 1.5,
}
MEASURES = (
    ("invocations_per_node", "invocations"),
    ("runner_cpu_seconds_per_node", "CPU s"),
    ("storage_per_node", "storage"),
    ("arm_per_node", "ARM"),
    ("kube_per_node", "kube"),
)


def storage_counts(requests: Iterable[Any]) -> dict[str, Any]:
    """Azurite's requests (``sandbox.azurite.StorageRequest``) counted by service."""
    by_service: Counter[str] = Counter()
    receives = 0
    for r in requests:
        by_service[r.service] += 1
        if r.method == "GET" and r.target.split("?", 1)[0].endswith("/messages"):
            receives += 1
    return {"total": sum(by_service.values()), "by_service": dict(by_service), "queue_receives": receives}


def cost_per_node(
    *,
    nodes: int,
    invocations: Mapping[str, int],
    runner_cpu_seconds: float,
    storage: Mapping[str, Any],
    arm_requests: int,
    kube_requests: int,
) -> dict[str, Any]:
    per = max(1, nodes)
    return {
        "nodes": nodes,
        "invocations_per_node": round(sum(invocations.values()) / per, 2),
        "invocations_by_function": dict(invocations),
        "runner_cpu_seconds_per_node": round(runner_cpu_seconds / per, 3),
        "storage_per_node": round(storage.get("total", 0) / per, 1),
        "storage_by_service_per_node": {
            service: round(count / per, 1) for service, count in storage.get("by_service", {}).items()
        },
        "queue_receives_per_node": round(storage.get("queue_receives", 0) / per, 1),
        "arm_per_node": round(arm_requests / per, 2),
        "kube_per_node": round(kube_requests / per, 2),
    }


def at_production_cadence(invocations: Mapping[str, int], *, cloud_seconds: float) -> dict[str, int]:
    """The invocations with each timer's count replaced by how often production's
    schedule fires over ``cloud_seconds`` (at least once: the run is swept at its end)."""
    billed = dict(invocations)
    for timer, period in TIMER_PERIODS.items():
        if timer in billed:
            billed[timer] = max(1, math.ceil(cloud_seconds / period))
    return billed


def cost_of(result: Mapping[str, Any], *, scale: float) -> dict[str, Any] | None:
    """The cost of one measured rollout (``bench.rollout.run_rollout``'s result, run at
    the time ``scale``), or None when it did not run to the end (a sampled run's in-flight
    nodes would be counted as patched without having paid for their whole way)."""
    if result.get("outcome") != "complete" or "storage" not in result:
        return None
    economy, runners = result["economy"], result["runners"]
    measured = runners.get("invocations_by_function", {})
    cloud_seconds = float(result["makespan_seconds"]) / scale
    cost = cost_per_node(
        nodes=int(result["nodes"]["done"]),
        invocations=at_production_cadence(measured, cloud_seconds=cloud_seconds),
        runner_cpu_seconds=float(result.get("cpu_seconds", {}).get("runners", 0.0)),
        storage=result["storage"],
        arm_requests=int(economy["arm_reads"]) + int(economy["arm_writes"]),
        kube_requests=int(economy["kube_requests"]),
    )
    cost["sandbox_timer_invocations"] = {t: measured[t] for t in TIMER_PERIODS if t in measured}
    return cost


def growth(costs: Mapping[int, Mapping[str, Any]]) -> dict[str, float]:
    """Each measure at the largest N over the same at the smallest (1.0: flat)."""
    if len(costs) < 2:
        return {}
    small, large = costs[min(costs)], costs[max(costs)]
    return {
        key: round(float(large[key]) / float(small[key]), 2) if small[key] else 0.0 for key, _ in MEASURES
    }


def within_targets(cost: Mapping[str, Any]) -> bool:
    return all(float(cost[key]) <= TARGETS[key] for key, _ in MEASURES)

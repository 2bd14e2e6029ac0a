"""Planning at fleet scale: ``plan_run`` over a synthetic fleet plus one admission pass
(``choose_admissions``), in a fresh interpreter so that its peak RSS is its own.

The baseline is building the synthetic input itself (the validated configuration and the
Node views, as the Kubernetes client would hand them over).

Run directly: ``python -m bench.planning --nodes 5000 --pools 50`` prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SUBSCRIPTION = "0b1f6a3e-9f0c-4e1d-8f7a-2c3d4e5f6a7b"
RESOURCE_GROUP = "rg-fleet"
BUDGETS: tuple[int | str, ...] = ("10%", 1, "25%", 2, "20%")


def scale_set_id(pool: str) -> str:
    return (
        f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}"
        f"/providers/Microsoft.Compute/virtualMachineScaleSets/vmss-{pool}"
    )


def provider_prefix(pool: str) -> str:
    return scale_set_id(pool).replace(RESOURCE_GROUP, RESOURCE_GROUP.lower())


def build_input(nodes: int, pools: int) -> tuple[Any, list[Any]]:
    """A validated configuration with ``pools`` pools and ``nodes`` Node views spread over
    them and three zones; one node in a hundred is NotReady, one in two hundred cordoned."""
    from shared.adapters.kube import Node
    from shared.config import parse_config

    names = [f"pool{i:02d}" for i in range(pools)]
    config = parse_config(
        {
            "clusters": [
                {
                    "name": "fleet",
                    "kubeconfig": {"setting": "KUBECONFIG_FLEET"},
                    "maxConcurrentNodes": 100,
                    "maxFailedNodes": 5,
                    "pools": [
                        {
                            "name": name,
                            "scaleSetId": scale_set_id(name),
                            "os": "windows" if i % 10 == 9 else "linux",
                            "maxUnavailable": BUDGETS[i % len(BUDGETS)],
                            "nodeSelector": {"agentpool": name},
                        }
                        for i, name in enumerate(names)
                    ],
                }
            ]
        }
    )
    views = []
    for i in range(nodes):
        pool = names[i % pools]
        instance = i // pools
        name = f"k8s-{pool}-12345678-vmss{instance:06x}"
        views.append(
            Node(
                {
                    "metadata": {
                        "name": name,
                        "labels": {
                            "agentpool": pool,
                            "kubernetes.io/os": "linux",
                            "topology.kubernetes.io/zone": f"westeurope-{instance % 3 + 1}",
                            "vmss-node-patcher.io/image-version": "2026.11.01",
                        },
                        "annotations": {},
                    },
                    "spec": {
                        # cloud-provider-azure writes the resource group lower-cased.
                        "providerID": f"azure://{provider_prefix(pool)}/virtualMachines/{instance}",
                        **({"unschedulable": True} if i % 200 == 7 else {}),
                    },
                    "status": {
                        "conditions": [{"type": "Ready", "status": "False" if i % 100 == 3 else "True"}],
                        "nodeInfo": {"bootID": f"boot-{i}", "kubeletVersion": "v1.31.4"},
                    },
                }
            )
        )
    return config.cluster("fleet"), views


def plan_and_admit(cluster: Any, views: list[Any]) -> tuple[int, int]:
    """What starting a run costs the app: the plan, then the first admission pass."""
    from shared.rollout.budget import PoolObservation, choose_admissions
    from shared.rollout.planner import plan_run

    run, work = plan_run(cluster, views, reason="bench", now=1_800_000_000.0)
    elsewhere: dict[str, set[str]] = {p: set() for p in run.pools}
    pool_of = {w.name: w.pool for w in work}
    for v in views:
        if (v.unschedulable or not v.ready) and v.name in pool_of:
            elsewhere[pool_of[v.name]].add(v.name)
    decision = choose_admissions(
        pending=[(w.name, w.pool) for w in work],
        held={},
        max_unavailable={p: b.max_unavailable for p, b in run.pools.items()},
        observed={p: PoolObservation(frozenset(s)) for p, s in elsewhere.items()},
        max_concurrent_nodes=run.max_concurrent_nodes,
    )
    return len(work), len(decision.admit)


def measure_here(nodes: int, pools: int, reps: int) -> dict[str, Any]:
    import resource

    build_times, plan_times = [], []
    planned = admitted = 0
    for _ in range(reps):
        t0 = time.perf_counter()
        cluster, views = build_input(nodes, pools)
        t1 = time.perf_counter()
        planned, admitted = plan_and_admit(cluster, views)
        t2 = time.perf_counter()
        build_times.append(t1 - t0)
        plan_times.append(t2 - t1)
        del cluster, views
    # Memory in a separate pass: tracemalloc slows allocation-heavy code down.
    tracemalloc.start()
    cluster, views = build_input(nodes, pools)
    input_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.reset_peak()
    before = tracemalloc.get_traced_memory()[0]
    plan_and_admit(cluster, views)
    plan_peak = tracemalloc.get_traced_memory()[1] - before
    tracemalloc.stop()
    return {
        "nodes": nodes,
        "pools": pools,
        "reps": reps,
        "planned": planned,
        "admitted_first_pass": admitted,
        "build_seconds": round(statistics.median(build_times), 4),
        "plan_seconds": round(statistics.median(plan_times), 4),
        "plan_seconds_max": round(max(plan_times), 4),
        "input_mib": round(input_bytes / 2**20, 1),
        "plan_peak_mib": round(plan_peak / 2**20, 1),
        "max_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def measure(nodes: int = 5000, pools: int = 50, reps: int = 5) -> dict[str, Any]:
    """Run ``measure_here`` in a fresh interpreter (its peak RSS is the planning's alone)."""
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.planning",
            "--nodes",
            str(nodes),
            "--pools",
            str(pools),
            "--reps",
            str(reps),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    result["ratio"] = round(result["plan_seconds"] / max(1e-9, result["build_seconds"]), 3)
    result["memory_ratio"] = round(result["plan_peak_mib"] / max(0.1, result["input_mib"]), 3)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.planning")
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--pools", type=int, default=50)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args(argv)
    print(json.dumps(measure_here(args.nodes, args.pools, args.reps)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

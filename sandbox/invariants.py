"""Invariants checked from the outside, on the sandbox's recorded history and final state.

These are the promises the product makes to a cluster owner, checked against what the
simulated services actually served, not against what the app believes it did:

* budget: at no moment were more nodes of a pool disrupted (cordoned or NotReady) than
  its maxUnavailable, counting from the run's first disruption;
* eviction only: no non-DaemonSet pod was deleted outside the Eviction API;
* drained first: no instance was reimaged while a non-DaemonSet pod was still bound to
  it (whatever its phase, terminating or not; see ``SandboxCluster._wipe``);
* once per run: no node was reimaged twice by one run. A reimage whose operation failed
  may be retried (``reimage_failed`` forgives one); a second write that preempts the
  first, or a reimage after the node is back, is a violation. Wipes are grouped by the
  run annotation the node carried; without one, the records given are taken to be one
  run's (callers pass the records since the run started);
* finished clean: every target node ended Ready, schedulable and on the new image.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Report:
    violations: list[str] = field(default_factory=list)
    max_disrupted: dict[str, int] = field(default_factory=dict)
    evictions: int = 0
    evictions_refused: int = 0
    reimages: int = 0
    # Per run (its id, or "" for wipes of nodes without a run annotation) and node.
    reimages_by_node: dict[tuple[str, str], int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.violations


def check_history(
    records: Iterable[Mapping[str, Any]],
    *,
    node_pools: Mapping[str, str],
    budgets: Mapping[str, int],
    allow_pod_delete: bool = False,
) -> Report:
    report = Report()
    cordoned: set[str] = set()
    not_ready: set[str] = set()
    peak: dict[str, int] = defaultdict(int)
    wipes: dict[tuple[str, str], int] = defaultdict(int)
    retries_allowed: dict[str, int] = defaultdict(int)
    for rec in sorted(records, key=lambda r: r["t"]):
        kind, node = rec["kind"], rec.get("node", "")
        if kind == "node_cordoned":
            cordoned.add(node)
        elif kind == "node_uncordoned":
            cordoned.discard(node)
        elif kind == "node_not_ready":
            not_ready.add(node)
        elif kind == "node_ready":
            not_ready.discard(node)
        elif kind == "node_wiped":
            report.reimages += 1
            if rec.get("running_pods"):
                report.violations.append(
                    f"{rec['at']}: {node} was reimaged with non-DaemonSet pods still on it: "
                    f"{rec['running_pods']}"
                )
            key = (str(rec.get("run") or ""), node)
            wipes[key] += 1
            if wipes[key] > 1:
                if retries_allowed[node] > 0:
                    retries_allowed[node] -= 1
                    wipes[key] -= 1
                else:
                    run = f" by run {key[0]}" if key[0] else ""
                    report.violations.append(
                        f"{rec['at']}: {node} was reimaged twice{run} ({wipes[key]} reimages)"
                    )
        elif kind == "reimage_failed":
            # The failed operation's wipe does not count against the retry that follows.
            retries_allowed[str(rec.get("computer_name", "")).lower()] += 1
        elif kind == "eviction":
            if int(rec.get("result", 0)) == 201:
                report.evictions += 1
            else:
                report.evictions_refused += 1
        elif kind == "pod_deleted" and rec.get("via") == "delete" and not allow_pod_delete:
            pod = f"{rec.get('namespace')}/{rec.get('name')}"
            report.violations.append(f"{rec['at']}: pod {pod} was deleted outside the Eviction API")
        if kind in ("node_cordoned", "node_not_ready"):
            disrupted: dict[str, int] = defaultdict(int)
            for name in cordoned | not_ready:
                if name in node_pools:
                    disrupted[node_pools[name]] += 1
            for pool, count in disrupted.items():
                peak[pool] = max(peak[pool], count)
                if pool in budgets and count > budgets[pool]:
                    report.violations.append(
                        f"{rec['at']}: {count} nodes of pool {pool} disrupted at once "
                        f"(budget {budgets[pool]})"
                    )
    report.max_disrupted = dict(peak)
    report.reimages_by_node = dict(wipes)
    return report


def check_final_nodes(nodes: Iterable[Mapping[str, Any]], *, targets: set[str], image: str) -> list[str]:
    problems = []
    for node in nodes:
        name = node["metadata"]["name"]
        if name not in targets:
            continue
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in node.get("status", {}).get("conditions") or []
        )
        if not ready:
            problems.append(f"{name} is not Ready")
        if node.get("spec", {}).get("unschedulable"):
            problems.append(f"{name} is still cordoned")
        label = node["metadata"].get("labels", {}).get("vmss-node-patcher.io/image-version")
        if label != image:
            problems.append(f"{name} runs image {label}, expected {image}")
    return problems

"""One table for every measure: printed with rich, and written as markdown and JSON."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.cost import MEASURES, growth, within_targets
from bench.cost import TARGETS as COST_TARGETS
from bench.machine import summary
from bench.rollout import CATEGORIES

OK, FAIL, NA = "✓", "✗", "-"

# Compact names for the breakdown, in CATEGORIES order.
SHORT = {
    "queue": "queue",
    "drain wait": "drain",
    "reimage start": "start",
    "cloud jitter": "jitter",
    "verify": "verify",
}


@dataclass
class Row:
    section: str
    measure: str
    config: str
    result: str
    baseline: str
    ratio: str
    target: str
    ok: str
    invariants: str
    notes: str

    def cells(self) -> list[str]:
        return [
            self.measure,
            self.config,
            self.result,
            self.baseline,
            self.ratio,
            self.target,
            self.ok,
            self.invariants,
            self.notes,
        ]


HEADERS = [
    "measure",
    "configuration",
    "result",
    "baseline",
    "ratio",
    "target",
    "met",
    "inv.",
    "where the time went / notes",
]


def _mark(flag: bool | None) -> str:
    return NA if flag is None else OK if flag else FAIL


def _target_for(n: int, targets: dict[int, float]) -> float | None:
    return targets.get(n)


def rollout_rows(rollouts: list[dict[str, Any]], targets: dict[int, float]) -> list[Row]:
    rows = []
    for r in rollouts:
        spec = r["spec"]
        target = _target_for(spec["n"], targets)
        waves = r["bound"]["waves"] if "bound" in r else "?"
        config = (
            f"scale {spec['scale']}, {waves} waves of ≤{r.get('budget', spec['budget'])}"
            + (f" ({spec['budget']} of {spec['n']:,})" if isinstance(spec["budget"], str) else "")
            + f", {spec['runners']} runners"
        )
        if r.get("error"):
            rows.append(
                Row(
                    "makespan",
                    f"makespan {r['label']}",
                    config,
                    "error",
                    "",
                    "",
                    "",
                    FAIL,
                    "",
                    r["error"][:200],
                )
            )
            continue
        if r.get("outcome") == "sampled":
            config = (
                f"scale {spec['scale']}, first {r['bound']['waves']} of {r['full_waves']:,} waves, "
                f"{spec['runners']} runners"
            )
        inv = _mark(r.get("invariants", {}).get("ok"))
        bound = f"{r['bound_seconds']:.1f} s (bound)"
        if r.get("ratio") is not None:
            ratio = r["ratio"]
            result = f"{r['makespan_seconds']:.1f} s"
            ok = _mark(ratio <= target) if target else NA
            notes = _breakdown_text(r)
            ratio_text = f"{ratio:.2f}"
        else:
            done, total = r.get("nodes", {}).get("done", 0), spec["n"]
            result = f"{r.get('outcome', '?')}: {done:,}/{total:,} done in {r['makespan_seconds']:.0f} s"
            bound = f"{r['full_bound_seconds']:.1f} s (bound)"
            ratio_text = f"≥ {r.get('ratio_at_least', 0):.2f}"
            ok = FAIL if target else NA
            notes = _capped_text(r)
        notes_extra = "; ".join(r.get("notes") or [])
        if notes_extra and r.get("outcome") != "sampled":
            notes = f"{notes}; {notes_extra}"
        target_text = f"≤ {target:.2f}" if target else NA
        rows.append(
            Row(
                "makespan",
                f"makespan {r['label']}",
                config,
                result,
                bound,
                ratio_text,
                target_text,
                ok,
                inv,
                notes,
            )
        )
    return rows


def _breakdown_text(r: dict[str, Any]) -> str:
    b = r.get("breakdown_seconds") or {}
    total = sum(b.values())
    waves = max(1, r["bound"]["waves"])
    parts = []
    if total > 0:
        parts = [
            f"{SHORT[k]} {100 * b.get(k, 0) / total:.0f}%"
            for k in CATEGORIES
            if abs(b.get(k, 0)) >= 0.005 * total
        ]
    cpu = r.get("cpu_seconds", {}).get("machine_busy_fraction")
    text = f"+{r['overhead_seconds'] / waves:.2f} s/wave: " + " · ".join(parts)
    if cpu is not None:
        text += f"; CPU {100 * cpu:.0f}%"
    return text


def _capped_text(r: dict[str, Any]) -> str:
    runners = r.get("runners", {})
    cpu = r.get("cpu_seconds", {}).get("machine_busy_fraction", 0.0)
    parts = []
    if r.get("throughput_nodes_per_minute"):
        projected = r.get("projected_makespan_seconds", 0)
        parts.append(f"{r['throughput_nodes_per_minute']:.0f} nodes/min, projected {projected:.0f} s")
    parts.append(f"CPU {100 * cpu:.0f}% busy")
    per_node, per_second = runners.get("invocations_per_node", 0), runners.get("invocations_per_second", 0)
    parts.append(f"{per_node:.1f} steps/node at {per_second:.0f}/s")
    resumed = sum((runners.get("sweeper_resumed") or {}).values())
    if resumed:
        parts.append(f"sweeper resumed {resumed} 'stalled' nodes")
    med = r.get("phase_medians_seconds", {})
    if med.get("admitted->uncordoned"):
        parts.append(
            f"median node {med['admitted->uncordoned']:.1f} s vs ideal {r['ideal_node_seconds']:.1f} s"
        )
    return "; ".join(parts)


def economy_rows(rollouts: list[dict[str, Any]], targets: dict[str, float]) -> list[Row]:
    rows = []
    for r in rollouts:
        e = r.get("economy")
        if not e:
            continue
        reads, wide_steps, throttled = e["arm_reads_per_node"], e["cluster_wide_lists_steps"], e["arm_429"]
        ok = throttled == 0 and reads <= targets["arm_reads_per_node"] and wide_steps == 0
        result = (
            f"ARM {reads:.1f} reads + {e['arm_writes_per_node']:.2f} writes/node, {throttled} x 429; "
            f"kube {e['kube_requests_per_node']:.1f}/node; cluster-wide lists "
            f"{e['cluster_wide_lists_planning']} at plan, {wide_steps} in steps"
        )
        polls = e["arm_by_operation"].get("poll", 0) / max(1, e["nodes"])
        notes = (
            f"{e['nodes']:,} nodes touched; LRO polls {polls:.1f}/node; "
            f"{e['pool_node_lists']} pool-wide node lists "
            f"({e['pool_node_lists'] / max(1, e['nodes']):.1f}/node)"
        )
        rows.append(
            Row(
                "economy",
                f"economy {r['label']}",
                f"{e['nodes']:,} nodes",
                result,
                NA,
                NA,
                f"0 x 429, ≤ {targets['arm_reads_per_node']:.0f} ARM reads/node, 0 wide lists/step",
                _mark(ok),
                _mark(r.get("invariants", {}).get("ok")),
                notes,
            )
        )
    return rows


def _cost_text(c: dict[str, Any]) -> str:
    return " · ".join(
        f"{c[key]:.2f} {name}" if key == "runner_cpu_seconds_per_node" else f"{c[key]:.1f} {name}"
        for key, name in MEASURES
    )


def cost_rows(rollouts: list[dict[str, Any]]) -> list[Row]:
    """One row per fleet size: the complete run of that size, the 10 % budget preferred
    (the budget-1 and capped ones are sampled and have no cost of their own)."""
    chosen: dict[int, dict[str, Any]] = {}
    for r in rollouts:
        if not r.get("cost"):
            continue
        n = int(r["spec"]["n"])
        if n not in chosen or str(r["spec"]["budget"]) == "10%":
            chosen[n] = r
    if not chosen:
        return []
    smallest = min(chosen)
    base = chosen[smallest]["cost"]
    rows = []
    for n in sorted(chosen):
        r, c = chosen[n], chosen[n]["cost"]
        grown = growth({smallest: base, n: c}) if n != smallest else {}
        largest = max(grown.values(), default=None)
        ok = within_targets(c) and (largest is None or largest <= COST_TARGETS["growth"])
        services = ", ".join(f"{k} {v:.1f}" for k, v in sorted(c["storage_by_service_per_node"].items()))
        busiest = sorted(c["invocations_by_function"].items(), key=lambda kv: -kv[1])[:3]
        rows.append(
            Row(
                "cost",
                f"cost per node N={n:,}",
                f"{c['nodes']:,} nodes patched, budget {r['spec']['budget']}, scale {r['spec']['scale']}",
                _cost_text(c),
                f"N={smallest:,}: {_cost_text(base)}" if n != smallest else NA,
                f"largest {largest:.2f}" if largest is not None else NA,
                "≤ "
                + " · ".join(f"{COST_TARGETS[key]:g} {name}" for key, name in MEASURES)
                + f"; growth ≤ {COST_TARGETS['growth']:g}",
                _mark(ok),
                _mark(r.get("invariants", {}).get("ok")),
                f"storage {services} (queue receives {c['queue_receives_per_node']:.1f}); "
                + ", ".join(f"{fn} {count}" for fn, count in busiest)
                + "".join(
                    f"; {fn} at production's cadence (the sandbox fired it {count} times)"
                    for fn, count in (c.get("sandbox_timer_invocations") or {}).items()
                ),
            )
        )
    return rows


def realistic_rows(realistic: list[dict[str, Any]], targets: dict[str, float]) -> list[Row]:
    """The realistic profile, side by side: budget-aware waves, plan order and the seed's
    procedure, each against its own bound, and how much faster budget-aware waves are."""
    rows: list[Row] = []
    by_kind = {_realistic_kind(r): r for r in realistic}
    aware, plan = by_kind.get("budgets"), by_kind.get("plan")
    for kind, r in by_kind.items():
        spec = r.get("spec") or {}
        if r.get("error") or "makespan_seconds" not in r:
            rows.append(
                Row(
                    "realistic",
                    r.get("label", kind),
                    "",
                    "error",
                    "",
                    "",
                    "",
                    FAIL,
                    NA,
                    str(r.get("error"))[:200],
                )
            )
            continue
        w = r.get("workload") or {}
        config = (
            f"scale {spec.get('scale')}, {w.get('deployments', 0)} Deployments"
            f" + {w.get('statefulsets', 0)} StatefulSets, "
            f"{w.get('budgets', 0)} PDBs over {w.get('protected_pods', 0)} of {w.get('pods', 0)} pods"
        )
        ratio = r.get("ratio")
        target = targets["ratio"] if kind == "budgets" else None
        ok = _mark(ratio is not None and ratio <= target) if target else NA
        if kind == "seed":
            notes = f"{r['sampled_nodes']} nodes sampled, {r['node_seconds_mean']:.1f} s each"
            if aware and aware.get("makespan_seconds"):
                notes += (
                    f"; {r['makespan_seconds'] / aware['makespan_seconds']:.1f}x the budget-aware makespan"
                )
            inv = NA
        else:
            notes = _breakdown_text(r) if r.get("breakdown_seconds") else "; ".join(r.get("notes") or [])
            inv = _mark(r.get("invariants", {}).get("ok"))
        rows.append(
            Row(
                "realistic",
                f"makespan {r['label']}",
                config,
                f"{r['makespan_seconds']:.1f} s" + (" (extrapolated)" if kind == "seed" else ""),
                f"{r['bound_seconds']:.1f} s (bound)",
                f"{ratio:.2f}" if ratio is not None else NA,
                f"≤ {target:.2f}" if target else NA,
                ok,
                inv,
                notes,
            )
        )
    if aware and plan and aware.get("makespan_seconds") and plan.get("makespan_seconds"):
        speedup = plan["makespan_seconds"] / aware["makespan_seconds"]
        rows.append(
            Row(
                "realistic",
                "budget-aware waves vs plan order",
                f"N={aware['spec']['n']:,}, identical sandboxes and workload",
                f"{aware['makespan_seconds']:.1f} s",
                f"{plan['makespan_seconds']:.1f} s (plan order)",
                f"{speedup:.2f}x faster",
                f"≥ {targets['speedup_vs_plan']:.2f}x",
                _mark(speedup >= targets["speedup_vs_plan"]),
                NA,
                f"drain waits along the chain: {_drain_wait(aware):.1f} s vs {_drain_wait(plan):.1f} s",
            )
        )
    return rows


def _realistic_kind(r: dict[str, Any]) -> str:
    return "seed" if r.get("kind") == "seed" else str((r.get("spec") or {}).get("wave_order", "budgets"))


def _drain_wait(r: dict[str, Any]) -> float:
    return float((r.get("breakdown_seconds") or {}).get("drain wait", 0.0))


def planning_row(p: dict[str, Any], targets: dict[str, float]) -> Row:
    if p.get("error"):
        return Row("planning", "planning", "", "error", "", "", "", FAIL, NA, p["error"][:200])
    ok = p["plan_seconds"] < targets["plan_seconds"] and p["max_rss_mib"] < targets["plan_mib"]
    return Row(
        "planning",
        "plan_run + 1 admission pass",
        f"{p['nodes']:,} nodes, {p['pools']} pools (median of {p['reps']})",
        f"{p['plan_seconds']:.3f} s, +{p['plan_peak_mib']:.0f} MiB traced, "
        f"{p['max_rss_mib']:.0f} MiB peak RSS",
        f"{p['build_seconds']:.3f} s building the input ({p['input_mib']:.0f} MiB)",
        f"{p['ratio']:.2f}",
        f"< {targets['plan_seconds']:.0f} s, < {targets['plan_mib']:.0f} MB",
        _mark(ok),
        NA,
        f"{p['admitted_first_pass']} admitted in the first pass; memory ratio {p['memory_ratio']:.2f}",
    )


def coldstart_row(c: dict[str, Any], target: float) -> Row:
    if c.get("error"):
        return Row("cold start", "cold start", "", "error", "", "", "", FAIL, NA, c["error"][:200])
    return Row(
        "cold start",
        "cold start: import function_app",
        f"fresh interpreter, median of {c['reps']}",
        f"{1000 * c['app_median']:.0f} ms",
        f"{1000 * c['baseline_median']:.0f} ms import azure.functions",
        f"{c['ratio']:.2f}",
        f"≤ {target:.1f}",
        _mark(c["ratio"] <= target),
        NA,
        "",
    )


def webhook_row(w: dict[str, Any]) -> Row:
    if w.get("pending"):
        return Row("webhook", "webhook: 1 MiB signed push", "", w["reason"], NA, NA, NA, NA, NA, "")
    if w.get("error"):
        return Row(
            "webhook", "webhook: 1 MiB signed push", "", "error", "", "", "", FAIL, NA, w["error"][:200]
        )
    return Row(
        "webhook",
        "webhook: 1 MiB signed push",
        f"{w['bytes']:,} bytes, {w['iterations']} deliveries, in process",
        f"p50 {w['handler_p50_ms']:.2f} ms, p99 {w['handler_p99_ms']:.2f} ms",
        f"HMAC p50 {w['hmac_p50_ms']:.2f} ms, p99 {w['hmac_p99_ms']:.2f} ms",
        f"{w['ratio_p50']:.1f} / {w['ratio_p99']:.1f}",
        NA,
        _mark(w.get("ok")),
        NA,
        "answers " + ", ".join(f"{k} x{v}" for k, v in w["statuses"].items()),
    )


def build_rows(results: dict[str, Any]) -> list[Row]:
    targets = results["targets"]
    rows: list[Row] = []
    rollouts = results.get("rollouts") or []
    rows += rollout_rows(rollouts, {int(k): v for k, v in targets["makespan_ratio"].items()})
    realistic = results.get("realistic") or []
    if realistic:
        rows += realistic_rows(realistic, targets["realistic"])
    rows += economy_rows(rollouts + [r for r in realistic if r.get("economy")], targets)
    rows += cost_rows(rollouts)
    if "planning" in results:
        rows.append(planning_row(results["planning"], targets))
    if "coldstart" in results:
        rows.append(coldstart_row(results["coldstart"], targets["coldstart_ratio"]))
    if "webhook" in results:
        rows.append(webhook_row(results["webhook"]))
    return rows


def print_table(results: dict[str, Any], console: Any = None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=220)
    table = Table(
        title=f"vmss-node-patcher benchmarks ({results['profile']} profile)",
        caption=summary(results["machine"]),
        show_lines=False,
    )
    for header in HEADERS:
        table.add_column(header, overflow="fold")
    section = None
    for row in build_rows(results):
        if section is not None and row.section != section:
            table.add_section()
        section = row.section
        table.add_row(*row.cells())
    console.print(table)


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(results: dict[str, Any]) -> str:
    lines = [
        f"Measured {summary(results['machine'])}; profile `{results['profile']}`, "
        f"{results.get('wall_seconds', 0):.0f} s in all. Produced by `make bench`; see `bench/README.md`.",
        "",
        "| " + " | ".join(HEADERS) + " |",
        "|" + "---|" * len(HEADERS),
    ]
    lines += ["| " + " | ".join(_md(c) for c in row.cells()) + " |" for row in build_rows(results)]
    rollouts = [
        r
        for r in (results.get("rollouts") or []) + (results.get("realistic") or [])
        if "makespan_seconds" in r and r.get("kind") != "seed"
    ]
    if rollouts:
        lines += [
            "",
            "Where the time went, wall seconds above the ideal along each run's critical chain "
            "(queue: message and admission latency; drain: re-checks after the pods were gone; start: "
            "batching, write pacing and the reimage request; verify: boot to uncordon, LRO and Node "
            "polling), with per-run counters from the runners' logs:",
            "",
            "| run | makespan s | bound s | chain nodes | "
            + " | ".join(CATEGORIES)
            + " | steps/node | step ms p50/p90 | CPU busy | outcomes |",
            "|" + "---|" * (8 + len(CATEGORIES)),
        ]
        for r in rollouts:
            b = r.get("breakdown_seconds") or {}
            run = r.get("runners", {})
            top = ", ".join(f"{k} {v}" for k, v in list((run.get("outcomes") or {}).items())[:6])
            cpu = r.get("cpu_seconds", {}).get("machine_busy_fraction", 0.0)
            lines.append(
                f"| {r['label']} ({r.get('outcome')}) | {r['makespan_seconds']:.1f} | "
                f"{r['bound_seconds']:.1f} | "
                f"{r.get('critical_chain_nodes', NA)} | "
                + " | ".join(f"{b[k]:.2f}" if k in b else NA for k in CATEGORIES)
                + f" | {run.get('invocations_per_node', 0):.1f} | {run.get('node_work_ms_median', 0):.0f}/"
                f"{run.get('node_work_ms_p90', 0):.0f} | {100 * cpu:.0f}% | {_md(top)} |"
            )
        spans = (
            "admitted->cordoned",
            "cordoned->drained",
            "drained->reimage started",
            "reimage",
            "boot",
            "booted->uncordoned",
            "admitted->uncordoned",
        )
        lines += [
            "",
            "Median wall seconds of each phase over the run's nodes (ideal: drain, reimage and boot "
            "at the time scale; everything else ideally 0), the sweeper's resumptions of nodes it "
            "thought stalled, and CPU seconds used during the run:",
            "",
            "| run | ideal node s | "
            + " | ".join(spans)
            + " | sweeper resumed | CPU s runners / Azurite / sandbox |",
            "|" + "---|" * (4 + len(spans)),
        ]
        for r in rollouts:
            med = r.get("phase_medians_seconds") or {}
            cpu = r.get("cpu_seconds") or {}
            resumed = sum(((r.get("runners") or {}).get("sweeper_resumed") or {}).values())
            lines.append(
                f"| {r['label']} | {r['ideal_node_seconds']:.2f} | "
                + " | ".join(f"{med[k]:.2f}" if k in med else NA for k in spans)
                + f" | {resumed} | {cpu.get('runners', 0):.0f} / {cpu.get('azurite', 0):.0f} / "
                f"{cpu.get('sandbox', 0):.0f} |"
            )
    return "\n".join(lines) + "\n"

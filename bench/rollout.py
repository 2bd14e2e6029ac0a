"""Rollout makespan against its lower bound, and the control plane's economy, on the sandbox.

Each rollout gets a fresh sandbox (one Linux pool of N nodes, K runner processes,
Azurite, the simulated ARM and Kubernetes API), so that its request logs, history and
runner logs belong to it alone. The cluster carries a light workload: one pod per node
owned by a ReplicaSet (evicted, terminated by the kubelet after min(grace, the sandbox's
pod termination time), not recreated) and a DaemonSet pod per node (left alone by the
drain, back when the node boots). A new node image is published to the scale-set model
through ARM, and the run is started through the app's real ``POST /api/runs``.

What is measured comes from the outside: the sandbox's history (cordon, eviction, wipe =
reimage started, reimage completed, boot, uncordon), the ARM and Kubernetes request
logs, the run record (``GET /api/runs/{id}``: every node's transitions) and the
runners' logs (every invocation with its outcome and duration).
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import shutil
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.bound import Bound, Durations, WriteLimit, drain_seconds, lower_bound, with_budget_waits
from bench.cost import cost_of, storage_counts
from bench.machine import cpu_by_component, machine_cpu
from bench.workloads import (
    POD_GRACE,
    add_light_workload,
    add_realistic_workload,
    forced_wait_groups,
    plan_realistic,
)

POOL = "bench"
IMAGE = "2026.12.01"
ACTIVE = ("admitted", "draining", "reimaging", "booting")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class RolloutSpec:
    """One rollout: ``n`` nodes in one pool, budget ``budget`` (count or percentage).

    ``waves_limit``: start the whole run but measure only its first waves, then cancel it
    (for budget 1, where N sequential waves do not fit the time budget).
    ``cap_seconds``: cancel the run if it is not done by then and report it as capped.
    """

    n: int
    budget: int | str
    scale: float
    waves_limit: int | None = None
    cap_seconds: float = 600.0
    runners: int = 4
    pods_per_node: int = 1
    workload: str = "light"  # light | realistic (bench/workloads.py)
    wave_order: str = "budgets"  # the cluster's waveOrder: budgets | plan

    @property
    def label(self) -> str:
        if self.workload == "light":
            return f"N={self.n:,} budget {self.budget}"
        order = "budget-aware waves" if self.wave_order == "budgets" else "plan order"
        return f"N={self.n:,} budget {self.budget} {self.workload}, {order}"

    def resolved_budget(self) -> int:
        from shared.rollout.budget import resolve_max_unavailable

        return resolve_max_unavailable(self.budget, self.n)


@dataclass
class Phases:
    """One node's moments (epoch seconds), from the sandbox's history and the run record."""

    admitted: float | None = None
    cordoned: float | None = None
    evicted: float | None = None
    reimaging: float | None = None  # the app decided the node is drained
    wiped: float | None = None  # the reimage started (the sandbox wiped the node)
    reimaged: float | None = None  # ARM finished the reimage
    booted: float | None = None
    uncordoned: float | None = None
    succeeded: float | None = None
    state: str = ""


# ---- analysis (pure functions over what was recorded) ----------------------------------------


def _parse_iso(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def node_phases(
    records: Iterable[Mapping[str, Any]], run_nodes: Iterable[Mapping[str, Any]], *, since: float
) -> dict[str, Phases]:
    """Each node's first occurrence of every moment after ``since``."""
    phases: dict[str, Phases] = {}
    kinds = {
        "node_cordoned": "cordoned",
        "eviction": "evicted",
        "node_wiped": "wiped",
        "reimage_completed": "reimaged",
        "node_booted": "booted",
        "node_uncordoned": "uncordoned",
    }
    for rec in records:
        if rec["t"] < since or rec["kind"] not in kinds:
            continue
        name = str(rec.get("node") or rec.get("computer_name") or "").lower()
        if not name:
            continue
        if rec["kind"] == "eviction" and int(rec.get("result", 0)) != 201:
            continue
        p = phases.setdefault(name, Phases())
        attr = kinds[rec["kind"]]
        if attr == "uncordoned" and p.cordoned is None:
            continue  # only an uncordon after our cordon counts
        if getattr(p, attr) is None:
            setattr(p, attr, float(rec["t"]))
    for node in run_nodes:
        p = phases.setdefault(str(node["name"]).lower(), Phases())
        p.state = str(node.get("state", ""))
        for h in node.get("history") or []:
            moment = str(h.get("to"))
            if moment in ("admitted", "reimaging", "succeeded") and getattr(p, moment) is None:
                setattr(p, moment, _parse_iso(h["at"]))
    return phases


def critical_chain(phases: Mapping[str, Phases], *, last: str | None = None) -> list[str]:
    """The chain of nodes that determined the end: the node that finished last, the node
    whose finishing let it start (the latest uncordon before its admission), and so on
    back to the run's start."""
    done = {n: p for n, p in phases.items() if p.uncordoned is not None and p.admitted is not None}
    if not done:
        return []
    current = last or max(done, key=lambda n: done[n].uncordoned or 0.0)
    chain = [current]
    seen = {current}
    while True:
        admitted = done[current].admitted or 0.0
        before = [n for n, p in done.items() if n not in seen and (p.uncordoned or 0.0) <= admitted]
        if not before:
            break
        current = max(before, key=lambda n: done[n].uncordoned or 0.0)
        chain.append(current)
        seen.add(current)
    chain.reverse()
    return chain


CATEGORIES = ("queue", "drain wait", "reimage start", "cloud jitter", "verify")


def chain_breakdown(
    chain: Sequence[str],
    phases: Mapping[str, Phases],
    *,
    start: float,
    end: float,
    ideal: Mapping[str, float],
) -> dict[str, float]:
    """Wall seconds above the ideal along the chain, by where they went; they sum to
    ``end - start - len(chain) * (drain + reimage + boot)``.

    queue: run start to first admission, admission to cordon (the first step's message),
    a finished node's uncordon to the next admission, last uncordon to the run's end;
    drain wait: cordon to "drained" beyond the pods' termination time (drain re-checks);
    reimage start: "drained" to the reimage starting (batching, write pacing, 429s, ARM);
    cloud jitter: the sandbox's reimage and boot beyond their configured durations;
    verify: boot to uncordon (LRO and Node polling, verification).
    """
    out = dict.fromkeys(CATEGORIES, 0.0)
    previous_end = start
    for name in chain:
        p = phases[name]
        if None in (p.admitted, p.cordoned, p.reimaging, p.wiped, p.reimaged, p.booted, p.uncordoned):
            continue
        assert p.admitted and p.cordoned and p.reimaging and p.wiped and p.reimaged and p.booted
        assert p.uncordoned
        out["queue"] += (p.admitted - previous_end) + (p.cordoned - p.admitted)
        out["drain wait"] += p.reimaging - p.cordoned - ideal["drain"]
        out["reimage start"] += p.wiped - p.reimaging
        out["cloud jitter"] += (p.reimaged - p.wiped - ideal["reimage"]) + (
            p.booted - p.reimaged - ideal["boot"]
        )
        out["verify"] += p.uncordoned - p.booted
        previous_end = p.uncordoned
    out["queue"] += end - previous_end
    return out


def phase_medians(phases: Mapping[str, Phases]) -> dict[str, float]:
    """Median wall seconds of each phase over the nodes that went through it."""
    spans = {
        "admitted->cordoned": ("admitted", "cordoned"),
        "cordoned->drained": ("cordoned", "reimaging"),
        "drained->reimage started": ("reimaging", "wiped"),
        "reimage": ("wiped", "reimaged"),
        "boot": ("reimaged", "booted"),
        "booted->uncordoned": ("booted", "uncordoned"),
        "admitted->uncordoned": ("admitted", "uncordoned"),
    }
    out: dict[str, float] = {}
    for label, (a, b) in spans.items():
        values = [
            float(getattr(p, b)) - float(getattr(p, a))
            for p in phases.values()
            if getattr(p, a) is not None and getattr(p, b) is not None
        ]
        if values:
            out[label] = round(statistics.median(values), 3)
    return out


def economy(
    arm_log: Sequence[Mapping[str, Any]],
    kube_log: Sequence[Mapping[str, Any]],
    *,
    nodes: int,
    planned_at: float,
) -> dict[str, Any]:
    """Requests per node from the servers' own logs. A cluster-wide list is a pod list
    without a ``spec.nodeName`` field selector or a node list with neither a label
    selector nor a ``metadata.name`` field selector;
    those made while ``POST /api/runs`` was being answered are the plan's, the rest are
    the steps'."""
    per = max(1, nodes)
    token = [r for r in arm_log if r.get("operation") == "msi_token"]
    arm = [r for r in arm_log if r.get("operation") != "msi_token"]
    writes = [r for r in arm if r.get("write")]
    reads = [r for r in arm if not r.get("write")]

    def cluster_wide(r: Mapping[str, Any]) -> bool:
        if r.get("method") != "GET":
            return False
        query = str(r.get("query") or "")
        if r.get("path") == "/api/v1/pods":
            return "spec.nodeName" not in query
        # A watch of one Node (fieldSelector metadata.name) is not a list of the cluster.
        return r.get("path") == "/api/v1/nodes" and not ("labelSelector" in query or "metadata.name" in query)

    wide = [r for r in kube_log if cluster_wide(r)]
    pool_lists = [
        r
        for r in kube_log
        if r.get("method") == "GET"
        and r.get("path") == "/api/v1/nodes"
        and "labelSelector" in str(r.get("query") or "")
    ]
    return {
        "nodes": nodes,
        "arm_reads": len(reads),
        "arm_writes": len(writes),
        "arm_reads_per_node": round(len(reads) / per, 2),
        "arm_writes_per_node": round(len(writes) / per, 3),
        "arm_by_operation": dict(Counter(str(r.get("operation")) for r in arm).most_common()),
        "arm_429": sum(1 for r in arm if r.get("status") == 429),
        "arm_token_requests": len(token),
        "kube_requests": len(kube_log),
        "kube_requests_per_node": round(len(kube_log) / per, 2),
        "kube_by_verb": dict(Counter(f"{r.get('method')} {_kube_kind(r)}" for r in kube_log).most_common()),
        "kube_429": sum(1 for r in kube_log if r.get("status") == 429),
        "cluster_wide_lists_planning": sum(1 for r in wide if float(r.get("t", 0)) <= planned_at),
        "cluster_wide_lists_steps": sum(1 for r in wide if float(r.get("t", 0)) > planned_at),
        "pool_node_lists": len(pool_lists),
    }


def _kube_kind(r: Mapping[str, Any]) -> str:
    path = str(r.get("path") or "")
    parts = [p for p in path.split("/") if p]
    if "eviction" in parts:
        return "eviction"
    known = ("nodes", "pods", "events", "poddisruptionbudgets", "daemonsets", "leases")
    for kind in known:
        if kind in parts:
            rest = parts[parts.index(kind) + 1 :]
            return kind if not rest else f"{kind}/name"
    return parts[-1] if parts else "/"


LOG_LINE = re.compile(
    r"^(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (?P<level>\w+) (?P<logger>\S+): (?P<msg>.*)$"
)
EXECUTED = re.compile(r"Executed 'Functions\.(?P<fn>\w+)' \((?P<status>\w+),.*Duration=(?P<ms>\d+)ms\)")
WORK_ITEM = re.compile(r"^work item \S+ \((?P<kind>\w+) (?P<target>\S*) seq (?P<seq>\d+)\): (?P<outcome>.*)$")
ERROR_LINE = re.compile(
    r"^(?:shared\.errors\.|azure\.core\.exceptions\.)?(?P<type>\w+(?:Error|Exception)): (?P<text>.*)$"
)


def classify_outcome(outcome: str) -> str:
    """What one node_work invocation did, from the outcome it logged."""
    if "admission kept conflicting" in outcome:
        return "admission: conflicts, queued"
    if outcome in ("stale", "busy", "lost race", "nothing to do", "unknown"):
        return f"dropped ({outcome})"
    if outcome.startswith("waiting: "):
        why = outcome[len("waiting: ") :]
        rules = (
            (("pods to terminate", "eviction refused"), "wait: drain"),
            (("pacing writes",), "wait: write pacing"),
            (("starting batches on this scale set",), "wait: batch contention"),
            (("joining the batch",), "wait: joined a gathering batch"),
            (("started for",), "reimage requested"),
            (("429",), "wait: throttled (429)"),
            (("transient error",), "wait: transient error"),
            (("in progress", "not tracked", "show on the instance", "another operation"), "wait: LRO poll"),
            (
                ("not Ready", "rebooted", "reports image", "provisioning state", "latest model"),
                "wait: boot poll",
            ),
        )
        for needles, label in rules:
            if any(n in why for n in needles):
                return label
        return "wait: other"
    if " -> " in outcome:
        return "transition"
    if outcome.startswith(("admitted", "no slot free", "nothing pending", "run is", "window")):
        return "admission"
    return "other"


def _log_time(ts: str) -> float:
    return datetime.strptime(ts, "%Y-%m-%d %H:%M:%S,%f").timestamp()  # local time, as logged


def runner_stats(lines: Iterable[str], *, start: float, end: float, nodes: int) -> dict[str, Any]:
    """Invocations of the runners between ``start`` and ``end``: how many, how long, what
    they did, what failed, how often the sweeper resumed a node it thought stalled."""
    durations: dict[str, list[int]] = {}
    failed: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    resumed: Counter[str] = Counter()
    for line in lines:
        m = LOG_LINE.match(line)
        if not m:
            e = ERROR_LINE.match(line.strip())
            if e:
                errors[f"{e['type']}: {_generalise(e['text'])}"[:140]] += 1
            continue
        t = _log_time(m["ts"])
        if not start <= t <= end:
            continue
        msg = m["msg"]
        if ex := EXECUTED.search(msg):
            durations.setdefault(ex["fn"], []).append(int(ex["ms"]))
            if ex["status"] != "Succeeded":
                failed[ex["fn"]] += 1
        elif m["logger"] == "functions.node_work" and (w := WORK_ITEM.match(msg)):
            outcomes[classify_outcome(w["outcome"])] += 1
        elif "stalled in" in msg and m["logger"] == "shared.rollout.sweeper":
            resumed[msg.rsplit("stalled in ", 1)[1].split(";")[0]] += 1
    steps = durations.get("node_work", [])
    span = max(1e-9, end - start)
    return {
        "node_work_invocations": len(steps),
        "invocations_per_node": round(len(steps) / max(1, nodes), 2),
        "invocations_per_second": round(len(steps) / span, 2),
        "node_work_ms_median": statistics.median(steps) if steps else 0,
        "node_work_ms_p90": sorted(steps)[int(0.9 * (len(steps) - 1))] if steps else 0,
        "node_work_busy_seconds": round(sum(steps) / 1000, 1),
        "outcomes": dict(outcomes.most_common()),
        "failed_invocations": dict(failed),
        "errors": dict(errors.most_common(8)),
        "sweeper_invocations": len(durations.get("sweeper", [])),
        "sweeper_ms_median": statistics.median(durations["sweeper"]) if durations.get("sweeper") else 0,
        "sweeper_resumed": dict(resumed),
        "http_invocations": sum(len(v) for k, v in durations.items() if k.startswith("run")),
        "invocations_by_function": {k: len(v) for k, v in sorted(durations.items())},
    }


def _generalise(text: str) -> str:
    return re.sub(r"\b[0-9a-f]{16}\b", "RUN", re.sub(r"k8s-\S+", "NODE", text))


# ---- running one rollout ----------------------------------------------------------------------


@dataclass
class _Watch:
    """What the run's monitoring saw."""

    outcome: str = "complete"  # complete | sampled | capped | failed
    end: float = 0.0
    done_at_end: int = 0
    notes: list[str] = field(default_factory=list)


# A replacement replica is Ready about a minute after its eviction: scheduled, its image
# pulled, its readiness probe passed (ClusterTimings.pod_start for each of the two steps).
REALISTIC_POD_START = 30.0


def sandbox_options(spec: RolloutSpec, state_dir: Path) -> Any:
    """The sandbox a rollout of ``spec`` runs on (the seed's procedure uses the same)."""
    from sandbox.cluster import ClusterTimings, PoolSpec
    from sandbox.stack import SandboxOptions

    realistic = spec.workload == "realistic"
    return SandboxOptions(
        state_dir=state_dir,
        pools=[PoolSpec(POOL, "linux", spec.n)],
        runners=spec.runners,
        time_scale=spec.scale,
        max_unavailable=spec.budget,
        max_concurrent_nodes=max(1, spec.n),
        max_failed_nodes=max(3, spec.n // 10),
        workloads=False,
        storage_access_log=True,
        cluster_timings=ClusterTimings(pod_start=REALISTIC_POD_START) if realistic else ClusterTimings(),
        cluster_overrides={"waveOrder": spec.wave_order},
    )


def rollout_durations(spec: RolloutSpec, options: Any) -> Durations:
    evictable = spec.workload == "realistic" or spec.pods_per_node > 0
    drain = drain_seconds(POD_GRACE if evictable else None, options.pod_termination_cloud_seconds)
    return Durations(drain, options.compute_durations.reimage, options.cluster_timings.boot)


def add_workload(
    sandbox: Any, spec: RolloutSpec, bound: Bound, durations: Durations
) -> tuple[dict[str, Any], Bound]:
    """Give the cluster ``spec``'s workload; answer what it holds and the bound with the
    waits its budgets force (bench/README.md, "lower bound")."""
    if spec.workload != "realistic":
        add_light_workload(sandbox, pods_per_node=spec.pods_per_node)
        return {"kind": "light", "pods_per_node": spec.pods_per_node}, bound
    nodes = sorted(str(n["metadata"]["name"]) for n in sandbox.kube.list("nodes"))
    workloads = plan_realistic(nodes)
    shown: dict[str, Any] = {"kind": "realistic", **add_realistic_workload(sandbox, workloads)}
    extra = forced_wait_groups(workloads, bound.waves)
    ready = 2 * sandbox.options.cluster_timings.pod_start
    shown["forced_wait_groups"] = extra
    return shown, with_budget_waits(bound, extra * (durations.drain + ready))


def run_rollout(
    spec: RolloutSpec, *, workdir: Path | None = None, keep: bool = False, progress: Progress = print
) -> dict[str, Any]:
    """Bring a sandbox up, roll a new image over its pool, measure, tear it down. With
    ``keep``, its state directory (history, request and runner logs) stays, with every
    node's moments and the critical chain in ``phases.json``, for a closer look."""
    from sandbox.arm import WriteLimit as ArmWriteLimit
    from sandbox.stack import CLUSTER, Sandbox
    from shared.rollout.batching import MAX_BATCH

    budget = spec.resolved_budget()
    state_dir = Path(tempfile.mkdtemp(prefix=f"bench-n{spec.n}-", dir=workdir))
    options = sandbox_options(spec, state_dir)
    durations = rollout_durations(spec, options)
    arm_limit = ArmWriteLimit()
    limit = WriteLimit(arm_limit.burst, arm_limit.per_minute, MAX_BATCH)
    measured_nodes = spec.n if spec.waves_limit is None else min(spec.n, spec.waves_limit * budget)
    bound = lower_bound(measured_nodes, budget, durations, limit)
    full_bound = lower_bound(spec.n, budget, durations, limit)
    result: dict[str, Any] = {
        "label": spec.label,
        "spec": asdict(spec),
        "budget": budget,
        "durations_cloud_seconds": asdict(durations),
        "write_limit": asdict(limit),
        "measured_nodes": measured_nodes,
    }
    sandbox = Sandbox(options)
    started = time.monotonic()
    sandbox.start()
    try:
        result["startup_seconds"] = round(time.monotonic() - started, 2)
        result["workflow_config"] = _workflow_config(sandbox.config_path)
        result["workload"], bound = add_workload(sandbox, spec, bound, durations)
        full_bound = with_budget_waits(full_bound, bound.budget_wait)
        result["bound"] = bound.to_json()
        result["bound_seconds"] = round(bound.wall(spec.scale), 3)
        result["full_bound_seconds"] = round(full_bound.wall(spec.scale), 3)
        result["full_waves"] = full_bound.waves
        from sandbox.demo import publish_image

        publish_image(sandbox, IMAGE)
        result.update(
            _drive(
                sandbox,
                spec,
                cluster=CLUSTER,
                measured_nodes=measured_nodes,
                bound_wall=bound.wall(spec.scale),
                progress=progress,
            )
        )
    finally:
        result["cpu_seconds"] = _cpu_delta(result.pop("_cpu_start", None))
        with contextlib.suppress(Exception):
            sandbox.stop()
    _analyse(result, sandbox, spec, durations, state_dir, keep=keep)
    if keep:
        result["state_dir"] = str(state_dir)
        progress(f"kept {state_dir}")
    else:
        shutil.rmtree(state_dir, ignore_errors=True)
    return result


def _workflow_config(path: Path) -> dict[str, Any]:
    """The app's workflow timings as the sandbox wrote them (poll intervals, write pacing)."""
    import yaml

    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return dict(data.get("workflow") or {})


def _cpu_delta(start: dict[str, Any] | None) -> dict[str, float]:
    if not start:
        return {}
    now = cpu_by_component()
    busy, total = machine_cpu()
    out = {k: round(now[k] - start["components"].get(k, 0.0), 1) for k in now}
    span = total - start["machine"][1]
    out["machine_busy_fraction"] = round((busy - start["machine"][0]) / span, 3) if span > 0 else 0.0
    return out


def _drive(
    sandbox: Any,
    spec: RolloutSpec,
    *,
    cluster: str,
    measured_nodes: int,
    bound_wall: float,
    progress: Progress,
) -> dict[str, Any]:
    from sandbox.demo import http_json
    from shared.rollout.store.table import TableRunStore
    from shared.settings import AppSettings

    world = sandbox.world
    marks = {
        "arm": len(sandbox.arm_server.request_log),
        "kube": len(sandbox.kube_server.request_log),
        "history": len(world.history.records()),
        "storage": sandbox.azurite.log_offset(),
    }
    store = TableRunStore.from_settings(
        AppSettings(
            config_path=str(sandbox.config_path), storage_connection_string=sandbox.azurite.connection_string
        )
    )
    cpu_start = {"components": cpu_by_component(), "machine": machine_cpu()}
    t_post = time.time()
    status, answer = http_json(
        "POST",
        f"{sandbox.functions_url}/api/runs",
        {"cluster": cluster, "reason": f"bench {spec.label}"},
        timeout=120,
    )
    planned_at = time.time()
    if status != 202:
        raise RuntimeError(f"POST /api/runs answered {status}: {answer}")
    run_id = str(answer["id"])
    progress(
        f"{spec.label}: run {run_id}, {measured_nodes} nodes measured, bound {bound_wall:.1f}s "
        f"(scale {spec.scale}, cap {spec.cap_seconds:.0f}s)"
    )
    watch = _watch(
        sandbox=sandbox,
        store=store,
        run_id=run_id,
        spec=spec,
        measured_nodes=measured_nodes,
        t_post=t_post,
        history_mark=marks["history"],
        progress=progress,
    )
    storage_end = sandbox.azurite.log_offset()  # before this process's own reads below
    run: dict[str, Any] = {}
    for _ in range(3):
        with contextlib.suppress(OSError, ValueError):
            status, body = http_json("GET", f"{sandbox.functions_url}/api/runs/{run_id}", timeout=180)
            if status == 200:
                run = body
                break
    return {
        "_cpu_start": cpu_start,
        "run_id": run_id,
        "t_post": t_post,
        "planned_at": planned_at,
        "plan_seconds": round(planned_at - t_post, 3),
        "outcome": watch.outcome,
        "end": watch.end,
        "notes": watch.notes,
        "run": run,
        "marks": marks,
        "arm_log": list(sandbox.arm_server.request_log[marks["arm"] :]),
        "kube_log": list(sandbox.kube_server.request_log[marks["kube"] :]),
        "storage": storage_counts(
            sandbox.azurite.storage_requests(since=marks["storage"], until=storage_end)
        ),
    }


def _watch(
    *,
    sandbox: Any,
    store: Any,
    run_id: str,
    spec: RolloutSpec,
    measured_nodes: int,
    t_post: float,
    history_mark: int,
    progress: Progress,
) -> _Watch:
    """Follow the run from the sandbox's history (free) and the run record (one entity
    read a second), until it ends, its first waves are measured, or the cap is reached."""
    from sandbox.demo import http_json

    watch = _Watch()
    deadline = t_post + spec.cap_seconds
    next_check, next_report = 0.0, time.time() + 30
    while True:
        time.sleep(0.2)
        records = sandbox.world.history.records()[history_mark:]
        uncordons = sorted(r["t"] for r in records if r["kind"] == "node_uncordoned")
        now = time.time()
        if spec.waves_limit is not None and len(uncordons) >= measured_nodes:
            watch.outcome, watch.end = "sampled", uncordons[measured_nodes - 1]
            watch.notes.append(
                f"first {spec.waves_limit} of {math.ceil(spec.n / spec.resolved_budget())} waves measured, "
                "then the run was cancelled"
            )
            break
        if now >= next_check:
            next_check = now + 1.0
            with contextlib.suppress(Exception):
                run = store.get_run(run_id)
                if run.state.terminal:
                    watch.end = _parse_iso(run.ended_at) if run.ended_at else now
                    watch.outcome = "complete" if str(run.state) == "succeeded" else "failed"
                    if watch.outcome == "failed":
                        watch.notes.append(f"run {run.state}: {run.state_reason}"[:300])
                    break
        if now > deadline:
            watch.outcome, watch.end = "capped", now
            watch.notes.append(f"not done after the {spec.cap_seconds:.0f}s cap: cancelled")
            break
        if now >= next_report:
            next_report = now + 30
            progress(
                f"  {spec.label}: {len(uncordons)}/{measured_nodes} nodes done after {now - t_post:.0f}s"
            )
    watch.done_at_end = len([t for t in uncordons if t <= watch.end])
    if watch.outcome in ("sampled", "capped"):
        with contextlib.suppress(OSError, ValueError):
            http_json("POST", f"{sandbox.functions_url}/api/runs/{run_id}/cancel", timeout=60)
    return watch


def _analyse(
    result: dict[str, Any],
    sandbox: Any,
    spec: RolloutSpec,
    durations: Durations,
    state_dir: Path,
    *,
    keep: bool = False,
) -> None:
    from sandbox.invariants import check_final_nodes, check_history

    if "run_id" not in result:
        return
    t_post, end, scale = result["t_post"], result["end"], spec.scale
    records = [r for r in sandbox.world.history.records()[result["marks"]["history"] :] if r["t"] >= t_post]
    run = result.pop("run")
    phases = node_phases(records, run.get("nodes") or [], since=t_post)
    touched = sum(1 for p in phases.values() if p.cordoned is not None)
    done = sum(1 for p in phases.values() if p.uncordoned is not None and p.uncordoned <= end)
    ideal = {
        "drain": durations.drain * scale,
        "reimage": durations.reimage * scale,
        "boot": durations.boot * scale,
    }
    per_node = durations.per_node * scale
    makespan = end - t_post
    result["nodes"] = {
        "touched": touched,
        "done": done,
        "states": dict(Counter(str(n.get("state")) for n in run.get("nodes") or [])),
        "run_state": run.get("state"),
        "run_reason": str(run.get("stateReason", ""))[:300],
    }
    result["makespan_seconds"] = round(makespan, 3)
    bound_s = result["bound_seconds"]
    if result["outcome"] in ("complete", "sampled"):
        result["ratio"] = round(makespan / bound_s, 3) if bound_s else None
        last = None
        if result["outcome"] == "sampled":
            finished = sorted((p.uncordoned, n) for n, p in phases.items() if p.uncordoned is not None)
            last = (
                finished[result["measured_nodes"] - 1][1]
                if len(finished) >= result["measured_nodes"]
                else None
            )
        chain = critical_chain(
            {n: p for n, p in phases.items() if p.uncordoned is not None and p.uncordoned <= end}, last=last
        )
        result["critical_chain_nodes"] = len(chain)
        breakdown = chain_breakdown(chain, phases, start=t_post, end=end, ideal=ideal)
        result["overhead_seconds"] = round(makespan - bound_s, 3)
        result["overhead_per_wave_seconds"] = round(
            (makespan - bound_s) / max(1, result["bound"]["waves"]), 3
        )
        result["chain_overhead_seconds"] = round(makespan - len(chain) * per_node, 3)
        result["breakdown_seconds"] = {k: round(v, 3) for k, v in breakdown.items()}
        if keep:
            (state_dir / "phases.json").write_text(
                json.dumps(
                    {
                        "start": t_post,
                        "end": end,
                        "chain": chain,
                        "nodes": {n: asdict(p) for n, p in phases.items()},
                    },
                    indent=1,
                ),
                encoding="utf-8",
            )
    else:
        result["ratio"] = None
        result["ratio_at_least"] = round(makespan / result["full_bound_seconds"], 3)
        if done:
            result["throughput_nodes_per_minute"] = round(done / makespan * 60, 1)
            result["projected_makespan_seconds"] = round(makespan * spec.n / done, 1)
    result["phase_medians_seconds"] = phase_medians(phases)
    result["ideal_node_seconds"] = round(per_node, 3)
    result["economy"] = economy(
        result.pop("arm_log"), result.pop("kube_log"), nodes=max(1, touched), planned_at=result["planned_at"]
    )
    lines: list[str] = []
    for path in sorted(state_dir.glob("runner-*.log")):
        lines += path.read_text(encoding="utf-8", errors="replace").splitlines()
    result["runners"] = runner_stats(lines, start=t_post, end=end, nodes=max(1, touched))
    node_pools = {str(n["metadata"]["name"]): POOL for n in sandbox.kube.list("nodes")}
    report = check_history(
        [r for r in records if r["t"] <= end + 1e-6] if result["outcome"] != "complete" else records,
        node_pools=node_pools,
        budgets={POOL: result["budget"]},
    )
    succeeded = {str(n["name"]) for n in run.get("nodes") or [] if n.get("state") == "succeeded"}
    violations = list(report.violations)
    violations += check_final_nodes(sandbox.kube.list("nodes"), targets=succeeded, image=IMAGE)
    result["invariants"] = {
        "ok": not violations,
        "violations": violations[:20],
        "max_disrupted": report.max_disrupted.get(POOL, 0),
        "evictions": report.evictions,
        "reimages": report.reimages,
    }
    result["cost"] = cost_of(result, scale=scale)
    result.pop("marks", None)

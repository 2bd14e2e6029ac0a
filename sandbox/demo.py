"""``python -m sandbox demo``: a whole patch run on the sandbox, shown live.

1. brings the sandbox up (a Linux and a Windows pool with Deployments + PDBs, a
   DaemonSet and a StatefulSet);
2. publishes a new node image version to the Compute Gallery, as an image build does;
3. the image's ResourceWriteSuccess event reaches the app's ``azure_events`` function
   over the Event Grid webhook protocol, and the app starts the rollout itself;
4. follows the runs (``GET /api/runs``) with a live table (the status page, ``/api/ui``,
   shows the same while the demo runs), then checks the invariants on the sandbox's own
   record of what happened, prints a summary, and writes each run's timeline
   (``GET /api/runs/{id}/timeline``) as an SVG file in the state directory.

Exit status 0 only if the run succeeded and every invariant held.
"""

from __future__ import annotations

import json
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from sandbox.cluster import POOL_LABEL, PoolSpec
from sandbox.invariants import check_final_nodes, check_history
from sandbox.stack import DEFAULT_POOLS, Sandbox, SandboxOptions

IMAGE_V2 = "2026.11.15"


def http_json(method: str, url: str, body: Any = None, timeout: float = 30.0) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            raw = resp.read()
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        raw = err.read()
        return err.code, json.loads(raw) if raw else None


def save_timeline(functions_url: str, run_id: str, path: Path, timeout: float = 30.0) -> Path:
    """The run's SVG timeline as the app draws it, written to ``path``."""
    with urllib.request.urlopen(f"{functions_url}/api/runs/{run_id}/timeline", timeout=timeout) as resp:
        path.write_bytes(resp.read())
    return path


def publish_image(sandbox: Sandbox, version: str, *, pools: list[str] | None = None) -> None:
    """What an image pipeline does after a gallery version is replicated: point each
    scale set's model at it (real ARM PUT through azure-mgmt-compute)."""
    import os

    from azure.identity import ManagedIdentityCredential
    from azure.mgmt.compute import ComputeManagementClient

    assert sandbox.arm_server and sandbox.cluster
    os.environ["IDENTITY_ENDPOINT"] = sandbox.arm_server.identity_endpoint
    os.environ["IDENTITY_HEADER"] = sandbox.arm_server.identity_header
    os.environ["REQUESTS_CA_BUNDLE"] = str(sandbox.tls.ca_path)
    # The pipeline's own identity, not the app's: it may do what the app may not.
    client = ComputeManagementClient(
        ManagedIdentityCredential(client_id=sandbox.arm_server.admin_client_id),
        sandbox.cluster.subscription_id,
        base_url=sandbox.arm_server.url,
    )
    rg = sandbox.cluster.resource_group
    for spec in sandbox.options.pools:
        if pools is not None and spec.name not in pools:
            continue
        vmss = client.virtual_machine_scale_sets.get(rg, spec.scale_set)
        ref = vmss.virtual_machine_profile.storage_profile.image_reference
        ref.id = ref.id.rsplit("/", 1)[0] + "/" + version
        client.virtual_machine_scale_sets.begin_create_or_update(
            rg, spec.scale_set, vmss, polling_interval=0.2
        ).result()


def node_pools(sandbox: Sandbox) -> dict[str, str]:
    assert sandbox.kube
    return {n["metadata"]["name"]: n["metadata"]["labels"][POOL_LABEL] for n in sandbox.kube.list("nodes")}


def publish_gallery_version(sandbox: Sandbox, version: str) -> list[str]:
    """What an image build (Azure Image Builder, Packer) ends with: a new version in the
    Compute Gallery. When it has replicated, ARM raises ResourceWriteSuccess, which the
    sandbox delivers to the app's ``azure_events`` function as Event Grid would."""
    from sandbox.stack import GALLERY, KUBERNETES_VERSION

    assert sandbox.gallery_compute
    definitions = sorted(
        {"k8s-node-windows" if p.os == "windows" else "k8s-node-ubuntu" for p in sandbox.options.pools}
    )
    return [
        sandbox.gallery_compute.publish_image_version(
            sandbox.gallery_resource_group,
            GALLERY,
            definition,
            version,
            tags={"kubernetesVersion": KUBERNETES_VERSION},
            replicate_seconds=120,
        )
        for definition in definitions
    ]


def run_demo(
    *, state_dir: Path | None = None, pools: str = DEFAULT_POOLS, runners: int = 2, quiet: bool = False
) -> int:
    from rich.console import Console
    from rich.live import Live
    from rich.table import Table

    console = Console(quiet=quiet)
    state = state_dir or Path(tempfile.mkdtemp(prefix="vmss-node-patcher-demo-"))
    sandbox = Sandbox(SandboxOptions(state_dir=state, pools=PoolSpec.parse_list(pools), runners=runners))
    console.print(f"[bold]Starting the sandbox[/] in {state} ({runners} function runners) ...")
    started = time.monotonic()
    sandbox.start()
    try:
        console.print(
            f"  ARM {sandbox.arm_server.url if sandbox.arm_server else ''}, Kubernetes "
            f"{sandbox.kube_server.url if sandbox.kube_server else ''}, Functions {sandbox.functions_url} "
            f"(up in {time.monotonic() - started:.1f}s)"
        )
        console.print(f"  status page: {sandbox.functions_url}/api/ui (while the demo runs)")
        t0 = time.monotonic()
        versions = publish_gallery_version(sandbox, IMAGE_V2)
        console.print(
            f"[bold]An image build published {IMAGE_V2}[/] to the Compute Gallery ({len(versions)} image "
            "definitions); its ResourceWriteSuccess event goes to the app's azure_events function"
        )
        runs: dict[str, dict[str, Any]] = {}
        with Live(console=console, refresh_per_second=4, transient=False) as live:
            while True:
                _, listing = http_json("GET", f"{sandbox.functions_url}/api/runs")
                for summary in (listing or {}).get("runs", []):
                    _, runs[summary["id"]] = http_json(
                        "GET", f"{sandbox.functions_url}/api/runs/{summary['id']}"
                    )
                live.update(_table(list(runs.values()), time.monotonic() - t0, Table))
                pools_seen = {p for r in runs.values() for p in r["pools"]}
                done = all(r["state"] in ("succeeded", "failed", "cancelled") for r in runs.values())
                if runs and done and pools_seen >= {p.name for p in sandbox.options.pools}:
                    break
                if runs and done and any(r["state"] != "succeeded" for r in runs.values()):
                    break
                if time.monotonic() - t0 > 600:
                    console.print("[red]the rollout did not finish within 10 minutes[/]")
                    break
                time.sleep(0.5)
        makespan = time.monotonic() - t0
        status = _summary(console, sandbox, list(runs.values()), makespan)
        for run_id in runs:
            path = save_timeline(sandbox.functions_url, run_id, state / f"timeline-{run_id}.svg")
            console.print(f"  timeline of run {run_id[:8]}: {path}")
        return status
    finally:
        sandbox.stop()


def _table(runs: list[dict[str, Any]], elapsed: float, table_cls: Any) -> Any:
    title = (
        " | ".join(f"run {r['id'][:8]} ({r['trigger']}): {r['state']}" for r in runs) or "waiting for a run"
    )
    table = table_cls(title=f"{title} - {elapsed:.0f}s", expand=False)
    table.add_column("node", no_wrap=True)
    table.add_column("pool", no_wrap=True)
    table.add_column("state", no_wrap=True)
    table.add_column("detail", no_wrap=True, overflow="ellipsis", max_width=60)
    colors = {
        "succeeded": "green",
        "failed": "red",
        "draining": "yellow",
        "reimaging": "magenta",
        "booting": "cyan",
    }
    for run in runs:
        for node in run["nodes"]:
            color = colors.get(node["state"], "white")
            table.add_row(node["name"], node["pool"], f"[{color}]{node['state']}[/]", node["reason"][:70])
    return table


def _summary(console: Any, sandbox: Sandbox, runs: list[dict[str, Any]], makespan: float) -> int:
    assert sandbox.world and sandbox.kube and sandbox.arm_server and sandbox.kube_server
    budgets = {name: pool["maxUnavailable"] for run in runs for name, pool in run["pools"].items()}
    report = check_history(sandbox.world.history.records(), node_pools=node_pools(sandbox), budgets=budgets)
    nodes = [n for run in runs for n in run["nodes"]]
    targets = {n["name"] for n in nodes}
    problems = check_final_nodes(sandbox.kube.list("nodes"), targets=targets, image=IMAGE_V2)
    arm_log = list(sandbox.arm_server.request_log)
    kube_log = list(sandbox.kube_server.request_log)
    arm_writes = sum(1 for r in arm_log if r.get("write"))
    arm_reads = len(arm_log) - arm_writes
    patched = sum(1 for n in nodes if n["state"] == "succeeded")
    throttled = sum(1 for r in arm_log if r.get("status") == 429)
    console.print()
    console.print("[bold]Summary[/]")
    for run in runs:
        console.print(f"  run {run['id'][:8]} ({run['trigger']:<6}) {run['state']} ({run['stateReason']})")
    console.print(f"  nodes patched       {patched}/{len(nodes)}")
    console.print(f"  makespan            {makespan:.1f}s")
    for pool, budget in budgets.items():
        console.print(
            f"  pool {pool:<14} most disrupted at once {report.max_disrupted.get(pool, 0)} (budget {budget})"
        )
    console.print(
        f"  evictions           {report.evictions} accepted, {report.evictions_refused} refused by PDBs"
    )
    per_node = len(arm_log) / max(1, len(targets))
    console.print(
        f"  ARM requests        {len(arm_log)} ({arm_reads} reads, {arm_writes} writes, "
        f"{throttled} throttled) = {per_node:.1f} per node"
    )
    console.print(
        f"  Kubernetes requests {len(kube_log)} = {len(kube_log) / max(1, len(targets)):.1f} per node"
    )
    violations = report.violations + problems
    if violations:
        console.print("[red]Invariant violations:[/]")
        for v in violations:
            console.print(f"  - {v}")
    else:
        console.print(
            "  invariants          [green]all held[/] "
            "(budget, eviction-only, drained before reimage, clean finish)"
        )
    ok = bool(runs) and all(r["state"] == "succeeded" for r in runs) and patched == len(nodes)
    return 0 if ok and not violations else 1

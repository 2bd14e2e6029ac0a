"""``python -m sandbox demo``: a whole patch run on the sandbox, shown live.

1. brings the sandbox up (a Linux and a Windows pool with Deployments + PDBs, a
   DaemonSet and a StatefulSet);
2. publishes a new node image the way an image pipeline does: a scale-set model update
   through ARM;
3. starts a run through the app's real HTTP trigger (``POST /api/runs``);
4. follows it (``GET /api/runs/{id}``) with a live table, then checks the invariants on
   the sandbox's own record of what happened, and prints a summary.

Exit status 0 only if the run succeeded and every invariant held.
"""

from __future__ import annotations

import json
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from sandbox.cluster import PoolSpec
from sandbox.invariants import check_final_nodes, check_history
from sandbox.stack import CLUSTER, DEFAULT_POOLS, Sandbox, SandboxOptions

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


def publish_image(sandbox: Sandbox, version: str) -> None:
    """What an image pipeline does after a gallery version is replicated: point each
    scale set's model at it (real ARM PUT through azure-mgmt-compute)."""
    import os

    from azure.identity import ManagedIdentityCredential
    from azure.mgmt.compute import ComputeManagementClient

    assert sandbox.arm_server and sandbox.cluster
    os.environ["IDENTITY_ENDPOINT"] = sandbox.arm_server.identity_endpoint
    os.environ["IDENTITY_HEADER"] = sandbox.arm_server.identity_header
    os.environ["REQUESTS_CA_BUNDLE"] = str(sandbox.tls.ca_path)
    client = ComputeManagementClient(
        ManagedIdentityCredential(), sandbox.cluster.subscription_id, base_url=sandbox.arm_server.url
    )
    rg = sandbox.cluster.resource_group
    for spec in sandbox.options.pools:
        vmss = client.virtual_machine_scale_sets.get(rg, spec.scale_set)
        ref = vmss.virtual_machine_profile.storage_profile.image_reference
        ref.id = ref.id.rsplit("/", 1)[0] + "/" + version
        client.virtual_machine_scale_sets.begin_create_or_update(
            rg, spec.scale_set, vmss, polling_interval=0.2
        ).result()


def node_pools(sandbox: Sandbox) -> dict[str, str]:
    assert sandbox.kube
    return {
        n["metadata"]["name"]: n["metadata"]["labels"]["kubernetes.azure.com/agentpool"]
        for n in sandbox.kube.list("nodes")
    }


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
        console.print(f"[bold]Publishing node image {IMAGE_V2}[/] (scale-set model update through ARM) ...")
        publish_image(sandbox, IMAGE_V2)
        status, body = http_json(
            "POST",
            f"{sandbox.functions_url}/api/runs",
            {"cluster": CLUSTER, "reason": f"roll out node image {IMAGE_V2}"},
        )
        if status != 202:
            console.print(f"[red]POST /api/runs answered {status}: {body}[/]")
            return 1
        run_id = body["id"]
        console.print(f"[bold]Run {run_id}[/] started through POST /api/runs")
        t0 = time.monotonic()
        run: dict[str, Any] = {}
        with Live(console=console, refresh_per_second=4, transient=False) as live:
            while True:
                _, run = http_json("GET", f"{sandbox.functions_url}/api/runs/{run_id}")
                live.update(_table(run, time.monotonic() - t0, Table))
                if run["state"] in ("succeeded", "failed", "cancelled"):
                    break
                if time.monotonic() - t0 > 600:
                    console.print("[red]the run did not finish within 10 minutes[/]")
                    break
                time.sleep(0.5)
        makespan = time.monotonic() - t0
        return _summary(console, sandbox, run, makespan)
    finally:
        sandbox.stop()


def _table(run: dict[str, Any], elapsed: float, table_cls: Any) -> Any:
    table = table_cls(title=f"run {run['id']} - {run['state']} - {elapsed:.0f}s", expand=False)
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
    for node in run["nodes"]:
        color = colors.get(node["state"], "white")
        table.add_row(node["name"], node["pool"], f"[{color}]{node['state']}[/]", node["reason"][:70])
    return table


def _summary(console: Any, sandbox: Sandbox, run: dict[str, Any], makespan: float) -> int:
    assert sandbox.world and sandbox.kube and sandbox.arm_server and sandbox.kube_server
    budgets = {name: pool["maxUnavailable"] for name, pool in run["pools"].items()}
    report = check_history(sandbox.world.history.records(), node_pools=node_pools(sandbox), budgets=budgets)
    targets = {n["name"] for n in run["nodes"]}
    problems = check_final_nodes(sandbox.kube.list("nodes"), targets=targets, image=IMAGE_V2)
    arm_log = list(sandbox.arm_server.request_log)
    kube_log = list(sandbox.kube_server.request_log)
    arm_writes = sum(1 for r in arm_log if r.get("write"))
    arm_reads = len(arm_log) - arm_writes
    patched = sum(1 for n in run["nodes"] if n["state"] == "succeeded")
    throttled = sum(1 for r in arm_log if r.get("status") == 429)
    console.print()
    console.print("[bold]Summary[/]")
    console.print(f"  run state           {run['state']} ({run['stateReason']})")
    console.print(f"  nodes patched       {patched}/{len(run['nodes'])}")
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
    return 0 if run["state"] == "succeeded" and not violations else 1

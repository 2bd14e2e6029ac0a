"""The seed's own procedure, as an operator runs it by hand or in a script: one node at a
time, ``kubectl drain --ignore-daemonsets --delete-emptydir-data``, upgrade the instance
to the scale set's latest model (azure-mgmt-compute, as ``az vmss update-instances``
does), ``kubectl wait`` for the node to be Ready again, ``kubectl uncordon``.

It takes N node-times by construction, so the benchmark samples its first nodes on the
same sandbox and workload as the product's rows and extrapolates: makespan = N x the
mean time per node measured.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.bound import WriteLimit, lower_bound
from bench.rollout import IMAGE, Progress, RolloutSpec, add_workload, rollout_durations, sandbox_options


def run_seed(
    spec: RolloutSpec, *, sample: int, workdir: Path | None = None, progress: Progress = print
) -> dict[str, Any]:
    from sandbox.demo import publish_image
    from sandbox.stack import Sandbox

    kubectl = shutil.which("kubectl")
    if kubectl is None:
        raise RuntimeError("kubectl is not on PATH (every machine of this project has it)")
    state_dir = Path(tempfile.mkdtemp(prefix=f"bench-seed-n{spec.n}-", dir=workdir))
    options = sandbox_options(spec, state_dir)
    durations = rollout_durations(spec, options)
    one_node = lower_bound(1, 1, durations, WriteLimit())
    full = lower_bound(spec.n, 1, durations, WriteLimit())
    sandbox = Sandbox(options)
    sandbox.start()
    per_node: list[float] = []
    try:
        workload, _ = add_workload(sandbox, spec, one_node, durations)
        publish_image(sandbox, IMAGE)
        compute, rg, scale_set = _compute_client(sandbox)
        instances = {
            str(vm.os_profile.computer_name).lower(): str(vm.instance_id)
            for vm in compute.virtual_machine_scale_set_vms.list(rg, scale_set)
        }
        poll = max(0.5, 15 * spec.scale)  # production's 15 s, scaled like the app's pollInterval
        env = {**os.environ, "KUBECONFIG": str(sandbox.kubeconfig_path)}
        timeout = f"{max(60, int(900 * spec.scale))}s"
        for name in sorted(instances)[:sample]:
            started = time.time()
            _kubectl(
                kubectl,
                env,
                "drain",
                name,
                "--ignore-daemonsets",
                "--delete-emptydir-data",
                f"--timeout={timeout}",
            )
            compute.virtual_machine_scale_sets.begin_update_instances(
                rg, scale_set, {"instanceIds": [instances[name]]}, polling_interval=poll
            ).result()
            _kubectl(kubectl, env, "wait", "--for=condition=Ready", f"node/{name}", f"--timeout={timeout}")
            _kubectl(kubectl, env, "uncordon", name)
            per_node.append(time.time() - started)
            progress(f"  seed: {name} done in {per_node[-1]:.1f}s")
    finally:
        with contextlib.suppress(Exception):
            sandbox.stop()
        shutil.rmtree(state_dir, ignore_errors=True)
    mean = statistics.mean(per_node)
    makespan = mean * spec.n
    bound_s = full.wall(spec.scale)
    return {
        "label": f"N={spec.n:,} {spec.workload}, the seed's procedure (kubectl, one node at a time)",
        "kind": "seed",
        "spec": {"n": spec.n, "scale": spec.scale, "workload": spec.workload, "sample": sample},
        "workload": workload,
        "outcome": "sampled",
        "sampled_nodes": len(per_node),
        "node_seconds": [round(t, 2) for t in per_node],
        "node_seconds_mean": round(mean, 3),
        "makespan_seconds": round(makespan, 1),
        "bound_seconds": round(bound_s, 3),
        "ratio": round(makespan / bound_s, 3),
        "notes": [f"first {len(per_node)} of {spec.n} nodes measured; makespan = N x their mean"],
    }


def _compute_client(sandbox: Any) -> tuple[Any, str, str]:
    """The operator's own Compute client (the admin identity, as the image pipeline's)."""
    from azure.identity import ManagedIdentityCredential
    from azure.mgmt.compute import ComputeManagementClient

    os.environ["IDENTITY_ENDPOINT"] = sandbox.arm_server.identity_endpoint
    os.environ["IDENTITY_HEADER"] = sandbox.arm_server.identity_header
    os.environ["REQUESTS_CA_BUNDLE"] = str(sandbox.tls.ca_path)
    client = ComputeManagementClient(
        ManagedIdentityCredential(client_id=sandbox.arm_server.admin_client_id),
        sandbox.cluster.subscription_id,
        base_url=sandbox.arm_server.url,
    )
    return client, sandbox.cluster.resource_group, sandbox.options.pools[0].scale_set


def _kubectl(kubectl: str, env: dict[str, str], *args: str) -> None:
    done = subprocess.run([kubectl, *args], env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {(done.stderr or done.stdout).strip()[:400]}")

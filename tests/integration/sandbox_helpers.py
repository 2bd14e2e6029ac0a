"""Helpers for tests that drive the whole sandbox through the app's real entry points."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sandbox.cluster import POOL_LABEL
from sandbox.demo import http_json, node_pools, publish_image
from sandbox.invariants import Report, check_final_nodes, check_history
from sandbox.stack import CLUSTER, Sandbox


class Driver:
    """Starts runs through POST /api/runs and waits for them through GET /api/runs/{id}."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox
        self.version = 0

    @property
    def url(self) -> str:
        return self.sandbox.functions_url

    def new_image(self, *, pools: list[str] | None = None) -> str:
        """Point the scale-set models at a new image version (all pools, or those named)."""
        self.version += 1
        image = f"2026.12.{self.version:02d}"
        publish_image(self.sandbox, image, pools=pools)
        return image

    def start(self, **body: Any) -> str:
        status, answer = http_json(
            "POST", f"{self.url}/api/runs", {"cluster": CLUSTER, "reason": "test", **body}
        )
        assert status == 202, answer
        return str(answer["id"])

    def get(self, run_id: str) -> dict[str, Any]:
        status, answer = http_json("GET", f"{self.url}/api/runs/{run_id}")
        assert status == 200, answer
        return dict(answer)

    def wait(self, run_id: str, *, timeout: float = 180.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                run = self.get(run_id)
            except (OSError, AssertionError):
                run = {"state": "unknown"}  # a runner may be restarting
            if run["state"] in ("succeeded", "failed", "cancelled") and not any(
                n["state"] in ("admitted", "draining", "reimaging", "booting") for n in run.get("nodes", [])
            ):
                return run
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} did not finish in {timeout}s: {json.dumps(run)[:3000]}")
            time.sleep(0.3)

    @staticmethod
    def explain(run: dict[str, Any]) -> str:
        lines = [f"run {run.get('id')} {run.get('state')}: {run.get('stateReason')}"]
        for n in run.get("nodes", []):
            if n["state"] != "succeeded":
                lines.append(f"  {n['name']} {n['state']}: {n['reason']} (last error: {n.get('lastError')})")
                lines += [
                    f"     {h['at']} {h['from']} -> {h['to']}: {h['reason']}" for h in n.get("history", [])
                ]
        return "\n".join(lines)

    def check(self, run: dict[str, Any], *, since: float, image: str | None = None) -> Report:
        assert self.sandbox.world and self.sandbox.kube
        records = [r for r in self.sandbox.world.history.records() if r["t"] >= since]
        budgets = {name: pool["maxUnavailable"] for name, pool in run["pools"].items()}
        report = check_history(records, node_pools=node_pools(self.sandbox), budgets=budgets)
        if image is not None:
            succeeded = {n["name"] for n in run["nodes"] if n["state"] == "succeeded"}
            report.violations += check_final_nodes(
                self.sandbox.kube.list("nodes"), targets=succeeded, image=image
            )
        return report

    def nodes_of(self, pool: str) -> list[str]:
        assert self.sandbox.kube
        return sorted(
            n["metadata"]["name"]
            for n in self.sandbox.kube.list("nodes", label_selector=f"{POOL_LABEL}={pool}")
        )

    def reset(self, *names: str) -> None:
        """Undo what a fault test left behind: uncordon, forget our annotations, clear faults."""
        assert self.sandbox.kube and self.sandbox.compute and self.sandbox.kube_server
        self.sandbox.compute.faults.clear()
        self.sandbox.kube_server.faults.clear()

        def clean(obj: dict[str, Any]) -> None:
            obj.get("spec", {}).pop("unschedulable", None)
            annotations = obj["metadata"].get("annotations") or {}
            for key in [k for k in annotations if k.startswith("vmss-node-patcher.io/")]:
                del annotations[key]

        for name in names:
            self.sandbox.kube.mutate("nodes", None, name, clean)

    def pod_on(self, node: str, namespace: str | None = None) -> dict[str, Any]:
        assert self.sandbox.kube
        pods = self.sandbox.kube.list("pods", namespace, field_selector=f"spec.nodeName={node}")
        owned = [
            p for p in pods if any(r["kind"] != "DaemonSet" for r in p["metadata"].get("ownerReferences", []))
        ]
        assert owned, f"no controller-owned pod on {node}"
        return owned[0]


REPO = Path(__file__).resolve().parents[2]


def run_cli(
    sandbox: Sandbox, *args: str, token: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """``vmss-patcher ARGS`` against the sandbox (``python -m cli``), as a user's shell runs
    it: the URL (and a bearer token) from the environment, none of this one's own."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VMSS_PATCHER_")}
    env["VMSS_PATCHER_URL"] = sandbox.functions_url
    if token is not None:
        env["VMSS_PATCHER_TOKEN"] = token
    return subprocess.run(
        [sys.executable, "-m", "cli", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )

"""vmss-patcher, the real command in its own process, against the sandbox: the runners serve
the app's HTTP functions, which talk to the simulated ARM and Kubernetes API server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from sandbox.stack import CLUSTER, Sandbox
from tests.integration.sandbox_helpers import Driver, run_cli

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def cli(sandbox: Sandbox, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return run_cli(sandbox, *args, timeout=timeout)


@pytest.fixture
def frozen_api(sandbox: Sandbox) -> Iterator[str]:
    """A PodDisruptionBudget that allows no disruption of shop/api, made by the cluster's
    admin through the real client; removed afterwards so that rollouts can drain again."""
    from kubernetes import client, config

    api = client.PolicyV1Api(config.new_client_from_config(str(sandbox.kubeconfig_path)))
    body = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "api-freeze", "namespace": "shop"},
        "spec": {"minAvailable": "100%", "selector": {"matchLabels": {"app": "api"}}},
    }
    api.create_namespaced_pod_disruption_budget("shop", body)
    try:
        yield "shop/api-freeze"
    finally:
        api.delete_namespaced_pod_disruption_budget("api-freeze", "shop")


def test_plan_prints_waves_eta_and_the_blockers_now(
    sandbox: Sandbox, driver: Driver, frozen_api: str
) -> None:
    assert sandbox.kube is not None
    api_pods = [p for p in sandbox.kube.list("pods", "shop") if p["metadata"]["name"].startswith("api")]
    as_json = json.loads(
        cli(sandbox, "plan", "--cluster", CLUSTER, "--pools", "alpha,beta", "-o", "json").stdout
    )
    patched = {n["name"] for n in as_json["nodes"] if n["action"] == "patch"}
    expected = {p["spec"]["nodeName"] for p in api_pods} & patched
    assert expected, "the scene has api pods on the nodes to patch"

    result = cli(sandbox, "plan", "--cluster", CLUSTER, "--pools", "alpha,beta")

    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert f"Plan for cluster {CLUSTER}" in out
    assert "WAVE" in out and "ETA:" in out and "waves, about" in out
    assert "Blockers now" in out
    blocker_lines = [line for line in out.splitlines() if f"PodDisruptionBudget {frozen_api}" in line]
    # Every node with an api pod names the budget, and the pod's Deployment (not its ReplicaSet).
    assert {line.split(":")[0].strip() for line in blocker_lines} == expected
    assert all("allows 0 disruptions" in line and "(Deployment/api)" in line for line in blocker_lines)

    # The session's pools have a budget of 2 and the cluster a limit of 6 nodes at once.
    assert all(len(w["nodes"]) <= 6 for w in as_json["waves"])
    assert as_json["estimatedSeconds"] > 0
    assert {n["action"] for n in as_json["nodes"]} <= {"patch", "skip"}


def test_runs_lists_a_table_and_json_filtered_by_cluster_and_state(sandbox: Sandbox, driver: Driver) -> None:
    run_id = driver.start(nodes=[driver.nodes_of("beta")[0]])
    driver.wait(run_id)

    table = cli(sandbox, "runs", "--cluster", CLUSTER)
    assert table.returncode == 0, table.stderr
    header = table.stdout.splitlines()[0].split()
    assert header[:4] == ["ID", "CLUSTER", "STATE", "TRIGGER"]
    assert any(line.startswith(run_id) and "succeeded" in line for line in table.stdout.splitlines())

    listed = json.loads(cli(sandbox, "runs", "--state", "succeeded", "-o", "json").stdout)
    assert run_id in [r["id"] for r in listed["runs"]]
    assert {r["state"] for r in listed["runs"]} == {"succeeded"}
    assert json.loads(cli(sandbox, "runs", "--cluster", "elsewhere", "-o", "json").stdout)["runs"] == []
    # The server pages: the newest run, then the one before it from the page's next.
    later = driver.start(nodes=[driver.nodes_of("beta")[1]])
    driver.wait(later)
    paged = yaml.safe_load(cli(sandbox, "runs", "--limit", "1", "-o", "yaml").stdout)
    assert [r["id"] for r in paged["runs"]] == [later] and paged["next"]
    following = json.loads(cli(sandbox, "runs", "--limit", "1", "--next", paged["next"], "-o", "json").stdout)
    assert [r["id"] for r in following["runs"]] == [run_id]
    every = json.loads(cli(sandbox, "runs", "--all", "--limit", "1", "-o", "json").stdout)
    assert [r["id"] for r in every["runs"]][:2] == [later, run_id] and "next" not in every
    more = cli(sandbox, "runs", "--limit", "1")
    assert f"more: --next {paged['next']}" in more.stdout
    refused = cli(sandbox, "runs", "--next", "not-a-token")
    assert refused.returncode != 0 and "next is not a continuation token" in refused.stderr

    shown = cli(sandbox, "show", run_id)
    assert shown.returncode == 0 and f"Run {run_id}" in shown.stdout and "succeeded" in shown.stdout


def test_start_then_watch_follows_the_run_to_its_end(sandbox: Sandbox, driver: Driver) -> None:
    node = driver.nodes_of("alpha")[0]

    started = cli(
        sandbox, "start", "--cluster", CLUSTER, "--nodes", node, "--reason", "cli test", "-o", "json"
    )
    assert started.returncode == 0, started.stderr
    run_id = json.loads(started.stdout)["id"]
    # The cluster is taken: a second start is refused with the API's reason, in one line.
    again = cli(sandbox, "start", "--cluster", CLUSTER, "--nodes", node)
    assert again.returncode == 1
    assert again.stderr.count("\n") == 1 and "HTTP 409" in again.stderr and run_id in again.stderr

    watched = cli(sandbox, "watch", run_id, "--interval", "0.3", timeout=240)

    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert f"run {run_id} succeeded" in watched.stdout
    lines = [line for line in watched.stdout.splitlines() if node in line]
    # A one-node run may be past its drain when the watch first looks: it shows what it finds.
    assert any(s in lines[0] for s in ("pending", "admitted", "draining", "reimaging", "booting")), lines
    assert "succeeded" in lines[-1] and "uncordoned" in lines[-1]
    assert "1/1 nodes" in watched.stdout
    assert driver.get(run_id)["state"] == "succeeded"


def test_http_failures_are_one_line_and_exit_1(sandbox: Sandbox) -> None:
    for args in (("show", "no-such-run"), ("cancel", "no-such-run"), ("syncs", "no-such-delivery")):
        result = cli(sandbox, *args)
        assert result.returncode == 1, args
        assert result.stdout == "" and result.stderr.count("\n") == 1 and "HTTP 404" in result.stderr
        assert "Traceback" not in result.stderr


def test_entra_sends_a_token_from_azure_identity(sandbox: Sandbox) -> None:
    """--entra gets its token from DefaultAzureCredential: here through the sandbox's
    managed-identity endpoint (the App Service protocol), as on an Azure VM or app."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str] = []

    class Api(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append(self.headers.get("Authorization", ""))
            body = b'{"runs": []}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_: object) -> None:
            pass

    assert sandbox.arm_server is not None
    server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VMSS_PATCHER_", "AZURE_"))}
    env |= {
        "IDENTITY_ENDPOINT": sandbox.arm_server.identity_endpoint,
        "IDENTITY_HEADER": sandbox.arm_server.identity_header,
        "REQUESTS_CA_BUNDLE": str(sandbox.tls.ca_path),
    }
    try:
        result = subprocess.run(
            [sys.executable, "-m", "cli", "--url", f"http://127.0.0.1:{server.server_address[1]}",
             "--entra", "--scope", "api://vmss-node-patcher/.default", "runs"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    finally:
        server.shutdown()
        server.server_close()

    assert result.returncode == 0, result.stderr
    assert len(seen) == 1 and seen[0].startswith("Bearer ") and len(seen[0]) > len("Bearer ") + 10


def test_bad_input_is_one_line_and_exit_2(sandbox: Sandbox) -> None:
    refused_by_the_api = cli(sandbox, "plan", "--cluster", "no-such-cluster")
    assert refused_by_the_api.returncode == 2
    assert "HTTP 400" in refused_by_the_api.stderr and "unknown cluster" in refused_by_the_api.stderr
    unknown_pool = cli(sandbox, "start", "--cluster", CLUSTER, "--pools", "nope")
    assert unknown_pool.returncode == 2 and "unknown pools" in unknown_pool.stderr
    for result in (refused_by_the_api, unknown_pool):
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


def test_a_real_run_makes_the_waves_its_plan_showed(sandbox: Sandbox, driver: Driver) -> None:
    nodes = ",".join(driver.nodes_of("alpha")[-4:])
    plan = json.loads(cli(sandbox, "plan", "--cluster", CLUSTER, "--nodes", nodes, "-o", "json").stdout)
    planned = [sorted(w["nodes"]) for w in plan["waves"]]
    assert len(planned) == 2  # four nodes, a budget of 2

    started = cli(sandbox, "start", "--cluster", CLUSTER, "--nodes", nodes, "--watch", "--interval", "0.5")
    assert started.returncode == 0, started.stdout + started.stderr

    run_id = started.stdout.split()[1]
    shown = json.loads(cli(sandbox, "show", run_id, "-o", "json").stdout)
    made: dict[int, list[str]] = {}
    for node in shown["nodes"]:
        made.setdefault(node["wave"], []).append(node["name"])
    assert [sorted(made[w]) for w in sorted(made)] == planned


def test_pause_resume_and_cancel_steer_a_run_and_watch_says_it_did_not_succeed(
    sandbox: Sandbox, driver: Driver
) -> None:
    nodes = ",".join(driver.nodes_of("beta")[-3:])
    started = cli(sandbox, "start", "--cluster", CLUSTER, "--nodes", nodes, "-o", "json")
    run_id = json.loads(started.stdout)["id"]

    for verb, state in (("pause", "paused"), ("resume", "running"), ("cancel", "cancelled")):
        steered = cli(sandbox, verb, run_id)
        assert steered.returncode == 0, steered.stderr
        assert steered.stdout.strip() == f"run {run_id}: {verb} accepted ({state})"
    watched = cli(sandbox, "watch", run_id, "--interval", "0.5", timeout=240)

    assert watched.returncode == 3, watched.stdout + watched.stderr
    assert f"run {run_id} cancelled" in watched.stdout
    # A cancelled run cannot be resumed: the API's 409, in one line.
    refused = cli(sandbox, "resume", run_id)
    assert refused.returncode == 1 and "HTTP 409" in refused.stderr and refused.stderr.count("\n") == 1

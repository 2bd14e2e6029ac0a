"""Whole runs on a sandbox with a Flexible pool (``flex:linux:4:flex``) and a Uniform pool
whose scale set has a Rolling upgrade policy, through the app's real paths (runner
processes, Azurite, the simulated ARM and Kubernetes API, the real SDKs). Invariants are
checked on what the sandbox served."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from azure.identity import DefaultAzureCredential
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.compute.models import (
    UpgradeMode,
    UpgradePolicy,
    VirtualMachineScaleSetUpdate,
    VirtualMachineScaleSetUpdateProperties,
)

from sandbox.cluster import PoolSpec
from sandbox.stack import GALLERY, IMAGE_V1, KUBERNETES_VERSION, SUBSCRIPTION, Sandbox, SandboxOptions
from tests.integration.arm_helpers import managed_identity_env
from tests.integration.sandbox_helpers import Driver, http_json

pytestmark = pytest.mark.integration

FLEX_VM_PATH = "/providers/Microsoft.Compute/virtualMachines/"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = Sandbox(
        SandboxOptions(
            state_dir=tmp_path_factory.mktemp("flex-sandbox"),
            pools=PoolSpec.parse_list("flex:linux:4:flex,rolling:linux:2"),
            runners=2,
            time_scale=0.01,
            max_unavailable=2,
            pool_overrides={
                p: {"drain": {"timeout": 30, "deleteEmptyDirData": True, "onTimeout": "fail"}}
                for p in ("flex", "rolling")
            },
        )
    )
    sb.start()
    yield sb
    sb.stop()


@pytest.fixture(scope="module")
def driver(sandbox: Sandbox) -> Driver:
    return Driver(sandbox)


@pytest.fixture(scope="module")
def client(sandbox: Sandbox) -> Iterator[ComputeManagementClient]:
    assert sandbox.arm_server
    with managed_identity_env(sandbox.arm_server, sandbox.tls.ca_path):
        yield ComputeManagementClient(DefaultAzureCredential(), SUBSCRIPTION, base_url=sandbox.arm_server.url)


def runs_by(driver: Driver, source: str, *, timeout: float = 60.0) -> list[dict[str, Any]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _, listing = http_json("GET", f"{driver.url}/api/runs")
        found = [r for r in listing["runs"] if r["source"].lower() == source.lower()]
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError(f"no run from {source} within {timeout}s")


def writes_since(sandbox: Sandbox, start: int) -> list[dict[str, Any]]:
    assert sandbox.arm_server
    return [r for r in sandbox.arm_server.request_log[start:] if r["write"]]


def test_a_rollout_on_a_flexible_pool_reimages_every_vm_once_through_the_vm_api(
    sandbox: Sandbox, driver: Driver
) -> None:
    assert sandbox.arm_server
    since, log_from = time.time(), len(sandbox.arm_server.request_log)
    run = driver.wait(driver.start(pools=["flex"]), timeout=180)
    assert run["state"] == "succeeded", driver.explain(run)
    assert {n["name"] for n in run["nodes"]} == set(driver.nodes_of("flex"))
    report = driver.check(run, since=since, image=IMAGE_V1)
    assert report.ok, report.violations
    assert report.reimages == 4
    writes = writes_since(sandbox, log_from)
    # One VM reimage per node (Flexible has no batch reimage), nothing through the VMSS-VM API.
    assert len(writes) == 4
    assert all(FLEX_VM_PATH in w["path"] and w["path"].endswith("/reimage") for w in writes)
    assert len({w["path"] for w in writes}) == 4
    refused = [r for r in sandbox.arm_server.request_log[log_from:] if r["status"] == 400]
    assert not refused, refused


def test_a_new_image_rolls_onto_the_flexible_pool_and_is_refused_for_the_rolling_scale_set(
    sandbox: Sandbox, driver: Driver, client: ComputeManagementClient
) -> None:
    assert sandbox.arm_server and sandbox.cluster and sandbox.compute
    rg = sandbox.cluster.resource_group
    client.virtual_machine_scale_sets.begin_update(
        rg,
        "vmss-rolling",
        VirtualMachineScaleSetUpdate(
            properties=VirtualMachineScaleSetUpdateProperties(
                upgrade_policy=UpgradePolicy(mode=UpgradeMode.ROLLING)
            )
        ),
        polling_interval=0.1,
    ).result(timeout=30)
    since, log_from = time.time(), len(sandbox.arm_server.request_log)
    version = "2027.02.01"
    version_id = sandbox.compute.publish_image_version(
        rg,
        GALLERY,
        "k8s-node-ubuntu",
        version,
        tags={"kubernetesVersion": KUBERNETES_VERSION},
        replicate_seconds=0,
    )
    (summary,) = runs_by(driver, version_id)
    run = driver.wait(summary["id"], timeout=180)
    assert run["state"] == "succeeded", driver.explain(run)
    assert {n["pool"] for n in run["nodes"]} == {"flex"} and len(run["nodes"]) == 4
    report = driver.check(run, since=since, image=version)
    assert report.ok, report.violations
    # The Rolling scale set was never written, so Azure never replaced its instances.
    rolling = sandbox.compute.scale_set(rg, "vmss-rolling")
    assert rolling["properties"]["virtualMachineProfile"]["storageProfile"]["imageReference"]["id"].endswith(
        IMAGE_V1
    )
    writes = writes_since(sandbox, log_from)
    assert not [w for w in writes if w["scale_set"] == "vmss-rolling"]
    rolling_nodes = set(driver.nodes_of("rolling"))
    assert not [
        r for r in sandbox.world.history.records() if r["t"] >= since and r.get("node") in rolling_nodes
    ]
    # The Flexible pool's model was pointed at the version, and its VMs upgraded by name.
    assert [
        w["method"] for w in writes if w["scale_set"] == "vmss-flex" and w["operation"] == "update_model"
    ] == ["PATCH"]
    assert any(w["operation"] == "manualupgrade" for w in writes)
    log = "".join(p.read_text(errors="replace") for p in sandbox.state_dir.glob("runner-*.log"))
    assert "refused, scale set vmss-rolling has upgradePolicy Rolling" in log

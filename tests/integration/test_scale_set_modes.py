"""Flexible orchestration and self-upgrading policies in the simulated ARM, through the real
SDK, and the app's ComputeClient on them.

* A Flexible scale set's instances are VMs of their own: listed, read and reimaged through
  the single-VM API (``Microsoft.Compute/virtualMachines``, naming their scale set in
  ``virtualMachineScaleSet.id``), while the VMSS-VM and batch-reimage APIs answer 400 as
  Azure does (orchestration-modes-api-comparison.md).
* On a scale set whose ``upgradePolicy.mode`` is Automatic or Rolling, a model write makes
  Compute replace the instances itself: Automatic all at once, Rolling in batches of
  ``maxBatchInstancePercent`` with ``pauseTimeBetweenBatches`` between them; nobody cordons
  or drains. The tests show that danger with a direct SDK write, and that the app refuses
  such a write before sending it.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from azure.core.exceptions import HttpResponseError
from azure.identity import DefaultAzureCredential
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.compute.models import (
    ImageReference,
    RollingUpgradePolicy,
    UpgradeMode,
    UpgradePolicy,
    VirtualMachineScaleSetReimageParameters,
    VirtualMachineScaleSetUpdate,
    VirtualMachineScaleSetUpdateProperties,
    VirtualMachineScaleSetUpdateStorageProfile,
    VirtualMachineScaleSetUpdateVMProfile,
    VirtualMachineScaleSetVMInstanceRequiredIDs,
)

from sandbox.arm import ArmServer, ComputeDurations, ComputeState
from sandbox.cluster import POOL_LABEL, ClusterTimings, PoolSpec, SandboxCluster, gallery_image
from sandbox.invariants import check_history
from sandbox.kube.registry import KubeStore
from sandbox.world import World
from shared.adapters.compute import ComputeClient, InstanceRef, UnguardedUpgradeError, parse_provider_id
from shared.errors import PermanentError
from tests.integration.arm_helpers import admin_credential, serving_arm

pytestmark = pytest.mark.integration

SUB = "5b1e7c2a-9d3f-4a60-8e21-7f0c4d9b2a15"
RG = "rg-sandbox"
SCALE = 0.01
POLL = 0.05
FLEX = PoolSpec("flex", "linux", 4, orchestration="Flexible")
FLEX_OTHER = PoolSpec("flexb", "linux", 1, orchestration="Flexible")
AUTO = PoolSpec("auto", "linux", 4)
ROLLING = PoolSpec("roll", "linux", 10)
GUARDED = PoolSpec("guard", "linux", 2)
PAUSE_CLOUD_SECONDS = 50


@dataclass
class Modes:
    world: World
    state: ComputeState
    kube: KubeStore
    cluster: SandboxCluster
    server: ArmServer

    def scale_set_id(self, spec: PoolSpec) -> str:
        return self.cluster.scale_set_id(spec)

    def image(self, version: str) -> dict[str, str]:
        return gallery_image(SUB, RG, "k8s-node-ubuntu", version)

    def nodes(self, spec: PoolSpec) -> list[dict[str, Any]]:
        return self.kube.list("nodes", label_selector=f"{POOL_LABEL}={spec.name}")

    def records(self, since: float, *kinds: str) -> list[dict[str, Any]]:
        return [
            r for r in self.world.history.records() if r["t"] >= since and (not kinds or r["kind"] in kinds)
        ]

    def compute_client(self) -> ComputeClient:
        return ComputeClient(
            SUB,
            endpoint=self.server.url,
            audience="https://management.azure.com",
            credential=DefaultAzureCredential(),
        )


@pytest.fixture(scope="module")
def modes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Modes]:
    tmp: Path = tmp_path_factory.mktemp("modes")
    world = World(time_scale=SCALE, history_path=tmp / "history.jsonl")
    state = ComputeState(world, subscription_id=SUB, durations=ComputeDurations(reimage=100, model_update=20))
    kube = KubeStore(world, pod_termination_cloud_seconds=1)
    cluster = SandboxCluster(
        world, kube, state, subscription_id=SUB, resource_group=RG, timings=ClusterTimings(boot=30)
    )
    for spec in (FLEX, FLEX_OTHER, AUTO, ROLLING, GUARDED):
        cluster.add_pool(spec, image_version="2026.11.01")
    cluster.add_deployment("shop", "web", replicas=16, pdb_max_unavailable=1)
    # The models' gallery: ARM lets the app point a model only at an image it may read.
    state.add_gallery_image(RG, "sandboxgallery", "k8s-node-ubuntu", os_type="Linux")
    with serving_arm(world, state, tmp) as (server, _tls):
        yield Modes(world, state, kube, cluster, server)


@pytest.fixture(scope="module")
def client(modes: Modes) -> ComputeManagementClient:
    return ComputeManagementClient(admin_credential(modes.server), SUB, base_url=modes.server.url)


def wait_for(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def model_update(
    image: dict[str, str] | None = None, policy: UpgradePolicy | None = None
) -> VirtualMachineScaleSetUpdate:
    profile = None
    if image is not None:
        profile = VirtualMachineScaleSetUpdateVMProfile(
            storage_profile=VirtualMachineScaleSetUpdateStorageProfile(
                image_reference=ImageReference(id=image["id"])
            )
        )
    return VirtualMachineScaleSetUpdate(
        properties=VirtualMachineScaleSetUpdateProperties(
            virtual_machine_profile=profile, upgrade_policy=policy
        )
    )


def write(client: ComputeManagementClient, spec: PoolSpec, update: VirtualMachineScaleSetUpdate) -> None:
    client.virtual_machine_scale_sets.begin_update(RG, spec.scale_set, update, polling_interval=POLL).result(
        timeout=30
    )


def boot_ids(modes: Modes, spec: PoolSpec) -> dict[str, str]:
    return {n["metadata"]["name"]: n["status"]["nodeInfo"]["bootID"] for n in modes.nodes(spec)}


def on_image(modes: Modes, spec: PoolSpec, version: str) -> bool:
    return all(
        n["metadata"]["labels"]["vmss-node-patcher.io/image-version"] == version
        and any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])
        for n in modes.nodes(spec)
    )


# ----------------------------------------------------------------------------- Flexible


def test_a_flexible_scale_set_s_instances_are_vms_served_by_the_vm_api(
    modes: Modes, client: ComputeManagementClient
) -> None:
    vmss = client.virtual_machine_scale_sets.get(RG, FLEX.scale_set)
    assert vmss.orchestration_mode == "Flexible"
    member = f"'virtualMachineScaleSet/id' eq '{modes.scale_set_id(FLEX)}'"
    vms = list(client.virtual_machines.list(RG, filter=member))
    assert len(vms) == 4
    for vm in vms:
        assert (
            vm.name and vm.name.startswith(f"{FLEX.scale_set}_") and len(vm.name) == len(FLEX.scale_set) + 9
        )
        assert vm.type == "Microsoft.Compute/virtualMachines"
        assert vm.virtual_machine_scale_set is not None
        assert vm.virtual_machine_scale_set.id == modes.scale_set_id(FLEX)
    # Unfiltered, the group's VMs: both Flexible sets' (a Uniform set's instances are not VMs).
    assert len(list(client.virtual_machines.list(RG))) == FLEX.count + FLEX_OTHER.count
    # The node's providerID names the VM, the way cloud-provider-azure writes it for Flexible.
    names = {vm.name for vm in vms}
    provider_ids = {n["spec"]["providerID"] for n in modes.nodes(FLEX)}
    assert provider_ids == {
        f"azure:///subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines/{name}"
        for name in names
    }
    # What a Flexible scale set does not serve, it refuses as Azure does.
    with pytest.raises(HttpResponseError) as listed:
        list(client.virtual_machine_scale_set_vms.list(RG, FLEX.scale_set))
    assert listed.value.status_code == 400
    assert "is not allowed on Virtual Machine Scale Set" in str(listed.value)
    with pytest.raises(HttpResponseError) as batch:
        client.virtual_machine_scale_sets.begin_reimage(
            RG,
            FLEX.scale_set,
            vm_scale_set_reimage_input=VirtualMachineScaleSetReimageParameters(instance_ids=[vms[0].name]),
        )
    assert batch.value.status_code == 400
    with pytest.raises(HttpResponseError) as view:
        client.virtual_machine_scale_sets.get_instance_view(RG, FLEX.scale_set)
    assert view.value.status_code == 400


def test_a_flexible_vm_is_reimaged_through_its_own_lro_and_upgraded_by_name(
    modes: Modes, client: ComputeManagementClient
) -> None:
    name = sorted(
        vm.name for vm in client.virtual_machines.list(RG) if vm.name.startswith(f"{FLEX.scale_set}_")
    )[0]
    vm = client.virtual_machines.get(RG, name, expand="instanceView")
    assert vm.instance_view is not None and any(
        (s.code or "").startswith("PowerState/") for s in vm.instance_view.statuses or []
    )
    node = next(n for n in modes.nodes(FLEX) if n["spec"]["providerID"].endswith(f"/{name}"))
    boot_before = node["status"]["nodeInfo"]["bootID"]
    disk_before = vm.storage_profile.os_disk.name
    client.virtual_machines.begin_reimage(RG, name, polling_interval=POLL).result(timeout=30)
    after = client.virtual_machines.get(RG, name)
    assert after.storage_profile.os_disk.name != disk_before
    assert after.storage_profile.image_reference.id == vm.storage_profile.image_reference.id
    node_name = node["metadata"]["name"]
    wait_for(lambda: modes.kube.get("nodes", None, node_name)["status"]["nodeInfo"]["bootID"] != boot_before)
    # manualupgrade takes a Flexible set's instance names
    # (virtual-machine-scale-sets-perform-manual-upgrades.md).
    write(client, FLEX, model_update(modes.image("2026.11.20")))
    client.virtual_machine_scale_sets.begin_update_instances(
        RG,
        FLEX.scale_set,
        vm_instance_i_ds=VirtualMachineScaleSetVMInstanceRequiredIDs(instance_ids=[name]),
        polling_interval=POLL,
    ).result(timeout=30)
    assert (
        client.virtual_machines.get(RG, name).storage_profile.image_reference.id
        == modes.image("2026.11.20")["id"]
    )
    with pytest.raises(HttpResponseError) as unknown:
        client.virtual_machine_scale_sets.begin_update_instances(
            RG,
            FLEX.scale_set,
            vm_instance_i_ds=VirtualMachineScaleSetVMInstanceRequiredIDs(instance_ids=["0"]),
        )
    assert unknown.value.status_code == 400


def test_the_app_reads_and_reimages_flexible_instances_through_the_vm_api(modes: Modes) -> None:
    compute = modes.compute_client()
    flex_id = modes.scale_set_id(FLEX)
    instances = {i.instance_id: i for i in compute.list_instances(flex_id)}
    assert len(instances) == 4 and all(i.scale_set_id == flex_id for i in instances.values())
    node = modes.nodes(FLEX)[-1]
    parsed = parse_provider_id(node["spec"]["providerID"])
    assert parsed is not None and parsed.flexible and parsed.same_scale_set(flex_id)
    ref = parsed.in_scale_set(flex_id)
    instance = compute.get_instance(ref)
    assert instance.computer_name.lower() == node["metadata"]["name"]
    assert instance.latest_model_applied == instances[ref.instance_id].latest_model_applied
    log_from = len(modes.server.request_log)
    token = compute.begin_reimage(ref, [ref.instance_id])
    wait_for(lambda: compute.poll(token).done)
    assert compute.poll(token).succeeded
    assert compute.get_instance(ref).os_disk != instance.os_disk
    paths = [r["path"] for r in modes.server.request_log[log_from:]]
    assert (
        f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachines/{ref.instance_id}/reimage"
        in paths
    )
    assert not [p for p in paths if "/virtualMachineScaleSets/" in p and "/virtualMachines" in p]
    # A VM that is not an instance of the pool's scale set is never taken for one.
    stranger = next(n for n in modes.nodes(FLEX_OTHER))["spec"]["providerID"].rsplit("/", 1)[-1]
    with pytest.raises(PermanentError, match="is not an instance of scale set vmss-flex"):
        compute.get_instance(InstanceRef(SUB, RG, FLEX.scale_set, stranger, flexible=True))


# ----------------------------------------------------------------------------- upgrade policies


def test_a_model_write_on_an_automatic_scale_set_replaces_every_instance_at_once_without_a_drain(
    modes: Modes, client: ComputeManagementClient
) -> None:
    write(client, AUTO, model_update(policy=UpgradePolicy(mode=UpgradeMode.AUTOMATIC)))
    assert client.virtual_machine_scale_sets.get(RG, AUTO.scale_set).upgrade_policy.mode == "Automatic"
    boots = boot_ids(modes, AUTO)
    since = time.time()
    write(client, AUTO, model_update(modes.image("2026.12.01")))
    wait_for(lambda: on_image(modes, AUTO, "2026.12.01"))
    started = modes.records(since, "reimage_started")
    assert {r["operation"] for r in started} == {"automatic_upgrade"}
    assert len(started) == 4
    first_done = min(r["t"] for r in modes.records(since, "reimage_completed"))
    assert max(r["t"] for r in started) < first_done  # all four down at once
    assert not modes.records(since, "node_cordoned")
    assert all(boot_ids(modes, AUTO)[name] != boot for name, boot in boots.items())
    # What the sandbox's invariants say about it: pods wiped with their nodes, budget blown.
    pools = {n["metadata"]["name"]: AUTO.name for n in modes.nodes(AUTO)}
    report = check_history(modes.records(since), node_pools=pools, budgets={AUTO.name: 1})
    assert any("reimaged with non-DaemonSet pods still on it" in v for v in report.violations)
    assert report.max_disrupted[AUTO.name] == 4


def test_a_model_write_on_a_rolling_scale_set_upgrades_in_batches_with_a_pause(
    modes: Modes, client: ComputeManagementClient
) -> None:
    policy = UpgradePolicy(
        mode=UpgradeMode.ROLLING,
        rolling_upgrade_policy=RollingUpgradePolicy(
            max_batch_instance_percent=30, pause_time_between_batches=f"PT{PAUSE_CLOUD_SECONDS}S"
        ),
    )
    write(client, ROLLING, model_update(policy=policy))
    read = client.virtual_machine_scale_sets.get(RG, ROLLING.scale_set).upgrade_policy
    assert read.mode == "Rolling" and read.rolling_upgrade_policy.max_batch_instance_percent == 30
    since = time.time()
    write(client, ROLLING, model_update(modes.image("2026.12.02")))
    wait_for(lambda: bool(modes.records(since, "rolling_upgrade_completed")), timeout=60)
    batches = modes.records(since, "rolling_upgrade_batch")
    assert [len(b["instance_ids"]) for b in batches] == [3, 3, 3, 1]
    done = modes.records(since, "reimage_completed")
    for before, after in itertools.pairwise(batches):
        finished = max(r["t"] for r in done if r["instance_id"] in before["instance_ids"])
        assert after["t"] >= finished + PAUSE_CLOUD_SECONDS * SCALE * 0.9
    assert not modes.records(since, "node_cordoned")
    assert sorted(i for b in batches for i in b["instance_ids"]) == sorted(
        str(i) for i in range(ROLLING.count)
    )


@pytest.mark.parametrize("mode", [UpgradeMode.ROLLING, UpgradeMode.AUTOMATIC])
def test_the_app_refuses_to_write_the_model_of_a_self_upgrading_scale_set(
    modes: Modes, client: ComputeManagementClient, mode: UpgradeMode
) -> None:
    write(client, GUARDED, model_update(policy=UpgradePolicy(mode=mode)))
    compute = modes.compute_client()
    guarded = modes.scale_set_id(GUARDED)
    assert compute.get_upgrade_policy(guarded) == mode.value
    log_from = len(modes.server.request_log)
    with pytest.raises(UnguardedUpgradeError, match=f"upgradePolicy {mode.value}"):
        compute.set_model_image(guarded, modes.image("2026.12.09")["id"])
    assert not [r for r in modes.server.request_log[log_from:] if r["write"]]
    assert (
        compute.get_model_image(InstanceRef(SUB, RG, GUARDED.scale_set, "0"))
        == modes.image("2026.11.01")["id"].lower()
    )
    write(client, GUARDED, model_update(policy=UpgradePolicy(mode=UpgradeMode.MANUAL)))
    compute.set_model_image(guarded, modes.image("2026.12.09")["id"])
    assert (
        compute.get_model_image(InstanceRef(SUB, RG, GUARDED.scale_set, "0"))
        == modes.image("2026.12.09")["id"].lower()
    )
    write(client, GUARDED, model_update(modes.image("2026.11.01")))


def test_a_bad_upgrade_policy_is_refused_with_the_field_named(
    modes: Modes, client: ComputeManagementClient
) -> None:
    bad = UpgradePolicy(
        mode=UpgradeMode.ROLLING, rolling_upgrade_policy=RollingUpgradePolicy(max_batch_instance_percent=2)
    )
    with pytest.raises(HttpResponseError) as err:
        write(client, GUARDED, model_update(policy=bad))
    assert err.value.status_code == 400
    assert "maxBatchInstancePercent" in str(err.value)
    assert client.virtual_machine_scale_sets.get(RG, GUARDED.scale_set).upgrade_policy.mode == "Manual"


def test_a_policy_changed_between_the_app_s_read_and_its_write_fails_the_write(
    modes: Modes, client: ComputeManagementClient
) -> None:
    """The model write is conditional on the scale set the app read (If-Match its ETag):
    an upgrade policy set to Rolling while the write is on its way makes ARM refuse it."""
    import threading

    compute = modes.compute_client()
    guarded = modes.scale_set_id(GUARDED)
    modes.state.faults.hold_next("update_model", max_hold=20)
    outcome: list[BaseException | None] = []

    def write_model() -> None:
        try:
            compute.set_model_image(guarded, modes.image("2026.12.10")["id"])
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    writer = threading.Thread(target=write_model)
    writer.start()
    held = modes.state.faults.wait_held()
    try:
        write(client, GUARDED, model_update(policy=UpgradePolicy(mode=UpgradeMode.ROLLING)))
    finally:
        held.release()
        writer.join(timeout=30)
    try:
        (error,) = outcome
        assert isinstance(error, PermanentError) and "412" in str(error), error
        model = compute.get_model_image(InstanceRef(SUB, RG, GUARDED.scale_set, "0"))
        assert model == modes.image("2026.11.01")["id"].lower()
    finally:
        write(client, GUARDED, model_update(policy=UpgradePolicy(mode=UpgradeMode.MANUAL)))

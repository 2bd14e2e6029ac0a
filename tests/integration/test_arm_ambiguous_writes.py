"""The simulated ARM's answers a client cannot read for certain, as the real SDK sees them.

A reimage replaces the instance's OS disk (a new name and managed disk id), which is what
lets a client tell afterwards whether a write it never got an answer to did happen. The
fault injector makes writes ambiguous: accepted and then answered 500, accepted and never
answered, or held before ARM sees them so that the client can be killed meanwhile.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from azure.core.exceptions import HttpResponseError, ServiceResponseError
from azure.identity import DefaultAzureCredential
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.compute.models import (
    ImageReference,
    VirtualMachineScaleSetReimageParameters,
    VirtualMachineScaleSetUpdate,
    VirtualMachineScaleSetUpdateProperties,
    VirtualMachineScaleSetUpdateStorageProfile,
    VirtualMachineScaleSetUpdateVMProfile,
    VirtualMachineScaleSetVM,
    VirtualMachineScaleSetVMInstanceRequiredIDs,
)

from sandbox.arm import ComputeDurations, ComputeState
from sandbox.world import World
from tests.integration.arm_helpers import serving_arm
from tests.integration.test_arm_fidelity import (
    LINUX_V2,
    RG,
    SUB,
    Sandbox,
    vm_props,
    vmss_path,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    tmp: Path = tmp_path_factory.mktemp("arm-ambiguous")
    world = World(time_scale=0.01, history_path=tmp / "history.jsonl")
    state = ComputeState(world, subscription_id=SUB, durations=ComputeDurations(reimage=100, model_update=20))
    with serving_arm(world, state, tmp) as (server, tls):
        sb = Sandbox(world, state, server, tls)
        state.add_listener(sb.record)
        yield sb


@pytest.fixture(scope="module")
def client(sandbox: Sandbox) -> ComputeManagementClient:
    # retry_total=0, as the app's client: every answer is seen as it came.
    return ComputeManagementClient(DefaultAzureCredential(), SUB, base_url=sandbox.server.url, retry_total=0)


@pytest.fixture(autouse=True)
def no_faults_left(sandbox: Sandbox) -> Iterator[None]:
    yield
    sandbox.state.faults.clear()


def os_disk(vm: VirtualMachineScaleSetVM) -> tuple[str, str]:
    storage = vm_props(vm).storage_profile
    assert storage is not None and storage.os_disk is not None and storage.os_disk.managed_disk is not None
    return str(storage.os_disk.name), str(storage.os_disk.managed_disk.id)


def disks(client: ComputeManagementClient, name: str) -> dict[str, tuple[str, str]]:
    return {str(vm.instance_id): os_disk(vm) for vm in client.virtual_machine_scale_set_vms.list(RG, name)}


def reimage(client: ComputeManagementClient, name: str, ids: list[str]) -> None:
    client.virtual_machine_scale_sets.begin_reimage(
        RG,
        name,
        vm_scale_set_reimage_input=VirtualMachineScaleSetReimageParameters(instance_ids=ids),
        polling_interval=0.05,
    ).result(timeout=30)


def point_model_at(client: ComputeManagementClient, name: str, image_id: str) -> None:
    update = VirtualMachineScaleSetUpdate(
        properties=VirtualMachineScaleSetUpdateProperties(
            virtual_machine_profile=VirtualMachineScaleSetUpdateVMProfile(
                storage_profile=VirtualMachineScaleSetUpdateStorageProfile(
                    image_reference=ImageReference(id=image_id)
                )
            )
        )
    )
    client.virtual_machine_scale_sets.begin_update(RG, name, update, polling_interval=0.05).result(timeout=30)


def upgrade(client: ComputeManagementClient, name: str, ids: list[str]) -> None:
    client.virtual_machine_scale_sets.begin_update_instances(
        RG,
        name,
        vm_instance_i_ds=VirtualMachineScaleSetVMInstanceRequiredIDs(instance_ids=ids),
        polling_interval=0.05,
    ).result(timeout=30)


def started(sandbox: Sandbox, name: str) -> list[str]:
    return [str(p["instance_id"]) for _, p in sandbox.events_for(name, "reimage_started")]


# ----------------------------------------------------------------------------- the OS disk


def test_a_reimage_gives_the_instance_a_new_os_disk_in_get_and_list(
    sandbox: Sandbox, client: ComputeManagementClient
) -> None:
    name = sandbox.new_scale_set(capacity=3)
    before = disks(client, name)
    vm_ids = {
        str(vm.instance_id): vm_props(vm).vm_id for vm in client.virtual_machine_scale_set_vms.list(RG, name)
    }
    disk_name, disk_id = before["1"]
    assert disk_name.startswith(f"{name}_1_OsDisk_1_") and len(disk_name.rsplit("_", 1)[1]) == 32
    assert (
        disk_id == f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/disks/{disk_name}"
    )
    assert len({d[0] for d in before.values()}) == 3

    reimage(client, name, ["1"])
    after = disks(client, name)
    assert after["1"] != before["1"] and after["0"] == before["0"] and after["2"] == before["2"]
    got = client.virtual_machine_scale_set_vms.get(RG, name, "1", expand="instanceView")
    assert os_disk(got) == after["1"]
    assert vm_props(got).vm_id == vm_ids["1"]  # the VM is the same; only its disk is new
    reimage(client, name, ["1"])
    assert disks(client, name)["1"] not in (before["1"], after["1"])


def test_an_upgrade_that_changes_the_image_replaces_the_disk_and_one_that_does_nothing_keeps_it(
    sandbox: Sandbox, client: ComputeManagementClient
) -> None:
    name = sandbox.new_scale_set(capacity=2)
    before = disks(client, name)
    point_model_at(client, name, str(LINUX_V2["id"]))
    upgrade(client, name, ["0"])
    after = disks(client, name)
    assert after["0"] != before["0"] and after["1"] == before["1"]
    upgrade(client, name, ["0"])  # already on the latest model: Compute leaves it alone
    assert disks(client, name)["0"] == after["0"]


def test_the_disk_changes_as_the_operation_starts(sandbox: Sandbox, client: ComputeManagementClient) -> None:
    name = sandbox.new_scale_set(capacity=1)
    before = disks(client, name)["0"]
    poller = client.virtual_machine_scale_sets.begin_reimage(
        RG,
        name,
        vm_scale_set_reimage_input=VirtualMachineScaleSetReimageParameters(instance_ids=["0"]),
        polling_interval=0.05,
    )
    vm = client.virtual_machine_scale_set_vms.get(RG, name, "0")
    assert vm_props(vm).provisioning_state == "Updating" and os_disk(vm) != before
    record = next(p for k, p in sandbox.events_for(name, "reimage_started"))
    assert record["instance_id"] == "0"
    history = [r for r in sandbox.world.history.records() if r["kind"] == "reimage_started"]
    assert history[-1]["os_disk"] == os_disk(vm)[0]
    poller.result(timeout=30)


# ----------------------------------------------------------------------------- ambiguous answers


@pytest.mark.parametrize("status", [500, 408, 409])
def test_accept_then_fail_starts_the_operation_and_answers_an_error(
    sandbox: Sandbox, client: ComputeManagementClient, status: int
) -> None:
    name = sandbox.new_scale_set(capacity=2)
    before = disks(client, name)
    sandbox.state.faults.accept_then_fail("reimage", status=status)
    with pytest.raises(HttpResponseError) as err:
        client.virtual_machine_scale_sets.begin_reimage(
            RG,
            name,
            vm_scale_set_reimage_input=VirtualMachineScaleSetReimageParameters(instance_ids=["0", "1"]),
        )
    assert err.value.status_code == status
    assert started(sandbox, name) == ["0", "1"]  # it happened all the same
    assert all(d != before[i] for i, d in disks(client, name).items())
    wait_for(lambda: len(sandbox.events_for(name, "reimage_completed")) == 2, timeout=10)
    entry = [e for e in sandbox.server.request_log if e["scale_set"] == name and e["write"]][-1]
    assert entry["status"] == status and entry["fault"] == "accept_then_fail"
    # Only the next write was touched: a second one is answered as usual.
    reimage(client, name, ["0"])


def test_accept_then_drop_starts_the_operation_and_never_answers(
    sandbox: Sandbox, client: ComputeManagementClient
) -> None:
    name = sandbox.new_scale_set(capacity=1)
    before = disks(client, name)["0"]
    sandbox.state.faults.accept_then_drop("manualupgrade", after=0.5)
    point_model_at(client, name, str(LINUX_V2["id"]))
    with pytest.raises(ServiceResponseError):
        client.virtual_machine_scale_sets.begin_update_instances(
            RG, name, vm_instance_i_ds=VirtualMachineScaleSetVMInstanceRequiredIDs(instance_ids=["0"])
        )
    assert started(sandbox, name) == ["0"] and disks(client, name)["0"] != before
    entry = [e for e in sandbox.server.request_log if e["scale_set"] == name and e["write"]][-1]
    assert entry["status"] == 0 and entry["fault"] == "accept_then_drop"


def test_accept_then_drop_looks_like_a_read_timeout_to_a_client_that_gives_up_first(
    sandbox: Sandbox,
) -> None:
    name = sandbox.new_scale_set(capacity=1)
    impatient = ComputeManagementClient(
        DefaultAzureCredential(), SUB, base_url=sandbox.server.url, retry_total=0, read_timeout=0.5
    )
    impatient.virtual_machine_scale_sets.get(RG, name)  # a token first, outside the timed call
    sandbox.state.faults.accept_then_drop("reimage", after=30)
    with pytest.raises(ServiceResponseError):
        impatient.virtual_machine_scale_sets.begin_reimage(
            RG, name, vm_scale_set_reimage_input=VirtualMachineScaleSetReimageParameters(instance_ids=["0"])
        )
    assert started(sandbox, name) == ["0"]


def test_a_held_write_is_accepted_once_released(sandbox: Sandbox, client: ComputeManagementClient) -> None:
    name = sandbox.new_scale_set(capacity=1)
    sandbox.state.faults.hold_next("reimage")
    poller = []

    def send() -> None:
        poller.append(
            client.virtual_machine_scale_sets.begin_reimage(
                RG,
                name,
                vm_scale_set_reimage_input=VirtualMachineScaleSetReimageParameters(instance_ids=["0"]),
                polling_interval=0.05,
            )
        )

    thread = threading.Thread(target=send)
    thread.start()
    held = sandbox.state.faults.wait_held(timeout=10)
    assert held.operation == "reimage" and not held.outcome
    assert started(sandbox, name) == []  # ARM has not seen it
    assert held.client_pid([os.getpid()]) == os.getpid()
    held.release()
    thread.join(timeout=10)
    assert held.wait(5) == "accepted" and started(sandbox, name) == ["0"]
    poller[0].result(timeout=30)


_SEND_WRITE = """
import json, sys, requests
url, token, ca, body = sys.argv[1:5]
auth = {"Authorization": "Bearer " + token}
requests.post(url, headers=auth, json=json.loads(body), verify=ca, timeout=120)
"""


def test_a_held_write_whose_client_is_killed_is_never_accepted(
    sandbox: Sandbox, client: ComputeManagementClient
) -> None:
    name = sandbox.new_scale_set(capacity=2)
    before = disks(client, name)
    sandbox.state.faults.hold_next("reimage")
    url = f"{sandbox.server.url}{vmss_path(name)}/reimage?api-version=2024-07-01"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _SEND_WRITE,
            url,
            sandbox.server.issue_token(),
            str(sandbox.tls.ca_path),
            json.dumps({"instanceIds": ["0", "1"]}),
        ]
    )
    try:
        held = sandbox.state.faults.wait_held(timeout=20)
        assert held.client_pid([proc.pid]) == proc.pid
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert held.wait(5) == "abandoned"
    finally:
        if proc.poll() is None:
            proc.kill()
    assert started(sandbox, name) == [] and disks(client, name) == before
    entry = [e for e in sandbox.server.request_log if e["scale_set"] == name and e["write"]][-1]
    assert entry["status"] == 0 and entry["fault"] == "held_abandoned"


def test_ambiguous_write_faults_only_target_writes_that_start_operations(sandbox: Sandbox) -> None:
    with pytest.raises(ValueError):
        sandbox.state.faults.accept_then_fail("get_vm")
    with pytest.raises(ValueError):
        sandbox.state.faults.hold_next("poll")


def test_half_a_reimage_body_is_never_acted_on(sandbox: Sandbox, client: ComputeManagementClient) -> None:
    import socket
    import ssl

    name = sandbox.new_scale_set(capacity=3)
    before = disks(client, name)
    host, port = sandbox.server.url.removeprefix("https://").split(":")
    body = json.dumps({"instanceIds": ["0"]}).encode()
    request = (
        f"POST {vmss_path(name)}/reimage?api-version=2024-07-01 HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\nAuthorization: Bearer {sandbox.server.issue_token()}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    context = ssl.create_default_context(cafile=str(sandbox.tls.ca_path))
    with (
        socket.create_connection((host, int(port))) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        # The client dies after the headers, before its body: read as the whole body, what
        # arrived is empty, and an empty reimage body means "every instance".
        tls.sendall(request)
    time.sleep(0.5)  # a handler acting on it would have started the operation by now
    assert started(sandbox, name) == [] and disks(client, name) == before

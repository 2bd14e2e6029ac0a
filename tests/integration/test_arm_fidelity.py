"""Fidelity of the simulated ARM (sandbox/arm/) as seen by the real Azure SDK.

Everything here goes through the unmodified ``ComputeManagementClient`` and the real
azure-identity credentials over HTTPS: if these pass, app code that works against the
sandbox makes the same calls, and handles the same responses, as it would in Azure.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ResourceNotFoundError
from azure.identity import DefaultAzureCredential, ManagedIdentityCredential
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.compute.models import (
    ImageReference,
    Sku,
    VirtualMachineScaleSet,
    VirtualMachineScaleSetReimageParameters,
    VirtualMachineScaleSetUpdate,
    VirtualMachineScaleSetUpdateProperties,
    VirtualMachineScaleSetUpdateStorageProfile,
    VirtualMachineScaleSetUpdateVMProfile,
    VirtualMachineScaleSetVM,
    VirtualMachineScaleSetVMInstanceRequiredIDs,
    VirtualMachineScaleSetVMProperties,
)

from sandbox.arm import ArmServer, ComputeDurations, ComputeState
from sandbox.tls import SandboxTLS
from sandbox.world import World
from tests.integration.arm_helpers import admin_credential, serving_arm

pytestmark = pytest.mark.integration

SUB = "3f2a9c1e-7b4d-4e21-9a55-0c8d2e6f1b70"
RG = "rg-k8s-prod-weu"
LINUX = "k8s-linux-12345678-vmss"
WINDOWS = "k8swin"
SCOPE = "https://management.azure.com/.default"
POLL = 0.05  # seconds; Compute's status polls carry no Retry-After, so this drives polling
GALLERY = (
    "/subscriptions/" + SUB + "/resourceGroups/images/providers/Microsoft.Compute/galleries/nodes/images"
)
LINUX_V1 = {"id": f"{GALLERY}/ubuntu2204/versions/1.0.0"}
LINUX_V2 = {"id": f"{GALLERY}/ubuntu2204/versions/1.1.0"}
WINDOWS_V1 = {
    "publisher": "MicrosoftWindowsServer",
    "offer": "WindowsServer",
    "sku": "2022-datacenter",
    "version": "1.0.0",
}


@dataclass
class Sandbox:
    world: World
    state: ComputeState
    server: ArmServer
    tls: SandboxTLS
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    counter: Iterator[int] = field(default_factory=itertools.count)

    def record(self, kind: str, payload: dict[str, Any]) -> None:
        with self.lock:
            self.events.append((kind, payload))

    def events_for(self, scale_set: str, *kinds: str) -> list[tuple[str, dict[str, Any]]]:
        with self.lock:
            return [
                (k, p) for k, p in self.events if p["scale_set"] == scale_set and (not kinds or k in kinds)
            ]

    def new_scale_set(self, capacity: int = 3, **kw: Any) -> str:
        """An isolated scale set (own instances, own write bucket) for tests that mutate."""
        name = f"vmss{next(self.counter)}"
        self.state.add_scale_set(
            resource_group=RG,
            name=name,
            os_type="Linux",
            capacity=capacity,
            image_reference=LINUX_V1,
            computer_name_prefix=f"{name}-",
            **kw,
        )
        return name

    def token(self) -> str:
        return ManagedIdentityCredential().get_token(SCOPE).token

    def raw(self, method: str, path: str, *, token: str | None = None, **kw: Any) -> requests.Response:
        headers = kw.pop("headers", {})
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return requests.request(
            method, self.server.url + path, headers=headers, verify=str(self.tls.ca_path), **kw
        )


def wait_for(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    # Listeners run just after the state lock is released, so a poller may see the
    # operation finish a moment before the event arrives.
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.01)


def vm_props(vm: VirtualMachineScaleSetVM) -> VirtualMachineScaleSetVMProperties:
    assert vm.properties is not None
    return vm.properties


def computer_name_of(vm: VirtualMachineScaleSetVM) -> str | None:
    os_profile = vm_props(vm).os_profile
    return os_profile.computer_name if os_profile else None


def model_image_id(vmss: VirtualMachineScaleSet) -> str | None:
    profile = vmss.properties.virtual_machine_profile if vmss.properties else None
    storage = profile.storage_profile if profile else None
    image = storage.image_reference if storage else None
    return image.id if image else None


def response_headers(err: HttpResponseError) -> Any:
    assert err.response is not None
    return err.response.headers  # type: ignore[attr-defined]  # typed as the common response API


def vmss_path(name: str) -> str:
    return (
        f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/virtualMachineScaleSets/{name}"
    )


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    tmp: Path = tmp_path_factory.mktemp("arm")
    world = World(time_scale=0.01, history_path=tmp / "history.jsonl")
    # Shorter than the defaults so the whole module stays fast: 1 s reimages at this scale.
    state = ComputeState(
        world,
        subscription_id=SUB,
        durations=ComputeDurations(reimage=100, model_update=20, scale=50, delete=30),
    )
    state.add_scale_set(
        resource_group=RG,
        name=LINUX,
        os_type="Linux",
        capacity=11,
        image_reference=LINUX_V1,
        computer_name_prefix=LINUX,
        zones=["1", "2", "3"],
        tags={"poolName": "linux"},
    )
    state.add_scale_set(
        resource_group=RG,
        name=WINDOWS,
        os_type="Windows",
        capacity=2,
        image_reference=WINDOWS_V1,
        computer_name_prefix=WINDOWS,
    )
    with serving_arm(world, state, tmp) as (server, tls):
        sb = Sandbox(world, state, server, tls)
        state.add_listener(sb.record)
        yield sb


@pytest.fixture(scope="module")
def client(sandbox: Sandbox) -> ComputeManagementClient:
    return ComputeManagementClient(admin_credential(sandbox.server), SUB, base_url=sandbox.server.url)


@pytest.fixture(scope="module")
def no_retry_client(sandbox: Sandbox) -> ComputeManagementClient:
    """Sees every error response as is, instead of azure-core's automatic retries."""
    return ComputeManagementClient(
        admin_credential(sandbox.server), SUB, base_url=sandbox.server.url, retry_total=0
    )


# ----------------------------------------------------------------------------- identity


def test_managed_identity_and_default_credential_get_tokens_from_the_app_service_endpoint(
    sandbox: Sandbox,
) -> None:
    for credential in (ManagedIdentityCredential(), DefaultAzureCredential()):
        token = credential.get_token(SCOPE)
        assert token.expires_on > time.time() + 3600
        # The token works on ARM: proof that it was issued by this server, over HTTPS
        # trusted only through REQUESTS_CA_BUNDLE (requests honours it because azure-core
        # leaves Session.trust_env on).
        assert (
            sandbox.raw("GET", vmss_path(LINUX), token=token.token, params={"api-version": "x"}).status_code
            == 200
        )
    msi = [e for e in sandbox.server.request_log if e["operation"] == "msi_token"]
    assert msi and msi[-1]["status"] == 200
    assert msi[-1]["query"]["api-version"] == "2019-08-01"


def test_identity_endpoint_checks_the_secret_header_and_answers_the_2019_08_01_shape(
    sandbox: Sandbox,
) -> None:
    params = {"api-version": "2019-08-01", "resource": "https://management.azure.com/"}
    assert sandbox.raw("GET", "/msi/token", params=params).status_code == 400
    wrong = sandbox.raw("GET", "/msi/token", params=params, headers={"X-IDENTITY-HEADER": "nope"})
    assert wrong.status_code == 401
    ok = sandbox.raw(
        "GET", "/msi/token", params=params, headers={"X-IDENTITY-HEADER": sandbox.server.identity_header}
    )
    assert ok.status_code == 200
    body = ok.json()
    assert set(body) == {"access_token", "expires_on", "resource", "token_type", "client_id"}
    assert body["token_type"] == "Bearer" and body["expires_on"].isdigit()
    assert body["resource"] == "https://management.azure.com/"


def test_arm_requests_without_a_token_issued_by_the_server_get_401(sandbox: Sandbox) -> None:
    anonymous = sandbox.raw("GET", vmss_path(LINUX), params={"api-version": "2024-07-01"})
    assert anonymous.status_code == 401
    assert anonymous.json()["error"]["code"] == "AuthenticationFailed"
    assert "Bearer" in anonymous.headers["WWW-Authenticate"]

    class ForgedCredential:
        def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            return AccessToken("forged-token", int(time.time()) + 3600)

    forged = ComputeManagementClient(ForgedCredential(), SUB, base_url=sandbox.server.url)
    with pytest.raises(ClientAuthenticationError) as exc:
        forged.virtual_machine_scale_sets.get(RG, LINUX)
    assert exc.value.status_code == 401
    assert exc.value.error is not None and exc.value.error.code == "InvalidAuthenticationToken"


def test_requests_without_api_version_are_rejected(sandbox: Sandbox) -> None:
    resp = sandbox.raw("GET", vmss_path(LINUX), token=sandbox.token())
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "MissingApiVersionParameter"


# ----------------------------------------------------------------------------- reads


def test_unknown_resources_answer_arm_not_found_bodies(client: ComputeManagementClient) -> None:
    cases: list[tuple[Callable[[], object], str]] = [
        (lambda: client.virtual_machine_scale_sets.get(RG, "missing"), "ResourceNotFound"),
        (lambda: client.virtual_machine_scale_set_vms.get(RG, "missing", "0"), "ParentResourceNotFound"),
        (lambda: client.virtual_machine_scale_set_vms.get(RG, LINUX, "999"), "ResourceNotFound"),
        (lambda: client.virtual_machine_scale_sets.get("no-such-rg", LINUX), "ResourceGroupNotFound"),
    ]
    for call, code in cases:
        with pytest.raises(ResourceNotFoundError) as exc:
            call()
        assert exc.value.status_code == 404
        assert exc.value.error is not None and exc.value.error.code == code


def test_scale_set_reads_describe_a_uniform_manual_scale_set(client: ComputeManagementClient) -> None:
    # Resource group names are case-insensitive in ARM (cloud-provider-azure lower-cases them).
    vmss = client.virtual_machine_scale_sets.get(RG.lower(), LINUX)
    assert vmss.name == LINUX and vmss.location == "westeurope"
    assert vmss.sku is not None and vmss.sku.capacity == 11
    props = vmss.properties
    assert props is not None and props.orchestration_mode == "Uniform"
    assert props.upgrade_policy is not None and props.upgrade_policy.mode == "Manual"
    profile = props.virtual_machine_profile
    assert profile is not None and profile.os_profile is not None
    assert profile.os_profile.computer_name_prefix == LINUX
    assert profile.storage_profile is not None and profile.storage_profile.image_reference is not None
    assert profile.storage_profile.image_reference.id == LINUX_V1["id"]
    in_rg = {s.name for s in client.virtual_machine_scale_sets.list(RG)}
    everywhere = {s.name for s in client.virtual_machine_scale_sets.list_all()}
    assert {LINUX, WINDOWS} <= in_rg <= everywhere


def test_vm_list_follows_absolute_next_links_and_keeps_the_instance_view(
    sandbox: Sandbox, client: ComputeManagementClient
) -> None:
    sandbox.state.page_size = 4
    try:
        before = len(sandbox.server.request_log)
        vms = list(client.virtual_machine_scale_set_vms.list(RG, LINUX, expand="instanceView"))
        pages = [e for e in sandbox.server.request_log[before:] if e["operation"] == "list_vms"]
        first_page = sandbox.raw(
            "GET",
            vmss_path(LINUX) + "/virtualMachines",
            token=sandbox.token(),
            params={"api-version": "2024-07-01", "$expand": "instanceView"},
        ).json()
    finally:
        sandbox.state.page_size = 50
    assert [vm.instance_id for vm in vms] == [str(i) for i in range(11)]
    assert all(vm.instance_view is not None and vm.instance_view.statuses for vm in vms)
    assert len(pages) == 3
    assert all("$skiptoken" in e["query"] and e["query"]["$expand"] == "instanceView" for e in pages[1:])
    assert len(first_page["value"]) == 4
    assert first_page["nextLink"].startswith(sandbox.server.url + "/subscriptions/")


def test_vm_and_instance_view_report_base36_computer_names_and_power_state(
    client: ComputeManagementClient,
) -> None:
    vm = client.virtual_machine_scale_set_vms.get(RG, LINUX, "10", expand="instanceView")
    assert vm.name == f"{LINUX}_10"
    assert vm.id is not None and vm.id.endswith(f"/virtualMachineScaleSets/{LINUX}/virtualMachines/10")
    assert vm.zones == ["2"]
    props = vm.properties
    assert props is not None and props.latest_model_applied is True
    assert props.provisioning_state == "Succeeded"
    assert props.os_profile is not None and props.os_profile.computer_name == f"{LINUX}00000a"
    assert props.storage_profile is not None and props.storage_profile.os_disk is not None
    assert props.storage_profile.os_disk.os_type == "Linux"
    view = client.virtual_machine_scale_set_vms.get_instance_view(RG, LINUX, "10")
    assert view.computer_name == f"{LINUX}00000a" and view.os_name
    assert [s.code for s in view.statuses or []] == ["ProvisioningState/succeeded", "PowerState/running"]
    windows = [computer_name_of(v) for v in client.virtual_machine_scale_set_vms.list(RG, WINDOWS)]
    assert windows == ["k8swin000000", "k8swin000001"]


def test_responses_carry_request_ids_and_compute_rate_limit_headers(sandbox: Sandbox) -> None:
    resp = sandbox.raw("GET", vmss_path(LINUX), token=sandbox.token(), params={"api-version": "2024-07-01"})
    assert resp.headers["x-ms-request-id"] and resp.headers["x-ms-correlation-request-id"]
    policy, _, remaining = resp.headers["x-ms-ratelimit-remaining-resource"].partition(";")
    assert policy.startswith("Microsoft.Compute/") and remaining.isdigit()


# ----------------------------------------------------------------------------- long-running operations


def test_batch_reimage_keeps_instances_updating_until_the_lro_succeeds(
    sandbox: Sandbox, client: ComputeManagementClient
) -> None:
    name = sandbox.new_scale_set()
    poller = client.virtual_machine_scale_sets.begin_reimage(
        RG,
        name,
        VirtualMachineScaleSetReimageParameters(instance_ids=["0", "1"]),
        polling_interval=POLL,
    )
    busy = client.virtual_machine_scale_set_vms.get(RG, name, "0", expand="instanceView")
    assert busy.properties is not None and busy.properties.provisioning_state == "Updating"
    assert busy.properties.instance_view is not None
    assert "PowerState/starting" in [s.code for s in busy.properties.instance_view.statuses or []]
    idle = client.virtual_machine_scale_set_vms.get(RG, name, "2")
    assert idle.properties is not None and idle.properties.provisioning_state == "Succeeded"

    assert poller.result(timeout=10) is None
    assert poller.status() == "Succeeded"
    for iid in ("0", "1"):
        vm = client.virtual_machine_scale_set_vms.get(RG, name, iid, expand="instanceView")
        assert vm.properties is not None and vm.properties.provisioning_state == "Succeeded"
        assert vm.properties.instance_view is not None
        assert [s.code for s in vm.properties.instance_view.statuses or []][-1] == "PowerState/running"
    wait_for(lambda: len(sandbox.events_for(name, "reimage_completed")) == 2)
    kinds = [k for k, _ in sandbox.events_for(name)]
    assert kinds == ["reimage_started"] * 2 + ["reimage_completed"] * 2
    started = sandbox.events_for(name, "reimage_started")[0][1]
    assert started["computer_name"] == f"{name}-000000" and started["os_type"] == "Linux"
    assert started["image_reference"] == LINUX_V1
    history = [r["kind"] for r in sandbox.world.history.records() if r.get("scale_set") == name]
    assert history.count("reimage_completed") == 2


def test_reimage_poller_resumes_from_a_continuation_token_in_a_new_client(
    sandbox: Sandbox, client: ComputeManagementClient
) -> None:
    name = sandbox.new_scale_set(capacity=1)
    token = client.virtual_machine_scale_sets.begin_reimage(
        RG, name, VirtualMachineScaleSetReimageParameters(instance_ids=["0"]), polling_interval=POLL
    ).continuation_token()
    # A different process would build its own client and credential from scratch.
    other = ComputeManagementClient(admin_credential(sandbox.server), SUB, base_url=sandbox.server.url)
    resumed = other.virtual_machine_scale_sets.begin_reimage(
        RG, name, continuation_token=token, polling_interval=POLL
    )
    resumed.result(timeout=10)
    vm = other.virtual_machine_scale_set_vms.get(RG, name, "0")
    assert vm.properties is not None and vm.properties.provisioning_state == "Succeeded"


def test_manual_upgrade_applies_the_new_model_while_plain_reimage_keeps_the_old_image(
    sandbox: Sandbox, client: ComputeManagementClient
) -> None:
    name = sandbox.new_scale_set()
    update = VirtualMachineScaleSetUpdate(
        properties=VirtualMachineScaleSetUpdateProperties(
            virtual_machine_profile=VirtualMachineScaleSetUpdateVMProfile(
                storage_profile=VirtualMachineScaleSetUpdateStorageProfile(
                    image_reference=ImageReference(id=LINUX_V2["id"])
                )
            )
        )
    )
    updated = client.virtual_machine_scale_sets.begin_update(RG, name, update, polling_interval=POLL).result(
        timeout=10
    )
    assert updated.properties is not None and updated.properties.provisioning_state == "Succeeded"
    assert model_image_id(updated) == LINUX_V2["id"]
    wait_for(lambda: bool(sandbox.events_for(name, "model_updated")))
    assert sandbox.events_for(name, "model_updated")[0][1]["image_reference"] == LINUX_V2

    def vm(iid: str) -> tuple[bool | None, str | None, str | None]:
        props = vm_props(client.virtual_machine_scale_set_vms.get(RG, name, iid))
        image = props.storage_profile.image_reference if props.storage_profile else None
        return props.latest_model_applied, image.id if image else None, props.provisioning_state

    assert vm("0") == (False, LINUX_V1["id"], "Succeeded")
    # Reimage without exactVersion restores the image the instance already runs.
    client.virtual_machine_scale_sets.begin_reimage(
        RG, name, VirtualMachineScaleSetReimageParameters(instance_ids=["2"]), polling_interval=POLL
    ).result(timeout=10)
    assert vm("2") == (False, LINUX_V1["id"], "Succeeded")

    poller = client.virtual_machine_scale_sets.begin_update_instances(
        RG, name, VirtualMachineScaleSetVMInstanceRequiredIDs(instance_ids=["0", "1"]), polling_interval=POLL
    )
    assert vm("0")[2] == "Updating"
    poller.result(timeout=10)
    assert vm("0") == (True, LINUX_V2["id"], "Succeeded")
    assert vm("1") == (True, LINUX_V2["id"], "Succeeded")
    assert vm("2")[0] is False
    stale = client.virtual_machine_scale_set_vms.list(
        RG, name, filter="properties/latestModelApplied eq false"
    )
    assert [v.instance_id for v in stale] == ["2"]


def test_put_with_a_new_image_version_changes_the_model_and_etag(
    sandbox: Sandbox, client: ComputeManagementClient
) -> None:
    name = sandbox.new_scale_set(capacity=1)
    vmss = client.virtual_machine_scale_sets.get(RG, name)
    old_etag = vmss.etag
    profile = vmss.properties.virtual_machine_profile if vmss.properties else None
    assert profile is not None and profile.storage_profile is not None
    profile.storage_profile.image_reference = ImageReference(id=LINUX_V2["id"])
    poller = client.virtual_machine_scale_sets.begin_create_or_update(RG, name, vmss, polling_interval=POLL)
    result = poller.result(timeout=10)
    assert result.etag != old_etag
    assert model_image_id(result) == LINUX_V2["id"]
    props = client.virtual_machine_scale_set_vms.get(RG, name, "0").properties
    assert props is not None and props.latest_model_applied is False


def test_per_vm_reimage_is_its_own_lro(sandbox: Sandbox, client: ComputeManagementClient) -> None:
    name = sandbox.new_scale_set(capacity=2)
    poller = client.virtual_machine_scale_set_vms.begin_reimage(RG, name, "1", polling_interval=POLL)
    props = client.virtual_machine_scale_set_vms.get(RG, name, "1").properties
    assert props is not None and props.provisioning_state == "Updating"
    poller.result(timeout=10)
    props = client.virtual_machine_scale_set_vms.get(RG, name, "1").properties
    assert props is not None and props.provisioning_state == "Succeeded"
    reimage_posts = [
        e for e in sandbox.server.request_log if e["scale_set"] == name and e["operation"] == "reimage"
    ]
    assert len(reimage_posts) == 1 and reimage_posts[0]["path"].endswith("/virtualMachines/1/reimage")


def test_writes_naming_unknown_instances_are_invalid_parameters(
    sandbox: Sandbox, client: ComputeManagementClient
) -> None:
    with pytest.raises(HttpResponseError) as exc:
        client.virtual_machine_scale_sets.begin_reimage(
            RG, LINUX, VirtualMachineScaleSetReimageParameters(instance_ids=["0", "77"])
        )
    assert exc.value.status_code == 400
    assert exc.value.error is not None and exc.value.error.code == "InvalidParameter"
    assert "instanceId 77 is not an active" in str(exc.value.error.message)
    missing_ids = sandbox.raw(
        "POST",
        vmss_path(LINUX) + "/manualupgrade",
        token=sandbox.token(),
        params={"api-version": "2024-07-01"},
    )
    assert missing_ids.status_code == 400 and missing_ids.json()["error"]["target"] == "instanceIds"


def test_a_second_reimage_of_a_busy_instance_preempts_the_first(
    sandbox: Sandbox, client: ComputeManagementClient
) -> None:
    name = sandbox.new_scale_set(capacity=1)
    first = client.virtual_machine_scale_sets.begin_reimage(
        RG, name, VirtualMachineScaleSetReimageParameters(instance_ids=["0"]), polling_interval=POLL
    )
    second = client.virtual_machine_scale_set_vms.begin_reimage(RG, name, "0", polling_interval=POLL)
    with pytest.raises(HttpResponseError) as exc:
        first.result(timeout=10)
    assert exc.value.error is not None and exc.value.error.code == "OperationPreempted"
    second.result(timeout=10)
    props = client.virtual_machine_scale_set_vms.get(RG, name, "0").properties
    assert props is not None and props.provisioning_state == "Succeeded"
    wait_for(lambda: len(sandbox.events_for(name, "reimage_completed")) == 1)
    assert len(sandbox.events_for(name, "reimage_started")) == 2


def test_deleting_instances_blocks_other_writes_and_then_removes_them(
    sandbox: Sandbox, client: ComputeManagementClient
) -> None:
    name = sandbox.new_scale_set(capacity=3)
    deleting = client.virtual_machine_scale_sets.begin_delete_instances(
        RG, name, VirtualMachineScaleSetVMInstanceRequiredIDs(instance_ids=["2"]), polling_interval=POLL
    )
    with pytest.raises(HttpResponseError) as exc:
        client.virtual_machine_scale_sets.begin_reimage(
            RG, name, VirtualMachineScaleSetReimageParameters(instance_ids=["2"])
        )
    assert exc.value.status_code == 409
    assert exc.value.error is not None and exc.value.error.code == "OperationNotAllowed"
    deleting.result(timeout=10)
    with pytest.raises(ResourceNotFoundError):
        client.virtual_machine_scale_set_vms.get(RG, name, "2")
    assert client.virtual_machine_scale_sets.get(RG, name).sku.capacity == 2  # type: ignore[union-attr]
    wait_for(lambda: bool(sandbox.events_for(name, "instance_deleted")))
    assert sandbox.events_for(name, "instance_deleted")[0][1]["computer_name"] == f"{name}-000002"


def test_scale_out_creates_instances_with_base36_computer_names_and_scale_in_removes_the_highest(
    sandbox: Sandbox, client: ComputeManagementClient
) -> None:
    name = sandbox.new_scale_set(capacity=10, zones=["1", "2", "3"])
    poller = client.virtual_machine_scale_sets.begin_update(
        RG, name, VirtualMachineScaleSetUpdate(sku=Sku(capacity=12)), polling_interval=POLL
    )
    creating = client.virtual_machine_scale_set_vms.get(RG, name, "11").properties
    assert creating is not None and creating.provisioning_state == "Creating"
    poller.result(timeout=10)
    wait_for(lambda: len(sandbox.events_for(name, "instance_created")) == 2)
    created = {p["instance_id"]: p for _, p in sandbox.events_for(name, "instance_created")}
    assert created["10"]["computer_name"] == f"{name}-00000a"
    assert created["11"]["computer_name"] == f"{name}-00000b"
    assert created["10"]["zone"] == "2" and created["11"]["zone"] == "3"
    assert created["10"]["image_reference"] == LINUX_V1

    client.virtual_machine_scale_sets.begin_update(
        RG, name, VirtualMachineScaleSetUpdate(sku=Sku(capacity=11)), polling_interval=POLL
    ).result(timeout=10)
    ids = [vm.instance_id for vm in client.virtual_machine_scale_set_vms.list(RG, name)]
    assert ids == [str(i) for i in range(11)]
    wait_for(lambda: [p["instance_id"] for _, p in sandbox.events_for(name, "instance_deleted")] == ["11"])


# ----------------------------------------------------------------------------- throttling and faults


def test_write_limit_answers_429_on_the_13th_rapid_write_and_refills(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its own world at a slower scale: one token per 1.5 s, so "rapid" cannot be outrun
    # by the refill on a loaded machine, while the refill wait stays short.
    world = World(time_scale=0.1)
    state = ComputeState(world, subscription_id=SUB)
    for name in ("busy", "quiet"):
        state.add_scale_set(
            resource_group=RG,
            name=name,
            os_type="Linux",
            capacity=1,
            image_reference=LINUX_V1,
            computer_name_prefix=name,
        )
    server = ArmServer(state, tls=sandbox.tls)
    server.start()
    # Tokens are only valid on the server that issued them: use this server's identity endpoint.
    monkeypatch.setenv("IDENTITY_ENDPOINT", server.identity_endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", server.identity_header)
    try:
        strict = ComputeManagementClient(admin_credential(server), SUB, base_url=server.url, retry_total=0)
        patient = ComputeManagementClient(admin_credential(server), SUB, base_url=server.url)

        def write(c: ComputeManagementClient, name: str, n: int) -> object:
            update = VirtualMachineScaleSetUpdate(tags={"n": str(n)})
            return c.virtual_machine_scale_sets.begin_update(RG, name, update, polling=False)

        for n in range(12):
            write(strict, "busy", n)
        with pytest.raises(HttpResponseError) as exc:
            write(strict, "busy", 12)
        err = exc.value
        assert err.status_code == 429
        assert err.error is not None and err.error.code == "OperationNotAllowed"
        assert err.error.details and err.error.details[0].code == "TooManyRequests"
        headers = response_headers(err)
        retry_after = int(headers["Retry-After"])
        assert 1 <= retry_after <= 2
        assert headers["x-ms-ratelimit-remaining-resource"] == "Microsoft.Compute/VMScaleSetActions3Min;0"

        write(strict, "quiet", 0)  # the bucket is per scale set

        # azure-core's RetryPolicy honours Retry-After, so a default client just waits.
        before = len(server.request_log)
        write(patient, "busy", 13)
        statuses = [e["status"] for e in server.request_log[before:] if e["scale_set"] == "busy"]
        assert statuses[0] == 429 and statuses[-1] == 200

        time.sleep(retry_after)
        write(strict, "busy", 14)
    finally:
        server.stop()
        world.close()


def test_fail_next_answers_with_the_injected_status_code_and_retry_after(
    sandbox: Sandbox, client: ComputeManagementClient, no_retry_client: ComputeManagementClient
) -> None:
    faults = sandbox.state.faults
    before = len(sandbox.server.request_log)
    faults.fail_next("get_vm", status=500)
    vm = client.virtual_machine_scale_set_vms.get(RG, LINUX, "3")  # a 500 on GET is retried by azure-core
    assert vm.instance_id == "3"
    assert [e["status"] for e in sandbox.server.request_log[before:] if e["operation"] == "get_vm"] == [
        500,
        200,
    ]

    faults.fail_next("get_scale_set", status=503, code="ServiceUnavailable", retry_after=1)
    with pytest.raises(HttpResponseError) as exc:
        no_retry_client.virtual_machine_scale_sets.get(RG, LINUX)
    assert exc.value.status_code == 503
    assert response_headers(exc.value)["Retry-After"] == "1"
    assert exc.value.error is not None and exc.value.error.code == "ServiceUnavailable"

    faults.fail_next("reimage", status=409, code="OperationNotAllowed")
    with pytest.raises(HttpResponseError) as exc:
        client.virtual_machine_scale_sets.begin_reimage(
            RG, LINUX, VirtualMachineScaleSetReimageParameters(instance_ids=["3"])
        )
    assert exc.value.status_code == 409
    assert exc.value.error is not None and exc.value.error.code == "OperationNotAllowed"
    props = client.virtual_machine_scale_set_vms.get(RG, LINUX, "3").properties
    assert props is not None and props.provisioning_state == "Succeeded"  # nothing happened


def test_fail_lro_ends_the_operation_failed_and_the_poller_raises_with_its_code(
    sandbox: Sandbox, client: ComputeManagementClient
) -> None:
    name = sandbox.new_scale_set(capacity=1)
    sandbox.state.faults.fail_lro("reimage", code="InternalExecutionError")
    poller = client.virtual_machine_scale_sets.begin_reimage(
        RG, name, VirtualMachineScaleSetReimageParameters(instance_ids=["0"]), polling_interval=POLL
    )
    with pytest.raises(HttpResponseError) as exc:
        poller.result(timeout=10)
    assert exc.value.error is not None and exc.value.error.code == "InternalExecutionError"
    vm = client.virtual_machine_scale_set_vms.get(RG, name, "0", expand="instanceView")
    assert vm.properties is not None and vm.properties.provisioning_state == "Failed"
    assert vm.properties.instance_view is not None
    codes = [s.code for s in vm.properties.instance_view.statuses or []]
    assert codes[0] == "ProvisioningState/failed/InternalExecutionError"
    wait_for(lambda: bool(sandbox.events_for(name, "reimage_failed")))

    # A failed instance is repaired by reimaging it again.
    client.virtual_machine_scale_sets.begin_reimage(
        RG, name, VirtualMachineScaleSetReimageParameters(instance_ids=["0"]), polling_interval=POLL
    ).result(timeout=10)
    props = client.virtual_machine_scale_set_vms.get(RG, name, "0").properties
    assert props is not None and props.provisioning_state == "Succeeded"

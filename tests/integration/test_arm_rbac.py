"""The simulated ARM authorizes the app's managed identity as ARM does, against the role
assignments infra/ declares: through the real SDK, a request outside the grants is 403
AuthorizationFailed, a model write pointing at an image the identity cannot read is 403
LinkedAuthorizationFailed, and a second subscription is served beside the first."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from azure.core.exceptions import HttpResponseError
from azure.identity import ManagedIdentityCredential
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.compute.models import (
    ImageReference,
    VirtualMachineScaleSetUpdate,
    VirtualMachineScaleSetUpdateProperties,
    VirtualMachineScaleSetUpdateStorageProfile,
    VirtualMachineScaleSetUpdateVMProfile,
)

from sandbox.arm import ArmServer, ComputeDurations, ComputeState
from sandbox.world import World
from shared.adapters.compute import ComputeClient
from shared.errors import PermanentError
from tests.integration.arm_helpers import admin_credential, serving_arm

pytestmark = pytest.mark.integration

SUB = "6a7b8c9d-0e1f-4a2b-9c3d-4e5f6a7b8c9d"
IMAGES_SUB = "1b2c3d4e-5f6a-4b7c-8d9e-0f1a2b3c4d5e"
RG = "rg-nodes"
IMAGES_RG = "rg-images"
GRANTED, OTHER = "vmss-granted", "vmss-other"
POLL = 0.05
AUDIENCE = "https://management.azure.com"


@dataclass
class Arm:
    server: ArmServer
    state: ComputeState
    images: ComputeState
    granted_image: str  # an image version in a gallery the deployment names
    hidden_image: str  # one in a gallery it does not

    def app(self, subscription: str = SUB) -> ComputeManagementClient:
        return ComputeManagementClient(ManagedIdentityCredential(), subscription, base_url=self.server.url)


def group_id(subscription: str, group: str) -> str:
    return f"/subscriptions/{subscription}/resourceGroups/{group}"


@pytest.fixture(scope="module")
def arm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Arm]:
    tmp: Path = tmp_path_factory.mktemp("arm-rbac")
    world = World(time_scale=0.01, history_path=tmp / "history.jsonl")
    durations = ComputeDurations(reimage=50, model_update=20)
    state = ComputeState(world, subscription_id=SUB, durations=durations)
    images = ComputeState(world, subscription_id=IMAGES_SUB, durations=durations)
    versions = {}
    for gallery in ("nodeimages", "hidden"):
        images.add_gallery_image(IMAGES_RG, gallery, "ubuntu", os_type="Linux")
        versions[gallery] = images.publish_image_version(
            IMAGES_RG, gallery, "ubuntu", "2026.12.01", replicate_seconds=0
        )
    for name in (GRANTED, OTHER):
        state.add_scale_set(
            resource_group=RG,
            name=name,
            os_type="Linux",
            capacity=2,
            image_reference={"id": versions["nodeimages"]},
            computer_name_prefix=f"{name}-",
        )
    # What an operator would deploy: one of the two scale sets, one of the two galleries.
    deployment = {
        "scaleSetResourceGroups": [{"id": group_id(SUB, RG), "scaleSets": [GRANTED]}],
        "galleryResourceGroups": [{"id": group_id(IMAGES_SUB, IMAGES_RG), "galleries": ["nodeimages"]}],
    }
    with serving_arm(world, state, tmp, subscriptions=[images], deployment=deployment) as (server, _):
        yield Arm(server, state, images, versions["nodeimages"], versions["hidden"])


def image_update(image_id: str) -> VirtualMachineScaleSetUpdate:
    """The model update the app sends (shared/adapters/compute.py: set_model_image)."""
    return VirtualMachineScaleSetUpdate(
        properties=VirtualMachineScaleSetUpdateProperties(
            virtual_machine_profile=VirtualMachineScaleSetUpdateVMProfile(
                storage_profile=VirtualMachineScaleSetUpdateStorageProfile(
                    image_reference=ImageReference(id=image_id)
                )
            )
        )
    )


def refusal(exc: pytest.ExceptionInfo[HttpResponseError]) -> tuple[int | None, str | None, str]:
    err = exc.value
    return err.status_code, err.error.code if err.error else None, err.error.message if err.error else ""


def test_the_granted_scale_set_reads_reimages_and_polls_its_operation(arm: Arm) -> None:
    client = arm.app()
    assert client.virtual_machine_scale_sets.get(RG, GRANTED).name == GRANTED
    ids = [vm.instance_id for vm in client.virtual_machine_scale_set_vms.list(RG, GRANTED)]
    # The poll reads Microsoft.Compute/locations/operations, granted on the resource group.
    client.virtual_machine_scale_sets.begin_reimage(
        RG, GRANTED, {"instance_ids": ids[:1]}, polling_interval=POLL
    ).result()


def test_a_scale_set_outside_the_grants_is_authorization_failed_through_the_sdk(arm: Arm) -> None:
    client = arm.app()
    with pytest.raises(HttpResponseError) as exc:
        client.virtual_machine_scale_sets.get(RG, OTHER)
    status, code, message = refusal(exc)
    scope = f"{group_id(SUB, RG)}/providers/Microsoft.Compute/virtualMachineScaleSets/{OTHER}"
    assert (status, code) == (403, "AuthorizationFailed")
    assert message == (
        f"The client '{arm.server.client_id}' with object id '{arm.server.principal_id}' does not have "
        f"authorization to perform action 'Microsoft.Compute/virtualMachineScaleSets/read' over scope "
        f"'{scope}' or the scope is invalid. If access was recently granted, please refresh your credentials."
    )
    # Nothing was done: the other scale set's instances were never touched.
    with pytest.raises(HttpResponseError) as exc:
        client.virtual_machine_scale_sets.begin_reimage(RG, OTHER, {"instance_ids": ["0"]})
    assert refusal(exc)[:2] == (403, "AuthorizationFailed")
    assert "virtualMachineScaleSets/reimage/action" in refusal(exc)[2]


def test_actions_the_roles_do_not_list_are_refused_on_the_granted_scale_set_too(arm: Arm) -> None:
    client = arm.app()
    # The compute role lists scale-set reimage, not the per-VM reimage or instance deletes.
    with pytest.raises(HttpResponseError) as exc:
        client.virtual_machine_scale_set_vms.begin_reimage(RG, GRANTED, "0")
    assert refusal(exc)[:2] == (403, "AuthorizationFailed")
    assert "'Microsoft.Compute/virtualMachineScaleSets/virtualMachines/reimage/action'" in refusal(exc)[2]
    with pytest.raises(HttpResponseError) as exc:
        client.virtual_machine_scale_sets.begin_delete_instances(RG, GRANTED, {"instance_ids": ["1"]})
    assert refusal(exc)[:2] == (403, "AuthorizationFailed")


def test_a_model_write_pointing_at_an_image_it_cannot_read_is_linked_authorization_failed(arm: Arm) -> None:
    client = arm.app()
    before = arm.state.scale_set(RG, GRANTED)["properties"]["virtualMachineProfile"]["storageProfile"]
    update = image_update(arm.hidden_image)
    with pytest.raises(HttpResponseError) as exc:
        client.virtual_machine_scale_sets.begin_update(RG, GRANTED, update, polling_interval=POLL)
    status, code, message = refusal(exc)
    assert (status, code) == (403, "LinkedAuthorizationFailed")
    assert "has permission to perform action 'Microsoft.Compute/virtualMachineScaleSets/write'" in message
    assert (
        f"does not have permission to perform action 'Microsoft.Compute/galleries/images/versions/read' "
        f"on the linked scope(s) '{arm.hidden_image}'" in message
    )
    after = arm.state.scale_set(RG, GRANTED)["properties"]["virtualMachineProfile"]["storageProfile"]
    assert after == before  # refused before Compute saw it
    # The gallery the deployment names (Reader on it) is readable: the same write succeeds.
    newer = arm.images.publish_image_version(
        IMAGES_RG, "nodeimages", "ubuntu", "2026.12.02", replicate_seconds=0
    )
    client.virtual_machine_scale_sets.begin_update(
        RG, GRANTED, image_update(newer), polling_interval=POLL
    ).result()
    image = arm.state.scale_set(RG, GRANTED)["properties"]["virtualMachineProfile"]["storageProfile"]
    assert image["imageReference"]["id"] == newer


def test_the_image_subscription_is_served_beside_the_scale_sets_one(arm: Arm) -> None:
    gallery = arm.app(IMAGES_SUB)
    version = gallery.gallery_image_versions.get(IMAGES_RG, "nodeimages", "ubuntu", "2026.12.01")
    assert version.id == arm.granted_image
    with pytest.raises(HttpResponseError) as exc:
        gallery.gallery_image_versions.get(IMAGES_RG, "hidden", "ubuntu", "2026.12.01")
    assert refusal(exc)[:2] == (403, "AuthorizationFailed")
    # A scale set is looked up in its own subscription only.
    admin = ComputeManagementClient(admin_credential(arm.server), IMAGES_SUB, base_url=arm.server.url)
    with pytest.raises(HttpResponseError) as exc:
        admin.virtual_machine_scale_sets.get(RG, GRANTED)
    assert refusal(exc)[:2] == (404, "ResourceGroupNotFound")
    unknown = ComputeManagementClient(
        admin_credential(arm.server), "0" * 8 + SUB[8:], base_url=arm.server.url
    )
    with pytest.raises(HttpResponseError) as exc:
        unknown.virtual_machine_scale_sets.get(RG, GRANTED)
    assert refusal(exc)[:2] == (404, "SubscriptionNotFound")


def test_the_app_gives_up_on_a_refusal_at_once_with_the_code(arm: Arm) -> None:
    compute = ComputeClient(
        SUB, endpoint=arm.server.url, audience=AUDIENCE, credential=ManagedIdentityCredential()
    )
    other = f"{group_id(SUB, RG)}/providers/Microsoft.Compute/virtualMachineScaleSets/{OTHER}"
    with pytest.raises(PermanentError, match="403 AuthorizationFailed"):
        compute.list_instances(other)
    granted = f"{group_id(SUB, RG)}/providers/Microsoft.Compute/virtualMachineScaleSets/{GRANTED}"
    with pytest.raises(PermanentError, match="403 LinkedAuthorizationFailed"):
        compute.set_model_image(granted, arm.hidden_image)

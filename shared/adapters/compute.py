"""The Azure side: scale-set instances, reimage / upgrade-to-latest-model, LRO progress.

A long-running operation is started in one invocation and checked in later ones: the
poller's continuation token is stored on the node record and each check resumes it and
polls exactly once, so no invocation sleeps through a reimage. Throttling (429 with
Retry-After) and 5xx become ``TemporaryError`` with the server's delay; the queue does
the waiting.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace
from typing import Any

from shared.errors import (
    ConcurrencyError,
    NotFoundError,
    OutcomeUnknownError,
    PermanentError,
    TemporaryError,
)
from shared.settings import DEFAULT_CONNECT_TIMEOUT, DEFAULT_READ_TIMEOUT

logger = logging.getLogger(__name__)

PROVIDER_ID_RE = re.compile(
    r".*/subscriptions/(?P<subscription>[^/]+)/resourceGroups/(?P<resource_group>[^/]+)"
    r"/providers/Microsoft\.Compute/virtualMachineScaleSets/(?P<scale_set>[^/]+)"
    r"/virtualMachines/(?P<instance_id>[^/]+)$",
    re.IGNORECASE,
)
# A Flexible scale set's instance is a plain VM: its providerID names the VM, not the set.
VM_PROVIDER_ID_RE = re.compile(
    r".*/subscriptions/(?P<subscription>[^/]+)/resourceGroups/(?P<resource_group>[^/]+)"
    r"/providers/Microsoft\.Compute/virtualMachines/(?P<instance_id>[^/]+)$",
    re.IGNORECASE,
)
# Upgrade policies under which a model write makes Compute itself replace instances, with
# no cordon and no drain (virtual-machine-scale-sets-upgrade-policy.md).
SELF_UPGRADING_POLICIES = frozenset({"automatic", "rolling"})


@dataclass(frozen=True)
class InstanceRef:
    """An instance of a scale set. Uniform: ``instance_id`` is the instance id. Flexible
    (``flexible``): the VM's name, which is its instance id there; a ref parsed from a
    Flexible node's providerID has no ``scale_set`` (the providerID does not say)."""

    subscription: str
    resource_group: str
    scale_set: str
    instance_id: str
    flexible: bool = False

    @property
    def scale_set_id(self) -> str:
        return (
            f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.Compute/virtualMachineScaleSets/{self.scale_set}"
        )

    @property
    def vm_id(self) -> str:
        """The VM's ARM id, lower-cased (what Automation and Update Manager list)."""
        if self.flexible:
            return (
                f"/subscriptions/{self.subscription}/resourceGroups/{self.resource_group}"
                f"/providers/Microsoft.Compute/virtualMachines/{self.instance_id}"
            ).lower()
        return f"{self.scale_set_id}/virtualMachines/{self.instance_id}".lower()

    def same_scale_set(self, scale_set_id: str) -> bool:
        # cloud-provider-azure lower-cases the resource group in providerIDs; ARM may not.
        if not self.flexible or self.scale_set:
            return self.scale_set_id.lower() == scale_set_id.lower()
        # A Flexible scale set names the VMs it creates {scaleSet}_{8 hex}: the pool whose
        # set that is, in the same group. The workflow confirms it from the VM's own
        # virtualMachineScaleSet.id before it writes (``ComputeClient.get_instance``).
        pool = _scale_set_ref(scale_set_id)
        return (self.subscription.lower(), self.resource_group.lower()) == (
            pool.subscription.lower(),
            pool.resource_group.lower(),
        ) and self.instance_id.lower().startswith(f"{pool.scale_set.lower()}_")

    def in_scale_set(self, scale_set_id: str) -> InstanceRef:
        """This instance, named as an instance of that scale set (a Flexible ref from a providerID)."""
        pool = _scale_set_ref(scale_set_id)
        return InstanceRef(
            pool.subscription, pool.resource_group, pool.scale_set, self.instance_id, self.flexible
        )


class UnguardedUpgradeError(PermanentError):
    """The scale set's upgrade policy would turn a model write into instance replacements
    that nobody cordons or drains: refused before anything is written."""


def _scale_set_ref(scale_set_id: str) -> InstanceRef:
    ref = parse_provider_id(f"{scale_set_id}/virtualMachines/0")
    if ref is None:
        raise PermanentError(f"not a scale set id: {scale_set_id}")
    return ref


def parse_provider_id(provider_id: str) -> InstanceRef | None:
    """``azure:///subscriptions/S/resourceGroups/RG/providers/Microsoft.Compute/
    virtualMachineScaleSets/VMSS/virtualMachines/ID`` -> its parts; a Flexible instance's
    ``.../providers/Microsoft.Compute/virtualMachines/NAME`` -> a flexible ref without its
    scale set; None if neither."""
    match = PROVIDER_ID_RE.match(provider_id or "")
    if match:
        return InstanceRef(
            match["subscription"], match["resource_group"], match["scale_set"], match["instance_id"]
        )
    match = VM_PROVIDER_ID_RE.match(provider_id or "")
    if match:
        return InstanceRef(
            match["subscription"], match["resource_group"], "", match["instance_id"], flexible=True
        )
    return None


def unguarded_upgrade(scale_set: str, mode: str) -> str | None:
    """Why the model of a scale set with this upgrade policy must not be written, or None."""
    if mode.lower() not in SELF_UPGRADING_POLICIES:
        return None
    return (
        f"scale set {scale_set} has upgradePolicy {mode}: writing its model would make Azure "
        "replace the instances itself, without cordon or drain; set its upgradePolicy.mode to "
        "Manual, or pinVersions: false for this image"
    )


@dataclass(frozen=True)
class Instance:
    instance_id: str
    provisioning_state: str
    latest_model_applied: bool
    image: str
    power_state: str
    computer_name: str
    # What a reimage changes, whatever the model said before it: the OS disk is replaced
    # (a new name), and the instance view's provisioning status gets a new time.
    os_disk: str = ""
    provisioning_time: float = 0.0  # epoch seconds of the last provisioning status; 0 unknown
    # Flexible: the scale set the VM says it belongs to (virtualMachineScaleSet.id); "" Uniform.
    scale_set_id: str = ""


@dataclass(frozen=True)
class LroStatus:
    done: bool
    succeeded: bool = False
    error: str = ""


def image_label(image_reference: Any) -> str:
    """A comparable name for what an instance runs: gallery version id, or publisher:offer:sku:version."""
    if image_reference is None:
        return ""
    get = (
        image_reference.get
        if isinstance(image_reference, dict)
        else lambda k: getattr(image_reference, k, None)
    )
    ref_id = get("id")
    if ref_id:
        return str(ref_id).lower()
    parts = [get("publisher"), get("offer"), get("sku"), get("version")]
    return ":".join(str(p or "") for p in parts).lower()


def image_version(label: str) -> str:
    """The version part of an image label (the last segment of a gallery version id)."""
    return label.rsplit("/", 1)[-1] if "/" in label else label.rsplit(":", 1)[-1]


def translate_azure_error(exc: Exception, what: str, *, write: bool = False) -> Exception:
    """The SDK's error as retry intent. ``write``: the request changes something, so an
    answer that does not say whether it was accepted (408, 5xx, no response) is
    ``OutcomeUnknownError``, never a plain retry."""
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )

    if isinstance(exc, ResourceNotFoundError):
        return NotFoundError(f"{what}: not found")
    if isinstance(exc, ClientAuthenticationError) and exc.response is None:
        # No answer from ARM: the credential could not get a token (the identity endpoint
        # timed out, refused or answered 5xx for a moment), so nothing was sent, a write
        # neither. A 401 from ARM itself has a response and stays permanent below. The
        # credential's text lists every credential it tried, so only the type is kept.
        return TemporaryError(f"{what}: no token from the managed identity endpoint ({type(exc).__name__})")
    if isinstance(exc, HttpResponseError):
        status = exc.status_code or 0
        code = getattr(exc.error, "code", None) if exc.error else None
        message = f"{what}: {status} {code or exc.reason}"
        retry_after = None
        if exc.response is not None:
            try:
                retry_after = float(getattr(exc.response, "headers", {}).get("Retry-After", ""))
            except ValueError:
                retry_after = None
        if status == 409:
            return ConcurrencyError(message)
        if write and (status == 408 or status >= 500):
            return OutcomeUnknownError(f"{message} (the request may have been accepted)", delay=retry_after)
        if status in (408, 429) or status >= 500:
            return TemporaryError(message, delay=retry_after)
        return PermanentError(message)
    if isinstance(exc, ServiceResponseError):
        # Sent, but no usable answer came back (a read timeout, a dropped connection).
        if write:
            unknown = f"{what}: {exc.__class__.__name__} (the request may have been accepted)"
            return OutcomeUnknownError(unknown)
        return TemporaryError(f"{what}: {exc.__class__.__name__}")
    if isinstance(exc, ServiceRequestError):
        # No request was sent (azure-core's contract for this type): safe to retry.
        return TemporaryError(f"{what}: {exc.__class__.__name__}")
    return exc


class ComputeClient:
    """Scale-set operations for one subscription, through azure-mgmt-compute."""

    def __init__(
        self,
        subscription_id: str,
        *,
        endpoint: str,
        audience: str,
        credential: Any,
        connection_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
    ) -> None:
        from azure.mgmt.compute import ComputeManagementClient

        # The workflow retries through the queue (honouring Retry-After there), so the SDK
        # must not sleep through throttling inside an invocation; nor wait for an answer
        # longer than the timeouts (the SDK's default is 300 s each, beyond the lease).
        self._client = ComputeManagementClient(
            credential,
            subscription_id,
            base_url=endpoint,
            credential_scopes=[f"{audience.rstrip('/')}/.default"],
            retry_total=0,
            connection_timeout=connection_timeout,
            read_timeout=read_timeout,
        )

    def get_instance(self, ref: InstanceRef) -> Instance:
        if ref.flexible:
            return self._get_flexible_instance(ref)
        try:
            vm = self._client.virtual_machine_scale_set_vms.get(
                ref.resource_group, ref.scale_set, ref.instance_id, expand="instanceView"
            )
        except Exception as exc:
            raise translate_azure_error(exc, f"get instance {ref.scale_set}/{ref.instance_id}") from exc
        return _instance_of(vm, str(vm.instance_id), latest=bool(vm.latest_model_applied))

    def _get_flexible_instance(self, ref: InstanceRef) -> Instance:
        """A Flexible instance through the VM API, which has no model flag: it is on the
        latest model when it runs the model's image. A VM that is not (or no longer) a
        member of the pool's scale set is refused: never reimage a stranger."""
        try:
            vm = self._client.virtual_machines.get(ref.resource_group, ref.instance_id, expand="instanceView")
        except Exception as exc:
            raise translate_azure_error(exc, f"get VM {ref.instance_id}") from exc
        member = str(vm.virtual_machine_scale_set.id if vm.virtual_machine_scale_set else "")
        if member.lower() != ref.scale_set_id.lower():
            raise PermanentError(
                f"VM {ref.instance_id} is not an instance of scale set {ref.scale_set} "
                f"(its virtualMachineScaleSet is {member or 'none'})"
            )
        image = image_label(vm.storage_profile.image_reference if vm.storage_profile else None)
        instance = _instance_of(vm, ref.instance_id, latest=image == self.get_model_image(ref))
        return replace(instance, scale_set_id=member)

    def _get_scale_set(self, ref: InstanceRef) -> Any:
        try:
            return self._client.virtual_machine_scale_sets.get(ref.resource_group, ref.scale_set)
        except Exception as exc:
            raise translate_azure_error(exc, f"get scale set {ref.scale_set}") from exc

    def get_model_image(self, ref: InstanceRef) -> str:
        return _model_image(self._get_scale_set(ref))

    def get_upgrade_policy(self, scale_set_id: str) -> str:
        """The scale set's ``upgradePolicy.mode``: Manual, Automatic or Rolling."""
        vmss = self._get_scale_set(_scale_set_ref(scale_set_id))
        return _text(vmss.upgrade_policy.mode if vmss.upgrade_policy else None) or "Manual"

    def list_instances(self, scale_set_id: str) -> list[Instance]:
        """Every instance of a scale set (one paged list; the model flag comes without
        expand). A Flexible set's are the VMs naming it, through the VM API."""
        ref = _scale_set_ref(scale_set_id)
        vmss = self._get_scale_set(ref)
        if _text(vmss.orchestration_mode).lower() == "flexible":
            return self._list_flexible_instances(ref, _model_image(vmss))
        try:
            vms = list(self._client.virtual_machine_scale_set_vms.list(ref.resource_group, ref.scale_set))
        except Exception as exc:
            raise translate_azure_error(exc, f"list instances of {ref.scale_set}") from exc
        return [
            Instance(
                instance_id=str(vm.instance_id),
                provisioning_state=_text(vm.provisioning_state),
                latest_model_applied=bool(vm.latest_model_applied),
                image=image_label(vm.storage_profile.image_reference if vm.storage_profile else None),
                power_state="",
                computer_name=str(vm.os_profile.computer_name if vm.os_profile else ""),
                os_disk=_os_disk(vm),
            )
            for vm in vms
        ]

    def _list_flexible_instances(self, ref: InstanceRef, model_image: str) -> list[Instance]:
        # The VM List filter the REST reference documents for a Flexible set's members.
        member_filter = f"'virtualMachineScaleSet/id' eq '{ref.scale_set_id}'"
        try:
            vms = list(self._client.virtual_machines.list(ref.resource_group, filter=member_filter))
        except Exception as exc:
            raise translate_azure_error(exc, f"list VMs of {ref.scale_set}") from exc
        out = []
        for vm in vms:
            image = image_label(vm.storage_profile.image_reference if vm.storage_profile else None)
            instance = _instance_of(vm, str(vm.name), latest=image == model_image)
            out.append(replace(instance, scale_set_id=ref.scale_set_id))
        return out

    def get_image_version(self, version_id: str) -> ImageVersion:
        match = GALLERY_VERSION_RE.match(version_id)
        if not match:
            raise PermanentError(f"not a gallery image version id: {version_id}")
        parts = match.groupdict()
        try:
            version = self._client.gallery_image_versions.get(
                parts["resource_group"], parts["gallery"], parts["image"], parts["version"]
            )
        except Exception as exc:
            raise translate_azure_error(
                exc, f"get image version {parts['image']}/{parts['version']}"
            ) from exc
        profile = version.publishing_profile
        regions = tuple(r.name for r in (profile.target_regions or [])) if profile else ()
        return ImageVersion(
            id=str(version.id or version_id),
            provisioning_state=_text(version.provisioning_state),
            tags=dict(version.tags or {}),
            target_regions=regions,
        )

    def set_model_image(self, scale_set_id: str, image_id: str) -> None:
        """Point the scale-set model at an image (instances follow on manualupgrade)."""
        from azure.core import MatchConditions
        from azure.mgmt.compute.models import (
            ImageReference,
            VirtualMachineScaleSetUpdate,
            VirtualMachineScaleSetUpdateProperties,
            VirtualMachineScaleSetUpdateStorageProfile,
            VirtualMachineScaleSetUpdateVMProfile,
        )

        ref = _scale_set_ref(scale_set_id)
        vmss = self._get_scale_set(ref)
        mode = _text(vmss.upgrade_policy.mode if vmss.upgrade_policy else None) or "Manual"
        problem = unguarded_upgrade(ref.scale_set, mode)
        if problem:
            raise UnguardedUpgradeError(problem)
        update = VirtualMachineScaleSetUpdate(
            properties=VirtualMachineScaleSetUpdateProperties(
                virtual_machine_profile=VirtualMachineScaleSetUpdateVMProfile(
                    storage_profile=VirtualMachineScaleSetUpdateStorageProfile(
                        image_reference=ImageReference(id=image_id)
                    )
                )
            )
        )
        self._begin(
            f"update model of {ref.scale_set}",
            self._client.virtual_machine_scale_sets.begin_update,
            ref.resource_group,
            ref.scale_set,
            update,
            # Conditional on the scale set as read: a policy changed in between fails the
            # write (412) instead of slipping an unguarded upgrade through.
            etag=vmss.etag,
            match_condition=MatchConditions.IfNotModified if vmss.etag else None,
        )

    def arm_request(self, method: str, path: str, *, api_version: str, body: Any = None) -> Any:
        """A plain ARM call through the same authenticated pipeline, for operations no
        installed SDK covers (cancelling an Update Manager run)."""
        from azure.core.rest import HttpRequest

        request = HttpRequest(method, f"{path}?api-version={api_version}", json=body)
        try:
            response = self._client.send_request(request)
        except Exception as exc:
            raise translate_azure_error(exc, f"{method} {path}") from exc
        if response.status_code >= 400:
            from azure.core.exceptions import HttpResponseError

            raise translate_azure_error(HttpResponseError(response=response), f"{method} {path}")
        try:
            return response.json()
        except ValueError:
            return None

    def begin_reimage(self, ref: InstanceRef, instance_ids: list[str]) -> str:
        from azure.mgmt.compute.models import VirtualMachineScaleSetReimageParameters

        if ref.flexible:
            # Flexible sets have no batch reimage: "Invoke Single VM API - Reimage".
            if len(instance_ids) != 1:
                raise PermanentError(
                    f"a Flexible instance is reimaged alone, not {len(instance_ids)} at once"
                )
            return self._begin(
                f"reimage VM {instance_ids[0]}",
                self._client.virtual_machines.begin_reimage,
                ref.resource_group,
                instance_ids[0],
            )
        body = VirtualMachineScaleSetReimageParameters(instance_ids=instance_ids)
        begin = self._client.virtual_machine_scale_sets.begin_reimage
        return self._begin_on_scale_set("reimage", ref, instance_ids, begin, vm_scale_set_reimage_input=body)

    def begin_upgrade_to_latest_model(self, ref: InstanceRef, instance_ids: list[str]) -> str:
        from azure.mgmt.compute.models import VirtualMachineScaleSetVMInstanceRequiredIDs

        body = VirtualMachineScaleSetVMInstanceRequiredIDs(instance_ids=instance_ids)
        begin = self._client.virtual_machine_scale_sets.begin_update_instances
        return self._begin_on_scale_set("manualupgrade", ref, instance_ids, begin, vm_instance_i_ds=body)

    def _begin_on_scale_set(
        self, op: str, ref: InstanceRef, instance_ids: list[str], begin: Any, **body: Any
    ) -> str:
        """One write for many instances of ``ref``'s scale set (``op`` names it in errors)."""
        return self._begin(
            f"{op} {ref.scale_set} {instance_ids}", begin, ref.resource_group, ref.scale_set, **body
        )

    def _begin(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> str:
        try:
            poller = fn(*args, polling=_start_only(), **kwargs)
            return str(poller.continuation_token())
        except Exception as exc:
            raise translate_azure_error(exc, what, write=True) from exc

    def poll(self, token: str) -> LroStatus:
        """Resume an LRO from its continuation token and poll it exactly once."""
        from azure.core.exceptions import HttpResponseError
        from azure.mgmt.core.polling.arm_polling import ARMPolling

        method = ARMPolling(timeout=0)
        try:
            client, initial, deserialize = ARMPolling.from_continuation_token(
                token, client=self._client._client, deserialization_callback=lambda _r: None
            )
            method.initialize(client, initial, deserialize)
            if not method.finished():
                method.update_status()
        except HttpResponseError as exc:
            # A failed operation surfaces as an error status of the operation itself.
            if exc.status_code and exc.status_code < 500 and exc.status_code != 429:
                return LroStatus(done=True, succeeded=False, error=_lro_error(exc))
            raise translate_azure_error(exc, "poll operation") from exc
        except Exception as exc:
            raise translate_azure_error(exc, "poll operation") from exc
        status = str(method.status())
        if status.lower() == "succeeded":
            return LroStatus(done=True, succeeded=True)
        if status.lower() in ("failed", "canceled", "cancelled"):
            return LroStatus(done=True, succeeded=False, error=_operation_error(method) or status)
        return LroStatus(done=False)


@dataclass(frozen=True)
class ImageVersion:
    id: str
    provisioning_state: str
    tags: dict[str, str]
    target_regions: tuple[str, ...]

    @property
    def definition_id(self) -> str:
        return self.id.rsplit("/versions/", 1)[0]

    @property
    def version(self) -> str:
        return self.id.rsplit("/", 1)[-1]


GALLERY_VERSION_RE = re.compile(
    r"^/subscriptions/(?P<subscription>[^/]+)/resourceGroups/(?P<resource_group>[^/]+)"
    r"/providers/Microsoft\.Compute/galleries/(?P<gallery>[^/]+)/images/(?P<image>[^/]+)"
    r"/versions/(?P<version>[^/]+)$",
    re.IGNORECASE,
)


def _instance_of(vm: Any, instance_id: str, *, latest: bool) -> Instance:
    """A VMSS VM or a VM (both have the same profiles and instance view) as an Instance."""
    view = (vm.instance_view.statuses if vm.instance_view else None) or []
    statuses = [s.code or "" for s in view]
    power = next((s.split("/", 1)[1] for s in statuses if s.startswith("PowerState/")), "")
    provisioned = next((s.time for s in view if (s.code or "").startswith("ProvisioningState/")), None)
    return Instance(
        instance_id=instance_id,
        provisioning_state=_text(vm.provisioning_state),
        latest_model_applied=latest,
        image=image_label(vm.storage_profile.image_reference if vm.storage_profile else None),
        power_state=power,
        computer_name=str(vm.os_profile.computer_name if vm.os_profile else ""),
        os_disk=_os_disk(vm),
        provisioning_time=provisioned.timestamp() if provisioned is not None else 0.0,
    )


def _model_image(vmss: Any) -> str:
    profile = vmss.virtual_machine_profile
    return image_label(
        profile.storage_profile.image_reference if profile and profile.storage_profile else None
    )


def _os_disk(vm: Any) -> str:
    """The OS disk's identity: the managed disk's id, else the disk's name."""
    disk = vm.storage_profile.os_disk if vm.storage_profile else None
    if disk is None:
        return ""
    managed = getattr(disk, "managed_disk", None)
    return str(getattr(managed, "id", None) or disk.name or "").lower()


def _text(value: Any) -> str:
    """SDK enums print as ``Enum.MEMBER``; the wire value is what we compare."""
    return str(getattr(value, "value", value) or "")


def _start_only() -> Any:
    """ARM polling that sends the request and keeps the operation's token but never polls
    in this process: later steps resume it from the token (``poll``)."""
    from azure.mgmt.core.polling.arm_polling import ARMPolling

    class StartOnlyPolling(ARMPolling):
        def run(self) -> None:
            return None

    return StartOnlyPolling(timeout=0)


def _operation_error(method: Any) -> str:
    try:
        body = method._pipeline_response.http_response.json()
        err = body.get("error") or {}
        return f"{err.get('code', 'Failed')}: {err.get('message', '')}".strip()
    except Exception:
        return ""


def _lro_error(exc: Any) -> str:
    err = getattr(exc, "error", None)
    if err is not None:
        return f"{err.code}: {err.message}"
    return str(exc)

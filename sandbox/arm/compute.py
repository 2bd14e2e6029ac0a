"""Virtual machine scale sets and their instances (Uniform and Flexible): JSON, lookups, reads."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from copy import deepcopy
from typing import Any
from urllib.parse import quote, urlencode

from sandbox.arm.limits import _TokenBucket, charge_write, read_headers
from sandbox.arm.lro import _Operations
from sandbox.arm.replies import _ApiError, _Ctx, _filter_query, _iso, _Reply, _resource_not_found
from sandbox.arm.resources import _Instance, _ScaleSet
from sandbox.arm.upgrade_policy import _upgrade_policy

_VM_SIZE = "Standard_D4s_v5"


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if n == 0:
            return out


def computer_name(prefix: str, instance_id: str | int) -> str:
    """Uniform VMSS hostname: prefix + base-36 instance id, zero-padded to 6 (lower-case)."""
    return f"{prefix}{_base36(int(instance_id)).zfill(6)}"


_SCALE_SET_TYPE = "Microsoft.Compute/virtualMachineScaleSets"

# How a VM is shown: ``(scale set, instance, *, expand)`` to its JSON.
_RenderVm = Callable[..., dict[str, Any]]


class _ScaleSets(_Operations):
    # ---------------------------------------------------------------- public API

    def add_scale_set(
        self,
        *,
        resource_group: str,
        name: str,
        os_type: str,
        capacity: int,
        image_reference: dict,
        computer_name_prefix: str,
        zones: list[str] | None = None,
        tags: dict | None = None,
        orchestration_mode: str = "Uniform",
        upgrade_policy: dict[str, Any] | None = None,
    ) -> dict:
        """Create a scale set whose instances already exist and run (no instance_created events)."""
        os_norm = {"linux": "Linux", "windows": "Windows"}.get(os_type.lower())
        if os_norm is None:
            raise ValueError(f"os_type must be Linux or Windows, got {os_type!r}")
        if orchestration_mode not in ("Uniform", "Flexible"):
            raise ValueError(f"orchestration_mode must be Uniform or Flexible, got {orchestration_mode!r}")
        try:
            policy = _upgrade_policy(upgrade_policy or {"mode": "Manual"})
        except _ApiError as exc:
            raise ValueError(str(exc)) from None
        with self._transaction():
            key = (resource_group.lower(), name.lower())
            if key in self._scale_sets:
                raise ValueError(f"scale set {resource_group}/{name} already exists")
            clock = self.world.clock
            ss = _ScaleSet(
                resource_group=resource_group,
                name=name,
                os_type=os_norm,
                prefix=computer_name_prefix,
                zones=list(zones) if zones else None,
                tags=dict(tags or {}),
                image=deepcopy(image_reference),
                model_version=1,
                unique_id=str(uuid.uuid4()),
                time_created=_iso(),
                bucket=_TokenBucket(
                    self.write_limit.burst, self.write_limit.per_minute / clock.seconds(60.0)
                ),
                read_buckets={
                    # Documented Compute read limits (per resource): low-cost 36/12, high-cost 30/10.
                    "GetVMScaleSet3Min": _TokenBucket(36, 12 / clock.seconds(60.0)),
                    "HighCostGetVMScaleSet3Min": _TokenBucket(30, 10 / clock.seconds(60.0)),
                    "GetVMScaleSetVM3Min": _TokenBucket(36, 12 / clock.seconds(60.0)),
                },
                orchestration_mode=orchestration_mode,
                upgrade_policy=policy,
            )
            for _ in range(capacity):
                self._new_instance(ss, state="Succeeded")
            self._scale_sets[key] = ss
            self.world.history.append(
                "scale_set_added",
                resource_group=resource_group,
                scale_set=name,
                os_type=os_norm,
                capacity=capacity,
                image=deepcopy(image_reference),
            )
            return self._scale_set_json(ss)

    def scale_set(self, resource_group: str, name: str) -> dict:
        with self._lock:
            return self._scale_set_json(self._require(resource_group, name))

    def vms(self, resource_group: str, name: str) -> list[dict]:
        with self._lock:
            ss = self._require(resource_group, name)
            render = self._flex_vm_json if ss.flexible else self._vm_json
            return [render(ss, inst, expand=True) for inst in self._sorted(ss)]

    # ---------------------------------------------------------------- helpers

    def _require(self, resource_group: str, name: str) -> _ScaleSet:
        ss = self._scale_sets.get((resource_group.lower(), name.lower()))
        if ss is None:
            raise KeyError(f"no scale set {resource_group}/{name}")
        return ss

    @staticmethod
    def _sorted(ss: _ScaleSet) -> list[_Instance]:
        return sorted(ss.instances.values(), key=lambda i: int(i.instance_id))

    def _new_instance(self, ss: _ScaleSet, *, state: str) -> _Instance:
        iid = str(ss.next_id)
        ss.next_id += 1
        zone = ss.zones[int(iid) % len(ss.zones)] if ss.zones else None
        inst = _Instance(
            instance_id=iid,
            computer_name=computer_name(ss.prefix, iid),
            zone=zone,
            image=deepcopy(ss.image),
            model_version=ss.model_version,
            vm_id=str(uuid.uuid4()),
            time_created=_iso(),
            provisioning_state=state,
            power_state="running" if state == "Succeeded" else "starting",
            vm_name=f"{ss.name}_{uuid.uuid4().hex[:8]}" if ss.flexible else "",
        )
        ss.instances[iid] = inst
        return inst

    def _resource_id(self, ss: _ScaleSet) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{ss.resource_group}"
            f"/providers/Microsoft.Compute/virtualMachineScaleSets/{ss.name}"
        )

    def _os_config(self, ss: _ScaleSet) -> dict[str, Any]:
        if ss.os_type == "Windows":
            return {
                "windowsConfiguration": {
                    "provisionVMAgent": True,
                    "enableAutomaticUpdates": False,
                    "patchSettings": {"patchMode": "Manual"},
                }
            }
        return {
            "linuxConfiguration": {
                "disablePasswordAuthentication": True,
                "provisionVMAgent": True,
                "patchSettings": {"patchMode": "ImageDefault"},
            }
        }

    def _scale_set_json(self, ss: _ScaleSet) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": ss.name,
            "id": self._resource_id(ss),
            "type": "Microsoft.Compute/virtualMachineScaleSets",
            "location": self.location,
            "tags": dict(ss.tags),
            "etag": f'"{ss.etag}"',
            "sku": {"name": _VM_SIZE, "tier": "Standard", "capacity": ss.capacity()},
            "properties": {
                "singlePlacementGroup": False,
                "orchestrationMode": ss.orchestration_mode,
                "upgradePolicy": deepcopy(ss.upgrade_policy),
                "virtualMachineProfile": {
                    "osProfile": {
                        "computerNamePrefix": ss.prefix,
                        "adminUsername": "azureuser",
                        **self._os_config(ss),
                        "secrets": [],
                        "allowExtensionOperations": True,
                        "requireGuestProvisionSignal": True,
                    },
                    "storageProfile": {
                        "imageReference": deepcopy(ss.image),
                        "osDisk": {
                            "osType": ss.os_type,
                            "createOption": "FromImage",
                            "caching": "ReadOnly",
                            "managedDisk": {"storageAccountType": "Premium_LRS"},
                            "diskSizeGB": 128,
                        },
                    },
                },
                "provisioningState": ss.provisioning_state,
                "overprovision": False,
                "doNotRunExtensionsOnOverprovisionedVMs": False,
                "uniqueId": ss.unique_id,
                "platformFaultDomainCount": 1,
                "timeCreated": ss.time_created,
            },
        }
        if ss.zones:
            body["zones"] = list(ss.zones)
        return body

    def _instance_view(self, ss: _ScaleSet, inst: _Instance) -> dict[str, Any]:
        ps = inst.provisioning_state.lower()
        if ps == "failed":
            failure = inst.failure or {"code": "InternalExecutionError", "message": ""}
            prov: dict[str, Any] = {
                "code": f"ProvisioningState/failed/{failure['code']}",
                "level": "Error",
                "displayStatus": "Provisioning failed",
                "message": failure["message"],
                "time": inst.state_time,
            }
        else:
            display = "Provisioning succeeded" if ps == "succeeded" else inst.provisioning_state
            prov = {"code": f"ProvisioningState/{ps}", "level": "Info", "displayStatus": display}
            if ps == "succeeded":
                prov["time"] = inst.state_time
        power = {
            "code": f"PowerState/{inst.power_state}",
            "level": "Info",
            "displayStatus": f"VM {inst.power_state}",
        }
        linux = ss.os_type == "Linux"
        return {
            "platformUpdateDomain": int(inst.instance_id) % 5,
            "platformFaultDomain": 0,
            "computerName": inst.computer_name,
            "osName": "ubuntu" if linux else "Windows Server 2022 Datacenter",
            "osVersion": "22.04" if linux else "10.0.20348",
            "hyperVGeneration": "V2",
            "statuses": [prov, power],
        }

    def _vm_json(self, ss: _ScaleSet, inst: _Instance, *, expand: bool) -> dict[str, Any]:
        vm_res = f"{self._resource_id(ss)}/virtualMachines/{inst.instance_id}"
        disk_name = inst.os_disk_name(ss.name)
        props: dict[str, Any] = {
            "latestModelApplied": inst.model_version == ss.model_version,
            "modelDefinitionApplied": "VirtualMachineScaleSet",
            "vmId": inst.vm_id,
            "hardwareProfile": {"vmSize": _VM_SIZE},
            "storageProfile": {
                "imageReference": deepcopy(inst.image),
                "osDisk": {
                    "osType": ss.os_type,
                    "name": disk_name,
                    "createOption": "FromImage",
                    "caching": "ReadOnly",
                    "managedDisk": {
                        "storageAccountType": "Premium_LRS",
                        "id": f"/subscriptions/{self.subscription_id}/resourceGroups/{ss.resource_group}"
                        f"/providers/Microsoft.Compute/disks/{disk_name}",
                    },
                    "deleteOption": "Delete",
                    "diskSizeGB": 128,
                },
                "dataDisks": [],
            },
            "osProfile": {
                "computerName": inst.computer_name,
                "adminUsername": "azureuser",
                **self._os_config(ss),
                "secrets": [],
                "allowExtensionOperations": True,
                "requireGuestProvisionSignal": True,
            },
            "provisioningState": inst.provisioning_state,
            "timeCreated": inst.time_created,
        }
        if expand:
            props["instanceView"] = self._instance_view(ss, inst)
        body: dict[str, Any] = {
            "name": f"{ss.name}_{inst.instance_id}",
            "id": vm_res,
            "type": "Microsoft.Compute/virtualMachineScaleSets/virtualMachines",
            "location": self.location,
            "tags": dict(ss.tags),
            "instanceId": inst.instance_id,
            "sku": {"name": _VM_SIZE, "tier": "Standard"},
            "etag": f'"{inst.etag}"',
            "properties": props,
        }
        if inst.zone:
            body["zones"] = [inst.zone]
        return body

    def _lookup(self, ctx: _Ctx, *, parent: bool = False) -> _ScaleSet:
        return self._find(ctx, self._scale_sets, "vmss", _SCALE_SET_TYPE, parent=parent)

    def _lookup_vm(self, ctx: _Ctx) -> tuple[_ScaleSet, _Instance]:
        ss = self._lookup(ctx, parent=True)
        self._uniform_only(ss, "virtualMachines")
        iid = ctx.match["iid"]
        inst = ss.instances.get(iid)
        if inst is None:
            raise _resource_not_found(
                f"Microsoft.Compute/virtualMachineScaleSets/{ss.name}/virtualMachines/{iid}",
                ss.resource_group,
            )
        return ss, inst

    def _read_headers(self, ss: _ScaleSet, policy: str) -> dict[str, str]:
        return read_headers(ss.read_buckets[policy], policy)

    def _charge_write(self, ss: _ScaleSet) -> dict[str, str]:
        return charge_write(ss.bucket, self.write_limit)

    # ---------------------------------------------------------------- API: reads

    def _api_get_scale_set(self, ctx: _Ctx) -> _Reply:
        ss = self._lookup(ctx)
        return _Reply(200, self._scale_set_json(ss), self._read_headers(ss, "GetVMScaleSet3Min"))

    def _api_list_scale_sets(self, ctx: _Ctx) -> _Reply:
        self._check_subscription(ctx)
        rg = ctx.match.get("rg")
        if rg is not None:
            self._require_group(rg)
        items = [
            self._scale_set_json(ss)
            for key, ss in sorted(self._scale_sets.items())
            if rg is None or key[0] == rg.lower()
        ]
        return self._vm_list_reply(items)

    def _api_scale_set_instance_view(self, ctx: _Ctx) -> _Reply:
        ss = self._lookup(ctx)
        self._uniform_only(ss, "instanceView.GET")
        counts: dict[str, int] = {}
        for inst in ss.instances.values():
            code = f"ProvisioningState/{inst.provisioning_state.lower()}"
            counts[code] = counts.get(code, 0) + 1
        body = {
            "virtualMachine": {
                "statusesSummary": [{"code": c, "count": n} for c, n in sorted(counts.items())]
            },
            "statuses": [
                {
                    "code": f"ProvisioningState/{ss.provisioning_state.lower()}",
                    "level": "Info",
                    "displayStatus": "Provisioning succeeded"
                    if ss.provisioning_state == "Succeeded"
                    else ss.provisioning_state,
                    "time": ss.time_created,
                }
            ],
        }
        return _Reply(200, body, self._read_headers(ss, "HighCostGetVMScaleSet3Min"))

    def _api_list_vms(self, ctx: _Ctx) -> _Reply:
        ss = self._lookup(ctx, parent=True)
        self._uniform_only(ss, "virtualMachines")
        expand = ctx.query.get("$expand", "").lower() == "instanceview"
        m = _filter_query(
            ctx,
            r"\s*properties/latestModelApplied\s+eq\s+(true|false)\s*",
            supported=" (the sandbox supports only 'properties/latestModelApplied eq true|false')",
        )
        want_latest = None if m is None else m.group(1).lower() == "true"
        after = -1
        token = ctx.query.get("$skiptoken")
        if token:
            try:
                after = int(base64.urlsafe_b64decode(token.encode() + b"==").decode())
            except ValueError as exc:
                raise _ApiError(
                    400, "InvalidParameter", "The $skiptoken is invalid.", target="$skiptoken"
                ) from exc
        # Paging by "instance ids after X" keeps pages stable while instances come and go.
        candidates = [
            i
            for i in self._sorted(ss)
            if int(i.instance_id) > after
            and (want_latest is None or (i.model_version == ss.model_version) == want_latest)
        ]
        page = candidates[: max(1, self.page_size)]
        body: dict[str, Any] = {"value": [self._vm_json(ss, i, expand=expand) for i in page]}
        if len(candidates) > len(page):
            # Absolute, and carrying every original parameter: the SDK follows it verbatim.
            params = {k: v for k, v in ctx.query.items() if k != "$skiptoken"}
            params["$skiptoken"] = (
                base64.urlsafe_b64encode(page[-1].instance_id.encode()).decode().rstrip("=")
            )
            path = f"{self._resource_id(ss)}/virtualMachines"
            body["nextLink"] = f"{ctx.base_url}{quote(path)}?{urlencode(params, safe='$')}"
        return _Reply(200, body, self._read_headers(ss, "HighCostGetVMScaleSet3Min"))

    def _api_get_vm(self, ctx: _Ctx) -> _Reply:
        return self._vm_reply(ctx, *self._lookup_vm(ctx), self._vm_json)

    def _api_get_instance_view(self, ctx: _Ctx) -> _Reply:
        return self._instance_view_reply(*self._lookup_vm(ctx))

    def _vm_reply(self, ctx: _Ctx, ss: _ScaleSet, inst: _Instance, render: _RenderVm) -> _Reply:
        """One VM (Uniform: ``render`` is _vm_json; Flexible: _flex_vm_json), read from its budget."""
        expand = ctx.query.get("$expand", "").lower() == "instanceview"
        return _Reply(200, render(ss, inst, expand=expand), self._read_headers(ss, "GetVMScaleSetVM3Min"))

    def _instance_view_reply(self, ss: _ScaleSet, inst: _Instance) -> _Reply:
        return _Reply(200, self._instance_view(ss, inst), self._read_headers(ss, "GetVMScaleSetVM3Min"))

    @staticmethod
    def _vm_list_reply(items: list[dict[str, Any]]) -> _Reply:
        """A list of scale sets or VMs across a resource group (Compute's high-cost read)."""
        return _Reply(
            200,
            {"value": items},
            {"x-ms-ratelimit-remaining-resource": "Microsoft.Compute/HighCostGet3Min;159"},
        )

    @staticmethod
    def _uniform_only(ss: _ScaleSet, operation: str) -> None:
        """The VMSS-VM and batch instance APIs a Flexible scale set does not serve: its
        instances are managed through the single-VM APIs (orchestration-modes-api-comparison.md)."""
        if ss.flexible:
            raise _ApiError(
                400,
                "BadRequest",
                f"Operation 'VirtualMachineScaleSets.{operation}' is not allowed on "
                f"Virtual Machine Scale Set '{ss.name}'.",
            )

    def _flex_vm_id(self, ss: _ScaleSet, inst: _Instance) -> str:
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{ss.resource_group}"
            f"/providers/Microsoft.Compute/virtualMachines/{inst.vm_name}"
        )

    def _flex_vm_json(self, ss: _ScaleSet, inst: _Instance, *, expand: bool) -> dict[str, Any]:
        """A Flexible instance as the VM API shows it: a virtualMachines resource naming its
        scale set, with no instance id and no model flag."""
        body = self._vm_json(ss, inst, expand=expand)
        props = body["properties"]
        props.pop("latestModelApplied")
        props.pop("modelDefinitionApplied")
        props["virtualMachineScaleSet"] = {"id": self._resource_id(ss)}
        body.pop("instanceId")
        body.pop("sku")
        body.update(
            name=inst.vm_name, id=self._flex_vm_id(ss, inst), type="Microsoft.Compute/virtualMachines"
        )
        return body

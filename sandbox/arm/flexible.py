"""A Flexible scale set's instances, served by the single-VM API (``virtualMachines``)."""

from __future__ import annotations

from sandbox.arm.replies import _Ctx, _filter_query, _Reply, _resource_not_found
from sandbox.arm.resources import _Instance, _ScaleSet
from sandbox.arm.writes import _ScaleSetWrites


class _FlexibleVms(_ScaleSetWrites):
    def _flex_scale_sets(self, rg: str) -> list[_ScaleSet]:
        return [ss for key, ss in sorted(self._scale_sets.items()) if ss.flexible and key[0] == rg.lower()]

    def _lookup_flex_vm(self, ctx: _Ctx) -> tuple[_ScaleSet, _Instance]:
        rg, name = self._resource_group(ctx), ctx.match["vm"]
        for ss in self._flex_scale_sets(rg):
            for inst in ss.instances.values():
                if inst.vm_name.lower() == name.lower():
                    return ss, inst
        raise _resource_not_found(f"Microsoft.Compute/virtualMachines/{name}", rg)

    def _api_list_flex_vms(self, ctx: _Ctx) -> _Reply:
        """``GET .../virtualMachines``, optionally ``$filter='virtualMachineScaleSet/id' eq 'ID'``
        (the VM List filter the REST reference documents for Flexible members)."""
        rg = self._resource_group(ctx)
        m = _filter_query(ctx, r"\s*'virtualMachineScaleSet/id'\s+eq\s+'(?P<id>[^']+)'\s*")
        wanted = None if m is None else m.group("id").lower()
        expand = ctx.query.get("$expand", "").lower() == "instanceview"
        items = [
            self._flex_vm_json(ss, inst, expand=expand)
            for ss in self._flex_scale_sets(rg)
            if wanted is None or self._resource_id(ss).lower() == wanted
            for inst in self._sorted(ss)
        ]
        return self._vm_list_reply(items)

    def _api_get_flex_vm(self, ctx: _Ctx) -> _Reply:
        return self._vm_reply(ctx, *self._lookup_flex_vm(ctx), self._flex_vm_json)

    def _api_flex_vm_instance_view(self, ctx: _Ctx) -> _Reply:
        return self._instance_view_reply(*self._lookup_flex_vm(ctx))

    def _api_flex_vm_reimage(self, ctx: _Ctx) -> _Reply:
        """``POST .../virtualMachines/NAME/reimage``: an LRO like the VMSS one, restoring the
        image the VM runs (no ``exactVersion``)."""
        ss, inst = self._lookup_flex_vm(ctx)
        headers = self._charge_write(ss)
        return self._start_reimage(ctx, ss, [inst.instance_id], "reimage", headers)

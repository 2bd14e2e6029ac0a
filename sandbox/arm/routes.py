"""The REST surface: which handler serves which method and path."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_SUB = r"/subscriptions/(?P<sub>[^/]+)"
_RG = _SUB + r"/resourcegroups/(?P<rg>[^/]+)"
_VMSS_COLL = r"/providers/microsoft\.compute/virtualmachinescalesets"
_VMSS = _RG + _VMSS_COLL + r"/(?P<vmss>[^/]+)"
_VM = _VMSS + r"/virtualmachines/(?P<iid>[^/]+)"
_VM_COLL = _RG + r"/providers/microsoft\.compute/virtualmachines"
_FLEX_VM = _VM_COLL + r"/(?P<vm>[^/]+)"
_OPS = (
    _SUB
    + r"/providers/microsoft\.compute/locations/(?P<loc>[^/]+)"
    + r"/(?P<kind>operations|operationresults)/(?P<op>[^/]+)"
)
_GALLERY = _RG + r"/providers/microsoft\.compute/galleries/(?P<gallery>[^/]+)"
_GALLERY_IMAGE = _GALLERY + r"/images/(?P<image>[^/]+)"
_IMAGE_VERSION = _GALLERY_IMAGE + r"/versions/(?P<version>[^/]+)"
_MC_COLL = _RG + r"/providers/microsoft\.maintenance/maintenanceconfigurations"
_MC = _MC_COLL + r"/(?P<mc>[^/]+)"
_VMSS_VIEW = _VMSS + r"/instanceview"
_IMAGE_VERSIONS = _GALLERY_IMAGE + r"/versions"
_APPLY_UPDATE = _MC + r"/providers/microsoft\.maintenance/applyupdates/(?P<run>[^/]+)"

# (method, path regex, operation name, is write, ComputeState handler name)
_ROUTES: list[tuple[str, re.Pattern[str], str, bool, str]] = [
    (m, re.compile(p + r"/?", re.IGNORECASE), op, w, h)
    for m, p, op, w, h in [
        ("GET", _SUB + _VMSS_COLL, "list_scale_sets", False, "_api_list_scale_sets"),
        ("GET", _RG + _VMSS_COLL, "list_scale_sets", False, "_api_list_scale_sets"),
        ("GET", _VMSS, "get_scale_set", False, "_api_get_scale_set"),
        ("PUT", _VMSS, "update_model", True, "_api_put_scale_set"),
        ("PATCH", _VMSS, "update_model", True, "_api_patch_scale_set"),
        ("GET", _VMSS_VIEW, "get_scale_set_instance_view", False, "_api_scale_set_instance_view"),
        ("POST", _VMSS + r"/reimage", "reimage", True, "_api_reimage"),
        ("POST", _VMSS + r"/reimageall", "reimage_all", True, "_api_reimage_all"),
        ("POST", _VMSS + r"/manualupgrade", "manualupgrade", True, "_api_manualupgrade"),
        ("POST", _VMSS + r"/delete", "delete_instances", True, "_api_delete_instances"),
        ("GET", _VMSS + r"/virtualmachines", "list_vms", False, "_api_list_vms"),
        ("GET", _VM, "get_vm", False, "_api_get_vm"),
        ("DELETE", _VM, "delete_vm", True, "_api_delete_vm"),
        ("GET", _VM + r"/instanceview", "get_instance_view", False, "_api_get_instance_view"),
        ("POST", _VM + r"/reimage", "reimage", True, "_api_vm_reimage"),
        ("POST", _VM + r"/reimageall", "reimage_all", True, "_api_vm_reimage_all"),
        ("GET", _OPS, "poll", False, "_api_poll"),
        # Flexible scale sets' instances, through the single-VM API
        ("GET", _VM_COLL, "list_vms", False, "_api_list_flex_vms"),
        ("GET", _FLEX_VM, "get_vm", False, "_api_get_flex_vm"),
        ("GET", _FLEX_VM + r"/instanceview", "get_instance_view", False, "_api_flex_vm_instance_view"),
        ("POST", _FLEX_VM + r"/reimage", "reimage", True, "_api_flex_vm_reimage"),
        # Compute Gallery
        ("GET", _GALLERY, "get_gallery", False, "_api_get_gallery"),
        ("GET", _GALLERY + r"/images", "list_gallery_images", False, "_api_list_gallery_images"),
        ("GET", _GALLERY_IMAGE, "get_gallery_image", False, "_api_get_gallery_image"),
        ("PUT", _GALLERY_IMAGE, "put_gallery_image", True, "_api_put_gallery_image"),
        ("GET", _IMAGE_VERSIONS, "list_gallery_image_versions", False, "_api_list_gallery_image_versions"),
        ("GET", _IMAGE_VERSION, "get_gallery_image_version", False, "_api_get_gallery_image_version"),
        ("PUT", _IMAGE_VERSION, "put_gallery_image_version", True, "_api_put_gallery_image_version"),
        # Update Manager
        ("GET", _MC_COLL, "list_maintenance_configurations", False, "_api_list_maintenance_configurations"),
        ("GET", _MC, "get_maintenance_configuration", False, "_api_get_maintenance_configuration"),
        ("PUT", _MC, "put_maintenance_configuration", True, "_api_put_maintenance_configuration"),
        ("GET", _APPLY_UPDATE, "get_maintenance_run", False, "_api_get_maintenance_run"),
        ("PUT", _APPLY_UPDATE, "cancel_maintenance_run", True, "_api_cancel_maintenance_run"),
    ]
]


@dataclass
class RouteMatch:
    """What the route table says about one request: its operation and handler (None when
    no route serves the method), and whether the path is served at all (405 rather than 404)."""

    operation: str | None = None
    write: bool = False
    handler: str | None = None
    match: dict[str, str] = field(default_factory=dict)
    path_known: bool = False


def route(method: str, path: str) -> RouteMatch:
    found = RouteMatch()
    for r_method, rx, r_op, r_write, r_handler in _ROUTES:
        m = rx.fullmatch(path)
        if m:
            found.path_known = True
            if r_method == method:
                return RouteMatch(r_op, r_write, r_handler, m.groupdict(), path_known=True)
    return found

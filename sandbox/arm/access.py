"""What the simulated ARM lets a caller do: the app's managed identity exactly what the
role assignments of ``infra/`` grant it (:mod:`sandbox.arm.rbac`), the sandbox's own
scene-setting identity everything.

The deployment parameters are the ones an operator would write for the sandbox's
resources (``infra/main.parameters.json``): given explicitly, or, by default, covering
every scale set, gallery and maintenance configuration the served subscriptions
hold at the moment of the request.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sandbox.arm.rbac import (
    AccessControl,
    DeploymentTarget,
    Principal,
    Request,
    authorization_failed,
    linked_authorization_failed,
    request_action,
)

if TYPE_CHECKING:
    from sandbox.arm.state import ComputeState

# The resource group the app itself is deployed into (main.bicep's target); the
# simulated ARM serves nothing in it, so only its name is needed.
APP_RESOURCE_GROUP = "rg-nodepatcher"
_POLL_ACTION = "microsoft.compute/locations/operations/read"
_GALLERY_MARK = "/providers/microsoft.compute/galleries/"


def covering_parameters(states: Sequence[ComputeState]) -> dict[str, Any]:
    """main.bicep's resource parameters for every resource the states hold (Automation
    accounts have none: the app no longer reads them)."""
    scale_sets: dict[str, list[str]] = {}
    flexible: set[str] = set()
    galleries: dict[str, list[str]] = {}
    configurations: list[dict[str, Any]] = []
    for state in states:
        sub = state.subscription_id
        with state._lock:
            for ss in state._scale_sets.values():
                scale_sets.setdefault(_group_id(sub, ss.resource_group), []).append(ss.name)
                if ss.flexible:
                    flexible.add(_group_id(sub, ss.resource_group))
            for g in state._galleries.values():
                galleries.setdefault(_group_id(sub, g.resource_group), []).append(g.name)
            for mc in state._maintenance.values():
                configurations.append({"id": state._mc_id(mc), "location": state.location})
    return {
        "scaleSetResourceGroups": [
            {"id": k, "scaleSets": sorted(v), **({"flexible": True} if k in flexible else {})}
            for k, v in sorted(scale_sets.items())
        ],
        "galleryResourceGroups": [{"id": k, "galleries": sorted(v)} for k, v in sorted(galleries.items())],
        "maintenanceConfigurations": sorted(configurations, key=lambda c: str(c["id"])),
    }


def _group_id(subscription_id: str, resource_group: str) -> str:
    return f"/subscriptions/{subscription_id}/resourceGroups/{resource_group}"


class ArmAccess:
    """Authorizes one request of the app's identity, as ARM does before the provider
    sees it."""

    def __init__(
        self,
        states: Mapping[str, ComputeState],
        *,
        principal_id: str,
        deployment: Mapping[str, Any] | None = None,
        app_subscription: str,
    ) -> None:
        self._states = states
        self._principal_id = principal_id
        self._fixed = dict(deployment) if deployment is not None else None
        self._app_subscription = app_subscription
        self._lock = threading.Lock()
        self._cached: tuple[str, AccessControl] | None = None

    def control(self) -> AccessControl:
        parameters = self._fixed
        if parameters is None:
            parameters = covering_parameters(list(self._states.values()))
        key = json.dumps(parameters, sort_keys=True)
        with self._lock:
            if self._cached is None or self._cached[0] != key:
                control = AccessControl.from_bicep(
                    parameters,
                    principal_id=self._principal_id,
                    target=DeploymentTarget(self._app_subscription, APP_RESOURCE_GROUP),
                )
                self._cached = (key, control)
            return self._cached[1]

    def check(
        self, principal: Principal, method: str, path: str, match: Mapping[str, str], raw: bytes
    ) -> tuple[int, dict[str, Any]] | None:
        """None when allowed; else ARM's status and error body."""
        request = request_action(method, path)
        if request.action.lower() == _POLL_ACTION:
            scope = self._operation_scope(match)
            if scope is None:
                return None  # an unknown operation: ARM forwards it and Compute answers 404
            request = Request(request.action, scope)
        control = self.control()
        if not control.allowed(principal.object_id, request.action, request.scope):
            return 403, authorization_failed(principal, request)
        if method.upper() in ("PUT", "PATCH") and match.get("vmss") and "iid" not in match:
            linked = _linked_image(raw)
            if linked is not None and not control.allowed(principal.object_id, linked.action, linked.scope):
                return 403, linked_authorization_failed(principal, request, linked)
        return None

    def _operation_scope(self, match: Mapping[str, str]) -> str | None:
        """An operation status is read over the resource group of the resource it works on
        (``locations/`` is below no resource: an assignment on the scale set alone does
        not cover it)."""
        state = self._states.get(match.get("sub", "").lower())
        op = state._operations.get(match.get("op", "")) if state is not None else None
        if state is None or op is None:
            return None
        group = op.key[0]
        if group == "resource":
            group = op.key[1].split("/")[4]
        return _group_id(state.subscription_id, group)


def _linked_image(raw: bytes) -> Request | None:
    """The gallery image a scale-set model write points at: ARM checks that the caller
    may read it (a linked access check) before Compute sees the write."""
    try:
        body = json.loads(raw) if raw.strip() else None
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    profile = (body.get("properties") or {}).get("virtualMachineProfile") or {}
    storage = profile.get("storageProfile") or {} if isinstance(profile, dict) else {}
    image = storage.get("imageReference") or {} if isinstance(storage, dict) else {}
    image_id = image.get("id") if isinstance(image, dict) else None
    if not isinstance(image_id, str) or _GALLERY_MARK not in image_id.lower():
        return None
    kind = "versions/read" if "/versions/" in image_id.lower() else "read"
    return Request(f"Microsoft.Compute/galleries/images/{kind}", image_id.rstrip("/"))

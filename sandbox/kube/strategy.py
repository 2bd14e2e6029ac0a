"""Per-kind create and update rules, as the registry's strategies apply them.

``apply_defaults`` and ``validate`` are the parts of ``PrepareForCreate``/``Validate`` the
patcher meets (pod defaults, names, PodDisruptionBudget values, pod spec immutability);
``complete_fields`` adds what a Go struct always serialises, because the pydantic models
of the ``kubernetes`` client reject objects without those fields.
"""

from __future__ import annotations

import re
from typing import Any

from sandbox.kube.errors import invalid
from sandbox.kube.objects import Obj, clone, json_equal, to_iso, utc_now
from sandbox.kube.resources import NAMESPACES, NODES, PDBS, PODS, ResourceType

DEFAULT_GRACE_SECONDS = 30
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def apply_defaults(rt: ResourceType, obj: Obj) -> None:
    meta = obj["metadata"]
    if rt is PODS:
        spec = obj.setdefault("spec", {})
        spec.setdefault("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("dnsPolicy", "ClusterFirst")
        spec.setdefault("schedulerName", "default-scheduler")
        spec.setdefault("containers", [])
        status = obj.setdefault("status", {})
        status.setdefault("phase", "Pending")
    elif rt is NAMESPACES:
        meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj.setdefault("status", {}).setdefault("phase", "Active")
    elif rt.key in ("deployments.apps", "replicasets.apps", "statefulsets.apps"):
        obj.setdefault("spec", {}).setdefault("replicas", 1)


def validate_name(rt: ResourceType, name: Any) -> None:
    pattern = _DNS_LABEL if rt is NAMESPACES else _DNS_SUBDOMAIN
    limit = 63 if rt is NAMESPACES else 253
    if not isinstance(name, str) or not name:
        raise invalid(
            rt,
            "",
            "metadata.name",
            "Required value: name or generateName is required",
            "FieldValueRequired",
        )
    if len(name) > limit or not pattern.match(name):
        what = "RFC 1123 label" if rt is NAMESPACES else "RFC 1123 subdomain"
        raise invalid(
            rt,
            name,
            "metadata.name",
            f'Invalid value: "{name}": a lowercase {what} must consist of lower case alphanumeric '
            "characters, '-' or '.', and must start and end with an alphanumeric character",
        )


def validate(rt: ResourceType, obj: Obj, old: Obj | None) -> None:
    name = obj["metadata"]["name"]
    if rt is PDBS:
        spec = obj.get("spec") or {}
        if spec.get("minAvailable") is not None and spec.get("maxUnavailable") is not None:
            raise invalid(
                rt, name, "spec", "Invalid value: minAvailable and maxUnavailable cannot be both set"
            )
        for fld in ("minAvailable", "maxUnavailable"):
            value = spec.get(fld)
            if isinstance(value, str) and not re.fullmatch(r"\d+%", value):
                raise invalid(
                    rt, name, f"spec.{fld}", f'Invalid value: "{value}": must be an integer or percentage'
                )
    if rt is PODS and old is not None:
        _validate_pod_update(rt, obj, old)


def _validate_pod_update(rt: ResourceType, new: Obj, old: Obj) -> None:
    def neutral(spec: Obj) -> Obj:
        spec = clone(spec)
        for fld in (
            "activeDeadlineSeconds",
            "tolerations",
            "terminationGracePeriodSeconds",
            "schedulingGates",
        ):
            spec.pop(fld, None)
        for fld in ("containers", "initContainers"):
            for container in spec.get(fld) or []:
                if isinstance(container, dict):
                    container.pop("image", None)
        return spec

    if not json_equal(neutral(new.get("spec") or {}), neutral(old.get("spec") or {})):
        raise invalid(
            rt,
            new["metadata"]["name"],
            "spec",
            "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,"
            "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` "
            "(only additions to existing tolerations),`spec.terminationGracePeriodSeconds` "
            "(allow it to be set to 1 if it was previously negative)",
            "FieldValueForbidden",
        )


_NODE_INFO_FIELDS = (
    "machineID",
    "systemUUID",
    "bootID",
    "kernelVersion",
    "osImage",
    "containerRuntimeVersion",
    "kubeletVersion",
    "kubeProxyVersion",
    "operatingSystem",
    "architecture",
)
_WORKLOADS = ("deployments.apps", "replicasets.apps", "daemonsets.apps", "statefulsets.apps")


def _fill(items: Any, zeros: Obj) -> None:
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict):
            for key, zero in zeros.items():
                if item.get(key) is None:
                    item[key] = clone(zero)


def _section(obj: Obj, key: str) -> Obj:
    value = obj.get(key)
    if not isinstance(value, dict):
        value = {}
        obj[key] = value
    return value


def complete_fields(rt: ResourceType, obj: Obj) -> None:
    """Add the fields a Go struct always serialises (no ``omitempty``).

    The real apiserver round-trips every object through its Go type, so these are never
    missing on the wire, and the pydantic models of the ``kubernetes`` client reject objects
    without them. Fixtures written by hand would otherwise break reads that work in a cluster.
    """
    _fill(obj["metadata"].get("ownerReferences"), {"apiVersion": "", "kind": "", "name": "", "uid": ""})
    condition = {"type": "", "status": ""}
    if rt is NODES:
        spec, status = _section(obj, "spec"), _section(obj, "status")
        info = _section(status, "nodeInfo")
        for fld in _NODE_INFO_FIELDS:
            if info.get(fld) is None:
                info[fld] = ""
        _section(_section(status, "daemonEndpoints"), "kubeletEndpoint").setdefault("Port", 0)
        _fill(status.get("conditions"), condition)
        _fill(status.get("addresses"), {"type": "", "address": ""})
        _fill(spec.get("taints"), {"key": "", "effect": ""})
    elif rt is PODS:
        spec, status = _section(obj, "spec"), _section(obj, "status")
        if not isinstance(spec.get("containers"), list):
            spec["containers"] = []
        _fill(spec["containers"], {"name": ""})
        _fill(spec.get("initContainers"), {"name": ""})
        _fill(status.get("conditions"), condition)
        container_status = {"name": "", "image": "", "imageID": "", "ready": False, "restartCount": 0}
        _fill(status.get("containerStatuses"), container_status)
        _fill(status.get("initContainerStatuses"), container_status)
    elif rt.key in _WORKLOADS:
        spec, status = _section(obj, "spec"), _section(obj, "status")
        _section(spec, "selector")
        if rt.key != "replicasets.apps" or "template" in spec:
            _section(_section(spec, "template"), "spec").setdefault("containers", [])
        if rt.key == "daemonsets.apps":
            for fld in (
                "currentNumberScheduled",
                "desiredNumberScheduled",
                "numberMisscheduled",
                "numberReady",
            ):
                status.setdefault(fld, 0)
        elif rt.key != "deployments.apps":
            status.setdefault("replicas", 0)
    elif rt.key == "events":
        _section(obj, "involvedObject")
    elif rt.key == "events.events.k8s.io" and not obj.get("eventTime"):
        created = str(obj["metadata"].get("creationTimestamp") or to_iso(utc_now()))
        obj["eventTime"] = created.replace("Z", ".000000Z")
    elif rt is NAMESPACES:
        _fill(_section(obj, "status").get("conditions"), condition)
    elif rt.key == "services":
        _fill(_section(obj, "spec").get("ports"), {"port": 0})

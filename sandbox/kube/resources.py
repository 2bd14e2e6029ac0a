"""The resource types the simulated API server serves, and the lookups by key, GVR and GVK.

One table drives the registry (which types exist, which have ``/status``, which answer
DELETE with the object), the router (group/version/plural) and discovery.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ResourceType:
    plural: str
    singular: str
    kind: str
    group: str
    version: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    has_status: bool = False
    custom: bool = False
    # Store.AllowCreateOnUpdate in the real registry: true for leases and events only.
    create_on_update: bool = False
    # Store.ReturnDeletedObject: pods, services and custom resources answer DELETE with the object.
    return_deleted_object: bool = False

    @property
    def key(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        """How the apiserver names the resource in messages: ``pods``, ``deployments.apps``."""
        return self.key


def _flux(
    plural: str, singular: str, kind: str, *, group: str, version: str, short_name: str
) -> ResourceType:
    """A Flux custom resource: namespaced, with a status, answering DELETE with the object
    as custom resources do."""
    return ResourceType(
        plural,
        singular,
        kind,
        group,
        version,
        True,
        (short_name,),
        ("flux",),
        has_status=True,
        custom=True,
        return_deleted_object=True,
    )


RESOURCE_TYPES: tuple[ResourceType, ...] = (
    ResourceType("namespaces", "namespace", "Namespace", "", "v1", False, ("ns",), has_status=True),
    ResourceType("nodes", "node", "Node", "", "v1", False, ("no",), has_status=True),
    ResourceType(
        "pods", "pod", "Pod", "", "v1", True, ("po",), ("all",), has_status=True, return_deleted_object=True
    ),
    ResourceType("events", "event", "Event", "", "v1", True, ("ev",), create_on_update=True),
    ResourceType(
        "services",
        "service",
        "Service",
        "",
        "v1",
        True,
        ("svc",),
        ("all",),
        has_status=True,
        return_deleted_object=True,
    ),
    ResourceType("configmaps", "configmap", "ConfigMap", "", "v1", True, ("cm",)),
    ResourceType("deployments", "deployment", "Deployment", "apps", "v1", True, ("deploy",), ("all",), True),
    ResourceType("replicasets", "replicaset", "ReplicaSet", "apps", "v1", True, ("rs",), ("all",), True),
    ResourceType("daemonsets", "daemonset", "DaemonSet", "apps", "v1", True, ("ds",), ("all",), True),
    ResourceType("statefulsets", "statefulset", "StatefulSet", "apps", "v1", True, ("sts",), ("all",), True),
    ResourceType(
        "poddisruptionbudgets",
        "poddisruptionbudget",
        "PodDisruptionBudget",
        "policy",
        "v1",
        True,
        ("pdb",),
        (),
        True,
    ),
    ResourceType("leases", "lease", "Lease", "coordination.k8s.io", "v1", True, create_on_update=True),
    ResourceType("events", "event", "Event", "events.k8s.io", "v1", True, ("ev",), create_on_update=True),
    _flux(
        "gitrepositories",
        "gitrepository",
        "GitRepository",
        group="source.toolkit.fluxcd.io",
        version="v1",
        short_name="gitrepo",
    ),
    _flux(
        "kustomizations",
        "kustomization",
        "Kustomization",
        group="kustomize.toolkit.fluxcd.io",
        version="v1",
        short_name="ks",
    ),
    _flux(
        "helmreleases",
        "helmrelease",
        "HelmRelease",
        group="helm.toolkit.fluxcd.io",
        version="v2",
        short_name="hr",
    ),
)
BY_KEY: dict[str, ResourceType] = {rt.key: rt for rt in RESOURCE_TYPES}
BY_GVR: dict[tuple[str, str, str], ResourceType] = {
    (rt.group, rt.version, rt.plural): rt for rt in RESOURCE_TYPES
}
BY_GVK: dict[tuple[str, str], ResourceType] = {(rt.api_version, rt.kind): rt for rt in RESOURCE_TYPES}
GROUP_VERSIONS: dict[str, list[str]] = {}
for _rt in RESOURCE_TYPES:
    if _rt.group and _rt.version not in GROUP_VERSIONS.setdefault(_rt.group, []):
        GROUP_VERSIONS[_rt.group].append(_rt.version)

PODS = BY_KEY["pods"]
NODES = BY_KEY["nodes"]
NAMESPACES = BY_KEY["namespaces"]
PDBS = BY_KEY["poddisruptionbudgets.policy"]
# The controllers whose scale the disruption controller's finders read, by kind.
SCALED_CONTROLLERS = {
    "ReplicaSet": "replicasets.apps",
    "Deployment": "deployments.apps",
    "StatefulSet": "statefulsets.apps",
}


def resource_type(resource: str) -> ResourceType:
    try:
        return BY_KEY[resource]
    except KeyError:
        raise ValueError(f"unknown resource {resource!r}; known: {sorted(BY_KEY)}") from None

"""Discovery: ``/version``, ``/api``, ``/apis`` and the per-group documents kubectl and the
clients read before any request, built from the resource table."""

from __future__ import annotations

import base64

from sandbox.kube.objects import Obj
from sandbox.kube.resources import GROUP_VERSIONS, PODS, RESOURCE_TYPES

SERVER_VERSION = {
    "major": "1",
    "minor": "31",
    "gitVersion": "v1.31.4",
    "gitCommit": "a78aa47129b8539636eb86a9d00e31b2720fe06b",
    "gitTreeState": "clean",
    "buildDate": "2024-12-10T11:37:34Z",
    "goVersion": "go1.22.9",
    "compiler": "gc",
    "platform": "linux/amd64",
}
_STANDARD_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def api_resource_list(group: str, version: str) -> Obj:
    resources: list[Obj] = []
    for rt in RESOURCE_TYPES:
        if rt.group != group or rt.version != version:
            continue
        entry: Obj = {
            "name": rt.plural,
            "singularName": rt.singular,
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": list(_STANDARD_VERBS),
        }
        if rt.short_names:
            entry["shortNames"] = list(rt.short_names)
        if rt.categories:
            entry["categories"] = list(rt.categories)
        entry["storageVersionHash"] = base64.b64encode(f"{rt.key}/{rt.version}".encode()).decode()[:12]
        resources.append(entry)
        if rt.has_status:
            resources.append(
                {
                    "name": f"{rt.plural}/status",
                    "singularName": "",
                    "namespaced": rt.namespaced,
                    "kind": rt.kind,
                    "verbs": ["get", "patch", "update"],
                }
            )
        if rt is PODS:
            resources.append(
                {
                    "name": "pods/eviction",
                    "singularName": "",
                    "namespaced": True,
                    "group": "policy",
                    "version": "v1",
                    "kind": "Eviction",
                    "verbs": ["create"],
                }
            )
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": f"{group}/{version}" if group else version,
        "resources": resources,
    }


REVIEW_KINDS = {
    "selfsubjectaccessreviews": "SelfSubjectAccessReview",
    "selfsubjectrulesreviews": "SelfSubjectRulesReview",
}
AUTHORIZATION_GROUP: Obj = {
    "name": "authorization.k8s.io",
    "versions": [{"groupVersion": "authorization.k8s.io/v1", "version": "v1"}],
    "preferredVersion": {"groupVersion": "authorization.k8s.io/v1", "version": "v1"},
}
AUTHORIZATION_RESOURCES: Obj = {
    "kind": "APIResourceList",
    "apiVersion": "v1",
    "groupVersion": "authorization.k8s.io/v1",
    "resources": [
        {"name": plural, "singularName": "", "namespaced": False, "kind": kind, "verbs": ["create"]}
        for plural, kind in REVIEW_KINDS.items()
    ],
}


def api_group_document(group: str) -> Obj:
    versions = [{"groupVersion": f"{group}/{v}", "version": v} for v in GROUP_VERSIONS[group]]
    return {"name": group, "versions": versions, "preferredVersion": versions[0]}


def discovery_document(path: str, *, server_address: str) -> Obj | None:
    """The discovery document served at ``path``, or None if ``path`` is not one."""
    document: Obj | None = None
    if path == "/api":
        document = {
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
        }
    elif path == "/api/v1":
        document = api_resource_list("", "v1")
    elif path == "/apis":
        document = {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [*(api_group_document(g) for g in GROUP_VERSIONS), AUTHORIZATION_GROUP],
        }
    elif path == "/apis/authorization.k8s.io":
        document = {"kind": "APIGroup", "apiVersion": "v1", **AUTHORIZATION_GROUP}
    elif path == "/apis/authorization.k8s.io/v1":
        document = AUTHORIZATION_RESOURCES
    else:
        parts = path.strip("/").split("/")
        if parts[0] == "apis" and len(parts) in (2, 3) and parts[1] in GROUP_VERSIONS:
            if len(parts) == 2:
                document = {"kind": "APIGroup", "apiVersion": "v1", **api_group_document(parts[1])}
            elif parts[2] in GROUP_VERSIONS[parts[1]]:
                document = api_resource_list(parts[1], parts[2])
    return document

"""The sandbox's RBAC authorizer decides as Kubernetes' does (table-driven)."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox.kube.rbac import Authorizer, Request, User, forbidden_message, verb_for
from sandbox.stack import RBAC_MANIFESTS, app_identity

APP = User.service_account("patcher", "app")
OTHER = User.service_account("patcher", "other")


def _authorizer(*objects: dict[str, Any]) -> Authorizer:
    authorizer = Authorizer()
    for obj in objects:
        assert authorizer.add(obj)
    return authorizer


def _cluster_role(name: str, *rules: dict[str, Any]) -> dict[str, Any]:
    return {"kind": "ClusterRole", "metadata": {"name": name}, "rules": list(rules)}


def _binding(kind: str, role_kind: str, role: str, namespace: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": f"{role}-binding"}
    if namespace:
        meta["namespace"] = namespace
    return {
        "kind": kind,
        "metadata": meta,
        "roleRef": {"kind": role_kind, "name": role, "apiGroup": "rbac.authorization.k8s.io"},
        "subjects": [{"kind": "ServiceAccount", "name": "app", "namespace": "patcher"}],
    }


NODES_RULE = {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "patch"]}
EVICT_RULE = {"apiGroups": [""], "resources": ["pods/eviction"], "verbs": ["create"]}
FLUX_RULE = {
    "apiGroups": ["source.toolkit.fluxcd.io"],
    "resources": ["gitrepositories"],
    "verbs": ["patch"],
    "resourceNames": ["fleet"],
}
VERSION_RULE = {"nonResourceURLs": ["/version", "/healthz/*"], "verbs": ["get"]}


@pytest.mark.parametrize(
    ("method", "named", "watch", "verb"),
    [
        ("GET", True, False, "get"),
        ("GET", False, False, "list"),
        ("GET", False, True, "watch"),
        ("GET", True, True, "watch"),
        ("POST", False, False, "create"),
        ("PUT", True, False, "update"),
        ("PATCH", True, False, "patch"),
        ("DELETE", True, False, "delete"),
        ("DELETE", False, False, "deletecollection"),
    ],
)
def test_the_verb_comes_from_the_method_the_name_and_watch(
    method: str, named: bool, watch: bool, verb: str
) -> None:
    assert verb_for(method, named=named, watch=watch) == verb


@pytest.mark.parametrize(
    ("request_", "allowed"),
    [
        (Request("list", resource="nodes"), True),
        (Request("watch", resource="nodes"), False),  # a verb the role lacks
        (Request("delete", resource="nodes", name="n1"), False),
        (Request("list", api_group="apps", resource="nodes"), False),  # another group
        (Request("create", resource="pods", subresource="eviction", namespace="shop", name="web"), True),
        (Request("create", resource="pods", namespace="shop"), False),  # the subresource only
        (
            Request("patch", api_group="source.toolkit.fluxcd.io", resource="gitrepositories", name="fleet"),
            True,
        ),
        (Request("patch", api_group="source.toolkit.fluxcd.io", resource="gitrepositories", name="x"), False),
        (Request("get", resource_request=False, path="/version"), True),
        (Request("get", resource_request=False, path="/healthz/etcd"), True),
        (Request("get", resource_request=False, path="/metrics"), False),
    ],
)
def test_a_cluster_role_binding_grants_its_rules_everywhere(request_: Request, allowed: bool) -> None:
    authorizer = _authorizer(
        _cluster_role("app", NODES_RULE, EVICT_RULE, FLUX_RULE, VERSION_RULE),
        _binding("ClusterRoleBinding", "ClusterRole", "app"),
    )
    assert authorizer.allowed(APP, request_) is allowed
    assert authorizer.allowed(OTHER, request_) is False  # bound to nobody else


def test_a_role_binding_grants_only_in_its_namespace() -> None:
    role = {
        "kind": "Role",
        "metadata": {"name": "events", "namespace": "default"},
        "rules": [{"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}],
    }
    authorizer = _authorizer(role, _binding("RoleBinding", "Role", "events", "default"))
    assert authorizer.allowed(APP, Request("create", resource="events", namespace="default"))
    assert not authorizer.allowed(APP, Request("create", resource="events", namespace="kube-system"))
    assert not authorizer.allowed(APP, Request("create", resource="events"))


def test_a_role_binding_to_a_cluster_role_is_limited_to_its_namespace() -> None:
    authorizer = _authorizer(
        _cluster_role("reader", {"apiGroups": ["*"], "resources": ["*"], "verbs": ["get"]}),
        _binding("RoleBinding", "ClusterRole", "reader", "shop"),
    )
    assert authorizer.allowed(APP, Request("get", api_group="apps", resource="deployments", namespace="shop"))
    assert not authorizer.allowed(APP, Request("get", resource="pods", namespace="other"))


def test_masters_may_do_everything() -> None:
    admin = User("admin", ("system:masters",))
    assert Authorizer().allowed(admin, Request("delete", resource="nodes", name="n1"))


def test_a_denial_reads_as_the_apiservers() -> None:
    assert forbidden_message(APP, Request("watch", resource="pods")) == (
        'pods is forbidden: User "system:serviceaccount:patcher:app" cannot watch resource "pods" '
        'in API group "" at the cluster scope'
    )
    assert forbidden_message(
        APP, Request("create", resource="pods", subresource="eviction", namespace="shop", name="web")
    ) == (
        'pods "web" is forbidden: User "system:serviceaccount:patcher:app" cannot create resource '
        '"pods/eviction" in API group "" in the namespace "shop"'
    )
    assert forbidden_message(APP, Request("get", resource_request=False, path="/metrics")) == (
        'forbidden: User "system:serviceaccount:patcher:app" cannot get path "/metrics"'
    )


def test_the_shipped_manifests_let_the_app_watch_and_evict_but_not_delete_nodes() -> None:
    authorizer = Authorizer.from_manifests(RBAC_MANIFESTS)
    app = app_identity()
    assert authorizer.allowed(app, Request("watch", resource="pods"))
    assert authorizer.allowed(app, Request("watch", resource="nodes"))
    assert authorizer.allowed(
        app, Request("create", resource="pods", subresource="eviction", namespace="x", name="p")
    )
    assert not authorizer.allowed(app, Request("delete", resource="nodes", name="n1"))
    assert not authorizer.allowed(app, Request("delete", resource="pods", namespace="x", name="p"))

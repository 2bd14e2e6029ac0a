"""Kubernetes RBAC for the simulated API server, as the RBAC authorizer decides.

A real cluster answers the app's identity with what its Roles and ClusterRoles grant and
nothing more, so the sandbox must too: a verb missing from the shipped ClusterRole fails
here exactly as it would on the first real run. The rules are read from the manifests
the project ships (``infra/kubernetes/*.yaml``) and matched the way
``k8s.io/kubernetes/pkg/apis/rbac/v1`` helpers match them:

* the request's verb comes from its method, ``watch=true`` or a ``/watch/`` path, and
  whether it names an object (GET one = get, GET many = list, DELETE many =
  deletecollection);
* a ClusterRoleBinding grants its ClusterRole everywhere; a RoleBinding grants its Role
  or ClusterRole in its own namespace only;
* a rule matches on API group, resource (``resource/subresource``, ``*``,
  ``*/subresource``), verb, ``resourceNames`` (only when the request names an object)
  and, for non-resource requests, ``nonResourceURLs`` (exact, or a prefix ending in
  ``*``);
* users in ``system:masters`` may do everything.

A denial is the apiserver's 403 with its message form.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MASTERS = "system:masters"


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()

    @classmethod
    def service_account(cls, namespace: str, name: str) -> User:
        return cls(
            f"system:serviceaccount:{namespace}:{name}",
            ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"),
        )


# The cluster admin of a kubeconfig (the API server's own token), and whom a server started
# without credentials takes every caller for.
ADMIN = User("kubernetes-admin", (MASTERS, "system:authenticated"))


@dataclass(frozen=True)
class Request:
    """What the authorizer looks at (the apiserver's ``authorizer.Attributes``)."""

    verb: str
    resource_request: bool = True
    api_group: str = ""
    resource: str = ""
    subresource: str = ""
    namespace: str = ""
    name: str = ""
    path: str = ""

    @property
    def combined_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


def verb_for(method: str, *, named: bool, watch: bool) -> str:
    """The RBAC verb of an HTTP request, as the apiserver's RequestInfo resolves it."""
    method = method.upper()
    if method == "GET":
        return "watch" if watch else ("get" if named else "list")
    if method == "HEAD":
        return "get" if named else "list"
    if method == "DELETE":
        return "delete" if named else "deletecollection"
    return {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(method, method.lower())


@dataclass(frozen=True)
class Rule:
    verbs: tuple[str, ...]
    api_groups: tuple[str, ...] = ()
    resources: tuple[str, ...] = ()
    resource_names: tuple[str, ...] = ()
    non_resource_urls: tuple[str, ...] = ()

    @classmethod
    def from_manifest(cls, raw: Mapping[str, Any]) -> Rule:
        return cls(
            verbs=tuple(raw.get("verbs") or ()),
            api_groups=tuple(raw.get("apiGroups") or ()),
            resources=tuple(raw.get("resources") or ()),
            resource_names=tuple(raw.get("resourceNames") or ()),
            non_resource_urls=tuple(raw.get("nonResourceURLs") or ()),
        )

    def allows(self, request: Request) -> bool:
        if not ("*" in self.verbs or request.verb in self.verbs):
            return False
        if not request.resource_request:
            return any(
                url == request.path or (url.endswith("*") and request.path.startswith(url[:-1]))
                for url in self.non_resource_urls
            )
        if not ("*" in self.api_groups or request.api_group in self.api_groups):
            return False
        combined = request.combined_resource
        if not any(
            r in ("*", combined) or (request.subresource and r == f"*/{request.subresource}")
            for r in self.resources
        ):
            return False
        # resourceNames restrict only requests that name an object; a list or a create
        # (whose name is not in the URL) never matches a rule that has them.
        return not self.resource_names or (bool(request.name) and request.name in self.resource_names)

    def to_review(self) -> dict[str, Any]:
        if self.non_resource_urls:
            return {"verbs": list(self.verbs), "nonResourceURLs": list(self.non_resource_urls)}
        out: dict[str, Any] = {
            "verbs": list(self.verbs),
            "apiGroups": list(self.api_groups),
            "resources": list(self.resources),
        }
        if self.resource_names:
            out["resourceNames"] = list(self.resource_names)
        return out


@dataclass(frozen=True)
class _Binding:
    namespace: str | None  # None: a ClusterRoleBinding
    role_kind: str
    role_name: str
    subjects: tuple[tuple[str, str, str], ...]  # (kind, name, namespace)

    def binds(self, user: User) -> bool:
        for kind, name, namespace in self.subjects:
            if kind == "User" and name == user.name:
                return True
            if kind == "Group" and name in user.groups:
                return True
            if kind == "ServiceAccount" and user.name == f"system:serviceaccount:{namespace}:{name}":
                return True
        return False


@dataclass
class Authorizer:
    """The RBAC objects of a cluster, and the decisions they make."""

    cluster_roles: dict[str, tuple[Rule, ...]] = field(default_factory=dict)
    roles: dict[tuple[str, str], tuple[Rule, ...]] = field(default_factory=dict)  # (ns, name)
    bindings: list[_Binding] = field(default_factory=list)

    def add(self, obj: Mapping[str, Any]) -> bool:
        """Take one manifest; False if it is not an RBAC object."""
        kind = obj.get("kind")
        meta = obj.get("metadata") or {}
        if kind in ("ClusterRole", "Role"):
            rules = tuple(Rule.from_manifest(r) for r in obj.get("rules") or ())
            if kind == "ClusterRole":
                self.cluster_roles[meta["name"]] = rules
            else:
                self.roles[(meta.get("namespace", "default"), meta["name"])] = rules
            return True
        if kind in ("ClusterRoleBinding", "RoleBinding"):
            ref = obj.get("roleRef") or {}
            subjects = tuple(
                (s.get("kind", ""), s.get("name", ""), s.get("namespace", meta.get("namespace", "")))
                for s in obj.get("subjects") or ()
            )
            namespace = None if kind == "ClusterRoleBinding" else meta.get("namespace", "default")
            self.bindings.append(_Binding(namespace, ref.get("kind", ""), ref.get("name", ""), subjects))
            return True
        return False

    @classmethod
    def from_manifests(cls, paths: Iterable[Path]) -> Authorizer:
        import yaml

        authorizer = cls()
        for path in paths:
            for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
                if isinstance(doc, dict):
                    authorizer.add(doc)
        return authorizer

    def _rules(self, user: User, namespace: str) -> Iterable[Rule]:
        """The rules that apply to ``user`` for a request in ``namespace`` ("" for the
        cluster scope)."""
        for binding in self.bindings:
            if not binding.binds(user):
                continue
            if binding.namespace is not None and binding.namespace != namespace:
                continue
            if binding.role_kind == "ClusterRole":
                yield from self.cluster_roles.get(binding.role_name, ())
            elif binding.namespace is not None:
                yield from self.roles.get((binding.namespace, binding.role_name), ())

    def allowed(self, user: User, request: Request) -> bool:
        if MASTERS in user.groups:
            return True
        return any(rule.allows(request) for rule in self._rules(user, request.namespace))

    def rules_for(self, user: User, namespace: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """What a SelfSubjectRulesReview lists: (resourceRules, nonResourceRules)."""
        if MASTERS in user.groups:
            return (
                [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
                [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
            )
        resource: list[dict[str, Any]] = []
        non_resource: list[dict[str, Any]] = []
        for rule in self._rules(user, namespace):
            (non_resource if rule.non_resource_urls else resource).append(rule.to_review())
        return resource, non_resource


def forbidden_message(user: User, request: Request) -> str:
    """The apiserver's wording for a denied request."""
    if not request.resource_request:
        return f'forbidden: User "{user.name}" cannot {request.verb} path "{request.path}"'
    what = f"{request.resource}.{request.api_group}" if request.api_group else request.resource
    subject = f'{what} "{request.name}"' if request.name else what
    scope = f'in the namespace "{request.namespace}"' if request.namespace else "at the cluster scope"
    return (
        f'{subject} is forbidden: User "{user.name}" cannot {request.verb} resource '
        f'"{request.combined_resource}" in API group "{request.api_group}" {scope}'
    )

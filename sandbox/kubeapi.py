"""A simulated kube-apiserver that real clients cannot tell from the real one (for what we use).

No real kube-apiserver can be installed on the machines this project runs on, and the
PyPI mocks ignore exactly what the patcher depends on (resourceVersions, selectors,
evictions and PodDisruptionBudgets). So the sandbox serves the Kubernetes REST API itself,
over HTTPS with a bearer token, and the production code talks to it through the unmodified
``kubernetes`` client, and the tests through the real ``kubectl``.

Design:

* ``KubeStore`` is the etcd + registry layer: one ``RLock``, one resourceVersion counter for
  every object (like etcd's revision), dict indexes by resource/namespace/name, plus the
  indexes the hot paths need (pods by ``spec.nodeName``, objects by uid, dependents by owner
  uid). Stored dicts are never mutated in place: every write stores a fresh dict, so readers
  (the HTTP layer serialising a response, the watch log) can use them without copying.
* Behaviour that a real cluster gets from controllers but that the patcher observes through
  the API is folded into the store: the kubelet finishing a graceful pod deletion (scheduled
  on the shared ``World`` clock), the PodDisruptionBudget status (computed on read, exactly as
  the disruption controller would), the garbage collector removing dependents, and the
  namespace controller emptying a terminating namespace. Everything else (schedulers,
  ReplicaSets recreating pods, node heartbeats) is left to the rest of the sandbox, which
  drives the store through ``create``/``mutate``/``remove_now``.
* ``KubeAPIServer`` is the HTTP layer: a stdlib ``ThreadingHTTPServer`` speaking HTTP/1.1
  keep-alive, which routes ``/api`` and ``/apis`` paths to the store and renders what
  clients expect: discovery documents, typed lists, ``Table`` output for kubectl, chunked
  watch streams and ``kind: Status`` errors whose codes, reasons and messages follow the real
  apiserver's, because client code branches on them.
* The Python methods of ``KubeStore`` are the simulation's backdoor and keep what they are
  given (a pod created there keeps its ``status``, as if the kubelet had written it), while
  writes through the API get the apiserver's treatment: system fields and status reset on
  create, status only through ``/status``, optimistic concurrency, validation. Either way,
  stored objects are completed with the fields a Go struct always serialises, because the
  pydantic models of the ``kubernetes`` client reject objects without them.
* Listeners (``add_listener``) are called after the store lock is released, in
  resourceVersion order, so a listener may itself write to the store.

Where the real apiserver's behaviour was looked up (patch handler, eviction REST, disruption
controller, generic server responses), the comments name the Go function being mirrored.
"""

from __future__ import annotations

import base64
import bisect
import builtins
import hmac
import json
import logging
import math
import random
import re
import socket
import ssl
import string
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast
from urllib.parse import parse_qs, unquote, urlsplit

from sandbox.rbac import Authorizer, User, forbidden_message, verb_for
from sandbox.rbac import Request as RbacRequest
from sandbox.tls import SandboxTLS
from sandbox.world import World

logger = logging.getLogger(__name__)

Obj = dict[str, Any]

HANG_TERMINATING_ANNOTATION = "sandbox.vmss-node-patcher.io/hang-terminating"
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
_DEFAULT_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
_DEFAULT_GRACE_SECONDS = 30
_DEFAULT_WATCH_TIMEOUT_S = 1800.0


# --------------------------------------------------------------------------- resource types


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
    ResourceType(
        "gitrepositories",
        "gitrepository",
        "GitRepository",
        "source.toolkit.fluxcd.io",
        "v1",
        True,
        ("gitrepo",),
        ("flux",),
        has_status=True,
        custom=True,
        return_deleted_object=True,
    ),
    ResourceType(
        "kustomizations",
        "kustomization",
        "Kustomization",
        "kustomize.toolkit.fluxcd.io",
        "v1",
        True,
        ("ks",),
        ("flux",),
        has_status=True,
        custom=True,
        return_deleted_object=True,
    ),
    ResourceType(
        "helmreleases",
        "helmrelease",
        "HelmRelease",
        "helm.toolkit.fluxcd.io",
        "v2",
        True,
        ("hr",),
        ("flux",),
        has_status=True,
        custom=True,
        return_deleted_object=True,
    ),
)
_BY_KEY: dict[str, ResourceType] = {rt.key: rt for rt in RESOURCE_TYPES}
_BY_GVR: dict[tuple[str, str, str], ResourceType] = {
    (rt.group, rt.version, rt.plural): rt for rt in RESOURCE_TYPES
}
_BY_GVK: dict[tuple[str, str], ResourceType] = {(rt.api_version, rt.kind): rt for rt in RESOURCE_TYPES}
_GROUP_VERSIONS: dict[str, list[str]] = {}
for _rt in RESOURCE_TYPES:
    if _rt.group and _rt.version not in _GROUP_VERSIONS.setdefault(_rt.group, []):
        _GROUP_VERSIONS[_rt.group].append(_rt.version)

_PODS = _BY_KEY["pods"]
_NODES = _BY_KEY["nodes"]
_NAMESPACES = _BY_KEY["namespaces"]
_PDBS = _BY_KEY["poddisruptionbudgets.policy"]
# The controllers whose scale the disruption controller's finders read, by kind.
_SCALED_CONTROLLERS = {
    "ReplicaSet": "replicasets.apps",
    "Deployment": "deployments.apps",
    "StatefulSet": "statefulsets.apps",
}
ADMIN = User("kubernetes-admin", ("system:masters", "system:authenticated"))
_STANDARD_VERBS = ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


def resource_type(resource: str) -> ResourceType:
    try:
        return _BY_KEY[resource]
    except KeyError:
        raise ValueError(f"unknown resource {resource!r}; known: {sorted(_BY_KEY)}") from None


# --------------------------------------------------------------------------- errors


class KubeError(Exception):
    """An API error; ``status()`` is the ``kind: Status`` body the apiserver would send."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        name: str = "",
        group: str = "",
        kind: str = "",
        causes: list[dict[str, str]] | None = None,
        retry_after_seconds: int = 0,
        details: bool = True,
    ) -> None:
        super().__init__(f"{code} {reason}: {message}")
        self.code = code
        self.reason = reason
        self.message = message
        self.name = name
        self.group = group
        self.kind = kind
        self.causes = causes or []
        self.retry_after_seconds = retry_after_seconds
        self._details = details

    def status(self) -> Obj:
        body: Obj = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure"}
        body["message"] = self.message
        if self.reason:
            body["reason"] = self.reason
        if self._details:
            details: Obj = {}
            for key, value in (("name", self.name), ("group", self.group), ("kind", self.kind)):
                if value:
                    details[key] = value
            if self.causes:
                details["causes"] = self.causes
            if self.retry_after_seconds:
                details["retryAfterSeconds"] = self.retry_after_seconds
            body["details"] = details
        body["code"] = self.code
        return body


class _ScaleUnknownError(Exception):
    """The disruption controller could not compute a budget's expected pods."""


def _not_found(rt: ResourceType, name: str) -> KubeError:
    return KubeError(
        404, "NotFound", f'{rt.qualified} "{name}" not found', name=name, group=rt.group, kind=rt.plural
    )


def _already_exists(rt: ResourceType, name: str) -> KubeError:
    return KubeError(
        409,
        "AlreadyExists",
        f'{rt.qualified} "{name}" already exists',
        name=name,
        group=rt.group,
        kind=rt.plural,
    )


def _conflict(rt: ResourceType, name: str, why: str) -> KubeError:
    return KubeError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {rt.qualified} "{name}": {why}',
        name=name,
        group=rt.group,
        kind=rt.plural,
    )


_MODIFIED = "the object has been modified; please apply your changes to the latest version and try again"


def _invalid(
    rt: ResourceType, name: str, field: str, detail: str, cause: str = "FieldValueInvalid"
) -> KubeError:
    qualified_kind = f"{rt.kind}.{rt.group}" if rt.group else rt.kind
    return KubeError(
        422,
        "Invalid",
        f'{qualified_kind} "{name}" is invalid: {field}: {detail}',
        name=name,
        group=rt.group,
        kind=rt.kind,
        causes=[{"reason": cause, "message": detail, "field": field}],
    )


def _bad_request(message: str) -> KubeError:
    return KubeError(400, "BadRequest", message, details=False)


def _name_mismatch(in_body: Any, in_url: str) -> KubeError:
    return _bad_request(f"the name of the object ({in_body}) does not match the name on the URL ({in_url})")


def _version_mismatch(in_body: Any, expected: str) -> KubeError:
    return _bad_request(
        f"the API version in the data ({in_body}) does not match the expected API version ({expected})"
    )


def _unsupported_media_type(accepted: list[str]) -> KubeError:
    # negotiation.NewUnsupportedMediaTypeError: no details, this exact sentence.
    return KubeError(
        415,
        "UnsupportedMediaType",
        "the body of the request was in an unknown format - accepted media types include: "
        + ", ".join(accepted),
        details=False,
    )


def _resource_not_found() -> KubeError:
    return KubeError(404, "NotFound", "the server could not find the requested resource")


def _method_not_allowed() -> KubeError:
    return KubeError(
        405, "MethodNotAllowed", "the server does not allow this method on the requested resource"
    )


# --------------------------------------------------------------------------- small helpers


def _clone(value: Any) -> Any:
    # Objects are plain JSON trees, for which this is several times faster than copy.deepcopy.
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clone(v) for v in value]
    return value


def _json_equal(a: Any, b: Any) -> bool:
    """Equality as JSON sees it: ``True`` is not ``1``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    return type(a) is type(b) and bool(a == b)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def human_duration(seconds: float) -> str:
    """k8s.io/apimachinery/pkg/util/duration.HumanDuration, which every AGE column uses."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        rest = s % 60
        return f"{minutes}m" if rest == 0 else f"{minutes}m{rest}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h" if rest == 0 else f"{hours}h{rest}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d" if rest == 0 else f"{hours // 24}d{rest}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        days = (hours // 24) % 365
        return f"{hours // 24 // 365}y" if days == 0 else f"{hours // 24 // 365}y{days}d"
    return f"{hours // 24 // 365}y"


def _age(obj: Obj) -> str:
    created = _parse_time(obj.get("metadata", {}).get("creationTimestamp"))
    if created is None:
        return "<unknown>"
    return human_duration((_now() - created).total_seconds())


def _meta(obj: Obj) -> Obj:
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        meta = {}
        obj["metadata"] = meta
    return meta


def _get_path(obj: Any, dotted: str) -> Any:
    cur = obj
    for part in dotted.split("."):
        if not isinstance(cur, dict):
            return None
        cur = cur.get(part)
    return cur


_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


# --------------------------------------------------------------------------- selectors


@dataclass(frozen=True)
class _Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!", "gt", "lt"
    values: tuple[str, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op == "=":
            return present and value == self.values[0]
        if self.op == "!=":
            return not present or value != self.values[0]
        if self.op == "in":
            return present and value in self.values
        if self.op == "notin":
            return not present or value not in self.values
        if self.op == "exists":
            return present
        if self.op == "!":
            return not present
        if self.op in ("gt", "lt"):
            try:
                have, want = int(str(value)), int(self.values[0])
            except ValueError:
                return False
            return present and (have > want if self.op == "gt" else have < want)
        return False


LabelSelector = tuple[_Requirement, ...]
_EQUALITY_TERM = re.compile(r"^\s*([^\s!=<>(),]+)\s*(==|=|!=|>|<)\s*([^\s,()]*)\s*$")
_SET_TERM = re.compile(r"^\s*([^\s!=<>(),]+)\s+(in|notin)\s*\(([^()]*)\)\s*$")
_EXISTS_TERM = re.compile(r"^\s*(!?)\s*([^\s!=<>(),]+)\s*$")


def _split_top_level(text: str) -> list[str]:
    parts: list[str] = []
    cur: list[str] = []
    depth = 0
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def parse_label_selector(text: str | None) -> LabelSelector:
    """Parse the ``labelSelector`` query syntax (labels.Parse)."""
    if not text or not text.strip():
        return ()
    reqs: list[_Requirement] = []
    for term in _split_top_level(text):
        if not term.strip():
            raise _bad_request(f"unable to parse requirement: found '', expected: identifier in {text!r}")
        if m := _SET_TERM.match(term):
            values = tuple(v.strip() for v in m.group(3).split(",") if v.strip())
            reqs.append(_Requirement(m.group(1), m.group(2), values))
        elif m := _EQUALITY_TERM.match(term):
            op = {"==": "=", "=": "=", "!=": "!=", ">": "gt", "<": "lt"}[m.group(2)]
            if op in ("gt", "lt") and not re.fullmatch(r"-?\d+", m.group(3)):
                raise _bad_request(
                    "unable to parse requirement: for 'Gt', 'Lt' operators, the value must be an integer"
                )
            reqs.append(_Requirement(m.group(1), op, (m.group(3),)))
        elif m := _EXISTS_TERM.match(term):
            reqs.append(_Requirement(m.group(2), "!" if m.group(1) else "exists"))
        else:
            raise _bad_request(f"unable to parse requirement: {term.strip()!r} in selector {text!r}")
    return tuple(reqs)


def label_selector_from_struct(selector: Any) -> LabelSelector | None:
    """metav1.LabelSelectorAsSelector: ``None`` for a nil selector (matches nothing)."""
    if not isinstance(selector, dict):
        return None
    reqs: list[_Requirement] = []
    for key, value in sorted((selector.get("matchLabels") or {}).items()):
        reqs.append(_Requirement(key, "=", (str(value),)))
    ops = {"In": "in", "NotIn": "notin", "Exists": "exists", "DoesNotExist": "!"}
    for expr in selector.get("matchExpressions") or []:
        op = ops.get(expr.get("operator", ""))
        if op is None:
            return None
        reqs.append(_Requirement(expr.get("key", ""), op, tuple(str(v) for v in expr.get("values") or [])))
    return tuple(reqs)


def labels_match(selector: LabelSelector, obj: Obj) -> bool:
    labels = obj.get("metadata", {}).get("labels") or {}
    return all(req.matches(labels) for req in selector)


# fields.Parse + the per-kind field label conversion funcs: these are the only fields the apiserver accepts.
_COMMON_FIELDS = {"metadata.name", "metadata.namespace"}
_SUPPORTED_FIELDS: dict[str, set[str]] = {
    "pods": _COMMON_FIELDS
    | {
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    },
    "nodes": _COMMON_FIELDS | {"spec.unschedulable"},
    "namespaces": _COMMON_FIELDS | {"status.phase"},
    "events": _COMMON_FIELDS
    | {
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    },
    "replicasets.apps": _COMMON_FIELDS | {"status.replicas"},
}
FieldSelector = tuple[tuple[str, str, str], ...]  # (field, "=" | "!=", value)


def parse_field_selector(text: str | None, rt: ResourceType) -> FieldSelector:
    if not text or not text.strip():
        return ()
    supported = _SUPPORTED_FIELDS.get(rt.key, _COMMON_FIELDS)
    terms: list[tuple[str, str, str]] = []
    for raw in re.split(r"(?<!\\),", text):
        m = re.match(r"^\s*([^=!\s]+)\s*(==|=|!=)\s*(.*?)\s*$", raw)
        if not m:
            raise _bad_request(f"invalid selector: '{text}'; can't understand '{raw}'")
        fld, op, value = m.group(1), "!=" if m.group(2) == "!=" else "=", m.group(3)
        if fld not in supported:
            raise _bad_request(f"field label not supported: {fld}")
        value = re.sub(r"\\(.)", r"\1", value)
        terms.append((fld, op, value))
    return tuple(terms)


def _field_value(obj: Obj, fld: str) -> str:
    if fld == "source":
        fld = "source.component"
    value = _get_path(obj, fld)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def fields_match(selector: FieldSelector, obj: Obj) -> bool:
    for fld, op, want in selector:
        have = _field_value(obj, fld)
        if (have == want) != (op == "="):
            return False
    return True


# --------------------------------------------------------------------------- patches

# Patch merge keys of the built-in types (the `patchMergeKey` struct tags of k8s.io/api), keyed
# by the list's field name; lists not named here are atomic and replaced as a whole.
_SMP_MERGE_KEYS = {
    "conditions": "type",
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "volumes": "name",
    "env": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "ownerReferences": "uid",
    "hostAliases": "ip",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
    "schedulingGates": "name",
}
_SMP_PRIMITIVE_SETS = {"finalizers"}


def _smp_merge_key(path: tuple[str, ...]) -> str | None:
    field = path[-1]
    if field == "ports":
        # ServiceSpec.Ports merge on "port"; Container.Ports on "containerPort".
        return "port" if path == ("spec", "ports") else "containerPort"
    if field == "addresses":
        return "type" if path == ("status", "addresses") else None
    return _SMP_MERGE_KEYS.get(field)


def strategic_merge(original: Obj, patch: Obj, path: tuple[str, ...] = ()) -> Obj | None:
    """Strategic merge patch for the built-in kinds (k8s.io/apimachinery strategicpatch).

    Maps merge recursively and ``null`` deletes a key; lists with a patch merge key merge
    element-wise (``$patch: delete`` removes one, ``$patch: replace`` replaces the list);
    ``finalizers`` merge as a set with ``$deleteFromPrimitiveList``; other lists are replaced.
    ``$setElementOrder`` is accepted and ignored. Returns ``None`` for ``$patch: delete`` on
    the map itself.
    """
    directive = patch.get("$patch")
    if directive == "delete":
        return None
    if directive == "replace":
        return {k: _clone(v) for k, v in patch.items() if k != "$patch"}
    result = dict(original)
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            target = key.split("/", 1)[1]
            current = result.get(target)
            if isinstance(current, list) and isinstance(value, list):
                result[target] = [x for x in current if x not in value]
            continue
        if value is None:
            result.pop(key, None)
            continue
        current = result.get(key)
        if isinstance(value, dict):
            merged = strategic_merge(current if isinstance(current, dict) else {}, value, (*path, key))
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            result[key] = _smp_list(current if isinstance(current, list) else [], value, (*path, key))
        else:
            result[key] = value
    retain = patch.get("$retainKeys")
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain or k not in original}
    return result


def _smp_list(original: list[Any], patch: list[Any], path: tuple[str, ...]) -> list[Any]:
    if any(isinstance(x, dict) and x.get("$patch") == "replace" for x in patch):
        return [_clone(x) for x in patch if not (isinstance(x, dict) and x.get("$patch") == "replace")]
    if path[-1] in _SMP_PRIMITIVE_SETS:
        return list(original) + [_clone(x) for x in patch if x not in original]
    key = _smp_merge_key(path)
    if key is None or not all(isinstance(x, dict) for x in patch):
        return [_clone(x) for x in patch]
    result = list(original)
    for item in patch:
        idx = next(
            (
                i
                for i, e in enumerate(result)
                if isinstance(e, dict) and key in item and e.get(key) == item[key]
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if idx is not None:
                del result[idx]
            continue
        merged = strategic_merge(result[idx] if idx is not None else {}, item, path)
        if merged is None:
            continue
        if idx is None:
            result.append(merged)
        else:
            result[idx] = merged
    return result


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return _clone(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class _JSONPatchError(Exception):
    pass


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise _JSONPatchError(f"invalid JSON pointer {path!r}")
    if path == "":
        return []
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _resolve_parent(doc: Any, parts: list[str], op: str) -> tuple[Any, str]:
    cur = doc
    for part in parts[:-1]:
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            raise _JSONPatchError(f"{op} operation does not apply: doc is missing path: /{'/'.join(parts)}")
    return cur, parts[-1]


def _jp_get(doc: Any, parts: list[str], op: str) -> Any:
    if not parts:
        return doc
    parent, last = _resolve_parent(doc, parts, op)
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise _JSONPatchError(f"{op} operation does not apply: doc is missing key: /{'/'.join(parts)}")


def _jp_remove(doc: Any, parts: list[str], op: str) -> Any:
    parent, last = _resolve_parent(doc, parts, op)
    if isinstance(parent, dict) and last in parent:
        return parent.pop(last)
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent.pop(int(last))
    raise _JSONPatchError(f"{op} operation does not apply: doc is missing key: /{'/'.join(parts)}")


def _jp_add(doc: Any, parts: list[str], value: Any, op: str) -> Any:
    if not parts:
        return value
    parent, last = _resolve_parent(doc, parts, op)
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent):
            parent.insert(int(last), value)
        else:
            raise _JSONPatchError(f"{op} operation does not apply: index out of bounds: /{'/'.join(parts)}")
    else:
        raise _JSONPatchError(f"{op} operation does not apply: doc is missing path: /{'/'.join(parts)}")
    return doc


def json_patch(document: Any, operations: list[Any]) -> Any:
    """RFC 6902 JSON patch; raises ``_JSONPatchError`` where evanphx/json-patch's Apply fails."""
    doc = _clone(document)
    for raw in operations:
        if not isinstance(raw, dict):
            raise _JSONPatchError("invalid operation")
        op = raw.get("op")
        parts = _pointer(raw.get("path"))
        if op in ("add", "replace", "test") and "value" not in raw:
            raise _JSONPatchError(f"{op} operation does not apply: missing value")
        if op == "add":
            doc = _jp_add(doc, parts, _clone(raw["value"]), "add")
        elif op == "remove":
            _jp_remove(doc, parts, "remove")
        elif op == "replace":
            if not parts:
                doc = _clone(raw["value"])
            else:
                _jp_get(doc, parts, "replace")
                parent, last = _resolve_parent(doc, parts, "replace")
                parent[int(last) if isinstance(parent, list) else last] = _clone(raw["value"])
        elif op == "move":
            value = _jp_remove(doc, _pointer(raw.get("from")), "move")
            doc = _jp_add(doc, parts, value, "move")
        elif op == "copy":
            value = _clone(_jp_get(doc, _pointer(raw.get("from")), "copy"))
            doc = _jp_add(doc, parts, value, "copy")
        elif op == "test":
            try:
                have = _jp_get(doc, parts, "test")
            except _JSONPatchError:
                have = None
            if not _json_equal(have, raw["value"]):
                raise _JSONPatchError(f"testing value {raw.get('path')} failed: test failed")
        else:
            raise _JSONPatchError(f"Unexpected kind: {op}")
    return doc


# --------------------------------------------------------------------------- the store


@dataclass
class _Event:
    rv: int
    type: str
    resource: str
    namespace: str
    obj: Obj
    old: Obj | None


_ListenerFn = Callable[[str, str, Obj], None]


class KubeStore:
    """The objects of one simulated cluster (what etcd plus the registries would hold)."""

    # Watch history kept for resuming watches, like etcd's compaction window; older
    # resourceVersions get 410 Expired. Tests lower it per instance to provoke that.
    watch_log_limit = 50_000

    def __init__(self, world: World, *, pod_termination_cloud_seconds: float = 5.0) -> None:
        self.world = world
        self.pod_termination_cloud_seconds = pod_termination_cloud_seconds
        self._lock = threading.RLock()
        self._cond = threading.Condition(self._lock)
        self._depth = 0
        self._objects: dict[str, dict[str, dict[str, Obj]]] = {rt.key: {} for rt in RESOURCE_TYPES}
        self._pods_by_node: dict[str, set[tuple[str, str]]] = {}
        self._by_uid: dict[str, tuple[str, str, str]] = {}
        self._dependents: dict[str, set[tuple[str, str, str]]] = {}
        self._rv = 0
        self._log: builtins.list[_Event] = []
        self._log_rvs: builtins.list[int] = []
        self._log_floor = 0
        self._listeners: builtins.list[_ListenerFn] = []
        self._outbox: deque[tuple[str, str, Obj]] = deque()
        self._dispatch_lock = threading.Lock()
        self._deletion_via: dict[str, str] = {}
        self._orphan_on_delete: set[str] = set()
        # The disruption controller's work queue: budgets whose status may be out of date.
        self._budgets_to_sync: set[tuple[str, str]] = set()
        with self._txn():
            for ns in _DEFAULT_NAMESPACES:
                self._create_locked(
                    _NAMESPACES, {"metadata": {"name": ns}}, None, from_api=False, dry_run=False
                )

    # ---- public Python API (used by the rest of the sandbox and by tests)

    def create(self, obj: Obj) -> Obj:
        rt = _BY_GVK.get((str(obj.get("apiVersion", "")), str(obj.get("kind", ""))))
        if rt is None:
            raise ValueError(f"unsupported apiVersion/kind {obj.get('apiVersion')}/{obj.get('kind')}")
        namespace = (obj.get("metadata", {}).get("namespace") or "default") if rt.namespaced else None
        with self._txn():
            if namespace and self._lookup(_NAMESPACES, None, namespace) is None:
                # A cluster never holds objects in a namespace that does not exist; creating it
                # here keeps API writes into that namespace (events, leases) working as they would.
                self._create_locked(
                    _NAMESPACES, {"metadata": {"name": namespace}}, None, from_api=False, dry_run=False
                )
            stored = self._create_locked(rt, obj, namespace, from_api=False, dry_run=False)
            return _clone(self._present(rt, stored))

    def get(self, resource: str, namespace: str | None, name: str) -> Obj | None:
        rt = resource_type(resource)
        with self._lock:
            obj = self._lookup(rt, namespace, name)
            return None if obj is None else _clone(self._present(rt, obj))

    def list(
        self,
        resource: str,
        namespace: str | None = None,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> builtins.list[Obj]:
        rt = resource_type(resource)
        labels = parse_label_selector(label_selector)
        fields = parse_field_selector(field_selector, rt)
        with self._lock:
            return [_clone(self._present(rt, o)) for o in self._select(rt, namespace, labels, fields)]

    def mutate(self, resource: str, namespace: str | None, name: str, fn: Callable[[Obj], None]) -> Obj:
        rt = resource_type(resource)
        with self._txn():
            old = self._lookup(rt, namespace, name)
            if old is None:
                raise _not_found(rt, name)
            new = _clone(old)
            fn(new)
            # The simulation may not rename or move objects; keep the identity it was stored under.
            meta = _meta(new)
            meta["name"], meta["uid"] = old["metadata"]["name"], old["metadata"]["uid"]
            if rt.namespaced:
                meta["namespace"] = old["metadata"]["namespace"]
            return _clone(self._present(rt, self._commit(rt, old, new, force=True)))

    def delete(
        self, resource: str, namespace: str | None, name: str, *, grace_period_seconds: int | None = None
    ) -> Obj | None:
        """Delete as ``kubectl delete`` would: returns the object (Terminating or gone), or ``None``."""
        rt = resource_type(resource)
        with self._txn():
            if self._lookup(rt, namespace, name) is None:
                return None
            obj, _ = self._delete_locked(rt, namespace, name, grace=grace_period_seconds, via="delete")
            return _clone(obj)

    def remove_now(self, resource: str, namespace: str | None, name: str) -> None:
        """Remove at once, finalizers and grace periods notwithstanding (the node's disk was wiped)."""
        rt = resource_type(resource)
        with self._txn():
            obj = self._lookup(rt, namespace, name)
            if obj is not None:
                self._remove_locked(rt, obj, via_default="remove_now")

    def evict(
        self,
        namespace: str,
        name: str,
        *,
        grace_period_seconds: int | None = None,
        dry_run: bool = False,
        preconditions: Obj | None = None,
    ) -> Obj:
        """The ``pods/eviction`` subresource; returns the 201 Status or raises the apiserver's error."""
        with self._txn():
            return self._evict_locked(namespace, name, grace_period_seconds, dry_run, preconditions)

    def pod_counts_by_node(self) -> dict[str, int]:
        """How many pods each node has bound (what the scheduler's cache knows), without
        copying every pod."""
        with self._lock:
            return {node: len(pods) for node, pods in self._pods_by_node.items()}

    def add_listener(self, fn: Callable[[str, str, Obj], None]) -> None:
        with self._lock:
            self._listeners.append(fn)

    @property
    def resource_version(self) -> str:
        with self._lock:
            return str(self._rv)

    # ---- transactions and change notification

    @contextmanager
    def _txn(self) -> Iterator[None]:
        with self._lock:
            self._depth += 1
            try:
                yield
            finally:
                if self._depth == 1 and self._budgets_to_sync:
                    self._sync_disruption_budgets()
                self._depth -= 1
                outermost = self._depth == 0
        if outermost:
            self._dispatch()

    def _dispatch(self) -> None:
        # Whoever holds the dispatch lock drains the whole outbox; a thread that finds it taken
        # leaves its events to the holder. Listeners thus run outside the store lock, in
        # resourceVersion order, and may write to the store (their events queue up behind).
        while self._outbox:
            if not self._dispatch_lock.acquire(blocking=False):
                return
            try:
                while True:
                    try:
                        event_type, resource, obj = self._outbox.popleft()
                    except IndexError:
                        break
                    for fn in list(self._listeners):
                        try:
                            fn(event_type, resource, _clone(obj))
                        except Exception:
                            logger.exception("kube store listener failed")
            finally:
                self._dispatch_lock.release()

    def _record(self, rt: ResourceType, event_type: str, obj: Obj, old: Obj | None) -> None:
        rv = int(obj["metadata"]["resourceVersion"])
        ns = obj["metadata"].get("namespace", "")
        self._log.append(_Event(rv, event_type, rt.key, ns, obj, old))
        self._log_rvs.append(rv)
        if len(self._log) > self.watch_log_limit * 1.25:
            drop = len(self._log) - self.watch_log_limit
            self._log_floor = self._log_rvs[drop - 1]
            del self._log[:drop]
            del self._log_rvs[:drop]
        if self._listeners:
            self._outbox.append((event_type, rt.key, obj))
        self._cond.notify_all()
        if self._objects[_PDBS.key].get(ns):
            self._note_budget_input(rt, event_type, obj, old)

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def wake_watchers(self) -> None:
        with self._cond:
            self._cond.notify_all()

    # ---- lookup and indexes

    def _lookup(self, rt: ResourceType, namespace: str | None, name: str) -> Obj | None:
        if rt.namespaced and not namespace:
            raise ValueError(f"{rt.key} is namespaced: a namespace is required")
        return self._objects[rt.key].get((namespace or "") if rt.namespaced else "", {}).get(name)

    def _store(self, rt: ResourceType, obj: Obj, old: Obj | None) -> None:
        meta = obj["metadata"]
        ns, name = meta.get("namespace", "") if rt.namespaced else "", meta["name"]
        self._objects[rt.key].setdefault(ns, {})[name] = obj
        self._by_uid[meta["uid"]] = (rt.key, ns, name)
        if rt is _PODS:
            old_node = (old or {}).get("spec", {}).get("nodeName")
            new_node = obj.get("spec", {}).get("nodeName")
            if old_node != new_node:
                if old_node:
                    self._pods_by_node.get(old_node, set()).discard((ns, name))
                if new_node:
                    self._pods_by_node.setdefault(new_node, set()).add((ns, name))
        old_owners = {r.get("uid") for r in (old or {}).get("metadata", {}).get("ownerReferences") or []}
        new_owners = {r.get("uid") for r in meta.get("ownerReferences") or []}
        for uid in old_owners - new_owners:
            self._dependents.get(str(uid), set()).discard((rt.key, ns, name))
        for uid in new_owners - old_owners:
            if uid:
                self._dependents.setdefault(str(uid), set()).add((rt.key, ns, name))

    def _unstore(self, rt: ResourceType, obj: Obj) -> None:
        meta = obj["metadata"]
        ns, name = meta.get("namespace", "") if rt.namespaced else "", meta["name"]
        bucket = self._objects[rt.key].get(ns, {})
        bucket.pop(name, None)
        if not bucket:
            self._objects[rt.key].pop(ns, None)
        self._by_uid.pop(meta["uid"], None)
        if rt is _PODS and (node := obj.get("spec", {}).get("nodeName")):
            pods = self._pods_by_node.get(node)
            if pods is not None:
                pods.discard((ns, name))
                if not pods:
                    del self._pods_by_node[node]
        for ref in meta.get("ownerReferences") or []:
            self._dependents.get(str(ref.get("uid")), set()).discard((rt.key, ns, name))

    def _select(
        self, rt: ResourceType, namespace: str | None, labels: LabelSelector, fields: FieldSelector
    ) -> builtins.list[Obj]:
        by_ns = self._objects[rt.key]
        candidates: builtins.list[Obj]
        node = (
            next((v for f, op, v in fields if f == "spec.nodeName" and op == "="), None)
            if rt is _PODS
            else None
        )
        if node is not None:
            keys = self._pods_by_node.get(node, set())
            candidates = [by_ns[ns][n] for ns, n in keys if not namespace or ns == namespace]
        elif rt.namespaced and namespace:
            candidates = list(by_ns.get(namespace, {}).values())
        else:
            candidates = [o for bucket in by_ns.values() for o in bucket.values()]
        result = [o for o in candidates if labels_match(labels, o) and fields_match(fields, o)]
        result.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        return result

    def _present(self, rt: ResourceType, obj: Obj) -> Obj:
        """The object as a reader sees it."""
        return obj

    # ---- create / update

    def _apply_defaults(self, rt: ResourceType, obj: Obj) -> None:
        meta = obj["metadata"]
        if rt is _PODS:
            spec = obj.setdefault("spec", {})
            spec.setdefault("terminationGracePeriodSeconds", _DEFAULT_GRACE_SECONDS)
            spec.setdefault("restartPolicy", "Always")
            spec.setdefault("dnsPolicy", "ClusterFirst")
            spec.setdefault("schedulerName", "default-scheduler")
            spec.setdefault("containers", [])
            status = obj.setdefault("status", {})
            status.setdefault("phase", "Pending")
        elif rt is _NAMESPACES:
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = meta["name"]
            obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
            obj.setdefault("status", {}).setdefault("phase", "Active")
        elif rt.key in ("deployments.apps", "replicasets.apps", "statefulsets.apps"):
            obj.setdefault("spec", {}).setdefault("replicas", 1)

    def _validate_name(self, rt: ResourceType, name: Any) -> None:
        pattern = _DNS_LABEL if rt is _NAMESPACES else _DNS_SUBDOMAIN
        limit = 63 if rt is _NAMESPACES else 253
        if not isinstance(name, str) or not name:
            raise _invalid(
                rt,
                "",
                "metadata.name",
                "Required value: name or generateName is required",
                "FieldValueRequired",
            )
        if len(name) > limit or not pattern.match(name):
            what = "RFC 1123 label" if rt is _NAMESPACES else "RFC 1123 subdomain"
            raise _invalid(
                rt,
                name,
                "metadata.name",
                f'Invalid value: "{name}": a lowercase {what} must consist of lower case alphanumeric '
                "characters, '-' or '.', and must start and end with an alphanumeric character",
            )

    def _validate(self, rt: ResourceType, obj: Obj, old: Obj | None) -> None:
        name = obj["metadata"]["name"]
        if rt is _PDBS:
            spec = obj.get("spec") or {}
            if spec.get("minAvailable") is not None and spec.get("maxUnavailable") is not None:
                raise _invalid(
                    rt, name, "spec", "Invalid value: minAvailable and maxUnavailable cannot be both set"
                )
            for fld in ("minAvailable", "maxUnavailable"):
                value = spec.get(fld)
                if isinstance(value, str) and not re.fullmatch(r"\d+%", value):
                    raise _invalid(
                        rt, name, f"spec.{fld}", f'Invalid value: "{value}": must be an integer or percentage'
                    )
        if rt is _PODS and old is not None:
            self._validate_pod_update(rt, obj, old)

    @staticmethod
    def _validate_pod_update(rt: ResourceType, new: Obj, old: Obj) -> None:
        def neutral(spec: Obj) -> Obj:
            spec = _clone(spec)
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

        if not _json_equal(neutral(new.get("spec") or {}), neutral(old.get("spec") or {})):
            raise _invalid(
                rt,
                new["metadata"]["name"],
                "spec",
                "Forbidden: pod updates may not change fields other than `spec.containers[*].image`,"
                "`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` "
                "(only additions to existing tolerations),`spec.terminationGracePeriodSeconds` "
                "(allow it to be set to 1 if it was previously negative)",
                "FieldValueForbidden",
            )

    def _create_locked(
        self, rt: ResourceType, body: Obj, namespace: str | None, *, from_api: bool, dry_run: bool
    ) -> Obj:
        obj = _clone(body)
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        meta = _meta(obj)
        if rt.namespaced:
            namespace = namespace or meta.get("namespace") or "default"
            meta["namespace"] = namespace
            ns_obj = self._objects[_NAMESPACES.key].get("", {}).get(namespace)
            if from_api and ns_obj is None:
                raise _not_found(_NAMESPACES, namespace)
            if from_api and ns_obj is not None and ns_obj["metadata"].get("deletionTimestamp"):
                raise KubeError(
                    403,
                    "Forbidden",
                    f'{rt.plural} "{meta.get("name") or meta.get("generateName", "")}" is forbidden: '
                    f"unable to create new content in namespace {namespace} because it is being terminated",
                    name=str(meta.get("name", "")),
                    group=rt.group,
                    kind=rt.plural,
                )
        else:
            meta.pop("namespace", None)
        if not meta.get("name") and meta.get("generateName"):
            suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
            meta["name"] = f"{meta['generateName']}{suffix}"
        self._validate_name(rt, meta.get("name"))
        if self._lookup(rt, namespace, meta["name"]) is not None:
            raise _already_exists(rt, meta["name"])
        if from_api:
            # rest.FillObjectMetaSystemFields + the strategies' PrepareForCreate: clients do not
            # choose system fields, and status is the controllers' (nodes keep theirs).
            for fld in (
                "uid",
                "resourceVersion",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
                "managedFields",
            ):
                meta.pop(fld, None)
            if rt.has_status and rt is not _NODES:
                obj["status"] = {}
        if not meta.get("uid"):
            meta["uid"] = str(uuid.uuid4())
        # The simulation may backdate objects through the store; API clients may not (they send null).
        if from_api or not meta.get("creationTimestamp"):
            meta["creationTimestamp"] = _iso(_now())
        meta["generation"] = 1
        self._apply_defaults(rt, obj)
        _complete(rt, obj)
        self._validate(rt, obj, None)
        if dry_run:
            return obj
        meta["resourceVersion"] = self._next_rv()
        self._store(rt, obj, None)
        self._record(rt, "ADDED", obj, None)
        return obj

    def _commit(self, rt: ResourceType, old: Obj, new: Obj, *, force: bool = False) -> Obj:
        """Store ``new`` in place of ``old``; no-op writes are skipped unless ``force``d."""
        meta = new["metadata"]
        meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        _complete(rt, new)
        if not force and _json_equal(new, old):
            return old
        old_spec = {k: v for k, v in old.items() if k not in ("metadata", "status", "apiVersion", "kind")}
        new_spec = {k: v for k, v in new.items() if k not in ("metadata", "status", "apiVersion", "kind")}
        if not _json_equal(old_spec, new_spec):
            meta["generation"] = int(old["metadata"].get("generation", 1)) + 1
        meta["resourceVersion"] = self._next_rv()
        if (
            rt is not _NAMESPACES
            and meta.get("deletionTimestamp")
            and not meta.get("finalizers")
            and meta.get("deletionGracePeriodSeconds") == 0
        ):
            # registry.Store.Update: the last finalizer is gone on an object marked for deletion.
            self._store(rt, new, old)
            self._remove_locked(rt, new, via_default="delete")
            return new
        self._store(rt, new, old)
        self._record(rt, "MODIFIED", new, old)
        if rt is _PODS and meta.get("deletionTimestamp") and _hangs(old) and not _hangs(new):
            # The kubelet got unstuck: it finishes the termination it had given up on.
            self._schedule_kubelet(new, int(meta.get("deletionGracePeriodSeconds") or 0))
        return new

    # ---- delete

    def _delete_locked(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        *,
        grace: int | None,
        via: str,
        preconditions: Obj | None = None,
        propagation: str | None = None,
        dry_run: bool = False,
    ) -> tuple[Obj, bool]:
        """Returns (the object as it now is, whether it is gone)."""
        obj = self._lookup(rt, namespace, name)
        if obj is None:
            raise _not_found(rt, name)
        meta = obj["metadata"]
        self._check_preconditions(rt, obj, preconditions)
        if rt is _PODS:
            # podStrategy.CheckGracefulDelete: unscheduled and terminal pods go at once.
            if grace is None:
                grace = int(
                    (obj.get("spec") or {}).get("terminationGracePeriodSeconds", _DEFAULT_GRACE_SECONDS)
                )
            phase = (obj.get("status") or {}).get("phase")
            if not (obj.get("spec") or {}).get("nodeName") or phase in ("Succeeded", "Failed"):
                grace = 0
        else:
            grace = 0
        grace = max(0, grace)
        if dry_run:
            return obj, grace == 0 and not meta.get("finalizers")
        if propagation == "Orphan":
            self._orphan_on_delete.add(meta["uid"])
        if rt is _PODS:
            self._deletion_via.setdefault(meta["uid"], via)
        if meta.get("deletionTimestamp"):
            # Already terminating: a second delete may only shorten the grace period.
            current = int(meta.get("deletionGracePeriodSeconds") or 0)
            if grace >= current:
                return obj, False
            new = _clone(obj)
            new["metadata"]["deletionGracePeriodSeconds"] = grace
            new["metadata"]["deletionTimestamp"] = _iso(
                _now() + timedelta(seconds=self.world.clock.seconds(grace))
            )
            stored = self._commit(rt, obj, new)
            gone = self._lookup(rt, namespace, name) is None
            if not gone and grace > 0 and rt is _PODS:
                self._schedule_kubelet(stored, grace)
            return stored, gone
        # Namespaces always pass through Terminating (their spec.finalizers are the namespace controller's).
        if grace == 0 and not meta.get("finalizers") and rt is not _NAMESPACES:
            self._remove_locked(rt, obj, via_default=via)
            return obj, True
        new = _clone(obj)
        new_meta = new["metadata"]
        new_meta["deletionTimestamp"] = _iso(_now() + timedelta(seconds=self.world.clock.seconds(grace)))
        new_meta["deletionGracePeriodSeconds"] = grace
        new_meta["generation"] = int(meta.get("generation", 1)) + 1
        if rt is _NAMESPACES:
            new.setdefault("status", {})["phase"] = "Terminating"
        stored = self._commit(rt, obj, new, force=True)
        if rt is _PODS and grace > 0:
            self.world.history.append(
                "pod_terminating",
                namespace=meta["namespace"],
                name=name,
                node=(obj.get("spec") or {}).get("nodeName"),
                uid=meta["uid"],
                via=self._deletion_via.get(meta["uid"], via),
                grace_period_seconds=grace,
            )
            self._schedule_kubelet(stored, grace)
        if rt is _NAMESPACES:
            self._empty_namespace(name)
        return stored, False

    def _check_preconditions(self, rt: ResourceType, obj: Obj, preconditions: Obj | None) -> None:
        if not preconditions:
            return
        meta = obj["metadata"]
        want_uid, want_rv = preconditions.get("uid"), preconditions.get("resourceVersion")
        if want_uid and want_uid != meta["uid"]:
            raise _conflict(
                rt,
                meta["name"],
                f"Precondition failed: UID in precondition: {want_uid}, UID in object meta: {meta['uid']}",
            )
        if want_rv and want_rv != meta["resourceVersion"]:
            raise _conflict(
                rt,
                meta["name"],
                f"Precondition failed: ResourceVersion in precondition: {want_rv}, "
                f"ResourceVersion in object meta: {meta['resourceVersion']}",
            )

    def _schedule_kubelet(self, pod: Obj, grace: int) -> None:
        meta = pod["metadata"]
        ns, name, uid = meta["namespace"], meta["name"], meta["uid"]
        delay = self.world.clock.seconds(min(float(grace), self.pod_termination_cloud_seconds))
        self.world.scheduler.call_later(delay, lambda: self._kubelet_finish(ns, name, uid))

    def _kubelet_finish(self, namespace: str, name: str, uid: str) -> None:
        """The kubelet has stopped the containers and confirms the deletion (grace period 0)."""
        with self._txn():
            pod = self._lookup(_PODS, namespace, name)
            if pod is None or pod["metadata"]["uid"] != uid or not pod["metadata"].get("deletionTimestamp"):
                return
            if _hangs(pod):
                return
            if pod["metadata"].get("finalizers"):
                new = _clone(pod)
                new["metadata"]["deletionGracePeriodSeconds"] = 0
                self._commit(_PODS, pod, new)
                return
            self._remove_locked(_PODS, pod, via_default="delete")

    def _remove_locked(self, rt: ResourceType, obj: Obj, *, via_default: str) -> None:
        meta = obj["metadata"]
        current = self._lookup(rt, meta.get("namespace"), meta["name"])
        if current is None or current["metadata"]["uid"] != meta["uid"]:
            return
        gone = _clone(current)
        gone["metadata"]["resourceVersion"] = self._next_rv()
        self._unstore(rt, current)
        self._record(rt, "DELETED", gone, current)
        uid = meta["uid"]
        if rt is _PODS:
            self.world.history.append(
                "pod_deleted",
                namespace=meta["namespace"],
                name=meta["name"],
                node=(current.get("spec") or {}).get("nodeName"),
                uid=uid,
                via=self._deletion_via.pop(uid, via_default),
            )
        self._collect_garbage(uid, orphan=uid in self._orphan_on_delete)
        self._orphan_on_delete.discard(uid)
        if rt.namespaced:
            ns = self._objects[_NAMESPACES.key].get("", {}).get(meta["namespace"])
            if ns is not None and ns["metadata"].get("deletionTimestamp"):
                self._finish_namespace(meta["namespace"])

    def _collect_garbage(self, owner_uid: str, *, orphan: bool) -> None:
        """The garbage collector: dependents whose owners are all gone are deleted (background)."""
        for key, ns, name in sorted(self._dependents.pop(owner_uid, set())):
            rt = _BY_KEY[key]
            dep = self._lookup(rt, ns or None, name)
            if dep is None:
                continue
            refs = dep["metadata"].get("ownerReferences") or []
            if orphan:
                new = _clone(dep)
                new["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != owner_uid]
                if not new["metadata"]["ownerReferences"]:
                    del new["metadata"]["ownerReferences"]
                self._commit(rt, dep, new)
            elif not any(r.get("uid") in self._by_uid for r in refs if r.get("uid") != owner_uid):
                with suppress(KubeError):
                    self._delete_locked(rt, ns or None, name, grace=None, via="delete")

    def _empty_namespace(self, namespace: str) -> None:
        """The namespace controller: delete everything in a terminating namespace."""
        for rt in RESOURCE_TYPES:
            if not rt.namespaced:
                continue
            for name in sorted(self._objects[rt.key].get(namespace, {})):
                with suppress(KubeError):
                    self._delete_locked(rt, namespace, name, grace=None, via="delete")
        self._finish_namespace(namespace)

    def _finish_namespace(self, namespace: str) -> None:
        if any(self._objects[rt.key].get(namespace) for rt in RESOURCE_TYPES if rt.namespaced):
            return
        ns = self._objects[_NAMESPACES.key].get("", {}).get(namespace)
        if ns is not None and ns["metadata"].get("deletionTimestamp"):
            self._remove_locked(_NAMESPACES, ns, via_default="delete")

    # ---- PodDisruptionBudgets and eviction

    @staticmethod
    def _pdb_selector(pdb: Obj, *, for_eviction: bool) -> LabelSelector | None:
        selector = label_selector_from_struct((pdb.get("spec") or {}).get("selector"))
        # Eviction treats a nil or empty selector as matching nothing (getPodDisruptionBudgets);
        # the disruption controller treats an empty one as matching everything.
        if selector is None or (for_eviction and not selector):
            return None
        return selector

    def _pdb_pods(self, pdb: Obj) -> builtins.list[Obj]:
        selector = self._pdb_selector(pdb, for_eviction=False)
        if selector is None:
            return []
        ns = pdb["metadata"]["namespace"]
        return [p for p in self._objects[_PODS.key].get(ns, {}).values() if labels_match(selector, p)]

    def _note_budget_input(self, rt: ResourceType, event_type: str, obj: Obj, old: Obj | None) -> None:
        """Queue the budgets a change may move, as the disruption controller's informers do."""
        meta = obj["metadata"]
        ns = meta.get("namespace", "")
        budgets = self._objects[_PDBS.key].get(ns, {})
        if rt is _PDBS:
            # Its own status writes change nothing it reads; a spec change (or a new budget) does.
            if event_type != "DELETED" and (old is None or not _json_equal(old.get("spec"), obj.get("spec"))):
                self._budgets_to_sync.add((ns, meta["name"]))
        elif rt is _PODS:
            for pdb in budgets.values():
                selector = self._pdb_selector(pdb, for_eviction=False)
                if selector is not None and (
                    labels_match(selector, obj) or (old is not None and labels_match(selector, old))
                ):
                    self._budgets_to_sync.add((ns, pdb["metadata"]["name"]))
        elif rt.key in _SCALED_CONTROLLERS.values():
            # A controller's scale is the denominator of every percentage and maxUnavailable.
            self._budgets_to_sync.update((ns, name) for name in budgets)

    def _sync_disruption_budgets(self) -> None:
        """The disruption controller's sync of every queued budget, written through /status."""
        while self._budgets_to_sync:
            ns, name = self._budgets_to_sync.pop()
            pdb = self._lookup(_PDBS, ns, name)
            if pdb is None or pdb["metadata"].get("deletionTimestamp"):
                continue
            status = self._pdb_status(pdb)
            if _json_equal(status, pdb.get("status")):
                continue
            new = _clone(pdb)
            new["status"] = status
            self._commit(_PDBS, pdb, new)

    def _expected_scale(self, pods: builtins.list[Obj]) -> int:
        """disruption controller getExpectedScale: the replicas of the pods' controllers, each once.

        Pods without a controller are left out (the controller warns of them with an
        UnmanagedPods Event); a controller it cannot find is an error (``_ScaleUnknownError``).
        """
        scales: dict[str, int] = {}
        for pod in pods:
            ref = next((r for r in pod["metadata"].get("ownerReferences") or [] if r.get("controller")), None)
            if ref is None or str(ref.get("uid")) in scales:
                continue
            found = self._controller_scale(pod["metadata"]["namespace"], ref)
            if found is None:
                raise _ScaleUnknownError(f'found no controllers for pod "{pod["metadata"]["name"]}"')
            scales[found[0]] = found[1]
        return sum(scales.values())

    def _owner_named(self, namespace: str, kind: str, ref: Obj) -> Obj | None:
        if ref.get("kind") != kind:
            return None
        owner = self._lookup(_BY_KEY[_SCALED_CONTROLLERS[kind]], namespace, str(ref.get("name")))
        # The finders check the UID: a controller deleted and created again is another one.
        if owner is None or owner["metadata"]["uid"] != ref.get("uid"):
            return None
        return owner

    def _controller_scale(self, namespace: str, ref: Obj) -> tuple[str, int] | None:
        """The finders: the Deployment behind a ReplicaSet, else the ReplicaSet or StatefulSet."""
        controller = self._owner_named(namespace, "ReplicaSet", ref) or self._owner_named(
            namespace, "StatefulSet", ref
        )
        if controller is None:
            return None
        if controller["kind"] == "ReplicaSet":
            rs_ref = next(
                (r for r in controller["metadata"].get("ownerReferences") or [] if r.get("controller")), None
            )
            deployment = self._owner_named(namespace, "Deployment", rs_ref) if rs_ref else None
            if deployment is not None:
                controller = deployment
        return controller["metadata"]["uid"], int((controller.get("spec") or {}).get("replicas", 1))

    @staticmethod
    def _scaled(value: Any, total: int) -> int | None:
        """intstr.GetScaledValueFromIntOrPercent with roundUp=true."""
        if isinstance(value, bool):
            return None
        if isinstance(value, int):
            return value
        if isinstance(value, str) and (m := re.fullmatch(r"(\d+)%", value)):
            return math.ceil(int(m.group(1)) * total / 100)
        return None

    def _pdb_status(self, pdb: Obj) -> Obj:
        """What the disruption controller's trySync (or, when that fails, failSafe) writes."""
        spec = pdb.get("spec") or {}
        previous = pdb.get("status") or {}
        pods = self._pdb_pods(pdb)
        healthy = len([p for p in pods if not p["metadata"].get("deletionTimestamp") and _pod_ready(p)])
        expected, desired = 0, 0
        try:
            if spec.get("maxUnavailable") is not None:
                expected = self._expected_scale(pods)
                max_unavailable = self._scaled(spec["maxUnavailable"], expected)
                if max_unavailable is None:
                    raise _ScaleUnknownError(f"invalid value for IntOrString: {spec['maxUnavailable']!r}")
                desired = max(0, expected - max_unavailable)
            elif spec.get("minAvailable") is not None:
                min_available = spec["minAvailable"]
                if isinstance(min_available, int) and not isinstance(min_available, bool):
                    desired, expected = min_available, len(pods)
                else:
                    expected = self._expected_scale(pods)
                    scaled = self._scaled(min_available, expected)
                    if scaled is None:
                        raise _ScaleUnknownError(f"invalid value for IntOrString: {min_available!r}")
                    desired = scaled
        except _ScaleUnknownError as exc:
            # failSafe: no disruption allowed, the rest of the status as last written.
            status = _clone(previous)
            status["disruptionsAllowed"] = 0
            for fld in ("currentHealthy", "desiredHealthy", "expectedPods", "observedGeneration"):
                status.setdefault(fld, 0)
            return self._with_condition(status, previous, "SyncFailed", str(exc))
        allowed = healthy - desired
        if expected <= 0 or allowed <= 0:
            allowed = 0
        status = {
            "observedGeneration": pdb["metadata"].get("generation", 1),
            "currentHealthy": healthy,
            "desiredHealthy": desired,
            "expectedPods": expected,
            "disruptionsAllowed": allowed,
        }
        return self._with_condition(
            status, previous, "SufficientPods" if allowed > 0 else "InsufficientPods", ""
        )

    @staticmethod
    def _with_condition(status: Obj, previous: Obj, reason: str, message: str) -> Obj:
        """apimeta.SetStatusCondition for DisruptionAllowed: the transition time moves only
        when the status does."""
        allowed = "True" if reason == "SufficientPods" else "False"
        before = next(
            (c for c in previous.get("conditions") or [] if c.get("type") == "DisruptionAllowed"), None
        )
        since = before["lastTransitionTime"] if before and before.get("status") == allowed else _iso(_now())
        status["conditions"] = [
            {
                "type": "DisruptionAllowed",
                "status": allowed,
                "reason": reason,
                "message": message,
                "observedGeneration": status["observedGeneration"],
                "lastTransitionTime": since,
            }
        ]
        return status

    def _evict_locked(
        self,
        namespace: str,
        name: str,
        grace: int | None,
        dry_run: bool,
        preconditions: Obj | None,
    ) -> Obj:
        pod = self._lookup(_PODS, namespace, name)
        if pod is None:
            raise _not_found(_PODS, name)
        meta = pod["metadata"]
        node = (pod.get("spec") or {}).get("nodeName")
        record = {"namespace": namespace, "name": name, "node": node, "uid": meta["uid"]}
        success: Obj = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Success",
            "code": 201,
        }
        phase = (pod.get("status") or {}).get("phase")
        # canIgnorePDB: the pod is already terminating, not yet running, or finished.
        if not (phase in ("Succeeded", "Failed", "Pending") or meta.get("deletionTimestamp")):
            pdbs = []
            for pdb in self._objects[_PDBS.key].get(namespace, {}).values():
                selector = self._pdb_selector(pdb, for_eviction=True)
                if selector is not None and labels_match(selector, pod):
                    pdbs.append(pdb)
            if len(pdbs) > 1:
                if not dry_run:
                    self.world.history.append("eviction", **record, result=500)
                # EvictionREST.Create returns this Status unchanged; the finisher turns it into the error.
                raise KubeError(
                    500,
                    "",
                    "This pod has more than one PodDisruptionBudget, "
                    "which the eviction subresource does not support.",
                    details=False,
                )
            if pdbs:
                pdb = pdbs[0]
                status = pdb.get("status") or {}
                if int(status.get("observedGeneration") or 0) < int(pdb["metadata"].get("generation", 1)):
                    # checkAndDecrement: a budget the controller has not processed yet
                    # allows nothing.
                    if not dry_run:
                        self.world.history.append(
                            "eviction", **record, result=429, pdb=pdb["metadata"]["name"]
                        )
                    raise KubeError(
                        429,
                        "TooManyRequests",
                        "Cannot evict pod as it would violate the pod's disruption budget.",
                        causes=[
                            {
                                "reason": "DisruptionBudget",
                                "message": f"The disruption budget {pdb['metadata']['name']} "
                                "is still being processed by the server.",
                            }
                        ],
                        retry_after_seconds=10,
                    )
                policy = (pdb.get("spec") or {}).get("unhealthyPodEvictionPolicy")
                healthy, desired = (
                    int(status.get("currentHealthy") or 0),
                    int(status.get("desiredHealthy") or 0),
                )
                unhealthy_may_go = not _pod_ready(pod) and (policy == "AlwaysAllow" or healthy >= desired > 0)
                if not unhealthy_may_go and int(status.get("disruptionsAllowed") or 0) <= 0:
                    if not dry_run:
                        self.world.history.append(
                            "eviction", **record, result=429, pdb=pdb["metadata"]["name"]
                        )
                    raise KubeError(
                        429,
                        "TooManyRequests",
                        "Cannot evict pod as it would violate the pod's disruption budget.",
                        causes=[
                            {
                                "reason": "DisruptionBudget",
                                "message": f"The disruption budget {pdb['metadata']['name']} needs "
                                f"{desired} healthy pods and has {healthy} currently",
                            }
                        ],
                    )
        if dry_run:
            self._check_preconditions(_PODS, pod, preconditions)
            return success
        self._delete_locked(_PODS, namespace, name, grace=grace, via="eviction", preconditions=preconditions)
        self.world.history.append("eviction", **record, result=201)
        return success

    # ---- the API verbs, as the HTTP layer calls them (stored references: do not mutate)

    def api_get(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        with self._lock:
            obj = self._lookup(rt, namespace, name)
            if obj is None:
                raise _not_found(rt, name)
            return self._present(rt, obj)

    def api_list(
        self,
        rt: ResourceType,
        namespace: str | None,
        labels: LabelSelector,
        fields: FieldSelector,
        *,
        limit: int = 0,
        continue_token: str | None = None,
    ) -> tuple[builtins.list[Obj], str, str | None, int | None]:
        """Returns (items, list resourceVersion, continue token, remainingItemCount)."""
        start: tuple[str, str] | None = None
        if continue_token:
            try:
                decoded = json.loads(base64.urlsafe_b64decode(continue_token.encode()))
                start = (str(decoded["ns"]), str(decoded["name"]))
            except (ValueError, KeyError, TypeError):
                raise _bad_request(f"continue key is not valid: {continue_token}") from None
        with self._lock:
            items = self._select(rt, namespace, labels, fields)
            rv = str(self._rv)
            if start is not None:
                items = [
                    o for o in items if (o["metadata"].get("namespace", ""), o["metadata"]["name"]) > start
                ]
            token, remaining = None, None
            if limit > 0 and len(items) > limit:
                last = items[limit - 1]["metadata"]
                token = base64.urlsafe_b64encode(
                    json.dumps({"ns": last.get("namespace", ""), "name": last["name"], "rv": rv}).encode()
                ).decode()
                remaining = len(items) - limit
                items = items[:limit]
            return [self._present(rt, o) for o in items], rv, token, remaining

    def api_create(self, rt: ResourceType, namespace: str | None, body: Obj, *, dry_run: bool) -> Obj:
        in_body = (body.get("metadata") or {}).get("namespace")
        if rt.namespaced and in_body and in_body != namespace:
            raise _bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        with self._txn():
            return self._present(rt, self._create_locked(rt, body, namespace, from_api=True, dry_run=dry_run))

    def _prepare_update(
        self,
        rt: ResourceType,
        old: Obj,
        body: Obj,
        *,
        subresource: str | None,
        namespace: str | None,
        name: str,
    ) -> Obj:
        """rest.BeforeUpdate and the strategies' PrepareForUpdate for a PUT or PATCH result."""
        if not isinstance(body, dict):
            raise _bad_request("the object to update must be a JSON object")
        meta = body.get("metadata")
        if not isinstance(meta, dict):
            meta = {}
        if meta.get("name") not in (None, "", name):
            raise _name_mismatch(meta.get("name"), name)
        if rt.namespaced and meta.get("namespace") not in (None, "", namespace):
            raise _bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        old_meta = old["metadata"]
        if meta.get("uid") not in (None, "", old_meta["uid"]):
            uids = f"UID in precondition: {meta['uid']}, UID in object meta: {old_meta['uid']}"
            raise _conflict(rt, name, f"Precondition failed: {uids}")
        want_rv = meta.get("resourceVersion")
        if want_rv not in (None, "") and str(want_rv) != old_meta["resourceVersion"]:
            raise _conflict(rt, name, _MODIFIED)
        if subresource == "status":
            new = _clone(old)
            if "status" in body:
                new["status"] = _clone(body["status"])
            else:
                new.pop("status", None)
            return new
        new = _clone(body)
        new["apiVersion"], new["kind"] = rt.api_version, rt.kind
        new_meta = _meta(new)
        new_meta["name"] = name
        if rt.namespaced:
            new_meta["namespace"] = namespace
        for fld in (
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
        ):
            if fld in old_meta:
                new_meta[fld] = old_meta[fld]
            else:
                new_meta.pop(fld, None)
        if rt.has_status:
            # The main resource ignores status changes; they go through /status.
            if "status" in old:
                new["status"] = _clone(old["status"])
            else:
                new.pop("status", None)
        self._apply_defaults(rt, new)
        self._validate(rt, new, old)
        return new

    def api_update(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        body: Obj,
        *,
        subresource: str | None,
        dry_run: bool,
    ) -> tuple[Obj, bool]:
        """PUT; returns (object, created)."""
        with self._txn():
            old = self._lookup(rt, namespace, name)
            if old is None:
                if rt.create_on_update and subresource is None:
                    meta: Obj = body.get("metadata") or {}
                    if meta.get("resourceVersion"):
                        raise _not_found(rt, name)
                    if meta.get("name") not in (None, "", name):
                        raise _name_mismatch(meta.get("name"), name)
                    body = _clone(body)
                    _meta(body)["name"] = name
                    return self._create_locked(rt, body, namespace, from_api=True, dry_run=dry_run), True
                raise _not_found(rt, name)
            new = self._prepare_update(rt, old, body, subresource=subresource, namespace=namespace, name=name)
            if dry_run:
                return new, False
            return self._present(rt, self._commit(rt, old, new)), False

    def api_patch(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        *,
        subresource: str | None,
        content_type: str,
        raw: bytes,
        dry_run: bool,
        field_manager: str | None,
    ) -> tuple[Obj, bool]:
        """PATCH; returns (object, created) — only an apply patch can create."""
        patch: Any
        if content_type == "application/apply-patch+yaml":
            if not field_manager:
                raise _bad_request("PATCH, fieldManager is required for apply requests")
            import yaml

            try:
                patch = yaml.safe_load(raw.decode() or "{}")
            except (yaml.YAMLError, UnicodeDecodeError) as exc:
                raise _bad_request(f"error decoding YAML: {exc}") from None
            if not isinstance(patch, dict):
                raise _bad_request("error decoding YAML: the apply patch must be an object")
        else:
            try:
                patch = json.loads(raw or b"null")
            except (ValueError, UnicodeDecodeError) as exc:
                raise _bad_request(f"error decoding patch: {exc}") from None
        with self._txn():
            old = self._lookup(rt, namespace, name)
            if old is None:
                if content_type == "application/apply-patch+yaml" and subresource is None:
                    body = _clone(patch)
                    _meta(body).setdefault("name", name)
                    if _meta(body)["name"] != name:
                        raise _name_mismatch(_meta(body)["name"], name)
                    return self._create_locked(rt, body, namespace, from_api=True, dry_run=dry_run), True
                raise _not_found(rt, name)
            current = self._present(rt, old)
            if content_type == "application/json-patch+json":
                if not isinstance(patch, list):
                    raise _bad_request(
                        "json: cannot unmarshal object into Go value of type jsonpatch.Patch"
                        if isinstance(patch, dict)
                        else "invalid JSON patch"
                    )
                try:
                    patched = json_patch(current, patch)
                except _JSONPatchError:
                    # patch.go: errors.NewGenericServerResponse(422, ...) drops Apply's own message.
                    raise KubeError(
                        422, "Invalid", "the server rejected our request due to an error in our request"
                    ) from None
            elif content_type == "application/merge-patch+json":
                if not isinstance(patch, dict):
                    raise _bad_request("invalid JSON merge patch: the patch must be an object")
                patched = merge_patch(current, patch)
            elif content_type in ("application/strategic-merge-patch+json", "application/apply-patch+yaml"):
                if not isinstance(patch, dict):
                    raise _bad_request("the patch must be a JSON object")
                # Custom resources have no patch merge keys: their apply is approximated as a merge patch.
                patched = merge_patch(current, patch) if rt.custom else strategic_merge(current, patch) or {}
            else:
                raise _unsupported_media_type(_patch_types(rt))
            if not isinstance(patched, dict):
                raise KubeError(
                    422, "Invalid", "the server rejected our request due to an error in our request"
                )
            new = self._prepare_update(
                rt, old, patched, subresource=subresource, namespace=namespace, name=name
            )
            if dry_run:
                return new, False
            return self._present(rt, self._commit(rt, old, new)), False

    def api_delete(
        self, rt: ResourceType, namespace: str | None, name: str, options: Obj, *, dry_run: bool
    ) -> tuple[Obj, bool]:
        grace = options.get("gracePeriodSeconds")
        with self._txn():
            obj, gone = self._delete_locked(
                rt,
                namespace,
                name,
                grace=int(grace) if grace is not None else None,
                via="delete",
                preconditions=options.get("preconditions"),
                propagation=options.get("propagationPolicy")
                or ("Orphan" if options.get("orphanDependents") is True else None),
                dry_run=dry_run,
            )
            return self._present(rt, obj), gone

    def api_delete_collection(
        self,
        rt: ResourceType,
        namespace: str | None,
        labels: LabelSelector,
        fields: FieldSelector,
        options: Obj,
        *,
        dry_run: bool,
    ) -> builtins.list[Obj]:
        with self._txn():
            deleted = []
            for obj in self._select(rt, namespace, labels, fields):
                result, _ = self.api_delete(
                    rt, obj["metadata"].get("namespace"), obj["metadata"]["name"], options, dry_run=dry_run
                )
                deleted.append(result)
            return deleted

    # ---- watch

    def watch(
        self,
        rt: ResourceType,
        namespace: str | None,
        labels: LabelSelector,
        fields: FieldSelector,
        *,
        since: str | None,
        deadline: float,
        stopped: threading.Event,
        send_initial_events: bool = False,
    ) -> Iterator[builtins.list[Obj]]:
        """Yields batches of watch events (``{"type", "object"}``) until ``deadline`` or ``stopped``."""

        def passes(obj: Obj | None) -> bool:
            if obj is None:
                return False
            if rt.namespaced and namespace and obj["metadata"].get("namespace") != namespace:
                return False
            return labels_match(labels, obj) and fields_match(fields, obj)

        with self._lock:
            if since in (None, "", "0") or send_initial_events:
                initial = [
                    {"type": "ADDED", "object": self._present(rt, o)}
                    for o in self._select(rt, namespace, labels, fields)
                ]
                last = self._rv
                if send_initial_events:
                    initial.append(
                        {
                            "type": "BOOKMARK",
                            "object": {
                                "kind": rt.kind,
                                "apiVersion": rt.api_version,
                                "metadata": {
                                    "resourceVersion": str(last),
                                    "annotations": {"k8s.io/initial-events-end": "true"},
                                },
                            },
                        }
                    )
            else:
                try:
                    last = int(str(since))
                except ValueError:
                    raise _bad_request(f"invalid resource version: {since}") from None
                initial = []
        if initial:
            yield initial
        while not stopped.is_set():
            expired: KubeError | None = None
            batch: builtins.list[Obj] = []
            with self._cond:
                if last < self._log_floor:
                    expired = KubeError(
                        410,
                        "Expired",
                        f"too old resource version: {last} ({self._log_floor + 1})",
                        details=False,
                    )
                    events: builtins.list[_Event] = []
                else:
                    events = self._log[bisect.bisect_right(self._log_rvs, last) :]
                if expired is None and not events:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return
                    # Wake up at least once a second so that stop() ends idle streams.
                    self._cond.wait(min(remaining, 1.0))
                    continue
                for ev in events:
                    last = ev.rv
                    if ev.resource != rt.key:
                        continue
                    if ev.type == "DELETED":
                        if passes(ev.obj):
                            batch.append({"type": "DELETED", "object": self._present(rt, ev.obj)})
                        continue
                    now_passes = passes(ev.obj)
                    before = ev.type == "MODIFIED" and passes(ev.old)
                    if now_passes:
                        batch.append(
                            {
                                "type": ev.type if before or ev.type == "ADDED" else "ADDED",
                                "object": self._present(rt, ev.obj),
                            }
                        )
                    elif before and ev.old is not None:
                        # cacheWatcher: the previous state, stamped with this event's resourceVersion.
                        gone = dict(ev.old)
                        gone["metadata"] = {**ev.old["metadata"], "resourceVersion": str(ev.rv)}
                        batch.append({"type": "DELETED", "object": self._present(rt, gone)})
            if expired is not None:
                yield [{"type": "ERROR", "object": expired.status()}]
                return
            if batch:
                yield batch
            if time.monotonic() >= deadline:
                return


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
                    item[key] = _clone(zero)


def _section(obj: Obj, key: str) -> Obj:
    value = obj.get(key)
    if not isinstance(value, dict):
        value = {}
        obj[key] = value
    return value


def _complete(rt: ResourceType, obj: Obj) -> None:
    """Add the fields a Go struct always serialises (no ``omitempty``).

    The real apiserver round-trips every object through its Go type, so these are never
    missing on the wire, and the pydantic models of the ``kubernetes`` client reject objects
    without them. Fixtures written by hand would otherwise break reads that work in a cluster.
    """
    _fill(obj["metadata"].get("ownerReferences"), {"apiVersion": "", "kind": "", "name": "", "uid": ""})
    condition = {"type": "", "status": ""}
    if rt is _NODES:
        spec, status = _section(obj, "spec"), _section(obj, "status")
        info = _section(status, "nodeInfo")
        for fld in _NODE_INFO_FIELDS:
            if info.get(fld) is None:
                info[fld] = ""
        _section(_section(status, "daemonEndpoints"), "kubeletEndpoint").setdefault("Port", 0)
        _fill(status.get("conditions"), condition)
        _fill(status.get("addresses"), {"type": "", "address": ""})
        _fill(spec.get("taints"), {"key": "", "effect": ""})
    elif rt is _PODS:
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
        created = str(obj["metadata"].get("creationTimestamp") or _iso(_now()))
        obj["eventTime"] = created.replace("Z", ".000000Z")
    elif rt is _NAMESPACES:
        _fill(_section(obj, "status").get("conditions"), condition)
    elif rt.key == "services":
        _fill(_section(obj, "spec").get("ports"), {"port": 0})


def _hangs(pod: Obj) -> bool:
    return (pod["metadata"].get("annotations") or {}).get(HANG_TERMINATING_ANNOTATION) == "true"


def _pod_ready(pod: Obj) -> bool:
    for cond in (pod.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return cond.get("status") == "True"
    return False


def _patch_types(rt: ResourceType) -> list[str]:
    types = ["application/json-patch+json", "application/merge-patch+json"]
    if not rt.custom:
        types.append("application/strategic-merge-patch+json")
    types.append("application/apply-patch+yaml")
    return types


# --------------------------------------------------------------------------- tables (kubectl get)


def _col(name: str, kind: str = "string", priority: int = 0, description: str = "", fmt: str = "") -> Obj:
    return {
        "name": name,
        "type": kind,
        "format": fmt,
        "description": description or name,
        "priority": priority,
    }


_NAME_COL = _col("Name", fmt="name", description="Name must be unique within a namespace.")
_AGE_COL = _col(
    "Age",
    description="CreationTimestamp is a timestamp representing the server time when this object was created.",
)


def _node_row(o: Obj) -> list[Any]:
    conditions = {c.get("type"): c for c in (o.get("status") or {}).get("conditions") or []}
    status = []
    if "Ready" in conditions:
        status.append("Ready" if conditions["Ready"].get("status") == "True" else "NotReady")
    else:
        status.append("Unknown")
    if (o.get("spec") or {}).get("unschedulable"):
        status.append("SchedulingDisabled")
    labels = o["metadata"].get("labels") or {}
    roles = sorted(
        {k.split("/", 1)[1] for k in labels if k.startswith("node-role.kubernetes.io/") and "/" in k}
        | ({labels["kubernetes.io/role"]} if labels.get("kubernetes.io/role") else set())
    )
    info = (o.get("status") or {}).get("nodeInfo") or {}
    addresses = (o.get("status") or {}).get("addresses") or []

    def address(kind: str) -> str:
        return next((a.get("address", "") for a in addresses if a.get("type") == kind), "<none>")

    return [
        o["metadata"]["name"],
        ",".join(status),
        ",".join(r for r in roles if r) or "<none>",
        _age(o),
        info.get("kubeletVersion", ""),
        address("InternalIP"),
        address("ExternalIP"),
        info.get("osImage") or "<unknown>",
        info.get("kernelVersion") or "<unknown>",
        info.get("containerRuntimeVersion") or "<unknown>",
    ]


def _pod_row(o: Obj) -> list[Any]:
    spec, status = o.get("spec") or {}, o.get("status") or {}
    reason = status.get("reason") or status.get("phase") or ""
    ready, restarts, running = 0, 0, False
    for cs in reversed(status.get("containerStatuses") or []):
        restarts += int(cs.get("restartCount", 0))
        state = cs.get("state") or {}
        if (state.get("waiting") or {}).get("reason"):
            reason = state["waiting"]["reason"]
        elif (state.get("terminated") or {}).get("reason"):
            reason = state["terminated"]["reason"]
        elif "terminated" in state:
            reason = f"ExitCode:{state['terminated'].get('exitCode', 0)}"
        elif cs.get("ready") and "running" in state:
            running = True
            ready += 1
    if reason == "Completed" and running:
        reason = "Running" if _pod_ready(o) else "NotReady"
    if o["metadata"].get("deletionTimestamp"):
        reason = "Unknown" if status.get("reason") == "NodeLost" else "Terminating"
    gates = spec.get("readinessGates") or []
    return [
        o["metadata"]["name"],
        f"{ready}/{len(spec.get('containers') or [])}",
        reason,
        str(restarts),
        _age(o),
        status.get("podIP") or "<none>",
        spec.get("nodeName") or "<none>",
        status.get("nominatedNodeName") or "<none>",
        "<none>" if not gates else f"0/{len(gates)}",
    ]


def _ready_condition(o: Obj) -> tuple[str, str]:
    for cond in (o.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Ready":
            return str(cond.get("status", "")), str(cond.get("message", ""))
    return "", ""


_TABLES: dict[str, tuple[list[Obj], Callable[[Obj], list[Any]]]] = {
    "nodes": (
        [
            _NAME_COL,
            _col("Status", description="The status of the node"),
            _col("Roles", description="The roles of the node"),
            _AGE_COL,
            _col("Version", description="Kubelet Version reported by the node."),
            _col("Internal-IP", priority=1, description="List of addresses reachable to the node."),
            _col("External-IP", priority=1, description="List of addresses reachable to the node."),
            _col("OS-Image", priority=1, description="OS Image reported by the node from /etc/os-release"),
            _col("Kernel-Version", priority=1, description="Kernel Version reported by the node"),
            _col(
                "Container-Runtime", priority=1, description="Container runtime version reported by the node."
            ),
        ],
        _node_row,
    ),
    "pods": (
        [
            _NAME_COL,
            _col("Ready", description="The aggregate readiness state of this pod for accepting traffic."),
            _col("Status", description="The aggregate status of the containers in this pod."),
            _col(
                "Restarts", description="The number of times the containers in this pod have been restarted."
            ),
            _AGE_COL,
            _col("IP", priority=1, description="IP address allocated to the pod."),
            _col("Node", priority=1, description="Name of the Node this pod is running on."),
            _col(
                "Nominated Node", priority=1, description="Name of the node this pod is nominated to run on."
            ),
            _col("Readiness Gates", priority=1, description="Pod readiness gates."),
        ],
        _pod_row,
    ),
    "namespaces": (
        [_NAME_COL, _col("Status"), _AGE_COL],
        lambda o: [o["metadata"]["name"], (o.get("status") or {}).get("phase", ""), _age(o)],
    ),
    "poddisruptionbudgets.policy": (
        [
            _NAME_COL,
            _col("Min Available"),
            _col("Max Unavailable"),
            _col("Allowed Disruptions", "integer"),
            _AGE_COL,
        ],
        lambda o: [
            o["metadata"]["name"],
            str((o.get("spec") or {}).get("minAvailable", "N/A")),
            str((o.get("spec") or {}).get("maxUnavailable", "N/A")),
            (o.get("status") or {}).get("disruptionsAllowed", 0),
            _age(o),
        ],
    ),
    "deployments.apps": (
        [_NAME_COL, _col("Ready"), _col("Up-to-date", "integer"), _col("Available", "integer"), _AGE_COL],
        lambda o: [
            o["metadata"]["name"],
            f"{(o.get('status') or {}).get('readyReplicas', 0)}/{(o.get('spec') or {}).get('replicas', 1)}",
            (o.get("status") or {}).get("updatedReplicas", 0),
            (o.get("status") or {}).get("availableReplicas", 0),
            _age(o),
        ],
    ),
    "replicasets.apps": (
        [
            _NAME_COL,
            _col("Desired", "integer"),
            _col("Current", "integer"),
            _col("Ready", "integer"),
            _AGE_COL,
        ],
        lambda o: [
            o["metadata"]["name"],
            (o.get("spec") or {}).get("replicas", 1),
            (o.get("status") or {}).get("replicas", 0),
            (o.get("status") or {}).get("readyReplicas", 0),
            _age(o),
        ],
    ),
    "daemonsets.apps": (
        [
            _NAME_COL,
            _col("Desired", "integer"),
            _col("Current", "integer"),
            _col("Ready", "integer"),
            _col("Up-to-date", "integer"),
            _col("Available", "integer"),
            _AGE_COL,
        ],
        lambda o: [
            o["metadata"]["name"],
            *(
                (o.get("status") or {}).get(k, 0)
                for k in (
                    "desiredNumberScheduled",
                    "currentNumberScheduled",
                    "numberReady",
                    "updatedNumberScheduled",
                    "numberAvailable",
                )
            ),
            _age(o),
        ],
    ),
    "statefulsets.apps": (
        [_NAME_COL, _col("Ready"), _AGE_COL],
        lambda o: [
            o["metadata"]["name"],
            f"{(o.get('status') or {}).get('readyReplicas', 0)}/{(o.get('spec') or {}).get('replicas', 1)}",
            _age(o),
        ],
    ),
    "leases.coordination.k8s.io": (
        [_NAME_COL, _col("Holder"), _AGE_COL],
        lambda o: [o["metadata"]["name"], (o.get("spec") or {}).get("holderIdentity", ""), _age(o)],
    ),
    "events": (
        [_col("Last Seen"), _col("Type"), _col("Reason"), _col("Object"), _col("Message"), _NAME_COL],
        lambda o: [
            human_duration(
                (
                    _now() - (_parse_time(o.get("lastTimestamp") or o.get("eventTime")) or _now())
                ).total_seconds()
            ),
            o.get("type", ""),
            o.get("reason", ""),
            f"{str((o.get('involvedObject') or {}).get('kind', '')).lower()}/"
            f"{(o.get('involvedObject') or {}).get('name', '')}",
            o.get("message", ""),
            o["metadata"]["name"],
        ],
    ),
}


def _table_for(rt: ResourceType) -> tuple[list[Obj], Callable[[Obj], list[Any]]]:
    if rt.key in _TABLES:
        return _TABLES[rt.key]
    if rt.custom:
        columns = [
            _NAME_COL,
            _col("Age", "date", description="CreationTimestamp"),
            _col("Ready"),
            _col("Status"),
        ]
        if rt.plural == "gitrepositories":
            columns.insert(1, _col("URL"))

        def row(o: Obj) -> list[Any]:
            ready, message = _ready_condition(o)
            cells = [o["metadata"]["name"], _age(o), ready, message]
            if rt.plural == "gitrepositories":
                cells.insert(1, (o.get("spec") or {}).get("url", ""))
            return cells

        return columns, row
    return [_NAME_COL, _AGE_COL], lambda o: [o["metadata"]["name"], _age(o)]


def _include_object(query: dict[str, str]) -> str:
    """TableOptions.includeObject; the apiserver refuses a value it does not know
    (transformObject in endpoints/handlers/response.go) rather than guessing."""
    value = query.get("includeObject") or "Metadata"
    if value not in ("None", "Metadata", "Object"):
        raise _bad_request(f'unrecognized includeObject value: "{value}"')
    return value


def _partial_metadata(obj: Obj, version: str) -> Obj:
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": f"meta.k8s.io/{version}",
        "metadata": obj["metadata"],
    }


def render_table(
    rt: ResourceType,
    objs: list[Obj],
    *,
    version: str,
    include_object: str,
    list_meta: Obj,
    with_columns: bool = True,
) -> Obj:
    columns, row_fn = _table_for(rt)
    rows = []
    for obj in objs:
        row: Obj = {"cells": row_fn(obj)}
        if include_object == "Object":
            row["object"] = obj
        elif include_object != "None":
            row["object"] = _partial_metadata(obj, version)
        rows.append(row)
    table: Obj = {"kind": "Table", "apiVersion": f"meta.k8s.io/{version}", "metadata": list_meta}
    if with_columns:
        table["columnDefinitions"] = columns
    table["rows"] = rows
    return table


# --------------------------------------------------------------------------- discovery


def _api_resources(group: str, version: str) -> Obj:
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
        if rt is _PODS:
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


_REVIEW_KINDS = {
    "selfsubjectaccessreviews": "SelfSubjectAccessReview",
    "selfsubjectrulesreviews": "SelfSubjectRulesReview",
}
_AUTHORIZATION_GROUP: Obj = {
    "name": "authorization.k8s.io",
    "versions": [{"groupVersion": "authorization.k8s.io/v1", "version": "v1"}],
    "preferredVersion": {"groupVersion": "authorization.k8s.io/v1", "version": "v1"},
}
_AUTHORIZATION_RESOURCES: Obj = {
    "kind": "APIResourceList",
    "apiVersion": "v1",
    "groupVersion": "authorization.k8s.io/v1",
    "resources": [
        {"name": plural, "singularName": "", "namespaced": False, "kind": kind, "verbs": ["create"]}
        for plural, kind in _REVIEW_KINDS.items()
    ],
}


def _api_group(group: str) -> Obj:
    versions = [{"groupVersion": f"{group}/{v}", "version": v} for v in _GROUP_VERSIONS[group]]
    return {"name": group, "versions": versions, "preferredVersion": versions[0]}


# --------------------------------------------------------------------------- HTTP


@dataclass
class _Route:
    rt: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None
    watch_path: bool


def _media_types(header: str) -> list[tuple[str, dict[str, str]]]:
    result = []
    for part in header.split(","):
        pieces = [p.strip() for p in part.split(";")]
        params = {}
        for p in pieces[1:]:
            if "=" in p:
                k, v = p.split("=", 1)
                params[k.strip()] = v.strip()
        result.append((pieces[0].lower(), params))
    return result


def _negotiate(accept: str) -> tuple[str, str]:
    """Returns (as, version): as is "" for the object itself, else Table / PartialObjectMetadata[List]."""
    for media, params in _media_types(accept or "application/json"):
        if media not in ("application/json", "*/*", "application/*", "application/yaml"):
            continue
        shape = params.get("as", "")
        if not shape:
            return "", ""
        if params.get("g") == "meta.k8s.io" and shape in (
            "Table",
            "PartialObjectMetadata",
            "PartialObjectMetadataList",
        ):
            return shape, params.get("v", "v1")
    return "", ""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Idle keep-alive connections are dropped after this long, like Go's IdleTimeout.
    timeout = 120
    server_version = "kube-apiserver-sandbox"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        return

    @property
    def api(self) -> KubeAPIServer:
        return cast(_Server, self.server).api

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_OPTIONS(self) -> None:
        self._handle("OPTIONS")

    # ---- plumbing

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunk = self.rfile.read(size)
                if len(chunk) < size:
                    raise ConnectionError("the client went away inside a chunked body")
                chunks.append(chunk)
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        if len(raw) < length:
            # Half a request is never acted on (an apiserver waits for the rest, then drops it).
            raise ConnectionError(f"the client went away after {len(raw)} of {length} body bytes")
        return raw

    def _send_json(self, code: int, body: Any, *, headers: dict[str, str] | None = None) -> None:
        payload = json.dumps(body, separators=(",", ":")).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Cache-Control", "no-cache, private")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _send_text(self, code: int, text: str) -> None:
        payload = text.encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def _send_error(self, err: KubeError) -> None:
        headers = {}
        if err.retry_after_seconds:
            headers["Retry-After"] = str(err.retry_after_seconds)
        self._send_json(err.code, err.status(), headers=headers)

    def _handle(self, method: str) -> None:
        self._status = 0
        self._logged = False
        self._url = urlsplit(self.path)
        # Always consume the body first: answering early would leave its bytes in the
        # keep-alive stream, where they would be parsed as the next request.
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            return
        path = unquote(self._url.path).rstrip("/") or "/"
        query = {k: v[0] for k, v in parse_qs(self._url.query, keep_blank_values=True).items()}
        try:
            self._dispatch(method, path, query, body)
        except KubeError as err:
            self._send_error(err)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, TimeoutError):
            self.close_connection = True
        except Exception as exc:
            logger.exception("sandbox kube-apiserver failed on %s %s", method, self.path)
            error = KubeError(
                500, "InternalError", f"Internal error occurred: {exc}", causes=[{"message": str(exc)}]
            )
            with suppress(OSError):
                self._send_error(error)
        finally:
            if not self._logged:
                self._log(self._status)

    def _log(self, status: int) -> None:
        self._logged = True
        self.api._log_request(
            self.command, self._url.path, self._url.query, status, self.headers.get("User-Agent", "")
        )

    def send_response(self, code: int, message: str | None = None) -> None:
        # Logged before the first byte goes out, so the entry exists once the client has its answer.
        self._status = code
        if not self._logged:
            self._log(code)
        super().send_response(code, message)

    def _authenticated(self) -> User | None:
        """The user behind the request's bearer token; None if it has none we know."""
        api = self.api
        if api.token is None and not api.identities:
            return ADMIN  # a server started without credentials trusts everyone
        header = self.headers.get("Authorization") or ""
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer":
            return None
        for token, user in api.tokens():
            if hmac.compare_digest(presented.strip().encode(), token.encode()):
                return user
        return None

    def _dispatch(self, method: str, path: str, query: dict[str, str], body: bytes) -> None:
        if path in ("/healthz", "/readyz", "/livez") or path.startswith(("/healthz/", "/readyz/", "/livez/")):
            self._send_text(200, "ok")
            return
        if path == "/version":
            # Public info (system:public-info-viewer): the kubectl dispatcher asks before it has credentials.
            self._send_json(200, SERVER_VERSION)
            return
        user = self._authenticated()
        if user is None:
            self._send_error(KubeError(401, "Unauthorized", "Unauthorized", details=False))
            return
        if method in ("HEAD", "OPTIONS"):
            raise _method_not_allowed()
        fault = self.api.faults.take(method, path)
        if fault is not None:
            raise fault
        # Discovery is every authenticated user's (system:discovery, system:basic-user).
        if self._discovery(method, path):
            return
        if self._access_review(method, path, body, user):
            return
        route = self._route(path)
        if route is None:
            raise _resource_not_found()
        self._authorize(user, method, route, query)
        self._serve_resource(method, route, query, body)

    def _authorize(self, user: User, method: str, route: _Route, query: dict[str, str]) -> None:
        authorizer = self.api.authorizer
        if authorizer is None:
            return
        watch = route.watch_path or query.get("watch", "").lower() in ("true", "1")
        request = RbacRequest(
            verb=verb_for(method, named=route.name is not None, watch=watch),
            api_group=route.rt.group,
            resource=route.rt.plural,
            subresource=route.subresource or "",
            namespace=route.namespace or "",
            name=route.name or "",
        )
        if not authorizer.allowed(user, request):
            raise KubeError(
                403,
                "Forbidden",
                forbidden_message(user, request),
                name=route.name or "",
                group=route.rt.group,
                kind=route.rt.plural,
            )

    def _access_review(self, method: str, path: str, body: bytes, user: User) -> bool:
        """SelfSubjectAccessReview and SelfSubjectRulesReview: what ``kubectl auth can-i``
        (and ``--list``) asks, answered from the same rules that authorize requests."""
        prefix = "/apis/authorization.k8s.io/v1/"
        if not path.startswith(prefix) or path[len(prefix) :] not in _REVIEW_KINDS:
            return False
        if method != "POST":
            raise _method_not_allowed()
        try:
            review = json.loads(body or b"{}")
        except ValueError:
            raise _bad_request("the review is not valid JSON") from None
        if not isinstance(review, dict):
            raise _bad_request("the review must be an object")
        spec = review.get("spec") or {}
        authorizer = self.api.authorizer
        who = ADMIN if authorizer is None else user
        authorizer = authorizer or Authorizer()
        status: Obj
        if path.endswith("selfsubjectaccessreviews"):
            attrs = spec.get("resourceAttributes")
            if attrs is not None:
                request = RbacRequest(
                    verb=attrs.get("verb", ""),
                    api_group=attrs.get("group", ""),
                    resource=attrs.get("resource", ""),
                    subresource=attrs.get("subresource", ""),
                    namespace=attrs.get("namespace", ""),
                    name=attrs.get("name", ""),
                )
            else:
                plain = spec.get("nonResourceAttributes") or {}
                request = RbacRequest(
                    verb=plain.get("verb", ""), resource_request=False, path=plain.get("path", "")
                )
            allowed = authorizer.allowed(who, request)
            status = {"allowed": allowed}
            if allowed:
                status["reason"] = "RBAC: allowed by the roles bound to this user"
        else:
            resource_rules, non_resource_rules = authorizer.rules_for(who, spec.get("namespace", ""))
            status = {
                "resourceRules": resource_rules,
                "nonResourceRules": non_resource_rules,
                "incomplete": False,
            }
        answer = {
            "kind": _REVIEW_KINDS[path[len(prefix) :]],
            "apiVersion": "authorization.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": status,
        }
        self._send_json(201, answer)
        return True

    def _discovery(self, method: str, path: str) -> bool:
        document: Obj | None = None
        if path == "/api":
            host = f"{self.api.host}:{self.api.port}"
            document = {
                "kind": "APIVersions",
                "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": host}],
            }
        elif path == "/api/v1":
            document = _api_resources("", "v1")
        elif path == "/apis":
            document = {
                "kind": "APIGroupList",
                "apiVersion": "v1",
                "groups": [*(_api_group(g) for g in _GROUP_VERSIONS), _AUTHORIZATION_GROUP],
            }
        elif path == "/apis/authorization.k8s.io":
            document = {"kind": "APIGroup", "apiVersion": "v1", **_AUTHORIZATION_GROUP}
        elif path == "/apis/authorization.k8s.io/v1":
            document = _AUTHORIZATION_RESOURCES
        else:
            parts = path.strip("/").split("/")
            if parts[0] == "apis" and len(parts) in (2, 3) and parts[1] in _GROUP_VERSIONS:
                if len(parts) == 2:
                    document = {"kind": "APIGroup", "apiVersion": "v1", **_api_group(parts[1])}
                elif parts[2] in _GROUP_VERSIONS[parts[1]]:
                    document = _api_resources(parts[1], parts[2])
        if document is None:
            return False
        if method != "GET":
            raise _method_not_allowed()
        self._send_json(200, document)
        return True

    @staticmethod
    def _route(path: str) -> _Route | None:
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "v1"]:
            group, version, rest = "", "v1", parts[2:]
        elif len(parts) >= 3 and parts[0] == "apis":
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            return None
        watch_path = bool(rest) and rest[0] == "watch"
        if watch_path:
            rest = rest[1:]
        namespace = None
        if len(rest) >= 3 and rest[0] == "namespaces" and rest[2] not in ("status", "finalize"):
            namespace, rest = rest[1], rest[2:]
        if not rest or len(rest) > 3:
            return None
        rt = _BY_GVR.get((group, version, rest[0]))
        if rt is None or (rt.namespaced is False and namespace is not None):
            return None
        name = rest[1] if len(rest) >= 2 else None
        sub = rest[2] if len(rest) == 3 else None
        if sub is not None and not (
            (sub == "status" and rt.has_status) or (sub == "eviction" and rt is _PODS)
        ):
            return None
        return _Route(rt, namespace, name, sub, watch_path)

    # ---- resources

    def _decode(self, body: bytes) -> Any:
        content_type = (self.headers.get("Content-Type") or "application/json").split(";")[0].strip().lower()
        if content_type == "application/vnd.kubernetes.protobuf":
            raise _unsupported_media_type(["application/json", "application/yaml"])
        try:
            if content_type == "application/yaml":
                import yaml

                return yaml.safe_load(body.decode() or "null")
            return json.loads(body or b"null")
        except Exception as exc:
            raise _bad_request(f"the body of the request could not be decoded: {exc}") from None

    def _check_type(self, rt: ResourceType, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise _bad_request("the body of the request must be a JSON object")
        api_version, kind = body.get("apiVersion"), body.get("kind")
        if api_version and api_version != rt.api_version:
            raise _version_mismatch(api_version, rt.api_version)
        if kind and kind != rt.kind:
            raise _bad_request(f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})")
        return body

    def _render_one(self, rt: ResourceType, obj: Obj, query: dict[str, str]) -> Obj:
        shape, version = _negotiate(self.headers.get("Accept", ""))
        if shape == "Table":
            meta = {"resourceVersion": obj["metadata"].get("resourceVersion", "")}
            return render_table(
                rt,
                [obj],
                version=version,
                include_object=_include_object(query),
                list_meta=meta,
            )
        if shape == "PartialObjectMetadata":
            return _partial_metadata(obj, version)
        return obj

    def _serve_resource(self, method: str, route: _Route, query: dict[str, str], body: bytes) -> None:
        store = self.api.store
        rt, ns, name = route.rt, route.namespace, route.name
        dry_run = bool(query.get("dryRun"))
        if method == "GET" and name is None:
            self._serve_list(route, query)
            return
        if route.watch_path or (route.subresource == "eviction" and method != "POST"):
            raise _method_not_allowed()
        if rt.namespaced and ns is None:
            # Only lists and watches span namespaces; everything else goes through one.
            raise _method_not_allowed() if name is None else _resource_not_found()
        if method == "GET" and name is not None:
            obj = store.api_get(rt, ns, name)
            self._send_json(200, self._render_one(rt, obj, query))
        elif method == "POST" and name is None:
            obj = store.api_create(rt, ns, self._check_type(rt, self._decode(body)), dry_run=dry_run)
            self._send_json(201, self._render_one(rt, obj, query))
        elif method == "POST" and route.subresource == "eviction" and name is not None and ns is not None:
            self._serve_eviction(ns, name, self._decode(body), dry_run)
        elif method == "PUT" and name is not None:
            obj, created = store.api_update(
                rt,
                ns,
                name,
                self._check_type(rt, self._decode(body)),
                subresource=route.subresource,
                dry_run=dry_run,
            )
            self._send_json(201 if created else 200, self._render_one(rt, obj, query))
        elif method == "PATCH" and name is not None and route.subresource != "eviction":
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip().lower()
            if content_type not in _patch_types(rt):
                raise _unsupported_media_type(_patch_types(rt))
            obj, created = store.api_patch(
                rt,
                ns,
                name,
                subresource=route.subresource,
                content_type=content_type,
                raw=body,
                dry_run=dry_run,
                field_manager=query.get("fieldManager"),
            )
            self._send_json(201 if created else 200, self._render_one(rt, obj, query))
        elif method == "DELETE" and route.subresource is None:
            options = self._delete_options(body, query)
            dry_run = dry_run or bool(options.get("dryRun"))
            if name is None:
                labels = parse_label_selector(query.get("labelSelector"))
                fields = parse_field_selector(query.get("fieldSelector"), rt)
                items = store.api_delete_collection(rt, ns, labels, fields, options, dry_run=dry_run)
                self._send_json(
                    200,
                    {"kind": f"{rt.kind}List", "apiVersion": rt.api_version, "metadata": {}, "items": items},
                )
                return
            obj, gone = store.api_delete(rt, ns, name, options, dry_run=dry_run)
            if gone and not rt.return_deleted_object:
                self._send_json(
                    200,
                    {
                        "kind": "Status",
                        "apiVersion": "v1",
                        "metadata": {},
                        "status": "Success",
                        "details": {
                            "name": name,
                            "group": rt.group,
                            "kind": rt.plural,
                            "uid": obj["metadata"]["uid"],
                        },
                    },
                )
            else:
                self._send_json(200, obj)
        else:
            raise _method_not_allowed()

    def _delete_options(self, body: bytes, query: dict[str, str]) -> Obj:
        options: Obj = {}
        if body.strip():
            decoded = self._decode(body)
            if decoded is not None and not isinstance(decoded, dict):
                raise _bad_request("DeleteOptions must be a JSON object")
            options = decoded or {}
        if "gracePeriodSeconds" in query:
            try:
                options["gracePeriodSeconds"] = int(query["gracePeriodSeconds"])
            except ValueError:
                raise _bad_request(f"invalid gracePeriodSeconds: {query['gracePeriodSeconds']}") from None
        if "propagationPolicy" in query:
            options["propagationPolicy"] = query["propagationPolicy"]
        return options

    def _serve_eviction(self, namespace: str, name: str, body: Any, dry_run: bool) -> None:
        if not isinstance(body, dict):
            raise _bad_request("the body of the request must be an Eviction object")
        api_version, kind = body.get("apiVersion"), body.get("kind")
        if api_version not in (None, "", "policy/v1", "policy/v1beta1") or kind not in (None, "", "Eviction"):
            raise _version_mismatch(api_version, "policy/v1")
        meta = body.get("metadata") or {}
        if meta.get("name") != name:
            raise _bad_request("name in URL does not match name in Eviction object")
        if meta.get("namespace") not in (None, "", namespace):
            raise _bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        options = body.get("deleteOptions") or {}
        dry_run = dry_run or bool(options.get("dryRun"))
        grace = options.get("gracePeriodSeconds")
        result = self.api.store.evict(
            namespace,
            name,
            grace_period_seconds=int(grace) if grace is not None else None,
            dry_run=dry_run,
            preconditions=options.get("preconditions"),
        )
        self._send_json(201, result)

    def _serve_list(self, route: _Route, query: dict[str, str]) -> None:
        rt = route.rt
        labels = parse_label_selector(query.get("labelSelector"))
        fields = parse_field_selector(query.get("fieldSelector"), rt)
        if route.watch_path or query.get("watch", "").lower() in ("1", "true"):
            self._serve_watch(route, query, labels, fields)
            return
        try:
            limit = int(query.get("limit") or 0)
        except ValueError:
            raise _bad_request(f"invalid limit: {query.get('limit')}") from None
        items, rv, token, remaining = self.api.store.api_list(
            rt, route.namespace, labels, fields, limit=limit, continue_token=query.get("continue") or None
        )
        list_meta: Obj = {"resourceVersion": rv}
        if token:
            list_meta["continue"] = token
            list_meta["remainingItemCount"] = remaining
        shape, version = _negotiate(self.headers.get("Accept", ""))
        if shape == "Table":
            body = render_table(
                rt,
                items,
                version=version,
                include_object=_include_object(query),
                list_meta=list_meta,
            )
        elif shape in ("PartialObjectMetadataList", "PartialObjectMetadata"):
            body = {
                "kind": "PartialObjectMetadataList",
                "apiVersion": f"meta.k8s.io/{version}",
                "metadata": list_meta,
                "items": [_partial_metadata(o, version) for o in items],
            }
        else:
            body = {
                "kind": f"{rt.kind}List",
                "apiVersion": rt.api_version,
                "metadata": list_meta,
                "items": items,
            }
        self._send_json(200, body)

    def _serve_watch(
        self, route: _Route, query: dict[str, str], labels: LabelSelector, fields: FieldSelector
    ) -> None:
        rt = route.rt
        timeout = _DEFAULT_WATCH_TIMEOUT_S
        if query.get("timeoutSeconds"):
            try:
                timeout = float(query["timeoutSeconds"])
            except ValueError:
                raise _bad_request(f"invalid timeoutSeconds: {query['timeoutSeconds']}") from None
        if self.api.watch_max_seconds is not None:
            timeout = min(timeout, self.api.watch_max_seconds)
        since = query.get("resourceVersion")
        if since and not since.isdigit():
            raise _bad_request(f"invalid resource version: {since}")
        shape, version = _negotiate(self.headers.get("Accept", ""))
        include_object = _include_object(query) if shape == "Table" else ""
        events = self.api.store.watch(
            rt,
            route.namespace,
            labels,
            fields,
            since=since,
            deadline=time.monotonic() + timeout,
            stopped=self.api._stopping,
            send_initial_events=query.get("sendInitialEvents", "").lower() == "true",
        )
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache, private")
        self.end_headers()
        first_table = True
        for batch in events:
            lines = []
            for event in batch:
                if shape == "Table" and event["type"] != "ERROR":
                    table = render_table(
                        rt,
                        [event["object"]],
                        version=version,
                        include_object=include_object,
                        list_meta={"resourceVersion": event["object"]["metadata"].get("resourceVersion", "")},
                        with_columns=first_table,
                    )
                    first_table = False
                    lines.append(json.dumps({"type": event["type"], "object": table}, separators=(",", ":")))
                else:
                    lines.append(json.dumps(event, separators=(",", ":")))
            chunk = ("\n".join(lines) + "\n").encode()
            self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    api: KubeAPIServer

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        # Without this, Nagle + delayed ACK add ~40 ms to every small keep-alive request.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, address

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake runs here, in the connection's own thread, so that a slow or
        # broken client cannot stall the accept loop.
        conn = request
        context = self.api._ssl_context
        if context is not None:
            try:
                request.settimeout(10)
                conn = context.wrap_socket(request, server_side=True)
                conn.settimeout(None)
            except (OSError, ssl.SSLError):
                return
        self.api._track(conn, add=True)
        try:
            handler = cast(Callable[[Any, Any, _Server], object], self.RequestHandlerClass)
            handler(conn, client_address, self)
        finally:
            self.api._track(conn, add=False)
            if conn is not request:
                with suppress(OSError):
                    conn.close()


_FAULT_REASONS = {409: "Conflict", 429: "TooManyRequests", 500: "InternalError", 503: "ServiceUnavailable"}


class KubeFaults:
    """Fail the next N requests that match a method and a path pattern, with a real
    ``Status`` body: the API server's answer to overload, conflicts and internal errors."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rules: list[list[Any]] = []  # [method, compiled path regex, remaining, status]

    def fail_next(self, method: str, path_pattern: str, count: int = 1, *, status: int = 500) -> None:
        import re

        with self._lock:
            self._rules.append([method.upper(), re.compile(path_pattern), count, status])

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def take(self, method: str, path: str) -> KubeError | None:
        with self._lock:
            for rule in self._rules:
                if rule[2] > 0 and rule[0] in (method, "*") and rule[1].search(path):
                    rule[2] -= 1
                    status = int(rule[3])
                    reason = _FAULT_REASONS.get(status, "InternalError")
                    message = (
                        "Operation cannot be fulfilled: the object has been modified; "
                        "please apply your changes to the latest version and try again"
                        if status == 409
                        else f"sandbox fault injection: {reason}"
                    )
                    return KubeError(status, reason, message)
        return None


class KubeAPIServer:
    """Serves a ``KubeStore`` over HTTP(S) as the Kubernetes REST API."""

    def __init__(
        self,
        store: KubeStore,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        tls: SandboxTLS | None = None,
        token: str | None = None,
        authorizer: Authorizer | None = None,
    ) -> None:
        self.store = store
        self.host = host
        self.tls = tls
        self.token = token  # the admin's (system:masters)
        # More identities (token -> user), authorized by ``authorizer`` as RBAC would.
        self.identities: dict[str, User] = {}
        self.authorizer = authorizer
        self.request_log: list[dict[str, Any]] = []
        self.faults = KubeFaults()
        # Opt-in: end every watch after at most this many seconds (0: at once, with an
        # empty stream), as a proxy's idle timeout or an API server shedding watches does.
        # None (the default) honours timeoutSeconds.
        self.watch_max_seconds: float | None = None
        self._log_lock = threading.Lock()
        self._ssl_context = tls.server_context() if tls is not None else None
        self._stopping = threading.Event()
        self._connections: set[Any] = set()
        self._conn_lock = threading.Lock()
        self._httpd = _Server((host, port), _Handler)
        self._httpd.api = self
        self.port: int = self._httpd.server_address[1]
        self.url = f"{'https' if tls is not None else 'http'}://{host}:{self.port}"
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="sandbox-kube-apiserver",
            daemon=True,
        )
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self.store.wake_watchers()
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()
        # Idle keep-alive connections would otherwise go on answering after stop().
        with self._conn_lock:
            connections = list(self._connections)
        for conn in connections:
            with suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def tokens(self) -> list[tuple[str, User]]:
        known = [(self.token, ADMIN)] if self.token else []
        return known + list(self.identities.items())

    def add_identity(self, token: str, user: User) -> None:
        self.identities[token] = user

    def write_kubeconfig(
        self, path: Path, *, cluster_name: str, token: str | None = None, user: str = "admin"
    ) -> None:
        """A kubeconfig for the admin (default) or for the identity of ``token``."""
        cluster = [f"    server: {self.url}"]
        if self.tls is not None:
            ca = base64.b64encode(self.tls.ca_pem()).decode()
            cluster.append(f"    certificate-authority-data: {ca}")
        token = token or self.token
        user_block = f"  user:\n    token: {token}" if token else "  user: {}"
        text = "\n".join(
            [
                "apiVersion: v1",
                "kind: Config",
                "clusters:",
                f"- name: {cluster_name}",
                "  cluster:",
                *cluster,
                "users:",
                f"- name: {cluster_name}-{user}",
                user_block,
                "contexts:",
                f"- name: {cluster_name}",
                "  context:",
                f"    cluster: {cluster_name}",
                f"    user: {cluster_name}-{user}",
                "    namespace: default",
                f"current-context: {cluster_name}",
                "",
            ]
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")

    # ---- internals used by the handler

    def _log_request(self, method: str, path: str, query: str, status: int, user_agent: str) -> None:
        entry = {
            "t": time.time(),
            "method": method,
            "path": path,
            "query": query,
            "status": status,
            "user_agent": user_agent,
        }
        with self._log_lock:
            self.request_log.append(entry)

    def _track(self, conn: Any, *, add: bool) -> None:
        with self._conn_lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

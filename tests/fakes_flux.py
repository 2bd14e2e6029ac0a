"""An in-memory ``kubernetes.client.CustomObjectsApi`` holding Flux objects, and builders.

The fake answers the way the API server does where the product depends on it: lists are
paged with ``limit``/``continue``, missing objects and kinds raise ``ApiException`` 404,
and a patch that is not a JSON merge patch is refused with 415, as a real server refuses
strategic merge on custom resources. ``KubeFluxClient`` runs unchanged on top of it.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from shared.adapters.workqueue import MemoryWorkQueue
from shared.clock import FakeClock
from shared.config import parse_config
from shared.rollout.ports import Collaborators
from shared.rollout.store.memory import MemoryRunStore
from tests.fakes import scale_set_id

FLEET_URL = "https://github.com/Octocoders/fleet-gitops.git"
OTHER_URL = "https://github.com/Octocoders/platform.git"
NS = "flux-system"


def _api_exception(status: int, reason: str) -> Exception:
    from kubernetes.client.exceptions import ApiException

    exc = ApiException(status=status, reason=reason)
    exc.body = json.dumps({"kind": "Status", "message": reason, "code": status})
    return exc


def _merge(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge(out.get(key), value)
    return out


@dataclass
class FakeCustomObjects:
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)  # (plural, ns, name)
    installed: set[str] = field(
        default_factory=lambda: {"gitrepositories", "kustomizations", "helmreleases", "helmcharts"}
    )
    patches: list[tuple[str, str, str, dict[str, Any], str]] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    fail_next: list[Exception] = field(default_factory=list)
    on_call: Callable[[str], None] = lambda _what: None

    def add(self, obj: dict[str, Any]) -> dict[str, Any]:
        plural = {
            "GitRepository": "gitrepositories",
            "Kustomization": "kustomizations",
            "HelmRelease": "helmreleases",
            "HelmChart": "helmcharts",
        }[obj["kind"]]
        meta = obj["metadata"]
        self.objects[(plural, meta["namespace"], meta["name"])] = copy.deepcopy(obj)
        return obj

    def get(self, plural: str, namespace: str, name: str) -> dict[str, Any]:
        return self.objects[(plural, namespace, name)]

    def annotation(self, plural: str, namespace: str, name: str) -> str | None:
        annotations = self.get(plural, namespace, name)["metadata"].get("annotations") or {}
        return annotations.get("reconcile.fluxcd.io/requestedAt")

    def _enter(self, what: str) -> None:
        self.calls.append(what)
        self.on_call(what)
        if self.fail_next:
            raise self.fail_next.pop(0)

    # ---- the CustomObjectsApi surface KubeFluxClient uses
    def list_cluster_custom_object(
        self,
        group: str,
        version: str,
        plural: str,
        *,
        limit: int | None = None,
        _continue: str | None = None,
        _request_timeout: Any = None,
    ) -> dict[str, Any]:
        self._enter(f"list {plural}")
        if plural not in self.installed:
            raise _api_exception(404, "the server could not find the requested resource")
        items = [copy.deepcopy(o) for (p, _, _), o in sorted(self.objects.items()) if p == plural]
        start = int(_continue or 0)
        end = start + limit if limit else len(items)
        meta = {"continue": str(end)} if end < len(items) else {}
        return {"items": items[start:end], "metadata": meta}

    def get_namespaced_custom_object(
        self,
        group: str,
        version: str,
        namespace: str,
        plural: str,
        name: str,
        *,
        _request_timeout: Any = None,
    ) -> dict[str, Any]:
        self._enter(f"get {plural} {namespace}/{name}")
        if (plural, namespace, name) not in self.objects:
            raise _api_exception(404, f'{plural} "{name}" not found')
        return copy.deepcopy(self.objects[(plural, namespace, name)])

    def patch_namespaced_custom_object(  # noqa: PLR0917 - the real API's positional signature
        self,
        group: str,
        version: str,
        namespace: str,
        plural: str,
        name: str,
        body: Any,
        *,
        field_manager: str | None = None,
        _content_type: str | None = None,
        _request_timeout: Any = None,
    ) -> dict[str, Any]:
        self._enter(f"patch {plural} {namespace}/{name}")
        if _content_type != "application/merge-patch+json":
            raise _api_exception(415, f"the body of the request was in an unknown format: {_content_type}")
        if (plural, namespace, name) not in self.objects:
            raise _api_exception(404, f'{plural} "{name}" not found')
        self.patches.append((plural, namespace, name, copy.deepcopy(body), field_manager or ""))
        merged = _merge(self.objects[(plural, namespace, name)], {"metadata": body.get("metadata", {})})
        self.objects[(plural, namespace, name)] = merged
        return copy.deepcopy(merged)

    def reconcile_all(self) -> None:
        """What the Flux controllers do with the requests: handle them and report Ready."""
        for obj in self.objects.values():
            requested = (obj["metadata"].get("annotations") or {}).get("reconcile.fluxcd.io/requestedAt")
            if requested:
                status = obj.setdefault("status", {})
                status["lastHandledReconcileAt"] = requested
                status["conditions"] = [
                    {"type": "Ready", "status": "True", "reason": "Succeeded", "message": "ok"}
                ]


# ---- object builders (the shapes of tests/payloads/flux-objects.yaml) -----------------------------


def git_repository(name: str, url: str = FLEET_URL, *, ns: str = NS, **ref: str) -> dict[str, Any]:
    return {
        "apiVersion": "source.toolkit.fluxcd.io/v1",
        "kind": "GitRepository",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"interval": "5m", "url": url, "ref": ref or {"branch": "main"}},
        "status": {"artifact": {"revision": "main@sha1:6113728f27ae82c7b1a177c8d03f9e96e0adf246"}},
    }


def kustomization(
    name: str, path: str, source: str = "fleet", *, ns: str = NS, **spec: Any
) -> dict[str, Any]:
    ref: dict[str, Any] = {"kind": "GitRepository", "name": source}
    if "source_ns" in spec:
        ref["namespace"] = spec.pop("source_ns")
    return {
        "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
        "kind": "Kustomization",
        "metadata": {"name": name, "namespace": ns},
        "spec": {"interval": "10m", "path": path, "prune": True, "sourceRef": ref, **spec},
    }


def helm_release(
    name: str, chart: str, source: str = "fleet", *, ns: str = NS, **chart_spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "helm.toolkit.fluxcd.io/v2",
        "kind": "HelmRelease",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "interval": "10m",
            "chart": {
                "spec": {
                    "chart": chart,
                    "sourceRef": {"kind": "GitRepository", "name": source, "namespace": NS},
                    **chart_spec,
                }
            },
        },
    }


def fleet(custom: FakeCustomObjects | None = None) -> FakeCustomObjects:
    """One cluster's objects: the fleet source with apps, infra and a chart; another repository."""
    custom = custom or FakeCustomObjects()
    custom.add(git_repository("fleet"))
    custom.add(git_repository("platform", OTHER_URL))
    custom.add(kustomization("apps", "./apps"))
    custom.add(kustomization("infra", "./infrastructure"))
    custom.add(kustomization("other", "./", "platform"))
    custom.add(helm_release("web", "./charts/web"))
    return custom


# ---- collaborators ------------------------------------------------------------------------------


def gitops_config(*, clusters: tuple[str, ...] = ("prod",), **gitops: Any) -> dict[str, Any]:
    return {
        "clusters": [
            {
                "name": name,
                "kubeconfig": {"setting": f"KUBECONFIG_{name.upper()}"},
                "pools": [{"name": "system", "scaleSetId": scale_set_id(f"vmss-{name}")}],
            }
            for name in clusters
        ],
        "gitops": {"secrets": [{"setting": "GITHUB_WEBHOOK_SECRET"}], **gitops},
    }


def gitops_deps(
    customs: dict[str, FakeCustomObjects],
    config: dict[str, Any] | None = None,
    *,
    clock: FakeClock | None = None,
) -> Collaborators:
    parsed = parse_config(config or gitops_config(clusters=tuple(customs)))
    return Collaborators(
        store=MemoryRunStore(),
        queue=MemoryWorkQueue(),
        clock=clock or FakeClock(),
        config=parsed,
        kube=lambda name: SimpleNamespace(custom=customs[name]),  # type: ignore[arg-type,return-value]
        compute=lambda _sub: None,  # type: ignore[arg-type,return-value]
    )

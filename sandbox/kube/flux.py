"""Flux in the sandbox: a fleet repository's objects and a stand-in for its controllers.

``add_flux_objects`` puts what ``flux bootstrap`` plus a typical fleet repository leave in
a cluster: a ``GitRepository`` ``flux-system/fleet`` on the repository under test,
Kustomizations ``apps`` (./apps) and ``infra`` (./infrastructure) reading it, a
``HelmRelease`` ``web`` whose chart is ./charts/web in it, and one ``Kustomization``
``other`` on a different repository (``platform``), which a push to the fleet repository
must never touch. Objects carry the status the controllers would have written (Ready,
artifact revision, lastAppliedRevision), in the shapes of ``tests/payloads/flux-objects.yaml``.

``start_flux_controller`` plays source-, kustomize- and helm-controller for the one thing
the patcher relies on: when ``reconcile.fluxcd.io/requestedAt`` changes, the object is
reconciled after a short (scaled) delay, which sets ``status.lastHandledReconcileAt`` to
the annotation's value, refreshes the Ready condition and the revision. The revision a
``GitRepository`` fetches is what ``publish_commit`` last published for its URL and
branch (the sandbox has no Git server); consumers apply their source's revision.

Status is written through the store's backdoor, as a controller writes ``/status``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import weakref
from datetime import UTC, datetime
from typing import Any

from sandbox.kube.registry import KubeStore
from sandbox.world import World

logger = logging.getLogger(__name__)

REQUESTED_AT = "reconcile.fluxcd.io/requestedAt"
NAMESPACE = "flux-system"
OTHER_REPO_URL = "https://github.com/example-platform/platform-config.git"
GIT_REPOSITORIES = "gitrepositories.source.toolkit.fluxcd.io"
KUSTOMIZATIONS = "kustomizations.kustomize.toolkit.fluxcd.io"
HELM_RELEASES = "helmreleases.helm.toolkit.fluxcd.io"
# Cloud seconds a controller takes to handle a request (scaled by the world's clock).
RECONCILE_CLOUD_SECONDS = {GIT_REPOSITORIES: 3.0, KUSTOMIZATIONS: 6.0, HELM_RELEASES: 8.0}
CHART_VERSION = "0.1.0"

# The sandbox's "Git server": (store, normalised url, branch) -> head commit.
_heads: weakref.WeakKeyDictionary[KubeStore, dict[tuple[str, str], str]] = weakref.WeakKeyDictionary()
_heads_lock = threading.Lock()


def _key(url: str) -> str:
    return url.strip().lower().removesuffix("/").removesuffix(".git")


def _initial_sha(url: str, branch: str) -> str:
    return hashlib.sha1(f"{_key(url)}@{branch}".encode(), usedforsecurity=False).hexdigest()


def publish_commit(kube_store: KubeStore, *, repo_url: str, branch: str, sha: str) -> None:
    """What a ``git push`` does to the remote: the next fetch of ``branch`` gets ``sha``."""
    with _heads_lock:
        _heads.setdefault(kube_store, {})[(_key(repo_url), branch)] = sha


def _head(kube_store: KubeStore, url: str, branch: str) -> str:
    with _heads_lock:
        return _heads.get(kube_store, {}).get((_key(url), branch)) or _initial_sha(url, branch)


def _now() -> str:
    """metav1.Time: RFC 3339 in UTC, whole seconds."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ready(reason: str, message: str, generation: int = 1) -> dict[str, Any]:
    return {
        "type": "Ready",
        "status": "True",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": _now(),
    }


def _git_repository(name: str, url: str, branch: str) -> dict[str, Any]:
    revision = f"{branch}@sha1:{_initial_sha(url, branch)}"
    return _flux_object(
        "source.toolkit.fluxcd.io/v1",
        "GitRepository",
        name,
        labels={"app.kubernetes.io/part-of": "flux"},
        spec={
            "interval": "5m",
            "timeout": "60s",
            "url": url,
            "ref": {"branch": branch},
            "secretRef": {"name": f"{name}-auth"},
        },
        status={
            "artifact": _artifact(name, revision),
            "conditions": [
                _ready("Succeeded", f"stored artifact for revision '{revision}'"),
                {
                    "type": "ArtifactInStorage",
                    "status": "True",
                    "reason": "Succeeded",
                    "message": f"stored artifact for revision '{revision}'",
                    "observedGeneration": 1,
                    "lastTransitionTime": _now(),
                },
            ],
        },
    )


def _artifact(name: str, revision: str) -> dict[str, Any]:
    sha = revision.rsplit(":", 1)[-1]
    return {
        "revision": revision,
        "digest": "sha256:" + hashlib.sha256(revision.encode()).hexdigest(),
        "path": f"gitrepository/{NAMESPACE}/{name}/{sha}.tar.gz",
        "url": f"http://source-controller.{NAMESPACE}.svc.cluster.local./gitrepository/{NAMESPACE}/{name}/{sha}.tar.gz",
        "size": 18_432,
        "lastUpdateTime": _now(),
    }


def _kustomization(name: str, path: str, source: str, revision: str) -> dict[str, Any]:
    return _flux_object(
        "kustomize.toolkit.fluxcd.io/v1",
        "Kustomization",
        name,
        spec={
            "interval": "10m",
            "retryInterval": "2m",
            "timeout": "5m",
            "path": path,
            "prune": True,
            "wait": True,
            "sourceRef": {"kind": "GitRepository", "name": source},
        },
        status={
            "lastAppliedRevision": revision,
            "lastAttemptedRevision": revision,
            "conditions": [_ready("ReconciliationSucceeded", f"Applied revision: {revision}")],
        },
    )


def _helm_release(name: str, chart_path: str, source: str, sha: str) -> dict[str, Any]:
    version = f"{CHART_VERSION}+{sha[:12]}"
    return _flux_object(
        "helm.toolkit.fluxcd.io/v2",
        "HelmRelease",
        name,
        spec={
            "interval": "10m",
            "releaseName": name,
            "targetNamespace": name,
            "chart": {
                "spec": {
                    "chart": chart_path,
                    "reconcileStrategy": "Revision",
                    "sourceRef": {"kind": "GitRepository", "name": source, "namespace": NAMESPACE},
                }
            },
        },
        status={
            "lastAttemptedRevision": version,
            "lastAttemptedGeneration": 1,
            "history": [
                {
                    "name": name,
                    "namespace": name,
                    "version": 1,
                    "chartName": name,
                    "chartVersion": version,
                    "status": "deployed",
                }
            ],
            "conditions": [
                _ready(
                    "InstallSucceeded",
                    f"Helm install succeeded for release {name}/{name}.v1 with chart {name}@{version}",
                )
            ],
        },
    )


def _flux_object(
    api_version: str,
    kind: str,
    name: str,
    *,
    spec: dict[str, Any],
    status: dict[str, Any],
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Flux object in the flux-system namespace, with the status its controller wrote for
    the first generation."""
    metadata: dict[str, Any] = {"name": name, "namespace": NAMESPACE}
    if labels:
        metadata["labels"] = labels
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": metadata,
        "spec": spec,
        "status": {"observedGeneration": 1, **status},
    }


def add_flux_objects(kube_store: KubeStore, *, repo_url: str, branch: str) -> None:
    """The fleet repository's Flux objects (and one on another repository)."""
    sha = _initial_sha(repo_url, branch)
    revision = f"{branch}@sha1:{sha}"
    other_revision = f"main@sha1:{_initial_sha(OTHER_REPO_URL, 'main')}"
    for obj in (
        _git_repository("fleet", repo_url, branch),
        _git_repository("platform", OTHER_REPO_URL, "main"),
        _kustomization("apps", "./apps", "fleet", revision),
        _kustomization("infra", "./infrastructure", "fleet", revision),
        _kustomization("other", "./", "platform", other_revision),
        _helm_release("web", "./charts/web", "fleet", sha),
    ):
        # Idempotent, so a test may call it on a sandbox whose stack already added them.
        resource = {"GitRepository": GIT_REPOSITORIES, "Kustomization": KUSTOMIZATIONS}.get(
            obj["kind"], HELM_RELEASES
        )
        if kube_store.get(resource, NAMESPACE, obj["metadata"]["name"]) is None:
            kube_store.create(obj)


class _FluxController:
    def __init__(self, kube_store: KubeStore, world: World) -> None:
        self.kube = kube_store
        self.world = world
        self._pending: set[tuple[str, str, str]] = set()
        self._lock = threading.Lock()

    def on_event(self, event_type: str, resource: str, obj: dict[str, Any]) -> None:
        if resource not in RECONCILE_CLOUD_SECONDS or event_type not in ("ADDED", "MODIFIED"):
            return
        meta = obj.get("metadata") or {}
        requested = (meta.get("annotations") or {}).get(REQUESTED_AT)
        if not requested or requested == (obj.get("status") or {}).get("lastHandledReconcileAt"):
            return
        if (obj.get("spec") or {}).get("suspend"):
            return  # Flux ignores requests to suspended objects
        key = (resource, str(meta.get("namespace")), str(meta.get("name")))
        with self._lock:
            if key in self._pending:
                return  # the scheduled reconcile will pick up the newest value
            self._pending.add(key)
        delay = self.world.clock.seconds(RECONCILE_CLOUD_SECONDS[resource])
        self.world.scheduler.call_later(delay, lambda: self._reconcile(*key))

    def _reconcile(self, resource: str, namespace: str, name: str) -> None:
        with self._lock:
            self._pending.discard((resource, namespace, name))
        current = self.kube.get(resource, namespace, name)
        if current is None:
            return
        handled = (current["metadata"].get("annotations") or {}).get(REQUESTED_AT)
        if resource == GIT_REPOSITORIES:
            spec = current.get("spec") or {}
            branch = (spec.get("ref") or {}).get("branch") or "master"
            revision = f"{branch}@sha1:{_head(self.kube, spec.get('url', ''), branch)}"
        else:
            revision = self._source_revision(current)
        sha = revision.rsplit(":", 1)[-1]

        def update(obj: dict[str, Any]) -> None:
            status = obj.setdefault("status", {})
            status["lastHandledReconcileAt"] = handled
            generation = int(obj["metadata"].get("generation") or 1)
            status["observedGeneration"] = generation
            if resource == GIT_REPOSITORIES:
                status["artifact"] = _artifact(name, revision)
                ready = _ready("Succeeded", f"stored artifact for revision '{revision}'", generation)
            elif resource == KUSTOMIZATIONS:
                status["lastAppliedRevision"] = status["lastAttemptedRevision"] = revision
                ready = _ready("ReconciliationSucceeded", f"Applied revision: {revision}", generation)
            else:
                version = f"{CHART_VERSION}+{sha[:12]}"
                history = status.setdefault("history", [])
                previous = history[0]["version"] if history else 0
                if not history or history[0].get("chartVersion") != version:
                    history.insert(
                        0,
                        {
                            "name": name,
                            "namespace": name,
                            "version": previous + 1,
                            "chartName": name,
                            "chartVersion": version,
                            "status": "deployed",
                        },
                    )
                    del history[5:]
                status["lastAttemptedRevision"] = version
                ready = _ready(
                    "UpgradeSucceeded",
                    f"Helm upgrade succeeded for release {name}/{name}.v{history[0]['version']} "
                    f"with chart {name}@{version}",
                    generation,
                )
            conditions = [c for c in status.get("conditions") or [] if c.get("type") != "Ready"]
            status["conditions"] = [ready, *conditions]

        self.kube.mutate(resource, namespace, name, update)
        logger.info(
            "flux: reconciled %s %s/%s at %s (request %s)", resource, namespace, name, revision, handled
        )

    def _source_revision(self, consumer: dict[str, Any]) -> str:
        spec = consumer.get("spec") or {}
        ref = spec.get("sourceRef") or ((spec.get("chart") or {}).get("spec") or {}).get("sourceRef") or {}
        namespace = ref.get("namespace") or consumer["metadata"].get("namespace")
        source = self.kube.get(GIT_REPOSITORIES, namespace, str(ref.get("name") or ""))
        return str(
            ((source or {}).get("status") or {}).get("artifact", {}).get("revision") or "unknown@sha1:0"
        )


_controlled: weakref.WeakSet[KubeStore] = weakref.WeakSet()


def start_flux_controller(kube_store: KubeStore, world: World) -> None:
    """Reconcile Flux objects whose ``reconcile.fluxcd.io/requestedAt`` changes, as Flux would.

    One controller per store: a second call is a no-op."""
    with _heads_lock:
        if kube_store in _controlled:
            return
        _controlled.add(kube_store)
    kube_store.add_listener(_FluxController(kube_store, world).on_event)

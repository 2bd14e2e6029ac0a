"""GitOps: which Flux objects a Git push concerns, and asking Flux to reconcile them.

A push names a repository, a ref and (usually) the files it changed. In each cluster the
planner finds

1. the ``GitRepository`` sources whose ``spec.url`` is that repository (https, ssh and
   scp-like forms compare equal; GitHub resolves host, owner and name case-insensitively)
   and whose ``spec.ref`` can resolve to what was pushed (``ref_matches``), then
2. the consumers of those sources: ``Kustomization`` objects (``spec.sourceRef``) and
   ``HelmRelease`` objects whose chart comes from them (``spec.chart.spec.sourceRef``, or
   ``spec.chartRef`` to a ``HelmChart`` built from them), keeping those whose path the push
   touched (``consumers_touched``).

It then asks for reconciliation the way ``flux reconcile --with-source`` does: a JSON
merge patch of only the ``reconcile.fluxcd.io/requestedAt`` annotation, the source first
and its consumers after. Custom resources have no strategic-merge schema (the API server
answers 415), and patching one annotation never conflicts with Flux's own server-side apply.

Why the path rule is wider than "the consumer's ``spec.path`` contains a changed file":
overlays reference shared bases outside their own directory (``../../base``), so a
changed file that lies outside *every* consumer path of a source may belong to any of
them, and all of them are reconciled. Asking too often costs one no-op reconcile;
asking too rarely delays a change until the object's ``spec.interval``.

When the payload cannot tell what changed (``github.ChangeSet`` is unknown: force push,
new ref, more commits than listed), every consumer of a matching source is reconciled.

The annotation value (the *token*) is fixed per delivery, so executing a plan twice, or
after a crash, writes the same value again, which Flux ignores: requests are idempotent,
and objects already carrying the token are skipped.

Everything here is pure or talks to a cluster through the small ``FluxClient`` interface,
so it is tested with an in-memory fake; ``KubeFluxClient`` is the real one.
"""

from __future__ import annotations

import logging
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

from shared.errors import NotFoundError

logger = logging.getLogger(__name__)

REQUESTED_AT = "reconcile.fluxcd.io/requestedAt"
# The field manager `flux reconcile` uses: Flux's own apply leaves this manager's fields alone.
FIELD_MANAGER = "flux-client-side-apply"
MERGE_PATCH = "application/merge-patch+json"
GIT_REPOSITORY_KIND = "GitRepository"
DEFAULT_BRANCH = "master"  # GitRepositoryRef: "defaults to 'master' if no other field is defined"


@dataclass(frozen=True)
class FluxKind:
    kind: str
    group: str
    version: str
    plural: str


GIT_REPOSITORY = FluxKind(GIT_REPOSITORY_KIND, "source.toolkit.fluxcd.io", "v1", "gitrepositories")
HELM_CHART = FluxKind("HelmChart", "source.toolkit.fluxcd.io", "v1", "helmcharts")
KUSTOMIZATION = FluxKind("Kustomization", "kustomize.toolkit.fluxcd.io", "v1", "kustomizations")
HELM_RELEASE = FluxKind("HelmRelease", "helm.toolkit.fluxcd.io", "v2", "helmreleases")
KINDS: dict[str, FluxKind] = {k.kind: k for k in (GIT_REPOSITORY, HELM_CHART, KUSTOMIZATION, HELM_RELEASE)}


def requested_at_token(ts: float) -> str:
    """``time.Now().Format(time.RFC3339Nano)`` in UTC, as ``flux reconcile`` writes it."""
    # A float holds microseconds exactly enough; finer digits would be rounding noise.
    micros = round(ts * 1_000_000)
    seconds, fraction = divmod(micros, 1_000_000)
    base = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{fraction:06d}".rstrip("0")  # RFC3339Nano drops trailing zeros
    return f"{base}.{digits}Z" if digits else f"{base}Z"


# ---- repository URLs --------------------------------------------------------------------------

_SCP_LIKE = re.compile(r"^(?:[^@/\s]+@)?(?P<host>[^:/\s]+):(?P<path>[^/].*)$")
_SCHEMES = {"http", "https", "ssh", "git", "git+ssh", "ssh+git"}


def repository_key(url: str) -> str | None:
    """``host/owner/name`` in lower case for any URL form of a repository, or None.

    ``https://github.com/Owner/Repo.git``, ``ssh://git@github.com:22/owner/repo`` and
    ``git@github.com:owner/repo`` all give ``github.com/owner/repo``. User info, ports and
    a trailing ``.git`` or ``/`` are not part of a repository's identity.
    """
    text = url.strip() if isinstance(url, str) else ""
    if not text:
        return None
    if "://" in text:
        try:
            parts = urlsplit(text)
            host = parts.hostname or ""
        except ValueError:
            return None
        if parts.scheme.lower() not in _SCHEMES:
            return None
        path = parts.path
    else:
        match = _SCP_LIKE.match(text)
        if not match:
            return None
        host, path = match.group("host"), match.group("path")
    path = path.strip("/")
    if path.lower().endswith(".git"):
        path = path[:-4].rstrip("/")
    if not host or not path or any(seg in ("", ".", "..") for seg in path.split("/")):
        return None
    return f"{host.lower()}/{path.lower()}"


# ---- refs -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RefMatch:
    matches: bool
    reason: str


def ref_matches(spec_ref: Any, *, pushed_ref: str, commit_ids: Iterable[str] = ()) -> RefMatch:
    """Can a GitRepository with ``spec.ref`` resolve to something the push changed?

    Flux's precedence: commit, then name, semver, tag, branch; no ref means branch master.
    """
    ref = spec_ref if isinstance(spec_ref, Mapping) else {}
    commit = str(ref.get("commit") or "").strip().lower()
    if commit:
        # A pinned commit only changes meaning when that commit appears (it may have been missing).
        pushed = {c.lower() for c in commit_ids if c}
        hit = any(c == commit or (len(commit) >= 7 and c.startswith(commit)) for c in pushed)
        return RefMatch(
            hit, f"pinned commit {commit[:12]} " + ("was pushed" if hit else "is not in the push")
        )
    name = str(ref.get("name") or "").strip()
    if name:
        return RefMatch(name == pushed_ref, f"tracks ref {name}")
    semver = str(ref.get("semver") or "").strip()
    if semver:
        # Flux resolves the range itself (and may pick an older tag than the one pushed):
        # any new tag can change what the range resolves to, so a tag push asks it to look.
        if not pushed_ref.startswith("refs/tags/"):
            return RefMatch(False, f"tracks tags matching {semver}; {pushed_ref} is not a tag")
        return RefMatch(True, f"tracks tags matching {semver}; Flux resolves the range")
    tag = str(ref.get("tag") or "").strip()
    if tag:
        return RefMatch(pushed_ref == f"refs/tags/{tag}", f"tracks tag {tag}")
    branch = str(ref.get("branch") or "").strip() or DEFAULT_BRANCH
    return RefMatch(pushed_ref == f"refs/heads/{branch}", f"tracks branch {branch}")


# ---- paths ------------------------------------------------------------------------------------


def normalize_path(path: Any) -> str:
    """A path in the repository, relative to its root, without ``./``; ``""`` is the root.

    ``..`` that climbs out of the repository also means the root: the object then may
    depend on anything.
    """
    text = str(path or "").strip().replace("\\", "/")
    relative = text.lstrip("/")
    normal = posixpath.normpath(relative) if relative else ""
    return "" if normal in (".", "..", "") or normal.startswith("../") else normal


def under(file: str, directory: str) -> bool:
    return directory in ("", file) or file.startswith(directory + "/")


def consumers_touched(
    consumer_paths: Mapping[str, Sequence[str]], changed: Iterable[str] | None, *, unknown_reason: str = ""
) -> dict[str, str]:
    """Which consumers (name -> their paths) a push touched, each with the reason.

    ``changed`` None means the push cannot tell: all of them. A changed file outside every
    consumer's paths (a shared base, a component) may be used by any: all of them.
    """
    if changed is None:
        return {
            name: f"all consumers: {unknown_reason or 'the push does not say what changed'}"
            for name in consumer_paths
        }
    files = sorted({normalize_path(f) for f in changed if normalize_path(f)})
    paths = {name: [normalize_path(p) for p in ps] for name, ps in consumer_paths.items()}
    touched: dict[str, str] = {}
    for name, dirs in paths.items():
        hits = [f for f in files if any(under(f, d) for d in dirs)]
        if hits:
            where = "/" if dirs[0] == "" else dirs[0]
            more = f" (+{len(hits) - 1} more)" if len(hits) > 1 else ""
            touched[name] = f"{where} touched by {hits[0]}{more}"
    unowned = [f for f in files if not any(under(f, d) for dirs in paths.values() for d in dirs)]
    if unowned:
        for name in paths:
            touched.setdefault(name, f"{unowned[0]} is outside every consumer's path (maybe a shared base)")
    return touched


# ---- the cluster side -------------------------------------------------------------------------


class FluxClient(Protocol):
    """What the planner and executor need from one cluster."""

    def list(self, kind: FluxKind) -> list[dict[str, Any]]:
        """All objects of ``kind`` in every namespace; [] if the kind is not installed."""
        ...

    def get(self, kind: FluxKind, namespace: str, name: str) -> dict[str, Any]:
        """One object; raises ``NotFoundError``."""
        ...

    def request_reconcile(self, kind: FluxKind, namespace: str, name: str, token: str) -> None:
        """Merge-patch ``reconcile.fluxcd.io/requestedAt: token`` onto the object."""
        ...


class KubeFluxClient:
    """``FluxClient`` over ``kubernetes.client.CustomObjectsApi`` (``KubeClient.custom``)."""

    PAGE = 250

    def __init__(self, custom: Any, *, timeout: tuple[float, float] = (5.0, 30.0)) -> None:
        self._custom = custom
        self._timeout = timeout

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from shared.adapters.kube import translate

        try:
            return fn(*args, _request_timeout=self._timeout, **kwargs)
        except Exception as exc:
            raise translate(exc, what) from exc

    def list(self, kind: FluxKind) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"limit": self.PAGE}
            if token:
                kwargs["_continue"] = token
            try:
                page = self._call(
                    f"list {kind.plural}",
                    self._custom.list_cluster_custom_object,
                    kind.group,
                    kind.version,
                    kind.plural,
                    **kwargs,
                )
            except NotFoundError:
                return []  # the CRD is not installed in this cluster
            items.extend(i for i in page.get("items") or [] if isinstance(i, dict))
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items

    def get(self, kind: FluxKind, namespace: str, name: str) -> dict[str, Any]:
        return dict(
            self._call(
                f"get {kind.plural} {namespace}/{name}",
                self._custom.get_namespaced_custom_object,
                kind.group,
                kind.version,
                namespace,
                kind.plural,
                name,
            )
        )

    def request_reconcile(self, kind: FluxKind, namespace: str, name: str, token: str) -> None:
        self._call(
            f"annotate {kind.plural} {namespace}/{name}",
            self._custom.patch_namespaced_custom_object,
            kind.group,
            kind.version,
            namespace,
            kind.plural,
            name,
            {"metadata": {"annotations": {REQUESTED_AT: token}}},
            field_manager=FIELD_MANAGER,
            # Explicit, because a strategic merge patch on a custom resource is answered 415.
            _content_type=MERGE_PATCH,
        )


# ---- planning ---------------------------------------------------------------------------------


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, Mapping) else {}


def _spec(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = obj.get("spec")
    return spec if isinstance(spec, Mapping) else {}


def _sub(value: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


@dataclass(frozen=True)
class Target:
    """One object to annotate, why, and the annotation value it carries now."""

    kind: str
    namespace: str
    name: str
    reason: str
    current: str = ""

    @classmethod
    def of(cls, kind: FluxKind, obj: Mapping[str, Any], reason: str) -> Target:
        meta = _meta(obj)
        annotations = meta.get("annotations") if isinstance(meta.get("annotations"), Mapping) else {}
        return cls(
            kind.kind,
            str(meta.get("namespace") or ""),
            str(meta.get("name") or ""),
            reason,
            str((annotations or {}).get(REQUESTED_AT) or ""),
        )

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"

    def describe(self, **extra: Any) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "reason": self.reason,
            **extra,
        }


@dataclass(frozen=True)
class PushFacts:
    """What the planner needs to know about a push (kept in the sync record for later runs)."""

    repo_keys: frozenset[str]
    ref: str
    commit_ids: frozenset[str] = frozenset()
    paths: frozenset[str] | None = None
    why_all: str = ""


@dataclass
class ClusterPlan:
    cluster: str
    sources: list[Target] = field(default_factory=list)
    consumers: list[Target] = field(default_factory=list)
    untouched: list[dict[str, Any]] = field(default_factory=list)

    @property
    def targets(self) -> list[Target]:
        """Sources first: a consumer reconciled before its source would build the old revision."""
        return [*self.sources, *self.consumers]

    def pending(self, token: str) -> list[Target]:
        return [t for t in self.targets if t.current != token]


@dataclass(frozen=True)
class FluxObjects:
    git_repositories: list[dict[str, Any]]
    kustomizations: list[dict[str, Any]]
    helm_releases: list[dict[str, Any]]
    helm_charts: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, flux: FluxClient, push: PushFacts | None = None) -> FluxObjects:
        sources = flux.list(GIT_REPOSITORY)
        if push is not None:
            sources = [s for s in sources if repository_key(str(_spec(s).get("url") or "")) in push.repo_keys]
        if not sources:
            return cls([], [], [])  # no source on this repository: nothing else can concern the push
        releases = flux.list(HELM_RELEASE)
        # HelmCharts are listed only when a release refers to one (spec.chartRef).
        needs_charts = any(_sub(_spec(r), "chartRef", "kind") == HELM_CHART.kind for r in releases)
        return cls(sources, flux.list(KUSTOMIZATION), releases, flux.list(HELM_CHART) if needs_charts else [])


def _source_of(ref: Any, default_namespace: str) -> tuple[str, str] | None:
    if not isinstance(ref, Mapping) or ref.get("kind") != GIT_REPOSITORY_KIND or not ref.get("name"):
        return None
    return str(ref.get("namespace") or default_namespace), str(ref["name"])


def _consumer_paths(
    obj: Mapping[str, Any], kind: FluxKind, charts: Mapping[tuple[str, str], Mapping[str, Any]]
) -> tuple[tuple[str, str] | None, list[str]]:
    """(the GitRepository it consumes, the repository paths it reads) for a consumer."""
    namespace = str(_meta(obj).get("namespace") or "")
    spec = _spec(obj)
    if kind is KUSTOMIZATION:
        return _source_of(spec.get("sourceRef"), namespace), [str(spec.get("path") or "")]
    chart_spec = _sub(spec, "chart", "spec")
    if isinstance(chart_spec, Mapping):
        source = _source_of(chart_spec.get("sourceRef"), namespace)
    else:
        chart_ref = spec.get("chartRef")
        if not isinstance(chart_ref, Mapping) or chart_ref.get("kind") != HELM_CHART.kind:
            return None, []
        chart = charts.get((str(chart_ref.get("namespace") or namespace), str(chart_ref.get("name") or "")))
        if chart is None:
            return None, []
        chart_spec = _spec(chart)
        # A HelmChart's sourceRef is local to the HelmChart's namespace.
        source = _source_of(chart_spec.get("sourceRef"), str(_meta(chart).get("namespace") or ""))
    values = chart_spec.get("valuesFiles") if isinstance(chart_spec.get("valuesFiles"), list) else []
    paths = [str(chart_spec.get("chart") or ""), *(str(v) for v in values if isinstance(v, str))]
    if isinstance(chart_spec.get("valuesFile"), str):
        paths.append(chart_spec["valuesFile"])
    return source, paths


def plan_cluster(
    cluster: str, objects: FluxObjects, push: PushFacts, *, untouched_limit: int = 50
) -> ClusterPlan:
    plan = ClusterPlan(cluster)

    def note(kind: FluxKind, obj: Mapping[str, Any], reason: str) -> None:
        if len(plan.untouched) < untouched_limit:
            plan.untouched.append(Target.of(kind, obj, reason).describe())

    matched: dict[tuple[str, str], Target] = {}
    for obj in objects.git_repositories:
        if repository_key(str(_spec(obj).get("url") or "")) not in push.repo_keys:
            continue  # another repository: not worth a line in the record
        verdict = ref_matches(_spec(obj).get("ref"), pushed_ref=push.ref, commit_ids=push.commit_ids)
        if not verdict.matches:
            note(GIT_REPOSITORY, obj, verdict.reason)
        elif _spec(obj).get("suspend") is True:
            note(GIT_REPOSITORY, obj, "suspended: Flux ignores reconcile requests")
        else:
            target = Target.of(GIT_REPOSITORY, obj, f"{verdict.reason}; {push.ref} was pushed")
            matched[(target.namespace, target.name)] = target
            plan.sources.append(target)
    if not matched:
        return plan

    charts = {
        (str(_meta(c).get("namespace") or ""), str(_meta(c).get("name") or "")): c
        for c in objects.helm_charts
    }
    by_source: dict[tuple[str, str], dict[str, tuple[FluxKind, Mapping[str, Any], list[str]]]] = {}
    for kind, items in ((KUSTOMIZATION, objects.kustomizations), (HELM_RELEASE, objects.helm_releases)):
        for obj in items:
            source, paths = _consumer_paths(obj, kind, charts)
            if source is not None and source in matched:
                by_source.setdefault(source, {})[Target.of(kind, obj, "").key] = (kind, obj, paths)

    for consumers in by_source.values():
        # Suspended consumers still own their paths: their files are nobody else's business.
        touched = consumers_touched(
            {key: paths for key, (_, _, paths) in consumers.items()}, push.paths, unknown_reason=push.why_all
        )
        for key, (kind, consumer, paths) in consumers.items():
            if _spec(consumer).get("suspend") is True:
                note(kind, consumer, "suspended: Flux ignores reconcile requests")
            elif key in touched:
                plan.consumers.append(Target.of(kind, consumer, touched[key]))
            else:
                shown = ", ".join(normalize_path(p) or "/" for p in paths)
                note(kind, consumer, f"{shown} not touched by the push")
    return plan


class OutOfTime(Exception):  # noqa: N818 - a signal, not an error
    """The caller's time budget ran out; the plan's remaining targets were not requested."""


def execute(
    flux: FluxClient, plan: ClusterPlan, token: str, *, in_time: Callable[[], bool] = lambda: True
) -> list[dict[str, Any]]:
    """Request reconciliation of the plan's targets in order; returns what was done.

    Targets already carrying ``token`` (a repeated run) are not patched again. Raises
    ``OutOfTime`` before a patch when ``in_time()`` says the budget is spent, and the
    product's errors (``TemporaryError``/``PermanentError``) from the cluster.
    """
    done: list[dict[str, Any]] = []
    for target in plan.targets:
        if target.current == token:
            done.append(target.describe(requested=False))
            continue
        if not in_time():
            raise OutOfTime(plan.cluster)
        flux.request_reconcile(KINDS[target.kind], target.namespace, target.name, token)
        done.append(target.describe(requested=True))
    return done


# ---- reading Flux's answer --------------------------------------------------------------------


def observe(obj: Mapping[str, Any], token: str) -> dict[str, Any]:
    """What Flux reports for our request, read as ``flux reconcile`` does: handled when
    ``status.lastHandledReconcileAt`` equals the token, then the Ready condition decides."""
    status = obj.get("status") if isinstance(obj.get("status"), Mapping) else {}
    status = status or {}
    annotations = _meta(obj).get("annotations")
    current = str(annotations.get(REQUESTED_AT) or "") if isinstance(annotations, Mapping) else ""
    last = str(status.get("lastHandledReconcileAt") or "")
    ready: dict[str, Any] = {"status": "Unknown"}
    for cond in status.get("conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == "Ready":
            ready = {k: cond.get(k) for k in ("status", "reason", "message") if cond.get(k) is not None}
    revision = _sub(status, "artifact", "revision") or status.get("lastAppliedRevision")
    handled = last == token
    superseded = not handled and current not in ("", token)
    result: dict[str, Any] = {
        "lastHandledReconcileAt": last or None,
        "handled": handled,
        "ready": ready,
        "revision": revision,
        "lastAttemptedRevision": status.get("lastAttemptedRevision"),
    }
    if superseded:
        result["supersededBy"] = current
    result["final"] = superseded or (handled and ready.get("status") in ("True", "False"))
    return result

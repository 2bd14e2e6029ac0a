"""The ``pods/eviction`` subresource: the request body, and whether a budget forbids it.

``EvictionREST.Create`` in ``pkg/registry/core/pod/storage/eviction.go``: a pod that is
already terminating, not yet running or finished is evicted whatever its budgets say
(``canIgnorePDB``); otherwise its one PodDisruptionBudget must allow a disruption (more
than one is an error), and a budget the disruption controller has not processed yet
allows nothing. The store deletes the pod and records the attempt; this module decides.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sandbox.kube.controllers import pdb_selector
from sandbox.kube.errors import KubeError, bad_request, version_mismatch
from sandbox.kube.objects import Obj, pod_ready
from sandbox.kube.selectors import labels_match


@dataclass(frozen=True)
class EvictionRequest:
    """What an ``Eviction`` body asks, its ``deleteOptions`` read."""

    grace_period_seconds: int | None
    dry_run: bool
    preconditions: Obj | None


@dataclass(frozen=True)
class Refusal:
    """A budget's refusal: the error to answer, and the budget's name when one is to blame."""

    error: KubeError
    pdb: str | None = None


def parse_eviction(body: Any, *, namespace: str, name: str, dry_run: bool) -> EvictionRequest:
    """The ``Eviction`` POSTed to ``pods/NAME/eviction``, or the apiserver's 400 for it."""
    if not isinstance(body, dict):
        raise bad_request("the body of the request must be an Eviction object")
    api_version, kind = body.get("apiVersion"), body.get("kind")
    if api_version not in (None, "", "policy/v1", "policy/v1beta1") or kind not in (None, "", "Eviction"):
        raise version_mismatch(api_version, "policy/v1")
    meta = body.get("metadata") or {}
    if meta.get("name") != name:
        raise bad_request("name in URL does not match name in Eviction object")
    if meta.get("namespace") not in (None, "", namespace):
        raise bad_request(
            "the namespace of the provided object does not match the namespace sent on the request"
        )
    options = body.get("deleteOptions") or {}
    grace = options.get("gracePeriodSeconds")
    return EvictionRequest(
        grace_period_seconds=int(grace) if grace is not None else None,
        dry_run=dry_run or bool(options.get("dryRun")),
        preconditions=options.get("preconditions"),
    )


def budget_refusal(pod: Obj, namespace_budgets: Iterable[Obj]) -> Refusal | None:
    """Why the pod's PodDisruptionBudget forbids evicting it now, or None if nothing does;
    ``namespace_budgets``: the budgets of the pod's namespace."""
    meta = pod["metadata"]
    phase = (pod.get("status") or {}).get("phase")
    # canIgnorePDB: the pod is already terminating, not yet running, or finished.
    if phase in ("Succeeded", "Failed", "Pending") or meta.get("deletionTimestamp"):
        return None
    pdbs = []
    for pdb in namespace_budgets:
        selector = pdb_selector(pdb, for_eviction=True)
        if selector is not None and labels_match(selector, pod):
            pdbs.append(pdb)
    if len(pdbs) > 1:
        # EvictionREST.Create returns this Status unchanged; the finisher turns it into the error.
        return Refusal(
            KubeError(
                500,
                "",
                "This pod has more than one PodDisruptionBudget, "
                "which the eviction subresource does not support.",
                details=False,
            )
        )
    if not pdbs:
        return None
    pdb = pdbs[0]
    status = pdb.get("status") or {}
    if int(status.get("observedGeneration") or 0) < int(pdb["metadata"].get("generation", 1)):
        # checkAndDecrement: a budget the controller has not processed yet
        # allows nothing.
        return _too_many_requests(pdb, "is still being processed by the server.", retry_after_seconds=10)
    policy = (pdb.get("spec") or {}).get("unhealthyPodEvictionPolicy")
    healthy, desired = (
        int(status.get("currentHealthy") or 0),
        int(status.get("desiredHealthy") or 0),
    )
    unhealthy_may_go = not pod_ready(pod) and (policy == "AlwaysAllow" or healthy >= desired > 0)
    if not unhealthy_may_go and int(status.get("disruptionsAllowed") or 0) <= 0:
        return _too_many_requests(pdb, f"needs {desired} healthy pods and has {healthy} currently")
    return None


def _too_many_requests(pdb: Obj, reason_text: str, *, retry_after_seconds: int = 0) -> Refusal:
    """The 429 the eviction subresource answers when a PodDisruptionBudget forbids it."""
    pdb_name = pdb["metadata"]["name"]
    error = KubeError(
        429,
        "TooManyRequests",
        "Cannot evict pod as it would violate the pod's disruption budget.",
        causes=[
            {
                "reason": "DisruptionBudget",
                "message": f"The disruption budget {pdb_name} {reason_text}",
            }
        ],
        retry_after_seconds=retry_after_seconds,
    )
    return Refusal(error, pdb_name)

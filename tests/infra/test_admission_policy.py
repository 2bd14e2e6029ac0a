"""The ValidatingAdmissionPolicies in infra/kubernetes let the app's token change exactly
the fields its code writes, and nothing else.

The policies' CEL is evaluated with cel-python as the API server evaluates it: the
resource rules and ``matchConditions`` decide whether a request is looked at, then the
``variables`` in order, then every validation. The requests are the app's real patches
(the bodies ``KubeClient`` and ``KubeFluxClient`` send, captured from their calls, applied
to realistic objects as the API server applies a merge patch), and patches the token
could send but must not.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from tests.infra import derive

celpy = pytest.importorskip("celpy", reason="cel-python (requirements-dev.txt) evaluates the policies")

APP = "system:serviceaccount:vmss-node-patcher:vmss-node-patcher"
PAYLOADS = Path(__file__).resolve().parents[1] / "payloads"
REQUESTED_AT = "reconcile.fluxcd.io/requestedAt"


def _policies() -> dict[str, dict[str, Any]]:
    docs = derive.k8s_documents()
    policies = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ValidatingAdmissionPolicy"}
    bindings = {d["spec"]["policyName"]: d for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding"}
    assert policies, "infra/kubernetes deploys no ValidatingAdmissionPolicy"
    for name in policies:
        assert name in bindings, f"policy {name} is bound by nothing (an unbound policy does nothing)"
        assert bindings[name]["spec"]["validationActions"] == ["Deny"]
        assert policies[name]["spec"]["failurePolicy"] == "Fail"
    return policies


def _evaluate(expression: str, activation: dict[str, Any]) -> Any:
    env = celpy.Environment()
    program = env.program(env.compile(expression))
    return program.evaluate(activation)


def admit(user: str, group: str, resource: str, old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """The messages of the validations an UPDATE by ``user`` fails (empty: admitted)."""
    refused = []
    for policy in _policies().values():
        spec = policy["spec"]
        rules = spec["matchConstraints"]["resourceRules"]
        if not any(
            group in r["apiGroups"] and resource in r["resources"] and "UPDATE" in r["operations"]
            for r in rules
        ):
            continue
        activation: dict[str, Any] = {
            "object": celpy.json_to_cel(new),
            "oldObject": celpy.json_to_cel(old),
            "request": celpy.json_to_cel({"userInfo": {"username": user}, "operation": "UPDATE"}),
        }
        if not all(_evaluate(c["expression"], activation) for c in spec.get("matchConditions", [])):
            continue
        variables: dict[str, Any] = {}
        for variable in spec.get("variables", []):
            activation["variables"] = celpy.json_to_cel({}) if not variables else _as_cel_map(variables)
            variables[variable["name"]] = _evaluate(variable["expression"], activation)
        activation["variables"] = _as_cel_map(variables)
        for validation in spec["validations"]:
            if not _evaluate(validation["expression"], activation):
                refused.append(validation["message"])
    return refused


def _as_cel_map(values: dict[str, Any]) -> Any:
    return celpy.celtypes.MapType({celpy.celtypes.StringType(k): v for k, v in values.items()})


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (and, for the maps the app patches on Nodes, what a
    strategic merge patch does: maps merge, null deletes)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def flux_objects() -> dict[str, dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((PAYLOADS / "flux-objects.yaml").read_text(encoding="utf-8")) if d]
    found = {d["kind"]: d for d in docs}
    for obj in found.values():
        obj["metadata"].setdefault("labels", {})["kustomize.toolkit.fluxcd.io/name"] = "flux-system"
        obj["metadata"]["finalizers"] = ["finalizers.fluxcd.io"]
    return found


def flux_patch(kind: str) -> dict[str, Any]:
    """The body the app's KubeFluxClient.request_reconcile sends for ``kind``."""
    from shared.gitops.plan import GIT_REPOSITORY, HELM_RELEASE, KUSTOMIZATION, KubeFluxClient

    sent: list[Any] = []

    class Custom:
        def patch_namespaced_custom_object(self, *args: Any, **kwargs: Any) -> Any:
            sent.append(args[5])
            return {}

    kinds = {"GitRepository": GIT_REPOSITORY, "Kustomization": KUSTOMIZATION, "HelmRelease": HELM_RELEASE}
    KubeFluxClient(Custom()).request_reconcile(kinds[kind], "flux-system", "x", "2026-12-03T10:00:00Z")
    return sent[0]


GROUPS = {
    "GitRepository": ("source.toolkit.fluxcd.io", "gitrepositories"),
    "Kustomization": ("kustomize.toolkit.fluxcd.io", "kustomizations"),
    "HelmRelease": ("helm.toolkit.fluxcd.io", "helmreleases"),
}


@pytest.mark.parametrize("kind", GROUPS)
def test_the_apps_reconcile_request_is_admitted(kind: str) -> None:
    old = flux_objects()[kind]
    new = merge_patch(old, flux_patch(kind))
    assert new["metadata"]["annotations"][REQUESTED_AT] == "2026-12-03T10:00:00Z"
    assert admit(APP, *GROUPS[kind], old, new) == []
    # On an object that never had the annotation (nor any) too.
    bare = copy.deepcopy(old)
    del bare["metadata"]["annotations"]
    assert admit(APP, *GROUPS[kind], bare, merge_patch(bare, flux_patch(kind))) == []


FLUX_REFUSED: dict[str, Callable[[dict[str, Any]], None]] = {
    "point the GitRepository at another URL": lambda o: o["spec"].update(url="https://evil.example/x.git"),
    "follow another branch": lambda o: o["spec"].update(ref={"branch": "attacker"}),
    "drop the source's credentials": lambda o: o["spec"].pop("secretRef"),
    "suspend it": lambda o: o["spec"].update(suspend=True),
    "add another annotation": lambda o: o["metadata"]["annotations"].update(
        {"reconcile.fluxcd.io/forceAt": "x"}
    ),
    "remove another annotation": lambda o: o["metadata"]["annotations"].pop("kept.example/note"),
    "change a label": lambda o: o["metadata"]["labels"].update({"kustomize.toolkit.fluxcd.io/name": "other"}),
    "remove the finalizer": lambda o: o["metadata"].pop("finalizers"),
}


@pytest.mark.parametrize("change", FLUX_REFUSED.values(), ids=FLUX_REFUSED.keys())
def test_any_other_change_by_the_app_to_a_flux_object_is_refused(
    change: Callable[[dict[str, Any]], None],
) -> None:
    old = flux_objects()["GitRepository"]
    old["metadata"]["annotations"]["kept.example/note"] = "keep me"
    new = merge_patch(old, flux_patch("GitRepository"))  # even together with a real request
    change(new)
    assert admit(APP, *GROUPS["GitRepository"], old, new), "admitted"


def test_other_identities_are_not_looked_at() -> None:
    old = flux_objects()["GitRepository"]
    new = copy.deepcopy(old)
    new["spec"]["url"] = "https://github.com/Octocoders/moved.git"
    assert (
        admit("system:serviceaccount:flux-system:kustomize-controller", *GROUPS["GitRepository"], old, new)
        == []
    )
    assert admit(APP, *GROUPS["GitRepository"], old, new)


# ---- Nodes ------------------------------------------------------------------------------------


def a_node() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": "k8s-linux-12345678-vmss000000",
            "labels": {"agentpool": "linux", "kubernetes.io/os": "linux"},
            "annotations": {
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
        },
        "spec": {
            "providerID": "azure:///subscriptions/s/resourceGroups/rg/providers/Microsoft.Compute/virtualMachineScaleSets/v/virtualMachines/0",
            "podCIDR": "10.244.0.0/24",
            "taints": [{"key": "CriticalAddonsOnly", "value": "true", "effect": "NoSchedule"}],
        },
    }


def node_patches() -> list[dict[str, Any]]:
    """What KubeClient.cordon, annotate_node and uncordon send, in the order a step does."""
    from shared.adapters.kube import KubeClient

    sent: list[dict[str, Any]] = []

    class Core:
        def patch_node(self, name: str, body: dict[str, Any], **kwargs: Any) -> Any:
            sent.append(body)
            return SimpleNamespace(data=b"{}")

    kube = KubeClient.__new__(KubeClient)
    kube._core = Core()
    kube._timeout = (5, 30)
    kube.cordon("n", run_id="run-1", state="draining")
    kube.annotate_node("n", {"vmss-node-patcher.io/state": "booting"})
    kube.uncordon("n", state="succeeded", patched_at="2026-12-03T10:00:00Z")
    return sent


def test_the_apps_cordon_annotate_and_uncordon_are_admitted() -> None:
    node = a_node()
    for patch in node_patches():
        new = merge_patch(node, patch)
        assert admit(APP, "", "nodes", node, new) == [], patch
        node = new
    assert (
        "unschedulable" not in node["spec"] and node["metadata"]["annotations"]["vmss-node-patcher.io/state"]
    )


NODE_REFUSED: dict[str, Callable[[dict[str, Any]], None]] = {
    "add a taint": lambda n: n["spec"]["taints"].append({"key": "x", "effect": "NoExecute"}),
    "remove the taints": lambda n: n["spec"].pop("taints"),
    "change the providerID": lambda n: n["spec"].update(providerID="azure:///elsewhere"),
    "change another label": lambda n: n["metadata"]["labels"].update({"agentpool": "x"}),
    "add another label": lambda n: n["metadata"]["labels"].update(
        {"node-role.kubernetes.io/control-plane": ""}
    ),
    "remove another annotation": lambda n: n["metadata"]["annotations"].pop("node.alpha.kubernetes.io/ttl"),
    "add another annotation": lambda n: n["metadata"]["annotations"].update(
        {"cluster-autoscaler.kubernetes.io/scale-down-disabled": "true"}
    ),
}


@pytest.mark.parametrize("change", NODE_REFUSED.values(), ids=NODE_REFUSED.keys())
def test_any_other_change_by_the_app_to_a_node_is_refused(change: Callable[[dict[str, Any]], None]) -> None:
    old = a_node()
    new = merge_patch(old, node_patches()[0])  # even together with a real cordon
    change(new)
    assert admit(APP, "", "nodes", old, new), "admitted"

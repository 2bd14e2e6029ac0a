"""The simulated API server authorizes the app's identity as RBAC would: kubectl's own
questions (auth can-i) and a denied request get the real cluster's answers."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from sandbox.stack import Sandbox

pytestmark = pytest.mark.integration


def _kubectl(sandbox: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl is on every machine of this project"
    return subprocess.run(
        [kubectl, "--kubeconfig", str(sandbox.app_kubeconfig_path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_endpoints_name_the_admin_and_the_app_kubeconfig(sandbox: Sandbox) -> None:
    endpoints = json.loads(sandbox.endpoints_path.read_text(encoding="utf-8"))
    assert endpoints["kubeconfig"] == str(sandbox.kubeconfig_path)
    assert endpoints["app_kubeconfig"] == str(sandbox.app_kubeconfig_path)


@pytest.mark.parametrize(
    ("question", "answer"),
    [
        (["watch", "pods", "--all-namespaces"], "yes"),
        (["watch", "nodes"], "yes"),
        (["patch", "nodes"], "yes"),
        (["delete", "nodes"], "no"),
        (["delete", "pods", "-n", "default"], "no"),
        (["create", "pods", "--subresource=eviction", "-n", "default"], "yes"),
        (["create", "events", "-n", "default"], "yes"),
        (["create", "events", "-n", "kube-system"], "no"),
    ],
)
def test_kubectl_auth_can_i_answers_from_the_shipped_roles(
    sandbox: Sandbox, question: list[str], answer: str
) -> None:
    result = _kubectl(sandbox, "auth", "can-i", *question)
    assert result.stdout.strip() == answer, (result.stdout, result.stderr)


def test_kubectl_auth_can_i_list_shows_the_app_roles(sandbox: Sandbox) -> None:
    result = _kubectl(sandbox, "auth", "can-i", "--list")
    assert result.returncode == 0, result.stderr
    lines = {
        line.split()[0]: line for line in result.stdout.splitlines() if line and not line.startswith(" ")
    }
    assert "[get list watch patch]" in lines["nodes"]
    assert "[create]" in lines["pods/eviction"]


def test_a_request_the_roles_do_not_grant_is_forbidden_with_the_apiservers_message(sandbox: Sandbox) -> None:
    node = sandbox.kube.list("nodes", None)[0]["metadata"]["name"]
    result = _kubectl(sandbox, "delete", "node", node)
    assert result.returncode != 0
    assert (
        f'Error from server (Forbidden): nodes "{node}" is forbidden: User '
        '"system:serviceaccount:vmss-node-patcher:vmss-node-patcher" cannot delete resource "nodes" '
        'in API group "" at the cluster scope'
    ) in result.stderr
    assert sandbox.kube.get("nodes", None, node)  # still there

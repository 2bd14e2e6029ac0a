"""GitHub push -> Flux reconcile requests, through the app's real paths: a runner process
over HTTP, Azurite for the delivery/sync records and the hand-off queue, the simulated
Kubernetes API server holding Flux objects, and a simulated Flux controller that answers
the requests. What was annotated is read from the API server's own store and request log."""

from __future__ import annotations

import copy
import json
import os
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sandbox.cluster import PoolSpec
from sandbox.kube.flux import add_flux_objects, publish_commit, start_flux_controller
from sandbox.stack import CLUSTER, Sandbox, SandboxOptions
from shared.gitops.github import sign

pytestmark = pytest.mark.integration

PAYLOADS = Path(__file__).parent.parent / "payloads"
REPO_URL = "https://github.com/Octocoders/fleet-gitops.git"
SECRET = os.urandom(16).hex()
NS = "flux-system"
GIT_REPOSITORIES = "gitrepositories.source.toolkit.fluxcd.io"
KUSTOMIZATIONS = "kustomizations.kustomize.toolkit.fluxcd.io"
HELM_RELEASES = "helmreleases.helm.toolkit.fluxcd.io"
REQUESTED_AT = "reconcile.fluxcd.io/requestedAt"


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sb = Sandbox(
        SandboxOptions(
            state_dir=tmp_path_factory.mktemp("gitops-sandbox"),
            pools=PoolSpec.parse_list("linux:linux:1"),
            runners=1,
            workloads=False,
            time_scale=0.02,
            extra_config={
                "gitops": {
                    "secrets": [{"setting": "GITHUB_WEBHOOK_SECRET"}],
                    # The scp-like form on purpose: it must match the https URL Flux uses.
                    "repositories": [
                        {"url": "git@github.com:octocoders/fleet-gitops.git", "clusters": [CLUSTER]}
                    ],
                }
            },
            extra_settings={"GITHUB_WEBHOOK_SECRET": SECRET},
        )
    )
    sb.start()
    assert sb.kube and sb.world
    add_flux_objects(sb.kube, repo_url=REPO_URL, branch="main")  # a no-op if the stack added them
    start_flux_controller(sb.kube, sb.world)
    fleet = sb.kube.get(GIT_REPOSITORIES, NS, "fleet") or {}
    assert fleet.get("spec", {}).get("url") == REPO_URL, (
        "the sandbox's fleet repository is not the one pushed"
    )
    yield sb
    sb.stop()


def push_body(*, after: str, files: list[str], forced: bool = False) -> bytes:
    data: dict[str, Any] = json.loads((PAYLOADS / "github-push.json").read_text())
    commit = copy.deepcopy(data["commits"][0])
    commit.update(id=after, added=files, modified=[], removed=[])
    data.update(after=after, commits=[commit], head_commit=commit, forced=forced)
    return json.dumps(data).encode()


def deliver(sb: Sandbox, body: bytes, *, delivery: str, secret: str = SECRET) -> tuple[int, Any]:
    req = urllib.request.Request(
        f"{sb.functions_url}/api/gitops/github",
        data=body,
        method="POST",
        headers={
            "Content-Type": "application/json",
            "User-Agent": "GitHub-Hookshot/044aadd",
            "X-GitHub-Event": "push",
            "X-GitHub-Delivery": delivery,
            "X-Hub-Signature-256": sign(secret, body),
        },
    )
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as err:
        raw = err.read()
        return err.code, json.loads(raw) if raw else None


def get_json(sb: Sandbox, path: str) -> Any:
    with urllib.request.urlopen(f"{sb.functions_url}{path}", timeout=15) as resp:
        return json.loads(resp.read())


def requested(sb: Sandbox, resource: str, name: str) -> str | None:
    assert sb.kube
    obj = sb.kube.get(resource, NS, name)
    assert obj is not None, name
    return (obj["metadata"].get("annotations") or {}).get(REQUESTED_AT)


def writes_since(sb: Sandbox, mark: int) -> list[dict[str, Any]]:
    assert sb.kube_server
    return [r for r in sb.kube_server.request_log[mark:] if r["method"] in ("PATCH", "PUT", "POST", "DELETE")]


def wait_for(predicate: Any, *, timeout: float = 15.0, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_a_verified_push_reconciles_the_source_and_only_the_kustomization_it_touched(
    sandbox: Sandbox,
) -> None:
    assert sandbox.kube_server
    after = uuid.uuid4().hex + "00000000"
    publish_commit(sandbox.kube, repo_url=REPO_URL, branch="main", sha=after)  # type: ignore[arg-type]
    body = push_body(after=after, files=["apps/web/deployment.yaml"])
    delivery = str(uuid.uuid4())
    mark = len(sandbox.kube_server.request_log)

    status, answer = deliver(sandbox, body, delivery=delivery)

    assert status == 200, answer
    token = answer["requestedAt"]
    assert answer["clusters"][CLUSTER]["objects"] == [
        "GitRepository/flux-system/fleet",
        "Kustomization/flux-system/apps",
    ]
    assert requested(sandbox, GIT_REPOSITORIES, "fleet") == token
    assert requested(sandbox, KUSTOMIZATIONS, "apps") == token
    for resource, name in [
        (KUSTOMIZATIONS, "infra"),
        (KUSTOMIZATIONS, "other"),
        (GIT_REPOSITORIES, "platform"),
        (HELM_RELEASES, "web"),
    ]:
        assert requested(sandbox, resource, name) is None, name
    writes = writes_since(sandbox, mark)
    assert [(w["method"], w["path"].rsplit("/", 1)[-1], w["status"]) for w in writes] == [
        ("PATCH", "fleet", 200),
        ("PATCH", "apps", 200),
    ]

    # GitHub redelivers with the same id: acknowledged, nothing written.
    mark = len(sandbox.kube_server.request_log)
    status, replay = deliver(sandbox, body, delivery=delivery)
    assert status == 200 and replay["status"] == "duplicate"
    assert writes_since(sandbox, mark) == []

    # The status endpoint reads back what Flux made of it.
    def handled() -> dict[str, Any] | None:
        sync = get_json(sandbox, f"/api/gitops/syncs/{delivery}")
        objects = sync["results"][CLUSTER]["objects"]
        return sync if all(o.get("flux", {}).get("handled") for o in objects) else None

    sync = wait_for(handled, what="Flux to handle the requests")
    source, apps = sync["results"][CLUSTER]["objects"]
    assert source["flux"]["lastHandledReconcileAt"] == token
    assert source["flux"]["revision"] == f"main@sha1:{after}"
    assert source["flux"]["ready"]["status"] == "True"
    assert apps["flux"]["revision"] == f"main@sha1:{after}"
    assert sync["commit"] == after and sync["state"] == "done"
    listed = get_json(sandbox, "/api/gitops/syncs")["syncs"]
    assert listed[0]["delivery"] == delivery


def test_a_push_with_a_wrong_signature_touches_no_cluster(sandbox: Sandbox) -> None:
    assert sandbox.kube_server
    mark = len(sandbox.kube_server.request_log)
    body = push_body(after="f" * 40, files=["infrastructure/x.yaml"])
    status, answer = deliver(sandbox, body, delivery=str(uuid.uuid4()), secret="not the secret")
    assert status == 401 and answer is None
    assert sandbox.kube_server.request_log[mark:] == []
    assert requested(sandbox, KUSTOMIZATIONS, "infra") is None


def test_a_large_sync_is_handed_to_the_queue_and_finished_by_the_queue_trigger(sandbox: Sandbox) -> None:
    assert sandbox.kube
    for i in range(24):
        sandbox.kube.create(
            {
                "apiVersion": "kustomize.toolkit.fluxcd.io/v1",
                "kind": "Kustomization",
                "metadata": {"name": f"team-{i:02d}", "namespace": NS},
                "spec": {
                    "interval": "10m",
                    "path": f"./teams/{i:02d}",
                    "prune": True,
                    "sourceRef": {"kind": "GitRepository", "name": "fleet"},
                },
            }
        )
    after = uuid.uuid4().hex + "11111111"
    delivery = str(uuid.uuid4())
    # A force push: every consumer of the fleet source (28 objects, more than the inline limit).
    status, answer = deliver(sandbox, push_body(after=after, files=[], forced=True), delivery=delivery)
    assert status == 202, answer
    assert answer["clusters"][CLUSTER]["state"] == "queued"

    def finished() -> dict[str, Any] | None:
        sync = get_json(sandbox, f"/api/gitops/syncs/{delivery}")
        return sync if sync["results"][CLUSTER]["state"] == "done" else None

    sync = wait_for(finished, timeout=20, what="the queued sync to finish")
    token = sync["token"]
    names = {o["name"] for o in sync["results"][CLUSTER]["objects"]}
    assert names == {"fleet", "apps", "infra", "web", *(f"team-{i:02d}" for i in range(24))}
    assert requested(sandbox, KUSTOMIZATIONS, "team-23") == token
    assert requested(sandbox, HELM_RELEASES, "web") == token
    assert requested(sandbox, KUSTOMIZATIONS, "other") is None

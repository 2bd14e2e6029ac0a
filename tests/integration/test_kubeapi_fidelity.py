"""The simulated kube-apiserver behaves like the real one for the clients the patcher uses.

Everything here goes over real HTTPS with a bearer token: the unmodified ``kubernetes``
client and the machine's real ``kubectl``. What the simulation itself does (graceful
deletion, PDB arithmetic) is set up through ``KubeStore`` the way the rest of the sandbox
does, and observed through the API.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from sandbox.kube.objects import HANG_TERMINATING_ANNOTATION
from sandbox.kube.registry import KubeStore
from sandbox.kube.server import KubeAPIServer
from sandbox.tls import create_tls
from sandbox.world import World

pytestmark = pytest.mark.integration

TOKEN = "sandbox-token-for-tests"
# 100 cloud seconds at time scale 0.01: a graceful pod deletion takes one second.
TERMINATION_CLOUD_SECONDS = 100.0
_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


@dataclass
class Cluster:
    world: World
    store: KubeStore
    server: KubeAPIServer
    kubeconfig: Path
    home: Path
    api_client: client.ApiClient

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api_client)

    @property
    def policy(self) -> client.PolicyV1Api:
        return client.PolicyV1Api(self.api_client)

    @property
    def custom(self) -> client.CustomObjectsApi:
        return client.CustomObjectsApi(self.api_client)

    @property
    def coordination(self) -> client.CoordinationV1Api:
        return client.CoordinationV1Api(self.api_client)

    def kubectl(self, *args: str, timeout: float = 90) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "HOME": str(self.home), "KUBECONFIG": str(self.kubeconfig)}
        return subprocess.run(
            ["kubectl", "--kubeconfig", str(self.kubeconfig), "--cache-dir", str(self.home / "cache"), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )

    def raw(
        self, method: str, path: str, *, token: str | None = TOKEN, **kwargs: Any
    ) -> urllib3.BaseHTTPResponse:
        """A request with nothing in between, to see status codes, headers and bodies as sent."""
        http = urllib3.PoolManager(ca_certs=str(self.home / "tls" / "ca.pem"))
        headers = dict(kwargs.pop("headers", {}))
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return http.request(method, self.server.url + path, headers=headers, **kwargs)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    home = tmp_path_factory.mktemp("kubeapi")
    world = World(time_scale=0.01, history_path=home / "history.jsonl")
    store = KubeStore(world, pod_termination_cloud_seconds=TERMINATION_CLOUD_SECONDS)
    server = KubeAPIServer(store, tls=create_tls(home / "tls"), token=TOKEN)
    server.start()
    kubeconfig = home / "kubeconfig"
    server.write_kubeconfig(kubeconfig, cluster_name="sandbox")
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    api_client = client.ApiClient(cfg)
    try:
        yield Cluster(world, store, server, kubeconfig, home, api_client)
    finally:
        api_client.close()
        server.stop()
        world.close()


@pytest.fixture
def ns(cluster: Cluster) -> str:
    name = unique("ns")
    cluster.store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    return name


# ------------------------------------------------------------------- objects as the simulation makes them


def add_node(store: KubeStore, name: str, **labels: str) -> dict[str, Any]:
    return store.create(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **labels}},
            "spec": {"providerID": f"azure:///vmss/{name}"},
            "status": {
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                "nodeInfo": {"kubeletVersion": "v1.31.4"},
                "addresses": [{"type": "InternalIP", "address": "10.0.0.4"}],
            },
        }
    )


def add_pod(
    store: KubeStore,
    namespace: str,
    name: str,
    *,
    node: str | None,
    labels: dict[str, str] | None = None,
    phase: str = "Running",
    ready: bool = True,
    owner: dict[str, Any] | None = None,
    annotations: dict[str, str] | None = None,
    empty_dir: bool = False,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "app", "image": "nginx"}]}
    if node:
        spec["nodeName"] = node
    if empty_dir:
        spec["volumes"] = [{"name": "scratch", "emptyDir": {}}]
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": labels or {}}
    if owner:
        metadata["ownerReferences"] = [owner]
    if annotations:
        metadata["annotations"] = annotations
    return store.create(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": metadata,
            "spec": spec,
            "status": {
                "phase": phase,
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            },
        }
    )


def add_owner(store: KubeStore, namespace: str, kind: str, name: str, replicas: int) -> dict[str, Any]:
    obj = store.create(
        {
            "apiVersion": "apps/v1",
            "kind": kind,
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}}},
        }
    )
    return {
        "apiVersion": "apps/v1",
        "kind": kind,
        "name": name,
        "uid": obj["metadata"]["uid"],
        "controller": True,
    }


def add_pdb(store: KubeStore, namespace: str, name: str, app: str, **budget: Any) -> dict[str, Any]:
    return store.create(
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"selector": {"matchLabels": {"app": app}}, **budget},
        }
    )


def evict(cluster: Cluster, namespace: str, name: str, **delete_options: Any) -> int:
    body = client.V1Eviction(
        metadata=client.V1ObjectMeta(name=name, namespace=namespace),
        delete_options=client.V1DeleteOptions(**delete_options) if delete_options else None,
    )
    _, code, _ = cluster.core.create_namespaced_pod_eviction_with_http_info(name, namespace, body)
    return int(code)


def status_body(exc: ApiException) -> dict[str, Any]:
    return json.loads(exc.body)


def wait_for(predicate: Callable[[], bool], *, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def pod_exists(cluster: Cluster, namespace: str, name: str) -> bool:
    return cluster.store.get("pods", namespace, name) is not None


# --------------------------------------------------------------------------- reads


def test_nodes_list_as_typed_node_list_and_read_by_name(cluster: Cluster) -> None:
    name = unique("node")
    add_node(cluster.store, name, pool="system")

    listed = cluster.core.list_node()
    assert name in [n.metadata.name for n in listed.items]
    assert int(listed.metadata.resource_version) >= 1

    node = cluster.core.read_node(name)
    assert node.metadata.labels["pool"] == "system"
    assert node.status.conditions[0].type == "Ready"
    # Fields Go always serialises are there even though the fixture left them out.
    assert (node.status.node_info.kubelet_version, node.status.node_info.architecture) == ("v1.31.4", "")

    raw = json.loads(cluster.raw("GET", "/api/v1/nodes").data)
    assert raw["kind"] == "NodeList"
    assert raw["apiVersion"] == "v1"
    assert all(item["kind"] == "Node" and item["apiVersion"] == "v1" for item in raw["items"])


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("pool=blue", {"a"}),
        ("pool==blue", {"a"}),
        ("pool!=blue", {"b", "c"}),
        ("pool in (blue,green)", {"a", "b"}),
        ("pool notin (blue)", {"b", "c"}),
        ("gpu", {"b"}),
        ("!gpu", {"a", "c"}),
        ("pool=green,gpu", {"b"}),
    ],
)
def test_label_selectors_filter_like_the_apiserver(
    cluster: Cluster, ns: str, selector: str, expected: set[str]
) -> None:
    for pod, labels in (("a", {"pool": "blue"}), ("b", {"pool": "green", "gpu": "yes"}), ("c", {})):
        add_pod(cluster.store, ns, pod, node=None, labels=labels, phase="Pending")

    pods = cluster.core.list_namespaced_pod(ns, label_selector=selector)

    assert {p.metadata.name for p in pods.items} == expected


def test_field_selectors_filter_pods_by_node_phase_and_name(cluster: Cluster, ns: str) -> None:
    node_a, node_b = unique("node"), unique("node")
    add_pod(cluster.store, ns, "on-a", node=node_a)
    add_pod(cluster.store, ns, "on-b", node=node_b)
    add_pod(cluster.store, ns, "done-on-a", node=node_a, phase="Succeeded")

    def names(field_selector: str) -> set[str]:
        return {
            p.metadata.name
            for p in cluster.core.list_pod_for_all_namespaces(field_selector=field_selector).items
        }

    assert names(f"spec.nodeName={node_a}") == {"on-a", "done-on-a"}
    assert names(f"spec.nodeName=={node_a},status.phase!=Succeeded") == {"on-a"}
    assert names(f"metadata.namespace={ns},spec.nodeName!={node_a}") == {"on-b"}
    assert names(f"metadata.name=on-b,metadata.namespace={ns}") == {"on-b"}

    with pytest.raises(ApiException) as err:
        cluster.core.list_namespaced_pod(ns, field_selector="spec.containers=x")
    assert err.value.status == 400
    assert status_body(err.value)["message"] == "field label not supported: spec.containers"


def test_list_pages_with_limit_and_continue(cluster: Cluster, ns: str) -> None:
    for i in range(5):
        add_pod(cluster.store, ns, f"p{i}", node=None, phase="Pending")

    first = cluster.core.list_namespaced_pod(ns, limit=2)
    assert [p.metadata.name for p in first.items] == ["p0", "p1"]
    assert first.metadata.remaining_item_count == 3
    second = cluster.core.list_namespaced_pod(ns, limit=2, _continue=first.metadata._continue)
    rest = cluster.core.list_namespaced_pod(ns, limit=2, _continue=second.metadata._continue)

    assert [p.metadata.name for p in second.items + rest.items] == ["p2", "p3", "p4"]
    assert not rest.metadata._continue


def test_table_output_has_columns_and_rows_with_object_metadata(cluster: Cluster) -> None:
    name = unique("node")
    add_node(cluster.store, name)

    response = cluster.raw(
        "GET",
        "/api/v1/nodes",
        headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"},
    )
    table = json.loads(response.data)

    assert table["kind"] == "Table"
    assert [c["name"] for c in table["columnDefinitions"]][:5] == [
        "Name",
        "Status",
        "Roles",
        "Age",
        "Version",
    ]
    row = next(r for r in table["rows"] if r["cells"][0] == name)
    assert row["cells"][1] == "Ready"
    assert row["object"]["kind"] == "PartialObjectMetadata"
    assert row["object"]["metadata"]["name"] == name


# --------------------------------------------------------------------------- writes


def test_create_answers_201_with_the_stored_object(cluster: Cluster, ns: str) -> None:
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="created", labels={"app": "x"}),
        spec=client.V1PodSpec(containers=[client.V1Container(name="c", image="nginx")]),
    )

    created, code, _ = cluster.core.create_namespaced_pod_with_http_info(ns, pod)

    assert code == 201
    assert created.metadata.uid
    assert created.metadata.resource_version
    assert created.metadata.creation_timestamp is not None
    # Status belongs to the kubelet: a created pod starts Pending, whatever the client sent.
    assert created.status.phase == "Pending"
    assert created.spec.termination_grace_period_seconds == 30


def test_creating_an_existing_object_is_409_already_exists(cluster: Cluster, ns: str) -> None:
    body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "twice"}, "data": {"k": "v"}}
    cluster.core.create_namespaced_config_map(ns, body)

    with pytest.raises(ApiException) as err:
        cluster.core.create_namespaced_config_map(ns, body)

    assert err.value.status == 409
    status = status_body(err.value)
    assert status["reason"] == "AlreadyExists"
    assert status["message"] == 'configmaps "twice" already exists'


def test_cordon_is_a_strategic_merge_patch_and_null_uncordons(cluster: Cluster) -> None:
    name = unique("node")
    add_node(cluster.store, name)

    cordoned = cluster.core.patch_node(name, {"spec": {"unschedulable": True}})
    assert cordoned.spec.unschedulable is True
    assert cluster.store.get("nodes", None, name)["spec"]["unschedulable"] is True

    uncordoned = cluster.core.patch_node(name, {"spec": {"unschedulable": None}})
    assert uncordoned.spec.unschedulable is None
    stored = cluster.store.get("nodes", None, name)
    assert "unschedulable" not in stored["spec"]
    assert stored["spec"]["providerID"] == f"azure:///vmss/{name}"


def test_strategic_merge_merges_conditions_by_type_on_the_status_subresource(cluster: Cluster) -> None:
    name = unique("node")
    add_node(cluster.store, name)

    cluster.core.patch_node_status(
        name, {"status": {"conditions": [{"type": "MemoryPressure", "status": "False", "reason": "Ok"}]}}
    )
    node = cluster.core.patch_node_status(
        name, {"status": {"conditions": [{"type": "Ready", "status": "False"}]}}
    )

    conditions = {c.type: c.status for c in node.status.conditions}
    assert conditions == {"Ready": "False", "MemoryPressure": "False"}
    # The main resource ignores status: it is only written through /status.
    cluster.core.patch_node(name, {"status": {"conditions": []}, "metadata": {"labels": {"touched": "yes"}}})
    node = cluster.core.read_node(name)
    assert len(node.status.conditions) == 2
    assert node.metadata.labels["touched"] == "yes"


def test_merge_patch_and_json_patch_edit_labels(cluster: Cluster) -> None:
    name = unique("node")
    add_node(cluster.store, name, keep="1", drop="1")

    merged = cluster.core.patch_node(
        name,
        {"metadata": {"labels": {"drop": None, "added": "yes"}}},
        _content_type="application/merge-patch+json",
    )
    assert merged.metadata.labels["added"] == "yes"
    assert "drop" not in merged.metadata.labels

    patched = cluster.core.patch_node(
        name,
        [
            {"op": "test", "path": "/metadata/labels/added", "value": "yes"},
            {"op": "replace", "path": "/metadata/labels/keep", "value": "2"},
            {"op": "add", "path": "/metadata/annotations", "value": {"a/b": "c"}},
            {"op": "copy", "from": "/metadata/labels/keep", "path": "/metadata/labels/copied"},
            {"op": "remove", "path": "/metadata/labels/added"},
        ],
    )
    assert patched.metadata.labels["keep"] == "2"
    assert patched.metadata.labels["copied"] == "2"
    assert "added" not in patched.metadata.labels
    assert patched.metadata.annotations == {"a/b": "c"}


def test_failing_json_patch_test_is_422_invalid(cluster: Cluster) -> None:
    name = unique("node")
    add_node(cluster.store, name)
    before = cluster.store.get("nodes", None, name)

    with pytest.raises(ApiException) as err:
        cluster.core.patch_node(
            name,
            [
                {"op": "test", "path": "/metadata/resourceVersion", "value": "0"},
                {"op": "add", "path": "/metadata/labels/x", "value": "y"},
            ],
        )

    assert err.value.status == 422
    status = status_body(err.value)
    assert status["reason"] == "Invalid"
    assert status["message"] == "the server rejected our request due to an error in our request"
    assert cluster.store.get("nodes", None, name) == before


def test_stale_resource_version_is_409_conflict(cluster: Cluster) -> None:
    name = unique("node")
    add_node(cluster.store, name)
    stale = cluster.core.read_node(name)
    cluster.core.patch_node(name, {"metadata": {"labels": {"first": "writer"}}})

    stale.metadata.labels["second"] = "writer"
    with pytest.raises(ApiException) as err:
        cluster.core.replace_node(name, stale)
    assert err.value.status == 409
    status = status_body(err.value)
    assert status["reason"] == "Conflict"
    assert status["message"] == (
        f'Operation cannot be fulfilled on nodes "{name}": the object has been modified; '
        "please apply your changes to the latest version and try again"
    )
    assert status["details"] == {"name": name, "kind": "nodes"}

    with pytest.raises(ApiException) as err:
        cluster.core.patch_node(
            name, {"metadata": {"resourceVersion": stale.metadata.resource_version, "labels": {"x": "y"}}}
        )
    assert err.value.status == 409

    fresh = cluster.core.read_node(name)
    fresh.metadata.labels["second"] = "writer"
    replaced = cluster.core.replace_node(name, fresh)
    assert int(replaced.metadata.resource_version) > int(fresh.metadata.resource_version)


def test_leases_enforce_optimistic_concurrency(cluster: Cluster, ns: str) -> None:
    lease = client.V1Lease(
        metadata=client.V1ObjectMeta(name="patcher-lock"),
        spec=client.V1LeaseSpec(holder_identity="a", lease_duration_seconds=15),
    )
    created = cluster.coordination.create_namespaced_lease(ns, lease)
    created.spec.holder_identity = "b"
    cluster.coordination.replace_namespaced_lease("patcher-lock", ns, created)

    created.spec.holder_identity = "c"
    with pytest.raises(ApiException) as err:
        cluster.coordination.replace_namespaced_lease("patcher-lock", ns, created)

    assert err.value.status == 409
    assert cluster.coordination.read_namespaced_lease("patcher-lock", ns).spec.holder_identity == "b"


def test_events_can_be_recorded(cluster: Cluster, ns: str) -> None:
    event = client.CoreV1Event(
        metadata=client.V1ObjectMeta(generate_name="node-patch."),
        involved_object=client.V1ObjectReference(kind="Node", name="n1"),
        reason="Cordoned",
        message="cordoned for patching",
        type="Normal",
    )

    created, code, _ = cluster.core.create_namespaced_event_with_http_info(ns, event)

    assert code == 201
    assert created.metadata.name.startswith("node-patch.")
    listed = cluster.core.list_namespaced_event(ns, field_selector="involvedObject.name=n1")
    assert [e.reason for e in listed.items] == ["Cordoned"]


def test_custom_resources_reject_strategic_merge_with_415_and_take_merge_patch(
    cluster: Cluster, ns: str
) -> None:
    cluster.store.create(
        {
            "apiVersion": "source.toolkit.fluxcd.io/v1",
            "kind": "GitRepository",
            "metadata": {"name": "fleet", "namespace": ns},
            "spec": {"interval": "5m", "url": "https://example.invalid/fleet.git"},
        }
    )
    args = ("source.toolkit.fluxcd.io", "v1", ns, "gitrepositories", "fleet")
    annotation = {"metadata": {"annotations": {"reconcile.fluxcd.io/requestedAt": "2024-06-01T03:15:02Z"}}}

    with pytest.raises(ApiException) as err:
        cluster.custom.patch_namespaced_custom_object(
            *args, annotation, _content_type="application/strategic-merge-patch+json"
        )
    assert err.value.status == 415
    assert status_body(err.value)["reason"] == "UnsupportedMediaType"

    patched = cluster.custom.patch_namespaced_custom_object(*args, annotation)
    assert patched["metadata"]["annotations"]["reconcile.fluxcd.io/requestedAt"] == "2024-06-01T03:15:02Z"
    assert patched["kind"] == "GitRepository"
    listed = cluster.custom.list_namespaced_custom_object(
        "source.toolkit.fluxcd.io", "v1", ns, "gitrepositories"
    )
    assert [(i["kind"], i["apiVersion"]) for i in listed["items"]] == [
        ("GitRepository", "source.toolkit.fluxcd.io/v1")
    ]


# --------------------------------------------------------------------------- deletion


def test_graceful_delete_leaves_the_pod_terminating_until_the_kubelet_confirms(
    cluster: Cluster, ns: str
) -> None:
    node = unique("node")
    pod = add_pod(cluster.store, ns, "graceful", node=node)

    deleted = cluster.core.delete_namespaced_pod("graceful", ns)

    assert deleted.metadata.deletion_timestamp is not None
    assert deleted.metadata.deletion_grace_period_seconds == 30
    assert cluster.core.read_namespaced_pod("graceful", ns).metadata.deletion_timestamp is not None
    wait_for(lambda: not pod_exists(cluster, ns, "graceful"), timeout=5)
    with pytest.raises(ApiException) as err:
        cluster.core.read_namespaced_pod("graceful", ns)
    assert err.value.status == 404
    kinds = [
        (r["kind"], r.get("via"))
        for r in cluster.world.history.records()
        if r.get("uid") == pod["metadata"]["uid"]
    ]
    assert kinds == [("pod_terminating", "delete"), ("pod_deleted", "delete")]


def test_hang_annotation_keeps_a_pod_terminating_until_removed(cluster: Cluster, ns: str) -> None:
    add_pod(
        cluster.store, ns, "stuck", node=unique("node"), annotations={HANG_TERMINATING_ANNOTATION: "true"}
    )

    cluster.core.delete_namespaced_pod("stuck", ns, grace_period_seconds=1)
    time.sleep(0.3)  # the kubelet would have finished by now (1 cloud second = 10 ms)

    assert cluster.core.read_namespaced_pod("stuck", ns).metadata.deletion_timestamp is not None
    cluster.store.remove_now("pods", ns, "stuck")
    assert not pod_exists(cluster, ns, "stuck")


def test_zero_grace_period_and_unscheduled_pods_are_deleted_at_once(cluster: Cluster, ns: str) -> None:
    add_pod(cluster.store, ns, "forced", node=unique("node"))
    add_pod(cluster.store, ns, "unscheduled", node=None, phase="Pending")

    cluster.core.delete_namespaced_pod("forced", ns, body=client.V1DeleteOptions(grace_period_seconds=0))
    cluster.core.delete_namespaced_pod("unscheduled", ns)

    assert not pod_exists(cluster, ns, "forced")
    assert not pod_exists(cluster, ns, "unscheduled")


def test_missing_objects_answer_a_not_found_status(cluster: Cluster, ns: str) -> None:
    with pytest.raises(ApiException) as err:
        cluster.core.read_namespaced_pod("nothing-here", ns)

    assert err.value.status == 404
    assert status_body(err.value) == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'pods "nothing-here" not found',
        "reason": "NotFound",
        "details": {"name": "nothing-here", "kind": "pods"},
        "code": 404,
    }
    unknown = cluster.raw("GET", "/apis/example.com/v1/widgets")
    assert unknown.status == 404
    assert json.loads(unknown.data)["reason"] == "NotFound"


def test_malformed_json_is_400_bad_request(cluster: Cluster, ns: str) -> None:
    response = cluster.raw(
        "POST",
        f"/api/v1/namespaces/{ns}/configmaps",
        body=b"{not json",
        headers={"Content-Type": "application/json"},
    )

    assert response.status == 400
    assert json.loads(response.data)["reason"] == "BadRequest"


def test_requests_without_the_token_are_unauthorized(cluster: Cluster) -> None:
    response = cluster.raw("GET", "/api/v1/nodes", token=None)
    wrong = cluster.raw("GET", "/api/v1/nodes", token="not-the-token")

    assert response.status == 401
    assert json.loads(response.data)["reason"] == "Unauthorized"
    assert wrong.status == 401
    assert cluster.raw("GET", "/healthz", token=None).data == b"ok"


# ------------------------------------------------------------------- eviction and PodDisruptionBudgets


def test_eviction_without_a_budget_answers_201_and_deletes_gracefully(cluster: Cluster, ns: str) -> None:
    node = unique("node")
    pod = add_pod(cluster.store, ns, "free", node=node, labels={"app": "free"})

    assert evict(cluster, ns, "free") == 201

    assert cluster.store.get("pods", ns, "free")["metadata"]["deletionTimestamp"]
    wait_for(lambda: not pod_exists(cluster, ns, "free"))
    history = [r for r in cluster.world.history.records() if r.get("uid") == pod["metadata"]["uid"]]
    assert [(r["kind"], r.get("result"), r.get("via")) for r in history] == [
        ("pod_terminating", None, "eviction"),
        ("eviction", 201, None),
        ("pod_deleted", None, "eviction"),
    ]
    assert history[1]["node"] == node


def test_eviction_refused_by_budget_is_429_with_a_disruption_budget_cause(cluster: Cluster, ns: str) -> None:
    node = unique("node")
    for i in range(2):
        add_pod(cluster.store, ns, f"web-{i}", node=node, labels={"app": "web"})
    add_pdb(cluster.store, ns, "web-pdb", "web", minAvailable=2)

    with pytest.raises(ApiException) as err:
        evict(cluster, ns, "web-0")

    assert err.value.status == 429
    status = status_body(err.value)
    assert status["reason"] == "TooManyRequests"
    assert status["message"] == "Cannot evict pod as it would violate the pod's disruption budget."
    assert status["details"]["causes"] == [
        {
            "reason": "DisruptionBudget",
            "message": "The disruption budget web-pdb needs 2 healthy pods and has 2 currently",
        }
    ]
    assert pod_exists(cluster, ns, "web-0")
    assert cluster.store.get("pods", ns, "web-0")["metadata"].get("deletionTimestamp") is None


@pytest.mark.parametrize(
    ("budget", "replicas", "expected"),
    [
        ({"minAvailable": 2}, None, (2, 1)),
        ({"minAvailable": 3}, None, (3, 0)),
        ({"minAvailable": "50%"}, 3, (2, 1)),  # 1.5 rounds up to 2
        ({"maxUnavailable": 1}, 3, (2, 1)),
        ({"maxUnavailable": 1}, 4, (3, 0)),  # one replica is already missing
        ({"maxUnavailable": "34%"}, 3, (1, 2)),  # 1.02 rounds up to 2 unavailable
        ({"maxUnavailable": "0%"}, 3, (3, 0)),
    ],
)
def test_budget_arithmetic_matches_the_disruption_controller(
    cluster: Cluster, ns: str, budget: dict[str, Any], replicas: int | None, expected: tuple[int, int]
) -> None:
    """Three healthy pods; ``expected`` is (desiredHealthy, disruptionsAllowed)."""
    node = unique("node")
    owner = add_owner(cluster.store, ns, "ReplicaSet", "app", replicas) if replicas else None
    for i in range(3):
        add_pod(cluster.store, ns, f"app-{i}", node=node, labels={"app": "app"}, owner=owner)
    add_pdb(cluster.store, ns, "budget", "app", **budget)

    status = cluster.policy.read_namespaced_pod_disruption_budget("budget", ns).status
    assert (status.desired_healthy, status.disruptions_allowed) == expected
    assert status.current_healthy == 3
    assert status.expected_pods == (replicas or 3)

    results = []
    for i in range(3):
        try:
            results.append(evict(cluster, ns, f"app-{i}"))
        except ApiException as exc:
            results.append(exc.status)
    allowed = expected[1]
    assert results == [201] * allowed + [429] * (3 - allowed)


def test_budget_counts_the_deployment_scale_behind_a_replicaset(cluster: Cluster, ns: str) -> None:
    deployment = add_owner(cluster.store, ns, "Deployment", "api", 4)
    rs = cluster.store.create(
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {"name": "api-5d9c", "namespace": ns, "ownerReferences": [deployment]},
            "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "api"}}},
        }
    )
    owner = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "name": "api-5d9c",
        "uid": rs["metadata"]["uid"],
        "controller": True,
    }
    for i in range(3):
        add_pod(cluster.store, ns, f"api-{i}", node=unique("node"), labels={"app": "api"}, owner=owner)
    add_pdb(cluster.store, ns, "api", "api", maxUnavailable=1)

    status = cluster.policy.read_namespaced_pod_disruption_budget("api", ns).status

    assert (status.expected_pods, status.desired_healthy, status.disruptions_allowed) == (4, 3, 0)


def test_pod_matched_by_two_budgets_cannot_be_evicted(cluster: Cluster, ns: str) -> None:
    add_pod(cluster.store, ns, "doubly", node=unique("node"), labels={"app": "doubly", "tier": "web"})
    add_pod(cluster.store, ns, "other", node=unique("node"), labels={"app": "doubly", "tier": "web"})
    add_pdb(cluster.store, ns, "by-app", "doubly", maxUnavailable=1)
    cluster.store.create(
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": "by-tier", "namespace": ns},
            "spec": {"selector": {"matchLabels": {"tier": "web"}}, "maxUnavailable": 1},
        }
    )

    with pytest.raises(ApiException) as err:
        evict(cluster, ns, "doubly")

    assert err.value.status == 500
    assert status_body(err.value)["message"] == (
        "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support."
    )
    assert cluster.store.get("pods", ns, "doubly")["metadata"].get("deletionTimestamp") is None


def test_terminating_and_pending_pods_bypass_budgets(cluster: Cluster, ns: str) -> None:
    node = unique("node")
    add_pod(cluster.store, ns, "pending", node=node, labels={"app": "db"}, phase="Pending", ready=False)
    add_pod(
        cluster.store,
        ns,
        "leaving",
        node=node,
        labels={"app": "db"},
        annotations={HANG_TERMINATING_ANNOTATION: "true"},
    )
    add_pod(cluster.store, ns, "serving", node=node, labels={"app": "db"})
    add_pdb(cluster.store, ns, "db", "db", maxUnavailable=0)
    cluster.core.delete_namespaced_pod("leaving", ns)

    assert evict(cluster, ns, "pending") == 201
    assert evict(cluster, ns, "leaving") == 201
    with pytest.raises(ApiException) as err:
        evict(cluster, ns, "serving")
    assert err.value.status == 429
    cluster.store.remove_now("pods", ns, "leaving")


def test_unready_pod_is_evictable_while_the_budget_is_met(cluster: Cluster, ns: str) -> None:
    node = unique("node")
    for i in range(2):
        add_pod(cluster.store, ns, f"ok-{i}", node=node, labels={"app": "svc"})
    add_pod(cluster.store, ns, "crashing", node=node, labels={"app": "svc"}, ready=False)
    add_pdb(cluster.store, ns, "svc", "svc", minAvailable=2)

    assert evict(cluster, ns, "crashing") == 201
    with pytest.raises(ApiException) as err:
        evict(cluster, ns, "ok-0")
    assert err.value.status == 429


def test_eviction_of_a_missing_pod_is_404(cluster: Cluster, ns: str) -> None:
    with pytest.raises(ApiException) as err:
        evict(cluster, ns, "ghost")

    assert err.value.status == 404
    assert status_body(err.value)["message"] == 'pods "ghost" not found'


# --------------------------------------------------------------------------- watch


def test_watch_streams_changes_until_its_timeout(cluster: Cluster, ns: str) -> None:
    node = unique("node")
    since = cluster.core.list_namespaced_pod(ns).metadata.resource_version

    def churn() -> None:
        time.sleep(0.2)
        add_pod(cluster.store, ns, "watched", node=node)
        cluster.store.mutate(
            "pods", ns, "watched", lambda p: p["metadata"].setdefault("labels", {}).update(v="2")
        )
        cluster.store.remove_now("pods", ns, "watched")

    threading.Thread(target=churn, daemon=True).start()
    started = time.monotonic()
    events = [
        (e["type"], e["object"].metadata.name)
        for e in watch.Watch().stream(
            cluster.core.list_namespaced_pod, ns, resource_version=since, timeout_seconds=1
        )
    ]

    assert events == [("ADDED", "watched"), ("MODIFIED", "watched"), ("DELETED", "watched")]
    assert 0.9 <= time.monotonic() - started < 3


def test_watch_with_a_field_selector_sees_objects_leave_it(cluster: Cluster, ns: str) -> None:
    node = unique("node")
    add_pod(cluster.store, ns, "mover", node=None, phase="Pending")
    since = cluster.store.resource_version

    def bind() -> None:
        time.sleep(0.2)
        cluster.store.mutate("pods", ns, "mover", lambda p: p["spec"].update(nodeName=node))
        cluster.store.mutate("pods", ns, "mover", lambda p: p["status"].update(phase="Running"))
        cluster.store.mutate("pods", ns, "mover", lambda p: p["status"].update(phase="Succeeded"))

    threading.Thread(target=bind, daemon=True).start()
    stream = watch.Watch().stream(
        cluster.core.list_pod_for_all_namespaces,
        field_selector=f"spec.nodeName={node},status.phase=Running",
        resource_version=since,
        timeout_seconds=1,
    )

    assert [e["type"] for e in stream] == ["ADDED", "DELETED"]


def test_watch_from_a_compacted_resource_version_gets_410_expired(cluster: Cluster, ns: str) -> None:
    cluster.store.watch_log_limit = 10
    try:
        since = cluster.store.resource_version
        for i in range(20):
            cluster.store.create(
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"c{i}", "namespace": ns}}
            )
        with pytest.raises(ApiException) as err:
            list(
                watch.Watch().stream(
                    cluster.core.list_namespaced_config_map, ns, resource_version=since, timeout_seconds=1
                )
            )
    finally:
        cluster.store.watch_log_limit = KubeStore.watch_log_limit

    assert err.value.status == 410
    assert "too old resource version" in str(err.value.reason)


def test_listeners_see_changes_in_order_and_may_write_back(cluster: Cluster, ns: str) -> None:
    seen: list[tuple[str, str, str]] = []

    def listener(event_type: str, resource: str, obj: dict[str, Any]) -> None:
        if obj["metadata"].get("namespace") != ns:
            return
        seen.append((event_type, resource, obj["metadata"]["name"]))
        if resource == "pods" and event_type == "ADDED":
            # A listener runs outside the store lock, so it may write (here: a controller's event).
            cluster.store.create(
                {
                    "apiVersion": "v1",
                    "kind": "Event",
                    "metadata": {"name": f"{obj['metadata']['name']}.seen", "namespace": ns},
                    "involvedObject": {"kind": "Pod", "name": obj["metadata"]["name"]},
                    "reason": "Seen",
                }
            )

    cluster.store.add_listener(listener)
    add_pod(cluster.store, ns, "heard", node=None, phase="Pending")
    cluster.core.patch_namespaced_pod("heard", ns, {"metadata": {"labels": {"a": "b"}}})
    cluster.core.delete_namespaced_pod("heard", ns)

    assert seen == [
        ("ADDED", "pods", "heard"),
        ("ADDED", "events", "heard.seen"),
        ("MODIFIED", "pods", "heard"),
        ("DELETED", "pods", "heard"),
    ]


def test_request_log_records_each_request(cluster: Cluster) -> None:
    before = len(cluster.server.request_log)
    cluster.core.list_namespace()

    entry = cluster.server.request_log[before]
    assert (entry["method"], entry["path"], entry["status"]) == ("GET", "/api/v1/namespaces", 200)
    assert entry["user_agent"].startswith("OpenAPI-Generator/")


# --------------------------------------------------------------------------- kubectl


def test_kubectl_get_nodes_prints_node_names(cluster: Cluster) -> None:
    name = unique("kubectl-node")
    add_node(cluster.store, name)

    result = cluster.kubectl("get", "nodes")

    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert any(row.split()[:2] == [name, "Ready"] for row in rows)


def test_kubectl_lists_pods_on_one_node_across_namespaces(cluster: Cluster, ns: str) -> None:
    node = unique("kubectl-node")
    add_pod(cluster.store, ns, "here", node=node)
    add_pod(cluster.store, "default", unique("elsewhere"), node=unique("kubectl-node"))

    result = cluster.kubectl("get", "pods", "-A", "--field-selector", f"spec.nodeName={node}")

    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split()[:2] == ["NAMESPACE", "NAME"]
    assert [row.split()[:2] for row in rows] == [[ns, "here"]]


def test_kubectl_cordon_and_uncordon(cluster: Cluster) -> None:
    name = unique("kubectl-node")
    add_node(cluster.store, name)

    cordon = cluster.kubectl("cordon", name)
    assert cordon.returncode == 0, cordon.stderr
    assert cluster.store.get("nodes", None, name)["spec"]["unschedulable"] is True
    shown = cluster.kubectl("get", "node", name)
    assert "Ready,SchedulingDisabled" in shown.stdout

    uncordon = cluster.kubectl("uncordon", name)
    assert uncordon.returncode == 0, uncordon.stderr
    assert "unschedulable" not in cluster.store.get("nodes", None, name)["spec"]


def test_kubectl_drain_skips_daemonsets_and_waits_for_the_budget(cluster: Cluster, ns: str) -> None:
    node, other = unique("drain-node"), unique("drain-node")
    add_node(cluster.store, node)
    add_node(cluster.store, other)
    ds = add_owner(cluster.store, ns, "DaemonSet", "log-agent", 1)
    rs = add_owner(cluster.store, ns, "ReplicaSet", "web", 2)
    add_pod(cluster.store, ns, "log-agent-x", node=node, owner=ds, labels={"app": "log-agent"})
    add_pod(cluster.store, ns, "cache", node=node, owner=rs, labels={"app": "cache"}, empty_dir=True)
    add_pod(cluster.store, ns, "web-a", node=node, owner=rs, labels={"app": "web"})
    add_pod(cluster.store, ns, "web-b", node=other, owner=rs, labels={"app": "web"})
    add_pdb(cluster.store, ns, "web", "web", minAvailable=2)

    def relax_budget() -> None:
        time.sleep(2)
        cluster.policy.patch_namespaced_pod_disruption_budget("web", ns, {"spec": {"minAvailable": 1}})

    relaxer = threading.Thread(target=relax_budget, daemon=True)
    relaxer.start()
    result = cluster.kubectl("drain", node, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=60s")
    relaxer.join()

    assert result.returncode == 0, result.stdout + result.stderr
    assert "evicting pod" in result.stdout + result.stderr
    assert "disruption budget" in result.stdout + result.stderr
    assert cluster.store.get("nodes", None, node)["spec"]["unschedulable"] is True
    remaining = {
        p["metadata"]["name"] for p in cluster.store.list("pods", field_selector=f"spec.nodeName={node}")
    }
    assert remaining == {"log-agent-x"}
    assert pod_exists(cluster, ns, "web-b")
    evictions = [
        r for r in cluster.world.history.records() if r["kind"] == "eviction" and r["namespace"] == ns
    ]
    assert {r["name"] for r in evictions if r["result"] == 201} == {"cache", "web-a"}
    assert any(r["result"] == 429 and r["name"] == "web-a" for r in evictions)

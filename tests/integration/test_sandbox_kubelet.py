"""The sandbox runs pods and keeps budgets as a cluster does, whoever creates them.

Pods and PodDisruptionBudgets are created, patched, watched and evicted with the
unmodified ``kubernetes`` client over HTTPS; the sandbox's scheduler and kubelets
(``sandbox/kube/kubelet.py``) and its disruption controller (``sandbox/kube/controllers.py``) do the rest,
with nothing set up behind the API's back except the Nodes, which are the machines'.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from sandbox.kube.kubelet import NodeAgents
from sandbox.kube.registry import KubeStore
from sandbox.kube.server import KubeAPIServer
from sandbox.tls import create_tls
from sandbox.world import World
from shared.adapters.kube import KubeClient

pytestmark = pytest.mark.integration

TOKEN = "sandbox-token-for-kubelet-tests"
# At time scale 0.01, 10 cloud seconds of scheduling or starting are 0.1 s.
TIME_SCALE = 0.01
_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


@dataclass
class Cluster:
    world: World
    store: KubeStore
    server: KubeAPIServer
    kubeconfig: Path
    api_client: client.ApiClient

    @property
    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.api_client)

    @property
    def policy(self) -> client.PolicyV1Api:
        return client.PolicyV1Api(self.api_client)

    def add_node(self, name: str, *, ready: bool = True, **spec: Any) -> None:
        self.store.create(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"},
                },
                "spec": dict(spec),
                "status": {
                    "conditions": [{"type": "Ready", "status": "True" if ready else "Unknown"}],
                    "allocatable": {"pods": "110"},
                },
            }
        )

    def set_node(self, name: str, fn: Callable[[dict[str, Any]], None]) -> None:
        self.store.mutate("nodes", None, name, fn)

    def kubectl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        home = self.kubeconfig.parent
        return subprocess.run(
            ["kubectl", "--kubeconfig", str(self.kubeconfig), "--cache-dir", str(home / "cache"), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env={**os.environ, "HOME": str(home), "KUBECONFIG": str(self.kubeconfig)},
            timeout=90,
            check=False,
        )


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    home: Path = tmp_path_factory.mktemp("kubelet")
    world = World(time_scale=TIME_SCALE, history_path=home / "history.jsonl")
    store = KubeStore(world, pod_termination_cloud_seconds=100.0)
    NodeAgents(world, store, schedule_cloud_seconds=10.0, start_cloud_seconds=10.0)
    server = KubeAPIServer(store, tls=create_tls(home / "tls"), token=TOKEN)
    server.start()
    kubeconfig = home / "kubeconfig"
    server.write_kubeconfig(kubeconfig, cluster_name="sandbox")
    cfg = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=cfg)
    api_client = client.ApiClient(cfg)
    try:
        yield Cluster(world, store, server, kubeconfig, api_client)
    finally:
        api_client.close()
        server.stop()
        world.close()


@pytest.fixture
def ns(cluster: Cluster) -> str:
    name = unique("ns")
    cluster.core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    return name


def pod_body(name: str, *, node: str | None = None, labels: dict[str, str] | None = None, **spec: Any) -> Any:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels or {"app": name}},
        "spec": {
            **({"nodeName": node} if node else {}),
            "containers": [{"name": "app", "image": "mcr.microsoft.com/oss/nginx/nginx:1.25"}],
            **spec,
        },
    }


def wait_for_pod(
    cluster: Cluster, ns: str, name: str, predicate: Callable[[Any], bool], *, timeout: float = 10.0
) -> Any:
    """Watch the pod (from its current version, as a client that just listed it) until
    ``predicate`` holds; returns the pod as the event carried it."""
    listed = cluster.core.list_namespaced_pod(ns, field_selector=f"metadata.name={name}")
    for pod in listed.items:
        if predicate(pod):
            return pod
    deadline = time.monotonic() + timeout
    w = watch.Watch()
    try:
        for event in w.stream(
            cluster.core.list_namespaced_pod,
            ns,
            field_selector=f"metadata.name={name}",
            resource_version=listed.metadata.resource_version,
            timeout_seconds=max(1, int(timeout)),
        ):
            if predicate(event["object"]):
                return event["object"]
            if time.monotonic() > deadline:
                break
    finally:
        w.stop()
    raise AssertionError(
        f"pod {ns}/{name} never got there: {cluster.core.read_namespaced_pod(name, ns).status}"
    )


def ready(pod: Any) -> bool:
    return pod.status.phase == "Running" and any(
        c.type == "Ready" and c.status == "True" for c in pod.status.conditions or []
    )


def condition(pod: Any, kind: str) -> Any:
    return next((c for c in pod.status.conditions or [] if c.type == kind), None)


def evict(cluster: Cluster, ns: str, name: str) -> int:
    body = client.V1Eviction(metadata=client.V1ObjectMeta(name=name, namespace=ns))
    try:
        _, code, _ = cluster.core.create_namespaced_pod_eviction_with_http_info(name, ns, body)
    except ApiException as exc:
        return int(exc.status)
    return int(code)


# --------------------------------------------------------------------------- the kubelet


def test_a_pod_created_on_a_node_through_the_api_runs_and_becomes_ready(cluster: Cluster, ns: str) -> None:
    node = unique("node")
    cluster.add_node(node)

    created = cluster.core.create_namespaced_pod(ns, pod_body("web", node=node))
    assert created.status.phase == "Pending"

    pod = wait_for_pod(cluster, ns, "web", ready)
    status = pod.status
    assert {c.type: c.status for c in status.conditions} == {
        "PodReadyToStartContainers": "True",
        "Initialized": "True",
        "Ready": "True",
        "ContainersReady": "True",
        "PodScheduled": "True",
    }
    assert status.pod_ip and status.pod_ip.startswith("10.244.")
    assert [ip.ip for ip in status.pod_ips] == [status.pod_ip]
    assert status.host_ip and status.start_time is not None
    [container] = status.container_statuses
    assert (container.name, container.ready, container.started, container.restart_count) == (
        "app",
        True,
        True,
        0,
    )
    assert container.state.running.started_at is not None
    assert container.image == "mcr.microsoft.com/oss/nginx/nginx:1.25"
    assert container.container_id.startswith("containerd://")
    assert status.qos_class == "BestEffort"


def test_kubectl_apply_then_wait_sees_an_unscheduled_pod_scheduled_and_ready(
    cluster: Cluster, ns: str
) -> None:
    label = unique("pool")
    node = unique("node")
    cluster.add_node(node)
    cluster.set_node(node, lambda n: n["metadata"]["labels"].update(pool=label))
    manifest = f"""
apiVersion: v1
kind: Pod
metadata:
  name: applied
  namespace: {ns}
spec:
  nodeSelector:
    pool: {label}
  containers:
  - name: app
    image: mcr.microsoft.com/oss/nginx/nginx:1.25
"""
    # The sandbox serves no OpenAPI document, which kubectl's client-side validation reads.
    applied = cluster.kubectl("apply", "--validate=false", "-f", "-", stdin=manifest)
    assert applied.returncode == 0, applied.stderr

    waited = cluster.kubectl("wait", "-n", ns, "--for=condition=Ready", "pod/applied", "--timeout=30s")

    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert "condition met" in waited.stdout
    assert cluster.core.read_namespaced_pod("applied", ns).spec.node_name == node


def test_a_pod_bound_to_a_node_that_is_not_ready_starts_when_the_node_is(cluster: Cluster, ns: str) -> None:
    node = unique("node")
    cluster.add_node(node, ready=False)
    cluster.core.create_namespaced_pod(ns, pod_body("late", node=node))
    time.sleep(0.5)  # five times what a start takes
    assert cluster.core.read_namespaced_pod("late", ns).status.phase == "Pending"

    cluster.set_node(node, lambda n: n["status"].update(conditions=[{"type": "Ready", "status": "True"}]))

    wait_for_pod(cluster, ns, "late", ready)


def test_an_unscheduled_pod_goes_to_a_ready_schedulable_node_that_matches(cluster: Cluster, ns: str) -> None:
    os_label = unique("os")  # a label only this test's nodes carry, so other tests' nodes do not match
    nodes = {k: unique(k) for k in ("cordoned", "not-ready", "tainted", "other-os", "fit")}
    for kind, name in nodes.items():
        cluster.add_node(
            name,
            ready=kind != "not-ready",
            **({"unschedulable": True} if kind == "cordoned" else {}),
            **(
                {"taints": [{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]}
                if kind == "tainted"
                else {}
            ),
        )
        if kind != "other-os":
            cluster.set_node(name, lambda n: n["metadata"]["labels"].update(pool=os_label))

    cluster.core.create_namespaced_pod(ns, pod_body("placed", nodeSelector={"pool": os_label}))

    pod = wait_for_pod(cluster, ns, "placed", ready)
    assert pod.spec.node_name == nodes["fit"]
    scheduled = [
        r for r in cluster.world.history.records() if r["kind"] == "pod_scheduled" and r["namespace"] == ns
    ]
    assert [r["node"] for r in scheduled] == [nodes["fit"]]


def test_required_node_affinity_picks_the_node_its_expressions_match(cluster: Cluster, ns: str) -> None:
    label = unique("pool")
    nodes = {zone: unique(f"zone-{zone}") for zone in ("a", "b", "c")}
    for zone, name in nodes.items():
        cluster.add_node(name)
        cluster.set_node(name, lambda n, z=zone: n["metadata"]["labels"].update(pool=label, zone=z))
    affinity = {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [
                    {
                        "matchExpressions": [
                            {"key": "pool", "operator": "In", "values": [label]},
                            {"key": "zone", "operator": "NotIn", "values": ["a", "c"]},
                            {"key": "gpu", "operator": "DoesNotExist"},
                        ]
                    }
                ]
            }
        }
    }

    cluster.core.create_namespaced_pod(ns, pod_body("zoned", affinity=affinity))

    assert wait_for_pod(cluster, ns, "zoned", ready).spec.node_name == nodes["b"]


def test_tolerations_let_a_pod_onto_tainted_and_cordoned_nodes(cluster: Cluster, ns: str) -> None:
    label = unique("pool")
    tainted, cordoned = unique("tainted"), unique("cordoned")
    cluster.add_node(tainted, taints=[{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}])
    cluster.add_node(cordoned, unschedulable=True)
    for name in (tainted, cordoned):
        cluster.set_node(name, lambda n: n["metadata"]["labels"].update(pool=label))

    cluster.core.create_namespaced_pod(
        ns,
        pod_body(
            "gpu",
            nodeSelector={"pool": label},
            tolerations=[{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}],
        ),
    )
    # What a DaemonSet pod carries: it tolerates the cordon.
    cluster.core.create_namespaced_pod(
        ns,
        pod_body(
            "agent",
            nodeSelector={"pool": label, "kubernetes.io/hostname": cordoned},
            tolerations=[
                {"key": "node.kubernetes.io/unschedulable", "operator": "Exists", "effect": "NoSchedule"}
            ],
        ),
    )

    assert wait_for_pod(cluster, ns, "gpu", ready).spec.node_name == tainted
    assert wait_for_pod(cluster, ns, "agent", ready).spec.node_name == cordoned


def test_a_pod_that_fits_nowhere_is_unschedulable_until_a_node_is_uncordoned(
    cluster: Cluster, ns: str
) -> None:
    label = unique("pool")
    node = unique("node")
    cluster.add_node(node, unschedulable=True)
    cluster.set_node(node, lambda n: n["metadata"]["labels"].update(pool=label))

    cluster.core.create_namespaced_pod(ns, pod_body("waiting", nodeSelector={"pool": label}))

    pod = wait_for_pod(cluster, ns, "waiting", lambda p: condition(p, "PodScheduled") is not None)
    scheduled = condition(pod, "PodScheduled")
    assert (scheduled.status, scheduled.reason) == ("False", "Unschedulable")
    assert scheduled.message.startswith("0/")
    assert "1 node(s) were unschedulable" in scheduled.message
    assert pod.status.phase == "Pending" and pod.spec.node_name is None

    cluster.core.patch_node(node, {"spec": {"unschedulable": None}})  # kubectl uncordon

    pod = wait_for_pod(cluster, ns, "waiting", ready)
    assert pod.spec.node_name == node


def test_a_pod_the_api_created_is_evicted_and_deleted_like_any_other(cluster: Cluster, ns: str) -> None:
    node = unique("node")
    cluster.add_node(node)
    cluster.core.create_namespaced_pod(ns, pod_body("short", node=node, terminationGracePeriodSeconds=10))
    wait_for_pod(cluster, ns, "short", ready)

    assert evict(cluster, ns, "short") == 201

    assert cluster.core.read_namespaced_pod("short", ns).metadata.deletion_timestamp is not None
    deadline = time.monotonic() + 10
    while cluster.core.list_namespaced_pod(ns, field_selector="metadata.name=short").items:
        assert time.monotonic() < deadline, "the kubelet never confirmed the deletion"
        time.sleep(0.05)


# --------------------------------------------------------------------------- the disruption controller


def pdb_body(name: str, app: str, **budget: Any) -> Any:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": name},
        "spec": {"selector": {"matchLabels": {"app": app}}, **budget},
    }


def replicaset(cluster: Cluster, ns: str, name: str, replicas: int) -> dict[str, Any]:
    """A ReplicaSet and the controllerRef its pods carry (the sandbox runs no ReplicaSet
    controller for objects made through the API, so the test creates the pods itself)."""
    rs = client.AppsV1Api(cluster.api_client).create_namespaced_replica_set(
        ns,
        {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app": name}},
                "template": {
                    "metadata": {"labels": {"app": name}},
                    "spec": {"containers": [{"name": "a", "image": "a"}]},
                },
            },
        },
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "name": name,
        "uid": rs.metadata.uid,
        "controller": True,
    }


def running_pods(
    cluster: Cluster, ns: str, app: str, count: int, *, owner: dict[str, Any] | None = None
) -> list[str]:
    node = unique("node")
    cluster.add_node(node)
    names = []
    for i in range(count):
        body = pod_body(f"{app}-{i}", node=node, labels={"app": app})
        if owner:
            body["metadata"]["ownerReferences"] = [owner]
        cluster.core.create_namespaced_pod(ns, body)
        names.append(f"{app}-{i}")
    for name in names:
        wait_for_pod(cluster, ns, name, ready)
    return names


def budget(cluster: Cluster, ns: str, name: str) -> Any:
    return cluster.policy.read_namespaced_pod_disruption_budget(name, ns)


def test_budget_status_follows_a_patched_min_available_and_evictions_follow_it(
    cluster: Cluster, ns: str
) -> None:
    pods = running_pods(cluster, ns, "web", 3)
    cluster.policy.create_namespaced_pod_disruption_budget(ns, pdb_body("web", "web", minAvailable=3))
    before = budget(cluster, ns, "web")
    assert (
        before.status.current_healthy,
        before.status.desired_healthy,
        before.status.disruptions_allowed,
    ) == (3, 3, 0)
    allowed = next(c for c in before.status.conditions if c.type == "DisruptionAllowed")
    assert (allowed.status, allowed.reason) == ("False", "InsufficientPods")
    assert evict(cluster, ns, pods[0]) == 429

    patched = cluster.policy.patch_namespaced_pod_disruption_budget("web", ns, {"spec": {"minAvailable": 2}})

    after = budget(cluster, ns, "web")
    assert after.metadata.generation == patched.metadata.generation == before.metadata.generation + 1
    assert after.status.observed_generation == after.metadata.generation
    assert (after.status.desired_healthy, after.status.disruptions_allowed) == (2, 1)
    allowed = next(c for c in after.status.conditions if c.type == "DisruptionAllowed")
    assert (allowed.status, allowed.reason, allowed.observed_generation) == (
        "True",
        "SufficientPods",
        after.metadata.generation,
    )
    assert evict(cluster, ns, pods[0]) == 201
    assert evict(cluster, ns, pods[1]) == 429  # the evicted pod is no longer healthy
    assert budget(cluster, ns, "web").status.disruptions_allowed == 0


def test_budget_status_changes_are_written_so_that_a_watch_sees_them(cluster: Cluster, ns: str) -> None:
    """The disruption controller writes the status: every change is a new resourceVersion
    and a MODIFIED event, not only a different answer to the next read."""
    pods = running_pods(cluster, ns, "api", 2)
    cluster.policy.create_namespaced_pod_disruption_budget(ns, pdb_body("api", "api", minAvailable=1))
    listed = cluster.policy.list_namespaced_pod_disruption_budget(ns)
    assert listed.items[0].status.disruptions_allowed == 1

    assert evict(cluster, ns, pods[0]) == 201

    w = watch.Watch()
    seen = []
    for event in w.stream(
        cluster.policy.list_namespaced_pod_disruption_budget,
        ns,
        resource_version=listed.metadata.resource_version,
        timeout_seconds=5,
    ):
        seen.append((event["type"], event["object"].status.disruptions_allowed))
        if event["object"].status.disruptions_allowed == 0:
            w.stop()
    assert seen == [("MODIFIED", 0)]
    assert int(budget(cluster, ns, "api").metadata.resource_version) > int(
        listed.items[0].metadata.resource_version
    )


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"minAvailable": "50%"}, (4, 2, 1)),  # 2 of 4 expected; 3 healthy
        ({"minAvailable": "60%"}, (4, 3, 0)),  # 2.4 rounds up to 3
        ({"maxUnavailable": "30%"}, (4, 2, 1)),  # 1.2 unavailable rounds up to 2
        ({"maxUnavailable": 1}, (4, 3, 0)),
    ],
)
def test_percentages_count_against_the_controller_scale_and_round_up(
    cluster: Cluster, ns: str, spec: dict[str, Any], expected: tuple[int, int, int]
) -> None:
    """Three pods running of a ReplicaSet of four: (expectedPods, desiredHealthy, disruptionsAllowed)."""
    owner = replicaset(cluster, ns, "shop", 4)
    running_pods(cluster, ns, "shop", 3, owner=owner)
    cluster.policy.create_namespaced_pod_disruption_budget(ns, pdb_body("shop", "shop", **spec))

    status = budget(cluster, ns, "shop").status

    assert (status.expected_pods, status.desired_healthy, status.disruptions_allowed) == expected
    assert status.current_healthy == 3


def test_bare_pods_under_a_max_unavailable_budget_cannot_be_evicted(cluster: Cluster, ns: str) -> None:
    """Pods without a controller do not count towards expectedPods; with none expected,
    no disruption is allowed (disruption controller getExpectedScale, updatePdbStatus)."""
    pods = running_pods(cluster, ns, "solo", 2)
    cluster.policy.create_namespaced_pod_disruption_budget(ns, pdb_body("solo", "solo", maxUnavailable=1))

    status = budget(cluster, ns, "solo").status

    assert (status.current_healthy, status.expected_pods, status.disruptions_allowed) == (2, 0, 0)
    assert evict(cluster, ns, pods[0]) == 429


def test_a_controller_that_cannot_be_found_fails_the_budget_safe(cluster: Cluster, ns: str) -> None:
    gone = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "gone", "uid": "0000", "controller": True}
    pods = running_pods(cluster, ns, "orphan", 2, owner=gone)
    cluster.policy.create_namespaced_pod_disruption_budget(ns, pdb_body("orphan", "orphan", maxUnavailable=1))

    pdb = budget(cluster, ns, "orphan")

    allowed = next(c for c in pdb.status.conditions if c.type == "DisruptionAllowed")
    assert (allowed.status, allowed.reason) == ("False", "SyncFailed")
    assert allowed.message == 'found no controllers for pod "orphan-0"'
    assert pdb.status.disruptions_allowed == 0
    # failSafe leaves observedGeneration behind: the eviction says the budget is still being processed.
    with pytest.raises(ApiException) as err:
        cluster.core.create_namespaced_pod_eviction(
            pods[0], ns, client.V1Eviction(metadata=client.V1ObjectMeta(name=pods[0], namespace=ns))
        )
    assert err.value.status == 429
    assert "is still being processed by the server" in str(err.value.body)


# --------------------------------------------------------------------------- the app's Events


def test_the_app_records_its_transitions_as_events_on_the_node(cluster: Cluster) -> None:
    """What ``kubectl describe node`` lists: involvedObject the Node, reason, type, source."""
    node = unique("node")
    cluster.add_node(node)
    kube = KubeClient.from_kubeconfig(str(cluster.kubeconfig))

    assert kube.record_event(
        node, reason="PatchFailed", message="run r1: it broke", warning=True, now=time.time()
    )
    assert kube.record_event(
        node, reason="PatchAdmitted", message="run r1: budget slot acquired", now=time.time()
    )

    listed = cluster.core.list_namespaced_event("default", field_selector=f"involvedObject.name={node}")
    got = [
        (e.involved_object.kind, e.involved_object.name, e.reason, e.type, e.message) for e in listed.items
    ]
    assert sorted(got) == [
        ("Node", node, "PatchAdmitted", "Normal", "run r1: budget slot acquired"),
        ("Node", node, "PatchFailed", "Warning", "run r1: it broke"),
    ]
    assert {e.source.component for e in listed.items} == {"vmss-node-patcher"}


def test_an_event_the_api_server_refuses_is_reported_and_not_raised(cluster: Cluster) -> None:
    node = unique("node")
    cluster.add_node(node)
    kube = KubeClient.from_kubeconfig(str(cluster.kubeconfig))
    cluster.server.faults.fail_next("POST", r"/namespaces/default/events", count=1, status=500)
    try:
        assert not kube.record_event(node, reason="PatchCancelled", message="m", now=time.time())
    finally:
        cluster.server.faults.clear()

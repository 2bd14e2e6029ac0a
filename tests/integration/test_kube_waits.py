"""The workflow's in-place waits watch the simulated API server over real HTTPS: they end
when the last pod is gone or the Node turns Ready, and give up quietly at their timeout."""

from __future__ import annotations

import threading
import time

import pytest

from shared.kube import KubeClient
from tests.integration.test_kubeapi_fidelity import (  # noqa: F401  (fixtures)
    TERMINATION_CLOUD_SECONDS,
    Cluster,
    add_node,
    add_pod,
    cluster,
    ns,
    unique,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def kube(cluster: Cluster) -> KubeClient:  # noqa: F811
    return KubeClient.from_kubeconfig(str(cluster.kubeconfig))


def test_pods_gone_ends_when_the_last_evicted_pod_terminates(
    cluster: Cluster,  # noqa: F811
    ns: str,  # noqa: F811
    kube: KubeClient,
) -> None:
    node = unique("node")
    add_node(cluster.store, node)
    pods = [add_pod(cluster.store, ns, unique("p"), node=node) for _ in range(2)]
    uids = {p["metadata"]["uid"] for p in pods}
    # Graceful deletion: the simulated kubelet stops each pod TERMINATION_CLOUD_SECONDS later.
    for pod in pods:
        cluster.store.delete(
            "pods", ns, pod["metadata"]["name"], grace_period_seconds=int(TERMINATION_CLOUD_SECONDS)
        )
    termination = cluster.world.clock.seconds(TERMINATION_CLOUD_SECONDS)
    started = time.monotonic()
    assert kube.wait_for_pods_gone(node, uids, timeout=termination + 5)
    took = time.monotonic() - started
    assert took == pytest.approx(termination, abs=0.5), "the watch should end as the pods go, not later"
    assert kube.list_pods_on_node(node) == []


def test_pods_gone_gives_up_at_its_timeout(cluster: Cluster, ns: str, kube: KubeClient) -> None:  # noqa: F811
    node = unique("node")
    add_node(cluster.store, node)
    pod = add_pod(cluster.store, ns, unique("p"), node=node)
    started = time.monotonic()
    assert not kube.wait_for_pods_gone(node, {pod["metadata"]["uid"]}, timeout=0.4)
    assert time.monotonic() - started < 1.5
    # Pods that are not waited for do not count.
    assert kube.wait_for_pods_gone(node, {"some-other-uid"}, timeout=0.4)


def test_wait_for_node_sees_it_turn_ready(cluster: Cluster, kube: KubeClient) -> None:  # noqa: F811
    name = unique("node")
    add_node(cluster.store, name)

    def not_ready(obj: dict) -> None:  # type: ignore[type-arg]
        obj["status"]["conditions"] = [{"type": "Ready", "status": "False", "reason": "KubeletNotReady"}]

    def ready(obj: dict) -> None:  # type: ignore[type-arg]
        obj["status"]["conditions"] = [{"type": "Ready", "status": "True", "reason": "KubeletReady"}]
        obj["status"]["nodeInfo"]["bootID"] = "new-boot"

    cluster.store.mutate("nodes", None, name, not_ready)
    timer = threading.Timer(0.6, lambda: cluster.store.mutate("nodes", None, name, ready))
    timer.start()
    try:
        started = time.monotonic()
        seen = kube.wait_for_node(name, lambda n: n.ready and n.boot_id == "new-boot", timeout=5)
        took = time.monotonic() - started
    finally:
        timer.cancel()
    assert seen.ready and seen.boot_id == "new-boot"
    assert 0.5 < took < 1.5

    # Not done within the timeout: the last version seen comes back, not an error.
    cluster.store.mutate("nodes", None, name, not_ready)
    started = time.monotonic()
    seen = kube.wait_for_node(name, lambda n: n.ready, timeout=0.3)
    assert not seen.ready
    assert time.monotonic() - started < 1.5

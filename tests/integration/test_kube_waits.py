"""The workflow's in-place waits watch the simulated API server over real HTTPS: they end
when the last pod is gone or the Node turns Ready, and give up quietly at their timeout."""

from __future__ import annotations

import threading
import time

import pytest

from shared.adapters.kube import LABEL_PATCHING, KubeClient
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


def test_cordon_labels_the_node_for_the_run_and_uncordon_removes_the_label(
    cluster: Cluster,  # noqa: F811
    kube: KubeClient,
) -> None:
    name = unique("node")
    add_node(cluster.store, name)
    kube.cordon(name, run_id="run1", state="draining")
    assert [n.name for n in kube.list_nodes(label_selector=f"{LABEL_PATCHING}=run1")] == [name]
    kube.uncordon(name, state="succeeded")
    node = kube.get_node(name)
    assert not node.unschedulable and LABEL_PATCHING not in node.labels
    assert kube.list_nodes(label_selector=f"{LABEL_PATCHING}=run1") == []


def test_wait_for_nodes_yields_each_node_as_it_turns_ready(cluster: Cluster, kube: KubeClient) -> None:  # noqa: F811
    run = unique("run")
    names = [unique("node") for _ in range(3)]
    other = unique("node")
    for name in [*names, other]:
        add_node(cluster.store, name)
        kube.cordon(name, run_id=run, state="booting")

    def set_ready(ready: bool, boot: str) -> object:
        def mutate(obj: dict) -> None:  # type: ignore[type-arg]
            obj["status"]["conditions"] = [{"type": "Ready", "status": str(ready), "reason": "Kubelet"}]
            obj["status"]["nodeInfo"]["bootID"] = boot

        return mutate

    # One is up already; the others come up 0.4 s and 0.8 s into the watch; a node not
    # asked about changes too and is not reported.
    cluster.store.mutate("nodes", None, names[0], set_ready(True, "new"))
    for name in [*names[1:], other]:
        cluster.store.mutate("nodes", None, name, set_ready(False, "old"))
    timers = [
        threading.Timer(0.4, lambda: cluster.store.mutate("nodes", None, names[1], set_ready(True, "new"))),
        threading.Timer(0.5, lambda: cluster.store.mutate("nodes", None, other, set_ready(True, "new"))),
        threading.Timer(0.8, lambda: cluster.store.mutate("nodes", None, names[2], set_ready(True, "new"))),
    ]
    for t in timers:
        t.start()
    seen: list[tuple[str, float]] = []
    started = time.monotonic()
    try:
        for node in kube.wait_for_nodes(
            names,
            lambda n: n.ready and n.boot_id == "new",
            label_selector=f"{LABEL_PATCHING}={run}",
            timeout=5,
        ):
            seen.append((node.name, time.monotonic() - started))
    finally:
        for t in timers:
            t.cancel()
    assert [n for n, _ in seen] == names
    assert seen[0][1] < 0.3
    assert 0.3 < seen[1][1] < 0.8 and 0.7 < seen[2][1] < 1.3
    assert time.monotonic() - started < 1.5, "the watch ends once every node is seen"

    # Not all done within the timeout: what was seen comes back, quietly.
    cluster.store.mutate("nodes", None, names[2], set_ready(False, "old"))
    started = time.monotonic()
    got = [
        n.name
        for n in kube.wait_for_nodes(
            names, lambda n: n.ready, label_selector=f"{LABEL_PATCHING}={run}", timeout=0.3
        )
    ]
    assert got == names[:2]
    assert time.monotonic() - started < 1.5


def test_a_worker_keeps_a_connection_for_each_of_its_concurrent_calls(
    cluster: Cluster,  # noqa: F811
    kube: KubeClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A batch leader's watches and its peers' calls run at once; any connection the pool
    # cannot keep afterwards costs a new TLS handshake on the next request.
    node = unique("node")
    add_node(cluster.store, node)
    at_once = 24
    ready = threading.Barrier(at_once)

    def watch() -> None:
        ready.wait()
        kube.wait_for_node(node, lambda seen: False, timeout=1.0)

    caplog.set_level("WARNING", logger="urllib3.connectionpool")
    threads = [threading.Thread(target=watch) for _ in range(at_once)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    discarded = [r.getMessage() for r in caplog.records if "pool is full" in r.getMessage()]
    assert discarded == []

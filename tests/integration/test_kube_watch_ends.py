"""A watch that the API server (or a proxy in front of it) ends early does not end the wait.

The simulated API server ends every watch after ``watch_max_seconds`` (0: at once, an
empty stream), as an API server shedding watches or a proxy's idle timeout does. Each of
``KubeClient``'s waits must still spend its whole timeout, or end when the world does,
re-establishing the watch after a back-off instead of spinning, and count the early ends:
a batch leader's boot watch that returned at once produced 2,440 work items for one
120 s boot.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from shared.adapters.kube import LABEL_PATCHING, KubeClient
from tests.integration.test_kubeapi_fidelity import (  # noqa: F401  (fixtures)
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


@pytest.fixture
def cut_watches(cluster: Cluster) -> Iterator[Cluster]:  # noqa: F811
    cluster.server.watch_max_seconds = 0
    try:
        yield cluster
    finally:
        cluster.server.watch_max_seconds = None


def watches_since(cluster: Cluster, started: float) -> int:  # noqa: F811
    return sum(
        1
        for e in list(cluster.server.request_log)
        if e["t"] >= started and "watch=true" in e["query"].lower()
    )


def set_ready(ready: bool, boot: str = "boot-1") -> Any:
    def mutate(obj: dict[str, Any]) -> None:
        obj["status"]["conditions"] = [
            {"type": "Ready", "status": "True" if ready else "False", "reason": "KubeletReady"}
        ]
        obj["status"]["nodeInfo"]["bootID"] = boot

    return mutate


def later(seconds: float, fn: Any) -> threading.Timer:
    timer = threading.Timer(seconds, fn)
    timer.start()
    return timer


def test_a_node_wait_whose_watches_end_at_once_spends_its_timeout_with_few_watches(
    cut_watches: Cluster, kube: KubeClient
) -> None:
    name = unique("node")
    add_node(cut_watches.store, name)
    cut_watches.store.mutate("nodes", None, name, set_ready(False))
    started = time.monotonic()
    wall = time.time()
    node = kube.wait_for_node(name, lambda n: n.ready, timeout=3)
    took = time.monotonic() - started
    assert not node.ready
    assert took >= 2.9, "the wait returned when its watch ended, not at its timeout"
    # Back-off from 0.2 s doubling to 2 s: a handful of watches, not thousands.
    watches = watches_since(cut_watches, wall)
    assert 2 <= watches <= 8
    assert kube.watch_early_ends == watches - 1 or kube.watch_early_ends == watches


def test_a_node_wait_sees_the_node_turn_ready_through_watches_that_keep_ending(
    cut_watches: Cluster, kube: KubeClient
) -> None:
    cut_watches.server.watch_max_seconds = 0.3
    name = unique("node")
    add_node(cut_watches.store, name)
    cut_watches.store.mutate("nodes", None, name, set_ready(False))
    timer = later(1.0, lambda: cut_watches.store.mutate("nodes", None, name, set_ready(True, "boot-2")))
    try:
        started = time.monotonic()
        node = kube.wait_for_node(name, lambda n: n.ready and n.boot_id == "boot-2", timeout=8)
        took = time.monotonic() - started
    finally:
        timer.cancel()
    assert node.ready and node.boot_id == "boot-2"
    assert 0.9 <= took < 3.5
    assert kube.watch_early_ends >= 1


def test_a_batch_boot_wait_yields_each_node_through_watches_that_end_at_once(
    cut_watches: Cluster, kube: KubeClient
) -> None:
    run = unique("run")
    names = [unique("node") for _ in range(3)]
    for name in names:
        add_node(cut_watches.store, name, **{LABEL_PATCHING: run})
        cut_watches.store.mutate("nodes", None, name, set_ready(False))
    timers = [
        later(
            0.5 + i * 0.7, lambda n=name: cut_watches.store.mutate("nodes", None, n, set_ready(True, "new"))
        )
        for i, name in enumerate(names)
    ]
    try:
        started = time.monotonic()
        seen = [
            (n.name, time.monotonic() - started)
            for n in kube.wait_for_nodes(
                names, lambda n: n.ready, label_selector=f"{LABEL_PATCHING}={run}", timeout=10
            )
        ]
    finally:
        for t in timers:
            t.cancel()
    assert [name for name, _ in seen] == names
    assert seen[-1][1] < 5, "the last node came up at about 1.9 s"
    assert kube.watch_early_ends >= 1


def test_a_pods_gone_wait_ends_when_the_pods_go_though_its_watches_end_at_once(
    cut_watches: Cluster,
    ns: str,  # noqa: F811
    kube: KubeClient,
) -> None:
    node = unique("node")
    add_node(cut_watches.store, node)
    pods = [add_pod(cut_watches.store, ns, unique("p"), node=node) for _ in range(2)]
    uids = {p["metadata"]["uid"] for p in pods}
    timer = later(
        0.8,
        lambda: [
            cut_watches.store.delete("pods", ns, p["metadata"]["name"], grace_period_seconds=0) for p in pods
        ],
    )
    try:
        started = time.monotonic()
        assert kube.wait_for_pods_gone(node, uids, timeout=8)
        took = time.monotonic() - started
    finally:
        timer.cancel()
    assert 0.7 <= took < 4
    assert kube.watch_early_ends >= 1


def test_a_pods_gone_wait_whose_watches_end_at_once_gives_up_at_its_timeout(
    cut_watches: Cluster,
    ns: str,  # noqa: F811
    kube: KubeClient,
) -> None:
    node = unique("node")
    add_node(cut_watches.store, node)
    pod = add_pod(cut_watches.store, ns, unique("p"), node=node)
    started = time.monotonic()
    assert not kube.wait_for_pods_gone(node, {pod["metadata"]["uid"]}, timeout=2)
    assert time.monotonic() - started >= 1.9


def test_watches_that_run_their_course_are_not_counted_as_early(cluster: Cluster, kube: KubeClient) -> None:  # noqa: F811
    name = unique("node")
    add_node(cluster.store, name)
    cluster.store.mutate("nodes", None, name, set_ready(False))
    kube.wait_for_node(name, lambda n: n.ready, timeout=1.2)
    assert kube.watch_early_ends == 0

"""Reads the workflow repeats within seconds reach the simulated API server once."""

from __future__ import annotations

import pytest

from shared.adapters.kube import KubeClient
from tests.integration.test_kubeapi_fidelity import Cluster, cluster, unique  # noqa: F401  (fixtures)

pytestmark = pytest.mark.integration


def test_a_daemonset_seen_just_now_is_not_fetched_again_but_a_missing_one_is(
    cluster: Cluster,  # noqa: F811
) -> None:
    kube = KubeClient.from_kubeconfig(str(cluster.kubeconfig))
    name = unique("ds")
    cluster.store.create(
        {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": name, "namespace": "kube-system"},
            "spec": {
                "selector": {"matchLabels": {"app": name}},
                "template": {"metadata": {"labels": {"app": name}}},
            },
        }
    )
    before = len(cluster.server.request_log)
    assert all(kube.daemonset_exists("kube-system", name) for _ in range(3))
    gets = [e for e in cluster.server.request_log[before:] if e["path"].endswith(f"/daemonsets/{name}")]
    assert len(gets) == 1, gets
    # A missing one is asked for every time: its pods must not pass as managed on hearsay.
    before = len(cluster.server.request_log)
    assert not any(kube.daemonset_exists("kube-system", "no-such-" + name) for _ in range(2))
    gets = [e for e in cluster.server.request_log[before:] if "/daemonsets/no-such-" in e["path"]]
    assert len(gets) == 2, gets

"""``KubeClient.unavailable_nodes`` against the simulated apiserver: one Table request
tells admission which nodes of a pool are cordoned or not Ready."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest

from sandbox.kube.registry import KubeStore
from sandbox.kube.server import KubeAPIServer
from sandbox.tls import create_tls
from sandbox.world import World
from shared.adapters.kube import ANNOTATION_CORDONED, MAX_SINGLE_READS, TABLE_ACCEPT, KubeClient
from shared.errors import PermanentError

pytestmark = pytest.mark.integration

TOKEN = "sandbox-token-for-tests"


@dataclass
class Api:
    store: KubeStore
    server: KubeAPIServer
    kube: KubeClient

    def requests(self) -> list[dict[str, Any]]:
        return list(self.server.request_log)


def add_node(
    store: KubeStore,
    name: str,
    pool: str,
    *,
    ready: bool | None = True,
    cordoned: bool = False,
    annotations: dict[str, str] | None = None,
) -> None:
    conditions = [] if ready is None else [{"type": "Ready", "status": "True" if ready else "False"}]
    spec: dict[str, Any] = {"providerID": f"azure:///vmss/{pool}/virtualMachines/{name}"}
    if cordoned:
        spec["unschedulable"] = True
    store.create(
        {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": name, "labels": {"pool": pool}, "annotations": annotations or {}},
            "spec": spec,
            "status": {"conditions": conditions, "nodeInfo": {"kubeletVersion": "v1.31.4"}},
        }
    )


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    home: Path = tmp_path_factory.mktemp("kubeapi")
    world = World(time_scale=0.01, history_path=home / "history.jsonl")
    store = KubeStore(world)
    server = KubeAPIServer(store, tls=create_tls(home / "tls"), token=TOKEN)
    server.start()
    server.write_kubeconfig(home / "kubeconfig", cluster_name="sandbox")
    add_node(store, "a-ready", "a")
    add_node(store, "a-notready", "a", ready=False)
    add_node(store, "a-unknown", "a", ready=None)
    add_node(store, "a-foreign", "a", cordoned=True)
    add_node(store, "a-ours", "a", cordoned=True, annotations={ANNOTATION_CORDONED: "run1"})
    add_node(store, "a-both", "a", ready=False, cordoned=True, annotations={ANNOTATION_CORDONED: "other"})
    add_node(store, "b-notready", "b", ready=False)
    for i in range(MAX_SINGLE_READS + 2):
        add_node(store, f"c-{i}", "c", ready=False)
    try:
        yield Api(store, server, KubeClient.from_kubeconfig(str(home / "kubeconfig")))
    finally:
        server.stop()
        world.close()


def test_one_table_request_names_the_pools_unavailable_nodes(api: Api) -> None:
    before = len(api.requests())
    found = {n.name: n for n in api.kube.unavailable_nodes("pool=a")}
    assert set(found) == {"a-notready", "a-unknown", "a-foreign", "a-ours", "a-both"}
    assert [(found[n].ready, found[n].unschedulable) for n in ("a-notready", "a-unknown", "a-foreign")] == [
        (False, False),
        (False, False),
        (True, True),
    ]
    assert not found["a-both"].ready and found["a-both"].unschedulable
    assert found["a-ours"].cordoned_by == ""  # a view: the STATUS column, no annotations
    (request,) = api.requests()[before:]
    assert request["path"] == "/api/v1/nodes" and request["status"] == 200
    query = parse_qs(request["query"])
    assert query["includeObject"] == ["None"] and query["labelSelector"] == ["pool=a"]


def test_nodes_already_accounted_for_are_left_out(api: Api) -> None:
    found = {n.name for n in api.kube.unavailable_nodes("pool=a", ignore={"a-ours", "a-both"})}
    assert found == {"a-notready", "a-unknown", "a-foreign"}


def test_read_whole_they_carry_annotations_and_provider_ids(api: Api) -> None:
    found = {n.name: n for n in api.kube.unavailable_nodes("pool=a", ignore={"a-notready"}, whole=True)}
    assert set(found) == {"a-unknown", "a-foreign", "a-ours", "a-both"}
    assert found["a-ours"].cordoned_by == "run1"
    assert found["a-both"].cordoned_by == "other"
    assert found["a-foreign"].cordoned_by == ""
    assert found["a-unknown"].provider_id == "azure:///vmss/a/virtualMachines/a-unknown"


def test_without_a_selector_the_whole_cluster_is_looked_at(api: Api) -> None:
    found = {n.name for n in api.kube.unavailable_nodes(ignore={"a-ours"})}
    assert "b-notready" in found and "a-foreign" in found and "a-ours" not in found
    assert "a-ready" not in found


def test_many_nodes_to_read_whole_take_one_list_not_a_get_each(api: Api) -> None:
    before = len(api.requests())
    found = api.kube.unavailable_nodes("pool=c", whole=True)
    assert len(found) == MAX_SINGLE_READS + 2
    assert all(n.provider_id for n in found)
    assert [r["path"] for r in api.requests()[before:]] == ["/api/v1/nodes", "/api/v1/nodes"]


def test_a_cordon_shows_at_once_and_an_uncordon_clears_it(api: Api) -> None:
    api.kube.cordon("a-ready", run_id="run2", state="draining")
    try:
        views = {n.name: n for n in api.kube.unavailable_nodes("pool=a")}
        assert views["a-ready"].unschedulable and views["a-ready"].ready
    finally:
        api.kube.uncordon("a-ready", state="succeeded")
    assert "a-ready" not in {n.name for n in api.kube.unavailable_nodes("pool=a")}


def test_an_unknown_include_object_is_refused_as_by_the_apiserver(api: Api) -> None:
    with pytest.raises(PermanentError, match="unrecognized includeObject"):
        api.kube._get_json("list nodes", "/api/v1/nodes", [("includeObject", "none")], accept=TABLE_ACCEPT)
